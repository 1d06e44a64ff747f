"""``unscale_and_check_``: divide gradients by the loss scale and detect inf/NaN, fused.

The reference (``reference.unscale_and_check_reference_``) is two passes per tensor:
an ``isfinite(...).all()`` and a multiplication. The fast paths:

- ``"foreach"`` (CPU, and CUDA without Triton): multiply first, then check the
  *result* with one reduction that stays in cache. That is exact only when
  ``0 < inv_scale <= 1`` (then ``|x * inv| <= |x|`` cannot overflow, and inf/NaN stay
  inf/NaN); for other ``inv_scale`` values the original values are checked first, as
  torch does. A float32 sum is finite iff no element is inf/NaN *unless* finite values
  overflow the sum, so a non-finite sum is re-checked exactly with ``isfinite``.
- ``"triton"`` (CUDA): one multi-tensor kernel launch, see ``triton_unscale.py``.
- ``"torch"``: torch's own fused kernel (``torch._amp_foreach_non_finite_check_and_unscale_``).
  One read and one write per element; no composition of PyTorch ops can do that (the
  foreach path needs a second, in-cache read), so ``"auto"`` uses it on the CPU.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Sequence

import torch

from .reference import unscale_and_check_reference_

IMPLS = ("auto", "foreach", "triton", "torch", "reference")
_FLOAT_DTYPE_SET = frozenset((torch.float16, torch.bfloat16, torch.float32, torch.float64))


def _validate(
    tensors: Sequence[torch.Tensor], inv_scale: torch.Tensor | float, found_inf, impl: str
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"tensors must be a list or tuple of tensors, got {type(tensors).__name__}")
    tensors = list(tensors)
    # This runs every iteration over every gradient, so the common case is checked with
    # a few set comprehensions (~0.3 us per tensor); the loop that names the offending
    # index only runs when something is wrong.
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        i, t = next((i, t) for i, t in enumerate(tensors) if not isinstance(t, torch.Tensor))
        raise TypeError(f"tensors[{i}] must be a torch.Tensor, got {type(t).__name__}")
    if not {t.dtype for t in tensors} <= _FLOAT_DTYPE_SET:
        i, t = next((i, t) for i, t in enumerate(tensors) if t.dtype not in _FLOAT_DTYPE_SET)
        raise TypeError(
            f"tensors[{i}] must be a floating-point tensor "
            f"(float16/bfloat16/float32/float64), got {t.dtype}"
        )
    if {t.layout for t in tensors} - {torch.strided}:
        i, t = next((i, t) for i, t in enumerate(tensors) if t.layout != torch.strided)
        raise TypeError(
            f"tensors[{i}] must be a dense (strided) tensor, got layout {t.layout}; "
            "pass a sparse tensor's ._values() instead"
        )
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    device = tensors[0].device if tensors else None
    if len({t.device for t in tensors}) > 1:
        i, t = next((i, t) for i, t in enumerate(tensors) if t.device != device)
        raise ValueError(
            f"tensors must all be on one device, got tensors[0] on {device} "
            f"and tensors[{i}] on {t.device}"
        )
    if isinstance(inv_scale, bool) or not isinstance(inv_scale, (int, float, torch.Tensor)):
        raise TypeError(
            f"inv_scale must be a float or a 1-element float32 tensor, "
            f"got {type(inv_scale).__name__}"
        )
    if isinstance(inv_scale, torch.Tensor):
        if inv_scale.numel() != 1 or inv_scale.dtype != torch.float32:
            raise ValueError(
                "inv_scale must be a 1-element float32 tensor, got shape "
                f"{tuple(inv_scale.shape)} and dtype {inv_scale.dtype}"
            )
        inv_scale = inv_scale.reshape(())
    else:
        inv_scale = torch.tensor(float(inv_scale), dtype=torch.float32, device=device)
    if found_inf is None:
        found_inf = torch.zeros((), dtype=torch.float32, device=inv_scale.device)
    elif (
        not isinstance(found_inf, torch.Tensor)
        or found_inf.numel() != 1
        or found_inf.dtype != torch.float32
    ):
        got = (
            f"shape {tuple(found_inf.shape)} and dtype {found_inf.dtype}"
            if isinstance(found_inf, torch.Tensor)
            else type(found_inf).__name__
        )
        raise ValueError(f"found_inf must be a 1-element float32 tensor, got {got}")
    if device is not None and (inv_scale.device != device or found_inf.device != device):
        raise ValueError(
            f"inv_scale and found_inf must be on the tensors' device {device}, "
            f"got {inv_scale.device} and {found_inf.device}"
        )
    return tensors, inv_scale, found_inf


def _all_finite_exact(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def _foreach_unscale_and_check_(
    tensors: list[torch.Tensor], inv_scale: torch.Tensor, found_inf: torch.Tensor
) -> torch.Tensor:
    """CPU-friendly path: per tensor, one multiply and one in-cache reduction."""
    if not tensors:
        return found_inf
    if inv_scale.device.type != "cpu":
        # On an accelerator, reading inv_scale (a sync) to choose a path is not worth it:
        # check the originals with one exact reduction per tensor, then one foreach mul.
        with torch.no_grad():
            bad = torch.stack([(~torch.isfinite(t)).any() for t in tensors]).any()
            found_inf.copy_(torch.where(bad, torch.ones_like(found_inf), found_inf))
            _foreach_mul_opmath_(tensors, inv_scale)
        return found_inf
    inv = float(inv_scale)
    any_bad = False
    with torch.no_grad():
        if inv == 1.0:  # torch leaves the values untouched; only check
            for t in tensors:
                if not _sum_is_finite(t) and not _all_finite_exact(t):
                    any_bad = True
                    break
        elif 0.0 < inv < 1.0:
            for t in tensors:
                t.mul_(inv_scale)  # stays in cache for the reduction below
                if not any_bad and not _sum_is_finite(t) and not _all_finite_exact(t):
                    any_bad = True
        else:  # inv > 1 (can overflow), 0, inf or NaN: check the originals first
            for t in tensors:
                if not any_bad and not _sum_is_finite(t) and not _all_finite_exact(t):
                    any_bad = True
            _foreach_mul_opmath_(tensors, inv_scale)
        if any_bad:
            found_inf.fill_(1.0)
    return found_inf


def _sum_is_finite(t: torch.Tensor) -> bool:
    # Summing in float32 (float64 for float64 tensors) is a cheap necessary condition:
    # any inf/NaN makes the sum inf/NaN. Finite values can overflow it, hence the
    # exact re-check by the caller when this says False.
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    return bool(torch.isfinite(t.sum(dtype=dtype)))


def _foreach_mul_opmath_(tensors: list[torch.Tensor], inv_scale: torch.Tensor) -> None:
    # A 0-dim float32 tensor operand: torch multiplies fp16/bf16 in float32 and rounds
    # back, which is what torch's unscale kernel does too.
    torch._foreach_mul_(tensors, inv_scale)


def unscale_and_check_(
    tensors: Sequence[torch.Tensor],
    inv_scale: torch.Tensor | float,
    *,
    found_inf: torch.Tensor | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Multiply every tensor by ``inv_scale`` in place and flag inf/NaN, in one fused pass.

    Args:
        tensors: list of dense float16/bfloat16/float32/float64 tensors on one device
            (any shapes; gradients, typically). Mixed dtypes are grouped internally.
        inv_scale: ``1 / loss_scale`` as a Python float or a 1-element float32 tensor on
            the tensors' device.
        found_inf: optional 1-element float32 tensor on that device. It is set to 1.0 if
            any element of any tensor was inf or NaN *before* unscaling, and left as it
            was otherwise (so one flag can collect several calls). Created (0.0) if None.
        impl: ``"auto"`` (Triton on CUDA when available, else torch's fused kernel),
            ``"foreach"`` (pure PyTorch ops), ``"triton"`` (CUDA, or the CPU interpreter
            with ``TRITON_INTERPRET=1``), ``"torch"`` (torch's fused kernel) or
            ``"reference"``.

    Returns:
        ``found_inf`` (a 0-dim float32 tensor; no host sync on CUDA).

    Matches ``torch._amp_foreach_non_finite_check_and_unscale_`` bit for bit: the product
    is formed in float32 (float64 for float64 tensors) and rounded to the tensor dtype,
    and the check sees the values before the multiplication.
    """
    tensors, inv_scale, found_inf = _validate(tensors, inv_scale, found_inf, impl)
    return _unscale_and_check_validated_(tensors, inv_scale, found_inf, impl)


def _unscale_and_check_validated_(
    tensors: list[torch.Tensor], inv_scale: torch.Tensor, found_inf: torch.Tensor, impl: str
) -> torch.Tensor:
    """``unscale_and_check_`` on arguments already known good (GradScaler's own calls).

    ``tensors``: dense floating-point tensors on one device; ``inv_scale``/``found_inf``:
    0-dim float32 tensors on that device.
    """
    if impl == "auto":
        impl = _auto_impl(tensors)
    if impl == "reference":
        return unscale_and_check_reference_(tensors, inv_scale, found_inf)
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) <= 1:  # the usual case: no regrouping
        groups = [tensors] if tensors else []
    else:
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = defaultdict(list)
        for t in tensors:
            by_dtype[t.dtype].append(t)
        groups = list(by_dtype.values())
    for group in groups:
        if impl == "triton":
            from .triton_unscale import triton_unscale_and_check_

            triton_unscale_and_check_(group, inv_scale, found_inf)
        elif impl == "torch":
            with torch.no_grad():
                torch._amp_foreach_non_finite_check_and_unscale_(group, found_inf, inv_scale)
        else:
            _foreach_unscale_and_check_(group, inv_scale, found_inf)
    return found_inf


def _auto_impl(tensors: list[torch.Tensor]) -> str:
    """Triton on CUDA when it is installed, else torch's fused kernel, else foreach."""
    if tensors and tensors[0].is_cuda and _has_triton():
        return "triton"
    return "torch" if hasattr(torch, "_amp_foreach_non_finite_check_and_unscale_") else "foreach"


@functools.cache
def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
