"""The readable definition of greedy self-speculative decoding: no caches at all.

Every step recomputes the trunk over the whole verified text, runs the heads over every
position, drafts from the last one, and verifies with a full forward of the main model.
Quadratic and slow; ``speculative_generate`` does the same with key/value caches for
the model and the heads, and the tests hold it to this function (same tokens, same
accepted drafts at every depth).
"""

from __future__ import annotations

import torch
from torch import nn

from .parallel import ParallelMTPHeads
from .sequential import MTPModule


def draft_without_cache(
    mtp: MTPModule | ParallelMTPHeads, trunk: torch.Tensor, tokens: torch.Tensor, n: int
) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy drafts d_{m+1..m+n} and their logits ``(1, V)`` from trunk states
    h^0_{0..m-1} ``(1, m, C)`` and the verified tokens t_0..t_m ``(1, m+1)``."""
    m = trunk.shape[1]
    drafts: list[int] = []
    logits: list[torch.Tensor] = []
    h_prev = trunk  # sequential: h^{k-1} at rows 0..m-1
    for k in range(1, n + 1):
        if isinstance(mtp, ParallelMTPHeads):  # every head reads h^0
            h, _ = mtp.head_states(k, trunk)  # (1, m, C)
            logits.append(mtp.logits_of(k, h[:, -1]))
        else:
            ext = torch.cat((tokens, torch.tensor([drafts], dtype=tokens.dtype)), 1)  # (1, m+k)
            h_prev, _ = mtp.depth_step(k, h_prev, ext[:, k : m + k])  # row j reads t_{j+k}
            logits.append(mtp.logits_of(k, h_prev[:, -1]))
        drafts.append(int(logits[-1].argmax(-1)))
    return drafts, logits


@torch.no_grad()
def reference_speculative_generate(
    model: nn.Module,
    mtp: MTPModule | ParallelMTPHeads,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    num_draft_tokens: int | None = None,
) -> tuple[torch.Tensor, list[int], list[int]]:
    """Greedy speculative decoding by full recomputation (batch 1).

    Returns ``(sequences, drafted_by_depth, accepted_by_depth)``.
    """
    n_max = mtp.depth if num_draft_tokens is None else num_draft_tokens
    drafted, accepted = [0] * mtp.depth, [0] * mtp.depth
    logits = model(input_ids).logits[0]  # (T, V)
    tokens = torch.cat((input_ids, logits[-1].argmax().view(1, 1)), 1)  # t_0..t_m
    generated = 1
    while generated < max_new_tokens:
        n = min(n_max, max_new_tokens - generated - 1)
        trunk = model(tokens[:, :-1], output_hidden_states=True).hidden_states[-1]  # (1, m, C)
        drafts, _ = draft_without_cache(mtp, trunk, tokens, n)
        candidate = torch.cat((tokens, torch.tensor([drafts], dtype=tokens.dtype)), 1)
        logits = model(candidate).logits[0]  # (m+1+n, V)
        m = tokens.shape[1] - 1
        predicted = logits[m:].argmax(-1).tolist()  # the model's token after t_m, d_1, ...
        a = 0
        while a < n and drafts[a] == predicted[a]:
            a += 1
        for k in range(n):
            drafted[k] += 1
            accepted[k] += int(k < a)
        new = drafts[:a] + [predicted[a]]
        tokens = torch.cat((tokens, torch.tensor([new], dtype=tokens.dtype)), 1)
        generated += len(new)
    return tokens, drafted, accepted
