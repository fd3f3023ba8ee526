"""Llama 3 / 3.1 / 3.2 decoder in Flax NNX.

The model matches Hugging Face ``LlamaForCausalLM`` on the same weights (see
``tests/models/test_llama_parity.py``).  Design points:

* Layers are stacked: every per-layer parameter has a leading ``num_layers`` axis
  and the forward pass is one ``jax.lax.scan`` over layers, so compile time does
  not grow with depth and the 8B model traces one block, not 32.
* Attention takes explicit ``positions`` and a key-validity mask, so left- and
  right-padded batches work the same way; RoPE supports Llama-3.1's ``llama3``
  frequency scaling.
* A preallocated KV cache (``KVCache``) serves prefill (many tokens) and decode
  (one token) with the same code path: new keys/values are written at
  ``cache_index`` and queries attend causally over cache slots.
* Linear layers carry optional LoRA adapters (``nnx.LoRAParam``) that can be
  switched off per call (``use_lora=False``) to get the reference policy without
  a second copy of the base weights.
* Norms and softmax accumulate in float32 whatever the parameter dtype.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genalign_jax.hf_checkpoint import read_hf_config

from genalign_jax.sharding import constrain_batch

__all__ = [
    "RopeScaling",
    "LlamaConfig",
    "KVCache",
    "Llama",
    "PRESETS",
    "get_preset",
    "from_hf_config",
    "default_positions",
]


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3.1 ``rope_type: llama3`` frequency scaling parameters."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


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
    # Rematerialise each layer in the backward pass (keep only layer inputs): PPO on long
    # prompts needs it; forward-only use (sampling) pays nothing.
    remat: bool = True

    def __post_init__(self):
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


# --------------------------------------------------------------------------- RoPE


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


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotates ``x`` [B, T, heads, head_dim] by ``positions`` [B, T] (half-split layout)."""
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, D/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def default_positions(mask: jax.Array) -> jax.Array:
    """Positions for a padded batch: running count of real tokens minus one (pads get 0)."""
    mask = mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0) * mask


# --------------------------------------------------------------------------- layers


class Linear(nnx.Module):
    """Bias-free linear layer ``y = x @ kernel`` with optional LoRA adapters.

    ``kernel`` is ``[in, out]``.  LoRA adds ``(x @ lora_a) @ lora_b * lora_scale``
    when adapters are attached (see ``genalign_jax.ppo.lora``) and
    ``use_lora`` is true for the call.
    """

    def __init__(self, in_features: int, out_features: int, *, config: LlamaConfig,
                 rngs: nnx.Rngs, stddev: float = 0.02):
        init = nnx.initializers.normal(stddev)
        self.kernel = nnx.Param(init(rngs.params(), (in_features, out_features),
                                     jnp.dtype(config.param_dtype)))
        self.dtype = jnp.dtype(config.dtype)
        self.lora_a: nnx.LoRAParam | None = nnx.data(None)
        self.lora_b: nnx.LoRAParam | None = nnx.data(None)
        self.lora_scale: float = 1.0

    def __call__(self, x: jax.Array, use_lora: bool = True) -> jax.Array:
        x = x.astype(self.dtype)
        y = x @ self.kernel[...].astype(self.dtype)
        if use_lora and self.lora_a is not None:
            lora = (x @ self.lora_a[...].astype(self.dtype)) @ self.lora_b[...].astype(self.dtype)
            y = y + lora * jnp.asarray(self.lora_scale, self.dtype)
        return y


class RMSNorm(nnx.Module):
    """Root-mean-square norm, accumulated in float32 (as HF ``LlamaRMSNorm``)."""

    def __init__(self, dim: int, *, config: LlamaConfig):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.dtype(config.param_dtype)))
        self.eps = config.rms_norm_eps
        self.dtype = jnp.dtype(config.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(self.dtype) * normed.astype(self.dtype)


class KVCache(NamedTuple):
    """Preallocated keys/values for every layer: ``[layers, batch, max_len, kv_heads, head_dim]``."""

    k: jax.Array
    v: jax.Array

    @classmethod
    def init(cls, config: LlamaConfig, batch_size: int, max_len: int,
             dtype: Any = None, sharding: jax.sharding.Sharding | None = None) -> "KVCache":
        """Zero cache for ``batch_size`` rows of up to ``max_len`` tokens."""
        shape = (config.num_layers, batch_size, max_len, config.num_kv_heads, config.head_dim)
        dtype = jnp.dtype(dtype or config.dtype)
        if sharding is None:
            return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
        zeros = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)
        return cls(zeros(), zeros())

    @property
    def max_len(self) -> int:
        return self.k.shape[2]


class Attention(nnx.Module):
    """Grouped-query self-attention with RoPE and an optional KV cache slice."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        d, h = config.hidden_size, config.head_dim
        self.q_proj = Linear(d, config.num_heads * h, config=config, rngs=rngs)
        self.k_proj = Linear(d, config.num_kv_heads * h, config=config, rngs=rngs)
        self.v_proj = Linear(d, config.num_kv_heads * h, config=config, rngs=rngs)
        self.o_proj = Linear(config.num_heads * h, d, config=config, rngs=rngs)
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = h

    def __call__(self, x, positions, inv_freq, attend_mask, cache_k, cache_v, cache_index, layer,
                 use_lora: bool = True):
        """``cache_k``/``cache_v`` are the *stacked* caches of all layers (or ``None``).

        Only this layer's new keys/values are written (at ``[layer, :, cache_index]``), so
        a decode step touches one token per layer instead of copying the layer's cache.
        """
        b, t, _ = x.shape
        q = self.q_proj(x, use_lora).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x, use_lora).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x, use_lora).reshape(b, t, self.num_kv_heads, self.head_dim)
        q = apply_rope(q, positions, inv_freq)
        k = apply_rope(k, positions, inv_freq)
        if cache_k is not None:
            start = (layer, 0, cache_index, 0, 0)
            cache_k = jax.lax.dynamic_update_slice(cache_k, k[None].astype(cache_k.dtype), start)
            cache_v = jax.lax.dynamic_update_slice(cache_v, v[None].astype(cache_v.dtype), start)
            k = jax.lax.dynamic_index_in_dim(cache_k, layer, 0, keepdims=False).astype(q.dtype)
            v = jax.lax.dynamic_index_in_dim(cache_v, layer, 0, keepdims=False).astype(q.dtype)
        out = _gqa_attention(q, k, v, attend_mask)
        return self.o_proj(out.reshape(b, t, -1), use_lora), cache_k, cache_v


def _gqa_attention(q, k, v, attend_mask):
    """Softmax attention, logits and softmax in float32; ``attend_mask`` is [B, T, S]."""
    b, t, n, h = q.shape
    kv = k.shape[2]
    q = q.reshape(b, t, kv, n // kv, h)
    logits = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32)
    logits = logits / math.sqrt(h)
    logits = jnp.where(attend_mask[:, None, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskh->btkgh", probs, v)
    return out.reshape(b, t, n, h)


class MLP(nnx.Module):
    """SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        d, f = config.hidden_size, config.intermediate_size
        self.gate_proj = Linear(d, f, config=config, rngs=rngs)
        self.up_proj = Linear(d, f, config=config, rngs=rngs)
        self.down_proj = Linear(f, d, config=config, rngs=rngs)

    def __call__(self, x, use_lora: bool = True):
        return self.down_proj(jax.nn.silu(self.gate_proj(x, use_lora)) * self.up_proj(x, use_lora),
                              use_lora)


class Block(nnx.Module):
    """One pre-norm decoder layer."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(config.hidden_size, config=config)
        self.attn = Attention(config, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config=config)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x, positions, inv_freq, attend_mask, cache_k, cache_v, cache_index, layer,
                 use_lora: bool = True):
        attn_out, cache_k, cache_v = self.attn(self.input_layernorm(x), positions, inv_freq,
                                               attend_mask, cache_k, cache_v, cache_index, layer,
                                               use_lora)
        x = x + attn_out
        x = x + self.mlp(self.post_attention_layernorm(x), use_lora)
        return x, cache_k, cache_v


# --------------------------------------------------------------------------- model


class Llama(nnx.Module):
    """Llama causal LM with stacked layers.

    Call ``model(tokens, mask)`` for logits of an uncached forward, or use
    ``model.forward`` for final hidden states and a cache, and ``model.logits``
    to project hidden states to the vocabulary.
    """

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = config
        embed_init = nnx.initializers.normal(0.02)
        self.embed_tokens = nnx.Param(embed_init(rngs.params(),
                                                 (config.vocab_size, config.hidden_size),
                                                 jnp.dtype(config.param_dtype)))

        @nnx.split_rngs(splits=config.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_layers(rngs: nnx.Rngs) -> Block:
            return Block(config, rngs=rngs)

        self.layers = make_layers(rngs)
        self.norm = RMSNorm(config.hidden_size, config=config)
        if not config.tie_word_embeddings:
            self.lm_head = Linear(config.hidden_size, config.vocab_size, config=config, rngs=rngs)
        else:
            self.lm_head = None

    def forward(self, tokens: jax.Array, mask: jax.Array | None = None,
                positions: jax.Array | None = None, cache: KVCache | None = None,
                cache_index: jax.Array | int = 0, kv_mask: jax.Array | None = None,
                use_lora: bool = True) -> tuple[jax.Array, KVCache | None]:
        """Runs the decoder and returns ``(final normed hidden states [B, T, D], cache)``.

        Args:
          tokens: ``[B, T]`` token ids.
          mask: ``[B, T]`` 1 for real tokens, 0 for padding (default all ones).
          positions: ``[B, T]`` RoPE positions; defaults to ``default_positions(mask)``
            (with a cache, callers pass them explicitly).
          cache: optional ``KVCache``; the new keys/values are written at slots
            ``cache_index .. cache_index + T`` and the updated cache is returned.
          cache_index: first cache slot of ``tokens`` (scalar, may be traced).
          kv_mask: ``[B, max_len]`` validity of every cache slot after this call
            (required with a cache; slots beyond the written ones may be 0 or 1,
            the causal mask hides them).
          use_lora: ``False`` runs the base model with LoRA adapters switched off.
        """
        b, t = tokens.shape
        if mask is None:
            mask = jnp.ones((b, t), jnp.int32)
        if positions is None:
            positions = default_positions(mask)
        dtype = jnp.dtype(self.config.dtype)
        x = constrain_batch(jnp.take(self.embed_tokens[...], tokens, axis=0).astype(dtype))
        query_slots = cache_index + jnp.arange(t)
        if cache is None:
            key_valid = mask.astype(bool)
            key_slots = jnp.arange(t)
        else:
            if kv_mask is None:
                raise ValueError("Llama.forward: kv_mask is required when a cache is given")
            key_valid = kv_mask.astype(bool)
            key_slots = jnp.arange(cache.max_len)
        causal = key_slots[None, :] <= query_slots[:, None]  # [T, S]
        attend_mask = causal[None] & key_valid[:, None, :]  # [B, T, S]
        inv_freq = jnp.asarray(rope_inverse_frequencies(self.config))

        graphdef, layer_state = nnx.split(self.layers)

        # The stacked cache rides in the scan carry so XLA updates it in place.
        def body(carry, xs):
            h, ck, cv = carry
            state, layer = xs
            block = nnx.merge(graphdef, state)
            h, ck, cv = block(h, positions, inv_freq, attend_mask, ck, cv, cache_index, layer,
                              use_lora)
            return (h, ck, cv), None

        if self.config.remat:
            body = jax.checkpoint(body, prevent_cse=False)
        carry = (x, None, None) if cache is None else (x, cache.k, cache.v)
        layers = jnp.arange(self.config.num_layers, dtype=jnp.int32)
        (x, new_k, new_v), _ = jax.lax.scan(body, carry, (layer_state, layers))
        hidden = self.norm(x)
        new_cache = None if cache is None else KVCache(new_k, new_v)
        return hidden, new_cache

    def logits(self, hidden: jax.Array, use_lora: bool = True) -> jax.Array:
        """Projects hidden states to vocabulary logits (float32)."""
        if self.lm_head is None:
            out = hidden @ self.embed_tokens[...].astype(hidden.dtype).T
        else:
            out = self.lm_head(hidden, use_lora)
        return out.astype(jnp.float32)

    def __call__(self, tokens: jax.Array, mask: jax.Array | None = None,
                 positions: jax.Array | None = None, use_lora: bool = True,
                 return_hidden: bool = False):
        """Uncached forward: logits ``[B, T, V]`` (and hidden states if asked)."""
        hidden, _ = self.forward(tokens, mask, positions, use_lora=use_lora)
        logits = self.logits(hidden, use_lora)
        return (logits, hidden) if return_hidden else logits
