"""GenAlign reward: golden loss and class-distance terms, combined with running normalisation.

Each epoch the loop hands :func:`compute_reward` the classifier's golden loss (cross-entropy on real
data) and the class-distance metrics of the synthetic batch (see
:mod:`genalign_jax.reward.class_metrics`). It returns a scalar reward for the epoch, a per-sample
reward vector for PPO, the updated normaliser state and a flat dict of every term for TensorBoard.

Signs and default weights (the original system leaves them to the config; ours are explicit)::

    reward = golden_loss_weight · ĝ + inter_weight · ê + intra_weight · â

* ``golden_loss_weight = -1.0``: the golden loss is a loss (lower is better), so it enters with a
  negative sign. It is the term the whole method is about (a classifier trained on synthetic data
  doing well on real data), hence the largest magnitude.
* ``inter_weight = +0.25``: larger distance between classes means label-faithful, separable
  samples.
* ``intra_weight = +0.25``: larger distance inside a class means more *diverse* samples. PPO on a
  generator tends to collapse onto a few high-reward texts; a positive intra weight penalises that
  (exact duplicates have intra distance 0). A negative weight instead rewards compact classes
  (Fisher-style separability) but accelerates mode collapse, so it is not the default.

The distance terms are regularisers of the golden objective, hence 1/4 of its weight (after
normalisation all terms are on the same z-score scale, so weights are relative importances).

Every input is checked on the host: NaN or inf raises ``ValueError`` naming the term.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from genalign_jax.reward.config import (GOLDEN, INTER, INTRA, PS_INTER, PS_INTRA,
                                        TERM_NAMES, RewardConfig)
from genalign_jax.reward.credit import group_assignments
from genalign_jax.reward.normalizer import RewardNormalizerState, RunningStats, _f64

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RewardTerms:
    """Raw inputs of one reward computation (host values; anything array-like).

    Attributes:
      golden_loss: scalar (``broadcast``), ``(num_groups,)`` per-group losses (``groups``), or
        ``(N,)`` per-sample estimated golden-loss changes ``-credit_i`` (``influence``: lower is
        better, like a loss, so ``golden_loss_weight`` keeps its sign).
      inter, intra: batch class-distance scalars.
      per_sample_inter, per_sample_intra: ``(N,)`` per-sample distance terms.
      group_ids: ``(N,)`` group of each sample (``groups``); default :func:`group_assignments`.
      per_sample_inter_valid, per_sample_intra_valid: ``(N,)`` bool; invalid entries (e.g. a
        sample alone in its class) get a neutral 0 for that term and stay out of the statistics.
      inter_valid, intra_valid: whether the batch scalar is defined (e.g. >= 2 classes present).
      sample_mask: ``(N,)`` bool; masked (padding) samples get reward 0, are not checked for NaN
        and are ignored by the statistics.
    """

    golden_loss: Any
    inter: Any
    intra: Any
    per_sample_inter: Any
    per_sample_intra: Any
    group_ids: Any = None
    per_sample_inter_valid: Any = None
    per_sample_intra_valid: Any = None
    inter_valid: bool = True
    intra_valid: bool = True
    sample_mask: Any = None

    @classmethod
    def from_metrics(
        cls, golden_loss: Any, metrics: Any, group_ids: Any = None, sample_mask: Any = None
    ) -> RewardTerms:
        """Terms from a golden loss and a :class:`~genalign_jax.reward.ClassDistanceMetrics`."""
        return cls(
            golden_loss=golden_loss,
            inter=np.asarray(metrics.inter),
            intra=np.asarray(metrics.intra),
            per_sample_inter=np.asarray(metrics.per_sample_inter),
            per_sample_intra=np.asarray(metrics.per_sample_intra),
            group_ids=group_ids,
            per_sample_inter_valid=np.asarray(metrics.per_sample_inter_valid),
            per_sample_intra_valid=np.asarray(metrics.per_sample_intra_valid),
            inter_valid=bool(metrics.inter_valid),
            intra_valid=bool(metrics.intra_valid),
            sample_mask=sample_mask,
        )


def _check_finite(name: str, values: np.ndarray, mask: np.ndarray | None = None) -> None:
    """Raise ``ValueError`` naming ``name`` if any (unmasked) value is NaN or inf."""
    v = values if mask is None else values[mask]
    bad = ~np.isfinite(v)
    if bad.any():
        idx = np.flatnonzero(bad)
        shown = np.array2string(v.reshape(-1)[idx[:5]], precision=4)
        where = "" if v.ndim == 0 else f" at {idx.size} position(s), first {idx[:5].tolist()}"
        raise ValueError(f"reward term {name!r} contains NaN/inf{where} (values: {shown})")


def _vector(name: str, x: Any, n: int, dtype: Any = np.float64) -> np.ndarray:
    arr = np.asarray(x, dtype=dtype)
    if arr.shape != (n,):
        raise ValueError(f"reward term {name!r} must have shape ({n},), got {np.shape(x)}")
    return arr


def _transform(stats: RunningStats, x: np.ndarray, config: RewardConfig) -> np.ndarray:
    z = stats.normalize(x, config.eps) if config.normalize else _f64(x)
    if config.clip is not None:
        z = np.clip(z, -config.clip, config.clip)
    return z


def compute_reward(
    terms: RewardTerms, config: RewardConfig, norm_state: RewardNormalizerState
) -> tuple[float, np.ndarray, RewardNormalizerState, dict[str, float]]:
    """Combine the terms into ``(scalar_reward, per_sample_rewards, new_norm_state, info)``.

    ``per_sample_rewards`` is float32 ``(N,)`` (0 for masked samples). ``info`` maps stable names to
    floats: ``reward/*``, ``raw/<term>``, ``norm/<term>``, ``weighted/<term>`` and
    ``stats/<term>/{mean,std,count}`` for every term, suitable for TensorBoard scalars.
    """
    ps_inter_raw = np.asarray(terms.per_sample_inter, np.float64)
    if ps_inter_raw.ndim != 1:
        raise ValueError(f"reward term {PS_INTER!r} must be 1-D (N,), got shape {ps_inter_raw.shape}")
    n = ps_inter_raw.shape[0]
    mask = np.ones(n, bool) if terms.sample_mask is None else _vector("sample_mask", terms.sample_mask, n, bool)
    ps_inter = _vector(PS_INTER, ps_inter_raw, n)
    ps_intra = _vector(PS_INTRA, terms.per_sample_intra, n)
    inter_ok = mask.copy() if terms.per_sample_inter_valid is None else mask & _vector(
        "per_sample_inter_valid", terms.per_sample_inter_valid, n, bool)
    intra_ok = mask.copy() if terms.per_sample_intra_valid is None else mask & _vector(
        "per_sample_intra_valid", terms.per_sample_intra_valid, n, bool)

    golden = _f64(terms.golden_loss)
    inter, intra = _f64(terms.inter), _f64(terms.intra)
    per_sample_golden = config.credit == "influence" and golden.ndim == 1
    for name, value, m in ((GOLDEN, golden, mask if per_sample_golden else None),
                           (INTER, inter, None), (INTRA, intra, None),
                           (PS_INTER, ps_inter, mask), (PS_INTRA, ps_intra, mask)):
        _check_finite(name, value, m)
    if inter.size != 1 or intra.size != 1:
        raise ValueError(f"'inter' and 'intra' must be scalars, got shapes {inter.shape}, {intra.shape}")
    inter, intra = inter.reshape(()), intra.reshape(())

    if config.credit == "groups" and golden.ndim == 0:
        # E.g. too few kept samples to split into groups: the loop trained one classifier.
        logger.warning("credit='groups' got a scalar golden_loss; broadcasting it to every sample")
    if per_sample_golden:
        if golden.shape != (n,):
            raise ValueError(f"credit='influence' needs golden_loss of shape ({n},) (or a "
                             f"scalar), got {golden.shape}")
        golden = np.where(mask, golden, 0.0)
        group_ids = np.arange(n)
    elif config.credit in ("broadcast", "influence") or golden.ndim == 0:
        if golden.size != 1:
            raise ValueError(f"credit={config.credit!r} needs a scalar golden_loss, got shape "
                             f"{golden.shape}")
        golden = golden.reshape(1)
        group_ids = np.zeros(n, np.int64)
    else:
        g = config.num_groups
        if golden.shape != (g,):
            raise ValueError(f"credit='groups' needs golden_loss of shape ({g},) (or a scalar), "
                             f"got {golden.shape}")
        group_ids = (group_assignments(n, g) if terms.group_ids is None
                     else _vector("group_ids", terms.group_ids, n, np.int64))
        if np.any((group_ids[mask] < 0) | (group_ids[mask] >= g)):
            raise ValueError(f"group_ids must lie in [0, {g})")
        group_ids = np.where(mask, group_ids, 0)

    state = norm_state
    if config.normalize:
        state = state.replace(
            golden_loss=state.golden_loss.update(golden[mask] if per_sample_golden else golden),
            inter=state.inter.update(inter if terms.inter_valid else []),
            intra=state.intra.update(intra if terms.intra_valid else []),
            per_sample_inter=state.per_sample_inter.update(ps_inter[inter_ok]),
            per_sample_intra=state.per_sample_intra.update(ps_intra[intra_ok]),
        )

    golden_scalar = golden[mask].mean() if per_sample_golden and mask.any() else golden.mean()
    z_golden_scalar = _transform(state.golden_loss, golden_scalar, config)
    z_golden = _transform(state.golden_loss, golden, config)
    z_inter = _transform(state.inter, inter, config) if terms.inter_valid else _f64(0.0)
    z_intra = _transform(state.intra, intra, config) if terms.intra_valid else _f64(0.0)
    z_ps_inter = np.where(inter_ok, _transform(state.per_sample_inter, ps_inter, config), 0.0)
    z_ps_intra = np.where(intra_ok, _transform(state.per_sample_intra, ps_intra, config), 0.0)

    w_g, w_e, w_a = config.golden_loss_weight, config.inter_weight, config.intra_weight
    scalar = float(w_g * z_golden_scalar + w_e * z_inter + w_a * z_intra)
    if config.per_sample_distance:
        dist = w_e * z_ps_inter + w_a * z_ps_intra
    else:
        dist = np.full(n, w_e * z_inter + w_a * z_intra)
    per_sample = np.where(mask, w_g * z_golden[group_ids] + dist, 0.0).astype(np.float32)

    valid_rewards = per_sample[mask]
    golden_valid = golden[mask] if per_sample_golden else golden
    info: dict[str, float] = {
        "reward/scalar": scalar,
        "reward/per_sample_mean": float(valid_rewards.mean()) if valid_rewards.size else 0.0,
        "reward/per_sample_std": float(valid_rewards.std()) if valid_rewards.size else 0.0,
        "reward/per_sample_min": float(valid_rewards.min()) if valid_rewards.size else 0.0,
        "reward/per_sample_max": float(valid_rewards.max()) if valid_rewards.size else 0.0,
        f"raw/{GOLDEN}": float(golden_scalar),
        f"raw/{GOLDEN}_group_min": float(golden_valid.min()) if golden_valid.size else 0.0,
        f"raw/{GOLDEN}_group_max": float(golden_valid.max()) if golden_valid.size else 0.0,
        f"raw/{INTER}": float(inter),
        f"raw/{INTRA}": float(intra),
        f"raw/{PS_INTER}_mean": float(ps_inter[inter_ok].mean()) if inter_ok.any() else 0.0,
        f"raw/{PS_INTRA}_mean": float(ps_intra[intra_ok].mean()) if intra_ok.any() else 0.0,
        f"norm/{GOLDEN}": float(z_golden_scalar),
        f"norm/{INTER}": float(z_inter),
        f"norm/{INTRA}": float(z_intra),
        f"norm/{PS_INTER}_mean": float(z_ps_inter[inter_ok].mean()) if inter_ok.any() else 0.0,
        f"norm/{PS_INTRA}_mean": float(z_ps_intra[intra_ok].mean()) if intra_ok.any() else 0.0,
        f"weighted/{GOLDEN}": float(w_g * z_golden_scalar),
        f"weighted/{INTER}": float(w_e * z_inter),
        f"weighted/{INTRA}": float(w_a * z_intra),
        "valid/inter": float(bool(terms.inter_valid)),
        "valid/intra": float(bool(terms.intra_valid)),
        "valid/per_sample_inter_frac": float(inter_ok.sum() / max(mask.sum(), 1)),
        "valid/per_sample_intra_frac": float(intra_ok.sum() / max(mask.sum(), 1)),
    }
    for name in TERM_NAMES:
        stats: RunningStats = getattr(state, name)
        info[f"stats/{name}/mean"] = float(stats.mean)
        info[f"stats/{name}/std"] = float(stats.std)
        info[f"stats/{name}/count"] = float(stats.count)
    return scalar, per_sample, state, info
