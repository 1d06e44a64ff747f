"""What every loss scaler shares: scale(), unscale_(), step() and the per-optimizer stages.

Each optimizer goes READY -> (UNSCALED) -> STEPPED within one iteration and back to
READY at ``update()``; the stage decides which calls are legal, with torch's errors.
Subclasses decide only how ``update()`` moves the scale (``_update_scale_``).
"""

from __future__ import annotations

from collections import abc, defaultdict
from enum import Enum
from typing import Any

import torch

from .unscale import _FLOAT_DTYPE_SET, _unscale_and_check_validated_


class OptState(Enum):
    READY = 0
    UNSCALED = 1
    STEPPED = 2


def _fresh_optimizer_state() -> dict[str, Any]:
    # A module-level factory (not a lambda) so that the defaultdict pickles.
    return {"stage": OptState.READY, "found_inf_per_device": {}}


class _PerDevice:
    """Copies of one tensor, made lazily, one per device it is asked for."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self.copies: dict[torch.device, torch.Tensor] = {}

    def get(self, device: torch.device) -> torch.Tensor:
        if device not in self.copies:
            self.copies[device] = self.tensor.to(device=device, non_blocking=True, copy=True)
        return self.copies[device]


class LossScalerBase:
    """The machinery of ``torch.amp.GradScaler`` minus the rule that moves the scale."""

    _name = "GradScaler"

    def __init__(self, init_scale: float, enabled: bool, allow_fp16_grads: bool) -> None:
        self._enabled = enabled
        self._allow_fp16_grads = allow_fp16_grads
        self._init_scale = init_scale
        self._scale: torch.Tensor | None = None  # float32, created on the first scale()
        self._per_optimizer_states: dict[int, dict[str, Any]] = defaultdict(_fresh_optimizer_state)
        self.last_step_skipped = False
        self.skipped_steps = 0

    # -- lazily created device state ------------------------------------------------
    def _lazy_init_(self, device: torch.device) -> None:
        """Create the scale (and subclass trackers) on the device of the first output."""
        self._scale = torch.full((), self._init_scale, dtype=torch.float32, device=device)

    def _require_scale(self, funcname: str) -> torch.Tensor:
        if self._scale is None:
            raise RuntimeError(
                f"Attempted {funcname} but the scale is not initialized yet: call "
                "scaler.scale(loss or outputs) earlier in the iteration."
            )
        return self._scale

    # -- the public API ---------------------------------------------------------------
    def scale(self, outputs: Any) -> Any:
        """Multiply a tensor, or (nested) lists/tuples of tensors, by the current scale.

        The scale lives on the device of the first tensor ever scaled; each output is
        multiplied by a copy on its own device. Returned unchanged when disabled.
        """
        if not self._enabled:
            return outputs
        if isinstance(outputs, torch.Tensor):
            if self._scale is None:
                self._lazy_init_(outputs.device)
            return outputs * self._scale.to(device=outputs.device, non_blocking=True)

        copies: list[_PerDevice] = []  # one replicator for the whole call

        def apply(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                if not copies:
                    if self._scale is None:
                        self._lazy_init_(value.device)
                    copies.append(_PerDevice(self._scale))
                return value * copies[0].get(value.device)
            if isinstance(value, (list, tuple)):
                return type(value)(apply(v) for v in value)
            if isinstance(value, abc.Iterable) and not isinstance(value, (str, bytes)):
                return map(apply, value)
            raise ValueError(
                f"outputs must be a Tensor or an iterable of Tensors, got {type(value).__name__}"
            )

        return apply(outputs)

    def _unscale_grads_(
        self,
        optimizer: torch.optim.Optimizer,
        inv_scale: torch.Tensor,
        found_inf: torch.Tensor,
        allow_fp16: bool,
    ) -> dict[torch.device, torch.Tensor]:
        """Unscale the optimizer's grads in place; return one found_inf per device."""
        inv_per_device = _PerDevice(inv_scale)
        found_per_device = _PerDevice(found_inf)
        grads_per_device: dict[torch.device, list[torch.Tensor]] = defaultdict(list)
        with torch.no_grad():
            for group in optimizer.param_groups:
                for param in group["params"]:
                    if param.grad is None:
                        continue
                    grad = param.grad
                    if not allow_fp16 and grad.dtype == torch.float16:
                        raise ValueError(
                            "Attempting to unscale FP16 gradients. Keep float32 master "
                            "weights (amp_scaler.MasterWeights), or construct the scaler "
                            "with allow_fp16_grads=True."
                        )
                    if grad.is_sparse:
                        # Duplicate indices are summed by coalesce(); for fp16 that sum
                        # can overflow, so check the coalesced values (as torch does).
                        if grad.dtype == torch.float16:
                            param.grad = grad = grad.coalesce()
                        grad = grad._values()
                    if grad.dtype not in _FLOAT_DTYPE_SET or grad.layout != torch.strided:
                        raise TypeError(
                            "GradScaler unscales float16/bfloat16/float32/float64 dense or "
                            f"sparse COO gradients, got dtype {grad.dtype}, layout {grad.layout}"
                        )
                    grads_per_device[grad.device].append(grad)
            for device, grads in grads_per_device.items():
                # the grads were checked above and the scale tensors are ours: skip the
                # public function's per-tensor validation (it runs every iteration)
                _unscale_and_check_validated_(
                    grads, inv_per_device.get(device), found_per_device.get(device), "auto"
                )
        return found_per_device.copies

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the optimizer's gradients by the scale, in place, and record inf/NaN.

        Optional: ``step`` does it when it was not called. Call it once per optimizer
        per iteration, after all backward passes, e.g. to clip unscaled gradients.
        Raises ``RuntimeError`` when called twice, or after ``step``, before ``update``.
        """
        if not self._enabled:
            return
        scale = self._require_scale("unscale_")
        state = self._per_optimizer_states[id(optimizer)]
        if state["stage"] is OptState.UNSCALED:
            raise RuntimeError(
                "unscale_() has already been called on this optimizer since the last update()."
            )
        if state["stage"] is OptState.STEPPED:
            raise RuntimeError("unscale_() is being called after step().")
        # The reciprocal in float64, rounded once to float32 (what torch does).
        inv_scale = scale.double().reciprocal().float()
        found_inf = torch.zeros((), dtype=torch.float32, device=scale.device)
        state["found_inf_per_device"] = self._unscale_grads_(
            optimizer, inv_scale, found_inf, self._allow_fp16_grads
        )
        state["stage"] = OptState.UNSCALED

    def step(self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> bool:
        """Unscale (if ``unscale_`` was not called) and step unless a grad was inf/NaN.

        ``args``/``kwargs`` go to ``optimizer.step``. Returns True when the optimizer
        stepped, False when the step was skipped (and counts it in ``skipped_steps``).
        Optimizers with ``_step_supports_amp_scaling`` (torch's fused Adam/AdamW/SGD)
        receive ``grad_scale`` and ``found_inf`` attributes and unscale themselves, as
        with torch's scaler. Reading the inf flag costs one host sync, as in torch.
        """
        if not self._enabled:
            optimizer.step(*args, **kwargs)
            self.last_step_skipped = False
            return True
        if "closure" in kwargs:
            raise RuntimeError("Closure use is not currently supported if GradScaler is enabled.")
        scale = self._require_scale("step")
        state = self._per_optimizer_states[id(optimizer)]
        if state["stage"] is OptState.STEPPED:
            raise RuntimeError("step() has already been called since the last update().")

        if getattr(optimizer, "_step_supports_amp_scaling", False):
            stepped = self._step_self_unscaling(optimizer, state, scale, args, kwargs)
        else:
            if state["stage"] is OptState.READY:
                self.unscale_(optimizer)
            if len(state["found_inf_per_device"]) == 0:
                raise RuntimeError("No inf checks were recorded for this optimizer.")
            stepped = not sum(v.item() for v in state["found_inf_per_device"].values())
            if stepped:
                optimizer.step(*args, **kwargs)
        state["stage"] = OptState.STEPPED
        self.last_step_skipped = not stepped
        self.skipped_steps += int(not stepped)
        return stepped

    def _step_self_unscaling(self, optimizer, state, scale, args, kwargs) -> bool:
        if state["stage"] is OptState.READY:
            # Only check (inv_scale = 1): the optimizer divides by grad_scale itself.
            ones = torch.ones((), dtype=torch.float32, device=scale.device)
            zeros = torch.zeros((), dtype=torch.float32, device=scale.device)
            state["found_inf_per_device"] = self._unscale_grads_(optimizer, ones, zeros, True)
        per_device = state["found_inf_per_device"].values()
        flags = [f.to(scale.device, non_blocking=True) for f in per_device]
        found_inf = torch.stack(flags).sum() if flags else torch.zeros_like(scale)
        if state["stage"] is OptState.UNSCALED:
            optimizer.grad_scale = getattr(optimizer, "grad_scale", None)
        else:
            optimizer.grad_scale = scale * getattr(optimizer, "grad_scale", 1)
        optimizer.found_inf = found_inf
        try:
            optimizer.step(*args, **kwargs)
        finally:
            state["stage"] = OptState.STEPPED
            del optimizer.grad_scale
            del optimizer.found_inf
        return not bool(found_inf.item())

    def update(self, new_scale: float | torch.Tensor | None = None) -> None:
        """End the iteration: move the scale (or set it to ``new_scale``), reset stages.

        Call once per iteration after ``step`` for every optimizer. ``new_scale`` (a
        positive float, or a 1-element float tensor) replaces the scale and leaves the
        growth counters alone, as in torch.
        """
        if not self._enabled:
            return
        scale = self._require_scale("update")
        if new_scale is not None:
            if isinstance(new_scale, torch.Tensor):
                if (
                    new_scale.numel() != 1
                    or new_scale.requires_grad
                    or not new_scale.is_floating_point()
                ):
                    raise ValueError(
                        "new_scale must be a float or a 1-element floating-point tensor with "
                        f"requires_grad=False, got shape {tuple(new_scale.shape)}, dtype "
                        f"{new_scale.dtype}, requires_grad={new_scale.requires_grad}"
                    )
                scale.copy_(new_scale.reshape(()))
            else:
                from ._checks import positive_finite

                scale.fill_(positive_finite("new_scale", new_scale))
        else:
            found_infs = [
                found.to(device=scale.device, non_blocking=True)
                for state in self._per_optimizer_states.values()
                for found in state["found_inf_per_device"].values()
            ]
            if not found_infs:
                raise RuntimeError("No inf checks were recorded prior to update.")
            self._update_scale_(torch.stack(found_infs).sum())
        self._per_optimizer_states = defaultdict(_fresh_optimizer_state)

    def _update_scale_(self, found_inf: torch.Tensor) -> None:
        raise NotImplementedError

    def _get_scale_async(self) -> torch.Tensor | None:
        """The scale tensor itself (no host sync); None before the first ``scale``."""
        return self._scale

    def get_scale(self) -> float:
        """The current scale as a Python float (1.0 when disabled). A host sync on CUDA."""
        if not self._enabled:
            return 1.0
        return self._init_scale if self._scale is None else float(self._scale.item())

    def is_enabled(self) -> bool:
        """Whether scaling is on (when off, every method is a pass-through)."""
        return self._enabled

    # -- pickling: only between iterations, tensors become floats -------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self._enabled:
            if len(self._per_optimizer_states) != 0:
                raise RuntimeError(
                    f"A {self._name} instance may only be pickled at the beginning "
                    "of an iteration, or at the end after scaler.update()."
                )
            state["_init_scale"] = self.get_scale()
            state["_scale"] = None
            self._pickle_trackers(state)
        return state

    def _pickle_trackers(self, state: dict[str, Any]) -> None:
        pass

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
