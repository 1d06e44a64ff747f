"""The end-to-end scenario's pieces, and (slow) its whole quick profile."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from e2e.corpus import is_validation, stdlib_files
from e2e.train import batch_at, lr_at

BENCH = Path(__file__).resolve().parent


def test_split_is_by_file_and_deterministic():
    files = stdlib_files()
    assert len(files) > 500  # the standard library's sources are on every machine
    names = [str(f) for f in files]
    val = [n for n in names if is_validation(n)]
    assert 0.02 < len(val) / len(names) < 0.10
    assert val == [n for n in names if is_validation(n)]


def test_batches_are_a_function_of_seed_step_and_rank():
    tokens = np.arange(10_000, dtype=np.uint16)
    x1, y1 = batch_at(tokens, step=5, rank=1, batch=3, seq_len=17, seed=0)
    x2, _ = batch_at(tokens, step=5, rank=1, batch=3, seq_len=17, seed=0)
    x3, _ = batch_at(tokens, step=5, rank=0, batch=3, seq_len=17, seed=0)
    assert x1.shape == (3, 17) and (x1 == x2).all() and not (x1 == x3).all()
    assert (y1[:, :-1] == x1[:, 1:]).all()  # labels are inputs shifted by one


def test_schedule_warms_up_then_decays():
    lrs = [lr_at(s, total=100, peak=1.0, warmup=10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[99] == pytest.approx(0.1, abs=0.01) and all(
        a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False)
    )


@pytest.mark.slow
def test_quick_profile_runs_end_to_end(tmp_path: Path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "e2e.run",
            "--quick",
            "--work",
            str(tmp_path / "work"),
            "--out",
            str(tmp_path / "out"),
            "--vocab-size",
            "512",
        ],
        cwd=BENCH,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    for name in [
        "e2e.md",
        "decoding.csv",
        "training_curve.png",
        "acceptance_by_depth.png",
        "tokens_per_s.png",
    ]:
        assert (tmp_path / "out" / name).is_file()


def _train(out: Path, cache: Path, *extra: str) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(port),
        "-m",
        "e2e.train",
        "--cache",
        str(cache),
        "--out",
        str(out),
        "--max-files",
        "40",
        "--vocab-size",
        "300",
        "--hidden-size",
        "64",
        "--layers",
        "1",
        "--seq-len",
        "32",
        "--batch",
        "2",
        "--max-steps",
        "12",
        "--eval-every",
        "6",
        "--val-batches",
        "2",
        "--minutes",
        "600",
        *extra,
    ]
    result = subprocess.run(cmd, cwd=BENCH, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.slow
def test_interrupted_training_resumes_exactly(tmp_path: Path):
    import torch

    cache = tmp_path / "corpus"
    _train(tmp_path / "straight", cache)
    _train(tmp_path / "resumed", cache, "--stop-after", "6")
    assert not (tmp_path / "resumed" / "train_summary.json").exists()  # it was interrupted
    _train(tmp_path / "resumed", cache)  # the same command again: resumes at step 6
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 12
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]


def test_tree_sweep_reports_every_tree_on_the_prompts():
    import medusa_heads
    import torch
    from e2e.decode import tree_sweep
    from e2e.model import ModelConfig, build_model

    model = build_model(
        ModelConfig(
            vocab_size=97,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    model.eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    heads = medusa_heads.MedusaHeads(32, 97, num_heads=2, lm_head=model.lm_head).eval()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 97, (1, n), generator=g) for n in (5, 9, 13)]
    trees = {1: [[0]], 3: [[0], [1], [0, 0]]}
    rows = tree_sweep(model, heads, prompts, 6, trees)
    assert [r["tree_nodes"] for r in rows] == [1, 3]
    for r in rows:
        assert 1.0 <= r["accepted_per_step"] <= 3.0  # at most depth + 1 tokens per step
        assert r["standard_error"] >= 0.0 and r["speedup_vs_generate"] > 0.0
