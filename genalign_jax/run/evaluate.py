"""Final evaluation: aligned vs base generator, judged by classifiers on real test data.

Protocol (:func:`evaluate_generators`), per seed ``s``:

* the aligned policy (LoRA on) and the base generator (LoRA off) each write ``N`` examples from the
  *same* prompts and the same sampling key (a paired design: the arms differ only in the adapters);
* a fresh classifier is fine-tuned on each arm's kept examples (same fine-tuning key) and scored
  on the held-out *test* split (never seen by the loop) or on an external ``test_set``;
* optionally (``real_baseline``) a classifier trained on ``N`` real ICL-pool examples.

Per arm: accuracy, loss, macro-F1 (mean ± std over seeds), kept fraction, distinct-2 and label
fidelity (the fraction of kept examples whose label a judge classifier trained on the real golden
split agrees with).  ``aligned − base`` is reported as a paired difference with a 95% bootstrap
confidence interval that resamples seeds and test examples (the same test rows for both arms).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import numpy as np

from genalign_jax import classifier as clf
from genalign_jax.run.components import Components
from genalign_jax.run.rollouts import distinct_n, sample_rollouts
from genalign_jax.run.scoring import fine_tune

log = logging.getLogger(__name__)

__all__ = ["EvalReport", "evaluate_generators", "paired_bootstrap", "real_subset", "summarise",
           "format_table", "format_markdown"]

_TABLE = ("accuracy", "loss", "macro_f1", "kept_fraction", "label_fidelity", "distinct_2",
          "num_train")


@dataclasses.dataclass
class EvalReport:
    """Per-arm per-seed metrics, per-example test correctness, and the paired difference."""

    per_seed: dict[str, list[dict[str, float]]]
    correct: dict[str, list[np.ndarray]]
    paired: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, Any]]:
        return summarise(self.per_seed)

    def to_json(self) -> dict[str, Any]:
        return {"summary": self.summary(), "per_seed": self.per_seed, "paired": self.paired}


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


def _score(trained: clf.TextClassifier, texts: list[str], labels: np.ndarray,
           batch_size: int) -> tuple[dict[str, float], np.ndarray]:
    logits = clf.predict_logits(trained, texts, batch_size=batch_size)
    result = clf.metrics_from_logits(logits, labels)
    return ({"accuracy": result.accuracy, "loss": result.loss, "macro_f1": result.macro_f1},
            logits.argmax(-1) == labels)


def evaluate_generators(components: Components, num_examples: int, seeds: int, *,
                        real_baseline: bool = True, test_set: tuple[list[str], np.ndarray] | None
                        = None, show_progress: bool = False, bootstrap: int = 2000) -> EvalReport:
    """Runs the paired protocol of the module docstring.

    The generator in ``components`` must already hold the aligned adapters
    (:func:`genalign_jax.run.checkpoint.load_policy`).
    """
    seed0 = components.config.seed
    batch = components.config.classifier.eval_batch_size
    test_texts, test_labels = test_set if test_set is not None else components.data.eval_set("test")
    golden_texts, golden_labels = components.data.eval_set("golden")
    judge, _ = fine_tune(components, golden_texts, golden_labels.tolist(),
                         jax.random.key(seed0 + 104_729))
    arms = ["aligned", "base"] + (["real"] if real_baseline else [])
    report = EvalReport({a: [] for a in arms}, {a: [] for a in arms})
    for seed in range(seeds):
        key = jax.random.fold_in(jax.random.key(seed0 + 7919), seed)
        for name in arms:
            if name == "real":
                texts, labels = real_subset(components, num_examples, seed)
                extra = {"kept_fraction": 1.0}
            else:
                rollouts = sample_rollouts(components, num_examples, [seed0, 10_000 + seed],
                                           jax.random.fold_in(key, 0), use_lora=name == "aligned",
                                           show_progress=show_progress,
                                           progress_desc=f"generate ({name}, seed {seed})")
                texts, labels = rollouts.parse.kept_texts, list(rollouts.parse.kept_labels)
                extra = {"kept_fraction": rollouts.parse.kept_fraction()}
            trained, _ = fine_tune(components, texts, labels, jax.random.fold_in(key, 1))
            score, correct = _score(trained, test_texts, test_labels, batch)
            fidelity = float("nan")
            if texts:
                judged = clf.predict_logits(judge, texts, batch_size=batch).argmax(-1)
                fidelity = float(np.mean(judged == np.asarray(labels)))
            score.update(extra, num_train=len(texts), label_fidelity=fidelity,
                         distinct_2=distinct_n(texts, 2))
            report.per_seed[name].append(score)
            report.correct[name].append(correct)
            log.info("seed %d %s: test accuracy %.4f (%d examples, fidelity %.3f)", seed, name,
                     score["accuracy"], len(texts), fidelity)
    report.paired["aligned_minus_base/accuracy"] = paired_bootstrap(
        report.correct["aligned"], report.correct["base"], samples=bootstrap, seed=seed0)
    if real_baseline:
        report.paired["aligned_minus_real/accuracy"] = paired_bootstrap(
            report.correct["aligned"], report.correct["real"], samples=bootstrap, seed=seed0)
    return report


def paired_bootstrap(a: list[np.ndarray], b: list[np.ndarray], *, samples: int = 2000,
                     seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Mean accuracy difference ``a − b`` with a percentile bootstrap CI.

    ``a[s]``/``b[s]`` are per-example correctness vectors of seed ``s`` on the same test rows.
    Each resample draws seeds with replacement and test rows with replacement (shared by both
    arms, which keeps the pairing), so the interval covers both sources of noise.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)   # [S, T]
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"paired_bootstrap needs equal [seeds, examples] arrays, got {a.shape}, "
                         f"{b.shape}")
    diff = a - b
    rng = np.random.default_rng(seed)
    num_seeds, num_rows = diff.shape
    stats = np.empty(samples)
    for i in range(samples):
        seeds = rng.integers(0, num_seeds, num_seeds)
        rows = rng.integers(0, num_rows, num_rows)
        stats[i] = diff[np.ix_(seeds, rows)].mean()
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return {"mean": float(diff.mean()), "ci_low": float(lo), "ci_high": float(hi),
            "level": level, "seeds": num_seeds, "test_examples": num_rows,
            "fraction_positive": float(np.mean(stats > 0))}


def summarise(results: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """Mean and (population) std of every metric over seeds, per training set (NaNs skipped)."""
    out: dict[str, dict[str, Any]] = {}
    for name, runs in results.items():
        keys = sorted(set().union(*(r.keys() for r in runs)))
        out[name] = {}
        for k in keys:
            values = np.asarray([r[k] for r in runs if k in r], np.float64)
            values = values[np.isfinite(values)]
            out[name][k] = ({"mean": float(values.mean()), "std": float(values.std())}
                            if values.size else {"mean": float("nan"), "std": float("nan")})
    return out


def format_table(summary: dict[str, dict[str, Any]], metrics: tuple[str, ...] = _TABLE) -> str:
    """A plain-text table of mean ± std per arm."""
    lines = [f"{'train set':<10} " + " ".join(f"{m:>18}" for m in metrics)]
    for name, stats in summary.items():
        cells = []
        for m in metrics:
            s = stats.get(m)
            cells.append(f"{s['mean']:>9.4f} ± {s['std']:<6.4f}" if s else f"{'-':>18}")
        lines.append(f"{name:<10} " + " ".join(cells))
    return "\n".join(lines)


def format_markdown(report: EvalReport, metrics: tuple[str, ...] = _TABLE) -> str:
    """The summary and the paired differences as Markdown tables."""
    summary = report.summary()
    lines = ["| arm | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, stats in summary.items():
        cells = [f"{stats[m]['mean']:.4f} ± {stats[m]['std']:.4f}" if m in stats else "-"
                 for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if report.paired:
        lines += ["", "| paired difference | mean | 95% CI | P(>0) |", "|---|---|---|---|"]
        for name, d in report.paired.items():
            lines.append(f"| {name} | {d['mean']:+.4f} | [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"
                         f" | {d['fraction_positive']:.3f} |")
    return "\n".join(lines) + "\n"
