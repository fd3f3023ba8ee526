"""Reward: weights and signs, credit modes, Welford statistics vs NumPy, NaN handling, state I/O."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from genalign_jax.reward import (
    TERM_NAMES,
    RewardConfig,
    RewardNormalizerState,
    RewardTerms,
    RunningStats,
    compute_reward,
    group_assignments,
)

RAW = RewardConfig(normalize=False, clip=None)


def _terms(golden=0.5, n=6, seed=0, **kw) -> RewardTerms:
    rng = np.random.default_rng(seed)
    base = dict(
        golden_loss=golden, inter=0.8, intra=0.3,
        per_sample_inter=rng.uniform(0.5, 1.0, n), per_sample_intra=rng.uniform(0.1, 0.5, n),
    )
    base.update(kw)
    return RewardTerms(**base)


def test_default_signs_are_documented_values():
    cfg = RewardConfig()
    assert (cfg.golden_loss_weight, cfg.inter_weight, cfg.intra_weight) == (-1.0, 0.25, 0.25)
    assert cfg.credit == "influence" and cfg.normalize and cfg.clip == 5.0


def test_raw_weights_and_signs_broadcast():
    cfg = RewardConfig(golden_loss_weight=-2.0, inter_weight=0.5, intra_weight=-0.1, normalize=False, clip=None)
    t = _terms(golden=0.7)
    scalar, per_sample, _, info = compute_reward(t, cfg, RewardNormalizerState.init())
    assert scalar == pytest.approx(-2.0 * 0.7 + 0.5 * 0.8 - 0.1 * 0.3, abs=1e-12)
    expected = -2.0 * 0.7 + 0.5 * t.per_sample_inter - 0.1 * t.per_sample_intra
    np.testing.assert_allclose(per_sample, expected, rtol=1e-6)
    assert per_sample.dtype == np.float32 and per_sample.shape == (6,)
    assert info["weighted/golden_loss"] == pytest.approx(-1.4)
    assert info["raw/inter"] == pytest.approx(0.8) and info["norm/intra"] == pytest.approx(0.3)
    # Lower golden loss -> higher reward under the default (negative) golden weight.
    hi = compute_reward(_terms(golden=0.9), RAW, RewardNormalizerState.init())[0]
    lo = compute_reward(_terms(golden=0.2), RAW, RewardNormalizerState.init())[0]
    assert lo - hi == pytest.approx(0.7)


def test_batch_distance_terms_broadcast_when_per_sample_distance_off():
    cfg = RewardConfig(normalize=False, clip=None, per_sample_distance=False)
    _, per_sample, _, _ = compute_reward(_terms(golden=0.4), cfg, RewardNormalizerState.init())
    np.testing.assert_allclose(per_sample, np.full(6, -0.4 + 0.25 * 0.8 + 0.25 * 0.3), rtol=1e-6)


def test_groups_credit_gives_each_sample_its_group_golden_term():
    cfg = RewardConfig(credit="groups", num_groups=3, normalize=False, clip=None, inter_weight=0, intra_weight=0)
    golden = np.array([0.9, 0.1, 0.5])
    scalar, per_sample, _, info = compute_reward(_terms(golden=golden, n=7), cfg, RewardNormalizerState.init())
    np.testing.assert_array_equal(group_assignments(7, 3), [0, 0, 0, 1, 1, 2, 2])
    np.testing.assert_allclose(per_sample, -golden[[0, 0, 0, 1, 1, 2, 2]], rtol=1e-6)
    assert scalar == pytest.approx(-golden.mean())
    assert info["raw/golden_loss_group_min"] == 0.1 and info["raw/golden_loss_group_max"] == 0.9
    ids = np.array([2, 2, 1, 0, 0, 1, 2])
    _, ps2, _, _ = compute_reward(_terms(golden=golden, n=7, group_ids=ids), cfg, RewardNormalizerState.init())
    np.testing.assert_allclose(ps2, -golden[ids], rtol=1e-6)
    with pytest.raises(ValueError, match=r"golden_loss of shape \(3,\)"):
        compute_reward(_terms(golden=[0.3, 0.4], n=7), cfg, RewardNormalizerState.init())
    # A scalar (too few samples to split) is broadcast like credit='broadcast'.
    _, ps3, _, _ = compute_reward(_terms(golden=0.3, n=7), cfg, RewardNormalizerState.init())
    np.testing.assert_allclose(ps3, np.full(7, -0.3), rtol=1e-6)
    with pytest.raises(ValueError, match="group_ids"):
        compute_reward(_terms(golden=golden, n=7, group_ids=np.full(7, 3)), cfg, RewardNormalizerState.init())


def test_running_stats_equal_numpy():
    rng = np.random.default_rng(3)
    batches = [rng.normal(5.0, 2.0, k) for k in (1, 17, 3, 250)] + [np.array(7.5)]
    stats = RunningStats.zeros()
    seen = []
    for b in batches:
        stats = stats.update(b)
        seen.append(np.atleast_1d(b))
        allv = np.concatenate(seen)
        assert float(stats.count) == allv.size
        np.testing.assert_allclose(float(stats.mean), allv.mean(), rtol=1e-13)
        if allv.size >= 2:
            np.testing.assert_allclose(stats.variance, allv.var(), rtol=1e-12)
            np.testing.assert_allclose(stats.std, allv.std(), rtol=1e-12)
    x = rng.normal(size=5)
    np.testing.assert_allclose(stats.normalize(x, eps=0.0), (x - allv.mean()) / allv.std(), rtol=1e-12)
    assert RunningStats.zeros().update([3.0]).std == 1.0  # one observation: no scaling yet
    assert RunningStats.zeros().update([]).count == 0


def test_normalised_reward_matches_numpy_zscores_and_clips():
    cfg = RewardConfig(clip=1.5)
    state = RewardNormalizerState.init()
    goldens, inters, ps_intra_all = [0.9, 0.6, 0.7, 0.4], [0.5, 0.7, 0.6, 0.9], []
    for epoch, (g, e) in enumerate(zip(goldens, inters)):
        t = _terms(golden=g, inter=e, seed=epoch, n=8)
        ps_intra_all.append(t.per_sample_intra)
        scalar, per_sample, state, info = compute_reward(t, cfg, state)
    gz = (0.4 - np.mean(goldens)) / (np.std(goldens) + cfg.eps)
    ez = (0.9 - np.mean(inters)) / (np.std(inters) + cfg.eps)
    assert info["norm/golden_loss"] == pytest.approx(np.clip(gz, -1.5, 1.5), rel=1e-9)
    assert info["norm/inter"] == pytest.approx(np.clip(ez, -1.5, 1.5), rel=1e-9)
    assert info["norm/inter"] == 1.5 and ez > 1.5  # (0.9 - 0.675) / 0.148 = 1.52: clipped
    assert -1.5 < gz < -1.3  # (0.4 - 0.65) / 0.180 = -1.39: not clipped
    allps = np.concatenate(ps_intra_all)
    assert info["stats/per_sample_intra/count"] == 32
    assert info["stats/per_sample_intra/mean"] == pytest.approx(allps.mean(), rel=1e-12)
    assert info["stats/per_sample_intra/std"] == pytest.approx(allps.std(), rel=1e-12)
    intra_z = np.clip((t.per_sample_intra - allps.mean()) / (allps.std() + cfg.eps), -1.5, 1.5)
    inter_all = np.concatenate([_terms(seed=s, n=8).per_sample_inter for s in range(4)])
    inter_z = np.clip((t.per_sample_inter - inter_all.mean()) / (inter_all.std() + cfg.eps), -1.5, 1.5)
    expected = -1.0 * np.clip(gz, -1.5, 1.5) + 0.25 * inter_z + 0.25 * intra_z
    np.testing.assert_allclose(per_sample, expected, rtol=1e-5, atol=1e-6)
    assert np.abs(per_sample).max() <= 1.5 * 1.5 + 1e-6


def test_first_epoch_scalar_terms_are_zero_after_normalisation():
    scalar, per_sample, state, info = compute_reward(_terms(), RewardConfig(), RewardNormalizerState.init())
    assert scalar == 0.0 and info["norm/golden_loss"] == 0.0 and info["stats/golden_loss/count"] == 1
    assert per_sample.std() > 0  # per-sample terms already have within-batch spread


@pytest.mark.parametrize(
    "field,value",
    [("golden_loss", np.nan), ("inter", np.inf), ("intra", -np.inf),
     ("per_sample_inter", np.array([0.1, np.nan, 0.2, 0.3, 0.4, 0.5])),
     ("per_sample_intra", np.array([0.1, 0.2, 0.3, 0.4, 0.5, np.inf]))],
)
def test_nan_or_inf_raises_naming_the_term(field, value):
    with pytest.raises(ValueError, match=rf"reward term '{field}' contains NaN/inf"):
        compute_reward(_terms(**{field: value}), RewardConfig(), RewardNormalizerState.init())


def test_masked_and_invalid_samples():
    ps = np.array([0.5, 0.6, np.nan, 0.7])
    mask = np.array([True, True, False, True])
    t = _terms(n=4, per_sample_inter=ps, per_sample_intra=np.array([0.2, 0.3, 0.0, 0.4]), sample_mask=mask,
               per_sample_intra_valid=np.array([True, False, True, True]))
    _, per_sample, state, info = compute_reward(t, RAW, RewardNormalizerState.init())
    assert per_sample[2] == 0.0
    np.testing.assert_allclose(per_sample[[0, 1, 3]], [-0.5 + 0.125 + 0.05, -0.5 + 0.15, -0.5 + 0.175 + 0.1], rtol=1e-6)
    _, _, state, info = compute_reward(t, RewardConfig(), RewardNormalizerState.init())
    assert info["stats/per_sample_inter/count"] == 3 and info["stats/per_sample_intra/count"] == 2
    assert info["valid/per_sample_intra_frac"] == pytest.approx(2 / 3)


def test_state_round_trips_through_dict_and_pytree():
    cfg = RewardConfig()
    state = RewardNormalizerState.init()
    for s in range(3):
        _, _, state, _ = compute_reward(_terms(golden=0.3 + 0.1 * s, seed=s), cfg, state)
    as_dict = state.to_dict()
    assert set(as_dict) == set(TERM_NAMES)
    plain = {k: {kk: float(vv) for kk, vv in v.items()} for k, v in as_dict.items()}  # e.g. after JSON
    restored = RewardNormalizerState.from_dict(plain)
    leaves, treedef = jax.tree.flatten(state)
    assert len(leaves) == 3 * len(TERM_NAMES)
    rebuilt = jax.tree.unflatten(treedef, leaves)
    nxt = _terms(golden=0.25, seed=9)
    a = compute_reward(nxt, cfg, state)
    b = compute_reward(nxt, cfg, restored)
    c = compute_reward(nxt, cfg, rebuilt)
    assert a[0] == b[0] == c[0]
    np.testing.assert_array_equal(a[1], b[1])
    assert a[3] == b[3]
    with pytest.raises(ValueError, match="missing terms"):
        RewardNormalizerState.from_dict({"golden_loss": plain["golden_loss"]})


def test_info_keys_are_stable_across_modes():
    _, _, _, b = compute_reward(_terms(n=6), RewardConfig(), RewardNormalizerState.init())
    gcfg = RewardConfig(credit="groups", num_groups=2)
    _, _, _, g = compute_reward(_terms(golden=[0.4, 0.6], n=6), gcfg, RewardNormalizerState.init())
    assert set(b) == set(g)
    for name in TERM_NAMES:
        assert f"stats/{name}/mean" in b
    assert all(isinstance(v, float) for v in b.values())


def test_config_validation():
    with pytest.raises(ValueError, match="credit"):
        RewardConfig(credit="tokens")
    with pytest.raises(ValueError, match="num_groups >= 2"):
        RewardConfig(credit="groups", num_groups=1)
    with pytest.raises(ValueError, match="clip"):
        RewardConfig(clip=0.0)
    with pytest.raises(ValueError, match="unknown RewardConfig fields"):
        RewardConfig.from_mapping({"golden_weight": -1.0})
    cfg = RewardConfig.from_mapping({"inter_weight": 1.0, "credit": "groups", "num_groups": 4})
    assert cfg.inter_weight == 1.0 and cfg.to_dict()["num_groups"] == 4


def test_terms_from_class_metrics():
    from genalign_jax.reward import class_distance_metrics

    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    y = np.array([0, 0, 1, 2])  # classes 1 and 2 are singletons, class 3 is empty
    metrics = class_distance_metrics(x, y, 4, metric="cosine")
    terms = RewardTerms.from_metrics(0.5, metrics)
    _, per_sample, _, info = compute_reward(terms, RAW, RewardNormalizerState.init())
    psi, pse = np.asarray(metrics.per_sample_intra), np.asarray(metrics.per_sample_inter)
    expected = -0.5 + 0.25 * pse + 0.25 * psi
    np.testing.assert_allclose(per_sample, expected, rtol=1e-6)
    assert psi[2] == psi[3] == 0.0 and psi[0] > 0 and info["valid/per_sample_intra_frac"] == 0.5
    assert info["raw/intra"] == pytest.approx(float(metrics.intra)) and info["raw/intra"] > 0


def test_influence_credit_gives_each_sample_its_own_golden_term():
    cfg = RewardConfig(credit="influence", normalize=False, clip=None, inter_weight=0,
                       intra_weight=0)
    credit = np.array([0.3, -0.1, 0.0, 0.2, 9.0, 9.0])       # last two rows are padding
    mask = np.array([1, 1, 1, 1, 0, 0], bool)
    _, per_sample, _, info = compute_reward(_terms(golden=-credit, sample_mask=mask), cfg,
                                            RewardNormalizerState.init())
    np.testing.assert_allclose(per_sample, np.where(mask, credit, 0.0), rtol=1e-6)
    assert info["raw/golden_loss"] == pytest.approx(-credit[mask].mean())
    normed = RewardConfig(credit="influence", clip=None, inter_weight=0, intra_weight=0)
    _, z, state, _ = compute_reward(_terms(golden=-credit, sample_mask=mask), normed,
                                    RewardNormalizerState.init())
    valid = -credit[mask]
    np.testing.assert_allclose(z[mask], -(valid - valid.mean()) / (valid.std() + normed.eps),
                               rtol=1e-6)
    assert float(state.golden_loss.count) == 4
    with pytest.raises(ValueError, match="influence_params"):
        RewardConfig(influence_params="layers")
