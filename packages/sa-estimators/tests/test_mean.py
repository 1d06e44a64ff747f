import math

import numpy as np
import pytest
import sa_estimators as sa

river_stats = pytest.importorskip("river.stats")


def exact_mean(x) -> float:
    return math.fsum(x) / len(x)


@pytest.mark.parametrize("n", [1, 2, 7, 997, 10_007])
@pytest.mark.parametrize("feed", ["scalars", "chunks", "ragged"])
def test_equals_exact_mean_and_river(rng, n, feed):
    x = 3.0 + 2.0 * rng.standard_normal(n)
    m = sa.IncrementalMean()
    peer = river_stats.Mean()
    if feed == "scalars":
        for v in x.tolist():
            m.update(v)
            peer.update(v)
    else:
        sizes = [1000] if feed == "chunks" else [1, 13, 101, 7]
        i, j = 0, 0
        while i < n:
            chunk = x[i : i + sizes[j % len(sizes)]]
            m.update(chunk)
            peer.update_many(chunk)
            i += chunk.size
            j += 1
    assert m.count == n
    assert m.mean == pytest.approx(exact_mean(x), rel=1e-14, abs=1e-15)
    assert m.mean == pytest.approx(peer.get(), rel=1e-12)
    assert m.mean == pytest.approx(float(np.mean(x)), rel=1e-13)


def test_large_offset_stream_stays_exact(rng):
    # 1e7 samples around 1e9: the naive recursion drifts (~1e-13 rel), ours stays ~1 ulp
    m = sa.IncrementalMean()
    parts = []
    for _ in range(100):
        chunk = 1e9 + rng.standard_normal(100_000)
        m.update(chunk)
        parts.append(chunk)
    x = np.concatenate(parts)
    exact = exact_mean(x)
    assert abs(m.mean - exact) / exact < 1e-15


@pytest.mark.slow
def test_1e9_samples_large_offset(rng):
    m = sa.IncrementalMean()
    comp = []
    for _ in range(1000):
        chunk = 1e6 + rng.standard_normal(1_000_000)
        m.update(chunk)
        comp.append(math.fsum(chunk))
    exact = math.fsum(comp) / 1e9
    assert abs(m.mean - exact) / exact < 1e-12


def test_python_ints_and_numpy_scalars(rng):
    m = sa.IncrementalMean()
    for v in [1, 2, np.float32(3.5), np.int64(4), 5.5]:
        m.update(v)
    assert m.mean == pytest.approx(16 / 5)
    assert m.count == 5


def test_merge_equals_concatenation(rng):
    a_x = 1e6 + rng.standard_normal(1001)
    b_x = -5e5 + rng.standard_normal(37)
    a, b = sa.IncrementalMean(), sa.IncrementalMean()
    a.update(a_x)
    for v in b_x.tolist():
        b.update(v)
    a.merge(b)
    both = np.concatenate([a_x, b_x])
    assert a.count == both.size
    assert a.mean == pytest.approx(exact_mean(both), rel=1e-15)
    empty = sa.IncrementalMean()
    empty.merge(a)
    assert empty.mean == a.mean and empty.count == a.count


def loop_reference(x, step, w0):
    w, start = (x[0], 1) if w0 is None else (w0, 0)
    for k in range(start, len(x)):
        w = w - step(k + 1) * (w - x[k])
    return w


@pytest.mark.parametrize(
    "step", [sa.constant_step(0.05), sa.polynomial_step(0.9, 0.7), sa.harmonic_step(1.0)]
)
@pytest.mark.parametrize("w0", [None, 2.5])
def test_general_step_matches_the_recursion(rng, step, w0):
    x = rng.standard_normal(1013) + np.linspace(0, 4, 1013)  # drifting stream
    m = sa.IncrementalMean(step, w0=w0)
    m.update(x[:1]).update(x[1:500])
    for v in x[500:].tolist():
        m.update(v)
    assert m.mean == pytest.approx(loop_reference(x, step, w0), rel=1e-10)


@pytest.mark.parametrize("fading", [0.5, 0.05])
def test_constant_step_is_rivers_exponentially_weighted_mean(rng, fading):
    x = 3.0 + rng.standard_normal(2003)
    ours, peer = sa.IncrementalMean(sa.constant_step(fading)), river_stats.EWMean(fading)
    ours.update(x[:1000])
    for v in x.tolist()[1000:]:
        ours.update(v)
    for v in x.tolist():
        peer.update(v)
    assert ours.mean == pytest.approx(peer.get(), rel=1e-12)


def test_harmonic_step_recursion_is_the_mean(rng):
    x = rng.standard_normal(501)
    m = sa.IncrementalMean(sa.harmonic_step())
    m.update(x)
    assert m.mean == pytest.approx(exact_mean(x), rel=1e-12)


def test_constant_step_tracks_a_jump(rng):
    x = np.concatenate([rng.standard_normal(2000), 10 + rng.standard_normal(2000)])
    ewma, exact = sa.IncrementalMean(sa.constant_step(0.05)), sa.IncrementalMean()
    ewma.update(x)
    exact.update(x)
    assert abs(ewma.mean - 10) < 0.5 and abs(exact.mean - 5) < 0.2


def test_state_dict_resumes_exactly(rng):
    x = 7 + rng.standard_normal(3001)
    for step in (None, sa.constant_step(0.01)):
        full, first = sa.IncrementalMean(step), sa.IncrementalMean(step)
        full.update(x)
        first.update(x[:1234])
        resumed = sa.IncrementalMean(step)
        resumed.load_state_dict(first.state_dict())
        resumed.update(x[1234:])
        assert resumed.mean == full.mean and resumed.count == full.count


def test_nan_policy_skip_counts(rng):
    x = rng.standard_normal(10)
    m = sa.IncrementalMean(nan_policy="skip")
    m.update(np.concatenate([x[:5], [np.nan, np.inf]]))
    m.update(float("-inf"))
    m.update(x[5:])
    assert m.n_skipped == 3 and m.count == 10
    assert m.mean == pytest.approx(exact_mean(x))


def test_empty_estimator_mean_is_nan():
    assert math.isnan(sa.IncrementalMean().mean)


# -- bad input: one test per class ----------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), np.array([1.0, np.nan])])
def test_non_finite_rejected_by_default_and_state_unchanged(bad):
    m = sa.IncrementalMean()
    m.update(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="x must be finite"):
        m.update(bad)
    assert m.count == 2 and m.mean == 1.5


def test_empty_batch_rejected():
    with pytest.raises(ValueError, match="x must not be an empty batch"):
        sa.IncrementalMean().update(np.array([]))


def test_two_dimensional_batch_rejected():
    with pytest.raises(ValueError, match="x must be a scalar or a 1-D batch"):
        sa.IncrementalMean().update(np.ones((2, 3)))


def test_non_numeric_rejected():
    with pytest.raises(TypeError, match="x must hold real numbers"):
        sa.IncrementalMean().update(np.array(["a"]))
    with pytest.raises(TypeError, match="x must hold real numbers"):
        sa.IncrementalMean().update(1 + 2j)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="nan_policy"):
        sa.IncrementalMean(nan_policy="ignore")
    with pytest.raises(TypeError, match="step_size must be a StepSize"):
        sa.IncrementalMean(step_size=0.1)
    with pytest.raises(ValueError, match="buffer_size"):
        sa.IncrementalMean(buffer_size=0)
    with pytest.raises(ValueError, match="w0 must be finite"):
        sa.IncrementalMean(sa.constant_step(0.1), w0=float("nan"))


def test_merge_rejects_general_steps_and_other_types():
    with pytest.raises(ValueError, match="merge is only defined for step_size=None"):
        sa.IncrementalMean(sa.constant_step(0.1)).merge(sa.IncrementalMean())
    with pytest.raises(TypeError, match="other must be an IncrementalMean"):
        sa.IncrementalMean().merge(3.0)
