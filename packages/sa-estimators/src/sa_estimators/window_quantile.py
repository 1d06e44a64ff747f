"""Exact-window streaming quantile: numpy's own answer on stationary streams.

numpy's default ("linear") q-quantile of n samples needs two order statistics, of ranks
i = floor(q (n - 1)) and i + 1. On a stationary stream their rank among the samples
below any fixed value moves like a random walk of s.d. sqrt(q (1 - q) n'), while a value
window [L, U] around them gains new samples linearly in n'. So a window holding
R = 6 sqrt(q (1 - q) n) + 32 ranks either side of the target keeps the target inside
for the rest of the stream except with probability ~1e-8. The estimator keeps

    n_below, n_above    exact counts of the samples < L and > U
    kept                every sample in [L, U]: sorted (value, count) pairs, ties merged

and reads the two order statistics from ``kept``: the answer is bit for bit
``numpy.quantile(whole_stream, q)``. Memory is O(sqrt(n)): when ``kept`` outgrows
max(capacity, 8 R) entries the window shrinks to +-R ranks around the target, and the
samples it drops move into the counts, which therefore stay exact (the windows nest).
The work per sample is two comparisons (x < L, x <= U) vectorised over blocks of
``block_size`` samples, plus copying the few samples that land inside the window.

A non-stationary stream (sorted, drifting, a regime change) can carry the target out of
the window. For that case the estimator also keeps a coarse sketch of the whole stream:
every s-th sample (s doubles whenever the sketch exceeds ``sketch_size`` points, so each
point stands for s samples). Outside [L, U] order statistics are read from the sketch,
scaled to the exact counts of that side, and the window is re-centred there; from then
on the counts are estimates and :attr:`exact` stays False (the answer's rank error is
that of the sketch at the re-centring, ~sqrt(s n) on shuffled data, ~s on sorted data).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

from ._checks import check_nan_policy, positive_int
from .mean import validated_batch

try:  # the C function behind np.count_nonzero, without its ~1 us Python dispatch
    from numpy._core.multiarray import count_nonzero as _count_nonzero
except ImportError:  # pragma: no cover - numpy < 2
    try:
        from numpy.core.multiarray import count_nonzero as _count_nonzero
    except ImportError:
        _count_nonzero = np.count_nonzero

_FLOAT64 = np.dtype(np.float64)
_Z = 6.0  # window half-width in s.d. of the target's rank walk
_R_MIN = 32  # ... plus this many ranks, for short streams
_FIRST_STRIDE = 16  # 1e6 samples fill a 32768-point sketch with a single thinning


def _lerp(a: float, b: float, t: float) -> float:
    """numpy.quantile's interpolation, operation for operation (so results match bitwise)."""
    diff = b - a
    return b - diff * (1.0 - t) if t >= 0.5 else a + diff * t


def _merge_sorted(vals: np.ndarray, wts: np.ndarray, raw: list[np.ndarray]):
    """(vals, wts) sorted unique values with weights, plus raw unit-weight samples."""
    if raw:
        new = np.concatenate(raw)
        vals = np.concatenate([vals, new])
        wts = np.concatenate([wts, np.ones(new.size)])
        order = np.argsort(vals, kind="stable")
        vals, wts = vals[order], wts[order]
    if vals.size > 1:  # merge ties so discrete streams stay small
        starts = np.flatnonzero(np.concatenate([[True], vals[1:] != vals[:-1]]))
        if starts.size < vals.size:
            vals, wts = vals[starts], np.add.reduceat(wts, starts)
    return vals, wts


class WindowedQuantile:
    """q-quantile of a stream, exact (equal to ``numpy.quantile``) on stationary streams.

    Args:
        q: the probability level, strictly inside (0, 1).
        capacity: entries ``kept`` may hold before the window first shrinks (every sample
            is kept exactly until then).
        block_size: samples are classified against the window in blocks of this size
            (chunks are copied into a block buffer; scalars into a list first).
        sketch_size: at most this many points in the fallback sketch.
        nan_policy: ``"raise"`` (default; the estimator is left unchanged) or ``"skip"``
            (drop and count in :attr:`n_skipped`).

    ``update(x)`` takes a float or a 1-D batch of any length. The state after a stream
    depends only on the stream's values, not on how it was cut into chunks or when the
    estimate was read. While :attr:`exact` is True, :attr:`quantile` equals
    ``numpy.quantile`` of everything seen, bit for bit.
    """

    def __init__(
        self,
        q: float,
        *,
        capacity: int = 4096,
        block_size: int = 16384,
        sketch_size: int = 32768,
        nan_policy: str = "raise",
    ) -> None:
        if isinstance(q, bool) or not isinstance(q, (int, float, np.floating, np.integer)):
            raise TypeError(f"q must be a float in (0, 1), got {type(q).__name__}")
        if not 0.0 < float(q) < 1.0:
            raise ValueError(f"q must lie strictly inside (0, 1), got {q!r}")
        self.q = float(q)
        self.capacity = positive_int(capacity, "capacity")
        self.block_size = positive_int(block_size, "block_size")
        self.sketch_size = positive_int(sketch_size, "sketch_size")
        if self.sketch_size < 2:
            raise ValueError(f"sketch_size must be >= 2, got {sketch_size}")
        self.nan_policy = check_nan_policy(nan_policy)
        self.n_skipped = 0
        self._scalars: list[float] = []  # single floats, before they reach the block
        self._block = np.empty(self.block_size)  # (block_size,) pending samples
        self._n_block = 0
        self._mask_lo = np.empty(self.block_size, dtype=bool)  # scratch, x < L
        self._mask_in = np.empty(self.block_size, dtype=bool)  # scratch, x <= U, then L <= x <= U
        self._reset_state()

    def _reset_state(self) -> None:
        self._n = 0  # samples absorbed (the block buffer excluded)
        self._lo, self._hi = -math.inf, math.inf  # the window [L, U]
        self._n_below: float = 0  # samples < L (an int while exact)
        self._n_above: float = 0  # samples > U
        self._vals = np.empty(0)  # (m,) sorted distinct kept values
        self._wts = np.empty(0)  # (m,) their counts
        self._raw: list[np.ndarray] = []  # kept samples not merged into _vals yet
        self._kept = 0  # total weight of kept (merged + raw)
        self._load = 0  # entries: len(_vals) at the last shrink + raw samples since
        self._exact = True  # False once the window had to be re-centred on the sketch
        self._stride = _FIRST_STRIDE  # the sketch: every stride-th sample, in arrival order
        self._sketch: list[np.ndarray] = []
        self._n_sketch = 0
        self._sketch_sorted: np.ndarray | None = None  # sorted cache of the sketch ...
        self._sketch_merged = 0  # ... holding its first _sketch_merged arrays

    # -- feeding -----------------------------------------------------------------------
    def update(self, x: Any) -> WindowedQuantile:
        """Add one observation (a float) or a 1-D batch (array-like); returns ``self``."""
        if x.__class__ is float and x - x == 0.0:  # hot path: a finite Python float
            scalars = self._scalars
            scalars.append(x)
            if len(scalars) >= self.block_size:
                self._flush_scalars()
            return self
        if x.__class__ is np.ndarray and x.dtype is _FLOAT64 and x.ndim == 1 and x.size:
            # hot path, a chunk: a non-finite entry makes x.x non-finite, the cheapest
            # finiteness check (BLAS); an overflow to inf merely takes the careful path
            total = float(x.dot(x))
            if total - total == 0.0:
                pos = self._n_block
                end = pos + x.size
                if end < self.block_size and not self._scalars:  # it fits: copy it
                    self._block[pos:end] = x
                    self._n_block = end
                    return self
                self._flush_scalars()
                self._fill(x)
                return self
        arr, dropped = validated_batch(x, "x", self.nan_policy)
        self.n_skipped += dropped
        if arr.size:
            self._flush_scalars()
            self._fill(arr)
        return self

    def _flush_scalars(self) -> None:
        if self._scalars:
            arr = np.array(self._scalars)
            self._scalars.clear()
            self._fill(arr)

    def _fill(self, x: np.ndarray) -> None:
        """Append finite float64 samples to the block buffer; absorb every full block."""
        n, pos, size = x.size, self._n_block, self.block_size
        if pos + n < size:  # the common case: the chunk fits
            self._block[pos : pos + n] = x
            self._n_block = pos + n
            return
        start = 0
        if pos:
            start = size - pos
            self._block[pos:] = x[:start]
            self._absorb(self._block)
        while n - start >= size:  # whole blocks straight from the caller's array
            self._absorb(x[start : start + size])
            start += size
        self._n_block = n - start
        self._block[: self._n_block] = x[start:]

    def _absorb(self, x: np.ndarray, maintain: bool = True) -> None:
        """Classify one block against [L, U]; then shrink or re-centre the window."""
        m = x.size
        below_mask = np.less(x, self._lo, out=self._mask_lo[:m])
        inside_mask = np.less_equal(x, self._hi, out=self._mask_in[:m])
        below = int(_count_nonzero(below_mask))
        not_above = int(_count_nonzero(inside_mask))
        if not_above > below:
            np.not_equal(below_mask, inside_mask, out=inside_mask)  # L <= x <= U
            # x[mask] scans the mask twice; nonzero + take is faster when few are inside
            self._raw.append(x[inside_mask.nonzero()[0]])  # a copy: the buffer is reused
        self._n_below += below
        self._n_above += m - not_above
        self._kept += not_above - below
        self._load += not_above - below
        first = (-self._n) % self._stride  # sketch: global positions = 0 mod stride
        if first < m:
            self._sketch.append(x[first :: self._stride].copy())
            self._n_sketch += self._sketch[-1].size
        self._n += m
        if not maintain:
            return
        if self._n_sketch > self.sketch_size:
            self._thin_sketch()
        i, j = self._target_ranks(self._n)
        if i < self._n_below or j >= self._n_below + self._kept:
            self._recentre(i)
        elif self._load > max(self.capacity, 8 * self._half_width()):
            self._shrink(i)

    # -- window maintenance --------------------------------------------------------------
    def _target_ranks(self, n: int) -> tuple[int, int]:
        """0-based ranks of the two order statistics numpy interpolates between."""
        i = math.floor((n - 1) * self.q)
        return i, min(i + 1, n - 1)

    def _half_width(self) -> int:
        """R: ranks kept either side of the target."""
        return math.ceil(_Z * math.sqrt(self.q * (1.0 - self.q) * self._n)) + _R_MIN

    def _merged_kept(self) -> tuple[np.ndarray, np.ndarray]:
        """Kept as sorted distinct values and their weights (sorts: the slow path)."""
        if not self._raw:
            return self._vals, self._wts
        return _merge_sorted(self._vals, self._wts, self._raw)

    def _shrink(self, i: int) -> None:
        """Narrow [L, U] to R ranks either side of the target ranks (i, i + 1)."""
        local, half = i - self._n_below, self._half_width()
        first = local - half if local - half > 0 else None  # else keep all below
        last = local + 1 + half if local + 1 + half < self._kept - 1 else None
        if first is None and last is None:
            return
        if self._vals.size or not self._exact:  # weighted entries (ties, re-centred): sort
            self._shrink_sorted(first, last)
            return
        # unit weights (the common case): two selections, no sort, O(kept)
        raw = np.concatenate(self._raw)
        part = np.partition(raw, [k for k in (first, last) if k is not None])
        lo_end, hi_start = 0, raw.size
        keep = []
        if first is not None:
            self._lo = float(part[first])
            head = part[:first]
            keep.append(head[head == self._lo])  # ties with L stay in the window
            self._n_below += first - keep[-1].size
            lo_end = first
        if last is not None:
            self._hi = float(part[last])
            hi_start = last + 1
        keep.append(part[lo_end:hi_start])
        if last is not None:
            tail = part[hi_start:]
            keep.append(tail[tail == self._hi])
            self._n_above += tail.size - keep[-1].size
        kept = np.concatenate(keep)
        self._kept = self._load = kept.size
        self._raw = [kept]
        if kept.size > 4 * (half + 1):  # mostly ties (a discrete stream): merge them
            self._vals, self._wts = _merge_sorted(self._vals, self._wts, self._raw)
            self._raw = []
            self._load = self._vals.size

    def _shrink_sorted(self, first: float | None, last: float | None) -> None:
        vals, wts = self._merged_kept()
        self._raw = []
        cum = np.cumsum(wts)  # (m,) kept entries of local rank < cum[j]
        a, b = 0, cum.size - 1
        if first is not None:
            a = int(np.searchsorted(cum, first, side="right"))
        if last is not None:
            b = int(np.searchsorted(cum, last, side="right"))
        if a > 0:
            self._n_below += _as_count(cum[a - 1])
            self._lo = float(vals[a])
        if b < cum.size - 1:
            self._n_above += _as_count(cum[-1] - cum[b])
            self._hi = float(vals[b])
        self._vals, self._wts = vals[a : b + 1].copy(), wts[a : b + 1].copy()
        self._kept = _as_count(self._wts.sum()) if self._exact else float(self._wts.sum())
        self._load = self._vals.size

    def _thin_sketch(self) -> None:
        """Keep every other sketch point (positions = 0 mod 2 stride): the stride doubles."""
        points = np.concatenate(self._sketch)[::2].copy()
        self._sketch, self._n_sketch = [points], points.size
        self._stride *= 2
        self._sketch_sorted, self._sketch_merged = None, 0

    def _sorted_sketch(self) -> np.ndarray:
        """The sketch points in increasing order (new points merged into a cache)."""
        cached = self._sketch_sorted
        if cached is None or self._sketch_merged < len(self._sketch):
            fresh = self._sketch[self._sketch_merged if cached is not None else 0 :]
            parts = [np.sort(np.concatenate(fresh))] if fresh else []
            if cached is not None:
                parts.insert(0, cached)
            # two sorted runs: the stable sort (timsort) merges them in linear time
            merged = np.sort(np.concatenate(parts), kind="stable") if parts else np.empty(0)
            self._sketch_sorted, self._sketch_merged = merged, len(self._sketch)
        return self._sketch_sorted

    def _recentre(self, i: int) -> None:
        """The target left [L, U]: move the window onto the sketch's estimate of it."""
        view = _View(self, *self._merged_kept())
        slack = math.ceil(2.0 * math.sqrt(self._stride * self._n)) + 2 * self._stride
        width = self._half_width() + slack
        lo = view.value_at(i - width) if i - width > 0 else -math.inf
        hi = view.value_at(i + 1 + width) if i + 1 + width < self._n - 1 else math.inf
        vals, wts, n_below = view.restrict(lo, hi)
        self._lo, self._hi = lo, hi
        self._vals, self._wts, self._raw = vals, wts, []
        self._kept = float(wts.sum())
        self._n_below = float(n_below)
        self._n_above = max(float(self._n - n_below - self._kept), 0.0)
        self._load = vals.size
        self._exact = False

    # -- reading -----------------------------------------------------------------------
    def _with_pending(self) -> WindowedQuantile:
        """This estimator, or a shallow copy that has absorbed the pending samples."""
        if not self._scalars and not self._n_block:
            return self
        tmp = copy.copy(self)
        tmp._raw, tmp._sketch = list(self._raw), list(self._sketch)
        pending = np.concatenate([self._block[: self._n_block], np.array(self._scalars)])
        for start in range(0, pending.size, self.block_size):
            tmp._absorb(pending[start : start + self.block_size], maintain=False)
        return tmp

    @property
    def quantile(self) -> float:
        """The current estimate (NaN before any observation)."""
        return self._estimate()[0]

    def get(self) -> float:
        """Alias of :attr:`quantile` (river's name)."""
        return self.quantile

    @property
    def exact(self) -> bool:
        """Whether :attr:`quantile` is exactly ``numpy.quantile`` of the stream seen."""
        return self._estimate()[1]

    def _estimate(self) -> tuple[float, bool]:
        est = self._with_pending()
        if est._n == 0:
            return math.nan, True
        virtual = (est._n - 1) * self.q
        i, j = est._target_ranks(est._n)
        inside = est._n_below <= i and j < est._n_below + est._kept
        if inside and est._exact and not est._vals.size:  # selection, O(kept), no sort
            local = [int(i - est._n_below), int(j - est._n_below)]
            part = np.partition(np.concatenate(est._raw), local)
            a, b = float(part[local[0]]), float(part[local[1]])
        else:
            view = _View(est, *est._merged_kept())
            a, b = view.value_at(i), view.value_at(j)
        return _lerp(a, b, virtual - i), bool(est._exact and inside)

    @property
    def count(self) -> int:
        """Number of observations taken in (skipped non-finite ones excluded)."""
        return self._n + self._n_block + len(self._scalars)

    @property
    def window(self) -> tuple[float, float]:
        """The value window [L, U] whose samples are kept exactly."""
        return self._lo, self._hi

    @property
    def n_kept(self) -> int:
        """Distinct values (or raw samples not merged yet) held in the window."""
        return self._load

    # -- checkpointing -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain-Python state; :meth:`load_state_dict` resumes exactly (bit for bit)."""
        return {
            "q": self.q,
            "capacity": self.capacity,
            "block_size": self.block_size,
            "sketch_size": self.sketch_size,
            "n": self._n,
            "n_skipped": self.n_skipped,
            "pending": self._block[: self._n_block].tolist() + list(self._scalars),
            "window": [self._lo, self._hi],
            "n_below": self._n_below,
            "n_above": self._n_above,
            "kept_values": self._vals.tolist(),
            "kept_counts": self._wts.tolist(),
            "kept_raw": [v for r in self._raw for v in r.tolist()],
            "kept": self._kept,
            "load": self._load,
            "exact": self._exact,
            "stride": self._stride,
            "sketch": [v for s in self._sketch for v in s.tolist()],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        keys = set(WindowedQuantile(0.5).state_dict())
        missing = keys - set(state)
        if missing:
            raise ValueError(f"state is missing keys {sorted(missing)}")
        if float(state["q"]) != self.q:
            raise ValueError(f"state is for q={state['q']!r}, this estimator has q={self.q!r}")
        self.capacity = positive_int(state["capacity"], "capacity")
        self.sketch_size = positive_int(state["sketch_size"], "sketch_size")
        self.block_size = positive_int(state["block_size"], "block_size")
        self._block = np.empty(self.block_size)
        self._mask_lo = np.empty(self.block_size, dtype=bool)
        self._mask_in = np.empty(self.block_size, dtype=bool)
        self._reset_state()
        self._scalars.clear()
        self._n_block = 0
        self._n = int(state["n"])
        self.n_skipped = int(state["n_skipped"])
        self._lo, self._hi = (float(v) for v in state["window"])
        self._n_below, self._n_above = state["n_below"], state["n_above"]
        self._vals = np.asarray(state["kept_values"], dtype=np.float64)
        self._wts = np.asarray(state["kept_counts"], dtype=np.float64)
        raw = np.asarray(state["kept_raw"], dtype=np.float64)
        self._raw = [raw] if raw.size else []
        self._kept = state["kept"]
        self._load = int(state["load"])
        self._exact = bool(state["exact"])
        self._stride = int(state["stride"])
        sketch = np.asarray(state["sketch"], dtype=np.float64)
        self._sketch, self._n_sketch = ([sketch] if sketch.size else []), sketch.size
        pending = np.asarray(state["pending"], dtype=np.float64)
        if pending.size:
            self._fill(pending)

    def __repr__(self) -> str:
        return (
            f"WindowedQuantile(q={self.q}, quantile={self.quantile!r}, count={self.count}, "
            f"exact={self.exact})"
        )


def _as_count(x: Any) -> int | float:
    """Counts stay Python ints while they are integers (exact mode); floats after."""
    x = float(x)
    return int(x) if x.is_integer() else x


class _View:
    """Read-only order statistics over (counts below, exact window, counts above, sketch)."""

    def __init__(self, est: WindowedQuantile, vals: np.ndarray, wts: np.ndarray) -> None:
        self.est, self.vals, self.wts = est, vals, wts  # kept, merged
        self.cum = np.cumsum(wts)  # (m,)
        self.sketch = est._sorted_sketch()
        self.n_lo = int(np.searchsorted(self.sketch, est._lo, side="left"))  # points < L
        self.n_hi = int(np.searchsorted(self.sketch, est._hi, side="right"))  # points <= U

    def value_at(self, rank: float) -> float:
        """The value of the given 0-based rank among all samples absorbed."""
        est = self.est
        if rank < est._n_below:  # below L: the sketch, scaled to the exact count
            points = self.n_lo
            if points == 0:
                return est._lo
            j = min(int(rank * points / est._n_below), points - 1)
            return float(self.sketch[j])
        local = rank - est._n_below
        if local < est._kept:
            j = int(np.searchsorted(self.cum, local, side="right"))
            return float(self.vals[min(j, self.cum.size - 1)])
        points = self.sketch.size - self.n_hi
        if points == 0:
            return est._hi
        j = min(int((local - est._kept) * points / est._n_above), points - 1)
        return float(self.sketch[self.n_hi + j])

    def restrict(self, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray, float]:
        """(values, weights) representing the samples in [lo, hi], and the count < lo.

        Exact kept entries keep their counts; each sketch point outside [L, U] stands for
        its side's exact count divided by that side's number of points.
        """
        est, sk = self.est, self.sketch
        parts_v, parts_w, below = [], [], 0.0
        for a, b, count, edge in (
            (0, self.n_lo, est._n_below, est._lo),
            (self.n_hi, sk.size, est._n_above, est._hi),
        ):
            if not count:
                continue
            pts = sk[a:b]
            if pts.size == 0:  # a side with no sketch point: its samples sit at the edge
                pts = np.array([edge])
            w = count / pts.size
            below += w * int(np.searchsorted(pts, lo, side="left"))
            sel = pts[(pts >= lo) & (pts <= hi)]
            parts_v.append(sel)
            parts_w.append(np.full(sel.size, w))
        vals, wts = self.vals, self.wts
        below += float(wts[vals < lo].sum())
        keep = (vals >= lo) & (vals <= hi)
        parts_v.append(vals[keep])
        parts_w.append(wts[keep])
        v, w = np.concatenate(parts_v), np.concatenate(parts_w)
        order = np.argsort(v, kind="stable")
        v, w = _merge_sorted(v[order], w[order], [])
        return v, w, below
