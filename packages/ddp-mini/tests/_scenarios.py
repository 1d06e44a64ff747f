"""Functions the pool workers run: ``fn(rank, *args)``; results are compared in the tests.

Every rank builds its inputs from seeds, so each can also rebuild what the other ranks
hold and compute the single-process reference itself.
"""

from __future__ import annotations

import copy
from typing import Any

import ddp_mini
import torch
import torch.distributed as dist
from _pool import group
from torch import nn

# ----------------------------------------------------------------------------- ring


def rank_data(seed: int, rank: int, size: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * seed + rank)
    return torch.randn(size, generator=g, dtype=torch.float64).to(dtype)


def ring_sum_errors(
    rank: int, sizes: list[int], worlds: list[int], segment_bytes: int, stepwise: bool = False
) -> dict | None:
    """max |ring - float64 sum| for every (size, world); float64 inputs, op sum and avg.

    ``segment_bytes`` sets the pipelined ring's message size (small: many segments per
    chunk, uneven last segments); ``stepwise`` runs the readable reference schedule.
    """
    import ddp_mini.ring as ring_module

    default = ring_module.SEGMENT_BYTES
    ring_module.SEGMENT_BYTES = segment_bytes
    if stepwise:
        original = ring_module._ring_sum_pipelined
        ring_module._ring_sum_pipelined = ring_module._ring_sum_stepwise
    try:
        return _ring_sum_errors(rank, sizes, worlds)
    finally:
        ring_module.SEGMENT_BYTES = default
        if stepwise:
            ring_module._ring_sum_pipelined = original


def _ring_sum_errors(rank: int, sizes: list[int], worlds: list[int]) -> dict:
    out: dict = {}
    for world in worlds:
        pg = group(world)
        if pg is None:
            continue
        for size in sizes:
            for op in ("sum", "avg"):
                t = rank_data(size, rank, size, torch.float64)
                ddp_mini.ring_allreduce(t, op=op, group=pg)
                want = sum(rank_data(size, r, size, torch.float64) for r in range(world))
                if op == "avg":
                    want = want / world
                out[(size, world, op)] = (t - want).abs().max().item() if size else 0.0
    return out


def ring_vs_native(rank: int, key: Any, size: int, dtype_name: str) -> dict | None:
    """Ring and dist.all_reduce on the same low-precision data, plus the float64 sum."""
    pg = group(key)
    if pg is None:
        return None
    dtype = getattr(torch, dtype_name)
    world = dist.get_world_size(pg)
    ours = rank_data(size, rank, size, dtype)
    native = ours.clone()
    ddp_mini.ring_allreduce(ours, group=pg)
    dist.all_reduce(native, group=pg)
    ranks = dist.get_process_group_ranks(pg)
    exact = sum(rank_data(size, r, size, dtype).double() for r in ranks)
    return {
        "world": world,
        "ours_err": (ours.double() - exact).abs().max().item(),
        "native_err": (native.double() - exact).abs().max().item(),
        "identical": torch.equal(ours, native),
        "dtype": str(ours.dtype),
    }


def ring_non_contiguous(rank: int) -> float | None:
    pg = group(3)
    if pg is None:
        return None
    base = torch.arange(35, dtype=torch.float32).view(5, 7) * (rank + 1)
    view = base.t()  # (7, 5) non-contiguous
    ddp_mini.ring_allreduce(view, group=pg)
    want = torch.arange(35, dtype=torch.float32).view(5, 7) * 6  # 1 + 2 + 3
    return (base - want).abs().max().item()


# ----------------------------------------------------------------------------- DDP


class Net(nn.Module):
    """Awkward sizes (primes), an unused branch for find_unused_parameters tests."""

    def __init__(self, batchnorm: bool = False) -> None:
        super().__init__()
        self.embed = nn.Linear(5, 13)
        self.norm = nn.BatchNorm1d(13) if batchnorm else nn.Identity()
        self.hidden = nn.Linear(13, 7)
        self.head = nn.Linear(7, 3)
        self.spare = nn.Linear(7, 3)  # used only when forward asks for it

    def forward(self, x: torch.Tensor, use_spare: bool = True) -> torch.Tensor:
        h = torch.tanh(self.hidden(torch.tanh(self.norm(self.embed(x)))))  # (B, 7)
        out = self.head(h)  # (B, 3)
        if use_spare:
            out = out + 0.5 * self.spare(h)
        return out


def batches(world: int, steps: int, micro: int, per_rank: int):
    """Global batches of shape (micro, world * per_rank, 5); the same on every rank."""
    g = torch.Generator().manual_seed(1234)
    for _ in range(steps):
        x = torch.randn(micro, world * per_rank, 5, generator=g, dtype=torch.float64)
        y = torch.randn(micro, world * per_rank, 3, generator=g, dtype=torch.float64)
        yield x, y


def train_compare(rank: int, key: Any, cfg: dict) -> dict | None:
    """ddp-mini vs torch DDP vs one process on the whole batch, SGD with momentum.

    cfg: ours (kwargs for ddp_mini), steps, micro (no_sync accumulation length),
    per_rank, batchnorm, spare_on (ranks whose forward uses the spare head), dtype,
    torch_hook ("fp16"/"bf16" for torch's compression hooks).
    """
    pg = group(key)
    if pg is None:
        return None
    world, me = dist.get_world_size(pg), dist.get_rank(pg)
    dtype = getattr(torch, cfg.get("dtype", "float64"))
    steps, micro, per_rank = cfg.get("steps", 4), cfg.get("micro", 1), cfg.get("per_rank", 3)
    spare_on = cfg.get("spare_on", "all")
    ours_kwargs = dict(cfg.get("ours", {}))
    find_unused = ours_kwargs.get("find_unused_parameters", False)

    torch.manual_seed(100 + rank)  # every rank starts elsewhere; rank 0's init must win
    model = Net(cfg.get("batchnorm", False)).to(dtype)
    torch.manual_seed(100 + dist.get_global_rank(pg, 0))
    reference = Net(cfg.get("batchnorm", False)).to(dtype)  # rank 0's init, one process
    peer_model = copy.deepcopy(model)

    ours = ddp_mini.DistributedDataParallel(model, process_group=pg, **ours_kwargs)
    peer = nn.parallel.DistributedDataParallel(
        peer_model,
        process_group=pg,
        bucket_cap_mb=ours_kwargs.get("bucket_cap_mb", 25.0),
        find_unused_parameters=find_unused,
        broadcast_buffers=ours_kwargs.get("broadcast_buffers", True),
    )
    hook = cfg.get("torch_hook")
    if hook is not None:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        torch_hook = getattr(default_hooks, f"{hook}_compress_hook")

        def same_hook_other_name(state, bucket):  # torch refuses bf16 by name on CPU
            return torch_hook(state, bucket)

        peer.register_comm_hook(pg, same_hook_other_name)
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (ours, peer, reference)]

    def uses_spare(r: int) -> bool:
        return spare_on == "all" or r in spare_on

    sl = slice(me * per_rank, (me + 1) * per_rank)
    for x, y in batches(world, steps, micro, per_rank):
        x, y = x.to(dtype), y.to(dtype)
        for m, opt in zip((ours, peer), opts[:2], strict=True):
            opt.zero_grad()
            for i in range(micro):
                ctx = m.no_sync() if i < micro - 1 else _null()
                with ctx:
                    loss = (m(x[i, sl], use_spare=uses_spare(me)) - y[i, sl]).pow(2).mean()
                    (loss / micro).backward()
            opt.step()
        # reference: every rank's loss on its slice, averaged over ranks and micro-steps
        opts[2].zero_grad()
        for i in range(micro):
            for r in range(world):
                rs = slice(r * per_rank, (r + 1) * per_rank)
                out = reference(x[i, rs], use_spare=uses_spare(r))
                ((out - y[i, rs]).pow(2).mean() / (micro * world)).backward()
        if not cfg.get("gradient_average_reference", True):
            for p in reference.parameters():
                if p.grad is not None:
                    p.grad.mul_(world)
        opts[2].step()

    def state(m: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in m.state_dict().items()}

    return {
        "ours": state(ours.module),
        "peer": state(peer.module),
        "reference": state(reference),
        "grads_ours": {n: p.grad for n, p in ours.module.named_parameters()},
        "grads_peer": {n: p.grad for n, p in peer.module.named_parameters()},
    }


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def unused_without_flag(rank: int, key: Any) -> str | None:
    """find_unused_parameters=False and the spare head unused on every rank."""
    pg = group(key)
    if pg is None:
        return None
    torch.manual_seed(0)
    ddp = ddp_mini.DistributedDataParallel(Net(), process_group=pg)
    x = torch.randn(4, 5)
    try:
        ddp(x, use_spare=False).sum().backward()
    except RuntimeError as err:
        message = str(err)
    else:
        return "no error"
    # the wrapper is usable again once the model uses every parameter
    ddp(x, use_spare=True).sum().backward()
    return message


def unused_on_one_rank(rank: int) -> None:
    """Spawned (2 ranks): rank 1 skips the spare head, find_unused_parameters=False."""
    torch.manual_seed(0)
    ddp = ddp_mini.DistributedDataParallel(Net())
    for _ in range(3):
        ddp(torch.randn(4, 5), use_spare=rank == 0).sum().backward()


def tiny_llama_compare(rank: int, find_unused: bool) -> float | None:
    """A transformers Llama under bf16 autocast with AdamW: ddp-mini vs torch DDP."""
    pg = group(2)
    if pg is None:
        return None
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    ours_model = LlamaForCausalLM(config)
    peer_model = copy.deepcopy(ours_model)
    kwargs = dict(process_group=pg, bucket_cap_mb=0.01, find_unused_parameters=find_unused)
    ours = ddp_mini.DistributedDataParallel(ours_model, **kwargs)
    peer = nn.parallel.DistributedDataParallel(peer_model, **kwargs)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (ours, peer)]
    g = torch.Generator().manual_seed(rank)
    for _ in range(3):
        ids = torch.randint(0, 97, (2, 17), generator=g)  # (B, T)
        for m, opt in zip((ours, peer), opts, strict=True):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = m(ids).logits  # (B, T, V) ModelOutput field
            loss = nn.functional.cross_entropy(
                logits.float()[:, :-1].flatten(0, 1), ids[:, 1:].flatten()
            )
            loss.backward()
            opt.step()
    pairs = zip(ours_model.parameters(), peer_model.parameters(), strict=True)
    return max((a - b).abs().max().item() for a, b in pairs)


# ----------------------------------------------------------------------------- divergent ranks

FAST_FAIL_S = 10.0  # a regression that leaves a rank out of a collective fails this fast
_FAST_GROUPS: dict[Any, Any] = {}


def fast_fail_pair() -> Any:
    """Ranks 0 and 1 with a 10 s collective timeout (made once per worker, on every rank)."""
    import datetime

    if "pair" not in _FAST_GROUPS:  # new_group is collective: every worker calls it here
        timeout = datetime.timedelta(seconds=FAST_FAIL_S)
        _FAST_GROUPS["pair"] = dist.new_group(ranks=[0, 1], timeout=timeout)
    return _FAST_GROUPS["pair"] if dist.get_rank() in (0, 1) else None


class Branches(nn.Module):
    """A trunk, two heads and a parameter-free output; forward computes the heads asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(5, 7)
        self.left = nn.Linear(7, 3)
        self.right = nn.Linear(7, 2)

    def forward(self, x: torch.Tensor, heads: tuple[str, ...] = ("left", "right")) -> dict:
        out = {"free": x.pow(2).sum(-1)}  # (B,) reaches the input only, no parameter
        if heads:
            h = torch.tanh(self.trunk(x))  # (B, 7)
            for name in heads:
                out[name] = getattr(self, name)(h)  # (B, 3) / (B, 2)
        return out


# step name -> per rank: (heads forward computes, outputs the loss uses, extra forward first)
DIVERGENT_STEPS: dict[str, tuple[tuple, tuple]] = {
    "same": ((("left", "right"), ("left", "right"), None),) * 2,
    # rank 1's loss reaches no parameter although its forward reached them all
    "rank1-no-grad": (
        (("left", "right"), ("left", "right", "free"), None),
        (("left", "right"), ("free",), None),
    ),
    # rank 1's forward reaches no parameter at all
    "rank1-no-params-in-forward": (
        (("left", "right"), ("left", "right"), None),
        ((), ("free",), None),
    ),
    # each rank's loss uses the other head (both heads computed)
    "other-heads": ((("left", "right"), ("left",), None), (("left", "right"), ("right",), None)),
    # rank 1 does not compute the right head at all
    "rank1-skips-head": (
        (("left", "right"), ("left", "right"), None),
        (("left",), ("left",), None),
    ),
    # nobody's loss reaches a parameter: nothing is reduced, .grad stays None (as torch)
    "nobody": ((("left", "right"), ("free",), None),) * 2,
    # rank 0 runs a forward without backward first (evaluation with grad enabled) in
    # which the right head is unused: that must start no all-reduce
    "rank0-forward-only-first": (
        (("left", "right"), ("left", "right"), ("left",)),
        (("left", "right"), ("right",), None),
    ),
}


def divergent_backward(
    rank: int, steps: list[str], ours_kwargs: dict, with_peer: bool = True
) -> dict | None:
    """ddp-mini vs torch DDP vs one process, find_unused_parameters=True, divergent ranks.

    Runs ``steps`` (keys of DIVERGENT_STEPS) in order, one momentum-SGD step each, on a
    2-rank group with a short timeout. The one-process reference runs every rank's
    forward and loss itself (inputs are seeded per rank) and sums the losses / world.
    ``with_peer=False`` leaves torch DDP out (it hangs in "rank1-no-params-in-forward").
    Returns every model's gradients after every step and the final parameters.
    """
    pg = fast_fail_pair()
    if pg is None:
        return None
    world = dist.get_world_size(pg)
    torch.manual_seed(7)
    reference = Branches().double()  # rank 0's initialisation, one process
    torch.manual_seed(7 + rank)  # different initialisations: rank 0's must win
    ours_model = Branches().double()
    models = {"ours": ours_model, "reference": reference}
    cap = ours_kwargs.get("bucket_cap_mb", 25.0)
    wrapped = {
        "ours": ddp_mini.DistributedDataParallel(
            ours_model, process_group=pg, find_unused_parameters=True, **ours_kwargs
        )
    }
    if with_peer:
        models["peer"] = copy.deepcopy(ours_model)
        wrapped["peer"] = nn.parallel.DistributedDataParallel(
            models["peer"], process_group=pg, find_unused_parameters=True, bucket_cap_mb=cap
        )
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for k, m in models.items()}
    gens = [torch.Generator().manual_seed(50 + r) for r in range(world)]
    grads: list[dict] = []
    for name in steps:
        xs = [torch.randn(4, 5, generator=gen, dtype=torch.float64) for gen in gens]
        heads, used, extra = DIVERGENT_STEPS[name][rank]
        for label, m in wrapped.items():
            opts[label].zero_grad()
            if extra is not None:
                m(xs[rank], heads=extra)  # output discarded, no backward
            out = m(xs[rank].clone().requires_grad_(), heads=heads)
            sum(out[k].sum() for k in used).backward()
        opts["reference"].zero_grad()
        for r in range(world):
            r_heads, r_used, _ = DIVERGENT_STEPS[name][r]
            out = reference(xs[r].clone().requires_grad_(), heads=r_heads)
            (sum(out[k].sum() for k in r_used) / world).backward()
        for opt in opts.values():
            opt.step()
        grads.append(
            {
                label: {
                    n: None if p.grad is None else p.grad.clone() for n, p in m.named_parameters()
                }
                for label, m in models.items()
            }
        )
    return {
        "grads": grads,
        **{label: {k: v.clone() for k, v in m.state_dict().items()} for label, m in models.items()},
    }


def no_param_reached_without_flag(rank: int) -> None:
    """Spawned (2 ranks): rank 1's loss reaches no parameter, find_unused_parameters=False."""
    torch.manual_seed(0)
    ddp = ddp_mini.DistributedDataParallel(Branches())
    for _ in range(2):
        out = ddp(torch.randn(4, 5).requires_grad_())
        (out["free"].sum() if rank == 1 else out["left"].sum() + out["right"].sum()).backward()
