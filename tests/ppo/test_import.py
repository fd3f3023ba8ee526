"""`import genalign_jax.ppo` stays light: no datasets, transformers, torch or project modules
(except the JAX-only leaf ``genalign_jax.cpu_dots``)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("datasets", "transformers", "torch", "tensorboardX", "sklearn", "orbax")


def test_import_pulls_in_nothing_but_jax_flax_optax():
    code = ("import json, sys; import genalign_jax.ppo; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{HEAVY!r} or m.startswith('genalign_jax'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, env={"JAX_PLATFORMS": "cpu", "PATH": ""})
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY]
    assert not heavy, f"genalign_jax.ppo imported {heavy}"
    # genalign_jax.cpu_dots imports only JAX (the per-program XLA:CPU dot library).
    ours = [m for m in loaded if m not in ("genalign_jax", "genalign_jax.cpu_dots")
            and not m.startswith("genalign_jax.ppo")]
    assert not ours, f"genalign_jax.ppo imported other project modules: {ours}"
