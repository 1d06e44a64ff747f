"""``Adam`` and ``AdamW``: ``torch.optim.Optimizer`` subclasses with switchable impls.

Groups and state use torch's names (``lr, betas, eps, weight_decay, amsgrad, maximize,
decoupled_weight_decay``; ``step, exp_avg, exp_avg_sq, max_exp_avg_sq``), so state_dicts
move freely between these classes and ``torch.optim.Adam/AdamW``. The one extra group
key, ``impl``, is ignored by torch and filled in from the constructor when a torch
state_dict (which lacks it) is loaded here.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from .functional import SparseGradientError
from .multi_tensor import foreach_update_group, reference_update_group

IMPLS = ("auto", "reference", "foreach", "compiled", "cpp", "triton")
_STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def _check_hyperparameters(where: str, group: dict[str, Any]) -> None:
    """Validate the hyperparameters of the defaults or of one group; ``where`` names it."""

    def number(name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where}{name} must be a float, got {type(value).__name__}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{where}{name} must be a finite number >= 0, got {value}")
        return float(value)

    if "lr" in group:
        number("lr", group["lr"])
    if "eps" in group:
        number("eps", group["eps"])
    if "weight_decay" in group:
        number("weight_decay", group["weight_decay"])
    if "betas" in group:
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{where}betas must be a pair (beta1, beta2), got {betas!r}")
        for k, beta in enumerate(betas):
            if isinstance(beta, bool) or not isinstance(beta, (int, float)):
                raise TypeError(f"{where}betas[{k}] must be a float, got {type(beta).__name__}")
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{where}betas[{k}] must be in [0, 1), got {beta}")
    for flag in ("amsgrad", "maximize"):
        if flag in group and not isinstance(group[flag], bool):
            raise TypeError(f"{where}{flag} must be a bool, got {type(group[flag]).__name__}")
    if "impl" in group and group["impl"] not in IMPLS:
        raise ValueError(f"{where}impl must be one of {IMPLS}, got {group['impl']!r}")


def _check_params(params: list[Any]) -> None:
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"params[{i}] must be a torch.Tensor, got {type(p).__name__}")
        if not p.is_leaf:
            raise ValueError(
                f"params[{i}] must be a leaf tensor (a parameter), got a non-leaf tensor "
                f"produced by {type(p.grad_fn).__name__}"
            )
        if not (p.is_floating_point() or p.is_complex()):
            raise TypeError(f"params[{i}] must be a floating or complex tensor, got {p.dtype}")


# The impls whose kernels index raw memory; other layouts take the reference path.
_NEEDS_CONTIGUOUS = frozenset({"triton", "compiled", "cpp"})


def _all_contiguous(tensors: list[Tensor]) -> bool:
    for t in tensors:  # a loop, not all(genexpr): this runs for every tensor every step
        if not t.is_contiguous():
            return False
    return True


def _resolve_impl(impl: str, device: torch.device) -> str:
    """``auto``: the Triton kernel on CUDA (``compiled`` without triton); on the CPU the
    C++ kernel when it can be built here (ninja and a compiler), else the reference.

    The C++ kernel is the fastest CPU path (faster than ``torch.optim.AdamW(fused=True)``
    in the bench); its first use on a machine builds it (~25 s on 2 cores), later
    processes load it from torch's extension cache. ``compiled`` is never chosen by
    ``auto``: it is slower than the C++ kernel and compiles per dtype, rank and flags.
    """
    if impl != "auto":
        return impl
    if device.type == "cuda":
        return "triton" if importlib.util.find_spec("triton") is not None else "compiled"
    if device.type == "cpu":
        from .cpp_impl import kernel_available

        if kernel_available():
            return "cpp"
    return "reference"


def _impl_function(name: str) -> Callable[..., None]:
    if name == "reference":
        return reference_update_group
    if name == "foreach":
        return foreach_update_group
    if name == "compiled":
        from .compiled import compiled_update_group

        return compiled_update_group
    if name == "cpp":
        from .cpp_impl import cpp_update_group, unavailable_reason

        reason = unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        return cpp_update_group
    if name == "triton":
        if importlib.util.find_spec("triton") is None:
            raise ImportError("impl='triton' needs triton: pip install 'adamw-ref[triton]'")
        from .triton_impl import triton_update_group

        return triton_update_group
    raise ValueError(f"impl must be one of {IMPLS}, got {name!r}")


class _AdamBase(torch.optim.Optimizer):
    """Shared body of :class:`Adam` and :class:`AdamW` (they differ only in the decay)."""

    _decoupled: bool = False

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        maximize: bool = False,
        impl: str = "auto",
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": tuple(betas) if isinstance(betas, (tuple, list)) else betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "decoupled_weight_decay": self._decoupled,
            "impl": impl,
        }
        _check_hyperparameters("", defaults)
        if isinstance(params, Tensor):
            raise TypeError(
                "params must be an iterable of tensors or of dicts, got a single Tensor"
            )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (validated: leaf float/complex tensors, sane hyperparameters)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        params = param_group.get("params")
        params = [params] if isinstance(params, Tensor) else list(params or [])
        _check_params(params)
        where = f"param_groups[{len(self.param_groups)}]."
        _check_hyperparameters(where, param_group)
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Also called by load_state_dict with torch's groups, which have no "impl".
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("impl", self.defaults.get("impl", "auto"))
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)
            group.setdefault("decoupled_weight_decay", self._decoupled)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict of this class or of ``torch.optim.Adam/AdamW``.

        On top of torch's checks (same number of groups and of parameters per group),
        every saved moment must have its parameter's shape and an ``amsgrad`` group
        must carry ``max_exp_avg_sq``; nothing is changed when a check fails.
        """
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError(
                "state_dict must be a dict with 'state' and 'param_groups', got "
                f"{type(state_dict).__name__}"
                + (f" with keys {sorted(state_dict)}" if isinstance(state_dict, dict) else "")
            )
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"state_dict has {len(saved_groups)} parameter groups, this optimizer has "
                f"{len(self.param_groups)}"
            )
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"state_dict param_groups[{gi}] has {len(saved['params'])} parameters, "
                    f"this optimizer's group {gi} has {len(group['params'])}"
                )
            for saved_id, p in zip(saved["params"], group["params"], strict=True):
                st = state_dict["state"].get(saved_id)
                if not st:
                    continue
                for key in _STATE_KEYS:
                    if key in st and tuple(st[key].shape) != tuple(p.shape):
                        raise ValueError(
                            f"state_dict state[{saved_id}][{key!r}] has shape "
                            f"{tuple(st[key].shape)}, its parameter has shape {tuple(p.shape)}"
                        )
                missing = [k for k in ("step", "exp_avg", "exp_avg_sq") if k not in st]
                if saved.get("amsgrad", False) and "max_exp_avg_sq" not in st:
                    missing.append("max_exp_avg_sq")
                if missing:
                    raise ValueError(
                        f"state_dict state[{saved_id}] lacks {missing} (group {gi}, "
                        f"amsgrad={saved.get('amsgrad', False)})"
                    )
        super().load_state_dict(state_dict)

    def _init_state(self, p: Tensor, amsgrad: bool) -> dict[str, Tensor]:
        state = self.state[p]
        if len(state) == 0:
            # torch keeps the step as a float CPU scalar when not fused/capturable.
            dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
            state["step"] = torch.tensor(0.0, dtype=dtype)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if amsgrad and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimisation step for every parameter whose ``.grad`` is not None.

        ``closure`` (optional) re-evaluates the model and returns the loss, which is
        returned; it runs with gradients enabled.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            lists: tuple[list[Tensor], ...] = ([], [], [], [], [], [])
            params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps = lists
            slow: tuple[list[Tensor], ...] = ([], [], [], [], [], [])  # non-contiguous
            amsgrad = group["amsgrad"]
            impl = None
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise SparseGradientError(
                        "Adam does not support sparse gradients (a parameter's .grad is "
                        "sparse); use torch.optim.SparseAdam"
                    )
                state = self._init_state(p, amsgrad)
                impl = impl or _resolve_impl(group["impl"], p.device)
                tensors = [p, p.grad, state["exp_avg"], state["exp_avg_sq"]]
                if amsgrad:
                    tensors.append(state["max_exp_avg_sq"])
                if p.is_complex():  # the real view is updated exactly as torch does
                    tensors = [torch.view_as_real(t) for t in tensors]
                target = lists
                if impl in _NEEDS_CONTIGUOUS and not _all_contiguous(tensors):
                    target = slow
                target[0].append(tensors[0])
                target[1].append(tensors[1])
                target[2].append(tensors[2])
                target[3].append(tensors[3])
                if amsgrad:
                    target[4].append(tensors[4])
                target[5].append(state["step"])
            if impl is None:
                continue
            beta1, beta2 = group["betas"]
            hyper = {
                "lr": float(group["lr"]),
                "beta1": float(beta1),
                "beta2": float(beta2),
                "eps": float(group["eps"]),
                "weight_decay": float(group["weight_decay"]),
                "decoupled": bool(group["decoupled_weight_decay"]),
                "amsgrad": amsgrad,
                "maximize": bool(group["maximize"]),
            }
            _impl_function(impl)(*lists, **hyper)
            reference_update_group(*slow, **hyper)
        return loss


class Adam(_AdamBase):
    """Adam (Kingma & Ba, 2015); ``weight_decay`` is L2 regularisation added to the gradient.

    Args:
        params: tensors or parameter-group dicts, as for any ``torch.optim.Optimizer``.
        lr: learning rate (>= 0).
        betas: ``(beta1, beta2)``, each in ``[0, 1)``.
        eps: added to ``sqrt(v_hat)`` (>= 0).
        weight_decay: L2 coefficient ``lambda`` (>= 0): ``g <- g + lambda * theta``.
        amsgrad: use the running maximum of ``v`` (Reddi et al., 2018).
        maximize: maximise the objective instead of minimising it.
        impl: ``"auto"`` (Triton on CUDA; on the CPU the C++ kernel when it can be built,
            else the reference), ``"reference"``, ``"foreach"``, ``"compiled"``, ``"cpp"``
            or ``"triton"``; all compute :func:`adamw_ref.functional.adam_update`.

    Matches ``torch.optim.Adam(foreach=False)`` step for step (bitwise for
    ``reference``/``foreach`` on the CPU). Parameters may be float16, bfloat16, float32,
    float64 or complex; ``.grad`` must be dense and of the parameter's dtype.
    """

    _decoupled = False


class AdamW(_AdamBase):
    """AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay.

    The weights shrink by ``1 - lr * weight_decay`` each step, outside the adaptive
    update, so the decay is the same for every coordinate whatever its gradient scale.
    Same arguments as :class:`Adam`, with ``weight_decay=1e-2`` by default.
    Matches ``torch.optim.AdamW(foreach=False)`` step for step.
    """

    _decoupled = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        maximize: bool = False,
        impl: str = "auto",
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize, impl)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # like torch.optim.AdamW: always decoupled
            group["decoupled_weight_decay"] = True
