"""Grouped-query attention: every implementation against NumPy, and the blocked CPU path's
custom VJP against autodiff of the einsum path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genalign_jax.generator import attention


def _inputs(t: int, seed: int = 0, b: int = 4, n: int = 6, kv: int = 2, h: int = 8, s: int = 7):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, t, n, h)).astype(np.float32)
    k = rng.normal(size=(b, kv, h, s)).astype(np.float32)
    v = rng.normal(size=(b, kv, s, h)).astype(np.float32)
    mask = rng.random((b, t, s)) < 0.7
    mask[..., 0] = True
    if t > 1:
        mask[1, 0] = False  # a query with no valid key (a padding position): uniform weights
    return q, k, v, mask


def _numpy_attention(q, k, v, mask):
    b, t, n, h = q.shape
    group = n // k.shape[1]
    out = np.zeros_like(q, dtype=np.float64)
    for head in range(n):
        kh, vh = k[:, head // group], v[:, head // group]  # [b, h, s], [b, s, h]
        logits = np.einsum("bth,bhs->bts", q[:, :, head], kh) / np.sqrt(h)
        logits = np.where(mask, logits, np.finfo(np.float32).min)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        out[:, :, head] = np.einsum("bts,bsh->bth", probs, vh)
    return out


IMPLEMENTATIONS = {
    "einsum": attention._einsum_attention,
    "blocked_rows1": lambda q, k, v, m: attention._blocked_attention_cpu(q, k, v, m, 1),
    "blocked_rows2": lambda q, k, v, m: attention._blocked_attention_cpu(q, k, v, m, 2),
    "dispatch": attention.gqa_attention,
}


@pytest.mark.parametrize("name,t", [(name, t) for name in IMPLEMENTATIONS for t in (1, 3)]
                         + [("decode_cpu", 1)])  # multiply + reduce: one query per row only
def test_attention_matches_a_numpy_reference(name, t):
    """softmax(q k^T / sqrt(h)) v with grouped heads, a key mask and a fully masked query."""
    fn = attention._decode_attention_cpu if name == "decode_cpu" else IMPLEMENTATIONS[name]
    q, k, v, mask = _inputs(t, seed=t)
    got = np.asarray(jax.jit(fn)(*map(jnp.asarray, (q, k, v, mask))))
    np.testing.assert_allclose(got, _numpy_attention(q, k, v, mask), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 2, 4])
def test_blocked_gradients_match_autodiff_of_the_einsums(rows):
    """The custom VJP (probabilities recomputed per block, masked slots get no gradient, also
    for a query with no valid key) equals autodiff through the einsum path."""
    q, k, v, mask = map(jnp.asarray, _inputs(5, seed=3))
    weights = jnp.asarray(np.random.default_rng(4).normal(size=q.shape).astype(np.float32))

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v, mask) * weights)

    expected = jax.grad(loss(attention._einsum_attention), argnums=(0, 1, 2))(q, k, v)
    blocked = lambda q, k, v, m: attention._blocked_attention_cpu(q, k, v, m, rows)  # noqa: E731
    got = jax.jit(jax.grad(loss(blocked), argnums=(0, 1, 2)))(q, k, v)
    for name, g, e in zip("qkv", got, expected):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-5, atol=1e-5,
                                   err_msg=f"d{name}")


def test_blocked_path_runs_in_bfloat16():
    """Low-precision inputs keep their dtype; logits and softmax stay float32 inside."""
    q, k, v, mask = _inputs(4, seed=5)
    args = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)] + [jnp.asarray(mask)]
    out = attention._blocked_attention_cpu(*args, 2)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), _numpy_attention(q, k, v, mask),
                               atol=0.05)
    grads = jax.grad(lambda q: jnp.sum(attention._blocked_attention_cpu(q, *args[1:], 2)
                                       .astype(jnp.float32)))(args[0])
    assert grads.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(grads)))


@pytest.mark.parametrize("batch,bytes_per_row,expected", [
    (32, 9 * 256 * 256 * 4, 2),        # SmolLM2 PPO minibatch: two rows of 2.4 MB
    (7, 1 << 20, 7),                   # all rows fit
    (6, attention.CPU_BLOCK_BYTES + 1, 1),  # one row is already too big: one row per block
    (12, 3 << 20, 2),                  # largest divisor of 12 within the budget
])
def test_rows_per_block(batch, bytes_per_row, expected):
    assert attention.rows_per_block(batch, bytes_per_row) == expected


@pytest.mark.parametrize("batch,bytes_per_row", [(0, 4), (4, 0), (-2, 4)])
def test_rows_per_block_rejects_non_positive_sizes(batch, bytes_per_row):
    with pytest.raises(ValueError, match="must be positive"):
        attention.rows_per_block(batch, bytes_per_row)


def test_accelerator_layout_traces_the_einsums_on_cpu():
    """The GPU suite's dry run compiles GPU-shaped programs on CPU as the GPU will run them."""
    args = [jnp.asarray(x) for x in _inputs(3)]
    if jax.default_backend() != "cpu":
        pytest.skip("the blocked path is CPU-only")
    def trace():  # a fresh function each time: make_jaxpr caches traces per function
        return str(jax.make_jaxpr(lambda *a: attention.gqa_attention(*a))(*args))

    blocked = trace()
    with attention.accelerator_layout():
        forced = trace()
    assert "custom_vjp" in blocked and "custom_vjp" not in forced
    assert "custom_vjp" in trace()  # restored on exit
