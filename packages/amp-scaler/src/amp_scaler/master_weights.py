"""``MasterWeights``: fp32 master copies of fp16/bf16 parameters behind any optimizer.

Low-precision weights lose small updates: in bf16, ``1.0 + 1e-3 == 1.0``. Mixed
precision therefore keeps a float32 "master" copy of every low-precision parameter,
lets the optimizer update the masters, and copies them (rounded) back into the model.

Data flow per iteration::

    model param (fp16/bf16) --backward--> p.grad (fp16/bf16)
        --hook: accumulate in fp32, free p.grad--> master.grad (fp32)
    scaler.unscale_/step(mw) sees only fp32 masters and their grads
    mw.step(): inner optimizer steps the masters, then model param <- master (rounded)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

STATE_DICT_VERSION = 1
_LOW_PRECISION = (torch.float16, torch.bfloat16)


class MasterWeights:
    """Wrap an optimizer built on a model's fp16/bf16 parameters so it steps fp32 copies.

    Args:
        optimizer: any ``torch.optim.Optimizer`` whose ``param_groups`` hold the model's
            parameters, before its first step. Its float16/bfloat16 parameters are
            replaced, in its param_groups, by float32 master copies; float32 parameters
            are used as they are.
        grad_hooks: True (default): every backward accumulates the low-precision
            gradient into the master's float32 ``.grad`` right away and frees the model
            parameter's ``.grad`` (post-accumulate-grad hooks), so scalers and clipping
            see the master gradients. False: call ``copy_grads_to_master()`` yourself
            after the backward passes (``step()`` does it if you did not).

    Behaves like an optimizer for ``GradScaler.step`` (ours or torch's): ``param_groups``
    and ``state`` are the inner optimizer's, ``step()`` steps and copies the masters
    back. Give LR schedulers ``mw.optimizer`` (they require a real Optimizer).

    The result is identical to the manual loop: ``master = p.float()``,
    ``master.grad = p.grad.float()``, ``optimizer.step()``, ``p.copy_(master)``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, grad_hooks: bool = True) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        if not isinstance(grad_hooks, bool):
            raise TypeError(f"grad_hooks must be a bool, got {type(grad_hooks).__name__}")
        if len(optimizer.state) != 0:
            raise ValueError(
                "optimizer must not have stepped yet (its state is not empty): wrap it "
                "in MasterWeights right after constructing it"
            )
        self.optimizer = optimizer
        self.grad_hooks = grad_hooks
        self._pairs: list[tuple[torch.nn.Parameter, torch.Tensor]] = []  # (model, master)
        self._hook_handles: list[Any] = []
        seen: set[int] = set()
        for group in optimizer.param_groups:
            for i, param in enumerate(group["params"]):
                if id(param) in seen:
                    raise ValueError("optimizer lists a parameter twice")
                seen.add(id(param))
                if param.dtype not in _LOW_PRECISION:
                    continue
                master = param.detach().to(torch.float32).clone().requires_grad_(True)
                group["params"][i] = master
                self._pairs.append((param, master))
                if grad_hooks:
                    self._hook_handles.append(
                        param.register_post_accumulate_grad_hook(self._make_hook(master))
                    )
        if not self._pairs:
            raise ValueError(
                "optimizer has no float16/bfloat16 parameters: MasterWeights has nothing "
                "to keep (cast the model with .half()/.bfloat16() before building it)"
            )

    @staticmethod
    def _make_hook(master: torch.Tensor):
        def accumulate_into_master(param: torch.Tensor) -> None:
            grad = param.grad
            if grad.is_sparse:
                raise TypeError("MasterWeights does not support sparse gradients")
            if master.grad is None:
                master.grad = grad.to(torch.float32)
            else:
                master.grad.add_(grad)
            param.grad = None  # the fp32 copy is the gradient from now on

        return accumulate_into_master

    # -- what GradScaler and training loops use ----------------------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    @property
    def _step_supports_amp_scaling(self) -> bool:
        return getattr(self.optimizer, "_step_supports_amp_scaling", False)

    def master_params(self) -> Iterator[torch.Tensor]:
        """Every parameter the inner optimizer updates (fp32 masters and fp32 params),
        e.g. for ``clip_grad_norm_`` after ``scaler.unscale_(mw)``."""
        for group in self.optimizer.param_groups:
            yield from group["params"]

    def copy_grads_to_master(self) -> None:
        """Add the model's low-precision grads into the masters' fp32 grads and free
        them (what the hooks do; for ``grad_hooks=False``)."""
        with torch.no_grad():
            for param, master in self._pairs:
                if param.grad is None:
                    continue
                if master.grad is None:
                    master.grad = param.grad.to(torch.float32)
                else:
                    master.grad.add_(param.grad)
                param.grad = None

    @torch.no_grad()
    def copy_master_to_model(self) -> None:
        """Round the fp32 masters into the model's fp16/bf16 parameters."""
        for param, master in self._pairs:
            param.copy_(master)

    def step(self, *args: Any, **kwargs: Any) -> Any:
        """Step the inner optimizer on the masters, then copy them into the model."""
        self.copy_grads_to_master()
        # torch-style scalers hand self-unscaling optimizers these two attributes.
        forwarded = [n for n in ("grad_scale", "found_inf") if n in self.__dict__]
        for name in forwarded:
            setattr(self.optimizer, name, self.__dict__[name])
        try:
            result = self.optimizer.step(*args, **kwargs)
        finally:
            for name in forwarded:
                delattr(self.optimizer, name)
        self.copy_master_to_model()
        return result

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the masters' and the model's gradients."""
        self.optimizer.zero_grad(set_to_none=set_to_none)
        for param, _ in self._pairs:
            if set_to_none:
                param.grad = None
            elif param.grad is not None:
                param.grad.zero_()

    def remove_hooks(self) -> None:
        """Detach the gradient hooks from the model (the masters stay)."""
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles.clear()

    # -- checkpoints --------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"optimizer": inner state_dict, "master_params": [fp32 tensors], "version"}``.

        The masters are saved because the model's rounded copies cannot restore them.
        Like torch's optimizer state_dict, the tensors are references: save or deep-copy.
        """
        return {
            "optimizer": self.optimizer.state_dict(),
            "master_params": [master for _, master in self._pairs],
            "version": STATE_DICT_VERSION,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the inner optimizer and the masters; copy the masters into the model."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        missing = [k for k in ("optimizer", "master_params", "version") if k not in state_dict]
        if missing:
            raise ValueError(
                f"state_dict is missing keys {missing}; expected "
                "['optimizer', 'master_params', 'version'] (from MasterWeights.state_dict)"
            )
        if state_dict["version"] != STATE_DICT_VERSION:
            raise ValueError(
                f"state_dict has version {state_dict['version']!r}, this MasterWeights "
                f"reads version {STATE_DICT_VERSION}"
            )
        masters = list(state_dict["master_params"])
        if len(masters) != len(self._pairs):
            raise ValueError(
                f"state_dict['master_params'] has {len(masters)} tensors, this MasterWeights "
                f"keeps {len(self._pairs)}"
            )
        for i, (saved, (_, master)) in enumerate(zip(masters, self._pairs, strict=True)):
            if not isinstance(saved, torch.Tensor) or saved.shape != master.shape:
                got = tuple(saved.shape) if isinstance(saved, torch.Tensor) else type(saved)
                raise ValueError(
                    f"state_dict['master_params'][{i}] must be a tensor of shape "
                    f"{tuple(master.shape)}, got {got}"
                )
        self.optimizer.load_state_dict(state_dict["optimizer"])
        with torch.no_grad():
            for saved, (_, master) in zip(masters, self._pairs, strict=True):
                master.copy_(saved)
        self.copy_master_to_model()

    def __repr__(self) -> str:
        return f"MasterWeights({len(self._pairs)} fp32 masters, {self.optimizer!r})"
