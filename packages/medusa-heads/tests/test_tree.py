import itertools
import random

import pytest
import torch
from medusa_heads import (
    CHAIN_CHOICES,
    LARGE_TREE_CHOICES,
    SMALL_TREE_CHOICES,
    build_tree,
    chain_choices,
    choices_from_accuracies,
)


def random_tree(seed, size, depth=4, ranks=5):
    rng = random.Random(seed)
    paths = set()
    while len(paths) < size:
        parent = rng.choice([()] + sorted(p for p in paths if len(p) < depth))
        paths.add(parent + (rng.randrange(ranks),))
    choices = list(paths)
    rng.shuffle(choices)
    return choices


TREES = [CHAIN_CHOICES, SMALL_TREE_CHOICES, LARGE_TREE_CHOICES, [(0,)], [(2,), (0,), (2, 1)]]
TREES += [random_tree(seed, size) for seed, size in [(0, 1), (1, 7), (2, 23), (3, 40)]]


@pytest.mark.parametrize("choices", TREES, ids=lambda c: f"{len(c)}nodes")
def test_tree_tensors_match_the_paths(choices):
    tree = build_tree(choices)
    nodes = [()] + list(tree.choices)
    assert sorted(tree.choices) == sorted(tuple(c) for c in choices)
    n = len(nodes)
    assert tree.attention_mask.shape == (n, n)
    for i, a in enumerate(nodes):
        # parents come first: ancestors have smaller ids
        for j, b in enumerate(nodes):
            is_ancestor_or_self = a[: len(b)] == b
            assert bool(tree.attention_mask[i, j]) == is_ancestor_or_self, (a, b)
            if is_ancestor_or_self:
                assert j <= i
        assert int(tree.position_offsets[i]) == len(a)
        expected = 0 if not a else 1 + (len(a) - 1) * tree.topk + a[-1]
        assert int(tree.candidate_indices[i]) == expected
        assert int(tree.parents[i]) == (nodes.index(a[:-1]) if a else -1)
    leaves = [p for p in nodes if not any(q[: len(p)] == p and q != p for q in nodes)]
    assert tree.retrieve_indices.shape == (len(leaves), tree.depth + 1)
    rows = set()
    for row in tree.retrieve_indices.tolist():
        ids = [i for i in row if i >= 0]
        assert row[len(ids) :] == [-1] * (len(row) - len(ids))  # padding only at the end
        leaf = nodes[ids[-1]]
        assert [nodes[i] for i in ids] == [leaf[:d] for d in range(len(leaf) + 1)]
        rows.add(leaf)
    assert rows == set(leaves)


def test_default_tree_sizes():
    assert build_tree(CHAIN_CHOICES).num_nodes == 5
    assert build_tree(SMALL_TREE_CHOICES).num_nodes == 16
    large = build_tree(LARGE_TREE_CHOICES)
    assert large.num_nodes == 64 and large.depth == 4
    assert chain_choices(2) == [(0,), (0, 0)]


def expected_accept(paths, acc):
    return sum(torch.tensor([acc[d][r] for d, r in enumerate(p)]).prod().item() for p in paths)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_choices_from_accuracies_is_optimal_against_brute_force(seed):
    gen = torch.Generator().manual_seed(seed)
    acc = torch.rand(2, 3, generator=gen) * 0.5  # 2 heads x 3 ranks
    all_paths = [(r,) for r in range(3)] + [(a, b) for a in range(3) for b in range(3)]
    for size in (1, 3, 5):
        ours = choices_from_accuracies(acc, size)
        build_tree(ours)  # a valid tree
        best = max(
            expected_accept(c, acc)
            for c in itertools.combinations(all_paths, size)
            if all(len(p) == 1 or p[:-1] in c for p in c)
        )
        assert expected_accept(ours, acc) == pytest.approx(best, rel=1e-9)


@pytest.mark.parametrize(
    "choices,error,match",
    [
        ([(0,), (0, 0, 1)], ValueError, "prefix"),
        ([(1, 0)], ValueError, "prefix"),
        ([(0,), (0,)], ValueError, "repeat"),
        ([()], ValueError, "empty path"),
        ([(-1,)], ValueError, "non-negative"),
        ([(0.0,)], TypeError, "ints"),
        ([], ValueError, "at least one"),
        ("0", TypeError, "choices"),
        ([0, 1], TypeError, "choices"),
    ],
)
def test_rejects_invalid_trees(choices, error, match):
    with pytest.raises(error, match=match) as info:
        build_tree(choices)
    assert "choices" in str(info.value)


def test_choices_from_accuracies_rejects_bad_input():
    with pytest.raises(ValueError, match="rank_accuracy"):
        choices_from_accuracies(torch.rand(3), 4)
    with pytest.raises(ValueError, match="rank_accuracy"):
        choices_from_accuracies(torch.full((2, 2), 1.5), 4)
    with pytest.raises(ValueError, match="num_nodes"):
        choices_from_accuracies(torch.rand(2, 2), 0)
