"""Grouped-query softmax attention for the Llama decoder, laid out as each backend runs best.

``gqa_attention(q, k, v, attend_mask)`` is ``softmax(q kᵀ / √h, masked) v``, with ``kv``
key/value heads shared by groups of ``g = heads / kv`` query heads; logits and softmax in
float32.  The inputs use the ``KVCache`` layouts: ``q`` ``[B, T, heads, h]``, ``k``
``[B, kv, h, S]``, ``v`` ``[B, kv, S, h]``, ``attend_mask`` ``[B, T, S]`` (True = may attend).
Three implementations of the same sums:

* **einsums** (accelerators): XLA's fusions and library kernels handle the ``[B, kv, g, T, S]``
  logits.
* **one query per row on CPU** (a decode step): a broadcast multiply + reduce.  As einsums,
  XLA:CPU ran ``B × kv`` tiny ``[g, h] × [h, S]`` matmuls, about a third of a SmolLM2 decode
  step; the multiply + reduce is one fused pass over the cache.
* **several queries per row on CPU** (training, PPO, scoring, prefill): row blocks with a
  custom VJP.  On CPU the einsum version is bound by memory traffic, not FLOPs: its logits
  (75 MB for 32 rows of 256 tokens at SmolLM2's 9 heads) go through main memory several times
  in the forward pass and more in the backward pass, where XLA also materialises transposed
  copies of the probabilities.  Here ``jax.lax.map`` runs blocks of a few rows (logits of a
  block ≤ ``CPU_BLOCK_BYTES``, so they stay in cache), and the backward pass recomputes each
  block's probabilities (as flash attention does) and uses only the products whose large operand
  is in its natural layout.  At that shape (fp32, 2 CPU cores) forward + backward went from 214
  to ~90 ms and the forward from 111 to ~40 ms.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp

__all__ = ["CPU_BLOCK_BYTES", "accelerator_layout", "gqa_attention", "rows_per_block"]

# Float32 logits of one block of rows on CPU: a few MB stays in the per-core L2 + shared L3.
CPU_BLOCK_BYTES = 8 << 20

_NEG = float(jnp.finfo(jnp.float32).min)
_force_einsums = False


@contextlib.contextmanager
def accelerator_layout() -> Iterator[None]:
    """Programs traced inside use the accelerators' einsums on CPU too: for compiling GPU-shaped
    programs on a CPU host (``benchmarks/gpu_suite.py --dry_run``) as the GPU will run them.
    Only programs traced inside are affected, not ones jit has already cached."""
    global _force_einsums
    previous, _force_einsums = _force_einsums, True
    try:
        yield
    finally:
        _force_einsums = previous


def gqa_attention(q: jax.Array, k: jax.Array, v: jax.Array, attend_mask: jax.Array) -> jax.Array:
    """Grouped-query attention ``[B, T, heads, h]`` (see the module docstring for the layouts)."""
    if _force_einsums or jax.default_backend() != "cpu":
        return _einsum_attention(q, k, v, attend_mask)
    if q.shape[1] == 1:
        return _decode_attention_cpu(q, k, v, attend_mask)
    b, t, n, _ = q.shape
    rows = rows_per_block(b, n * t * k.shape[-1] * 4)
    return _blocked_attention_cpu(q, k, v, attend_mask, rows)


def rows_per_block(batch: int, bytes_per_row: int) -> int:
    """The largest divisor of ``batch`` whose rows' logits fit ``CPU_BLOCK_BYTES`` (at least 1)."""
    if batch < 1 or bytes_per_row < 1:
        raise ValueError(f"rows_per_block: batch ({batch}) and bytes_per_row ({bytes_per_row}) "
                         "must be positive")
    fits = [rows for rows in range(1, batch + 1)
            if batch % rows == 0 and rows * bytes_per_row <= CPU_BLOCK_BYTES]
    return max(fits, default=1)


def _grouped(q: jax.Array, kv: int) -> jax.Array:
    b, t, n, h = q.shape
    return q.reshape(b, t, kv, n // kv, h)


def _einsum_attention(q, k, v, attend_mask):
    b, t, n, h = q.shape
    logits = jnp.einsum("btkgh,bkhs->bkgts", _grouped(q, k.shape[1]), k,
                        preferred_element_type=jnp.float32) / math.sqrt(h)
    logits = jnp.where(attend_mask[:, None, None], logits, _NEG)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bksh->btkgh", probs, v).reshape(b, t, n, h)


def _decode_attention_cpu(q, k, v, attend_mask):
    b, t, n, h = q.shape
    q = _grouped(q, k.shape[1])
    logits = jnp.sum(q[:, 0, :, :, :, None].astype(jnp.float32)
                     * k[:, :, None].astype(jnp.float32), axis=3)[:, :, :, None]
    logits = jnp.where(attend_mask[:, None, None], logits / math.sqrt(h), _NEG)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.sum(probs[:, :, :, 0, :, None] * v[:, :, None], axis=3)[:, None]
    return out.reshape(b, t, n, h)


# ------------------------------------------------------------------ row-blocked CPU attention
# Inside a block: q [R, kv, g, T, h], k [R, kv, h, S], v [R, kv, S, h], mask [R, T, S].  The
# einsums merge (g, T) into one axis so that each is one batched matmul over (R, kv).


def _block_probs(q, k, mask):
    """Float32 probabilities ``[R, kv, g, T, S]``."""
    r, kv, g, t, h = q.shape
    logits = jnp.einsum("bkmh,bkhs->bkms", q.reshape(r, kv, g * t, h), k,
                        preferred_element_type=jnp.float32).reshape(r, kv, g, t, -1)
    logits = jnp.where(mask[:, None, None], logits / math.sqrt(h), _NEG)
    return jax.nn.softmax(logits, axis=-1)


def _block_forward(q, k, v, mask):
    r, kv, g, t, h = q.shape
    probs = _block_probs(q, k, mask).astype(v.dtype)
    return jnp.einsum("bkms,bksh->bkmh", probs.reshape(r, kv, g * t, -1), v).reshape(q.shape)


def _block_backward(q, k, v, mask, d_out):
    """``(dq, dk, dv)`` of one block; the probabilities are recomputed, never stored."""
    r, kv, g, t, h = q.shape
    probs = _block_probs(q, k, mask)
    p = probs.reshape(r, kv, g * t, -1)
    d_out = d_out.reshape(r, kv, g * t, h)
    d_probs = jnp.einsum("bkmh,bksh->bkms", d_out, v, preferred_element_type=jnp.float32)
    d_logits = p * (d_probs - jnp.sum(d_probs * p, axis=-1, keepdims=True))
    # Masked slots get no gradient (as through jnp.where), also in rows with no valid key.
    d_logits = jnp.where(mask[:, None, None], d_logits.reshape(probs.shape), 0.0)
    d_logits = (d_logits / math.sqrt(h)).reshape(p.shape).astype(q.dtype)
    dq = jnp.einsum("bkms,bkhs->bkmh", d_logits, k).reshape(q.shape)
    dk = jnp.einsum("bkmh,bkms->bkhs", q.reshape(r, kv, g * t, h), d_logits)
    dv = jnp.einsum("bkmh,bkms->bksh", d_out, p.astype(v.dtype))
    return dq, dk, dv


def _blocks(x: jax.Array, rows: int) -> jax.Array:
    return x.reshape(x.shape[0] // rows, rows, *x.shape[1:])


def _unblock(x: jax.Array) -> jax.Array:
    return x.reshape(-1, *x.shape[2:])


def _blocked_forward(q, k, v, mask, rows):
    out = jax.lax.map(lambda a: _block_forward(*a),
                      tuple(_blocks(x, rows) for x in (q, k, v, mask)))
    return _unblock(out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _blocked_core(q, k, v, mask, rows):
    """Attention of ``q`` ``[B, kv, g, T, h]``, ``rows`` rows per ``lax.map`` step."""
    return _blocked_forward(q, k, v, mask, rows)


def _blocked_core_fwd(q, k, v, mask, rows):
    return _blocked_forward(q, k, v, mask, rows), (q, k, v, mask)


def _blocked_core_bwd(rows, residuals, d_out):
    q, k, v, mask = residuals
    grads = jax.lax.map(lambda a: _block_backward(*a),
                        tuple(_blocks(x, rows) for x in (q, k, v, mask, d_out)))
    dq, dk, dv = (_unblock(g) for g in grads)
    return dq, dk, dv, None


_blocked_core.defvjp(_blocked_core_fwd, _blocked_core_bwd)


def _blocked_attention_cpu(q, k, v, attend_mask, rows: int):
    b, t, n, h = q.shape
    q = _grouped(q, k.shape[1]).transpose(0, 2, 3, 1, 4)  # [B, kv, g, T, h]
    out = _blocked_core(q, k, v, attend_mask, rows)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)
