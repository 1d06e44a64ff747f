"""KV-cache bookkeeping and the two model calls of Medusa decoding (transformers 5.x).

The verification forward appends the keys/values of all ``N`` tree nodes to the cache.
Only the accepted path (root + accepted candidates) belongs to the real sequence: its
entries are gathered into place right after the prefix and the rest is cropped, so the
cache again holds exactly the keys/values of the decoded sequence, in order. No extra
forward is needed: the logits and hidden state at the last accepted node, computed by
the verification forward, already give the next step's root token and head inputs.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

# Attention backends that ignore an arbitrary 4D mask (they only know causal/padding).
_MASKLESS_BACKENDS = ("flash_attention_2", "flash_attention_3", "paged_attention")


def new_cache(model: Any) -> Any:
    """An empty ``transformers.DynamicCache`` laid out for ``model`` (as ``generate`` makes)."""
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def cache_keyword(model: Any) -> str:
    """``"cache"`` on transformers >= 5.2x, ``"past_key_values"`` before the rename."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def check_attention_backend(model: Any) -> None:
    backend = str(getattr(model.config, "_attn_implementation", "sdpa"))
    if any(name in backend for name in _MASKLESS_BACKENDS):
        raise ValueError(
            f"model must use an attention implementation that honours a 4D attention mask "
            f"(sdpa, eager, flex_attention), got {backend!r}"
        )


def max_cached_length(cache: Any) -> int | None:
    """The sliding window of the cache's sliding layers (the gather-in-place bookkeeping
    needs every entry still stored), or ``None`` when no layer slides."""
    layers = cache.layers
    windows = [layer.sliding_window for layer in layers if getattr(layer, "is_sliding", False)]
    return min(windows) - 1 if windows else None


def keep_accepted(cache: Any, num_nodes: int, accepted_nodes: torch.Tensor) -> None:
    """Keep only the accepted tree nodes' entries, in order, at the end of the cache.

    Before: every layer's keys/values are ``(B, H_kv, S + num_nodes, hd)`` with the tree
    nodes last. After: ``(B, H_kv, S + L, hd)`` whose last ``L = len(accepted_nodes)``
    entries are those of ``accepted_nodes`` (node ids, root first, increasing).
    """
    keep = accepted_nodes.numel()
    for layer in cache.layers:
        if not layer.is_initialized:
            continue
        tree_start = layer.keys.shape[-2] - num_nodes
        source = accepted_nodes.to(layer.keys.device) + tree_start  # (L,)
        # index_select copies first, so overlapping source/target ranges are safe
        layer.keys[..., tree_start : tree_start + keep, :] = layer.keys.index_select(-2, source)
        layer.values[..., tree_start : tree_start + keep, :] = layer.values.index_select(-2, source)
        if keep < num_nodes:
            layer.crop(-(num_nodes - keep))


def tree_attention_mask(
    tree_mask: torch.Tensor, prefix_length: int, dtype: torch.dtype
) -> torch.Tensor:
    """Additive 4D mask ``(1, 1, N, prefix_length + N)``: 0 where attention is allowed
    (the whole prefix, and the node's ancestors and itself), ``finfo.min`` elsewhere."""
    num_nodes = tree_mask.shape[0]
    blocked = torch.finfo(dtype).min
    mask = torch.zeros(num_nodes, prefix_length + num_nodes, dtype=dtype, device=tree_mask.device)
    mask[:, prefix_length:].masked_fill_(~tree_mask, blocked)  # (N, S + N)
    return mask[None, None]  # (1, 1, N, S + N)


# Causal LMs whose logits are exactly ``lm_head(decoder(...).last_hidden_state)`` (no
# logit scaling or soft-capping), so the decoder and the head can be called directly.
_PLAIN_HEAD_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def direct_parts(model: Any) -> tuple[Any, Any] | None:
    """``(decoder, lm_head)`` when ``model``'s logits are ``lm_head(last hidden state)``,
    else ``None`` (then :func:`model_forward` calls the whole model).

    Calling them directly skips the hooks ``output_hidden_states=True`` installs to
    record every layer's output; on a small model that is a few percent of a forward.
    The tensors are the same: ``last_hidden_state`` is ``hidden_states[-1]``."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in _PLAIN_HEAD_MODEL_TYPES:
        return None
    get_decoder = getattr(model, "get_decoder", None)
    get_head = getattr(model, "get_output_embeddings", None)
    if not callable(get_decoder) or not callable(get_head):
        return None
    decoder, head = get_decoder(), get_head()
    if decoder is None or not isinstance(head, torch.nn.Linear):
        return None
    return decoder, head


def model_forward(
    model: Any,
    input_ids: torch.Tensor,
    cache: Any,
    cache_kw: str,
    *,
    position_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    last_only: bool = False,
    parts: tuple[Any, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One cached forward; returns ``(logits (T', V), last hidden state (T', hidden))``
    for batch row 0, ``T' = 1`` when ``last_only`` else ``T``.

    ``parts`` (from :func:`direct_parts`) runs the decoder and the output layer directly
    (the same operations as the model's own forward, so the same numbers)."""
    kwargs: dict[str, Any] = {cache_kw: cache, "use_cache": True}
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if parts is not None:
        decoder, head = parts
        hidden = decoder(input_ids=input_ids, **kwargs).last_hidden_state[0]  # (T, hidden)
        if last_only:
            hidden = hidden[-1:]
        return head(hidden), hidden  # (T', V), (T', hidden)
    if last_only:
        kwargs["logits_to_keep"] = 1
    out = model(input_ids=input_ids, output_hidden_states=True, **kwargs)
    hidden = out.hidden_states[-1][0]  # (T, hidden)
    logits = out.logits[0]  # (T or 1, V)
    if last_only:
        return logits[-1:], hidden[-1:]
    return logits, hidden
