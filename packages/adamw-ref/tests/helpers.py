"""Shared by the tests: a seeded multi-group training run under torch and under us."""

from __future__ import annotations

from collections.abc import Callable

import adamw_ref
import torch

# The Triton kernel runs on CUDA when there is a GPU, else in the interpreter (conftest).
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def device_for(impl: str) -> str:
    return TRITON_DEVICE if impl == "triton" else "cpu"


# Awkward sizes: a scalar-like 1, primes, one tensor longer than a Triton block (1024).
SHAPES = [(1,), (7, 3), (13,), (1031,), (2, 5, 3)]


def make_params(dtype: torch.dtype, seed: int = 0, device: str = "cpu") -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(s, generator=gen, dtype=torch.float64).to(device, dtype).requires_grad_()
        for s in SHAPES
    ]


def group_specs(params: list[torch.Tensor]) -> list[dict]:
    """Three groups with different hyperparameters (the third uses the defaults)."""
    return [
        {"params": params[:2], "lr": 3e-2, "betas": (0.8, 0.99), "weight_decay": 0.1},
        {"params": params[2:4], "lr": 1e-2, "eps": 1e-6, "weight_decay": 0.0},
        {"params": params[4:]},
    ]


def clone_params(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().clone().requires_grad_() for p in params]


def grad_for(step: int, index: int, param: torch.Tensor) -> torch.Tensor | None:
    """A seeded gradient, or None for some (step, tensor) pairs: those are skipped."""
    if (step + index) % 7 == 3:
        return None
    gen = torch.Generator().manual_seed(1000 * step + index)
    g = torch.randn(param.shape, generator=gen, dtype=torch.float64)
    return (g * (1 + index)).to(param.device, param.dtype)  # different scales per tensor


def run_pair(
    ours: torch.optim.Optimizer,
    ours_params: list[torch.Tensor],
    peer: torch.optim.Optimizer,
    peer_params: list[torch.Tensor],
    steps: int,
    *,
    start: int = 0,
    lr_change_at: int | None = None,
    grad_fn: Callable = grad_for,
) -> None:
    """Drive both optimizers with identical gradients; halve every lr at ``lr_change_at``."""
    for step in range(start, start + steps):
        if step == lr_change_at:
            for opt in (ours, peer):
                for group in opt.param_groups:
                    group["lr"] = group["lr"] * 0.5
        for i, (p, q) in enumerate(zip(ours_params, peer_params, strict=True)):
            g = grad_fn(step, i, p)
            p.grad = None if g is None else g.clone()
            q.grad = None if g is None else g.clone()
        ours.step()
        peer.step()


def make_pair(cls_name: str, impl: str, dtype: torch.dtype, **hyper):
    """(ours, ours_params, torch_optimizer, torch_params) on the same start point."""
    ours_params = make_params(dtype, device=device_for(impl))
    peer_params = clone_params(ours_params)
    ours_cls = getattr(adamw_ref, cls_name)
    peer_cls = getattr(torch.optim, cls_name)
    ours = ours_cls(group_specs(ours_params), impl=impl, **hyper)
    peer = peer_cls(group_specs(peer_params), foreach=False, **hyper)
    return ours, ours_params, peer, peer_params


def assert_close_params(ours_params, peer_params, dtype, impl):
    for p, q in zip(ours_params, peer_params, strict=True):
        if impl in ("reference", "foreach"):
            # Same ops in the same order as torch's single-tensor path: bit for bit.
            torch.testing.assert_close(p, q, rtol=0, atol=0)
        elif dtype == torch.float64:
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
        else:
            torch.testing.assert_close(p, q, rtol=2e-5, atol=2e-5)
