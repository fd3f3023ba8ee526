"""Generalised advantage estimation over masked completion tokens, and whitening.

``gae`` is a reverse ``lax.scan`` over the token axis.  Masked positions are
skipped: they get zero advantage and pass the running value/advantage through
unchanged, so a row behaves as if its valid tokens were contiguous, and the
step after a row's last valid token is terminal (value 0).  For the usual
prefix masks (completion tokens then padding) this is standard GAE.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["masked_mean", "masked_var", "whiten", "gae", "compute_advantages"]


def masked_mean(x: jax.Array, mask: jax.Array, axis: int | None = None) -> jax.Array:
    """Mean of ``x`` over positions where ``mask`` is 1 (0 if there are none)."""
    mask = mask.astype(jnp.float32)
    total = jnp.sum(x * mask, axis=axis)
    count = jnp.sum(mask, axis=axis)
    return total / jnp.maximum(count, 1.0)


def masked_var(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Population variance of ``x`` over positions where ``mask`` is 1."""
    mean = masked_mean(x, mask)
    return masked_mean(jnp.square(x - mean), mask)


def whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True, eps: float = 1e-8) -> jax.Array:
    """``(x − mean) / sqrt(var + eps)`` over valid positions; masked positions become 0."""
    mean = masked_mean(x, mask)
    scaled = (x - mean) * jax.lax.rsqrt(masked_var(x, mask) + eps)
    if not shift_mean:
        scaled = scaled + mean
    return scaled * mask.astype(x.dtype)


def gae(rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float,
        lam: float) -> tuple[jax.Array, jax.Array]:
    """GAE(γ, λ) advantages and returns (``advantages + values``) for ``[B, N]`` inputs.

    ``δ_t = r_t + γ V_{t'} − V_t`` and ``A_t = δ_t + γλ A_{t'}`` where ``t'`` is
    the next valid position of the row (terminal after the last one).
    """
    rewards = rewards.astype(jnp.float32)
    values = values.astype(jnp.float32)
    valid = mask > 0

    def step(carry, xs):
        next_value, next_adv = carry
        reward, value, ok = xs
        delta = reward + gamma * next_value - value
        adv = delta + gamma * lam * next_adv
        carry = (jnp.where(ok, value, next_value), jnp.where(ok, adv, next_adv))
        return carry, jnp.where(ok, adv, 0.0)

    batch = rewards.shape[0]
    init = (jnp.zeros((batch,), jnp.float32), jnp.zeros((batch,), jnp.float32))
    xs = (rewards.T, values.T, valid.T)  # scan over the token axis
    _, adv_t = jax.lax.scan(step, init, xs, reverse=True)
    advantages = adv_t.T
    returns = (advantages + values) * valid
    return advantages, returns


def compute_advantages(rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float,
                       lam: float, whiten_advantages: bool = True) -> tuple[jax.Array, jax.Array]:
    """GAE advantages (whitened over the batch's valid tokens if asked) and raw returns."""
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    if whiten_advantages:
        advantages = whiten(advantages, mask)
    return advantages, returns
