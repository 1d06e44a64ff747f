"""Minimising a noisy function from its values only: Kiefer-Wolfowitz and SPSA.

Both are Robbins-Monro on a finite-difference estimate of the gradient, with a
perturbation size c_k that shrinks (to kill the difference's bias) slowly enough that
the noise of f(w + c) - f(w - c), divided by 2 c_k, stays summable against the gains.

- Kiefer & Wolfowitz (1952): central differences along each coordinate axis,
  2 d evaluations per iteration; defaults a_k = a / k, c_k = c / k^(1/6).
- Spall (1992), SPSA: ONE random direction Delta with independent +-1 entries,
  g_i = (f(w + c_k Delta) - f(w - c_k Delta)) / (2 c_k Delta_i): two evaluations per
  iteration whatever d, and still asymptotically unbiased because E[Delta_i / Delta_j]
  = 0 for i != j. Gains a_k = a / (k + A)^0.602, c_k = c / k^0.101 (Spall 1998).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ._checks import nonnegative_float, positive_float
from .robbins_monro import RobbinsMonro, SAResult, _Recorder, check_run_args
from .steps import StepSize, harmonic_step, polynomial_step


def _gain(value: Any, name: str, power: float) -> StepSize:
    """A float becomes value / k**power; a StepSize is taken as given."""
    if isinstance(value, StepSize):
        return value
    return polynomial_step(positive_float(value, name), power)


def _evaluate(f: Callable[[Any], Any], w: np.ndarray, scalar: bool, k: int) -> float:
    value = f(float(w) if scalar else w)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"f(w) must return a real scalar, got {type(value).__name__} at iteration {k}"
        ) from None
    if not np.isfinite(value):
        raise ValueError(f"f(w) must be finite, got {value!r} at iteration {k}")
    return value


def _run(
    f: Callable[[Any], Any],
    w0: Any,
    n_iter: int,
    gains: StepSize,
    gradient: Callable[[RobbinsMonro, int], np.ndarray],
    evals_per_iter: int,
    average: bool,
    callback: Callable[[int, Any], Any] | None,
    trajectory: int,
) -> SAResult:
    n_iter, points = check_run_args(n_iter, trajectory, callback)
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    rm = RobbinsMonro(w0, gains, average=average)
    rec = _Recorder(n_iter, points, rm)
    for k in range(1, n_iter + 1):
        rm.step(gradient(rm, k))
        rec.see(k)
        if callback is not None and callback(k, rm.w) is True:
            break
    result = SAResult(w=rm.w, w_avg=rm.w_avg, n_iter=rm.k, n_evals=evals_per_iter * rm.k)
    return rec.fill(result)


def kiefer_wolfowitz(
    f: Callable[[Any], Any],
    w0: Any,
    n_iter: int,
    a: float | StepSize = 1.0,
    c: float | StepSize = 1.0,
    *,
    average: bool = False,
    callback: Callable[[int, Any], Any] | None = None,
    trajectory: int = 0,
) -> SAResult:
    """Minimise E[f(w)] with central finite differences along every axis.

    w_k = w_{k-1} - a_k (f(w + c_k e_i) - f(w - c_k e_i)) / (2 c_k), i = 1..d.

    Args:
        f: noisy objective; called with a float (scalar ``w0``) or a float64 (d,) array,
            returns a real scalar.
        w0: starting point, scalar or 1-D.
        n_iter: iterations (2 d evaluations of ``f`` each).
        a: gain: a float means a / k (``harmonic_step(a)``), or any :class:`StepSize`.
        c: perturbation: a float means c / k^(1/6), or any :class:`StepSize`.
        average: also return the Polyak-Ruppert average (as in :func:`robbins_monro`).
        callback: ``callback(k, w)`` after every iteration; returning ``True`` stops.
        trajectory: keep the iterate at this many log-spaced iterations (0: none).

    Returns:
        :class:`SAResult` with ``n_evals = 2 d n_iter``.
        Reference: Kiefer & Wolfowitz (1952).
    """
    gains = harmonic_step(positive_float(a, "a")) if not isinstance(a, StepSize) else a
    widths = _gain(c, "c", 1.0 / 6.0)
    dim = max(np.size(w0), 1)

    def gradient(rm: RobbinsMonro, k: int) -> np.ndarray:
        ck = widths(k)
        w = rm._w
        if rm._scalar:
            return np.asarray(
                (_evaluate(f, w + ck, True, k) - _evaluate(f, w - ck, True, k)) / (2.0 * ck)
            )
        grad = np.empty_like(w)
        for i in range(w.size):
            e = np.zeros_like(w)
            e[i] = ck
            grad[i] = (_evaluate(f, w + e, False, k) - _evaluate(f, w - e, False, k)) / (2 * ck)
        return grad

    return _run(f, w0, n_iter, gains, gradient, 2 * dim, average, callback, trajectory)


def spsa(
    f: Callable[[Any], Any],
    w0: Any,
    n_iter: int,
    a: float = 0.1,
    c: float = 0.1,
    A: float | None = None,
    alpha: float = 0.602,
    gamma: float = 0.101,
    *,
    seed: int | np.random.Generator | None = None,
    average: bool = False,
    callback: Callable[[int, Any], Any] | None = None,
    trajectory: int = 0,
) -> SAResult:
    """Simultaneous-perturbation stochastic approximation (Spall): 2 evaluations/iteration.

    a_k = a / (k + A)^alpha, c_k = c / k^gamma, Delta_k i.i.d. Rademacher (+-1),
    w_k = w_{k-1} - a_k (f(w + c_k Delta) - f(w - c_k Delta)) / (2 c_k) * Delta
    (1 / Delta_i = Delta_i for +-1 entries).

    Args:
        f: noisy objective, called with a float or a float64 (d,) array; real scalar out.
        w0: starting point, scalar or 1-D.
        n_iter: iterations (2 evaluations of ``f`` each).
        a: gain scale.
        c: perturbation scale (about the noise s.d. of f, per Spall).
        A: stability offset of the gain; default 10% of ``n_iter`` (Spall's rule).
        alpha: gain decay exponent (Spall's practical 0.602; asymptotically optimal 1).
        gamma: perturbation decay exponent (0.101; asymptotically optimal 1/6).
        seed: seed or Generator for the perturbations.
        average: also return the Polyak-Ruppert average (as in :func:`robbins_monro`).
        callback: ``callback(k, w)`` after every iteration; returning ``True`` stops.
        trajectory: keep the iterate at this many log-spaced iterations (0: none).

    Returns:
        :class:`SAResult` with ``n_evals = 2 n_iter``. Reference: Spall (1992, 1998).
    """
    a = positive_float(a, "a")
    c = positive_float(c, "c")
    alpha = positive_float(alpha, "alpha")
    gamma = positive_float(gamma, "gamma")
    offset = 0.1 * n_iter if A is None and isinstance(n_iter, int) else A
    offset = nonnegative_float(0.0 if offset is None else offset, "A")
    gains = polynomial_step(a, alpha, offset=offset)
    widths = polynomial_step(c, gamma)
    rng = np.random.default_rng(seed)

    def gradient(rm: RobbinsMonro, k: int) -> np.ndarray:
        ck = widths(k)
        delta = rng.integers(0, 2, size=rm._w.shape) * 2.0 - 1.0  # Rademacher +-1
        plus = _evaluate(f, rm._w + ck * delta, rm._scalar, k)
        minus = _evaluate(f, rm._w - ck * delta, rm._scalar, k)
        return (plus - minus) / (2.0 * ck) * delta

    return _run(f, w0, n_iter, gains, gradient, 2, average, callback, trajectory)
