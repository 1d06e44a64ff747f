"""Why loss scaling: the same tiny model trained in fp32, fp16 without scaling and fp16
with dynamic loss scaling (+ fp32 master weights). No downloads; ~20 s on a laptop CPU.

    python examples/mixed_precision_demo.py --out docs/content/packages/amp-scaler

The regression target is small (|y| ~ 1e-3), so the loss is ~1e-6 and the gradients
are ~1e-8..1e-5: mostly below float16's smallest normal number (6.1e-5) and many below
its smallest subnormal (6.0e-8), where they flush to zero. Multiplying the loss by
2**16 moves them back into fp16's range; the scaler divides them out again in fp32.
The fp16 model runs real fp16 arithmetic on the CPU (slow, hence the tiny size).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from amp_scaler import GradScaler, MasterWeights

FP16_SMALLEST_SUBNORMAL = 2.0**-24  # ~6.0e-8: anything smaller rounds to 0
FP16_SMALLEST_NORMAL = 2.0**-14  # ~6.1e-5: below it precision degrades


def make_data(n: int = 256, d: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)  # (n, d)
    w = torch.randn(d, 1, generator=gen) / math.sqrt(d)
    y = 1e-3 * torch.sin(3 * x @ w)  # (n, 1), tiny targets -> tiny loss and gradients
    return x, y


def make_model(d: int = 16, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(d, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
        torch.nn.Linear(64, 1),
    )  # fmt: skip
    with torch.no_grad():  # outputs start at the targets' scale (~1e-3), as a small
        model[-1].weight.mul_(1e-3)  # output layer does in real networks
        model[-1].bias.zero_()
    return model


def fp32_gradients() -> torch.Tensor:
    """All parameter gradients (fp32) of the freshly initialised model, flattened."""
    x, y = make_data()
    model = make_model()
    torch.nn.functional.mse_loss(model(x), y).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def train(mode: str, steps: int = 200, lr: float = 1e-3) -> list[float]:
    """mode: "fp32", "fp16" (no scaling) or "fp16+scaling". Returns the fp32 loss curve."""
    x, y = make_data()
    model = make_model()
    if mode == "fp32":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        scaler = GradScaler(enabled=False)
    else:
        model = model.half()
        opt = MasterWeights(torch.optim.Adam(model.parameters(), lr=lr))
        scaler = GradScaler(init_scale=2.0**16, enabled=mode == "fp16+scaling")
    batch_x = x.half() if mode != "fp32" else x
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(batch_x).float(), y)  # loss in fp32
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for the PNGs")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.mkdir(parents=True, exist_ok=True)
    curves = {mode: train(mode, args.steps) for mode in ("fp32", "fp16", "fp16+scaling")}
    for mode, losses in curves.items():
        print(f"{mode:>13}: loss {losses[0]:.3e} -> {losses[-1]:.3e}")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for mode, losses in curves.items():
        ax.semilogy(losses, label=mode)
    ax.set_xlabel("step")
    ax.set_ylabel("MSE loss (fp32)")
    ax.set_title("Tiny gradients: fp16 needs loss scaling")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "loss_curves.png", dpi=110)

    grads = fp32_gradients().abs()
    grads = grads[grads > 0]
    below_sub = (grads < FP16_SMALLEST_SUBNORMAL).float().mean().item()
    below_normal = (grads < FP16_SMALLEST_NORMAL).float().mean().item()
    scaled_sub = (grads * 2.0**16 < FP16_SMALLEST_SUBNORMAL).float().mean().item()
    print(f"gradients that flush to 0 in fp16: {below_sub:.1%} unscaled, {scaled_sub:.1%} "
          f"scaled by 2**16; below fp16's smallest normal: {below_normal:.1%}")  # fmt: skip
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = torch.logspace(-12, 0, 97).tolist()
    ax.hist(grads.tolist(), bins=bins, alpha=0.7, label="|grad| (fp32)")
    ax.hist((grads * 2.0**16).tolist(), bins=bins, alpha=0.5, label="|grad| x 2**16")
    ax.axvline(FP16_SMALLEST_SUBNORMAL, color="red", ls="--", label="fp16 smallest subnormal")
    ax.axvline(FP16_SMALLEST_NORMAL, color="orange", ls=":", label="fp16 smallest normal")
    ax.axvline(65504, color="black", ls="-.", label="fp16 max")
    ax.set_xscale("log")
    ax.set_xlabel("gradient magnitude")
    ax.set_ylabel("count")
    ax.set_title(f"{below_sub:.0%} of the gradients flush to zero in fp16 unscaled")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out / "grad_histogram.png", dpi=110)


if __name__ == "__main__":
    main()
