"""The classifier's compiled steps, held by one hashable ``ClassifierProgram``.

A program is the static part of training/evaluating one model graph: the
``nnx.GraphDef``, the optimiser settings and whether dropout is on.  It is a
frozen, hashable value passed to ``jax.jit`` as a static argument (like
``ppo.PPOProgram``), so jax's own jit cache holds one executable per
(program, input shapes) and there is no name-keyed cache of ours.  Two
programs built from equal settings are equal and share their executables.

* ``train_step``: loss, gradients, clipping + Adam moments over one flattened
  vector, decoupled weight decay and the update.  The learning rate, weight
  decay and label smoothing are traced scalars, so schedules never recompile.
* ``eval_step`` / ``embed_step`` / ``copy``: depend only on the graph, so they
  are shared by every program of that graph.

Batches have a fixed number of rows and a bucketed length (``batching.py``);
repeated calls with the same shapes compile nothing
(``genalign_jax.compile_counter.CompileCounter`` counts).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from genalign_jax import sharding as sharding_lib

__all__ = ["ClassifierProgram", "GraphKey", "cross_entropy", "decays", "example_losses"]


def decays(path: str) -> bool:
    """AdamW decays every weight except biases and layer-norm parameters (as HF Trainer)."""
    return re.search(r"(bias|norm)", path) is None


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: jax.Array | float
                  ) -> jax.Array:
    """Per-example cross-entropy ``[B]`` (float32) with label smoothing ``smoothing``."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    k = logits.shape[-1]
    target = jax.nn.one_hot(labels, k) * (1.0 - smoothing) + smoothing / k
    return -jnp.sum(target * logp, axis=-1)


@functools.lru_cache(maxsize=16)
def _optimizer(grad_clip: float | None, b1: float, b2: float,
               eps: float) -> optax.GradientTransformation:
    """Clipping + Adam moments over one flattened vector (few large kernels: fast to compile)."""
    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip else []
    parts.append(optax.scale_by_adam(b1, b2, eps))
    return optax.flatten(optax.chain(*parts))


@dataclasses.dataclass(frozen=True, eq=False)
class GraphKey:
    """A ``GraphDef`` as a static jit argument, its hash computed once."""

    graphdef: nnx.GraphDef

    def __post_init__(self):
        object.__setattr__(self, "_hash", hash(self.graphdef))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GraphKey) and (other.graphdef is self.graphdef
                                              or other.graphdef == self.graphdef)


@dataclasses.dataclass(frozen=True)
class ClassifierProgram:
    """Static (hashable) description of the compiled steps of one classifier graph.

    Attributes:
      graphdef: the ``EncoderClassifier`` graph.
      grad_clip: global-norm clip of the gradients (None: no clipping).
      adam_b1, adam_b2, adam_eps: Adam's moment decays and epsilon.
      dropout: whether ``train_step`` applies dropout.
    """

    graphdef: nnx.GraphDef
    grad_clip: float | None = 1.0
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    dropout: bool = True

    def __post_init__(self):
        # GraphDef hashing walks the whole graph (~0.1 ms): hash once, not on every jitted call.
        object.__setattr__(self, "_graph", GraphKey(self.graphdef))
        object.__setattr__(self, "_hash", hash((self._graph, self.grad_clip, self.adam_b1,
                                                self.adam_b2, self.adam_eps, self.dropout)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def tx(self) -> optax.GradientTransformation:
        """The optimiser: clipping + Adam moments (lr and weight decay are applied in the step)."""
        return _optimizer(self.grad_clip, float(self.adam_b1), float(self.adam_b2),
                          float(self.adam_eps))

    def init_opt_state(self, params: nnx.State) -> Any:
        """A fresh optimiser state for ``params`` (not yet placed on devices)."""
        return self.tx.init(params)

    def train_step(self, params: nnx.State, opt_state: Any, tokens: jax.Array, mask: jax.Array,
                   labels: jax.Array, weights: jax.Array, lr: Any, weight_decay: Any,
                   smoothing: Any, key: jax.Array, step: Any
                   ) -> tuple[nnx.State, Any, jax.Array, jax.Array]:
        """One AdamW step; donates ``params`` and ``opt_state``.

        Returns ``(params, opt_state, weighted mean loss, global gradient norm)``.
        """
        return _train_step(self, params, opt_state, tokens, mask, labels, weights, lr,
                           weight_decay, smoothing, key, step)

    def eval_step(self, params: nnx.State, tokens: jax.Array, mask: jax.Array,
                  labels: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Logits ``[B, K]`` and unsmoothed per-example cross-entropy ``[B]`` (no dropout)."""
        return _eval_step(self._graph, params, tokens, mask, labels)

    def embed_step(self, params: nnx.State, tokens: jax.Array,
                   mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Mean-pooled and first-token final hidden states, both ``[B, D]`` float32."""
        return _embed_step(self._graph, params, tokens, mask)

    def adam_moments(self, opt_state: Any) -> tuple[jax.Array, jax.Array]:
        """``(count, nu)`` of Adam in ``opt_state``: the step count and the second moment, one
        flat vector in ``jax.tree.leaves(params)`` order (as ``optax.flatten`` keeps it)."""
        found = [s for s in jax.tree.leaves(
            opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
            if isinstance(s, optax.ScaleByAdamState)]
        if len(found) != 1:
            raise ValueError("the optimiser state has no (or several) Adam states")
        return found[0].count, found[0].nu

    def copy(self, tree: Any) -> Any:
        """A device copy of ``tree`` (training donates its copy, never the pretrained weights)."""
        return _copy_tree(tree)


def example_losses(graphdef: nnx.GraphDef, params: nnx.State, tokens: jax.Array,
                   mask: jax.Array, labels: jax.Array, smoothing: Any,
                   dropout_key: jax.Array | None = None) -> jax.Array:
    """Per-example training loss ``[B]`` (cross-entropy with ``smoothing``), float32."""
    logits = nnx.merge(graphdef, params)(tokens, mask, dropout_key=dropout_key)
    return cross_entropy(logits, labels, smoothing)


@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(1, 2))
def _train_step(program: ClassifierProgram, params, opt_state, tokens, mask, labels, weights,
                lr, weight_decay, smoothing, key, step):
    dropout_key = jax.random.fold_in(key, step) if program.dropout else None

    def loss_fn(p):
        per_example = example_losses(program.graphdef, p, tokens, mask, labels, smoothing,
                                     dropout_key)
        return jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1e-9)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = program.tx.update(grads, opt_state, params)

    def apply(path, p, u):
        if decays(sharding_lib.param_path(path)):
            u = u + weight_decay * p.astype(u.dtype)
        return (p - lr * u).astype(p.dtype)

    params = jax.tree_util.tree_map_with_path(apply, params, updates)
    grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32)))
                             for g in jax.tree.leaves(grads)))
    return params, opt_state, loss, grad_norm


@functools.partial(jax.jit, static_argnums=(0,))
def _eval_step(graph, params, tokens, mask, labels):
    logits = nnx.merge(graph.graphdef, params)(tokens, mask)
    return logits, cross_entropy(logits, labels, 0.0)


@functools.partial(jax.jit, static_argnums=(0,))
def _embed_step(graph, params, tokens, mask):
    hidden = nnx.merge(graph.graphdef, params).encoder(tokens, mask).astype(jnp.float32)
    m = mask[..., None].astype(jnp.float32)
    mean = jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
    return mean, hidden[:, 0]


@jax.jit
def _copy_tree(tree):
    return jax.tree.map(jnp.copy, tree)
