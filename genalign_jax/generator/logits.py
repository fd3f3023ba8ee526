"""Token choice from logits: temperature, top-k and nucleus filtering, draws and log-probs.

These are the per-step pieces of ``generator.sampler.generate`` (which compiles them
into its decode loop); they are public so that tests and PPO code can check the
sampling distribution on their own logits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

if TYPE_CHECKING:  # type-only: sampler.py imports this module
    from genalign_jax.generator.sampler import SamplingConfig

__all__ = ["filter_logits", "sample_tokens", "token_logprobs"]

_NEG_INF = -jnp.inf


def _ordered_keys(x: jax.Array) -> jax.Array:
    """float32 -> uint32 keys with the same order (NaN-free input)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    signed = jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)
    return jax.lax.bitcast_convert_type(signed, jnp.uint32) ^ jnp.uint32(0x80000000)


def _largest_key(keys: jax.Array, ok: Any) -> jax.Array:
    """Per row, the largest key ``t`` with ``ok(keys >= t)`` (``ok`` monotone, true at the min).

    An exact bisection over the 32-bit key space: 32 passes of compare+reduce
    over ``[..., V]``, much cheaper than sorting the vocabulary every step.
    """
    def body(_, bounds):
        lo, hi = bounds
        gap = hi - lo
        mid = lo + gap // 2 + (gap & 1)
        good = ok(keys >= mid[..., None])
        return jnp.where(good, mid, lo), jnp.where(good, hi, mid - 1)

    lo, _ = jax.lax.fori_loop(0, 32, body, (jnp.min(keys, -1), jnp.max(keys, -1)))
    return lo


def filter_logits(logits: jax.Array, config: SamplingConfig) -> jax.Array:
    """Logits of the sampling distribution: ``logits / T`` outside top-k/nucleus set to -inf.

    ``logits`` is ``[..., V]``.  The top-k set is every token whose logit is at
    least the k-th largest; the nucleus is the smallest set of most likely
    tokens (after temperature and top-k, renormalised) whose probability
    reaches ``top_p``.  Ties at either boundary are kept, and the most likely
    token always is.  With top-k the nucleus is found among the k candidates;
    without it, by exact bisection (no sort of the whole vocabulary).
    """
    logits = logits.astype(jnp.float32)
    if config.is_greedy:
        return logits
    if config.temperature != 1.0:
        logits = logits / jnp.float32(config.temperature)
    k = config.top_k if 0 < config.top_k < logits.shape[-1] else 0
    top_p = jnp.float32(config.top_p)
    if k:
        candidates, _ = jax.lax.top_k(logits, k)  # descending
        if config.top_p < 1.0:
            probs = jax.nn.softmax(candidates, axis=-1)
            mass_before = jnp.cumsum(probs, axis=-1) - probs
            candidates = jnp.where(mass_before < top_p, candidates, jnp.inf)
        # min(), not candidates[..., -1]: XLA CPU turns the latter into a full sort.
        threshold = jnp.min(candidates, axis=-1, keepdims=True)
        return jnp.where(logits < threshold, _NEG_INF, logits)
    if config.top_p < 1.0:
        probs = jax.nn.softmax(logits, axis=-1)
        keys = _ordered_keys(logits)
        cut = _largest_key(keys, lambda m: jnp.sum(jnp.where(m, probs, 0.0), axis=-1) >= top_p)
        logits = jnp.where(keys >= cut[..., None], logits, _NEG_INF)
    return logits


def token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """``log_softmax(logits)[..., token]`` in float32 (``logits [..., V]``, ``tokens [...]``)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


def sample_tokens(logits: jax.Array, rng: jax.Array,
                  config: SamplingConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Draws one token per row of ``logits`` ``[B, V]``.

    Returns ``(tokens [B] int32, logprobs [B], sampling_logprobs [B])``: the
    log-probability under the raw distribution (divided by
    ``config.logprob_temperature``) and under the sampling distribution (see
    ``generator.sampler``'s docstring).
    """
    logits = logits.astype(jnp.float32)
    scaled = logits if config.logprob_temperature == 1.0 else logits / config.logprob_temperature
    if config.is_greedy:
        tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        sampling_lp = jnp.zeros(tokens.shape, jnp.float32)
    else:
        filtered = filter_logits(logits, config)
        tokens = jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)
        sampling_lp = token_logprobs(filtered, tokens)
    return tokens, token_logprobs(scaled, tokens), sampling_lp
