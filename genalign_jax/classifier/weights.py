"""Loading Hugging Face RoBERTa/BERT checkpoints (safetensors) into ``EncoderClassifier``.

Works for base models (``RobertaModel``/``BertModel``, e.g. all-MiniLM-L6-v2),
masked-LM checkpoints (``roberta-base``: the LM head is ignored) and
sequence-classification checkpoints (the head is loaded when its number of
labels matches).  When the checkpoint has no usable head a fresh one is
initialised; a BERT checkpoint without a pooler gets a fresh pooler.  Tensors
stream through the shared loader in ``hf_checkpoint`` onto their final sharding.
``pytorch_model.bin``-only folders are rejected with a hint to convert them to
safetensors (reading them needs torch).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, PartitionSpec

from genalign_jax import hf_checkpoint
from genalign_jax import sharding as sharding_lib
from genalign_jax.classifier.encoder import (
    EncoderClassifier,
    abstract_state,
    init_head_state,
    init_pooler_state,
)
from genalign_jax.classifier.encoder_config import EncoderConfig, from_hf_config

log = logging.getLogger(__name__)

__all__ = [
    "ENCODER_RULES",
    "LoadReport",
    "abstract_encoder_classifier",
    "checkpoint_prefix",
    "encoder_checkpoint_map",
    "head_checkpoint_map",
    "load_encoder_classifier",
]

# Data parallelism only: an encoder classifier (<= 355M parameters) is replicated.
ENCODER_RULES: tuple[tuple[str, PartitionSpec], ...] = ()

_LAYER = "encoder.layer.{layer}."
_LAYER_TENSORS = {
    "query": "attention.self.query", "key": "attention.self.key",
    "value": "attention.self.value", "attn_out": "attention.output.dense",
    "intermediate": "intermediate.dense", "output": "output.dense",
}
_LAYER_NORMS = {"attn_norm": "attention.output.LayerNorm", "output_norm": "output.LayerNorm"}
# Checkpoint tensors the classifier never uses.
_ALWAYS_IGNORED = (r"position_ids$", r"token_type_ids$", r"^lm_head\.", r"^cls\.",
                   r"^(roberta|bert)\.embeddings\.position_ids$")


class LoadReport(dict):
    """What came from the checkpoint: ``prefix``, ``pooler`` and ``head`` ('loaded' or 'fresh')."""


def checkpoint_prefix(checkpoint: Any, config: EncoderConfig) -> str:
    """The prefix of encoder tensor names: ``"roberta."``, ``"bert."`` or ``""`` (base models)."""
    family = "bert." if config.model_type == "bert" else "roberta."
    for prefix in (family, "roberta.", "bert.", ""):
        if f"{prefix}embeddings.word_embeddings.weight" in checkpoint:
            return prefix
    raise hf_checkpoint.CheckpointError(
        "checkpoint has no encoder embeddings (looked for 'embeddings.word_embeddings.weight' "
        "with prefixes 'roberta.', 'bert.' and none)")


def encoder_checkpoint_map(config: EncoderConfig, prefix: str,
                           with_pooler: bool) -> dict[str, hf_checkpoint.TensorSpec]:
    """Our ``encoder/...`` parameter paths → HF tensor names (``[out, in]`` weights transposed)"""
    spec = {
        "encoder/embeddings/word_embeddings": hf_checkpoint.TensorSpec(
            f"{prefix}embeddings.word_embeddings.weight"),
        "encoder/embeddings/position_embeddings": hf_checkpoint.TensorSpec(
            f"{prefix}embeddings.position_embeddings.weight"),
        "encoder/embeddings/token_type_embeddings": hf_checkpoint.TensorSpec(
            f"{prefix}embeddings.token_type_embeddings.weight"),
        "encoder/embeddings/norm/scale": hf_checkpoint.TensorSpec(
            f"{prefix}embeddings.LayerNorm.weight"),
        "encoder/embeddings/norm/bias": hf_checkpoint.TensorSpec(
            f"{prefix}embeddings.LayerNorm.bias"),
    }
    for ours, theirs in _LAYER_TENSORS.items():
        spec[f"encoder/layers/{ours}/kernel"] = hf_checkpoint.TensorSpec(
            f"{prefix}{_LAYER}{theirs}.weight", transform=np.transpose, stacked=True)
        spec[f"encoder/layers/{ours}/bias"] = hf_checkpoint.TensorSpec(
            f"{prefix}{_LAYER}{theirs}.bias", stacked=True)
    for ours, theirs in _LAYER_NORMS.items():
        spec[f"encoder/layers/{ours}/scale"] = hf_checkpoint.TensorSpec(
            f"{prefix}{_LAYER}{theirs}.weight", stacked=True)
        spec[f"encoder/layers/{ours}/bias"] = hf_checkpoint.TensorSpec(
            f"{prefix}{_LAYER}{theirs}.bias", stacked=True)
    if with_pooler:
        spec["encoder/pooler/kernel"] = hf_checkpoint.TensorSpec(
            f"{prefix}pooler.dense.weight", transform=np.transpose)
        spec["encoder/pooler/bias"] = hf_checkpoint.TensorSpec(f"{prefix}pooler.dense.bias")
    return spec


def head_checkpoint_map(config: EncoderConfig) -> dict[str, hf_checkpoint.TensorSpec]:
    """``head/...`` paths → tensors of ``RobertaForSequenceClassification`` / ``BertFor...``."""
    if config.head_type == "roberta":
        t = hf_checkpoint.TensorSpec
        return {
            "head/dense/kernel": t("classifier.dense.weight", np.transpose),
            "head/dense/bias": t("classifier.dense.bias"),
            "head/out_proj/kernel": t("classifier.out_proj.weight", np.transpose),
            "head/out_proj/bias": t("classifier.out_proj.bias"),
        }
    return {
        "head/out_proj/kernel": hf_checkpoint.TensorSpec("classifier.weight", np.transpose),
        "head/out_proj/bias": hf_checkpoint.TensorSpec("classifier.bias"),
    }


def abstract_encoder_classifier(config: EncoderConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """Graph definition and abstract (shape-only) state, without allocating weights."""
    return abstract_state(config)


def _head_matches(checkpoint: Any, config: EncoderConfig) -> bool:
    spec = head_checkpoint_map(config)
    if not all(s.source in checkpoint for s in spec.values()):
        return False
    found = checkpoint.shape(spec["head/out_proj/bias"].source)
    if tuple(found) != (config.num_labels,):
        log.warning("checkpoint head has %s labels, %d requested: using a fresh head",
                    found[0] if found else "?", config.num_labels)
        return False
    return True


def _subset(state: nnx.State, paths: Mapping[str, Any]) -> nnx.State:
    """The leaves of ``state`` whose path is in ``paths`` (same nesting)."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(
            state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]:
        name = sharding_lib.param_path(path)
        if name in paths:
            flat[name] = leaf
    nested: dict = {}
    for name, leaf in flat.items():
        node = nested
        *parents, last = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = leaf
    return nnx.State(nested)


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def load_encoder_classifier(name_or_path: str | os.PathLike, num_labels: int | None = None, *,
                            mesh: Mesh | None = None,
                            rules=ENCODER_RULES, seed: int | jax.Array = 0,
                            checkpoint: Any = None, config: EncoderConfig | None = None,
                            **config_overrides: Any) -> tuple[EncoderClassifier, LoadReport]:
    """Loads a RoBERTa/BERT checkpoint from a local folder or the HF cache.

    Args:
      name_or_path: folder with ``config.json`` and ``*.safetensors``, or a hub id.
      num_labels: classes of the head (default: the checkpoint's ``id2label``).
      mesh: if given, parameters are placed with ``rules`` (default: replicated).
      seed: int or PRNG key for the fresh head / pooler when the checkpoint lacks them.
      checkpoint, config: an already opened tensor source and its config.
      **config_overrides: e.g. ``dtype="bfloat16"``.

    Returns ``(model, report)``; ``report`` says which parts were freshly initialised.
    """
    if num_labels is not None:
        config_overrides["num_labels"] = int(num_labels)
    checkpoint, config = hf_checkpoint.open_model_source(name_or_path, checkpoint, config,
                                                      from_hf_config, config_overrides,
                                                      "load_encoder_classifier")
    prefix = checkpoint_prefix(checkpoint, config)
    with_pooler = config.use_pooler and f"{prefix}pooler.dense.weight" in checkpoint
    with_head = _head_matches(checkpoint, config)
    spec = encoder_checkpoint_map(config, prefix, with_pooler)
    if with_head:
        spec.update(head_checkpoint_map(config))
    graphdef, abstract = abstract_encoder_classifier(config)
    shardings = None if mesh is None else sharding_lib.state_shardings(abstract, mesh, rules)
    ignore = list(_ALWAYS_IGNORED)
    if not with_pooler:
        ignore.append(r"pooler\.dense\.")
    if not with_head:
        ignore.append(r"^classifier\.")
    to_load = _subset(abstract, spec)
    load_shardings = None if shardings is None else _subset(shardings, spec)
    loaded = hf_checkpoint.load_into_state(to_load, checkpoint, spec, shardings=load_shardings,
                                        num_layers=config.num_layers, ignore_unused=ignore)
    key = seed if isinstance(seed, jax.Array) else jax.random.key(int(seed))
    head_key, pooler_key = jax.random.split(key)
    state = loaded

    def place(tree, *where):  # fresh parts are committed like the loaded ones
        target = jax.local_devices()[0] if shardings is None else _get(shardings, where)
        return jax.device_put(tree, target)

    if not with_head:
        state["head"] = place(init_head_state(config, head_key), "head")
    if config.use_pooler and not with_pooler:
        log.warning("checkpoint %s has no pooler: initialising a fresh one", name_or_path)
        state["encoder"]["pooler"] = place(init_pooler_state(config, pooler_key),
                                           "encoder", "pooler")
    pooler_source = "loaded" if with_pooler else "fresh"
    report = LoadReport(prefix=prefix, head="loaded" if with_head else "fresh",
                        pooler=pooler_source if config.use_pooler else None)
    log.info("loaded %s encoder (%d layers, %.1fM params) from %s; head %s", config.model_type,
             config.num_layers, config.num_params / 1e6, name_or_path, report["head"])
    return nnx.merge(graphdef, state), report
