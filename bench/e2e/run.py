"""The end-to-end scenario: corpus -> DDP training -> Medusa/MTP heads -> three decoders.

    python -m e2e.run                 # from bench/: the full run (about 20 + 35 minutes)
    python -m e2e.run --quick         # minutes-sized smoke run (tests, the bench preset)
    python -m e2e.run --fresh         # ignore the cached checkpoint and heads

The work folder (``bench/reports/e2e/<profile>/``, git-ignored) keeps the tokenised
corpus, the checkpoint and the trained heads, so a rerun reuses them; the report goes
to ``bench/reports/latest/e2e/`` (``e2e.md``, ``decoding.csv``, PNG plots).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

import report

BENCH = Path(__file__).resolve().parents[1]
DECODE_THREADS = 1
PROFILES = {
    # the run the issue asks for: a useful model within 20 minutes on 2 cores
    "full": dict(
        minutes=20.0,
        hidden=256,
        layers=4,
        seq_len=256,
        batch=16,
        max_files=None,
        eval_every=50,
        distill_sequences=3072,
        distill_new_tokens=96,
        raw_steps=200,
        distill_steps=1200,
        mtp_depth=2,
        # the MTP block's MLP width (the trunk's is 704): on 2026-12-03 a 256-wide block
        # accepted as many drafts (88.1% against 86.8% at depth 1, 16 held-out prompts)
        # and, reading a quarter fewer bytes per draft, decoded 1.51x against 1.39x in
        # an in-process A/B (1.45x both in two e2e runs on a drifting machine)
        mtp_intermediate=256,
        # the MTP module's distillation (Medusa keeps distill_steps at 5e-4): on the
        # checkpoint of 2026-12-04, 1200 steps at 5e-4 accepted 79.9% of depth-1 drafts
        # on the 32 held-out prompts, 3000 at 1e-3 84.7% (4.7 instead of 2 minutes)
        mtp_distill_steps=3000,
        mtp_lr=1e-3,
        tree_nodes=31,
        # tree sizes tried by e2e.heads.select_tree (measured on training prompts)
        tree_sizes=(3, 5, 7, 11, 15, 23, 31),
        tree_prompts=12,
        # held-out prompts: tokens per step varies ~1.3-2.7 from prompt to prompt, so 8
        # prompts left a standard error of ~0.2 tokens/step; 32 halve it
        prompts=32,
        prompt_len=64,
        new_tokens=96,
        runs=3,
    ),
    # a smoke run of the same code path (a few minutes), used by the slow test
    "quick": dict(
        minutes=0.5,
        hidden=64,
        layers=2,
        seq_len=64,
        batch=4,
        max_files=120,
        eval_every=10,
        distill_sequences=8,
        distill_new_tokens=16,
        raw_steps=10,
        distill_steps=10,
        mtp_depth=2,
        mtp_intermediate=64,
        mtp_distill_steps=10,
        mtp_lr=1e-3,
        tree_nodes=7,
        tree_sizes=(3, 7),
        tree_prompts=2,
        prompts=2,
        prompt_len=16,
        new_tokens=12,
        runs=1,
    ),
}


def run_training(work: Path, profile: dict, vocab_size: int) -> None:
    """Two gloo processes under torchrun; resumes from ``work/checkpoint.pt`` if present."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "-m",
        "e2e.train",
        "--cache",
        str(work / "corpus"),
        "--out",
        str(work),
        "--minutes",
        str(profile["minutes"]),
        "--hidden-size",
        str(profile["hidden"]),
        "--layers",
        str(profile["layers"]),
        "--seq-len",
        str(profile["seq_len"]),
        "--batch",
        str(profile["batch"]),
        "--eval-every",
        str(profile["eval_every"]),
        "--vocab-size",
        str(vocab_size),
    ]
    if profile["max_files"]:
        cmd += ["--max-files", str(profile["max_files"])]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(BENCH), os.environ.get("PYTHONPATH", "")]),
    }
    subprocess.run(cmd, cwd=BENCH, env=env, check=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_report(
    work: Path,
    out: Path,
    rows: list[dict],
    heads: dict,
    decode_threads: int = 1,
    sweep: list[dict] | None = None,
) -> Path:
    """decoding.csv, tree_sweep.csv, e2e.md and the three plots; returns the markdown path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "decoding.csv", index=False)
    train = json.loads((work / "train_summary.json").read_text())
    history = _history(work)

    # training curve
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(history["step"], history["loss"], alpha=0.4, label="train loss (per step)")
    val = history.dropna(subset=["val_loss"])
    ax.plot(val["step"], val["val_loss"], "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("tiny Llama on the CPython stdlib, 2 ranks (ddp-mini)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "training_curve.png", dpi=110)
    plt.close(fig)

    # acceptance per depth
    fig, ax = plt.subplots(figsize=(7, 4))
    for method, marker in (
        ("medusa_heads.generate", "o-"),
        ("mtp_heads.speculative_generate (depth 2)", "s-"),
    ):
        per_prompt = frame[frame["method"] == method]["acceptance_by_depth"].tolist()
        if per_prompt and per_prompt[0]:
            mean = pd.DataFrame(per_prompt).mean(axis=0)
            ax.plot(range(1, len(mean) + 1), mean, marker, label=method)
    ax.set_xlabel("draft depth (1 = the token after the next)")
    ax.set_ylabel("acceptance rate")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("acceptance per head depth, held-out prompts")
    fig.tight_layout()
    fig.savefig(out / "acceptance_by_depth.png", dpi=110)
    plt.close(fig)

    # medians over the prompts of the per-prompt medians over runs (decode.py)
    summary = (
        frame.groupby("method", sort=False)
        .agg(
            identical=("identical", "all"),
            tokens_per_step=("tokens_per_step", "mean"),
            tokens_per_step_se=("tokens_per_step", "sem"),
            tokens_per_s=("tokens_per_s", "median"),
            speedup_vs_generate=("speedup_vs_generate", "median"),
        )
        .reset_index()
    )
    colors = ["gray", "tab:blue", "tab:green", "tab:olive"][: len(summary)]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh(summary["method"], summary["tokens_per_s"], color=colors)
    ax.set_xlabel("tokens / s (batch 1, CPU)")
    ax.set_title("decoding speed, greedy, identical outputs")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out / "tokens_per_s.png", dpi=110)
    plt.close(fig)

    mtp_rows = frame[frame["method"].str.startswith("mtp_heads")]
    mtp_rate = {
        method: rows["acceptance_rate"].mean() for method, rows in mtp_rows.groupby("method")
    }
    mtp_drafting = {
        method: (rows["draft_share"].mean(), rows["speedup_if_drafting_were_free"].median())
        for method, rows in mtp_rows.groupby("method")
    }
    lines = [
        "# End to end: tiny Llama on the CPython standard library",
        "",
        f"- corpus: {train['corpus']['train_files']} train / {train['corpus']['val_files']} "
        f"validation files of `{train['corpus']['stdlib']}` (split by a hash of the path), "
        f"{train['corpus']['train_tokens']:,} / {train['corpus']['val_tokens']:,} BPE tokens",
        f"- model: LlamaForCausalLM, {train['parameters']:,} parameters,"
        " attention = flashattn-lite",
        f"- training: {train['steps']} steps, {train['tokens_seen']:,} tokens, final validation "
        f"loss {train['final_val_loss']:.3f} nats/token",
        f"- heads: Medusa {heads['medusa']['num_heads']} heads, MTP depth {heads['mtp']['depth']}"
        + (
            f" (MLP width {heads['mtp']['intermediate_size']})"
            if "intermediate_size" in heads["mtp"]
            else ""
        )
        + (
            f", MTP distilled for {heads['mtp']['distill_steps']} steps at lr"
            f" {heads['mtp']['lr']:g}"
            if "distill_steps" in heads["mtp"]
            else ""
        ),
        f"- Medusa tree: {len(heads['medusa']['choices'])} nodes + root"
        + (
            " (fastest on training prompts, speed-ups within 3% a tie settled by tokens per"
            " step: `e2e.heads.select_tree`)"
            if "tree" in heads
            else ""
        ),
        *(
            f"- MTP draft acceptance rate, {m.split('(')[-1][:-1]}: {r:.1%}"
            for m, r in mtp_rate.items()
        ),
        *(
            f"- MTP, {m.split('(')[-1][:-1]}: drafting takes {share:.1%} of the decoding time;"
            f" with drafts that cost nothing it would be about {bound:.2f}x generate (roughly"
            " the most a faster drafter could give at this acceptance)"
            for m, (share, bound) in mtp_drafting.items()
        ),
        f"- decoding: batch 1, {decode_threads} torch thread(s) for every method, "
        f"{frame['runs'].iloc[0]} interleaved runs per prompt; tokens/s and speed-up are "
        "medians over the prompts of per-prompt medians over the runs",
        f"- {frame['prompt'].nunique()} held-out prompts; tokens_per_step_se is the standard "
        "error of the mean over them",
        "",
        report.markdown_table(summary.round(3), floatfmt=".3f"),
        "",
        *_sweep_lines(sweep, out),
        "![training curve](training_curve.png)",
        "![acceptance by depth](acceptance_by_depth.png)",
        "![tokens per second](tokens_per_s.png)",
        "",
    ]
    path = out / "e2e.md"
    path.write_text("\n".join(lines))
    (out / "summary.json").write_text(
        json.dumps(
            {
                "train": train,
                "heads": heads,
                "decoding": summary.to_dict("records"),
                "mtp_acceptance_rate": mtp_rate,
                "mtp_draft_share_and_free_draft_speedup": mtp_drafting,
                "tree_sweep": sweep or [],
            },
            indent=1,
            default=str,
        )
    )
    return path


def _sweep_lines(sweep: list[dict] | None, out: Path) -> list[str]:
    """The held-out tree-size sweep as a markdown section (and tree_sweep.csv)."""
    if not sweep:
        return []
    frame = pd.DataFrame(sweep)
    frame.to_csv(out / "tree_sweep.csv", index=False)
    return [
        "Every tree size the search tried, on the same held-out prompts (one run each,"
        " interleaved with `generate`; this does not choose the tree). Tokens per"
        " verification step, mean and standard error over the prompts:",
        "",
        report.markdown_table(frame.round(3), floatfmt=(".0f", ".3f", ".3f", ".3f")),
        "",
    ]


def append_to_bench_report(e2e_md: Path) -> None:
    """Put the e2e section at the end of the bench report beside it, replacing an old one."""
    bench_md = e2e_md.parent.parent / "report.md"
    if not bench_md.exists():
        return  # report.py appends it when the bench runs later
    text = bench_md.read_text().split("\n## End to end")[0].rstrip() + "\n\n"
    bench_md.write_text(text + report.e2e_section(e2e_md))


def _history(work: Path) -> pd.DataFrame:
    import torch

    ckpt = torch.load(work / "checkpoint.pt", map_location="cpu", weights_only=False)
    frame = pd.DataFrame(ckpt["history"])
    if "val_loss" not in frame:
        frame["val_loss"] = float("nan")
    return frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the minutes-sized smoke profile")
    parser.add_argument("--fresh", action="store_true", help="retrain from scratch")
    parser.add_argument("--minutes", type=float, default=None, help="override training budget")
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--work", type=Path, default=None, help="work folder")
    parser.add_argument("--out", type=Path, default=BENCH / "reports" / "latest" / "e2e")
    args = parser.parse_args(argv)
    name = "quick" if args.quick else "full"
    profile = dict(PROFILES[name])
    if args.minutes is not None:
        profile["minutes"] = args.minutes
    work = args.work or BENCH / "reports" / "e2e" / name
    if args.fresh and work.exists():
        for item in ("checkpoint.pt", "train_summary.json", "medusa_heads.pt", "mtp_module.pt"):
            (work / item).unlink(missing_ok=True)
    work.mkdir(parents=True, exist_ok=True)

    if not (work / "train_summary.json").exists():
        run_training(work, profile, args.vocab_size)
    else:
        print(f"reusing the trained model in {work} (--fresh retrains)")

    import torch

    from e2e.corpus import build_corpus
    from e2e.decode import compare_decoders, heldout_prompts, tree_sweep
    from e2e.heads import (
        load_heads,
        load_trained_model,
        mtp_width,
        pick_tree,
        select_tree,
        train_all_heads,
    )

    torch.set_num_threads(os.cpu_count() or 1)
    corpus = build_corpus(work / "corpus", args.vocab_size, profile["max_files"])
    model, _ = load_trained_model(work)
    heads_summary = {}
    if (work / "heads_summary.json").exists():
        heads_summary = json.loads((work / "heads_summary.json").read_text())
    trained = heads_summary.get("mtp", {})
    if (
        not (work / "medusa_heads.pt").exists()
        or not (work / "mtp_module.pt").exists()
        or mtp_width(model, trained.get("intermediate_size"))
        != mtp_width(model, profile["mtp_intermediate"])
        or trained.get("distill_steps") != profile["mtp_distill_steps"]
        or trained.get("lr") != profile["mtp_lr"]
    ):  # missing, or an MTP module trained otherwise: train both drafters again
        heads_summary = train_all_heads(model, corpus, work, budget=profile)
    heads, mtp = load_heads(model, work, profile["mtp_depth"], heads_summary)
    # Decoding runs on one thread, generate and the drafting decoders alike: a forward
    # of this 4M-parameter model is too small to split, and on the shared 2-core
    # machine a second thread mostly waits (generate is faster on 1 thread too).
    torch.set_num_threads(DECODE_THREADS)
    search = heads_summary.get("tree", {})
    if search.get("prompts") != profile["tree_prompts"] or "choices" not in search["trials"][0]:
        # choose the tree once per work folder and keep it (older folders chose on fewer
        # prompts and kept no choices per size: choose again)
        choices, search = select_tree(
            model, heads, corpus, profile["tree_sizes"], prompts=profile["tree_prompts"]
        )
        heads_summary["medusa"]["choices"] = choices
        heads_summary["tree"] = search
        (work / "heads_summary.json").write_text(json.dumps(heads_summary, indent=1))
    else:  # the stored measurements, ranked by the current rule
        kept = pick_tree(search["trials"])
        heads_summary["medusa"]["choices"], search["nodes"] = kept["choices"], kept["nodes"]
    prompts = heldout_prompts(corpus.val, profile["prompts"], profile["prompt_len"])
    choices = [tuple(c) for c in heads_summary["medusa"]["choices"]]
    rows = compare_decoders(
        model, heads, mtp, prompts, profile["new_tokens"], choices, runs=profile["runs"]
    )
    trees = {t["nodes"]: t["choices"] for t in heads_summary["tree"]["trials"]}
    sweep = tree_sweep(model, heads, prompts, profile["new_tokens"], trees)
    report = write_report(work, args.out, rows, heads_summary, DECODE_THREADS, sweep)
    print(report.read_text())
    shutil.copy(work / "train_summary.json", args.out / "train_summary.json")
    append_to_bench_report(report)
    if not all(r["identical"] for r in rows):
        print("ERROR: a drafting decoder's greedy output differs from generate", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
