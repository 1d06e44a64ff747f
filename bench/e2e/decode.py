"""Decode held-out prompts four ways and check that greedy outputs are identical.

- ``model.generate(do_sample=False)``: the reference, one token per forward;
- ``medusa_heads.generate``: tree candidates from the Medusa heads, one verification
  forward per step;
- ``mtp_heads.speculative_generate`` with one draft per step (depth 1, the issue's
  goal) and with two (depth 2): drafts from the MTP module, verified by the model.

Prompts are windows of the validation files (never seen in training). Every prompt is
decoded ``runs`` times by every method, the methods interleaved within a run so that a
burst of load on the shared machine hits all of them alike; a row holds the median
tokens/s over the runs and the median of the per-run speed-ups against generate
(prefill included). Tokens per step (new tokens per model forward, prefill included)
and the acceptance figures are deterministic.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from e2e.model import greedy_generate

METHODS = (
    "greedy generate",
    "medusa_heads.generate",
    "mtp_heads.speculative_generate (depth 1)",
    "mtp_heads.speculative_generate (depth 2)",
)


def heldout_prompts(val: np.ndarray, n: int, length: int, seed: int = 11) -> list[torch.Tensor]:
    """``n`` prompts ``(1, length)`` int64 from the validation stream, spread over it."""
    starts = np.linspace(0, val.size - length - 1, n).astype(np.int64)
    starts = (starts + np.random.default_rng(seed).integers(0, 997, size=n)) % (val.size - length)
    return [torch.from_numpy(val[s : s + length].astype(np.int64))[None] for s in starts]


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def decoders(model, heads, mtp, new_tokens: int, choices=None) -> dict[str, Callable]:
    """method name -> ``prompt -> (sequences, figures)``; greedy figures are trivial."""
    import medusa_heads
    import mtp_heads

    def generate(prompt):
        return greedy_generate(model, prompt, new_tokens), {}

    def medusa(prompt):
        with torch.inference_mode():
            out = medusa_heads.generate(model, heads, prompt, new_tokens, choices=choices)
        return out.sequences, {
            "tokens_per_step": out.tokens_per_forward,
            "acceptance_by_depth": out.acceptance_by_depth,
            "mean_accept_length": out.mean_accept_length,
        }

    def mtp_with(num_drafts: int):
        def run(prompt):
            with torch.inference_mode():
                out = mtp_heads.speculative_generate(
                    model, mtp, prompt, new_tokens, num_draft_tokens=num_drafts
                )
            return out.sequences, {
                "tokens_per_step": out.tokens_per_step,
                "acceptance_by_depth": out.acceptance_by_depth[:num_drafts],
                "acceptance_rate": out.acceptance_rate,
                "draft_s": out.draft_elapsed_s,
            }

        return run

    methods = dict(zip(METHODS[:2], (generate, medusa), strict=True))
    for depth in range(1, min(mtp.depth, 2) + 1):
        methods[METHODS[1 + depth]] = mtp_with(depth)
    return methods


def compare_decoders(
    model, heads, mtp, prompts: list[torch.Tensor], new_tokens: int, choices=None, runs: int = 3
) -> list[dict]:
    """One row per (prompt, method) with the figures and whether it matched greedy."""
    methods = decoders(model, heads, mtp, new_tokens, choices)
    for fn in methods.values():  # warm-up: allocator, rotary tables, first-call paths
        fn(prompts[0])
    rows = []
    for i, prompt in enumerate(prompts):
        seconds = {name: [] for name in methods}
        drafting = {name: [] for name in methods}  # seconds spent drafting, MTP only
        figures, identical = {}, {}
        for _ in range(runs):
            reference = None
            for name, fn in methods.items():
                (sequences, figs), took = _timed(lambda fn=fn, prompt=prompt: fn(prompt))
                seconds[name].append(took)
                if "draft_s" in figs:
                    drafting[name].append(figs["draft_s"])
                if reference is None:
                    reference = sequences
                identical[name] = identical.get(name, True) and torch.equal(sequences, reference)
                figures[name] = figs
        base = seconds[METHODS[0]]
        for name in methods:
            # generate's time over this method's without its drafting: the speed-up that
            # drafts costing nothing would give at the same acceptance (roughly the ceiling)
            free_draft = (
                statistics.median(
                    b / (s - d) for b, s, d in zip(base, seconds[name], drafting[name], strict=True)
                )
                if drafting[name]
                else None
            )
            rows.append(
                {
                    "prompt": i,
                    "method": name,
                    "identical": identical[name],
                    "tokens_per_step": figures[name].get("tokens_per_step", 1.0),
                    "tokens_per_s": new_tokens / statistics.median(seconds[name]),
                    "speedup_vs_generate": statistics.median(
                        b / s for b, s in zip(base, seconds[name], strict=True)
                    ),
                    "acceptance_by_depth": figures[name].get("acceptance_by_depth", []),
                    "acceptance_rate": figures[name].get("acceptance_rate"),
                    "mean_accept_length": figures[name].get("mean_accept_length"),
                    "draft_share": (
                        sum(drafting[name]) / sum(seconds[name]) if drafting[name] else None
                    ),
                    "speedup_if_drafting_were_free": free_draft,
                    "runs": runs,
                }
            )
    return rows


def medusa_pair(model, heads, prompt: torch.Tensor, new_tokens: int, choices):
    """One interleaved pair on ``prompt``: ``generate``, then Medusa with ``choices``.

    Returns Medusa's output, generate's sequences and generate's time over Medusa's.
    """
    import medusa_heads

    base, took_base = _timed(lambda: greedy_generate(model, prompt, new_tokens))
    with torch.inference_mode():
        out, took = _timed(
            lambda: medusa_heads.generate(model, heads, prompt, new_tokens, choices=choices)
        )
    return out, base, took_base / took


def tree_sweep(
    model, heads, prompts: list[torch.Tensor], new_tokens: int, trees: dict[int, list]
) -> list[dict]:
    """Every tried Medusa tree on the held-out prompts: what the tree size trades.

    ``trees`` maps a node count to its choices. One run per prompt and tree, each
    interleaved with a ``generate`` of the same prompt. Returns, per tree, the mean
    tokens per verification step with its standard error over the prompts, and the
    median speed-up. Reported beside the chosen tree; it does not choose it.
    """
    rows = []
    for nodes, choices in sorted(trees.items()):
        choices = [tuple(c) for c in choices]
        medusa_pair(model, heads, prompts[0], new_tokens, choices)  # warms this tree's shapes up
        lengths, ratios = [], []
        for prompt in prompts:
            out, base, ratio = medusa_pair(model, heads, prompt, new_tokens, choices)
            if not torch.equal(out.sequences, base):
                raise RuntimeError(f"the {nodes}-node tree's output differs from generate")
            lengths.append(out.mean_accept_length)
            ratios.append(ratio)
        rows.append(
            {
                "tree_nodes": nodes,
                "accepted_per_step": float(np.mean(lengths)),
                "standard_error": float(np.std(lengths, ddof=1) / np.sqrt(len(lengths)))
                if len(lengths) > 1
                else float("nan"),
                "speedup_vs_generate": float(np.median(ratios)),
            }
        )
    return rows
