"""Scoring a ``TextClassifier`` on labelled texts: logits, golden loss, accuracy, macro-F1.

``evaluate(trained, golden_texts, golden_labels).loss`` is the "golden loss" of the reward:
the mean unsmoothed cross-entropy, every example counted exactly once (batches sorted by
length into the classifier's buckets, padding rows dropped, results scattered back).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from genalign_jax import sharding as sharding_lib
from genalign_jax.classifier import batching
from genalign_jax.classifier.model import TextClassifier, put_rows
from genalign_jax.classifier.program import ClassifierProgram

__all__ = ["EvalResult", "evaluate", "predict_logits", "metrics_from_logits", "eval_rows"]


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Golden-set metrics; ``per_class_accuracy[c]`` is NaN for classes absent from the labels."""

    loss: float
    accuracy: float
    macro_f1: float
    per_class_accuracy: np.ndarray
    n: int

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """Flat scalars for logging (``{prefix}loss``, ``{prefix}acc_class0``...)."""
        out = {f"{prefix}loss": self.loss, f"{prefix}accuracy": self.accuracy,
               f"{prefix}macro_f1": self.macro_f1}
        for c, acc in enumerate(self.per_class_accuracy):
            out[f"{prefix}acc_class{c}"] = float(acc)
        return out


def eval_rows(classifier: TextClassifier, batch_size: int | None) -> int:
    """Rows per inference batch: ``batch_size`` (default the classifier's) rounded up to the
    mesh's data-parallel multiple."""
    multiple = sharding_lib.batch_multiple(classifier.mesh)
    return -(-(batch_size or classifier.eval_batch_size) // multiple) * multiple


def _run_eval(classifier: TextClassifier, texts: Sequence[str], labels: np.ndarray,
              batch_size: int | None, show_progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``[N, K]`` and per-example cross-entropy ``[N]`` in input order."""
    mesh = classifier.mesh
    encoded = batching.encode_texts(classifier.tokenizer, texts, classifier.max_length)
    buckets = batching.normalise_buckets(classifier.length_buckets, classifier.max_length)
    rows = eval_rows(classifier, batch_size)
    program = ClassifierProgram(classifier.graphdef)
    logits = np.zeros((len(encoded), classifier.num_labels), np.float32)
    losses = np.zeros((len(encoded),), np.float64)
    seen = np.zeros((len(encoded),), np.int32)
    batches = list(batching.ordered_batches(encoded, rows, buckets))
    outputs = []  # dispatch every batch first, then fetch: the device never waits on the host
    for batch in tqdm(batches, desc="evaluate", disable=not show_progress, leave=False):
        real = batch.valid.astype(bool)
        batch_labels = np.where(real, labels[np.maximum(batch.index, 0)], 0).astype(np.int32)
        outputs.append(program.eval_step(classifier.params, put_rows(batch.tokens, mesh),
                                         put_rows(batch.mask, mesh), put_rows(batch_labels, mesh)))
    for batch, (out, loss) in zip(batches, sharding_lib.to_host(outputs)):
        real = batch.valid.astype(bool)
        idx = batch.index[real]
        logits[idx] = out[real]
        losses[idx] = loss[real]
        seen[idx] += 1
    if not (seen == 1).all():
        raise RuntimeError("internal error: an example was not evaluated exactly once")
    return logits, losses


def predict_logits(classifier: TextClassifier, texts: Sequence[str], *,
                   batch_size: int | None = None, show_progress: bool = False) -> np.ndarray:
    """Logits ``[N, num_labels]`` (float32) for ``texts``, in input order."""
    if not isinstance(texts, str) and len(texts) == 0:
        return np.zeros((0, classifier.num_labels), np.float32)
    return _run_eval(classifier, texts, np.zeros(len(texts), np.int32), batch_size,
                     show_progress)[0]


def metrics_from_logits(logits: np.ndarray, labels: np.ndarray,
                        losses: np.ndarray | None = None) -> EvalResult:
    """Mean cross-entropy, accuracy, macro-F1 and per-class accuracy from logits.

    Macro-F1 averages over the classes present in labels or predictions (as
    ``sklearn.metrics.f1_score(average='macro')``).
    """
    labels = np.asarray(labels)
    if losses is None:
        z = np.asarray(logits, np.float64)
        z = z - z.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        losses = -logp[np.arange(len(labels)), labels].astype(np.float64)
    preds = np.asarray(logits).argmax(-1)
    k = logits.shape[-1]
    f1s = []
    for c in np.union1d(labels, preds):
        tp = np.sum((preds == c) & (labels == c))
        fp = np.sum((preds == c) & (labels != c))
        fn = np.sum((preds != c) & (labels == c))
        f1s.append(2 * tp / (2 * tp + fp + fn))
    per_class = np.full((k,), np.nan)
    for c in range(k):
        sel = labels == c
        if sel.any():
            per_class[c] = np.mean(preds[sel] == c)
    return EvalResult(loss=float(np.mean(losses)), accuracy=float(np.mean(preds == labels)),
                      macro_f1=float(np.mean(f1s)), per_class_accuracy=per_class, n=len(labels))


def evaluate(classifier: TextClassifier, texts: Sequence[str], labels: Sequence[int] | np.ndarray,
             *, batch_size: int | None = None, show_progress: bool = False) -> EvalResult:
    """Golden-set metrics of ``classifier``: every example counted exactly once.

    ``loss`` is the mean (unsmoothed) cross-entropy, the "golden loss" of the reward.
    """
    y = batching.check_labelled_texts(texts, labels, classifier.num_labels, "evaluate")
    logits, losses = _run_eval(classifier, texts, y, batch_size, show_progress)
    return metrics_from_logits(logits, y, losses)
