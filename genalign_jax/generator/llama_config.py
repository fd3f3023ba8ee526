"""Llama architecture configuration: ``LlamaConfig``, presets, HF ``config.json`` parsing, RoPE frequencies.

Kept apart from the NNX modules (``generator/llama.py``) so that weight loaders and
config checks can read a config without building a model.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax.numpy as jnp
import numpy as np

from genalign_jax.hf_checkpoint import read_hf_config

__all__ = [
    "RopeScaling",
    "LlamaConfig",
    "PRESETS",
    "get_preset",
    "from_hf_config",
    "rope_inverse_frequencies",
]


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3.1 ``rope_type: llama3`` frequency scaling parameters."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


REMAT_POLICIES = ("full", "dots", "none")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Architecture and numerics of a Llama model.

    ``dtype`` is the activation/compute dtype and ``param_dtype`` the storage
    dtype of the weights (bfloat16 on GPU, float32 in parity tests).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 131072
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 128000
    eos_token_ids: tuple[int, ...] = (128001,)
    pad_token_id: int | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    # What each layer keeps for the backward pass (forward-only use pays nothing):
    # "full": only its input, the whole layer is recomputed (PPO on long prompts needs it);
    # "dots": also the outputs of its weight matmuls, only attention and elementwise ops are
    # recomputed (most of the FLOPs saved, ~(3 D + 2 KV + 3 F) floats per token per layer kept);
    # "none": everything.  True/False are read as "full"/"none".
    remat: str = "full"

    def __post_init__(self):
        if isinstance(self.remat, bool):
            object.__setattr__(self, "remat", "full" if self.remat else "none")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"LlamaConfig.remat must be one of {REMAT_POLICIES}, got "
                             f"{self.remat!r}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                     "num_heads", "num_kv_heads"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"LlamaConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"LlamaConfig.num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads}) for grouped-query attention")
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"LlamaConfig.hidden_size ({self.hidden_size}) is not divisible by "
                    f"num_heads ({self.num_heads}); set head_dim explicitly")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if isinstance(self.eos_token_ids, int):
            object.__setattr__(self, "eos_token_ids", (self.eos_token_ids,))
        else:
            object.__setattr__(self, "eos_token_ids", tuple(int(t) for t in self.eos_token_ids))
        for name in ("dtype", "param_dtype"):
            try:
                jnp.dtype(getattr(self, name))
            except TypeError as err:
                raise ValueError(f"LlamaConfig.{name}={getattr(self, name)!r} is not a dtype") from err

    def replace(self, **changes: Any) -> "LlamaConfig":
        """Returns a copy with ``changes`` applied (e.g. ``dtype='bfloat16'``)."""
        return dataclasses.replace(self, **changes)

    @property
    def num_params(self) -> int:
        """Number of parameters (LoRA adapters excluded)."""
        d, f, h = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * h * (self.num_heads * 2 + self.num_kv_heads * 2)
        per_layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.num_layers * per_layer + d + head


_LLAMA3_SCALING = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                              original_max_position_embeddings=8192)

PRESETS: dict[str, LlamaConfig] = {
    "llama3p1_8b": LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
        num_heads=32, num_kv_heads=8, rope_theta=500000.0, rope_scaling=_LLAMA3_SCALING,
        max_position_embeddings=131072, tie_word_embeddings=False,
        eos_token_ids=(128001, 128008, 128009), dtype="bfloat16", param_dtype="bfloat16"),
    "llama3p2_1b": LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16,
        num_heads=32, num_kv_heads=8, head_dim=64, rope_theta=500000.0,
        rope_scaling=RopeScaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max_position_embeddings=8192),
        max_position_embeddings=131072, tie_word_embeddings=True,
        eos_token_ids=(128001, 128008, 128009), dtype="bfloat16", param_dtype="bfloat16"),
    "smollm2_135m": LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
        num_heads=9, num_kv_heads=3, rope_theta=100000.0, rms_norm_eps=1e-5,
        max_position_embeddings=8192, tie_word_embeddings=True, bos_token_id=1,
        eos_token_ids=(2,), pad_token_id=2),
    # Tiny presets for tests and the `:tiny` config variant.
    "tiny": LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
        num_kv_heads=2, rope_theta=10000.0, max_position_embeddings=512, bos_token_id=1,
        eos_token_ids=(2,), pad_token_id=0),
    "tiny_llama3": LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
        num_kv_heads=1, rope_theta=500000.0,
        rope_scaling=RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max_position_embeddings=64),
        max_position_embeddings=1024, bos_token_id=1, eos_token_ids=(2,), pad_token_id=0),
}


def get_preset(name: str, **overrides: Any) -> LlamaConfig:
    """Returns the named preset (``llama3p1_8b``, ``llama3p2_1b``, ``tiny``...)."""
    if name not in PRESETS:
        raise ValueError(f"unknown Llama preset {name!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


def from_hf_config(config: str | os.PathLike | dict, **overrides: Any) -> LlamaConfig:
    """Builds a ``LlamaConfig`` from a Hugging Face ``config.json`` (path, folder or dict).

    Accepts both the transformers-5 layout (``rope_parameters`` holding
    ``rope_theta``/``rope_type``) and the older one (``rope_theta`` plus
    ``rope_scaling``).  Unsupported architectures or rope types raise.
    """
    config, source = read_hf_config(config, "Llama")
    model_type = config.get("model_type", "llama")
    if model_type != "llama":
        raise ValueError(f"{source}: model_type {model_type!r} is not supported by the Llama "
                         "model (expected 'llama')")
    rope = dict(config.get("rope_parameters") or {})
    legacy = config.get("rope_scaling") or {}
    rope_theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", legacy.get("rope_type", legacy.get("type", "default")))
    scaling = None
    if rope_type == "llama3":
        params = {**legacy, **rope}
        try:
            scaling = RopeScaling(
                factor=float(params["factor"]),
                low_freq_factor=float(params["low_freq_factor"]),
                high_freq_factor=float(params["high_freq_factor"]),
                original_max_position_embeddings=int(params["original_max_position_embeddings"]))
        except KeyError as err:
            raise ValueError(f"{source}: rope_type 'llama3' is missing field {err}") from err
    elif rope_type not in (None, "default"):
        raise ValueError(f"{source}: rope_type {rope_type!r} is not supported "
                         "(supported: 'default', 'llama3')")
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag):
            raise ValueError(f"{source}: {flag}=true is not supported by this Llama implementation")
    if config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{source}: hidden_act {config['hidden_act']!r} is not supported "
                         "(expected 'silu')")
    eos = config.get("eos_token_id")
    eos = () if eos is None else (tuple(eos) if isinstance(eos, (list, tuple)) else (eos,))
    try:
        cfg = dict(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=config["num_attention_heads"],
            num_kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
            head_dim=config.get("head_dim"),
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            rope_scaling=scaling,
            max_position_embeddings=config.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            bos_token_id=config.get("bos_token_id"),
            eos_token_ids=eos,
            pad_token_id=config.get("pad_token_id"),
        )
    except KeyError as err:
        raise ValueError(f"{source}: required field {err} is missing") from err
    cfg.update(overrides)
    return LlamaConfig(**cfg)


def rope_inverse_frequencies(config: LlamaConfig) -> np.ndarray:
    """Per-pair inverse frequencies, with Llama-3.1 scaling applied if configured."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq.astype(np.float32)
    low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = ((scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor)
              / (scaling.high_freq_factor - scaling.low_freq_factor))
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)
