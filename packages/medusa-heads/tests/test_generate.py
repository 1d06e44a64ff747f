import medusa_heads
import pytest
import torch
from conftest import HIDDEN, VOCAB, greedy_reference, make_model, prompt
from medusa_heads import (
    CHAIN_CHOICES,
    LARGE_TREE_CHOICES,
    SMALL_TREE_CHOICES,
    MedusaHeads,
    build_tree,
    generate,
)
from medusa_heads.kv_cache import (
    cache_keyword,
    keep_accepted,
    model_forward,
    new_cache,
    tree_attention_mask,
)
from medusa_heads.reference import naive_tree_outputs, node_path, reference_generate

TREES = {"chain": CHAIN_CHOICES, "small": SMALL_TREE_CHOICES, "large": LARGE_TREE_CHOICES}


def untrained_heads(model, num_heads=4):
    return MedusaHeads(HIDDEN, VOCAB, num_heads=num_heads, lm_head=model.lm_head)


@pytest.mark.parametrize("tree", list(TREES))
@pytest.mark.parametrize("prompt_len,new_tokens", [(1, 1), (4, 9), (11, 32)])
def test_untrained_heads_are_lossless(family_model, tree, prompt_len, new_tokens):
    family, model = family_model
    heads = untrained_heads(model)
    ids = prompt(prompt_len, seed=prompt_len)
    out = generate(model, heads, ids, new_tokens, choices=TREES[tree])
    assert torch.equal(out.sequences, greedy_reference(model, ids, new_tokens))
    assert out.new_tokens == new_tokens
    assert 1 + sum(out.accept_lengths) == new_tokens
    assert all(n >= 1 for n in out.accept_lengths)


@pytest.mark.parametrize("tree", list(TREES))
@pytest.mark.parametrize("seed", range(4))
def test_trained_heads_are_lossless_and_accept(llama, trained_heads, tree, seed):
    ids = prompt(3 + 2 * seed, seed=100 + seed)
    new_tokens = [17, 24, 31, 40][seed]
    out = generate(llama, trained_heads, ids, new_tokens, choices=TREES[tree])
    assert torch.equal(out.sequences, greedy_reference(llama, ids, new_tokens))
    assert 1 + sum(out.accept_lengths) == new_tokens


def test_trained_heads_accept_more_than_one_token_per_step(llama, trained_heads):
    untrained = untrained_heads(llama)
    per_step = {"trained": [], "untrained": []}
    for seed in range(4):
        ids = prompt(5, seed=200 + seed)
        per_step["trained"].append(generate(llama, trained_heads, ids, 40).mean_accept_length)
        per_step["untrained"].append(generate(llama, untrained, ids, 40).mean_accept_length)
    trained = sum(per_step["trained"]) / 4
    assert trained > 1.3  # acceptance > 0: heads' tokens are taken
    assert trained > sum(per_step["untrained"]) / 4


def test_matches_the_cacheless_reference_step_by_step(llama, trained_heads):
    ids = prompt(6, seed=7)
    out = generate(llama, trained_heads, ids, 20, choices=SMALL_TREE_CHOICES)
    ref_sequences, ref_lengths = reference_generate(
        llama, trained_heads, ids, 20, SMALL_TREE_CHOICES
    )
    assert torch.equal(out.sequences, ref_sequences)
    assert out.accept_lengths == ref_lengths


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tree_forward_matches_naive_recomputation(family_model, dtype):
    """Tree mask + position ids on top of a cached prefix = one plain forward per path."""
    family, model = family_model
    model = model.to(dtype)
    try:
        tree = build_tree(SMALL_TREE_CHOICES)
        prefix = prompt(9, seed=3)
        node_tokens = torch.randint(
            0, VOCAB, (tree.num_nodes,), generator=torch.Generator().manual_seed(4)
        )
        cache, kw = new_cache(model), cache_keyword(model)
        with torch.no_grad():
            model_forward(model, prefix, cache, kw)
            mask = tree_attention_mask(tree.attention_mask, prefix.shape[1], dtype)
            positions = (prefix.shape[1] + tree.position_offsets).unsqueeze(0)
            logits, hidden = model_forward(
                model,
                node_tokens.unsqueeze(0),
                cache,
                kw,
                position_ids=positions,
                attention_mask=mask,
            )
        ref_logits, ref_hidden = naive_tree_outputs(model, prefix, node_tokens, tree)
        tol = 1e-5 if dtype == torch.float32 else 1e-10
        torch.testing.assert_close(logits, ref_logits, atol=tol, rtol=tol)
        torch.testing.assert_close(hidden, ref_hidden, atol=tol, rtol=tol)
    finally:
        model.to(torch.float32)


@pytest.mark.parametrize("leaf_row", [0, 3, -1])
def test_kv_bookkeeping_matches_a_fresh_cache(family_model, leaf_row):
    """After keeping one path, the cache equals the cache of prefix + path run plainly."""
    family, model = family_model
    tree = build_tree(LARGE_TREE_CHOICES)
    prefix = prompt(5, seed=leaf_row + 10)
    node_tokens = torch.randint(
        0, VOCAB, (tree.num_nodes,), generator=torch.Generator().manual_seed(5)
    )
    kw = cache_keyword(model)
    row = tree.retrieve_indices[leaf_row]
    for keep in range(1, int((row >= 0).sum()) + 1):  # every prefix of the path
        kept_nodes = row[:keep]
        cache = new_cache(model)
        with torch.no_grad():
            model_forward(model, prefix, cache, kw)
            mask = tree_attention_mask(tree.attention_mask, prefix.shape[1], torch.float32)
            positions = (prefix.shape[1] + tree.position_offsets).unsqueeze(0)
            model_forward(
                model, node_tokens[None], cache, kw, position_ids=positions, attention_mask=mask
            )
            keep_accepted(cache, tree.num_nodes, kept_nodes)
            fresh = new_cache(model)
            model_forward(model, torch.cat([prefix[0], node_tokens[kept_nodes]])[None], fresh, kw)
        assert cache.get_seq_length() == fresh.get_seq_length() == prefix.shape[1] + keep
        for ours, ref in zip(cache.layers, fresh.layers, strict=True):
            torch.testing.assert_close(ours.keys, ref.keys, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ours.values, ref.values, atol=1e-5, rtol=1e-5)


def test_node_path_walks_up_to_the_root():
    tree = build_tree([(0,), (1,), (0, 2), (0, 2, 0)])
    assert node_path(tree, 4) == [0, 1, 3, 4]
    assert node_path(tree, 0) == [0]


def test_eos_stops_like_transformers(llama):
    ids = prompt(5, seed=0)
    full = greedy_reference(llama, ids, 30)[0, 5:].tolist()
    eos = full[12]  # a token that does occur
    ours = generate(llama, untrained_heads(llama), ids, 30, eos_token_id=eos)
    theirs = llama.generate(ids, max_new_tokens=30, do_sample=False, eos_token_id=eos)
    assert torch.equal(ours.sequences, theirs)
    assert ours.sequences[0, -1] == eos


def test_typical_at_zero_temperature_is_greedy(llama, trained_heads):
    ids = prompt(4, seed=9)
    typical = generate(llama, trained_heads, ids, 25, acceptance="typical", temperature=0.0)
    assert torch.equal(typical.sequences, greedy_reference(llama, ids, 25))


@pytest.mark.parametrize("temperature", [0.5, 1.0])
def test_typical_sampling_emits_valid_tokens(llama, trained_heads, temperature):
    ids = prompt(4, seed=11)

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return generate(llama, trained_heads, ids, 33, acceptance="typical",
                        temperature=temperature, generator=gen)  # fmt: skip

    out = run(0)
    assert out.sequences.shape == (1, 4 + 33)
    assert torch.equal(out.sequences[:, :4], ids)
    new = out.sequences[0, 4:]
    assert new.dtype == torch.long and bool(((new >= 0) & (new < VOCAB)).all())
    assert 1 + sum(out.accept_lengths) == 33
    assert torch.equal(run(0).sequences, out.sequences)  # reproducible with a generator
    assert not torch.equal(run(1).sequences, out.sequences)  # and actually random


def test_stats_are_consistent(llama, trained_heads):
    out = generate(llama, trained_heads, prompt(5, seed=1), 30, choices=CHAIN_CHOICES)
    stats = out.stats()
    assert stats["new_tokens"] == 30
    assert stats["tokens_per_forward"] == pytest.approx(30 / (1 + out.num_steps))
    assert stats["mean_accept_length"] == pytest.approx(29 / out.num_steps)
    rates = out.acceptance_by_depth
    assert len(rates) == 4 and all(a >= b for a, b in zip(rates, rates[1:], strict=False))
    assert sum(rates) == pytest.approx(sum(out.accepted_candidates) / out.num_steps)
    assert out.tokens_per_second > 0 and out.decode_seconds > 0
    one = generate(llama, trained_heads, prompt(5, seed=1), 1)
    assert one.num_steps == 0 and one.tokens_per_forward == 1.0


def test_bfloat16_model_runs(llama, trained_heads):
    model = make_model("llama", dtype=torch.bfloat16)
    out = generate(model, untrained_heads(llama), prompt(4, seed=2), 12)
    assert out.sequences.shape == (1, 16)


# ---- bad input -------------------------------------------------------------------


def test_rejects_heads_of_another_model(llama):
    with pytest.raises(ValueError, match="hidden_size"):
        generate(llama, MedusaHeads(HIDDEN + 2, VOCAB), prompt(3, 0), 4)
    with pytest.raises(ValueError, match="vocab_size"):
        generate(llama, MedusaHeads(HIDDEN, VOCAB + 1), prompt(3, 0), 4)
    with pytest.raises(TypeError, match="heads"):
        generate(llama, llama.lm_head, prompt(3, 0), 4)


def test_rejects_batch_above_one(llama):
    with pytest.raises(ValueError, match="batch size 1"):
        generate(llama, untrained_heads(llama), torch.zeros(2, 3, dtype=torch.long), 4)


def test_rejects_empty_or_malformed_prompt(llama):
    heads = untrained_heads(llama)
    with pytest.raises(ValueError, match="input_ids"):
        generate(llama, heads, torch.zeros(1, 0, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="input_ids"):
        generate(llama, heads, torch.zeros(3, dtype=torch.long), 4)
    with pytest.raises(TypeError, match="input_ids"):
        generate(llama, heads, torch.zeros(1, 3), 4)


def test_rejects_invalid_tree(llama):
    heads = untrained_heads(llama, num_heads=2)
    with pytest.raises(ValueError, match="prefix"):
        generate(llama, heads, prompt(3, 0), 4, choices=[(0,), (1, 0)])
    with pytest.raises(ValueError, match="choices"):
        generate(llama, heads, prompt(3, 0), 4, choices=[(0,), (0, 0), (0, 0, 0)])


def test_rejects_bad_lengths_and_rules(llama):
    heads = untrained_heads(llama)
    ids = prompt(3, 0)
    for bad in (0, -2):
        with pytest.raises(ValueError, match="max_new_tokens"):
            generate(llama, heads, ids, bad)
    with pytest.raises(TypeError, match="max_new_tokens"):
        generate(llama, heads, ids, 4.0)
    with pytest.raises(ValueError, match="acceptance"):
        generate(llama, heads, ids, 4, acceptance="nucleus")
    with pytest.raises(ValueError, match="temperature"):
        generate(llama, heads, ids, 4, temperature=0.7)
    with pytest.raises(ValueError, match="temperature"):
        generate(llama, heads, ids, 4, acceptance="typical", temperature=-1.0)
    with pytest.raises(ValueError, match="posterior_threshold"):
        generate(llama, heads, ids, 4, acceptance="typical", temperature=1.0, posterior_threshold=0)
    with pytest.raises(ValueError, match="posterior_alpha"):
        generate(llama, heads, ids, 4, acceptance="typical", temperature=1.0, posterior_alpha=0)


def test_rejects_sequences_beyond_the_sliding_window():
    model = make_model("mistral")
    model.config.sliding_window = 24
    try:
        with pytest.raises(ValueError, match="sliding window"):
            generate(model, untrained_heads(model), prompt(5, 0), 20, choices=CHAIN_CHOICES)
    finally:
        model.config.sliding_window = 4096


def test_public_api_is_exported():
    for name in ("MedusaHeads", "build_tree", "generate", "MedusaOutput", "train_heads"):
        assert name in medusa_heads.__all__


def test_direct_forward_equals_the_full_forward(llama):
    """The decoder + output layer path gives the full forward's logits and hidden state."""
    from medusa_heads.kv_cache import direct_parts

    parts = direct_parts(llama)
    assert parts is not None and parts[1] is llama.lm_head
    ids = prompt(13, seed=3)
    kw = cache_keyword(llama)
    for last_only in (False, True):
        full = model_forward(llama, ids, new_cache(llama), kw, last_only=last_only)
        direct = model_forward(llama, ids, new_cache(llama), kw, last_only=last_only, parts=parts)
        assert all(torch.equal(a, b) for a, b in zip(full, direct, strict=True))


def test_unlisted_model_types_keep_the_full_forward(llama, trained_heads, monkeypatch):
    from medusa_heads import kv_cache

    monkeypatch.setattr(kv_cache, "_PLAIN_HEAD_MODEL_TYPES", ())
    assert kv_cache.direct_parts(llama) is None
    ids = prompt(5, seed=21)
    out = generate(llama, trained_heads, ids, 19, choices=SMALL_TREE_CHOICES)
    assert torch.equal(out.sequences, greedy_reference(llama, ids, 19))
