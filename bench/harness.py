"""What every ``bench_<package>.py`` imports: the preset, the device and ``measure``.

A benchmark case times one implementation of one workload. Ours and the peer are two
parametrisations of the same test, with the same inputs, so they run back to back::

    import harness

    SIZES = harness.pick(cpu=[(64, 1000)], gpu=[(4096, 100_000)])


    @pytest.mark.parametrize("impl", ["foreach", "torch.optim.AdamW"])
    def test_adamw_step(benchmark, impl):
        step = make_step(impl)  # build inputs outside the timed function
        harness.measure(
            benchmark,
            step,
            package="adamw-ref",
            case="adamw_step",
            impl=impl,
            peer="" if impl == "torch.optim.AdamW" else "torch.optim.AdamW",
            dtype="float32",
            params={"numel": n},
            device=harness.device(),
            work=n,
            work_unit="param",
            bytes=16 * n,
        )

``peer`` names the impl this row is compared with (``""`` on the peer's own row);
``report.py`` pairs the rows of a case by it and computes ``speedup_vs_peer``.
``work`` per call becomes ``throughput = work / median_s`` in ``work_unit``/s;
``bytes`` (memory traffic per call) or ``flops`` (per call) become ``pct_of_limit``
against the machine ceilings that ``machine.py`` measures once per run.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

_PRESET = "cpu"
PRESETS = ("cpu", "gpu")


def set_preset(name: str) -> None:
    """Called by conftest.py from ``--preset``; bench modules read it at import time."""
    global _PRESET
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {name!r}")
    _PRESET = name


def preset() -> str:
    """The active preset: ``"cpu"`` (default, ~10 minutes on 2 cores) or ``"gpu"``."""
    return _PRESET


def pick(*, cpu: Any, gpu: Any) -> Any:
    """Return the value for the active preset (sizes, round counts, case lists)."""
    return cpu if _PRESET == "cpu" else gpu


def device() -> str:
    """``"cuda"`` under the gpu preset when CUDA is available, else ``"cpu"``."""
    if _PRESET == "gpu":
        try:
            import torch

            if torch.cuda.is_available():
                return "cuda"
        except ImportError:
            pass
    return "cpu"


def _cuda_event_times(fn: Callable[[], Any], rounds: int, warmup: int) -> list[float]:
    """Per-call seconds measured with CUDA events around each call (after warm-up)."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return times


def measure(
    benchmark: Any,
    fn: Callable[[], Any],
    *,
    package: str,
    case: str,
    impl: str,
    peer: str,
    dtype: str,
    params: dict[str, Any],
    device: str = "cpu",
    work: float | None = None,
    work_unit: str | None = None,
    bytes: float | None = None,  # noqa: A002 - the schema's own name
    flops: float | None = None,
    rounds: int | None = None,
    warmup: int = 2,
    paired_peer: Callable[[], Any] | None = None,
    paired_rounds: int = 20,
) -> Any:
    """Time ``fn()`` (no arguments; inputs prepared by the caller) and record metadata.

    On the CPU pytest-benchmark calibrates rounds itself (``rounds=None``) or runs
    exactly ``rounds`` rounds after ``warmup`` untimed calls. On CUDA each call is timed
    with CUDA events (the median of those is what the report uses) and pytest-benchmark
    additionally times a synchronised wrapper. Returns the last result of ``fn``.

    ``paired_peer``: the peer's call, when it can run in this process beside ours. Then,
    after the timed rounds, ``paired_rounds`` pairs of calls alternate ours and the
    peer's (who goes first alternates too) and ``paired_speedup`` = median peer time /
    median our time is recorded. Separate cases run minutes apart on a shared machine,
    so their ratio carries the load's drift; a paired ratio cancels most of it.
    """
    if work is not None and not work_unit:
        raise ValueError(f"work_unit is required when work is given (case {case!r})")
    info = benchmark.extra_info
    info.update(
        package=package,
        case=case,
        impl=impl,
        peer=peer,
        device=device,
        dtype=dtype,
        params=json.dumps(params, sort_keys=True, default=str),
        work=work,
        work_unit=work_unit,
        bytes=bytes,
        flops=flops,
    )
    if device == "cuda":
        import torch

        times = _cuda_event_times(fn, rounds or 50, max(warmup, 3))
        info["event_median_s"] = statistics.median(times)
        q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
        info["event_iqr_s"] = q[2] - q[0]
        info["event_rounds"] = len(times)

        def synced() -> Any:
            out = fn()
            torch.cuda.synchronize()
            return out

        result = benchmark.pedantic(synced, rounds=5, iterations=1, warmup_rounds=1)
    elif rounds is None:
        for _ in range(warmup):
            fn()
        result = benchmark(fn)
    else:
        result = benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=warmup)
    if paired_peer is not None and not getattr(benchmark, "disabled", False):
        info.update(_paired_times(fn, paired_peer, paired_rounds, device))
    return result


def _paired_times(fn, peer_fn, pairs: int, device: str) -> dict[str, float]:
    """Alternate ``fn`` and ``peer_fn`` ``pairs`` times; median times and their ratio."""
    sync = _synchronizer(device)
    ours, peer = [], []
    peer_fn()  # warm the peer up too
    sync()
    for i in range(pairs):
        order = [(fn, ours), (peer_fn, peer)]
        for call, times in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            call()
            sync()
            times.append(time.perf_counter() - start)
    ours_median, peer_median = statistics.median(ours), statistics.median(peer)
    return {
        "paired_rounds": pairs,
        "paired_median_s": ours_median,
        "paired_peer_median_s": peer_median,
        "paired_speedup": peer_median / ours_median,
    }


def _synchronizer(device: str) -> Callable[[], None]:
    if device == "cuda":
        import torch

        return torch.cuda.synchronize
    return lambda: None
