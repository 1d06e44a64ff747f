"""Data-parallel training on torch.distributed: ring all-reduce, buckets, overlap, no_sync."""

__version__ = "0.1.0"

__all__: list[str] = []
