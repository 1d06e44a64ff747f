"""min_scale, max_scale, hysteresis, the step() result, StaticLossScaler, pickling."""

import pickle
import random

import pytest
import torch
from amp_parity_helpers import injection_plan, train
from amp_scaler import GradScaler, ScaleState, StaticLossScaler, update_scale_reference


@pytest.mark.parametrize(
    "config",
    [
        {"init_scale": 64.0, "growth_interval": 2, "hysteresis": 3},
        {"init_scale": 8.0, "growth_interval": 3, "min_scale": 1.0},
        {"init_scale": 8.0, "growth_factor": 3.0, "growth_interval": 1, "max_scale": 100.0},
        {
            "init_scale": 2.0**10,
            "backoff_factor": 0.3,
            "growth_interval": 4,
            "hysteresis": 2,
            "min_scale": 0.5,
            "max_scale": 2.0**12,
        },
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_extended_rule_matches_python_reference(config, seed):
    """The sync-free tensor update equals the plain-Python rule, step for step."""
    rng = random.Random(seed)
    found_seq = [rng.random() < 0.45 for _ in range(60)]
    scaler = GradScaler(**config)
    scaler.scale(torch.ones(()))
    kw = {k: v for k, v in config.items() if k != "init_scale"}
    kw.setdefault("growth_factor", 2.0)
    kw.setdefault("backoff_factor", 0.5)
    state = ScaleState(config["init_scale"], 0, config.get("hysteresis", 1))
    for found in found_seq:
        scaler._update_scale_(torch.tensor(float(found)))
        state = update_scale_reference(state, found, **kw)
        assert scaler.get_scale() == state.scale
        assert scaler.get_growth_tracker() == state.growth_tracker
        assert scaler.get_hysteresis_tracker() == state.hysteresis_tracker
        if "min_scale" in config:
            assert state.scale >= config["min_scale"]
        if "max_scale" in config:
            assert state.scale <= config["max_scale"]


def test_min_scale_stops_a_nan_storm():
    plan = [(0, 0, float("nan"))] * 200
    free, _, _ = train(GradScaler(), ours=True, steps=200, plan=plan)
    floored, _, _ = train(GradScaler(min_scale=1.0), ours=True, steps=200, plan=plan)
    assert free.scales[-1] == 0.0  # 2**16 halved 200 times underflows float32
    assert floored.scales[-1] == 1.0
    assert all(floored.skipped)


def test_hysteresis_delays_backoff():
    plan = [(0, 0, float("inf"))] * 3 + [None] * 2
    t, _, _ = train(
        GradScaler(init_scale=16.0, hysteresis=2, growth_interval=2), ours=True, steps=5, plan=plan
    )
    assert t.scales == [16.0, 8.0, 4.0, 4.0, 8.0]  # first overflow tolerated
    assert t.skipped == [True, True, True, False, False]  # but every overflow skips


def test_hysteresis_one_is_torch():
    plan = injection_plan(30, seed=4)
    a, _, _ = train(GradScaler(init_scale=8.0, growth_interval=3), ours=True, steps=30, plan=plan)
    b, _, _ = train(
        torch.amp.GradScaler("cpu", init_scale=8.0, growth_interval=3),
        ours=False,
        steps=30,
        plan=plan,
    )
    assert a.scales == b.scales


def test_step_result_and_counters():
    plan = [None, (1, 2, float("nan")), None, (0, 1, float("inf"))]
    t, _, _ = train(GradScaler(init_scale=4.0), ours=True, steps=4, plan=plan)
    assert t.skipped == [False, True, False, True]
    assert [sd["skipped_steps"] for sd in t.state_dicts] == [0, 1, 1, 2]


@pytest.mark.parametrize("inject", [False, True])
def test_static_scaler(inject):
    plan = [(0, 0, float("nan")) if inject and i % 2 else None for i in range(6)]
    scaler = StaticLossScaler(128.0)
    t, _, _ = train(scaler, ours=True, steps=6, plan=plan)
    assert t.scales == [128.0] * 6
    assert t.skipped == [inject and i % 2 == 1 for i in range(6)]
    # and it equals a GradScaler that can never move: same parameters
    never = GradScaler(init_scale=128.0, growth_interval=10**9, min_scale=128.0)
    u, _, _ = train(never, ours=True, steps=6, plan=plan)
    for a, b in zip(t.params, u.params, strict=True):
        assert torch.equal(a, b)
    restored = StaticLossScaler(1.0)
    restored.load_state_dict(scaler.state_dict())
    assert restored.get_scale() == 128.0 and restored.skipped_steps == scaler.skipped_steps
    scaler.update(new_scale=64.0)
    assert scaler.get_scale() == 64.0


def test_pickle_between_iterations():
    scaler = GradScaler(init_scale=8.0, growth_interval=2, hysteresis=2)
    train(scaler, ours=True, steps=5, plan=[None, (0, 0, float("inf")), None, None, None])
    clone = pickle.loads(pickle.dumps(scaler))
    assert clone.state_dict() == scaler.state_dict()
    scaler.scale(torch.ones(()))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0)
    opt.param_groups[0]["params"][0].grad = torch.ones(1)
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="pickled"):
        pickle.dumps(scaler)


def test_update_with_new_scale_tensor_and_float():
    scaler = GradScaler()
    scaler.scale(torch.ones(()))
    scaler.update(torch.tensor(5.0))
    assert scaler.get_scale() == 5.0
    scaler.update(3)
    assert scaler.get_scale() == 3.0
    assert scaler.get_growth_tracker() == 0
