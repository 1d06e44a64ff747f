import numpy as np
import pytest
import sa_estimators as sa


@pytest.fixture
def samples(rng):
    return rng.uniform(-10, 10, size=(203, 2)) + np.array([5.0, -3.0])


def test_sgd_with_harmonic_step_is_the_running_mean_of_its_draws(samples):
    traj = sa.mean_estimation(samples, "sgd", n_iter=57, seed=11)
    draws = np.random.default_rng(11).integers(0, len(samples), size=(57, 1))[:, 0]
    running = np.cumsum(samples[draws], axis=0) / np.arange(1, 58)[:, None]
    assert traj.shape == (58, 2)
    np.testing.assert_array_equal(traj[0], np.zeros(2))
    np.testing.assert_allclose(traj[1:], running, rtol=1e-12, atol=1e-12)


def test_mbgd_is_the_running_mean_of_its_batches(samples):
    traj = sa.mean_estimation(samples, "mbgd", batch_size=7, n_iter=31, seed=3)
    draws = np.random.default_rng(3).integers(0, len(samples), size=(31, 7))
    running = np.cumsum(samples[draws].mean(axis=1), axis=0) / np.arange(1, 32)[:, None]
    np.testing.assert_allclose(traj[1:], running, rtol=1e-12, atol=1e-12)


def test_bgd_reaches_the_sample_mean_in_one_step(samples):
    traj = sa.mean_estimation(samples, "bgd", n_iter=5, w0=[100.0, 100.0])
    np.testing.assert_array_equal(traj[0], [100.0, 100.0])
    np.testing.assert_allclose(traj[1:], np.broadcast_to(samples.mean(0), (5, 2)), rtol=1e-14)


def test_scalar_samples_and_constant_step(rng):
    x = rng.standard_normal(50) + 2
    traj = sa.mean_estimation(x, "bgd", n_iter=40, step_size=sa.constant_step(0.2))
    assert traj.shape == (41,)
    # w_k - mean = (1 - 0.2)^k (w_0 - mean)
    np.testing.assert_allclose(traj - x.mean(), 0.8 ** np.arange(41) * (0 - x.mean()), atol=1e-12)


@pytest.mark.parametrize("kwargs, match, exc", [
    ({"method": "adam"}, "method must be one of", ValueError),
    ({"method": "mbgd"}, "batch_size is required", ValueError),
    ({"method": "sgd", "batch_size": 4}, "batch_size must be None or 1", ValueError),
    ({"method": "bgd", "batch_size": 4}, "batch_size must be None or n=", ValueError),
    ({"method": "mbgd", "batch_size": 0}, "batch_size must be >= 1", ValueError),
    ({"n_iter": 0}, "n_iter must be >= 1", ValueError),
    ({"w0": [1.0, 2.0, 3.0]}, "w0 must have shape", ValueError),
    ({"step_size": 0.1}, "step_size must be a StepSize", TypeError),
])  # fmt: skip
def test_bad_arguments(samples, kwargs, match, exc):
    with pytest.raises(exc, match=match):
        sa.mean_estimation(samples, **kwargs)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((0, 2)), "samples must have shape"),
    (np.zeros((2, 2, 2)), "samples must have shape"),
    (np.array([1.0, np.nan]), "samples must be finite"),
])  # fmt: skip
def test_bad_samples(bad, match):
    with pytest.raises(ValueError, match=match):
        sa.mean_estimation(bad)
