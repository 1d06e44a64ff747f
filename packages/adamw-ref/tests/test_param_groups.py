"""param_groups: decay for matrices, none for biases and norm weights, every param once."""

import adamw_ref
import pytest
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.proj = nn.Linear(6, 6)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.embed.weight  # tied: must appear once
        self.frozen = nn.Linear(6, 6)
        self.frozen.requires_grad_(False)


def _names(model, group):
    ids = {id(p) for p in group["params"]}
    return sorted(n for n, p in model.named_parameters() if id(p) in ids)


def test_default_rule_exempts_vectors():
    model = TinyNet()
    decay, exempt = adamw_ref.param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and exempt["weight_decay"] == 0.0
    assert _names(model, decay) == ["embed.weight", "proj.weight"]
    assert _names(model, exempt) == ["norm.bias", "norm.weight", "proj.bias"]


def test_name_fragments_and_callables():
    model = TinyNet()
    decay, exempt = adamw_ref.param_groups(model, 0.1, no_decay=["norm", "embed"])
    assert _names(model, exempt) == ["embed.weight", "norm.bias", "norm.weight"]
    assert _names(model, decay) == ["proj.bias", "proj.weight"]
    (only,) = adamw_ref.param_groups(model, 0.1, no_decay=lambda name, p: True)
    assert only["weight_decay"] == 0.0 and len(only["params"]) == 5


def test_groups_train_with_both_optimizers_identically():
    model = TinyNet()
    twin = TinyNet()
    twin.load_state_dict(model.state_dict())
    ours = adamw_ref.AdamW(adamw_ref.param_groups(model, 0.1), lr=1e-2, impl="reference")
    peer = torch.optim.AdamW(adamw_ref.param_groups(twin, 0.1), lr=1e-2, foreach=False)
    tokens = torch.randint(0, 11, (4, 5), generator=torch.Generator().manual_seed(0))
    for _ in range(5):
        for m, opt in ((model, ours), (twin, peer)):
            opt.zero_grad()
            h = m.norm(m.proj(m.embed(tokens)))
            nn.functional.cross_entropy(m.head(h).flatten(0, 1), tokens.flatten()).backward()
            opt.step()
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_llama_norm_weights_get_no_decay():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=61, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    decay, exempt = adamw_ref.param_groups(model, weight_decay=0.1)
    exempt_names = _names(model, exempt)
    assert exempt_names and all("norm" in n for n in exempt_names)
    assert "model.norm.weight" in exempt_names
    assert all(p.ndim == 2 for p in decay["params"])
    n_all = len(list(model.parameters()))
    assert len(decay["params"]) + len(exempt["params"]) == n_all
    # one real training step through our optimizer
    opt = adamw_ref.AdamW([decay, exempt], lr=1e-3)
    ids = torch.randint(0, 61, (2, 9), generator=torch.Generator().manual_seed(1))
    before = [p.detach().clone() for p in model.parameters()]
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_rejects_non_module():
    with pytest.raises(TypeError, match="model"):
        adamw_ref.param_groups([torch.randn(2, 2)], 0.1)


def test_rejects_negative_weight_decay():
    with pytest.raises(ValueError, match="weight_decay"):
        adamw_ref.param_groups(TinyNet(), -0.1)


def test_rejects_a_bare_string_rule():
    with pytest.raises(TypeError, match="no_decay"):
        adamw_ref.param_groups(TinyNet(), 0.1, no_decay="bias")
