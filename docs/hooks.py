"""mkdocs hook: fill benchmark placeholders from bench/reports/latest/results.csv.

A page writes ``<!-- bench:table -->`` for every package's table, or
``<!-- bench:table package=adamw-ref -->`` for one. Without a results file the
placeholder becomes a note saying how to produce one, so the build never depends on a
benchmark having run.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "reports" / "latest" / "results.csv"
PLACEHOLDER = re.compile(r"<!-- bench:table(?: package=([\w-]+))? -->")


def _tables(package: str | None) -> str:
    if not RESULTS.exists():
        return (
            "!!! note\n    No benchmark results on this machine yet: run `nox -s bench`, "
            "then rebuild the docs to see the tables here."
        )
    sys.path.insert(0, str(ROOT / "bench"))
    import pandas as pd

    import report

    frame = pd.read_csv(RESULTS, keep_default_na=False, na_values=[""])
    frame["peer"] = frame["peer"].fillna("")
    frame["device_name"] = frame.get("device_name", frame["device"])
    packages = [package] if package else sorted(frame["package"].unique())
    parts = [report.provenance(frame), ""]
    for name in packages:
        if package is None:
            parts += [f"### {name}", ""]
        parts += [report.package_table(frame, name), ""]
    return "\n".join(parts)


def on_page_markdown(markdown: str, **kwargs) -> str:
    return PLACEHOLDER.sub(lambda m: _tables(m.group(1)), markdown)
