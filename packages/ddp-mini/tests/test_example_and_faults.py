"""The example under torchrun, a rank dying mid-training, and resuming from a checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import _scenarios as sc
import ddp_mini
import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SRC = Path(ddp_mini.__file__).resolve().parents[1]
sys.path.insert(0, str(EXAMPLES))  # spawned children inherit sys.path
import train_mlp  # noqa: E402

STEPS, EVERY = 14, 4  # 48 batches of 16 per rank and epoch: no epoch change needed...


def config(out: Path, **overrides) -> dict:
    cfg = train_mlp.parse(
        [
            "--out",
            str(out),
            "--steps",
            str(STEPS),
            "--batch",
            "96",
            "--checkpoint-every",
            str(EVERY),
            "--timeout",
            "20",
        ]
    )
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """The example run start to finish under torchrun (2 gloo processes, free port)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    for attempt in range(2):
        out = tmp_path_factory.mktemp("full")  # fresh: no checkpoint to resume from
        proc = subprocess.run(
            _torchrun_example(out), env=env, capture_output=True, text=True, timeout=180
        )
        if proc.returncode == 0 or attempt == 1 or not _aborted_after_training(proc):
            break
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"state": torch.load(out / "final.pt", weights_only=True), "log": proc.stdout}


def _torchrun_example(out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(EXAMPLES / "train_mlp.py"),
        "--out",
        str(out),
        "--steps",
        str(STEPS),
        "--batch",
        "96",
        "--checkpoint-every",
        str(EVERY),
        "--timeout",
        "20",
    ]


def _aborted_after_training(proc: subprocess.CompletedProcess) -> bool:
    """True when every step ran and a process then aborted in C++ on its way out.

    One CI run in about twenty saw rank 1 abort with "terminate called without an
    active exception" (std::terminate, no Python traceback) after all 14 steps, in the
    final barrier or the gloo teardown that follows, with torch 2.13. It did not
    reproduce in 50 local runs, 30 of them on a loaded machine. Such a run is retried
    once; any other failure fails at once.
    """
    finished = any(ln.startswith(f"step {STEPS}:") for ln in proc.stdout.splitlines())
    return finished and "terminate called without an active exception" in proc.stderr


def test_example_trains_under_torchrun(uninterrupted):
    line = [ln for ln in uninterrupted["log"].splitlines() if ln.startswith(f"step {STEPS}:")]
    assert line, uninterrupted["log"]
    first, last = (float(v) for v in line[0].split("loss ")[1].split(" -> "))
    assert last < first


def test_dead_rank_fails_the_others_then_resume_ends_where_uninterrupted_ends(
    uninterrupted, tmp_path
):
    crash_at = 2 * EVERY + 2  # after the checkpoint at step 8
    with pytest.raises(ddp_mini.SpawnError) as info:
        ddp_mini.spawn(
            train_mlp.spawned,
            2,
            "gloo",
            config(tmp_path, crash_rank=1, crash_at_step=crash_at),
            timeout=20,
            join_timeout=120,
        )
    failures = info.value.failures
    assert "exited with code 17" in failures[1]
    # the survivor raised by itself (a broken connection or the collective timeout),
    # it was not killed by spawn's join timeout
    assert "Traceback" in failures[0] and "killed" not in failures[0]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 2 * EVERY

    results = ddp_mini.spawn(
        train_mlp.spawned, 2, "gloo", config(tmp_path), timeout=20, join_timeout=120
    )
    assert [r["step"] for r in results] == [STEPS, STEPS]
    assert len(results[0]["losses"]) == STEPS - 2 * EVERY  # really resumed
    for rank_result in results:
        for name, want in uninterrupted["state"].items():
            assert torch.equal(rank_result["state"][name], want), name


def test_parameter_unused_on_one_rank_fails_with_its_name():
    with pytest.raises(ddp_mini.SpawnError) as info:
        ddp_mini.spawn(sc.unused_on_one_rank, 2, "gloo", timeout=20, join_timeout=120)
    assert "spare.weight" in info.value.failures[1]
    assert "find_unused_parameters=True" in info.value.failures[1]
    assert "killed" not in info.value.failures[0]  # rank 0 errors out too, no hang
