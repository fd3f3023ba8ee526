"""RoBERTa / BERT encoder with a sequence-classification head, in Flax NNX.

One module serves both families, selected by ``EncoderConfig`` (``encoder_config.py``):

* ``position_style="roberta"``: positions start at ``pad_token_id + 1`` and
  count real tokens only (HF ``create_position_ids_from_input_ids``);
  ``"absolute"``: BERT positions ``0 .. T-1``.
* ``head_type="roberta"``: HF ``RobertaClassificationHead`` (dropout, dense,
  tanh, dropout, out_proj on the ``<s>`` token); ``"bert"``: the pooler
  (dense + tanh on ``[CLS]``, part of the pretrained encoder) then dropout and
  one linear layer, as ``BertForSequenceClassification``.

Layers are post-LN transformer blocks with exact (erf) GELU, stacked along a
leading ``num_layers`` axis and run with one ``jax.lax.scan``.  Layer norms and
softmax accumulate in float32 whatever ``dtype`` is.  Dropout is explicit: pass
``dropout_key`` to train with dropout, omit it for deterministic inference (an
``impl="rbg"`` key compiles much faster than the default threefry on CPU and
runs faster on GPU).
Matches ``RobertaForSequenceClassification`` / ``BertModel`` to ~1e-6 in fp32
(``tests/classifier/test_encoder.py``).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genalign_jax.classifier.encoder_config import ACTIVATIONS, EncoderConfig
from genalign_jax.ops import token_matmul
from genalign_jax.sharding import constrain_batch, param_path

__all__ = [
    "Encoder",
    "ClassificationHead",
    "EncoderClassifier",
    "encoder_positions",
    "run_layers",
    "init_head_state",
    "init_pooler_state",
    "create_encoder_classifier",
    "abstract_state",
]

_ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}
assert set(_ACTIVATIONS) == set(ACTIVATIONS)


# --------------------------------------------------------------------------- layers


def _dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout; the identity when ``key`` is None or ``rate`` is 0."""
    if key is None or rate <= 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


class Dense(nnx.Module):
    """``y = x @ kernel + bias`` with ``kernel`` ``[in, out]`` (HF weights are transposed)."""

    def __init__(self, in_features: int, out_features: int, *, config: EncoderConfig,
                 rngs: nnx.Rngs):
        pdtype = jnp.dtype(config.param_dtype)
        init = nnx.initializers.normal(config.initializer_range)
        self.kernel = nnx.Param(init(rngs.params(), (in_features, out_features), pdtype))
        self.bias = nnx.Param(jnp.zeros((out_features,), pdtype))
        self.dtype = jnp.dtype(config.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        return token_matmul(x, self.kernel[...].astype(self.dtype)) + self.bias[...].astype(self.dtype)


class LayerNorm(nnx.Module):
    """Layer norm with scale and bias, computed in float32."""

    def __init__(self, dim: int, *, config: EncoderConfig):
        pdtype = jnp.dtype(config.param_dtype)
        self.scale = nnx.Param(jnp.ones((dim,), pdtype))
        self.bias = nnx.Param(jnp.zeros((dim,), pdtype))
        self.eps = config.layer_norm_eps
        self.dtype = jnp.dtype(config.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


class Embeddings(nnx.Module):
    """Word + position + token-type embeddings followed by a layer norm."""

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        pdtype = jnp.dtype(config.param_dtype)
        init = nnx.initializers.normal(config.initializer_range)
        d = config.hidden_size
        self.word_embeddings = nnx.Param(init(rngs.params(), (config.vocab_size, d), pdtype))
        self.position_embeddings = nnx.Param(
            init(rngs.params(), (config.max_position_embeddings, d), pdtype))
        self.token_type_embeddings = nnx.Param(
            init(rngs.params(), (config.type_vocab_size, d), pdtype))
        self.norm = LayerNorm(d, config=config)

    def __call__(self, tokens: jax.Array, positions: jax.Array,
                 token_type_ids: jax.Array) -> jax.Array:
        x = sum(jnp.take(table[...], ids, axis=0).astype(jnp.float32) for table, ids in (
            (self.word_embeddings, tokens), (self.position_embeddings, positions),
            (self.token_type_embeddings, token_type_ids)))
        return self.norm(x)


class Layer(nnx.Module):
    """One post-LN transformer layer (self-attention, then a GELU feed-forward)."""

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        d, f = config.hidden_size, config.intermediate_size
        self.query = Dense(d, d, config=config, rngs=rngs)
        self.key = Dense(d, d, config=config, rngs=rngs)
        self.value = Dense(d, d, config=config, rngs=rngs)
        self.attn_out = Dense(d, d, config=config, rngs=rngs)
        self.attn_norm = LayerNorm(d, config=config)
        self.intermediate = Dense(d, f, config=config, rngs=rngs)
        self.output = Dense(f, d, config=config, rngs=rngs)
        self.output_norm = LayerNorm(d, config=config)
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.act = config.hidden_act
        self.hidden_dropout = config.hidden_dropout
        self.attention_dropout = config.attention_dropout

    def __call__(self, x: jax.Array, key_mask: jax.Array, key: jax.Array | None) -> jax.Array:
        b, t, _ = x.shape
        keys = (None,) * 3 if key is None else tuple(jax.random.split(key, 3))
        q = self.query(x).reshape(b, t, self.num_heads, self.head_dim)
        k = self.key(x).reshape(b, t, self.num_heads, self.head_dim)
        v = self.value(x).reshape(b, t, self.num_heads, self.head_dim)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        logits = logits / math.sqrt(self.head_dim)
        logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        probs = _dropout(jax.nn.softmax(logits, axis=-1), self.attention_dropout, keys[0])
        attn = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v).reshape(b, t, -1)
        x = self.attn_norm(x + _dropout(self.attn_out(attn), self.hidden_dropout, keys[1]))
        hidden = _ACTIVATIONS[self.act](self.intermediate(x))
        return self.output_norm(x + _dropout(self.output(hidden), self.hidden_dropout, keys[2]))


def encoder_positions(mask: jax.Array, config: EncoderConfig) -> jax.Array:
    """Default positions for a padded batch (RoBERTa padding offset or BERT absolute)."""
    mask = mask.astype(jnp.int32)
    if config.position_style == "roberta":
        return jnp.cumsum(mask, axis=-1) * mask + config.pad_token_id
    return jnp.broadcast_to(jnp.arange(mask.shape[-1], dtype=jnp.int32), mask.shape)


def run_layers(graphdef: nnx.GraphDef, layer_state: nnx.State, x: jax.Array, key_mask: jax.Array,
               layer_keys: jax.Array | None = None, unroll: bool = True) -> jax.Array:
    """Runs stacked layers (``layer_state`` has a leading layer axis) over ``x`` with one scan.

    Any contiguous slice of the stack works, so callers can split the encoder (influence
    differentiates only its top layers).  ``layer_keys``: one dropout key per layer, or None.
    ``unroll``: straight-line layers (``EncoderConfig.unroll_layers``) or a rolled loop.
    """

    def body(h, xs):
        state, key = xs
        return nnx.merge(graphdef, state)(h, key_mask, key), None

    x, _ = jax.lax.scan(body, x, (layer_state, layer_keys), unroll=unroll)
    return x


class Encoder(nnx.Module):
    """Embeddings, stacked layers and (BERT) the pooler."""

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embeddings = Embeddings(config, rngs=rngs)

        @nnx.split_rngs(splits=config.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_layers(rngs: nnx.Rngs) -> Layer:
            return Layer(config, rngs=rngs)

        self.layers = make_layers(rngs)
        if config.use_pooler:
            self.pooler = Dense(config.hidden_size, config.hidden_size, config=config, rngs=rngs)
        else:
            self.pooler = nnx.data(None)

    def __call__(self, tokens: jax.Array, mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None, positions: jax.Array | None = None,
                 dropout_key: jax.Array | None = None) -> jax.Array:
        """Final hidden states ``[B, T, D]`` of ``tokens`` ``[B, T]`` (``mask``: 1 = real token)."""
        cfg = self.config
        if mask is None:
            mask = jnp.ones(tokens.shape, jnp.int32)
        if positions is None:
            positions = encoder_positions(mask, cfg)
        if token_type_ids is None:
            token_type_ids = jnp.zeros(tokens.shape, jnp.int32)
        emb_key = layer_keys = None
        if dropout_key is not None:
            emb_key, layers_key = jax.random.split(dropout_key)
            layer_keys = jax.random.split(layers_key, cfg.num_layers)
        x = self.embeddings(tokens, positions, token_type_ids)
        x = constrain_batch(_dropout(x, cfg.hidden_dropout, emb_key))
        graphdef, layer_state = nnx.split(self.layers)
        return run_layers(graphdef, layer_state, x, mask.astype(bool), layer_keys,
                          unroll=cfg.unroll_layers)

    def pool(self, hidden: jax.Array) -> jax.Array:
        """BERT pooler output ``tanh(dense(hidden[:, 0]))``."""
        if self.pooler is None:
            raise ValueError("this encoder has no pooler (EncoderConfig.use_pooler=False)")
        return jnp.tanh(self.pooler(hidden[:, 0]))


class ClassificationHead(nnx.Module):
    """RoBERTa head (dense, tanh, out_proj on ``<s>``) or BERT head (out_proj on the pooler)."""

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        d = config.hidden_size
        if config.head_type == "roberta":
            self.dense = Dense(d, d, config=config, rngs=rngs)
        else:
            self.dense = nnx.data(None)
        self.out_proj = Dense(d, config.num_labels, config=config, rngs=rngs)
        rate = config.classifier_dropout
        self.dropout = config.hidden_dropout if rate is None else rate

    def __call__(self, features: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """Logits (float32) from ``[B, D]`` features (``<s>`` hidden state or pooled output)."""
        keys = (None, None) if key is None else tuple(jax.random.split(key))
        x = _dropout(features, self.dropout, keys[0])
        if self.dense is not None:
            x = _dropout(jnp.tanh(self.dense(x)), self.dropout, keys[1])
        return self.out_proj(x).astype(jnp.float32)


class EncoderClassifier(nnx.Module):
    """Encoder plus classification head: ``model(tokens, mask) -> logits [B, num_labels]``."""

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.encoder = Encoder(config, rngs=rngs)
        self.head = ClassificationHead(config, rngs=rngs)

    def features(self, hidden: jax.Array) -> jax.Array:
        """The head's input: pooled output (BERT) or the first token's hidden state (RoBERTa)."""
        if self.config.head_type == "bert":
            return self.encoder.pool(hidden)
        return hidden[:, 0]

    def __call__(self, tokens: jax.Array, mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None, dropout_key: jax.Array | None = None,
                 return_hidden: bool = False):
        """Logits ``[B, num_labels]`` (float32), plus final hidden states if ``return_hidden``."""
        enc_key = head_key = None
        if dropout_key is not None:
            enc_key, head_key = jax.random.split(dropout_key)
        hidden = self.encoder(tokens, mask, token_type_ids, dropout_key=enc_key)
        logits = self.head(self.features(hidden), head_key)
        return (logits, hidden) if return_hidden else logits


@functools.lru_cache(maxsize=32)
def abstract_state(config: EncoderConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """Graph definition and shape-only state of ``EncoderClassifier(config)``.

    Cached per config and shared: callers must not mutate the returned state.
    """
    return nnx.split(nnx.eval_shape(lambda: EncoderClassifier(config, rngs=nnx.Rngs(0))))


def _host_init(abstract: nnx.State, config: EncoderConfig, key: jax.Array | int) -> nnx.State:
    """Random weights drawn on the host, as HF ``_init_weights`` does.

    Kernels and embeddings ~ N(0, initializer_range), biases 0, norm scales 1.
    Nothing is compiled (a jitted init of even a tiny model costs seconds of
    XLA:CPU compile time, once per shape), so a fresh head per training call is free.
    """
    key = jax.random.key(key) if isinstance(key, (int, np.integer)) else key
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)))

    def leaf(path, x):
        name = param_path(path)
        if name.endswith("bias"):
            value = np.zeros(x.shape, np.float32)
        elif name.endswith("scale"):
            value = np.ones(x.shape, np.float32)
        else:
            value = rng.normal(0.0, config.initializer_range, x.shape).astype(np.float32)
        return jnp.asarray(value, x.dtype)

    return jax.tree_util.tree_map_with_path(leaf, abstract)


def create_encoder_classifier(config: EncoderConfig,
                              key: jax.Array | int = 0) -> EncoderClassifier:
    """A randomly initialised model with host-drawn weights (see ``_host_init``).

    Much faster than ``EncoderClassifier(config, rngs=...)``, which compiles
    every initialiser op separately on first use.
    """
    graphdef, abstract = abstract_state(config)
    return nnx.merge(graphdef, _host_init(abstract, config, key))


def init_head_state(config: EncoderConfig, key: jax.Array | int) -> nnx.State:
    """Fresh random head weights (dense/out_proj ~ N(0, initializer_range), zero biases)."""
    return _host_init(abstract_state(config)[1]["head"], config, key)


def init_pooler_state(config: EncoderConfig, key: jax.Array | int) -> nnx.State:
    """Fresh random pooler weights, for BERT checkpoints saved without a pooler."""
    if not config.use_pooler:
        raise ValueError("init_pooler_state: the config has use_pooler=False")
    return _host_init(abstract_state(config)[1]["encoder"]["pooler"], config, key)
