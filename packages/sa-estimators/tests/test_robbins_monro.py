import numpy as np
import pytest
import sa_estimators as sa


def noisy_tanh(seed, sigma=1.0):
    rng = np.random.default_rng(seed)
    return lambda w: np.tanh(w - 1.0) + sigma * rng.standard_normal(np.shape(w))


def test_root_of_tanh_under_unit_noise():
    n = 20_000
    res = sa.robbins_monro(noisy_tanh(0), 0.0, n, average=True)
    assert isinstance(res.w, float) and isinstance(res.w_avg, float)
    # asymptotic s.d. with a_k = 1/k and g' = 1 is sigma / sqrt(k)
    assert abs(res.w - 1.0) < 4 / np.sqrt(n)
    assert abs(res.w_avg - 1.0) < 0.1  # the average of 1/k iterates carries the transient
    assert res.n_iter == res.n_evals == n


def test_vector_root_of_a_linear_system(rng):
    a = np.array([[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 0.5]])  # positive definite
    root = np.array([1.0, -2.0, 0.5])
    noise = np.random.default_rng(3)
    g = lambda w: a @ (w - root) + 0.5 * noise.standard_normal(3)
    res = sa.robbins_monro(g, np.zeros(3), 20_000, sa.harmonic_step(2.0), average=True)
    assert res.w.shape == (3,)
    np.testing.assert_allclose(res.w, root, atol=0.05)
    np.testing.assert_allclose(res.w_avg, root, atol=0.1)


def test_class_and_function_give_identical_iterates():
    step = sa.polynomial_step(0.8, 0.7)
    res = sa.robbins_monro(noisy_tanh(5), np.zeros(4), 300, step, average=True)
    g = noisy_tanh(5)
    rm = sa.RobbinsMonro(np.zeros(4), step, average=True)
    for _ in range(300):
        rm.step(g(rm.w))
    np.testing.assert_array_equal(rm.w, res.w)
    np.testing.assert_array_equal(rm.w_avg, res.w_avg)
    assert rm.k == 300


def test_step_is_w_minus_gain_times_observation():
    rm = sa.RobbinsMonro(2.0, sa.harmonic_step(0.5), average=True)
    assert rm.step(1.0) == pytest.approx(2.0 - 0.5 * 1.0)
    assert rm.step(-4.0) == pytest.approx(1.5 + 0.25 * 4.0)
    assert rm.w_avg == pytest.approx((1.5 + 2.5) / 2)
    assert sa.RobbinsMonro(0.0).w_avg is None


def test_trajectory_is_log_spaced_and_bounded():
    res = sa.robbins_monro(noisy_tanh(1), np.zeros(2), 10_000, trajectory=25, average=True)
    assert res.trajectory.shape[0] == res.trajectory_k.size <= 25
    assert res.trajectory.shape[1:] == (2,)
    assert res.trajectory_k[0] == 1 and res.trajectory_k[-1] == 10_000
    assert np.all(np.diff(res.trajectory_k) > 0)
    np.testing.assert_array_equal(res.trajectory[-1], res.w)
    np.testing.assert_array_equal(res.trajectory_avg[-1], res.w_avg)
    assert sa.robbins_monro(noisy_tanh(1), 0.0, 10).trajectory is None


def test_callback_sees_every_iterate_and_can_stop():
    seen = []

    def stop_at_7(k, w):
        seen.append((k, w))
        return k == 7

    res = sa.robbins_monro(noisy_tanh(2), 0.0, 100, callback=stop_at_7)
    assert res.n_iter == 7 and [k for k, _ in seen] == list(range(1, 8))
    assert seen[-1][1] == res.w


def test_state_dict_resumes_exactly():
    g = noisy_tanh(9)
    full = sa.RobbinsMonro(np.zeros(3), sa.polynomial_step(1, 0.6), average=True)
    obs = [g(np.zeros(3)) for _ in range(50)]
    for y in obs:
        full.step(y)
    half = sa.RobbinsMonro(np.zeros(3), sa.polynomial_step(1, 0.6), average=True)
    for y in obs[:20]:
        half.step(y)
    resumed = sa.RobbinsMonro(np.zeros(3), sa.polynomial_step(1, 0.6), average=True)
    resumed.load_state_dict(half.state_dict())
    for y in obs[20:]:
        resumed.step(y)
    np.testing.assert_array_equal(resumed.w, full.w)
    np.testing.assert_array_equal(resumed.w_avg, full.w_avg)


# -- bad input: one test per class ----------------------------------------------------
def test_mismatched_shape_of_g():
    with pytest.raises(ValueError, match=r"g\(w\) at iteration 1: observation must have the shape"):
        sa.robbins_monro(lambda w: np.ones(3), np.zeros(2), 10)
    with pytest.raises(ValueError, match="observation must have the shape"):
        sa.RobbinsMonro(0.0).step([1.0, 2.0])


def test_non_finite_observation():
    with pytest.raises(
        ValueError, match=r"g\(w\) at iteration 4: observation must be finite, got nan"
    ):
        sa.robbins_monro(lambda w: np.nan if w < -1.5 else 1.0, 0.0, 10)


def test_bad_w0():
    with pytest.raises(ValueError, match="w0 must be a scalar or a 1-D vector"):
        sa.robbins_monro(lambda w: w, np.zeros((2, 2)), 10)
    with pytest.raises(ValueError, match="w0 must be finite"):
        sa.robbins_monro(lambda w: w, [0.0, np.inf], 10)
    with pytest.raises(ValueError, match="w0 must not be empty"):
        sa.RobbinsMonro([])
    with pytest.raises(TypeError, match="w0 must hold real numbers"):
        sa.RobbinsMonro("a")


def test_bad_run_arguments():
    with pytest.raises(ValueError, match="n_iter must be >= 1"):
        sa.robbins_monro(lambda w: w, 0.0, 0)
    with pytest.raises(TypeError, match="n_iter must be an int"):
        sa.robbins_monro(lambda w: w, 0.0, 10.0)
    with pytest.raises(TypeError, match="g must be callable"):
        sa.robbins_monro(3.0, 0.0, 10)
    with pytest.raises(TypeError, match="step_size must be a StepSize"):
        sa.robbins_monro(lambda w: w, 0.0, 10, step_size=0.1)
    with pytest.raises(ValueError, match="trajectory must be >= 0"):
        sa.robbins_monro(lambda w: w, 0.0, 10, trajectory=-1)
    with pytest.raises(TypeError, match="callback must be callable"):
        sa.robbins_monro(lambda w: w, 0.0, 10, callback=1)


def test_load_state_dict_shape_mismatch():
    with pytest.raises(ValueError, match=r"state\['w'\] must have shape"):
        sa.RobbinsMonro(np.zeros(2)).load_state_dict({"k": 1, "w": np.zeros(3), "w_avg": None})
