"""FlashAttention forward and backward in Triton, plus a tiled pure-PyTorch path.

``flash_attn_func`` follows flash-attn's interface (``(batch, seqlen, nheads, headdim)``);
``scaled_dot_product_attention`` follows torch's SDPA (``(batch, heads, seq, headdim)``);
``attention_reference`` is the materialised softmax attention the tests compare against.
"""

from .interface import flash_attn_func, scaled_dot_product_attention
from .reference import attention_reference

__version__ = "0.1.0"

__all__ = ["attention_reference", "flash_attn_func", "scaled_dot_product_attention"]
