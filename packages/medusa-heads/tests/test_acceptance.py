import math

import pytest
import torch
from medusa_heads import accept_greedy, accept_typical, build_tree, typical_threshold

# root -> a (rank 0), b (rank 1); a -> c (rank 0)
TREE = build_tree([(0,), (1,), (0, 0)])  # nodes: 0 root, 1 a, 2 b, 3 c
TOKENS = torch.tensor([5, 1, 2, 3])  # node tokens


def kept(result):
    """The node ids an acceptance result keeps: root + accepted candidates."""
    path, accepted = result
    return TREE.retrieve_indices[path, : accepted + 1].tolist()


def one_hot_logits(argmaxes, vocab=8, scale=10.0):
    logits = torch.zeros(len(argmaxes), vocab)
    logits[torch.arange(len(argmaxes)), torch.tensor(argmaxes)] = scale
    return logits


def test_greedy_takes_the_longest_matching_prefix():
    # root predicts 1 (node a), a predicts 3 (node c)
    r = TREE.retrieve_indices
    assert kept(accept_greedy(TOKENS, one_hot_logits([1, 3, 0, 0]), r)) == [0, 1, 3]
    # root predicts 2 (node b): the b path, 1 accepted
    assert kept(accept_greedy(TOKENS, one_hot_logits([2, 3, 0, 0]), r)) == [0, 2]
    # root predicts 4: nothing accepted
    assert kept(accept_greedy(TOKENS, one_hot_logits([4, 3, 0, 0]), r)) == [0]
    # a's child rejected: 1 accepted along the a path
    assert kept(accept_greedy(TOKENS, one_hot_logits([1, 6, 0, 0]), r)) == [0, 1]


def test_typical_threshold_formula():
    probs = torch.tensor([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]])
    entropy = [-(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)), math.log(3), 0]
    expected = [min(0.09, 0.3 * math.exp(-h)) for h in entropy]
    torch.testing.assert_close(typical_threshold(probs, 0.09, 0.3), torch.tensor(expected))


def test_typical_accepts_plausible_tokens_of_flat_distributions_only():
    vocab = 8
    # flat root distribution: every token has p = 1/8 > min(0.09, 0.3 * e^-ln8 = 0.0375)
    logits = torch.zeros(4, vocab)
    # a: a confident distribution whose argmax (7) is not c's token 3 -> c rejected
    logits[1] = torch.log(torch.tensor([0.01] * 7 + [0.93]))
    assert kept(accept_typical(TOKENS, logits, TREE.retrieve_indices, temperature=1.0))[1:] in (
        [1],
        [2],
    )
    # same but c's token has p = 0.12 > threshold = min(0.09, ...) -> accepted
    logits[1] = torch.log(torch.tensor([0.01, 0.01, 0.01, 0.12, 0.01, 0.01, 0.01, 0.82]))
    assert kept(accept_typical(TOKENS, logits, TREE.retrieve_indices, temperature=1.0)) == [0, 1, 3]
    # a low-probability root candidate is rejected: root gives token 1 and 2 p ~ 0.001
    logits[0] = torch.log(torch.tensor([0.994, 0.001, 0.001, 0.001, 0.001, 0.001, 0.0005, 0.0005]))
    assert accept_typical(TOKENS, logits, TREE.retrieve_indices, temperature=1.0)[1] == 0


def test_typical_breaks_ties_by_likelihood():
    vocab = 8
    logits = torch.zeros(4, vocab)
    logits[0] = torch.log(torch.tensor([0.05, 0.15, 0.5, 0.06, 0.06, 0.06, 0.06, 0.06]))
    logits[1] = torch.log(torch.tensor([0.01] * 7 + [0.93]))  # a rejects c (token 3)
    result = accept_typical(TOKENS, logits, TREE.retrieve_indices, temperature=1.0)
    # paths a (p=0.15) and b (p=0.5) both accept one token: b is likelier
    assert kept(result) == [0, 2]


def test_typical_temperature_sharpens_the_rule():
    only_b = build_tree([(1,)])  # nodes: root, b
    tokens = torch.tensor([5, 2])
    logits = torch.zeros(2, 8)
    logits[0, 1] = 1.0  # the mode is token 1; b's token 2 is a close second
    logits[0, 2] = 0.9
    # at T = 1 the root distribution is flat: b's token is plausible enough
    assert accept_typical(tokens, logits, only_b.retrieve_indices, temperature=1.0)[1] == 1
    # at T = 0.02 it is nearly one-hot on token 1: b's token is rejected
    assert accept_typical(tokens, logits, only_b.retrieve_indices, temperature=0.02)[1] == 0
    with pytest.raises(ValueError, match="temperature"):
        accept_typical(tokens, logits, only_b.retrieve_indices, temperature=0.0)
