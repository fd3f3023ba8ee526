"""Blocked, jitted pairwise distances and class-structure metrics for embeddings.

Everything here is computed tile by tile (``block × block``) with ``jax.lax`` loops, so the compiled
program has a fixed size whatever the number of tiles and, for the class metrics, working memory is
``O(block² + N·C)`` rather than ``O(N²)``: 100k+ rows fit on one device.

Numerics (all metrics are computed in fp32, dots at ``Precision.HIGHEST`` so GPUs do not fall back
to TF32):

* ``sqeuclidean`` uses the matmul form ``‖a‖² + ‖b‖² − 2a·b`` on mean-centred inputs (distances are
  translation invariant; centring removes most of the cancellation for embeddings that share a large
  common component). Results are clamped at 0, so no negative squares and no NaN from ``sqrt``.
* Values below the fp32 resolution of the matmul form, ``d² ≤ snap_tol·(‖a‖² + ‖b‖²)``, are reported
  as exactly 0, so identical rows give exactly 0 (without snapping they give ``√noise``, ~1e-3·‖a‖).
  The default ``snap_tol = 4·eps32·√dim`` is ~6x the largest error measured for identical rows;
  true distances that small are not resolvable in fp32 anyway. Pass ``snap_tol=0`` to disable.
* ``cosine`` is ``1 − â·b̂`` clipped to ``[0, 2]`` and snapped below ``snap_tol``. A zero vector has
  cosine similarity 0 with everything (scikit-learn's convention), i.e. distance 1, even to another
  zero vector; SciPy returns NaN there instead.
* When ``b`` is omitted (distances of a set to itself) self-pairs ``(i, i)`` are exactly 0 for every
  metric, as in ``sklearn.metrics.pairwise_distances(X)``.

Padding: every function takes boolean row masks. Masked rows are zeroed on entry (even NaN/inf
padding is harmless), never counted, and their entries in a returned matrix are 0.

Sharding: pass ``mesh`` (or give embeddings that are already row-sharded with a ``NamedSharding``)
and the rows are split over the data axis with ``jax.shard_map``: each device computes its row tiles
against an all-gathered copy of the columns, so work is divided by the number of devices.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

logger = logging.getLogger(__name__)

Metric = Literal["euclidean", "sqeuclidean", "cosine"]
METRICS: tuple[str, ...] = ("euclidean", "sqeuclidean", "cosine")
_HIGHEST = lax.Precision.HIGHEST
_EPS32 = float(np.finfo(np.float32).eps)


def default_snap_tol(dim: int) -> float:
    """Relative tolerance under which a distance is reported as exactly 0 (see module docstring)."""
    return 4.0 * _EPS32 * math.sqrt(max(int(dim), 4))


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _block_for(n: int, block_size: int) -> int:
    """Tile height actually used: at most ``block_size``, balanced over the tiles to limit padding.

    With ``t = ceil(n / block_size)`` tiles the height is ``ceil(n / t)`` (rounded up to a multiple
    of 8 when ``block_size`` is one), e.g. 20,000 rows with ``block_size=1024`` use 20 tiles of 1,000
    rows and need no padding at all (so no copy to strip it from a returned matrix).
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    n = max(n, 1)
    tiles = -(-n // block_size)
    blk = -(-n // tiles)
    if block_size % 8 == 0:
        blk = min(_round_up(blk, 8), block_size)
    return blk


def _pad_rows(x: jax.Array, rows: int, value: float | int | bool = 0) -> jax.Array:
    pad = rows - x.shape[0]
    if pad == 0:
        return x
    return jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1), constant_values=value)


def _prepare(x: jax.Array, mask: jax.Array, metric: str, center: jax.Array | None):
    """Sanitise masked rows, centre (euclidean) or L2-normalise (cosine); return rows and ‖row‖²."""
    x = jnp.where(mask[:, None], x.astype(jnp.float32), 0.0)
    if metric == "cosine":
        norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
        x = x / jnp.where(norm > 0, norm, 1.0)
    elif center is not None:
        x = jnp.where(mask[:, None], x - center, 0.0)
    return x, jnp.sum(x * x, axis=-1)


def _masked_mean(xs: tuple[jax.Array, ...], masks: tuple[jax.Array, ...]) -> jax.Array:
    """Mean of the valid rows of several matrices (the centring point for euclidean metrics)."""
    total = sum(jnp.sum(jnp.where(m[:, None], x.astype(jnp.float32), 0.0), axis=0) for x, m in zip(xs, masks))
    count = sum(jnp.sum(m) for m in masks)
    return total / jnp.maximum(count, 1).astype(jnp.float32)


def _tile(xa, sqa, xb, sqb, metric: str, snap_tol: float) -> jax.Array:
    """Distances between two row tiles (matmul form, clamped, snapped)."""
    dot = lax.dot_general(xa, xb, (((1,), (1,)), ((), ())), precision=_HIGHEST)
    if metric == "cosine":
        d = jnp.clip(1.0 - dot, 0.0, 2.0)
        return jnp.where(d <= snap_tol, 0.0, d)
    scale = sqa[:, None] + sqb[None, :]
    d2 = jnp.maximum(scale - 2.0 * dot, 0.0)
    d2 = jnp.where(d2 <= snap_tol * scale, 0.0, d2)
    return jnp.sqrt(d2) if metric == "euclidean" else d2


def _blocked(x, sq, mask, gidx, block: int):
    """Pad to a multiple of ``block`` and reshape to ``(tiles, block, ...)``; padded index is -1."""
    rows = _round_up(x.shape[0], block)
    x, sq = _pad_rows(x, rows), _pad_rows(sq, rows)
    mask, gidx = _pad_rows(mask, rows, False), _pad_rows(gidx, rows, -1)
    t = rows // block
    return x.reshape(t, block, -1), sq.reshape(t, block), mask.reshape(t, block), gidx.reshape(t, block)


def _matrix_core(xr, sqr, mr, gr, xc, sqc, mc, gc, *, metric, br, bc, snap_tol, exclude_self):
    """Full distance matrix of rows vs columns, one ``br × bc`` tile at a time (masked entries 0)."""
    n, m = xr.shape[0], xc.shape[0]
    xr, sqr, mr, gr = _blocked(xr, sqr, mr, gr, br)
    xc, sqc, mc, gc = _blocked(xc, sqc, mc, gc, bc)

    def row_block(args):
        x_i, sq_i, m_i, g_i = args

        def col_block(cargs):
            x_j, sq_j, m_j, g_j = cargs
            d = _tile(x_i, sq_i, x_j, sq_j, metric, snap_tol)
            keep = m_i[:, None] & m_j[None, :]
            if exclude_self:
                keep &= g_i[:, None] != g_j[None, :]
            return jnp.where(keep, d, 0.0)

        tiles = lax.map(col_block, (xc, sqc, mc, gc))  # (tc, br, bc)
        return jnp.transpose(tiles, (1, 0, 2)).reshape(br, -1)

    out = lax.map(row_block, (xr, sqr, mr, gr))  # (tr, br, tc*bc)
    return out.reshape(-1, out.shape[-1])[:n, :m]


def _class_sums_core(xr, sqr, mr, gr, xc, sqc, ohc, gc, *, metric, br, bc, snap_tol):
    """``S[i, c] = Σ_{j ≠ i, label_j = c} d(i, j)`` for every row ``i``, without an N×N matrix.

    ``ohc`` is the one-hot label matrix of the columns with masked rows zeroed, so padded columns
    contribute nothing; masked rows get a zero row of ``S``.
    """
    n, num_classes = xr.shape[0], ohc.shape[1]
    xr, sqr, mr, gr = _blocked(xr, sqr, mr, gr, br)
    rows_c = _round_up(xc.shape[0], bc)
    tc = rows_c // bc
    xc = _pad_rows(xc, rows_c).reshape(tc, bc, -1)
    sqc = _pad_rows(sqc, rows_c).reshape(tc, bc)
    ohc = _pad_rows(ohc, rows_c).reshape(tc, bc, num_classes)
    gc = _pad_rows(gc, rows_c, -2).reshape(tc, bc)

    def row_block(args):
        x_i, sq_i, m_i, g_i = args

        def body(j, acc):
            d = _tile(x_i, sq_i, xc[j], sqc[j], metric, snap_tol)
            keep = m_i[:, None] & (g_i[:, None] != gc[j][None, :])
            d = jnp.where(keep, d, 0.0)
            return acc + lax.dot(d, ohc[j], precision=_HIGHEST)

        return lax.fori_loop(0, tc, body, jnp.zeros((br, num_classes), jnp.float32))

    sums = lax.map(row_block, (xr, sqr, mr, gr))
    return sums.reshape(-1, num_classes)[:n]


# ----------------------------------------------------------------------------------------------
# Sharding helpers
# ----------------------------------------------------------------------------------------------


def _is_concrete(x) -> bool:
    """True for arrays whose values this process can read (not tracers, fully addressable)."""
    return not isinstance(x, jax.core.Tracer) and getattr(x, "is_fully_addressable", True)


def _row_sharding(x) -> tuple[Mesh, str] | None:
    """``(mesh, axis)`` if ``x`` is a concrete array whose rows are sharded over one named axis."""
    sharding = getattr(x, "sharding", None)
    if isinstance(x, jax.core.Tracer) or not isinstance(sharding, NamedSharding):
        return None
    spec = tuple(sharding.spec)
    if not spec or not isinstance(spec[0], str) or sharding.mesh.shape[spec[0]] == 1:
        return None
    return sharding.mesh, spec[0]


def _resolve_mesh(x, mesh: Mesh | None, data_axis: str) -> tuple[Mesh | None, str]:
    if mesh is not None:
        if data_axis not in mesh.shape:
            raise ValueError(f"data_axis {data_axis!r} is not an axis of the mesh {dict(mesh.shape)}")
        return mesh, data_axis
    found = _row_sharding(x)
    return (found if found is not None else (None, data_axis))


def _validate(x, name: str, mask, dim: int | None = None) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has dim {x.shape[1]}, expected {dim}")
    if mask is not None and tuple(mask.shape) != (x.shape[0],):
        raise ValueError(f"mask for {name} must have shape ({x.shape[0]},), got {tuple(mask.shape)}")


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")


# ----------------------------------------------------------------------------------------------
# Pairwise distances
# ----------------------------------------------------------------------------------------------


@functools.partial(
    jax.jit, static_argnames=("metric", "block_size", "snap_tol", "is_self", "mesh", "data_axis")
)
def _pairwise_jit(a, b, a_mask, b_mask, *, metric, block_size, snap_tol, is_self, mesh, data_axis):
    center = None if metric == "cosine" else _masked_mean((a, b), (a_mask, b_mask))
    xa, sqa = _prepare(a, a_mask, metric, center)
    xb, sqb = _prepare(b, b_mask, metric, center)
    kw = dict(metric=metric, snap_tol=snap_tol, exclude_self=is_self)
    if mesh is None:
        ga, gb = jnp.arange(a.shape[0]), jnp.arange(b.shape[0])
        br, bc = _block_for(a.shape[0], block_size), _block_for(b.shape[0], block_size)
        return _matrix_core(xa, sqa, a_mask, ga, xb, sqb, b_mask, gb, br=br, bc=bc, **kw)

    n_local = a.shape[0] // mesh.shape[data_axis]
    br, bc = _block_for(n_local, block_size), _block_for(b.shape[0], block_size)

    def local(xa_l, sqa_l, ma_l, xb, sqb, mb):
        ga = lax.axis_index(data_axis) * n_local + jnp.arange(n_local)
        gb = jnp.arange(xb.shape[0])
        return _matrix_core(xa_l, sqa_l, ma_l, ga, xb, sqb, mb, gb, br=br, bc=bc, **kw)

    row, rep = P(data_axis), P()
    return jax.shard_map(
        local, mesh=mesh, in_specs=(row, row, row, rep, rep, rep), out_specs=row, check_vma=False
    )(xa, sqa, a_mask, xb, sqb, b_mask)


def pairwise_distances(
    a: jax.Array,
    b: jax.Array | None = None,
    metric: Metric = "euclidean",
    block_size: int = 1024,
    a_mask: jax.Array | None = None,
    b_mask: jax.Array | None = None,
    *,
    snap_tol: float | None = None,
    mesh: Mesh | None = None,
    data_axis: str = "data",
) -> jax.Array:
    """Full ``(len(a), len(b))`` distance matrix, computed tile by tile.

    Use for moderate sizes (the output itself is dense); for class statistics over large sets use
    :func:`class_distance_metrics`, which never builds the matrix. ``b=None`` means ``b = a`` with
    self-pairs set to exactly 0. Entries whose row or column is masked out are 0. With ``mesh`` (or
    row-sharded ``a``) the output rows are sharded like ``a``.
    """
    _check_metric(metric)
    is_self = b is None
    a = jnp.asarray(a)
    _validate(a, "a", a_mask)
    if is_self:
        b, b_mask = a, a_mask
    b = jnp.asarray(b)
    _validate(b, "b", b_mask, a.shape[1])
    a_mask = jnp.ones(a.shape[0], bool) if a_mask is None else jnp.asarray(a_mask, bool)
    b_mask = jnp.ones(b.shape[0], bool) if b_mask is None else jnp.asarray(b_mask, bool)
    tol = default_snap_tol(a.shape[1]) if snap_tol is None else float(snap_tol)
    mesh, data_axis = _resolve_mesh(a, mesh, data_axis)
    n = a.shape[0]
    if mesh is not None and n % mesh.shape[data_axis]:
        # shard_map needs equal shards: pad rows (masked) and drop them from the result.
        rows = _round_up(n, mesh.shape[data_axis])
        a_p, am_p = _pad_rows(a, rows), _pad_rows(a_mask, rows, False)
        logger.debug("padding %d rows to %d to shard them over %r", n, rows, data_axis)
        out = _pairwise_jit(
            a_p, b, am_p, b_mask, metric=metric, block_size=block_size, snap_tol=tol,
            is_self=is_self, mesh=mesh, data_axis=data_axis,
        )
        return out[:n]
    return _pairwise_jit(
        a, b, a_mask, b_mask, metric=metric, block_size=block_size, snap_tol=tol,
        is_self=is_self, mesh=mesh, data_axis=data_axis,
    )


# ----------------------------------------------------------------------------------------------
# Class metrics
# ----------------------------------------------------------------------------------------------


@struct.dataclass
class ClassDistanceMetrics:
    """Class-structure statistics of a labelled embedding set (all fp32 / bool jax arrays).

    Definitions (``d`` is the chosen metric, ``n_c`` the number of valid rows of class ``c``,
    pairs are ordered and self-pairs never count):

    * ``per_class_intra[c]``: mean ``d(i, j)`` over pairs inside class ``c``; 0 when ``n_c < 2``.
    * ``intra``: unweighted mean of ``per_class_intra`` over classes with ``n_c ≥ 2``.
    * ``inter``: **pair-weighted** mean of ``d(i, j)`` over all pairs with different labels, i.e.
      ``Σ_{c≠c'} n_c n_c' M[c, c'] / Σ_{c≠c'} n_c n_c'``. Pair-weighting makes it the weighted mean
      of ``per_sample_inter`` (weights ``N − n_{y_i}``) and hence consistent with per-sample credit;
      the unweighted mean over class pairs can be derived from ``class_pair_mean``.
    * ``centroid_inter``: mean over unordered pairs of non-empty classes of ``d(μ_c, μ_c')`` where
      ``μ_c`` is the mean raw embedding of class ``c`` (for cosine: of the un-normalised vectors).
    * ``class_pair_mean[c, c']``: mean ``d`` between members of ``c`` and ``c'`` (diagonal =
      ``per_class_intra``); 0 where undefined.
    * ``per_sample_intra[i]``: mean ``d(i, j)`` over the other members of ``i``'s class;
      ``per_sample_inter[i]``: mean over all rows of other classes. 0 (and ``*_valid`` False) where
      undefined: a class with fewer than 2 members, no other class present, or a masked row.
    * ``classes_too_small[c]``: ``n_c < 2`` (empty classes included); ``intra_valid`` /
      ``inter_valid`` / ``centroid_inter_valid`` say whether the scalar has at least one term.
    """

    intra: jax.Array
    inter: jax.Array
    centroid_inter: jax.Array
    per_class_intra: jax.Array
    per_class_count: jax.Array
    class_pair_mean: jax.Array
    per_sample_intra: jax.Array
    per_sample_inter: jax.Array
    per_sample_intra_valid: jax.Array
    per_sample_inter_valid: jax.Array
    classes_too_small: jax.Array
    intra_valid: jax.Array
    inter_valid: jax.Array
    centroid_inter_valid: jax.Array


def _safe_div(num, den):
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1), 0.0)


@functools.partial(
    jax.jit, static_argnames=("num_classes", "metric", "block_size", "snap_tol", "mesh", "data_axis")
)
def _class_metrics_jit(x, labels, mask, *, num_classes, metric, block_size, snap_tol, mesh, data_axis):
    labels = labels.astype(jnp.int32)
    mask = mask & (labels >= 0) & (labels < num_classes)
    center = None if metric == "cosine" else _masked_mean((x,), (mask,))
    xp, sq = _prepare(x, mask, metric, center)
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * mask[:, None]
    kw = dict(metric=metric, snap_tol=snap_tol)
    n = x.shape[0]
    if mesh is None:
        g = jnp.arange(n)
        blk = _block_for(n, block_size)
        sums = _class_sums_core(xp, sq, mask, g, xp, sq, onehot, g, br=blk, bc=blk, **kw)
    else:
        n_local = n // mesh.shape[data_axis]
        br, bc = _block_for(n_local, block_size), _block_for(n, block_size)

        def local(x_l, sq_l, m_l, oh_l):
            g_l = lax.axis_index(data_axis) * n_local + jnp.arange(n_local)
            xc = lax.all_gather(x_l, data_axis, tiled=True)
            sqc = lax.all_gather(sq_l, data_axis, tiled=True)
            ohc = lax.all_gather(oh_l, data_axis, tiled=True)
            return _class_sums_core(x_l, sq_l, m_l, g_l, xc, sqc, ohc, jnp.arange(n), br=br, bc=bc, **kw)

        row = P(data_axis)
        sums = jax.shard_map(local, mesh=mesh, in_specs=(row,) * 4, out_specs=row, check_vma=False)(
            xp, sq, mask, onehot
        )

    count = jnp.sum(onehot, axis=0)  # (C,)
    n_valid = jnp.sum(count)
    own_sum = jnp.sum(sums * onehot, axis=1)
    own_count = onehot @ count  # n_{y_i}, 0 for masked rows
    intra_partners = jnp.where(mask, own_count - 1, 0)
    inter_partners = jnp.where(mask, n_valid - own_count, 0)
    per_sample_intra = _safe_div(own_sum, intra_partners)
    per_sample_inter = _safe_div(jnp.sum(sums, axis=1) - own_sum, inter_partners)

    pair_sum = lax.dot(onehot.T, sums, precision=_HIGHEST)  # (C, C): Σ_{i∈c} S[i, c']
    pair_sum = 0.5 * (pair_sum + pair_sum.T)
    pair_count = jnp.outer(count, count) - jnp.diag(count)
    class_pair_mean = _safe_div(pair_sum, pair_count)
    per_class_intra = jnp.diag(class_pair_mean)
    too_small = count < 2
    n_intra = jnp.sum(~too_small)
    intra = _safe_div(jnp.sum(jnp.where(too_small, 0.0, per_class_intra)), n_intra)
    cross_count = n_valid * n_valid - jnp.sum(count * count)
    inter = _safe_div(jnp.sum(pair_sum) - jnp.trace(pair_sum), cross_count)

    raw = jnp.where(mask[:, None], x.astype(jnp.float32), 0.0)
    if center is not None:
        raw = jnp.where(mask[:, None], raw - center, 0.0)
    centroids = lax.dot(onehot.T, raw, precision=_HIGHEST) / jnp.maximum(count, 1)[:, None]
    nonempty = count > 0
    cx, csq = _prepare(centroids, nonempty, metric, None)
    cdist = _tile(cx, csq, cx, csq, metric, snap_tol)
    upper = jnp.triu(jnp.ones((num_classes, num_classes), bool), k=1) & nonempty[:, None] & nonempty[None, :]
    n_cpairs = jnp.sum(upper)
    centroid_inter = _safe_div(jnp.sum(jnp.where(upper, cdist, 0.0)), n_cpairs)

    return ClassDistanceMetrics(
        intra=intra,
        inter=inter,
        centroid_inter=centroid_inter,
        per_class_intra=per_class_intra,
        per_class_count=count.astype(jnp.int32),
        class_pair_mean=class_pair_mean,
        per_sample_intra=per_sample_intra,
        per_sample_inter=per_sample_inter,
        per_sample_intra_valid=intra_partners > 0,
        per_sample_inter_valid=inter_partners > 0,
        classes_too_small=too_small,
        intra_valid=n_intra > 0,
        inter_valid=cross_count > 0,
        centroid_inter_valid=n_cpairs > 0,
    )


def class_distance_metrics(
    embeddings: jax.Array,
    labels: jax.Array,
    num_classes: int,
    metric: Metric = "cosine",
    block_size: int = 1024,
    mask: jax.Array | None = None,
    *,
    snap_tol: float | None = None,
    mesh: Mesh | None = None,
    data_axis: str = "data",
) -> ClassDistanceMetrics:
    """Intra/inter-class distances (batch, per class, per sample) from one blocked pass.

    Accumulates, tile by tile, each row's summed distance to every class (an ``N × C`` matrix);
    every statistic in :class:`ClassDistanceMetrics` derives from it, so memory is
    ``O(block² + N·C)``. Rows with ``mask`` False, or labels outside ``[0, num_classes)``, are
    ignored (out-of-range labels raise when ``labels`` is a concrete array). With ``mesh`` (or
    row-sharded ``embeddings``) rows are split over ``data_axis``; per-sample outputs come back
    sharded the same way.
    """
    _check_metric(metric)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    x = jnp.asarray(embeddings) if not isinstance(embeddings, jax.Array) else embeddings
    _validate(x, "embeddings", mask)
    labels = jnp.asarray(labels)
    if labels.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},), got {labels.shape}")
    mask = jnp.ones(x.shape[0], bool) if mask is None else jnp.asarray(mask, bool)
    if _is_concrete(labels) and _is_concrete(mask):
        lab, m = np.asarray(labels), np.asarray(mask)
        bad = m & ((lab < 0) | (lab >= num_classes))
        if bad.any():
            raise ValueError(
                f"labels must lie in [0, {num_classes}) for unmasked rows; found "
                f"{np.unique(lab[bad])[:10].tolist()} at rows {np.flatnonzero(bad)[:10].tolist()}"
            )
    tol = default_snap_tol(x.shape[1]) if snap_tol is None else float(snap_tol)
    mesh, data_axis = _resolve_mesh(x, mesh, data_axis)
    n = x.shape[0]
    if mesh is not None and n % mesh.shape[data_axis]:
        rows = _round_up(n, mesh.shape[data_axis])
        x, labels, mask = _pad_rows(x, rows), _pad_rows(labels, rows), _pad_rows(mask, rows, False)
    out = _class_metrics_jit(
        x, labels, mask, num_classes=num_classes, metric=metric, block_size=block_size,
        snap_tol=tol, mesh=mesh, data_axis=data_axis,
    )
    if out.per_sample_intra.shape[0] != n:
        out = out.replace(
            per_sample_intra=out.per_sample_intra[:n],
            per_sample_inter=out.per_sample_inter[:n],
            per_sample_intra_valid=out.per_sample_intra_valid[:n],
            per_sample_inter_valid=out.per_sample_inter_valid[:n],
        )
    if _is_concrete(out.classes_too_small) and bool(jnp.any(out.classes_too_small)):
        small = np.flatnonzero(np.asarray(out.classes_too_small)).tolist()
        logger.info("classes with fewer than 2 members (excluded from intra): %s", small[:20])
    return out
