"""Step-size (gain) sequences a_k, k = 1, 2, ..., and the Robbins-Monro conditions.

Robbins and Monro (1951) need the gains to satisfy

    sum_k a_k = inf      (the iterate can travel any distance to the root)
    sum_k a_k^2 < inf    (the injected noise has finite total variance, so it dies out)

For a_k = a / (k + offset)^power the first holds iff power <= 1 and the second iff
power > 1/2, so exactly the powers in (1/2, 1] are admissible. A constant gain keeps
sum a_k^2 infinite: the iterate never settles and fluctuates at a noise floor of order a.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._checks import nonnegative_float, positive_float


@dataclass(frozen=True)
class StepSize:
    """The gain sequence a_k = a / (k + offset) ** power, evaluated at k >= 1.

    Build it with :func:`harmonic_step`, :func:`polynomial_step` or :func:`constant_step`.
    Calling it with an int returns a float; with an integer array, a float64 array.
    """

    a: float
    power: float
    offset: float = 0.0

    def __call__(self, k: Any) -> Any:
        if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
            if k < 1:
                raise ValueError(f"k must be >= 1 (the first step is k=1), got {k}")
            if self.power == 0.0:
                return self.a
            return self.a / (k + self.offset) ** self.power
        ks = np.asarray(k)
        if ks.dtype.kind not in "iu":
            raise TypeError(f"k must be an int or an integer array, got {ks.dtype}")
        if ks.size and ks.min() < 1:
            raise ValueError(f"k must be >= 1 (the first step is k=1), got min {ks.min()}")
        if self.power == 0.0:
            return np.full(ks.shape, self.a)
        return self.a / (ks + self.offset) ** self.power

    @property
    def sum_diverges(self) -> bool:
        """sum_k a_k = inf (true iff power <= 1)."""
        return self.power <= 1.0

    @property
    def square_summable(self) -> bool:
        """sum_k a_k^2 < inf (true iff power > 1/2)."""
        return self.power > 0.5

    @property
    def satisfies_robbins_monro(self) -> bool:
        """Both Robbins-Monro conditions hold: power in (1/2, 1]."""
        return self.sum_diverges and self.square_summable

    def __repr__(self) -> str:
        if self.power == 0.0:
            return f"constant_step(a={self.a!r})"
        off = f", offset={self.offset!r}" if self.offset else ""
        if self.power == 1.0:
            return f"harmonic_step(a={self.a!r}{off})"
        return f"polynomial_step(a={self.a!r}, power={self.power!r}{off})"


def harmonic_step(a: float = 1.0, offset: float = 0.0) -> StepSize:
    """a_k = a / (k + offset): the classical Robbins-Monro gain (satisfies both conditions).

    With a = 1 and no offset it turns the update w <- w - a_k (w - x_k) into the running
    sample mean. For the optimal k^(-1/2) rate of the last iterate, a must exceed
    1 / (2 g'(w*)); a = 1 / g'(w*) attains the Cramer-Rao-like variance sigma^2 / (g'^2 k).
    """
    return StepSize(positive_float(a, "a"), 1.0, nonnegative_float(offset, "offset"))


def polynomial_step(a: float = 1.0, power: float = 0.6, offset: float = 0.0) -> StepSize:
    """a_k = a / (k + offset) ** power; Robbins-Monro iff 1/2 < power <= 1.

    Powers in (1/2, 1) are the "slow" steps of Polyak-Ruppert averaging: the last
    iterate converges more slowly than k^(-1/2), but its running average is optimal.
    Spall's SPSA gain a / (k + A) ** 0.602 is ``polynomial_step(a, 0.602, offset=A)``.
    Powers outside (1/2, 1] are allowed (to show what goes wrong), and reported as such.
    """
    power = positive_float(power, "power")
    if not math.isfinite(power):  # pragma: no cover - positive_float rejects inf
        raise ValueError(f"power must be finite, got {power}")
    return StepSize(positive_float(a, "a"), power, nonnegative_float(offset, "offset"))


def constant_step(a: float) -> StepSize:
    """a_k = a for every k: sum a_k^2 = inf, so NOT Robbins-Monro.

    The iterate tracks a drifting target (an exponentially weighted average when used in
    :class:`~sa_estimators.IncrementalMean`) but plateaus at a noise floor around the root
    (about a sigma^2 / (2 g') in mean square for small a).
    """
    return StepSize(positive_float(a, "a"), 0.0, 0.0)


def resolve_step(step_size: Any, name: str = "step_size") -> StepSize:
    if not isinstance(step_size, StepSize):
        raise TypeError(
            f"{name} must be a StepSize (harmonic_step(), polynomial_step(), constant_step()),"
            f" got {type(step_size).__name__}"
        )
    return step_size
