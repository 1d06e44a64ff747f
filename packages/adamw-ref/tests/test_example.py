"""The paper's experiment in miniature: the example script runs and draws its figure."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "decoupling_grid.py"


@pytest.mark.slow
def test_decoupling_grid_example_draws_two_heatmaps(tmp_path):
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("decoupling_grid", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "grid.png"
    results = module.main(["--out", str(out), "--grid", "3", "--steps", "40"])
    assert out.stat().st_size > 10_000
    for kind in ("Adam", "AdamW"):
        err = results[kind]
        assert err.shape == (3, 3)
        assert 0.0 <= err.min() < 0.5  # something learnt, better than chance
