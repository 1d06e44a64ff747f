"""ddp-mini vs torch.distributed: ring all-reduce bandwidth, DDP step time, overlap.

Two ranks: this pytest process is rank 0 (so ``harness.measure`` times the real calls)
and one helper process is rank 1. Before every timed call rank 0 broadcasts a tiny
command tensor telling the helper which matching operation to run; that broadcast is
part of every timed call of every impl alike.

On the CPU (and with fewer than two GPUs) the group is gloo over loopback. With two or
more GPUs under the gpu preset it is NCCL with one GPU per rank; NCCL needs a GPU per
rank, so a single-GPU machine keeps to gloo.
"""

from __future__ import annotations

import datetime
import multiprocessing as mp
import os

import pytest
import torch
import torch.distributed as dist
from torch import nn

import harness

ddp_mini = pytest.importorskip("ddp_mini")

PACKAGE = "ddp-mini"
WORLD = 2
HOST = "127.0.0.1"
SIZES_MB = harness.pick(cpu=[1, 4, 16, 64], gpu=[1, 4, 16, 64, 256])
# the large model only where it runs on GPUs (NCCL); gloo keeps the CPU-sized one
TRAIN_CPU = {"width": 512, "depth": 6, "batch": 32, "bucket_cap_mb": 1.0}
TRAIN_GPU = {"width": 4096, "depth": 8, "batch": 64, "bucket_cap_mb": 25.0}
STOP, ALLREDUCE, SETUP_TRAIN, TRAIN_STEP = range(4)
ALLREDUCE_IMPLS = ["ring_allreduce", "dist.all_reduce"]
TRAIN_IMPLS = ["ddp-mini", "ddp-mini ring", "ddp-mini overlap=off", "torch DDP"]
# (case, impl row, model it runs, peer row): overlap=on/off is its own case so the report
# pairs them; its overlap=on row re-times the default ddp-mini model
TRAIN_ROWS = [
    ("train_step", "ddp-mini", "ddp-mini", "torch DDP"),
    ("train_step", "ddp-mini ring", "ddp-mini ring", "torch DDP"),
    ("train_step", "torch DDP", "torch DDP", ""),
    ("overlap", "ddp-mini overlap=on", "ddp-mini", "ddp-mini overlap=off"),
    ("overlap", "ddp-mini overlap=off", "ddp-mini overlap=off", ""),
]


def _use_nccl() -> bool:
    return harness.preset() == "gpu" and torch.cuda.device_count() >= WORLD


# ---------------------------------------------------------------------------- both ranks


class Mlp(nn.Module):
    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, width) -> (B, width)
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


class Worker:
    """The state both ranks keep: buffers per size and the wrapped training models."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cfg = TRAIN_GPU if device.type == "cuda" else TRAIN_CPU
        self.buffers: dict[int, torch.Tensor] = {}
        self.models: dict[str, tuple[nn.Module, torch.optim.Optimizer]] = {}
        self.batch: tuple[torch.Tensor, torch.Tensor] | None = None

    def allreduce(self, impl: int, numel: int) -> None:
        if numel not in self.buffers:
            g = torch.Generator().manual_seed(dist.get_rank())
            self.buffers[numel] = torch.randn(numel, generator=g).to(self.device)
        buf = self.buffers[numel]
        # both impls average (sum, then halve) so repeated calls keep the values bounded
        if ALLREDUCE_IMPLS[impl] == "ring_allreduce":
            ddp_mini.ring_allreduce(buf, op="avg")
        else:
            dist.all_reduce(buf)
            buf.div_(WORLD)

    def setup_train(self) -> None:
        cfg = self.cfg
        for impl in TRAIN_IMPLS:
            torch.manual_seed(0)
            model = Mlp(cfg["width"], cfg["depth"]).to(self.device)
            if impl == "torch DDP":
                wrapped = nn.parallel.DistributedDataParallel(
                    model, bucket_cap_mb=cfg["bucket_cap_mb"]
                )
            else:
                wrapped = ddp_mini.DistributedDataParallel(
                    model,
                    bucket_cap_mb=cfg["bucket_cap_mb"],
                    allreduce="ring" if impl == "ddp-mini ring" else "native",
                    overlap=impl != "ddp-mini overlap=off",
                )
            self.models[impl] = (wrapped, torch.optim.SGD(model.parameters(), lr=1e-4))
        g = torch.Generator().manual_seed(1 + dist.get_rank())
        x = torch.randn(cfg["batch"], cfg["width"], generator=g)
        self.batch = (x.to(self.device), torch.randn(x.shape, generator=g).to(self.device))

    def train_step(self, impl: int) -> None:
        model, opt = self.models[TRAIN_IMPLS[impl]]
        x, y = self.batch
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()

    def run(self, op: int, arg: int) -> None:
        if op == ALLREDUCE:
            self.allreduce(arg >> 40, arg & ((1 << 40) - 1))
        elif op == SETUP_TRAIN:
            self.setup_train()
        elif op == TRAIN_STEP:
            self.train_step(arg)


def _helper(port: int, nccl: bool, preset: str) -> None:
    """Rank 1: follow rank 0's commands until STOP."""
    harness.set_preset(preset)
    torch.set_num_threads(1)
    device = torch.device("cuda", 1) if nccl else torch.device("cpu")
    if nccl:
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=120)
    store = dist.TCPStore(HOST, port, WORLD, is_master=False, timeout=timeout)
    dist.init_process_group(
        "nccl" if nccl else "gloo", store=store, rank=1, world_size=WORLD, timeout=timeout
    )
    worker, command = Worker(device), torch.zeros(2, dtype=torch.int64, device=device)
    while True:
        dist.broadcast(command, src=0)
        op, arg = (int(v) for v in command.tolist())
        if op == STOP:
            break
        worker.run(op, arg)
    dist.destroy_process_group()


# ---------------------------------------------------------------------------- rank 0


class Duo:
    def __init__(self) -> None:
        nccl = _use_nccl()
        self.device = torch.device("cuda", 0) if nccl else torch.device("cpu")
        if nccl:
            torch.cuda.set_device(self.device)
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one core per rank: the two ranks share 2 cores
        timeout = datetime.timedelta(seconds=120)
        self.store = dist.TCPStore(
            HOST, 0, WORLD, is_master=True, wait_for_workers=False, timeout=timeout
        )
        ctx = mp.get_context("spawn")
        self.proc = ctx.Process(target=_helper, args=(self.store.port, nccl, harness.preset()))
        self.proc.start()
        dist.init_process_group(
            "nccl" if nccl else "gloo", store=self.store, rank=0, world_size=WORLD, timeout=timeout
        )
        self.worker = Worker(self.device)
        self.command = torch.zeros(2, dtype=torch.int64, device=self.device)

    def call(self, op: int, arg: int = 0) -> None:
        self.command[0], self.command[1] = op, arg
        dist.broadcast(self.command, src=0)
        self.worker.run(op, arg)

    def close(self) -> None:
        self.call(STOP)
        dist.destroy_process_group()
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.kill()
        torch.set_num_threads(self.threads)


@pytest.fixture(scope="module")
def duo():
    if os.environ.get("DDP_MINI_BENCH_SKIP"):
        pytest.skip("DDP_MINI_BENCH_SKIP is set")
    if dist.is_initialized():
        pytest.skip("a default process group already exists in this process")
    pair = Duo()
    yield pair
    pair.close()


def _device_name(duo: Duo) -> str:
    return "cuda" if duo.device.type == "cuda" else "cpu"


def _paired_rounds(size_mb: int) -> int:
    """Alternated pairs for one all-reduce size: about a second of calls at least.

    A 1 MB all-reduce takes 1-4 ms here, and one burst of load on the shared 2-vCPU
    machine shifts the median of 20 such pairs; 200 pairs keep the ratio stable.
    """
    return max(20, 200 // size_mb)


@pytest.mark.parametrize("size_mb", SIZES_MB)
@pytest.mark.parametrize("impl", ALLREDUCE_IMPLS)
def test_allreduce_bus_bandwidth(benchmark, duo, impl, size_mb):
    numel = size_mb * 2**20 // 4
    code = (ALLREDUCE_IMPLS.index(impl) << 40) | numel
    duo.call(ALLREDUCE, code)  # allocate the buffers outside the timing
    peer_code = (ALLREDUCE_IMPLS.index("dist.all_reduce") << 40) | numel
    paired = None if impl == "dist.all_reduce" else lambda: duo.call(ALLREDUCE, peer_code)
    bus_bytes = numel * 4 * 2 * (WORLD - 1) / WORLD  # what each rank must send
    harness.measure(
        benchmark,
        lambda: duo.call(ALLREDUCE, code),
        package=PACKAGE,
        case="allreduce_bus_bandwidth",
        impl=impl,
        peer="" if impl == "dist.all_reduce" else "dist.all_reduce",
        dtype="float32",
        params={"size_mb": size_mb, "world": WORLD, "backend": dist.get_backend(), "op": "avg"},
        device=_device_name(duo),
        work=bus_bytes,
        work_unit="B",
        paired_peer=paired,
        paired_rounds=_paired_rounds(size_mb),
    )


@pytest.fixture(scope="module")
def trained(duo):
    duo.call(SETUP_TRAIN)
    return duo


@pytest.mark.parametrize(
    "case, impl, model, peer", TRAIN_ROWS, ids=[f"{c}-{i}" for c, i, _, _ in TRAIN_ROWS]
)
def test_train_step(benchmark, trained, case, impl, model, peer):
    code = TRAIN_IMPLS.index(model)
    paired = None
    if peer:  # the peer row's model alternated with ours, same helper, same data
        peer_code = TRAIN_IMPLS.index(peer)
        paired = lambda: trained.call(TRAIN_STEP, peer_code)
    cfg = trained.worker.cfg
    params_count = cfg["depth"] * (cfg["width"] ** 2 + cfg["width"])
    harness.measure(
        benchmark,
        lambda: trained.call(TRAIN_STEP, code),
        package=PACKAGE,
        case=case,
        impl=impl,
        peer=peer,
        dtype="float32",
        params={**cfg, "world": WORLD, "parameters": params_count, "backend": dist.get_backend()},
        device=_device_name(trained),
        work=cfg["batch"] * WORLD,
        work_unit="sample",
        paired_peer=paired,
    )
