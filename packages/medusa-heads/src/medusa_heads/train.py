"""Train Medusa heads on a frozen causal LM over a text file (Medusa-1 recipe).

The trunk stays frozen: it only runs forward (under ``no_grad``) to produce the last
hidden states, and the heads learn ``MedusaHeads.loss`` on top of them with AdamW.

Two kinds of training sequences:

- text: random windows of the tokenised text file, labels = the text itself;
- self-distillation: ``self_distill_sequences`` lets the model continue prompts taken
  from the text greedily, and the heads learn those continuations. At decoding time the
  heads must guess what the *model* will say, so learning its own greedy outputs
  matches the test-time distribution (Medusa paper, section 2.3.2) and needs no labels.

Command line (saves ``heads.state_dict()``; reload with ``MedusaHeads.from_state_dict``)::

    python -m medusa_heads.train MODEL_DIR corpus.txt --out heads.pt --steps 300
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from .heads import MedusaHeads
from .kv_cache import cache_keyword, new_cache


def load_text_tokens(path: str | Path, tokenizer: Any = None) -> torch.Tensor:
    """Tokenise a UTF-8 text file into a 1D int64 tensor.

    ``tokenizer``: ``None`` for raw UTF-8 bytes (ids 0..255), a transformers tokenizer
    or a ``tokenizers.Tokenizer`` (anything with ``encode``), or a callable
    ``str -> list[int]``.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path must be an existing text file, got {str(path)!r}")
    text = path.read_text(encoding="utf-8", errors="replace")
    if tokenizer is None:
        ids: Any = list(text.encode("utf-8"))
    elif hasattr(tokenizer, "encode"):
        ids = tokenizer.encode(text)
        ids = getattr(ids, "ids", ids)  # tokenizers.Encoding -> list[int]
    elif callable(tokenizer):
        ids = tokenizer(text)
    else:
        raise TypeError(
            "tokenizer must be None, have an encode method or be callable, "
            f"got {type(tokenizer).__name__}"
        )
    tokens = torch.as_tensor(list(ids), dtype=torch.long)
    if tokens.numel() == 0:
        raise ValueError(f"path must hold some text, got an empty file {str(path)!r}")
    return tokens


def _random_windows(
    tokens: torch.Tensor, count: int, length: int, generator: torch.Generator
) -> torch.Tensor:
    starts = torch.randint(0, tokens.numel() - length + 1, (count,), generator=generator)
    return torch.stack([tokens[s : s + length] for s in starts.tolist()])  # (count, length)


@torch.no_grad()
def self_distill_sequences(
    model: Any,
    tokens: torch.Tensor,
    num_sequences: int,
    seq_len: int,
    prompt_len: int = 16,
    batch_size: int = 16,
    seed: int = 0,
) -> torch.Tensor:
    """``(num_sequences, seq_len)`` sequences: a random ``prompt_len`` window of
    ``tokens`` followed by the model's own greedy continuation (KV-cached, no EOS stop)."""
    tokens = _check_tokens(tokens, prompt_len)
    if not 0 < prompt_len < seq_len:
        raise ValueError(
            f"prompt_len must be in [1, seq_len), got {prompt_len} with seq_len {seq_len}"
        )
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    cache_kw = cache_keyword(model)
    rows = []
    for first in range(0, num_sequences, batch_size):
        count = min(batch_size, num_sequences - first)
        ids = _random_windows(tokens, count, prompt_len, generator).to(device)  # (b, p)
        cache = new_cache(model)
        step_input = ids
        for _ in range(seq_len - prompt_len):
            logits = model(input_ids=step_input, use_cache=True, **{cache_kw: cache}).logits
            step_input = logits[:, -1].argmax(dim=-1, keepdim=True)  # (b, 1)
            ids = torch.cat([ids, step_input], dim=1)
        rows.append(ids.cpu())
    return torch.cat(rows)


def _check_tokens(tokens: torch.Tensor, length: int) -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor) or tokens.dtype.is_floating_point:
        raise TypeError("tokens must be an integer torch.Tensor")
    if tokens.dim() == 1 and tokens.numel() < length:
        raise ValueError(f"tokens must hold at least {length} ids, got {tokens.numel()}")
    if tokens.dim() not in (1, 2):
        raise ValueError(f"tokens must be 1D (a corpus) or 2D (sequences), got {tokens.dim()}D")
    return tokens.long()


class _ProgressBar:
    """A one-line text progress bar on stderr (no dependency)."""

    def __init__(self, total: int, stream: TextIO | None, width: int = 24) -> None:
        self.total, self.stream, self.width = total, stream, width
        self.start = time.perf_counter()

    def update(self, step: int, text: str) -> None:
        if self.stream is None:
            return
        filled = int(self.width * step / self.total)
        rate = step / max(time.perf_counter() - self.start, 1e-9)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r[{bar}] {step}/{self.total} {rate:.1f} it/s {text}")
        if step == self.total:
            self.stream.write("\n")
        self.stream.flush()


@dataclass
class TrainResult:
    """Losses per step and the heads' last measured accuracies."""

    losses: list[float] = field(default_factory=list)
    top1: list[float] = field(default_factory=list)
    rank_accuracy: torch.Tensor | None = None
    save_path: str | None = None


def train_heads(
    model: Any,
    heads: MedusaHeads,
    tokens: torch.Tensor,
    *,
    steps: int = 200,
    batch_size: int = 8,
    seq_len: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    decay: float = 0.8,
    warmup_steps: int | None = None,
    seed: int = 0,
    save_path: str | Path | None = None,
    progress: bool | TextIO = True,
) -> TrainResult:
    """Train ``heads`` in place on a frozen ``model``; returns the losses and accuracies.

    Args:
        model: transformers causal LM; only run forward (no grad, eval mode).
        heads: the heads to train (on the model's device).
        tokens: a 1D int64 corpus (random ``seq_len`` windows are drawn) or a 2D
            ``(num_sequences, L)`` tensor of sequences (e.g. from
            :func:`self_distill_sequences`; rows are drawn at random).
        steps, batch_size, seq_len, lr, weight_decay: the AdamW run; the learning rate
            warms up linearly over ``warmup_steps`` (default 5% of steps) then follows a
            cosine to 0.
        decay: per-head loss weight ratio of :meth:`MedusaHeads.loss`.
        save_path: where ``torch.save(heads.state_dict())`` writes at the end.
        progress: ``True`` for a progress bar on stderr, a stream to write it to, or
            ``False``.
    """
    if not isinstance(heads, MedusaHeads):
        raise TypeError(f"heads must be a MedusaHeads, got {type(heads).__name__}")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    tokens = _check_tokens(tokens, seq_len)
    if int(tokens.min()) < 0 or int(tokens.max()) >= heads.vocab_size:
        raise ValueError(
            f"tokens must be ids in [0, {heads.vocab_size}), got the range "
            f"[{int(tokens.min())}, {int(tokens.max())}]"
        )
    if tokens.dim() == 2:
        seq_len = tokens.shape[1]
    if seq_len < heads.num_heads + 2:
        raise ValueError(f"seq_len must be >= num_heads + 2 = {heads.num_heads + 2}, got {seq_len}")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    warmup = max(1, steps // 20) if warmup_steps is None else warmup_steps
    optimizer = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))
        ),
    )
    stream = sys.stderr if progress is True else (progress or None)
    bar = _ProgressBar(steps, stream)
    every = max(1, steps // 50)  # about 50 redraws whatever the run length
    result = TrainResult()
    was_training = model.training
    model.eval()
    heads.train()
    for step in range(1, steps + 1):
        if tokens.dim() == 1:
            batch = _random_windows(tokens, batch_size, seq_len, generator)
        else:
            batch = tokens[torch.randint(0, tokens.shape[0], (batch_size,), generator=generator)]
        batch = batch.to(device)  # (B, T)
        with torch.no_grad():
            hidden = model(input_ids=batch, output_hidden_states=True).hidden_states[-1]
        loss, metrics = heads.loss(hidden, batch, decay=decay, return_metrics=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        result.losses.append(loss.item())
        result.top1 = metrics["top1"].tolist()
        result.rank_accuracy = metrics["rank_accuracy"].cpu()
        if step % every == 0 or step == steps:
            top1 = " ".join(f"{a:.2f}" for a in result.top1)
            bar.update(step, f"loss {result.losses[-1]:.3f} top1 {top1}")
    heads.eval()
    model.train(was_training)
    if save_path is not None:
        torch.save(heads.state_dict(), save_path)
        result.save_path = str(save_path)
    return result


def main(argv: list[str] | None = None) -> TrainResult:
    """``python -m medusa_heads.train MODEL_DIR TEXT_FILE --out heads.pt``."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("model", help="model directory for AutoModelForCausalLM.from_pretrained")
    parser.add_argument("text", help="UTF-8 text file to train on")
    parser.add_argument("--out", required=True, help="where to save the heads' state_dict")
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer directory (default: the model's; 'bytes': UTF-8 bytes)",
    )
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--num-layers", type=int, default=1)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--self-distill",
        type=int,
        default=0,
        metavar="N",
        help="train on N greedy continuations instead of the text",
    )
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    tokenizer = None
    if args.tokenizer != "bytes":
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
        except (OSError, ValueError):
            if args.tokenizer is not None:
                raise
    tokens = load_text_tokens(args.text, tokenizer)
    if args.self_distill:
        tokens = self_distill_sequences(
            model, tokens, args.self_distill, args.seq_len, args.prompt_len, seed=args.seed
        )
    heads = MedusaHeads(
        model.config.hidden_size,
        model.get_output_embeddings().weight.shape[0],
        num_heads=args.num_heads,
        num_layers=args.num_layers,
        lm_head=model.get_output_embeddings(),
    ).to(next(model.parameters()).device)
    return train_heads(
        model,
        heads,
        tokens,
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        seed=args.seed,
        save_path=args.out,
    )


if __name__ == "__main__":
    main()
