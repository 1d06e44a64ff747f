"""ParallelMTPHeads' memory-saving backward, shared weights, train_mtp and the script."""

from __future__ import annotations

import mtp_heads
import pytest
import torch
from conftest import batches_of, tiny_llama
from mtp_heads import train as train_script


def grads_of(model, heads, memory_efficient, *, frozen_trunk=False, train_shared=False):
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (3, 13))
    model.zero_grad(set_to_none=True)
    heads.zero_grad(set_to_none=True)
    heads.train_shared = train_shared
    if frozen_trunk:
        with torch.no_grad():
            hidden = model(ids, output_hidden_states=True).hidden_states[-1]
        loss = heads.loss(hidden, ids, weight=0.7, memory_efficient=memory_efficient)
    else:
        out = model(ids, labels=ids, output_hidden_states=True)
        mtp_loss = heads.loss(
            out.hidden_states[-1], ids, weight=0.7, memory_efficient=memory_efficient
        )
        loss = out.loss + mtp_loss
    loss.backward()
    named = [("model." + n, p) for n, p in model.named_parameters()]
    named += [("heads." + n, p) for n, p in heads.named_parameters()]
    return float(loss.detach()), {n: None if p.grad is None else p.grad.clone() for n, p in named}


@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize(
    "setting",
    [{}, {"frozen_trunk": True}, {"train_shared": True}],
    ids=["joint", "frozen", "shared"],
)
def test_memory_saving_backward_gives_the_plain_gradients(depth, setting):
    model = tiny_llama(dtype=torch.float64, num_key_value_heads=1)
    heads = mtp_heads.ParallelMTPHeads.from_model(model, depth=depth)
    loss_plain, plain = grads_of(model, heads, False, **setting)
    loss_saving, saving = grads_of(model, heads, True, **setting)
    assert loss_saving == pytest.approx(loss_plain, rel=1e-12)
    assert plain.keys() == saving.keys()
    some_trunk_grad = False
    for name, g in plain.items():
        if g is None:
            assert saving[name] is None, name
            continue
        torch.testing.assert_close(saving[name], g, rtol=1e-10, atol=1e-12, msg=name)
        some_trunk_grad |= name.startswith("model.model.layers") and g.abs().sum() > 0
    assert some_trunk_grad == (not setting.get("frozen_trunk", False))
    head_grad = plain["model.lm_head.weight"]
    # the shared head gets the heads' gradient only with train_shared (and the main loss's
    # when the trunk is trained)
    if setting.get("frozen_trunk"):
        assert head_grad is None
    else:
        assert head_grad is not None


def test_memory_saving_backward_builds_no_graph_through_the_heads():
    model = tiny_llama()
    heads = mtp_heads.ParallelMTPHeads.from_model(model, depth=2, memory_efficient=True)
    ids = torch.randint(0, 61, (2, 9))
    hidden = model(ids, output_hidden_states=True).hidden_states[-1]
    loss = heads.loss(hidden, ids)
    assert type(loss.grad_fn).__name__ == "_HeadByHeadLossBackward"
    with torch.no_grad():  # evaluation: no gradient work at all
        assert heads.loss(hidden, ids).grad_fn is None


def test_shared_weights_are_shared_not_copied_and_frozen_by_default(llama):
    mtp = mtp_heads.MTPModule.from_model(llama, depth=2)
    assert mtp._borrowed[0] is llama.get_input_embeddings()
    assert mtp._borrowed[1] is llama.get_output_embeddings()
    own = {id(p) for p in mtp.parameters()}
    assert id(llama.lm_head.weight) not in own
    assert id(llama.model.embed_tokens.weight) not in own
    assert not any("embed" in k and "norm" not in k for k in mtp.state_dict())
    ids = torch.randint(0, 61, (2, 8))
    hidden = torch.randn(2, 8, 32, requires_grad=True)
    llama.zero_grad(set_to_none=True)
    mtp.loss(hidden, ids).backward()
    assert llama.lm_head.weight.grad is None and llama.model.embed_tokens.weight.grad is None
    assert hidden.grad is not None
    mtp.train_shared = True
    mtp.loss(hidden, ids).backward()
    assert (
        llama.lm_head.weight.grad is not None and llama.model.embed_tokens.weight.grad is not None
    )
    llama.zero_grad(set_to_none=True)


def test_from_model_reads_the_config():
    model = tiny_llama(num_key_value_heads=1, hidden_size=24, num_attention_heads=3, vocab_size=37)
    mtp = mtp_heads.MTPModule.from_model(model, depth=3)
    cfg = model.config
    assert (mtp.hidden_size, mtp.vocab_size, mtp.depth) == (24, 37, 3)
    assert mtp.cfg.num_attention_heads == 3 and mtp.cfg.num_key_value_heads == 1
    assert mtp.cfg.intermediate_size == cfg.intermediate_size
    assert mtp.cfg.rms_norm_eps == cfg.rms_norm_eps
    assert mtp.cfg.rope_theta == cfg.rope_parameters["rope_theta"]
    heads = mtp_heads.ParallelMTPHeads.from_model(model, depth=2, intermediate_size=8)
    assert heads.cfg.intermediate_size == 8 and heads._borrowed[1] is model.lm_head


def test_train_mtp_on_frozen_model_lowers_the_loss_and_keeps_the_model(llama, llama_data):
    before = {k: v.clone() for k, v in llama.state_dict().items()}
    torch.manual_seed(0)
    mtp = mtp_heads.MTPModule.from_model(llama, depth=2)
    stats = mtp_heads.train_mtp(
        llama, mtp, batches_of(llama_data), steps=30, lr=1e-2, progress=False
    )
    assert stats.steps == 30 and len(stats.mtp_losses) == 30 and stats.main_losses == []
    assert sum(stats.mtp_losses[-5:]) < sum(stats.mtp_losses[:5])
    for k, v in llama.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not llama.training and not mtp.training


def test_train_mtp_jointly_updates_the_model(llama_data):
    model = tiny_llama(seed=7)
    before = model.lm_head.weight.detach().clone()
    heads = mtp_heads.ParallelMTPHeads.from_model(model, depth=2, memory_efficient=True)
    stats = mtp_heads.train_mtp(
        model, heads, batches_of(llama_data), steps=12, lr=1e-2, joint=True, progress=False
    )
    assert len(stats.main_losses) == 12 and stats.main_losses[-1] < stats.main_losses[0]
    assert not torch.equal(model.lm_head.weight, before)


def test_progress_bar_writes_to_stderr(llama, llama_data, capsys):
    mtp = mtp_heads.MTPModule.from_model(llama, depth=1)
    mtp_heads.train_mtp(llama, mtp, batches_of(llama_data), steps=3, progress=True)
    err = capsys.readouterr().err
    assert "3/3" in err and "mtp_loss" in err


def test_save_and_load_heads_round_trip(llama, trained_heads, tmp_path):
    for kind in ("sequential", "parallel"):
        heads = trained_heads[kind, 2]
        path = tmp_path / f"{kind}.pt"
        mtp_heads.save_heads(heads, path)
        loaded = mtp_heads.load_heads(llama, path)
        assert type(loaded) is type(heads) and loaded.depth == 2
        ids = torch.randint(0, 61, (1, 9))
        hidden = torch.randn(1, 9, 32)
        for a, b in zip(loaded(hidden, ids), heads(hidden, ids), strict=True):
            assert torch.equal(a, b)


def test_random_windows():
    stream = torch.arange(100)
    batch = next(mtp_heads.random_windows(stream, 4, 9, generator=torch.Generator().manual_seed(0)))
    assert batch.shape == (4, 9)
    assert torch.equal(batch[:, 1:] - batch[:, :-1], torch.ones(4, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="tokens"):
        next(mtp_heads.random_windows(torch.arange(5), 2, 9))


@pytest.mark.parametrize("kind", ["sequential", "parallel"])
def test_training_script_end_to_end(tmp_path, llama_data, kind):
    model = tiny_llama()
    model.save_pretrained(tmp_path / "model")
    torch.save(llama_data.reshape(-1), tmp_path / "tokens.pt")
    out = tmp_path / "heads.pt"
    argv = ["--model", str(tmp_path / "model"), "--tokens", str(tmp_path / "tokens.pt")]
    argv += ["--kind", kind, "--depth", "2", "--steps", "4", "--batch-size", "2"]
    argv += ["--seq-len", "12", "--out", str(out), "--no-progress"]
    assert train_script.main(argv) == 0
    heads = mtp_heads.load_heads(model, out)
    assert heads.depth == 2
    ids = llama_data[:1, :5]
    res = mtp_heads.speculative_generate(model, heads, ids, 6)
    assert res.sequences.shape == (1, 11)
