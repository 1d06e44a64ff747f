"""Input checks shared by the public functions (messages name the argument)."""

from __future__ import annotations

import torch.distributed as dist


def require_group(group: dist.ProcessGroup | None, name: str) -> dist.ProcessGroup:
    """Return ``group`` or the default group; fail clearly when none is initialised."""
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of torch")
    if group is None:
        if not dist.is_initialized():
            raise ValueError(
                f"{name} is None and the default process group is not initialized: call "
                "torch.distributed.init_process_group() first (torchrun sets the "
                "environment it reads), or start the processes with ddp_mini.spawn()"
            )
        return dist.group.WORLD
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(
            f"{name} must be a torch.distributed.ProcessGroup or None, got {type(group).__name__}"
        )
    return group
