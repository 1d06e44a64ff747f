"""adam_update against the paper's equations in float64, plus dtypes torch supports."""

import adamw_ref
import pytest
import torch
from adamw_ref.functional import adam_update
from helpers import TRITON_DEVICE


def paper_adam(theta, grads, *, lr, beta1, beta2, eps, wd, decoupled, amsgrad, maximize):
    """Kingma & Ba Alg. 1 (+ Loshchilov & Hutter Alg. 2, + AMSGrad), elementwise in float64."""
    theta = theta.clone()
    m = torch.zeros_like(theta)
    v = torch.zeros_like(theta)
    v_max = torch.zeros_like(theta)
    for t, g in enumerate(grads, start=1):
        g = -g if maximize else g
        if decoupled:
            theta = theta - lr * wd * theta
        else:
            g = g + wd * theta
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        v_max = torch.maximum(v_max, v)
        m_hat = m / (1 - beta1**t)
        v_hat = (v_max if amsgrad else v) / (1 - beta2**t)
        theta = theta - lr * m_hat / (v_hat.sqrt() + eps)
    return theta


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_update_equals_the_paper_in_float64(decoupled, maximize, amsgrad):
    gen = torch.Generator().manual_seed(3)
    theta0 = torch.randn(61, generator=gen, dtype=torch.float64)
    grads = [torch.randn(61, generator=gen, dtype=torch.float64) for _ in range(150)]
    hyper = dict(lr=1e-2, beta1=0.85, beta2=0.995, eps=1e-8)
    expected = paper_adam(
        theta0, grads, wd=0.1, decoupled=decoupled, amsgrad=amsgrad, maximize=maximize, **hyper
    )
    theta = theta0.clone()
    m, v, v_max = torch.zeros_like(theta), torch.zeros_like(theta), torch.zeros_like(theta)
    step = torch.tensor(0.0)
    for g in grads:
        adam_update(
            theta, g, m, v, step, weight_decay=0.1, decoupled=decoupled, amsgrad=amsgrad,
            max_exp_avg_sq=v_max, maximize=maximize, **hyper,
        )  # fmt: skip
    assert step.item() == len(grads)
    torch.testing.assert_close(theta, expected, rtol=1e-12, atol=1e-12)


def test_adam_update_does_not_modify_the_gradient():
    g = torch.randn(5, dtype=torch.float64)
    g0 = g.clone()
    adam_update(
        torch.randn(5, dtype=torch.float64), g, torch.zeros(5, dtype=torch.float64),
        torch.zeros(5, dtype=torch.float64), torch.tensor(0.0), lr=1e-3, beta1=0.9,
        beta2=0.999, eps=1e-8, weight_decay=0.1, decoupled=False, amsgrad=False,
        max_exp_avg_sq=None, maximize=True,
    )  # fmt: skip
    assert torch.equal(g, g0)


def _run(opt_cls, impl, params, grads_per_step, **kw):
    opt = opt_cls(params, impl=impl, **kw) if impl else opt_cls(params, foreach=False, **kw)
    for grads in grads_per_step:
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
    return params


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("impl", ["reference", "foreach", "cpp", "auto"])
def test_half_precision_params_behave_like_torch(impl, dtype):
    gen = torch.Generator().manual_seed(5)
    start = [torch.randn(s, generator=gen).to(dtype) for s in [(17,), (3, 11)]]
    grads = [[torch.randn(p.shape, generator=gen).to(dtype) for p in start] for _ in range(60)]
    ours = _run(adamw_ref.AdamW, impl, [p.clone().requires_grad_() for p in start], grads)
    peer = _run(torch.optim.AdamW, None, [p.clone().requires_grad_() for p in start], grads)
    for p, q in zip(ours, peer, strict=True):
        assert p.dtype == dtype
        torch.testing.assert_close(p, q, rtol=0, atol=0)  # the same ops: the same rounding


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_triton_is_as_accurate_as_torch(dtype):
    # The kernel keeps its arithmetic in float32 and rounds once per store; torch rounds
    # after every op. Rule: error(ours) <= 2 * error(torch) + atol vs a float32 run.
    pytest.importorskip("triton")
    if dtype == torch.bfloat16 and not torch.cuda.is_available():
        pytest.skip("the Triton interpreter rounds float32 -> bfloat16 toward zero, GPUs do not")
    gen = torch.Generator().manual_seed(6)
    start = [torch.randn(s, generator=gen).to(TRITON_DEVICE) for s in [(17,), (1031,)]]
    grads = [[torch.randn(p.shape, generator=gen).to(TRITON_DEVICE) for p in start]
             for _ in range(40)]  # fmt: skip
    half = lambda ts: [t.to(dtype) for t in ts]
    exact = _run(adamw_ref.AdamW, "reference", [p.clone().requires_grad_() for p in start], grads)
    peer = _run(torch.optim.AdamW, None, [p.to(dtype).requires_grad_() for p in start],
                [half(g) for g in grads])  # fmt: skip
    ours = _run(adamw_ref.AdamW, "triton", [p.to(dtype).requires_grad_() for p in start],
                [half(g) for g in grads])  # fmt: skip
    for e, q, p in zip(exact, peer, ours, strict=True):
        err_ours = (p.float() - e).abs().max().item()
        err_torch = (q.float() - e).abs().max().item()
        assert err_ours <= 2 * err_torch + 1e-3, (err_ours, err_torch)


@pytest.mark.parametrize("impl", ["reference", "foreach", "cpp", "triton"])
def test_complex_params_match_torch(impl):
    if impl == "triton":
        pytest.importorskip("triton")
    gen = torch.Generator().manual_seed(7)
    device = TRITON_DEVICE if impl == "triton" else "cpu"
    start = [torch.randn(s, generator=gen, dtype=torch.complex64, device=device)
             for s in [(5,), (3, 4)]]  # fmt: skip
    grads = [[torch.randn(p.shape, generator=gen, dtype=p.dtype).to(device) for p in start]
             for _ in range(50)]  # fmt: skip
    kw = {"weight_decay": 0.05, "amsgrad": True}
    ours = _run(adamw_ref.Adam, impl, [p.clone().requires_grad_() for p in start], grads, **kw)
    peer = _run(torch.optim.Adam, None, [p.clone().requires_grad_() for p in start], grads, **kw)
    for p, q in zip(ours, peer, strict=True):
        tol = 0 if impl in ("reference", "foreach") else 2e-5
        torch.testing.assert_close(p, q, rtol=tol, atol=tol)


@pytest.mark.parametrize("impl", ["reference", "foreach", "cpp", "triton"])
def test_params_without_grad_are_skipped(impl):
    if impl == "triton":
        pytest.importorskip("triton")
    device = TRITON_DEVICE if impl == "triton" else "cpu"
    a = torch.randn(4, device=device, requires_grad=True)
    b = torch.randn(6, device=device, requires_grad=True)
    opt = adamw_ref.AdamW([a, b], impl=impl, weight_decay=0.1)
    a.grad = torch.randn(4, device=device)
    b0 = b.detach().clone()
    opt.step()
    assert torch.equal(b, b0)  # no grad: not even weight decay touches it
    assert b not in opt.state or len(opt.state[b]) == 0
    assert opt.state[a]["step"].item() == 1


def test_closure_is_evaluated_with_grad_and_its_loss_returned():
    torch.manual_seed(0)
    w = torch.randn(3, requires_grad=True)
    x = torch.randn(8, 3)
    opt = adamw_ref.AdamW([w], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (x @ w).square().mean()
        loss.backward()
        return loss

    losses = [opt.step(closure).item() for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]


def test_zero_grad_sets_grads_to_none():
    w = torch.randn(3, requires_grad=True)
    w.grad = torch.randn(3)
    opt = adamw_ref.Adam([w])
    opt.zero_grad()
    assert w.grad is None


def test_auto_on_cpu_takes_the_cpp_kernel_when_it_builds():
    from adamw_ref import cpp_impl
    from adamw_ref.optim import _resolve_impl

    expected = "cpp" if cpp_impl.kernel_available() else "reference"
    assert _resolve_impl("auto", torch.device("cpu")) == expected
    gen = torch.Generator().manual_seed(8)
    start = torch.randn(9, generator=gen)
    grads = [[torch.randn(9, generator=gen)] for _ in range(20)]
    ours = _run(adamw_ref.AdamW, "auto", [start.clone().requires_grad_()], grads)
    peer = _run(torch.optim.AdamW, None, [start.clone().requires_grad_()], grads)
    tol = 0 if expected == "reference" else 2e-5
    torch.testing.assert_close(ours[0], peer[0], rtol=tol, atol=tol)


def test_cpp_impl_without_ninja_is_a_clear_error(monkeypatch):
    from adamw_ref import cpp_impl

    monkeypatch.setattr(cpp_impl.importlib.util, "find_spec", lambda name: None)
    cpp_impl.unavailable_reason.cache_clear()
    try:
        opt = adamw_ref.AdamW([torch.randn(3, requires_grad=True)], impl="cpp")
        opt.param_groups[0]["params"][0].grad = torch.randn(3)
        with pytest.raises(RuntimeError, match="impl='cpp' needs ninja"):
            opt.step()
    finally:
        cpp_impl.unavailable_reason.cache_clear()


def test_cpp_kernel_rejects_mismatched_lists():
    # The op's own checks, for callers that bypass the optimizer.
    from adamw_ref import cpp_impl

    if not cpp_impl.kernel_available():
        pytest.skip("no toolchain for the C++ kernel here")
    p, g = torch.zeros(4), torch.zeros(5)
    m, v = torch.zeros(4), torch.zeros(4)
    with pytest.raises(RuntimeError, match=r"grads\[0\] has shape"):
        torch.ops.adamw_ref.adam_step_(
            [p], [g], [m], [v], [], [torch.tensor(0.0)], 1e-3, 0.9, 0.999, 1e-8, 0.0,
            True, False, False,
        )  # fmt: skip


def test_cpp_step_bumps_version_counters_like_torch():
    # The kernel writes through raw pointers; autograd must still see the in-place change.
    w = torch.randn(4, requires_grad=True)
    x = torch.randn(4, requires_grad=True)
    y = (w * x).sum()  # saves w for the backward
    opt = adamw_ref.AdamW([w], impl="cpp")
    w.grad = torch.randn(4)
    before = w._version
    opt.step()
    assert w._version > before and opt.state[w]["exp_avg"]._version > 0
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_cpp_group_of_mixed_dtypes_matches_torch():
    # One kernel call per dtype, half precision through the reference: each subset of the
    # group's lists (params, grads, moments, amsgrad maxima, steps) must stay aligned.
    gen = torch.Generator().manual_seed(9)
    dtypes = [torch.float32, torch.float64, torch.float16, torch.float32]
    start = [torch.randn(7 + i, generator=gen).to(d) for i, d in enumerate(dtypes)]
    grads = [[torch.randn(p.shape, generator=gen).to(p.dtype) for p in start] for _ in range(30)]
    kw = {"amsgrad": True, "weight_decay": 0.1}
    ours = _run(adamw_ref.AdamW, "cpp", [p.clone().requires_grad_() for p in start], grads, **kw)
    peer = _run(torch.optim.AdamW, None, [p.clone().requires_grad_() for p in start], grads, **kw)
    for p, q in zip(ours, peer, strict=True):
        tol = 0 if p.dtype == torch.float16 else 2e-5
        torch.testing.assert_close(p, q, rtol=tol, atol=tol)
