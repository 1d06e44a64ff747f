"""speculative_generate against transformers' greedy generate, and its statistics."""

from __future__ import annotations

import mtp_heads
import pytest
import torch
from conftest import greedy_reference, tiny_llama
from mtp_heads.decoding import _speculative_accept, residual_distribution
from mtp_heads.reference import draft_without_cache, reference_speculative_generate

KINDS = {"sequential": mtp_heads.MTPModule, "parallel": mtp_heads.ParallelMTPHeads}


def prompt(n: int, seed: int, vocab: int = 61) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, n), generator=g)


def check_stats(out: mtp_heads.MTPOutput, prompt_len: int, max_new: int) -> None:
    assert out.sequences.shape == (1, prompt_len + max_new)
    assert out.new_tokens == max_new
    assert out.tokens_per_step == pytest.approx(max_new / out.num_forward_passes)
    drafted, accepted = sum(out.drafted_by_depth), sum(out.accepted_by_depth)
    assert out.acceptance_rate == pytest.approx(accepted / drafted if drafted else 0.0)
    # every pass but the prefill emits 1 + (accepted drafts of that pass) tokens
    assert max_new == 1 + (out.num_forward_passes - 1) + accepted
    # depth k is only accepted when depth k-1 was
    assert all(
        a >= b for a, b in zip(out.accepted_by_depth, out.accepted_by_depth[1:], strict=False)
    )
    assert out.tokens_per_second > 0
    assert 0.0 <= out.draft_elapsed_s <= out.elapsed_s
    if out.num_forward_passes > 1 and max_new > 2:  # at least one step drafted
        assert out.draft_elapsed_s > 0


def test_draft_time_is_the_time_spent_drafting(llama, monkeypatch):
    """A drafter slowed by a known sleep per call shows that much in draft_elapsed_s,
    and the rest of the call (elapsed_s minus it) does not."""
    import time

    heads = mtp_heads.MTPModule.from_model(llama, depth=1)
    ids = prompt(5, seed=4)
    fast = mtp_heads.speculative_generate(llama, heads, ids, 12)
    real_start = heads.start_drafting
    calls = []

    def slow_start(max_drafts=None):
        state = real_start(max_drafts)
        real_draft = state.draft

        def draft(*args, **kwargs):
            calls.append(1)
            time.sleep(0.02)
            return real_draft(*args, **kwargs)

        state.draft = draft
        return state

    monkeypatch.setattr(heads, "start_drafting", slow_start)
    slow = mtp_heads.speculative_generate(llama, heads, ids, 12)
    assert torch.equal(slow.sequences, fast.sequences)
    assert 0 < len(calls) <= slow.num_forward_passes - 1  # no draft when one token is left
    assert slow.draft_elapsed_s >= 0.02 * len(calls)
    # outside the drafts the slow call is no slower than the sleeps can explain
    assert slow.elapsed_s - slow.draft_elapsed_s < 0.02 * len(calls)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize(("prompt_len", "max_new"), [(1, 1), (1, 9), (2, 2), (7, 17), (13, 5)])
def test_untrained_heads_are_lossless(llama, kind, depth, prompt_len, max_new):
    heads = KINDS[kind].from_model(llama, depth=depth)
    ids = prompt(prompt_len, seed=prompt_len * 31 + depth)
    out = mtp_heads.speculative_generate(llama, heads, ids, max_new)
    assert torch.equal(out.sequences, greedy_reference(llama, ids, max_new))
    check_stats(out, prompt_len, max_new)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize(("prompt_len", "max_new"), [(1, 23), (3, 30), (11, 16)])
def test_trained_heads_are_lossless_and_accept_drafts(
    llama, trained_heads, kind, depth, prompt_len, max_new
):
    heads = trained_heads[kind, depth]
    ids = prompt(prompt_len, seed=100 + prompt_len)
    out = mtp_heads.speculative_generate(llama, heads, ids, max_new)
    assert torch.equal(out.sequences, greedy_reference(llama, ids, max_new))
    check_stats(out, prompt_len, max_new)
    assert out.acceptance_rate > 0
    assert out.tokens_per_step > 1


def test_trained_sequential_heads_accept_most_drafts(llama, trained_heads):
    # the tiny model's greedy text is repetitive, so a little training goes a long way;
    # untrained heads accept ~1/V of their drafts
    rates = []
    for seed in range(4):
        ids = prompt(4, seed=200 + seed)
        rates.append(
            mtp_heads.speculative_generate(
                llama, trained_heads["sequential", 1], ids, 40
            ).acceptance_rate
        )
    assert sum(rates) / len(rates) > 0.3


@pytest.mark.parametrize(
    "model_kwargs",
    [
        {"num_key_value_heads": 4},  # plain multi-head attention
        {"num_key_value_heads": 1, "tie_word_embeddings": True},  # multi-query, tied head
        {"hidden_size": 24, "num_attention_heads": 3, "num_key_value_heads": 3, "vocab_size": 37},
    ],
)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_lossless_on_other_llama_shapes(model_kwargs, kind):
    model = tiny_llama(seed=3, **model_kwargs)
    heads = KINDS[kind].from_model(model, depth=2)
    ids = prompt(5, seed=4, vocab=model.config.vocab_size)
    out = mtp_heads.speculative_generate(model, heads, ids, 12)
    assert torch.equal(out.sequences, greedy_reference(model, ids, 12))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_lossless_in_float64_with_trained_heads(llama, trained_heads, kind):
    model = tiny_llama(dtype=torch.float64)
    model.load_state_dict({k: v.double() for k, v in llama.state_dict().items()})
    heads = KINDS[kind].from_model(model, depth=2)
    heads.load_state_dict({k: v.double() for k, v in trained_heads[kind, 2].state_dict().items()})
    accepted = 0
    for seed in (9, 19, 29):
        ids = prompt(6, seed=seed)
        out = mtp_heads.speculative_generate(model, heads, ids, 25)
        assert torch.equal(out.sequences, greedy_reference(model, ids, 25))
        accepted += sum(out.accepted_by_depth)
    assert accepted > 0


def test_fewer_drafts_than_depth(llama, trained_heads):
    ids = prompt(4, seed=10)
    out = mtp_heads.speculative_generate(
        llama, trained_heads["sequential", 2], ids, 20, num_draft_tokens=1
    )
    assert torch.equal(out.sequences, greedy_reference(llama, ids, 20))
    assert out.drafted_by_depth[1] == 0
    assert out.drafted_by_depth[0] > 0


def test_eos_stops_generation(llama):
    ids = prompt(4, seed=11)
    full = greedy_reference(llama, ids, 20)
    eos = int(full[0, 4 + 6])  # the 7th new token
    first = int((full[0, 4:] == eos).nonzero()[0]) + 4
    heads = mtp_heads.MTPModule.from_model(llama, depth=2)
    out = mtp_heads.speculative_generate(llama, heads, ids, 20, eos_token_id=eos)
    assert torch.equal(out.sequences, full[:, : first + 1])


def test_sampling_is_reproducible_and_in_vocab(llama, trained_heads):
    ids = prompt(3, seed=12)
    heads = trained_heads["sequential", 2]
    runs = [
        mtp_heads.speculative_generate(
            llama, heads, ids, 15, temperature=0.7, generator=torch.Generator().manual_seed(5)
        )
        for _ in range(2)
    ]
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    assert runs[0].sequences.shape == (1, 18)
    assert int(runs[0].sequences.max()) < llama.config.vocab_size


def test_speculative_accept_keeps_the_target_distribution():
    # one draft position: the emitted first token must be distributed as p, whatever q is
    g = torch.Generator().manual_seed(0)
    V, trials = 5, 6000
    p_logits = torch.randn(V, generator=g) * 1.5
    q = torch.softmax(torch.randn(V, generator=g) * 1.5, -1)
    logits = torch.stack([p_logits, torch.zeros(V)])  # (2, V); temperature 1
    counts = torch.zeros(V)
    for _ in range(trials):
        d = torch.multinomial(q, 1, generator=g).view(1)
        new, _ = _speculative_accept(logits, [d], [q], 1.0, g)
        counts[int(new[0])] += 1
    p = torch.softmax(p_logits, -1)
    # 5 standard errors of a binomial proportion: fails for a wrong rule (e.g. accepting
    # every draft emits q, whose distance from p is > 0.1 in some entry here)
    assert (q - p).abs().max() > 0.1
    se = (p * (1 - p) / trials).sqrt()
    assert ((counts / trials - p).abs() <= 5 * se).all()


def test_residual_distribution():
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.5, 0.3])
    torch.testing.assert_close(residual_distribution(p, q), torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(residual_distribution(p, p), p)


def test_sampled_generation_keeps_the_models_distribution():
    # V = 5: the exact law of the 2nd generated token is sum_a p(a | x) p(b | x, a)
    model = tiny_llama(vocab_size=5, hidden_size=16, num_attention_heads=2, num_key_value_heads=1)
    heads = mtp_heads.MTPModule.from_model(model, depth=1)
    with torch.no_grad():  # a peaked draft distribution q, far from p: the rule must correct it
        heads.depths[0].final_norm.weight.fill_(100.0)
    ids = torch.tensor([[3, 1]])
    with torch.no_grad():
        p_first = torch.softmax(model(ids).logits[0, -1].double(), -1)  # (5,)
        both = torch.cat((ids.repeat(5, 1), torch.arange(5)[:, None]), 1)  # (5, 3)
        p_second_given = torch.softmax(model(both).logits[:, -1].double(), -1)  # (5, 5)
    p_second = p_first @ p_second_given
    g = torch.Generator().manual_seed(0)
    trials = 400
    counts = torch.zeros(5, dtype=torch.float64)
    drafted = 0
    for _ in range(trials):
        out = mtp_heads.speculative_generate(model, heads, ids, 3, temperature=1.0, generator=g)
        counts[int(out.sequences[0, 3])] += 1
        drafted += out.drafted_by_depth[0]
    assert drafted == trials  # the 2nd token always went through the accept/resample rule
    se = (p_second * (1 - p_second) / trials).sqrt()
    assert ((counts / trials - p_second).abs() <= 5 * se + 1e-3).all()


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("num_draft_tokens", [1, 2])
def test_cached_decoding_equals_the_cache_free_reference(
    llama, trained_heads, kind, num_draft_tokens
):
    # same tokens AND the same drafts accepted at every depth: the heads' caches
    # (committed rows, recomputed draft rows, cropping) change nothing
    model = tiny_llama(dtype=torch.float64)
    model.load_state_dict({k: v.double() for k, v in llama.state_dict().items()})
    heads = KINDS[kind].from_model(model, depth=2)
    heads.load_state_dict({k: v.double() for k, v in trained_heads[kind, 2].state_dict().items()})
    total_accepted = 0
    for seed, (n_prompt, n_new) in enumerate([(1, 19), (6, 26), (9, 7)]):
        ids = prompt(n_prompt, seed=300 + seed)
        out = mtp_heads.speculative_generate(
            model, heads, ids, n_new, num_draft_tokens=num_draft_tokens
        )
        seq, drafted, accepted = reference_speculative_generate(
            model, heads, ids, n_new, num_draft_tokens=num_draft_tokens
        )
        assert torch.equal(out.sequences, seq)
        assert out.drafted_by_depth == drafted
        assert out.accepted_by_depth == accepted
        total_accepted += sum(accepted)
    assert total_accepted > 0


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("depth, max_drafts", [(1, None), (2, None), (3, None), (3, 2), (2, 1)])
def test_draft_caches_give_the_cache_free_logits(kind, depth, max_drafts):
    # drive a draft state through random verification outcomes and compare every
    # draft's logits with a full recomputation (float64, 1e-10); max_drafts < depth
    # leaves the deeper depths unrun and the deepest run one computing its last row only
    torch.manual_seed(depth)
    C, V = 16, 23
    heads = KINDS[kind](C, V, depth, 2, num_key_value_heads=1, intermediate_size=24)
    heads.double()
    g = torch.Generator().manual_seed(7)
    # h^0 of every position; 40 steps take the sequence past the draft buffers' first
    # capacity (64 rows), so their growth is covered too
    trunk = torch.randn(1, 200, C, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, V, (1, 4), generator=g)  # prompt t_0..t_2 and t_3 = t_m
    state = heads.start_drafting(max_drafts)
    most = depth if max_drafts is None else max_drafts
    seen = 0
    for step in range(40):
        m = tokens.shape[1] - 1
        n = most if step % 4 else max(1, most - 1)  # sometimes fewer drafts
        got = []

        def choose(logits, got=got):
            got.append(logits)
            return logits.argmax(-1).view(1)

        drafts = state.draft(trunk[:, seen:m], tokens, n, choose)
        seen = m
        ref_drafts, ref_logits = draft_without_cache(heads, trunk[:, :m], tokens, n)
        assert [int(d) for d in drafts] == ref_drafts
        for a, b in zip(got, ref_logits, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        a = int(torch.randint(0, n + 1, (), generator=g))  # drafts the "model" accepted
        bonus = torch.randint(0, V, (1, 1), generator=g)
        tokens = torch.cat((tokens, torch.tensor([ref_drafts[:a]], dtype=torch.long), bonus), 1)
    assert tokens.shape[1] > 64


def test_full_forward_path_is_lossless_too(llama, trained_heads, monkeypatch):
    """Model types outside the direct decoder + lm_head list run the whole model."""
    from mtp_heads import decoding

    assert decoding._direct_parts(llama) is not None
    monkeypatch.setattr(decoding, "_PLAIN_HEAD_MODEL_TYPES", ())
    assert decoding._direct_parts(llama) is None
    ids = prompt(6, seed=77)
    out = mtp_heads.speculative_generate(llama, trained_heads["sequential", 2], ids, 21)
    assert torch.equal(out.sequences, greedy_reference(llama, ids, 21))


@pytest.mark.parametrize("depth", [1, 2])
def test_drafting_attention_gets_unit_stride_queries(depth, monkeypatch):
    """With the ``weight @ x^T`` form of few_rows_linear (a transposed view), the rotated
    queries of 2 rows come out with head_dim strided; SDPA then leaves its fused CPU
    kernel for the math path (~10x slower): drafts hand it contiguous rows."""
    import torch.nn.functional as F
    from mtp_heads import blocks

    monkeypatch.setattr(blocks, "_TRANSPOSED_IS_FASTER", {})
    monkeypatch.setattr(blocks, "_transposed_is_faster", lambda x, w: True)

    sdpa, strides = F.scaled_dot_product_attention, []

    def spy(q, k, v, **kwargs):
        strides.append(q.stride(-1))
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    torch.manual_seed(0)
    heads = mtp_heads.MTPModule(256, 29, depth, 8, num_key_value_heads=4, intermediate_size=24)
    state = heads.start_drafting()
    trunk = torch.randn(1, 12, 256)
    tokens = torch.randint(0, 29, (1, 12))
    with torch.no_grad():
        state.draft(trunk[:, :9], tokens[:, :10], depth, lambda lg: lg.argmax(-1).view(1))
        # two new trunk states (a draft was accepted): the few-rows case
        state.draft(trunk[:, 9:11], tokens[:, :12], depth, lambda lg: lg.argmax(-1).view(1))
    assert strides and set(strides) == {1}
