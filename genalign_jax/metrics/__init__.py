"""Embedding metrics: blocked pairwise distances and inter/intra-class statistics."""

from genalign_jax.metrics.distances import (
    METRICS,
    ClassDistanceMetrics,
    class_distance_metrics,
    default_snap_tol,
    pairwise_distances,
)

__all__ = [
    "METRICS",
    "ClassDistanceMetrics",
    "class_distance_metrics",
    "default_snap_tol",
    "pairwise_distances",
]
