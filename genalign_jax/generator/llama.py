"""Llama 3 / 3.1 / 3.2 decoder in Flax NNX.

The model matches Hugging Face ``LlamaForCausalLM`` on the same weights (see
``tests/generator/test_llama.py``).  Design points:

* Layers are stacked: every per-layer parameter has a leading ``num_layers`` axis
  and the uncached forward (training, PPO, scoring, prefill) is one
  ``jax.lax.scan`` over layers, so its compile time does not grow with depth.
  The cached decode step instead runs per-layer weights and cache buffers one
  after the other (``layer_blocks``): a scanned step copies each layer's weight
  and cache slices out of the stacked arrays, about 3x the memory traffic of a
  step that is bound by reading weights (see ``Llama.forward``).
* Attention takes explicit ``positions`` and a key-validity mask, so left- and
  right-padded batches work the same way; RoPE supports Llama-3.1's ``llama3``
  frequency scaling.
* A preallocated KV cache (``KVCache``, one buffer pair per layer) is filled by
  ``Llama.prefill`` (the scanned forward returning every layer's keys/values)
  and extended by decode steps, which write at ``cache_index`` and attend
  causally over the cache slots.
* Linear layers carry optional LoRA adapters (``nnx.LoRAParam``) that can be
  switched off per call (``use_lora=False``) to get the reference policy without
  a second copy of the base weights.
* Norms and softmax accumulate in float32 whatever the parameter dtype; attention runs in the
  layout each backend runs best (``generator/attention.py``).

The configuration (``LlamaConfig``, presets, ``from_hf_config``) lives in
``generator/llama_config.py``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from genalign_jax.generator.attention import gqa_attention
from genalign_jax.generator.llama_config import LlamaConfig, rope_inverse_frequencies
from genalign_jax.ops import token_matmul
from genalign_jax.sharding import constrain_batch

__all__ = [
    "KVCache",
    "Linear",
    "Llama",
    "apply_rope",
    "default_positions",
]


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
        y = token_matmul(x, self.kernel[...].astype(self.dtype))
        if use_lora and self.lora_a is not None:
            lora = token_matmul(token_matmul(x, self.lora_a[...].astype(self.dtype)),
                                self.lora_b[...].astype(self.dtype))
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
    """Preallocated keys/values, one buffer pair per layer.

    ``k[i]`` is ``[batch, kv_heads, head_dim, max_len]`` and ``v[i]`` is
    ``[batch, kv_heads, max_len, head_dim]``: the layouts the two attention matmuls read
    (contracted axis before the kept one), so a decode step reads them without a transposed
    copy.  Separate per-layer buffers (not one stacked ``[layers, ...]`` array) let a step
    write its token into each layer's buffers in place and read them directly; slicing a
    stacked cache copies the layer's whole slice on every read.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]

    @classmethod
    def init(cls, config: LlamaConfig, batch_size: int, max_len: int,
             dtype: Any = None, sharding: jax.sharding.Sharding | None = None) -> "KVCache":
        """Zero cache for ``batch_size`` rows of up to ``max_len`` tokens."""
        b, kv, h, dtype = batch_size, config.num_kv_heads, config.head_dim, dtype or config.dtype

        def zeros(shape):
            if sharding is None:
                return jnp.zeros(shape, dtype)
            return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)()

        layers = range(config.num_layers)
        return cls(tuple(zeros((b, kv, h, max_len)) for _ in layers),
                   tuple(zeros((b, kv, max_len, h)) for _ in layers))

    @property
    def max_len(self) -> int:
        return self.v[0].shape[2]


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

    def __call__(self, x, positions, inv_freq, attend_mask, cache_k, cache_v, cache_index,
                 use_lora: bool = True):
        """Returns ``(output, keys, values)``.

        With this layer's cache buffers ``cache_k``/``cache_v`` the new keys/values are
        written in place at slot ``cache_index``, the queries attend over the whole buffer
        (``attend_mask`` hides unused slots) and the updated buffers are returned; without,
        the keys/values of these tokens are returned (in the ``KVCache`` layouts).
        """
        b, t, _ = x.shape
        q = self.q_proj(x, use_lora).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x, use_lora).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x, use_lora).reshape(b, t, self.num_kv_heads, self.head_dim)
        q = apply_rope(q, positions, inv_freq)
        k = apply_rope(k, positions, inv_freq).transpose(0, 2, 3, 1)  # [B, kv, head_dim, T]
        v = v.transpose(0, 2, 1, 3)  # [B, kv, T, head_dim]
        if cache_k is not None:
            cache_k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype),
                                                   (0, 0, 0, cache_index))
            cache_v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype),
                                                   (0, 0, cache_index, 0))
            k, v = cache_k.astype(q.dtype), cache_v.astype(q.dtype)
        out = gqa_attention(q, k, v, attend_mask)
        return self.o_proj(out.reshape(b, t, -1), use_lora), k, v


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

    def __call__(self, x, positions, inv_freq, attend_mask, cache_k=None, cache_v=None,
                 cache_index=0, use_lora: bool = True):
        attn_out, cache_k, cache_v = self.attn(self.input_layernorm(x), positions, inv_freq,
                                               attend_mask, cache_k, cache_v, cache_index,
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

    def layer_blocks(self) -> list[Block]:
        """The stacked layers as one ``Block`` per layer (each holds a copy of its weights).

        The cached forward runs these one after the other.  A sampler takes them once per
        program, outside its decode loop, so that no decode step slices the stacked weights
        (XLA copies a layer's slice of every weight for each read of a stacked array); the
        price is one transient copy of the layer weights while the program runs.
        """
        graphdef, state = nnx.split(self.layers)
        return [nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state))
                for i in range(self.config.num_layers)]

    def _embed_and_mask(self, tokens, mask, positions, key_valid, cache_index):
        """Embeddings, RoPE positions, the ``[B, T, S]`` attention mask and RoPE frequencies."""
        b, t = tokens.shape
        if mask is None:
            mask = jnp.ones((b, t), jnp.int32)
        if positions is None:
            positions = default_positions(mask)
        if key_valid is None:
            key_valid = mask
        dtype = jnp.dtype(self.config.dtype)
        x = constrain_batch(jnp.take(self.embed_tokens[...], tokens, axis=0).astype(dtype))
        query_slots = cache_index + jnp.arange(t)
        key_slots = jnp.arange(key_valid.shape[1])
        causal = key_slots[None, :] <= query_slots[:, None]  # [T, S]
        attend_mask = causal[None] & key_valid.astype(bool)[:, None, :]  # [B, T, S]
        return x, positions, attend_mask, jnp.asarray(rope_inverse_frequencies(self.config))

    def _scan_layers(self, x, positions, inv_freq, attend_mask, use_lora, keep_kv: bool):
        """The stacked layers as one ``jax.lax.scan``; with ``keep_kv`` also their keys/values."""
        graphdef, layer_state = nnx.split(self.layers)

        def body(h, state):
            h, k, v = nnx.merge(graphdef, state)(h, positions, inv_freq, attend_mask,
                                                 use_lora=use_lora)
            return h, ((k, v) if keep_kv else None)

        if self.config.remat == "full":
            body = jax.checkpoint(body, prevent_cse=False)
        elif self.config.remat == "dots":  # keep the weight matmuls' outputs, recompute the rest
            body = jax.checkpoint(body, prevent_cse=False,
                                  policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
        return jax.lax.scan(body, x, layer_state)

    def forward(self, tokens: jax.Array, mask: jax.Array | None = None,
                positions: jax.Array | None = None, cache: KVCache | None = None,
                cache_index: jax.Array | int = 0, kv_mask: jax.Array | None = None,
                use_lora: bool = True,
                layers: list[Block] | None = None) -> tuple[jax.Array, KVCache | None]:
        """Runs the decoder and returns ``(final normed hidden states [B, T, D], cache)``.

        Without a cache the stacked layers run as one ``jax.lax.scan`` (training, PPO, scoring,
        ``prefill``: compile time independent of depth).  With a cache (decode) they run one
        after the other on per-layer weights and cache buffers (``layer_blocks``): a decode
        step is bound by reading weights, and a scanned step would first copy each layer's
        weight and cache slices out of the stacked arrays (XLA's dynamic-slice of a scanned
        operand is a copy), which made it ~3x the memory traffic.

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
          layers: with a cache, ``self.layer_blocks()`` taken once by the caller, outside
            its decode loop (default: taken here, i.e. on every call).
        """
        if cache is None:
            x, positions, attend_mask, inv_freq = self._embed_and_mask(tokens, mask, positions,
                                                                       None, cache_index)
            x, _ = self._scan_layers(x, positions, inv_freq, attend_mask, use_lora, False)
            return self.norm(x), None
        if kv_mask is None:
            raise ValueError("Llama.forward: kv_mask is required when a cache is given")
        x, positions, attend_mask, inv_freq = self._embed_and_mask(tokens, mask, positions,
                                                                   kv_mask, cache_index)
        new_k, new_v = [], []
        blocks = self.layer_blocks() if layers is None else layers
        for block, ck, cv in zip(blocks, cache.k, cache.v, strict=True):
            x, ck, cv = block(x, positions, inv_freq, attend_mask, ck, cv, cache_index,
                              use_lora)
            new_k.append(ck)
            new_v.append(cv)
        return self.norm(x), KVCache(tuple(new_k), tuple(new_v))

    def prefill(self, tokens: jax.Array, mask: jax.Array, positions: jax.Array | None = None,
                *, max_len: int, use_lora: bool = True) -> tuple[jax.Array, KVCache]:
        """Uncached (scanned) forward over a prompt that also returns its ``KVCache``.

        The cache holds the prompt's keys/values in slots ``0 .. T`` of ``max_len``; it
        equals ``forward`` with an empty cache at ``cache_index=0``, without unrolling the
        layers for a call that runs once per generation.
        """
        t = tokens.shape[1]
        if max_len < t:
            raise ValueError(f"Llama.prefill: max_len {max_len} < prompt length {t}")
        x, positions, attend_mask, inv_freq = self._embed_and_mask(tokens, mask, positions,
                                                                   None, 0)
        x, (k, v) = self._scan_layers(x, positions, inv_freq, attend_mask, use_lora, True)
        extra = max_len - t
        cache = KVCache(tuple(jnp.pad(k[i], ((0, 0), (0, 0), (0, 0), (0, extra)))
                              for i in range(self.config.num_layers)),
                        tuple(jnp.pad(v[i], ((0, 0), (0, 0), (0, extra), (0, 0)))
                              for i in range(self.config.num_layers)))
        return self.norm(x), cache

    def logits(self, hidden: jax.Array, use_lora: bool = True) -> jax.Array:
        """Projects hidden states to vocabulary logits (float32)."""
        if self.lm_head is None:
            out = token_matmul(hidden, self.embed_tokens[...].astype(hidden.dtype).T)
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
