"""Llama: parity with HF PyTorch, KV cache, config parsing, loader errors."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genalign_jax import hf_checkpoint
from genalign_jax.generator import (KVCache, Llama, default_positions, from_hf_config,
                                    get_preset, load_llama)
from tests.hf_fixtures import LLAMA_VARIANTS, hf_logits, make_tiny_hf_llama, padded_batch

torch = pytest.importorskip("torch")




@pytest.mark.parametrize("variant", sorted(LLAMA_VARIANTS))
@pytest.mark.parametrize("left", [True, False], ids=["left_pad", "right_pad"])
def test_logits_match_hf(tmp_path, variant, left):
    hf_model = make_tiny_hf_llama(tmp_path, variant)
    model = load_llama(tmp_path)
    assert model.config.tie_word_embeddings == (variant == "tied_gqa")
    tokens, mask = padded_batch([11, 7, 3], 11, model.config.vocab_size, left=left)
    ours = np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask)))
    theirs = hf_logits(hf_model, tokens, mask)
    real = mask.astype(bool)
    err = np.abs(ours[real] - theirs[real]).max()
    assert err <= 1e-4, f"{variant}: max |Δlogits| = {err}"


def test_llama3_rope_scaling_is_parsed(tmp_path):
    make_tiny_hf_llama(tmp_path, "llama3_rope")
    config = from_hf_config(tmp_path)
    assert config.rope_scaling is not None
    assert config.rope_scaling.factor == 8.0
    assert config.rope_scaling.original_max_position_embeddings == 32
    assert config.rope_theta == 500000.0


def test_legacy_rope_fields_are_accepted():
    legacy = {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
              "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
              "rope_theta": 500000.0,
              "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 8192}}
    config = from_hf_config(legacy)
    assert config.rope_theta == 500000.0 and config.rope_scaling.factor == 8.0
    assert config.num_kv_heads == 1 and config.head_dim == 4


def test_unsupported_configs_raise():
    base = {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2}
    with pytest.raises(ValueError, match="rope_type 'yarn' is not supported"):
        from_hf_config({**base, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1.0}})
    with pytest.raises(ValueError, match="model_type 'mistral'"):
        from_hf_config({**base, "model_type": "mistral"})
    with pytest.raises(ValueError, match="required field 'vocab_size'"):
        from_hf_config({k: v for k, v in base.items() if k != "vocab_size"})
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        get_preset("tiny", num_heads=3, num_kv_heads=2)


def test_remat_policies_give_the_same_gradients():
    """``remat`` trades memory for recompute only: full / dots / none give the same gradients."""
    import jax

    tokens, mask = padded_batch([9, 5], 9, 256, left=True)
    grads = {}
    for policy in ("full", "dots", "none"):
        model = Llama(get_preset("tiny", remat=policy), rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(model)

        def loss(s, graphdef=graphdef):
            logits = nnx.merge(graphdef, s)(jnp.asarray(tokens), jnp.asarray(mask))
            return jnp.mean(jnp.square(logits))

        grads[policy] = jax.tree.leaves(jax.jit(jax.grad(loss))(state))
    for policy in ("dots", "none"):
        for a, b in zip(grads["full"], grads[policy]):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert get_preset("tiny", remat=True).remat == "full"
    assert get_preset("tiny", remat=False).remat == "none"
    with pytest.raises(ValueError, match="LlamaConfig.remat must be one of"):
        get_preset("tiny", remat="some")


def test_presets_have_the_published_sizes():
    assert abs(get_preset("llama3p1_8b").num_params - 8.03e9) < 0.01e9
    assert abs(get_preset("llama3p2_1b").num_params - 1.24e9) < 0.01e9
    with pytest.raises(ValueError, match="unknown Llama preset"):
        get_preset("llama9")


def test_kv_cache_decode_matches_uncached_forward():
    config = get_preset("tiny_llama3")
    model = Llama(config, rngs=nnx.Rngs(3))
    tokens, mask = padded_batch([6, 4], 6, config.vocab_size, left=True, seed=1)
    new = np.random.default_rng(2).integers(3, config.vocab_size, size=(2, 5)).astype(np.int32)
    full_tokens = np.concatenate([tokens, new], 1)
    full_mask = np.concatenate([mask, np.ones_like(new)], 1)
    reference = np.asarray(model(jnp.asarray(full_tokens), jnp.asarray(full_mask)))

    max_len = 16
    cache = KVCache.init(config, 2, max_len)
    kv_mask = np.zeros((2, max_len), np.int32)
    kv_mask[:, :6] = mask
    kv_mask[:, 6:] = 1
    positions = np.asarray(default_positions(jnp.asarray(full_mask)))
    hidden, cache = model.forward(jnp.asarray(tokens), jnp.asarray(mask),
                                  jnp.asarray(positions[:, :6]), cache=cache, cache_index=0,
                                  kv_mask=jnp.asarray(kv_mask))
    logits = [np.asarray(model.logits(hidden))]
    step = nnx.jit(lambda m, t, p, c, i, k: m.forward(t, None, p, cache=c, cache_index=i,
                                                      kv_mask=k))
    for i in range(5):
        hidden, cache = step(model, jnp.asarray(new[:, i:i + 1]),
                             jnp.asarray(positions[:, 6 + i:7 + i]), cache, jnp.int32(6 + i),
                             jnp.asarray(kv_mask))
        logits.append(np.asarray(model.logits(hidden)))
    cached = np.concatenate(logits, 1)
    real = full_mask.astype(bool)
    err = np.abs(cached[real] - reference[real]).max()
    assert err <= 1e-5, f"cached decode differs from uncached forward by {err}"


def test_return_hidden_gives_final_normed_states():
    model = Llama(get_preset("tiny"), rngs=nnx.Rngs(0))
    tokens = jnp.ones((2, 4), jnp.int32)
    logits, hidden = model(tokens, return_hidden=True)
    assert hidden.shape == (2, 4, 64)
    np.testing.assert_allclose(np.asarray(model.logits(hidden)), np.asarray(logits), atol=1e-6)


# ----------------------------------------------------------------- loader errors


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint folder not found"):
        load_llama(tmp_path / "nope" / "deeper")
    with pytest.raises(FileNotFoundError, match="neither a local folder nor in the Hugging Face"):
        load_llama("nobody/not-a-model-xyz")


def test_missing_weights_file_is_a_clear_error(tmp_path):
    make_tiny_hf_llama(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="convert it to safetensors"):
        load_llama(tmp_path)


def _rewrite_safetensors(folder, edit):
    from safetensors.numpy import load_file, save_file
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors")


def test_missing_key_is_named(tmp_path):
    make_tiny_hf_llama(tmp_path)
    _rewrite_safetensors(tmp_path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(hf_checkpoint.CheckpointError, match=r"missing 1 tensor.*layers\.1\.mlp\.up_proj"):
        load_llama(tmp_path)


def test_unexpected_key_is_named(tmp_path):
    make_tiny_hf_llama(tmp_path)
    _rewrite_safetensors(tmp_path, lambda t: t.update(extra=np.zeros(3, np.float32)))
    with pytest.raises(hf_checkpoint.CheckpointError, match="unexpected tensor.*extra"):
        load_llama(tmp_path)


def test_shape_mismatch_is_named(tmp_path):
    make_tiny_hf_llama(tmp_path)
    _rewrite_safetensors(tmp_path, lambda t: t.update(
        {"model.norm.weight": np.zeros(65, np.float32)}))
    with pytest.raises(hf_checkpoint.CheckpointError,
                       match=r"model\.norm\.weight.*expected shape \(64,\).*found \(65,\)"):
        load_llama(tmp_path)


def test_unsupported_architecture_is_named(tmp_path):
    make_tiny_hf_llama(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        load_llama(tmp_path)


def test_sharded_safetensors_index_loads(tmp_path):
    hf_model = make_tiny_hf_llama(tmp_path)
    # Re-save as several shards with an index file.
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    hf_model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model = load_llama(tmp_path)
    tokens, mask = padded_batch([5, 5], 5, 128, left=True)
    err = np.abs(np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask)))
                 - hf_logits(hf_model, tokens, mask)).max()
    assert err <= 1e-4
