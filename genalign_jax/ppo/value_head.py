"""Scalar value head on a causal LM's final hidden states."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["ValueHead"]


class ValueHead(nnx.Module):
    """``V(h) = h · w + b`` per position, computed in float32, no dropout.

    A zero (``init_scale=0``) or small initial kernel keeps the first value
    predictions near 0, so early value errors do not swamp the policy loss
    when the trunk is shared.
    """

    def __init__(self, hidden_size: int, *, init_scale: float = 0.0, rngs: nnx.Rngs):
        if hidden_size < 1:
            raise ValueError(f"ValueHead: hidden_size must be >= 1, got {hidden_size}")
        if init_scale > 0:
            kernel = init_scale * jax.random.normal(rngs.params(), (hidden_size,), jnp.float32)
        else:
            kernel = jnp.zeros((hidden_size,), jnp.float32)
        self.kernel = nnx.Param(kernel)
        self.bias = nnx.Param(jnp.zeros((), jnp.float32))

    def __call__(self, hidden: jax.Array) -> jax.Array:
        """Values ``[...]`` for hidden states ``[..., D]``."""
        return hidden.astype(jnp.float32) @ self.kernel[...] + self.bias[...]
