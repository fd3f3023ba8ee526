"""Everything a run is made of, built once from a :class:`~genalign_jax.config.RunConfig`.

``build_components(config)`` loads the data (splits, prompt builder, parser), the generator
(model, tokenizer, sampler settings), the pretrained classifier and the mesh, and returns them in
one frozen :class:`Components`: the stages (``rollouts.sample_rollouts``,
``scoring.score_rollouts``, ``evaluate``) read what they need from it and never a raw config.
Every expected failure (bad value, missing file or weights) surfaces here, before epoch 1, as a
:class:`~genalign_jax.config.ConfigError` or ``FileNotFoundError`` naming what is wrong.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from genalign_jax import classifier as clf
from genalign_jax import data as data_lib
from genalign_jax import generator as gen
from genalign_jax import sharding as sharding_lib
from genalign_jax.config import ConfigError, RunConfig
from genalign_jax.data import assets
from genalign_jax.hf_checkpoint import CheckpointError

log = logging.getLogger(__name__)

__all__ = ["Components", "DataBundle", "GeneratorBundle", "build_components", "build_mesh",
           "build_data", "build_generator", "build_classifier", "asset_cache_dir",
           "describe_devices"]


def asset_cache_dir() -> Path:
    """Where converted assets (e.g. GGUF tokenizers) are cached: ``$GENALIGN_CACHE`` or ~/.cache."""
    root = os.environ.get("GENALIGN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                             "genalign_jax")
    return Path(root)


@dataclasses.dataclass(frozen=True)
class DataBundle:
    """The dataset spec, its three splits (golden/test columns read once), prompts and parsing."""

    spec: data_lib.DatasetSpec
    splits: data_lib.Splits
    prompt_builder: data_lib.PromptBuilder
    parse_config: data_lib.ParseConfig
    golden: tuple[list[str], np.ndarray]
    test: tuple[list[str], np.ndarray]

    @property
    def num_labels(self) -> int:
        return self.spec.num_labels

    def eval_set(self, split: str) -> tuple[list[str], np.ndarray]:
        """Texts and labels of ``"golden"`` or ``"test"``."""
        if split not in ("golden", "test"):
            raise ValueError(f"eval split must be 'golden' or 'test', got {split!r}")
        return self.golden if split == "golden" else self.test


@dataclasses.dataclass(frozen=True)
class GeneratorBundle:
    """The generator model, its tokenizer and the sampler settings derived from them."""

    model: Any
    tokenizer: Any
    sampling: gen.SamplingConfig


@dataclasses.dataclass(frozen=True)
class Components:
    """What the stages share: config, mesh, data, generator, pretrained classifier and its config."""

    config: RunConfig
    mesh: Mesh
    data: DataBundle
    generator: GeneratorBundle
    classifier: clf.TextClassifier
    classifier_config: clf.ClassifierConfig


def build_mesh(config: RunConfig) -> Mesh:
    """The device mesh of ``config.mesh`` (after multi-host init when configured)."""
    m = config.mesh
    if m.distributed:
        sharding_lib.maybe_initialize_distributed(
            m.coordinator_address or None, m.num_processes or None,
            m.process_id if m.coordinator_address else None)
    try:
        return sharding_lib.make_mesh({"data": m.data, "fsdp": m.fsdp, "tensor": m.tensor})
    except ValueError as err:
        raise ConfigError(f"config.mesh: {err}") from err


def build_data(config: RunConfig) -> DataBundle:
    """Loads the dataset of ``config.data``, draws the splits and builds prompts/parsing."""
    d = config.data
    name = d.name
    if not d.data_dir and d.fallback_name:
        log.info("data.data_dir is empty: using %s instead of %s", d.fallback_name, d.name)
        name = d.fallback_name
    try:
        spec = data_lib.get_dataset_spec(name)
    except KeyError as err:
        raise ConfigError(f"config.data.name: {err.args[0]}") from err
    sizes = {"icl_pool": d.icl_pool_size, "golden": d.golden_size, "test": d.test_size}
    try:
        splits = data_lib.build_splits(spec, d.data_dir or None, sizes, seed=config.seed)
        builder = data_lib.PromptBuilder(spec, splits.icl_pool, k=d.k_shot,
                                         same_label=d.same_label, seed=config.seed,
                                         template=d.prompt_template or None)
    except data_lib.DataFileError:
        raise
    except (ValueError, KeyError) as err:
        raise ConfigError(f"config.data ({spec.name}): {err}") from err
    parse_config = data_lib.ParseConfig.for_spec(
        spec, min_words=d.min_words, max_words=d.max_words,
        near_duplicate_threshold=d.near_duplicate_threshold,
        icl_copy_threshold=d.icl_copy_threshold)
    columns = {role: (list(getattr(splits, role)["text"][:]),
                      np.asarray(getattr(splits, role)["label"][:])) for role in ("golden", "test")}
    for role in ("icl_pool", "golden", "test"):
        present = set(np.asarray(getattr(splits, role)["label"][:]).tolist())
        missing = [spec.label_names[i] for i in range(spec.num_labels) if i not in present]
        if missing:
            raise ConfigError(f"config.data ({spec.name}): the {role} split has no example of "
                              f"label(s) {missing}; every label needs ICL, golden and test "
                              "examples (check the data files and the split sizes)")
    log.info("data %s: %s", spec.name, splits.sizes())
    return DataBundle(spec, splits, builder, parse_config, columns["golden"], columns["test"])


def _gguf_path(config: RunConfig) -> str:
    g = config.generator
    if g.gguf_file == "smollm2":
        return str(assets.smollm2_gguf_path())
    path = g.gguf_file or g.path
    if not path:
        raise ConfigError("config.generator: source='gguf' needs gguf_file (a .gguf path or "
                          "'smollm2') or path")
    return path


def _load_generator_model(config: RunConfig, mesh: Mesh | None) -> tuple[Any, Any]:
    g = config.generator
    overrides = dict(dtype=g.dtype, param_dtype=g.param_dtype, remat=g.remat)
    if g.source == "hf":
        if not g.path:
            raise ConfigError("config.generator.path is empty (an HF folder or hub id is needed "
                              "for source='hf')")
        model = gen.load_llama(g.path, mesh=mesh, **overrides)
        tokenizer = (gen.build_char_tokenizer() if g.tokenizer == "char"
                     else gen.load_tokenizer(g.tokenizer or str(g.path)))
        return model, tokenizer
    if g.source == "gguf":
        path = _gguf_path(config)
        model = gen.load_gguf_llama(path, mesh=mesh, **overrides)
        tokenizer = (gen.load_tokenizer(g.tokenizer) if g.tokenizer
                     else gen.load_gguf_tokenizer(path, cache_dir=asset_cache_dir() / "tokenizers"))
        return model, tokenizer
    try:
        llama_config = gen.get_preset(g.preset, **overrides)
    except ValueError as err:
        raise ConfigError(f"config.generator.preset: {err}") from err
    model = gen.Llama(llama_config, rngs=nnx.Rngs(config.seed))
    if mesh is not None:
        nnx.update(model, sharding_lib.shard_state(nnx.state(model), mesh))
    tokenizer = (gen.build_char_tokenizer() if g.tokenizer in ("", "char")
                 else gen.load_tokenizer(g.tokenizer))
    return model, tokenizer


def build_generator(config: RunConfig, mesh: Mesh | None = None) -> GeneratorBundle:
    """Loads or builds the generator Llama, its tokenizer and its ``SamplingConfig``."""
    try:
        model, tokenizer = _load_generator_model(config, mesh)
    except (ConfigError, CheckpointError, OSError):
        raise
    except ValueError as err:
        raise ConfigError(f"config.generator: {err}") from err
    g = config.generator
    needed = g.max_prompt_tokens + g.sampling.max_new_tokens
    if needed > model.config.max_position_embeddings:
        raise ConfigError(f"config.generator.max_prompt_tokens ({g.max_prompt_tokens}) + "
                          f"sampling.max_new_tokens ({g.sampling.max_new_tokens}) exceed the "
                          f"model's {model.config.max_position_embeddings} positions")
    if len(tokenizer) > model.config.vocab_size:
        raise ConfigError(f"the generator tokenizer has {len(tokenizer)} tokens but the model's "
                          f"vocabulary is {model.config.vocab_size}")
    s = config.generator.sampling
    try:
        sampling = gen.SamplingConfig(
            max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k,
            top_p=s.top_p, stop_token_ids=gen.stop_token_ids(tokenizer, newline=s.stop_at_newline),
            pad_token_id=gen.pad_token_id(tokenizer),
            # make_rollout reuses the sampler's log-probs (at PPO's temperature) and hidden
            # states instead of a policy forward
            return_hidden=not config.ppo.recompute_logprobs,
            logprob_temperature=config.ppo.temperature)
    except ValueError as err:
        raise ConfigError(f"config.generator.sampling: {err}") from err
    return GeneratorBundle(model, tokenizer, sampling)


def build_classifier(config: RunConfig, num_labels: int,
                     mesh: Mesh | None = None) -> clf.TextClassifier:
    """The pretrained classifier (kept in memory; each epoch fine-tunes a fresh copy)."""
    try:
        return _load_classifier(config, num_labels, mesh)
    except (ConfigError, CheckpointError, OSError):
        raise
    except ValueError as err:
        raise ConfigError(f"config.classifier: {err}") from err


def _load_classifier(config: RunConfig, num_labels: int, mesh: Mesh | None) -> clf.TextClassifier:
    k = config.classifier
    if k.source == "random":
        preset = {"tiny": "tiny_roberta"}.get(k.preset, k.preset)
        return clf.load_pretrained_classifier(preset, num_labels, tokenizer=gen.build_char_tokenizer(),
                                              mesh=mesh, seed=config.seed, max_length=k.max_length)
    path = str(assets.minilm_model_dir()) if k.path == "embedded:minilm" else k.path
    if not path:
        raise ConfigError("config.classifier.path is empty")
    return clf.load_pretrained_classifier(path, num_labels, mesh=mesh, seed=config.seed,
                                          max_length=k.max_length)


def build_classifier_config(config: RunConfig, num_labels: int, *,
                            show_progress: bool = False) -> clf.ClassifierConfig:
    """``ClassifierConfig`` of each epoch's fresh fine-tuning run."""
    k = config.classifier
    try:
        return clf.ClassifierConfig(
            model=k.path or k.preset, num_labels=num_labels, max_length=k.max_length,
            learning_rate=k.learning_rate, weight_decay=k.weight_decay,
            warmup_ratio=k.warmup_ratio, epochs=k.epochs, batch_size=k.batch_size,
            eval_batch_size=k.eval_batch_size, grad_clip=k.grad_clip or None,
            label_smoothing=k.label_smoothing, seed=config.seed, reinit_from_pretrained=True,
            show_progress=show_progress)
    except ValueError as err:
        raise ConfigError(f"config.classifier: {err}") from err


def build_components(config: RunConfig, *, show_progress: bool = False) -> Components:
    """Builds every component of a run, in data-path order (data, generator, classifier)."""
    mesh = build_mesh(config)
    data = build_data(config)
    generator = build_generator(config, mesh)
    classifier = build_classifier(config, data.num_labels, mesh)
    classifier_config = build_classifier_config(config, data.num_labels,
                                                show_progress=show_progress)
    return Components(config, mesh, data, generator, classifier, classifier_config)


def describe_devices() -> str:
    """One line naming the backend and device count, for the run log."""
    return f"{jax.default_backend()} x{jax.device_count()} ({jax.devices()[0].device_kind})"
