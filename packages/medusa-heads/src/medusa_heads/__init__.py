"""Medusa decoding heads, tree attention and typical acceptance.

Extra heads on a frozen transformers causal LM propose several future tokens; one
forward with a tree attention mask verifies them all; greedy acceptance keeps the output
identical to ``model.generate(do_sample=False)``, typical acceptance trades exactness
for longer accepted runs when sampling.
"""

from .acceptance import accept_greedy, accept_typical, typical_threshold
from .generate import MedusaOutput, generate
from .heads import MedusaHeads
from .train import TrainResult, load_text_tokens, self_distill_sequences, train_heads
from .tree import (
    CHAIN_CHOICES,
    DEFAULT_CHOICES,
    LARGE_TREE_CHOICES,
    SMALL_TREE_CHOICES,
    MedusaTree,
    build_tree,
    chain_choices,
    choices_from_accuracies,
)

__version__ = "0.1.0"

__all__ = [
    "CHAIN_CHOICES",
    "DEFAULT_CHOICES",
    "LARGE_TREE_CHOICES",
    "SMALL_TREE_CHOICES",
    "MedusaHeads",
    "MedusaOutput",
    "MedusaTree",
    "TrainResult",
    "accept_greedy",
    "accept_typical",
    "build_tree",
    "chain_choices",
    "choices_from_accuracies",
    "generate",
    "load_text_tokens",
    "self_distill_sequences",
    "train_heads",
    "typical_threshold",
]
