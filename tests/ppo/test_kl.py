"""KL estimators, per-token rewards and the adaptive KL controller."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genalign_jax.ppo import (KLControllerState, PPOConfig, init_kl_controller, kl_estimate,
                              last_token_index, per_token_rewards, update_kl_controller)


def test_estimators_equal_their_definitions():
    rng = np.random.default_rng(0)
    logp = np.log(rng.uniform(0.01, 1.0, size=(4, 7))).astype(np.float32)
    ref = np.log(rng.uniform(0.01, 1.0, size=(4, 7))).astype(np.float32)
    k1 = np.asarray(kl_estimate(jnp.asarray(logp), jnp.asarray(ref), "k1"))
    k3 = np.asarray(kl_estimate(jnp.asarray(logp), jnp.asarray(ref), "k3"))
    ratio = np.exp(ref) / np.exp(logp)  # pi_ref / pi
    np.testing.assert_allclose(k1, logp - ref, rtol=1e-6)
    np.testing.assert_allclose(k3, (ratio - 1) - np.log(ratio), rtol=1e-5, atol=1e-6)
    assert (k3 >= 0).all()
    with pytest.raises(ValueError, match="unknown KL estimator 'k2'"):
        kl_estimate(jnp.asarray(logp), jnp.asarray(ref), "k2")


def test_estimators_are_unbiased_for_categorical_kl():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(6))
    q = rng.dirichlet(np.ones(6))
    exact = float(np.sum(p * np.log(p / q)))
    samples = jax.random.categorical(jax.random.key(0), jnp.log(jnp.asarray(p)), shape=(200_000,))
    logp, logq = jnp.log(jnp.asarray(p))[samples], jnp.log(jnp.asarray(q))[samples]
    for estimator in ("k1", "k3"):
        estimate = float(jnp.mean(kl_estimate(logp, logq, estimator)))
        assert estimate == pytest.approx(exact, abs=0.02), estimator


def test_controller_raises_and_lowers_beta_by_the_documented_amount():
    config = PPOConfig(kl_coef=0.1, target_kl=6.0, kl_horizon=1000, kl_clip=0.2)
    state = init_kl_controller(config)
    assert float(state.beta) == pytest.approx(0.1)
    n = 64
    for observed, error in [(7.5, 0.25), (12.0, 1.0), (4.5, -0.25), (0.0, -1.0), (6.0, 0.0)]:
        new = update_kl_controller(state, observed, n, config)
        clipped = float(np.clip(error, -0.2, 0.2))
        assert float(new.beta) == pytest.approx(0.1 * (1 + clipped * n / 1000), rel=1e-6)
        assert float(new.error) == pytest.approx(clipped, abs=1e-6)
        assert float(new.kl) == pytest.approx(observed)
        assert int(new.num_updates) == 1
        if observed > config.target_kl:
            assert float(new.beta) > float(state.beta)
        elif observed < config.target_kl:
            assert float(new.beta) < float(state.beta)


def test_fixed_beta_when_not_adaptive():
    config = PPOConfig(kl_coef=0.3, adaptive_kl=False)
    state = update_kl_controller(init_kl_controller(config), 100.0, 64, config)
    assert float(state.beta) == pytest.approx(0.3)
    assert float(state.kl) == pytest.approx(100.0)


def test_controller_state_is_checkpointable(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    config = PPOConfig(kl_coef=0.2)
    state = update_kl_controller(init_kl_controller(config), 9.0, 32, config)
    path = tmp_path / "kl"
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, state)
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(path, jax.tree.map(jnp.zeros_like, state))
    assert isinstance(restored, KLControllerState)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_per_token_rewards_penalise_kl_and_pay_score_on_last_token():
    rng = np.random.default_rng(2)
    logp = rng.normal(size=(3, 5)).astype(np.float32)
    ref = rng.normal(size=(3, 5)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], np.float32)
    scores = np.array([2.0, -1.0, 5.0], np.float32)
    beta = 0.1
    rewards, kl = per_token_rewards(jnp.asarray(scores), jnp.asarray(logp), jnp.asarray(ref),
                                    jnp.asarray(mask), jnp.float32(beta), "k1")
    expected_kl = (logp - ref) * mask
    expected = -beta * expected_kl
    expected[0, 4] += 2.0
    expected[1, 1] -= 1.0  # the all-masked row gets no score
    np.testing.assert_allclose(np.asarray(kl), expected_kl, atol=1e-6)
    np.testing.assert_allclose(np.asarray(rewards), expected, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(last_token_index(jnp.asarray(mask))), [4, 1, 0])
