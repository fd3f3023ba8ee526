"""XLA:CPU's dot library per program: Eigen where products have thousands of rows.

jaxlib 0.10 hands every CPU dot to YNNPACK.  Measured on the 2-core AMD EPYC (AVX-512) development
machine, interleaved in one process (``benchmarks/cpu_dot_library.py``): for products with
thousands of rows at SmolLM2's widths (the prefill's 6656 and PPO's 8192 rows) XLA's Eigen path
is 1.12-1.37x faster (k/v projections: a tie); for the sampler's decode (32 rows) YNNPACK is
1.6-1.75x faster, and 1.0-1.3x at the classifier's 1024 rows.  So the programs made of many-row
products (the sampler's prefill, the rollout's scoring forward, the PPO update) compile with
Eigen dots on CPU and everything else keeps XLA's default.  Only float rounding changes
(another summation order); accelerators are unaffected.  These per-program compiler options
take precedence over the same option in ``XLA_FLAGS``.

A leaf module (it imports only JAX), shared by the generator and the PPO package:
``import genalign_jax.ppo`` may pull it in and still nothing else of the project.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

__all__ = ["EIGEN_CPU_DOTS", "jit_eigen_dots_on_cpu"]

# XLA compiler options: no op kind goes to YNNPACK, so XLA:CPU runs dots with Eigen.
EIGEN_CPU_DOTS: dict[str, str] = {"xla_cpu_experimental_ynn_fusion_type": ""}


class jit_eigen_dots_on_cpu:  # noqa: N801 (used like jax.jit, as a decorator)
    """``jax.jit(fun, **jit_kwargs)`` whose CPU programs run their dots with Eigen (see above).

    Two jitted functions share ``fun``; each call picks by ``jax.default_backend()`` (decided at
    call time, so importing a module that uses it starts no backend).  ``lower`` works as on a
    ``jax.jit`` function.
    """

    def __init__(self, fun: Callable[..., Any], **jit_kwargs: Any) -> None:
        self._cpu = jax.jit(fun, compiler_options=EIGEN_CPU_DOTS, **jit_kwargs)
        self._default = jax.jit(fun, **jit_kwargs)
        functools.update_wrapper(self, fun)

    def _jitted(self) -> Any:
        return self._cpu if jax.default_backend() == "cpu" else self._default

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._jitted()(*args, **kwargs)

    def lower(self, *args: Any, **kwargs: Any) -> Any:
        """``jax.jit(...).lower`` of the function this backend runs."""
        return self._jitted().lower(*args, **kwargs)
