"""Numerical primitives shared by the generator and the classifier.

``token_matmul`` is the one place that multiplies activations by a weight
matrix.  It folds every leading (batch, time) axis into one row axis before the
matmul.  The result is the same matmul, but XLA:CPU's layout assignment
handles a rank-3 ``[batch, time, in] @ [in, out]`` badly in the backward
pass: the weight gradient contracts over two axes, so XLA makes transposed
(column-major) copies of the activation gradient and runs the fused
activation-derivative loops (GELU, SiLU) with strided writes.  At the MiniLM
MLP shape (16 x 64 tokens, 384 -> 1536 -> 384, GELU) one forward+backward took
86 ms rank-3 against 39 ms rank-2 on a 2-core CPU
(``benchmarks/results/mlp_layout_minilm_cpu.json``, from ``benchmarks/mlp_layout.py``).
On GPU the reshape is a free bitcast.
"""

from __future__ import annotations

import jax

__all__ = ["token_matmul"]


def token_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``x @ kernel`` for ``x`` ``[..., in]`` and ``kernel`` ``[in, out]``, computed as a rank-2 matmul."""
    if x.ndim <= 2:
        return x @ kernel
    rows = x.reshape(-1, x.shape[-1]) @ kernel
    return rows.reshape(*x.shape[:-1], kernel.shape[-1])
