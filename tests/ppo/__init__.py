"""Tests of genalign_jax.ppo.

Shared toy-task settings live here so the end-to-end test and the update
tests build identical programs (same config, model graph and shapes) and the
second one reuses the first one's compiled update/rollout/sampling programs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from genalign_jax import ppo
from genalign_jax.generator import SamplingConfig

# Reward: fraction of completion tokens with ids in [TARGET_LOW, TARGET_HIGH): 32 of the
# 256 ids, so a random policy starts near 0.125.
TARGET_LOW, TARGET_HIGH = 3, 35
BATCH, PROMPT_LEN, NEW_TOKENS = 32, 4, 8

# LoRA also targets lm_head: the tiny model's final RMSNorm scale is frozen and its random
# lm_head rows are short, so adapters on the trunk alone move the logits only a little.
TOY_CONFIG = ppo.PPOConfig(
    ppo_epochs=2, num_minibatches=2, learning_rate=1e-3, max_grad_norm=1.0, vf_coef=0.1,
    kl_coef=0.05, adaptive_kl=True, target_kl=2.0, kl_horizon=500, lora_rank=8, lora_alpha=16.0,
    lora_targets=ppo.DEFAULT_LORA_TARGETS + ("lm_head",))
TOY_SAMPLING = SamplingConfig(max_new_tokens=NEW_TOKENS)


def toy_reward(completion_tokens: jax.Array, completion_mask: jax.Array) -> jax.Array:
    """Fraction of generated tokens in the target set, per row."""
    hit = (completion_tokens >= TARGET_LOW) & (completion_tokens < TARGET_HIGH)
    mask = completion_mask.astype(jnp.float32)
    return jnp.sum(hit * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)


def toy_prompts(rng: np.random.Generator) -> np.ndarray:
    """Random prompts ``[BATCH, PROMPT_LEN]`` made of non-target ids."""
    return rng.integers(TARGET_HIGH, 256, size=(BATCH, PROMPT_LEN)).astype(np.int32)
