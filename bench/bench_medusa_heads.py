"""medusa-heads: Medusa greedy decoding vs transformers' own greedy ``generate``.

One tiny ``LlamaForCausalLM`` (random init with a sharpened output layer, so that its
greedy continuations have the repetitive structure real small models show), Medusa
heads trained briefly on its own greedy outputs (self-distillation), batch 1, KV cache
on both sides. Each call decodes ``NEW_TOKENS`` tokens for each of ``NUM_PROMPTS``
held-out prompts, one after the other. Ours
is run with the chain tree (4 nodes) and the default 15-node tree; the peer is
``model.generate(do_sample=False)``. Both outputs are checked identical before timing.
The rows' extra_info carry the mean tokens per verification step, tokens per forward
and the acceptance rate per head depth. The end-to-end scenario (bench/e2e) reports the
same figures on a model trained on real text.

Tiny models are overhead-bound: one thread is the fastest setting for both sides, so the
module runs with ``torch.set_num_threads(1)`` (restored afterwards).
"""

from __future__ import annotations

import pytest
import torch

import harness

transformers = pytest.importorskip("transformers")
import medusa_heads  # noqa: E402

PACKAGE = "medusa-heads"
PEER = "transformers.generate"
CONFIG = harness.pick(
    cpu=dict(vocab=256, hidden=64, layers=2, heads=4, kv_heads=2, ffn=128),
    gpu=dict(vocab=8192, hidden=512, layers=8, heads=8, kv_heads=2, ffn=1536),
)
TRAIN = harness.pick(
    cpu=dict(sequences=64, seq_len=64, steps=60, batch=16),
    gpu=dict(sequences=256, seq_len=128, steps=400, batch=32),
)
NEW_TOKENS = harness.pick(cpu=32, gpu=128)
NUM_PROMPTS = harness.pick(cpu=3, gpu=8)
PROMPT_LEN = 12
ROUNDS = harness.pick(cpu=3, gpu=10)
TREES = {"chain": medusa_heads.CHAIN_CHOICES, "tree16": medusa_heads.SMALL_TREE_CHOICES}


@pytest.fixture(scope="module")
def setup():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    device = harness.device()
    c = CONFIG
    config = transformers.LlamaConfig(
        vocab_size=c["vocab"], hidden_size=c["hidden"], intermediate_size=c["ffn"],
        num_hidden_layers=c["layers"], num_attention_heads=c["heads"],
        num_key_value_heads=c["kv_heads"], max_position_embeddings=1024,
        bos_token_id=None, eos_token_id=None, pad_token_id=None, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(device).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(16.0)
    model.generation_config.eos_token_id = None
    corpus = torch.randint(0, c["vocab"], (20_000,), generator=torch.Generator().manual_seed(1))
    t = TRAIN
    sequences = medusa_heads.self_distill_sequences(
        model, corpus, t["sequences"], t["seq_len"], prompt_len=8, batch_size=t["batch"]
    )
    heads = medusa_heads.MedusaHeads(c["hidden"], c["vocab"], 4, lm_head=model.lm_head)
    heads = heads.to(device)
    medusa_heads.train_heads(
        model, heads, sequences, steps=t["steps"], batch_size=t["batch"], lr=1e-2, progress=False
    )
    gen = torch.Generator().manual_seed(7)
    prompts = [
        torch.randint(0, c["vocab"], (1, PROMPT_LEN), generator=gen).to(device)
        for _ in range(NUM_PROMPTS)
    ]
    yield {"model": model, "heads": heads, "prompts": prompts, "device": device}
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "impl", ["medusa_heads.generate[chain]", "medusa_heads.generate[tree16]", PEER]
)
def test_greedy_decode(benchmark, setup, impl):
    model, heads, prompts = setup["model"], setup["heads"], setup["prompts"]
    expected = [model.generate(p, max_new_tokens=NEW_TOKENS, do_sample=False) for p in prompts]
    if impl == PEER:

        def run():
            return [model.generate(p, max_new_tokens=NEW_TOKENS, do_sample=False) for p in prompts]

        tree = None
    else:
        tree = impl.split("[")[1].rstrip("]")
        choices = medusa_heads.build_tree(TREES[tree])

        def run():
            return [
                medusa_heads.generate(model, heads, p, NEW_TOKENS, choices=choices) for p in prompts
            ]

        outs = run()
        for out, ref in zip(outs, expected, strict=True):
            assert torch.equal(out.sequences, ref), "Medusa greedy must equal generate"
        steps = sum(o.num_steps for o in outs)
        benchmark.extra_info.update(
            mean_accept_length=sum(sum(o.accept_lengths) for o in outs) / max(steps, 1),
            tokens_per_forward=NEW_TOKENS * len(outs) / sum(o.num_forwards for o in outs),
            acceptance_by_depth=[
                sum(o.acceptance_by_depth[d] * o.num_steps for o in outs) / max(steps, 1)
                for d in range(4 if tree == "chain" else outs[0].tree_depth)
            ],
        )
    params = {"new_tokens": NEW_TOKENS, "prompts": NUM_PROMPTS, "prompt_len": PROMPT_LEN,
              "batch": 1, "tree": tree, **CONFIG}  # fmt: skip
    harness.measure(
        benchmark, run, package=PACKAGE, case="greedy_decode", impl=impl,
        peer="" if impl == PEER else PEER, dtype="float32", params=params,
        device=setup["device"], work=NEW_TOKENS * NUM_PROMPTS, work_unit="token",
        rounds=ROUNDS,
    )  # fmt: skip
