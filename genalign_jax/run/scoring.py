"""Stage 2 of an epoch: kept examples → classifier → golden loss + embedding distances → rewards.

``score_rollouts(components, rollouts, norm_state, key)`` fine-tunes a fresh classifier on the
kept examples (one per group with ``reward.credit="groups"``) and scores it on the golden split;
embeds the kept examples with the *pretrained* encoder (a fixed space, so distance terms are
comparable across epochs); combines golden loss and distances into per-sample rewards; and gives
rejected completions ``reward.invalid_reward``.  The distance program sees one static shape (the
rollout count): kept rows are padded and masked.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import jax
import numpy as np

from genalign_jax import classifier as clf
from genalign_jax import reward as reward_lib
from genalign_jax import sharding as sharding_lib
from genalign_jax.classifier.influence import influence_scores
from genalign_jax.run.components import Components
from genalign_jax.run.rollouts import Rollouts

log = logging.getLogger(__name__)

__all__ = ["Scores", "fine_tune", "train_and_score", "score_rollouts"]


@dataclasses.dataclass(frozen=True)
class Scores:
    """Per-completion sequence rewards, the logged terms and the updated normaliser.

    ``credit``: the kept examples' influence credit (``reward.credit="influence"``), else None.
    """

    rewards: np.ndarray
    metrics: dict[str, float]
    norm_state: reward_lib.RewardNormalizerState
    credit: np.ndarray | None = None


def fine_tune(components: Components, texts: list[str], labels: list[int], key: jax.Array, *,
              keep_checkpoints: int = 0) -> tuple[clf.TextClassifier, clf.TrainStats | None]:
    """A fresh classifier (from the pretrained encoder) fine-tuned on ``texts``; the untrained
    one, with a warning, when there is nothing to train on."""
    if len(texts) == 0:
        log.warning("no usable synthetic examples: scoring an untrained classifier")
        return components.classifier, None
    return clf.train_classifier(components.classifier, texts, labels,
                                components.classifier_config, key,
                                keep_checkpoints=keep_checkpoints)


def train_and_score(components: Components, texts: list[str], labels: list[int], key: jax.Array,
                    split: str = "golden") -> dict[str, float]:
    """Fine-tunes a fresh classifier on ``texts`` and scores it on ``split`` (golden or test)."""
    return _fit_and_score(components, texts, labels, key, split)[2]


def _fit_and_score(components: Components, texts: list[str], labels: list[int], key: jax.Array,
                   split: str = "golden", keep_checkpoints: int = 0
                   ) -> tuple[clf.TextClassifier, clf.TrainStats | None, dict[str, float]]:
    eval_texts, eval_labels = components.data.eval_set(split)
    trained, stats = fine_tune(components, texts, labels, key, keep_checkpoints=keep_checkpoints)
    result = clf.evaluate(trained, eval_texts, eval_labels,
                          batch_size=components.config.classifier.eval_batch_size)
    out = {"loss": result.loss, "accuracy": result.accuracy, "macro_f1": result.macro_f1}
    out.update({f"acc_class{i}": float(a) for i, a in enumerate(result.per_class_accuracy)})
    if stats is not None:
        out["train_loss"] = stats.final_loss
        out["train_examples_per_s"] = stats.examples_per_second
    return trained, stats, out


def _influence_terms(components: Components, texts: list[str], labels: np.ndarray,
                     key: jax.Array) -> tuple[Any, np.ndarray | None, dict[str, float]]:
    """One classifier with T kept checkpoints; each kept example's influence on the golden loss."""
    rc, seed = components.config.reward, components.config.seed
    trained, stats, score = _fit_and_score(components, texts, labels.tolist(), key,
                                           keep_checkpoints=rc.influence_checkpoints)
    metrics = {f"golden/{k}": v for k, v in score.items()}
    if stats is None:
        return score["loss"], None, metrics
    start = time.perf_counter()
    golden_texts, golden_labels = components.data.eval_set("golden")
    credit = influence_scores(
        trained, stats.checkpoints, texts, labels, golden_texts, golden_labels,
        params=rc.influence_params, last_k=rc.influence_last_k,
        preconditioner=rc.influence_preconditioner, normalize=rc.influence_normalize,
        golden_balance=rc.influence_golden_balance, center=rc.influence_center,
        golden_size=rc.influence_golden_size or None, seed=seed)
    metrics.update({"time/credit_s": time.perf_counter() - start,
                    "credit/mean": float(credit.mean()), "credit/std": float(credit.std()),
                    "credit/fraction_positive": float(np.mean(credit > 0))})
    return -credit, credit, metrics


def _golden_terms(components: Components, texts: list[str], labels: np.ndarray,
                  key: jax.Array) -> tuple[Any, np.ndarray | None, dict[str, float]]:
    """The golden term per the credit mode: ``(golden_loss, group ids or credit or None, metrics)``
    (a scalar loss for broadcast, per-group losses for groups, ``-credit`` for influence)."""
    rc = components.config.reward
    if rc.credit == "influence":
        return _influence_terms(components, texts, labels, key)
    if rc.credit == "groups" and len(texts) >= rc.num_groups:
        groups = reward_lib.group_assignments(len(texts), rc.num_groups)
        losses, accs = [], []
        for g in range(rc.num_groups):
            rows = np.flatnonzero(groups == g)
            score = train_and_score(components, [texts[i] for i in rows], labels[rows].tolist(),
                                    jax.random.fold_in(key, g))
            losses.append(score["loss"])
            accs.append(score["accuracy"])
        return np.asarray(losses), groups, {"golden/loss": float(np.mean(losses)),
                                            "golden/accuracy": float(np.mean(accs))}
    score = train_and_score(components, texts, labels.tolist(), key)
    return score["loss"], None, {f"golden/{k}": v for k, v in score.items()}


def _pad(values: np.ndarray, size: int) -> np.ndarray:
    padded = np.zeros((size, *values.shape[1:]), values.dtype)
    padded[:len(values)] = values
    return padded


def score_rollouts(components: Components, rollouts: Rollouts,
                   norm_state: reward_lib.RewardNormalizerState, key: jax.Array) -> Scores:
    """Per-completion rewards and every golden/distance/reward term (see the module docstring)."""
    rc, parse = components.config.reward, rollouts.parse
    texts, labels = parse.kept_texts, np.asarray(parse.kept_labels, np.int64)
    start = time.perf_counter()
    golden_loss, extra, metrics = _golden_terms(components, texts, labels, key)
    metrics["time/classifier_s"] = time.perf_counter() - start - metrics.get("time/credit_s", 0.0)
    credit = extra if rc.credit == "influence" else None
    groups = extra if rc.credit == "groups" else None
    if credit is not None:
        golden_loss = _pad(np.asarray(golden_loss, np.float64), len(rollouts.completions))
    rewards = np.full(len(rollouts.completions), rc.invalid_reward, np.float32)
    if len(texts) >= 2:
        n, size = len(texts), len(rollouts.completions)
        start = time.perf_counter()
        emb = clf.embed(components.classifier, texts,
                        pooling=components.config.classifier.embedding_pooling)
        metrics["time/embed_s"] = time.perf_counter() - start
        start = time.perf_counter()
        valid = np.arange(size) < n
        dist = reward_lib.class_distance_metrics(
            _pad(emb.astype(np.float32), size), _pad(labels, size), components.data.num_labels,
            metric=rc.distance_metric, mask=valid)
        terms = reward_lib.RewardTerms.from_metrics(
            golden_loss, dist, group_ids=None if groups is None else _pad(groups, size),
            sample_mask=valid)
        scalar, per_sample, norm_state, info = reward_lib.compute_reward(terms, rc, norm_state)
        metrics["time/distances_s"] = time.perf_counter() - start
        if credit is not None and n >= 3:
            for name, values in (("per_sample_inter", dist.per_sample_inter),
                                 ("per_sample_intra", dist.per_sample_intra)):
                v = sharding_lib.to_host(values)[:n]
                if np.std(v) > 0 and np.std(credit) > 0:
                    metrics[f"credit/corr_{name}"] = float(np.corrcoef(credit, v)[0, 1])
        rewards[np.asarray(parse.kept_indices)] = per_sample[:n]
        metrics.update(info)
        metrics["reward/epoch_scalar"] = float(scalar)
    metrics["reward/sequence_mean"] = float(rewards.mean())
    return Scores(rewards, metrics, norm_state, credit)
