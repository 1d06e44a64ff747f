"""Adam and AdamW (coupled L2 vs decoupled weight decay), reference and fast paths."""

__version__ = "0.1.0"

__all__: list[str] = []
