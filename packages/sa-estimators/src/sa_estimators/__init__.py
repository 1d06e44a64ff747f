"""Stochastic approximation: incremental mean, Robbins-Monro, SGD/MBGD/BGD, streaming quantiles."""

__version__ = "0.1.0"

__all__: list[str] = []
