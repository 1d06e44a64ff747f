"""WindowedQuantile: numpy's exact answer on stationary streams, a sketch otherwise."""

import json
import math

import numpy as np
import pytest
import sa_estimators as sa

river_stats = pytest.importorskip("river.stats")


def feed(est, x, chunk=1000):
    for i in range(0, x.size, chunk):
        est.update(x[i : i + chunk])
    return est


def river_quantile(x, q):
    peer = river_stats.Quantile(q)
    update = peer.update
    for v in x.tolist():
        update(v)
    return peer.get()


STATIONARY = {
    "normal": lambda r, n: 10.0 + 3.0 * r.standard_normal(n),
    "exponential": lambda r, n: r.exponential(2.0, n),
    "lognormal": lambda r, n: r.lognormal(0.0, 1.5, n),
    "student-t2": lambda r, n: r.standard_t(2, n),
    "uniform": lambda r, n: r.uniform(-1, 1, n),
    "bimodal": lambda r, n: np.where(r.random(n) < 0.3, -4.0, 4.0) + r.standard_normal(n),
    "narrow-offset": lambda r, n: 1e4 + 1e-3 * r.standard_normal(n),
    "poisson": lambda r, n: r.poisson(3.0, n).astype(np.float64),  # heavy ties
}

ADVERSARIAL = {  # orders that carry the quantile out of any window fixed early on
    "sorted": lambda r, n: np.sort(r.standard_normal(n)),
    "reverse-sorted": lambda r, n: np.sort(r.standard_normal(n))[::-1].copy(),
    "drift": lambda r, n: r.standard_normal(n) + np.linspace(0.0, 5.0, n),
    "regime-shift": lambda r, n: np.concatenate(
        [r.standard_normal(n // 10) - 5.0, r.standard_normal(n - n // 10)]
    ),
}


@pytest.mark.parametrize("dist", sorted(STATIONARY))
@pytest.mark.parametrize("q", [0.01, 0.5, 0.9, 0.999])
def test_equals_numpy_bit_for_bit_on_stationary_streams(dist, q):
    rng = np.random.default_rng(sorted(STATIONARY).index(dist))
    x = STATIONARY[dist](rng, 150_001)
    est = feed(sa.WindowedQuantile(q), x, 997)
    assert est.exact
    assert est.quantile == np.quantile(x, q)  # not approx: the same float
    assert est.count == x.size


def test_exact_at_every_read_along_the_stream(rng):
    x = rng.gamma(2.0, size=60_000)
    est = sa.WindowedQuantile(0.7, capacity=512, block_size=1024)
    for i in range(0, x.size, 1500):
        est.update(x[i : i + 1500])
        assert est.exact and est.quantile == np.quantile(x[: i + 1500], 0.7)


def test_memory_stays_order_sqrt_n(rng):
    x = rng.standard_normal(61 * 16_384)  # whole blocks: nothing left pending
    est = feed(sa.WindowedQuantile(0.9), x, 10_000)
    half = 6 * math.sqrt(0.9 * 0.1 * x.size) + 32
    assert est.exact and est.n_kept <= 8 * half + 1
    lo, hi = est.window
    assert np.count_nonzero((x >= lo) & (x <= hi)) == est.n_kept  # the kept samples


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("dist", ["normal", "lognormal", "student-t2"])
def test_error_never_worse_than_river_stationary(dist, seed):
    x = STATIONARY[dist](np.random.default_rng(100 + seed), 200_000)
    exact = np.quantile(x, 0.9)
    ours = feed(sa.WindowedQuantile(0.9), x)
    assert abs(ours.quantile - exact) <= abs(river_quantile(x, 0.9) - exact)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("dist", sorted(ADVERSARIAL))
def test_error_below_river_on_adversarial_orders(dist, seed):
    x = ADVERSARIAL[dist](np.random.default_rng(200 + seed), 200_000)
    exact, sd = np.quantile(x, 0.9), np.std(x)
    ours = feed(sa.WindowedQuantile(0.9), x)
    assert not ours.exact  # the window had to move: the answer comes from the sketch
    err_ours = abs(ours.quantile - exact) / sd
    err_river = abs(river_quantile(x, 0.9) - exact) / sd
    assert err_ours <= err_river and err_ours < 0.02


def test_sorted_stream_rank_error_is_a_few_strides(rng):
    x = np.sort(rng.standard_normal(300_000))
    est = feed(sa.WindowedQuantile(0.25), x, 4096)
    rank = np.searchsorted(x, est.quantile) / (x.size - 1)
    assert abs(rank - 0.25) < 4 * est.state_dict()["stride"] / x.size


def test_state_depends_only_on_the_stream(rng):
    x = rng.standard_normal(70_001)
    by_float = sa.WindowedQuantile(0.3, block_size=4096)
    for v in x.tolist():
        by_float.update(v)
    whole = sa.WindowedQuantile(0.3, block_size=4096).update(x)
    ragged = sa.WindowedQuantile(0.3, block_size=4096)
    cuts = np.unique(rng.integers(0, x.size, 60))
    for part in np.split(x, cuts):
        if part.size:
            ragged.update(part)
        _ = ragged.quantile  # reading does not disturb the state
    states = [e.state_dict() for e in (by_float, whole, ragged)]
    assert states[0] == states[1] == states[2]
    assert by_float.quantile == whole.quantile == np.quantile(x, 0.3)


@pytest.mark.parametrize(
    "make, cuts", [("normal", (100, 16_384, 40_000, 51_234)), ("sorted", (30_000, 61_000))]
)
def test_state_dict_resumes_exactly(make, cuts):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(80_000)
    if make == "sorted":
        x = np.sort(x)
    full = feed(sa.WindowedQuantile(0.8, block_size=8192), x, 1000)
    for cut in cuts:  # mid-block, on a block edge, after shrinks / re-centring
        first = feed(sa.WindowedQuantile(0.8, block_size=8192), x[:cut], 1000)
        state = json.loads(json.dumps(first.state_dict()))  # plain Python, JSON-safe
        resumed = sa.WindowedQuantile(0.8)
        resumed.load_state_dict(state)
        feed(resumed, x[cut:], 1000)
        assert resumed.state_dict() == full.state_dict()
        assert resumed.quantile == full.quantile
        assert resumed.exact == full.exact == (make == "normal")


def test_resume_with_pending_scalars(rng):
    x = rng.standard_normal(5000)
    full = sa.WindowedQuantile(0.5, block_size=1024)
    part = sa.WindowedQuantile(0.5, block_size=1024)
    for v in x.tolist():
        full.update(v)
    for v in x[:2500].tolist():
        part.update(v)
    resumed = sa.WindowedQuantile(0.5)
    resumed.load_state_dict(part.state_dict())
    for v in x[2500:].tolist():
        resumed.update(v)
    assert resumed.state_dict() == full.state_dict()


def test_constant_stream_and_short_streams(rng):
    est = sa.WindowedQuantile(0.9).update(np.full(100_000, 3.25))
    assert est.quantile == 3.25 and est.exact and est.n_kept == 1
    assert math.isnan(sa.WindowedQuantile(0.5).quantile)
    for n in (1, 2, 17):
        x = rng.standard_normal(n)
        assert sa.WindowedQuantile(0.37).update(x).quantile == np.quantile(x, 0.37)


def test_accepts_ints_float32_lists_and_strided_views(rng):
    x = rng.standard_normal(30_000)
    ref = sa.WindowedQuantile(0.6).update(x.astype(np.float32).astype(np.float64))
    assert sa.WindowedQuantile(0.6).update(x.astype(np.float32)).quantile == ref.quantile
    ints = rng.integers(-50, 50, 10_001)
    assert sa.WindowedQuantile(0.6).update(ints).quantile == np.quantile(ints, 0.6)
    assert sa.WindowedQuantile(0.6).update(list(x[:101])).quantile == np.quantile(x[:101], 0.6)
    assert sa.WindowedQuantile(0.6).update(x[::3]).quantile == np.quantile(x[::3], 0.6)


def test_reused_caller_buffer_is_copied(rng):
    x = rng.standard_normal(3000)
    buf = np.empty(1000)
    est = sa.WindowedQuantile(0.5)
    for i in range(0, 3000, 1000):
        buf[:] = x[i : i + 1000]
        est.update(buf)
    buf[:] = 1e9  # the caller scribbles over its buffer
    assert est.quantile == np.quantile(x, 0.5)


def test_nan_policy_skip_counts(rng):
    x = rng.standard_normal(1000)
    est = sa.WindowedQuantile(0.5, nan_policy="skip")
    est.update(np.concatenate([x, [np.nan, -np.inf]]))
    est.update(float("nan"))
    assert est.n_skipped == 3 and est.count == 1000
    assert est.quantile == np.quantile(x, 0.5)


# -- bad input: one test per class ----------------------------------------------------
@pytest.mark.parametrize("q", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_q_outside_unit_interval(q):
    with pytest.raises(ValueError, match="q must lie strictly inside"):
        sa.WindowedQuantile(q)


def test_q_wrong_type():
    with pytest.raises(TypeError, match="q must be a float"):
        sa.WindowedQuantile("0.9")


@pytest.mark.parametrize(
    "bad", [float("nan"), float("inf"), np.array([0.0, np.nan]), [1.0, -np.inf]]
)
def test_non_finite_rejected_and_state_unchanged(rng, bad):
    est = sa.WindowedQuantile(0.5, block_size=256)
    est.update(rng.standard_normal(1000))
    est.update(0.25)
    before = est.state_dict()
    with pytest.raises(ValueError, match="x must be finite"):
        est.update(bad)
    assert est.state_dict() == before


def test_empty_batch_rejected():
    with pytest.raises(ValueError, match="x must not be an empty batch"):
        sa.WindowedQuantile(0.5).update(np.empty(0))


def test_bad_shape_rejected():
    with pytest.raises(ValueError, match="x must be a scalar or a 1-D batch"):
        sa.WindowedQuantile(0.5).update(np.zeros((3, 2)))


@pytest.mark.parametrize("bad", [np.array(["a", "b"]), np.array([True, False]), np.array([1j])])
def test_bad_dtype_rejected(bad):
    with pytest.raises(TypeError, match="x must hold real numbers"):
        sa.WindowedQuantile(0.5).update(bad)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"capacity": 0}, "capacity"),
        ({"block_size": -1}, "block_size"),
        ({"sketch_size": 1}, "sketch_size"),
        ({"nan_policy": "drop"}, "nan_policy"),
    ],
)
def test_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        sa.WindowedQuantile(0.5, **kwargs)


def test_load_state_dict_checks():
    est = sa.WindowedQuantile(0.5)
    state = est.state_dict()
    with pytest.raises(ValueError, match="missing keys"):
        est.load_state_dict({k: v for k, v in state.items() if k != "sketch"})
    with pytest.raises(ValueError, match="q=0.9"):
        sa.WindowedQuantile(0.9).load_state_dict(state)
