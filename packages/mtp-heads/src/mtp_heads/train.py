"""Command line: train MTP heads on a local transformers checkpoint.

    python -m mtp_heads.train --model ./my-llama --tokens train_ids.pt --depth 1 \\
        --steps 500 --out heads.pt

``--tokens`` is a ``torch.save``d 1-D int64 token stream (or ``--text`` a UTF-8 file,
tokenised with the tokenizer saved next to the model). Nothing is downloaded: the
model and tokenizer are loaded with ``local_files_only=True``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from .parallel import ParallelMTPHeads
from .sequential import MTPModule
from .training import random_windows, save_heads, train_mtp


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mtp-heads-train", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="directory of a transformers causal LM")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokens", help="torch.save'd 1-D int64 token stream")
    src.add_argument("--text", help="UTF-8 text file, tokenised with the model's tokenizer")
    p.add_argument("--kind", choices=("sequential", "parallel"), default="sequential")
    p.add_argument("--depth", type=int, default=1)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--joint", action="store_true", help="also train the model (main loss)")
    p.add_argument("--weight", type=float, default=None, help="MTP loss weight")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="where to save the heads (torch.save)")
    p.add_argument("--save-model", default=None, help="with --joint: save the model here")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers import AutoModelForCausalLM  # lazy: optional dependency

    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(args.model, local_files_only=True)
    if args.tokens:
        tokens = torch.load(args.tokens, weights_only=True).reshape(-1).long()
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
        with open(args.text, encoding="utf-8") as f:
            tokens = torch.tensor(tok(f.read())["input_ids"], dtype=torch.long)
    cls = ParallelMTPHeads if args.kind == "parallel" else MTPModule
    mtp = cls.from_model(model, depth=args.depth)
    gen = torch.Generator().manual_seed(args.seed)
    stats = train_mtp(
        model,
        mtp,
        random_windows(tokens, args.batch_size, args.seq_len, generator=gen),
        steps=args.steps,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        joint=args.joint,
        weight=args.weight,
        progress=not args.no_progress,
    )
    save_heads(mtp, args.out)
    if args.joint and args.save_model:
        model.save_pretrained(args.save_model)
    print(
        f"trained {args.kind} depth {args.depth} for {stats.steps} steps in "
        f"{stats.elapsed_s:.1f}s: mtp loss {stats.mtp_losses[0]:.4f} -> {stats.mtp_losses[-1]:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
