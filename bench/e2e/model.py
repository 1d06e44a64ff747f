"""The model of the scenario: a few-million-parameter Llama whose attention is flashattn-lite.

``build_model`` makes a ``transformers.LlamaForCausalLM`` from a config (no download)
and sets its attention implementation to the one flashattn-lite registers in
transformers' attention-function interface, so every forward and backward of training
and decoding goes through our kernel (the Triton one on CUDA, the tiled PyTorch one on
the CPU).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass
class ModelConfig:
    """Sizes of the tiny Llama (defaults: about 4.4M parameters with a 2048-token BPE)."""

    vocab_size: int = 2048
    hidden_size: int = 256
    intermediate_size: int = 704
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int = 4  # GQA, so the kernel's grouped path is exercised
    max_position_embeddings: int = 1024
    rope_theta: float = 10000.0

    def to_dict(self) -> dict:
        return asdict(self)


def flash_attention_name() -> str:
    """Register flashattn-lite with transformers and return its attn_implementation name."""
    from flashattn_lite.integrations.transformers import register

    return register()


def build_model(config: ModelConfig, *, attention: str | None = None, seed: int = 0):
    """A ``LlamaForCausalLM`` from ``config``; ``attention=None`` means flashattn-lite."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    llama_config = LlamaConfig(
        **config.to_dict(),
        tie_word_embeddings=False,
        attention_dropout=0.0,
        use_cache=True,
    )
    model = LlamaForCausalLM(llama_config)
    model.set_attn_implementation(attention or flash_attention_name())
    return model


@torch.no_grad()  # not inference_mode: distilled sequences are training inputs later
def greedy_generate(model, input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """``model.generate`` greedily for exactly ``new_tokens`` tokens (no EOS stop):
    ``(B, T)`` -> ``(B, T + new_tokens)`` int64."""
    return model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def compare_with_stock_attention(model, input_ids: torch.Tensor) -> float:
    """Max |logits(ours) - logits(sdpa)| of one forward in float32: the kernel swap is exact."""
    ours_name = model.config._attn_implementation
    was_training = model.training
    model.eval()
    ours = model(input_ids).logits
    model.set_attn_implementation("sdpa")
    stock = model(input_ids).logits
    model.set_attn_implementation(ours_name)
    model.train(was_training)
    return float((ours - stock).abs().max())
