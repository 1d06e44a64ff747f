"""Gloeckle et al.'s parallel multi-token prediction heads on a shared trunk.

Every head reads the same trunk state and predicts a different future token; the heads
are independent of each other (no chain through the tokens as in DeepSeek-V3)::

    h^k_i       = TransformerBlock_k(h^0)_i                 (causal, own weights)
    logits^k_i  = OutHead(RMSNorm_k(h^k_i))     predicts t_{i+k+1},  k = 1..D

With the trunk's own output head as the next-token head this is the paper's n = D + 1
heads. The heads' logits ``(B, T, V)`` each dominate memory for a large vocabulary; the
memory-saving backward runs each head's forward and backward in turn, accumulating the
gradient at the trunk state, so only one head's activations are alive at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .blocks import (
    BlockDecoder,
    GrowingRows,
    RMSNorm,
    TransformerBlock,
    check_max_drafts,
    check_num_drafts,
    check_positive_int,
    init_weights,
)
from .common import (
    SharedWeightsMixin,
    block_config,
    check_inputs,
    cross_entropy,
    sizes_from_model,
)


class ParallelHead(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        self.block = TransformerBlock(cfg)
        self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class ParallelMTPHeads(SharedWeightsMixin, nn.Module):
    """D independent heads on a shared trunk; head k predicts t_{i+k+1} at position i.

    Args:
        hidden_size, vocab_size: C and V.
        depth: D >= 1 extra heads (the trunk's head predicts t_{i+1}).
        num_attention_heads: query heads of each head's Llama-style block.
        num_key_value_heads: key/value heads (GQA); default ``num_attention_heads``.
        intermediate_size: the SwiGLU MLP's width; default ``4 * hidden_size``.
        head_dim: per-head size; default ``hidden_size // num_attention_heads``.
        rope_theta: the rotary base.
        rms_norm_eps: the RMSNorm epsilon.
        lm_head: the shared unembedding ``nn.Linear`` (C -> V); ``None`` makes an own one.
        train_shared: let the heads' loss update the shared ``lm_head`` (default False).
        memory_efficient: default for ``loss``: heads forward/backward one at a time
            (same gradients as the plain backward, less peak memory).
        initializer_range: std of the normal init of every Linear.
    """

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        depth: int = 1,
        num_attention_heads: int = 4,
        *,
        num_key_value_heads: int | None = None,
        intermediate_size: int | None = None,
        head_dim: int | None = None,
        rope_theta: float = 10000.0,
        rms_norm_eps: float = 1e-6,
        lm_head: nn.Linear | None = None,
        train_shared: bool = False,
        memory_efficient: bool = False,
        initializer_range: float = 0.02,
    ) -> None:
        super().__init__()
        check_positive_int("depth", depth)
        check_positive_int("vocab_size", vocab_size)
        self.cfg = block_config(
            hidden_size,
            num_attention_heads,
            num_key_value_heads,
            intermediate_size,
            head_dim,
            rope_theta,
            rms_norm_eps,
            initializer_range,
        )
        self.hidden_size, self.vocab_size, self.depth = hidden_size, vocab_size, depth
        self.memory_efficient = bool(memory_efficient)
        self.heads = nn.ModuleList(ParallelHead(self.cfg) for _ in range(depth))
        self._setup_shared(hidden_size, vocab_size, None, lm_head, train_shared, need_embed=False)
        init_weights(self, initializer_range)
        if lm_head is not None:
            self.to(device=lm_head.weight.device, dtype=lm_head.weight.dtype)

    @classmethod
    def from_model(cls, model: nn.Module, depth: int = 1, **overrides) -> ParallelMTPHeads:
        """Heads sized for a transformers causal LM, sharing its output head."""
        kwargs = sizes_from_model(model)
        kwargs.pop("embed")
        kwargs.update(overrides)
        hidden, vocab = kwargs.pop("hidden_size"), kwargs.pop("vocab_size")
        nh = kwargs.pop("num_attention_heads")
        return cls(hidden, vocab, depth, nh, **kwargs)

    def head_states(
        self,
        k: int,
        hidden_states: torch.Tensor,
        start: int = 0,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Head ``k``'s block on trunk states ``(B, L, C)`` at positions ``start..``."""
        return self.heads[k - 1].block(hidden_states, start, past)

    def logits_of(self, k: int, h: torch.Tensor) -> torch.Tensor:
        """Head ``k``'s logits ``(..., V)`` from its block output ``(..., C)``."""
        return self._output_head(self.heads[k - 1].final_norm(h))

    def forward(
        self, hidden_states: torch.Tensor, input_ids: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """``[logits_1, ..., logits_D]``, each ``(B, T, V)``; row i of head k predicts
        ``t_{i+k+1}``. ``input_ids`` is accepted for symmetry with ``MTPModule``."""
        if input_ids is not None:
            check_inputs(hidden_states, input_ids, self.hidden_size, 1, "forward")
        elif hidden_states.dim() != 3 or hidden_states.shape[-1] != self.hidden_size:
            raise ValueError(
                f"hidden_states must have shape (B, T, {self.hidden_size}), "
                f"got {tuple(hidden_states.shape)}"
            )
        return [self.logits_of(k, self.head_states(k, hidden_states)[0]) for k in self._ks()]

    def _ks(self) -> range:
        return range(1, self.depth + 1)

    def head_loss(
        self, k: int, hidden_states: torch.Tensor, input_ids: torch.Tensor
    ) -> torch.Tensor:
        """Mean cross-entropy of head ``k`` over its ``B * (T-k-1)`` targets."""
        T = input_ids.shape[1]
        h, _ = self.head_states(k, hidden_states[:, : T - k - 1])  # (B, T-k-1, C)
        logits = self.logits_of(k, h)  # (B, T-k-1, V)
        target = input_ids[:, k + 1 :]  # (B, T-k-1)
        return cross_entropy(logits, target)

    def loss(
        self,
        hidden_states: torch.Tensor,
        input_ids: torch.Tensor,
        weight: float = 1.0,
        *,
        memory_efficient: bool | None = None,
    ) -> torch.Tensor:
        """``weight * mean_k CE_k``; ``memory_efficient`` (default: the constructor's)
        switches to the one-head-at-a-time backward, with the same gradients.

        Causal attention means head k's rows 0..T-k-2 do not depend on later trunk
        states, so the loss only runs each head on the rows that have a target.
        Requires ``T >= D + 2``.
        """
        check_inputs(hidden_states, input_ids, self.hidden_size, self.depth + 2, "loss")
        efficient = self.memory_efficient if memory_efficient is None else memory_efficient
        params = self._trainable_params()
        needs_grad = torch.is_grad_enabled() and (
            hidden_states.requires_grad or any(p.requires_grad for p in params)
        )
        if efficient and needs_grad:
            return _HeadByHeadLoss.apply(hidden_states, input_ids, self, float(weight), *params)
        total = sum(self.head_loss(k, hidden_states, input_ids) for k in self._ks())
        return total * (weight / self.depth)

    def _trainable_params(self) -> list[nn.Parameter]:
        params = [p for p in self.parameters() if p.requires_grad]
        head = self._borrowed[1]
        if self.train_shared and head is not None:
            params += [p for p in head.parameters() if p.requires_grad]
        return params

    def start_drafting(self, max_drafts: int | None = None) -> ParallelDraftState:
        """A fresh drafting state for one sequence (see ``speculative_generate``).

        ``max_drafts`` (1..depth, default depth): the heads past it are never run.
        """
        return ParallelDraftState(self, max_drafts)


class _HeadByHeadLoss(torch.autograd.Function):
    """Gloeckle et al.'s memory-saving schedule as an autograd node.

    Forward runs head 1's forward and backward, frees its graph, then head 2's, ...,
    summing the gradients w.r.t. the trunk state and the head parameters. Backward only
    scales those sums by the incoming gradient. Peak memory: one head's activations.
    """

    @staticmethod
    def forward(ctx, hidden_states, input_ids, heads, weight, *params):  # type: ignore[override]
        want_h = hidden_states.requires_grad
        grad_h = torch.zeros_like(hidden_states) if want_h else None
        grad_p = [torch.zeros_like(p) for p in params]
        total = None
        scale = weight / heads.depth
        for k in heads._ks():
            with torch.enable_grad():
                h = hidden_states.detach().requires_grad_(want_h)
                loss_k = heads.head_loss(k, h, input_ids) * scale
                wrt = ([h] if want_h else []) + list(params)
                grads = torch.autograd.grad(loss_k, wrt, allow_unused=True)
            if want_h:
                grad_h += grads[0]
                grads = grads[1:]
            for acc, g in zip(grad_p, grads, strict=True):
                if g is not None:
                    acc += g
            total = loss_k.detach() if total is None else total + loss_k.detach()
        ctx.want_h = want_h
        ctx.save_for_backward(*([grad_h] if want_h else []), *grad_p)
        return total

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        saved = list(ctx.saved_tensors)
        grad_h = saved.pop(0) * grad_out if ctx.want_h else None
        return (grad_h, None, None, None, *(g * grad_out for g in saved))


class ParallelDraftState:
    """Per-head key/value caches for drafting with ``ParallelMTPHeads``, batch 1.

    Heads read only trunk states, so every computed position is final: each call runs
    each head (a ``BlockDecoder``: keys/values appended in place) on the positions it has
    not seen, computing the output of the last one only, and drafts from it.
    """

    def __init__(self, heads: ParallelMTPHeads, max_drafts: int | None = None) -> None:
        self.heads = heads
        self.max_drafts = D = check_max_drafts(max_drafts, heads.depth)
        self.blocks = [BlockDecoder(h.block) for h in heads.heads[:D]]
        self.hidden = GrowingRows(dim=1)  # trunk states h^0_0..h^0_{m-1}, (1, m, C)
        self.num_seen = 0  # trunk states received
        self.num_run = [0] * D  # positions each head has keys/values for

    def draft(
        self,
        new_hidden: torch.Tensor,
        tokens: torch.Tensor,
        num_drafts: int,
        choose: Callable[[torch.Tensor], torch.Tensor],
    ) -> list[torch.Tensor]:
        """Same contract as ``SequentialDraftState.draft``."""
        check_num_drafts(num_drafts, self.max_drafts)
        m = tokens.shape[1] - 1
        if self.num_seen + new_hidden.shape[1] != m:
            raise RuntimeError(
                f"draft state out of sync: {self.num_seen + new_hidden.shape[1]} states "
                f"for {m} tokens"
            )
        self.hidden.write(self.num_seen, new_hidden)
        self.num_seen = m
        drafts = []
        for k in range(1, num_drafts + 1):
            c = self.num_run[k - 1]  # head k has keys/values of positions 0..c-1
            h = self.blocks[k - 1](self.hidden.read(c, m), c, last_only=True)  # (1, 1, C)
            self.num_run[k - 1] = m
            drafts.append(choose(self.heads.logits_of(k, h[:, -1])))  # d_{m+k}
        return drafts
