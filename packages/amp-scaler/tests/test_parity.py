"""Step-for-step identity with torch.amp.GradScaler under random inf/NaN injection."""

import copy

import amp_scaler
import pytest
import torch
from amp_parity_helpers import (
    OPTIMIZERS,
    assert_same,
    injection_plan,
    torch_found_inf,
    torch_scaler,
    train,
)

CONFIGS = [
    {},  # torch's defaults (growth_interval=2000: the scale only ever backs off here)
    {"init_scale": 8.0, "growth_interval": 3},
    {"init_scale": 3.0, "growth_factor": 1.7, "backoff_factor": 0.3, "growth_interval": 2},
    {"init_scale": 2.0**20, "growth_factor": 4.0, "backoff_factor": 0.25, "growth_interval": 5},
]


@pytest.mark.parametrize("config", CONFIGS, ids=["defaults", "interval3", "odd", "x4"])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("seed", [0, 1])
def test_trajectory_matches_torch(config, optimizer, seed):
    plan = injection_plan(40, seed=seed)
    theirs, _, _ = train(
        torch_scaler(**config), ours=False, steps=40, plan=plan, optimizer=optimizer, seed=seed
    )
    ours, _, _ = train(
        amp_scaler.GradScaler(**config),
        ours=True,
        steps=40,
        plan=plan,
        optimizer=optimizer,
        seed=seed,
    )
    assert_same(ours, theirs)
    assert any(ours.skipped) and not all(ours.skipped)  # the plan exercised both branches
    assert ours.scales[-1] > 0


def test_scale_grows_to_float32_limit_without_inf():
    # Scales near float32's maximum: growth that would overflow is refused, as in torch.
    config = {"init_scale": 2.0**120, "growth_factor": 2.0**4, "growth_interval": 1}
    plan = injection_plan(12, seed=3, rate=0.0)
    theirs, _, _ = train(torch_scaler(**config), ours=False, steps=12, plan=plan)
    ours, _, _ = train(amp_scaler.GradScaler(**config), ours=True, steps=12, plan=plan)
    assert ours.scales == theirs.scales
    assert ours.scales[-1] == 2.0**124


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adamw_fused"])
def test_unscale_then_clip_matches_torch(optimizer):
    config = {"init_scale": 16.0, "growth_interval": 4}
    plan = injection_plan(30, seed=5)
    theirs, _, _ = train(
        torch_scaler(**config), ours=False, steps=30, plan=plan, optimizer=optimizer, clip=0.1
    )
    ours, _, _ = train(
        amp_scaler.GradScaler(**config),
        ours=True,
        steps=30,
        plan=plan,
        optimizer=optimizer,
        clip=0.1,
    )
    assert_same(ours, theirs)


@pytest.mark.parametrize("source", ["ours", "torch"])
@pytest.mark.parametrize("target", ["ours", "torch"])
def test_state_dict_resume_mid_run(source, target):
    """Save at step 17 and continue in a fresh scaler: same as the uninterrupted run."""
    config = {"init_scale": 32.0, "growth_factor": 3.0, "backoff_factor": 0.4, "growth_interval": 3}
    make = {
        "ours": lambda: amp_scaler.GradScaler(**config),
        "torch": lambda: torch_scaler(**config),
    }
    plan = injection_plan(40, seed=11)
    full, _, _ = train(torch_scaler(**config), ours=False, steps=40, plan=plan)

    first, model, opt = train(make[source](), ours=source == "ours", steps=17, plan=plan)
    saved = copy.deepcopy(first.state_dicts[-1])
    # a fresh scaler, constructed with other settings: the state_dict must win
    resumed = (
        amp_scaler.GradScaler(init_scale=1.0, growth_interval=99)
        if target == "ours"
        else torch.amp.GradScaler("cpu", init_scale=1.0, growth_interval=99)
    )
    resumed.load_state_dict(saved)
    second, _, _ = train(
        resumed, ours=target == "ours", steps=23, plan=plan, model=model, opt=opt, start=17
    )
    assert first.scales + second.scales == full.scales
    assert first.trackers + second.trackers == full.trackers
    assert first.skipped + second.skipped == full.skipped
    for a, b in zip(second.params, full.params, strict=True):
        assert torch.equal(a, b)


def test_state_dict_keys_include_torchs():
    ours = amp_scaler.GradScaler(init_scale=4.0)
    theirs = torch_scaler(init_scale=4.0)
    assert set(theirs.state_dict()) <= set(ours.state_dict())
    for key, value in theirs.state_dict().items():
        assert ours.state_dict()[key] == value
    assert amp_scaler.GradScaler(enabled=False).state_dict() == {}


def test_state_dict_resume_keeps_skip_counter_and_hysteresis():
    scaler = amp_scaler.GradScaler(init_scale=8.0, growth_interval=2, hysteresis=3)
    plan = [(0, 0, float("nan"))] * 2 + [None] * 3
    train(scaler, ours=True, steps=5, plan=plan)
    other = amp_scaler.GradScaler()
    other.load_state_dict(scaler.state_dict())
    assert other.skipped_steps == scaler.skipped_steps == 2
    assert other.hysteresis == 3
    assert other.get_hysteresis_tracker() == scaler.get_hysteresis_tracker()
    assert other.state_dict() == scaler.state_dict()


def _two_losses_two_optimizers(scaler, ours, plan, steps=25):
    torch.manual_seed(0)
    m0, m1 = torch.nn.Linear(5, 2), torch.nn.Linear(5, 2)
    o0 = torch.optim.SGD(m0.parameters(), lr=0.1)
    o1 = torch.optim.Adam(m1.parameters(), lr=1e-2)
    record = []
    for it in range(steps):
        gen = torch.Generator().manual_seed(it)
        x = torch.randn(3, 5, generator=gen)
        o0.zero_grad()
        o1.zero_grad()
        out0, out1 = m0(x), m1(x)
        loss0 = (out0 - out1).pow(2).mean()
        loss1 = (out1 + 0.5 * out0).abs().mean()
        # several losses, one scaled through the list path, retain_graph as in torch's docs
        scaled = scaler.scale([loss0, (loss1,)])
        scaled[0].backward(retain_graph=True)
        scaled[1][0].backward()
        if plan[it] is not None:
            _, index, value = plan[it]
            (m0 if index % 2 else m1).weight.grad.view(-1)[index] = value
        scaler.unscale_(o0)
        r0, r1 = scaler.step(o0), scaler.step(o1)
        if not ours:
            r0, r1 = not torch_found_inf(scaler, o0), not torch_found_inf(scaler, o1)
        scaler.update()
        record.append((r0, r1, scaler.get_scale(), scaler._get_growth_tracker()))
    return record, [p.detach().clone() for p in [*m0.parameters(), *m1.parameters()]]


def test_two_losses_two_optimizers_match_torch():
    plan = injection_plan(25, seed=7, rate=0.35)
    config = {"init_scale": 64.0, "growth_interval": 3}
    rec_t, p_t = _two_losses_two_optimizers(torch_scaler(**config), False, plan)
    rec_o, p_o = _two_losses_two_optimizers(amp_scaler.GradScaler(**config), True, plan)
    assert rec_o == rec_t
    assert any(not a and b for a, b, *_ in rec_o)  # one optimizer skipped, the other not
    for a, b in zip(p_o, p_t, strict=True):
        assert torch.equal(a, b)


def test_bf16_autocast_cpu_matches_torch():
    def run(scaler, ours):
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(11, 17), torch.nn.GELU(), torch.nn.Linear(17, 1)
        )
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        scales = []
        for it in range(12):
            gen = torch.Generator().manual_seed(it)
            x, y = torch.randn(8, 11, generator=gen), torch.randn(8, 1, generator=gen)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.mse_loss(model(x).float(), y)
            opt.zero_grad()
            scaler.scale(loss).backward()
            if it in (2, 3, 9):
                model[0].weight.grad[0, 0] = float("inf")
            scaler.step(opt)
            scaler.update()
            scales.append(scaler.get_scale())
        return scales, [p.detach().clone() for p in model.parameters()]

    config = {"init_scale": 1024.0, "growth_interval": 4}
    s_t, p_t = run(torch_scaler(**config), False)
    s_o, p_o = run(amp_scaler.GradScaler(**config), True)
    assert s_o == s_t
    for a, b in zip(p_o, p_t, strict=True):
        assert torch.equal(a, b)


def test_scale_of_nested_outputs_matches_torch():
    ours, theirs = amp_scaler.GradScaler(init_scale=3.0), torch_scaler(init_scale=3.0)
    outputs = [torch.randn(3), (torch.randn(2, 2, dtype=torch.bfloat16), [torch.randn(1)])]
    a, b = ours.scale(outputs), theirs.scale(outputs)
    assert type(a) is list and type(a[1]) is tuple and type(a[1][1]) is list
    for x, y in [(a[0], b[0]), (a[1][0], b[1][0]), (a[1][1][0], b[1][1][0])]:
        assert x.dtype == y.dtype and torch.equal(x, y)
    loss = torch.tensor(0.7, dtype=torch.bfloat16)
    assert ours.scale(loss).dtype == theirs.scale(loss).dtype  # promotion as in torch
    assert list(ours.scale(iter([torch.ones(2)])))[0].tolist() == [3.0, 3.0]


def test_disabled_is_a_pass_through():
    scaler = amp_scaler.GradScaler(enabled=False)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = model.weight.detach().clone()
    loss = model(torch.randn(4, 3)).sum()
    assert scaler.scale(loss) is loss
    loss.backward()
    grad = model.weight.grad.clone()
    scaler.unscale_(opt)
    assert torch.equal(model.weight.grad, grad)
    assert scaler.step(opt) is True
    scaler.update()
    assert torch.allclose(model.weight, before - 0.5 * grad)
    assert scaler.get_scale() == 1.0 and not scaler.is_enabled()
    assert scaler.state_dict() == {}
    scaler.load_state_dict({"anything": 1})  # no-op, like torch
