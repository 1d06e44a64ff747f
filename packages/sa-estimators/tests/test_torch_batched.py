import math

import numpy as np
import pytest
import sa_estimators as sa

torch = pytest.importorskip("torch")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [1, 7])
@pytest.mark.parametrize("q", [0.1, 0.9])
def test_columns_follow_the_numpy_estimator(rng, device, d, q):
    x = rng.standard_normal((10_007, d)) * np.arange(1, d + 1) + 100.0 * np.arange(d)
    batched = sa.BatchedStreamingQuantile(q, d)
    single = [sa.StreamingQuantile(q) for _ in range(d)]
    for i in range(0, len(x), 997):
        chunk = x[i : i + 997]
        batched.update(torch.from_numpy(chunk).to(device))
        for j in range(d):
            single[j].update(np.ascontiguousarray(chunk[:, j]))
    got = batched.quantile.cpu().numpy()
    np.testing.assert_allclose(got, [s.quantile for s in single], rtol=1e-12, atol=1e-12)
    exact = np.quantile(x, q, axis=0)
    # only ten mini-batch steps after the warm-up: looser than the 1e5-sample 0.01
    assert np.all(np.abs(got - exact) / x.std(axis=0) < 0.03)
    assert batched.count == len(x)


def test_float32_state_is_accurate(rng):
    x = torch.from_numpy(rng.standard_normal((50_000, 3)) * 3 + 1).float()
    est = sa.BatchedStreamingQuantile(0.75, 3, dtype=torch.float32)
    for chunk in x.split(1000):
        est.update(chunk)
    exact = torch.quantile(x.double(), 0.75, dim=0)
    assert est.quantile.dtype == torch.float32
    assert torch.all((est.quantile.double() - exact).abs() / 3 < 0.01)


def test_warm_up_is_exact(rng):
    x = torch.from_numpy(rng.standard_normal((17, 4)))
    est = sa.BatchedStreamingQuantile(0.3, 4)
    est.update(x[:10]).update(x[10:])
    torch.testing.assert_close(est.quantile, torch.quantile(x, 0.3, dim=0))
    assert torch.isnan(sa.BatchedStreamingQuantile(0.3, 2).quantile).all()


def test_reused_caller_buffer_does_not_corrupt_the_warm_up(rng):
    x = torch.from_numpy(rng.standard_normal((20, 3)))
    buf = torch.empty(10, 3, dtype=torch.float64)
    est = sa.BatchedStreamingQuantile(0.5, 3)
    for chunk in x.split(10):
        buf.copy_(chunk)
        est.update(buf)
    buf.fill_(1e9)
    torch.testing.assert_close(est.quantile, torch.quantile(x, 0.5, dim=0))


@pytest.mark.parametrize("device", DEVICES)
def test_batched_mean_is_exact(rng, device):
    x = 1e8 + rng.standard_normal((30_011, 5))
    est = sa.BatchedIncrementalMean(5, device=device)
    est.update(torch.from_numpy(x[0]).to(device))  # a single (d,) row first
    for i in range(1, len(x), 1009):
        est.update(torch.from_numpy(x[i : i + 1009]).to(device))
    exact = np.array([math.fsum(x[:, j]) / len(x) for j in range(5)])
    np.testing.assert_allclose(est.mean.cpu().numpy(), exact, rtol=1e-15)
    assert est.count == len(x)


# -- bad input ------------------------------------------------------------------------
def test_wrong_number_of_streams():
    with pytest.raises(ValueError, match=r"x must have shape \(n, 3\)"):
        sa.BatchedStreamingQuantile(0.5, 3).update(torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"x must have shape \(n, 3\)"):
        sa.BatchedIncrementalMean(3).update(torch.zeros(2, 3, 1))


def test_non_finite_rejected():
    x = torch.zeros(5, 2)
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="x must be finite"):
        sa.BatchedStreamingQuantile(0.5, 2).update(x)
    with pytest.raises(ValueError, match="x must be finite"):
        sa.BatchedIncrementalMean(2).update(x)


def test_empty_batch_rejected():
    with pytest.raises(ValueError, match="x must not be an empty batch"):
        sa.BatchedStreamingQuantile(0.5, 2).update(torch.zeros(0, 2))


def test_non_tensor_or_integer_input():
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        sa.BatchedStreamingQuantile(0.5, 2).update(np.zeros((3, 2)))
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        sa.BatchedIncrementalMean(2).update(torch.zeros(3, 2, dtype=torch.int64))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"q": 1.0}, ValueError, "q must lie strictly inside"),
        ({"q": "a"}, TypeError, "q must be a float"),
        ({"num_streams": 0}, ValueError, "num_streams must be >= 1"),
        ({"num_streams": 2.0}, TypeError, "num_streams must be an int"),
        ({"bandwidth": -1.0}, ValueError, "bandwidth"),
        ({"init_size": 0}, ValueError, "init_size"),
        ({"dtype": torch.float16}, TypeError, "dtype must be"),
    ],
)
def test_bad_constructor_arguments(kwargs, exc, match):
    args = {"q": 0.5, "num_streams": 2, **kwargs}
    with pytest.raises(exc, match=match):
        sa.BatchedStreamingQuantile(args.pop("q"), args.pop("num_streams"), **args)
