"""Loss terms against direct NumPy formulas."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genalign_jax.ppo import completion_logprobs, explained_variance, policy_loss, value_loss


def _masked(x, mask):
    return (x * mask).sum() / mask.sum()


def test_clipped_surrogate_matches_formula():
    rng = np.random.default_rng(0)
    old = rng.normal(size=(4, 6)).astype(np.float32)
    new = old + rng.normal(scale=0.5, size=old.shape).astype(np.float32)
    adv = rng.normal(size=old.shape).astype(np.float32)
    mask = (rng.random(old.shape) > 0.2).astype(np.float32)
    eps = 0.2
    out = policy_loss(jnp.asarray(new), jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask), eps)
    ratio = np.exp(new - old)
    surrogate = np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - eps, 1 + eps))
    assert float(out.loss) == pytest.approx(_masked(surrogate, mask), rel=1e-5)
    clipped = (-adv * np.clip(ratio, 1 - eps, 1 + eps)) > (-adv * ratio)
    assert float(out.clip_frac) == pytest.approx(_masked(clipped, mask), rel=1e-6)
    assert float(out.approx_kl) == pytest.approx(_masked(ratio - 1 - np.log(ratio), mask),
                                                  rel=1e-5)


def test_clipped_value_loss_matches_formula():
    rng = np.random.default_rng(1)
    values, old, returns = (rng.normal(size=(3, 5)).astype(np.float32) for _ in range(3))
    mask = np.ones((3, 5), np.float32)
    mask[2, 3:] = 0
    out = value_loss(jnp.asarray(values), jnp.asarray(old), jnp.asarray(returns),
                     jnp.asarray(mask), 0.2)
    clipped = old + np.clip(values - old, -0.2, 0.2)
    expected = 0.5 * _masked(np.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)
    assert float(out.loss) == pytest.approx(expected, rel=1e-5)


def test_completion_logprobs_alignment_and_entropy():
    rng = np.random.default_rng(2)
    b, p, n, v = 2, 3, 4, 7
    logits = rng.normal(size=(b, p + n, v)).astype(np.float32)
    tokens = rng.integers(0, v, size=(b, p + n)).astype(np.int32)
    logprobs, entropy = completion_logprobs(jnp.asarray(logits), jnp.asarray(tokens), p, n,
                                            temperature=2.0)
    scaled = logits / 2.0
    log_softmax = scaled - np.log(np.exp(scaled).sum(-1, keepdims=True))
    for j in range(n):  # logits at P-1+j predict token P+j
        expected = log_softmax[np.arange(b), p - 1 + j, tokens[:, p + j]]
        np.testing.assert_allclose(np.asarray(logprobs[:, j]), expected, rtol=1e-5)
        probs = np.exp(log_softmax[:, p - 1 + j])
        np.testing.assert_allclose(np.asarray(entropy[:, j]), -(probs * log_softmax[:, p - 1 + j])
                                   .sum(-1), rtol=1e-5)


def test_explained_variance():
    returns = jnp.asarray([[1.0, 2.0, 3.0, 4.0]])
    mask = jnp.ones_like(returns)
    assert float(explained_variance(returns, returns, mask)) == pytest.approx(1.0)
    assert float(explained_variance(jnp.zeros_like(returns) + 2.5, returns, mask)) == \
        pytest.approx(0.0, abs=1e-6)
    assert float(explained_variance(returns, jnp.ones_like(returns), mask)) == 0.0


def test_policy_loss_gradient_points_along_advantage():
    old = jnp.zeros((1, 3))
    adv = jnp.asarray([[1.0, -1.0, 0.0]])
    grad = jax.grad(lambda lp: policy_loss(lp, old, adv, jnp.ones((1, 3)), 0.2).loss)(old)
    assert float(grad[0, 0]) < 0 < float(grad[0, 1]) and float(grad[0, 2]) == 0
