"""The candidate tree: which head top-k tokens are verified together in one forward.

A tree is given Medusa-style as ``choices``: each choice is a path of top-k ranks, e.g.
``(0, 2)`` = "head 0's best token, then head 1's third-best token". Node ``(c_1..c_d)``
sits at depth ``d`` and holds head ``d-1``'s rank-``c_d`` token. The implicit root (depth
0) holds the base model's own next token. Every path's prefixes must be in the tree.

Node order: the root is node 0, then the choices sorted by (depth, path), so a parent
always comes before its children and each depth is one contiguous block.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import torch

Choices = Sequence[Sequence[int]]


@dataclass(frozen=True)
class MedusaTree:
    """The tensors that drive one tree-attention verification step.

    With ``N = len(choices) + 1`` nodes (root included), ``D`` the deepest depth,
    ``K`` the largest rank used plus one and ``P`` the number of leaves:

    - ``choices``: the sorted paths (node ``i`` is ``choices[i - 1]``).
    - ``attention_mask``: ``(N, N)`` bool, ``True`` where node ``i`` may attend node
      ``j``: exactly ``j`` an ancestor of ``i`` or ``i`` itself. The cached prefix is
      visible to all nodes and is not part of this matrix.
    - ``position_offsets``: ``(N,)`` int64 depth of every node; node positions are
      ``prefix_length + position_offsets``.
    - ``candidate_indices``: ``(N,)`` int64 indices into the flat candidate vector
      ``cat([root_token], head_topk.flatten())`` with ``head_topk`` of shape ``(D, K)``,
      giving each node's token.
    - ``parents``: ``(N,)`` int64 parent node of every node (-1 for the root).
    - ``retrieve_indices``: ``(P, D + 1)`` int64 node indices of every root-to-leaf path,
      padded with -1 after the leaf.
    - ``depth``, ``topk``: ``D`` and ``K``.
    """

    choices: tuple[tuple[int, ...], ...]
    attention_mask: torch.Tensor
    position_offsets: torch.Tensor
    candidate_indices: torch.Tensor
    parents: torch.Tensor
    retrieve_indices: torch.Tensor
    depth: int
    topk: int

    @property
    def num_nodes(self) -> int:
        """Tokens per verification forward, root included."""
        return len(self.choices) + 1


def _normalise_choices(choices: object) -> list[tuple[int, ...]]:
    if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence):
        raise TypeError(
            f"choices must be a sequence of paths (tuples of ints), got {type(choices).__name__}"
        )
    if len(choices) == 0:
        raise ValueError("choices must hold at least one path, got an empty sequence")
    paths = []
    for choice in choices:
        if isinstance(choice, (str, bytes)) or not isinstance(choice, Sequence):
            raise TypeError(f"choices must hold tuples of ints, got the entry {choice!r}")
        if len(choice) == 0:
            raise ValueError("choices must not hold an empty path (the root is implicit)")
        for rank in choice:
            if isinstance(rank, bool) or not isinstance(rank, int):
                raise TypeError(f"choices must hold tuples of ints, got the entry {choice!r}")
            if rank < 0:
                raise ValueError(f"choices must hold non-negative ranks, got the entry {choice!r}")
        paths.append(tuple(int(r) for r in choice))
    seen = set()
    for path in paths:
        if path in seen:
            raise ValueError(f"choices must not repeat a path, got {path!r} twice")
        seen.add(path)
    for path in paths:
        if len(path) > 1 and path[:-1] not in seen:
            raise ValueError(
                f"choices is not a valid tree: the path {path!r} needs its prefix "
                f"{path[:-1]!r}, which is missing"
            )
    return sorted(paths, key=lambda p: (len(p), p))


def build_tree(choices: Choices) -> MedusaTree:
    """Build the tree attention mask, position offsets and gather/retrieve indices.

    Args:
        choices: Medusa-style paths of top-k ranks, e.g. ``[(0,), (1,), (0, 0)]``.
            Every path's prefix must also be present; order does not matter.

    Returns:
        a :class:`MedusaTree` (CPU tensors; ``generate`` moves them to the model's device).
    """
    paths = _normalise_choices(choices)
    depth = max(len(p) for p in paths)
    topk = 1 + max(max(p) for p in paths)
    index_of = {(): 0} | {p: i + 1 for i, p in enumerate(paths)}
    num_nodes = len(paths) + 1

    parents = torch.full((num_nodes,), -1, dtype=torch.long)
    offsets = torch.zeros(num_nodes, dtype=torch.long)
    candidate = torch.zeros(num_nodes, dtype=torch.long)
    mask = torch.eye(num_nodes, dtype=torch.bool)
    mask[:, 0] = True  # every node descends from the root
    for path, node in index_of.items():
        if not path:
            continue
        parents[node] = index_of[path[:-1]]
        offsets[node] = len(path)
        # head (depth - 1), rank path[-1]  ->  flat index after the root
        candidate[node] = 1 + (len(path) - 1) * topk + path[-1]
        for d in range(1, len(path)):
            mask[node, index_of[path[:d]]] = True

    is_parent = set(parents.tolist())
    leaves = [p for p in [()] + paths if index_of[p] not in is_parent]
    retrieve = torch.full((len(leaves), depth + 1), -1, dtype=torch.long)
    for row, leaf in enumerate(leaves):
        for d in range(len(leaf) + 1):
            retrieve[row, d] = index_of[leaf[:d]]

    return MedusaTree(
        choices=tuple(paths),
        attention_mask=mask,
        position_offsets=offsets,
        candidate_indices=candidate,
        parents=parents,
        retrieve_indices=retrieve,
        depth=depth,
        topk=topk,
    )


def chain_choices(depth: int) -> list[tuple[int, ...]]:
    """The chain ``[(0,), (0, 0), ...]``: every head's top-1 token, ``depth`` deep."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an int >= 1, got {depth!r}")
    return [(0,) * d for d in range(1, depth + 1)]


def choices_from_accuracies(
    rank_accuracy: torch.Tensor | Sequence[Sequence[float]], num_nodes: int
) -> list[tuple[int, ...]]:
    """The ``num_nodes`` paths of highest estimated acceptance probability.

    Model: head ``d``'s rank-``r`` token is right with probability ``rank_accuracy[d][r]``,
    independently of the other heads, so a path ``(c_1..c_D)`` is accepted whole with
    probability ``prod_d rank_accuracy[d - 1][c_d]`` and the expected number of accepted
    tokens of a tree is the sum of that over its nodes. A child is never likelier than
    its parent, so the top ``num_nodes`` paths by that product form a valid tree, and it
    is the tree maximising the expected accept length under this model (the idea behind
    Medusa's ``mc_sim`` trees). Grown best-first from the root with a heap.

    Args:
        rank_accuracy: ``(num_heads, R)`` probabilities in ``[0, 1]`` (e.g. the
            ``"rank_accuracy"`` metric of :meth:`MedusaHeads.loss`).
        num_nodes: tree size, root excluded.
    """
    acc = torch.as_tensor(rank_accuracy, dtype=torch.float64)
    if acc.dim() != 2 or acc.numel() == 0:
        raise ValueError(
            f"rank_accuracy must have shape (num_heads, ranks), got {tuple(acc.shape)}"
        )
    if bool(((acc < 0) | (acc > 1)).any()):
        raise ValueError("rank_accuracy must hold probabilities in [0, 1]")
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        raise ValueError(f"num_nodes must be an int >= 1, got {num_nodes!r}")
    num_heads, num_ranks = acc.shape
    table = acc.tolist()
    chosen: list[tuple[int, ...]] = []
    # max-heap on probability; ties broken by shorter then lexicographically smaller path
    frontier = [(-table[0][r], (r,)) for r in range(num_ranks)]
    heapq.heapify(frontier)
    while frontier and len(chosen) < num_nodes:
        neg_prob, path = heapq.heappop(frontier)
        chosen.append(path)
        if len(path) < num_heads:
            for r in range(num_ranks):
                heapq.heappush(frontier, (neg_prob * table[len(path)][r], path + (r,)))
    return sorted(chosen, key=lambda p: (len(p), p))


def _prior_rank_accuracy(num_heads: int = 4, num_ranks: int = 10) -> list[list[float]]:
    """A plausible prior for trained heads: top-1 accuracy falling with depth, and the
    probability mass of lower ranks falling roughly like 1/rank**2."""
    top1 = [0.6, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.1][:num_heads]
    return [[a * (r + 1) ** -2.0 for r in range(num_ranks)] for a in top1]


CHAIN_CHOICES: list[tuple[int, ...]] = chain_choices(4)
"""Heads 0-3's top-1 tokens in a chain (4 nodes + root)."""

SMALL_TREE_CHOICES: list[tuple[int, ...]] = choices_from_accuracies(_prior_rank_accuracy(4), 15)
"""A 15-node tree (16 tokens per verification) grown from the prior accuracies."""

LARGE_TREE_CHOICES: list[tuple[int, ...]] = choices_from_accuracies(_prior_rank_accuracy(4), 63)
"""A 63-node tree (64 tokens per verification), the size of Medusa's ``mc_sim_7b_63``."""

DEFAULT_CHOICES: list[tuple[int, ...]] = SMALL_TREE_CHOICES
