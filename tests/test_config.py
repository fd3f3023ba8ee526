"""The run config schema: defaults once, typed sections, every cross-field check in one place."""

from __future__ import annotations

import dataclasses

import pytest

from configs import ag_news, base, sst2, trec
from genalign_jax.config import ConfigError, RunConfig, base_config
from genalign_jax.ppo import PPOConfig
from genalign_jax.reward import RewardConfig


@pytest.mark.parametrize("module", [sst2, ag_news, trec, base])
@pytest.mark.parametrize("variant", ["", "embedded", "tiny"])
def test_every_dataset_config_round_trips_through_the_schema(module, variant):
    config = module.get_config(variant)
    typed = RunConfig.from_configdict(config)
    assert typed.to_dict() == config.to_dict()
    assert isinstance(typed.ppo, PPOConfig) and isinstance(typed.reward, RewardConfig)


def test_defaults_are_the_stage_packages_own():
    typed = RunConfig()
    assert typed.ppo.ppo_epochs == PPOConfig().ppo_epochs
    assert typed.ppo.warmup_steps == PPOConfig().warmup_steps
    assert typed.generator.lora_targets == PPOConfig().lora_targets
    assert dataclasses.asdict(typed.reward) == dataclasses.asdict(RewardConfig())


def test_ppo_lora_and_temperature_come_from_the_generator():
    config = sst2.get_config("tiny")
    config.generator.sampling.temperature = 0.7
    typed = RunConfig.from_configdict(config)
    assert (typed.ppo.lora_rank, typed.ppo.lora_alpha, typed.ppo.temperature) == (4, 8.0, 0.7)
    config.generator.lora_rank = 0
    assert RunConfig.from_configdict(config).ppo.trainable == "full"


def test_reward_clip_zero_means_off():
    config = base_config()
    config.reward.clip = 0.0
    assert RunConfig.from_configdict(config).reward.clip is None


def _with(**changes):
    config = sst2.get_config("tiny").to_dict()
    for dotted, value in changes.items():
        node = config
        *sections, field = dotted.split("__")
        for section in sections:
            node = node[section]
        node[field] = value
    return config


@pytest.mark.parametrize("changes, message", [
    ({"loop__rollouts_per_epoch": 15}, "must be a positive multiple"),
    ({"ppo__num_minibatches": 3}, "must divide by config.ppo.num_minibatches"),
    ({"ppo__num_minibatches": 0}, "num_minibatches must be >= 1"),
    ({"generator__lora_rank": -2}, "config.generator.lora_rank must be >= 1"),
    ({"data__min_words": 9, "data__max_words": 3}, "config.data.min_words (9) must not exceed"),
    ({"data__golden_size": 0}, "config.data.golden_size must be >= 1"),
    ({"reward__distance_metric": "manhattan"}, "distance_metric must be one of"),
    ({"reward__credit": "groups", "reward__num_groups": 64}, "config.reward.num_groups (64) exceeds"),
    ({"loop__convergence_mode": "up"}, "config.loop.convergence_mode must be one of"),
    ({"generator__source": "onnx"}, "config.generator.source must be one of"),
    ({"generator__remat": "some"}, "config.generator.remat must be one of"),
    ({"loop__epochs": 0}, "config.loop.epochs must be >= 1"),
    ({"data__k_shot": "two"}, "config.data: DataSection.k_shot must be an integer"),
    ({"ppo__kl_coefx": 0.1}, "unknown field(s) ['kl_coefx']"),
    ({"generator__sampling__top_q": 0.1}, "config.generator.sampling: unknown field(s) ['top_q']"),
    ({"ppo__lora_rank": 8}, "are set from config.generator"),
    ({"generator__prompt_buckets": (224, 192)}, "prompt_buckets must be strictly ascending"),
    ({"generator__prompt_buckets": (192, 256)}, "in (0, max_prompt_tokens=256)"),
    ({"generator__prompt_buckets": (1.5,)}, "prompt_buckets must be strictly ascending integers"),
    ({"generator__prompt_buckets": (64,), "generator__max_prompt_tokens": 0},
     "prompt_buckets needs config.generator.max_prompt_tokens > 0"),
])
def test_bad_values_name_the_field(changes, message):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_configdict(_with(**changes))
    assert message in str(info.value)
