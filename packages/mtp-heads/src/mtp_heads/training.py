"""Training the heads: on a frozen trunk, or jointly with the main next-token loss.

``train_mtp`` is the function; ``python -m mtp_heads.train`` (or the ``mtp-heads-train``
console script) wraps it for a local transformers checkpoint and a token file.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .blocks import check_positive_int
from .parallel import ParallelMTPHeads
from .sequential import MTPModule


@dataclass
class TrainStats:
    """Per-step losses of ``train_mtp``: the heads' (unweighted mean over depths) and,
    when training jointly, the main model's next-token loss."""

    mtp_losses: list[float] = field(default_factory=list)
    main_losses: list[float] = field(default_factory=list)
    steps: int = 0
    elapsed_s: float = 0.0


class ProgressBar:
    """A dependency-free one-line progress bar on stderr (``disable`` turns it off)."""

    def __init__(self, total: int | None, disable: bool = False, width: int = 24) -> None:
        self.total, self.disable, self.width = total, disable, width
        self.start = time.perf_counter()

    def update(self, step: int, **metrics: float) -> None:
        if self.disable:
            return
        text = " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        rate = step / max(time.perf_counter() - self.start, 1e-9)
        if self.total:
            filled = int(self.width * step / self.total)
            bar = "#" * filled + "." * (self.width - filled)
            line = f"\r[{bar}] {step}/{self.total} {rate:.1f} it/s {text}"
        else:
            line = f"\r{step} steps {rate:.1f} it/s {text}"
        sys.stderr.write(line)
        sys.stderr.flush()

    def close(self) -> None:
        if not self.disable:
            sys.stderr.write("\n")
            sys.stderr.flush()


def random_windows(
    tokens: torch.Tensor,
    batch_size: int,
    seq_len: int,
    *,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """Endless batches ``(batch_size, seq_len)`` of random windows of a 1-D token stream."""
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be a 1-D token stream, got shape {tuple(tokens.shape)}")
    check_positive_int("batch_size", batch_size)
    check_positive_int("seq_len", seq_len, 2)
    if tokens.numel() < seq_len:
        raise ValueError(
            f"tokens must hold at least seq_len={seq_len} tokens, got {tokens.numel()}"
        )
    while True:
        starts = torch.randint(0, tokens.numel() - seq_len + 1, (batch_size,), generator=generator)
        yield torch.stack([tokens[s : s + seq_len] for s in starts.tolist()])


def train_mtp(
    model: nn.Module,
    mtp: MTPModule | ParallelMTPHeads,
    batches: Iterable[torch.Tensor],
    *,
    steps: int | None = None,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    joint: bool = False,
    weight: float | None = None,
    grad_clip: float | None = 1.0,
    warmup_steps: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    progress: bool = True,
) -> TrainStats:
    """Train ``mtp`` on ``batches`` of token ids ``(B, T)`` (T >= depth + 2).

    Frozen trunk (``joint=False``, default): the model runs under ``no_grad`` and only
    the heads are optimised, on ``mtp.loss(hidden_states[-1], ids)``.
    Joint (``joint=True``): ``loss = main_CE + weight * mtp_loss`` (``weight`` default
    0.3, DeepSeek-V3's first value) and the model's trainable parameters are optimised
    too. The default optimizer is AdamW over the trainable parameters, with a linear
    warm-up then cosine decay to 10% when ``steps`` is known.

    Returns the per-step losses; the model is left in eval mode, the heads too.
    """
    if not isinstance(mtp, MTPModule | ParallelMTPHeads):
        raise TypeError(f"mtp must be an MTPModule or ParallelMTPHeads, got {type(mtp).__name__}")
    if steps is not None:
        check_positive_int("steps", steps)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    mix = (0.3 if joint else 1.0) if weight is None else float(weight)
    params = [p for p in mtp.parameters() if p.requires_grad]
    if joint:
        ids = {id(p) for p in params}
        params += [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    if optimizer is None:
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = _lr_schedule(optimizer, steps, warmup_steps)
    stats = TrainStats()
    bar = ProgressBar(steps, disable=not progress)
    start = time.perf_counter()
    model.train(joint)
    mtp.train()
    device = next(mtp.parameters()).device
    try:
        for step, ids in enumerate(batches, start=1):
            ids = ids.to(device)
            if joint:
                out = model(input_ids=ids, labels=ids, output_hidden_states=True)
                mtp_loss = mtp.loss(out.hidden_states[-1], ids)
                loss = out.loss + mix * mtp_loss
                stats.main_losses.append(float(out.loss.detach()))
            else:
                with torch.no_grad():
                    hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
                mtp_loss = mtp.loss(hidden, ids)
                loss = mix * mtp_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            if schedule is not None:
                schedule.step()
            stats.mtp_losses.append(float(mtp_loss.detach()))
            stats.steps = step
            shown = {"mtp_loss": stats.mtp_losses[-1]}
            if joint:
                shown["main_loss"] = stats.main_losses[-1]
            bar.update(step, **shown)
            if steps is not None and step >= steps:
                break
    finally:
        bar.close()
        model.eval()
        mtp.eval()
    stats.elapsed_s = time.perf_counter() - start
    return stats


def _lr_schedule(optimizer, steps: int | None, warmup: int):
    if steps is None and not warmup:
        return None

    def factor(i: int) -> float:
        if warmup and i < warmup:
            return (i + 1) / warmup
        if steps is None:
            return 1.0
        progress = min(1.0, (i - warmup) / max(1, steps - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def save_heads(mtp: MTPModule | ParallelMTPHeads, path: str | Path) -> None:
    """Save the heads' own tensors (not the shared embedding/head) and their sizes."""
    cfg = mtp.cfg
    torch.save(
        {
            "kind": "parallel" if isinstance(mtp, ParallelMTPHeads) else "sequential",
            "depth": mtp.depth,
            "sizes": {
                "num_key_value_heads": cfg.num_key_value_heads,
                "intermediate_size": cfg.intermediate_size,
                "head_dim": cfg.head_dim,
                "rope_theta": cfg.rope_theta,
                "rms_norm_eps": cfg.rms_norm_eps,
                "num_attention_heads": cfg.num_attention_heads,
            },
            "state_dict": mtp.state_dict(),
        },
        path,
    )


def load_heads(model: nn.Module, path: str | Path) -> MTPModule | ParallelMTPHeads:
    """Rebuild heads saved by ``save_heads`` on ``model`` (sharing its embedding/head)."""
    blob: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    cls = ParallelMTPHeads if blob["kind"] == "parallel" else MTPModule
    mtp = cls.from_model(model, depth=blob["depth"], **blob["sizes"])
    mtp.load_state_dict(blob["state_dict"])
    return mtp
