"""Debiasing the influence credit: error-balanced golden classes and label centring.

Used by :func:`genalign_jax.classifier.influence.influence_scores` (``golden_balance="error"``,
``center="label"``; that module's docstring says why each is needed).
"""

from __future__ import annotations

import numpy as np

from genalign_jax.classifier.model import TextClassifier, put_rows

__all__ = ["error_balanced_weights", "center_by_label", "weight_golden_rows"]


def error_balanced_weights(probs: np.ndarray, labels: np.ndarray, num_labels: int) -> np.ndarray:
    """Per-class golden weights ``[K]``: mean_c'(E_c') / E_c with E_c = Σ_{y_j=c} (1 − p_j[c]).

    ``probs`` ``[n, K]`` are the classifier's probabilities on the golden rows, ``labels`` their
    classes.  A class without golden rows (or without error) gets weight 0 (nothing to pull).
    """
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.int64)
    error = np.zeros(num_labels)
    np.add.at(error, labels, 1.0 - probs[np.arange(len(labels)), labels])
    present = error > 0
    weights = np.zeros(num_labels)
    if present.any():
        weights[present] = error[present].mean() / error[present]
    return weights


def center_by_label(credit: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``credit`` minus the mean credit of the examples with the same label."""
    credit, labels = np.asarray(credit, np.float64), np.asarray(labels)
    out = credit.copy()
    for label in np.unique(labels):
        rows = labels == label
        out[rows] -= credit[rows].mean()
    return out


def weight_golden_rows(classifier: TextClassifier, golden: list, logits: list,
                       golden_labels: np.ndarray, num_labels: int) -> list:
    """The golden batches ``(index, (tokens, mask, labels, row weights))`` with each real row
    (``index >= 0`` into ``golden_labels``) weighted by ``error_balanced_weights``, from the
    host ``logits`` ``[rows, K]`` of each batch (taken at the checkpoint being scored)."""
    rows = np.concatenate([index[index >= 0] for index, _ in golden])
    z = np.concatenate([np.asarray(lg, np.float64)[index >= 0]
                        for (index, _), lg in zip(golden, logits)])
    probs = np.exp(z - z.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    weights = error_balanced_weights(probs, golden_labels[rows], num_labels)
    out = []
    for index, batch in golden:
        row_weights = np.where(index >= 0, weights[golden_labels[np.maximum(index, 0)]], 0.0)
        out.append((index, batch[:3] + (put_rows(row_weights.astype(np.float32),
                                                 classifier.mesh),)))
    return out
