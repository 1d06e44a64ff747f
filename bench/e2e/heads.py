"""Train Medusa heads and a DeepSeek-style MTP module on the frozen, trained model.

Both are trained on the model's own greedy continuations of training text (self-
distillation, as the Medusa paper recommends when the original training data is not
what the model would say): greedy speculative decoding accepts a draft exactly when it
equals the model's argmax, so that is the target worth learning. Mixing in raw corpus
windows keeps the heads from over-fitting a small distilled set.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from e2e.corpus import Corpus
from e2e.decode import medusa_pair
from e2e.model import greedy_generate

SPEED_TIE = 0.03  # relative speed-up differences below this are noise here


def mtp_width(model, width: int | None) -> int:
    """The MTP block's MLP width: ``width``, or the trunk's when ``None`` (older work
    folders and profiles recorded none)."""
    return width or model.config.intermediate_size


def load_trained_model(ckpt_dir: Path, attention: str | None = None):
    """The trained Llama from ``ckpt_dir/checkpoint.pt``, frozen and in eval mode."""
    from e2e.model import ModelConfig, build_model

    ckpt = torch.load(ckpt_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    model = build_model(ModelConfig(**ckpt["model_config"]), attention=attention)
    model.load_state_dict(ckpt["model"])
    model.requires_grad_(False)
    model.eval()
    # decode exactly max_new_tokens everywhere: no EOS, so the three decoders compare
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model, ckpt


@torch.no_grad()
def distill_sequences(model, corpus: Corpus, n: int, prompt_len: int, new_tokens: int, seed: int):
    """``(n, prompt_len + new_tokens)`` int64: training prompts and the model's greedy text."""
    g = np.random.default_rng(seed)
    starts = g.integers(0, corpus.train.size - prompt_len - 1, size=n)
    prompts = torch.from_numpy(
        np.stack([corpus.train[s : s + prompt_len] for s in starts]).astype(np.int64)
    )
    return greedy_generate(model, prompts, new_tokens)  # (n, prompt_len + new_tokens)


def train_all_heads(model, corpus: Corpus, out_dir: Path, *, budget: dict) -> dict:
    """Train both drafters; save them to ``out_dir``; return what was done and how long."""
    import medusa_heads
    import mtp_heads

    torch.manual_seed(0)
    started = time.perf_counter()
    distilled = distill_sequences(
        model, corpus, budget["distill_sequences"], 32, budget["distill_new_tokens"], seed=7
    )
    distill_s = time.perf_counter() - started
    raw = torch.from_numpy(corpus.train.astype(np.int64))

    hidden, vocab = model.config.hidden_size, model.config.vocab_size
    heads = medusa_heads.MedusaHeads(
        hidden, vocab, num_heads=4, num_layers=1, lm_head=model.lm_head
    )
    t0 = time.perf_counter()
    medusa_raw = medusa_heads.train_heads(
        model,
        heads,
        raw,
        steps=budget["raw_steps"],
        batch_size=8,
        seq_len=128,
        lr=1e-3,
        progress=True,
    )
    medusa_distill = medusa_heads.train_heads(
        model,
        heads,
        distilled,
        steps=budget["distill_steps"],
        batch_size=8,
        lr=5e-4,
        seed=1,
        progress=True,
    )
    medusa_s = time.perf_counter() - t0
    torch.save(heads.state_dict(), out_dir / "medusa_heads.pt")
    # the tree: the paths of highest expected acceptance under the measured accuracies
    choices = medusa_heads.choices_from_accuracies(
        medusa_distill.rank_accuracy, budget["tree_nodes"]
    )

    width = mtp_width(model, budget.get("mtp_intermediate"))
    mtp = mtp_heads.MTPModule.from_model(model, depth=budget["mtp_depth"], intermediate_size=width)
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(3)
    raw_batches = mtp_heads.random_windows(raw, 8, 128, generator=gen)
    mtp_raw = mtp_heads.train_mtp(
        model, mtp, raw_batches, steps=budget["raw_steps"], lr=1e-3, warmup_steps=10
    )

    def distilled_batches():
        while True:
            rows = torch.randint(0, distilled.shape[0], (8,), generator=gen)
            yield distilled[rows]

    mtp_steps, mtp_lr = budget["mtp_distill_steps"], budget["mtp_lr"]
    mtp_distill = mtp_heads.train_mtp(
        model, mtp, distilled_batches(), steps=mtp_steps, lr=mtp_lr, warmup_steps=10
    )
    mtp_s = time.perf_counter() - t0
    torch.save(mtp.state_dict(), out_dir / "mtp_module.pt")

    summary = {
        "distill": {
            "sequences": int(distilled.shape[0]),
            "length": int(distilled.shape[1]),
            "seconds": distill_s,
        },
        "medusa": {
            "num_heads": 4,
            "raw_steps": budget["raw_steps"],
            "distill_steps": budget["distill_steps"],
            "seconds": medusa_s,
            "final_loss": _last(medusa_distill, "losses"),
            "final_top1_by_head": list(medusa_distill.top1),
            "raw_final_loss": _last(medusa_raw, "losses"),
            "choices": [list(c) for c in choices],
        },
        "mtp": {
            "depth": budget["mtp_depth"],
            "intermediate_size": width,
            "raw_steps": budget["raw_steps"],
            "distill_steps": mtp_steps,
            "lr": mtp_lr,
            "seconds": mtp_s,
            "final_loss": mtp_distill.mtp_losses[-1] if mtp_distill.mtp_losses else None,
            "raw_final_loss": mtp_raw.mtp_losses[-1] if mtp_raw.mtp_losses else None,
        },
    }
    (out_dir / "heads_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def _last(result, name: str):
    values = getattr(result, name, None)
    if values is None or len(values) == 0:
        return None
    last = values[-1]
    return last.tolist() if hasattr(last, "tolist") else last


def load_heads(model, out_dir: Path, mtp_depth: int, summary: dict | None = None):
    """The trained Medusa heads and MTP module of ``out_dir``; ``summary`` (the
    heads summary) gives the MTP block's MLP width (older folders: the trunk's)."""
    import medusa_heads
    import mtp_heads

    hidden, vocab = model.config.hidden_size, model.config.vocab_size
    heads = medusa_heads.MedusaHeads(
        hidden, vocab, num_heads=4, num_layers=1, lm_head=model.lm_head
    )
    heads.load_state_dict(torch.load(out_dir / "medusa_heads.pt", weights_only=True))
    width = mtp_width(model, (summary or {}).get("mtp", {}).get("intermediate_size"))
    mtp = mtp_heads.MTPModule.from_model(model, depth=mtp_depth, intermediate_size=width)
    mtp.load_state_dict(torch.load(out_dir / "mtp_module.pt", weights_only=True))
    heads.eval()
    mtp.eval()
    return heads, mtp


@torch.no_grad()
def heldout_rank_accuracy(model, heads, corpus: Corpus, n: int = 64, seed: int = 123):
    """Per-head rank accuracy ``(H, 10)`` on fresh self-distilled text (training prompts,
    a seed the heads were not trained on), counting only the generated positions."""
    sequences = distill_sequences(model, corpus, n, 32, 96, seed=seed)  # (n, 128)
    hidden = model(input_ids=sequences, output_hidden_states=True).hidden_states[-1]
    labels = sequences.clone()
    labels[:, :32] = -100  # the prompt is corpus text, not what the model would say
    _, metrics = heads.loss(hidden, labels, return_metrics=True)
    return metrics["rank_accuracy"]


def pick_tree(trials: list[dict]) -> dict:
    """The trial (one tree size's measurements on the training prompts) to keep.

    One run per prompt on a shared machine: speed-ups within ``SPEED_TIE`` of the best
    are a tie, settled by tokens per step (deterministic, and on hardware where a wider
    verification forward is nearly free it is what the speed follows).
    """
    fastest = max(t["speedup"] for t in trials)
    tied = [t for t in trials if t["speedup"] >= fastest * (1 - SPEED_TIE)]
    return max(tied, key=lambda t: t["mean_accept_length"])


def select_tree(model, heads, corpus: Corpus, sizes, *, prompts: int = 12, new_tokens: int = 96):
    """The Medusa tree that decodes fastest, measured on training-split prompts.

    Sizes within ``SPEED_TIE`` (3%) of the fastest count as equally fast: on
    2026-12-02 the same trees' speed-ups on the held-out prompts differed from those on
    the training prompts by -5% to +3%, so smaller gaps do not rank trees. Among the
    tied sizes the one accepting the most tokens per step is kept.

    A larger tree accepts more tokens per step but makes every verification forward
    dearer (on a CPU a forward of 32 tokens costs about twice one of a single token),
    so the size is a trade-off that only a measurement settles. For each size the
    tree is :func:`medusa_heads.choices_from_accuracies` of the held-out rank
    accuracies; its speed-up is the median of per-prompt ratios against ``generate``
    (interleaved). The prompts come from the training text, so the held-out prompts
    of the report do not choose the tree. Per-prompt acceptance varies a lot (from about
    1.3 to 2.7 tokens per step with one tree), so a few prompts choose at random.
    """
    import medusa_heads

    accuracy = heldout_rank_accuracy(model, heads, corpus)
    g = np.random.default_rng(5)
    starts = g.integers(0, corpus.train.size - 65, size=prompts)
    chosen = [torch.from_numpy(corpus.train[s : s + 64].astype(np.int64))[None] for s in starts]
    trials = []
    for size in sizes:
        choices = medusa_heads.choices_from_accuracies(accuracy, size)
        ratios, lengths = [], []
        for prompt in chosen:
            for _ in range(2):  # the first pass warms this tree's shapes up
                out, _, ratio = medusa_pair(model, heads, prompt, new_tokens, choices)
            ratios.append(ratio)
            lengths.append(out.mean_accept_length)
        trials.append(
            {
                "nodes": size,
                "speedup": float(np.median(ratios)),
                "mean_accept_length": float(np.mean(lengths)),
                "choices": [list(c) for c in choices],
            }
        )
        print(f"tree {size:3d} nodes: x{trials[-1]['speedup']:.2f}, "
              f"{trials[-1]['mean_accept_length']:.2f} tokens/step")  # fmt: skip
    best = pick_tree(trials)
    return best["choices"], {
        "rank_accuracy_top1": accuracy[:, 0].tolist(),
        "trials": trials,  # with every size's choices, for the held-out sweep of the report
        "nodes": best["nodes"],
        "prompts": prompts,
    }
