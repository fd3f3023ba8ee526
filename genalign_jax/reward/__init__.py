"""The reward stage: embedding distances, per-sample golden credit, normalisation, combination.

Data path inside the stage (the loop in :mod:`genalign_jax.run` calls them in this order):

* :mod:`.distances` — blocked, jitted pairwise distances (euclidean, sqeuclidean, cosine);
* :mod:`.class_metrics` — inter/intra-class and per-sample distance terms in one ``N x C`` pass;
* :mod:`.credit` — how the classifier's golden loss is credited to samples (broadcast, groups);
* :mod:`.normalizer` — running (Welford) statistics per term, checkpointable;
* :mod:`.combine` — weights and signs: golden loss and distance terms into per-sample rewards;
* :mod:`.config` — :class:`RewardConfig`, the stage's settings.

The package imports nothing of the other stages: it works on numbers (losses, embeddings, labels).
"""

from genalign_jax.reward.class_metrics import ClassDistanceMetrics, class_distance_metrics
from genalign_jax.reward.combine import RewardTerms, compute_reward
from genalign_jax.reward.config import (CREDIT_MODES, GOLDEN, INTER, INTRA, PS_INTER, PS_INTRA,
                                        TERM_NAMES, RewardConfig)
from genalign_jax.reward.credit import group_assignments
from genalign_jax.reward.distances import METRICS, default_snap_tol, pairwise_distances
from genalign_jax.reward.normalizer import RewardNormalizerState, RunningStats

__all__ = [
    "CREDIT_MODES", "GOLDEN", "INTER", "INTRA", "METRICS", "PS_INTER", "PS_INTRA", "TERM_NAMES",
    "ClassDistanceMetrics", "RewardConfig", "RewardNormalizerState", "RewardTerms", "RunningStats",
    "class_distance_metrics", "compute_reward", "default_snap_tol", "group_assignments",
    "pairwise_distances",
]
