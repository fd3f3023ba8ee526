"""Tests of genalign_jax.classifier (mirrors the package: encoder, weights, train, evaluate, embed).

Shared here: one tiny separable text task and one training config, so every test
module builds the same program and the train step compiles once per process.
"""

from __future__ import annotations

import numpy as np

from genalign_jax.classifier import ClassifierConfig
from tests.hf_fixtures import make_tiny_tokenizer

POSITIVE = ["good", "great", "fine", "nice", "love", "superb"]
NEGATIVE = ["bad", "awful", "poor", "hate", "worst", "boring"]
FILLER = ["the", "movie", "was", "a", "plot", "film", "it", "really", "and", "story"]

CONFIG = ClassifierConfig(num_labels=2, max_length=32, learning_rate=5e-3, epochs=10,
                          batch_size=16, warmup_ratio=0.1, length_buckets=(16, 32), seed=0)


def separable_data(n: int, seed: int, long_every: int = 0):
    """Texts of filler words plus 1-2 class words; label 0 = positive words, 1 = negative.

    With ``long_every`` every such example is longer than 16 tokens (second length bucket).
    """
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        y = i % 2
        count = 20 if long_every and i % long_every == 0 else rng.integers(2, 9)
        words = list(rng.choice(FILLER, count))
        for _ in range(rng.integers(1, 3)):
            words.insert(rng.integers(0, len(words) + 1), rng.choice(NEGATIVE if y else POSITIVE))
        texts.append(" ".join(words))
        labels.append(y)
    return texts, np.asarray(labels)


def tiny_tokenizer():
    return make_tiny_tokenizer(None, POSITIVE + NEGATIVE + FILLER)
