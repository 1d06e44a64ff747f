import numpy as np
import pytest
import sa_estimators as sa


def test_values_match_their_formulas():
    ks = np.array([1, 2, 7, 1000])
    np.testing.assert_allclose(sa.harmonic_step(2.0)(ks), 2.0 / ks)
    np.testing.assert_allclose(sa.polynomial_step(0.5, 0.6)(ks), 0.5 / ks**0.6)
    np.testing.assert_allclose(
        sa.polynomial_step(0.5, 0.602, offset=10)(ks), 0.5 / (ks + 10) ** 0.602
    )
    np.testing.assert_allclose(sa.constant_step(0.1)(ks), np.full(4, 0.1))
    assert sa.harmonic_step(3.0)(3) == pytest.approx(1.0)
    assert isinstance(sa.polynomial_step()(5), float)


@pytest.mark.parametrize(
    "step, diverges, summable",
    [
        (sa.harmonic_step(), True, True),
        (sa.polynomial_step(1.0, 0.6), True, True),
        (sa.polynomial_step(1.0, 0.5), True, False),  # sum 1/k = inf: not square summable
        (sa.polynomial_step(1.0, 1.5), False, True),
        (sa.constant_step(0.1), True, False),
    ],
)
def test_robbins_monro_conditions(step, diverges, summable):
    assert step.sum_diverges is diverges
    assert step.square_summable is summable
    assert step.satisfies_robbins_monro is (diverges and summable)


def test_conditions_agree_with_partial_sums():
    # tail sums from 1e3 to 1e6: divergent series keep growing (> 1), convergent ones don't
    small, big = np.arange(1, 10**3 + 1), np.arange(1, 10**6 + 1)
    steps = [
        sa.harmonic_step(),
        sa.polynomial_step(1, 0.75),
        sa.polynomial_step(1, 0.5),
        sa.polynomial_step(1, 1.5),
        sa.constant_step(0.05),
    ]
    for step in steps:
        growth = step(big).sum() - step(small).sum()
        sq_growth = (step(big) ** 2).sum() - (step(small) ** 2).sum()
        assert bool(growth > 1.0) is step.sum_diverges, step
        assert bool(sq_growth > 1.0) is (not step.square_summable), step


@pytest.mark.parametrize(
    "make, arg",
    [
        (lambda v: sa.harmonic_step(v), "a"),
        (lambda v: sa.polynomial_step(v), "a"),
        (lambda v: sa.polynomial_step(1.0, v), "power"),
        (lambda v: sa.polynomial_step(1.0, 0.6, offset=v - 1), "offset"),
        (lambda v: sa.constant_step(v), "a"),
    ],
)
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_non_positive_or_non_finite_parameters_are_rejected(make, arg, bad):
    if arg == "offset" and bad == 0.0:
        bad = -0.5  # offset 0 - 1 = -1 < 0; (0.0 - 1) is covered by bad = 0
    with pytest.raises(ValueError, match=arg):
        make(bad)


def test_non_numeric_parameter_is_a_type_error():
    with pytest.raises(TypeError, match="a must be a real number"):
        sa.harmonic_step("1")


def test_k_must_start_at_one():
    with pytest.raises(ValueError, match="k must be >= 1"):
        sa.harmonic_step()(0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        sa.harmonic_step()(np.array([0, 1]))
    with pytest.raises(TypeError, match="k must be an int"):
        sa.harmonic_step()(np.array([1.5]))
