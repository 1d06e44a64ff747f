"""One test per rejected input class: the exception type and the argument it names."""

import adamw_ref
import pytest
import torch


def _param():
    return torch.randn(3, requires_grad=True)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lr": -1e-3}, "lr"),
        ({"eps": -1e-8}, "eps"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"lr": float("nan")}, "lr"),
        ({"betas": (1.0, 0.999)}, "betas\\[0\\]"),
        ({"betas": (0.9, -0.1)}, "betas\\[1\\]"),
    ],
)
@pytest.mark.parametrize("cls", [adamw_ref.Adam, adamw_ref.AdamW])
def test_out_of_range_hyperparameters(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls([_param()], **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lr": "0.1"}, "lr"),
        ({"betas": 0.9}, "betas"),
        ({"betas": (0.9, "x")}, "betas\\[1\\]"),
        ({"amsgrad": 1}, "amsgrad"),
        ({"maximize": "yes"}, "maximize"),
    ],
)
def test_wrongly_typed_hyperparameters(kwargs, name):
    with pytest.raises(TypeError, match=name):
        adamw_ref.AdamW([_param()], **kwargs)


def test_unknown_impl():
    with pytest.raises(ValueError, match="impl"):
        adamw_ref.AdamW([_param()], impl="fast")


def test_bad_group_hyperparameter_names_the_group():
    with pytest.raises(ValueError, match="param_groups\\[1\\].lr"):
        adamw_ref.AdamW([{"params": [_param()]}, {"params": [_param()], "lr": -1.0}])


def test_non_tensor_param():
    with pytest.raises(TypeError, match="params\\[1\\]"):
        adamw_ref.AdamW([_param(), 3.0])


def test_single_tensor_instead_of_iterable():
    with pytest.raises(TypeError, match="params"):
        adamw_ref.AdamW(_param())


def test_non_leaf_param():
    with pytest.raises(ValueError, match="params\\[0\\].*leaf"):
        adamw_ref.AdamW([_param() * 2])


def test_integer_param():
    with pytest.raises(TypeError, match="params\\[0\\]"):
        adamw_ref.AdamW([torch.arange(3)])


@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_sparse_gradient_is_rejected_like_torch(impl):
    p = _param()
    p.grad = torch.randn(3).to_sparse()
    opt = adamw_ref.AdamW([p], impl=impl)
    with pytest.raises(RuntimeError, match="sparse"):  # torch raises RuntimeError too
        opt.step()
    with pytest.raises(TypeError, match="sparse"):  # and it is a TypeError (house rule)
        opt.step()


def test_functional_amsgrad_without_state():
    p = _param()
    with pytest.raises(ValueError, match="max_exp_avg_sq"):
        adamw_ref.adam_update(
            p.detach(), torch.randn(3), torch.zeros(3), torch.zeros(3), torch.tensor(0.0),
            lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=True,
            amsgrad=True, max_exp_avg_sq=None, maximize=False,
        )  # fmt: skip


def test_triton_on_cpu_without_interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    p = _param()
    p.grad = torch.randn(3)
    with pytest.raises(ValueError, match="impl='triton'.*CUDA"):
        adamw_ref.AdamW([p], impl="triton").step()
