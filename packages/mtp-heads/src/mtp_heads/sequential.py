"""DeepSeek-V3's sequential multi-token prediction (MTP) module.

Depth k (1..D) refines the representation of depth k-1 with the embedding of the token
k steps ahead, so every depth keeps the full causal chain::

    h^0_i            = trunk's last hidden state at position i
    h'^k_i           = M_k [ RMSNorm(h^{k-1}_i) ; RMSNorm(Emb(t_{i+k})) ]     (2C -> C)
    h^k_{0..T-k-1}   = TransformerBlock_k(h'^k_{0..T-k-1})                  (causal)
    logits^k_i       = OutHead(RMSNorm_k(h^k_i))        predicts t_{i+k+1}

Emb and OutHead are the main model's (shared, not copied; frozen by default).
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
    few_rows_linear,
    init_weights,
)
from .common import (
    SharedWeightsMixin,
    block_config,
    check_inputs,
    cross_entropy,
    sizes_from_model,
)


class MTPDepth(nn.Module):
    """One depth: the two input norms, the projection M_k, a block and the output norm."""

    def __init__(self, cfg) -> None:
        super().__init__()
        self.hidden_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.embed_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.proj = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=False)
        self.block = TransformerBlock(cfg)
        self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class MTPModule(SharedWeightsMixin, nn.Module):
    """DeepSeek-V3 sequential multi-token prediction heads on a causal LM's trunk.

    Args:
        hidden_size: C, the trunk's hidden size.
        vocab_size: V.
        depth: D >= 1, how many extra future tokens are predicted (depth k predicts
            t_{i+k+1} at position i).
        num_attention_heads: query heads of each depth's Llama-style block.
        num_key_value_heads: key/value heads (GQA); default ``num_attention_heads``.
        intermediate_size: the SwiGLU MLP's width; default ``4 * hidden_size``.
        head_dim: per-head size; default ``hidden_size // num_attention_heads``.
        rope_theta: the rotary base.
        rms_norm_eps: the RMSNorm epsilon.
        embed: the main model's ``nn.Embedding`` (V, C), shared; ``None`` makes an own one.
        lm_head: the main model's output ``nn.Linear`` (C -> V), shared; ``None`` makes
            an own one.
        train_shared: let this module's loss update the shared embedding/head
            (default False: frozen, as in DeepSeek-V3 for the MTP loss).
        initializer_range: std of the normal init of every Linear.

    ``forward(hidden_states, input_ids)`` returns one logits tensor per depth,
    ``(B, T-k, V)`` for depth k; ``loss(...)`` is DeepSeek-V3's
    ``weight * mean_k CE_k``.
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
        embed: nn.Embedding | None = None,
        lm_head: nn.Linear | None = None,
        train_shared: bool = False,
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
        self.depths = nn.ModuleList(MTPDepth(self.cfg) for _ in range(depth))
        self._setup_shared(hidden_size, vocab_size, embed, lm_head, train_shared, need_embed=True)
        init_weights(self, initializer_range)
        if embed is not None:  # follow the trunk's dtype/device
            self.to(device=embed.weight.device, dtype=embed.weight.dtype)

    @classmethod
    def from_model(cls, model: nn.Module, depth: int = 1, **overrides) -> MTPModule:
        """An MTP module sized for a transformers causal LM, sharing its embedding and head.

        Reads hidden/vocab/attention/MLP sizes, rms eps and the rope base off
        ``model.config``; any keyword in ``overrides`` replaces the value read.
        """
        kwargs = sizes_from_model(model)
        kwargs.update(overrides)
        hidden, vocab = kwargs.pop("hidden_size"), kwargs.pop("vocab_size")
        nh = kwargs.pop("num_attention_heads")
        return cls(hidden, vocab, depth, nh, **kwargs)

    # -- the readable training path -------------------------------------------------
    def depth_step(
        self,
        k: int,
        h_prev: torch.Tensor,
        future_ids: torch.Tensor,
        start: int = 0,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Depth ``k`` (1-based) on positions ``start..start+L-1``.

        ``h_prev`` ``(B, L, C)`` is h^{k-1} there, ``future_ids`` ``(B, L)`` the tokens
        t_{i+k}. Returns h^k ``(B, L, C)`` (before the output norm) and the block's new
        keys/values.
        """
        return self.depths[k - 1].block(self.depth_input(k, h_prev, future_ids), start, past)

    def depth_input(self, k: int, h_prev: torch.Tensor, future_ids: torch.Tensor) -> torch.Tensor:
        """``M_k [RMSNorm(h^{k-1}); RMSNorm(Emb(t_{i+k}))]`` ``(B, L, C)``, depth ``k``'s
        block input, from ``h_prev`` ``(B, L, C)`` and ``future_ids`` ``(B, L)``."""
        d = self.depths[k - 1]
        e = self._embed_tokens(future_ids)  # (B, L, C)
        # few_rows_linear: the same product as d.proj, faster for a decoding step's 2-4 rows
        return few_rows_linear(
            torch.cat((d.hidden_norm(h_prev), d.embed_norm(e)), dim=-1), d.proj.weight
        )

    def logits_of(self, k: int, h: torch.Tensor) -> torch.Tensor:
        """Depth ``k``'s logits ``(..., V)`` from its output h^k ``(..., C)``."""
        return self._output_head(self.depths[k - 1].final_norm(h))

    def forward(self, hidden_states: torch.Tensor, input_ids: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every depth.

        Args:
            hidden_states: ``(B, T, C)``, the trunk's
                ``model(ids, output_hidden_states=True).hidden_states[-1]``.
            input_ids: ``(B, T)`` int64, the tokens those states were computed from.

        Returns:
            ``[logits_1, ..., logits_D]``, ``logits_k`` ``(B, T-k, V)``: row i predicts
            token ``t_{i+k+1}`` (the last row looks past the end of ``input_ids``).
            Requires ``T > D``.
        """
        check_inputs(hidden_states, input_ids, self.hidden_size, self.depth + 1, "forward")
        T = input_ids.shape[1]
        h = hidden_states  # h^0
        out = []
        for k in range(1, self.depth + 1):
            # depth k exists at positions 0..T-k-1 (it needs t_{i+k})
            h, _ = self.depth_step(k, h[:, : T - k], input_ids[:, k:])  # (B, T-k, C)
            out.append(self.logits_of(k, h))  # (B, T-k, V)
        return out

    def loss(
        self, hidden_states: torch.Tensor, input_ids: torch.Tensor, weight: float = 1.0
    ) -> torch.Tensor:
        """``weight * (1/D) * sum_k CE(logits_k[:, :T-k-1], input_ids[:, k+1:])``.

        Each depth's cross-entropy is the mean over its ``B * (T-k-1)`` targets, as in
        DeepSeek-V3 (which adds it to the main loss with weight 0.3, later 0.1).
        Requires ``T >= D + 2``.
        """
        check_inputs(hidden_states, input_ids, self.hidden_size, self.depth + 2, "loss")
        logits = self(hidden_states, input_ids)
        losses = [
            cross_entropy(lg[:, :-1], input_ids[:, k + 1 :])  # (B, T-k-1, V) vs (B, T-k-1)
            for k, lg in enumerate(logits, start=1)
        ]
        return torch.stack(losses).mean() * weight

    # -- decoding -----------------------------------------------------------------
    def start_drafting(self, max_drafts: int | None = None) -> SequentialDraftState:
        """A fresh drafting state for one sequence (see ``speculative_generate``).

        ``max_drafts`` (1..depth, default depth): the most drafts any call will ask for;
        the deeper depths are never run, and the deepest one run computes only the
        output row it drafts from.
        """
        return SequentialDraftState(self, max_drafts)


class SequentialDraftState:
    """Per-depth key/value caches for drafting with an ``MTPModule``, batch 1.

    Depth k at position j reads t_{j+k}. Once the verified tokens are t_0..t_m and the
    trunk states h^0_0..h^0_{m-1} are known, positions j <= m-k of depth k depend only on
    verified tokens: they are *committed* (keys/values and outputs kept). Positions
    m-k+1..m-1 read draft tokens: they are computed for this draft and recomputed next
    time. So each call costs (new positions + k - 1) rows at depth k.

    Each depth runs through a ``BlockDecoder`` (fused projections, keys/values written
    in place); the states h^k live in growing buffers whose rows past the committed ones
    are the scratch of the current draft. The readable cache-free statement of the same
    computation is ``MTPModule.forward`` (the tests compare the two).
    """

    def __init__(self, mtp: MTPModule, max_drafts: int | None = None) -> None:
        self.mtp = mtp
        self.max_drafts = D = check_max_drafts(max_drafts, mtp.depth)
        # h^D is read by no deeper depth: only its last row (the draft's) is computed
        self.blocks = [BlockDecoder(d.block) for d in mtp.depths[:D]]
        # h^1..h^{D-1}, (1, positions, C); depth 1 reads h^0 at exactly the positions it
        # has not seen, the new trunk states, so those are not stored
        self.states = {k: GrowingRows(dim=1) for k in range(1, D)}
        self.num_committed = [0] * (D + 1)  # rows of h^k (and its keys/values) kept

    def draft(
        self,
        new_hidden: torch.Tensor,
        tokens: torch.Tensor,
        num_drafts: int,
        choose: Callable[[torch.Tensor], torch.Tensor],
    ) -> list[torch.Tensor]:
        """Draft ``num_drafts`` tokens after ``tokens``.

        Args:
            new_hidden: ``(1, n, C)`` trunk states of the positions not yet seen.
            tokens: ``(1, m+1)`` all verified tokens (trunk states known for 0..m-1).
            num_drafts: 1..D, how many depths to run.
            choose: maps one depth's logits ``(1, V)`` to a token ``(1,)``.

        Returns:
            The draft tokens ``[d_{m+1}, ..., d_{m+num_drafts}]``, each ``(1,)``.
        """
        mtp = self.mtp
        check_num_drafts(num_drafts, self.max_drafts)
        m = tokens.shape[1] - 1
        seen = self.num_committed[0]
        if seen + new_hidden.shape[1] != m:
            raise RuntimeError(
                f"draft state out of sync: {seen + new_hidden.shape[1]} states for {m} tokens"
            )
        self.num_committed[0] = m
        drafts: list[torch.Tensor] = []
        ext = tokens
        for k in range(1, num_drafts + 1):
            c = self.num_committed[k]
            if drafts:  # depth k reads t_{j+k}, which for the last k-1 rows are drafts
                ext = torch.cat((tokens, torch.cat(drafts).view(1, -1)), dim=1)  # (1, m+k)
            # h^{k-1} at positions c..m-1 (depth 1 commits every position it sees: c = seen)
            h_prev = new_hidden if k == 1 else self.states[k - 1].read(c, m)
            x = mtp.depth_input(k, h_prev, ext[:, c + k : m + k])  # reads t_{j+k}
            deepest = k == self.max_drafts
            h_k = self.blocks[k - 1](x, c, last_only=deepest)
            if not deepest:  # (1, m-c, C): depth k+1 reads these rows
                self.states[k].write(c, h_k)
            # positions j <= m-k read no draft: their rows and keys/values are final
            self.num_committed[k] = max(c, m - k + 1)
            drafts.append(choose(mtp.logits_of(k, h_k[:, -1])))  # d_{m+k}
        return drafts
