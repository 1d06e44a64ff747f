"""Use flashattn-lite as a Hugging Face transformers attention implementation.

``register()`` adds an attention function to transformers' ``AttentionInterface`` (and
the matching mask builder to ``AttentionMaskInterface``) and returns the name to pass as
``attn_implementation``::

    name = flashattn_lite.integrations.transformers.register()
    model = LlamaForCausalLM(config)  # or from_pretrained(..., attn_implementation=name)
    model.set_attn_implementation(name)

transformers is imported only when ``register()`` is called. The attention function
receives SDPA's layout ``(batch, heads, seq, head_dim)``. Without a padding mask it runs
the band path (causal, bottom-right aligned, so decoding with a KV cache is handled);
with a mask (padding, or patterns the model builds itself) it runs the tiled torch path
with that boolean/additive mask. One mask is recognised instead of read: the plain
causal mask the registered builder makes for several new queries after a KV cache
(speculative verification, chunked prefill) is marked, and runs as the band it is.
"""

from __future__ import annotations

from typing import Any

import torch

from ..interface import _attention, _resolve_backend
from ..masking import Band, flash_band
from ..validation import check_qkv

# transformers treats every implementation whose name contains "flash" as a flash-attn
# kernel (padding-free varlen inputs, kernels from the hub): the name must avoid it
DEFAULT_NAME = "fa_lite"
# attribute set on a mask built by ``causal_continuation_mask``: it is exactly the
# bottom-right causal band, every key a real token (a sliced or edited copy loses it)
_BAND_MARK = "_fa_lite_bottom_right_causal"


def causal_continuation_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    *,
    mask_function: Any = None,
    attention_mask: torch.Tensor | None = None,
    local_size: int | None = None,
    **kwargs: Any,
) -> torch.Tensor | None:
    """transformers' SDPA mask builder, marking the masks that are a plain causal band.

    ``sdpa_mask`` returns ``None`` when SDPA's own ``is_causal`` suffices (one query, or
    as many queries as keys) and otherwise materialises a boolean ``(B, 1, Sq, Sk)``
    mask. For ``Sq > 1`` new queries after ``Sk - Sq`` cached tokens, no padding and no
    window, that mask is the bottom-right causal band which the attention computes
    from two integers; it is marked so that :func:`attention_forward` runs the band
    path instead of reading it (cheaper, and the Triton kernels take bands only).
    """
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    if mask_function is None:
        mask_function = causal_mask_function
    # a causal band with every key a token before or among the queries (no window)
    causal_continuation = (
        not torch.compiler.is_compiling()  # no marks, nor data-dependent checks, in a graph
        and mask_function is causal_mask_function
        and local_size is None
        and isinstance(q_offset, int)
        and kv_offset == 0
        and q_offset + q_length == kv_length
    )
    if causal_continuation and attention_mask is None and 1 < q_length < kv_length:
        # what sdpa_mask would build (it materialises this case), in two ops instead of
        # its index grids: a decoding step with several new tokens pays it every forward
        band = torch.ones(q_length, kv_length, dtype=torch.bool, device=kwargs.get("device", "cpu"))
        mask = band.tril_(q_offset).expand(batch_size, 1, q_length, kv_length)
        setattr(mask, _BAND_MARK, True)
        return mask
    mask = sdpa_mask(
        batch_size,
        q_length,
        kv_length,
        q_offset,
        kv_offset,
        mask_function=mask_function,
        attention_mask=attention_mask,
        local_size=local_size,
        **kwargs,
    )
    plain = (
        causal_continuation
        and mask is not None
        and mask.dtype == torch.bool
        and (attention_mask is None or bool(attention_mask.all()))
    )
    if plain:
        setattr(mask, _BAND_MARK, True)
    return mask


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    *,
    backend: str = "auto",
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; returns ``((B, Sq, H, D), None)``.

    query ``(B, H, Sq, D)``, key/value ``(B, Hk, Sk, D)`` (grouped heads are not repeated).
    ``attention_mask`` is None or a 4-D bool/additive mask ``(B|1, 1|H, Sq, Sk)`` from
    transformers' SDPA mask builder. Dropout, softcapping and sliding windows set on
    the module are refused rather than ignored.
    """
    if dropout:
        raise ValueError(f"dropout must be 0 for flashattn_lite attention, got {dropout}")
    # a sliding window needs nothing here: transformers' SDPA mask builder writes it into
    # attention_mask whenever it can matter. Softcapping and attention sinks would change
    # the maths, so they are refused.
    for name in ("softcap", "s_aux"):
        if kwargs.get(name) is not None:
            raise ValueError(f"{name} is not supported by flashattn_lite attention")
    # Under autocast transformers hands over mixed dtypes (rotary embeddings promote q
    # and k to float32 while v stays in the autocast dtype). SDPA is on autocast's
    # lower-precision list and casts all three to the autocast dtype; so do we.
    device_type = query.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        query, key, value = (t.to(dtype) for t in (query, key, value))
    check_qkv(query, key, value, ("query", "key", "value"), "bhsd")
    seqlen_q, seqlen_k = query.shape[2], key.shape[2]
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    scale = query.shape[-1] ** -0.5 if scaling is None else float(scaling)
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # (B, S, H, D) views
    mask = None
    if (
        attention_mask is not None
        and not torch.compiler.is_compiling()  # (compiled graphs see no marks)
        and getattr(attention_mask, _BAND_MARK, False)
        and attention_mask.shape[-2:] == (seqlen_q, seqlen_k)
    ):
        band = flash_band(seqlen_q, seqlen_k, True, (-1, -1))  # the mask is this band
    elif attention_mask is not None:
        band = Band(diagonal=0)  # the mask already holds causality
        mask = attention_mask[:, :, :, :seqlen_k]
        mask = mask.expand(mask.shape[0], mask.shape[1], seqlen_q, seqlen_k)
    else:
        if is_causal and 1 < seqlen_q < seqlen_k:
            # as transformers' SDPA path: a prefill into an empty static cache, whose
            # trailing key slots are unused (not a continuation of earlier tokens)
            k, v = k[:, :seqlen_q], v[:, :seqlen_q]
            seqlen_k = seqlen_q
        band = flash_band(seqlen_q, seqlen_k, bool(is_causal), (-1, -1))
    resolved = _resolve_backend(backend, query)
    if mask is not None:
        resolved = "torch"  # the Triton kernels take bands, not arbitrary masks
    out, _ = _attention(q, k, v, scale, band, mask, resolved, False)
    return out, None


def register(name: str = DEFAULT_NAME, backend: str = "auto") -> str:
    """Register flashattn-lite's attention with transformers; returns ``name``.

    Pass the returned name as ``attn_implementation`` (``from_pretrained``,
    ``from_config``, the config's ``_attn_implementation`` or
    ``model.set_attn_implementation``). ``backend`` is as in ``flash_attn_func``.
    Registering the same name again replaces it.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if "flash" in name or name in ("eager", "sdpa", "flex_attention"):
        raise ValueError(
            f"name must not contain 'flash' nor be a built-in implementation (transformers "
            f"would dispatch it to its own kernels), got {name!r}"
        )
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend must be one of ('auto', 'torch', 'triton'), got {backend!r}")
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "flashattn_lite.integrations.transformers.register needs transformers>=5 "
            "(pip install 'flashattn-lite[transformers]')"
        ) from exc

    def fa_lite_attention(module, query, key, value, attention_mask, **kwargs):
        return attention_forward(
            module, query, key, value, attention_mask, backend=backend, **kwargs
        )

    AttentionInterface.register(name, fa_lite_attention)
    # the SDPA mask builder returns None whenever plain causality suffices, so the band
    # path runs; with padding it returns a bool (B, 1, Sq, Sk) mask; a plain causal
    # continuation's mask comes back marked as the band it is
    AttentionMaskInterface.register(name, causal_continuation_mask)
    return name
