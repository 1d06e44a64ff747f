"""Train a byte-level Llama and MTP heads on CPython's own source, then decode with them.

    python examples/train_on_stdlib.py --steps 400 --layers 6 --depth 2

Everything comes from disk (the standard library's .py files) and from configs: no
download. Two phases, as one would do with a pretrained model: (1) train the model
(optionally jointly with the heads, ``--joint``), (2) train the heads on the frozen
model. Then greedy decoding of held-out prompts with ``model.generate`` and with
``speculative_generate``; the outputs are checked to be identical and the acceptance
rate per depth, tokens per step and the tokens/s ratio are printed.
"""

from __future__ import annotations

import argparse
import os
import time

import mtp_heads
import torch
from transformers import LlamaConfig, LlamaForCausalLM

SOURCES = ["textwrap.py", "argparse.py", "dataclasses.py", "functools.py", "inspect.py"]


def stdlib_bytes(files: list[str]) -> torch.Tensor:
    root = os.path.dirname(os.__file__)
    data = b"".join(open(os.path.join(root, f), "rb").read() for f in files)
    return torch.tensor(list(data), dtype=torch.long)


def train_language_model(model, stream, steps, batch, seq_len, lr, seed):
    """Plain next-token training (what a pretrained checkpoint already went through)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    bar = mtp_heads.training.ProgressBar(steps)
    model.train()
    for step, ids in enumerate(mtp_heads.random_windows(stream, batch, seq_len, generator=g), 1):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update(step, loss=float(loss.detach()))
        if step >= steps:
            break
    bar.close()
    model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=400, help="language-model training steps")
    p.add_argument("--head-steps", type=int, default=300, help="MTP steps on the frozen model")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--kind", choices=("sequential", "parallel"), default="sequential")
    p.add_argument("--joint", action="store_true", help="train the heads jointly in phase 1")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    stream = stdlib_bytes(SOURCES)
    held_out, train = stream[: stream.numel() // 10], stream[stream.numel() // 10 :]
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=args.hidden,
        intermediate_size=(8 * args.hidden) // 3,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    model = LlamaForCausalLM(config)
    cls = mtp_heads.ParallelMTPHeads if args.kind == "parallel" else mtp_heads.MTPModule
    heads = cls.from_model(model, depth=args.depth)
    windows = mtp_heads.random_windows(train, args.batch, args.seq_len)
    if args.joint:
        print("phase 1: model + heads, joint loss")
        mtp_heads.train_mtp(model, heads, windows, steps=args.steps, lr=3e-3, joint=True)
    else:
        print("phase 1: model alone")
        train_language_model(model, train, args.steps, args.batch, args.seq_len, 3e-3, 0)
    print("phase 2: heads on the frozen model")
    mtp_heads.train_mtp(model, heads, windows, steps=args.head_steps, lr=3e-3)

    starts = torch.linspace(0, held_out.numel() - 33, args.prompts).long().tolist()
    t_ref = t_ours = 0.0
    drafted = [0] * args.depth
    accepted = [0] * args.depth
    passes = 0
    for s in starts:
        prompt = held_out[s : s + 32][None]
        t0 = time.perf_counter()
        ref = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=args.new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
        t1 = time.perf_counter()
        out = mtp_heads.speculative_generate(model, heads, prompt, args.new_tokens)
        t2 = time.perf_counter()
        assert torch.equal(out.sequences, ref), "speculative decoding must be lossless"
        t_ref, t_ours = t_ref + (t1 - t0), t_ours + (t2 - t1)
        drafted = [a + b for a, b in zip(drafted, out.drafted_by_depth, strict=True)]
        accepted = [a + b for a, b in zip(accepted, out.accepted_by_depth, strict=True)]
        passes += out.num_forward_passes
        print(repr(bytes(out.sequences[0, 32:].tolist()).decode("utf-8", "replace")))
    total = args.new_tokens * len(starts)
    rates = [round(a / max(1, d), 3) for a, d in zip(accepted, drafted, strict=True)]
    print(f"acceptance by depth: {rates}")
    print(f"tokens per step: {total / passes:.3f}")
    print(
        f"tokens/s: generate {total / t_ref:.1f}, speculative {total / t_ours:.1f} "
        f"({t_ref / t_ours:.2f}x)"
    )


if __name__ == "__main__":
    main()
