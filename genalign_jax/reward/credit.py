"""Per-sample golden credit: how the golden loss of the classifier is shared out among samples.

Per-sample credit (``RewardConfig.credit``):

* ``broadcast``: one classifier per epoch; every sample gets the batch's golden term. Cheapest, but
  the golden term is the same for all samples, so within a batch only the per-sample distance terms
  (and PPO's KL penalty) tell good samples from bad ones; the golden signal only moves across epochs.
* ``groups``: the rollout batch is split into ``num_groups`` groups, each trains its own classifier,
  and a sample gets its group's golden term (a scalar golden loss, e.g. when too few samples were
  kept to split, is broadcast with a warning). Gives within-batch contrast on the main objective at
  ``num_groups``× the classifier cost, and each classifier sees only ``N/G`` samples, so the golden
  losses are noisier and biased upwards. A few groups (2–8) is the usual compromise.

In both modes the per-sample distance terms (``per_sample_inter``/``per_sample_intra``: each
sample's mean distance to other classes / its own class) are added when
``per_sample_distance=True``; otherwise the batch distance terms are broadcast too.
"""

from __future__ import annotations

import numpy as np


def group_assignments(num_samples: int, num_groups: int) -> np.ndarray:
    """Contiguous, near-equal split of ``num_samples`` into ``num_groups`` groups (``np.array_split``).

    The loop should train group ``g``'s classifier on exactly the samples with ``ids == g``.
    """
    if num_groups < 1 or num_samples < num_groups:
        raise ValueError(f"cannot split {num_samples} samples into {num_groups} groups")
    ids = np.empty(num_samples, np.int32)
    for g, idx in enumerate(np.array_split(np.arange(num_samples), num_groups)):
        ids[idx] = g
    return ids
