"""Adam and AdamW (coupled L2 vs decoupled weight decay), reference and fast paths.

``Adam`` / ``AdamW`` are ``torch.optim.Optimizer`` subclasses matching
``torch.optim.Adam/AdamW`` step for step, with ``impl`` one of ``"auto"``,
``"reference"``, ``"foreach"``, ``"compiled"``, ``"cpp"``, ``"triton"``;
``adamw_ref.functional.adam_update`` is the single-tensor reference;
``param_groups(model, weight_decay)`` builds the usual decay / no-decay groups.
"""

from . import functional
from .functional import SparseGradientError, adam_update
from .groups import param_groups
from .optim import IMPLS, Adam, AdamW

__version__ = "0.1.0"

__all__ = [
    "IMPLS",
    "Adam",
    "AdamW",
    "SparseGradientError",
    "adam_update",
    "functional",
    "param_groups",
]
