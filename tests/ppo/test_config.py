"""PPOConfig: defaults, validation messages, dict round trip."""

from __future__ import annotations

import pytest

from genalign_jax.ppo import PPOConfig, ValueHeadConfig


def test_defaults_are_valid_and_hashable():
    config = PPOConfig()
    assert hash(config) == hash(PPOConfig())
    assert config.value_head == ValueHeadConfig()
    assert config.lora_scale == pytest.approx(2.0)


def test_from_dict_round_trip_with_nested_value_head():
    values = {"clip_eps": 0.1, "kl_estimator": "k3", "lora_targets": ["q_proj", "v_proj"],
              "value_head": {"critic": "shared", "init_scale": 0.01}, "learning_rate": 1}
    config = PPOConfig.from_dict(values)
    assert config.lora_targets == ("q_proj", "v_proj")
    assert config.value_head.init_scale == 0.01
    assert isinstance(config.learning_rate, float)
    assert PPOConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("values, message", [
    ({"clip_epsilon": 0.2}, r"unknown field\(s\) \['clip_epsilon'\]"),
    ({"value_head": {"scale": 1.0}}, r"ValueHeadConfig.from_dict: unknown field\(s\) \['scale'\]"),
    ({"clip_eps": 0.0}, r"PPOConfig.clip_eps must be > 0"),
    ({"gamma": 1.5}, r"PPOConfig.gamma must be in \[0, 1\]"),
    ({"kl_estimator": "k2"}, r"PPOConfig.kl_estimator must be 'k1' or 'k3'"),
    ({"trainable": "adapters"}, r"PPOConfig.trainable must be 'lora' or 'full'"),
    ({"num_minibatches": 0}, r"PPOConfig.num_minibatches must be >= 1"),
    ({"ppo_epochs": 2.5}, r"PPOConfig.ppo_epochs must be an integer"),
    ({"whiten_advantages": 1}, r"PPOConfig.whiten_advantages must be true or false"),
    ({"lr_schedule": "cosine", "total_steps": 0}, r"PPOConfig.total_steps must exceed"),
    ({"lora_targets": "q_proj"}, r"PPOConfig.lora_targets must be a sequence"),
    ({"value_head": {"critic": "twin"}}, r"ValueHeadConfig.critic must be 'shared' or 'separate'"),
    ({"kl_coef": -0.1}, r"PPOConfig.kl_coef must be >= 0"),
])
def test_invalid_values_name_the_field(values, message):
    with pytest.raises(ValueError, match=message):
        PPOConfig.from_dict(values)


def test_from_dict_rejects_non_mapping():
    with pytest.raises(ValueError, match="expects a mapping"):
        PPOConfig.from_dict([("clip_eps", 0.1)])


def test_ml_collections_config_dict_round_trip():
    ml_collections = pytest.importorskip("ml_collections")
    config_dict = ml_collections.ConfigDict(PPOConfig(kl_coef=0.1).to_dict())
    config_dict.value_head.init_scale = 0.01
    config = PPOConfig.from_dict(config_dict.to_dict())
    assert config.kl_coef == 0.1 and config.value_head.init_scale == 0.01
