"""Tests of tools/gpu_session.py's plumbing: budgets, stage time-outs, merging, rates.

The GPU itself is not needed: stages are ordinary subprocesses here.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpu_session  # noqa: E402


def test_budget_caps_each_stage_by_what_is_left():
    now = [0.0]
    budget = gpu_session.Budget(100.0, clock=lambda: now[0])
    assert budget.cap(30) == 30
    now[0] = 85.0
    assert budget.cap(30) == pytest.approx(15.0)
    now[0] = 200.0
    assert budget.left() == 0.0 and budget.cap(30) == 0.0


@pytest.mark.parametrize(
    ("code", "status"), [(0, "passed"), (3, "failed (rc 3)"), (5, "nothing collected")]
)
def test_run_stage_reports_the_exit_status(code, status, monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_session, "MIN_START_S", 0)
    argv = [sys.executable, "-c", f"print('hello'); raise SystemExit({code})"]
    with (tmp_path / "log").open("w") as log:
        result = gpu_session.run_stage("demo", argv, timeout_s=30, log=log)
    assert result.status == status
    assert "hello" in (tmp_path / "log").read_text()


def test_run_stage_kills_the_whole_process_group_on_timeout(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_session, "MIN_START_S", 0)
    marker = tmp_path / "grandchild_survived"
    # the child starts a grandchild that would write the marker after 3 s, then sleeps
    grandchild = f"import time; time.sleep(3); open({str(marker)!r}, 'w')"
    script = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {grandchild!r}])\n"
        "time.sleep(60)\n"
    )
    start = time.monotonic()
    with (tmp_path / "log").open("w") as log:
        result = gpu_session.run_stage("slow", [sys.executable, "-c", script], timeout_s=1, log=log)
    assert result.status.startswith("timeout after")
    assert time.monotonic() - start < 10
    time.sleep(3.5)
    assert not marker.exists()


def test_run_stage_is_skipped_when_too_little_time_is_left():
    result = gpu_session.run_stage("late", [sys.executable, "-c", "pass"], timeout_s=5, log=None)
    assert result.status.startswith("skipped") and result.seconds == 0.0


def _bench_json(rows):
    return {"machine_info": {"node": "x"}, "benchmarks": rows}


def _row(package, case, impl, flops, median, params):
    return {
        "stats": {"median": 2 * median},
        "extra_info": {
            "package": package,
            "case": case,
            "impl": impl,
            "flops": flops,
            "event_median_s": median,
            "params": json.dumps(params),
        },
    }


def test_merge_keeps_every_complete_file_and_skips_broken_ones(tmp_path):
    a, b, broken = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "broken.json"
    a.write_text(json.dumps(_bench_json([{"name": "a1"}, {"name": "a2"}])))
    b.write_text(json.dumps(_bench_json([{"name": "b1"}])))
    broken.write_text('{"benchmarks": [')  # a stage killed mid-write
    merged = gpu_session.merge_benchmark_json([a, broken, tmp_path / "missing.json", b])
    assert [r["name"] for r in merged["benchmarks"]] == ["a1", "a2", "b1"]
    assert merged["machine_info"] == {"node": "x"}
    assert gpu_session.merge_benchmark_json([broken]) is None


def test_attention_rates_use_the_event_median():
    params = {"batch": 1, "nheads": 16, "seqlen": 16384, "head_dim": 128, "causal": True}
    data = _bench_json(
        [
            _row("flashattn-lite", "attn_fwd", "flashattn_lite.triton", 4.5e12, 0.01, params),
            _row("adamw-ref", "adamw_step", "triton", None, 0.01, {}),
        ]
    )
    (rate,) = gpu_session.attention_rates(data)
    assert rate["tflops"] == pytest.approx(450.0)
    assert rate["ms"] == pytest.approx(10.0)
    assert "causal=True" in rate["shape"] and "seqlen=16384" in rate["shape"]
    table = gpu_session.summary_markdown(
        [gpu_session.StageResult("bench flashattn-lite", "passed", 12.0)], "device H200\n", [rate]
    )
    assert "| bench flashattn-lite | passed | 12 |" in table and "| 450 |" in table


def test_unknown_package_is_rejected(tmp_path):
    with pytest.raises(SystemExit):
        gpu_session.main(["--out", str(tmp_path), "--packages", "flashattn-lite,nope"])
