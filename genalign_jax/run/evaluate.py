"""Final evaluation: aligned vs base generator, judged by classifiers on the real test set.

For each seed, ``N`` synthetic examples are generated with the aligned policy (LoRA on) and with
the base generator (LoRA off) from the same prompts and sampling key (paired); a fresh classifier
is fine-tuned on each set and scored on the held-out *test* split (never seen by the loop).
Optionally a classifier trained on ``N`` real examples from the ICL pool gives a reference point.
Results are reported as mean ± std over seeds.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import numpy as np

from genalign_jax.run.components import Components
from genalign_jax.run.rollouts import sample_rollouts
from genalign_jax.run.scoring import train_and_score

log = logging.getLogger(__name__)

__all__ = ["evaluate_generators", "real_subset", "summarise", "format_table"]

_METRICS = ("accuracy", "loss", "macro_f1", "num_train")


def real_subset(components: Components, n: int, seed: int) -> tuple[list[str], list[int]]:
    """``n`` real ICL-pool examples, label-balanced round-robin like the synthetic sets."""
    pool = components.data.splits.icl_pool
    texts, labels = list(pool["text"][:]), np.asarray(pool["label"][:])
    num_labels = components.data.num_labels
    rng = np.random.default_rng(seed)
    per_label = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_labels)]
    rows = []
    for i in range(n):
        bucket = per_label[i % num_labels]
        if len(bucket) > i // num_labels:
            rows.append(bucket[i // num_labels])
    return [texts[r] for r in rows], labels[rows].tolist()


def evaluate_generators(components: Components, num_examples: int, seeds: int, *,
                        real_baseline: bool = True, show_progress: bool = False
                        ) -> dict[str, list[dict[str, float]]]:
    """Per-seed test metrics for ``aligned``, ``base`` (and ``real``) training sets.

    The generator in ``components`` must already hold the aligned adapters
    (:func:`genalign_jax.run.checkpoint.load_policy`).
    """
    seed0 = components.config.seed
    results: dict[str, list[dict[str, float]]] = {"aligned": [], "base": []}
    if real_baseline:
        results["real"] = []
    for seed in range(seeds):
        key = jax.random.fold_in(jax.random.key(seed0 + 7919), seed)
        for name, use_lora in (("aligned", True), ("base", False)):
            rollouts = sample_rollouts(components, num_examples, [seed0, 10_000 + seed],
                                       jax.random.fold_in(key, 0), use_lora=use_lora,
                                       show_progress=show_progress,
                                       progress_desc=f"generate ({name}, seed {seed})")
            parse = rollouts.parse
            score = train_and_score(components, parse.kept_texts, parse.kept_labels,
                                    jax.random.fold_in(key, 1), split="test")
            score.update(num_train=parse.num_kept, kept_fraction=parse.kept_fraction())
            results[name].append(score)
            log.info("seed %d %s: test accuracy %.4f (%d examples)", seed, name,
                     score["accuracy"], parse.num_kept)
        if real_baseline:
            texts, labels = real_subset(components, num_examples, seed)
            score = train_and_score(components, texts, labels, jax.random.fold_in(key, 1),
                                    split="test")
            score["num_train"] = len(texts)
            results["real"].append(score)
    return results


def summarise(results: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """Mean and (population) std of every metric over seeds, per training set."""
    out: dict[str, dict[str, Any]] = {}
    for name, runs in results.items():
        keys = sorted(set().union(*(r.keys() for r in runs)))
        out[name] = {k: {"mean": float(np.mean([r[k] for r in runs if k in r])),
                         "std": float(np.std([r[k] for r in runs if k in r]))} for k in keys}
    return out


def format_table(summary: dict[str, dict[str, Any]]) -> str:
    """A plain-text table of mean ± std for accuracy, loss, macro-F1 and training-set size."""
    lines = [f"{'train set':<10} " + " ".join(f"{m:>18}" for m in _METRICS)]
    for name, stats in summary.items():
        cells = []
        for m in _METRICS:
            s = stats.get(m)
            cells.append(f"{s['mean']:>9.4f} ± {s['std']:<6.4f}" if s else f"{'-':>18}")
        lines.append(f"{name:<10} " + " ".join(cells))
    return "\n".join(lines)
