"""A tiny training loop run twice, once with torch.amp.GradScaler, once with ours.

The inf/NaN injection plan is drawn up front from its own RNG, so both runs see the
same corrupted gradients at the same steps.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field

import torch


def torch_scaler(**kwargs):
    return torch.amp.GradScaler("cpu", **kwargs)


def torch_found_inf(scaler, optimizer) -> bool:
    return bool(sum(v.item() for v in scaler._found_inf_per_device(optimizer).values()))


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(7, 13), torch.nn.Tanh(), torch.nn.Linear(13, 3)
    )  # awkward sizes: 7 -> 13 -> 3


def injection_plan(steps: int, seed: int, rate: float = 0.3) -> list[tuple | None]:
    """Per step: None, or (which param, flat index, value) to write into its grad."""
    rng = random.Random(seed)
    plan = []
    for _ in range(steps):
        if rng.random() < rate:
            value = rng.choice([float("inf"), float("-inf"), float("nan")])
            plan.append((rng.randrange(4), rng.randrange(3), value))
        else:
            plan.append(None)
    return plan


OPTIMIZERS = {
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw_fused": lambda p: torch.optim.AdamW(p, lr=1e-2, fused=True),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-3),
}


@dataclass
class Trajectory:
    scales: list[float] = field(default_factory=list)
    trackers: list[int] = field(default_factory=list)
    skipped: list[bool] = field(default_factory=list)
    params: list[torch.Tensor] = field(default_factory=list)
    state_dicts: list[dict] = field(default_factory=list)


def train(
    scaler,
    *,
    ours: bool,
    steps: int,
    plan,
    optimizer: str = "sgd_momentum",
    clip: float | None = None,
    seed: int = 0,
    model=None,
    opt=None,
    start: int = 0,
) -> tuple[Trajectory, torch.nn.Module, torch.optim.Optimizer]:
    """Train ``steps`` iterations starting at iteration ``start`` (data is per-iteration)."""
    model = model if model is not None else make_model(seed)
    opt = opt if opt is not None else OPTIMIZERS[optimizer](model.parameters())
    params = list(model.parameters())
    traj = Trajectory()
    for it in range(start, start + steps):
        gen = torch.Generator().manual_seed(1000 + it)
        x = torch.randn(5, 7, generator=gen)
        y = torch.randn(5, 3, generator=gen)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        if plan[it] is not None:
            which, index, value = plan[it]
            params[which].grad.view(-1)[index] = value
        if clip is not None:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, clip)
        if ours:
            stepped = scaler.step(opt)
            assert stepped is (not scaler.last_step_skipped)
        else:
            scaler.step(opt)
            stepped = not torch_found_inf(scaler, opt)
        scaler.update()
        traj.skipped.append(not stepped)
        traj.scales.append(scaler.get_scale())
        traj.trackers.append(scaler._get_growth_tracker())
        traj.state_dicts.append(copy.deepcopy(scaler.state_dict()))
    traj.params = [p.detach().clone() for p in params]
    return traj, model, opt


def assert_same(a: Trajectory, b: Trajectory) -> None:
    assert a.scales == b.scales
    assert a.trackers == b.trackers
    assert a.skipped == b.skipped
    for pa, pb in zip(a.params, b.params, strict=True):
        assert torch.equal(pa, pb)
