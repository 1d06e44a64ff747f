import io

import pytest
import torch
from conftest import HIDDEN, VOCAB, make_model
from medusa_heads import (
    MedusaHeads,
    build_tree,
    choices_from_accuracies,
    load_text_tokens,
    self_distill_sequences,
    train_heads,
)
from medusa_heads.train import main

TEXT = "DEF ADD(A, B):\n    RETURN A + B\n\n" * 40  # repetitive, every byte id < VOCAB


@pytest.fixture()
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_load_text_tokens_bytes_and_tokenizers(text_file):
    tokens = load_text_tokens(text_file)
    assert tokens.dtype == torch.long and tokens.tolist() == list(TEXT.encode())
    by_word = load_text_tokens(text_file, tokenizer=lambda s: [len(w) for w in s.split()])
    assert by_word.tolist() == [len(w) for w in TEXT.split()]

    class WithEncode:
        def encode(self, text):
            return [ord(c) % 7 for c in text]

    assert load_text_tokens(text_file, WithEncode()).tolist() == [ord(c) % 7 for c in TEXT]


def test_load_text_tokens_rejects_missing_and_empty_files(tmp_path):
    with pytest.raises(ValueError, match="path"):
        load_text_tokens(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="path"):
        load_text_tokens(tmp_path / "empty.txt")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(TypeError, match="tokenizer"):
        load_text_tokens(tmp_path / "x.txt", tokenizer=3)


def test_training_on_text_lowers_the_loss_and_saves(text_file, tmp_path):
    model = make_model("llama")
    heads = MedusaHeads(HIDDEN, VOCAB, num_heads=3, lm_head=model.lm_head)
    stream = io.StringIO()
    result = train_heads(
        model, heads, load_text_tokens(text_file), steps=30, batch_size=4, seq_len=24,
        lr=1e-2, save_path=tmp_path / "heads.pt", progress=stream,
    )  # fmt: skip
    assert len(result.losses) == 30
    assert sum(result.losses[-5:]) < sum(result.losses[:5])
    assert "30/30" in stream.getvalue()  # the progress bar reached the end
    loaded = MedusaHeads.from_state_dict(torch.load(tmp_path / "heads.pt"))
    hidden = torch.randn(1, 3, HIDDEN)
    assert torch.equal(loaded(hidden), heads(hidden))
    assert result.rank_accuracy.shape == (3, 10)
    build_tree(choices_from_accuracies(result.rank_accuracy, 10))


def test_self_distillation_sequences_are_the_models_greedy_outputs():
    model = make_model("qwen2")
    corpus = torch.randint(0, VOCAB, (300,), generator=torch.Generator().manual_seed(0))
    sequences = self_distill_sequences(model, corpus, 5, 14, prompt_len=4, batch_size=3)
    assert sequences.shape == (5, 14)
    for row in sequences:
        expected = model.generate(row[None, :4], max_new_tokens=10, do_sample=False)
        assert torch.equal(row[None], expected)


def test_train_heads_rejects_bad_arguments():
    model = make_model("llama")
    heads = MedusaHeads(HIDDEN, VOCAB, num_heads=3)
    tokens = torch.randint(0, VOCAB, (100,))
    with pytest.raises(ValueError, match="steps"):
        train_heads(model, heads, tokens, steps=0)
    with pytest.raises(ValueError, match="seq_len"):
        train_heads(model, heads, tokens, seq_len=4, progress=False)
    with pytest.raises(TypeError, match="tokens"):
        train_heads(model, heads, tokens.float())
    with pytest.raises(TypeError, match="heads"):
        train_heads(model, model.lm_head, tokens)
    with pytest.raises(ValueError, match="tokens"):
        train_heads(model, heads, tokens + VOCAB, progress=False)


def test_command_line_trains_and_saves(text_file, tmp_path):
    model = make_model("llama")
    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "heads.pt"
    result = main([str(tmp_path / "model"), str(text_file), "--out", str(out),
                   "--tokenizer", "bytes", "--steps", "3", "--batch-size", "2",
                   "--seq-len", "16", "--num-heads", "2"])  # fmt: skip
    assert len(result.losses) == 3
    heads = MedusaHeads.from_state_dict(torch.load(out))
    assert heads.num_heads == 2 and heads.vocab_size == VOCAB
