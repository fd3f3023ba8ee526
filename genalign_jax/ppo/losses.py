"""PPO loss terms on masked completion tokens.

All functions take ``[B, N]`` per-token arrays plus a ``[B, N]`` mask and
average over valid tokens of the (mini)batch.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from genalign_jax.ppo.gae import masked_mean, masked_var

__all__ = [
    "completion_logprobs",
    "PolicyLossOut",
    "policy_loss",
    "ValueLossOut",
    "step_logprobs",
    "value_loss",
    "explained_variance",
]


def completion_logprobs(logits: jax.Array, tokens: jax.Array, prompt_length: int,
                        num_completion: int, temperature: float = 1.0,
                        with_entropy: bool = True) -> tuple[jax.Array, jax.Array | None]:
    """Log-probs of completion tokens and the policy entropy at their positions.

    Logits at position ``P−1+j`` of the full sequence predict completion
    token ``j`` (at position ``P+j``).

    Args:
      logits: ``[B, P+N, V]`` logits of a forward over the full sequence.
      tokens: ``[B, P+N]`` prompt + completion tokens.
      prompt_length: ``P`` (static).
      num_completion: ``N`` (static).
      temperature: logits are divided by it first.
      with_entropy: also return the entropy of the full distribution.

    Returns:
      ``(logprobs [B, N], entropy [B, N] or None)``, float32.
    """
    start = prompt_length - 1
    if start < 0:
        raise ValueError("completion_logprobs: prompt_length must be >= 1 (the first completion "
                         "token is predicted from the last prompt position)")
    step_logits = jax.lax.dynamic_slice_in_dim(logits, start, num_completion, axis=1)
    targets = jax.lax.dynamic_slice_in_dim(tokens, prompt_length, num_completion, axis=1)
    return step_logprobs(step_logits, targets, temperature, with_entropy)


def step_logprobs(step_logits: jax.Array, targets: jax.Array, temperature: float = 1.0,
                  with_entropy: bool = True) -> tuple[jax.Array, jax.Array | None]:
    """Log-probs of ``targets`` [B, N] under ``step_logits`` [B, N, V] (the logits that
    predict them), and the entropy of each step's distribution; float32."""
    step_logits = step_logits.astype(jnp.float32) / temperature
    log_z = jax.nn.logsumexp(step_logits, axis=-1)
    picked = jnp.take_along_axis(step_logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    logprobs = picked - log_z
    entropy = None
    if with_entropy:
        probs = jax.nn.softmax(step_logits, axis=-1)
        entropy = log_z - jnp.sum(probs * step_logits, axis=-1)
    return logprobs, entropy


class PolicyLossOut(NamedTuple):
    loss: jax.Array
    clip_frac: jax.Array
    approx_kl: jax.Array


def policy_loss(logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array,
                mask: jax.Array, clip_eps: float) -> PolicyLossOut:
    """Clipped surrogate ``mean(max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)))`` with ``ρ = π/π_old``.

    Also returns the fraction of tokens where clipping was active and the
    k3 estimate of KL(π_old‖π) (``approx_kl``).
    """
    log_ratio = logprobs - old_logprobs
    ratio = jnp.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(jnp.maximum(unclipped, clipped), mask)
    clip_frac = masked_mean((clipped > unclipped).astype(jnp.float32), mask)
    approx_kl = masked_mean(jax.lax.stop_gradient((ratio - 1.0) - log_ratio), mask)
    return PolicyLossOut(loss, clip_frac, approx_kl)


class ValueLossOut(NamedTuple):
    loss: jax.Array
    clip_frac: jax.Array


def value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array, mask: jax.Array,
               clip_eps: float) -> ValueLossOut:
    """Clipped value loss ``0.5·mean(max((V−R)², (V_old + clip(V−V_old, ±ε) − R)²))``."""
    clipped_values = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
    err = jnp.square(values - returns)
    err_clipped = jnp.square(clipped_values - returns)
    loss = 0.5 * masked_mean(jnp.maximum(err, err_clipped), mask)
    clip_frac = masked_mean((err_clipped > err).astype(jnp.float32), mask)
    return ValueLossOut(loss, clip_frac)


def explained_variance(values: jax.Array, returns: jax.Array, mask: jax.Array) -> jax.Array:
    """``1 − Var[R − V] / Var[R]`` over valid tokens (nan-free: 0 when Var[R] is 0)."""
    var_r = masked_var(returns, mask)
    residual = masked_var(returns - values, mask)
    return jnp.where(var_r > 0, 1.0 - residual / jnp.where(var_r > 0, var_r, 1.0), 0.0)
