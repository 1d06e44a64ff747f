"""The report turns pytest-benchmark JSON into the results table, markdown and plots."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import report


def fake_benchmark(impl: str, peer: str, median: float, **extra) -> dict:
    info = {
        "package": "toy",
        "case": "step",
        "impl": impl,
        "peer": peer,
        "device": "cpu",
        "dtype": "float32",
        "params": json.dumps({"n": 7}),
        "work": 7.0,
        "work_unit": "elem",
        "bytes": 8e6,
        "flops": None,
        **extra,
    }
    stats = {"median": median, "iqr": median / 10, "rounds": 11}
    return {"name": f"test[{impl}]", "extra_info": info, "stats": stats}


@pytest.fixture
def bench_json(tmp_path: Path) -> Path:
    data = {
        "machine_info": {
            "torch_version": "2.13.0",
            "device": "cpu",
            "device_name": "x86",
            "ceilings": {"mem_bw_Bps": 1e10, "matmul_flops": {"float32": 1e11}},
        },
        "commit_info": {"id": "abcdef1234567890"},
        "datetime": "2026-12-01T10:00:00",
        "benchmarks": [
            fake_benchmark("torch", "", 0.004),
            fake_benchmark("ours", "torch", 0.002, peak_mem_bytes=3 * 2**20),
            fake_benchmark("ours-slow", "torch", 0.008),
            {"name": "unrelated", "extra_info": {}, "stats": {"median": 1, "iqr": 0, "rounds": 1}},
        ],
    }
    path = tmp_path / "benchmark.json"
    path.write_text(json.dumps(data))
    return path


def test_results_pair_each_impl_with_its_peer(bench_json: Path) -> None:
    frame = report.load_results(bench_json)
    assert set(report.COLUMNS) <= set(frame.columns)
    frame = frame.set_index("impl")
    assert frame.loc["ours", "speedup_vs_peer"] == pytest.approx(2.0)
    assert frame.loc["ours-slow", "speedup_vs_peer"] == pytest.approx(0.5)
    assert pd.isna(frame.loc["torch", "speedup_vs_peer"])  # the peer's own row
    assert frame.loc["ours", "throughput"] == pytest.approx(7.0 / 0.002)
    assert frame.loc["ours", "throughput_unit"] == "elem/s"
    # 8e6 bytes in 2 ms = 4e9 B/s of a 1e10 B/s ceiling
    assert frame.loc["ours", "pct_of_limit"] == pytest.approx(40.0)
    assert frame.loc["ours", "git_sha"] == "abcdef1234567890"


def test_report_files_are_written(bench_json: Path, tmp_path: Path) -> None:
    frame = report.load_results(bench_json)
    written = report.write_report(frame, tmp_path / "out")
    names = sorted(p.name for p in written)
    assert names == ["report.md", "results.csv", "toy.png"]
    csv = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(csv.columns) == report.COLUMNS and len(csv) == 3
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## toy" in md and "2.00x" in md and "0.50x" in md
    assert "ours peak MiB" in md and "3.0" in md  # memory shows where a case measured it


def test_readme_table_is_replaced_between_markers(bench_json: Path, tmp_path: Path) -> None:
    readme = tmp_path / "packages" / "toy" / "README.md"
    readme.parent.mkdir(parents=True)
    readme.write_text("# toy\n<!-- bench:start -->\nold\n<!-- bench:end -->\nafter\n")
    report.update_readmes(report.load_results(bench_json), root=tmp_path)
    text = readme.read_text()
    assert "old" not in text and "2.00x" in text and text.endswith("<!-- bench:end -->\nafter\n")
