"""Misuse raises what torch raises; bad settings and checkpoints raise clear errors."""

import amp_scaler
import pytest
import torch
from amp_scaler import GradScaler, StaticLossScaler


def _setup(scaler):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler.scale(model(torch.randn(4, 3)).sum()).backward()
    return model, opt


@pytest.mark.parametrize("make", [lambda: torch.amp.GradScaler("cpu"), GradScaler])
def test_double_unscale_raises_like_torch(make):
    scaler = make()
    _, opt = _setup(scaler)
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match=r"unscale_\(\) has already been called"):
        scaler.unscale_(opt)


@pytest.mark.parametrize("make", [lambda: torch.amp.GradScaler("cpu"), GradScaler])
def test_unscale_after_step_raises_like_torch(make):
    scaler = make()
    _, opt = _setup(scaler)
    scaler.step(opt)
    with pytest.raises(RuntimeError, match=r"unscale_\(\) is being called after step\(\)"):
        scaler.unscale_(opt)


@pytest.mark.parametrize("make", [lambda: torch.amp.GradScaler("cpu"), GradScaler])
def test_second_step_before_update_raises_like_torch(make):
    scaler = make()
    _, opt = _setup(scaler)
    scaler.step(opt)
    with pytest.raises(RuntimeError, match=r"step\(\) has already been called"):
        scaler.step(opt)
    scaler.update()  # and the next iteration is legal again
    _, opt = _setup(scaler)
    scaler.step(opt)


@pytest.mark.parametrize("make", [lambda: torch.amp.GradScaler("cpu"), GradScaler])
def test_closure_is_refused_like_torch(make):
    scaler = make()
    _, opt = _setup(scaler)
    with pytest.raises(RuntimeError, match="Closure use is not currently supported"):
        scaler.step(opt, closure=lambda: None)


@pytest.mark.parametrize("method", ["unscale_", "step", "update"])
def test_use_before_scale_raises(method):
    scaler = GradScaler()
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match=f"Attempted {method}.*scaler.scale"):
        getattr(scaler, method)(*([] if method == "update" else [opt]))


def test_step_with_no_grads_raises_like_torch():
    scaler = GradScaler()
    scaler.scale(torch.ones(()))
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="No inf checks were recorded for this optimizer"):
        scaler.step(opt)


def test_update_without_step_raises_like_torch():
    scaler = GradScaler()
    scaler.scale(torch.ones(()))
    with pytest.raises(RuntimeError, match="No inf checks were recorded prior to update"):
        scaler.update()


@pytest.mark.parametrize("make", [lambda: torch.amp.GradScaler("cpu"), GradScaler])
def test_fp16_grads_are_refused_like_torch(make):
    scaler = make()
    model = torch.nn.Linear(3, 2).half()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler.scale(model(torch.randn(4, 3).half()).float().sum()).backward()
    with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
        scaler.unscale_(opt)


def test_complex_grads_are_refused_with_a_clear_error():
    scaler = GradScaler()
    param = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    param.grad = torch.ones(3, dtype=torch.complex64)
    opt = torch.optim.SGD([param], lr=0.1)
    scaler.scale(torch.ones(()))
    with pytest.raises(TypeError, match="complex64"):
        scaler.unscale_(opt)
    assert torch.equal(param.grad, torch.ones(3, dtype=torch.complex64))  # untouched


def test_fp16_grads_allowed_on_request():
    scaler = GradScaler(init_scale=4.0, allow_fp16_grads=True)
    model = torch.nn.Linear(3, 2).half()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler.scale(model(torch.randn(4, 3).half()).float().sum()).backward()
    scaled = model.weight.grad.clone()
    assert scaler.step(opt) is True
    assert torch.equal(model.weight.grad, (scaled.float() / 4).half())


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"init_scale": 0.0}, ValueError, "init_scale"),
        ({"init_scale": -2.0}, ValueError, "init_scale"),
        ({"init_scale": float("inf")}, ValueError, "init_scale"),
        ({"init_scale": "cuda"}, TypeError, "init_scale.*device"),
        ({"growth_factor": 1.0}, ValueError, "growth_factor"),
        ({"growth_factor": -3.0}, ValueError, "growth_factor"),
        ({"backoff_factor": 1.0}, ValueError, "backoff_factor"),
        ({"backoff_factor": 0.0}, ValueError, "backoff_factor"),
        ({"backoff_factor": 1.5}, ValueError, "backoff_factor"),
        ({"growth_interval": 0}, ValueError, "growth_interval"),
        ({"growth_interval": 2.5}, TypeError, "growth_interval"),
        ({"enabled": "yes"}, TypeError, "enabled"),
        ({"min_scale": 0.0}, ValueError, "min_scale"),
        ({"min_scale": 2.0**20}, ValueError, "min_scale"),
        ({"max_scale": 1.0}, ValueError, "max_scale"),
        ({"hysteresis": 0}, ValueError, "hysteresis"),
    ],
)
def test_bad_settings(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        GradScaler(**kwargs)


def test_bad_setters():
    scaler = GradScaler()
    with pytest.raises(ValueError, match="growth_factor"):
        scaler.set_growth_factor(0.5)
    with pytest.raises(ValueError, match="backoff_factor"):
        scaler.set_backoff_factor(2.0)
    with pytest.raises(ValueError, match="growth_interval"):
        scaler.set_growth_interval(-1)


def test_bad_static_scale():
    with pytest.raises(ValueError, match="scale"):
        StaticLossScaler(0.0)
    with pytest.raises(TypeError, match="scale"):
        StaticLossScaler(None)


def test_bad_new_scale():
    scaler = GradScaler()
    scaler.scale(torch.ones(()))
    with pytest.raises(ValueError, match="new_scale"):
        scaler.update(-1.0)
    with pytest.raises(ValueError, match="new_scale"):
        scaler.update(torch.ones(2))
    with pytest.raises(ValueError, match="new_scale"):
        scaler.update(torch.ones((), requires_grad=True))


def test_scale_rejects_non_tensors():
    with pytest.raises(ValueError, match="outputs"):
        GradScaler().scale([torch.ones(1), 3.0])


def test_state_dict_missing_keys():
    sd = GradScaler().state_dict()
    del sd["_growth_tracker"]
    with pytest.raises(ValueError, match="_growth_tracker"):
        GradScaler().load_state_dict(sd)
    with pytest.raises(ValueError, match="hysteresis"):
        # ours (versioned) must carry its extension keys too
        GradScaler().load_state_dict(
            {k: v for k, v in GradScaler().state_dict().items() if k != "hysteresis"}
        )


def test_state_dict_other_version():
    sd = GradScaler().state_dict()
    sd["_amp_scaler_version"] = 99
    with pytest.raises(ValueError, match="version"):
        GradScaler().load_state_dict(sd)


def test_state_dict_empty_like_torch():
    with pytest.raises(RuntimeError, match="empty"):
        GradScaler().load_state_dict({})


def test_state_dict_bad_values_change_nothing():
    scaler = GradScaler(init_scale=8.0)
    sd = scaler.state_dict()
    sd["backoff_factor"] = 2.0
    with pytest.raises(ValueError, match="backoff_factor"):
        scaler.load_state_dict(sd)
    assert scaler.get_backoff_factor() == 0.5 and scaler.get_scale() == 8.0
    with pytest.raises(TypeError, match="state_dict"):
        scaler.load_state_dict([("scale", 1.0)])


def test_static_state_dict_errors():
    with pytest.raises(ValueError, match="scale"):
        StaticLossScaler(2.0).load_state_dict({"skipped_steps": 0})


def test_errors_name_the_public_types():
    assert amp_scaler.GradScaler is GradScaler
