"""Medusa decoding: one prefill, then one tree-attention verification forward per step."""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .acceptance import accept_greedy_fast, accept_typical
from .heads import MedusaHeads
from .kv_cache import (
    cache_keyword,
    check_attention_backend,
    direct_parts,
    keep_accepted,
    max_cached_length,
    model_forward,
    new_cache,
    tree_attention_mask,
)
from .tree import DEFAULT_CHOICES, MedusaTree, build_tree

ACCEPTANCE_RULES = ("greedy", "typical")


@dataclass
class MedusaOutput:
    """What :func:`generate` returns: the tokens and the figures a report needs.

    - ``sequences``: ``(1, prompt_length + new_tokens)`` int64, prompt first.
    - ``accept_lengths``: tokens emitted by each verification step (the accepted head
      candidates plus the base model's own next token, so each is >= 1; the last one is
      cut to what ``max_new_tokens`` still needed). ``1 + sum(accept_lengths)`` equals
      ``new_tokens``: the first new token comes from the prefill.
    - ``accepted_candidates``: head candidates accepted per step (before any cut),
      ``0..tree depth``.
    - ``tree_depth``: depth of the tree used (number of heads verified).
    - ``prefill_seconds``, ``decode_seconds``: wall-clock time of the prefill and of
      all verification steps (CUDA synchronised).
    """

    sequences: torch.Tensor
    accept_lengths: list[int]
    accepted_candidates: list[int]
    tree_depth: int
    prompt_length: int
    prefill_seconds: float
    decode_seconds: float
    tree_size: int = field(default=1)

    @property
    def new_tokens(self) -> int:
        return self.sequences.shape[1] - self.prompt_length

    @property
    def num_steps(self) -> int:
        """Verification forwards (the prefill excluded)."""
        return len(self.accept_lengths)

    @property
    def num_forwards(self) -> int:
        """Model forwards in total: prefill + verification steps (greedy needs new_tokens)."""
        return 1 + self.num_steps

    @property
    def mean_accept_length(self) -> float:
        """Mean tokens per verification step (Medusa's "acceleration rate"); NaN if none."""
        if not self.accept_lengths:
            return math.nan
        return sum(self.accept_lengths) / len(self.accept_lengths)

    @property
    def tokens_per_step(self) -> float:
        """Alias of :attr:`mean_accept_length`."""
        return self.mean_accept_length

    @property
    def tokens_per_forward(self) -> float:
        """New tokens per model forward, prefill included (1.0 for plain greedy)."""
        return self.new_tokens / self.num_forwards

    @property
    def acceptance_by_depth(self) -> list[float]:
        """Fraction of steps whose depth-``d`` candidate (head ``d - 1``) was accepted,
        for ``d = 1..tree_depth``."""
        steps = max(len(self.accepted_candidates), 1)
        return [
            sum(a >= d for a in self.accepted_candidates) / steps
            for d in range(1, self.tree_depth + 1)
        ]

    @property
    def total_seconds(self) -> float:
        return self.prefill_seconds + self.decode_seconds

    @property
    def tokens_per_second(self) -> float:
        """New tokens per wall-clock second, prefill included."""
        return self.new_tokens / self.total_seconds if self.total_seconds > 0 else math.inf

    def stats(self) -> dict[str, float]:
        """The figures as a flat dict (for tables and JSON)."""
        out = {
            "new_tokens": self.new_tokens,
            "num_steps": self.num_steps,
            "tree_size": self.tree_size,
            "mean_accept_length": self.mean_accept_length,
            "tokens_per_forward": self.tokens_per_forward,
            "tokens_per_second": self.tokens_per_second,
            "prefill_seconds": self.prefill_seconds,
            "decode_seconds": self.decode_seconds,
        }
        for d, rate in enumerate(self.acceptance_by_depth, start=1):
            out[f"acceptance_depth_{d}"] = rate
        return out


def _output_embedding_shape(model: Any) -> tuple[int, int]:
    """(vocab, hidden) of the model's output layer."""
    get = getattr(model, "get_output_embeddings", None)
    layer = get() if callable(get) else None
    if layer is not None and isinstance(getattr(layer, "weight", None), torch.Tensor):
        vocab, hidden = layer.weight.shape
        return int(vocab), int(hidden)
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"model must be a transformers causal LM, got {type(model).__name__}")
    return int(config.vocab_size), int(config.hidden_size)


def _validate(
    model: Any,
    heads: MedusaHeads,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    acceptance: str,
    temperature: float,
    posterior_threshold: float,
    posterior_alpha: float,
) -> None:
    if not isinstance(heads, MedusaHeads):
        raise TypeError(f"heads must be a MedusaHeads, got {type(heads).__name__}")
    vocab, hidden = _output_embedding_shape(model)
    if heads.hidden_size != hidden:
        raise ValueError(
            f"heads hidden_size must match the model's hidden size {hidden}, "
            f"got {heads.hidden_size}"
        )
    if heads.vocab_size != vocab:
        raise ValueError(
            f"heads vocab_size must match the model's vocabulary {vocab}, got {heads.vocab_size}"
        )
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype.is_floating_point:
        got = input_ids.dtype if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise TypeError(f"input_ids must be an integer torch.Tensor, got {got}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (1, T), got {tuple(input_ids.shape)}")
    if input_ids.shape[0] != 1:
        raise ValueError(
            f"input_ids must have batch size 1 (Medusa tree decoding is per sequence; batch > 1 "
            f"is an extension, see the docs), got batch size {input_ids.shape[0]}"
        )
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids must hold a non-empty prompt, got 0 tokens")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise TypeError(f"max_new_tokens must be an int, got {type(max_new_tokens).__name__}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if acceptance not in ACCEPTANCE_RULES:
        raise ValueError(f"acceptance must be one of {ACCEPTANCE_RULES}, got {acceptance!r}")
    if not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"temperature must be a float >= 0, got {temperature!r}")
    if acceptance == "greedy" and temperature != 0:
        raise ValueError(
            f"temperature must be 0 with acceptance='greedy' (use acceptance='typical' to "
            f"sample), got {temperature}"
        )
    if not 0 < posterior_threshold <= 1:
        raise ValueError(f"posterior_threshold must be in (0, 1], got {posterior_threshold!r}")
    if not posterior_alpha > 0:
        raise ValueError(f"posterior_alpha must be > 0, got {posterior_alpha!r}")


def _as_tree(
    choices: Sequence[Sequence[int]] | MedusaTree | None, heads: MedusaHeads
) -> MedusaTree:
    tree = choices if isinstance(choices, MedusaTree) else build_tree(choices or DEFAULT_CHOICES)
    if tree.depth > heads.num_heads:
        raise ValueError(
            f"choices must be at most num_heads = {heads.num_heads} deep, got depth {tree.depth}"
        )
    if tree.topk > heads.vocab_size:
        raise ValueError(
            f"choices must use ranks below the vocabulary size {heads.vocab_size}, "
            f"got rank {tree.topk - 1}"
        )
    return tree


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generate(
    model: Any,
    heads: MedusaHeads,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    choices: Sequence[Sequence[int]] | MedusaTree | None = None,
    acceptance: str = "greedy",
    temperature: float = 0.0,
    posterior_threshold: float = 0.09,
    posterior_alpha: float = 0.3,
    eos_token_id: int | None = None,
    generator: torch.Generator | None = None,
) -> MedusaOutput:
    """Decode with Medusa heads: several tokens per forward of a transformers causal LM.

    Greedy (``acceptance="greedy"``, ``temperature=0``) is lossless: ``sequences`` equals
    ``model.generate(input_ids, max_new_tokens=max_new_tokens, do_sample=False)``
    (with no EOS stopping) token for token, up to floating-point ties.

    Per step: the root is the base model's next token (known from the previous
    forward), head ``d`` proposes its top-k for depth ``d + 1``, the tree's ``N`` nodes
    go through one forward with a 4D tree attention mask and explicit position ids
    (``prefix + depth``), the acceptance rule picks the longest accepted path, the KV
    cache keeps exactly that path, and the logits/hidden state at its last node give the
    next root and head inputs.

    Args:
        model: a transformers causal LM (Llama, Mistral, Qwen2, ...) with an attention
            implementation that honours 4D masks (sdpa or eager); put it in eval mode.
        heads: :class:`MedusaHeads` matching the model's hidden size and vocabulary, on
            the model's device.
        input_ids: ``(1, T)`` int64 prompt, ``T >= 1``. Batch > 1 raises ``ValueError``.
        max_new_tokens: exactly this many tokens are generated (unless ``eos_token_id``).
        choices: Medusa-style tree paths (or a built :class:`MedusaTree`); default
            :data:`DEFAULT_CHOICES`. Depth must not exceed ``heads.num_heads``.
        acceptance: ``"greedy"`` (longest prefix equal to the argmax) or ``"typical"``
            (``p > min(posterior_threshold, posterior_alpha * exp(-entropy))``; the next
            root token is sampled at ``temperature``; ``temperature=0`` reduces to greedy).
        temperature: 0 for greedy; > 0 with ``acceptance="typical"``.
        eos_token_id: stop after emitting this token (like ``generate``'s EOS), or
            ``None`` (default) to always emit ``max_new_tokens``.
        generator: random generator for sampling at ``temperature > 0``.

    Returns:
        :class:`MedusaOutput` with ``sequences``, ``accept_lengths`` and timings.
    """
    _validate(
        model,
        heads,
        input_ids,
        max_new_tokens,
        acceptance,
        temperature,
        posterior_threshold,
        posterior_alpha,
    )
    check_attention_backend(model)
    tree = _as_tree(choices, heads)
    device = next(model.parameters()).device
    if next(heads.parameters()).device != device:
        raise ValueError(
            f"heads must be on the model's device {device}, got {next(heads.parameters()).device}"
        )
    sampling = acceptance == "typical" and temperature > 0
    dtype = next(model.parameters()).dtype

    # the tree's tensors, on the model's device, once per call
    tree_mask = tree.attention_mask.to(device)  # (N, N)
    offsets = tree.position_offsets.to(device)  # (N,)
    candidate_indices = tree.candidate_indices.to(device)  # (N,)
    retrieve = tree.retrieve_indices.to(device)  # (P, D+1)
    child_nodes = retrieve[:, 1:].clamp(min=0)  # (P, D)
    parent_nodes = retrieve[:, :-1].clamp(min=0)  # (P, D)
    valid_nodes = retrieve[:, 1:] >= 0  # (P, D)
    head_weights = heads.stacked_weights()
    num_nodes = tree.num_nodes

    cache = new_cache(model)
    cache_kw = cache_keyword(model)
    parts = direct_parts(model)  # decoder + output layer called directly where exact
    last_only = parts is not None or "logits_to_keep" in inspect.signature(model.forward).parameters
    prompt = input_ids.to(device)
    prompt_length = prompt.shape[1]
    window = max_cached_length(cache)
    if window is not None and prompt_length + max_new_tokens + num_nodes > window:
        raise ValueError(
            f"max_new_tokens must keep the sequence inside the model's sliding window "
            f"({window} cached tokens): prompt {prompt_length} + max_new_tokens "
            f"{max_new_tokens} + tree {num_nodes} is too long"
        )

    def next_token(logits: torch.Tensor) -> torch.Tensor:  # (V,) -> (1,)
        if not sampling:
            return logits.argmax(dim=-1, keepdim=True)
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=generator)

    _synchronize(device)
    start = time.perf_counter()
    logits, hidden = model_forward(model, prompt, cache, cache_kw, last_only=last_only, parts=parts)
    root = next_token(logits[-1])  # (1,)
    head_input = hidden[-1]  # (hidden,)
    emitted = [root]
    num_emitted = 1
    prefix_length = prompt_length
    _synchronize(device)
    prefill_seconds = time.perf_counter() - start
    done = eos_token_id is not None and int(root) == eos_token_id

    accept_lengths: list[int] = []
    accepted_candidates: list[int] = []
    start = time.perf_counter()
    while num_emitted < max_new_tokens and not done:
        head_logits = heads.decode_logits(head_input, head_weights, tree.depth)  # (D, V)
        head_topk = head_logits.topk(tree.topk, dim=-1).indices  # (D, K)
        flat = torch.cat([root, head_topk.flatten()])  # (1 + D*K,)
        node_tokens = flat[candidate_indices]  # (N,)
        positions = (prefix_length + offsets).unsqueeze(0)  # (1, N)
        mask = tree_attention_mask(tree_mask, prefix_length, dtype)  # (1, 1, N, S+N)
        logits, hidden = model_forward(
            model, node_tokens.unsqueeze(0), cache, cache_kw,
            position_ids=positions, attention_mask=mask, parts=parts,
        )  # fmt: skip  # (N, V), (N, hidden)
        if not sampling:
            path, accepted = accept_greedy_fast(
                node_tokens, logits, child_nodes, parent_nodes, valid_nodes
            )
        else:
            path, accepted = accept_typical(
                node_tokens, logits, retrieve, temperature, posterior_threshold, posterior_alpha
            )
        path_nodes = retrieve[path, : accepted + 1]  # (a+1,) root first
        keep_accepted(cache, num_nodes, path_nodes)
        last_node = path_nodes[-1]
        root = next_token(logits[last_node])  # (1,) the model's own token after the path
        step_tokens = torch.cat([node_tokens[path_nodes[1:]], root])  # (a+1,)
        step_tokens = step_tokens[: max_new_tokens - num_emitted]
        if eos_token_id is not None:
            hits = (step_tokens == eos_token_id).nonzero()
            if hits.numel():
                step_tokens = step_tokens[: int(hits[0, 0]) + 1]
                done = True
        emitted.append(step_tokens)
        num_emitted += step_tokens.numel()
        accept_lengths.append(int(step_tokens.numel()))
        accepted_candidates.append(accepted)
        prefix_length += accepted + 1
        head_input = hidden[last_node]
    _synchronize(device)
    decode_seconds = time.perf_counter() - start

    sequences = torch.cat([prompt[0], *emitted]).unsqueeze(0)  # (1, T + new)
    return MedusaOutput(
        sequences=sequences,
        accept_lengths=accept_lengths,
        accepted_candidates=accepted_candidates,
        tree_depth=tree.depth,
        prompt_length=prompt_length,
        prefill_seconds=prefill_seconds,
        decode_seconds=decode_seconds,
        tree_size=num_nodes,
    )
