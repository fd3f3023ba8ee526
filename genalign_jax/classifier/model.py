"""The classifier as one value, ``TextClassifier`` (graph, weights, tokenizer, mesh), and how
to get one.

``load_pretrained_classifier`` reads a checkpoint folder / hub id (or builds a random preset);
``build_classifier`` wraps a config with random weights.  Load once and pass the
``TextClassifier`` around: nothing here caches models behind the caller's back.
Also the two placement helpers every compiled step's inputs go through, so that
inputs are committed like the steps' outputs (otherwise jit sees a new cache key
and recompiles).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from genalign_jax import hf_checkpoint
from genalign_jax import sharding as sharding_lib
from genalign_jax.classifier import batching
from genalign_jax.classifier.encoder import EncoderClassifier, create_encoder_classifier
from genalign_jax.classifier.encoder_config import PRESETS, EncoderConfig, get_preset
from genalign_jax.classifier.weights import ENCODER_RULES, load_encoder_classifier

log = logging.getLogger(__name__)

__all__ = [
    "TextClassifier",
    "build_classifier",
    "load_pretrained_classifier",
    "resolve_mesh",
    "as_key",
    "place_params",
    "put_rows",
]


@dataclasses.dataclass(frozen=True, eq=False)
class TextClassifier:
    """An encoder classifier's graph, weights and tokenizer.

    ``params`` are the current weights; ``pretrained`` the weights as loaded
    (shared between copies, never donated), from which training restarts.
    """

    config: EncoderConfig
    graphdef: nnx.GraphDef
    params: nnx.State
    tokenizer: Any
    pretrained: nnx.State
    mesh: Mesh | None = None
    max_length: int = 128
    length_buckets: tuple[int, ...] = batching.DEFAULT_BUCKETS
    eval_batch_size: int = 64
    source: str = ""

    @property
    def num_labels(self) -> int:
        return self.config.num_labels

    @property
    def module(self) -> EncoderClassifier:
        """The NNX module with the current weights (for direct calls)."""
        return nnx.merge(self.graphdef, self.params)

    def replace(self, **changes: Any) -> "TextClassifier":
        """A copy with ``changes`` applied (e.g. ``max_length=64``)."""
        return dataclasses.replace(self, **changes)


def resolve_mesh(mesh: Mesh | str | None) -> Mesh | None:
    """``"auto"``: a mesh over every device when there are several, else None."""
    if isinstance(mesh, str):
        if mesh != "auto":
            raise ValueError(f"mesh must be a Mesh, None or 'auto', got {mesh!r}")
        return sharding_lib.make_mesh() if jax.device_count() > 1 else None
    return mesh


def as_key(rng: int | jax.Array | None, seed: int) -> jax.Array:
    """A typed PRNG key from an int, a key (typed or raw ``uint32[2]``) or None (``seed``)."""
    if rng is None or isinstance(rng, (int, np.integer)):
        return jax.random.key(seed if rng is None else int(rng))
    rng = jnp.asarray(rng)
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return rng
    if rng.shape == (2,) and rng.dtype == jnp.uint32:
        return jax.random.wrap_key_data(rng)
    raise ValueError(f"rng must be an int, a PRNG key or None, got {rng.dtype}{rng.shape}")


def place_params(tree: Any, mesh: Mesh | None) -> Any:
    """Commits parameters to their device(s): the first device, or replicated over ``mesh``.

    Loaded checkpoints are committed too; mixing committed and uncommitted
    arrays would give jit a different cache key and recompile.
    """
    if mesh is None:
        return jax.device_put(tree, jax.local_devices()[0])
    return jax.device_put(tree, sharding_lib.state_shardings(tree, mesh, ENCODER_RULES))


def put_rows(array: np.ndarray, mesh: Mesh | None) -> jax.Array:
    """A host batch ``[rows, ...]`` on device, rows split over the mesh's batch axes."""
    if mesh is None:
        return jnp.asarray(array)
    return jax.device_put(array, sharding_lib.batch_sharding(mesh, array.ndim))


def build_classifier(config: EncoderConfig, tokenizer: Any, *, seed: int | jax.Array = 0,
                     mesh: Mesh | str | None = "auto", max_length: int | None = None,
                     source: str = "") -> TextClassifier:
    """A randomly initialised classifier (tests, benchmarks, training from scratch)."""
    mesh = resolve_mesh(mesh)
    graphdef, state = nnx.split(create_encoder_classifier(config, as_key(seed, 0)))
    state = place_params(state, mesh)
    return _make(config, graphdef, state, tokenizer, mesh, max_length, source)


def _make(config: EncoderConfig, graphdef: nnx.GraphDef, state: nnx.State, tokenizer: Any,
          mesh: Mesh | None, max_length: int | None, source: str) -> TextClassifier:
    if tokenizer is None:
        raise ValueError("a tokenizer is required (pass tokenizer=...)")
    max_length = int(max_length or min(512, config.max_tokens))
    if max_length > config.max_tokens:
        raise ValueError(f"max_length={max_length} exceeds what the position table allows "
                         f"({config.max_tokens} tokens)")
    return TextClassifier(config=config, graphdef=graphdef, params=state, tokenizer=tokenizer,
                          pretrained=state, mesh=mesh, max_length=max_length, source=source)


def load_pretrained_classifier(name_or_path: str | os.PathLike, num_labels: int | None = None, *,
                               tokenizer: Any = None, mesh: Mesh | str | None = "auto",
                               seed: int | jax.Array = 0, max_length: int | None = None,
                               **config_overrides: Any) -> TextClassifier:
    """Loads encoder weights and tokenizer from a local folder / HF cache (or builds a preset).

    ``name_or_path`` is a checkpoint folder or hub id (``roberta-base``), or a
    preset name from ``encoder_config.PRESETS`` (random weights; pass ``tokenizer``).
    The head is fresh (``seed``) unless the checkpoint has one with
    ``num_labels`` outputs.  ``config_overrides`` go to ``EncoderConfig``
    (e.g. ``dtype="bfloat16"``).  Every call reads the checkpoint again: load once.
    """
    name = os.fspath(name_or_path)
    if name in PRESETS and not os.path.exists(name):
        overrides = dict(config_overrides)
        if num_labels is not None:
            overrides["num_labels"] = int(num_labels)
        return build_classifier(get_preset(name, **overrides), tokenizer, seed=seed, mesh=mesh,
                                max_length=max_length, source=name)
    folder = hf_checkpoint.resolve_checkpoint(name)
    mesh = resolve_mesh(mesh)
    model, report = load_encoder_classifier(folder, num_labels, mesh=mesh, seed=seed,
                                            **config_overrides)
    if tokenizer is None:
        from transformers import AutoTokenizer  # heavy import (transformers), only when needed
        tokenizer = AutoTokenizer.from_pretrained(folder)
    graphdef, state = nnx.split(model)
    log.info("classifier from %s: head %s", name, report["head"])
    return _make(model.config, graphdef, state, tokenizer, mesh, max_length, name)
