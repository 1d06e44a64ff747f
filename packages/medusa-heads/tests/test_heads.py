import pytest
import torch
import torch.nn.functional as F
from conftest import HIDDEN, VOCAB
from medusa_heads import MedusaHeads


def random_heads(num_heads=3, num_layers=2, seed=0, hidden=HIDDEN, vocab=VOCAB):
    torch.manual_seed(seed)
    heads = MedusaHeads(hidden, vocab, num_heads=num_heads, num_layers=num_layers)
    with torch.no_grad():  # move the residual blocks away from the identity
        for p in heads.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return heads


@pytest.mark.parametrize("batch,seq", [(1, 1), (3, 7), (2, 13)])
def test_forward_shape_and_per_head_definition(batch, seq):
    heads = random_heads()
    hidden = torch.randn(batch, seq, HIDDEN)
    logits = heads(hidden)
    assert logits.shape == (3, batch, seq, VOCAB)
    for k, head in enumerate(heads.heads):
        x = hidden.double()
        for block in head[:-1]:  # x + SiLU(W x + b), written out in float64
            w, b = block.linear.weight.double(), block.linear.bias.double()
            x = x + F.silu(x @ w.T + b)
        expected = x @ head[-1].weight.double().T
        torch.testing.assert_close(logits[k].double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_layers", [0, 1, 3])
def test_lm_head_init_predicts_like_the_base_model(num_layers):
    lm_head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    heads = MedusaHeads(HIDDEN, VOCAB, num_heads=4, num_layers=num_layers, lm_head=lm_head)
    hidden = torch.randn(2, 5, HIDDEN)
    logits = heads(hidden)
    for k in range(4):
        assert torch.equal(logits[k], lm_head(hidden))
    # a copy, not a shared parameter
    assert heads.heads[0][-1].weight.data_ptr() != lm_head.weight.data_ptr()


def naive_loss(heads, hidden, ids, decay):
    """Float64, position by position."""
    logits = heads.double()(hidden.double())  # (H, B, T, V)
    total, accuracies = 0.0, []
    for k in range(heads.num_heads):
        losses, hits = [], []
        for b in range(ids.shape[0]):
            for t in range(ids.shape[1] - k - 2):
                label = int(ids[b, t + k + 2])
                if label == -100:
                    continue
                losses.append(-torch.log_softmax(logits[k, b, t], -1)[label])
                hits.append(float(logits[k, b, t].argmax() == label))
        if not losses:  # no valid position: the head contributes nothing
            accuracies.append(0.0)
            continue
        total = total + decay**k * torch.stack(losses).mean()
        accuracies.append(sum(hits) / len(hits))
    return total, torch.tensor(accuracies)


@pytest.mark.parametrize("batch,seq,decay", [(1, 6, 0.8), (3, 11, 0.5), (2, 9, 1.0)])
def test_loss_and_gradients_match_float64_reference(batch, seq, decay):
    heads = random_heads(num_heads=4)
    hidden = torch.randn(batch, seq, HIDDEN)
    ids = torch.randint(0, VOCAB, (batch, seq))
    ids[0, -1] = -100  # ignored label
    loss, metrics = heads.loss(hidden, ids, decay=decay, return_metrics=True)
    loss.backward()
    ref_heads = random_heads(num_heads=4)
    ref_loss, ref_acc = naive_loss(ref_heads, hidden, ids, decay)
    ref_loss.backward()
    torch.testing.assert_close(loss.double(), ref_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(metrics["top1"].double(), ref_acc.double())
    torch.testing.assert_close(metrics["rank_accuracy"][:, 0], metrics["top1"])
    assert metrics["rank_accuracy"].shape == (4, 10)
    assert bool((metrics["rank_accuracy"].sum(1) <= 1 + 1e-6).all())
    for p, p_ref in zip(heads.parameters(), ref_heads.parameters(), strict=True):
        torch.testing.assert_close(p.grad.double(), p_ref.grad, atol=1e-5, rtol=1e-4)


def test_state_dict_round_trip():
    heads = random_heads(num_heads=3, num_layers=2)
    again = MedusaHeads.from_state_dict(heads.state_dict())
    assert (again.num_heads, again.num_layers, again.hidden_size) == (3, 2, HIDDEN)
    hidden = torch.randn(1, 4, HIDDEN)
    assert torch.equal(again(hidden), heads(hidden))


def test_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_heads"):
        MedusaHeads(HIDDEN, VOCAB, num_heads=0)
    with pytest.raises(TypeError, match="hidden_size"):
        MedusaHeads(48.0, VOCAB)
    with pytest.raises(ValueError, match="num_layers"):
        MedusaHeads(HIDDEN, VOCAB, num_layers=-1)


def test_rejects_mismatched_lm_head():
    with pytest.raises(ValueError, match="lm_head"):
        MedusaHeads(HIDDEN, VOCAB, lm_head=torch.nn.Linear(HIDDEN + 1, VOCAB))
    with pytest.raises(TypeError, match="lm_head"):
        MedusaHeads(HIDDEN, VOCAB, lm_head="lm_head")


def test_rejects_wrong_hidden_states():
    heads = random_heads()
    with pytest.raises(ValueError, match="hidden_states"):
        heads(torch.randn(2, 3, HIDDEN + 1))
    with pytest.raises(ValueError, match="hidden_states"):
        heads(torch.randn(3, HIDDEN))
    with pytest.raises(TypeError, match="hidden_states"):
        heads([[0.0] * HIDDEN])


def test_loss_rejects_bad_labels_and_decay():
    heads = random_heads(num_heads=3)
    hidden = torch.randn(2, 8, HIDDEN)
    with pytest.raises(TypeError, match="input_ids"):
        heads.loss(hidden, torch.zeros(2, 8))
    with pytest.raises(ValueError, match="input_ids"):
        heads.loss(hidden, torch.zeros(2, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="input_ids"):
        heads.loss(hidden[:, :4], torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="decay"):
        heads.loss(hidden, torch.zeros(2, 8, dtype=torch.long), decay=0.0)


@pytest.mark.parametrize("num_layers,first", [(0, 3), (1, 1), (2, 3)])
def test_decode_fast_path_matches_forward(num_layers, first):
    heads = random_heads(num_heads=3, num_layers=num_layers, seed=4)
    hidden = torch.randn(HIDDEN)
    fast = MedusaHeads.decode_logits(hidden, heads.stacked_weights(), first)
    torch.testing.assert_close(
        fast, heads(hidden.view(1, 1, -1))[:first, 0, 0], atol=1e-5, rtol=1e-5
    )
