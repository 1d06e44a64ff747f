"""adamw-ref: one AdamW step over many parameter tensors, ours vs torch.optim.AdamW.

The baseline row is ``torch.optim.AdamW(fused=True)``, torch's fastest path on both the
CPU and CUDA; every other row (ours, and torch's default for reference) is compared
with it. A step reads param, grad, exp_avg, exp_avg_sq and writes param, exp_avg,
exp_avg_sq: 7 arrays of 4 bytes per float32 parameter, the ``bytes`` of each row.
Gradients are fixed random tensors, so every call does a full, non-trivial update.
"""

from __future__ import annotations

import importlib.util

import adamw_ref
import pytest
import torch
from adamw_ref import cpp_impl

import harness

PACKAGE = "adamw-ref"
DEVICE = harness.device()
HAS_TRITON = importlib.util.find_spec("triton") is not None
PEER = "torch.optim.AdamW(fused=True)"
# (total parameters, number of tensors): the issue's ~10M in ~100 tensors and ~1M.
SIZES = harness.pick(
    cpu=[(10_000_000, 100), (1_000_000, 20)],
    gpu=[(10_000_000, 100), (1_000_000, 20), (100_000_000, 200)],
)
ROUNDS = harness.pick(cpu=5, gpu=None)  # fixed on the CPU: the preset must stay short
IMPLS = [
    "triton",
    "cpp",
    "compiled",
    "reference",
    "foreach",
    PEER,
    "torch.optim.AdamW(foreach=False)",
    "torch.optim.AdamW(foreach=True)",
]
CPU_SKIP = {"triton", "torch.optim.AdamW(foreach=True)"}  # GPU only / nothing new on CPU
HAS_CPP_KERNEL = DEVICE == "cpu" and cpp_impl.unavailable_reason() is None


def _params(total: int, count: int) -> list[torch.Tensor]:
    """Uneven sizes around total / count, like a model's mix of matrices and vectors."""
    gen = torch.Generator().manual_seed(0)
    weights = torch.rand(count, generator=gen) + 0.5
    sizes = (weights / weights.sum() * total).long().clamp_min(1).tolist()
    params = []
    for n in sizes:
        p = torch.randn(n, generator=gen).to(DEVICE).requires_grad_()
        p.grad = torch.randn(n, generator=gen).to(DEVICE)
        params.append(p)
    return params


def _optimizer(impl: str, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    hyper = {"lr": 1e-3, "weight_decay": 1e-2}
    if impl == PEER:
        return torch.optim.AdamW(params, fused=True, **hyper)
    if impl.startswith("torch.optim.AdamW(foreach="):
        return torch.optim.AdamW(params, foreach=impl.endswith("True)"), **hyper)
    return adamw_ref.AdamW(params, impl=impl, **hyper)


@pytest.mark.parametrize(("total", "count"), SIZES)
@pytest.mark.parametrize("impl", IMPLS)
def test_adamw_step(benchmark, impl, total, count):
    if DEVICE == "cpu" and impl in CPU_SKIP:
        pytest.skip(f"{impl} is timed on CUDA only")
    if DEVICE == "cpu" and impl == "foreach" and total > 1_000_000:
        pytest.skip("CPU foreach is a loop of per-op passes: timed at 1M only (preset budget)")
    if impl == "triton" and not HAS_TRITON:
        pytest.skip("triton is not installed")
    if impl == "cpp" and not HAS_CPP_KERNEL:
        pytest.skip("the C++ kernel is CPU only and needs ninja and a compiler")
    params = _params(total, count)
    numel = sum(p.numel() for p in params)
    opt = _optimizer(impl, params)
    opt.step()  # state allocation and, for "compiled" and "cpp", compilation: not timed
    peer_step = None
    if impl != PEER:  # the fused peer on its own copy of the same parameters, alternated
        peer_params = [p.detach().clone().requires_grad_() for p in params]
        for p, q in zip(peer_params, params, strict=True):
            p.grad = q.grad.clone()
        peer_step = _optimizer(PEER, peer_params).step
    before = params[0].detach().clone()
    harness.measure(
        benchmark, opt.step,
        package=PACKAGE, case=f"adamw_step_{total // 1_000_000}M",
        impl=impl, peer="" if impl == PEER else PEER,
        dtype="float32", params={"numel": numel, "tensors": count, "weight_decay": 1e-2},
        device=DEVICE, work=numel, work_unit="param",
        bytes=7 * 4 * numel,
        rounds=ROUNDS, paired_peer=peer_step,
    )  # fmt: skip
    assert not torch.equal(params[0], before)  # the timed calls really updated the weights
