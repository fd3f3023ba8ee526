"""evaluate / predict_logits / metrics_from_logits: metrics vs NumPy and sklearn, exactly-once."""

from __future__ import annotations

import numpy as np
import pytest

from genalign_jax.classifier import evaluate, metrics_from_logits, predict_logits
from tests.classifier import separable_data


def _sklearn_checks(result, logits, labels):
    from sklearn.metrics import accuracy_score, f1_score, recall_score
    z = logits.astype(np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    numpy_ce = -logp[np.arange(len(labels)), labels].mean()
    preds = logits.argmax(-1)
    assert result.loss == pytest.approx(numpy_ce, abs=1e-6)
    assert result.accuracy == pytest.approx(accuracy_score(labels, preds))
    assert result.macro_f1 == pytest.approx(f1_score(labels, preds, average="macro"))
    present = np.unique(labels)
    recalls = recall_score(labels, preds, average=None, labels=present)
    np.testing.assert_allclose(result.per_class_accuracy[present], recalls)


@pytest.mark.parametrize("which", ["trained", "untrained"])
def test_golden_metrics_match_numpy_and_sklearn(which, trained, pretrained, golden_data):
    model = trained[0] if which == "trained" else pretrained  # untrained: imperfect predictions
    texts, labels = golden_data
    result = evaluate(model, texts, labels)
    _sklearn_checks(result, predict_logits(model, texts), labels)


def test_metrics_with_missing_classes_match_sklearn():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(30, 4)).astype(np.float32)
    labels = rng.choice([0, 1, 3], size=30)  # class 2 absent from the labels
    result = metrics_from_logits(logits, labels)
    _sklearn_checks(result, logits, labels)
    assert np.isnan(result.per_class_accuracy[2])


def test_every_example_is_evaluated_exactly_once(trained):
    model = trained[0]
    texts, labels = separable_data(37, seed=5, long_every=3)  # two length buckets, ragged batches
    batched = predict_logits(model, texts, batch_size=8)
    one_by_one = np.concatenate([predict_logits(model, [t], batch_size=8) for t in texts])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    result = evaluate(model, texts, labels, batch_size=8)
    assert result.n == 37
    assert predict_logits(model, []).shape == (0, 2)


def test_bad_inputs_are_rejected(pretrained):
    with pytest.raises(ValueError, match="evaluate: label 5"):
        evaluate(pretrained, ["good"], [5])
