"""Measure the machine's ceilings once per run, so that ``pct_of_limit`` is honest.

Two ceilings, measured rather than read off a spec sheet:

- memory bandwidth: the best of several large tensor copies (read + write bytes / s);
- matmul FLOP/s: the best of several large square matmuls in each dtype.

A benchmark case that moves ``bytes`` per call is compared with the bandwidth; one that
does ``flops`` per call with the matmul rate of its dtype. Results are cached per device
for the process, and stored in the pytest-benchmark JSON's ``machine_info``.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from typing import Any


def _best_seconds(fn, repeats: int, sync) -> float:
    fn()  # warm-up: allocation, kernel selection, page faults
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


@functools.cache
def ceilings(device: str = "cpu") -> dict[str, Any]:
    """Return ``{"mem_bw_Bps": float, "matmul_flops": {dtype: float}}`` for ``device``."""
    import torch

    on_cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    numel = (1 << 28) if on_cuda else (1 << 25)  # 1 GiB / 128 MiB of float32
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    seconds = _best_seconds(lambda: dst.copy_(src), 10 if on_cuda else 5, sync)
    mem_bw = 2 * src.numel() * src.element_size() / seconds

    dtypes = ["float32", "float16", "bfloat16"] if on_cuda else ["float32", "bfloat16"]
    n = 8192 if on_cuda else 1024
    flops = {}
    for name in dtypes:
        dtype = getattr(torch, name)
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        seconds = _best_seconds(lambda a=a, b=b: a @ b, 10 if on_cuda else 3, sync)
        flops[name] = 2 * n**3 / seconds
    return {"mem_bw_Bps": mem_bw, "matmul_flops": flops}


def describe(device: str) -> dict[str, Any]:
    """Machine metadata for the benchmark JSON: versions, device name and ceilings."""
    import torch

    info: dict[str, Any] = {
        "torch_version": torch.__version__,
        "device": device,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }
    if device.startswith("cuda"):
        info["device_name"] = torch.cuda.get_device_name(0)
    else:
        info["device_name"] = platform.processor() or platform.machine()
    try:
        import triton

        info["triton_version"] = triton.__version__
    except ImportError:
        info["triton_version"] = None
    info["ceilings"] = ceilings(device)
    return info
