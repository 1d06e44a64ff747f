"""Decode held-out prompts three ways and check that greedy outputs are identical.

- ``model.generate(do_sample=False)``: the reference, one token per forward;
- ``medusa_heads.generate``: tree candidates from the Medusa heads, one verification
  forward per step;
- ``mtp_heads.speculative_generate``: drafts from the MTP module, verified by the model.

Prompts are windows of the validation files (never seen in training). The figures per
prompt: tokens per step (new tokens per model forward for the drafting decoders),
acceptance per head depth and tokens per second (wall clock, prefill included).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from e2e.model import greedy_generate


def heldout_prompts(val: np.ndarray, n: int, length: int, seed: int = 11) -> list[torch.Tensor]:
    """``n`` prompts ``(1, length)`` int64 from the validation stream, spread over it."""
    starts = np.linspace(0, val.size - length - 1, n).astype(np.int64)
    starts = (starts + np.random.default_rng(seed).integers(0, 997, size=n)) % (val.size - length)
    return [torch.from_numpy(val[s : s + length].astype(np.int64))[None] for s in starts]


@torch.inference_mode()
def greedy_reference(model, prompt: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    out = greedy_generate(model, prompt, new_tokens)
    return out, time.perf_counter() - start


def compare_decoders(
    model, heads, mtp, prompts: list[torch.Tensor], new_tokens: int, choices=None
) -> list[dict]:
    """One row per (prompt, method) with the figures and whether it matched greedy."""
    import medusa_heads
    import mtp_heads

    rows = []
    for i, prompt in enumerate(prompts):
        reference, seconds = greedy_reference(model, prompt, new_tokens)
        rows.append(
            {
                "prompt": i,
                "method": "greedy generate",
                "identical": True,
                "tokens_per_step": 1.0,
                "tokens_per_s": new_tokens / seconds,
                "acceptance_by_depth": [],
                "acceptance_rate": None,
            }
        )
        with torch.inference_mode():
            med = medusa_heads.generate(model, heads, prompt, new_tokens, choices=choices)
        rows.append(
            {
                "prompt": i,
                "method": "medusa_heads.generate",
                "identical": torch.equal(med.sequences, reference),
                "tokens_per_step": med.tokens_per_forward,
                "tokens_per_s": med.tokens_per_second,
                "acceptance_by_depth": med.acceptance_by_depth,
                "acceptance_rate": None,
                "mean_accept_length": med.mean_accept_length,
            }
        )
        with torch.inference_mode():
            spec = mtp_heads.speculative_generate(model, mtp, prompt, new_tokens)
        rows.append(
            {
                "prompt": i,
                "method": "mtp_heads.speculative_generate",
                "identical": torch.equal(spec.sequences, reference),
                "tokens_per_step": spec.tokens_per_step,
                "tokens_per_s": spec.tokens_per_second,
                "acceptance_by_depth": spec.acceptance_by_depth,
                "acceptance_rate": spec.acceptance_rate,
            }
        )
    return rows
