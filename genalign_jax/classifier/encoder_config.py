"""RoBERTa / BERT architecture: ``EncoderConfig``, presets, HF ``config.json`` parsing.

Kept apart from the NNX modules (``classifier/encoder.py``) so that weight loaders and
config checks can read a config without building a model.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax.numpy as jnp

from genalign_jax.hf_checkpoint import read_hf_config

__all__ = [
    "ACTIVATIONS",
    "EncoderConfig",
    "PRESETS",
    "get_preset",
    "from_hf_config",
]

# Hidden activations the encoder implements (``classifier/encoder.py`` maps them to functions).
ACTIVATIONS: tuple[str, ...] = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu")
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
    # The stacked layers run as one ``lax.scan``; unrolled (the default) it is straight-line
    # code, which skips the per-layer copies a rolled scan makes (weight slices in, saved
    # activations out, zero-filled stacks for the backward): 1.13-1.15x on the MiniLM train
    # step on CPU.  Encoders are shallow, so the longer compile is small; False keeps the
    # rolled loop (compile time independent of depth).
    unroll_layers: bool = True

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "max_position_embeddings", "type_vocab_size", "num_labels"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"EncoderConfig.{name} must be positive, "
                                 f"got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"EncoderConfig.hidden_size ({self.hidden_size}) is not divisible by "
                             f"num_heads ({self.num_heads})")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"EncoderConfig.hidden_act {self.hidden_act!r} is not supported "
                             f"(supported: {sorted(ACTIVATIONS)})")
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
