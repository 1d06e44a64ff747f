"""unscale_and_check_ against torch's fused kernel, bit for bit, on every path."""

import importlib.util

import pytest
import torch
from amp_scaler import unscale_and_check_

HAS_TRITON = importlib.util.find_spec("triton") is not None
IMPLS = ["reference", "foreach", "torch"] + (["triton"] if HAS_TRITON else [])
SIZES = [1, 7, 127, 4099, 10007]  # primes and non-multiples of the Triton BLOCK
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
# power-of-two scales (the usual ones), 1.0 (check only), non-powers of two, scales
# below 1 (inv > 1: products may overflow), and a zero inv_scale
INV_SCALES = [2.0**-16, 1.0, 1 / 3.0, 0.7, 3.7, 0.0]


def _grads(dtype, inject, seed=0):
    gen = torch.Generator().manual_seed(seed)
    grads = [(torch.randn(n, generator=gen) * 300).to(dtype) for n in SIZES]
    grads.insert(2, (torch.randn(3, 5, generator=gen) * 300).to(dtype).t())  # non-contiguous
    if inject == "inf":
        grads[3][17] = float("inf")
    elif inject == "nan":
        grads[1][0] = float("nan")
        grads[-1][-1] = float("-inf")
    return grads


def _same(a, b):
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("inv", INV_SCALES)
@pytest.mark.parametrize("inject", [None, "inf", "nan"])
def test_matches_torch_kernel(impl, dtype, inv, inject):
    grads = _grads(dtype, inject)
    theirs = [g.clone() for g in grads]
    found_theirs = torch.zeros(())
    torch._amp_foreach_non_finite_check_and_unscale_(theirs, found_theirs, torch.tensor(inv))
    ours = [g.clone() for g in grads]
    found = unscale_and_check_(ours, torch.tensor(inv), impl=impl)
    assert found.item() == found_theirs.item() == (0.0 if inject is None else 1.0)
    exact_rounding = not (impl == "triton" and dtype == torch.bfloat16)
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == dtype and a.shape == b.shape
        if exact_rounding or inv in (2.0**-16, 1.0, 0.0):
            assert _same(a, b)
        else:
            # Triton's CPU interpreter truncates float32 -> bfloat16 (the GPU rounds to
            # nearest): allow one bfloat16 ulp there.
            torch.testing.assert_close(a.float(), b.float(), rtol=2**-7, atol=0, equal_nan=True)


@pytest.mark.parametrize("impl", IMPLS)
def test_finite_values_whose_sum_overflows_are_not_flagged(impl):
    # 3e38 + 3e38 overflows a float32 sum; the values themselves are finite.
    grads = [torch.full((1000,), 3.0e38), torch.full((5,), -3.0e38)]
    found = unscale_and_check_(grads, 2.0**-16, impl=impl)
    assert found.item() == 0.0
    assert torch.isfinite(grads[0]).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_check_sees_values_before_scaling(impl):
    # inv_scale > 1 pushes finite values to inf: like torch, that is not "found".
    grads = [torch.full((9,), 3.0e38)]
    found = unscale_and_check_(grads, 4.0, impl=impl)
    assert found.item() == 0.0
    assert torch.isinf(grads[0]).all()
    # inv_scale == 0 turns inf into NaN and finite into 0; the inf is found
    grads = [torch.tensor([1.0, float("inf")])]
    assert unscale_and_check_(grads, 0.0, impl=impl).item() == 1.0


@pytest.mark.parametrize("impl", IMPLS)
def test_found_inf_is_only_raised_never_cleared(impl):
    found = torch.zeros(())
    unscale_and_check_([torch.tensor([float("nan")])], 0.5, found_inf=found, impl=impl)
    out = unscale_and_check_([torch.randn(4)], 0.5, found_inf=found, impl=impl)
    assert out is found and found.item() == 1.0


@pytest.mark.parametrize("impl", IMPLS)
def test_mixed_dtypes_and_empty(impl):
    grads = [torch.randn(5), torch.randn(6).bfloat16(), torch.empty(0)]
    ref = [g.clone() for g in grads]
    assert unscale_and_check_(grads, 0.25, impl=impl).item() == 0.0
    for a, b in zip(grads, ref, strict=True):
        assert torch.equal(a, b * 0.25)
    assert unscale_and_check_([], 0.5, impl=impl).item() == 0.0


def test_auto_matches_on_cpu():
    grads = _grads(torch.float32, "inf")
    ref = [g.clone() for g in grads]
    found = torch.zeros(())
    torch._amp_foreach_non_finite_check_and_unscale_(ref, found, torch.tensor(0.125))
    assert unscale_and_check_(grads, 0.125).item() == found.item()
    assert all(_same(a, b) for a, b in zip(grads, ref, strict=True))


def test_rejects_non_list():
    with pytest.raises(TypeError, match="tensors"):
        unscale_and_check_(torch.randn(3), 0.5)


def test_rejects_non_tensor_element():
    with pytest.raises(TypeError, match=r"tensors\[1\]"):
        unscale_and_check_([torch.randn(3), 3.0], 0.5)


def test_rejects_integer_tensor():
    with pytest.raises(TypeError, match=r"tensors\[0\].*floating"):
        unscale_and_check_([torch.arange(3)], 0.5)


def test_rejects_sparse_tensor():
    with pytest.raises(TypeError, match=r"tensors\[0\].*dense"):
        unscale_and_check_([torch.randn(3).to_sparse()], 0.5)


def test_rejects_bad_inv_scale():
    with pytest.raises(TypeError, match="inv_scale"):
        unscale_and_check_([torch.randn(3)], "0.5")
    with pytest.raises(ValueError, match="inv_scale"):
        unscale_and_check_([torch.randn(3)], torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="inv_scale"):
        unscale_and_check_([torch.randn(3)], torch.tensor(0.5, dtype=torch.float64))


def test_rejects_bad_found_inf():
    with pytest.raises(ValueError, match="found_inf"):
        unscale_and_check_([torch.randn(3)], 0.5, found_inf=torch.zeros(2))


def test_rejects_unknown_impl():
    with pytest.raises(ValueError, match="impl"):
        unscale_and_check_([torch.randn(3)], 0.5, impl="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["foreach", "triton"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_matches_torch_kernel(impl, dtype):
    for inject in (None, "inf", "nan"):
        grads = [g.cuda() for g in _grads(dtype, inject)]
        theirs = [g.clone() for g in grads]
        found_theirs = torch.zeros((), device="cuda")
        inv = torch.tensor(0.7, device="cuda")
        torch._amp_foreach_non_finite_check_and_unscale_(theirs, found_theirs, inv)
        found = unscale_and_check_(grads, inv, impl=impl)
        assert found.item() == found_theirs.item()
        assert all(_same(a, b) for a, b in zip(grads, theirs, strict=True))
