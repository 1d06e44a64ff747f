"""MasterWeights equals the manual fp32-master loop; works with both scalers; resumes."""

import copy

import pytest
import torch
from amp_scaler import GradScaler, MasterWeights


def _model(dtype, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.ReLU(), torch.nn.Linear(13, 3))
    return model.to(dtype)


def _batch(it, dtype):
    gen = torch.Generator().manual_seed(it)
    return torch.randn(4, 7, generator=gen).to(dtype), torch.randn(4, 3, generator=gen)


def _loss(model, it, dtype):
    x, y = _batch(it, dtype)
    return torch.nn.functional.mse_loss(model(x).float(), y)


OPTS = {
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2),
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("opt_name", sorted(OPTS))
@pytest.mark.parametrize("grad_hooks", [True, False])
def test_equals_manual_master_loop(dtype, opt_name, grad_hooks):
    # manual reference: fp32 masters stepped by the optimizer, rounded into the model
    ref_model = _model(dtype)
    masters = [p.detach().float().clone().requires_grad_(True) for p in ref_model.parameters()]
    ref_opt = OPTS[opt_name](masters)
    model = _model(dtype)
    mw = MasterWeights(OPTS[opt_name](model.parameters()), grad_hooks=grad_hooks)
    for it in range(6):
        ref_opt.zero_grad()
        for p in ref_model.parameters():
            p.grad = None
        _loss(ref_model, it, dtype).backward()
        for m, p in zip(masters, ref_model.parameters(), strict=True):
            m.grad = p.grad.float()
        ref_opt.step()
        with torch.no_grad():
            for m, p in zip(masters, ref_model.parameters(), strict=True):
                p.copy_(m)

        mw.zero_grad()
        _loss(model, it, dtype).backward()
        mw.step()
    for a, b in zip(model.parameters(), ref_model.parameters(), strict=True):
        assert a.dtype == dtype and torch.equal(a, b)
    for a, b in zip(mw.master_params(), masters, strict=True):
        assert a.dtype == torch.float32 and torch.equal(a, b)


def test_small_updates_survive_in_the_master():
    # bf16 cannot represent 1 + 1e-3: without masters the update is lost entirely
    p = torch.nn.Parameter(torch.ones(5, dtype=torch.bfloat16))
    mw = MasterWeights(torch.optim.SGD([p], lr=1e-3))
    for _ in range(10):
        mw.zero_grad()
        p.grad = -torch.ones(5, dtype=torch.bfloat16)  # set by hand: no hook, step() copies
        mw.step()
    master = next(mw.master_params())
    torch.testing.assert_close(master, torch.full((5,), 1.01), rtol=0, atol=1e-6)
    assert p[0].item() == 1.0078125  # bf16 nearest to 1.01


def test_gradient_accumulation_is_fp32():
    model = _model(torch.float16)
    mw = MasterWeights(torch.optim.SGD(model.parameters(), lr=0.1))
    for it in range(3):
        _loss(model, it, torch.float16).backward()
    assert all(p.grad is None for p in model.parameters())  # freed by the hooks
    ref = _model(torch.float16)
    expected = [torch.zeros(p.shape) for p in ref.parameters()]
    for it in range(3):
        for p in ref.parameters():
            p.grad = None
        _loss(ref, it, torch.float16).backward()
        for e, p in zip(expected, ref.parameters(), strict=True):
            e.add_(p.grad.float())
    for m, e in zip(mw.master_params(), expected, strict=True):
        assert torch.equal(m.grad, e)


@pytest.mark.parametrize("scaler_kind", ["ours", "torch"])
def test_with_scaler_fp16_skips_and_matches_across_scalers(scaler_kind):
    def run(kind):
        model = _model(torch.float16)
        mw = MasterWeights(torch.optim.AdamW(model.parameters(), lr=1e-2))
        scaler = (
            GradScaler(init_scale=2.0**10, growth_interval=2)
            if kind == "ours"
            else torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
        )
        scales = []
        for it in range(8):
            mw.zero_grad()
            scaler.scale(_loss(model, it, torch.float16)).backward()
            if it in (1, 5):
                next(mw.master_params()).grad[0, 0] = float("nan")
            scaler.unscale_(mw)
            torch.nn.utils.clip_grad_norm_(mw.master_params(), 1.0)
            scaler.step(mw)
            scaler.update()
            scales.append(scaler.get_scale())
        return scales, [p.detach().clone() for p in model.parameters()]

    scales, params = run(scaler_kind)
    ref_scales, ref_params = run("torch")
    assert scales == ref_scales
    assert scales[1] == 2.0**9  # the NaN step backed off
    assert all(torch.equal(a, b) for a, b in zip(params, ref_params, strict=True))


def test_fused_inner_optimizer_with_scaler():
    model = _model(torch.bfloat16)
    mw = MasterWeights(torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True))
    ref_model = _model(torch.bfloat16)
    ref = MasterWeights(torch.optim.AdamW(ref_model.parameters(), lr=1e-2))
    scaler, ref_scaler = GradScaler(init_scale=8.0), GradScaler(init_scale=8.0)
    for it in range(4):
        for m, s, o in ((model, scaler, mw), (ref_model, ref_scaler, ref)):
            o.zero_grad()
            s.scale(_loss(m, it, torch.bfloat16)).backward()
            assert s.step(o) is True
            s.update()
    for a, b in zip(mw.master_params(), ref.master_params(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)  # fused vs for-loop math


def test_state_dict_resume_exactly():
    def steps(mw, model, start, stop):
        for it in range(start, stop):
            mw.zero_grad()
            _loss(model, it, torch.bfloat16).backward()
            mw.step()

    model = _model(torch.bfloat16)
    mw = MasterWeights(torch.optim.AdamW(model.parameters(), lr=1e-2))
    steps(mw, model, 0, 4)
    saved = copy.deepcopy(mw.state_dict())
    steps(mw, model, 4, 8)

    other_model = _model(torch.bfloat16, seed=123)
    other = MasterWeights(torch.optim.AdamW(other_model.parameters(), lr=1e-2))
    other.load_state_dict(saved)
    steps(other, other_model, 4, 8)
    for a, b in zip(other_model.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(other.master_params(), mw.master_params(), strict=True):
        assert torch.equal(a, b)


def test_fp32_params_are_kept_as_is():
    model = _model(torch.bfloat16)
    norm = torch.nn.Parameter(torch.ones(3))
    mw = MasterWeights(torch.optim.SGD([*model.parameters(), norm], lr=0.1))
    assert any(p is norm for p in mw.master_params())
    assert len(mw.state_dict()["master_params"]) == 4


def test_rejects_non_optimizer():
    with pytest.raises(TypeError, match="optimizer"):
        MasterWeights([torch.nn.Parameter(torch.ones(2))])


def test_rejects_optimizer_that_stepped():
    p = torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16))
    opt = torch.optim.Adam([p])
    p.grad = torch.ones(2, dtype=torch.bfloat16)
    opt.step()
    with pytest.raises(ValueError, match="optimizer"):
        MasterWeights(opt)


def test_rejects_fp32_only_optimizer():
    with pytest.raises(ValueError, match="float16/bfloat16"):
        MasterWeights(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1))


def test_rejects_bad_grad_hooks():
    with pytest.raises(TypeError, match="grad_hooks"):
        MasterWeights(torch.optim.SGD(_model(torch.float16).parameters(), lr=0.1), grad_hooks=1)


def test_load_state_dict_errors():
    model = _model(torch.float16)
    mw = MasterWeights(torch.optim.SGD(model.parameters(), lr=0.1))
    good = mw.state_dict()
    with pytest.raises(ValueError, match="master_params"):
        mw.load_state_dict({"optimizer": good["optimizer"], "version": 1})
    with pytest.raises(ValueError, match="version"):
        mw.load_state_dict({**good, "version": 7})
    with pytest.raises(ValueError, match=r"master_params'\]\[0\]"):
        mw.load_state_dict({**good, "master_params": [torch.ones(2)] + good["master_params"][1:]})
    with pytest.raises(ValueError, match="master_params"):
        mw.load_state_dict({**good, "master_params": good["master_params"][:2]})
    with pytest.raises(TypeError, match="state_dict"):
        mw.load_state_dict(None)
