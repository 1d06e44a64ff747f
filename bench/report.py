"""Turn a pytest-benchmark JSON file into the benchmark report.

    python bench/report.py bench/reports/latest/benchmark.json [--out DIR] [--update-readmes]

writes into ``DIR`` (default: the JSON's folder):

- ``results.csv``: one row per (package, case, params, impl) with the columns of
  CONVENTIONS.md; ``speedup_vs_peer`` is the peer's median over ours, paired within
  the same case, device, dtype and params; empty on the peer's own row.
- ``report.md``: a table per package (case, ours, peer, speedup, % of limit).
- ``<package>.png``: per package, the speedup of every impl over its peer.

With ``--update-readmes`` the package's table also replaces the text between
``<!-- bench:start -->`` and ``<!-- bench:end -->`` in ``packages/<package>/README.md``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [
    "package",
    "case",
    "impl",
    "peer",
    "device",
    "dtype",
    "params",
    "median_s",
    "iqr_s",
    "rounds",
    "throughput",
    "throughput_unit",
    "speedup_vs_peer",
    "paired_speedup",
    "pct_of_limit",
    "peak_mem_bytes",
    "torch_version",
    "git_sha",
    "timestamp",
]
PAIR_KEY = ["package", "case", "device", "dtype", "params"]
README_MARKERS = re.compile(r"(<!-- bench:start -->\n).*?(<!-- bench:end -->)", re.DOTALL)


def _pct_of_limit(info: dict, median_s: float, ceilings: dict) -> float | None:
    """Achieved FLOP/s (or bytes/s) as a percentage of the measured machine ceiling."""
    if not ceilings or not median_s:
        return None
    if info.get("flops"):
        rates = ceilings.get("matmul_flops", {})
        peak = rates.get(info.get("dtype")) or rates.get("float32")
        return 100.0 * info["flops"] / median_s / peak if peak else None
    if info.get("bytes"):
        return 100.0 * info["bytes"] / median_s / ceilings["mem_bw_Bps"]
    return None


def load_results(json_path: Path) -> pd.DataFrame:
    """Read a pytest-benchmark JSON file into the results table (one row per case)."""
    data = json.loads(Path(json_path).read_text())
    machine = data.get("machine_info", {})
    ceilings = machine.get("ceilings", {})
    git_sha = (data.get("commit_info") or {}).get("id")
    rows = []
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if "package" not in info:
            continue  # a benchmark that did not go through harness.measure
        stats = bench["stats"]
        if "event_median_s" in info:  # CUDA: the per-call event timings are the truth
            median, iqr, rounds = info["event_median_s"], info["event_iqr_s"], info["event_rounds"]
        else:
            median, iqr, rounds = stats["median"], stats["iqr"], stats["rounds"]
        work = info.get("work")
        rows.append(
            {
                "package": info["package"],
                "case": info["case"],
                "impl": info["impl"],
                "peer": info.get("peer") or "",
                "device": info.get("device", machine.get("device", "cpu")),
                "dtype": info.get("dtype", ""),
                "params": info.get("params", "{}"),
                "median_s": median,
                "iqr_s": iqr,
                "rounds": rounds,
                "throughput": work / median if work and median else None,
                "throughput_unit": f"{info['work_unit']}/s" if work else "",
                "speedup_vs_peer": None,
                "paired_speedup": info.get("paired_speedup"),
                "pct_of_limit": _pct_of_limit(info, median, ceilings),
                "peak_mem_bytes": info.get("peak_mem_bytes"),
                "torch_version": machine.get("torch_version"),
                "git_sha": git_sha,
                "timestamp": data.get("datetime"),
                "device_name": machine.get("device_name"),
            }
        )
    frame = pd.DataFrame(rows, columns=[*COLUMNS, "device_name"])
    return add_speedups(frame)


def add_speedups(frame: pd.DataFrame) -> pd.DataFrame:
    """Fill ``speedup_vs_peer`` = peer median / our median within each case."""
    frame = frame.copy()
    frame["speedup_vs_peer"] = frame["speedup_vs_peer"].astype("float64")
    for _, group in frame.groupby(PAIR_KEY, sort=False):
        medians = dict(zip(group["impl"], group["median_s"], strict=True))
        for index, row in group.iterrows():
            if row["peer"] and row["peer"] in medians:
                frame.loc[index, "speedup_vs_peer"] = medians[row["peer"]] / row["median_s"]
    return frame


def markdown_table(table: pd.DataFrame, **tabulate_options) -> str:
    """``table`` as GitHub markdown (tabulate when installed, else plain pipes)."""
    try:
        return table.to_markdown(index=False, **tabulate_options)
    except ImportError:  # tabulate is missing (e.g. on a bare GPU box): plain pipes
        header = "| " + " | ".join(table.columns) + " |"
        rule = "|" + "|".join("---" for _ in table.columns) + "|"
        body = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.to_numpy()]
        return "\n".join([header, rule, *body])


def package_table(frame: pd.DataFrame, package: str) -> str:
    """The markdown table of one package: one row per (case, params, impl) vs its peer."""
    rows = frame[frame["package"] == package]
    medians = rows.set_index([*PAIR_KEY, "impl"])["median_s"]
    memory = rows.set_index([*PAIR_KEY, "impl"])["peak_mem_bytes"]
    has_memory = bool(rows["peak_mem_bytes"].notna().any())
    has_paired = bool(rows["paired_speedup"].notna().any())
    out = []
    for _, row in rows.iterrows():
        if not row["peer"]:
            continue
        peer_key = (*[row[k] for k in PAIR_KEY], row["peer"])
        peer_median = medians.get(peer_key)
        out.append(
            {
                "case": row["case"],
                "params": row["params"],
                "dtype": row["dtype"],
                "ours": row["impl"],
                "ours ms": f"{1e3 * row['median_s']:.3f}",
                "peer": row["peer"],
                "peer ms": "" if peer_median is None else f"{1e3 * peer_median:.3f}",
                "speedup": ""
                if pd.isna(row["speedup_vs_peer"])
                else f"{row['speedup_vs_peer']:.2f}x",
                "% of limit": "" if pd.isna(row["pct_of_limit"]) else f"{row['pct_of_limit']:.1f}",
            }
        )
        if has_paired:  # ours and the peer alternated in one process: the robust ratio
            paired = row["paired_speedup"]
            out[-1]["speedup (alternated)"] = "" if pd.isna(paired) else f"{paired:.2f}x"
        if has_memory:  # cases that measure peak memory show it beside the times
            out[-1]["ours peak MiB"] = _mib(row["peak_mem_bytes"])
            out[-1]["peer peak MiB"] = _mib(memory.get(peer_key))
    if not out:
        return "_no paired cases_"
    return markdown_table(pd.DataFrame(out))


def _mib(value) -> str:
    return "" if value is None or pd.isna(value) else f"{value / 2**20:.1f}"


def provenance(frame: pd.DataFrame) -> str:
    """One line saying where and when the numbers were measured."""
    if frame.empty:
        return ""
    first = frame.iloc[0]
    sha = (first["git_sha"] or "")[:10]
    return (
        f"Measured on {first['device_name']} ({first['device']}), torch {first['torch_version']},"
        f" {str(first['timestamp'])[:10]}, commit {sha}. Times are medians; speedup ="
        " peer median / our median; % of limit = achieved bytes/s (or FLOP/s) over this"
        " machine's measured large-copy bandwidth (or matmul rate): above 100 means the"
        " working set stayed in cache."
    )


def e2e_section(e2e_md: Path) -> str:
    """The e2e report as a section of report.md beside its folder (image paths rebased)."""
    return e2e_md.read_text().replace("](", "](e2e/").replace("# End to end", "## End to end")


def write_report(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write results.csv, report.md and one PNG per package into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "results.csv", out_dir / "report.md"]
    frame[COLUMNS].to_csv(written[0], index=False)
    sections = ["# Benchmark report", "", provenance(frame), ""]
    for package in sorted(frame["package"].unique()):
        sections += [f"## {package}", "", package_table(frame, package), ""]
        sections.append(f"![{package}]({package}.png)\n")
    e2e = out_dir / "e2e" / "e2e.md"
    if e2e.exists():  # the end-to-end scenario's report (nox -s e2e)
        sections += [e2e_section(e2e), ""]
    written[1].write_text("\n".join(sections))
    written += write_plots(frame, out_dir)
    return written


def write_plots(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """One horizontal bar chart per package: speedup over the peer, log scale."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots written")
        return []
    paths = []
    for package, rows in frame.groupby("package"):
        rows = rows.dropna(subset=["speedup_vs_peer"])
        if rows.empty:
            continue
        labels = [
            f"{r.case} {_short_params(r.params)} [{r.impl}]" for r in rows.itertuples(index=False)
        ]
        fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.5))
        colors = ["tab:green" if s >= 1 else "tab:red" for s in rows["speedup_vs_peer"]]
        ax.barh(labels, rows["speedup_vs_peer"], color=colors)
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("speedup vs peer (peer median / ours), log scale")
        ax.set_title(f"{package} on {rows.iloc[0]['device']}")
        ax.invert_yaxis()
        fig.tight_layout()
        path = out_dir / f"{package}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _short_params(params: str, limit: int = 40) -> str:
    text = ",".join(f"{k}={v}" for k, v in json.loads(params or "{}").items())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def update_readmes(frame: pd.DataFrame, root: Path = ROOT) -> list[Path]:
    """Replace the table between the bench markers of every benchmarked package's README."""
    updated = []
    for package in sorted(frame["package"].unique()):
        readme = root / "packages" / package / "README.md"
        if not readme.exists():
            continue
        text = readme.read_text()
        table = f"{provenance(frame)}\n\n{package_table(frame, package)}\n"
        new = README_MARKERS.sub(lambda m, t=table: m.group(1) + t + m.group(2), text)
        if new != text:
            readme.write_text(new)
            updated.append(readme)
    return updated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the benchmark report.")
    parser.add_argument("json", type=Path, help="pytest-benchmark --benchmark-json output")
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    parser.add_argument(
        "--update-readmes", action="store_true", help="write the tables into package READMEs"
    )
    args = parser.parse_args(argv)
    frame = load_results(args.json)
    if frame.empty:
        parser.error(f"{args.json} holds no benchmark recorded through harness.measure")
    for path in write_report(frame, args.out or args.json.parent):
        print(f"wrote {path}")
    if args.update_readmes:
        for path in update_readmes(frame):
            print(f"updated {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
