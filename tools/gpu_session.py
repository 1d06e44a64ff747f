"""The one prepared script for a lent GPU: check every Triton kernel, then time the gpu preset.

A GPU is lent to some tasks only, for about 15 minutes of device time, starts
included, on a machine that has torch, triton, pytest, pytest-benchmark and pandas but
no package registry (so no nox and no installs). This script is what such a session
runs, in one call, from the repository root::

    PYTHONUNBUFFERED=1 python tools/gpu_session.py --out "$OUT" --budget-s 420

It runs stages in priority order, each a subprocess with its own time cap and never
beyond what is left of ``--budget-s``:

1. ``environment``: the card, the driver, torch and triton versions;
2. ``kernels``: the tests of every package with a Triton kernel (flashattn-lite's
   forward and backward, adamw-ref's step, amp-scaler's unscale), slow and gpu-marked
   ones included, so each kernel is compiled natively and checked against its reference;
3. ``bench <package>``: ``bench/bench_<module>.py --preset gpu`` per package,
   flashattn-lite first (its issue has the GPU speed goals);
4. ``report``: ``bench/report.py`` over the merged JSON.

A stage that runs out of time is killed (its process group) and the next one starts;
whatever finished is kept. ``--out`` receives at most six files, within the device
tool's limit of eight: ``summary.md`` (also printed last), ``kernels.log``,
``bench.log``, ``benchmark.json``, ``report.md`` and ``results.csv``.

On a machine without CUDA the same script runs the CPU preset, with the Triton kernels
through ``TRITON_INTERPRET=1``; ``--bench-k`` and ``--packages`` keep such a dry run short.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Packages with a Triton kernel: the tests that compile it and check it against its
# reference, as (paths under the package, pytest -k expression or None). Each package is
# its own pytest run: test file names repeat across packages.
KERNEL_TESTS = {
    "flashattn-lite": (["tests/test_triton_backend.py", "tests/test_bad_input.py"], None),
    "adamw-ref": (["tests"], "triton"),
    "amp-scaler": (["tests"], "triton"),
}
# Bench order: the package whose issue has open GPU goals first.
BENCH_ORDER = [
    "flashattn-lite",
    "adamw-ref",
    "amp-scaler",
    "sa-estimators",
    "ddp-mini",
    "detection-map",
    "medusa-heads",
    "mtp-heads",
]
# Seconds each stage may take at most (the remaining budget caps it further).
CAPS = {"environment": 30, "kernels": 90, "bench": 240, "report": 60}
# A stage is not started with less than this left: it could not finish anything useful.
MIN_START_S = 20


@dataclass
class StageResult:
    name: str
    status: str  # "passed", "failed (rc N)", "timeout after N s" or "skipped: why"
    seconds: float


class Budget:
    """Seconds left of the session's budget, from a monotonic clock."""

    def __init__(self, total_s: float, clock=time.monotonic) -> None:
        self._clock = clock
        self._deadline = clock() + total_s

    def left(self) -> float:
        return max(0.0, self._deadline - self._clock())

    def cap(self, stage_cap_s: float) -> float:
        """What a stage with cap ``stage_cap_s`` may use now."""
        return min(stage_cap_s, self.left())


def run_stage(
    name: str, argv: list[str], *, timeout_s: float, log, env: dict | None = None, cwd=ROOT
) -> StageResult:
    """Run ``argv`` with its output appended to ``log``; kill its process group on timeout."""
    if timeout_s < MIN_START_S:
        return StageResult(name, f"skipped: {timeout_s:.0f} s left", 0.0)
    shown = " ".join(argv).replace("\n", " ")  # one line: the log's stage headers
    shown = shown if len(shown) < 300 else shown[:300] + " ..."
    log.write(f"\n===== {name}: {shown} (cap {timeout_s:.0f} s)\n")
    log.flush()
    start = time.monotonic()
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so a timeout kills workers too
    )
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        seconds = time.monotonic() - start
        log.write(f"\n===== {name}: killed after {seconds:.0f} s\n")
        return StageResult(name, f"timeout after {seconds:.0f} s", seconds)
    seconds = time.monotonic() - start
    # pytest's 5 is "nothing collected": every test of the selection was deselected
    status = "passed" if rc == 0 else ("nothing collected" if rc == 5 else f"failed (rc {rc})")
    log.write(f"\n===== {name}: {status} in {seconds:.0f} s\n")
    log.flush()
    return StageResult(name, status, seconds)


def module_name(package: str) -> str:
    return package.replace("-", "_")


def sources_path() -> str:
    """PYTHONPATH that imports every package from its source tree (nothing is installed)."""
    return os.pathsep.join(
        str(p / "src") for p in sorted((ROOT / "packages").iterdir()) if (p / "src").is_dir()
    )


def merge_benchmark_json(paths: list[Path]) -> dict | None:
    """One pytest-benchmark JSON holding the benchmarks of all ``paths`` (None if none)."""
    merged = None
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a stage killed mid-write leaves no or a partial file
        if merged is None:
            merged = data
        else:
            merged["benchmarks"].extend(data.get("benchmarks", []))
    return merged


def attention_rates(data: dict | None) -> list[dict]:
    """flashattn-lite rows as TFLOP/s (flops per call over the CUDA-event median)."""
    rows = []
    for bench in (data or {}).get("benchmarks", []):
        info = bench.get("extra_info", {})
        if info.get("package") != "flashattn-lite" or not info.get("flops"):
            continue
        seconds = info.get("event_median_s") or bench["stats"]["median"]
        params = json.loads(info["params"])
        rows.append(
            {
                "case": info["case"],
                "impl": info["impl"],
                "shape": " ".join(f"{key}={value}" for key, value in sorted(params.items())),
                "ms": 1e3 * seconds,
                "tflops": info["flops"] / seconds / 1e12,
            }
        )
    return rows


def summary_markdown(results: list[StageResult], environment: str, rates: list[dict]) -> str:
    shown = [line for line in environment.splitlines() if line and not line.startswith("=====")]
    lines = ["# GPU session", "", "```", *shown, "```", ""]
    lines += ["| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {r.name} | {r.status} | {r.seconds:.0f} |" for r in results]
    if rates:
        lines += ["", "| case | shape | impl | ms | TFLOP/s |", "|---|---|---|---|---|"]
        for r in sorted(rates, key=lambda r: (r["case"], r["shape"], r["impl"])):
            lines.append(
                f"| {r['case']} | {r['shape']} | {r['impl']} | {r['ms']:.3f} | {r['tflops']:.3g} |"
            )
    return "\n".join(lines) + "\n"


ENVIRONMENT_SNIPPET = """
import platform, subprocess
import torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    print("triton missing")
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
    smi = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
           "--format=csv,noheader"]
    print(subprocess.run(smi, capture_output=True, text=True).stdout.strip())
else:
    print("no CUDA: CPU preset, Triton through TRITON_INTERPRET=1")
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the result files")
    parser.add_argument("--budget-s", type=float, default=420.0, help="all stages together")
    parser.add_argument(
        "--packages",
        default=",".join(BENCH_ORDER),
        help="comma-separated packages to bench, in this order",
    )
    parser.add_argument("--skip-kernels", action="store_true", help="do not run the kernel tests")
    parser.add_argument("--bench-k", default=None, help="pytest -k expression for the bench")
    args = parser.parse_args(argv)

    packages = [p for p in args.packages.split(",") if p]
    unknown = sorted(set(packages) - set(BENCH_ORDER))
    if unknown:
        parser.error(f"--packages: unknown {unknown}; known: {BENCH_ORDER}")
    args.out.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.budget_s)
    env = {"PYTHONPATH": sources_path(), "PYTHONUNBUFFERED": "1"}
    results: list[StageResult] = []
    work = Path(tempfile.mkdtemp(prefix="gpu_session_"))

    env_log = work / "environment.log"
    with env_log.open("w") as log:
        results.append(
            run_stage(
                "environment",
                [sys.executable, "-c", ENVIRONMENT_SNIPPET],
                timeout_s=budget.cap(CAPS["environment"]),
                log=log,
            )
        )
    on_cuda = "device " in env_log.read_text()
    preset = "gpu" if on_cuda else "cpu"

    with (args.out / "kernels.log").open("w") as log:
        for package, (paths, keyword) in KERNEL_TESTS.items():
            name = f"kernels {package}"
            if args.skip_kernels:
                results.append(StageResult(name, "skipped: --skip-kernels", 0.0))
                continue
            argv = [sys.executable, "-m", "pytest", *paths, "-q", "-p", "no:cacheprovider"]
            if keyword:
                argv += ["-k", keyword]
            if on_cuda:  # every marker (slow, gpu): on CUDA these take seconds, not minutes
                argv += ["-m", "slow or not slow"]
            results.append(
                run_stage(
                    name,
                    argv,
                    timeout_s=budget.cap(CAPS["kernels"]),
                    log=log,
                    env=env,
                    cwd=ROOT / "packages" / package,
                )
            )

    jsons = []
    with (args.out / "bench.log").open("w") as log:
        for package in packages:
            result_json = work / f"bench_{module_name(package)}.json"
            argv = [
                sys.executable,
                "-m",
                "pytest",
                f"bench_{module_name(package)}.py",
                f"--preset={preset}",
                "--benchmark-only",
                f"--benchmark-json={result_json}",
                "-p",
                "no:cacheprovider",
                "-q",
            ]
            if args.bench_k:
                argv += ["-k", args.bench_k]
            results.append(
                run_stage(
                    f"bench {package}",
                    argv,
                    timeout_s=budget.cap(CAPS["bench"]),
                    log=log,
                    env=env,
                    cwd=ROOT / "bench",
                )
            )
            jsons.append(result_json)

    merged = merge_benchmark_json(jsons)
    if merged is not None:
        merged_path = args.out / "benchmark.json"
        merged_path.write_text(json.dumps(merged, indent=1))
        report_dir = work / "report"
        with (args.out / "bench.log").open("a") as log:
            results.append(
                run_stage(
                    "report",
                    [sys.executable, "report.py", str(merged_path), "--out", str(report_dir)],
                    timeout_s=budget.cap(CAPS["report"]),
                    log=log,
                    env=env,
                    cwd=ROOT / "bench",
                )
            )
        for name in ("report.md", "results.csv"):
            if (report_dir / name).is_file():
                shutil.copy(report_dir / name, args.out / name)

    summary = summary_markdown(results, env_log.read_text(), attention_rates(merged))
    (args.out / "summary.md").write_text(summary)
    shutil.rmtree(work, ignore_errors=True)
    print(summary)
    return 0 if all(r.status == "passed" for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
