"""``genalign_jax.cpu_dots``: CPU programs compiled with Eigen dots compute the same thing."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genalign_jax.cpu_dots import jit_eigen_dots_on_cpu

YNN = "__ynn_fusion"  # XLA:CPU's fusion kind of a product handed to YNNPACK

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu",
                                reason="compiler options for XLA:CPU")


def test_compiles_no_ynnpack_dot_and_computes_the_same():
    def step(scale, x, w):
        return jnp.tanh(x @ w) * scale

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(192, 64)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(64, 48)), jnp.float32)
    eigen = jit_eigen_dots_on_cpu(step, static_argnums=(0,))
    default = jax.jit(step, static_argnums=(0,))
    assert eigen.__name__ == "step"
    eigen_text = eigen.lower(2.0, x, w).compile().as_text()
    default_text = default.lower(2.0, x, w).compile().as_text()
    assert " dot(" in eigen_text and YNN not in eigen_text
    if YNN not in default_text:
        pytest.skip("this jaxlib's XLA:CPU does not hand dots to YNNPACK by default")
    np.testing.assert_allclose(eigen(2.0, x, w), default(2.0, x, w), rtol=1e-5, atol=1e-5)


def test_importing_the_programs_starts_no_backend():
    # jit_eigen_dots_on_cpu picks by backend at call time; XLA reads XLA_FLAGS when the first
    # backend starts, so importing must not start one.
    code = ("import genalign_jax.ppo, genalign_jax.run.trainer\n"
            "from jax._src import xla_bridge\n"
            "assert not xla_bridge.backends_are_initialized()")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
