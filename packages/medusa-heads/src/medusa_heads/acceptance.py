"""Which candidate path to keep after the verification forward.

Both rules look at every root-to-leaf path of the tree. Along a path, the candidate at
depth ``d`` is judged by the base model's distribution at its parent (depth ``d - 1``),
which the tree-attention forward computed as if the path were the real sequence. The
path's accept length is the number of candidates accepted before the first rejection;
the path with the longest accept length wins.

- greedy: a candidate is accepted iff it equals the argmax of its parent's logits. The
  accepted tokens are then exactly what step-by-step greedy decoding would produce.
- typical (Medusa paper, section 2.3.1): with ``p = softmax(logits / temperature)`` at
  the parent, a candidate ``x`` is accepted iff
  ``p(x) > min(posterior_threshold, posterior_alpha * exp(-H(p)))``, ``H`` the entropy.
  Confident (low-entropy) distributions demand a high probability, flat ones accept any
  reasonably plausible token. Ties in accept length go to the path whose accepted
  tokens have the largest summed log-probability.
"""

from __future__ import annotations

import torch


def _path_tokens_and_parents(
    node_tokens: torch.Tensor, retrieve_indices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per path: candidate tokens at depth 1..D, their parents' node ids, and validity."""
    valid = retrieve_indices[:, 1:] >= 0  # (P, D) a node exists at this depth
    safe = retrieve_indices.clamp(min=0)  # (P, D+1) padding points at the root, masked below
    candidates = node_tokens[safe[:, 1:]]  # (P, D)
    parent_nodes = safe[:, :-1]  # (P, D)
    return candidates, parent_nodes, valid


def _best_path(accepted: torch.Tensor, score: torch.Tensor | None = None) -> tuple[int, int]:
    """(path row, accept length) of the longest accepted prefix; ``score`` breaks ties."""
    lengths = accepted.long().cumprod(dim=1).sum(dim=1)  # (P,)
    if score is None:
        best = int(lengths.argmax())
    else:
        longest = lengths == lengths.max()  # (P,)
        best = int(torch.where(longest, score, torch.full_like(score, -float("inf"))).argmax())
    return best, int(lengths[best])


def accept_greedy_fast(
    node_tokens: torch.Tensor,
    logits: torch.Tensor,
    child_nodes: torch.Tensor,
    parent_nodes: torch.Tensor,
    valid: torch.Tensor,
) -> tuple[int, int]:
    """:func:`accept_greedy` with the per-tree gathers precomputed (``generate``'s hot
    loop): ``child_nodes``/``parent_nodes`` ``(P, D)`` are ``retrieve_indices[:, 1:]``
    and ``[:, :-1]`` with padding clamped to 0, ``valid`` marks real nodes."""
    predicted = logits.argmax(dim=-1)  # (N,)
    accepted = (node_tokens[child_nodes] == predicted[parent_nodes]) & valid  # (P, D)
    lengths = accepted.cumprod(dim=1).sum(dim=1)  # (P,)
    best = int(lengths.argmax())
    return best, int(lengths[best])


def accept_greedy(
    node_tokens: torch.Tensor, logits: torch.Tensor, retrieve_indices: torch.Tensor
) -> tuple[int, int]:
    """Greedy acceptance: longest prefix equal to the model's argmax.

    Args:
        node_tokens: ``(N,)`` token of every tree node (node 0 is the root).
        logits: ``(N, V)`` base-model logits at every node.
        retrieve_indices: ``(P, D + 1)`` node ids of the root-to-leaf paths, -1 padded.

    Returns:
        ``(path, accept_length)``: the winning row of ``retrieve_indices`` and how many
        candidates after the root it accepts (0..D).
    """
    predicted = logits.argmax(dim=-1)  # (N,)
    candidates, parent_nodes, valid = _path_tokens_and_parents(node_tokens, retrieve_indices)
    accepted = (candidates == predicted[parent_nodes]) & valid  # (P, D)
    return _best_path(accepted)


def typical_threshold(
    probs: torch.Tensor, posterior_threshold: float, posterior_alpha: float
) -> torch.Tensor:
    """``min(posterior_threshold, posterior_alpha * exp(-entropy(probs)))`` per row.

    ``probs``: ``(..., V)`` probabilities; returns ``(...)`` float32 thresholds.
    """
    probs = probs.float()
    entropy = -(probs * torch.log(probs.clamp(min=1e-30))).sum(dim=-1)  # (...)
    return torch.clamp(posterior_alpha * torch.exp(-entropy), max=posterior_threshold)


def accept_typical(
    node_tokens: torch.Tensor,
    logits: torch.Tensor,
    retrieve_indices: torch.Tensor,
    temperature: float,
    posterior_threshold: float = 0.09,
    posterior_alpha: float = 0.3,
) -> tuple[int, int]:
    """Typical acceptance (Medusa, section 2.3.1) at ``temperature > 0``.

    Shapes as in :func:`accept_greedy`. A candidate is accepted iff its probability
    under ``softmax(parent_logits / temperature)`` exceeds
    ``min(posterior_threshold, posterior_alpha * exp(-entropy))``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 for typical acceptance, got {temperature}")
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (N, V)
    threshold = typical_threshold(probs, posterior_threshold, posterior_alpha)  # (N,)
    candidates, parent_nodes, valid = _path_tokens_and_parents(node_tokens, retrieve_indices)
    p_candidate = probs[parent_nodes, candidates]  # (P, D)
    accepted = (p_candidate > threshold[parent_nodes]) & valid  # (P, D)
    prefix = accepted.long().cumprod(dim=1).bool()  # (P, D)
    score = torch.where(prefix, torch.log(p_candidate.clamp(min=1e-30)), 0.0).sum(dim=1)  # (P,)
    return _best_path(accepted, score)
