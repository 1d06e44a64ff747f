"""Every rejected input class: the exception type and a message naming the argument."""

from __future__ import annotations

import mtp_heads
import pytest
import torch
from conftest import tiny_llama


@pytest.mark.parametrize("cls", [mtp_heads.MTPModule, mtp_heads.ParallelMTPHeads])
@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"depth": 0}, ValueError, "depth"),
        ({"depth": 1.5}, TypeError, "depth"),
        ({"num_attention_heads": 5}, ValueError, "hidden_size"),
        ({"num_key_value_heads": 3}, ValueError, "num_key_value_heads"),
        ({"head_dim": 3}, ValueError, "head_dim"),
        ({"vocab_size": 0}, ValueError, "vocab_size"),
        ({"lm_head": torch.nn.Linear(16, 7)}, ValueError, "lm_head"),
        ({"lm_head": torch.nn.Conv1d(16, 11, 1)}, TypeError, "lm_head"),
    ],
)
def test_bad_constructor_arguments(cls, kwargs, exc, name):
    args = {"hidden_size": 16, "vocab_size": 11, "num_attention_heads": 4, **kwargs}
    with pytest.raises(exc, match=name):
        cls(**args)


def test_bad_shared_embedding():
    with pytest.raises(ValueError, match="embed"):
        mtp_heads.MTPModule(16, 11, embed=torch.nn.Embedding(12, 16))
    with pytest.raises(TypeError, match="embed"):
        mtp_heads.MTPModule(16, 11, embed=torch.nn.Linear(16, 11))


def test_from_model_needs_a_transformers_model():
    with pytest.raises(TypeError, match="model"):
        mtp_heads.MTPModule.from_model(torch.nn.Linear(3, 3))


@pytest.mark.parametrize("cls", [mtp_heads.MTPModule, mtp_heads.ParallelMTPHeads])
def test_bad_forward_and_loss_inputs(cls):
    heads = cls(16, 11, depth=2)
    h, ids = torch.randn(2, 6, 16), torch.randint(0, 11, (2, 6))
    with pytest.raises(ValueError, match="hidden_states"):
        heads.loss(torch.randn(2, 6, 15), ids)
    with pytest.raises(TypeError, match="hidden_states"):
        heads.loss(ids, ids)
    with pytest.raises(ValueError, match="input_ids"):
        heads.loss(h, ids[:, :5])
    with pytest.raises(TypeError, match="input_ids"):
        heads.loss(h, ids.float())
    with pytest.raises(ValueError, match="input_ids"):  # T < depth + 2: no target at depth 2
        heads.loss(h[:, :3], ids[:, :3])


def test_sequential_forward_needs_more_tokens_than_depth():
    with pytest.raises(ValueError, match="input_ids"):
        mtp_heads.MTPModule(16, 11, depth=3)(torch.randn(1, 3, 16), torch.randint(0, 11, (1, 3)))


@pytest.fixture(scope="module")
def model_and_heads():
    model = tiny_llama()
    return model, mtp_heads.MTPModule.from_model(model, depth=2)


def test_heads_for_another_model_are_rejected(model_and_heads):
    model, _ = model_and_heads
    other_hidden = mtp_heads.MTPModule(48, 61, depth=1)
    with pytest.raises(ValueError, match="hidden_size"):
        mtp_heads.speculative_generate(model, other_hidden, torch.tensor([[1, 2]]), 3)
    other_vocab = mtp_heads.MTPModule(32, 60, depth=1)
    with pytest.raises(ValueError, match="vocab_size"):
        mtp_heads.speculative_generate(model, other_vocab, torch.tensor([[1, 2]]), 3)
    with pytest.raises(TypeError, match="mtp"):
        mtp_heads.speculative_generate(model, torch.nn.Linear(2, 2), torch.tensor([[1, 2]]), 3)


@pytest.mark.parametrize(
    ("ids", "kwargs", "exc", "name"),
    [
        (torch.tensor([[1, 2], [3, 4]]), {}, ValueError, "batch"),
        (torch.zeros(1, 0, dtype=torch.long), {}, ValueError, "input_ids"),
        (torch.tensor([1, 2]), {}, ValueError, "input_ids"),
        (torch.tensor([[1.0, 2.0]]), {}, TypeError, "input_ids"),
        (torch.tensor([[1, 2]]), {"max_new_tokens": 0}, ValueError, "max_new_tokens"),
        (torch.tensor([[1, 2]]), {"max_new_tokens": 2.0}, TypeError, "max_new_tokens"),
        (torch.tensor([[1, 2]]), {"temperature": -1.0}, ValueError, "temperature"),
        (torch.tensor([[1, 2]]), {"num_draft_tokens": 3}, ValueError, "num_draft_tokens"),
        (torch.tensor([[1, 2]]), {"num_draft_tokens": 0}, ValueError, "num_draft_tokens"),
    ],
)
def test_bad_generate_arguments(model_and_heads, ids, kwargs, exc, name):
    model, heads = model_and_heads
    args = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(exc, match=name):
        mtp_heads.speculative_generate(model, heads, ids, **args)


def test_bad_training_arguments(model_and_heads):
    model, heads = model_and_heads
    batches = [torch.randint(0, 61, (2, 8))]
    with pytest.raises(TypeError, match="mtp"):
        mtp_heads.train_mtp(model, torch.nn.Linear(2, 2), batches)
    with pytest.raises(ValueError, match="steps"):
        mtp_heads.train_mtp(model, heads, batches, steps=0)
    with pytest.raises(ValueError, match="lr"):
        mtp_heads.train_mtp(model, heads, batches, lr=0.0)


@pytest.mark.parametrize("cls", [mtp_heads.MTPModule, mtp_heads.ParallelMTPHeads])
@pytest.mark.parametrize("bad", [0, 3, 1.0, True])
def test_bad_max_drafts_is_rejected(cls, bad):
    heads = cls(16, 23, 2, 2)
    with pytest.raises(ValueError, match="max_drafts must be an int in 1..2"):
        heads.start_drafting(bad)


def test_more_drafts_than_the_state_was_started_for():
    state = mtp_heads.MTPModule(16, 23, 2, 2).start_drafting(1)
    tokens = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="num_drafts must be <= max_drafts=1, got 2"):
        state.draft(torch.zeros(1, 3, 16), tokens, 2, lambda lg: lg.argmax(-1).view(1))


def test_more_parallel_drafts_than_the_state_was_started_for():
    state = mtp_heads.ParallelMTPHeads(16, 23, 2, 2).start_drafting(1)
    assert len(state.blocks) == 1  # the second head is never built
    tokens = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="num_drafts must be <= max_drafts=1, got 2"):
        state.draft(torch.zeros(1, 3, 16), tokens, 2, lambda lg: lg.argmax(-1).view(1))
