"""Robbins-Monro root finding: w_k = w_{k-1} - a_k Y_k, where E[Y_k | w_{k-1}] = g(w_{k-1}).

The sign convention is that of gradient descent: g is assumed to increase through its
root (g'(w*) > 0, or a positive-definite Jacobian for vectors), so stepping against the
observation moves towards the root. For a decreasing g pass ``lambda w: -g(w)``.

Polyak-Ruppert averaging keeps the running mean of the iterates w_1..w_k. With a slow
gain (a_k ~ k^-p, 1/2 < p < 1) the last iterate wanders at scale sqrt(a_k), but the
average converges at the optimal rate: k E|avg_k - w*|^2 -> sigma^2 / g'(w*)^2, which
the last iterate reaches only with the best constant in a_k = 1 / (g'(w*) k).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._checks import as_float_array, finite_w0, positive_int
from .steps import StepSize, harmonic_step, resolve_step


@dataclass
class SAResult:
    """What a stochastic-approximation run returns.

    Attributes:
        w: the last iterate (a float for scalar ``w0``, else an array of ``w0``'s shape).
        w_avg: the Polyak-Ruppert average of w_1..w_n (``None`` unless ``average=True``).
        n_iter: iterations done (fewer than asked if the callback stopped the run).
        n_evals: calls of the user's function.
        trajectory: iterates at the iterations ``trajectory_k``, shape (T, *w0.shape);
            ``None`` unless asked for. At most ``trajectory`` rows (log-spaced), so the
            memory does not grow with ``n_iter``.
        trajectory_avg: the running average at the same iterations (with ``average``).
        trajectory_k: the iteration numbers k (1-based) of the recorded rows.
    """

    w: Any
    w_avg: Any = None
    n_iter: int = 0
    n_evals: int = 0
    trajectory: np.ndarray | None = None
    trajectory_avg: np.ndarray | None = None
    trajectory_k: np.ndarray | None = field(default=None)


def log_spaced_iterations(n_iter: int, points: int) -> np.ndarray:
    """At most ``points`` distinct iterations in 1..n_iter, log-spaced, always with n_iter."""
    ks = np.unique(np.geomspace(1, n_iter, num=points).round().astype(np.int64))
    return ks


class RobbinsMonro:
    """The Robbins-Monro recursion as an object: feed it observations one at a time.

    ``rm.step(y)`` does w <- w - a_k y with k the number of steps so far (1-based) and
    returns the new iterate; ``y`` must have the shape of ``w0`` and be finite.

    Args:
        w0: starting point, a float or a 1-D array (float64 internally).
        step_size: the gain sequence (default ``harmonic_step()``: a_k = 1/k).
        average: also keep the Polyak-Ruppert average :attr:`w_avg`.
    """

    def __init__(
        self, w0: Any, step_size: StepSize | None = None, *, average: bool = False
    ) -> None:
        w = finite_w0(w0)
        self._scalar = w.ndim == 0
        self._w = w
        self.step_size = harmonic_step() if step_size is None else resolve_step(step_size)
        self.average = bool(average)
        self._avg = np.zeros_like(w) if self.average else None
        self.k = 0

    def step(self, observation: Any) -> Any:
        """One update with a noisy observation of g at the current iterate."""
        y = as_float_array(observation, "observation")
        if y.shape != self._w.shape:
            raise ValueError(f"observation must have the shape of w {self._w.shape}, got {y.shape}")
        if not np.all(np.isfinite(y)):
            bad = float(y[~np.isfinite(y)].flat[0])
            raise ValueError(f"observation must be finite, got {bad} at step {self.k + 1}")
        self.k += 1
        self._w = self._w - self.step_size(self.k) * y
        if self._avg is not None:
            self._avg += (self._w - self._avg) / self.k
        return self.w

    @property
    def w(self) -> Any:
        """The current iterate (a copy)."""
        return float(self._w) if self._scalar else self._w.copy()

    @property
    def w_avg(self) -> Any:
        """The average of the iterates w_1..w_k (``None`` without ``average=True``)."""
        if self._avg is None:
            return None
        return float(self._avg) if self._scalar else self._avg.copy()

    def state_dict(self) -> dict[str, Any]:
        """Iterate, average and step count; :meth:`load_state_dict` resumes exactly."""
        return {
            "k": self.k,
            "w": self._w.copy(),
            "w_avg": None if self._avg is None else self._avg.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        w = np.asarray(state["w"], dtype=np.float64)
        if w.shape != self._w.shape:
            raise ValueError(f"state['w'] must have shape {self._w.shape}, got {w.shape}")
        self.k = int(state["k"])
        self._w = w.copy()
        if self._avg is not None:
            if state.get("w_avg") is None:
                raise ValueError("state['w_avg'] is missing but average=True")
            self._avg = np.asarray(state["w_avg"], dtype=np.float64).copy()


class _Recorder:
    """Keeps iterates at a fixed set of iterations (memory bounded by their number)."""

    def __init__(self, n_iter: int, points: int, rm: RobbinsMonro) -> None:
        self.ks = log_spaced_iterations(n_iter, points) if points else np.zeros(0, np.int64)
        self.rows: list[np.ndarray] = []
        self.avg_rows: list[np.ndarray] = []
        self.next = 0
        self.rm = rm

    def see(self, k: int) -> None:
        if self.next < self.ks.size and self.ks[self.next] == k:
            self.rows.append(self.rm._w.copy())
            if self.rm._avg is not None:
                self.avg_rows.append(self.rm._avg.copy())
            self.next += 1

    def fill(self, result: SAResult) -> SAResult:
        if self.ks.size:
            result.trajectory_k = self.ks[: len(self.rows)]
            result.trajectory = np.array(self.rows)
            if self.avg_rows:
                result.trajectory_avg = np.array(self.avg_rows)
        return result


def check_run_args(n_iter: Any, trajectory: Any, callback: Any) -> tuple[int, int]:
    n_iter = positive_int(n_iter, "n_iter")
    if isinstance(trajectory, bool) or not isinstance(trajectory, (int, np.integer)):
        raise TypeError(f"trajectory must be an int (rows to keep), got {type(trajectory)}")
    if trajectory < 0:
        raise ValueError(f"trajectory must be >= 0, got {trajectory}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    return n_iter, int(trajectory)


def robbins_monro(
    g: Callable[[Any], Any],
    w0: Any,
    n_iter: int,
    step_size: StepSize | None = None,
    average: bool = False,
    callback: Callable[[int, Any], Any] | None = None,
    *,
    trajectory: int = 0,
) -> SAResult:
    """Find the root of g from noisy observations: w_k = w_{k-1} - a_k g(w_{k-1}).

    Args:
        g: called with the current iterate (a float for scalar ``w0``, a float64 array of
            shape (d,) otherwise); returns a noisy observation of g there, same shape.
        w0: starting point, scalar or 1-D. Independent replications of a scalar problem
            can be run at once as a vector ``w0`` with an elementwise ``g``.
        n_iter: number of iterations (one call of ``g`` each).
        step_size: the gains a_k (default ``harmonic_step()``, a_k = 1/k).
        average: also return the Polyak-Ruppert average of the iterates.
        callback: ``callback(k, w)`` after every iteration; returning ``True`` stops.
        trajectory: keep the iterate at this many log-spaced iterations (0: none).

    Returns:
        :class:`SAResult`. Reference: Robbins & Monro (1951); Polyak & Juditsky (1992).
    """
    n_iter, points = check_run_args(n_iter, trajectory, callback)
    if not callable(g):
        raise TypeError(f"g must be callable, got {type(g).__name__}")
    rm = RobbinsMonro(w0, step_size, average=average)
    rec = _Recorder(n_iter, points, rm)
    for k in range(1, n_iter + 1):
        try:
            rm.step(g(rm.w))
        except ValueError as exc:
            raise ValueError(f"g(w) at iteration {k}: {exc}") from None
        rec.see(k)
        if callback is not None and callback(k, rm.w) is True:
            break
    return rec.fill(SAResult(w=rm.w, w_avg=rm.w_avg, n_iter=rm.k, n_evals=rm.k))
