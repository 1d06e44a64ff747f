"""Input validation shared by the estimators: every message names the argument."""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import numpy as np

NAN_POLICIES = ("raise", "skip")


def positive_float(value: Any, name: str) -> float:
    """A finite real number > 0, else TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def nonnegative_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_nan_policy(value: Any) -> str:
    if value not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {value!r}")
    return value


def as_float_array(value: Any, name: str) -> np.ndarray:
    """float64 view/copy of numbers; rejects strings, objects, complex and bools."""
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be array-like of real numbers: {exc}") from exc
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def finite_w0(w0: Any) -> np.ndarray:
    """The starting point of an iteration: a finite scalar or 1-D vector (float64 copy)."""
    w = as_float_array(w0, "w0").copy()
    if w.ndim > 1:
        raise ValueError(f"w0 must be a scalar or a 1-D vector, got shape {w.shape}")
    if w.size == 0:
        raise ValueError("w0 must not be empty, got shape (0,)")
    if not np.all(np.isfinite(w)):
        raise ValueError("w0 must be finite, got non-finite entries")
    return w
