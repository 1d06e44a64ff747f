"""The algorithms as plain per-sample Python loops: the readable definitions.

The classes in this package compute the same numbers faster (buffers, numpy batches,
compensated sums); the tests hold them to these loops. Nothing here validates input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np


def robbins_monro_reference(
    g: Callable[[float], float], w0: float, n_iter: int, gain: Callable[[int], float]
) -> float:
    """w_k = w_{k-1} - a_k g(w_{k-1}) for k = 1..n_iter, a scalar w."""
    w = w0
    for k in range(1, n_iter + 1):
        w = w - gain(k) * g(w)
    return w


def incremental_mean_reference(xs: Iterable[float]) -> float:
    """The textbook recursion w_k = w_{k-1} + (x_k - w_{k-1}) / k (one rounding per step)."""
    w, k = 0.0, 0
    for x in xs:
        k += 1
        w += (x - w) / k
    return w


def streaming_quantile_reference(
    xs: Iterable[float], q: float, init_size: int = 256, bandwidth: float = 1.0
) -> float:
    """Density-adapted Robbins-Monro quantile, one sample per step.

    Warm-up: the first ``init_size`` samples give the starting point (their exact
    quantile), the scale s (IQR / 1.349) and a first density estimate. Then, per sample,

        h   = bandwidth * s * k^(-1/5)
        f  += (1{x in window} / h - f) / k,  window (w, w+h] and (w-h, w] alternately
        w  += clip((q - 1{x <= w}) / (f k), -h, h)

    ``StreamingQuantile(q, buffer_size=1)`` fed the same floats gives the same number.
    """
    xs = list(xs)
    warm = np.array(xs[:init_size])
    if len(xs) < init_size:
        return float(np.quantile(warm, q)) if warm.size else math.nan
    lo, w, hi = (float(v) for v in np.quantile(warm, [0.25, q, 0.75]))
    s = (hi - lo) / 1.349
    if not s > 0.0:
        s = float(np.std(warm))
    if not s > 0.0:
        s = max(abs(w), 1.0) * 1e-6
    k = init_size
    h = bandwidth * s * k**-0.2
    f = max(sum(abs(x - w) <= h for x in warm), 1) / (2.0 * h * k)
    right = True
    for x in xs[init_size:]:
        k += 1
        h = bandwidth * s * k**-0.2
        below = 1 if x <= w else 0
        inside = (w < x <= w + h) if right else (w - h < x <= w)
        right = not right
        f = f + (inside / h - f) / k
        step = (q - below) / (k * max(f, 1e-12 / s))
        w = w + min(max(step, -h), h)
    return w
