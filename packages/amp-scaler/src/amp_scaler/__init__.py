"""Mixed-precision training: dynamic loss scaling and fp32 master weights."""

__version__ = "0.1.0"

__all__: list[str] = []
