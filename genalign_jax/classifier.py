"""Training and evaluating the RoBERTa/BERT text classifier that scores synthetic data.

The GenAlign loop trains a fresh classifier on the generator's synthetic
examples every epoch and reads its loss on real ("golden") data:

    clf = load_pretrained_classifier("roberta-base", num_labels=2)      # once
    trained, stats = train_classifier(clf, texts, labels, ClassifierConfig(...), rng)
    result = evaluate(trained, golden_texts, golden_labels)            # result.loss
    vectors = embed(trained, texts, pooling="mean")

* Each ``train_classifier`` call restarts from the pretrained weights kept in
  memory (copied on device, never re-read from disk) with a fresh head from ``rng``.
* Steps are jitted pure functions over the ``nnx.split`` state, cached per model
  graph and optimiser at module level.  Batches have a fixed number of rows (the
  last padded with weight-0 rows) and a bucketed length, and the learning rate,
  weight decay and label smoothing are traced scalars, so repeated calls with the
  same shapes compile nothing (``TRACE_COUNTS`` counts traces, for tests).
* With a mesh (default: automatic when several devices are visible) parameters
  are replicated and batch rows split over the data axes.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import math
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from genalign_jax import sharding as sharding_lib
from genalign_jax import text_batching as tb
from genalign_jax import hf_checkpoint
from genalign_jax.models import encoder_hf
from genalign_jax.models.roberta import (PRESETS, EncoderClassifier, EncoderConfig,
                                         create_encoder_classifier, get_preset, init_head_state)

log = logging.getLogger(__name__)

__all__ = [
    "TRACE_COUNTS",
    "ClassifierConfig",
    "TextClassifier",
    "TrainStats",
    "EvalResult",
    "build_classifier",
    "load_pretrained_classifier",
    "train_classifier",
    "predict_logits",
    "evaluate",
    "embed",
    "metrics_from_logits",
]

# Number of times each jitted function was traced (a trace precedes every compile).
TRACE_COUNTS: collections.Counter = collections.Counter()


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """Hyper-parameters of one classifier fine-tuning run (defaults follow HF Trainer)."""

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
    length_buckets: tuple[int, ...] = tb.DEFAULT_BUCKETS
    reinit_from_pretrained: bool = True
    class_balanced: bool = False
    dropout: bool = True
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    dtype: str = "float32"
    show_progress: bool = False

    def __post_init__(self):
        for name, (ok, rule) in _CONFIG_RULES.items():
            value = getattr(self, name)
            if not ok(value):
                raise ValueError(f"ClassifierConfig.{name} {rule}, got {value!r}")
        object.__setattr__(self, "length_buckets", tuple(int(b) for b in self.length_buckets))
        tb.normalise_buckets(self.length_buckets, self.max_length)  # validates


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


@dataclasses.dataclass(frozen=True, eq=False)
class TextClassifier:
    """An encoder classifier's graph, weights and tokenizer.

    ``params`` are the current weights; ``pretrained`` the weights as loaded
    (shared between copies, never donated), from which training restarts.
    """

    config: EncoderConfig
    graphdef: nnx.GraphDef
    params: nnx.State
    tokenizer: Any
    pretrained: nnx.State
    mesh: Mesh | None = None
    max_length: int = 128
    length_buckets: tuple[int, ...] = tb.DEFAULT_BUCKETS
    eval_batch_size: int = 64
    source: str = ""

    @property
    def num_labels(self) -> int:
        return self.config.num_labels

    @property
    def module(self) -> EncoderClassifier:
        """The NNX module with the current weights (for direct calls)."""
        return nnx.merge(self.graphdef, self.params)

    def replace(self, **changes: Any) -> "TextClassifier":
        """A copy with ``changes`` applied (e.g. ``max_length=64``)."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class TrainStats:
    """What one ``train_classifier`` call did (``seconds`` is wall time, compiles included)."""

    num_examples: int
    epochs: int
    steps: int
    losses: np.ndarray
    grad_norms: np.ndarray
    final_loss: float
    seconds: float
    examples_per_second: float
    compiles: int


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Golden-set metrics; ``per_class_accuracy[c]`` is NaN for classes absent from the labels."""

    loss: float
    accuracy: float
    macro_f1: float
    per_class_accuracy: np.ndarray
    n: int

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """Flat scalars for logging (``{prefix}loss``, ``{prefix}acc_class0``...)."""
        out = {f"{prefix}loss": self.loss, f"{prefix}accuracy": self.accuracy,
               f"{prefix}macro_f1": self.macro_f1}
        for c, acc in enumerate(self.per_class_accuracy):
            out[f"{prefix}acc_class{c}"] = float(acc)
        return out


# --------------------------------------------------------------------------- loading


def _resolve_mesh(mesh: Mesh | str | None) -> Mesh | None:
    if isinstance(mesh, str):
        if mesh != "auto":
            raise ValueError(f"mesh must be a Mesh, None or 'auto', got {mesh!r}")
        return sharding_lib.make_mesh() if jax.device_count() > 1 else None
    return mesh


def _as_key(rng: int | jax.Array | None, seed: int) -> jax.Array:
    """A typed PRNG key from an int, a key (typed or raw ``uint32[2]``) or None (``seed``)."""
    if rng is None or isinstance(rng, (int, np.integer)):
        return jax.random.key(seed if rng is None else int(rng))
    rng = jnp.asarray(rng)
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return rng
    if rng.shape == (2,) and rng.dtype == jnp.uint32:
        return jax.random.wrap_key_data(rng)
    raise ValueError(f"rng must be an int, a PRNG key or None, got {rng.dtype}{rng.shape}")


def build_classifier(config: EncoderConfig, tokenizer: Any, *, seed: int | jax.Array = 0,
                     mesh: Mesh | str | None = "auto", max_length: int | None = None,
                     source: str = "") -> TextClassifier:
    """A randomly initialised classifier (tests, benchmarks, training from scratch)."""
    mesh = _resolve_mesh(mesh)
    graphdef, state = nnx.split(create_encoder_classifier(config, _as_key(seed, 0)))
    state = _place_params(state, mesh)
    return _make(config, graphdef, state, tokenizer, mesh, max_length, source)


def _make(config, graphdef, state, tokenizer, mesh, max_length, source) -> TextClassifier:
    if tokenizer is None:
        raise ValueError("a tokenizer is required (pass tokenizer=...)")
    max_length = int(max_length or min(512, config.max_tokens))
    if max_length > config.max_tokens:
        raise ValueError(f"max_length={max_length} exceeds what the position table allows "
                         f"({config.max_tokens} tokens)")
    return TextClassifier(config=config, graphdef=graphdef, params=state, tokenizer=tokenizer,
                          pretrained=state, mesh=mesh, max_length=max_length, source=source)


def load_pretrained_classifier(name_or_path: str | os.PathLike, num_labels: int | None = None, *,
                               tokenizer: Any = None, mesh: Mesh | str | None = "auto",
                               seed: int | jax.Array = 0, max_length: int | None = None,
                               **config_overrides: Any) -> TextClassifier:
    """Loads encoder weights and tokenizer from a local folder / HF cache (or builds a preset).

    ``name_or_path`` is a checkpoint folder or hub id (``roberta-base``), or a
    preset name from ``roberta.PRESETS`` (random weights; pass ``tokenizer``).
    The head is fresh (``seed``) unless the checkpoint has one with
    ``num_labels`` outputs.  ``config_overrides`` go to ``EncoderConfig``
    (e.g. ``dtype="bfloat16"``).
    """
    name = os.fspath(name_or_path)
    if name in PRESETS and not os.path.exists(name):
        overrides = dict(config_overrides)
        if num_labels is not None:
            overrides["num_labels"] = int(num_labels)
        return build_classifier(get_preset(name, **overrides), tokenizer, seed=seed, mesh=mesh,
                                max_length=max_length, source=name)
    folder = hf_checkpoint.resolve_checkpoint(name)
    mesh = _resolve_mesh(mesh)
    model, report = encoder_hf.load_encoder_classifier(folder, num_labels, mesh=mesh, seed=seed,
                                                       **config_overrides)
    if tokenizer is None:
        from transformers import AutoTokenizer  # heavy import, only when needed
        tokenizer = AutoTokenizer.from_pretrained(folder)
    graphdef, state = nnx.split(model)
    log.info("classifier from %s: head %s", name, report["head"])
    return _make(model.config, graphdef, state, tokenizer, mesh, max_length, name)


_PRETRAINED_CACHE: dict[tuple, TextClassifier] = {}


def _pretrained_from_name(name: str, config: ClassifierConfig) -> TextClassifier:
    """Loads ``name`` once per process (the loop may pass a path every epoch)."""
    key = (os.fspath(name), config.num_labels, config.dtype)
    if key not in _PRETRAINED_CACHE:
        _PRETRAINED_CACHE[key] = load_pretrained_classifier(
            name, config.num_labels, dtype=config.dtype, seed=config.seed)
    return _PRETRAINED_CACHE[key]


# --------------------------------------------------------------------------- jitted steps


def _decays(path: str) -> bool:
    """AdamW decays every weight except biases and layer-norm parameters (as HF Trainer)."""
    return re.search(r"(bias|norm)", path) is None


@functools.lru_cache(maxsize=16)
def _optimizer(grad_clip: float | None, b1: float, b2: float,
               eps: float) -> optax.GradientTransformation:
    """Clipping + Adam moments over one flattened vector (few large kernels: fast to compile).

    The learning rate and decoupled weight decay are applied in the step as
    traced scalars, so schedules and settings never recompile.
    """
    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip else []
    parts.append(optax.scale_by_adam(b1, b2, eps))
    return optax.flatten(optax.chain(*parts))


def _cross_entropy(logits, labels, smoothing):
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    k = logits.shape[-1]
    target = jax.nn.one_hot(labels, k) * (1.0 - smoothing) + smoothing / k
    return -jnp.sum(target * logp, axis=-1)


def _train_step(graphdef, tx, use_dropout, params, opt_state, tokens, mask, labels, weights,
                lr, weight_decay, smoothing, key, step):
    TRACE_COUNTS["train_step"] += 1
    dropout_key = jax.random.fold_in(key, step) if use_dropout else None

    def loss_fn(p):
        logits = nnx.merge(graphdef, p)(tokens, mask, dropout_key=dropout_key)
        per_example = _cross_entropy(logits, labels, smoothing)
        return jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1e-9)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)

    def apply(path, p, u):
        if _decays(sharding_lib.param_path(path)):
            u = u + weight_decay * p.astype(u.dtype)
        return (p - lr * u).astype(p.dtype)

    params = jax.tree_util.tree_map_with_path(apply, params, updates)
    grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32)))
                             for g in jax.tree.leaves(grads)))
    return params, opt_state, loss, grad_norm


def _eval_step(graphdef, params, tokens, mask, labels):
    TRACE_COUNTS["eval_step"] += 1
    logits = nnx.merge(graphdef, params)(tokens, mask)
    return logits, _cross_entropy(logits, labels, 0.0)


def _embed_step(graphdef, params, tokens, mask):
    TRACE_COUNTS["embed_step"] += 1
    hidden = nnx.merge(graphdef, params).encoder(tokens, mask).astype(jnp.float32)
    m = mask[..., None].astype(jnp.float32)
    mean = jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
    return mean, hidden[:, 0]


def _copy_tree(tree):
    TRACE_COUNTS["copy"] += 1
    return jax.tree.map(jnp.copy, tree)


_JIT_CACHE: dict[tuple, Any] = {}


def _jitted(name: str, graphdef: nnx.GraphDef, *static: Any):
    """The jitted step ``name`` for this model graph (and optimiser), created once per process."""
    key = (name, graphdef, static)
    if key not in _JIT_CACHE:
        if name == "copy":
            _JIT_CACHE[key] = jax.jit(_copy_tree)
        else:
            impl = {"train": _train_step, "eval": _eval_step, "embed": _embed_step}[name]
            _JIT_CACHE[key] = jax.jit(functools.partial(impl, graphdef, *static),
                                      donate_argnums=(0, 1) if name == "train" else ())
    return _JIT_CACHE[key]


# --------------------------------------------------------------------------- helpers


def _rows(batch_size: int, mesh: Mesh | None) -> int:
    """``batch_size`` rounded up to a multiple of the data-parallel size."""
    m = 1 if mesh is None else math.prod(mesh.shape.get(a, 1) for a in sharding_lib.BATCH_AXES)
    return -(-batch_size // m) * m


def _put(array: np.ndarray, mesh: Mesh | None):
    if mesh is None:
        return jnp.asarray(array)
    return jax.device_put(array, sharding_lib.batch_sharding(mesh, array.ndim))


def _place_params(tree: Any, mesh: Mesh | None) -> Any:
    """Commits parameters to their device(s): the first device, or replicated over ``mesh``.

    Loaded checkpoints are committed too; mixing committed and uncommitted
    arrays would give jit a different cache key and recompile.
    """
    if mesh is None:
        return jax.device_put(tree, jax.local_devices()[0])
    return jax.device_put(tree, sharding_lib.state_shardings(tree, mesh, encoder_hf.ENCODER_RULES))


def _lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """HF ``get_linear_schedule_with_warmup`` at ``step``."""
    if step < warmup:
        return peak * step / max(1, warmup)
    return peak * max(0.0, (total - step) / max(1, total - warmup))


# --------------------------------------------------------------------------- public API


def train_classifier(classifier: TextClassifier | str | os.PathLike | None,
                     texts: Sequence[str], labels: Sequence[int] | np.ndarray,
                     config: ClassifierConfig, rng: int | jax.Array | None = None,
                     ) -> tuple[TextClassifier, TrainStats]:
    """Fine-tunes a classifier on ``texts``/``labels`` and returns ``(trained, stats)``.

    ``classifier`` is a ``TextClassifier`` (or a path/hub id, loaded once and
    cached; ``None`` uses ``config.model``).  With
    ``config.reinit_from_pretrained`` training starts from the pretrained
    encoder and a fresh head drawn from ``rng``; otherwise it continues from
    ``classifier.params``.  ``rng`` (int or key; default ``config.seed``) also
    drives shuffling and dropout, so equal inputs give equal results.
    """
    if classifier is None or isinstance(classifier, (str, os.PathLike)):
        classifier = _pretrained_from_name(classifier or config.model, config)
    if config.num_labels != classifier.num_labels:
        raise ValueError(f"ClassifierConfig.num_labels={config.num_labels} but the classifier has "
                         f"{classifier.num_labels} labels")
    if config.max_length > classifier.config.max_tokens:
        raise ValueError(f"ClassifierConfig.max_length={config.max_length} exceeds the encoder's "
                         f"{classifier.config.max_tokens} positions")
    y = tb.check_labelled_texts(texts, labels, config.num_labels, "train_classifier")
    start_time = time.perf_counter()
    traces_before = TRACE_COUNTS["train_step"]
    mesh, cfg = classifier.mesh, classifier.config
    init_key, shuffle_key, dropout_key = jax.random.split(_as_key(rng, config.seed), 3)
    # Dropout bits from XLA's RngBitGenerator: much cheaper to compile than threefry.
    dropout_key = jax.random.wrap_key_data(jnp.tile(jax.random.key_data(dropout_key), 2),
                                           impl="rbg")
    copy = _jitted("copy", classifier.graphdef)
    if config.reinit_from_pretrained:
        params = nnx.State({
            "encoder": copy(classifier.pretrained["encoder"]),
            "head": _place_params(init_head_state(cfg, init_key), mesh),
        })
    else:
        params = copy(classifier.params)
    tx = _optimizer(config.grad_clip, float(config.adam_b1), float(config.adam_b2),
                    float(config.adam_eps))
    opt_state = _place_params(tx.init(params), mesh)  # committed like the step's outputs
    step_fn = _jitted("train", classifier.graphdef, tx, bool(config.dropout))

    encoded = tb.encode_texts(classifier.tokenizer, texts, config.max_length)
    buckets = tb.normalise_buckets(config.length_buckets, config.max_length)
    n = len(y)
    rows = _rows(config.batch_size, mesh)
    steps_per_epoch = -(-n // rows)
    total = steps_per_epoch * config.epochs
    warmup = int(round(config.warmup_ratio * total))
    weights_of = np.ones(config.num_labels, np.float32)
    if config.class_balanced:
        counts = np.bincount(y, minlength=config.num_labels)
        present = counts > 0
        weights_of[present] = n / (present.sum() * counts[present])
    np_rng = np.random.default_rng(np.asarray(jax.random.key_data(shuffle_key)))
    smoothing = np.float32(config.label_smoothing)
    decay = np.float32(config.weight_decay)
    losses, norms = [], []
    step = 0
    with tqdm(total=total, desc="train classifier", disable=not config.show_progress,
              leave=False) as bar:
        for _ in range(config.epochs):
            order = np_rng.permutation(n)
            for s in range(steps_per_epoch):
                batch = tb.make_batch(encoded, order[s * rows:(s + 1) * rows], rows, buckets)
                real = batch.valid.astype(bool)
                batch_labels = np.where(real, y[np.maximum(batch.index, 0)], 0).astype(np.int32)
                weights = np.where(real, weights_of[batch_labels], 0.0).astype(np.float32)
                lr = np.float32(_lr_at(step, total, warmup, config.learning_rate))
                params, opt_state, loss, norm = step_fn(
                    params, opt_state, _put(batch.tokens, mesh), _put(batch.mask, mesh),
                    _put(batch_labels, mesh), _put(weights, mesh), lr, decay, smoothing,
                    dropout_key, np.int32(step))
                losses.append(loss)
                norms.append(norm)
                step += 1
                bar.update(1)
    losses = np.asarray(jax.device_get(losses), np.float64)
    norms = np.asarray(jax.device_get(norms), np.float64)
    seconds = time.perf_counter() - start_time
    stats = TrainStats(
        num_examples=n, epochs=config.epochs, steps=total, losses=losses, grad_norms=norms,
        final_loss=float(losses[-steps_per_epoch:].mean()), seconds=seconds,
        examples_per_second=n * config.epochs / seconds,
        compiles=TRACE_COUNTS["train_step"] - traces_before)
    log.info("trained classifier: %d examples, %d steps, final loss %.4f, %.1f s",
             n, total, stats.final_loss, seconds)
    trained = classifier.replace(params=params, max_length=config.max_length,
                                 length_buckets=config.length_buckets,
                                 eval_batch_size=config.eval_batch_size)
    return trained, stats


def _run_eval(classifier: TextClassifier, texts: Sequence[str], labels: np.ndarray,
              batch_size: int | None, show_progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``[N, K]`` and per-example cross-entropy ``[N]`` in input order."""
    mesh = classifier.mesh
    encoded = tb.encode_texts(classifier.tokenizer, texts, classifier.max_length)
    buckets = tb.normalise_buckets(classifier.length_buckets, classifier.max_length)
    rows = _rows(batch_size or classifier.eval_batch_size, mesh)
    fn = _jitted("eval", classifier.graphdef)
    logits = np.zeros((len(encoded), classifier.num_labels), np.float32)
    losses = np.zeros((len(encoded),), np.float64)
    seen = np.zeros((len(encoded),), np.int32)
    batches = list(tb.ordered_batches(encoded, rows, buckets))
    outputs = []  # dispatch every batch first, then fetch: the device never waits on the host
    for batch in tqdm(batches, desc="evaluate", disable=not show_progress, leave=False):
        real = batch.valid.astype(bool)
        batch_labels = np.where(real, labels[np.maximum(batch.index, 0)], 0).astype(np.int32)
        outputs.append(fn(classifier.params, _put(batch.tokens, mesh), _put(batch.mask, mesh),
                          _put(batch_labels, mesh)))
    for batch, (out, loss) in zip(batches, jax.device_get(outputs)):
        real = batch.valid.astype(bool)
        idx = batch.index[real]
        logits[idx] = out[real]
        losses[idx] = loss[real]
        seen[idx] += 1
    if not (seen == 1).all():
        raise RuntimeError("internal error: an example was not evaluated exactly once")
    return logits, losses


def predict_logits(classifier: TextClassifier, texts: Sequence[str], *,
                   batch_size: int | None = None, show_progress: bool = False) -> np.ndarray:
    """Logits ``[N, num_labels]`` (float32) for ``texts``, in input order."""
    if not isinstance(texts, str) and len(texts) == 0:
        return np.zeros((0, classifier.num_labels), np.float32)
    return _run_eval(classifier, texts, np.zeros(len(texts), np.int32), batch_size,
                     show_progress)[0]


def metrics_from_logits(logits: np.ndarray, labels: np.ndarray,
                        losses: np.ndarray | None = None) -> EvalResult:
    """Mean cross-entropy, accuracy, macro-F1 and per-class accuracy from logits.

    Macro-F1 averages over the classes present in labels or predictions (as
    ``sklearn.metrics.f1_score(average='macro')``).
    """
    labels = np.asarray(labels)
    if losses is None:
        z = np.asarray(logits, np.float64)
        z = z - z.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        losses = -logp[np.arange(len(labels)), labels].astype(np.float64)
    preds = np.asarray(logits).argmax(-1)
    k = logits.shape[-1]
    f1s = []
    for c in np.union1d(labels, preds):
        tp = np.sum((preds == c) & (labels == c))
        fp = np.sum((preds == c) & (labels != c))
        fn = np.sum((preds != c) & (labels == c))
        f1s.append(2 * tp / (2 * tp + fp + fn))
    per_class = np.full((k,), np.nan)
    for c in range(k):
        sel = labels == c
        if sel.any():
            per_class[c] = np.mean(preds[sel] == c)
    return EvalResult(loss=float(np.mean(losses)), accuracy=float(np.mean(preds == labels)),
                      macro_f1=float(np.mean(f1s)), per_class_accuracy=per_class, n=len(labels))


def evaluate(classifier: TextClassifier, texts: Sequence[str], labels: Sequence[int] | np.ndarray,
             *, batch_size: int | None = None, show_progress: bool = False) -> EvalResult:
    """Golden-set metrics of ``classifier``: every example counted exactly once.

    ``loss`` is the mean (unsmoothed) cross-entropy, the "golden loss" of the reward.
    """
    y = tb.check_labelled_texts(texts, labels, classifier.num_labels, "evaluate")
    logits, losses = _run_eval(classifier, texts, y, batch_size, show_progress)
    return metrics_from_logits(logits, y, losses)


def embed(classifier: TextClassifier,
          texts: Sequence[str] | tuple[np.ndarray, np.ndarray], *, pooling: str = "mean",
          normalize: bool = False, batch_size: int | None = None,
          show_progress: bool = False) -> np.ndarray:
    """Sentence embeddings ``[N, D]`` (float32) from the final hidden states.

    ``pooling='mean'`` averages real tokens (sentence-transformers style),
    ``'cls'`` takes the first token.  ``texts`` may also be a token batch
    ``(tokens [N, T], mask [N, T])``.  ``normalize`` scales rows to unit norm.
    """
    if pooling not in ("mean", "cls"):
        raise ValueError(f"embed: pooling must be 'mean' or 'cls', got {pooling!r}")
    mesh = classifier.mesh
    rows = _rows(batch_size or classifier.eval_batch_size, mesh)
    fn = _jitted("embed", classifier.graphdef)
    if isinstance(texts, tuple) and len(texts) == 2 and not isinstance(texts[0], str):
        batches = list(tb.array_batches(texts[0], texts[1], rows, classifier.config.pad_token_id))
        n = len(texts[0])
    else:
        if isinstance(texts, str):
            raise ValueError("embed: texts must be a sequence of strings, not a single string")
        encoded = tb.encode_texts(classifier.tokenizer, texts, classifier.max_length)
        buckets = tb.normalise_buckets(classifier.length_buckets, classifier.max_length)
        batches = list(tb.ordered_batches(encoded, rows, buckets))
        n = len(encoded)
    out = np.zeros((n, classifier.config.hidden_size), np.float32)
    pooled = [fn(classifier.params, _put(b.tokens, mesh), _put(b.mask, mesh))[pooling == "cls"]
              for b in tqdm(batches, desc="embed", disable=not show_progress, leave=False)]
    for batch, vectors in zip(batches, jax.device_get(pooled)):
        real = batch.valid.astype(bool)
        out[batch.index[real]] = vectors[real]
    if normalize:
        out /= np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    return out
