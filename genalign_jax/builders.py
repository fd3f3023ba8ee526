"""Turn a run config (``configs/base.py``) into the objects of the loop.

Each builder reads one config section and returns ready objects with clear
errors for bad values: the generator (model + tokenizer), the pretrained
classifier, the data splits and prompt builder, and the typed configs of the
sampler, classifier trainer, reward and PPO.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import jax
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from genalign_jax import sharding as sharding_lib

log = logging.getLogger(__name__)

__all__ = [
    "ConfigError",
    "build_mesh",
    "build_generator",
    "build_sampling_config",
    "build_classifier",
    "build_classifier_config",
    "build_data",
    "build_reward_config",
    "build_ppo_config",
    "asset_cache_dir",
]


class ConfigError(ValueError):
    """A config value is missing, unknown or inconsistent."""


def asset_cache_dir() -> Path:
    """Where converted assets (e.g. GGUF tokenizers) are cached: ``$GENALIGN_CACHE`` or ~/.cache."""
    root = os.environ.get("GENALIGN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                             "genalign_jax")
    return Path(root)


def build_mesh(cfg: ml_collections.ConfigDict) -> Mesh:
    """The device mesh of ``cfg.mesh`` (after multi-host init when configured)."""
    m = cfg.mesh
    if m.distributed:
        sharding_lib.maybe_initialize_distributed(
            m.coordinator_address or None, m.num_processes or None,
            m.process_id if m.coordinator_address else None)
    try:
        return sharding_lib.make_mesh({"data": m.data, "fsdp": m.fsdp, "tensor": m.tensor})
    except ValueError as err:
        raise ConfigError(f"config.mesh: {err}") from err


def _char_tokenizer():
    from genalign_jax.char_tokenizer import build_char_tokenizer
    return build_char_tokenizer()


def _gguf_path(g: ml_collections.ConfigDict) -> str:
    if g.gguf_file == "smollm2":
        from genalign_jax.data.assets import smollm2_gguf_path
        return str(smollm2_gguf_path())
    path = g.gguf_file or g.path
    if not path:
        raise ConfigError("config.generator: source='gguf' needs gguf_file (a .gguf path or "
                          "'smollm2') or path")
    return path


def build_generator(cfg: ml_collections.ConfigDict, mesh: Mesh | None = None):
    """Loads or builds the generator Llama and its tokenizer from ``cfg.generator``."""
    from genalign_jax import tokenization
    from genalign_jax.models import llama

    g = cfg.generator
    dtypes = dict(dtype=g.dtype, param_dtype=g.param_dtype)
    if g.source == "hf":
        if not g.path:
            raise ConfigError("config.generator.path is empty (an HF folder or hub id is needed "
                              "for source='hf')")
        from genalign_jax.models.llama_hf import load_llama
        model = load_llama(g.path, mesh=mesh, **dtypes)
        tokenizer = (_char_tokenizer() if g.tokenizer == "char"
                     else tokenization.load_tokenizer(g.tokenizer or str(g.path)))
    elif g.source == "gguf":
        from genalign_jax.models.gguf import load_gguf_llama, load_gguf_tokenizer
        path = _gguf_path(g)
        model = load_gguf_llama(path, mesh=mesh, **dtypes)
        tokenizer = (tokenization.load_tokenizer(g.tokenizer) if g.tokenizer
                     else load_gguf_tokenizer(path, cache_dir=asset_cache_dir() / "tokenizers"))
    elif g.source == "random":
        try:
            config = llama.get_preset(g.preset, **dtypes)
        except ValueError as err:
            raise ConfigError(f"config.generator.preset: {err}") from err
        model = llama.Llama(config, rngs=nnx.Rngs(cfg.seed))
        if mesh is not None:
            nnx.update(model, sharding_lib.shard_state(nnx.state(model), mesh))
        tokenizer = (_char_tokenizer() if g.tokenizer in ("", "char")
                     else tokenization.load_tokenizer(g.tokenizer))
    else:
        raise ConfigError(f"config.generator.source must be 'hf', 'gguf' or 'random', "
                          f"got {g.source!r}")
    if len(tokenizer) > model.config.vocab_size:
        raise ConfigError(f"the generator tokenizer has {len(tokenizer)} tokens but the model's "
                          f"vocabulary is {model.config.vocab_size}")
    return model, tokenizer


def build_sampling_config(cfg: ml_collections.ConfigDict, tokenizer: Any, *,
                          use_lora: bool = True):
    """``SamplingConfig`` from ``cfg.generator.sampling`` with the tokenizer's stop/pad ids."""
    from genalign_jax import tokenization
    from genalign_jax.sampling import SamplingConfig

    s = cfg.generator.sampling
    stops = list(tokenization.stop_token_ids(tokenizer))
    if s.stop_at_newline:
        # Every token whose text contains a newline ends the example (one example per line).
        newline_ids = [i for tok, i in tokenizer.get_vocab().items()
                       if "\n" in tokenizer.convert_tokens_to_string([tok])]
        stops.extend(sorted(newline_ids))
    try:
        return SamplingConfig(
            max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k,
            top_p=s.top_p, stop_token_ids=tuple(dict.fromkeys(stops)),
            pad_token_id=tokenization.pad_token_id(tokenizer), use_lora=use_lora)
    except ValueError as err:
        raise ConfigError(f"config.generator.sampling: {err}") from err


def build_classifier(cfg: ml_collections.ConfigDict, num_labels: int, mesh: Mesh | None = None):
    """The pretrained classifier (kept in memory; each epoch trains a fresh copy)."""
    from genalign_jax import classifier as clf

    k = cfg.classifier
    if k.source == "random":
        tokenizer = _char_tokenizer()
        preset = {"tiny": "tiny_roberta"}.get(k.preset, k.preset)
        return clf.load_pretrained_classifier(preset, num_labels, tokenizer=tokenizer, mesh=mesh,
                                              seed=cfg.seed, max_length=k.max_length)
    if k.source != "hf":
        raise ConfigError(f"config.classifier.source must be 'hf' or 'random', got {k.source!r}")
    path = k.path
    if path == "embedded:minilm":
        from genalign_jax.data.assets import minilm_model_dir
        path = str(minilm_model_dir())
    if not path:
        raise ConfigError("config.classifier.path is empty")
    return clf.load_pretrained_classifier(path, num_labels, mesh=mesh, seed=cfg.seed,
                                          max_length=k.max_length)


def build_classifier_config(cfg: ml_collections.ConfigDict, num_labels: int, *,
                            show_progress: bool = False):
    """``ClassifierConfig`` for each epoch's fresh fine-tuning run."""
    from genalign_jax.classifier import ClassifierConfig

    k = cfg.classifier
    try:
        return ClassifierConfig(
            model=k.path or k.preset, num_labels=num_labels, max_length=k.max_length,
            learning_rate=k.learning_rate, weight_decay=k.weight_decay,
            warmup_ratio=k.warmup_ratio, epochs=k.epochs, batch_size=k.batch_size,
            eval_batch_size=k.eval_batch_size, grad_clip=k.grad_clip or None,
            label_smoothing=k.label_smoothing, seed=cfg.seed, reinit_from_pretrained=True,
            show_progress=show_progress)
    except ValueError as err:
        raise ConfigError(f"config.classifier: {err}") from err


@dataclasses.dataclass(frozen=True)
class DataBundle:
    """The dataset spec, its three splits, the prompt builder and the parser settings."""

    spec: Any
    splits: Any
    prompt_builder: Any
    parse_config: Any


def build_data(cfg: ml_collections.ConfigDict) -> DataBundle:
    """Loads the dataset of ``cfg.data``, draws the splits and builds prompts/parsing."""
    from genalign_jax.data import (ParseConfig, PromptBuilder, build_splits, get_dataset_spec)

    d = cfg.data
    name = d.name
    if not d.data_dir and d.get("fallback_name"):
        log.info("data.data_dir is empty: using %s instead of %s", d.fallback_name, d.name)
        name = d.fallback_name
    try:
        spec = get_dataset_spec(name)
    except KeyError as err:
        raise ConfigError(f"config.data.name: {err.args[0]}") from err
    sizes = {"icl_pool": d.icl_pool_size, "golden": d.golden_size, "test": d.test_size}
    splits = build_splits(spec, d.data_dir or None, sizes, seed=cfg.seed)
    template = d.prompt_template or None
    builder = PromptBuilder(spec, splits.icl_pool, k=d.k_shot, same_label=d.same_label,
                            seed=cfg.seed, template=template)
    parse_config = ParseConfig.for_spec(spec, min_words=d.min_words, max_words=d.max_words,
                                        near_duplicate_threshold=d.near_duplicate_threshold,
                                        icl_copy_threshold=d.icl_copy_threshold)
    log.info("data %s: %s", spec.name, splits.sizes())
    return DataBundle(spec, splits, builder, parse_config)


def build_reward_config(cfg: ml_collections.ConfigDict):
    """``RewardConfig`` from ``cfg.reward`` (loop-only fields removed)."""
    from genalign_jax.reward import RewardConfig

    values = cfg.reward.to_dict()
    for loop_only in ("invalid_reward", "distance_metric"):
        values.pop(loop_only, None)
    if values.get("clip") is not None and values["clip"] <= 0:
        values["clip"] = None
    try:
        return RewardConfig.from_mapping(values)
    except ValueError as err:
        raise ConfigError(f"config.reward: {err}") from err


def build_ppo_config(cfg: ml_collections.ConfigDict):
    """``PPOConfig`` from ``cfg.ppo`` plus the generator's LoRA and sampling temperature."""
    from genalign_jax.ppo import PPOConfig

    values = cfg.ppo.to_dict()
    g = cfg.generator
    values["temperature"] = float(g.sampling.temperature) or 1.0
    if g.lora_rank > 0:
        values.update(trainable="lora", lora_rank=int(g.lora_rank),
                      lora_alpha=float(g.lora_alpha), lora_targets=tuple(g.lora_targets))
    else:
        values["trainable"] = "full"
    try:
        return PPOConfig.from_dict(values)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"config.ppo: {err}") from err


def describe_devices() -> str:
    """One line naming the backend and device count, for the run log."""
    return f"{jax.default_backend()} x{jax.device_count()} ({jax.devices()[0].device_kind})"
