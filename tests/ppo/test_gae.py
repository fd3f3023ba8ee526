"""GAE, returns and whitening against a plain NumPy reference."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from genalign_jax.ppo import compute_advantages, gae, masked_mean, masked_var, whiten


def numpy_gae(rewards, values, mask, gamma, lam):
    """Textbook GAE per row over the valid tokens only (terminal after the last)."""
    adv = np.zeros_like(rewards, dtype=np.float64)
    for row in range(rewards.shape[0]):
        idx = np.flatnonzero(mask[row])
        last = 0.0
        for k in range(len(idx) - 1, -1, -1):
            t = idx[k]
            next_value = values[row, idx[k + 1]] if k + 1 < len(idx) else 0.0
            delta = rewards[row, t] + gamma * next_value - values[row, t]
            last = delta + gamma * lam * last
            adv[row, t] = last
    returns = (adv + values) * mask
    return adv, returns


def numpy_whiten(x, mask):
    valid = x[mask > 0]
    return (x - valid.mean()) / np.sqrt(valid.var() + 1e-8) * mask


def _random_inputs(seed, holes):
    rng = np.random.default_rng(seed)
    b, n = 6, 11
    rewards = rng.normal(size=(b, n)).astype(np.float32)
    values = rng.normal(size=(b, n)).astype(np.float32)
    lengths = rng.integers(0, n + 1, size=b)
    lengths[0] = n
    mask = (np.arange(n)[None] < lengths[:, None]).astype(np.float32)
    if holes:
        mask = mask * (rng.random((b, n)) > 0.3)
    return rewards, values, mask


@pytest.mark.parametrize("holes", [False, True], ids=["prefix_mask", "mask_with_holes"])
@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.5), (0.99, 1.0)])
def test_gae_and_returns_match_numpy(holes, gamma, lam):
    rewards, values, mask = _random_inputs(0, holes)
    adv, ret = gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask), gamma, lam)
    ref_adv, ref_ret = numpy_gae(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(np.asarray(adv), ref_adv, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ret), ref_ret, atol=1e-5)
    assert np.all(np.asarray(adv)[mask == 0] == 0)


def test_whitening_matches_numpy():
    rewards, values, mask = _random_inputs(1, holes=True)
    out = np.asarray(whiten(jnp.asarray(rewards), jnp.asarray(mask)))
    np.testing.assert_allclose(out, numpy_whiten(rewards, mask), atol=1e-5)
    valid = out[mask > 0]
    assert abs(valid.mean()) < 1e-5 and abs(valid.std() - 1) < 1e-4
    unshifted = np.asarray(whiten(jnp.asarray(rewards), jnp.asarray(mask), shift_mean=False))
    np.testing.assert_allclose(unshifted[mask > 0].mean(), rewards[mask > 0].mean(), atol=1e-5)


def test_masked_stats_and_compute_advantages():
    rewards, values, mask = _random_inputs(2, holes=False)
    m = jnp.asarray(mask)
    assert float(masked_mean(jnp.asarray(rewards), m)) == pytest.approx(rewards[mask > 0].mean(),
                                                                          abs=1e-6)
    assert float(masked_var(jnp.asarray(rewards), m)) == pytest.approx(rewards[mask > 0].var(),
                                                                         abs=1e-5)
    adv, ret = compute_advantages(jnp.asarray(rewards), jnp.asarray(values), m, 1.0, 0.95,
                                  whiten_advantages=True)
    ref_adv, ref_ret = numpy_gae(rewards, values, mask, 1.0, 0.95)
    np.testing.assert_allclose(np.asarray(adv), numpy_whiten(ref_adv, mask), atol=1e-4)
    np.testing.assert_allclose(np.asarray(ret), ref_ret, atol=1e-5)  # returns are not whitened
