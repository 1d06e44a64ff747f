"""The tiled PyTorch path against the float64 reference and F.scaled_dot_product_attention."""

from __future__ import annotations

import flashattn_lite
import flashattn_lite.interface as interface
import pytest
import torch
import torch.nn.functional as F
from fa_testing import make_qkv, max_err, ours_with_grads, reference_with_grads
from flashattn_lite.reference import flash_mask_reference

# (batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim, causal, window_size)
SHAPES = [
    (2, 1, 1, 2, 2, 16, False, (-1, -1)),
    (1, 17, 17, 8, 2, 40, True, (-1, -1)),  # GQA 8:2
    (2, 37, 129, 4, 1, 64, True, (-1, -1)),  # MQA, seqlen_q < seqlen_k, bottom-right causal
    (1, 129, 37, 2, 2, 16, True, (-1, -1)),  # seqlen_q > seqlen_k: first rows see no key
    (1, 129, 129, 2, 1, 128, False, (17, 5)),  # sliding window
    (2, 37, 17, 4, 2, 16, False, (3, -1)),  # left-only window, seqlen_q > seqlen_k
    (1, 17, 129, 2, 2, 32, False, (-1, 7)),  # right-only window
    (1, 37, 37, 3, 3, 24, True, (9, -1)),  # causal local attention
]
IDS = [
    f"b{s[0]}-q{s[1]}-k{s[2]}-h{s[3]}:{s[4]}-d{s[5]}-c{int(s[6])}-w{s[7][0]},{s[7][1]}"
    for s in SHAPES
]


@pytest.fixture(
    params=[(256, 256), (16, 32), (7, 5)], ids=["blocks256x256", "blocks16x32", "blocks7x5"]
)
def blocks(request, monkeypatch):
    """Run the public function with the default tiles and with tiles far smaller than the inputs."""
    block_q, block_k = request.param
    monkeypatch.setattr(interface, "DEFAULT_FORWARD_BLOCKS", (block_q, block_k))
    monkeypatch.setattr(interface, "DEFAULT_BACKWARD_BLOCKS", (block_q, block_k))
    return request.param


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_float64_matches_reference(shape, blocks):
    b, sq, sk, h, hk, d, causal, window = shape
    q, k, v, grad = make_qkv(b, sq, sk, h, hk, d, dtype=torch.float64, seed=sq * 31 + sk)
    ours = ours_with_grads(q, k, v, grad, causal=causal, window_size=window, backend="torch")
    ref = reference_with_grads(q, k, v, grad, causal=causal, window_size=window)
    for name, a, r in zip(["out", "lse", "dq", "dk", "dv"], ours, ref, strict=True):
        tol = 1e-6 if name == "lse" else 1e-12  # lse is returned in float32
        assert max_err(a, r) <= tol * (1 + r.detach()[torch.isfinite(r)].abs().max()), name


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_float32_matches_reference(shape, blocks):
    b, sq, sk, h, hk, d, causal, window = shape
    q, k, v, grad = make_qkv(b, sq, sk, h, hk, d, dtype=torch.float32, seed=sq + 7 * sk)
    ours = ours_with_grads(q, k, v, grad, causal=causal, window_size=window, backend="torch")
    ref = reference_with_grads(q, k, v, grad, causal=causal, window_size=window)
    assert ours[0].dtype == torch.float32 and ours[1].dtype == torch.float32
    assert ours[1].shape == (b, h, sq)
    for name, a, r in zip(["out", "lse", "dq", "dk", "dv"], ours, ref, strict=True):
        assert max_err(a, r) <= 2e-5 * (1 + r.detach()[torch.isfinite(r)].abs().max()), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[3], SHAPES[4]], ids=[IDS[1], IDS[3], IDS[4]])
def test_low_precision_flash_attn_rule(shape, dtype):
    """error(ours) <= 2 * error(PyTorch attention in the same dtype) + atol, vs float64."""
    b, sq, sk, h, hk, d, causal, window = shape
    q, k, v, grad = make_qkv(b, sq, sk, h, hk, d, dtype=dtype, seed=3)
    kw = dict(causal=causal, window_size=window)
    ours = ours_with_grads(q, k, v, grad, backend="torch", **kw)
    exact = reference_with_grads(q, k, v, grad, **kw)
    same_dtype = reference_with_grads(q, k, v, grad, dtype=dtype, **kw)
    assert ours[0].dtype == dtype
    for name, a, e, s in zip(
        ["out", "lse", "dq", "dk", "dv"], ours, exact, same_dtype, strict=True
    ):
        assert max_err(a, e) <= 2 * max_err(s, e) + 1e-3, name


SDPA_SHAPES = [s for s in SHAPES if s[1] <= s[2] or not s[6]]  # rows that see a key


@pytest.mark.parametrize("shape", SDPA_SHAPES)
def test_matches_torch_sdpa(shape):
    """F.scaled_dot_product_attention in float32 with the same band as an explicit mask."""
    b, sq, sk, h, hk, d, causal, window = shape
    q, k, v, grad = make_qkv(b, sq, sk, h, hk, d, dtype=torch.float32, seed=11)
    out = flashattn_lite.flash_attn_func(
        q, k, v, causal=causal, window_size=window, backend="torch"
    )
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
    mask = flash_mask_reference(sq, sk, causal, window)  # (Sq, Sk)
    q2, k2, v2 = (t.detach().transpose(1, 2).requires_grad_() for t in (q, k, v))
    peer = F.scaled_dot_product_attention(q2, k2, v2, attn_mask=mask, enable_gqa=True)
    pdq, pdk, pdv = torch.autograd.grad(peer, (q2, k2, v2), grad.transpose(1, 2))
    torch.testing.assert_close(out, peer.transpose(1, 2), atol=2e-5, rtol=1e-4)
    for ours, theirs in zip((dq, dk, dv), (pdq, pdk, pdv), strict=True):
        torch.testing.assert_close(ours, theirs.transpose(1, 2), atol=5e-5, rtol=1e-4)


def test_rows_that_see_no_key_give_zero_and_minus_inf():
    # seqlen_q 9 > seqlen_k 4, causal bottom-right: query i sees keys j <= i - 5
    q, k, v, grad = make_qkv(1, 9, 4, 2, 1, 16, dtype=torch.float32, seed=5)
    out, lse, dq, dk, dv = ours_with_grads(q, k, v, grad, causal=True, backend="torch")
    assert torch.all(out[:, :5] == 0)
    assert torch.all(lse[:, :, :5] == float("-inf"))
    assert torch.all(torch.isfinite(lse[:, :, 5:]))
    assert torch.all(dq[:, :5] == 0)
    assert torch.isfinite(dk).all() and torch.isfinite(dv).all()


@pytest.mark.parametrize(
    "case",
    [
        (1, 1, 130, 8, 4, 32, True, (-1, -1), None),  # one decoding step after a cache
        (1, 3, 130, 8, 4, 32, True, (-1, -1), None),  # a few drafts verified at once
        (2, 9, 4, 2, 1, 16, True, (-1, -1), None),  # rows that see no key
        (1, 5, 40, 4, 2, 16, False, (6, 0), None),  # a window
        (2, 4, 33, 4, 2, 16, False, (-1, -1), "bool"),  # a padding-style boolean mask
        (1, 4, 33, 4, 4, 16, False, (-1, -1), "float"),  # an additive mask
    ],
    ids=["decode", "verify3", "no-key-rows", "window", "bool-mask", "float-mask"],
)
def test_one_tile_path_matches_the_loop(case, monkeypatch):
    """Short query blocks take ``_one_tile_forward``; it agrees with the tiled loop."""
    import flashattn_lite.tiled as tiled

    b, sq, sk, h, hk, d, causal, window, mask_kind = case
    q, k, v, grad = make_qkv(b, sq, sk, h, hk, d, dtype=torch.float64, seed=sq * 13 + sk)
    q_s, k_s, v_s = (t.detach().transpose(1, 2) for t in (q, k, v))  # SDPA layout
    mask = None
    if mask_kind == "bool":
        mask = torch.ones(b, 1, sq, sk, dtype=torch.bool)
        mask[0, :, :, :7] = False  # left padding of the first sequence
        mask[1, :, 2] = False  # and one row with no key at all
    elif mask_kind == "float":
        mask = torch.randn(
            1, h, sq, sk, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
        )

    def run():
        if mask is not None:
            return flashattn_lite.scaled_dot_product_attention(
                q_s, k_s, v_s, attn_mask=mask, enable_gqa=True
            ), None
        return flashattn_lite.flash_attn_func(
            q.detach(),
            k.detach(),
            v.detach(),
            causal=causal,
            window_size=window,
            return_lse=True,
            backend="torch",
        )

    calls = []
    one_tile = tiled._one_tile_forward
    monkeypatch.setattr(tiled, "_one_tile_forward", lambda *a: calls.append(1) or one_tile(*a))
    out_one, lse_one = run()
    assert calls, "a short query block should take the one-tile path"
    monkeypatch.setattr(interface, "DEFAULT_FORWARD_BLOCKS", (2, 8))  # force the loop
    calls.clear()
    out_loop, lse_loop = run()
    assert not calls
    torch.testing.assert_close(out_one, out_loop, atol=1e-12, rtol=0)
    if lse_one is not None:
        torch.testing.assert_close(lse_one, lse_loop, atol=1e-6, rtol=0)
    if mask is None:  # and both against the float64 reference
        ref, ref_lse = flashattn_lite.attention_reference(
            q.detach(), k.detach(), v.detach(), causal=causal, window_size=window, return_lse=True
        )
        torch.testing.assert_close(out_one, ref, atol=1e-12, rtol=0)
        torch.testing.assert_close(lse_one, ref_lse.float(), atol=1e-6, rtol=0)


def test_non_contiguous_inputs_are_handled():
    q, k, v, grad = make_qkv(2, 23, 19, 4, 2, 32, dtype=torch.float64, seed=9)
    # (B, H, S, D) storage seen as (B, S, H, D), and a head dim with stride 2
    q_t = q.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    k_wide = torch.cat([k.detach(), k.detach()], dim=-1)[..., ::2].requires_grad_()
    assert not q_t.is_contiguous() and k_wide.stride(-1) == 2
    out = flashattn_lite.flash_attn_func(q_t, k_wide, v, causal=True, backend="torch")
    ref = flashattn_lite.attention_reference(q.detach(), k_wide.detach(), v.detach(), causal=True)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    dq, dk, _ = torch.autograd.grad(out, (q_t, k_wide, v), grad)
    assert dq.shape == q.shape and dk.shape == k.shape


def test_backward_saves_linear_memory():
    """The autograd graph holds O(N * D) tensors, never the (Sq, Sk) probabilities."""
    seqlen, head_dim = 300, 16  # Sq * Sk = 90000 >> Sq * D = 4800
    q, k, v, grad = make_qkv(1, seqlen, seqlen, 1, 1, head_dim, dtype=torch.float32, seed=2)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = flashattn_lite.flash_attn_func(q, k, v, causal=True, backend="torch")
    assert saved and max(saved) <= seqlen * head_dim
    # the materialised reference does save the (Sq, Sk) matrix: the check can tell
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        flashattn_lite.attention_reference(q, k, v, causal=True)
    assert max(saved) >= seqlen * seqlen
    out.backward(grad)
    assert torch.isfinite(q.grad).all()


def test_softmax_scale_is_applied():
    q, k, v, grad = make_qkv(1, 17, 17, 2, 2, 16, dtype=torch.float64, seed=4)
    ours = ours_with_grads(q, k, v, grad, softmax_scale=0.37, backend="torch")
    ref = reference_with_grads(q, k, v, grad, softmax_scale=0.37)
    for a, r in zip(ours, ref, strict=True):
        assert max_err(a, r) < 1e-6
    default = flashattn_lite.flash_attn_func(q, k, v, backend="torch")
    assert max_err(default, ours[0]) > 1e-3  # the scale changes the answer


def test_auto_backend_is_torch_on_cpu():
    q, k, v, _ = make_qkv(1, 5, 7, 2, 1, 8, dtype=torch.float32, seed=1)
    auto = flashattn_lite.flash_attn_func(q, k, v, causal=True)
    torch_path = flashattn_lite.flash_attn_func(q, k, v, causal=True, backend="torch")
    assert torch.equal(auto, torch_path)


def test_band_tiles_match_their_definition():
    """``Band.allowed``/``blocked`` (triangles), ``every_row_sees_a_key`` and
    ``first_masked_key`` against index grids."""
    from flashattn_lite.masking import Band

    g = torch.Generator().manual_seed(11)
    for _ in range(400):
        diagonal = int(torch.randint(-12, 13, (), generator=g))
        left, right = (
            None if torch.rand((), generator=g) < 0.4 else int(torch.randint(0, 9, (), generator=g))
            for _ in range(2)
        )
        band = Band(diagonal, left, right)
        i0, j0 = (int(torch.randint(0, 10, (), generator=g)) for _ in range(2))
        i1 = i0 + int(torch.randint(0, 8, (), generator=g))
        j1 = j0 + int(torch.randint(0, 12, (), generator=g))
        rel = torch.arange(j0, j1)[None, :] - torch.arange(i0, i1)[:, None] - diagonal
        want = torch.ones_like(rel, dtype=torch.bool)
        if left is not None:
            want &= rel >= -left
        if right is not None:
            want &= rel <= right
        assert torch.equal(band.allowed(i0, i1, j0, j1), want), (band, i0, i1, j0, j1)
        assert band.every_row_sees_a_key(i0, i1, j0, j1) == bool(want.any(-1).all())
        assert band.needs_mask(i0, i1, j0, j1) or bool(want.all())
        assert torch.equal(band.blocked(i0, i1, j0, j1), ~want)
        # keys before first_masked_key are allowed for every row; the shared blocked
        # tile of the keys after it is the same part of the definition
        c0 = band.first_masked_key(i0, j0)
        assert j0 <= c0
        assert bool(want[:, : c0 - j0].all())
        if c0 < j1:
            assert torch.equal(band.blocked(i0, i1, c0, j1), ~want[:, c0 - j0 :])


def test_bottom_right_alignment_literal():
    """flash-attn's documented example: seqlen_q 2, seqlen_k 5, causal."""
    expected = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(flash_mask_reference(2, 5, True, (-1, -1)), expected)
    # the same mask, read back from the tiled path: v = one-hot keys reveals the weights
    q = torch.randn(1, 2, 1, 8, dtype=torch.float64)
    k = torch.zeros(1, 5, 1, 8, dtype=torch.float64)  # equal scores: uniform over allowed keys
    v = torch.eye(5, 8, dtype=torch.float64)[None, :, None, :]
    out = flashattn_lite.flash_attn_func(q, k, v, causal=True, backend="torch")[0, :, 0, :5]
    torch.testing.assert_close(
        out, expected.double() / expected.sum(1, keepdim=True), rtol=0, atol=1e-15
    )
    window = flashattn_lite.flash_attn_func(q, k, v, window_size=(1, 0), backend="torch")[
        0, :, 0, :5
    ]
    torch.testing.assert_close(
        window, torch.tensor([[0, 0, 0.5, 0.5, 0], [0, 0, 0, 0.5, 0.5]], dtype=torch.float64)
    )


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("heads", [(10, 5), (5, 5)], ids=["gqa-10:5", "mha-5"])
@pytest.mark.parametrize("mask_kind", ["window", "bool-per-head", "float-per-batch"])
def test_tiles_of_head_groups_match_reference(mask_kind, heads, threads, monkeypatch):
    """Tiles hold one batch element and a group of kv heads; with a tile budget that fits
    two of five kv heads the groups are ragged (2, 2, 1), and every tile must take its
    own slice of a per-batch or per-head mask, forward and backward."""
    import flashattn_lite.tiled as tiled

    (b, sq, sk, d), (h, hk) = (2, 45, 67, 16), heads
    g = h // hk
    monkeypatch.setattr(interface, "DEFAULT_FORWARD_BLOCKS", (16, 32))
    monkeypatch.setattr(interface, "DEFAULT_BACKWARD_BLOCKS", (16, 32))
    # a tile is (heads, G * 16 rows, 32 keys): two kv heads fit the budget, which is
    # TILE_ELEMENTS per thread
    monkeypatch.setattr(tiled, "TILE_ELEMENTS", 2 * g * 16 * 32 // threads)
    groups = []
    heads_per_tile = tiled._heads_per_tile
    monkeypatch.setattr(
        tiled, "_heads_per_tile", lambda *a: groups.append(heads_per_tile(*a)) or groups[-1]
    )
    q, k, v, grad = make_qkv(b, sq, sk, h, hk, d, dtype=torch.float64, seed=33)
    gen = torch.Generator().manual_seed(4)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if mask_kind == "window":
            kw = dict(causal=True, window_size=(9, 0))
            ours = ours_with_grads(q, k, v, grad, backend="torch", **kw)
            ref = reference_with_grads(q, k, v, grad, **kw)
        else:
            if mask_kind == "bool-per-head":
                mask = torch.rand(b, h, sq, sk, generator=gen) > 0.3
                mask[1, h - 1, 5] = False  # a row of the last head with no key at all
            else:
                mask = torch.randn(b, 1, sq, sk, generator=gen, dtype=torch.float64)

            def run(attention):
                q_s, k_s, v_s = (t.transpose(1, 2) for t in (q, k, v))  # SDPA layout
                out = attention(q_s, k_s, v_s, attn_mask=mask, enable_gqa=True).transpose(1, 2)
                return [out, *torch.autograd.grad(out, (q, k, v), grad)]

            ours = run(flashattn_lite.scaled_dot_product_attention)
            # torch gives nan for the row with no key (and nan gradients from it); ours 0
            ref = [torch.nan_to_num(t, nan=0.0) for t in run(F.scaled_dot_product_attention)]
            ours.insert(1, None)  # no lse through the SDPA interface
            ref.insert(1, None)
    finally:
        torch.set_num_threads(previous)
    assert groups == [2, 2]  # the forward's and the backward's tiles
    for name, a, r in zip(["out", "lse", "dq", "dk", "dv"], ours, ref, strict=True):
        if a is not None:
            assert max_err(a, r) < 1e-12, name


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_works_under_no_grad_and_inference_mode(mode, monkeypatch):
    # small tiles: several query blocks and key blocks per call
    monkeypatch.setattr(interface, "DEFAULT_FORWARD_BLOCKS", (16, 16))
    monkeypatch.setattr(interface, "DEFAULT_BACKWARD_BLOCKS", (16, 16))
    q, k, v, _ = make_qkv(1, 67, 53, 4, 2, 16, dtype=torch.float64, seed=14)
    context = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with context:
        out = flashattn_lite.flash_attn_func(q, k, v, causal=True, backend="torch")
    ref = flashattn_lite.attention_reference(q.detach(), k.detach(), v.detach(), causal=True)
    assert max_err(out, ref) < 1e-12


@pytest.mark.parametrize("sq", [1, 3, 40], ids=["decode", "verify3", "prefill"])
def test_inference_skips_the_autograd_function_and_agrees(sq, monkeypatch):
    """Without autograd the forward runs directly (decoding's fixed cost), bitwise as
    through ``TiledAttention``; with grad it still goes through the Function."""
    import flashattn_lite.tiled as tiled

    q, k, v, grad = make_qkv(1, sq, 53, 4, 2, 16, dtype=torch.float32, seed=sq)
    applied = []
    apply = tiled.TiledAttention.apply
    monkeypatch.setattr(tiled.TiledAttention, "apply", lambda *a: applied.append(1) or apply(*a))
    out_grad, lse_grad = flashattn_lite.flash_attn_func(
        q, k, v, causal=True, return_lse=True, backend="torch"
    )
    assert applied and out_grad.grad_fn is not None
    out_grad.backward(grad)
    assert q.grad is not None and k.grad is not None and v.grad is not None
    applied.clear()
    with torch.no_grad():
        out, lse = flashattn_lite.flash_attn_func(
            q, k, v, causal=True, return_lse=True, backend="torch"
        )
    detached = flashattn_lite.flash_attn_func(
        q.detach(), k.detach(), v.detach(), causal=True, backend="torch"
    )
    assert not applied and out.grad_fn is None and detached.grad_fn is None
    assert torch.equal(out, out_grad.detach()) and torch.equal(lse, lse_grad)
    assert torch.equal(detached, out)


def test_tiles_build_no_autograd_graph():
    """The tiles may not record autograd history (memory), even for inputs that need grad."""
    from flashattn_lite.masking import Band
    from flashattn_lite.tiled import tiled_backward, tiled_forward

    q, k, v, grad = make_qkv(1, 70, 70, 2, 2, 16, dtype=torch.float32, seed=15)
    qg, kh, vh = q.transpose(1, 2).unsqueeze(2), k.transpose(1, 2), v.transpose(1, 2)
    band = Band(diagonal=0, right=0)
    out, lse = tiled_forward(qg, kh, vh, 0.25, band, block_q=16, block_k=16)
    assert not out.requires_grad and not lse.requires_grad
    grads = tiled_backward(
        grad.transpose(1, 2).unsqueeze(2), qg, kh, vh, out, lse, 0.25, band, block_q=16, block_k=16
    )
    assert not any(g.requires_grad for g in grads)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize(
    "shape",
    [
        (1, 67, 45, 4, 1, 16, True, (-1, -1)),  # MQA: one head group per batch element
        (2, 45, 67, 6, 3, 16, False, (5, 9)),  # several head groups per batch element
    ],
    ids=["mqa", "groups"],
)
def test_backward_with_intra_op_threads_matches_reference(shape, threads, monkeypatch):
    """With 2 and 3 intra-op threads (the tile budget grows with them) the gradients are exact."""
    import flashattn_lite.tiled as tiled

    monkeypatch.setattr(interface, "DEFAULT_FORWARD_BLOCKS", (16, 8))
    monkeypatch.setattr(interface, "DEFAULT_BACKWARD_BLOCKS", (16, 8))
    b, sq, sk, h, hk, d, causal, window = shape
    # one kv head's tile (G * 16 rows x 8 keys) per thread: heads grouped `threads` at a time
    monkeypatch.setattr(tiled, "TILE_ELEMENTS", (h // hk) * 16 * 8)
    q, k, v, grad = make_qkv(b, sq, sk, h, hk, d, dtype=torch.float64, seed=21)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours = ours_with_grads(q, k, v, grad, causal=causal, window_size=window, backend="torch")
    finally:
        torch.set_num_threads(previous)
    ref = reference_with_grads(q, k, v, grad, causal=causal, window_size=window)
    for name, a, r in zip(["out", "lse", "dq", "dk", "dv"], ours, ref, strict=True):
        tol = 1e-6 if name == "lse" else 1e-12
        assert max_err(a, r) <= tol * (1 + r.detach()[torch.isfinite(r)].abs().max()), name


def test_per_head_mask_with_heads_split(monkeypatch):
    """A (B, H, L, S) float mask is sliced per head group and batch element."""
    monkeypatch.setattr(interface, "DEFAULT_FORWARD_BLOCKS", (16, 16))
    monkeypatch.setattr(interface, "DEFAULT_BACKWARD_BLOCKS", (16, 16))
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 4, 37, 16, generator=gen, requires_grad=True) for _ in range(3))
    bias = torch.randn(2, 4, 37, 37, generator=gen)
    bias[0, 1, :, 3:] = float("-inf")  # one head of one batch sees only 3 keys
    grad = torch.randn(2, 4, 37, 16, generator=gen)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = flashattn_lite.scaled_dot_product_attention(q, k, v, attn_mask=bias, backend="torch")
        ours = torch.autograd.grad(out, (q, k, v), grad)
    finally:
        torch.set_num_threads(previous)
    peer = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    theirs = torch.autograd.grad(peer, (q, k, v), grad)
    torch.testing.assert_close(out, peer, atol=2e-5, rtol=1e-4)
    for a, r in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, r, atol=5e-5, rtol=1e-4)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")  # Python >= 3.12
def test_forked_child_computes_the_same(monkeypatch):
    """A child forked after a call computes the same result. As for any torch op (OpenMP
    is not fork-safe), the child first sets one intra-op thread, as DataLoader's forked
    workers do."""
    import os

    monkeypatch.setattr(interface, "DEFAULT_FORWARD_BLOCKS", (16, 16))
    q, k, v, _ = make_qkv(1, 67, 53, 4, 2, 16, dtype=torch.float64, seed=3)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            expected = flashattn_lite.flash_attn_func(q, k, v, backend="torch")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: same call, must finish and agree
            ok = False
            try:
                torch.set_num_threads(1)
                with torch.no_grad():
                    out = flashattn_lite.flash_attn_func(q, k, v, backend="torch")
                ok = torch.equal(out, expected)
            finally:
                os.write(write, b"1" if ok else b"0")
                os._exit(0)
        os.close(write)
        import select

        ready, _, _ = select.select([read], [], [], 30)  # a hang fails, not blocks
        answer = os.read(read, 1) if ready else b"timeout"
        if not ready:
            os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(read)
    finally:
        torch.set_num_threads(previous)
    assert answer == b"1"


@pytest.mark.parametrize(
    "shape",
    [(1, 5, 5, 4, 2, 16, True, (-1, -1)), (2, 37, 129, 4, 1, 32, False, (9, 3))],
    ids=["one-tile-gqa-causal", "loop-mqa-window"],
)
def test_torch_compile_fullgraph_matches_reference(shape, monkeypatch):
    """One graph, forward and backward: dynamo traces the tiles and the autograd.Function.

    ``aot_eager`` runs what dynamo and AOTAutograd capture without generating kernels
    (what can break in a graph is the tracing, not the code generation).
    """
    monkeypatch.setattr(interface, "DEFAULT_FORWARD_BLOCKS", (16, 32))  # several tiles
    monkeypatch.setattr(interface, "DEFAULT_BACKWARD_BLOCKS", (16, 32))
    torch._dynamo.reset()
    b, sq, sk, h, hk, d, causal, window = shape
    q, k, v, grad = make_qkv(b, sq, sk, h, hk, d, seed=sq + sk)

    def attend(q, k, v):
        return flashattn_lite.flash_attn_func(
            q, k, v, causal=causal, window_size=window, backend="torch"
        )

    out = torch.compile(attend, backend="aot_eager", fullgraph=True)(q, k, v)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
    ref = reference_with_grads(q, k, v, grad, causal=causal, window_size=window)
    wanted = (ref[0], *ref[2:])  # the reference's lse is not compared here
    for name, a, r in zip(["out", "dq", "dk", "dv"], (out, dq, dk, dv), wanted, strict=True):
        assert max_err(a, r) <= 2e-5 * (1 + r.detach().abs().max()), name
