"""Stochastic approximation: incremental mean, Robbins-Monro, SGD/MBGD/BGD, streaming quantiles.

numpy only. Every estimator here is the recursion w_k = w_{k-1} - a_k Y_k with
E[Y_k | w_{k-1}] = g(w_{k-1}) for some g whose root is the quantity sought.
"""

from .gradient_free import kiefer_wolfowitz, spsa
from .mean import IncrementalMean
from .mean_estimation import mean_estimation
from .quantile import StreamingQuantile
from .robbins_monro import RobbinsMonro, SAResult, robbins_monro
from .steps import StepSize, constant_step, harmonic_step, polynomial_step
from .torch_batched import BatchedIncrementalMean, BatchedStreamingQuantile  # torch: lazy
from .window_quantile import WindowedQuantile

__version__ = "0.1.0"

__all__ = [
    "BatchedIncrementalMean",
    "BatchedStreamingQuantile",
    "IncrementalMean",
    "RobbinsMonro",
    "SAResult",
    "StepSize",
    "StreamingQuantile",
    "WindowedQuantile",
    "constant_step",
    "harmonic_step",
    "kiefer_wolfowitz",
    "mean_estimation",
    "polynomial_step",
    "robbins_monro",
    "spsa",
]
