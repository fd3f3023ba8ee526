"""train_classifier: it learns, compiles once, is reproducible, keeps the pretrained weights,
rejects bad inputs, and runs data-parallel over two devices."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from genalign_jax.classifier import ClassifierConfig, embed, evaluate, train_classifier
from genalign_jax.classifier import program as program_lib
from genalign_jax.compile_counter import CompileCounter
from tests.classifier import CONFIG

REPO = Path(__file__).resolve().parents[2]


def test_training_separates_the_classes(trained, golden_data):
    model, stats = trained
    result = evaluate(model, *golden_data)
    assert result.accuracy >= 0.95, result
    assert result.n == 40 and stats.steps == CONFIG.epochs * 4
    assert stats.final_loss < 0.5 * stats.losses[0]
    assert np.isfinite(stats.grad_norms).all() and stats.examples_per_second > 0


def test_second_call_with_same_shapes_compiles_nothing(pretrained, trained, train_data,
                                                       golden_data):
    texts, labels = train_data
    # Warm every path once (the training fixture already compiled the step).
    evaluate(trained[0], *golden_data)
    embed(trained[0], golden_data[0])
    with CompileCounter() as compiles:
        again, stats = train_classifier(pretrained, texts, labels, CONFIG, rng=1)
        fewer, _ = train_classifier(pretrained, texts[:50], labels[:50], CONFIG, rng=2)
        evaluate(again, *golden_data)
        embed(fewer, golden_data[0], pooling="cls")
    assert compiles.count == 0, f"{compiles.count} new XLA compilation(s)"
    assert stats.compiles == 0


def test_a_new_program_compiles_its_step_once(pretrained, trained, train_data):
    # Other optimiser settings make another program: its first call compiles the train step
    # exactly once (inputs are committed like the step's outputs, so step 2 hits the cache).
    config = dataclasses.replace(CONFIG, adam_eps=1e-7, epochs=2)
    entries = program_lib._train_step._cache_size()
    with CompileCounter() as compiles:
        _, stats = train_classifier(pretrained, *train_data, config, rng=0)
    assert compiles.count == 1 and stats.compiles == 1
    assert program_lib._train_step._cache_size() == entries + 1
    # Equal settings give an equal (hashable) program: it shares that executable.
    a = program_lib.ClassifierProgram(pretrained.graphdef, adam_eps=1e-7)
    b = program_lib.ClassifierProgram(pretrained.graphdef, adam_eps=1e-7)
    assert a == b and hash(a) == hash(b) and a != program_lib.ClassifierProgram(pretrained.graphdef)


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
    # A path is not loaded behind the caller's back any more: load once, pass the classifier.
    with pytest.raises(TypeError, match="load it once with load_pretrained_classifier"):
        train_classifier("roberta-base", texts, labels, CONFIG)
    for field, value in [("batch_size", 0), ("epochs", -1), ("learning_rate", 0.0),
                         ("warmup_ratio", 1.0), ("label_smoothing", 1.5), ("grad_clip", -1.0),
                         ("length_buckets", (0, 16))]:
        with pytest.raises(ValueError, match=field):
            ClassifierConfig(**{field: value})


_DATA_PARALLEL_SCRIPT = r"""
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
jax.config.update("jax_default_matmul_precision", "highest")
import dataclasses
import numpy as np
from genalign_jax.classifier import build_classifier, evaluate, get_preset, train_classifier
from tests.classifier import CONFIG, separable_data, tiny_tokenizer
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
