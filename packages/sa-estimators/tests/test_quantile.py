import math
from statistics import NormalDist

import numpy as np
import pytest
import sa_estimators as sa

river_stats = pytest.importorskip("river.stats")


def feed_chunks(est, x, chunk=1000):
    for i in range(0, x.size, chunk):
        est.update(x[i : i + chunk])
    return est


def sample_sd(q: float, n: int) -> float:
    """Standard deviation of the sample q-quantile of n standard normals."""
    z = NormalDist().inv_cdf(q)
    return math.sqrt(q * (1 - q) / n) / NormalDist().pdf(z)


@pytest.mark.parametrize("q", [0.01, 0.1, 0.5, 0.9, 0.99])
def test_normal_quantiles_known_answer(q):
    rng = np.random.default_rng(int(q * 1000))
    n = 200_000
    x = 4.0 + 3.0 * rng.standard_normal(n)
    est = feed_chunks(sa.StreamingQuantile(q), x)
    truth = 4.0 + 3.0 * NormalDist().inv_cdf(q)
    # the estimator is as good as the sample quantile: within 4 of its s.d. of the truth
    assert abs(est.quantile - truth) / 3.0 < 4 * sample_sd(q, n)
    # and it tracks the sample quantile itself to ~0.01 standard deviations
    assert abs(est.quantile - np.quantile(x, q)) / 3.0 < 0.01
    # the learnt density is the normal density at the quantile
    assert est.density * 3.0 == pytest.approx(NormalDist().pdf(NormalDist().inv_cdf(q)), rel=0.1)


DISTRIBUTIONS = {
    "normal": lambda r, n: r.standard_normal(n),
    "exponential": lambda r, n: r.exponential(2.0, n),
    "uniform": lambda r, n: r.uniform(-1, 1, n),
    "student-t3": lambda r, n: r.standard_t(3, n),
    "bimodal": lambda r, n: np.where(r.random(n) < 0.3, -4.0, 4.0) + r.standard_normal(n),
    "narrow-offset": lambda r, n: 1e4 + 1e-3 * r.standard_normal(n),
}


@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("q", [0.25, 0.9])
def test_agrees_with_numpy_and_river(dist, q):
    rng = np.random.default_rng(sorted(DISTRIBUTIONS).index(dist))
    x = DISTRIBUTIONS[dist](rng, 100_003)
    exact = float(np.quantile(x, q))
    sd = float(np.std(x))
    ours = feed_chunks(sa.StreamingQuantile(q), x)
    peer = river_stats.Quantile(q)
    for v in x.tolist():
        peer.update(v)
    err_ours = abs(ours.quantile - exact) / sd
    err_peer = abs(peer.get() - exact) / sd
    assert err_ours < 0.01
    assert err_ours <= 2 * err_peer + 2e-3


def test_affine_equivariance_rate_independent_of_density(rng):
    # density-adapted gain: the iterates of 1000 x + 5 are 1000 * (iterates of x) + 5
    x = rng.standard_normal(50_021)
    a = feed_chunks(sa.StreamingQuantile(0.7), x, 997)
    b = feed_chunks(sa.StreamingQuantile(0.7), 1000.0 * x + 5.0, 997)
    assert (b.quantile - 5.0) / 1000.0 == pytest.approx(a.quantile, abs=1e-9)


def test_scalars_equal_batches_of_buffer_size(rng):
    x = rng.standard_normal(5 * 1024 + 17)
    single = sa.StreamingQuantile(0.3)
    for v in x.tolist():
        single.update(v)
    batched = feed_chunks(sa.StreamingQuantile(0.3), x, single.buffer_size)
    assert single.quantile == batched.quantile
    assert single.count == batched.count == x.size


def test_single_sample_stream_accuracy_vs_river(rng):
    x = rng.exponential(1.0, 100_000)
    ours, peer = sa.StreamingQuantile(0.9), river_stats.Quantile(0.9)
    for v in x.tolist():
        ours.update(v)
        peer.update(v)
    exact = np.quantile(x, 0.9)
    assert abs(ours.quantile - exact) <= 2 * abs(peer.get() - exact) + 2e-3


@pytest.mark.parametrize("n", [1, 2, 17, 255])
def test_warm_up_is_exact(rng, n):
    x = rng.standard_normal(n)
    est = sa.StreamingQuantile(0.37)
    for v in x.tolist():
        est.update(v)
    assert est.quantile == pytest.approx(float(np.quantile(x, 0.37)), rel=1e-15)
    assert math.isnan(sa.StreamingQuantile(0.5).quantile)


def test_reused_caller_buffer_does_not_corrupt_the_warm_up(rng):
    x = rng.standard_normal(300)
    buf = np.empty(100)
    est = sa.StreamingQuantile(0.5)
    for i in range(0, 200, 100):  # two batches, still in the warm-up (init_size 256)
        buf[:] = x[i : i + 100]
        est.update(buf)
    buf[:] = 1e9  # the caller scribbles over its buffer
    assert est.quantile == np.quantile(x[:200], 0.5)


def test_constant_step_tracks_a_drifting_quantile(rng):
    x = np.concatenate([rng.standard_normal(20_000), 5 + rng.standard_normal(20_000)])
    tracker = feed_chunks(sa.StreamingQuantile(0.5, step_size=sa.constant_step(0.01)), x, 100)
    assert abs(tracker.quantile - 5.0) < 0.1


def test_state_dict_resumes_exactly(rng):
    x = rng.gamma(2.0, size=20_011)
    full = feed_chunks(sa.StreamingQuantile(0.8), x, 1000)
    for cut in (100, 5000):  # during and after the warm-up
        first = feed_chunks(sa.StreamingQuantile(0.8), x[:cut], 1000)
        resumed = sa.StreamingQuantile(0.8)
        resumed.load_state_dict(first.state_dict())
        resumed = feed_chunks(resumed, x[cut:], 1000)
        if cut % 1000 == 0:
            assert resumed.quantile == full.quantile
        assert abs(resumed.quantile - full.quantile) < 0.01


def test_nan_policy_skip_counts(rng):
    x = rng.standard_normal(1000)
    est = sa.StreamingQuantile(0.5, nan_policy="skip")
    est.update(np.concatenate([x, [np.nan, -np.inf]]))
    est.update(float("nan"))
    ref = sa.StreamingQuantile(0.5)
    ref.update(x)
    assert est.n_skipped == 3 and est.count == 1000
    assert est.quantile == ref.quantile


# -- bad input: one test per class ----------------------------------------------------
@pytest.mark.parametrize("q", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_q_outside_unit_interval(q):
    with pytest.raises(ValueError, match="q must lie strictly inside"):
        sa.StreamingQuantile(q)


def test_q_wrong_type():
    with pytest.raises(TypeError, match="q must be a float"):
        sa.StreamingQuantile("0.5")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), np.array([0.0, np.inf])])
def test_non_finite_rejected_and_state_unchanged(rng, bad):
    est = sa.StreamingQuantile(0.5)
    est.update(rng.standard_normal(300))
    before = est.state_dict()
    with pytest.raises(ValueError, match="x must be finite"):
        est.update(bad)
    assert est.state_dict() == before


def test_empty_batch_rejected():
    with pytest.raises(ValueError, match="x must not be an empty batch"):
        sa.StreamingQuantile(0.5).update([])


def test_bad_shape_rejected():
    with pytest.raises(ValueError, match="x must be a scalar or a 1-D batch"):
        sa.StreamingQuantile(0.5).update(np.zeros((3, 2)))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"bandwidth": 0.0}, "bandwidth"),
        ({"bandwidth": -1.0}, "bandwidth"),
        ({"init_size": 0}, "init_size"),
        ({"buffer_size": 0}, "buffer_size"),
        ({"nan_policy": "drop"}, "nan_policy"),
    ],
)
def test_non_positive_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        sa.StreamingQuantile(0.5, **kwargs)


def test_step_size_type():
    with pytest.raises(TypeError, match="step_size must be a StepSize"):
        sa.StreamingQuantile(0.5, step_size=0.01)
