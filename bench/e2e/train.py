"""Train the tiny Llama with the packages together; run under torchrun (2 gloo processes).

    torchrun --nproc-per-node 2 -m e2e.train --cache DIR --out DIR --minutes 20

- ddp-mini's ``DistributedDataParallel`` synchronises the gradients (bucketed, overlapped);
- adamw-ref's ``AdamW`` over ``param_groups(model, weight_decay)`` (no decay on norms);
- amp-scaler's ``GradScaler`` around the backward and step, with autocast in bfloat16
  on the CPU (where the scale is not needed for range, but its inf/NaN check still
  skips a bad step) and float16 with dynamic scaling on CUDA;
- attention is flashattn-lite's (see ``e2e.model``).

Every ``eval_every`` steps the validation loss is measured and a checkpoint written
(model, optimizer, scaler, step, planned steps, history). Started again with the same
``--out`` it resumes from that checkpoint. Batches are a pure function of (seed, step,
rank), so a resumed run sees exactly the batches the uninterrupted one would have.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from e2e.corpus import build_corpus
from e2e.model import ModelConfig, build_model, compare_with_stock_attention, count_parameters


def batch_at(tokens: np.ndarray, step: int, rank: int, batch: int, seq_len: int, seed: int):
    """Deterministic random windows: (input_ids, labels), each (batch, seq_len) int64."""
    g = np.random.default_rng([seed, step, rank])
    starts = g.integers(0, tokens.size - seq_len - 1, size=batch)
    windows = np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64)
    x = torch.from_numpy(windows)
    return x[:, :-1], x[:, 1:]


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def validation_loss(model, val: np.ndarray, args, rank: int, world: int, amp_dtype) -> float:
    """Mean loss over fixed validation windows, split between the ranks."""
    model.eval()
    losses = []
    for i in range(rank, args.val_batches, world):
        x, y = batch_at(val, 10_000_000 + i, 0, args.batch, args.seq_len, args.seed)
        with torch.autocast(x.device.type, dtype=amp_dtype):
            logits = model(x).logits
        losses.append(torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten()))
    total = torch.tensor([float(sum(losses)), float(len(losses))])
    dist.all_reduce(total)
    model.train()
    return float(total[0] / total[1])


def main(argv: list[str] | None = None) -> int:
    from adamw_ref import AdamW, param_groups
    from amp_scaler import GradScaler
    from ddp_mini import DistributedDataParallel
    from tqdm import tqdm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True, help="corpus cache folder")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder")
    parser.add_argument("--minutes", type=float, default=20.0, help="training time budget")
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument(
        "--stop-after", type=int, default=None, help="exit after the checkpoint at this step"
    )
    parser.add_argument("--batch", type=int, default=16, help="sequences per rank per step")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--val-batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--max-files", type=int, default=None, help="corpus subset (tests)")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args(argv)

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    device = torch.device("cuda", rank) if torch.cuda.is_available() else torch.device("cpu")
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    if rank == 0:
        corpus = build_corpus(args.cache, args.vocab_size, args.max_files)
    dist.barrier()
    if rank != 0:
        corpus = build_corpus(args.cache, args.vocab_size, args.max_files)  # rank 0's cache
    train_tokens = corpus.train
    config = ModelConfig(
        vocab_size=corpus.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=int(args.hidden_size * 2.75) // 16 * 16,
        num_hidden_layers=args.layers,
    )
    model = build_model(config, seed=args.seed).to(device)
    if rank == 0:
        probe, _ = batch_at(corpus.val, 0, 0, 2, 64, args.seed)
        diff = compare_with_stock_attention(model, probe.to(device))
        print(f"flashattn-lite vs sdpa, one forward: max |logit diff| = {diff:.2e}")

    ddp = DistributedDataParallel(model, bucket_cap_mb=4.0)
    optimizer = AdamW(
        param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.95), impl="foreach"
    )
    scaler = GradScaler(init_scale=2.0**16 if device.type == "cuda" else 2.0**8)

    args.out.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.out / "checkpoint.pt"
    step, planned, history = 0, None, []
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        step, planned, history = ckpt["step"], ckpt["planned_steps"], ckpt["history"]
        if rank == 0:
            print(f"resumed from {ckpt_path} at step {step}/{planned}")

    def save() -> None:
        if rank == 0:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "step": step,
                "planned_steps": planned,
                "history": history,
                "model_config": config.to_dict(),
                "args": {k: str(v) for k, v in vars(args).items()},
            }
            torch.save(state, ckpt_path.with_suffix(".tmp"))
            os.replace(ckpt_path.with_suffix(".tmp"), ckpt_path)  # never a torn checkpoint
        dist.barrier()

    tokens_per_step = world * args.batch * args.seq_len
    bar = tqdm(
        total=planned, initial=step, disable=rank != 0, desc="train", unit="step", mininterval=2
    )
    started, started_step = time.perf_counter(), step
    while planned is None or step < planned:
        lr = lr_at(step, planned or args.max_steps, args.lr, warmup=20)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = batch_at(train_tokens, step, rank, args.batch, args.seq_len, args.seed)
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=amp_dtype):
            logits = ddp(x).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        stepped = scaler.step(optimizer)
        scaler.update()
        step += 1
        if planned is None and step == started_step + 3:
            # plan the run from the measured speed, so the schedule ends inside the budget
            per_step = torch.tensor([(time.perf_counter() - started) / 3])
            dist.broadcast(per_step, 0)
            planned = min(args.max_steps, max(step + 1, int(args.minutes * 60 / float(per_step))))
            bar.total = planned
        bar.update(1)
        elapsed = time.perf_counter() - started
        tok_s = (step - started_step) * tokens_per_step / elapsed
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.1e}", tok_s=f"{tok_s:.0f}")
        record = {"step": step, "loss": loss.item(), "lr": lr, "stepped": bool(stepped)}
        if step % args.eval_every == 0 or step == planned:
            record["val_loss"] = validation_loss(model, corpus.val, args, rank, world, amp_dtype)
            record["tokens_per_s"] = tok_s
            if rank == 0:
                bar.write(f"step {step}: train {loss.item():.3f}  val {record['val_loss']:.3f}")
        history.append(record)
        if "val_loss" in record:
            save()
            if args.stop_after is not None and step >= args.stop_after:
                break  # an interruption on purpose: the next start resumes from here
    bar.close()
    if rank == 0 and planned is not None and step >= planned:  # finished, not interrupted
        summary = {
            "parameters": count_parameters(model),
            "steps": step,
            "tokens_seen": step * tokens_per_step,
            "final_val_loss": history[-1].get("val_loss"),
            "corpus": corpus.stats,
            "model_config": config.to_dict(),
        }
        (args.out / "train_summary.json").write_text(json.dumps(summary, indent=1))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
