"""What the sequential and the parallel heads share: the borrowed embedding and output
head, reading sizes off a transformers model, and input checks."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import BlockConfig, check_positive_int, default_head_dim


class SharedWeightsMixin:
    """Holds the main model's embedding and output head WITHOUT registering them.

    They are kept in a plain tuple so that ``parameters()``, ``state_dict()`` and
    ``.to()`` of the heads never touch (or duplicate) the main model's weights: a saved
    head checkpoint holds only the head's own tensors. When the heads own their
    embedding/output head (none given), those are ordinary submodules.
    ``train_shared=False`` (the default) reads the shared weights through ``detach()``:
    the heads' loss then sends no gradient into them, while the main model's own loss
    still can (joint training keeps working).
    """

    train_shared: bool
    _borrowed: tuple[nn.Embedding | None, nn.Linear | None]
    own_embed: nn.Embedding | None
    own_lm_head: nn.Linear | None

    def _setup_shared(
        self,
        hidden_size: int,
        vocab_size: int,
        embed: nn.Embedding | None,
        lm_head: nn.Linear | None,
        train_shared: bool,
        need_embed: bool,
    ) -> None:
        if embed is not None and not isinstance(embed, nn.Embedding):
            raise TypeError(f"embed must be an nn.Embedding or None, got {type(embed).__name__}")
        if lm_head is not None and not isinstance(lm_head, nn.Linear):
            raise TypeError(f"lm_head must be an nn.Linear or None, got {type(lm_head).__name__}")
        if embed is not None and tuple(embed.weight.shape) != (vocab_size, hidden_size):
            raise ValueError(
                f"embed must have weight shape (vocab_size, hidden_size) = "
                f"({vocab_size}, {hidden_size}), got {tuple(embed.weight.shape)}"
            )
        if lm_head is not None and tuple(lm_head.weight.shape) != (vocab_size, hidden_size):
            raise ValueError(
                f"lm_head must have weight shape (vocab_size, hidden_size) = "
                f"({vocab_size}, {hidden_size}), got {tuple(lm_head.weight.shape)}"
            )
        self.train_shared = bool(train_shared)
        self._borrowed = (embed, lm_head)
        self.own_embed = (
            nn.Embedding(vocab_size, hidden_size) if (embed is None and need_embed) else None
        )
        self.own_lm_head = (
            nn.Linear(hidden_size, vocab_size, bias=False) if lm_head is None else None
        )

    def _embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` int64 -> ``(B, L, C)``."""
        if self.own_embed is not None:
            return self.own_embed(input_ids)
        embed = self._borrowed[0]
        assert embed is not None
        weight = embed.weight if self.train_shared else embed.weight.detach()
        return F.embedding(input_ids, weight, embed.padding_idx)

    def _output_head(self, h: torch.Tensor) -> torch.Tensor:
        """``(..., C)`` -> logits ``(..., V)``."""
        if self.own_lm_head is not None:
            return self.own_lm_head(h)
        head = self._borrowed[1]
        assert head is not None
        weight, bias = head.weight, head.bias
        if not self.train_shared:
            weight = weight.detach()
            bias = bias.detach() if bias is not None else None
        return F.linear(h, weight, bias)


def block_config(
    hidden_size: int,
    num_attention_heads: int,
    num_key_value_heads: int | None,
    intermediate_size: int | None,
    head_dim: int | None,
    rope_theta: float,
    rms_norm_eps: float,
    initializer_range: float,
) -> BlockConfig:
    """Validated block sizes; ``None`` means Llama's defaults (MHA, 4x MLP, C / nh)."""
    check_positive_int("hidden_size", hidden_size)
    check_positive_int("num_attention_heads", num_attention_heads)
    nkv = num_attention_heads if num_key_value_heads is None else num_key_value_heads
    check_positive_int("num_key_value_heads", nkv)
    if num_attention_heads % nkv:
        raise ValueError(
            "num_attention_heads must be a multiple of num_key_value_heads, got "
            f"{num_attention_heads} and {nkv}"
        )
    hd = default_head_dim(hidden_size, num_attention_heads) if head_dim is None else head_dim
    check_positive_int("head_dim", hd)
    if hd % 2:
        raise ValueError(f"head_dim must be even for rotary positions, got {hd}")
    inter = 4 * hidden_size if intermediate_size is None else intermediate_size
    check_positive_int("intermediate_size", inter)
    return BlockConfig(
        hidden_size=hidden_size,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=nkv,
        intermediate_size=inter,
        head_dim=hd,
        rope_theta=float(rope_theta),
        rms_norm_eps=float(rms_norm_eps),
        initializer_range=float(initializer_range),
    )


def sizes_from_model(model: nn.Module) -> dict[str, Any]:
    """Sizes, rope base and the shared modules of a transformers causal LM.

    Works for Llama-like models (``config.hidden_size``, ``num_attention_heads``...,
    ``get_input_embeddings()``, ``get_output_embeddings()``); rope settings are read
    from ``config.rope_parameters`` (transformers 5) or ``config.rope_theta`` (4.x).
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "get_input_embeddings"):
        raise TypeError(
            "model must be a transformers causal LM (with .config and get_input_embeddings()), "
            f"got {type(model).__name__}"
        )
    embed = model.get_input_embeddings()
    lm_head = model.get_output_embeddings()
    rope = getattr(config, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    hidden = config.hidden_size
    nh = config.num_attention_heads
    return {
        "hidden_size": hidden,
        "vocab_size": config.vocab_size,
        "num_attention_heads": nh,
        "num_key_value_heads": getattr(config, "num_key_value_heads", None) or nh,
        "intermediate_size": getattr(config, "intermediate_size", None) or 4 * hidden,
        "head_dim": getattr(config, "head_dim", None) or hidden // nh,
        "rope_theta": float(rope_theta),
        "rms_norm_eps": float(getattr(config, "rms_norm_eps", 1e-6)),
        "initializer_range": float(getattr(config, "initializer_range", 0.02)),
        "embed": embed,
        "lm_head": lm_head,
    }


def check_inputs(
    hidden_states: torch.Tensor,
    input_ids: torch.Tensor,
    hidden_size: int,
    min_length: int,
    what: str,
) -> None:
    """Shapes and dtypes of ``hidden_states`` ``(B, T, C)`` and ``input_ids`` ``(B, T)``."""
    if not isinstance(hidden_states, torch.Tensor) or not hidden_states.is_floating_point():
        raise TypeError(
            "hidden_states must be a floating-point tensor (B, T, hidden_size), got "
            f"{getattr(hidden_states, 'dtype', type(hidden_states).__name__)}"
        )
    if hidden_states.dim() != 3 or hidden_states.shape[-1] != hidden_size:
        raise ValueError(
            f"hidden_states must have shape (B, T, {hidden_size}), got {tuple(hidden_states.shape)}"
        )
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (
        torch.int64,
        torch.int32,
    ):
        raise TypeError(
            "input_ids must be an int64/int32 tensor (B, T), got "
            f"{getattr(input_ids, 'dtype', type(input_ids).__name__)}"
        )
    if tuple(input_ids.shape) != tuple(hidden_states.shape[:2]):
        raise ValueError(
            "input_ids must have shape (B, T) matching hidden_states "
            f"{tuple(hidden_states.shape[:2])}, got {tuple(input_ids.shape)}"
        )
    if input_ids.shape[1] < min_length:
        raise ValueError(
            f"input_ids must have at least {min_length} tokens per row for {what}, "
            f"got {input_ids.shape[1]}"
        )


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean CE of ``logits`` ``(..., V)`` against ``target`` ``(...)``; half precisions
    are upcast to float32 first (the log-sum-exp of a large vocabulary needs it)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1).long())
