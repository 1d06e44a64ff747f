"""Mixed-precision training: dynamic loss scaling and fp32 master weights.

- ``GradScaler``: ``torch.amp.GradScaler``'s contract (step-for-step identical with the
  defaults) plus ``min_scale``, ``max_scale``, ``hysteresis`` and step() -> bool.
- ``StaticLossScaler``: a constant scale with the same interface.
- ``unscale_and_check_``: the fused unscale + inf/NaN check (foreach, Triton).
- ``MasterWeights``: fp32 master copies of fp16/bf16 parameters for any optimizer.
"""

from .master_weights import MasterWeights
from .reference import ScaleState, update_scale_reference
from .scaler import GradScaler, StaticLossScaler
from .unscale import unscale_and_check_

__version__ = "0.1.0"

__all__ = [
    "GradScaler",
    "MasterWeights",
    "ScaleState",
    "StaticLossScaler",
    "unscale_and_check_",
    "update_scale_reference",
]
