"""The heads' maths against a naive float64 recomputation and against transformers' block."""

from __future__ import annotations

import math

import mtp_heads
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_llama
from mtp_heads.blocks import TransformerBlock

# --- a deliberately naive float64 re-derivation: loops over positions and heads -------


def naive_rms(x, w, eps):
    return x / torch.sqrt((x * x).mean() + eps) * w


def naive_rotate(x, pos, theta):
    """Rotate pairs (x_j, x_{j+hd/2}) by the angle pos * theta^(-2j/hd)."""
    hd = x.numel()
    out = x.clone()
    for j in range(hd // 2):
        angle = pos * theta ** (-2.0 * j / hd)
        a, b = x[j], x[j + hd // 2]
        out[j] = a * math.cos(angle) - b * math.sin(angle)
        out[j + hd // 2] = b * math.cos(angle) + a * math.sin(angle)
    return out


def naive_block(block: TransformerBlock, xs: torch.Tensor) -> torch.Tensor:
    """xs (L, C) float64 -> (L, C), position i = row i."""
    cfg = block.attn.cfg
    W = {n: p.detach().double() for n, p in block.named_parameters()}
    nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    L = xs.shape[0]
    normed = [naive_rms(xs[i], W["input_norm.weight"], cfg.rms_norm_eps) for i in range(L)]
    q = [(W["attn.q_proj.weight"] @ n).view(nh, hd) for n in normed]
    k = [(W["attn.k_proj.weight"] @ n).view(nkv, hd) for n in normed]
    v = [(W["attn.v_proj.weight"] @ n).view(nkv, hd) for n in normed]
    out = []
    for i in range(L):
        heads = []
        for h in range(nh):
            g = h // (nh // nkv)  # the key/value head this query head shares
            qi = naive_rotate(q[i][h], i, cfg.rope_theta)
            scores = torch.stack(
                [
                    qi @ naive_rotate(k[j][g], j, cfg.rope_theta) / math.sqrt(hd)
                    for j in range(i + 1)
                ]
            )
            p = torch.softmax(scores, 0)
            heads.append(sum(p[j] * v[j][g] for j in range(i + 1)))
        x = xs[i] + W["attn.o_proj.weight"] @ torch.cat(heads)
        n = naive_rms(x, W["post_attention_norm.weight"], cfg.rms_norm_eps)
        gate, up = W["mlp.gate_proj.weight"] @ n, W["mlp.up_proj.weight"] @ n
        out.append(x + W["mlp.down_proj.weight"] @ (F.silu(gate) * up))
    return torch.stack(out)


def naive_mtp_logits(mtp: mtp_heads.MTPModule, hidden, ids):
    """DeepSeek-V3's equations, one batch row and one depth at a time."""
    E = mtp._borrowed[0].weight.detach().double()
    H = mtp._borrowed[1].weight.detach().double()
    eps = mtp.cfg.rms_norm_eps
    B, T, _ = hidden.shape
    result = [[] for _ in range(mtp.depth)]
    for b in range(B):
        h_prev = hidden[b].double()  # h^0, (T, C)
        for k in range(1, mtp.depth + 1):
            d = mtp.depths[k - 1]
            W = {n: p.detach().double() for n, p in d.named_parameters()}
            rows = []
            for i in range(T - k):
                left = naive_rms(h_prev[i], W["hidden_norm.weight"], eps)
                right = naive_rms(E[ids[b, i + k]], W["embed_norm.weight"], eps)
                rows.append(W["proj.weight"] @ torch.cat((left, right)))
            h_k = naive_block(d.block, torch.stack(rows))  # (T-k, C)
            logits = torch.stack([H @ naive_rms(r, W["final_norm.weight"], eps) for r in h_k])
            result[k - 1].append(logits)
            h_prev = h_k
    return [torch.stack(r) for r in result]


def small_mtp(depth=3, dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    C, V = 12, 11
    embed = torch.nn.Embedding(V, C).to(dtype)
    head = torch.nn.Linear(C, V, bias=False).to(dtype)
    mtp = mtp_heads.MTPModule(
        C, V, depth, 3, num_key_value_heads=1, intermediate_size=10, embed=embed, lm_head=head, **kw
    )
    for p in mtp.parameters():  # away from the init's ones/zeros so every weight matters
        p.data.add_(0.1 * torch.randn_like(p))
    return mtp


def test_mtp_forward_matches_naive_float64():
    mtp = small_mtp(depth=3)
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 7, 12, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 11, (2, 7), generator=g)
    ours = mtp(hidden, ids)
    ref = naive_mtp_logits(mtp, hidden, ids)
    assert [o.shape for o in ours] == [(2, 6, 11), (2, 5, 11), (2, 4, 11)]
    for o, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(o, r, rtol=1e-10, atol=1e-10)


def test_mtp_loss_targets_are_shifted_by_depth_plus_one():
    mtp = small_mtp(depth=3)
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, 8, 12, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 11, (2, 8), generator=g)
    ref = naive_mtp_logits(mtp, hidden, ids)
    per_depth = []
    for k in range(1, 4):
        terms = [
            -torch.log_softmax(ref[k - 1][b, i], 0)[ids[b, i + k + 1]]
            for b in range(2)
            for i in range(8 - k - 1)
        ]
        per_depth.append(torch.stack(terms).mean())
    expected = 0.3 * torch.stack(per_depth).mean()
    torch.testing.assert_close(
        mtp.loss(hidden, ids, weight=0.3).double(), expected, rtol=1e-6, atol=0
    )


def test_mtp_depth_k_row_i_reads_tokens_up_to_i_plus_k():
    mtp = small_mtp(depth=3)
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(1, 9, 12, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 11, (1, 9), generator=g)
    base = mtp(hidden, ids)
    j = 5
    changed = ids.clone()
    changed[0, j] = (changed[0, j] + 1) % 11
    after = mtp(hidden, changed)
    for k in range(1, 4):
        diff = (base[k - 1] - after[k - 1]).abs().amax(-1)[0]  # (T-k,)
        assert torch.all(diff[: j - k] == 0), f"depth {k} rows before {j - k} saw token {j}"
        assert diff[j - k] > 0, f"depth {k} row {j - k} must read token {j}"


def test_mtp_learns_a_hand_made_shift():
    # t_i = (3 i + s) mod V: depth k at row i must predict t_{i+k+1} = t_{i+k} + 3
    V, C, T = 13, 16, 10
    torch.manual_seed(0)
    mtp = mtp_heads.MTPModule(C, V, depth=2, num_attention_heads=2)
    opt = torch.optim.AdamW(mtp.parameters(), lr=2e-2)
    starts = torch.arange(V)[:, None]
    ids = (starts + 3 * torch.arange(T)[None, :]) % V  # (V, T)
    hidden = torch.randn(V, T, C, generator=torch.Generator().manual_seed(1))
    for _ in range(120):
        opt.zero_grad()
        mtp.loss(hidden, ids).backward()
        opt.step()
    with torch.no_grad():
        logits = mtp(hidden, ids)
    for k, lg in enumerate(logits, start=1):
        pred = lg.argmax(-1)[:, :-1]  # rows with a target
        assert torch.equal(pred, ids[:, k + 1 :]), f"depth {k}"
        # the row past the end predicts the continuation of the progression
        assert torch.equal(lg.argmax(-1)[:, -1], (ids[:, -1] + 3) % V)


def test_parallel_heads_match_naive_float64():
    torch.manual_seed(4)
    head = torch.nn.Linear(12, 11, bias=False).double()
    heads = mtp_heads.ParallelMTPHeads(
        12, 11, 2, 3, num_key_value_heads=3, intermediate_size=7, lm_head=head
    )
    for p in heads.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    hidden = torch.randn(2, 6, 12, dtype=torch.float64)
    ids = torch.randint(0, 11, (2, 6))
    ours = heads(hidden, ids)
    H = head.weight.detach()
    for k in (1, 2):
        ph = heads.heads[k - 1]
        for b in range(2):
            rows = naive_block(ph.block, hidden[b])
            w = ph.final_norm.weight.detach()
            ref = torch.stack([H @ naive_rms(r, w, 1e-6) for r in rows])
            torch.testing.assert_close(ours[k - 1][b], ref, rtol=1e-10, atol=1e-10)
        expected_k = F.cross_entropy(
            ours[k - 1][:, : 6 - k - 1].reshape(-1, 11), ids[:, k + 1 :].reshape(-1)
        )
        torch.testing.assert_close(heads.head_loss(k, hidden, ids).double(), expected_k)


@pytest.mark.parametrize("sdpa_gqa", [True, False], ids=["enable_gqa", "repeated-heads"])
@pytest.mark.parametrize("num_key_value_heads", [1, 2, 4])
def test_block_matches_transformers_llama_layer(num_key_value_heads, sdpa_gqa, monkeypatch):
    """Both ways of reading grouped key/value heads (SDPA's enable_gqa on torch >= 2.5,
    repeated heads before) give transformers' layer, with and without a cache."""
    transformers = pytest.importorskip("transformers")
    import mtp_heads.blocks

    monkeypatch.setattr(mtp_heads.blocks, "_SDPA_HAS_GQA", sdpa_gqa)
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    model = tiny_llama(num_key_value_heads=num_key_value_heads, dtype=torch.float64)
    cfg = model.config
    mtp = mtp_heads.MTPModule.from_model(model, depth=1)
    ours = mtp.depths[0].block
    theirs = LlamaDecoderLayer(cfg, 0).double()
    rename = {
        "input_norm.weight": "input_layernorm.weight",
        "post_attention_norm.weight": "post_attention_layernorm.weight",
    }
    state = {
        rename.get(n, n.replace("attn.", "self_attn.")): p for n, p in ours.state_dict().items()
    }
    theirs.load_state_dict(state)
    x = torch.randn(2, 11, cfg.hidden_size, dtype=torch.float64)
    pos = torch.arange(11)[None]
    rotary = LlamaRotaryEmbedding(cfg)
    ref = theirs(x, position_embeddings=rotary(x, pos), position_ids=pos, attention_mask=None)
    ref = ref[0] if isinstance(ref, tuple) else ref
    # transformers builds its rotary angles in float32 (ours in float64), hence 1e-7
    torch.testing.assert_close(ours(x)[0], ref, rtol=1e-6, atol=1e-7)
    _, kv = ours(x[:, :7])
    for start, stop in ((7, 9), (9, 10), (10, 11)):  # 2 queries, then 1, after the cache
        part, new_kv = ours(x[:, start:stop], start=start, past=kv)
        torch.testing.assert_close(part, ref[:, start:stop], rtol=1e-6, atol=1e-7)
        kv = tuple(torch.cat((a, b), 2) for a, b in zip(kv, new_kv, strict=True))
    _ = transformers


def test_block_with_cache_equals_full_sequence():
    torch.manual_seed(5)
    mtp = small_mtp(depth=1)
    block = mtp.depths[0].block
    x = torch.randn(1, 9, 12, dtype=torch.float64)
    full, (k, v) = block(x)
    first, kv = block(x[:, :4])
    second, _ = block(x[:, 4:], start=4, past=kv)
    torch.testing.assert_close(torch.cat((first, second), 1), full, rtol=1e-12, atol=1e-12)
    one, _ = block(x[:, 8:], start=8, past=(k[:, :, :8], v[:, :, :8]))
    torch.testing.assert_close(one, full[:, 8:], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 5e-2)])
def test_mtp_in_lower_precision_close_to_float64(dtype, tol):
    ref_mtp = small_mtp(depth=2)
    low = small_mtp(depth=2, dtype=dtype)
    low.load_state_dict({k: v.to(dtype) for k, v in ref_mtp.state_dict().items()})
    low._borrowed[0].weight.data.copy_(ref_mtp._borrowed[0].weight)
    low._borrowed[1].weight.data.copy_(ref_mtp._borrowed[1].weight)
    hidden = torch.randn(2, 7, 12, dtype=torch.float64)
    ids = torch.randint(0, 11, (2, 7))
    ref = ref_mtp(hidden, ids)
    ours = low(hidden.to(dtype), ids)
    for o, r in zip(ours, ref, strict=True):
        assert o.dtype == dtype
        err = (o.double() - r).abs().max() / r.abs().max()
        assert err < tol


@pytest.mark.parametrize("cls", [mtp_heads.MTPModule, mtp_heads.ParallelMTPHeads])
def test_int32_token_ids_give_the_int64_results(cls):
    torch.manual_seed(6)
    heads = cls(16, 11, depth=2)
    hidden = torch.randn(2, 7, 16)
    ids = torch.randint(0, 11, (2, 7))
    torch.testing.assert_close(heads.loss(hidden, ids.int()), heads.loss(hidden, ids))
    for a, b in zip(heads(hidden, ids.int()), heads(hidden, ids), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("transposed", [True, False], ids=["w@xT", "x@wT"])
@pytest.mark.parametrize("lead", [(), (1,), (2, 1)])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9])
def test_few_rows_linear_is_f_linear(lead, rows, transposed, monkeypatch):
    # both forms the decoding steps may pick for 2-4 rows: same values (float64),
    # gradients and shape as F.linear; weight @ x^T gives a transposed view, other row
    # counts are F.linear itself
    from mtp_heads import blocks

    timings = []
    monkeypatch.setattr(blocks, "_TRANSPOSED_IS_FASTER", {})
    monkeypatch.setattr(
        blocks, "_transposed_is_faster", lambda x, w: timings.append(1) or transposed
    )
    g = torch.Generator().manual_seed(rows)
    w = torch.randn(37, 13, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(*lead, rows, 13, generator=g, dtype=torch.float64, requires_grad=True)
    ours, ref = blocks.few_rows_linear(x, w), F.linear(x, w)
    assert ours.shape == ref.shape == (*lead, rows, 37)
    total_rows = math.prod(lead) * rows
    assert ours.is_contiguous() == (not (transposed and 2 <= total_rows <= 4))
    blocks.few_rows_linear(x, w)  # the choice is timed once per shape, then looked up
    assert len(timings) == int(2 <= total_rows <= 4)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    upstream = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(ours, (x, w), upstream)
    want = torch.autograd.grad(ref, (x, w), upstream)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_few_rows_linear_timing_returns_a_choice():
    from mtp_heads.blocks import _transposed_is_faster

    w = torch.randn(64, 32, requires_grad=True)
    assert _transposed_is_faster(torch.randn(2, 32), w) in (True, False)
    assert w.grad is None
