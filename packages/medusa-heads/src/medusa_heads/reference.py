"""Naive re-computation of what the fast path does with a KV cache and tree attention.

Nothing here is cached or batched: every candidate path is run as its own ordinary
causal forward over ``prefix + path``. It is slow and obviously right, which makes it
the yardstick for the tree attention mask, the position ids and the KV bookkeeping.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .acceptance import accept_greedy
from .heads import MedusaHeads
from .tree import DEFAULT_CHOICES, MedusaTree, build_tree


def node_path(tree: MedusaTree, node: int) -> list[int]:
    """Node ids from the root down to ``node`` (inclusive)."""
    path = [node]
    while tree.parents[path[-1]] >= 0:
        path.append(int(tree.parents[path[-1]]))
    return path[::-1]


@torch.no_grad()
def naive_tree_outputs(
    model: Any, prefix_ids: torch.Tensor, node_tokens: torch.Tensor, tree: MedusaTree
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(N, V)`` and last hidden states ``(N, hidden)`` at every tree node,
    each from a plain causal forward of ``prefix_ids (1, S)`` + the node's path tokens."""
    logits, hidden = [], []
    for node in range(tree.num_nodes):
        path_tokens = node_tokens[node_path(tree, node)]  # (depth + 1,)
        sequence = torch.cat([prefix_ids[0], path_tokens]).unsqueeze(0)  # (1, S + depth + 1)
        out = model(input_ids=sequence, output_hidden_states=True, use_cache=False)
        logits.append(out.logits[0, -1])
        hidden.append(out.hidden_states[-1][0, -1])
    return torch.stack(logits), torch.stack(hidden)


@torch.no_grad()
def reference_generate(
    model: Any,
    heads: MedusaHeads,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    choices: Sequence[Sequence[int]] | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """Greedy Medusa decoding without any cache: ``(sequences (1, T + n), accept_lengths)``.

    Same algorithm as :func:`medusa_heads.generate` with ``acceptance="greedy"``: the
    root is the model's argmax after the sequence, head ``d``'s top-k fill depth
    ``d + 1``, and the longest path whose tokens equal the model's argmax is kept.
    """
    tree = build_tree(choices or DEFAULT_CHOICES)
    sequence = input_ids[0]
    out = model(input_ids=sequence.unsqueeze(0), output_hidden_states=True, use_cache=False)
    root = out.logits[0, -1].argmax().view(1)  # (1,)
    head_input = out.hidden_states[-1][0, -1]  # (hidden,)
    new = [root]
    accept_lengths: list[int] = []
    while sum(t.numel() for t in new) < max_new_tokens:
        head_topk = heads(head_input.view(1, 1, -1))[: tree.depth, 0, 0].topk(tree.topk).indices
        node_tokens = torch.cat([root, head_topk.flatten()])[tree.candidate_indices]  # (N,)
        prefix = torch.cat([sequence, *new])[:-1].unsqueeze(0)  # everything before the root
        logits, hidden = naive_tree_outputs(model, prefix, node_tokens, tree)
        path, accepted = accept_greedy(node_tokens, logits, tree.retrieve_indices)
        nodes = tree.retrieve_indices[path, : accepted + 1]
        root = logits[nodes[-1]].argmax().view(1)
        step = torch.cat([node_tokens[nodes[1:]], root])
        step = step[: max_new_tokens - sum(t.numel() for t in new)]
        new.append(step)
        accept_lengths.append(step.numel())
        head_input = hidden[nodes[-1]]
    return torch.cat([sequence, *new]).unsqueeze(0), accept_lengths
