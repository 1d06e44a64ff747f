"""The corpus: CPython's standard library sources, split by file, tokenised with a small BPE.

Every machine with Python has it, so the scenario needs no download. The split is by
file (a file is wholly in train or in validation), decided by a hash of its path
relative to the standard library, so it is the same on every machine with the same
Python version whatever the order the file system lists files in. Files are joined
with a separator token, and the token streams are cached as uint16 arrays.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEPARATOR = "<|file|>"
MAX_FILE_BYTES = 512 * 1024  # a few generated tables are huge and not representative


@dataclass(frozen=True)
class Corpus:
    """Token streams and the tokenizer that made them."""

    train: np.ndarray  # (n_train_tokens,) uint16
    val: np.ndarray  # (n_val_tokens,) uint16
    tokenizer_path: Path
    vocab_size: int
    stats: dict

    def tokenizer(self):
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(self.tokenizer_path))


def stdlib_files(root: Path | None = None) -> list[Path]:
    """The ``.py`` files of the standard library (site-packages excluded), sorted."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = [
        p
        for p in root.rglob("*.py")
        if "site-packages" not in p.parts and p.is_file() and p.stat().st_size <= MAX_FILE_BYTES
    ]
    return sorted(files)


def is_validation(relative_path: str, val_every: int = 20) -> bool:
    """Deterministic ~1/val_every validation split by file path."""
    digest = hashlib.sha1(relative_path.encode()).digest()
    return int.from_bytes(digest[:4], "little") % val_every == 0


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def build_corpus(cache_dir: Path, vocab_size: int = 2048, max_files: int | None = None) -> Corpus:
    """Split, train the BPE on the train files, tokenise both splits; cached in ``cache_dir``."""
    from tokenizers import ByteLevelBPETokenizer, Tokenizer

    cache_dir.mkdir(parents=True, exist_ok=True)
    meta_path = cache_dir / "corpus.json"
    tok_path = cache_dir / "tokenizer.json"
    key = {"vocab_size": vocab_size, "max_files": max_files}
    if meta_path.exists() and tok_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta["key"] == key:
            return Corpus(
                np.fromfile(cache_dir / "train.bin", dtype=np.uint16),
                np.fromfile(cache_dir / "val.bin", dtype=np.uint16),
                tok_path,
                meta["vocab_size"],
                meta["stats"],
            )

    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files(root)
    if max_files is not None:
        files = files[:: max(1, len(files) // max_files)][:max_files]
    train_files = [f for f in files if not is_validation(str(f.relative_to(root)))]
    val_files = [f for f in files if is_validation(str(f.relative_to(root)))]

    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(
        (_read(f) for f in train_files),
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[SEPARATOR],
    )
    tokenizer.save(str(tok_path))
    tokenizer = Tokenizer.from_file(str(tok_path))
    sep = tokenizer.token_to_id(SEPARATOR)

    def encode(paths: list[Path]) -> np.ndarray:
        ids: list[int] = []
        texts = [_read(p) for p in paths]
        for enc in tokenizer.encode_batch(texts):
            ids.extend(enc.ids)
            ids.append(sep)
        return np.asarray(ids, dtype=np.uint16)

    train, val = encode(train_files), encode(val_files)
    train.tofile(cache_dir / "train.bin")
    val.tofile(cache_dir / "val.bin")
    stats = {
        "stdlib": str(root),
        "train_files": len(train_files),
        "val_files": len(val_files),
        "train_bytes": sum(f.stat().st_size for f in train_files),
        "val_bytes": sum(f.stat().st_size for f in val_files),
        "train_tokens": int(train.size),
        "val_tokens": int(val.size),
        "val_examples": [str(f.relative_to(root)) for f in val_files[:5]],
    }
    vocab = tokenizer.get_vocab_size()
    meta_path.write_text(json.dumps({"key": key, "vocab_size": vocab, "stats": stats}, indent=1))
    return Corpus(train, val, tok_path, vocab, stats)
