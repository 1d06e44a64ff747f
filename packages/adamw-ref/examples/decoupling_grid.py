"""Learning rate x weight decay grids for Adam + L2 and for AdamW (Loshchilov & Hutter).

The paper's central observation: with L2 regularisation inside Adam, the best weight
decay depends on the learning rate (the good region of the grid is a diagonal band),
while with decoupled decay the two can be tuned independently (the good region is
closer to a rectangle). This script trains a small MLP on a synthetic classification
task that overfits without regularisation, for every (lr, decay) pair, and draws the
test error of both optimizers as two heatmaps.

    python decoupling_grid.py --out decoupling.png            # ~1 min on one core
    python decoupling_grid.py --out small.png --grid 3 --steps 50

Decay is parameterised as in the paper: for AdamW the weights shrink by ``decay`` per
step whatever the learning rate (``weight_decay = decay / lr`` in torch's convention,
which multiplies the two); for Adam + L2, ``decay`` is the L2 coefficient.
"""

from __future__ import annotations

import argparse

import adamw_ref
import torch
from torch import nn


def make_task(seed: int = 0, n_train: int = 100, n_test: int = 2000, dim: int = 50):
    """Two classes decided by 5 of ``dim`` Gaussian features; 10% of train labels flipped.

    With 100 training points and 50 features the MLP can memorise the noise, so how much
    weight decay is applied decides the test error.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_test, dim, generator=gen)  # (N, dim)
    teacher = torch.randn(5, generator=gen)  # (5,)
    y = (x[:, :5] @ teacher > 0).long()  # (N,)
    flip = torch.rand(n_train, generator=gen) < 0.1
    y[:n_train][flip] = 1 - y[:n_train][flip]
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def train_once(kind: str, lr: float, decay: float, task, steps: int, seed: int = 0) -> float:
    """Full-batch training; returns the test error (fraction misclassified)."""
    x_train, y_train, x_test, y_test = task
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x_train.shape[1], 64), nn.ReLU(), nn.Linear(64, 2))
    if kind == "AdamW":
        opt = adamw_ref.AdamW(model.parameters(), lr=lr, weight_decay=decay / lr)
    else:
        opt = adamw_ref.Adam(model.parameters(), lr=lr, weight_decay=decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x_train), y_train).backward()
        opt.step()
        schedule.step()
    with torch.no_grad():
        return (model(x_test).argmax(-1) != y_test).float().mean().item()


def grid(kind: str, lrs, decays, task, steps: int) -> torch.Tensor:
    """(len(decays), len(lrs)) test errors."""
    return torch.tensor([[train_once(kind, lr, d, task, steps) for lr in lrs] for d in decays])


def main(argv: list[str] | None = None) -> dict[str, torch.Tensor]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="decoupling.png", help="PNG file to write")
    parser.add_argument("--grid", type=int, default=6, help="points per axis")
    parser.add_argument("--steps", type=int, default=400, help="training steps per run")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.set_num_threads(1)  # tiny matrices: threads only add synchronisation
    task = make_task()
    lrs = torch.logspace(-4, -1, args.grid).tolist()
    decay_ranges = {"Adam + L2": (-5, 0), "AdamW": (-5, -1)}
    results = {}
    errors = {}
    for kind in ("Adam", "AdamW"):
        lo, hi = decay_ranges["Adam + L2" if kind == "Adam" else "AdamW"]
        decays = torch.logspace(lo, hi, args.grid).tolist()
        errors[kind] = (decays, grid(kind, lrs, decays, task, args.steps))
    vmin = min(e.min().item() for _, e in errors.values())
    vmax = max(e.max().item() for _, e in errors.values())
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
    for ax, (title, kind) in zip(axes, [("Adam + L2", "Adam"), ("AdamW", "AdamW")], strict=True):
        decays, err = errors[kind]
        results[kind] = err
        im = ax.imshow(err, origin="lower", cmap="viridis_r", aspect="auto", vmin=vmin, vmax=vmax)
        ax.set_xticks(range(len(lrs)), [f"{v:.0e}" for v in lrs], rotation=45)
        ax.set_yticks(range(len(decays)), [f"{v:.0e}" for v in decays])
        ax.set_xlabel("learning rate")
        ax.set_ylabel("L2 coefficient" if kind == "Adam" else "decay per step")
        best = divmod(int(err.argmin()), len(lrs))
        ax.plot(best[1], best[0], "r*", markersize=12)
        ax.set_title(f"{title}: test error (best {err.min():.3f})")
        fig.colorbar(im, ax=ax)
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
