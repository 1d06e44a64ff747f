"""Every impl equals torch.optim.Adam/AdamW(foreach=False) after hundreds of steps."""

import adamw_ref
import pytest
import torch
from helpers import assert_close_params, make_pair, run_pair

CONFIGS = [
    pytest.param("AdamW", {}, id="adamw"),
    pytest.param("Adam", {"weight_decay": 0.05}, id="adam-l2"),
    pytest.param("AdamW", {"amsgrad": True, "maximize": True}, id="adamw-amsgrad-maximize"),
    pytest.param("Adam", {"amsgrad": True}, id="adam-amsgrad-nodecay"),
]
DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("cls_name", "hyper"), CONFIGS)
@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_eager_impls_match_torch_for_300_steps(impl, cls_name, hyper, dtype):
    ours, ps, peer, qs = make_pair(cls_name, impl, dtype, **hyper)
    run_pair(ours, ps, peer, qs, steps=300, lr_change_at=150)
    assert_close_params(ps, qs, dtype, "reference")
    # the moments too, not only the parameters
    for p, q in zip(ps, qs, strict=True):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(ours.state[p][key], peer.state[q][key], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("cls_name", "hyper"), CONFIGS)
def test_cpp_kernel_matches_torch_for_300_steps(cls_name, hyper, dtype):
    # Tensors longer than a vector, of size 1, of every rank, in several groups, grads
    # None on some steps, an lr change: params to float rounding (torch's sqrt is not
    # always correctly rounded), steps exactly.
    ours, ps, peer, qs = make_pair(cls_name, "cpp", dtype, **hyper)
    run_pair(ours, ps, peer, qs, steps=300, lr_change_at=150)
    assert_close_params(ps, qs, dtype, "cpp")
    for p, q in zip(ps, qs, strict=True):
        assert torch.equal(ours.state[p]["step"], peer.state[q]["step"])


def test_cpp_kernel_moments_are_torchs_bit_for_bit():
    # AdamW's m and v never see the parameter: with torch's roundings (the FMAs of its
    # vectorised lerp and addcmul) they must equal torch's exactly after many steps.
    ours, ps, peer, qs = make_pair("AdamW", "cpp", torch.float32, amsgrad=True)
    run_pair(ours, ps, peer, qs, steps=100)
    for p, q in zip(ps, qs, strict=True):
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            torch.testing.assert_close(ours.state[p][key], peer.state[q][key], rtol=0, atol=0)


def test_cpp_kernel_splits_a_group_between_threads_exactly():
    # Tensors of ~40k elements: at::parallel_for's ranges (grain 32k) start and end
    # inside tensors, and a thread's range spans two of them; empty tensors in between
    # occupy no room in the index space.
    gen = torch.Generator().manual_seed(3)
    shapes = [(200, 200), (0,), (40_001,), (3, 13_333), (0, 4), (40_000,), (17,)]
    ps = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, 2))
    try:
        ours = adamw_ref.AdamW(ps, lr=1e-2, weight_decay=0.1, impl="cpp")
        peer = torch.optim.AdamW(qs, lr=1e-2, weight_decay=0.1, foreach=False)
        for _ in range(20):
            for p, q in zip(ps, qs, strict=True):
                g = torch.randn(p.shape, generator=gen)
                p.grad, q.grad = g.clone(), g.clone()
            ours.step()
            peer.step()
    finally:
        torch.set_num_threads(threads)
    assert_close_params(ps, qs, torch.float32, "cpp")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("cls_name", "hyper"), CONFIGS)
def test_triton_matches_torch_for_200_steps(cls_name, hyper, dtype):
    pytest.importorskip("triton")
    ours, ps, peer, qs = make_pair(cls_name, "triton", dtype, **hyper)
    run_pair(ours, ps, peer, qs, steps=200, lr_change_at=100)
    assert_close_params(ps, qs, dtype, "triton")


def test_compiled_matches_torch_float32():
    # 9 tensors: one padded compiled chunk (and a size-1 tensor on the reference path),
    # one dtype and flag set (AdamW + amsgrad); the full matrix below is marked slow.
    import adamw_ref

    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(3 * i + 1, generator=gen).requires_grad_() for i in range(9)]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    ours = adamw_ref.AdamW(ps, lr=1e-2, amsgrad=True, impl="compiled")
    peer = torch.optim.AdamW(qs, lr=1e-2, amsgrad=True, foreach=False)
    for step in range(200):
        for p, q in zip(ps, qs, strict=True):
            g = torch.randn(p.shape, generator=gen)
            p.grad, q.grad = g.clone(), g.clone()
        if step == 100:
            ours.param_groups[0]["lr"] = peer.param_groups[0]["lr"] = 3e-3
        ours.step()
        peer.step()
    assert_close_params(ps, qs, torch.float32, "compiled")
    for p, q in zip(ps, qs, strict=True):
        torch.testing.assert_close(ours.state[p]["exp_avg_sq"], peer.state[q]["exp_avg_sq"])
        torch.testing.assert_close(ours.state[p]["max_exp_avg_sq"], peer.state[q]["max_exp_avg_sq"])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("cls_name", "hyper"), CONFIGS)
def test_compiled_matches_torch_full_matrix(cls_name, hyper, dtype):
    ours, ps, peer, qs = make_pair(cls_name, "compiled", dtype, **hyper)
    run_pair(ours, ps, peer, qs, steps=200, lr_change_at=100)
    assert_close_params(ps, qs, dtype, "compiled")


def test_compiled_skips_params_without_grad_float64():
    # Some grads None on some steps; float64 (the slow matrix covers the rest). 21 tensors
    # of mixed ranks and sizes: one full compiled chunk, one padded tail chunk, and the
    # sizes-1 tensors that take the reference path; an lr change and new steps must not
    # compile anything new (scalars and step counters are tensors inside the graph).
    import adamw_ref
    from adamw_ref import compiled

    gen = torch.Generator().manual_seed(2)
    shapes = [(13,), (13,), (1,), (7, 3), (1, 4), (1, 1)] + [(5 + 3 * i,) for i in range(15)]
    assert len(shapes) > compiled.CHUNK
    ps = [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in shapes]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    ours = adamw_ref.Adam(ps, lr=1e-2, weight_decay=0.1, impl="compiled")
    peer = torch.optim.Adam(qs, lr=1e-2, weight_decay=0.1, foreach=False)
    for step in range(60):
        if step == 30:
            ours.param_groups[0]["lr"] = peer.param_groups[0]["lr"] = 3e-3
        for i, (p, q) in enumerate(zip(ps, qs, strict=True)):
            g = None if (step + i) % 3 == 0 else torch.randn(p.shape, generator=gen, dtype=p.dtype)
            p.grad = None if g is None else g.clone()
            q.grad = None if g is None else g.clone()
        ours.step()
        peer.step()
        if step == 2:  # by now both ranks (1-D, 2-D) have had a gradient
            graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    assert_close_params(ps, qs, torch.float64, "compiled")
    for p, q in zip(ps, qs, strict=True):
        assert ours.state[p]["step"] == peer.state[q]["step"]
        torch.testing.assert_close(
            ours.state[p]["exp_avg_sq"], peer.state[q]["exp_avg_sq"], rtol=1e-12, atol=1e-12
        )
