"""Experiments that put the theory of stochastic approximation to the test (numpy only).

The test problem throughout: find the root w* = 1 of g(w) = tanh(w - 1) from
observations Y = g(w) + N(0, sigma^2), starting at w0 = 0. The slope at the root is
g'(w*) = 1, so the theory predicts, for the gain a_k = a / k^p:

- p = 1, a > 1/(2 g'):  k E|w_k - w*|^2 -> a^2 sigma^2 / (2 a g' - 1)   (error ~ k^-1/2)
- p = 1, a < 1/(2 g'):  the error decays only like k^(-a g')           (too small a gain)
- 1/2 < p < 1:  the last iterate has E|w_k - w*|^2 ~ a_k sigma^2 / (2 g'), while the
  Polyak-Ruppert average reaches sigma^2 / (g'^2 k), the best possible constant
- constant a: E|w_k - w*|^2 -> a sigma^2 / (2 g' - a g'^2), a floor that never shrinks
- p > 1 (sum a_k < inf): the iterate moves a bounded distance and can stall short of w*

Replications are the coordinates of one vector iterate, so one call of
``robbins_monro`` runs them all at once. Every function takes a seed and is
deterministic given it. Run ``python theory.py`` to print the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sa_estimators as sa

ROOT = 1.0  # w* of g(w) = tanh(w - 1)
SLOPE = 1.0  # g'(w*)


@dataclass
class ErrorCurve:
    """Mean-squared errors over replications at log-spaced iterations k."""

    k: np.ndarray  # (T,) iteration numbers
    mse: np.ndarray  # (T,) E|w_k - w*|^2 of the last iterate
    mse_avg: np.ndarray | None  # (T,) same for the Polyak-Ruppert average
    final: np.ndarray  # (reps,) last iterates


def rm_error_curve(
    step_size: sa.StepSize,
    n_iter: int = 4096,
    reps: int = 1000,
    *,
    sigma: float = 1.0,
    w0: float = 0.0,
    average: bool = False,
    points: int = 40,
    seed: int = 0,
) -> ErrorCurve:
    """Run ``reps`` independent Robbins-Monro chains on tanh(w - 1) + N(0, sigma^2)."""
    rng = np.random.default_rng(seed)

    def noisy_g(w: np.ndarray) -> np.ndarray:  # w: (reps,)
        return np.tanh(w - ROOT) + sigma * rng.standard_normal(w.shape)

    res = sa.robbins_monro(
        noisy_g, np.full(reps, w0), n_iter, step_size, average=average, trajectory=points
    )
    mse = np.mean((res.trajectory - ROOT) ** 2, axis=1)  # (T,)
    mse_avg = None
    if average:
        mse_avg = np.mean((res.trajectory_avg - ROOT) ** 2, axis=1)
    return ErrorCurve(res.trajectory_k, mse, mse_avg, np.asarray(res.w))


def loglog_slope(k: np.ndarray, mse: np.ndarray, k_min: int = 100) -> float:
    """Least-squares slope of log RMSE against log k over k >= k_min (theory: -1/2)."""
    keep = k >= k_min
    slope, _ = np.polyfit(np.log(k[keep]), 0.5 * np.log(mse[keep]), 1)
    return float(slope)


def harmonic_constant(a: float, sigma: float = 1.0, slope: float = SLOPE) -> float:
    """lim k E|w_k - w*|^2 for a_k = a / k (needs 2 a g' > 1)."""
    return a**2 * sigma**2 / (2 * a * slope - 1)


def constant_floor(a: float, sigma: float = 1.0, slope: float = SLOPE) -> float:
    """Stationary E|w - w*|^2 of the linearised recursion with constant gain a."""
    return a * sigma**2 / (2 * slope - a * slope**2)


def polyak_experiment(n_iter: int = 8192, reps: int = 2000, seed: int = 1) -> dict[str, float]:
    """Slow gain k^-0.6 with averaging: k * MSE(average) vs the optimum sigma^2 / g'^2 = 1."""
    curve = rm_error_curve(sa.polynomial_step(1.0, 0.6), n_iter, reps, average=True, seed=seed)
    k = float(curve.k[-1])
    return {
        "k": k,
        "k_mse_avg": k * float(curve.mse_avg[-1]),
        "k_mse_last": k * float(curve.mse[-1]),
        "optimum": 1.0,
        # last iterate: E|w_k - w*|^2 ~ a_k sigma^2 / (2 g') = k^-0.6 / 2
        "k_mse_last_theory": k * 0.5 * k**-0.6,
    }


def constant_step_experiment(
    a: float = 0.1, n_iter: int = 4096, reps: int = 2000, seed: int = 2
) -> dict[str, float]:
    """A constant gain: the error stops shrinking at a noise floor ~ a sigma^2 / (2 g')."""
    curve = rm_error_curve(sa.constant_step(a), n_iter, reps, seed=seed)
    late = curve.k >= n_iter // 4  # long after the transient exp(-a k) has died
    return {
        "floor": float(np.mean(curve.mse[late])),
        "floor_theory": constant_floor(a),
        "mse_quarter": float(curve.mse[late][0]),
        "mse_end": float(curve.mse[-1]),
        "harmonic_mse_end": float(
            rm_error_curve(sa.harmonic_step(1.0), n_iter, reps, seed=seed).mse[-1]
        ),
    }


def summable_step_experiment(reps: int = 500, seed: int = 3) -> dict[str, float]:
    """a_k = 1/k^2 (sum a_k = pi^2/6 < inf) from w0 = -3: |g| <= 1, so it cannot reach 1."""
    curve = rm_error_curve(sa.polynomial_step(1.0, 2.0), 4096, reps, w0=-3.0, seed=seed)
    return {"mean_final": float(np.mean(curve.final)), "max_travel": float(np.pi**2 / 6)}


def mean_estimation_experiment(
    n_samples: int = 400, n_iter: int = 200, reps: int = 200, seed: int = 4
) -> dict[str, np.ndarray]:
    """E|w_k - mean|^2 for SGD / MBGD(m=5, 50) / BGD on one fixed data set, over draws."""
    rng = np.random.default_rng(seed)
    samples = rng.uniform(-10, 10, size=(n_samples, 2))  # sigma^2 = 100/3 per coordinate
    target = samples.mean(axis=0)
    out = {}
    for name, method, m in [("sgd", "sgd", None), ("mbgd5", "mbgd", 5), ("mbgd50", "mbgd", 50),
                            ("bgd", "bgd", None)]:  # fmt: skip
        errs = np.zeros(n_iter + 1)
        for r in range(reps if method != "bgd" else 1):
            traj = sa.mean_estimation(samples, method, m, n_iter, seed=seed * 1000 + r)
            errs += np.sum((traj - target) ** 2, axis=1)
        out[name] = errs / (reps if method != "bgd" else 1)
    out["variance"] = np.full(1, samples.var(axis=0).sum())  # sigma^2, summed over coords
    return out


if __name__ == "__main__":
    for a in (1.0, 0.25):
        c = rm_error_curve(sa.harmonic_step(a), seed=0)
        print(f"a_k = {a}/k: log-log slope {loglog_slope(c.k, c.mse):+.3f}")
    print("Polyak-Ruppert:", polyak_experiment())
    print("constant step:", constant_step_experiment())
    print("summable step:", summable_step_experiment())
    me = mean_estimation_experiment()
    print("mean estimation, k=200:", {k: float(v[-1]) for k, v in me.items()})
