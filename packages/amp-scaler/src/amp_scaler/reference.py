"""The readable definitions: unscale + non-finite check, and the dynamic-scale rule.

These are the slow, obvious versions that the fast paths (``unscale.py``,
``triton_unscale.py``, ``scaler.py``) are tested against. They follow the semantics of
``torch._amp_foreach_non_finite_check_and_unscale_`` and ``torch._amp_update_scale_``
(the kernels behind ``torch.amp.GradScaler``), re-derived here in plain Python/torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def unscale_and_check_reference_(
    tensors: list[torch.Tensor], inv_scale: torch.Tensor, found_inf: torch.Tensor
) -> torch.Tensor:
    """Multiply every tensor by ``inv_scale`` in place; set ``found_inf`` to 1.0 if any
    element was inf/NaN *before* the multiplication.

    The product is formed in float32 (the "opmath" type of fp16/bf16/fp32) and rounded
    back to the tensor's dtype; float64 tensors are multiplied in float64.
    ``found_inf`` is only ever raised, never cleared (callers share it across calls).
    """
    with torch.no_grad():
        for t in tensors:
            if not bool(torch.isfinite(t).all()):
                found_inf.fill_(1.0)
            opmath = torch.float64 if t.dtype == torch.float64 else torch.float32
            t.copy_(t.to(opmath) * inv_scale.to(device=t.device, dtype=opmath))
    return found_inf


def as_float32(x: float) -> float:
    """Round a Python float to the nearest float32, as storing it in a float32 tensor does."""
    return float(torch.tensor(x, dtype=torch.float32))


@dataclass
class ScaleState:
    """The three numbers a dynamic loss scaler carries between iterations."""

    scale: float  # always a float32 value (the scale lives in a float32 tensor)
    growth_tracker: int  # consecutive clean iterations since the last growth/backoff
    hysteresis_tracker: int  # overflows still tolerated before the next backoff


def update_scale_reference(
    state: ScaleState,
    found_inf: bool,
    *,
    growth_factor: float,
    backoff_factor: float,
    growth_interval: int,
    hysteresis: int = 1,
    min_scale: float | None = None,
    max_scale: float | None = None,
) -> ScaleState:
    """One ``update()`` of the dynamic scale, in plain Python.

    - Overflow: the clean-step counter restarts and one unit of hysteresis is used up;
      once none is left the scale is multiplied by ``backoff_factor`` (and floored at
      ``min_scale``). With ``hysteresis=1`` every overflow backs off, as in torch.
    - Clean step: the counter grows; when it reaches ``growth_interval`` exactly, the
      scale is multiplied by ``growth_factor`` (unless that overflows float32; capped
      at ``max_scale``), the counter restarts and the hysteresis budget is refilled
      (Megatron-LM's DynamicGradScaler refills it on growth too).

    Products are formed in float64 and rounded to float32, exactly what torch's
    ``_amp_update_scale_`` does with its float32 scale and double factors.
    """
    scale, tracker, hyst = state.scale, state.growth_tracker, state.hysteresis_tracker
    if found_inf:
        tracker = 0
        hyst = max(hyst - 1, 0)
        if hyst == 0:
            scale = as_float32(scale * backoff_factor)
            if min_scale is not None:
                scale = max(scale, as_float32(min_scale))
    else:
        successful = tracker + 1
        if successful == growth_interval:
            grown = as_float32(scale * growth_factor)
            if math.isfinite(grown):
                if max_scale is not None:
                    grown = min(grown, as_float32(max_scale))
                scale = grown
            tracker = 0
            hyst = hysteresis
        else:
            tracker = successful
    return ScaleState(scale, tracker, hyst)
