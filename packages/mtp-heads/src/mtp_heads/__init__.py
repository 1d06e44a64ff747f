"""Multi-token prediction heads (DeepSeek-V3 sequential, parallel) and self-speculative decoding."""

__version__ = "0.1.0"

from .decoding import MTPOutput, speculative_generate
from .parallel import ParallelMTPHeads
from .sequential import MTPModule
from .training import TrainStats, load_heads, random_windows, save_heads, train_mtp

__all__ = [
    "MTPModule",
    "MTPOutput",
    "ParallelMTPHeads",
    "TrainStats",
    "__version__",
    "load_heads",
    "random_windows",
    "save_heads",
    "speculative_generate",
    "train_mtp",
]
