"""add_lora on the stacked-layer Llama, and the value head."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genalign_jax.generator import Llama, get_preset
from genalign_jax.ppo import ValueHead, add_lora, count_params, has_lora


def test_adapters_have_layer_axis_and_are_selected_by_type():
    config = get_preset("tiny")
    model = Llama(config, rngs=nnx.Rngs(0))
    paths = add_lora(model, 4, 8.0, rngs=nnx.Rngs(1))
    assert len(paths) == 7 and "layers/attn/q_proj" in paths and "layers/mlp/down_proj" in paths
    q = model.layers.attn.q_proj
    L, d = config.num_layers, config.hidden_size
    assert q.lora_a.shape == (L, d, 4) and q.lora_b.shape == (L, 4, config.num_heads * 16)
    assert isinstance(q.lora_a, nnx.LoRAParam) and q.lora_scale == 2.0
    assert q.lora_a[...].dtype == jnp.float32
    lora = nnx.state(model, nnx.LoRAParam)
    assert count_params(lora) == sum(
        L * r * (i + o) for r, i, o in [(4, d, 64), (4, d, 32), (4, d, 32), (4, 64, d),
                                        (4, d, 128), (4, d, 128), (4, 128, d)])
    assert has_lora(model)
    # Per-layer A matrices differ (independent init along the stacked axis).
    assert not np.allclose(np.asarray(q.lora_a[0]), np.asarray(q.lora_a[1]))
    # Zero B: the adapted model starts as the base.
    assert float(jnp.abs(q.lora_b[...]).max()) == 0.0
    a = np.asarray(model.layers.mlp.down_proj.lora_a[...])
    assert abs(a.std() - np.sqrt(2.0 / 128)) < 0.02  # He-uniform over fan_in
    # (use_lora on/off equivalence to the base model is checked in test_update.py.)


def test_add_lora_errors():
    model = Llama(get_preset("tiny"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="no module named any of"):
        add_lora(model, 4, targets=("wq",), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="rank must be >= 1"):
        add_lora(model, 0, rngs=nnx.Rngs(0))
    add_lora(model, 2, targets=("q_proj",), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        add_lora(model, 2, targets=("q_proj",), rngs=nnx.Rngs(0))

    class Plain(nnx.Module):
        def __init__(self):
            self.q_proj = nnx.Linear(4, 4, rngs=nnx.Rngs(0))

    with pytest.raises(TypeError, match="cannot hold adapters"):
        add_lora(Plain(), 2, targets=("q_proj",), rngs=nnx.Rngs(0))


def test_value_head_init_and_shape():
    head = ValueHead(8, rngs=nnx.Rngs(0))
    hidden = jnp.ones((2, 3, 8), jnp.bfloat16)
    out = head(hidden)
    assert out.shape == (2, 3) and out.dtype == jnp.float32
    assert float(jnp.abs(out).max()) == 0.0
    small = ValueHead(8, init_scale=0.01, rngs=nnx.Rngs(0))
    assert 0 < float(jnp.abs(small.kernel[...]).max()) < 0.1
    with pytest.raises(ValueError, match="hidden_size must be >= 1"):
        ValueHead(0, rngs=nnx.Rngs(0))
