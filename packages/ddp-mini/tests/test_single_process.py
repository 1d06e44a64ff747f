"""In-process tests: bad input, bucket layout, overlap, world size 1 against torch DDP."""

from __future__ import annotations

import copy
import datetime

import ddp_mini
import pytest
import torch
import torch.distributed as dist
from ddp_mini.buckets import assign_buckets
from torch import nn


@pytest.fixture
def world1():
    """A one-rank gloo group in this process (an in-memory store: no port at all)."""
    dist.init_process_group(
        "gloo",
        store=dist.HashStore(),
        rank=0,
        world_size=1,
        timeout=datetime.timedelta(seconds=30),
    )
    yield dist.group.WORLD
    dist.destroy_process_group()


def mlp(seed: int = 0, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(dtype)


# ----------------------------------------------------------------------------- bad input


def test_no_process_group_is_a_clear_error():
    assert not dist.is_initialized()
    with pytest.raises(ValueError, match="process_group.*init_process_group"):
        ddp_mini.DistributedDataParallel(mlp())
    with pytest.raises(ValueError, match="group.*init_process_group"):
        ddp_mini.ring_allreduce(torch.ones(3))


def test_process_group_of_wrong_type(world1):
    with pytest.raises(TypeError, match="process_group must be"):
        ddp_mini.DistributedDataParallel(mlp(), process_group="world")


def test_module_must_be_a_module(world1):
    with pytest.raises(TypeError, match="module must be a torch.nn.Module, got Tensor"):
        ddp_mini.DistributedDataParallel(torch.ones(2))


def test_parameters_on_different_devices(world1):
    model = mlp()
    model[2].to("meta")  # a second device without needing a GPU
    with pytest.raises(ValueError, match="module must have all parameters.*meta"):
        ddp_mini.DistributedDataParallel(model)


@pytest.mark.parametrize("cap", [0, -1.0, float("nan")])
def test_bucket_cap_must_be_positive(world1, cap):
    with pytest.raises(ValueError, match="bucket_cap_mb must be > 0"):
        ddp_mini.DistributedDataParallel(mlp(), bucket_cap_mb=cap)


@pytest.mark.parametrize("cap", ["25", None, True])
def test_bucket_cap_must_be_a_number(world1, cap):
    with pytest.raises(TypeError, match="bucket_cap_mb must be a number"):
        ddp_mini.DistributedDataParallel(mlp(), bucket_cap_mb=cap)


def test_unknown_allreduce(world1):
    with pytest.raises(ValueError, match="allreduce must be one of.*'tree'"):
        ddp_mini.DistributedDataParallel(mlp(), allreduce="tree")


@pytest.mark.parametrize("compress", ["int8", "float16", 16])
def test_unknown_compress(world1, compress):
    with pytest.raises(ValueError, match="compress must be one of"):
        ddp_mini.DistributedDataParallel(mlp(), compress=compress)


@pytest.mark.parametrize(
    "flag", ["broadcast_buffers", "find_unused_parameters", "gradient_average", "overlap"]
)
def test_flags_must_be_bool(world1, flag):
    with pytest.raises(TypeError, match=f"{flag} must be a bool"):
        ddp_mini.DistributedDataParallel(mlp(), **{flag: "yes"})


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_ring_rejects_non_float(world1, dtype):
    with pytest.raises(TypeError, match="tensor must have a float dtype"):
        ddp_mini.ring_allreduce(torch.zeros(4, dtype=dtype))


def test_ring_rejects_non_tensor(world1):
    with pytest.raises(TypeError, match="tensor must be a torch.Tensor, got list"):
        ddp_mini.ring_allreduce([1.0, 2.0])


@pytest.mark.parametrize("op", ["max", "mean", "SUM"])
def test_ring_rejects_unknown_op(world1, op):
    with pytest.raises(ValueError, match="op must be one of"):
        ddp_mini.ring_allreduce(torch.ones(3), op=op)


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        ({"world_size": 0}, ValueError, "world_size must be an int >= 1"),
        ({"world_size": 2.0}, ValueError, "world_size must be an int >= 1"),
        ({"world_size": 2, "backend": ""}, ValueError, "backend must be"),
        ({"world_size": 2, "timeout": 0}, ValueError, "timeout must be > 0"),
        ({"world_size": 2, "join_timeout": -1}, ValueError, "join_timeout must be > 0"),
    ],
)
def test_spawn_rejects_bad_arguments(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        ddp_mini.spawn(print, **kwargs)


def test_spawn_rejects_non_callable():
    with pytest.raises(TypeError, match="fn must be callable"):
        ddp_mini.spawn("train.py", 2)


# ----------------------------------------------------------------------------- buckets


def test_bucket_assignment_tiny_huge_uneven():
    params = [torch.zeros(n) for n in (3, 10, 1, 7, 2)]  # float32: 12, 40, 4, 28, 8 bytes
    assert assign_buckets(params, 1e-9) == [[4], [3], [2], [1], [0]]
    assert assign_buckets(params, 1e12) == [[4, 3, 2, 1, 0]]
    # reverse order, closed once a bucket holds >= 30 bytes
    assert assign_buckets(params, 30) == [[4, 3], [2, 1], [0]]


def test_bucket_assignment_never_mixes_dtypes():
    params = [torch.zeros(4), torch.zeros(4, dtype=torch.float64), torch.zeros(4)]
    buckets = assign_buckets(params, 1e12)
    assert sorted(map(sorted, buckets)) == [[0, 2], [1]]


# ----------------------------------------------------------------------------- behaviour


def test_allreduce_starts_during_backward_when_overlapping(world1, monkeypatch):
    ready_at_launch = {}
    original = ddp_mini.DistributedDataParallel._launch

    for overlap in (True, False):
        ddp = ddp_mini.DistributedDataParallel(mlp(), bucket_cap_mb=1e-9, overlap=overlap)
        log = ready_at_launch.setdefault(overlap, [])

        def spy(self, bucket, log=log):
            log.append(sum(self._sync.ready))  # how many gradients existed at launch
            return original(self, bucket)

        monkeypatch.setattr(ddp_mini.DistributedDataParallel, "_launch", spy)
        ddp(torch.randn(4, 3, dtype=torch.float64)).sum().backward()
        monkeypatch.setattr(ddp_mini.DistributedDataParallel, "_launch", original)
    n = 4  # parameters, one bucket each
    assert ready_at_launch[True] == [1, 2, 3, 4]  # bucket k started with k+1 grads ready
    assert ready_at_launch[False] == [n] * n  # all after backward


@pytest.mark.parametrize("allreduce", ["native", "ring"])
def test_world_size_one_matches_torch_ddp(world1, allreduce):
    ours_model, peer_model = mlp(), mlp()
    ours = ddp_mini.DistributedDataParallel(ours_model, allreduce=allreduce, bucket_cap_mb=1e-4)
    peer = nn.parallel.DistributedDataParallel(peer_model)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (ours, peer)]
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        x = torch.randn(2, 7, 3, generator=g, dtype=torch.float64)
        for m, opt in zip((ours, peer), opts, strict=True):
            opt.zero_grad()
            with m.no_sync():
                m(x[0]).square().mean().backward()
            m(x[1]).square().mean().backward()
            opt.step()
    for a, b in zip(ours.module.parameters(), peer.module.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-14, rtol=0)


def test_wrapper_behaves_like_a_module(world1):
    model = mlp()
    ddp = ddp_mini.DistributedDataParallel(model)
    assert ddp.module is model
    assert list(ddp.state_dict()) == [f"module.{k}" for k in model.state_dict()]
    ddp.eval()
    assert not model.training
    with torch.no_grad():  # inference: no hooks armed, no error about missing grads
        out = ddp(torch.randn(2, 3, dtype=torch.float64))
    assert out.shape == (2, 2)


def test_calling_the_inner_module_does_not_synchronise(world1):
    model = mlp()
    ddp = ddp_mini.DistributedDataParallel(model)
    model(torch.randn(2, 3, dtype=torch.float64)).sum().backward()  # no error, local only
    grads = [p.grad.clone() for p in model.parameters()]
    ddp(torch.randn(2, 3, dtype=torch.float64)).sum().backward()
    assert all(not torch.equal(g, p.grad) for g, p in zip(grads, model.parameters(), strict=True))


def test_frozen_parameters_are_left_alone(world1):
    model = mlp()
    model[0].weight.requires_grad_(False)
    ddp = ddp_mini.DistributedDataParallel(model)  # no error about a missing gradient
    ddp(torch.randn(2, 3, dtype=torch.float64)).sum().backward()
    assert model[0].weight.grad is None and model[0].bias.grad is not None


def test_find_unused_reached_but_unused_output(world1):
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x):
            return self.a(x), self.b(x)

    ours = ddp_mini.DistributedDataParallel(TwoHeads(), find_unused_parameters=True)
    peer_model = copy.deepcopy(ours.module)
    peer = nn.parallel.DistributedDataParallel(peer_model, find_unused_parameters=True)
    x = torch.randn(4, 3)
    ours(x)[0].sum().backward()  # b is in the graph but the loss ignores it
    peer(x)[0].sum().backward()
    assert ours.module.b.weight.grad is None and peer.module.b.weight.grad is None
    torch.testing.assert_close(ours.module.a.weight.grad, peer.module.a.weight.grad)


def test_a_discarded_wrapper_is_freed_and_a_new_one_works(world1):
    import gc
    import weakref

    model = mlp()
    old = weakref.ref(ddp_mini.DistributedDataParallel(model))
    gc.collect()
    assert old() is None  # the hooks left on the parameters do not keep it alive
    ddp = ddp_mini.DistributedDataParallel(model)
    ddp(torch.randn(2, 3, dtype=torch.float64)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
