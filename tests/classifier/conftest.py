"""Session fixtures: a tiny random RoBERTa (hidden 32, 2 layers), its data, one trained copy."""

from __future__ import annotations

import pytest

from genalign_jax.classifier import build_classifier, get_preset, train_classifier
from tests.classifier import CONFIG, separable_data, tiny_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def pretrained(tokenizer):
    config = get_preset("tiny_roberta", vocab_size=len(tokenizer))
    return build_classifier(config, tokenizer, seed=0, max_length=32, mesh=None)


@pytest.fixture(scope="session")
def train_data():
    return separable_data(64, seed=0)


@pytest.fixture(scope="session")
def golden_data():
    return separable_data(40, seed=1)


@pytest.fixture(scope="session")
def trained(pretrained, train_data):
    return train_classifier(pretrained, *train_data, CONFIG, rng=0)
