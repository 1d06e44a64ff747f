"""Many streams at once in torch (CPU or GPU): one column of a (n, d) batch per stream.

The same estimators as :class:`~sa_estimators.IncrementalMean` (exact mode) and
:class:`~sa_estimators.StreamingQuantile` (density-adapted gain), vectorised over d
independent streams, e.g. the per-channel quantiles of activations during training.
Nothing leaves the device except the finiteness check (one boolean per batch).
torch is imported only when these classes are used.
Non-finite values are rejected (ValueError); there is no skip policy here, because a
per-stream skip would give the streams different counts.
"""

from __future__ import annotations

import math
from typing import Any


def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised without torch only
        raise ImportError("the batched estimators need torch: pip install torch") from exc
    return torch


def _check_batch(x: Any, num_streams: int, name: str = "x"):
    torch = _torch()
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.ndim == 1:
        x = x.unsqueeze(0)  # one row: one sample per stream
    if x.ndim != 2 or x.shape[1] != num_streams:
        raise ValueError(
            f"{name} must have shape (n, {num_streams}) or ({num_streams},), got {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} must not be an empty batch, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite, got non-finite entries")
    return x


def _check_streams(num_streams: Any) -> int:
    if isinstance(num_streams, bool) or not isinstance(num_streams, int):
        raise TypeError(f"num_streams must be an int, got {type(num_streams).__name__}")
    if num_streams < 1:
        raise ValueError(f"num_streams must be >= 1, got {num_streams}")
    return num_streams


class BatchedIncrementalMean:
    """Exact running means of ``num_streams`` streams (float64 state, Neumaier-compensated).

    ``update(x)`` takes a (n, d) or (d,) floating tensor; :attr:`mean` is a float64 (d,)
    tensor equal to ``x_all.double().mean(0)`` to a few ulps.
    """

    def __init__(self, num_streams: int, *, device: Any = None) -> None:
        torch = _torch()
        self.num_streams = _check_streams(num_streams)
        zeros = lambda: torch.zeros(num_streams, dtype=torch.float64, device=device)  # noqa: E731
        self._shift, self._total, self._comp = zeros(), zeros(), zeros()
        self.count = 0

    def update(self, x: Any) -> BatchedIncrementalMean:
        x = _check_batch(x, self.num_streams).to(self._total.device, self._total.dtype)
        if self.count == 0:
            self._shift = x[0].clone()  # (d,)
        batch = (x - self._shift).sum(0)  # (d,) pairwise within the batch
        total = self._total + batch  # Neumaier: keep the rounding error of every addition
        big = self._total.abs() >= batch.abs()
        self._comp += (self._total - total + batch).where(big, batch - total + self._total)
        self._total = total
        self.count += x.shape[0]
        return self

    @property
    def mean(self):
        """(d,) float64 tensor (NaN before any observation)."""
        if self.count == 0:
            return self._total + math.nan
        return self._shift + (self._total + self._comp) / self.count


class BatchedStreamingQuantile:
    """The q-quantile of ``num_streams`` streams by density-adapted Robbins-Monro.

    Args:
        q: probability level in (0, 1).
        num_streams: d, the number of columns of every batch.
        init_size: minimum warm-up rows (the batch that reaches it belongs to the warm-up);
            until then :attr:`quantile` is ``torch.quantile`` of them.
        bandwidth: window width at k = 1 in units of each stream's warm-up scale.
        device: where the state lives (default: the device of the first batch).
        dtype: the state's precision, ``torch.float32`` or ``torch.float64`` (default);
            batches are cast to it.

    Column j follows exactly the recursion of :class:`~sa_estimators.StreamingQuantile`
    fed the same batches (equal to ~1e-12 in float64).
    """

    def __init__(
        self,
        q: float,
        num_streams: int,
        *,
        init_size: int = 256,
        bandwidth: float = 1.0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        torch = _torch()
        if isinstance(q, bool) or not isinstance(q, (int, float)):
            raise TypeError(f"q must be a float in (0, 1), got {type(q).__name__}")
        if not 0.0 < float(q) < 1.0:
            raise ValueError(f"q must lie strictly inside (0, 1), got {q!r}")
        if isinstance(init_size, bool) or not isinstance(init_size, int) or init_size < 1:
            raise ValueError(f"init_size must be an int >= 1, got {init_size!r}")
        if not (isinstance(bandwidth, (int, float)) and math.isfinite(bandwidth) and bandwidth > 0):
            raise ValueError(f"bandwidth must be a finite number > 0, got {bandwidth!r}")
        self.q = float(q)
        self.num_streams = _check_streams(num_streams)
        self.init_size = init_size
        self.bandwidth = float(bandwidth)
        self.dtype = torch.float64 if dtype is None else dtype
        if self.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {self.dtype}")
        self.device = device
        self._warmup: list = []
        self._count = 0
        self._right_window = True
        self._w = self._density = self._scale = None

    def update(self, x: Any) -> BatchedStreamingQuantile:
        """Fold in a (n, d) or (d,) floating tensor (column j feeds stream j)."""
        x = _check_batch(x, self.num_streams)
        if self.device is None:
            self.device = x.device
        x = x.to(self.device, self.dtype)
        if self._count == 0:
            self._warmup.append(x.clone())  # kept: the caller may reuse its buffer
            if sum(b.shape[0] for b in self._warmup) >= self.init_size:
                self._initialise(_torch().cat(self._warmup))
                self._warmup.clear()
            return self
        n = x.shape[0]
        k = self._count + n
        w = self._w  # (d,)
        h = self.bandwidth * self._scale * k**-0.2  # (d,)
        below = (x <= w).sum(0).to(self.dtype)  # (d,) samples at or below the estimate
        if self._right_window:  # samples in (w, w + h]
            near = (x <= w + h).sum(0).to(self.dtype) - below
        else:  # samples in (w - h, w]
            near = below - (x <= w - h).sum(0).to(self.dtype)
        self._right_window = not self._right_window
        self._density = self._density + (near / h - n * self._density) / k
        step = (self.q * n - below) / (k * self._density.clamp_min(1e-12 / self._scale))
        self._w = w + step.clamp(-h, h)
        self._count = k
        return self

    def _initialise(self, x: Any) -> None:
        torch = _torch()
        n = x.shape[0]
        probs = torch.tensor([0.25, self.q, 0.75], dtype=x.dtype, device=x.device)
        lo, w, hi = torch.quantile(x, probs, dim=0)  # (d,) each, linear like numpy
        scale = (hi - lo) / 1.349
        scale = torch.where(scale > 0, scale, x.std(0, correction=0))
        scale = torch.where(scale > 0, scale, w.abs().clamp_min(1.0) * 1e-6)
        h = self.bandwidth * scale * n**-0.2
        near = ((x - w).abs() <= h).sum(0).to(x.dtype)
        self._w, self._scale = w, scale
        self._density = near.clamp_min(1.0) / (2.0 * h * n)
        self._count = n

    @property
    def quantile(self):
        """(d,) tensor of estimates (``torch.quantile`` during the warm-up, NaN before)."""
        torch = _torch()
        if self._count:
            return self._w.clone()
        if self._warmup:
            return torch.quantile(torch.cat(self._warmup), self.q, dim=0)
        return torch.full((self.num_streams,), math.nan, dtype=self.dtype, device=self.device)

    @property
    def count(self) -> int:
        return self._count + sum(b.shape[0] for b in self._warmup)
