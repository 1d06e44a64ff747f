"""amp-scaler: unscale + inf/NaN check over many gradient tensors, ours vs torch.

The peer is torch's fused kernel ``torch._amp_foreach_non_finite_check_and_unscale_``
(what ``torch.amp.GradScaler.unscale_`` runs). The gradients are unscaled in place on
every call, so ``inv_scale`` is just below 1 (1 - 2**-10): hundreds of calls keep the
values normal (no drift into subnormals or zeros), and it takes the same branch as a
real loss scale (inv_scale < 1).
"""

from __future__ import annotations

import importlib.util
from collections import defaultdict

import amp_scaler
import pytest
import torch

import harness

PACKAGE = "amp-scaler"
INV_SCALE = 1.0 - 2.0**-10
# (total gradient elements, number of tensors): the issue's ~10M in ~100 tensors
SIZES = harness.pick(cpu=[(10_000_000, 100)], gpu=[(10_000_000, 100), (100_000_000, 100)])
DTYPES = harness.pick(cpu=["float32", "bfloat16"], gpu=["float32", "bfloat16", "float16"])
DEVICE = harness.device()
HAS_TRITON = importlib.util.find_spec("triton") is not None
ROUNDS = harness.pick(cpu=15, gpu=None)  # fixed on the CPU: the preset must stay short

KERNEL_IMPLS = ["foreach", "triton", "auto", "torch._amp_foreach_non_finite_check_and_unscale_"]
KERNEL_PEER = "torch._amp_foreach_non_finite_check_and_unscale_"


def _grads(total: int, count: int, dtype: torch.dtype) -> list[torch.Tensor]:
    # uneven sizes around total / count, like a model's mix of matrices and vectors
    gen = torch.Generator().manual_seed(0)
    weights = torch.rand(count, generator=gen) + 0.5
    sizes = (weights / weights.sum() * total).long().clamp_min(1).tolist()
    return [torch.randn(n, generator=gen).to(device=DEVICE, dtype=dtype) for n in sizes]


def _params(total, count, dtype):
    return {"numel": total, "tensors": count, "inv_scale": INV_SCALE, "dtype": dtype}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("total", "count"), SIZES)
@pytest.mark.parametrize("impl", KERNEL_IMPLS)
def test_unscale_and_check(benchmark, impl, total, count, dtype):
    if impl == "triton" and (DEVICE != "cuda" or not HAS_TRITON):
        pytest.skip("the Triton path is timed on CUDA only")
    grads = _grads(total, count, getattr(torch, dtype))
    numel = sum(g.numel() for g in grads)
    inv = torch.tensor(INV_SCALE, device=DEVICE)
    found = torch.zeros((), device=DEVICE)
    peer_fn = None
    if impl == KERNEL_PEER:
        fn = lambda: torch._amp_foreach_non_finite_check_and_unscale_(grads, found, inv)
    else:
        fn = lambda: amp_scaler.unscale_and_check_(grads, inv, found_inf=found, impl=impl)
        peer_grads = [g.clone() for g in grads]  # the peer's own copy, alternated with ours
        peer_fn = lambda: torch._amp_foreach_non_finite_check_and_unscale_(peer_grads, found, inv)
    harness.measure(
        benchmark, fn,
        package=PACKAGE, case="unscale_and_check", impl=impl,
        peer="" if impl == KERNEL_PEER else KERNEL_PEER,
        dtype=dtype, params=_params(numel, count, dtype), device=DEVICE,
        work=numel, work_unit="grad",
        bytes=2 * numel * grads[0].element_size(),  # read + write every gradient
        rounds=ROUNDS, paired_peer=peer_fn,
    )  # fmt: skip
    assert found.item() == 0.0  # the check ran on finite gradients only


SCALER_IMPLS = ["amp_scaler.GradScaler", "torch.amp.GradScaler"]


@pytest.mark.parametrize(("total", "count"), SIZES)
@pytest.mark.parametrize("impl", SCALER_IMPLS)
def test_grad_scaler_unscale(benchmark, impl, total, count):
    """The whole ``scaler.unscale_(optimizer)``: walk the params, group, unscale, check."""
    params = [torch.nn.Parameter(torch.empty_like(g)) for g in _grads(total, count, torch.float32)]
    for p in params:
        p.grad = torch.randn_like(p)
    numel = sum(p.numel() for p in params)
    opt = torch.optim.SGD(params, lr=0.1)
    init_scale = 1.0 / INV_SCALE
    if impl == "torch.amp.GradScaler":
        scaler = torch.amp.GradScaler(DEVICE, init_scale=init_scale)
    else:
        scaler = amp_scaler.GradScaler(init_scale=init_scale)
    scaler.scale(torch.ones((), device=DEVICE))

    def unscaler(scaler, opt):
        def unscale():
            scaler.unscale_(opt)
            # start the next "iteration" without update(): both keep this dict per iteration
            fresh = defaultdict(scaler._per_optimizer_states.default_factory)
            scaler._per_optimizer_states = fresh

        return unscale

    unscale = unscaler(scaler, opt)
    peer_unscale = None
    if impl != "torch.amp.GradScaler":  # torch's scaler on its own copy, alternated
        peer_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
        for p, q in zip(peer_params, params, strict=True):
            p.grad = q.grad.clone()
        peer_scaler = torch.amp.GradScaler(DEVICE, init_scale=init_scale)
        peer_scaler.scale(torch.ones((), device=DEVICE))
        peer_unscale = unscaler(peer_scaler, torch.optim.SGD(peer_params, lr=0.1))

    harness.measure(
        benchmark, unscale,
        package=PACKAGE, case="grad_scaler_unscale_", impl=impl,
        peer="" if impl == "torch.amp.GradScaler" else "torch.amp.GradScaler",
        dtype="float32", params=_params(numel, count, "float32"), device=DEVICE,
        work=numel, work_unit="grad", bytes=8 * numel, rounds=ROUNDS,
        paired_peer=peer_unscale,
    )  # fmt: skip
    assert all(torch.isfinite(p.grad).all() for p in params[:3])
