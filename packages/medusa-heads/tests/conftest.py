"""Tiny transformers models built from configs (no download) and heads trained on them."""

from __future__ import annotations

import medusa_heads
import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

# Tiny models: one thread is the fastest, and on a shared machine it avoids the huge
# slowdowns of OpenMP threads waiting for each other.
torch.set_num_threads(1)

VOCAB = 101  # prime: no accidental alignment with anything
HIDDEN = 48

FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
}


def make_model(family: str = "llama", dtype: torch.dtype = torch.float32, seed: int = 0):
    """A 2-layer model with grouped-query attention (6 query heads, 2 KV heads)."""
    config_cls, model_cls = FAMILIES[family]
    config = config_cls(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed + list(FAMILIES).index(family))
    model = model_cls(config).to(dtype).eval()
    # a random init gives near-uniform next-token distributions; sharpen the output
    # layer so greedy outputs have structure (repetitions) that heads can learn
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = None
    return model


def greedy_reference(model, input_ids: torch.Tensor, n: int) -> torch.Tensor:
    """transformers' own greedy decoding with KV cache."""
    return model.generate(input_ids, max_new_tokens=n, do_sample=False, min_new_tokens=0)


@pytest.fixture(scope="session", params=list(FAMILIES))
def family_model(request):
    return request.param, make_model(request.param)


@pytest.fixture(scope="session")
def llama():
    return make_model("llama")


@pytest.fixture(scope="session")
def trained_heads(llama):
    """Heads trained briefly on the model's own greedy continuations."""
    corpus = torch.randint(0, VOCAB, (4000,), generator=torch.Generator().manual_seed(1))
    sequences = medusa_heads.self_distill_sequences(llama, corpus, 32, 40, prompt_len=6, seed=2)
    heads = medusa_heads.MedusaHeads(HIDDEN, VOCAB, num_heads=4, lm_head=llama.lm_head)
    medusa_heads.train_heads(
        llama, heads, sequences, steps=60, batch_size=16, lr=1e-2, progress=False
    )
    return heads


def prompt(length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(seed))
