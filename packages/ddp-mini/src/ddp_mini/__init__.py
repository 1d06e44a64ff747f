"""Data-parallel training on torch.distributed: ring all-reduce, buckets, overlap, no_sync."""

from ddp_mini.ddp import DistributedDataParallel
from ddp_mini.launch import SpawnError, spawn
from ddp_mini.ring import ring_allreduce

__version__ = "0.1.0"

__all__ = ["DistributedDataParallel", "SpawnError", "ring_allreduce", "spawn"]
