"""Multi-token prediction heads (DeepSeek-V3 sequential and parallel) and self-speculative decoding."""

__version__ = "0.1.0"

__all__: list[str] = []
