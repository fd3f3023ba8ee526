"""Mesh construction and a Llama sharded 2x4 (fsdp x tensor) over 8 simulated CPU devices."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import pytest
from jax.sharding import PartitionSpec as P

from genalign_jax import sharding

REPO = Path(__file__).resolve().parents[1]


def test_make_mesh_sizes_and_errors():
    mesh = sharding.make_mesh()
    assert mesh.axis_names == sharding.AXES
    assert mesh.shape["data"] == len(jax.devices())
    with pytest.raises(ValueError, match="unknown mesh axes"):
        sharding.make_mesh({"model": 1})
    with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
        sharding.make_mesh({"data": -1, "fsdp": -1})
    with pytest.raises(ValueError, match="needs 4 devices"):
        sharding.make_mesh({"fsdp": 2, "tensor": 2})


def test_spec_for_skips_indivisible_dims():
    mesh = sharding.make_mesh()
    spec = sharding.spec_for("layers/attn/q_proj/kernel", (2, 64, 64), mesh)
    assert spec == P(None, "fsdp", "tensor")
    assert sharding.spec_for("something/else", (3,), mesh) == P()


_SCRIPT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {repo!r})
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    jax.config.update("jax_default_matmul_precision", "highest")
    from tests.hf_fixtures import make_tiny_hf_llama, padded_batch
    from genalign_jax import sharding
    from genalign_jax.generator import load_llama
    from pathlib import Path
    folder = Path({folder!r})
    make_tiny_hf_llama(folder, "tied_gqa")
    assert len(jax.devices()) == 8
    single = load_llama(folder)
    mesh = sharding.make_mesh({{"fsdp": 2, "tensor": 4}})
    sharded = load_llama(folder, mesh=mesh)
    q = sharded.layers.attn.q_proj.kernel[...]
    assert q.sharding.spec == P(None, "fsdp", "tensor"), q.sharding.spec
    assert len(q.sharding.device_set) == 8
    assert sharded.layers.attn.o_proj.kernel[...].sharding.spec == P(None, "tensor", "fsdp")
    assert sharded.embed_tokens[...].sharding.spec == P("tensor", "fsdp"), sharded.embed_tokens[...].sharding
    assert sharded.norm.scale[...].sharding.spec == P()
    tokens, mask = padded_batch([8, 5, 3, 8], 8, 128, left=True)
    ref = np.asarray(single(jnp.asarray(tokens), jnp.asarray(mask)))
    from flax import nnx
    tok = jax.device_put(jnp.asarray(tokens), sharding.batch_sharding(mesh))
    msk = jax.device_put(jnp.asarray(mask), sharding.batch_sharding(mesh))
    with jax.set_mesh(mesh):
        out = nnx.jit(lambda m, t, k: m(t, k))(sharded, tok, msk)
    err = float(np.abs(np.asarray(out) - ref)[mask.astype(bool)].max())
    print("MAXERR", err)
    assert err < 1e-5, err
    print("OK")
""")


def test_llama_sharded_2x4_matches_single_device(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    script = _SCRIPT.format(repo=str(REPO), folder=str(tmp_path / "llama"))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr[-4000:]
