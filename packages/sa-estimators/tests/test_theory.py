"""The predictions of examples/theory.py, checked with fixed seeds over many replications.

Each tolerance is several standard errors of the Monte-Carlo estimate wide (relative s.e.
of an MSE over R replications is about sqrt(2 / R)), and the seeds are fixed, so these
tests are deterministic; each also fails if the predicted behaviour is absent.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import sa_estimators as sa

THEORY_PATH = Path(__file__).resolve().parents[1] / "examples" / "theory.py"


@pytest.fixture(scope="module")
def theory():
    spec = importlib.util.spec_from_file_location("sa_theory", THEORY_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_harmonic_gain_error_shrinks_like_k_to_the_minus_half(theory):
    curve = theory.rm_error_curve(sa.harmonic_step(1.0), n_iter=4096, reps=1000, seed=0)
    assert theory.loglog_slope(curve.k, curve.mse, k_min=200) == pytest.approx(-0.5, abs=0.05)
    # and the constant: k E|w_k - w*|^2 -> a^2 sigma^2 / (2 a g' - 1) = 1 at a = 1
    assert curve.k[-1] * curve.mse[-1] == pytest.approx(theory.harmonic_constant(1.0), rel=0.15)


def test_too_small_harmonic_gain_is_slower_than_k_to_the_minus_half(theory):
    # a g' = 1/4 < 1/2: the error decays only like k^(-a g') = k^(-1/4)
    curve = theory.rm_error_curve(sa.harmonic_step(0.25), n_iter=4096, reps=1000, seed=0)
    assert theory.loglog_slope(curve.k, curve.mse, k_min=200) == pytest.approx(-0.25, abs=0.05)


def test_polyak_averaging_beats_the_last_iterate_and_is_near_optimal(theory):
    out = theory.polyak_experiment(n_iter=8192, reps=2000, seed=1)
    assert out["k_mse_avg"] == pytest.approx(out["optimum"], rel=0.15)
    assert out["k_mse_last"] > 5 * out["k_mse_avg"]
    assert out["k_mse_last"] == pytest.approx(out["k_mse_last_theory"], rel=0.2)


def test_constant_step_plateaus_at_its_noise_floor(theory):
    out = theory.constant_step_experiment(a=0.1, n_iter=4096, reps=2000, seed=2)
    assert out["floor"] == pytest.approx(out["floor_theory"], rel=0.15)
    # no convergence: the error a quarter of the way and at the end are the same ...
    assert out["mse_end"] == pytest.approx(out["mse_quarter"], rel=0.15)
    # ... and far above what a Robbins-Monro gain achieves by then
    assert out["mse_end"] > 50 * out["harmonic_mse_end"]


def test_summable_step_stalls_short_of_the_root(theory):
    out = theory.summable_step_experiment(reps=500, seed=3)
    # from w0 = -3 with |g| <= 1 it can travel at most sum a_k = pi^2/6 < 4
    assert out["mean_final"] < -3.0 + out["max_travel"] + 0.1
    assert out["mean_final"] < 0.0


def test_sgd_mbgd_bgd_errors_scale_like_sigma2_over_mk(theory):
    out = theory.mean_estimation_experiment(n_samples=400, n_iter=200, reps=200, seed=4)
    var = float(out["variance"][0])
    k = np.arange(1, 201)
    for name, m in [("sgd", 1), ("mbgd5", 5), ("mbgd50", 50)]:
        late = slice(49, None)  # k = 50..200, averaged to cut Monte-Carlo noise
        ratio = np.mean(out[name][1:][late] * m * k[late]) / var
        assert ratio == pytest.approx(1.0, rel=0.2), name
    assert np.all(out["bgd"][1:] < 1e-20)
