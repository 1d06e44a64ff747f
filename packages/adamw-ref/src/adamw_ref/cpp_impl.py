"""The multi-tensor C++ kernel for the CPU (``impl="cpp"``), built on first use.

``csrc/adam_cpu.cpp`` is one loop over every element of a group: the tensors are laid
end to end as one index space that ``at::parallel_for`` splits between torch's intra-op
threads. A step of 100 tensors is therefore one call from Python and one parallel
region, where the compiled path makes ~7 dynamo calls (~200 us each on a small CPU) and
torch's fused CPU kernel opens one parallel region per tensor. The loop reads ``param,
grad, m, v`` once and writes ``param, m, v`` once: the 7 arrays of the bandwidth bound.

The source is compiled by ``torch.utils.cpp_extension.load`` (a C++ compiler and ninja:
``pip install 'adamw-ref[cpp]'``) into torch's extension cache, once per machine and
CPU capability (~25 s on 2 cores); later processes load the cached library. Vector
width follows ``torch.backends.cpu.get_cpu_capability()``, so a cache shared between
machines never runs AVX-512 code on a CPU without it. Contraction of other multiply-adds
is off: the roundings are those of torch's per-op kernels, so ``exp_avg`` and
``exp_avg_sq`` of AdamW equal ``torch.optim.AdamW(foreach=False)``'s bit for bit and the
parameters agree to float rounding (torch's CPU ``sqrt`` can go through MKL's vector
maths, which is not always correctly rounded; ``std::sqrt`` is). Tested.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

from .multi_tensor import reference_update_group, select_tensors

SOURCE = Path(__file__).parent / "csrc" / "adam_cpu.cpp"
# The kernel's dtypes, of parameters and of step counters; float16/bfloat16 parameters
# take the reference path (torch rounds every intermediate to their dtype, op by op).
KERNEL_DTYPES = (torch.float32, torch.float64)

_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma",
               "-mprefer-vector-width=512"],
    "AVX2": ["-mavx2", "-mfma"],
}  # fmt: skip
_build_lock = threading.Lock()


@functools.cache
def unavailable_reason() -> str | None:
    """Why the kernel cannot be built here (a message), or None when it can."""
    if importlib.util.find_spec("ninja") is None:
        return "impl='cpp' needs ninja to build its C++ kernel: pip install 'adamw-ref[cpp]'"
    if shutil.which("c++") is None and shutil.which("g++") is None:
        return "impl='cpp' needs a C++ compiler (c++ or g++ on PATH) to build its kernel"
    return None


@functools.cache
def kernel_available() -> bool:
    """True when the kernel is built or loaded here; ``impl="auto"`` asks this.

    A toolchain that is present but fails to build the kernel gives a warning (with the
    compiler's message) and False, so ``auto`` falls back to the reference path.
    """
    if unavailable_reason() is not None:
        return False
    try:
        _load()
    except Exception as error:  # a broken compiler must not break training
        warnings.warn(
            f"adamw_ref: building the C++ kernel failed, impl='auto' uses the reference "
            f"path on the CPU ({type(error).__name__}: {error})",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return True


@functools.cache
def _load() -> None:
    """Build (or load from torch's extension cache) the library; registers the op.

    Callers check :func:`unavailable_reason` first (for a clear message without ninja).
    """
    from torch.utils import cpp_extension

    capability = torch.backends.cpu.get_cpu_capability()
    isa = _ISA_FLAGS.get(capability, [])
    with _build_lock:
        cpp_extension.load(
            name=f"adamw_ref_cpu_{capability.lower()}",
            sources=[str(SOURCE)],
            extra_cflags=["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", *isa],
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=False,
        )


def cpp_update_group(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    amsgrad: bool,
    maximize: bool,
) -> None:
    """:func:`adam_update` for a whole group in one C++ call per dtype.

    All tensors must be contiguous CPU tensors (complex ones given as their real views).
    float32/float64 tensors with 0-d float step counters go to the kernel, one call per
    dtype; anything else (half precision, a step on another device) takes the reference.
    """
    hyper = {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps, "weight_decay": weight_decay}
    flags = {"decoupled": decoupled, "amsgrad": amsgrad, "maximize": maximize}
    by_dtype: dict[torch.dtype, list[int]] = {}
    rest: list[int] = []
    for i, p in enumerate(params):
        step = steps[i]
        if (
            p.device.type != "cpu"
            or p.dtype not in KERNEL_DTYPES
            or step.device.type != "cpu"
            or step.dim() != 0
            or step.dtype not in KERNEL_DTYPES
        ):
            rest.append(i)
        else:
            by_dtype.setdefault(p.dtype, []).append(i)
    lists = (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps)
    if rest:
        reference_update_group(*select_tensors(rest, *lists), **hyper, **flags)
    if not by_dtype:
        return
    _load()
    op = torch.ops.adamw_ref.adam_step_
    for index in by_dtype.values():
        # the common case, one dtype and nothing left out, passes the lists themselves
        chosen = lists if len(index) == len(params) else select_tensors(index, *lists)
        op(*chosen, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize)
