"""End to end: tiny random Llama + genalign_jax.generator sampler + PPO learns a known reward on CPU."""

from __future__ import annotations

import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genalign_jax import ppo
from genalign_jax.generator import Llama, generate, get_preset
from tests.ppo import TOY_CONFIG, TOY_SAMPLING, toy_prompts, toy_reward

log = logging.getLogger(__name__)


def run_toy_task(steps: int, config: ppo.PPOConfig = TOY_CONFIG,
                 seed: int = 0) -> list[dict[str, float]]:
    """Trains for ``steps`` PPO iterations; returns per-step metrics (incl. ``reward``)."""
    model = Llama(get_preset("tiny"), rngs=nnx.Rngs(seed))
    state = ppo.init_ppo_state(model, config, rngs=nnx.Rngs(seed + 1))
    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    history = []
    for _ in range(steps):
        key, sample_key, update_key = jax.random.split(key, 3)
        prompts = toy_prompts(rng)
        ppo.sync_model(model, state)
        sample = generate(model, prompts, np.ones_like(prompts), TOY_SAMPLING, sample_key)
        scores = toy_reward(sample.completion_tokens, sample.completion_mask)
        rollout = ppo.make_rollout(state, sample, scores, config)
        state, metrics = ppo.ppo_update(state, rollout, config, update_key)
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        metrics["reward"] = float(jnp.mean(scores))
        history.append(metrics)
    return history


def _mean(history, key, start, stop=None):
    return float(np.mean([h[key] for h in history[start:stop]]))


@pytest.mark.slow
def test_ppo_learns_toy_reward_with_bounded_kl():
    steps = 60
    start = time.perf_counter()
    history = run_toy_task(steps)
    elapsed = time.perf_counter() - start
    first, last = _mean(history, "reward", 0, 5), _mean(history, "reward", -20)
    kl_last = _mean(history, "rollout_kl", -20)
    betas = [h["beta"] for h in history]
    log.info("toy task: reward %.3f -> %.3f, rollout KL %.2f nats/seq (target %.1f), "
             "beta %.4f -> %.4f (min %.4f), %.1fs", first, last, kl_last, TOY_CONFIG.target_kl,
             betas[0], betas[-1], min(betas), elapsed)
    assert 0.05 < first < 0.2, f"a random policy should score ~0.125, got {first}"
    assert last > first + 0.12, f"reward did not rise: {first:.3f} -> {last:.3f}"
    # KL stays near the controller's target, and the controller pushed back once it was exceeded.
    assert kl_last < 3 * TOY_CONFIG.target_kl, f"KL to reference ran away: {kl_last:.2f}"
    assert betas[-1] > min(betas), "the controller never raised beta"
    assert all(np.isfinite(h["loss"]) for h in history)
