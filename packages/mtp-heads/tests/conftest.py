"""Tiny Llama models built from configs (no downloads) and a set of trained heads."""

from __future__ import annotations

import pytest
import torch

# The models here are tiny: thread start-up dominates, and on a loaded 2-core machine
# intra-op threads make every op many times slower.
torch.set_num_threads(1)

transformers = pytest.importorskip("transformers")

import mtp_heads  # noqa: E402

VOCAB = 61  # prime: no block-size coincidences


def tiny_llama(
    *,
    vocab_size: int = VOCAB,
    hidden_size: int = 32,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    num_hidden_layers: int = 2,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
):
    """A randomly initialised LlamaForCausalLM with no special tokens that could stop it."""
    cfg = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size + 6,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=256,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).to(dtype).eval()


def greedy_reference(model, ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """transformers' own greedy decoding, the peer of speculative_generate."""
    return model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )


def self_generated_data(model, n: int = 32, prompt_len: int = 4, new: int = 28, seed: int = 1):
    """Greedy continuations of random prompts: the text a tiny random model "speaks"."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(0, model.config.vocab_size, (n, prompt_len), generator=g)
    with torch.no_grad():
        return greedy_reference(model, prompts, new)


def batches_of(data: torch.Tensor, batch_size: int = 8, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    while True:
        yield data[torch.randint(0, data.shape[0], (batch_size,), generator=g)]


@pytest.fixture(scope="session")
def llama():
    return tiny_llama()


@pytest.fixture(scope="session")
def llama_data(llama):
    return self_generated_data(llama)


@pytest.fixture(scope="session")
def trained_heads(llama, llama_data):
    """{(kind, depth): heads} trained a little on the model's own greedy text."""
    out = {}
    for kind, cls in (
        ("sequential", mtp_heads.MTPModule),
        ("parallel", mtp_heads.ParallelMTPHeads),
    ):
        for depth in (1, 2):
            torch.manual_seed(depth)
            heads = cls.from_model(llama, depth=depth)
            mtp_heads.train_mtp(
                llama, heads, batches_of(llama_data), steps=80, lr=1e-2, progress=False
            )
            out[kind, depth] = heads
    return out
