"""Per-example influence credit: each training example's first-order effect on the golden loss.

TracIn-CP, Adam-aware.  With ``T`` checkpoints θ_t kept by ``train_classifier(...,
keep_checkpoints=T)``::

    credit_i = Σ_t η_t ⟨P_t ∇θ ℓ(z_i; θ_t), ∇θ L_golden(θ_t)⟩

Positive credit: a step on z_i lowers the golden loss (to first order, ``-credit_i`` is the
change of L_golden after an SGD/Adam step of size η_t on z_i alone).

* ℓ(z_i; θ) is the training loss of example i: ``class_weight[y_i] * CE(logits, y_i,
  label_smoothing)``, in eval mode (no dropout); L_golden the mean unsmoothed cross-entropy
  on the golden set (or a fixed random subset, ``golden_size``), as ``evaluate`` reports it.
* θ runs over a parameter subset (``params``): ``"head"`` (the classification head),
  ``"head+last_k"`` (the head, the BERT pooler if any, and the last ``last_k`` encoder
  layers) or ``"all"``.  Other parameters get zero weight.
* P_t (``preconditioner``): ``"adam"`` = 1 / (sqrt(v̂_t) + ε) with v̂_t Adam's bias-corrected
  second moment at the checkpoint; ``"sgd"`` = identity.
* η_t (``lr_weighting``): ``"segment"`` = the sum of learning rates of the updates since the
  previous checkpoint (each checkpoint stands for its segment of training), ``"step"`` = the
  learning rate of the update that produced θ_t (linear decay makes the last one ~0).
* ``normalize``: ``"none"``; ``"unit"`` divides each term by ‖P_t ∇ℓ(z_i)‖ (every example
  moves θ by the same distance, which removes examples whose huge gradients dominate);
  ``"cosine"`` also divides by ‖∇L_golden‖ (each checkpoint weighs η_t · cosine).
* ``golden_balance``: ``"error"`` weighs the golden examples of class c by
  mean_c'(E_c') / E_c, with E_c = Σ_{j: y_j=c} (1 − p_θt(c | x_j)) the class's summed error at
  the checkpoint.  The classes then pull the logits equally hard, so ∇L_golden has no
  "predict class c more often" component (for two classes its gradient along the logit biases
  is exactly zero).  Without it (``"none"``) that component dominates: every example whose
  label the classifier currently under-predicts gets credit for shifting the prior, however
  wrong it is, and in proportion to its own loss, so mislabelled examples of that label get
  the highest credit.
* ``center``: ``"label"`` subtracts from each credit the mean credit of the examples with the
  same label: what is left compares examples of one label (the generator is asked for one
  label per prompt) rather than the labels; ``"none"`` keeps the raw sums.

How it is computed, per checkpoint:

1. ∇L_golden over the subset: one backward pass over the golden set in fixed-row,
   length-bucketed chunks (the encoder below the subset runs forward only).  With
   ``golden_balance="error"`` a forward pass first gives the class weights; it keeps the
   features below the subset on device (up to 1 GiB), so the gradient pass then runs only the
   subset instead of the whole encoder a second time.
2. v_t = η_t P_t ∇L_golden, then ONE ``jax.jvp`` of the per-example loss vector along v_t
   per training chunk: its tangent output is ⟨∇ℓ(z_i), v_t⟩ for every row at once, for
   about the cost of a forward pass, with no per-example gradients.
3. Only for ``normalize != "none"``: per-example gradient norms, by ``jax.lax.map`` (in
   mini-batches of 8 rows) of ``jax.grad`` over the subset, on features computed once for
   the frozen part.  Cheap for ``"head"`` / ``"head+last_k"`` (a backward through k layers
   per example); for ``"all"`` it is a full backward per example (several times the
   jvp pass) and holds 8 full-size gradients at a time.

Every step is jitted with static shapes (rows fixed, lengths from the classifier's buckets),
keyed by a hashable ``_Spec``: a second call with the same shapes compiles nothing.
Accumulation is float32 on device, float64 across checkpoints on the host.

Cost: T × (golden forward + subset backward + one training-set jvp; with
``golden_balance="error"`` one more forward of the subset), independent of the number of
training epochs; for the protocol of ``benchmarks/influence_variants.py`` it was 0.2-0.25x of
the fine-tune, and 0.7-0.8x on ``:embedded`` before the golden features were kept (2026-12-07,
43 SST-2 examples, 400 golden, 3 checkpoints: the default variant's pass took 14.4-17.8 s
before and 12.0-12.8 s after, with bit-identical credit).
Bias: first order (no curvature), and a few checkpoints stand in for the whole trajectory.
Which variant finds mislabelled examples best was measured on real data
(``benchmarks/influence_variants.py``; ``benchmarks/results/influence_variants_*_cpu.json``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genalign_jax.classifier import batching
from genalign_jax.classifier.encoder import encoder_positions, run_layers
from genalign_jax.classifier.evaluate import eval_rows
from genalign_jax.classifier.model import TextClassifier, put_rows
from genalign_jax.classifier.influence_balance import (center_by_label, error_balanced_weights,
                                                       weight_golden_rows)
from genalign_jax.classifier.program import GraphKey, cross_entropy
from genalign_jax.classifier.train import TrainCheckpoint
from genalign_jax.sharding import constrain_batch, to_host

__all__ = ["PARAM_SUBSETS", "PRECONDITIONERS", "NORMALIZATIONS", "LR_WEIGHTINGS",
           "GOLDEN_BALANCES", "CENTERINGS", "DEFAULTS", "error_balanced_weights",
           "center_by_label", "influence_scores"]

PARAM_SUBSETS = ("head", "head+last_k", "all")
PRECONDITIONERS = ("adam", "sgd")
NORMALIZATIONS = ("none", "unit", "cosine")
LR_WEIGHTINGS = ("segment", "step")
GOLDEN_BALANCES = ("error", "none")
CENTERINGS = ("label", "none")
# The variant measured best on the real-data protocol (benchmarks/influence_variants.py).
DEFAULTS = {"params": "head+last_k", "last_k": 1, "preconditioner": "adam", "normalize": "none",
            "lr_weighting": "segment", "golden_balance": "error", "center": "label"}
_NORM_BATCH = 8  # rows per mini-batch of per-example gradients (normalisation only)
_KEEP_FEATURES_BYTES = 1 << 30  # golden features kept on device between two passes (see below)


@dataclasses.dataclass(frozen=True, eq=False)
class _Spec:
    """Static part of the influence steps: the graph and which parameters θ spans."""

    graph: GraphKey
    subset: str
    top_layers: int  # encoder layers inside the subset (0 for "head"; all for "all")
    num_layers: int
    with_pooler: bool  # the BERT pooler is inside the subset
    adam: bool

    def _key(self) -> tuple:
        return (self.graph, self.subset, self.top_layers, self.num_layers, self.with_pooler,
                self.adam)

    def __hash__(self) -> int:
        return hash(self._key())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Spec) and self._key() == other._key()


def _layer_slice(layers: nnx.State, start: int, stop: int) -> nnx.State:
    return jax.tree.map(lambda a: a[start:stop], layers)


def _take(spec: _Spec, tree: nnx.State) -> nnx.State | dict:
    """The subset of a params-shaped tree (weights, or Adam's nu unflattened)."""
    if spec.subset == "all":
        return tree
    out = {"head": tree["head"]}
    if spec.with_pooler:
        out["pooler"] = tree["encoder"]["pooler"]
    if spec.top_layers:
        out["layers"] = _layer_slice(tree["encoder"]["layers"],
                                     spec.num_layers - spec.top_layers, spec.num_layers)
    return out


def _unflatten(params: nnx.State, flat: jax.Array) -> nnx.State:
    """``optax.flatten``'s flat vector back into the structure of ``params``."""
    leaves, treedef = jax.tree.flatten(params)
    sizes = np.cumsum([leaf.size for leaf in leaves])[:-1]
    parts = jnp.split(flat, sizes)
    return jax.tree.unflatten(treedef, [p.reshape(leaf.shape) for p, leaf in zip(parts, leaves)])


def _lower(spec: _Spec, params: nnx.State, tokens: jax.Array, mask: jax.Array):
    """Hidden states below the subset (embeddings + frozen layers); None for ``"all"``."""
    if spec.subset == "all":
        return None
    model = nnx.merge(spec.graph.graphdef, params)
    enc = model.encoder
    x = enc.embeddings(tokens, encoder_positions(mask, enc.config),
                       jnp.zeros(tokens.shape, jnp.int32))
    x = constrain_batch(x)
    frozen = spec.num_layers - spec.top_layers
    if frozen:
        graphdef, layers = nnx.split(enc.layers)
        x = run_layers(graphdef, _layer_slice(layers, 0, frozen), x, mask.astype(bool),
                       unroll=enc.config.unroll_layers)
    return x


def _top(spec: _Spec, params: nnx.State, subset, lower, tokens: jax.Array,
         mask: jax.Array) -> jax.Array:
    """Logits ``[B, K]`` from the subset's weights (and ``lower`` from ``_lower``)."""
    if spec.subset == "all":
        return nnx.merge(spec.graph.graphdef, subset)(tokens, mask)
    encoder = dict(params["encoder"])
    if spec.with_pooler:
        encoder["pooler"] = subset["pooler"]
    model = nnx.merge(spec.graph.graphdef,
                      nnx.State({"encoder": nnx.State(encoder), "head": subset["head"]}))
    x = lower
    if spec.top_layers:
        graphdef, _ = nnx.split(model.encoder.layers)
        x = run_layers(graphdef, subset["layers"], x, mask.astype(bool),
                       unroll=model.encoder.config.unroll_layers)
    return model.head(model.features(x))


def _f32(tree):
    return jax.tree.map(lambda a: a.astype(jnp.float32), tree)


@functools.partial(jax.jit, static_argnums=(0,))
def _zeros(spec: _Spec, params: nnx.State):
    return jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.float32), _take(spec, params))


@functools.partial(jax.jit, static_argnums=(0, 4))
def _golden_forward(spec: _Spec, params, tokens, mask, keep_lower: bool):
    """``(lower or None, logits [B, K])`` of a golden batch: the logits weigh the classes
    (``golden_balance="error"``) and, with ``keep_lower``, the features below the subset
    are kept for the gradient pass (which then runs only the subset)."""
    lower = _lower(spec, params, tokens, mask)
    logits = _top(spec, params, _take(spec, params), lower, tokens, mask)
    return (lower if keep_lower else None), logits.astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(2,))
def _golden_grad(spec: _Spec, params, acc, lower, tokens, mask, labels, valid):
    """``acc`` + ∇(Σ_rows valid · CE) over the subset (float32); ``lower`` from
    ``_golden_forward`` (``None``: computed here)."""
    if lower is None:
        lower = _lower(spec, params, tokens, mask)

    def total(subset):
        logits = _top(spec, params, subset, lower, tokens, mask)
        return jnp.sum(valid * cross_entropy(logits, labels, 0.0))

    grads = jax.grad(total)(_take(spec, params))
    return jax.tree.map(lambda a, g: a + g.astype(jnp.float32), acc, grads)


@functools.partial(jax.jit, static_argnums=(0,))
def _direction(spec: _Spec, params, grad_sum, n, nu, count, eta, b2, eps):
    """``(v, P, ‖∇L‖)``: v = η P ∇L over the subset (P None for SGD)."""
    grad = jax.tree.map(lambda g: g / n, grad_sum)
    precond = None
    if spec.adam:
        nu_hat = jax.tree.map(lambda v: v.astype(jnp.float32) / (1.0 - b2 ** count),
                              _take(spec, _unflatten(params, nu)))
        precond = jax.tree.map(lambda v: 1.0 / (jnp.sqrt(v) + eps), nu_hat)
        direction = jax.tree.map(lambda p, g: eta * p * g, precond, grad)
    else:
        direction = jax.tree.map(lambda g: eta * g, grad)
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grad)))
    return direction, precond, norm


@functools.partial(jax.jit, static_argnums=(0,))
def _directional(spec: _Spec, params, direction, tokens, mask, labels, weights, smoothing):
    """⟨∇θ ℓ(z_r), direction⟩ for every row r: one jvp of the per-example loss vector."""
    lower = _lower(spec, params, tokens, mask)
    subset = _take(spec, params)
    tangent = jax.tree.map(lambda t, p: t.astype(p.dtype), direction, subset)

    def losses(sub):
        logits = _top(spec, params, sub, lower, tokens, mask)
        return weights * cross_entropy(logits, labels, smoothing)

    _, dots = jax.jvp(losses, (subset,), (tangent,))
    return dots.astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=(0,))
def _grad_norms(spec: _Spec, params, precond, tokens, mask, labels, weights, smoothing):
    """‖P ∇θ ℓ(z_r)‖ for every row r (per-example gradients, ``_NORM_BATCH`` rows at a time)."""
    lower = _lower(spec, params, tokens, mask)
    subset = _take(spec, params)

    def one(row):
        low, tok, m, y, w = row
        low = None if low is None else low[None]

        def loss(sub):
            logits = _top(spec, params, sub, low, tok[None], m[None])
            return (w * cross_entropy(logits, y[None], smoothing))[0]

        grad = _f32(jax.grad(loss)(subset))
        if precond is not None:
            grad = jax.tree.map(jnp.multiply, grad, precond)
        return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grad)))

    return jax.lax.map(one, (lower, tokens, mask, labels, weights),
                       batch_size=min(_NORM_BATCH, tokens.shape[0]))


def _spec(classifier: TextClassifier, params: str, last_k: int, preconditioner: str) -> _Spec:
    for name, value, allowed in (("params", params, PARAM_SUBSETS),
                                 ("preconditioner", preconditioner, PRECONDITIONERS)):
        if value not in allowed:
            raise ValueError(f"influence_scores: {name} must be one of {allowed}, got {value!r}")
    layers = classifier.config.num_layers
    if params == "head+last_k" and not 0 <= last_k <= layers:
        raise ValueError(f"influence_scores: last_k must be in [0, {layers}], got {last_k}")
    top = {"head": 0, "head+last_k": last_k, "all": layers}[params]
    return _Spec(GraphKey(classifier.graphdef), params, top, layers,
                 params == "head+last_k" and classifier.config.use_pooler,
                 preconditioner == "adam")


def _device_batches(classifier: TextClassifier, texts: Sequence[str], labels: np.ndarray,
                    rows: int, extra: np.ndarray) -> list[tuple[np.ndarray, tuple]]:
    """Fixed-row, length-bucketed batches on device: ``(index, (tokens, mask, labels, extra))``
    with ``extra[label]`` per real row (0 on padding rows)."""
    mesh = classifier.mesh
    encoded = batching.encode_texts(classifier.tokenizer, texts, classifier.max_length)
    buckets = batching.normalise_buckets(classifier.length_buckets, classifier.max_length)
    out = []
    for batch in batching.ordered_batches(encoded, rows, buckets):
        real = batch.valid.astype(bool)
        y = np.where(real, labels[np.maximum(batch.index, 0)], 0).astype(np.int32)
        w = np.where(real, extra[y], 0.0).astype(np.float32)
        out.append((batch.index, tuple(put_rows(a, mesh) for a in (batch.tokens, batch.mask,
                                                                     y, w))))
    return out


def influence_scores(classifier: TextClassifier, checkpoints: Sequence[TrainCheckpoint],
                     train_texts: Sequence[str], train_labels: Sequence[int] | np.ndarray,
                     golden_texts: Sequence[str], golden_labels: Sequence[int] | np.ndarray, *,
                     params: str = DEFAULTS["params"], last_k: int = DEFAULTS["last_k"],
                     preconditioner: str = DEFAULTS["preconditioner"],
                     normalize: str = DEFAULTS["normalize"],
                     lr_weighting: str = DEFAULTS["lr_weighting"],
                     golden_balance: str = DEFAULTS["golden_balance"],
                     center: str = DEFAULTS["center"],
                     golden_size: int | None = None, batch_size: int | None = None,
                     seed: int = 0) -> np.ndarray:
    """Influence credit ``[n]`` (float64) of each training example on the golden loss.

    ``classifier`` is the trained classifier (its graph, tokenizer, max length and length
    buckets are used; weights come from ``checkpoints``, from ``train_classifier(...,
    keep_checkpoints=T)``).  The loss of each training example is the training loss recorded
    in the checkpoint (label smoothing, class weights).  See the module docstring for
    ``params`` / ``last_k`` / ``preconditioner`` / ``normalize`` / ``lr_weighting`` /
    ``golden_balance`` / ``center``.
    ``golden_size``: use a fixed random subset (``seed``) of that many golden examples.
    ``batch_size``: rows per chunk (default the classifier's eval batch size).
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"influence_scores: normalize must be one of {NORMALIZATIONS}, "
                         f"got {normalize!r}")
    for name, value, allowed in (("lr_weighting", lr_weighting, LR_WEIGHTINGS),
                                 ("golden_balance", golden_balance, GOLDEN_BALANCES),
                                 ("center", center, CENTERINGS)):
        if value not in allowed:
            raise ValueError(f"influence_scores: {name} must be one of {allowed}, got {value!r}")
    if not checkpoints:
        raise ValueError("influence_scores: no checkpoints (train with keep_checkpoints=T > 0)")
    spec = _spec(classifier, params, last_k, preconditioner)
    k = classifier.num_labels
    y = batching.check_labelled_texts(train_texts, train_labels, k, "influence_scores")
    gy = batching.check_labelled_texts(golden_texts, golden_labels, k, "influence_scores golden")
    golden_texts = list(golden_texts)
    if golden_size is not None and golden_size < len(gy):
        keep = np.sort(np.random.default_rng(seed).choice(len(gy), golden_size, replace=False))
        golden_texts, gy = [golden_texts[i] for i in keep], gy[keep]
    rows = eval_rows(classifier, batch_size)
    golden = _device_batches(classifier, golden_texts, gy, rows, np.ones(k, np.float32))
    # Keep the golden features below the subset between the weighting forward and the gradient
    # pass when they fit the budget (400 rows x 64 tokens of MiniLM: 39 MB).
    feature_bytes = sum(batch[0].size for _, batch in golden) * classifier.config.hidden_size * 4
    keep_lower = spec.subset != "all" and feature_bytes <= _KEEP_FEATURES_BYTES
    credit = np.zeros(len(y), np.float64)
    train = None
    for ck in checkpoints:
        if spec.adam and ck.count < 1:
            raise ValueError("influence_scores: the Adam preconditioner needs a checkpoint "
                             "after at least one update")
        weights = np.asarray(ck.class_weights, np.float32)
        if train is None or not np.array_equal(weights, train[0]):
            train = (weights, _device_batches(classifier, train_texts, y, rows, weights))
        acc = _zeros(spec, ck.params)
        lowers = [None] * len(golden)
        golden_rows = golden
        if golden_balance == "error":
            forwards = [_golden_forward(spec, ck.params, *batch[:2], keep_lower)
                        for _, batch in golden]
            lowers = [lower for lower, _ in forwards]
            golden_rows = weight_golden_rows(classifier, golden,
                                             to_host([lg for _, lg in forwards]), gy, k)
        for lower, (_, batch) in zip(lowers, golden_rows):
            acc = _golden_grad(spec, ck.params, acc, lower, *batch)
        eta = ck.lr_sum if lr_weighting == "segment" else ck.learning_rate
        direction, precond, golden_norm = _direction(
            spec, ck.params, acc, np.float32(len(gy)), ck.nu, np.float32(ck.count),
            np.float32(eta), np.float32(ck.adam_b2), np.float32(ck.adam_eps))
        smoothing = np.float32(ck.label_smoothing)
        dots = [_directional(spec, ck.params, direction, *b, smoothing) for _, b in train[1]]
        norms = ([_grad_norms(spec, ck.params, precond, *b, smoothing) for _, b in train[1]]
                 if normalize != "none" else [None] * len(dots))
        dots, norms, golden_norm = to_host((dots, norms, golden_norm))
        for (index, _), dot, norm in zip(train[1], dots, norms):
            real = index >= 0
            term = np.asarray(dot, np.float64)[real]
            if norm is not None:
                term = term / np.maximum(np.asarray(norm, np.float64)[real], 1e-30)
                if normalize == "cosine":
                    term = term / max(float(golden_norm), 1e-30)
            credit[index[real]] += term
    return center_by_label(credit, y) if center == "label" else credit
