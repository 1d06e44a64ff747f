"""state_dicts move between adamw_ref and torch.optim both ways, and training continues."""

import copy
import io
import os

import adamw_ref
import pytest
import torch
from helpers import assert_close_params, make_pair, run_pair


def _roundtrip_bytes(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("impl", ["reference", "foreach", "cpp", "triton"])
def test_torch_state_loads_into_ours_and_training_continues(impl, amsgrad):
    if impl == "triton":
        pytest.importorskip("triton")
        if os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("CPU tensors here; the kernel's own agreement tests run on the GPU")
    # torch trains 40 steps; a fresh adamw_ref.AdamW on a copy of its params loads its
    # state, then both continue 40 steps: they must stay together.
    _, _, peer, qs = make_pair("AdamW", "reference", torch.float64, amsgrad=amsgrad)
    ours_twin, ps_twin, _, _ = make_pair("AdamW", impl, torch.float64, amsgrad=amsgrad)
    run_pair(ours_twin, ps_twin, peer, qs, steps=40)  # ours_twin only keeps pace here
    ps = [q.detach().clone().requires_grad_() for q in qs]
    groups = _regroup(peer, ps)
    ours = adamw_ref.AdamW(groups, impl=impl)
    ours.load_state_dict(_roundtrip_bytes(peer.state_dict()))
    assert all(g["impl"] == impl for g in ours.param_groups)  # torch's dict has no "impl"
    run_pair(ours, ps, peer, qs, steps=40, start=40)
    assert_close_params(ps, qs, torch.float64, impl)


def _regroup(opt, params):
    """opt's group hyperparameters over new tensors (helpers.group_specs' slices)."""
    keep = ("lr", "betas", "eps", "weight_decay", "amsgrad")
    slices = [(0, 2), (2, 4), (4, 5)]
    return [
        dict({k: g[k] for k in keep}, params=params[a:b])
        for g, (a, b) in zip(opt.param_groups, slices, strict=True)
    ]


@pytest.mark.parametrize("cls_name", ["Adam", "AdamW"])
def test_our_state_loads_into_torch_and_training_continues(cls_name):
    ours, ps, peer, qs = make_pair(cls_name, "foreach", torch.float32, amsgrad=True)
    run_pair(ours, ps, peer, qs, steps=30)
    # a fresh torch optimizer takes over from ours
    qs2 = [p.detach().clone().requires_grad_() for p in ps]
    groups = _regroup(ours, qs2)
    peer2 = getattr(torch.optim, cls_name)(groups, foreach=False)
    peer2.load_state_dict(_roundtrip_bytes(ours.state_dict()))
    run_pair(peer2, qs2, peer, qs, steps=30, start=30)
    assert_close_params(qs2, qs, torch.float32, "reference")


def test_our_state_roundtrips_into_ours_exactly():
    ours, ps, peer, qs = make_pair("AdamW", "reference", torch.float32, maximize=True)
    run_pair(ours, ps, peer, qs, steps=25)
    saved = copy.deepcopy(ours.state_dict())
    twin_params = [p.detach().clone().requires_grad_() for p in ps]
    groups = _regroup(ours, twin_params)
    twin = adamw_ref.AdamW(groups, impl="foreach")
    twin.load_state_dict(saved)
    assert twin.param_groups[0]["maximize"] is True
    assert all(g["impl"] == "reference" for g in twin.param_groups)  # saved impl wins
    run_pair(twin, twin_params, ours, ps, steps=25, start=25)
    assert_close_params(twin_params, ps, torch.float32, "reference")


def test_adamw_stays_decoupled_after_loading_an_adam_state():
    p = torch.randn(3, requires_grad=True)
    adam = torch.optim.Adam([p.detach().clone().requires_grad_()])
    ours = adamw_ref.AdamW([p])
    ours.load_state_dict(adam.state_dict())
    assert ours.param_groups[0]["decoupled_weight_decay"] is True  # as torch.optim.AdamW


def test_state_has_torch_keys_and_dtypes():
    p = torch.randn(4, 3, requires_grad=True)
    p.grad = torch.randn_like(p)
    ours = adamw_ref.AdamW([p], amsgrad=True)
    ours.step()
    q = p.detach().clone().requires_grad_()
    q.grad = p.grad.clone()
    peer = torch.optim.AdamW([q], amsgrad=True)
    peer.step()
    assert set(ours.state[p]) == set(peer.state[q])
    for key, value in peer.state[q].items():
        assert ours.state[p][key].dtype == value.dtype
        assert ours.state[p][key].device == value.device
        assert ours.state[p][key].shape == value.shape
    assert set(peer.param_groups[0]) - set(ours.param_groups[0]) <= {
        "foreach", "fused", "capturable", "differentiable"
    }  # fmt: skip


def _trained(amsgrad=False):
    p = torch.randn(5, 2, requires_grad=True)
    p.grad = torch.randn_like(p)
    opt = adamw_ref.AdamW([p], amsgrad=amsgrad)
    opt.step()
    return opt


def test_load_rejects_wrong_moment_shape():
    sd = _trained().state_dict()
    sd["state"][0]["exp_avg"] = torch.zeros(3)
    target = _trained()
    before = target.state_dict()["state"][0]["exp_avg"].clone()
    with pytest.raises(ValueError, match="exp_avg"):
        target.load_state_dict(sd)
    torch.testing.assert_close(target.state_dict()["state"][0]["exp_avg"], before)


def test_load_rejects_missing_amsgrad_state():
    sd = _trained(amsgrad=True).state_dict()
    del sd["state"][0]["max_exp_avg_sq"]
    with pytest.raises(ValueError, match="max_exp_avg_sq"):
        _trained(amsgrad=True).load_state_dict(sd)


def test_load_rejects_wrong_group_count():
    sd = _trained().state_dict()
    sd["param_groups"] = sd["param_groups"] * 2
    with pytest.raises(ValueError, match="parameter groups"):
        _trained().load_state_dict(sd)


def test_load_rejects_wrong_param_count():
    sd = _trained().state_dict()
    sd["param_groups"][0]["params"] = [0, 1]
    with pytest.raises(ValueError, match="param_groups\\[0\\]"):
        _trained().load_state_dict(sd)


def test_load_rejects_non_state_dict():
    with pytest.raises(ValueError, match="state_dict"):
        _trained().load_state_dict({"params": []})
