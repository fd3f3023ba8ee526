"""RoBERTa / BERT encoder with a sequence-classification head, in Flax NNX.

One module serves both families, selected by ``EncoderConfig``:

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
(``tests/models/test_roberta.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genalign_jax.hf_checkpoint import read_hf_config

from genalign_jax.sharding import constrain_batch, param_path

__all__ = [
    "EncoderConfig",
    "Encoder",
    "ClassificationHead",
    "EncoderClassifier",
    "PRESETS",
    "get_preset",
    "from_hf_config",
    "encoder_positions",
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
_ROBERTA_TYPES = ("roberta", "xlm-roberta", "camembert")
_BERT_TYPES = ("bert",)


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Architecture, head and numerics of a RoBERTa/BERT encoder classifier.

    ``dtype`` is the compute dtype and ``param_dtype`` the storage dtype (train
    with ``dtype='bfloat16', param_dtype='float32'`` for mixed precision).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu"
    pad_token_id: int = 1
    position_style: str = "roberta"
    use_pooler: bool = False
    head_type: str = "roberta"
    num_labels: int = 2
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    classifier_dropout: float | None = None
    initializer_range: float = 0.02
    model_type: str = "roberta"
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "max_position_embeddings", "type_vocab_size", "num_labels"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"EncoderConfig.{name} must be positive, "
                                 f"got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"EncoderConfig.hidden_size ({self.hidden_size}) is not divisible by "
                             f"num_heads ({self.num_heads})")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"EncoderConfig.hidden_act {self.hidden_act!r} is not supported "
                             f"(supported: {sorted(_ACTIVATIONS)})")
        if self.position_style not in ("roberta", "absolute"):
            raise ValueError(f"EncoderConfig.position_style must be 'roberta' or 'absolute', "
                             f"got {self.position_style!r}")
        if self.head_type not in ("roberta", "bert"):
            raise ValueError(f"EncoderConfig.head_type must be 'roberta' or 'bert', "
                             f"got {self.head_type!r}")
        if self.head_type == "bert" and not self.use_pooler:
            raise ValueError("EncoderConfig.head_type='bert' classifies the pooled output and "
                             "needs use_pooler=True")
        for name in ("hidden_dropout", "attention_dropout", "classifier_dropout"):
            rate = getattr(self, name)
            if rate is not None and not 0.0 <= rate < 1.0:
                raise ValueError(f"EncoderConfig.{name} must be in [0, 1), got {rate}")
        for name in ("dtype", "param_dtype"):
            try:
                jnp.dtype(getattr(self, name))
            except TypeError as err:
                raise ValueError(f"EncoderConfig.{name}={getattr(self, name)!r} "
                                 "is not a dtype") from err

    def replace(self, **changes: Any) -> "EncoderConfig":
        """Returns a copy with ``changes`` applied (e.g. ``num_labels=3``)."""
        return dataclasses.replace(self, **changes)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def max_tokens(self) -> int:
        """Longest sequence the position table allows (RoBERTa reserves ``pad_id + 1`` slots)."""
        if self.position_style == "roberta":
            return self.max_position_embeddings - self.pad_token_id - 1
        return self.max_position_embeddings

    @property
    def num_params(self) -> int:
        """Number of parameters, head included."""
        d, f = self.hidden_size, self.intermediate_size
        emb = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * d + 2 * d
        layer = 4 * (d * d + d) + 2 * d * f + f + d + 4 * d
        pooler = d * d + d if self.use_pooler else 0
        head = d * self.num_labels + self.num_labels
        head += d * d + d if self.head_type == "roberta" else 0
        return emb + self.num_layers * layer + pooler + head


_ROBERTA = dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                layer_norm_eps=1e-5, pad_token_id=1, position_style="roberta", use_pooler=False,
                head_type="roberta", model_type="roberta")
_BERT = dict(type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0, position_style="absolute",
             use_pooler=True, head_type="bert", model_type="bert", max_position_embeddings=512)

PRESETS: dict[str, EncoderConfig] = {
    "roberta_base": EncoderConfig(hidden_size=768, intermediate_size=3072, num_layers=12,
                                  num_heads=12, **_ROBERTA),
    "roberta_large": EncoderConfig(hidden_size=1024, intermediate_size=4096, num_layers=24,
                                   num_heads=16, **_ROBERTA),
    "bert_base": EncoderConfig(vocab_size=30522, hidden_size=768, intermediate_size=3072,
                               num_layers=12, num_heads=12, **_BERT),
    "minilm_l6": EncoderConfig(vocab_size=30522, hidden_size=384, intermediate_size=1536,
                               num_layers=6, num_heads=12, **_BERT),
    # Tiny presets for tests and benchmarks on CPU.
    "tiny_roberta": EncoderConfig(**{**_ROBERTA, "vocab_size": 128, "max_position_embeddings": 130},
                                  hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4),
    "tiny_bert": EncoderConfig(**{**_BERT, "vocab_size": 128, "max_position_embeddings": 128},
                               hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4),
}


def get_preset(name: str, **overrides: Any) -> EncoderConfig:
    """Returns the named preset (``roberta_base``, ``roberta_large``, ``tiny_roberta``...)."""
    if name not in PRESETS:
        raise ValueError(f"unknown encoder preset {name!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


def from_hf_config(config: str | os.PathLike | dict, **overrides: Any) -> EncoderConfig:
    """Builds an ``EncoderConfig`` from a HF RoBERTa/BERT ``config.json`` (path, folder or dict).

    ``num_labels`` comes from ``id2label`` (default 2) unless overridden.
    Unsupported model types or relative position embeddings raise.
    """
    config, source = read_hf_config(config, "encoder")
    model_type = config.get("model_type")
    if model_type in _ROBERTA_TYPES:
        family = _ROBERTA
    elif model_type in _BERT_TYPES:
        family = _BERT
    else:
        raise ValueError(f"{source}: model_type {model_type!r} is not supported by the encoder "
                         f"(supported: {sorted(_ROBERTA_TYPES + _BERT_TYPES)})")
    position_type = config.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ValueError(f"{source}: position_embedding_type {position_type!r} is not supported "
                         "(expected 'absolute')")
    id2label = config.get("id2label")
    try:
        cfg = dict(
            family,
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=config["num_attention_heads"],
            max_position_embeddings=config.get("max_position_embeddings",
                                               family["max_position_embeddings"]),
            type_vocab_size=config.get("type_vocab_size", family["type_vocab_size"]),
            layer_norm_eps=config.get("layer_norm_eps", family["layer_norm_eps"]),
            hidden_act=config.get("hidden_act", "gelu"),
            pad_token_id=config.get("pad_token_id", family["pad_token_id"]),
            num_labels=len(id2label) if id2label else config.get("num_labels", 2),
            hidden_dropout=config.get("hidden_dropout_prob", 0.1),
            attention_dropout=config.get("attention_probs_dropout_prob", 0.1),
            classifier_dropout=config.get("classifier_dropout"),
            initializer_range=config.get("initializer_range", 0.02),
            model_type=model_type,
        )
    except KeyError as err:
        raise ValueError(f"{source}: required field {err} is missing") from err
    if cfg["pad_token_id"] is None:
        cfg["pad_token_id"] = family["pad_token_id"]
    cfg.update(overrides)
    return EncoderConfig(**cfg)


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
        return x @ self.kernel[...].astype(self.dtype) + self.bias[...].astype(self.dtype)


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
        key_mask = mask.astype(bool)
        graphdef, layer_state = nnx.split(self.layers)

        def body(h, xs):
            state, key = xs
            return nnx.merge(graphdef, state)(h, key_mask, key), None

        x, _ = jax.lax.scan(body, x, (layer_state, layer_keys))
        return x

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
