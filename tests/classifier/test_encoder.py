"""The RoBERTa/BERT encoder: HF PyTorch parity, positions, bf16, dropout, presets, config errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genalign_jax.classifier import encoder
from genalign_jax.classifier.encoder import create_encoder_classifier, encoder_positions
from genalign_jax.classifier.encoder_config import from_hf_config, get_preset
from genalign_jax.classifier.weights import load_encoder_classifier
from tests.hf_fixtures import TINY_ENCODER, make_tiny_hf_encoder


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
    # The full-model dropout path is exercised by training (tests/classifier/test_train.py);
    # here the head alone keeps the compile small.
    config = get_preset("tiny_roberta", hidden_dropout=0.25)
    head = create_encoder_classifier(config, 0).head
    features = jnp.ones((64, config.hidden_size))
    call = nnx.jit(lambda h, x, k: h(x, k))
    np.testing.assert_array_equal(call(head, features, None), call(head, features, None))
    key = jax.random.key(0, impl="rbg")
    assert not np.allclose(call(head, features, None), call(head, features, key))
    dropped = np.asarray(encoder._dropout(jnp.ones((20000,)), 0.25, key))
    assert abs((dropped == 0).mean() - 0.25) < 0.02
    np.testing.assert_allclose(dropped[dropped != 0], 1 / 0.75, rtol=1e-6)


def test_unrolled_and_rolled_layers_give_the_same_logits_and_gradients():
    """``unroll_layers`` changes how the layer scan is compiled, not what it computes
    (with dropout on, so the per-layer keys must line up too)."""
    tokens, mask = padded([9, 5, 7], 9, 128, 1)
    key = jax.random.key(3, impl="rbg")
    out = {}
    for unroll in (True, False):
        config = get_preset("tiny_roberta", hidden_dropout=0.2, unroll_layers=unroll)
        graphdef, state = nnx.split(create_encoder_classifier(config, 0))

        def loss(s, graphdef=graphdef):
            logits = nnx.merge(graphdef, s)(jnp.asarray(tokens), jnp.asarray(mask),
                                            dropout_key=key)
            return jnp.sum(jnp.square(logits)), logits

        (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(state)
        out[unroll] = (np.asarray(logits), jax.tree.leaves(grads))
    np.testing.assert_allclose(out[True][0], out[False][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(out[True][1], out[False][1], strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    assert get_preset("minilm_l6").unroll_layers  # the default


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
