"""Fine-tuning a ``TextClassifier`` on labelled texts: ``ClassifierConfig``, ``train_classifier``.

* Each ``train_classifier`` call restarts from the pretrained weights kept in the
  ``TextClassifier`` (copied on device, never re-read from disk) with a fresh head
  from ``rng``; the caller loads the classifier once (``load_pretrained_classifier``).
* The step is ``ClassifierProgram.train_step`` (``program.py``): one executable per
  model graph, optimiser settings and batch shape.  Batches have a fixed number of
  rows (the last padded with weight-0 rows) and a bucketed length, and the learning
  rate (HF linear warmup/decay schedule), weight decay and label smoothing are traced
  scalars, so repeated calls with the same shapes compile nothing.
* With a mesh, parameters are replicated and batch rows split over the data axes
  (rows rounded up to ``sharding.batch_multiple(mesh)``).
* ``keep_checkpoints=T`` also keeps T ``TrainCheckpoint``s at evenly spaced steps
  (weights, Adam's second moment and step count, learning rates, the loss definition):
  what ``influence.influence_scores`` needs.  With T = 0 nothing extra is copied.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from genalign_jax import sharding as sharding_lib
from genalign_jax.classifier import batching
from genalign_jax.classifier.encoder import init_head_state
from genalign_jax.classifier.model import TextClassifier, as_key, place_params, put_rows
from genalign_jax.classifier.program import ClassifierProgram
from genalign_jax.compile_counter import compile_count

log = logging.getLogger(__name__)

__all__ = ["ClassifierConfig", "TrainCheckpoint", "TrainStats", "train_classifier", "program_for",
           "lr_at", "checkpoint_steps"]


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """Hyper-parameters of one classifier fine-tuning run (defaults follow HF Trainer).

    ``model`` only records which checkpoint the config is meant for: ``train_classifier``
    trains the ``TextClassifier`` it is given.
    """

    model: str = "roberta-base"
    num_labels: int = 2
    max_length: int = 128
    learning_rate: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    epochs: int = 3
    batch_size: int = 16
    eval_batch_size: int = 64
    grad_clip: float | None = 1.0
    label_smoothing: float = 0.0
    seed: int = 0
    length_buckets: tuple[int, ...] = batching.DEFAULT_BUCKETS
    reinit_from_pretrained: bool = True
    class_balanced: bool = False
    dropout: bool = True
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    show_progress: bool = False

    def __post_init__(self):
        for name, (ok, rule) in _CONFIG_RULES.items():
            value = getattr(self, name)
            if not ok(value):
                raise ValueError(f"ClassifierConfig.{name} {rule}, got {value!r}")
        object.__setattr__(self, "length_buckets", tuple(int(b) for b in self.length_buckets))
        batching.normalise_buckets(self.length_buckets, self.max_length)  # validates


_POSITIVE = (lambda v: v > 0, "must be positive")
_UNIT = (lambda v: 0.0 <= v < 1.0, "must be in [0, 1)")
_CONFIG_RULES = {
    **{name: _POSITIVE for name in ("num_labels", "max_length", "epochs", "batch_size",
                                    "eval_batch_size", "learning_rate")},
    "weight_decay": (lambda v: v >= 0, "must be >= 0"),
    "warmup_ratio": _UNIT,
    "label_smoothing": _UNIT,
    "grad_clip": (lambda v: v is None or v > 0, "must be positive or None"),
}


@dataclasses.dataclass(frozen=True)
class TrainCheckpoint:
    """The classifier at one training step, as influence credit needs it.

    Attributes:
      step: number of updates done; ``params`` are the weights after them (θ_t).
      learning_rate: η_t, the learning rate of the update that produced ``params``.
      lr_sum: the sum of the learning rates of the updates since the previous checkpoint
        (TracIn-CP's step size for the segment this checkpoint stands for).
      params: the weights θ_t (a device copy).
      nu: Adam's second moment after ``step`` updates, one flat float32 vector in
        ``jax.tree.leaves(params)`` order; ``count``: Adam's step count (== ``step``).
      adam_b2, adam_eps: for the bias-corrected preconditioner
        ``1 / (sqrt(nu / (1 - b2**count)) + eps)``.
      label_smoothing, class_weights: the training loss: example i's loss is
        ``class_weights[y_i] * cross_entropy(logits_i, y_i, label_smoothing)``.
    """

    step: int
    learning_rate: float
    lr_sum: float
    params: nnx.State
    nu: jax.Array
    count: int
    adam_b2: float
    adam_eps: float
    label_smoothing: float
    class_weights: np.ndarray

    def adam_preconditioner(self) -> jax.Array:
        """Adam's diagonal preconditioner at this step, flat like ``nu``."""
        nu_hat = self.nu / (1.0 - self.adam_b2 ** self.count)
        return 1.0 / (jnp.sqrt(nu_hat) + self.adam_eps)


@dataclasses.dataclass(frozen=True)
class TrainStats:
    """What one ``train_classifier`` call did.

    ``seconds`` is wall time, compiles included; ``compiles`` counts the XLA
    compilations during the call (0 when every shape was seen before).
    """

    num_examples: int
    epochs: int
    steps: int
    losses: np.ndarray
    grad_norms: np.ndarray
    final_loss: float
    seconds: float
    examples_per_second: float
    compiles: int
    checkpoints: tuple[TrainCheckpoint, ...] = ()


def program_for(classifier: TextClassifier, config: ClassifierConfig) -> ClassifierProgram:
    """The compiled-step program ``train_classifier`` uses for ``classifier`` and ``config``."""
    return ClassifierProgram(classifier.graphdef, grad_clip=config.grad_clip,
                             adam_b1=float(config.adam_b1), adam_b2=float(config.adam_b2),
                             adam_eps=float(config.adam_eps), dropout=bool(config.dropout))


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """HF ``get_linear_schedule_with_warmup`` at ``step``."""
    if step < warmup:
        return peak * step / max(1, warmup)
    return peak * max(0.0, (total - step) / max(1, total - warmup))


def checkpoint_steps(total: int, count: int) -> tuple[int, ...]:
    """Update counts after which ``count`` checkpoints are kept: evenly spaced, the last one
    being the end of training (``round(k * total / count)``, k = 1..count, at least 1)."""
    if count < 0:
        raise ValueError(f"keep_checkpoints must be >= 0, got {count}")
    return tuple(sorted({max(1, round(k * total / count)) for k in range(1, count + 1)}))


def _check(classifier: TextClassifier, config: ClassifierConfig) -> None:
    if not isinstance(classifier, TextClassifier):
        raise TypeError(f"train_classifier takes a TextClassifier (load it once with "
                        f"load_pretrained_classifier), got {type(classifier).__name__}")
    if config.num_labels != classifier.num_labels:
        raise ValueError(f"ClassifierConfig.num_labels={config.num_labels} but the classifier has "
                         f"{classifier.num_labels} labels")
    if config.max_length > classifier.config.max_tokens:
        raise ValueError(f"ClassifierConfig.max_length={config.max_length} exceeds the encoder's "
                         f"{classifier.config.max_tokens} positions")


def _example_weights(y: np.ndarray, config: ClassifierConfig) -> np.ndarray:
    """Per-class loss weights: 1, or ``n / (classes present * count)`` with ``class_balanced``."""
    weights_of = np.ones(config.num_labels, np.float32)
    if config.class_balanced:
        counts = np.bincount(y, minlength=config.num_labels)
        present = counts > 0
        weights_of[present] = len(y) / (present.sum() * counts[present])
    return weights_of


def train_classifier(classifier: TextClassifier, texts: Sequence[str],
                     labels: Sequence[int] | np.ndarray, config: ClassifierConfig,
                     rng: int | jax.Array | None = None, *, keep_checkpoints: int = 0,
                     ) -> tuple[TextClassifier, TrainStats]:
    """Fine-tunes ``classifier`` on ``texts``/``labels`` and returns ``(trained, stats)``.

    With ``config.reinit_from_pretrained`` training starts from the pretrained
    encoder and a fresh head drawn from ``rng``; otherwise it continues from
    ``classifier.params``.  ``rng`` (int or key; default ``config.seed``) also
    drives shuffling and dropout, so equal inputs give equal results.
    ``keep_checkpoints=T`` returns T ``TrainCheckpoint``s in ``stats.checkpoints``
    (see ``checkpoint_steps``); keeping them copies weights and Adam's ``nu`` T times.
    """
    _check(classifier, config)
    y = batching.check_labelled_texts(texts, labels, config.num_labels, "train_classifier")
    start_time, compiles_before = time.perf_counter(), compile_count()
    mesh, cfg = classifier.mesh, classifier.config
    init_key, shuffle_key, dropout_key = jax.random.split(as_key(rng, config.seed), 3)
    # Dropout bits from XLA's RngBitGenerator: much cheaper to compile than threefry.
    dropout_key = jax.random.wrap_key_data(jnp.tile(jax.random.key_data(dropout_key), 2),
                                           impl="rbg")
    program = program_for(classifier, config)
    if config.reinit_from_pretrained:
        params = nnx.State({
            "encoder": program.copy(classifier.pretrained["encoder"]),
            "head": place_params(init_head_state(cfg, init_key), mesh),
        })
    else:
        params = program.copy(classifier.params)
    opt_state = place_params(program.init_opt_state(params), mesh)  # committed like the outputs

    encoded = batching.encode_texts(classifier.tokenizer, texts, config.max_length)
    buckets = batching.normalise_buckets(config.length_buckets, config.max_length)
    n = len(y)
    multiple = sharding_lib.batch_multiple(mesh)
    rows = -(-config.batch_size // multiple) * multiple
    steps_per_epoch = -(-n // rows)
    total = steps_per_epoch * config.epochs
    warmup = int(round(config.warmup_ratio * total))
    weights_of = _example_weights(y, config)
    np_rng = np.random.default_rng(np.asarray(jax.random.key_data(shuffle_key)))
    smoothing = np.float32(config.label_smoothing)
    decay = np.float32(config.weight_decay)
    losses, norms, checkpoints = [], [], []
    keep = checkpoint_steps(total, keep_checkpoints) if keep_checkpoints else ()
    lr_sum = 0.0
    step = 0
    with tqdm(total=total, desc="train classifier", disable=not config.show_progress,
              leave=False) as bar:
        for _ in range(config.epochs):
            order = np_rng.permutation(n)
            for s in range(steps_per_epoch):
                batch = batching.make_batch(encoded, order[s * rows:(s + 1) * rows], rows, buckets)
                real = batch.valid.astype(bool)
                batch_labels = np.where(real, y[np.maximum(batch.index, 0)], 0).astype(np.int32)
                weights = np.where(real, weights_of[batch_labels], 0.0).astype(np.float32)
                lr = np.float32(lr_at(step, total, warmup, config.learning_rate))
                params, opt_state, loss, norm = program.train_step(
                    params, opt_state, put_rows(batch.tokens, mesh), put_rows(batch.mask, mesh),
                    put_rows(batch_labels, mesh), put_rows(weights, mesh), lr, decay, smoothing,
                    dropout_key, np.int32(step))
                losses.append(loss)
                norms.append(norm)
                step += 1
                lr_sum += float(lr)
                if step in keep:
                    checkpoints.append(_checkpoint(program, params, opt_state, step, float(lr),
                                                   lr_sum, config, weights_of))
                    lr_sum = 0.0
                bar.update(1)
    losses = np.asarray(jax.device_get(losses), np.float64)
    norms = np.asarray(jax.device_get(norms), np.float64)
    seconds = time.perf_counter() - start_time
    stats = TrainStats(
        num_examples=n, epochs=config.epochs, steps=total, losses=losses, grad_norms=norms,
        final_loss=float(losses[-steps_per_epoch:].mean()), seconds=seconds,
        examples_per_second=n * config.epochs / seconds,
        compiles=compile_count() - compiles_before, checkpoints=tuple(checkpoints))
    log.info("trained classifier: %d examples, %d steps, final loss %.4f, %.1f s",
             n, total, stats.final_loss, seconds)
    trained = classifier.replace(params=params, max_length=config.max_length,
                                 length_buckets=config.length_buckets,
                                 eval_batch_size=config.eval_batch_size)
    return trained, stats


def _checkpoint(program: ClassifierProgram, params: nnx.State, opt_state: object, step: int,
                lr: float, lr_sum: float, config: ClassifierConfig,
                class_weights: np.ndarray) -> TrainCheckpoint:
    """Copies of the weights and Adam's ``nu`` (the next step donates both)."""
    count, nu = program.adam_moments(opt_state)
    params, nu = program.copy((params, nu))
    return TrainCheckpoint(step=step, learning_rate=lr, lr_sum=lr_sum, params=params, nu=nu,
                           count=int(count), adam_b2=float(config.adam_b2),
                           adam_eps=float(config.adam_eps),
                           label_smoothing=float(config.label_smoothing),
                           class_weights=class_weights.copy())
