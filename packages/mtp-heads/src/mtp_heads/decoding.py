"""Self-speculative decoding: the MTP heads draft, the main model verifies.

One step, with verified tokens t_0..t_m (t_m is the main model's latest prediction, not
yet fed to it) and the main model's KV cache holding positions 0..m-1:

1. the heads draft d_{m+1}..d_{m+n} from the trunk states (n <= depth);
2. one forward of the main model on ``[t_m, d_{m+1}, ..., d_{m+n}]`` gives its own
   predictions g_0..g_n for positions m+1..m+n+1;
3. greedy: accept the longest prefix with d_{m+i} == g_{i-1}, then append g_a (the main
   model's token after the last accepted draft); sampling: accept d with probability
   min(1, p(d)/q(d)) and on rejection draw from normalize(max(p - q, 0)) (Leviathan et al.,
   Chen et al.), which leaves the main model's distribution unchanged;
4. crop the rejected drafts' entries from the KV cache.

Every step therefore emits between 1 and n+1 tokens, and under greedy the tokens are
exactly those of ``model.generate(do_sample=False)``.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from .blocks import check_positive_int, few_rows_linear
from .parallel import ParallelMTPHeads
from .sequential import MTPModule


@dataclass
class MTPOutput:
    """What ``speculative_generate`` returns.

    Attributes:
        sequences: ``(1, prompt_len + new)`` int64, prompt then the new tokens
            (``new == max_new_tokens`` unless ``eos_token_id`` stopped it early).
        acceptance_rate: accepted draft tokens / drafted tokens (0.0 if none drafted).
        tokens_per_step: new tokens / forward passes of the main model (prefill
            included); plain greedy decoding has 1.0.
        acceptance_by_depth: for each depth k, the fraction of drafts at depth k that
            were accepted (depth 1 is "the second token" of DeepSeek-V3's report; depth
            k is accepted only if depths 1..k-1 were).
        drafted_by_depth, accepted_by_depth: the counts behind it.
        num_forward_passes: main-model forward passes (prefill + verifications).
        new_tokens: how many tokens were generated.
        elapsed_s: wall-clock seconds of the whole call.
        tokens_per_second: ``new_tokens / elapsed_s``.
        draft_elapsed_s: the part of ``elapsed_s`` spent drafting (the heads' forward
            passes and the choice of each draft token); ``elapsed_s - draft_elapsed_s``
            estimates what the call would take with drafts that cost nothing: roughly
            the most any faster drafter can gain at the same acceptance (the rest of
            the step is taken as measured, cache effects of the draft included).
    """

    sequences: torch.Tensor
    acceptance_rate: float
    tokens_per_step: float
    acceptance_by_depth: list[float] = field(default_factory=list)
    drafted_by_depth: list[int] = field(default_factory=list)
    accepted_by_depth: list[int] = field(default_factory=list)
    num_forward_passes: int = 0
    new_tokens: int = 0
    elapsed_s: float = 0.0
    tokens_per_second: float = 0.0
    draft_elapsed_s: float = 0.0


def _new_cache(model: nn.Module):
    from transformers import DynamicCache  # lazy: transformers is an optional extra

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # transformers 4.x
        return DynamicCache()


def _cache_kwarg(model: nn.Module) -> str:
    # transformers 5 renamed past_key_values to cache (the old name still works, with a warning)
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


# Causal LMs whose logits are exactly ``lm_head(decoder(...).last_hidden_state)`` (no
# logit scaling or soft-capping): their decoder and head can be called directly.
_PLAIN_HEAD_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def _direct_parts(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """``(decoder, lm_head)`` for the model types above, else ``None``.

    Calling them directly gives the same hidden states as ``model(...,
    output_hidden_states=True)`` (``last_hidden_state`` is ``hidden_states[-1]``)
    without the hooks that record every layer's output: a few percent of a forward
    of a small model, paid at every verification step. The output layer on the 2-4
    verified rows is ``few_rows_linear`` (the same logits up to float rounding, as
    ``F.linear`` on a different number of rows already is).
    """
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in _PLAIN_HEAD_MODEL_TYPES:
        return None
    get_decoder = getattr(model, "get_decoder", None)
    get_head = getattr(model, "get_output_embeddings", None)
    if not callable(get_decoder) or not callable(get_head):
        return None
    decoder, head = get_decoder(), get_head()
    if decoder is None or not isinstance(head, nn.Linear):
        return None
    return decoder, head


def _check_args(model, mtp, input_ids, max_new_tokens, temperature, num_draft_tokens) -> None:
    if not isinstance(mtp, MTPModule | ParallelMTPHeads):
        raise TypeError(f"mtp must be an MTPModule or ParallelMTPHeads, got {type(mtp).__name__}")
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"model must be a transformers causal LM, got {type(model).__name__}")
    if getattr(config, "hidden_size", mtp.hidden_size) != mtp.hidden_size:
        raise ValueError(
            f"mtp hidden_size must match the model's, got {mtp.hidden_size} "
            f"and model.config.hidden_size={config.hidden_size}"
        )
    if getattr(config, "vocab_size", mtp.vocab_size) != mtp.vocab_size:
        raise ValueError(
            f"mtp vocab_size must match the model's, got {mtp.vocab_size} "
            f"and model.config.vocab_size={config.vocab_size}"
        )
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(
            "input_ids must be an int64 tensor (1, prompt_len), got "
            f"{getattr(input_ids, 'dtype', type(input_ids).__name__)}"
        )
    if input_ids.dim() != 2:
        raise ValueError(
            f"input_ids must be 2-D (1, prompt_len), got shape {tuple(input_ids.shape)}"
        )
    if input_ids.shape[0] != 1:
        raise ValueError(
            f"input_ids must have batch size 1 (speculative decoding accepts a different "
            f"number of tokens per row), got batch {input_ids.shape[0]}"
        )
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids must hold a non-empty prompt, got 0 tokens")
    check_positive_int("max_new_tokens", max_new_tokens)
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise TypeError(f"temperature must be a float, got {type(temperature).__name__}")
    if not temperature >= 0.0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if num_draft_tokens is not None:
        check_positive_int("num_draft_tokens", num_draft_tokens)
        if num_draft_tokens > mtp.depth:
            raise ValueError(
                f"num_draft_tokens must be <= mtp.depth={mtp.depth}, got {num_draft_tokens}"
            )


def speculative_generate(
    model: nn.Module,
    mtp: MTPModule | ParallelMTPHeads,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    num_draft_tokens: int | None = None,
    eos_token_id: int | None = None,
    generator: torch.Generator | None = None,
) -> MTPOutput:
    """Generate ``max_new_tokens`` tokens, drafting with ``mtp`` and verifying with ``model``.

    Args:
        model: a transformers causal LM (e.g. ``LlamaForCausalLM``), used with a
            ``DynamicCache``; its last hidden state feeds the heads.
        mtp: an ``MTPModule`` or ``ParallelMTPHeads`` with the model's hidden/vocab size.
        input_ids: ``(1, prompt_len)`` int64 prompt on the model's device, prompt_len >= 1.
        max_new_tokens: >= 1 tokens to add.
        temperature: 0.0 is greedy (exactly ``model.generate(do_sample=False)``);
            > 0 samples from ``softmax(logits / temperature)`` with speculative sampling,
            which keeps the main model's distribution.
        num_draft_tokens: drafts per step, 1..mtp.depth (default mtp.depth).
        eos_token_id: stop after this token (default: never stop early).
        generator: random source for sampling.

    Returns:
        ``MTPOutput`` with the sequences and the acceptance/throughput figures.
    """
    _check_args(model, mtp, input_ids, max_new_tokens, temperature, num_draft_tokens)
    n_draft_max = mtp.depth if num_draft_tokens is None else num_draft_tokens
    greedy = temperature == 0.0
    t_start = time.perf_counter()
    cache = _new_cache(model)
    cache_kw = _cache_kwarg(model)

    parts = _direct_parts(model)

    def main_forward(ids: torch.Tensor):
        if parts is not None:
            hidden = parts[0](input_ids=ids, use_cache=True, **{cache_kw: cache}).last_hidden_state
            head = parts[1]
            logits = few_rows_linear(hidden[0], head.weight)  # (L, V)
            if head.bias is not None:
                logits = logits + head.bias
            return logits.float(), hidden  # (L, V), (1, L, C)
        out = model(input_ids=ids, use_cache=True, output_hidden_states=True, **{cache_kw: cache})
        return out.logits[0].float(), out.hidden_states[-1]  # (L, V), (1, L, C)

    def sample(probs: torch.Tensor) -> torch.Tensor:
        return _sample(probs, generator)

    draft_probs: list[torch.Tensor] = []

    def choose(logits: torch.Tensor) -> torch.Tensor:  # logits (1, V) -> token (1,)
        if greedy:
            return logits.argmax(-1).view(1)
        q = torch.softmax(logits[0].float() / temperature, -1)
        draft_probs.append(q)
        return sample(q)

    drafted = [0] * mtp.depth
    accepted = [0] * mtp.depth
    draft_seconds = 0.0
    with torch.no_grad():
        logits, new_hidden = main_forward(input_ids)
        passes = 1
        last = logits[-1]
        first = last.argmax(-1).view(1) if greedy else sample(torch.softmax(last / temperature, -1))
        tokens = torch.cat((input_ids, first.view(1, 1).to(input_ids.dtype)), 1)  # (1, m+1)
        generated = 1
        stopped = eos_token_id is not None and int(first) == eos_token_id
        state = mtp.start_drafting(n_draft_max)
        while generated < max_new_tokens and not stopped:
            n = min(n_draft_max, max_new_tokens - generated - 1)
            draft_probs.clear()
            t_draft = time.perf_counter()
            drafts = state.draft(new_hidden, tokens, n, choose) if n > 0 else []
            draft_seconds += time.perf_counter() - t_draft
            chunk = torch.cat([tokens[:, -1:], *(d.view(1, 1) for d in drafts)], 1)  # (1, n+1)
            logits, hidden = main_forward(chunk.to(input_ids.dtype))  # (n+1, V)
            passes += 1
            if greedy:
                # the drafts and the main model's token after each position, read in one
                # device-to-host transfer: a few ints, compared in Python
                ids = torch.cat([*(d.to(logits.device) for d in drafts), logits.argmax(-1)])
                ids = ids.tolist()
                proposed, predicted = ids[:n], ids[n:]  # n drafts, n+1 predictions
                a = 0
                while a < n and proposed[a] == predicted[a]:
                    a += 1
                new = torch.tensor(proposed[:a] + [predicted[a]], device=tokens.device)
            else:
                new, a = _speculative_accept(logits, drafts, draft_probs, temperature, generator)
            for k in range(n):
                drafted[k] += 1
                accepted[k] += int(k < a)
            if n > a:
                cache.crop(-(n - a))  # drop the rejected drafts' keys/values
            new_hidden = hidden[:, : a + 1]  # trunk states of t_m and the accepted drafts
            if eos_token_id is not None and (new == eos_token_id).any():
                new = new[: int((new == eos_token_id).nonzero()[0]) + 1]
                stopped = True
            tokens = torch.cat((tokens, new.view(1, -1).to(tokens.dtype)), 1)
            generated += new.numel()
    elapsed = time.perf_counter() - t_start
    total_drafted, total_accepted = sum(drafted), sum(accepted)
    return MTPOutput(
        sequences=tokens,
        acceptance_rate=total_accepted / total_drafted if total_drafted else 0.0,
        tokens_per_step=generated / passes,
        acceptance_by_depth=[a / d if d else 0.0 for a, d in zip(accepted, drafted, strict=True)],
        drafted_by_depth=drafted,
        accepted_by_depth=accepted,
        num_forward_passes=passes,
        new_tokens=generated,
        elapsed_s=elapsed,
        tokens_per_second=generated / elapsed if elapsed > 0 else float("inf"),
        draft_elapsed_s=draft_seconds,
    )


def _speculative_accept(
    logits: torch.Tensor,
    drafts: list[torch.Tensor],
    draft_probs: list[torch.Tensor],
    temperature: float,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, int]:
    """Speculative sampling over one verified chunk.

    ``logits`` ``(n+1, V)`` are the main model's at ``[t_m, d_1..d_n]``; ``draft_probs``
    the distributions q_i the drafts were drawn from. Returns the new tokens and the
    number of accepted drafts.
    """
    probs = torch.softmax(logits / temperature, -1)  # (n+1, V)
    out = []
    for i, (d, q) in enumerate(zip(drafts, draft_probs, strict=True)):
        p = probs[i]
        token = int(d)
        ratio = (p[token] / q[token]).clamp(max=1.0)
        u = torch.rand((), generator=generator, device=p.device)
        if u < ratio:
            out.append(d.view(1))
            continue
        out.append(_sample(residual_distribution(p, q), generator))
        return torch.cat(out), i
    out.append(_sample(probs[len(drafts)], generator))
    return torch.cat(out), len(drafts)


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``normalize(max(p - q, 0))``, what a rejected draft is resampled from (falls back
    to ``p`` when ``p == q`` to rounding, where rejection has probability ~0)."""
    r = (p - q).clamp(min=0.0)
    total = r.sum()
    return r / total if total > 0 else p


def _sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token ``(1,)`` drawn from ``probs`` ``(V,)``."""
    return torch.multinomial(probs, 1, generator=generator).view(1)
