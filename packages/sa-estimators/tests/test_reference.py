import math

import pytest
import sa_estimators as sa
from sa_estimators.reference import (
    incremental_mean_reference,
    robbins_monro_reference,
    streaming_quantile_reference,
)


@pytest.mark.parametrize("q", [0.05, 0.5, 0.9])
@pytest.mark.parametrize("n", [1, 100, 257, 5003])
def test_quantile_one_sample_per_step_is_the_reference(rng, q, n):
    x = rng.gamma(2.0, size=n).tolist()
    est = sa.StreamingQuantile(q, buffer_size=1)
    for v in x:
        est.update(v)
    assert est.quantile == pytest.approx(streaming_quantile_reference(x, q), rel=1e-12)


def test_batched_quantile_is_close_to_the_reference(rng):
    x = rng.standard_normal(100_003)
    ref = streaming_quantile_reference(x.tolist(), 0.8)
    est = sa.StreamingQuantile(0.8)
    for i in range(0, x.size, 1000):
        est.update(x[i : i + 1000])
    assert abs(est.quantile - ref) < 0.01  # mini-batch vs per-sample steps: same limit


def test_textbook_mean_recursion_agrees_and_ours_is_exact(rng):
    x = 1e8 + rng.standard_normal(200_003)
    exact = math.fsum(x) / x.size
    est = sa.IncrementalMean()
    for v in x.tolist():
        est.update(v)
    assert incremental_mean_reference(x.tolist()) == pytest.approx(exact, rel=1e-12)
    assert est.mean == pytest.approx(exact, rel=2e-16)


def test_robbins_monro_matches_the_loop():
    g = lambda w: math.tanh(w - 1.0) + 0.3 * math.sin(7.0 * w)  # deterministic "noise"
    gain = sa.polynomial_step(0.9, 0.7)
    res = sa.robbins_monro(g, 0.25, 500, gain)
    assert res.w == pytest.approx(robbins_monro_reference(g, 0.25, 500, gain), rel=1e-14)
