"""Argument validation shared by the scalers: fail early, name the argument."""

from __future__ import annotations

import math
from typing import Any


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_finite(name: str, value: Any, hint: str = "") -> float:
    if not _is_number(value):
        raise TypeError(
            f"{name} must be a positive finite number, got {type(value).__name__} {value!r}{hint}"
        )
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def growth_factor(value: Any) -> float:
    value = positive_finite("growth_factor", value)
    if value <= 1.0:
        raise ValueError(f"growth_factor must be > 1.0, got {value!r}")
    return value


def backoff_factor(value: Any) -> float:
    value = positive_finite("backoff_factor", value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"backoff_factor must be in (0, 1), got {value!r}")
    return value


def positive_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int >= 1, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def non_negative_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int >= 0, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


def optional_bound(name: str, value: Any) -> float | None:
    return None if value is None else positive_finite(name, value)


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value
