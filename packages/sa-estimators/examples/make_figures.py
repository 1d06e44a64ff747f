"""Draw the figures of the docs page (needs matplotlib: ``pip install sa-estimators[plot]``).

    python make_figures.py [--out DIR]

Writes four PNG files; the default DIR is the docs page's figure folder of the
monorepo. Every number comes from ``theory.py`` (fixed seeds), so the figures are
reproducible.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import sa_estimators as sa  # noqa: E402
import theory  # noqa: E402

DEFAULT_OUT = (
    Path(__file__).resolve().parents[3] / "docs" / "content" / "packages" / "sa-estimators"
)


def sgd_mbgd_bgd(out: Path) -> None:
    rng = np.random.default_rng(0)
    samples = rng.uniform(-10, 10, size=(400, 2))
    runs = {
        "SGD (m=1)": sa.mean_estimation(samples, "sgd", n_iter=30, seed=1, w0=[20.0, 20.0]),
        "MBGD (m=5)": sa.mean_estimation(samples, "mbgd", 5, 30, seed=1, w0=[20.0, 20.0]),
        "MBGD (m=50)": sa.mean_estimation(samples, "mbgd", 50, 30, seed=1, w0=[20.0, 20.0]),
        "BGD (m=n)": sa.mean_estimation(samples, "bgd", n_iter=30, w0=[20.0, 20.0]),
    }
    errors = theory.mean_estimation_experiment()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.scatter(*samples.T, s=4, c="0.8", label="samples")
    for name, traj in runs.items():
        left.plot(*traj.T, marker=".", lw=1, label=name)
    left.plot(*samples.mean(0), "k*", ms=14, label="sample mean")
    left.set(title="Estimates w_k, a_k = 1/k, from w_0 = (20, 20)", aspect="equal")
    left.legend(fontsize=8)
    k = np.arange(1, 201)
    for key, label in [("sgd", "SGD"), ("mbgd5", "MBGD m=5"), ("mbgd50", "MBGD m=50")]:
        right.loglog(k, errors[key][1:], label=label)
    var = float(errors["variance"][0])
    for m in (1, 5, 50):
        right.loglog(k, var / (m * k), "k:", lw=0.8)
    right.set(title="E|w_k - mean|^2 over 200 runs (dotted: sigma^2 / (m k))", xlabel="k")
    right.legend()
    fig.tight_layout()
    fig.savefig(out / "sgd_mbgd_bgd.png", dpi=110)
    plt.close(fig)


STEPS = {
    "1/k": sa.harmonic_step(1.0),
    "0.25/k (a g' < 1/2)": sa.harmonic_step(0.25),
    "1/k^0.6": sa.polynomial_step(1.0, 0.6),
    "constant 0.1": sa.constant_step(0.1),
    "1/k^2 (sum a_k < inf)": sa.polynomial_step(1.0, 2.0),
}


def rm_trajectories(out: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, step in STEPS.items():
        rng = np.random.default_rng(7)  # the same noise for every gain

        def noisy_g(w: float, rng: np.random.Generator = rng) -> float:
            return np.tanh(w - 1.0) + rng.standard_normal()

        res = sa.robbins_monro(noisy_g, -2.0, 2000, step, trajectory=400)
        ax.semilogx(res.trajectory_k, res.trajectory, label=name, lw=1)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set(title="Robbins-Monro on tanh(w - 1) + N(0, 1): one run per gain", xlabel="k",
           ylabel="w_k")  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "rm_step_sizes.png", dpi=110)
    plt.close(fig)


def polyak(out: Path) -> None:
    slow = theory.rm_error_curve(sa.polynomial_step(1.0, 0.6), 8192, 2000, average=True, seed=1)
    best = theory.rm_error_curve(sa.harmonic_step(1.0), 8192, 2000, seed=1)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.loglog(slow.k, slow.mse, label="last iterate, a_k = 1/k^0.6")
    ax.loglog(slow.k, slow.mse_avg, label="Polyak-Ruppert average, a_k = 1/k^0.6")
    ax.loglog(best.k, best.mse, label="last iterate, a_k = 1/k (optimal constant)")
    ax.loglog(slow.k, 1.0 / slow.k, "k--", lw=0.8, label="sigma^2 / (g'^2 k)")
    ax.set(title="Averaging a slow gain reaches the optimal variance", xlabel="k",
           ylabel="E|w - w*|^2 (2000 runs)")  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "polyak_averaging.png", dpi=110)
    plt.close(fig)


def loglog_errors(out: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, step in STEPS.items():
        curve = theory.rm_error_curve(step, 4096, 1000, seed=0)
        slope = theory.loglog_slope(curve.k, curve.mse)
        ax.loglog(curve.k, np.sqrt(curve.mse), label=f"{name} (slope {slope:+.2f})")
    k = np.geomspace(1, 4096)
    ax.loglog(k, k**-0.5, "k--", lw=0.8, label="k^(-1/2)")
    ax.set(title="RMSE of the last iterate over 1000 runs", xlabel="k", ylabel="RMSE")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "loglog_error.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    for draw in (sgd_mbgd_bgd, rm_trajectories, polyak, loglog_errors):
        draw(out)
    print("wrote", ", ".join(sorted(p.name for p in out.glob("*.png"))), "to", out)


if __name__ == "__main__":
    main()
