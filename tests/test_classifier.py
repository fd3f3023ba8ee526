"""Classifier training/evaluation: accuracy, metrics vs NumPy/sklearn, compile reuse, errors.

One tiny random RoBERTa (hidden 32, 2 layers) and one training config are
shared by all tests, so the train step compiles once per process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from genalign_jax import classifier as clf_lib
from genalign_jax.classifier import (ClassifierConfig, build_classifier, embed, evaluate,
                                     load_pretrained_classifier, metrics_from_logits,
                                     predict_logits, train_classifier)
from genalign_jax.models.roberta import get_preset
from tests.hf_fixtures import make_tiny_tokenizer

POSITIVE = ["good", "great", "fine", "nice", "love", "superb"]
NEGATIVE = ["bad", "awful", "poor", "hate", "worst", "boring"]
FILLER = ["the", "movie", "was", "a", "plot", "film", "it", "really", "and", "story"]
REPO = Path(__file__).resolve().parents[1]


def separable_data(n: int, seed: int, long_every: int = 0):
    """Texts of filler words plus 1-2 class words; label 0 = positive words, 1 = negative.

    With ``long_every`` every such example is longer than 16 tokens (second length bucket).
    """
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        y = i % 2
        count = 20 if long_every and i % long_every == 0 else rng.integers(2, 9)
        words = list(rng.choice(FILLER, count))
        for _ in range(rng.integers(1, 3)):
            words.insert(rng.integers(0, len(words) + 1), rng.choice(NEGATIVE if y else POSITIVE))
        texts.append(" ".join(words))
        labels.append(y)
    return texts, np.asarray(labels)


def tiny_tokenizer():
    return make_tiny_tokenizer(None, POSITIVE + NEGATIVE + FILLER)


CONFIG = ClassifierConfig(num_labels=2, max_length=32, learning_rate=5e-3, epochs=10,
                          batch_size=16, warmup_ratio=0.1, length_buckets=(16, 32), seed=0)


@contextlib.contextmanager
def count_backend_compiles():
    """Collects one entry per XLA backend compile (jit cache misses and new eager-op shapes)."""
    events: list[float] = []

    def listener(event: str, duration: float, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def pretrained(tokenizer):
    config = get_preset("tiny_roberta", vocab_size=len(tokenizer))
    return build_classifier(config, tokenizer, seed=0, max_length=32, mesh=None)


@pytest.fixture(scope="module")
def train_data():
    return separable_data(64, seed=0)


@pytest.fixture(scope="module")
def golden_data():
    return separable_data(40, seed=1)


@pytest.fixture(scope="module")
def trained(pretrained, train_data):
    return train_classifier(pretrained, *train_data, CONFIG, rng=0)


def test_training_separates_the_classes(trained, golden_data):
    model, stats = trained
    result = evaluate(model, *golden_data)
    assert result.accuracy >= 0.95, result
    assert result.n == 40 and stats.steps == CONFIG.epochs * 4
    assert stats.final_loss < 0.5 * stats.losses[0]
    assert np.isfinite(stats.grad_norms).all() and stats.examples_per_second > 0


def _sklearn_checks(result, logits, labels):
    from sklearn.metrics import accuracy_score, f1_score, recall_score
    z = logits.astype(np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    numpy_ce = -logp[np.arange(len(labels)), labels].mean()
    preds = logits.argmax(-1)
    assert result.loss == pytest.approx(numpy_ce, abs=1e-6)
    assert result.accuracy == pytest.approx(accuracy_score(labels, preds))
    assert result.macro_f1 == pytest.approx(f1_score(labels, preds, average="macro"))
    present = np.unique(labels)
    recalls = recall_score(labels, preds, average=None, labels=present)
    np.testing.assert_allclose(result.per_class_accuracy[present], recalls)


@pytest.mark.parametrize("which", ["trained", "untrained"])
def test_golden_metrics_match_numpy_and_sklearn(which, trained, pretrained, golden_data):
    model = trained[0] if which == "trained" else pretrained  # untrained: imperfect predictions
    texts, labels = golden_data
    result = evaluate(model, texts, labels)
    _sklearn_checks(result, predict_logits(model, texts), labels)


def test_metrics_with_missing_classes_match_sklearn():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(30, 4)).astype(np.float32)
    labels = rng.choice([0, 1, 3], size=30)  # class 2 absent from the labels
    result = metrics_from_logits(logits, labels)
    _sklearn_checks(result, logits, labels)
    assert np.isnan(result.per_class_accuracy[2])


def test_every_example_is_evaluated_exactly_once(trained, tokenizer):
    model = trained[0]
    texts, labels = separable_data(37, seed=5, long_every=3)  # two length buckets, ragged batches
    batched = predict_logits(model, texts, batch_size=8)
    one_by_one = np.concatenate([predict_logits(model, [t], batch_size=8) for t in texts])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    result = evaluate(model, texts, labels, batch_size=8)
    assert result.n == 37


def test_second_call_with_same_shapes_compiles_nothing(pretrained, trained, train_data,
                                                       golden_data):
    texts, labels = train_data
    # Warm every path once (the training fixture already compiled the step).
    evaluate(trained[0], *golden_data)
    embed(trained[0], golden_data[0])
    before = dict(clf_lib.TRACE_COUNTS)
    with count_backend_compiles() as compiles:
        again, stats = train_classifier(pretrained, texts, labels, CONFIG, rng=1)
        fewer, _ = train_classifier(pretrained, texts[:50], labels[:50], CONFIG, rng=2)
        evaluate(again, *golden_data)
        embed(fewer, golden_data[0], pooling="cls")
    assert compiles == [], f"{len(compiles)} new XLA compilation(s)"
    assert dict(clf_lib.TRACE_COUNTS) == before and stats.compiles == 0
    # The first call compiled the step once, too (inputs committed like the step's outputs).
    train_fns = [fn for key, fn in clf_lib._JIT_CACHE.items() if key[0] == "train"]
    if train_fns and hasattr(train_fns[0], "_cache_size"):
        assert [fn._cache_size() for fn in train_fns] == [1]


def test_rng_controls_the_run_and_pretrained_weights_survive(pretrained, train_data, trained):
    snapshot = jax.tree.map(np.array, pretrained.pretrained)
    config = dataclasses.replace(CONFIG, epochs=1)
    _, a = train_classifier(pretrained, *train_data, config, rng=3)
    _, b = train_classifier(pretrained, *train_data, config, rng=3)
    _, c = train_classifier(pretrained, *train_data, config, rng=4)
    np.testing.assert_array_equal(a.losses, b.losses)
    assert not np.array_equal(a.losses, c.losses)
    # Training donates its own copy: the in-memory pretrained weights are intact.
    jax.tree.map(np.testing.assert_array_equal, snapshot,
                 jax.tree.map(np.array, pretrained.pretrained))
    # Continuing from the trained weights instead of re-initialising keeps the low loss.
    model = trained[0]
    cont = dataclasses.replace(config, reinit_from_pretrained=False)
    _, d = train_classifier(model, *train_data, cont, rng=3)
    assert d.losses[0] < 0.5 * a.losses[0]


def test_tiny_imbalanced_set_trains(pretrained):
    texts = ["good film", "nice plot", "great story", "love it", "awful movie"]
    labels = [0, 0, 0, 0, 1]
    config = dataclasses.replace(CONFIG, class_balanced=True, label_smoothing=0.1, epochs=3)
    model, stats = train_classifier(pretrained, texts, labels, config, rng=0)
    assert stats.steps == 3 and np.isfinite(stats.losses).all()
    assert evaluate(model, texts, labels).n == 5


def test_bad_inputs_are_rejected(pretrained, train_data):
    texts, labels = train_data
    with pytest.raises(ValueError, match="empty"):
        train_classifier(pretrained, [], [], CONFIG)
    with pytest.raises(ValueError, match="different lengths.*64 texts, 63 labels"):
        train_classifier(pretrained, texts, labels[:-1], CONFIG)
    with pytest.raises(ValueError, match=r"label 2 at index 0 is out of range \[0, 2\)"):
        train_classifier(pretrained, texts, np.full(64, 2), CONFIG)
    with pytest.raises(ValueError, match="label -1 at index 3"):
        train_classifier(pretrained, texts, np.r_[labels[:3], -1, labels[4:]], CONFIG)
    with pytest.raises(ValueError, match="labels must be integers"):
        train_classifier(pretrained, texts, labels.astype(float), CONFIG)
    with pytest.raises(ValueError, match="not a single string"):
        train_classifier(pretrained, "good film", [0], CONFIG)
    with pytest.raises(ValueError, match=r"texts\[1\] is int"):
        train_classifier(pretrained, ["good", 3], [0, 1], CONFIG)
    with pytest.raises(ValueError, match="ClassifierConfig.num_labels=3 but the classifier has 2"):
        train_classifier(pretrained, texts, labels, dataclasses.replace(CONFIG, num_labels=3))
    with pytest.raises(ValueError, match="max_length=512 exceeds"):
        train_classifier(pretrained, texts, labels, dataclasses.replace(CONFIG, max_length=512))
    with pytest.raises(ValueError, match="evaluate: label 5"):
        evaluate(pretrained, ["good"], [5])
    with pytest.raises(ValueError, match="pooling must be 'mean' or 'cls'"):
        embed(pretrained, ["good"], pooling="max")
    for field, value in [("batch_size", 0), ("epochs", -1), ("learning_rate", 0.0),
                         ("warmup_ratio", 1.0), ("label_smoothing", 1.5), ("grad_clip", -1.0),
                         ("length_buckets", (0, 16))]:
        with pytest.raises(ValueError, match=field):
            ClassifierConfig(**{field: value})


def test_embeddings_are_ordered_and_pooled(trained, golden_data):
    model = trained[0]
    texts = golden_data[0][:10]
    mean = embed(model, texts)
    cls = embed(model, texts, pooling="cls")
    assert mean.shape == cls.shape == (10, 32) and mean.dtype == np.float32
    assert not np.allclose(mean, cls)
    np.testing.assert_allclose(embed(model, texts[3:5]), mean[3:5], atol=1e-5)
    unit = embed(model, texts, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=-1), 1.0, atol=1e-5)
    ids = [model.tokenizer(t)["input_ids"] for t in texts]
    tokens = np.full((10, 16), model.config.pad_token_id, np.int32)
    mask = np.zeros((10, 16), np.int32)
    for row, seq in enumerate(ids):
        tokens[row, :len(seq)] = seq
        mask[row, :len(seq)] = 1
    np.testing.assert_allclose(embed(model, (tokens, mask)), mean, atol=1e-5)


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
    # A path is loaded once and cached: the loop may pass it every epoch.
    config = dataclasses.replace(CONFIG, epochs=1, model=os.fspath(tmp_path))
    train_classifier(None, *train_data, config, rng=0)
    cached = clf_lib._pretrained_from_name(os.fspath(tmp_path), config)
    assert clf_lib._pretrained_from_name(os.fspath(tmp_path), config) is cached


_DATA_PARALLEL_SCRIPT = r"""
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
jax.config.update("jax_default_matmul_precision", "highest")
import dataclasses
import numpy as np
from genalign_jax.classifier import build_classifier, evaluate, train_classifier
from genalign_jax.models.roberta import get_preset
from tests.test_classifier import CONFIG, separable_data, tiny_tokenizer
tok = tiny_tokenizer()
clf = build_classifier(get_preset("tiny_roberta", vocab_size=len(tok)), tok, max_length=32)
config = dataclasses.replace(CONFIG, batch_size=7, epochs=2)  # dropout on: sharded rbg bits
model, stats = train_classifier(clf, *separable_data(30, 0), config, rng=0)
golden = separable_data(21, 1)
sharded = evaluate(model, *golden, batch_size=5)
single = model.replace(mesh=None, params=jax.device_put(model.params, jax.devices()[0]))
plain = evaluate(single, *golden, batch_size=64)
print(json.dumps(dict(
    devices=len(model.mesh.devices.flat), steps=stats.steps,
    replicated=all(x.sharding.is_fully_replicated for x in jax.tree.leaves(model.params)),
    param_change=float(max(np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(
        jax.tree.leaves(model.params), jax.tree.leaves(clf.pretrained)))),
    sharded_loss=sharded.loss, plain_loss=plain.loss, n=sharded.n)))
"""


@pytest.mark.slow  # a fresh process with 2 simulated CPU devices compiles everything again
def test_data_parallel_over_two_devices():
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-c", _DATA_PARALLEL_SCRIPT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 2 and out["replicated"]
    assert out["steps"] == 2 * 4  # batch 7 rounds up to 8 rows: ceil(30 / 8) = 4 steps per epoch
    assert out["param_change"] > 0 and out["n"] == 21
    assert abs(out["sharded_loss"] - out["plain_loss"]) < 1e-5
