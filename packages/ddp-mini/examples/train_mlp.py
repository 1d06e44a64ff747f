"""Train an MLP on synthetic data with ddp_mini: torchrun, DistributedSampler, checkpoints.

    torchrun --standalone --nproc-per-node 2 examples/train_mlp.py --steps 40 --out /tmp/run
    torchrun --standalone --nproc-per-node 2 examples/train_mlp.py --steps 40 --out /tmp/run
                                                   # the second run resumes from the checkpoint

Across machines, the same command on every node with a shared rendezvous endpoint:

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \
        --rdzv-endpoint node0.example:29400 --rdzv-id job42 examples/train_mlp.py ...

Rank 0 writes ``checkpoint.pt`` every ``--checkpoint-every`` steps (atomically: a
temporary file renamed over the old one); every rank reads it on start-up and skips
the batches of the epoch it has already seen, so a resumed run ends exactly where an
uninterrupted one ends. ``--crash-rank/--crash-at-step`` kill one rank mid-training to
show that the others fail with an error (within ``--timeout`` seconds) instead of
hanging.
"""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ddp_mini import DistributedDataParallel
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler


def synthetic_regression(n: int = 1536, features: int = 16, seed: int = 0) -> TensorDataset:
    """y = sin(x @ w) + noise: the same data on every rank (same seed)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)  # (n, F)
    w = torch.randn(features, 4, generator=g) / features**0.5  # (F, 4)
    y = torch.sin(x @ w) + 0.05 * torch.randn(n, 4, generator=g)  # (n, 4)
    return TensorDataset(x, y)


def make_model(features: int = 16, width: int = 64, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(features, width),
        nn.GELU(),
        nn.Linear(width, width),
        nn.GELU(),
        nn.Linear(width, 4),
    )


def train(config: dict[str, Any]) -> dict[str, Any]:
    """Train in an initialised process group; returns the final state (every rank)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    out = Path(config["out"])
    ckpt_path = out / "checkpoint.pt"
    dataset = synthetic_regression()
    sampler = DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, seed=config["seed"], drop_last=True
    )
    loader = DataLoader(dataset, batch_size=config["batch"], sampler=sampler, drop_last=True)
    steps_per_epoch = len(loader)

    model = make_model(seed=config["seed"] + rank)  # ranks differ; DDP broadcasts rank 0's
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
    step = 0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step = int(ckpt["step"])
    ddp = DistributedDataParallel(model, bucket_cap_mb=config["bucket_cap_mb"])

    losses = []
    while step < config["steps"]:
        epoch, skip = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch)  # a new shuffle per epoch, identical on resume
        for i, (x, y) in enumerate(loader):
            if i < skip:
                continue  # batches this epoch already trained on before the checkpoint
            if step >= config["steps"]:
                break
            if rank == config["crash_rank"] and step == config["crash_at_step"]:
                os._exit(17)  # simulate a killed node: no cleanup, no goodbye
            loss = nn.functional.mse_loss(ddp(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # gradients averaged over the ranks when this returns
            optimizer.step()
            step += 1
            losses.append(loss.item())
            if step % config["checkpoint_every"] == 0:
                save_checkpoint(ckpt_path, model, optimizer, step, rank)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if rank == 0:
        torch.save(state, out / "final.pt")
    return {"state": state, "losses": losses, "step": step}


def save_checkpoint(path: Path, model: nn.Module, optimizer: Any, step: int, rank: int) -> None:
    if rank == 0:  # replicas are identical: one writer is enough
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
        torch.save(state, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)  # never leave a torn checkpoint
    dist.barrier()  # nobody runs ahead of a checkpoint that is not written yet


def spawned(rank: int, config: dict[str, Any]) -> dict[str, Any]:
    """Entry point for ``ddp_mini.spawn(spawned, 2, "gloo", config)``."""
    return train(config)


def parse(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for checkpoint.pt and final.pt")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=32, help="samples per rank per step")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bucket-cap-mb", type=float, default=0.01)
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--crash-rank", type=int, default=-1)
    p.add_argument("--crash-at-step", type=int, default=-1)
    p.add_argument("--timeout", type=float, default=60.0, help="collective timeout (s)")
    return vars(p.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    config = parse(argv)
    Path(config["out"]).mkdir(parents=True, exist_ok=True)
    # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT for env:// init
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=config["timeout"]))
    try:
        result = train(config)
        if dist.get_rank() == 0:
            print(
                f"step {result['step']}: loss {result['losses'][0]:.4f} -> "
                f"{result['losses'][-1]:.4f}"
                if result["losses"]
                else "nothing to do"
            )
        dist.barrier()  # leave together: a peer vanishing mid-teardown can abort gloo
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
