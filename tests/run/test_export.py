"""PEFT export: HF transformers + peft, loading our exported adapter, give our LoRA-on logits."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genalign_jax.generator import load_llama
from genalign_jax.ppo.lora import add_lora
from genalign_jax.run.export import export_peft_adapter, import_peft_adapter
from tests.hf_fixtures import hf_logits, make_tiny_hf_llama, padded_batch

peft = pytest.importorskip("peft")
torch = pytest.importorskip("torch")


def _adapted(folder):
    model = load_llama(folder)
    add_lora(model, 4, 8.0, targets=("q_proj", "v_proj", "down_proj"), rngs=nnx.Rngs(1))
    # B starts at zero (the adapted model equals the base): make it non-trivial.
    key = jax.random.key(2)
    for _, module in nnx.iter_modules(model):
        if getattr(module, "lora_b", None) is not None:
            key, sub = jax.random.split(key)
            module.lora_b[...] = 0.05 * jax.random.normal(sub, module.lora_b.shape)
    return model


def test_exported_adapter_loaded_by_peft_matches_our_logits(tmp_path):
    base = make_tiny_hf_llama(tmp_path / "base", "tied_gqa")
    model = _adapted(tmp_path / "base")
    out = export_peft_adapter(model, tmp_path / "adapter", base_model=str(tmp_path / "base"),
                              dtype="float32")
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (4, 8.0)
    assert config["target_modules"] == ["down_proj", "q_proj", "v_proj"]
    peft_model = peft.PeftModel.from_pretrained(base, str(out)).eval()
    tokens, mask = padded_batch([9, 5], 9, model.config.vocab_size, left=True)
    ours = np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask)))
    theirs = hf_logits(peft_model, tokens, mask)
    real = mask.astype(bool)
    assert np.abs(ours[real] - theirs[real]).max() <= 1e-4
    # The adapter changes the logits (the check above is not base-vs-base).
    plain = np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask), use_lora=False))
    assert np.abs(plain[real] - ours[real]).max() > 1e-3


def test_import_round_trips_into_a_fresh_model(tmp_path):
    make_tiny_hf_llama(tmp_path / "base")
    model = _adapted(tmp_path / "base")
    export_peft_adapter(model, tmp_path / "adapter", base_model="x", dtype="float32")
    fresh = load_llama(tmp_path / "base")
    import_peft_adapter(fresh, tmp_path / "adapter")
    tokens, mask = padded_batch([7], 7, model.config.vocab_size, left=True)
    np.testing.assert_allclose(np.asarray(fresh(jnp.asarray(tokens), jnp.asarray(mask))),
                               np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask))),
                               atol=1e-6)


def test_bad_adapter_folders_are_clear_errors(tmp_path):
    make_tiny_hf_llama(tmp_path / "base")
    model = load_llama(tmp_path / "base")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        import_peft_adapter(model, tmp_path / "nothing")
    with pytest.raises(ValueError, match="no LoRA adapters"):
        export_peft_adapter(model, tmp_path / "out", base_model="x")
