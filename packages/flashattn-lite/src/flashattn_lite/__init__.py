"""FlashAttention forward and backward in Triton, plus a tiled pure-PyTorch path."""

__version__ = "0.1.0"

__all__: list[str] = []
