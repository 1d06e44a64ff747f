"""Mean estimation as optimisation: the three gradient-descent views of one problem.

The mean of X minimises J(w) = E[ |w - X|^2 / 2 ], whose gradient is w - E[X]. Replace
the expectation by

- all n samples (BGD):           w_k = w_{k-1} - a_k (w_{k-1} - mean(x_1..x_n))
- m samples drawn at random (MBGD): w_k = w_{k-1} - a_k (w_{k-1} - mean(batch_k))
- one sample drawn at random (SGD): w_k = w_{k-1} - a_k (w_{k-1} - x_{i_k})

With a_k = 1/k, SGD's w_k is exactly the average of the k samples it has drawn, MBGD's
is the average of its k m samples, and BGD lands on the sample mean at k = 1. The price
of using fewer samples per step is noise: E|w_k - mean|^2 ~ sigma^2 / (m k).
(Zhao, "Mathematical Foundations of Reinforcement Learning", 2025, ch. 6.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._checks import as_float_array, positive_int
from .steps import StepSize, harmonic_step, resolve_step

METHODS = ("sgd", "mbgd", "bgd")


def mean_estimation(
    samples: Any,
    method: str = "sgd",
    batch_size: int | None = None,
    n_iter: int = 100,
    seed: int | np.random.Generator | None = None,
    *,
    step_size: StepSize | None = None,
    w0: Any = None,
) -> np.ndarray:
    """Run SGD, MBGD or BGD on J(w) = E|w - X|^2 / 2 and return the estimates.

    Args:
        samples: the data set, shape (n,) (scalars) or (n, d) (vectors), finite.
        method: ``"sgd"`` (one sample per step), ``"mbgd"`` (``batch_size`` samples per
            step) or ``"bgd"`` (all samples per step). SGD and MBGD draw with
            replacement, i.e. i.i.d. from the empirical distribution.
        batch_size: the mini-batch size m for ``"mbgd"`` (required there, 1 <= m);
            must be ``None`` or 1 for ``"sgd"`` and ``None`` or n for ``"bgd"``.
        n_iter: number of steps.
        seed: seed or Generator for the draws.
        step_size: the gains a_k (default ``harmonic_step()``, a_k = 1/k).
        w0: starting estimate, shape () or (d,); default zeros.

    Returns:
        float64 array of shape (n_iter + 1,) or (n_iter + 1, d): w_0, w_1, ..., w_n_iter.
    """
    x = as_float_array(samples, "samples")
    if x.ndim not in (1, 2) or x.shape[0] == 0:
        raise ValueError(f"samples must have shape (n,) or (n, d) with n >= 1, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("samples must be finite, got non-finite entries")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    n = x.shape[0]
    n_iter = positive_int(n_iter, "n_iter")
    if method == "mbgd":
        if batch_size is None:
            raise ValueError("batch_size is required for method='mbgd', got None")
        m = positive_int(batch_size, "batch_size")
    elif method == "sgd":
        m = 1 if batch_size is None else positive_int(batch_size, "batch_size")
        if m != 1:
            raise ValueError(f"batch_size must be None or 1 for method='sgd', got {m}")
    else:
        m = n if batch_size is None else positive_int(batch_size, "batch_size")
        if m != n:
            raise ValueError(f"batch_size must be None or n={n} for method='bgd', got {m}")
    gains = harmonic_step() if step_size is None else resolve_step(step_size)
    point_shape = x.shape[1:]
    w = np.zeros(point_shape) if w0 is None else as_float_array(w0, "w0").copy()
    if w.shape != point_shape:
        raise ValueError(f"w0 must have shape {point_shape}, got {w.shape}")

    a = np.asarray(gains(np.arange(1, n_iter + 1)), dtype=np.float64)  # (n_iter,)
    if method == "bgd":
        targets = np.broadcast_to(x.mean(axis=0), (n_iter, *point_shape))
    else:
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, n, size=(n_iter, m))  # (n_iter, m) indices
        targets = x[draws].mean(axis=1)  # (n_iter, *point_shape) batch means

    out = np.empty((n_iter + 1, *point_shape))
    out[0] = w
    for k in range(n_iter):  # w_k = w_{k-1} - a_k (w_{k-1} - target_k)
        w = w - a[k] * (w - targets[k])
        out[k + 1] = w
    return out
