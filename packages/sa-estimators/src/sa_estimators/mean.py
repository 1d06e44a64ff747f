"""Incremental (streaming) mean: the simplest stochastic approximation.

The sample mean obeys w_k = w_{k-1} - (1/k) (w_{k-1} - x_k): Robbins-Monro on
g(w) = w - E[x] with the harmonic gain a_k = 1/k. Written that way it loses about one
rounding error per sample, which over 1e9 samples of large-offset data adds up to ~1e-11
relative. So the default mode keeps the same numbers in a better-conditioned form:

    shift  = the first observation       (so that x - shift is small)
    total  = sum_k (x_k - shift)          (pairwise within a batch, Neumaier across batches)
    mean   = shift + total / count

which is the exact mean to a few ulps whatever the stream length. With ``step_size``
given, the general recursion w_k = w_{k-1} - a_k (w_{k-1} - x_k) is run instead
(constant a gives an exponentially weighted mean that tracks non-stationary streams).

Scalars are appended to a small Python list and folded in with numpy once it fills (or
whenever a result is read): per-sample numpy calls would cost microseconds each.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._checks import as_float_array, check_nan_policy, positive_int
from .steps import StepSize, resolve_step

_FLOAT64 = np.dtype(np.float64)


def _neumaier_add(total: float, comp: float, value: float) -> tuple[float, float]:
    """Compensated addition: (total, comp) represents total + comp to ~1 ulp."""
    t = total + value
    if abs(total) >= abs(value):
        comp += (total - t) + value
    else:
        comp += (value - t) + total
    return t, comp


def validated_batch(x: Any, name: str, policy: str) -> tuple[np.ndarray, int]:
    """A 1-D float64 batch with non-finite entries rejected or dropped; (batch, n_dropped)."""
    arr = as_float_array(x, name)
    if arr.ndim > 1:
        raise ValueError(f"{name} must be a scalar or a 1-D batch, got shape {arr.shape}")
    arr = arr.reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} must not be an empty batch, got shape (0,)")
    finite = np.isfinite(arr)
    if finite.all():
        return arr, 0
    if policy == "raise":
        bad = int(np.flatnonzero(~finite)[0])
        raise ValueError(
            f"{name} must be finite, got {arr[bad]!r} at index {bad} "
            "(pass nan_policy='skip' to drop and count non-finite observations)"
        )
    return arr[finite], int(arr.size - finite.sum())


class IncrementalMean:
    """Streaming mean of scalars, fed one value or one 1-D batch at a time.

    Args:
        step_size: ``None`` (default) for the exact sample mean (numerically stable,
            equals ``math.fsum(xs) / n`` to ~1e-15 relative); or a :class:`StepSize`
            for the general recursion w_k = w_{k-1} - a_k (w_{k-1} - x_k), e.g.
            ``constant_step(0.01)`` for an exponentially weighted mean.
        w0: starting value of the general recursion. ``None`` starts at the first
            observation (as if a_1 = 1). Ignored when ``step_size`` is ``None``.
        nan_policy: ``"raise"`` (default): a NaN/inf observation raises ValueError and
            the estimator is left unchanged; ``"skip"``: it is dropped and counted in
            :attr:`n_skipped`.
        buffer_size: how many scalars are collected before they are folded in with numpy.

    Matches ``numpy.mean`` (float64) and ``river.stats.Mean`` on the same stream.
    """

    def __init__(
        self,
        step_size: StepSize | None = None,
        *,
        w0: float | None = None,
        nan_policy: str = "raise",
        buffer_size: int = 1024,
    ) -> None:
        self.step_size = None if step_size is None else resolve_step(step_size)
        self.nan_policy = check_nan_policy(nan_policy)
        self.buffer_size = positive_int(buffer_size, "buffer_size")
        if w0 is not None:
            w0 = float(as_float_array(w0, "w0"))
            if not np.isfinite(w0):
                raise ValueError(f"w0 must be finite, got {w0!r}")
        self._w0 = w0
        self._buf: list[float] = []
        self._count = 0
        self.n_skipped = 0
        # exact mode: shift + (total + comp) / count; general mode: _w
        self._shift = 0.0
        self._total = 0.0
        self._comp = 0.0
        self._w = 0.0 if w0 is None else w0

    # -- feeding -----------------------------------------------------------------------
    def update(self, x: Any) -> IncrementalMean:
        """Add one observation (a float) or a 1-D batch (array-like); returns ``self``."""
        if x.__class__ is float and x - x == 0.0:  # the hot path: a finite Python float
            buf = self._buf
            buf.append(x)
            if len(buf) >= self.buffer_size:
                self._flush()
            return self
        if (
            x.__class__ is np.ndarray
            and x.dtype is _FLOAT64
            and x.ndim == 1
            and x.size
            and self.step_size is None
            and self._count
        ):
            # batch hot path: a non-finite entry makes the sum non-finite, so the sum
            # doubles as the finiteness check (the slow path below sorts out why)
            batch_total = float((x - self._shift).sum())
            if batch_total - batch_total == 0.0:
                if self._buf:
                    self._flush()
                self._total, self._comp = _neumaier_add(self._total, self._comp, batch_total)
                self._count += x.size
                return self
        arr, dropped = validated_batch(x, "x", self.nan_policy)
        self.n_skipped += dropped
        if arr.size:
            self._flush()
            self._fold(arr)
        return self

    def update_many(self, xs: Any) -> IncrementalMean:
        """Alias of :meth:`update` for a batch (river's name)."""
        return self.update(np.asarray(xs))

    def _flush(self) -> None:
        if self._buf:
            arr = np.array(self._buf)
            self._buf.clear()
            self._fold(arr)

    def _fold(self, arr: np.ndarray) -> None:
        """Fold a finite 1-D float64 batch into the state."""
        n = arr.size
        if self.step_size is None:
            if self._count == 0:
                self._shift = float(arr[0])
            batch_total = float(np.sum(arr - self._shift))  # pairwise summation
            self._total, self._comp = _neumaier_add(self._total, self._comp, batch_total)
        else:
            ks = np.arange(self._count + 1, self._count + n + 1)
            gains = np.asarray(self.step_size(ks), dtype=np.float64)
            if self._count == 0 and self._w0 is None:
                gains[0] = 1.0  # the first observation initialises w
            # w_n = prod_j (1 - a_j) w_0 + sum_j a_j prod_{i>j} (1 - a_i) x_j
            keep = np.cumprod((1.0 - gains)[::-1])[::-1]  # prod_{i>=j} (1 - a_i)
            after = np.append(keep[1:], 1.0)  # prod_{i>j} (1 - a_i)
            self._w = float(keep[0] * self._w + np.dot(gains * after, arr))
        self._count += n

    # -- reading -----------------------------------------------------------------------
    @property
    def mean(self) -> float:
        """The current estimate (NaN before any observation)."""
        self._flush()
        if self._count == 0:
            return float("nan")
        if self.step_size is None:
            return self._shift + (self._total + self._comp) / self._count
        return self._w

    def get(self) -> float:
        """Alias of :attr:`mean` (river's name)."""
        return self.mean

    @property
    def count(self) -> int:
        """Number of observations folded in (skipped non-finite ones excluded)."""
        return self._count + len(self._buf)

    def merge(self, other: IncrementalMean) -> IncrementalMean:
        """Fold another exact-mode estimator's observations into this one (in place).

        The result equals the mean of the concatenated streams (to ~1 ulp). Only defined
        for the exact mode: a general step-size recursion depends on the order of samples.
        """
        if not isinstance(other, IncrementalMean):
            raise TypeError(f"other must be an IncrementalMean, got {type(other).__name__}")
        if self.step_size is not None or other.step_size is not None:
            raise ValueError(
                "merge is only defined for step_size=None (the exact mean), got "
                f"step_size={self.step_size!r} and other.step_size={other.step_size!r}"
            )
        self._flush()
        other._flush()
        self.n_skipped += other.n_skipped
        if other._count == 0:
            return self
        if self._count == 0:
            self._shift, self._total, self._comp = other._shift, other._total, other._comp
            self._count = other._count
            return self
        # other's sum re-expressed around our shift: total_o + comp_o + n_o (shift_o - shift)
        total, comp = _neumaier_add(self._total, self._comp, other._total)
        total, comp = _neumaier_add(total, comp, other._comp)
        total, comp = _neumaier_add(total, comp, other._count * (other._shift - self._shift))
        self._total, self._comp = total, comp
        self._count += other._count
        return self

    # -- checkpointing -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain-Python state; :meth:`load_state_dict` resumes exactly (bit for bit)."""
        self._flush()
        return {
            "count": self._count,
            "n_skipped": self.n_skipped,
            "shift": self._shift,
            "total": self._total,
            "comp": self._comp,
            "w": self._w,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"count", "n_skipped", "shift", "total", "comp", "w"} - set(state)
        if missing:
            raise ValueError(f"state is missing keys {sorted(missing)}")
        self._buf.clear()
        self._count = int(state["count"])
        self.n_skipped = int(state["n_skipped"])
        self._shift = float(state["shift"])
        self._total = float(state["total"])
        self._comp = float(state["comp"])
        self._w = float(state["w"])

    def __repr__(self) -> str:
        return f"IncrementalMean(mean={self.mean!r}, count={self.count})"
