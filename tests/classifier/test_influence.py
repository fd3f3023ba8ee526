"""Influence credit on a tiny random encoder: finite differences, explicit per-example gradients
(vmap(grad)) with and without Adam's preconditioner, normalisations, checkpoints, compiles."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from genalign_jax.classifier import batching, evaluate, train_classifier
from genalign_jax.classifier import influence as influence_lib
from genalign_jax.classifier.influence import (DEFAULTS, center_by_label, error_balanced_weights,
                                               influence_scores)
from genalign_jax.classifier.program import GraphKey, cross_entropy
from genalign_jax.classifier.train import checkpoint_steps, lr_at
from genalign_jax.compile_counter import CompileCounter
from genalign_jax.reward import RewardConfig
from genalign_jax.sharding import param_path
from tests.classifier import CONFIG, separable_data

# Class-balanced weights and label smoothing: the credit must use the training loss.
TRAIN_CONFIG = dataclasses.replace(CONFIG, epochs=3, class_balanced=True, label_smoothing=0.1)


def _raw_scores(*args, **kwargs):
    """The plain TracIn sums (no golden class balance, no label centering)."""
    return influence_scores(*args, golden_balance="none", center="none", **kwargs)


@pytest.fixture(scope="module")
def run(pretrained):
    texts, labels = separable_data(24, seed=3, long_every=5)
    labels[:8] = np.r_[labels[:8][:6], 1, 1]  # imbalanced: class weights differ from 1
    golden = separable_data(20, seed=4)
    model, stats = train_classifier(pretrained, texts, labels, TRAIN_CONFIG, rng=0,
                                    keep_checkpoints=2)
    return model, stats, (texts, labels), golden


def _batch(classifier, texts):
    encoded = batching.encode_texts(classifier.tokenizer, texts, classifier.max_length)
    b = batching.make_batch(encoded, np.arange(len(texts)), len(texts), (classifier.max_length,))
    return b.tokens, b.mask


def _subset_mask(params, subset, last_k, num_layers):
    """1 on the parameters θ spans, 0 elsewhere (stacked layer arrays masked per layer)."""
    def leaf(path, x):
        name = param_path(path)
        if subset == "all" or name.startswith("head"):
            return jnp.ones_like(x)
        if subset == "head+last_k" and "pooler" in name:
            return jnp.ones_like(x)
        if subset == "head+last_k" and "layers" in name:
            keep = (jnp.arange(num_layers) >= num_layers - last_k).astype(x.dtype)
            return jnp.broadcast_to(keep.reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)
        return jnp.zeros_like(x)
    return jax.tree_util.tree_map_with_path(leaf, params)


@functools.partial(jax.jit, static_argnums=(0,))
def _full_grads(graph, params, class_weights, smoothing, tokens, mask, labels, g_tokens, g_mask,
                g_labels):
    """Per-example gradients of the training loss by vmap(grad) of the full model (its own
    forward, independent of influence.py's split forward) and the golden gradient."""
    def loss_i(p, t, m, y):
        logits = nnx.merge(graph.graphdef, p)(t[None], m[None])
        return class_weights[y] * cross_entropy(logits, y[None], smoothing)[0]

    per_example = jax.vmap(jax.grad(loss_i), in_axes=(None, 0, 0, 0))(params, tokens, mask,
                                                                      labels)
    golden = jax.grad(lambda p: jnp.mean(cross_entropy(
        nnx.merge(graph.graphdef, p)(g_tokens, g_mask), g_labels, 0.0)))(params)
    return per_example, golden


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _restrict(subset, last_k, adam, params, per_example, golden, nu, count, b2, eps):
    """Per-example and golden gradients restricted to the subset; the former preconditioned."""
    num_layers = params["encoder"]["layers"]["query"]["kernel"].shape[0]
    sel = _subset_mask(params, subset, last_k, num_layers)
    golden = jax.tree.map(jnp.multiply, golden, sel)
    if adam:
        _, unravel = ravel_pytree(params)
        precond = jax.tree.map(lambda v: 1.0 / (jnp.sqrt(v / (1 - b2 ** count)) + eps),
                               unravel(nu))
        sel = jax.tree.map(jnp.multiply, sel, precond)
    return jax.tree.map(jnp.multiply, per_example, sel), golden


@pytest.fixture(scope="module")
def full_grads(run):
    """Explicit per-example and golden gradients of every checkpoint (computed once)."""
    model, stats, (texts, labels), golden = run
    tokens, mask = _batch(model, texts)
    g_tokens, g_mask = _batch(model, golden[0])
    return [_full_grads(GraphKey(model.graphdef), ck.params,
                        np.asarray(ck.class_weights, np.float32), np.float32(ck.label_smoothing),
                        tokens, mask, np.asarray(labels, np.int32), g_tokens, g_mask,
                        np.asarray(golden[1], np.int32)) for ck in stats.checkpoints]


def _explicit(ck, grads, subset, last_k, adam):
    """(restricted, preconditioned per-example gradients; restricted golden gradient)."""
    return _restrict(subset, last_k, adam, ck.params, *grads, ck.nu, np.float32(ck.count),
                     np.float32(ck.adam_b2), np.float32(ck.adam_eps))


@jax.jit
def _sgd_step(params, grads, i, eta):
    return jax.tree.map(lambda p, g: p - eta * g[i], params, grads)


def _dots(pg, golden_grad):
    return np.asarray(sum(jnp.sum(a * b, axis=tuple(range(1, a.ndim)))
                          for a, b in zip(jax.tree.leaves(pg), jax.tree.leaves(golden_grad))),
                      np.float64)


def _norms(tree):
    return np.sqrt(np.asarray(sum(jnp.sum(jnp.square(a), axis=tuple(range(1, a.ndim)))
                                  for a in jax.tree.leaves(tree)), np.float64))


def test_checkpoints_are_evenly_spaced_and_record_the_step(run):
    model, stats, _, _ = run
    assert checkpoint_steps(100, 3) == (33, 67, 100) and checkpoint_steps(5, 0) == ()
    total = stats.steps  # 3 epochs x 2 steps
    assert [c.step for c in stats.checkpoints] == list(checkpoint_steps(total, 2)) == [3, 6]
    warmup = round(TRAIN_CONFIG.warmup_ratio * total)
    lrs = [lr_at(s, total, warmup, TRAIN_CONFIG.learning_rate) for s in range(total)]
    for prev, ck in zip((0, 3), stats.checkpoints):
        assert ck.count == ck.step
        assert ck.learning_rate == pytest.approx(lrs[ck.step - 1], rel=1e-6)
        assert ck.lr_sum == pytest.approx(sum(lrs[prev:ck.step]), rel=1e-6)
        assert ck.label_smoothing == pytest.approx(0.1) and not np.allclose(ck.class_weights, 1)
        assert ck.nu.shape == (model.config.num_params,) and float(ck.nu.min()) >= 0
    # The last checkpoint is the trained model; the first differs from it.
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, model.params),
                 jax.tree.map(np.asarray, stats.checkpoints[-1].params))
    assert not np.array_equal(np.asarray(stats.checkpoints[0].params["head"]["out_proj"]["kernel"]),
                              np.asarray(model.params["head"]["out_proj"]["kernel"]))


@pytest.mark.parametrize("subset,last_k", [("all", 0), ("head+last_k", 1)])
def test_sgd_credit_is_minus_the_golden_loss_change_of_one_step(run, full_grads, subset, last_k):
    model, stats, (texts, labels), golden = run
    texts, labels = texts[:6], labels[:6]
    ck = stats.checkpoints[0]
    pg, golden_grad = _explicit(ck, full_grads[0], subset, last_k, adam=False)
    pg = jax.tree.map(lambda g: g[:6], pg)
    explicit = _dots(pg, golden_grad)
    eta = 2e-4 / float(np.max(_norms(pg)))  # step length 2e-4: linear regime, above fp32 noise
    ck = dataclasses.replace(ck, learning_rate=eta, lr_sum=eta)
    credit = _raw_scores(model, [ck], texts, labels, *golden, params=subset, last_k=last_k,
                              preconditioner="sgd", normalize="none")
    np.testing.assert_allclose(credit, eta * explicit, rtol=1e-5, atol=1e-9 * eta)
    base = evaluate(model.replace(params=ck.params), *golden).loss
    for i in range(len(texts)):
        stepped = _sgd_step(ck.params, pg, i, np.float32(eta))  # one SGD step on z_i alone
        delta = evaluate(model.replace(params=stepped), *golden).loss - base
        assert credit[i] == pytest.approx(-delta, rel=1e-2), (i, credit[i], -delta)


@pytest.mark.parametrize("subset,last_k", [("head", 0), ("head+last_k", 1), ("all", 0)])
def test_adam_credit_and_normalisations_match_explicit_per_example_gradients(run, full_grads,
                                                                             subset, last_k):
    model, stats, (texts, labels), golden = run
    total = np.zeros(len(texts))
    unit = np.zeros(len(texts))
    cosine = np.zeros(len(texts))
    for ck, grads in zip(stats.checkpoints, full_grads):
        pg, golden_grad = _explicit(ck, grads, subset, last_k, adam=True)
        dots = ck.lr_sum * _dots(pg, golden_grad)
        total += dots
        unit += dots / _norms(pg)
        cosine += dots / _norms(pg) / _norms(jax.tree.map(lambda g: g[None], golden_grad))[0]
    kw = dict(params=subset, last_k=last_k, preconditioner="adam")
    got = _raw_scores(model, stats.checkpoints, texts, labels, *golden, normalize="none",
                           **kw)
    np.testing.assert_allclose(got, total, rtol=1e-5, atol=1e-6 * np.abs(total).max())
    got = _raw_scores(model, stats.checkpoints, texts, labels, *golden, normalize="unit",
                           **kw)
    np.testing.assert_allclose(got, unit, rtol=1e-4, atol=1e-5 * np.abs(unit).max())
    got = _raw_scores(model, stats.checkpoints, texts, labels, *golden, normalize="cosine",
                           **kw)
    np.testing.assert_allclose(got, cosine, rtol=1e-4, atol=1e-5 * np.abs(cosine).max())


def test_step_weighting_golden_subset_and_errors(run):
    model, stats, (texts, labels), golden = run
    kw = dict(params="head", preconditioner="sgd", normalize="none")
    seg = _raw_scores(model, stats.checkpoints[:1], texts, labels, *golden, **kw)
    step = _raw_scores(model, stats.checkpoints[:1], texts, labels, *golden,
                            lr_weighting="step", **kw)
    ck = stats.checkpoints[0]
    np.testing.assert_allclose(step, seg * ck.learning_rate / ck.lr_sum, rtol=1e-5)
    sub = _raw_scores(model, stats.checkpoints, texts, labels, *golden, golden_size=7, **kw)
    assert sub.shape == (len(texts),) and not np.allclose(
        sub, _raw_scores(model, stats.checkpoints, texts, labels, *golden, **kw))
    with pytest.raises(ValueError, match="params must be one of"):
        _raw_scores(model, stats.checkpoints, texts, labels, *golden, params="body")
    with pytest.raises(ValueError, match="normalize must be one of"):
        _raw_scores(model, stats.checkpoints, texts, labels, *golden, normalize="l2")
    with pytest.raises(ValueError, match="last_k must be in"):
        _raw_scores(model, stats.checkpoints, texts, labels, *golden,
                         params="head+last_k", last_k=9)
    with pytest.raises(ValueError, match="no checkpoints"):
        _raw_scores(model, (), texts, labels, *golden)


def test_a_second_call_with_the_same_shapes_compiles_nothing(run, pretrained):
    model, stats, (texts, labels), golden = run
    kw = dict(params="head+last_k", last_k=1, preconditioner="adam", normalize="unit")
    first = _raw_scores(model, stats.checkpoints, texts, labels, *golden, **kw)
    # Other texts in the same length buckets, a retrained model: same shapes, no compile.
    other, other_labels = separable_data(24, seed=9, long_every=5)
    retrained, again = train_classifier(pretrained, texts, labels, TRAIN_CONFIG, rng=1,
                                        keep_checkpoints=2)
    with CompileCounter() as compiles:
        second = _raw_scores(retrained, again.checkpoints, other, other_labels, *golden,
                                  **kw)
        _raw_scores(model, stats.checkpoints, texts, labels, *golden, **kw)
    assert compiles.count == 0, f"{compiles.count} new XLA compilation(s)"
    assert np.isfinite(first).all() and np.isfinite(second).all()
    assert not np.allclose(first, second)


def test_error_balanced_weights_cancel_the_golden_prior_pull():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(30, 2))
    probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    labels = rng.integers(0, 2, 30)
    w = error_balanced_weights(probs, labels, 2)
    # Two classes: the weighted residuals sum to zero (no gradient along the logit biases).
    resid = probs - np.eye(2)[labels]
    np.testing.assert_allclose((w[labels][:, None] * resid).sum(0), 0.0, atol=1e-12)
    assert (w > 0).all()
    # A class with no golden row gets weight 0.
    w3 = error_balanced_weights(probs[:, [0, 1, 1]] / [1, 2, 2], labels, 3)
    assert w3[2] == 0.0 and (w3[:2] > 0).all()


def test_balanced_golden_and_label_centering_match_the_explicit_reference(run, full_grads):
    """golden_balance="error": the golden gradient is the class-weighted mean; center="label"
    subtracts each label's mean credit."""
    model, stats, (texts, labels), golden = run
    g_tokens, g_mask = _batch(model, golden[0])
    total = np.zeros(len(texts))
    for ck in stats.checkpoints:
        logits = np.asarray(nnx.merge(model.graphdef, ck.params)(g_tokens, g_mask), np.float64)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        w = error_balanced_weights(probs, np.asarray(golden[1]), model.num_labels)
        row_w = np.asarray(w[np.asarray(golden[1])], np.float32)
        weighted = jax.grad(lambda p: jnp.mean(row_w * cross_entropy(
            nnx.merge(model.graphdef, p)(g_tokens, g_mask),
            np.asarray(golden[1], np.int32), 0.0)))(ck.params)
        per_example = _full_grads(GraphKey(model.graphdef), ck.params,
                                  np.asarray(ck.class_weights, np.float32),
                                  np.float32(ck.label_smoothing), *_batch(model, texts),
                                  np.asarray(labels, np.int32), g_tokens, g_mask,
                                  np.asarray(golden[1], np.int32))[0]
        pg, golden_grad = _restrict("head", 0, True, ck.params, per_example, weighted, ck.nu,
                                    np.float32(ck.count), np.float32(ck.adam_b2),
                                    np.float32(ck.adam_eps))
        total += ck.lr_sum * _dots(pg, golden_grad)
    kw = dict(params="head", preconditioner="adam", normalize="none")
    raw = influence_scores(model, stats.checkpoints, texts, labels, *golden,
                           golden_balance="error", center="none", **kw)
    np.testing.assert_allclose(raw, total, rtol=1e-4, atol=1e-5 * np.abs(total).max())
    unbalanced = influence_scores(model, stats.checkpoints, texts, labels, *golden,
                                  golden_balance="none", center="none", **kw)
    assert not np.allclose(raw, unbalanced)
    centered = influence_scores(model, stats.checkpoints, texts, labels, *golden,
                                golden_balance="error", center="label", **kw)
    np.testing.assert_allclose(centered, center_by_label(raw, labels), rtol=1e-9, atol=1e-12)
    for label in np.unique(labels):
        assert abs(centered[labels == label].mean()) < 1e-9 * np.abs(raw).max()
    with pytest.raises(ValueError, match="golden_balance must be one of"):
        influence_scores(model, stats.checkpoints, texts, labels, *golden, golden_balance="x")
    with pytest.raises(ValueError, match="center must be one of"):
        influence_scores(model, stats.checkpoints, texts, labels, *golden, center="class")


@pytest.mark.parametrize("subset,last_k", [("head", 0), ("head+last_k", 1)])
def test_kept_golden_features_give_the_credit_of_a_second_forward(run, monkeypatch, subset,
                                                                  last_k):
    """golden_balance="error" keeps the features below the subset from the weighting forward
    for the gradient pass; over the memory budget it recomputes them: the same credit."""
    model, stats, (texts, labels), golden = run
    kw = dict(params=subset, last_k=last_k, golden_balance="error", center="none")
    kept = influence_scores(model, stats.checkpoints, texts, labels, *golden, **kw)
    monkeypatch.setattr(influence_lib, "_KEEP_FEATURES_BYTES", 0)
    recomputed = influence_scores(model, stats.checkpoints, texts, labels, *golden, **kw)
    np.testing.assert_allclose(kept, recomputed, rtol=1e-6, atol=1e-9 * np.abs(kept).max())
    assert np.abs(kept).max() > 0


def test_run_config_defaults_are_the_library_defaults():
    rc = RewardConfig()
    assert {k: getattr(rc, f"influence_{k}") for k in DEFAULTS if k != "lr_weighting"} == {
        k: v for k, v in DEFAULTS.items() if k != "lr_weighting"}
