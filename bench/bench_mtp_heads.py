"""mtp-heads: self-speculative decoding vs transformers' greedy generate, and the
parallel heads' memory-saving backward vs the plain one.

The decoding case trains a small byte-level LlamaForCausalLM jointly with a depth-2
MTP module on CPython's own standard-library source (real text already on disk, no
download), then times generating the same tokens from the same prompts with
``model.generate(do_sample=False)`` (the peer), with ``speculative_generate`` drafting 1
or 2 tokens per step, and with a bare KV-cache greedy loop (which separates the gain of
drafting from generate's per-step overhead). All outputs are identical token for token
(asserted before timing); acceptance rates go into the row's params.
"""

from __future__ import annotations

import inspect
import os

import pytest
import torch

import harness

transformers = pytest.importorskip("transformers")
import mtp_heads  # noqa: E402

PACKAGE = "mtp-heads"
# transformers 5 calls the cache argument `cache`, 4.x `past_key_values`
CACHE_KW = (
    "cache"
    if "cache" in inspect.signature(transformers.LlamaForCausalLM.forward).parameters
    else "past_key_values"
)
PEER = "transformers.generate"
SIZES = harness.pick(
    cpu={
        "hidden": 48,
        "layers": 6,
        "heads": 4,
        "kv_heads": 2,
        "vocab": 256,
        "prompts": 3,
        "prompt_len": 16,
        "new_tokens": 32,
        "train_steps": 100,
        "train_batch": 8,
        "train_len": 48,
    },
    gpu={
        "hidden": 512,
        "layers": 12,
        "heads": 8,
        "kv_heads": 4,
        "vocab": 256,
        "prompts": 2,
        "prompt_len": 64,
        "new_tokens": 128,
        "train_steps": 400,
        "train_batch": 32,
        "train_len": 256,
    },
)
ROUNDS = harness.pick(cpu=3, gpu=3)
SOURCES = ["textwrap.py", "argparse.py", "dataclasses.py", "functools.py", "inspect.py"]
DECODE_IMPLS = [
    PEER,
    "speculative_generate(depth=1)",
    "speculative_generate(depth=2)",
    "kv-cache greedy loop",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread_on_cpu():
    # small models: intra-op threads only add contention on a shared CPU
    if harness.device() != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def stdlib_bytes() -> torch.Tensor:
    """The bytes of a few standard-library modules as one int64 token stream."""
    root = os.path.dirname(os.__file__)
    data = b"".join(open(os.path.join(root, f), "rb").read() for f in SOURCES)
    return torch.tensor(list(data), dtype=torch.long)


@pytest.fixture(scope="module")
def decoding_setup():
    s, dev = SIZES, harness.device()
    cfg = transformers.LlamaConfig(
        vocab_size=s["vocab"],
        hidden_size=s["hidden"],
        intermediate_size=(8 * s["hidden"]) // 3,
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv_heads"],
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).to(dev)
    mtp = mtp_heads.MTPModule.from_model(model, depth=2)
    stream = stdlib_bytes()
    held_out, train = stream[: stream.numel() // 10], stream[stream.numel() // 10 :]
    g = torch.Generator().manual_seed(0)
    mtp_heads.train_mtp(
        model,
        mtp,
        mtp_heads.random_windows(train, s["train_batch"], s["train_len"], generator=g),
        steps=s["train_steps"],
        lr=3e-3,
        warmup_steps=20,
        joint=True,
        progress=False,
    )
    starts = torch.linspace(0, held_out.numel() - s["prompt_len"] - 1, s["prompts"]).long()
    prompts = [held_out[int(a) : int(a) + s["prompt_len"]][None].to(dev) for a in starts]
    return model, mtp, prompts


def greedy(model, ids, new_tokens):
    return model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )


def kv_cache_greedy_loop(model, ids, new_tokens):
    """The plain decoding loop without drafts: one token per forward pass."""
    cache = transformers.DynamicCache(config=model.config)
    tokens, step_ids = ids, ids
    for _ in range(new_tokens):
        logits = model(input_ids=step_ids, use_cache=True, **{CACHE_KW: cache}).logits[:, -1]
        step_ids = logits.argmax(-1, keepdim=True)
        tokens = torch.cat((tokens, step_ids), 1)
    return tokens


@pytest.mark.parametrize("impl", DECODE_IMPLS)
def test_greedy_decoding(benchmark, decoding_setup, impl):
    model, mtp, prompts = decoding_setup
    n = SIZES["new_tokens"]
    references = [greedy(model, p, n) for p in prompts]
    params = {k: SIZES[k] for k in ("hidden", "layers", "heads", "kv_heads", "vocab", "prompt_len")}
    params.update(new_tokens=n, prompts=len(prompts), mtp_block_layers=1)
    if impl.startswith("speculative_generate"):
        drafts = int(impl[-2])

        def fn():
            return [
                mtp_heads.speculative_generate(model, mtp, p, n, num_draft_tokens=drafts)
                for p in prompts
            ]

        outs = fn()
        for out, ref in zip(outs, references, strict=True):
            assert torch.equal(out.sequences, ref)  # lossless: the peer's tokens exactly
        drafted = [sum(o.drafted_by_depth[k] for o in outs) for k in range(drafts)]
        accepted = [sum(o.accepted_by_depth[k] for o in outs) for k in range(drafts)]
        passes = sum(o.num_forward_passes for o in outs)
        params.update(
            depth=drafts,
            acceptance_rate=round(sum(accepted) / max(1, sum(drafted)), 4),
            acceptance_by_depth=[
                round(a / max(1, d), 4) for a, d in zip(accepted, drafted, strict=True)
            ],
            tokens_per_step=round(n * len(prompts) / passes, 4),
        )
        benchmark.extra_info.update(
            acceptance_rate=params["acceptance_rate"], tokens_per_step=params["tokens_per_step"]
        )
    elif impl == PEER:

        def fn():
            return [greedy(model, p, n) for p in prompts]

    else:

        def fn():
            with torch.no_grad():
                return [kv_cache_greedy_loop(model, p, n) for p in prompts]

        for out, ref in zip(fn(), references, strict=True):
            assert torch.equal(out, ref)

    harness.measure(
        benchmark,
        fn,
        package=PACKAGE,
        case="greedy_decoding",
        impl=impl,
        peer="" if impl == PEER else PEER,
        dtype="float32",
        params=params,
        device=harness.device(),
        work=n * len(prompts),
        work_unit="token",
        rounds=ROUNDS,
        warmup=1,
    )


BACKWARD = harness.pick(
    cpu={"batch": 4, "seq": 64, "hidden": 64, "vocab": 4099, "depth": 4},
    gpu={"batch": 8, "seq": 1024, "hidden": 1024, "vocab": 32000, "depth": 4},
)


@pytest.mark.parametrize("impl", ["memory_efficient", "plain autograd"])
def test_parallel_heads_backward(benchmark, impl):
    s, dev = BACKWARD, harness.device()
    torch.manual_seed(0)
    lm_head = torch.nn.Linear(s["hidden"], s["vocab"], bias=False).to(dev)
    heads = mtp_heads.ParallelMTPHeads(
        s["hidden"], s["vocab"], s["depth"], 4, lm_head=lm_head, intermediate_size=2 * s["hidden"]
    ).to(dev)
    trunk = torch.randn(s["batch"], s["seq"], s["hidden"], device=dev, requires_grad=True)
    ids = torch.randint(0, s["vocab"], (s["batch"], s["seq"]), device=dev)
    efficient = impl == "memory_efficient"

    def step():
        heads.zero_grad(set_to_none=True)
        trunk.grad = None
        loss = heads.loss(trunk, ids, memory_efficient=efficient)
        loss.backward()
        return loss

    params = dict(s)
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        params["peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        benchmark.extra_info["peak_memory_mib"] = params["peak_memory_mib"]
    tokens = s["batch"] * s["seq"]
    harness.measure(
        benchmark,
        step,
        package=PACKAGE,
        case="parallel_heads_loss_backward",
        impl=impl,
        peer="" if impl == "plain autograd" else "plain autograd",
        dtype="float32",
        params=params,
        device=dev,
        work=tokens,
        work_unit="token",
        rounds=ROUNDS,
    )
