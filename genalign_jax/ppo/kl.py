"""KL(π‖π_ref) estimators, per-token rewards and the adaptive KL controller.

Per-token estimators from samples ``a ~ π`` (Schulman, "Approximating KL
divergence", 2020), with ``log r = log π_ref(a) − log π(a)``:

* ``k1 = −log r = log π(a) − log π_ref(a)``: unbiased, can be negative.
* ``k3 = (r − 1) − log r``: unbiased, always ≥ 0, lower variance when π ≈ π_ref.

The adaptive controller is Ziegler et al. (2019)'s proportional controller::

    e = clip(KL / target_kl − 1, −kl_clip, kl_clip)
    β ← β · (1 + e · n / kl_horizon)

where ``KL`` is the rollout's mean per-sequence KL and ``n`` its number of
sequences.  Its state (``KLControllerState``) is a pytree of arrays, so it is
checkpointed with the rest of ``PPOState``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from genalign_jax.ppo.config import PPOConfig

__all__ = [
    "kl_estimate",
    "KLControllerState",
    "init_kl_controller",
    "update_kl_controller",
    "last_token_index",
    "per_token_rewards",
]


def kl_estimate(logprobs: jax.Array, ref_logprobs: jax.Array, estimator: str = "k1") -> jax.Array:
    """Per-token estimate of KL(π‖π_ref) from log-probs of tokens sampled from π."""
    logprobs = logprobs.astype(jnp.float32)
    ref_logprobs = ref_logprobs.astype(jnp.float32)
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k3":
        log_ratio = ref_logprobs - logprobs
        return jnp.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; expected 'k1' or 'k3'")


@struct.dataclass
class KLControllerState:
    """β and the controller's last observation (all float32/int32 scalars).

    Attributes:
      beta: current KL coefficient.
      kl: last observed mean per-sequence KL.
      error: last clipped proportional error ``e`` (0 for a fixed β).
      num_updates: number of controller updates so far.
    """

    beta: jax.Array
    kl: jax.Array
    error: jax.Array
    num_updates: jax.Array


def init_kl_controller(config: PPOConfig) -> KLControllerState:
    """Controller state with ``β = config.kl_coef``."""
    return KLControllerState(beta=jnp.asarray(config.kl_coef, jnp.float32),
                             kl=jnp.zeros((), jnp.float32), error=jnp.zeros((), jnp.float32),
                             num_updates=jnp.zeros((), jnp.int32))


def update_kl_controller(state: KLControllerState, observed_kl: jax.Array, n_steps: int | jax.Array,
                         config: PPOConfig) -> KLControllerState:
    """One controller step from the rollout's mean per-sequence KL (β fixed if not adaptive)."""
    observed_kl = jnp.asarray(observed_kl, jnp.float32)
    if not config.adaptive_kl:
        return state.replace(kl=observed_kl, num_updates=state.num_updates + 1)
    error = jnp.clip(observed_kl / config.target_kl - 1.0, -config.kl_clip, config.kl_clip)
    beta = state.beta * (1.0 + error * jnp.asarray(n_steps, jnp.float32) / config.kl_horizon)
    return KLControllerState(beta=beta, kl=observed_kl, error=error,
                             num_updates=state.num_updates + 1)


def last_token_index(mask: jax.Array) -> jax.Array:
    """Index of the last 1 in each row of ``mask`` [B, N] (0 for an all-zero row)."""
    n = mask.shape[-1]
    positions = jnp.arange(n, dtype=jnp.int32)
    return jnp.max(jnp.where(mask > 0, positions, 0), axis=-1)


def per_token_rewards(scores: jax.Array, logprobs: jax.Array, ref_logprobs: jax.Array,
                      mask: jax.Array, beta: jax.Array,
                      estimator: str = "k1") -> tuple[jax.Array, jax.Array]:
    """Rewards ``−β·KL`` on every completion token plus ``scores`` on the last one.

    Args:
      scores: ``[B]`` sequence-level rewards.
      logprobs, ref_logprobs: ``[B, N]`` behaviour and reference log-probs of the
        sampled completion tokens.
      mask: ``[B, N]`` 1 for completion tokens.
      beta: KL coefficient.
      estimator: ``"k1"`` or ``"k3"``.

    Returns:
      ``(rewards [B, N], kl [B, N])``, both zero on masked positions.
    """
    mask = mask.astype(jnp.float32)
    kl = kl_estimate(logprobs, ref_logprobs, estimator) * mask
    rewards = -jnp.asarray(beta, jnp.float32) * kl
    last = last_token_index(mask)
    has_tokens = jnp.any(mask > 0, axis=-1)
    final = jax.nn.one_hot(last, mask.shape[-1], dtype=jnp.float32) * has_tokens[:, None]
    rewards = rewards + final * scores.astype(jnp.float32)[:, None]
    return rewards, kl
