"""The small Transformer pieces every MTP head is built from.

A Llama-style pre-norm block: ``x + Attn(RMSNorm(x))`` then ``x + MLP(RMSNorm(x))`` with
rotary positions, grouped-query attention and a SwiGLU MLP. The same block serves two
callers: training (a whole sequence, causal attention, no cache) and drafting during
speculative decoding (a few new positions attending to a per-block key/value cache).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class BlockConfig:
    """Sizes of one head's Transformer block (Llama's names and meanings)."""

    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    head_dim: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02


# SDPA's enable_gqa (torch >= 2.5) reads grouped key/value heads without copying them
_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


# (out, in, rows, dtype, threads) -> whether ``weight @ x^T`` timed faster than F.linear
_TRANSPOSED_IS_FASTER: dict[tuple, bool] = {}


def few_rows_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight)`` (no bias) for the few rows ``x`` ``(..., K)`` of a decoding step.

    On the CPU, BLAS libraries treat products with 2-4 rows very differently. With MKL
    on a 2-core AMD EPYC, ``x @ weight^T`` took up to twice a 1-row product's time and
    ``weight @ x^T`` (the ``(N, K)`` weight streamed once against a thin right-hand
    side) was the fast form: 123 against 298 us for 2 rows of a 256 -> 2048 output
    layer, weights out of cache (2026-12-03). On a 2-core Intel Xeon with AMX it is the
    other way round: 87 against 138 us for the same product, 32 against 53 us for a
    256 -> 512 one (2026-12-04). So the first call for each weight shape, row count,
    dtype and thread count times both forms (7 alternated rounds of 3 calls, about a
    millisecond) and keeps ``weight @ x^T`` only if it was at least 20% faster; later
    calls look the choice up. Both give the same sums up to float rounding. One row,
    many rows and other devices keep ``F.linear``. Returns ``(..., N)``, possibly a
    non-contiguous view.
    """
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if not 2 <= rows <= 4 or x.device.type != "cpu":
        return F.linear(x, weight)
    x2 = x.reshape(rows, x.shape[-1])
    key = (*weight.shape, rows, x.dtype, weight.dtype, torch.get_num_threads())
    transposed = _TRANSPOSED_IS_FASTER.get(key)
    if transposed is None:
        transposed = _TRANSPOSED_IS_FASTER[key] = _transposed_is_faster(x2, weight)
    if not transposed:
        return F.linear(x, weight)
    out = torch.mm(weight, x2.t())  # (N, rows)
    return out.t().reshape(*x.shape[:-1], weight.shape[0])


def _transposed_is_faster(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Time ``F.linear(x, weight)`` against ``weight @ x^T`` for ``x`` ``(rows, K)``."""
    x, weight = x.detach(), weight.detach()
    forms = (lambda: F.linear(x, weight), lambda: torch.mm(weight, x.t()))
    best = [math.inf, math.inf]
    with torch.no_grad():
        for _ in range(7):  # alternated, so that a burst of load hits both forms
            for i, form in enumerate(forms):
                start = time.perf_counter()
                for _ in range(3):
                    form()
                best[i] = min(best[i], time.perf_counter() - start)
    return best[1] < 0.8 * best[0]


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight``, computed in float32 like Llama's."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of ``x`` ``(..., C)`` with ``weight`` ``(C,)`` (what ``RMSNorm`` computes)."""
    dtype = x.dtype
    if dtype in (torch.float16, torch.bfloat16):  # normalise in float32, scale in dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        return weight * x32.to(dtype)
    return F.rms_norm(x, (x.shape[-1],), weight, eps)  # one fused op


def rotary_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables ``(L, head_dim)`` for integer ``positions`` ``(L,)``.

    Frequencies ``theta ** (-2j / head_dim)`` for ``j < head_dim / 2``, each used twice
    (the "rotate half" layout of GPT-NeoX and Llama); angles computed in float64.
    """
    inv_freq = theta ** (
        -torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float64) / head_dim
    )
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (L, hd/2)
    angles = torch.cat((angles, angles), dim=-1)  # (L, hd)
    return angles.cos().to(dtype), angles.sin().to(dtype)


class RotaryTable:
    """cos/sin rows for positions 0..n-1, grown by doubling; decoding reads slices of it
    instead of recomputing the trigonometry at every step."""

    def __init__(self, head_dim: int, theta: float) -> None:
        self.head_dim, self.theta = head_dim, theta
        self.cos: torch.Tensor | None = None
        self.sin: torch.Tensor | None = None

    def get(self, start: int, length: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + length
        cos = self.cos
        stale = cos is None or cos.dtype != like.dtype or cos.device != like.device
        if stale or cos.shape[0] < end:
            n = max(64, 1 << (end - 1).bit_length())
            positions = torch.arange(n, device=like.device)
            self.cos, self.sin = rotary_cos_sin(positions, self.head_dim, self.theta, like.dtype)
        assert self.cos is not None and self.sin is not None
        return self.cos[start:end], self.sin[start:end]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(B, nh, L, hd)`` by the per-position angles in ``cos``/``sin`` ``(L, hd)``."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class CausalSelfAttention(nn.Module):
    """Grouped-query causal self-attention with rotary positions and an optional cache."""

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        if cfg.num_attention_heads % cfg.num_key_value_heads:
            raise ValueError(
                "num_attention_heads must be a multiple of num_key_value_heads, got "
                f"{cfg.num_attention_heads} and {cfg.num_key_value_heads}"
            )
        self.cfg = cfg
        nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, nh * hd, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, nkv * hd, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, nkv * hd, bias=False)
        self.o_proj = nn.Linear(nh * hd, cfg.hidden_size, bias=False)
        self.rotary = RotaryTable(hd, cfg.rope_theta)

    def forward(
        self,
        x: torch.Tensor,
        start: int = 0,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Attend from ``x`` ``(B, L, C)`` at positions ``start..start+L-1``.

        ``past`` holds the keys/values of positions ``0..start-1``; returns the output
        ``(B, L, C)`` and the keys/values of the new positions only, ``(B, nkv, L, hd)``.
        """
        B, L, _ = x.shape
        nh, nkv, hd = self.cfg.num_attention_heads, self.cfg.num_key_value_heads, self.cfg.head_dim
        q = self.q_proj(x).view(B, L, nh, hd).transpose(1, 2)  # (B, nh, L, hd)
        k = self.k_proj(x).view(B, L, nkv, hd).transpose(1, 2)  # (B, nkv, L, hd)
        v = self.v_proj(x).view(B, L, nkv, hd).transpose(1, 2)  # (B, nkv, L, hd)
        cos, sin = self.rotary.get(start, L, x)  # (L, hd) each
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        new_kv = (k, v)
        if past is not None and past[0].shape[-2] > 0:
            k = torch.cat((past[0], k), dim=-2)  # (B, nkv, start+L, hd)
            v = torch.cat((past[1], v), dim=-2)
        gqa = {}
        if nh != nkv:  # query head h reads key/value head h // (nh / nkv), as in Llama
            if _SDPA_HAS_GQA:  # SDPA reads the shared heads in place
                gqa["enable_gqa"] = True
            else:  # torch < 2.5: repeat them
                k = k.repeat_interleave(nh // nkv, dim=1)  # (B, nh, S, hd)
                v = v.repeat_interleave(nh // nkv, dim=1)
        S = k.shape[-2]
        if S == L:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, **gqa)
        elif L == 1:  # one query after the cache: it sees every key
            y = F.scaled_dot_product_attention(q, k, v, **gqa)
        else:
            # Queries sit at the end of the key range: a bottom-right aligned causal mask.
            q_pos = torch.arange(S - L, S, device=x.device)[:, None]
            k_pos = torch.arange(S, device=x.device)[None, :]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=k_pos <= q_pos, **gqa)
        y = y.transpose(1, 2).reshape(B, L, nh * hd)  # (B, L, nh*hd)
        return self.o_proj(y), new_kv


class SwiGLU(nn.Module):
    """Llama's MLP: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TransformerBlock(nn.Module):
    """One pre-norm block: causal self-attention then MLP, each with a residual."""

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.post_attention_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(
        self,
        x: torch.Tensor,
        start: int = 0,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``x`` ``(B, L, C)`` -> ``(B, L, C)`` and the new positions' keys/values."""
        a, new_kv = self.attn(self.input_norm(x), start, past)
        x = x + a
        x = x + self.mlp(self.post_attention_norm(x))
        return x, new_kv


class GrowingRows:
    """A buffer of rows along dimension ``dim``, written in place and grown by doubling.

    Decoding appends a few rows per step; keeping them in one preallocated tensor
    (instead of ``torch.cat`` of the history at every step) makes a step's cost
    independent of the sequence length. Rows past what the caller treats as final are
    scratch that a later ``write`` overwrites.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.data: torch.Tensor | None = None

    def write(self, start: int, rows: torch.Tensor) -> None:
        """Store ``rows`` at positions ``start .. start + rows.shape[dim] - 1``."""
        end = start + rows.shape[self.dim]
        data = self.data
        if data is None or data.shape[self.dim] < end:
            shape = list(rows.shape)
            shape[self.dim] = max(64, 1 << (end - 1).bit_length())
            grown = rows.new_empty(shape)
            if data is not None and start > 0:  # keep the rows before ``start``
                grown.narrow(self.dim, 0, start).copy_(data.narrow(self.dim, 0, start))
            self.data = data = grown
        data.narrow(self.dim, start, end - start).copy_(rows)

    def read(self, start: int, end: int) -> torch.Tensor:
        """A view of positions ``start .. end - 1``."""
        assert self.data is not None
        return self.data.narrow(self.dim, start, end - start)


class BlockDecoder:
    """A ``TransformerBlock`` for decoding: fused projections and an in-place KV cache.

    The same arithmetic as ``TransformerBlock.forward`` with ``past``, restated for a
    few rows per call: q/k/v come from one matrix product (their weights concatenated
    once, here) and gate/up from another, rotary positions rotate q and k together, and
    keys/values are written into a growing buffer instead of being concatenated to the
    history. Build it after training: it copies the weights it fuses.
    """

    def __init__(self, block: TransformerBlock) -> None:
        attn, mlp, cfg = block.attn, block.mlp, block.attn.cfg
        self.cfg, self.block, self.rotary = cfg, block, attn.rotary
        with torch.no_grad():
            self.w_qkv = torch.cat((attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight))
            self.w_gate_up = torch.cat((mlp.gate_proj.weight, mlp.up_proj.weight))
        self.keys, self.values = GrowingRows(dim=2), GrowingRows(dim=2)  # (1, nkv, S, hd)

    def __call__(self, x: torch.Tensor, start: int, last_only: bool = False) -> torch.Tensor:
        """``x`` ``(1, L, C)`` at positions ``start .. start+L-1`` -> ``(1, L, C)``.

        Keys/values of positions ``0 .. start-1`` must be in the buffer (from earlier
        calls); this call writes those of its own positions after them. With
        ``last_only`` only the last position's output is computed, ``(1, 1, C)`` (the
        others still contribute their keys/values): what the deepest drafted depth needs.
        """
        cfg, block = self.cfg, self.block
        B, L, _ = x.shape
        nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        eps = cfg.rms_norm_eps
        qkv = few_rows_linear(rms_norm(x, block.input_norm.weight, eps), self.w_qkv)
        qkv = qkv.reshape(B, L, nh + 2 * nkv, hd).transpose(1, 2)  # (B, nh+2nkv, L, hd)
        cos, sin = self.rotary.get(start, L, x)
        qk = apply_rotary(qkv[:, : nh + nkv], cos, sin)  # q and k rotated in one pass
        self.keys.write(start, qk[:, nh:])
        self.values.write(start, qkv[:, nh + nkv :])
        S = start + L
        k, v = self.keys.read(0, S), self.values.read(0, S)  # (B, nkv, S, hd)
        q = qk[:, :nh]
        if last_only and L > 1:  # one query, the last: it sees every key
            q, x, L = q[:, :, -1:], x[:, -1:], 1
        # after few_rows_linear's weight @ x^T form (a transposed view) the rotated rows
        # have head_dim strided, which sends SDPA to its math path (~100 us a call
        # against ~10 us for the fused kernel, measured): give it contiguous rows
        q = q.contiguous()
        gqa = {}
        if nh != nkv:
            if _SDPA_HAS_GQA:
                gqa["enable_gqa"] = True
            else:
                k = k.repeat_interleave(nh // nkv, dim=1)
                v = v.repeat_interleave(nh // nkv, dim=1)
        if L == 1:  # one query after the cache: it sees every key
            y = F.scaled_dot_product_attention(q, k, v, **gqa)
        elif S == L:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, **gqa)
        else:  # bottom-right aligned causal mask: query i sits at position start + i
            mask = torch.ones(L, S, dtype=torch.bool, device=x.device).tril(start)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **gqa)
        x = x + few_rows_linear(y.transpose(1, 2).reshape(B, L, nh * hd), block.attn.o_proj.weight)
        gate, up = few_rows_linear(
            rms_norm(x, block.post_attention_norm.weight, eps), self.w_gate_up
        ).chunk(2, dim=-1)
        return x + few_rows_linear(F.silu(gate) * up, block.mlp.down_proj.weight)


def init_weights(module: nn.Module, std: float) -> None:
    """Normal(0, std) for every Linear (no biases here), ones for the norms (Llama's init)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std)
        elif isinstance(m, RMSNorm):
            nn.init.ones_(m.weight)


def default_head_dim(hidden_size: int, num_attention_heads: int) -> int:
    if hidden_size % num_attention_heads:
        raise ValueError(
            "hidden_size must be divisible by num_attention_heads (or pass head_dim), got "
            f"{hidden_size} and {num_attention_heads}"
        )
    return hidden_size // num_attention_heads


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """``value`` as an int >= minimum, else TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_max_drafts(max_drafts: object, depth: int) -> int:
    """``max_drafts`` (``None`` meaning ``depth``) as an int in 1..depth, else ValueError."""
    D = depth if max_drafts is None else max_drafts
    if isinstance(D, bool) or not isinstance(D, int) or not 1 <= D <= depth:
        raise ValueError(f"max_drafts must be an int in 1..{depth}, got {max_drafts!r}")
    return D


def check_num_drafts(num_drafts: int, max_drafts: int) -> None:
    """ValueError unless a drafting state started for ``max_drafts`` can give ``num_drafts``."""
    if num_drafts > max_drafts:
        raise ValueError(f"num_drafts must be <= max_drafts={max_drafts}, got {num_drafts}")
