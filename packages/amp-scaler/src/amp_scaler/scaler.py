"""``GradScaler`` (dynamic loss scaling, torch's contract) and ``StaticLossScaler``.

The dynamic rule, written out in ``reference.update_scale_reference``: back off by
``backoff_factor`` on every overflow (after ``hysteresis`` of them), grow by
``growth_factor`` after ``growth_interval`` clean iterations in a row. Here it is the
same rule as tensor operations, so ``update()`` never waits for the device.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from . import _checks
from ._base import LossScalerBase

STATE_DICT_VERSION = 1
_VERSION_KEY = "_amp_scaler_version"
_TORCH_KEYS = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")
_OUR_KEYS = ("hysteresis", "_hysteresis_tracker", "min_scale", "max_scale", "skipped_steps")


def _f32(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def _check_state_dict(state_dict: Any, required: tuple[str, ...]) -> bool:
    """Validate shape and version; return whether it was written by amp_scaler."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
    if len(state_dict) == 0:
        raise RuntimeError(
            "The source state dict is empty, possibly because it was saved "
            "from a disabled instance of GradScaler."
        )
    ours = _VERSION_KEY in state_dict
    if ours and state_dict[_VERSION_KEY] != STATE_DICT_VERSION:
        raise ValueError(
            f"state_dict has {_VERSION_KEY}={state_dict[_VERSION_KEY]!r}; this amp_scaler "
            f"reads version {STATE_DICT_VERSION} (and torch.amp.GradScaler's plain dicts)"
        )
    missing = [k for k in required if k not in state_dict]
    if missing:
        raise ValueError(
            f"state_dict is missing keys {missing}; expected at least {list(required)}"
        )
    return ours


class GradScaler(LossScalerBase):
    """Dynamic loss scaling with the methods and semantics of ``torch.amp.GradScaler``.

    Args:
        init_scale: the first scale (a float32 value; default 2**16).
        growth_factor: multiplier (> 1) after ``growth_interval`` clean iterations.
        backoff_factor: multiplier in (0, 1) on an iteration with inf/NaN gradients.
        growth_interval: clean iterations in a row before growing (int >= 1).
        enabled: False makes every method a pass-through (``step`` just steps).
        min_scale: floor for backoff (None: none, as in torch). Stops a NaN storm from
            driving the scale to 0.
        max_scale: cap for growth (None: only float32's range, as in torch).
        hysteresis: overflows tolerated before a backoff (Megatron-LM's; 1 = torch).
            The budget is refilled whenever the scale grows.
        allow_fp16_grads: unscale float16 gradients in place instead of raising (torch
            refuses them: fp16 gradients lose precision; prefer ``MasterWeights``).

    The device is the one of the first tensor passed to ``scale`` (torch's takes it as
    its first argument). With ``min_scale=None, max_scale=None, hysteresis=1`` the scale,
    the growth tracker, the skipped steps and hence the parameters are step-for-step
    identical to ``torch.amp.GradScaler``'s. ``step`` returns whether the optimizer
    stepped; ``last_step_skipped`` and ``skipped_steps`` count the skips.
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        enabled: bool = True,
        *,
        min_scale: float | None = None,
        max_scale: float | None = None,
        hysteresis: int = 1,
        allow_fp16_grads: bool = False,
    ) -> None:
        hint = ""
        if isinstance(init_scale, (str, torch.device)):
            hint = " (amp_scaler.GradScaler takes the device from the tensors: drop it)"
        init_scale = _checks.positive_finite("init_scale", init_scale, hint)
        self._growth_factor = _checks.growth_factor(growth_factor)
        self._backoff_factor = _checks.backoff_factor(backoff_factor)
        self._growth_interval = _checks.positive_int("growth_interval", growth_interval)
        self._min_scale = _checks.optional_bound("min_scale", min_scale)
        self._max_scale = _checks.optional_bound("max_scale", max_scale)
        if self._min_scale is not None and self._min_scale > init_scale:
            raise ValueError(f"min_scale must be <= init_scale, got {min_scale} > {init_scale}")
        if self._max_scale is not None and self._max_scale < init_scale:
            raise ValueError(f"max_scale must be >= init_scale, got {max_scale} < {init_scale}")
        self._hysteresis = _checks.positive_int("hysteresis", hysteresis)
        super().__init__(
            init_scale,
            _checks.flag("enabled", enabled),
            _checks.flag("allow_fp16_grads", allow_fp16_grads),
        )
        self._init_growth_tracker = 0
        self._init_hysteresis_tracker = self._hysteresis
        self._growth_tracker: torch.Tensor | None = None  # int32, created with the scale
        self._hysteresis_tracker: torch.Tensor | None = None

    def _lazy_init_(self, device: torch.device) -> None:
        super()._lazy_init_(device)
        self._growth_tracker = torch.full(
            (), self._init_growth_tracker, dtype=torch.int32, device=device
        )
        self._hysteresis_tracker = torch.full(
            (), self._init_hysteresis_tracker, dtype=torch.int32, device=device
        )

    def _update_scale_(self, found_inf: torch.Tensor) -> None:
        """``reference.update_scale_reference`` as sync-free tensor ops (see there)."""
        scale, tracker, hyst = self._scale, self._growth_tracker, self._hysteresis_tracker
        found = found_inf != 0  # () bool
        scale64 = scale.double()  # products in float64, rounded once to float32
        hyst_left = torch.where(found, (hyst - 1).clamp_min(0), hyst)  # () int32
        backoff = found & (hyst_left <= 0)
        backed_off = (scale64 * self._backoff_factor).float()
        if self._min_scale is not None:
            backed_off = torch.maximum(backed_off, _f32(self._min_scale).to(scale.device))
        successful = tracker + 1
        grow = ~found & (successful == self._growth_interval)
        grown = (scale64 * self._growth_factor).float()
        grow_ok = grow & torch.isfinite(grown)  # never grow into inf
        if self._max_scale is not None:
            grown = torch.minimum(grown, _f32(self._max_scale).to(scale.device))
        new_scale = torch.where(backoff, backed_off, torch.where(grow_ok, grown, scale))
        new_tracker = torch.where(found | grow, torch.zeros_like(tracker), successful)
        new_hyst = torch.where(grow, torch.full_like(hyst, self._hysteresis), hyst_left)
        scale.copy_(new_scale)
        tracker.copy_(new_tracker)
        hyst.copy_(new_hyst)

    # -- torch's getters and setters -------------------------------------------------
    def get_growth_factor(self) -> float:
        """The growth factor (a Python float)."""
        return self._growth_factor

    def set_growth_factor(self, new_factor: float) -> None:
        """Set the growth factor (must be > 1)."""
        self._growth_factor = _checks.growth_factor(new_factor)

    def get_backoff_factor(self) -> float:
        """The backoff factor (a Python float)."""
        return self._backoff_factor

    def set_backoff_factor(self, new_factor: float) -> None:
        """Set the backoff factor (must be in (0, 1))."""
        self._backoff_factor = _checks.backoff_factor(new_factor)

    def get_growth_interval(self) -> int:
        """The growth interval (a Python int)."""
        return self._growth_interval

    def set_growth_interval(self, new_interval: int) -> None:
        """Set the growth interval (an int >= 1)."""
        self._growth_interval = _checks.positive_int("growth_interval", new_interval)

    def get_growth_tracker(self) -> int:
        """Clean iterations in a row since the last growth or backoff (0 when disabled)."""
        if not self._enabled:
            return 0
        if self._growth_tracker is None:
            return self._init_growth_tracker
        return int(self._growth_tracker.item())

    _get_growth_tracker = get_growth_tracker  # torch's private spelling

    def get_hysteresis_tracker(self) -> int:
        """Overflows still tolerated before the next backoff."""
        if self._hysteresis_tracker is None:
            return self._init_hysteresis_tracker
        return int(self._hysteresis_tracker.item())

    @property
    def min_scale(self) -> float | None:
        return self._min_scale

    @property
    def max_scale(self) -> float | None:
        return self._max_scale

    @property
    def hysteresis(self) -> int:
        return self._hysteresis

    # -- checkpoints --------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch's five keys (``scale``, ``growth_factor``, ``backoff_factor``,
        ``growth_interval``, ``_growth_tracker``) plus this package's extensions and a
        version; ``torch.amp.GradScaler.load_state_dict`` accepts it (it reads its five).
        Empty when disabled, like torch. Call it after ``update()``.
        """
        if not self._enabled:
            return {}
        return {
            "scale": self.get_scale(),
            "growth_factor": self._growth_factor,
            "backoff_factor": self._backoff_factor,
            "growth_interval": self._growth_interval,
            "_growth_tracker": self.get_growth_tracker(),
            "hysteresis": self._hysteresis,
            "_hysteresis_tracker": self.get_hysteresis_tracker(),
            "min_scale": self._min_scale,
            "max_scale": self._max_scale,
            "skipped_steps": self.skipped_steps,
            _VERSION_KEY: STATE_DICT_VERSION,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a dict from ``state_dict()``, ours or ``torch.amp.GradScaler``'s.

        A torch dict leaves ``min_scale``/``max_scale``/``hysteresis`` as constructed.
        No-op when disabled. Missing keys, another version or bad values: an error,
        with nothing changed.
        """
        if not self._enabled:
            return
        ours = _check_state_dict(state_dict, _TORCH_KEYS)
        if ours:
            _check_state_dict(state_dict, _TORCH_KEYS + _OUR_KEYS)
        scale = _checks.positive_finite("state_dict['scale']", state_dict["scale"])
        growth = _checks.growth_factor(state_dict["growth_factor"])
        backoff = _checks.backoff_factor(state_dict["backoff_factor"])
        interval = _checks.positive_int("growth_interval", state_dict["growth_interval"])
        tracker = _checks.non_negative_int("_growth_tracker", state_dict["_growth_tracker"])
        if ours:
            hysteresis = _checks.positive_int("hysteresis", state_dict["hysteresis"])
            hyst_tracker = _checks.non_negative_int(
                "_hysteresis_tracker", state_dict["_hysteresis_tracker"]
            )
            min_scale = _checks.optional_bound("min_scale", state_dict["min_scale"])
            max_scale = _checks.optional_bound("max_scale", state_dict["max_scale"])
            skipped = _checks.non_negative_int("skipped_steps", state_dict["skipped_steps"])
        else:
            hysteresis, min_scale, max_scale = self._hysteresis, self._min_scale, self._max_scale
            hyst_tracker, skipped = hysteresis, self.skipped_steps
        self._init_scale = scale
        self._growth_factor, self._backoff_factor = growth, backoff
        self._growth_interval = interval
        self._init_growth_tracker = tracker
        self._hysteresis, self._min_scale, self._max_scale = hysteresis, min_scale, max_scale
        self._init_hysteresis_tracker = hyst_tracker
        self.skipped_steps = skipped
        if self._scale is not None:
            self._scale.fill_(scale)
            self._growth_tracker.fill_(tracker)
            self._hysteresis_tracker.fill_(hyst_tracker)

    def _pickle_trackers(self, state: dict[str, Any]) -> None:
        state["_init_growth_tracker"] = self.get_growth_tracker()
        state["_init_hysteresis_tracker"] = self.get_hysteresis_tracker()
        state["_growth_tracker"] = None
        state["_hysteresis_tracker"] = None


class StaticLossScaler(LossScalerBase):
    """A constant loss scale with ``GradScaler``'s interface.

    Gradients are still unscaled and checked: a step with inf/NaN gradients is skipped
    (and counted), but ``update()`` never changes the scale. ``update(new_scale)`` sets
    it by hand.

    Args:
        scale: the constant (positive, finite; stored as float32).
        enabled: False makes every method a pass-through.
        allow_fp16_grads: as for ``GradScaler``.
    """

    _name = "StaticLossScaler"

    def __init__(
        self, scale: float, enabled: bool = True, *, allow_fp16_grads: bool = False
    ) -> None:
        super().__init__(
            _checks.positive_finite("scale", scale),
            _checks.flag("enabled", enabled),
            _checks.flag("allow_fp16_grads", allow_fp16_grads),
        )

    def _update_scale_(self, found_inf: torch.Tensor) -> None:
        return None  # constant by definition

    def get_growth_factor(self) -> float:
        """1.0: a static scale never grows."""
        return 1.0

    def get_backoff_factor(self) -> float:
        """1.0: a static scale never backs off."""
        return 1.0

    def get_growth_tracker(self) -> int:
        """0: a static scale counts nothing."""
        return 0

    _get_growth_tracker = get_growth_tracker

    def state_dict(self) -> dict[str, Any]:
        """``scale`` and ``skipped_steps`` (empty when disabled)."""
        if not self._enabled:
            return {}
        return {
            "scale": self.get_scale(),
            "skipped_steps": self.skipped_steps,
            _VERSION_KEY: STATE_DICT_VERSION,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load ``scale`` (and ``skipped_steps`` when present). No-op when disabled."""
        if not self._enabled:
            return
        _check_state_dict(state_dict, ("scale",))
        scale = _checks.positive_finite("state_dict['scale']", state_dict["scale"])
        skipped = _checks.non_negative_int("skipped_steps", state_dict.get("skipped_steps", 0))
        self._init_scale, self.skipped_steps = scale, skipped
        if self._scale is not None:
            self._scale.fill_(scale)
