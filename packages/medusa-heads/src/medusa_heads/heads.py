"""The Medusa heads: extra next-next-token predictors on top of a frozen trunk.

Head ``k`` (0-based) reads the trunk's last hidden state at position ``t`` and predicts
the token at ``t + k + 2``; the base model's own ``lm_head`` already predicts ``t + 1``.
Each head is ``num_layers`` residual blocks ``x + SiLU(W x + b)`` followed by a linear
map to the vocabulary (Cai et al., 2024, "Medusa", section 2.1.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100


class ResidualSiLUBlock(nn.Module):
    """``x + SiLU(W x + b)``; with ``W = 0, b = 0`` it is exactly the identity."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.silu(self.linear(x))  # (..., hidden)


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


class MedusaHeads(nn.Module):
    """``num_heads`` Medusa heads over hidden states of width ``hidden_size``.

    Args:
        hidden_size: width of the trunk's last hidden state.
        vocab_size: number of logits each head produces.
        num_heads: number of heads; head ``k`` predicts the token ``k + 2`` ahead.
        num_layers: residual ``x + SiLU(W x + b)`` blocks per head before the output layer.
        lm_head: optional base-model output layer (an ``nn.Linear`` or a weight of shape
            ``(vocab_size, hidden_size)``). When given, every head's output layer starts
            as a copy of it and the residual blocks start at ``W = 0, b = 0`` (the
            identity), so an untrained head predicts what the base model predicts.
            Without it the output layers use ``nn.Linear``'s default initialisation
            (residual blocks still start at the identity).

    ``forward(hidden_states)`` maps ``(B, T, hidden_size)`` to logits
    ``(num_heads, B, T, vocab_size)`` in the heads' dtype. ``hidden_states`` is the
    trunk's last hidden state exactly as transformers returns it:
    ``model(ids, output_hidden_states=True).hidden_states[-1]``.
    """

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        num_heads: int = 4,
        num_layers: int = 1,
        lm_head: nn.Module | torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.hidden_size = _check_positive_int("hidden_size", hidden_size)
        self.vocab_size = _check_positive_int("vocab_size", vocab_size)
        self.num_heads = _check_positive_int("num_heads", num_heads)
        if isinstance(num_layers, bool) or not isinstance(num_layers, int):
            raise TypeError(f"num_layers must be an int, got {type(num_layers).__name__}")
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        self.num_layers = num_layers

        base_weight = _lm_head_weight(lm_head, vocab_size, hidden_size)
        self.heads = nn.ModuleList()
        for _ in range(num_heads):
            blocks = [ResidualSiLUBlock(hidden_size) for _ in range(num_layers)]
            out = nn.Linear(hidden_size, vocab_size, bias=False)
            self.heads.append(nn.Sequential(*blocks, out))
        self.reset_residual_blocks()
        if base_weight is not None:
            self.copy_lm_head(base_weight)

    @torch.no_grad()
    def reset_residual_blocks(self) -> None:
        """Set every residual block to the identity (``W = 0, b = 0``)."""
        for module in self.modules():
            if isinstance(module, ResidualSiLUBlock):
                module.linear.weight.zero_()
                module.linear.bias.zero_()

    @torch.no_grad()
    def copy_lm_head(self, lm_head: nn.Module | torch.Tensor) -> None:
        """Copy the base model's output layer into every head's output layer."""
        weight = _lm_head_weight(lm_head, self.vocab_size, self.hidden_size)
        for head in self.heads:
            head[-1].weight.copy_(weight)

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> MedusaHeads:
        """Rebuild heads (sizes inferred) from a ``state_dict()`` saved by this class."""
        num_heads = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("heads."))
        layer_ids = {int(k.split(".")[2]) for k in state_dict if k.startswith("heads.0.")}
        num_layers = max(layer_ids)  # the output layer is the last Sequential entry
        vocab_size, hidden_size = state_dict[f"heads.0.{num_layers}.weight"].shape
        heads = cls(hidden_size, vocab_size, num_heads=num_heads, num_layers=num_layers)
        heads.load_state_dict(state_dict)
        return heads

    def _check_hidden(self, hidden_states: torch.Tensor) -> None:
        if not isinstance(hidden_states, torch.Tensor):
            raise TypeError(
                f"hidden_states must be a torch.Tensor, got {type(hidden_states).__name__}"
            )
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.hidden_size:
            raise ValueError(
                f"hidden_states must have shape (B, T, {self.hidden_size}), "
                f"got {tuple(hidden_states.shape)}"
            )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Logits of every head: ``(B, T, hidden)`` -> ``(num_heads, B, T, vocab)``."""
        self._check_hidden(hidden_states)
        x = hidden_states.to(self.heads[0][-1].weight.dtype)  # (B, T, hidden)
        return torch.stack([head(x) for head in self.heads])  # (H, B, T, V)

    @torch.no_grad()
    def stacked_weights(self) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """All heads' weights stacked along a leading head axis, for :meth:`decode_logits`:
        ``([(W (H, hidden, hidden), b (H, 1, hidden)) per layer], W_out (H, hidden, V))``
        (weights transposed so that ``x @ W`` applies them)."""
        blocks = [
            (
                torch.stack([head[i].linear.weight.T for head in self.heads]),
                torch.stack([head[i].linear.bias for head in self.heads]).unsqueeze(1),
            )
            for i in range(self.num_layers)
        ]
        out = torch.stack([head[-1].weight.T for head in self.heads])  # (H, hidden, V)
        return blocks, out

    @staticmethod
    def decode_logits(
        hidden: torch.Tensor,
        weights: tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor],
        num_heads: int,
    ) -> torch.Tensor:
        """Fast path of ``forward`` for one hidden vector: ``(hidden,)`` -> ``(H', V)``
        logits of the first ``H' = num_heads`` heads, with every head in one batched
        matmul per layer (``weights`` from :meth:`stacked_weights`). Same maths as
        ``forward(hidden.view(1, 1, -1))[:H', 0, 0]``."""
        blocks, out = weights
        x = hidden.to(out.dtype).expand(num_heads, 1, -1)  # (H', 1, hidden)
        for w, b in blocks:
            x = x + F.silu(torch.baddbmm(b[:num_heads], x, w[:num_heads]))  # (H', 1, hidden)
        return torch.bmm(x, out[:num_heads]).squeeze(1)  # (H', V)

    def loss(
        self,
        hidden_states: torch.Tensor,
        input_ids: torch.Tensor,
        decay: float = 0.8,
        return_metrics: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Medusa-1 training loss: ``sum_k decay**k * CE_k``.

        ``CE_k`` is the mean cross-entropy of head ``k`` at every valid position ``t``
        against the label ``input_ids[:, t + k + 2]`` (positions whose label is -100,
        or that fall past the end, are not valid).

        Args:
            hidden_states: ``(B, T, hidden_size)`` trunk last hidden states (no grad needed).
            input_ids: ``(B, T)`` integer token ids of the same sequences; -100 marks
                labels to ignore. ``T`` must be at least ``num_heads + 2`` so that every
                head has a target.
            decay: weight ratio between consecutive heads (``decay**k``), in ``(0, 1]``.
            return_metrics: also return ``{"loss_per_head": (H,), "top1": (H,),
                "rank_accuracy": (H, R)}`` (float32, detached) where ``top1[k]`` is head
                ``k``'s top-1 accuracy and ``rank_accuracy[k, r]`` the fraction of
                positions whose label is head ``k``'s rank-``r`` prediction
                (``R = min(10, vocab)``); ``choices_from_accuracies`` turns it into a tree.

        Returns:
            the scalar loss (float32), or ``(loss, metrics)``.
        """
        self._check_hidden(hidden_states)
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype.is_floating_point:
            got = (
                input_ids.dtype if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            )
            raise TypeError(f"input_ids must be an integer torch.Tensor, got {got}")
        if tuple(input_ids.shape) != tuple(hidden_states.shape[:2]):
            raise ValueError(
                f"input_ids must have shape (B, T) = {tuple(hidden_states.shape[:2])} "
                f"matching hidden_states, got {tuple(input_ids.shape)}"
            )
        seq_len = input_ids.shape[1]
        if seq_len < self.num_heads + 2:
            raise ValueError(
                f"input_ids must have at least num_heads + 2 = {self.num_heads + 2} positions "
                f"so every head has a target, got {seq_len}"
            )
        if not (isinstance(decay, (int, float)) and 0.0 < decay <= 1.0):
            raise ValueError(f"decay must be a float in (0, 1], got {decay!r}")

        x = hidden_states.to(self.heads[0][-1].weight.dtype)  # (B, T, hidden)
        total = x.new_zeros((), dtype=torch.float32)
        per_head, top1, rank_acc = [], [], []
        num_ranks = min(10, self.vocab_size)
        for k, head in enumerate(self.heads):
            shift = k + 2
            logits = head(x[:, : seq_len - shift]).float()  # (B, T-shift, V)
            labels = input_ids[:, shift:]  # (B, T-shift)
            valid = labels != IGNORE_INDEX  # (B, T-shift)
            count = valid.sum()
            ce = F.cross_entropy(
                logits.reshape(-1, self.vocab_size),
                labels.reshape(-1).long(),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            ) / count.clamp(min=1)
            total = total + (decay**k) * ce
            if return_metrics:
                with torch.no_grad():
                    ranks = logits.topk(num_ranks, dim=-1).indices  # (B, T-shift, R)
                    hits = (ranks == labels.unsqueeze(-1)) & valid.unsqueeze(-1)  # (B, T-shift, R)
                    hit_rate = hits.flatten(0, 1).float().sum(0) / count.clamp(min=1)  # (R,)
                per_head.append(ce.detach())
                top1.append(hit_rate[0])
                rank_acc.append(hit_rate)
        if not return_metrics:
            return total
        metrics = {
            "loss_per_head": torch.stack(per_head),
            "top1": torch.stack(top1),
            "rank_accuracy": torch.stack(rank_acc),
        }
        return total, metrics


def _lm_head_weight(
    lm_head: nn.Module | torch.Tensor | None, vocab_size: int, hidden_size: int
) -> torch.Tensor | None:
    """The ``(vocab, hidden)`` weight of an output layer, validated."""
    if lm_head is None:
        return None
    if isinstance(lm_head, torch.Tensor):
        weight = lm_head
    elif isinstance(getattr(lm_head, "weight", None), torch.Tensor):
        weight = lm_head.weight
    else:
        raise TypeError(
            "lm_head must be an nn.Linear-like module or a weight tensor, "
            f"got {type(lm_head).__name__}"
        )
    if tuple(weight.shape) != (vocab_size, hidden_size):
        raise ValueError(
            f"lm_head weight must have shape (vocab_size, hidden_size) = "
            f"({vocab_size}, {hidden_size}), "
            f"got {tuple(weight.shape)}"
        )
    return weight.detach()
