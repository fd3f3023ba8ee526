"""Running reward normalisation.

Normalisation: each term keeps running statistics (Welford/Chan, float64 on the host). Statistics
are updated with the current values *first*, then the values are standardised ``(x − mean) / std``
(``std`` is taken as 1 until a term has 2 observations, so the first epoch's scalar terms are 0),
then optionally clipped to ``[-clip, clip]``. The golden statistics see one value per epoch
(broadcast) or one per group (groups); the per-sample statistics see every valid sample.
The state is a pytree of NumPy arrays (checkpoint it with orbax) and round-trips through plain
dicts (:meth:`RewardNormalizerState.to_dict` / :meth:`~RewardNormalizerState.from_dict`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import struct

from genalign_jax.reward.config import TERM_NAMES


def _f64(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


@struct.dataclass
class RunningStats:
    """Running count / mean / sum of squared deviations (Welford, merged per batch à la Chan).

    Leaves are float64 NumPy scalars, so the statistics stay exact over long runs; the object is a
    pytree and can be saved with orbax. ``variance`` is the population variance (``ddof=0``,
    like ``np.var``).
    """

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def zeros(cls) -> RunningStats:
        """Empty statistics."""
        return cls(count=_f64(0.0), mean=_f64(0.0), m2=_f64(0.0))

    def update(self, values: Any) -> RunningStats:
        """Return the statistics after observing every element of ``values`` (no-op if empty)."""
        x = _f64(values).reshape(-1)
        if x.size == 0:
            return self
        n_b, mean_b = float(x.size), float(x.mean())
        m2_b = float(np.sum((x - mean_b) ** 2))
        n_a, mean_a, m2_a = float(self.count), float(self.mean), float(self.m2)
        n = n_a + n_b
        delta = mean_b - mean_a
        mean = mean_a + delta * n_b / n
        m2 = m2_a + m2_b + delta * delta * n_a * n_b / n
        return RunningStats(count=_f64(n), mean=_f64(mean), m2=_f64(m2))

    @property
    def variance(self) -> float:
        """Population variance of everything observed (0 before 2 observations)."""
        return float(self.m2 / self.count) if float(self.count) >= 2 else 0.0

    @property
    def std(self) -> float:
        """Standard deviation used for normalising: 1.0 until 2 observations exist."""
        return math.sqrt(self.variance) if float(self.count) >= 2 else 1.0

    def normalize(self, values: Any, eps: float = 1e-8) -> np.ndarray:
        """Standardise ``values`` with the current mean and std: ``(x − mean) / (std + eps)``."""
        return (_f64(values) - float(self.mean)) / (self.std + eps)

    def to_dict(self) -> dict[str, np.ndarray]:
        """Plain dict of float64 arrays."""
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunningStats:
        """Inverse of :meth:`to_dict` (accepts floats, NumPy or jax arrays)."""
        return cls(count=_f64(d["count"]), mean=_f64(d["mean"]), m2=_f64(d["m2"]))


@struct.dataclass
class RewardNormalizerState:
    """One :class:`RunningStats` per reward term (names as in :data:`TERM_NAMES`)."""

    golden_loss: RunningStats
    inter: RunningStats
    intra: RunningStats
    per_sample_inter: RunningStats
    per_sample_intra: RunningStats

    @classmethod
    def init(cls) -> RewardNormalizerState:
        """Fresh state with no observations."""
        return cls(**{name: RunningStats.zeros() for name in TERM_NAMES})

    def to_dict(self) -> dict[str, dict[str, np.ndarray]]:
        """Nested plain dict, e.g. for ``ocp.args.StandardSave`` or JSON (after ``.tolist()``)."""
        return {name: getattr(self, name).to_dict() for name in TERM_NAMES}

    @classmethod
    def from_dict(cls, d: Mapping[str, Mapping[str, Any]]) -> RewardNormalizerState:
        """Restore from :meth:`to_dict` output (e.g. an orbax restore without a target)."""
        missing = [name for name in TERM_NAMES if name not in d]
        if missing:
            raise ValueError(f"reward normaliser state is missing terms {missing}")
        return cls(**{name: RunningStats.from_dict(d[name]) for name in TERM_NAMES})
