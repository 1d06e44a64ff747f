"""``param_groups``: the two groups everybody writes by hand (decay / no decay)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import Tensor, nn

NoDecayRule = Callable[[str, Tensor], bool]


def _default_no_decay(name: str, param: Tensor) -> bool:
    # Biases, norm gains and other vectors/scalars: decaying them towards 0 only
    # hurts (a norm weight of 0 switches its channel off), so they are left alone.
    return param.ndim < 2


def param_groups(
    model: nn.Module,
    weight_decay: float,
    no_decay: NoDecayRule | Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into a decayed and a non-decayed group.

    Args:
        model: any ``nn.Module`` (e.g. a transformers ``LlamaForCausalLM``); parameters
            with ``requires_grad=False`` are left out, shared (tied) ones appear once.
        weight_decay: the decay of the first group (>= 0); the second group gets 0.0.
        no_decay: which parameters get no decay. ``None``: those with ``ndim < 2``
            (biases, LayerNorm/RMSNorm weights, scalars). A callable ``(name, param) ->
            bool``. Or an iterable of name fragments: a parameter is exempt when a
            fragment occurs in its qualified name (e.g. ``["bias", "norm"]``).

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay}, {"params": [...],
        "weight_decay": 0.0}]``, ready for :class:`adamw_ref.AdamW` or ``torch.optim.AdamW``;
        a group that would be empty is omitted.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)):
        raise TypeError(f"weight_decay must be a float, got {type(weight_decay).__name__}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")

    if no_decay is None:
        rule: NoDecayRule = _default_no_decay
    elif callable(no_decay):
        rule = no_decay
    elif isinstance(no_decay, str):
        raise TypeError(
            f"no_decay must be a callable or an iterable of name fragments, got the string "
            f"{no_decay!r} (wrap it in a list)"
        )
    else:
        fragments = list(no_decay)
        if not all(isinstance(f, str) for f in fragments):
            raise TypeError(f"no_decay fragments must be strings, got {fragments!r}")
        rule = lambda name, param: any(f in name for f in fragments)

    decay: list[Tensor] = []
    exempt: list[Tensor] = []
    for name, param in model.named_parameters():  # deduplicates tied weights
        if not param.requires_grad:
            continue
        (exempt if rule(name, param) else decay).append(param)

    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": float(weight_decay)})
    if exempt:
        groups.append({"params": exempt, "weight_decay": 0.0})
    return groups


__all__ = ["param_groups", "NoDecayRule"]
