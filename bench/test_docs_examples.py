"""Execute every ```python block of the READMEs and the docs, so examples cannot rot.

Each block runs alone in a fresh interpreter, in an empty temporary directory, with all
packages installed (``nox -s integration``). A block that must not run is written as
``text``/``bash``/``console`` instead of ``python``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)


def documents() -> list[Path]:
    docs = [ROOT / "README.md", *sorted((ROOT / "packages").glob("*/README.md"))]
    docs += sorted((ROOT / "docs" / "content").rglob("*.md"))
    return [d for d in docs if d.is_file()]


def code_blocks() -> list[pytest.param]:
    blocks = []
    for doc in documents():
        text = doc.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            name = f"{doc.relative_to(ROOT)}:{line}"
            blocks.append(pytest.param(match.group(1), id=name))
    return blocks


def test_the_runner_finds_blocks():
    # A runner that found nothing would pass vacuously: the READMEs do have examples.
    assert len(code_blocks()) >= 8


@pytest.mark.parametrize("code", code_blocks())
def test_code_block_runs(code: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"block failed:\n{code}\n--- stderr ---\n{result.stderr[-4000:]}"
