"""Peak memory of one attention forward+backward: naive vs tiled, as the sequence grows.

Each measurement runs in a fresh subprocess and reads the growth of its peak resident
set (``VmHWM``, Linux only) across one call, so the numbers are not polluted by earlier
calls. Naive attention grows with seqlen**2 (it keeps the probabilities for backward);
the tiled path grows with seqlen.

    python packages/flashattn-lite/examples/memory_scaling.py --seqlens 512 1024 2048
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, torch
import torch.nn.functional as F
from flashattn_lite import attention_reference, flash_attn_func

def peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

impl, seqlen, nheads, head_dim = {impl!r}, {seqlen}, {nheads}, {head_dim}
gen = torch.Generator().manual_seed(0)
shape = (1, seqlen, nheads, head_dim)
q, k, v = (torch.randn(shape, generator=gen).requires_grad_() for _ in range(3))
attend = {{
    "naive": lambda: attention_reference(q, k, v),
    "tiled": lambda: flash_attn_func(q, k, v, backend="torch"),
    "sdpa": lambda: F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))),
}}[impl]
before = peak_kib()
attend().sum().backward()
print(json.dumps(peak_kib() - before))
"""


def measure(impl: str, seqlen: int, nheads: int, head_dim: int) -> float:
    code = CHILD.format(impl=impl, seqlen=seqlen, nheads=nheads, head_dim=head_dim)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1]) / 1024  # MiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqlens", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--nheads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    args = parser.parse_args()
    print(f"{'seqlen':>7} {'naive MiB':>10} {'tiled MiB':>10} {'sdpa MiB':>10}")
    for seqlen in args.seqlens:
        impls = ("naive", "tiled", "sdpa")
        row = [measure(impl, seqlen, args.nheads, args.head_dim) for impl in impls]
        print(f"{seqlen:>7} " + " ".join(f"{x:>10.1f}" for x in row))


if __name__ == "__main__":
    main()
