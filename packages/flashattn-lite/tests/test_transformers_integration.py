"""A tiny Llama with flashattn-lite attention matches transformers' eager and SDPA attention."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from flashattn_lite.integrations import transformers as fa_transformers  # noqa: E402


def _tiny_llama(attn_implementation: str, seed: int = 0):
    config = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention
        max_position_embeddings=64,
        attn_implementation=attn_implementation,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def name():
    return fa_transformers.register()


@pytest.fixture(scope="module")
def models(name):
    eager = _tiny_llama("eager")
    ours = _tiny_llama(name)
    ours.load_state_dict(eager.state_dict())
    sdpa = _tiny_llama("sdpa")
    sdpa.load_state_dict(eager.state_dict())
    return eager, sdpa, ours


@pytest.fixture
def calls(monkeypatch):
    """Records, per call of our attention, whether transformers passed a mask."""
    seen = []
    real = fa_transformers.attention_forward

    def spy(module, query, key, value, attention_mask, **kwargs):
        seen.append(attention_mask is not None)
        return real(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setattr(fa_transformers, "attention_forward", spy)
    return seen


def test_register_returns_a_usable_name(name, models):
    assert name == "fa_lite"
    assert models[2].config._attn_implementation == name


def test_forward_matches_eager_and_sdpa(models, calls):
    eager, sdpa, ours = models
    ids = torch.randint(0, 97, (2, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = eager(ids).logits
        peer = sdpa(ids).logits
        got = ours(ids).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, peer, atol=1e-5, rtol=1e-5)
    assert calls == [False, False]  # both layers ran our band (causal) path


def test_bf16_autocast_forward_and_backward_match_sdpa(models):
    # Under autocast, q/k come out of the rotary embedding in float32 and v in bfloat16;
    # like SDPA we must compute in the autocast dtype rather than reject the mix.
    _, sdpa, ours = models
    ids = torch.randint(0, 97, (2, 23), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = sdpa.float()(ids).logits  # float32 reference, no autocast
    outs = []
    for model in (sdpa, ours):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(ids).logits
        logits.float().square().mean().backward()
        outs.append((logits.float(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    (peer, peer_grad), (got, got_grad) = outs
    err_ours, err_peer = (got - ref).abs().max(), (peer - ref).abs().max()
    assert err_ours <= 2 * err_peer + 1e-2  # the flash-attention rule, bf16
    torch.testing.assert_close(got_grad, peer_grad, atol=5e-2, rtol=5e-2)


def test_forward_with_left_padding_matches_eager(models, calls):
    eager, _, ours = models
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 97, (2, 13), generator=gen)
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[0, :4] = 0  # left padding in the first sequence
    with torch.no_grad():
        ref = eager(ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
    keep = mask.bool()  # padded positions are garbage in every implementation
    torch.testing.assert_close(got[keep], ref[keep], atol=1e-5, rtol=1e-5)
    assert calls == [True, True]  # the padding mask reached our masked path


def test_gradients_match_eager(models):
    eager, _, ours = models
    ids = torch.randint(0, 97, (1, 11), generator=torch.Generator().manual_seed(3))
    grads = []
    for model in (eager, ours):
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)


def test_greedy_generate_with_kv_cache_matches_eager(models):
    eager, _, ours = models
    ids = torch.randint(0, 97, (1, 7), generator=torch.Generator().manual_seed(4))
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        ref = eager.generate(ids, **kw)
        got = ours.generate(ids, **kw)
    assert torch.equal(got, ref)


@pytest.mark.parametrize("padded", [False, True], ids=["plain", "left-padded"])
def test_new_queries_after_a_cache_match_eager(models, monkeypatch, padded):
    """Several new tokens after a KV cache (speculative verification, chunked prefill).

    transformers builds a causal mask for them; ours recognises the plain one as the
    bottom-right band (no mask reaches the kernel) and reads a padded one as a mask.
    """
    from transformers import DynamicCache

    eager, _, ours = models
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 97, (2, 15), generator=gen)
    mask = torch.ones(2, 15, dtype=torch.long)
    if padded:
        mask[1, :3] = 0
    kernel_masks = []
    real = fa_transformers._attention

    def spy(q, k, v, scale, band, attn_mask, *args):
        kernel_masks.append(attn_mask is not None)
        return real(q, k, v, scale, band, attn_mask, *args)

    monkeypatch.setattr(fa_transformers, "_attention", spy)
    logits = []
    with torch.no_grad():
        for model in (eager, ours):
            cache = DynamicCache(config=model.config)
            model(ids[:, :11], attention_mask=mask[:, :11], cache=cache, use_cache=True)
            out = model(ids[:, 11:], attention_mask=mask, cache=cache, use_cache=True)
            logits.append(out.logits)
    keep = mask[:, 11:].bool()
    torch.testing.assert_close(logits[1][keep], logits[0][keep], atol=1e-5, rtol=1e-5)
    # 2 layers x (prefill, continuation); the prefill without padding needs no mask
    assert kernel_masks == ([True] * 4 if padded else [False] * 4)


def test_only_plain_continuation_masks_are_marked():
    from transformers.masking_utils import causal_mask_function

    mark = fa_transformers._BAND_MARK
    build = fa_transformers.causal_continuation_mask
    from transformers.masking_utils import sdpa_mask

    plain = build(1, 3, 10, 7, 0, mask_function=causal_mask_function)
    assert getattr(plain, mark, False)
    assert torch.equal(plain[0, 0], torch.ones(3, 10, dtype=torch.bool).tril(7))
    # the plain case is built without sdpa_mask, and is exactly what it builds
    for batch, q_len, kv_len in [(1, 2, 5), (2, 3, 10), (3, 4, 4 + 17)]:
        ours = build(batch, q_len, kv_len, kv_len - q_len, 0)
        assert getattr(ours, mark, False)
        assert torch.equal(ours, sdpa_mask(batch, q_len, kv_len, kv_len - q_len, 0))
    padding = torch.ones(1, 10, dtype=torch.bool)
    padding[0, 0] = False
    assert not getattr(build(1, 3, 10, 7, 0, attention_mask=padding), mark, False)
    window = build(1, 3, 10, 7, 0, mask_function=causal_mask_function, local_size=4)
    assert window is None or not getattr(window, mark, False)
    assert build(1, 1, 10, 9, 0) is None  # one query: plain causality, no mask
    # a static cache's prefill (trailing key slots unused) keeps transformers' None
    assert build(1, 3, 16, 0, 0) is None


def test_register_rejects_bad_arguments():
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        fa_transformers.register("")
    with pytest.raises(ValueError, match="name must not contain 'flash'"):
        fa_transformers.register("flashattn_lite")
    with pytest.raises(ValueError, match="backend must be one of"):
        fa_transformers.register(backend="cuda")


def test_attention_forward_rejects_dropout():
    q = torch.randn(1, 2, 3, 8)
    with pytest.raises(ValueError, match="dropout must be 0"):
        fa_transformers.attention_forward(torch.nn.Module(), q, q, q, None, dropout=0.1)


def test_triton_backend_in_llama_matches_eager(models):
    """The Triton kernels (interpreter on the CPU) inside the model, causal path."""
    pytest.importorskip("triton")
    eager, _, _ = models
    name = fa_transformers.register("fa_lite_triton", backend="triton")
    ours = _tiny_llama(name)
    ours.load_state_dict(eager.state_dict())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ids = torch.randint(0, 97, (1, 17), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = eager(ids).logits
        got = ours.to(device)(ids.to(device)).logits.cpu()
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
