"""``genalign_jax.ops.token_matmul``: the same product and gradients as ``@``, any rank."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genalign_jax.ops import token_matmul


@pytest.mark.parametrize("shape", [(5,), (4, 5), (2, 3, 5), (2, 2, 3, 5)])
def test_token_matmul_equals_matmul_with_its_gradients(shape):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(5, 7)), jnp.float32)
    out = token_matmul(x, kernel)
    assert out.shape == (*shape[:-1], 7)
    np.testing.assert_allclose(out, x @ kernel, rtol=1e-6, atol=1e-6)

    def loss(fn):
        return lambda a, w: jnp.sum(jax.nn.silu(fn(a, w)) ** 2)

    ours = jax.grad(loss(token_matmul), argnums=(0, 1))(x, kernel)
    ref = jax.grad(loss(jnp.matmul), argnums=(0, 1))(x, kernel)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_token_matmul_folds_leading_axes_into_one_rank2_dot():
    """The point of it: the lowered program has only rank-2 dots (see the module docstring)."""
    x = jnp.ones((2, 3, 4))
    kernel = jnp.ones((4, 6))
    text = jax.jit(token_matmul).lower(x, kernel).as_text()
    dots = [line for line in text.splitlines() if "dot_general" in line]
    assert len(dots) == 1 and "(tensor<6x4xf32>, tensor<4x6xf32>) -> tensor<6x6xf32>" in dots[0], dots
