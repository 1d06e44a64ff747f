"""flashattn-lite: tiled exact attention vs torch's scaled_dot_product_attention.

CPU (cpu preset): the tiled PyTorch backend against ``F.scaled_dot_product_attention``
(which has its own CPU flash kernel) and against naive materialised attention, float32,
batch 1, 8 heads, head dim 64. GPU (gpu preset): the Triton kernels against SDPA's
flash and cuDNN backends in bfloat16, batch x seqlen = 16k, 2048 model width. The CPU
also times a decoding step (``attn_decode``: one query against a 512- or 2048-key cache,
GQA 8:4) and a speculative verification step (``attn_verify``: 2 or 3 causal queries at
the end of a 512-key cache) against SDPA.

Rows also record the peak extra memory of one call in ``extra_info`` as
``peak_mem_bytes`` (CUDA: the allocator's peak, every row; CPU: the growth of peak RSS
over one call in a fresh subprocess after a small warm-up call, at the sizes in
``MEMORY_AT``, with the whole process's peak RSS as ``process_peak_rss_bytes``). Our rows
also time ours and SDPA in alternating pairs (``paired_speedup``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import harness

flashattn_lite = pytest.importorskip("flashattn_lite")

PACKAGE = "flashattn-lite"
DEVICE = harness.device()
ON_CUDA = DEVICE == "cuda"
DTYPE = "bfloat16" if ON_CUDA else "float32"
OURS = "flashattn_lite.triton" if ON_CUDA else "flashattn_lite.torch"
PEER = "F.sdpa[flash]" if ON_CUDA else "F.sdpa"
IMPLS = harness.pick(cpu=[OURS, PEER, "naive"], gpu=[OURS, PEER, "F.sdpa[cudnn]"])
# (batch, nheads, seqlen, head_dim, causal)
FWD_SHAPES = harness.pick(
    cpu=[(1, 8, s, 64, False) for s in (1024, 2048, 4096, 8192)],
    gpu=[
        (16384 // s, 2048 // d, s, d, c)
        for d in (64, 128)
        for s in (1024, 4096, 16384)
        for c in (False, True)
    ],
)
FWD_BWD_SHAPES = harness.pick(
    cpu=[(1, 8, s, 64, False) for s in (1024, 2048, 4096)], gpu=FWD_SHAPES
)
# fixed on the CPU (the preset must stay short): more rounds where a call is short
ROUNDS = harness.pick(cpu={1024: 10, 2048: 5}, gpu=None)
PAIRS = harness.pick(cpu={1024: 8, 2048: 5}, gpu=None)  # alternated ours/SDPA pairs
# naive attention holds the whole (B, H, S, S) matrix: ~4.4 GB of peak memory at 8k
NAIVE_MAX_SEQLEN = harness.pick(cpu=4096, gpu=16384)
# the CPU measures memory in a fresh subprocess per call (seconds each): only at these sizes
MEMORY_AT = {"attn_fwd": {2048, 8192}, "attn_fwd_bwd": {4096}}
# A decoding step: one new query against a KV cache of cache_len keys, grouped heads as in
# the e2e model (batch, nheads, nheads_k, cache_len, head_dim). CPU only: there the torch
# path computes it as one tile, and per-call overhead, not arithmetic, sets its time.
DECODE_SHAPES = [(1, 8, 4, 512, 64), (1, 8, 4, 2048, 64)]
# (batch, nheads, nheads_k, cache_len, head_dim, queries): verifying 1 or 2 drafts
VERIFY_SHAPES = [(1, 8, 4, 512, 64, 2), (1, 8, 4, 512, 64, 3)]


def build_call(impl: str, shape: tuple, backward: bool, device: str, dtype: str):
    """A no-argument callable running one forward (and backward) of ``impl``."""
    batch, nheads, seqlen, head_dim, causal = shape
    gen = torch.Generator().manual_seed(0)
    dt = getattr(torch, dtype)

    def rand(*size):
        return (
            torch.randn(*size, generator=gen).to(device=device, dtype=dt).requires_grad_(backward)
        )

    # ours takes flash layout (B, S, H, D); SDPA and naive take (B, H, S, D)
    flash_layout = impl.startswith("flashattn_lite")
    size = (batch, seqlen, nheads, head_dim) if flash_layout else (batch, nheads, seqlen, head_dim)
    q, k, v, grad = rand(*size), rand(*size), rand(*size), rand(*size).detach()

    if flash_layout:
        backend = impl.split(".")[1]
        attend = lambda: flashattn_lite.flash_attn_func(q, k, v, causal=causal, backend=backend)
    elif impl == "naive":
        scale = head_dim**-0.5

        def attend():
            scores = (q @ k.transpose(-1, -2)) * scale  # (B, H, S, S): the whole matrix
            if causal:
                scores = scores.masked_fill(
                    torch.ones_like(scores, dtype=torch.bool).triu(1), -torch.inf
                )
            return torch.softmax(scores, dim=-1) @ v
    else:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        kernels = {
            "F.sdpa": None,
            "F.sdpa[flash]": SDPBackend.FLASH_ATTENTION,
            "F.sdpa[cudnn]": SDPBackend.CUDNN_ATTENTION,
        }[impl]

        def attend():
            if kernels is None:
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            with sdpa_kernel(kernels):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    if not backward:

        def call():
            with torch.no_grad():
                return attend()

        return call
    return lambda: torch.autograd.grad(attend(), (q, k, v), grad)


# Steady-state extra memory of one call: a small warm-up call first (thread pools, BLAS
# buffers, kernel code pages are one-time costs a model pays once), then the peak RSS is
# reset (writing 5 to clear_refs) and measured over exactly one call at the real size.
# The warm-up has 512 tokens: two of the torch path's 256-row query blocks, so it runs
# the tiled loop (256 tokens would take its one-tile shortcut and leave the loop's
# first-use costs inside the measured call).
_MEMORY_SCRIPT = """
import json, sys
sys.path.insert(0, {bench_dir!r})
import bench_flashattn_lite as b

def status_kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])

shape = tuple({shape!r})
peak = 0  # the whole process's peak RSS (imports, inputs and the call), as `time -v` reports
b.build_call({impl!r}, shape[:2] + (512,) + shape[3:], {backward!r}, "cpu", "float32")()
fn = b.build_call({impl!r}, shape, {backward!r}, "cpu", "float32")
peak = status_kib("VmHWM:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM to the current RSS
before = status_kib("VmRSS:")
fn()
print(json.dumps({{"before_kib": before, "after_kib": status_kib("VmHWM:"), "process_kib": peak}}))
"""


def peak_memory_bytes(impl: str, shape: tuple, backward: bool) -> tuple[int | None, int | None]:
    """(extra peak memory of one call beyond its inputs, peak of the whole process).

    The first, after a small warm-up call, is what the call itself needs; the second (CPU
    only: peak RSS including the interpreter, torch and the inputs) is the figure the
    issue quotes for SDPA (~0.3 GB at seqlen 8192).
    """
    if ON_CUDA:
        call = build_call(impl, shape, backward, DEVICE, DTYPE)
        call()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        call()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, None
    # peak RSS never goes down, so each measurement needs a fresh process that has built
    # the inputs and then runs exactly one call
    bench_dir = os.path.dirname(os.path.abspath(__file__))
    script = _MEMORY_SCRIPT.format(
        bench_dir=bench_dir, impl=impl, shape=list(shape), backward=backward
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0 or not os.path.exists("/proc/self/status"):
        return None, None
    rss = json.loads(result.stdout.strip().splitlines()[-1])
    process = max(rss["process_kib"], rss["after_kib"])
    return 1024 * (rss["after_kib"] - rss["before_kib"]), 1024 * process


def _flops(shape: tuple, backward: bool) -> float:
    batch, nheads, seqlen, head_dim, causal = shape
    forward = 4 * batch * nheads * seqlen * seqlen * head_dim / (2 if causal else 1)
    return forward * (3.5 if backward else 1.0)  # backward does 2.5x the forward's matmuls


def _run(benchmark, impl: str, shape: tuple, case: str, backward: bool) -> None:
    if impl == "flashattn_lite.triton" and not ON_CUDA:
        pytest.skip("the Triton kernels are timed on CUDA only")
    if impl.startswith("F.sdpa[") and not ON_CUDA:
        pytest.skip("SDPA backend selection is timed on CUDA only")
    if impl == "naive" and shape[2] > NAIVE_MAX_SEQLEN:
        pytest.skip(f"naive attention only up to seqlen {NAIVE_MAX_SEQLEN} (quadratic memory)")
    batch, nheads, seqlen, head_dim, causal = shape
    call = build_call(impl, shape, backward, DEVICE, DTYPE)
    # ours alternated with SDPA in this process (few pairs where a call takes seconds)
    paired = build_call(PEER, shape, backward, DEVICE, DTYPE) if impl == OURS else None
    pairs = PAIRS.get(seqlen, 3) if PAIRS else 20
    harness.measure(
        benchmark,
        call,
        package=PACKAGE,
        case=case,
        impl=impl,
        peer="" if impl != OURS else PEER,
        dtype=DTYPE,
        params={
            "batch": batch,
            "nheads": nheads,
            "seqlen": seqlen,
            "head_dim": head_dim,
            "causal": causal,
        },
        device=DEVICE,
        work=batch * seqlen,
        work_unit="token",
        flops=_flops(shape, backward),
        rounds=None if ROUNDS is None else ROUNDS.get(seqlen, 3),
        paired_peer=paired,
        paired_rounds=pairs,
        warmup=1,
    )
    if ON_CUDA or seqlen in MEMORY_AT[case]:
        peak, process_peak = peak_memory_bytes(impl, shape, backward)
        benchmark.extra_info["peak_mem_bytes"] = peak
        benchmark.extra_info["process_peak_rss_bytes"] = process_peak
        print(f"\n{case} {impl} seqlen={seqlen}: peak extra memory {peak and peak / 2**20:.1f} MiB")


def _ids(shapes):
    return [f"b{b}-h{h}-s{s}-d{d}-{'causal' if c else 'full'}" for b, h, s, d, c in shapes]


@pytest.mark.parametrize("shape", FWD_SHAPES, ids=_ids(FWD_SHAPES))
@pytest.mark.parametrize("impl", IMPLS)
def test_attn_fwd(benchmark, impl, shape):
    _run(benchmark, impl, shape, "attn_fwd", backward=False)


@pytest.mark.parametrize("shape", FWD_BWD_SHAPES, ids=_ids(FWD_BWD_SHAPES))
@pytest.mark.parametrize("impl", IMPLS)
def test_attn_fwd_bwd(benchmark, impl, shape):
    _run(benchmark, impl, shape, "attn_fwd_bwd", backward=True)


def build_decode_call(impl: str, shape: tuple, queries: int = 1):
    """One decoding step's attention of ``impl`` (no grad), on the CPU in float32.

    ``queries`` new positions attend to the ``cache_len`` keys, the last ``queries`` of
    which are their own: 1 is a plain decoding step, 2-3 the verification of 1-2 draft
    tokens in speculative decoding (causal among the new positions).
    """
    batch, nheads, nheads_k, cache_len, head_dim = shape
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(batch, queries, nheads, head_dim, generator=gen)  # flash layout (B, S, H, D)
    k = torch.randn(batch, cache_len, nheads_k, head_dim, generator=gen)
    v = torch.randn(batch, cache_len, nheads_k, head_dim, generator=gen)
    if impl == OURS:  # bottom-right causal: query i sees keys 0 .. cache_len - queries + i
        attend = lambda: flashattn_lite.flash_attn_func(q, k, v, causal=True, backend="torch")
    else:
        qs, ks, vs = (t.transpose(1, 2) for t in (q, k, v))  # SDPA layout (B, H, S, D)
        # SDPA's is_causal is top-left aligned: the bottom-right band as a mask, built
        # once here (a model builds it once per forward, not per layer)
        mask = None
        if queries > 1:
            mask = torch.ones(queries, cache_len, dtype=torch.bool).tril(cache_len - queries)
        attend = lambda: F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, enable_gqa=True)

    def call():
        with torch.no_grad():
            return attend()

    return call


def _measure_cached_step(benchmark, impl: str, case: str, shape: tuple, queries: int) -> None:
    """Time ``queries`` new positions against a KV cache (``build_decode_call``), ours
    alternated with SDPA; ``case`` names the row (``attn_decode`` / ``attn_verify``)."""
    batch, nheads, nheads_k, cache_len, head_dim = shape
    params = {
        "batch": batch,
        "nheads": nheads,
        "nheads_k": nheads_k,
        "cache_len": cache_len,
        "head_dim": head_dim,
    }
    if queries > 1:
        params["queries"] = queries
    harness.measure(
        benchmark,
        build_decode_call(impl, shape, queries),
        package=PACKAGE,
        case=case,
        impl=impl,
        peer="" if impl != OURS else PEER,
        dtype=DTYPE,
        params=params,
        device=DEVICE,
        work=batch * queries,
        work_unit="token",
        flops=4 * batch * nheads * queries * cache_len * head_dim,
        paired_peer=build_decode_call(PEER, shape, queries) if impl == OURS else None,
        paired_rounds=200,
    )


@pytest.mark.parametrize(
    "shape",
    DECODE_SHAPES,
    ids=[f"b{b}-h{h}:{hk}-cache{s}-d{d}" for b, h, hk, s, d in DECODE_SHAPES],
)
@pytest.mark.parametrize("impl", [OURS, PEER])
def test_attn_decode(benchmark, impl, shape):
    if ON_CUDA:
        pytest.skip("the decoding step is timed on the CPU only (the torch path's one-tile case)")
    _measure_cached_step(benchmark, impl, "attn_decode", shape, queries=1)


@pytest.mark.parametrize(
    "shape",
    VERIFY_SHAPES,
    ids=[f"b{b}-h{h}:{hk}-cache{s}-d{d}-q{n}" for b, h, hk, s, d, n in VERIFY_SHAPES],
)
@pytest.mark.parametrize("impl", [OURS, PEER])
def test_attn_verify(benchmark, impl, shape):
    if ON_CUDA:
        pytest.skip("the verification step is timed on the CPU only (the one-tile case)")
    _measure_cached_step(benchmark, impl, "attn_verify", shape[:5], queries=shape[5])
