"""Which influence-credit variant finds mislabelled training examples? (real MiniLM, real SST-2)

    python -m benchmarks.influence_variants --grid full         # seed 0, every raw variant (CPU)
    python -m benchmarks.influence_variants --seeds 0,1,2       # golden balance x subset, 3 draws

Protocol (issue 12, the same as the independent PyTorch reference):
* all-MiniLM-L6-v2 (``genalign_jax.data.assets.minilm_model_dir()``), 2 labels, fresh head.
* 160 SST-2 training sentences drawn with ``seed`` from ``train.tsv``; 25% of them (40) get the
  wrong label; golden = 200 sentences of ``validation.tsv`` drawn with ``seed``.
* AdamW lr 1e-4 (HF defaults otherwise: warmup 10%, linear decay, weight decay 0.01, clip 1.0,
  dropout on), 10 epochs of 10 steps (batch 16), 3 checkpoints (steps 33, 67, 100).
* Metric: ROC-AUC of ``-credit`` for "is flipped" (flipped examples should get low credit).
Variants (``--grid full``): parameter subset (head; head+last_k for k = 0 (head + pooler), 1, 2;
all) x preconditioner (adam, sgd) x normalisation (none, unit, cosine) x learning-rate weighting
(segment, step), all without golden balance.  ``--grid balance`` (default): subset (head,
head+last_0, head+last_1, all) x golden balance (none, error), Adam, no normalisation.  Every
variant is reported raw and label-centred (``center="label"`` is a post-processing of the raw
credit).  Also times influence (default variant) against the fine-tune it accompanies.
Prints a table and writes ``benchmarks/results/influence_variants_<backend>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import time
from pathlib import Path

import jax
import numpy as np
from sklearn.metrics import roc_auc_score

from benchmarks.common import print_table, write_json
from genalign_jax.classifier import (ClassifierConfig, TextClassifier, TrainStats, evaluate,
                                     load_pretrained_classifier, train_classifier)
from genalign_jax.classifier.influence import DEFAULTS, center_by_label, influence_scores
from genalign_jax.data.assets import minilm_model_dir
from genalign_jax.data.loaders import load_labelled

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, FLIP_FRACTION, N_GOLDEN, CHECKPOINTS = 160, 0.25, 200, 3
SUBSETS = [("head", 0), ("head+last_k", 0), ("head+last_k", 1), ("head+last_k", 2), ("all", 0)]
PRECONDITIONERS = ("adam", "sgd")
NORMALIZATIONS = ("none", "unit", "cosine")
GRIDS = {
    "full": [dict(params=p, last_k=k, preconditioner=pre, normalize=norm, golden_balance="none")
             for (p, k), pre, norm in itertools.product(SUBSETS, PRECONDITIONERS, NORMALIZATIONS)],
    "balance": [dict(params=p, last_k=k, preconditioner="adam", normalize="none",
                     golden_balance=bal)
                for (p, k), bal in itertools.product(
                    [("head", 0), ("head+last_k", 0), ("head+last_k", 1), ("all", 0)],
                    ("none", "error"))],
}


def default_data_dir() -> Path:
    """``$GENALIGN_DATA_DIR/sst2`` or ``<repo>/../shared/data/sst2``."""
    root = os.environ.get("GENALIGN_DATA_DIR")
    return (Path(root) if root else REPO.parent / "shared" / "data") / "sst2"


def protocol_config(seed: int = 0) -> ClassifierConfig:
    """The fine-tuning run of the protocol: AdamW 1e-4, 10 epochs x 10 steps of 16."""
    return ClassifierConfig(model="all-MiniLM-L6-v2", num_labels=2, max_length=128,
                            learning_rate=1e-4, epochs=10, batch_size=16, seed=seed)


def protocol_data(data_dir: str | os.PathLike, seed: int = 0):
    """``(train_texts, noisy_labels, is_flipped, golden_texts, golden_labels)`` of the protocol."""
    train = load_labelled("sst2", data_dir, "train")
    valid = load_labelled("sst2", data_dir, "validation")
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(train), N_TRAIN, replace=False)
    texts = [train[int(i)]["text"] for i in rows]
    labels = np.asarray([train[int(i)]["label"] for i in rows], np.int64)
    flipped = np.zeros(N_TRAIN, bool)
    flipped[rng.choice(N_TRAIN, int(FLIP_FRACTION * N_TRAIN), replace=False)] = True
    noisy = np.where(flipped, 1 - labels, labels)
    golden_rows = rng.choice(len(valid), N_GOLDEN, replace=False)
    golden_texts = [valid[int(i)]["text"] for i in golden_rows]
    golden_labels = np.asarray([valid[int(i)]["label"] for i in golden_rows], np.int64)
    return texts, noisy, flipped, golden_texts, golden_labels


def load_minilm() -> TextClassifier:
    return load_pretrained_classifier(minilm_model_dir(), num_labels=2, mesh=None, seed=0)


def fine_tune(classifier: TextClassifier, data, seed: int = 0
              ) -> tuple[TextClassifier, TrainStats]:
    texts, noisy = data[0], data[1]
    return train_classifier(classifier, texts, noisy, protocol_config(seed), rng=seed,
                            keep_checkpoints=CHECKPOINTS)


def flip_auc(credit: np.ndarray, flipped: np.ndarray) -> float:
    """ROC-AUC of ``-credit`` for "is flipped" (1.0: every flipped example ranks lowest)."""
    return float(roc_auc_score(flipped.astype(int), -np.asarray(credit)))


def _per_checkpoint(trained, stats, data, **variant) -> list[np.ndarray]:
    """Credit of each checkpoint alone (weighted by its ``lr_sum``)."""
    texts, noisy, _, golden_texts, golden_labels = data
    return [influence_scores(trained, [ck], texts, noisy, golden_texts, golden_labels,
                             lr_weighting="segment", center="none", **variant)
            for ck in stats.checkpoints]


def run_seed(classifier: TextClassifier, data_dir: Path, seed: int, grid: str) -> dict:
    data = protocol_data(data_dir, seed)
    flipped = data[2]
    start = time.perf_counter()
    trained, stats = fine_tune(classifier, data, seed)
    cold_train = time.perf_counter() - start
    rows = []
    for variant in GRIDS[grid]:
        start = time.perf_counter()
        parts = _per_checkpoint(trained, stats, data, **variant)
        seconds = time.perf_counter() - start
        step_weights = [ck.learning_rate / ck.lr_sum for ck in stats.checkpoints]
        subset, k = variant["params"], variant["last_k"]
        name = subset if subset != "head+last_k" else f"head+last_{k}"
        segment = sum(parts)
        rows.append(dict(params=name, preconditioner=variant["preconditioner"],
                         normalize=variant["normalize"], golden_balance=variant["golden_balance"],
                         auc_segment=flip_auc(segment, flipped),
                         auc_segment_centered=flip_auc(center_by_label(segment, data[1]),
                                                       flipped),
                         auc_step=flip_auc(sum(w * p for w, p in zip(step_weights, parts)),
                                           flipped),
                         auc_per_checkpoint=[flip_auc(p, flipped) for p in parts],
                         seconds_cold=seconds))
        r = rows[-1]
        print(f"seed {seed} {name:12s} {r['preconditioner']:4s} {r['normalize']:6s} "
              f"balance {r['golden_balance']:5s} AUC segment {r['auc_segment']:.3f} centred "
              f"{r['auc_segment_centered']:.3f} step {r['auc_step']:.3f} ({seconds:.1f} s)",
              flush=True)
    # Cost: a warm fine-tune (another rng) vs a warm influence call of the default variant.
    start = time.perf_counter()
    trained2, stats2 = fine_tune(classifier, data, seed + 1000)
    warm_train = time.perf_counter() - start
    texts, noisy, _, golden_texts, golden_labels = data
    start = time.perf_counter()
    default = influence_scores(trained2, stats2.checkpoints, texts, noisy, golden_texts,
                               golden_labels)
    warm_influence = time.perf_counter() - start
    golden = evaluate(trained, golden_texts, golden_labels)
    return dict(seed=seed, variants=rows, golden_accuracy=golden.accuracy,
                golden_loss=golden.loss, train_seconds_cold=cold_train,
                train_seconds_warm=warm_train, influence_seconds_warm=warm_influence,
                influence_over_train=warm_influence / warm_train,
                default_auc_retrained=flip_auc(default, flipped))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default=str(default_data_dir()))
    p.add_argument("--seeds", default="0", help="comma-separated protocol seeds")
    p.add_argument("--grid", default="balance", choices=sorted(GRIDS), help="variants to run")
    p.add_argument("--out", default=None, help="results name (default influence_variants_<backend>)")
    args = p.parse_args()
    classifier = load_minilm()
    runs = [run_seed(classifier, Path(args.data_dir), int(s), args.grid)
            for s in args.seeds.split(",")]
    table = []
    for i, row in enumerate(runs[0]["variants"]):
        out = {k: row[k] for k in ("params", "preconditioner", "normalize", "golden_balance")}
        for run in runs:
            r = run["variants"][i]
            out[f"seed{run['seed']} raw"] = r["auc_segment"]
            out[f"seed{run['seed']} centred"] = r["auc_segment_centered"]
        if len(runs) > 1:
            for kind, key in (("raw", "auc_segment"), ("centred", "auc_segment_centered")):
                out[f"mean {kind}"] = float(np.mean([run["variants"][i][key] for run in runs]))
        table.append(out)
    print_table(table, list(table[0]))
    for run in runs:
        print(f"seed {run['seed']}: golden accuracy {run['golden_accuracy']:.3f}; fine-tune "
              f"{run['train_seconds_warm']:.1f} s warm, influence (default) "
              f"{run['influence_seconds_warm']:.1f} s = {run['influence_over_train']:.2f}x; "
              f"default AUC on a retrained model {run['default_auc_retrained']:.3f}")
    name = args.out or f"influence_variants_{args.grid}_{jax.default_backend()}"
    path = write_json(name, {"protocol": {
        "model": "all-MiniLM-L6-v2", "n_train": N_TRAIN, "flip_fraction": FLIP_FRACTION,
        "n_golden": N_GOLDEN, "checkpoints": CHECKPOINTS,
        "config": dataclasses.asdict(protocol_config(0)),
        "metric": "ROC-AUC of -credit for is_flipped", "grid": args.grid}, "default": DEFAULTS,
        "runs": runs,
        "table": table})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
