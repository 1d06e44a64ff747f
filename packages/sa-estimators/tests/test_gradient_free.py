import numpy as np
import pytest
import sa_estimators as sa

DIM = 10
CURVATURE = np.linspace(0.5, 2.0, DIM)  # Hessian diag
MINIMUM = np.linspace(-1.0, 1.0, DIM)


class NoisyQuadratic:
    """f(w) = 1/2 sum h_i (w_i - m_i)^2 + N(0, sigma^2), counting its calls."""

    def __init__(self, sigma: float, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.sigma = sigma
        self.calls = 0

    def __call__(self, w):
        self.calls += 1
        w = np.asarray(w)
        return 0.5 * np.sum(CURVATURE * (w - MINIMUM) ** 2) + self.sigma * self.rng.normal()


def test_kiefer_wolfowitz_minimises_a_10d_quadratic():
    f = NoisyQuadratic(0.1, seed=0)
    res = sa.kiefer_wolfowitz(f, np.zeros(DIM), 2000, a=1.0, c=0.5)
    assert np.max(np.abs(res.w - MINIMUM)) < 0.05
    assert f.calls == res.n_evals == 2 * DIM * 2000


def test_spsa_minimises_a_10d_quadratic_with_two_evaluations_per_step():
    f = NoisyQuadratic(0.1, seed=1)
    res = sa.spsa(f, np.zeros(DIM), 4000, a=0.5, c=0.2, seed=2, average=True)
    assert np.max(np.abs(res.w - MINIMUM)) < 0.1
    assert np.max(np.abs(res.w_avg - MINIMUM)) < 0.15
    assert f.calls == res.n_evals == 2 * 4000
    # the same seed gives the same run
    again = sa.spsa(NoisyQuadratic(0.1, seed=1), np.zeros(DIM), 4000, a=0.5, c=0.2, seed=2)
    np.testing.assert_array_equal(again.w, res.w)


def test_scalar_problems():
    rng = np.random.default_rng(4)
    f = lambda w: (w - 2.0) ** 2 + 0.05 * rng.normal()
    kw = sa.kiefer_wolfowitz(f, 0.0, 2000, a=0.5)
    sp = sa.spsa(f, 0.0, 3000, a=0.2, c=0.1, seed=0)
    assert isinstance(kw.w, float) and isinstance(sp.w, float)
    assert abs(kw.w - 2.0) < 0.05 and abs(sp.w - 2.0) < 0.05


def test_kiefer_wolfowitz_noise_free_is_gradient_descent():
    # on an exact quadratic central differences are the exact gradient, whatever c
    f = lambda w: 0.5 * np.sum(CURVATURE * (np.asarray(w) - MINIMUM) ** 2)
    res = sa.kiefer_wolfowitz(f, np.zeros(DIM), 5, a=sa.constant_step(0.3), c=0.7)
    w = np.zeros(DIM)
    for _ in range(5):
        w = w - 0.3 * CURVATURE * (w - MINIMUM)
    np.testing.assert_allclose(res.w, w, rtol=1e-12, atol=1e-14)


def test_spsa_gains_follow_spall():
    # f linear: the SPSA estimate is exact along Delta, so w moves by a_k * (b . Delta) Delta
    b = np.arange(1.0, 4.0)
    steps = []
    res = sa.spsa(lambda w: float(b @ w), np.zeros(3), 3, a=0.3, c=0.2, A=5, seed=7,
                  callback=lambda k, w: steps.append(w))  # fmt: skip
    rng = np.random.default_rng(7)
    w = np.zeros(3)
    for k in range(1, 4):
        delta = rng.integers(0, 2, size=3) * 2.0 - 1.0
        w = w - 0.3 / (k + 5) ** 0.602 * (b @ delta) * delta
        np.testing.assert_allclose(steps[k - 1], w, rtol=1e-12)
    np.testing.assert_allclose(res.w, w, rtol=1e-12)


# -- bad input ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a", "c"])
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_non_positive_gains(name, bad):
    f = lambda w: float(np.sum(np.square(w)))
    with pytest.raises(ValueError, match=name):
        sa.spsa(f, np.zeros(2), 10, **{name: bad})
    with pytest.raises(ValueError, match=name):
        sa.kiefer_wolfowitz(f, np.zeros(2), 10, **{name: bad})


def test_non_scalar_objective():
    with pytest.raises(TypeError, match=r"f\(w\) must return a real scalar"):
        sa.spsa(lambda w: np.ones(2), np.zeros(2), 10)
    with pytest.raises(TypeError, match=r"f\(w\) must return a real scalar"):
        sa.kiefer_wolfowitz(lambda w: "x", np.zeros(2), 10)


def test_non_finite_objective():
    with pytest.raises(ValueError, match=r"f\(w\) must be finite"):
        sa.spsa(lambda w: float("nan"), np.zeros(2), 10)


def test_bad_offset_and_exponents():
    f = lambda w: 0.0
    with pytest.raises(ValueError, match="A must be"):
        sa.spsa(f, np.zeros(2), 10, A=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        sa.spsa(f, np.zeros(2), 10, alpha=0.0)
    with pytest.raises(ValueError, match="n_iter"):
        sa.kiefer_wolfowitz(f, np.zeros(2), 0)


def test_kiefer_wolfowitz_accepts_step_objects_and_records_a_trajectory():
    f = NoisyQuadratic(0.05, seed=5)
    res = sa.kiefer_wolfowitz(
        f, np.zeros(DIM), 300, a=sa.harmonic_step(1.0), c=sa.polynomial_step(0.3, 0.25),
        average=True, trajectory=12,
    )  # fmt: skip
    assert res.trajectory.shape == (res.trajectory_k.size, DIM) and res.trajectory_k[-1] == 300
    np.testing.assert_array_equal(res.trajectory[-1], res.w)
    assert np.max(np.abs(res.w - MINIMUM)) < 0.2
