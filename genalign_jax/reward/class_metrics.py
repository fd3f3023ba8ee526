"""Class-structure metrics of a labelled embedding set: intra/inter-class and per-sample distances.

One ``N x C`` pass over tiles of the distance matrix (see :mod:`genalign_jax.reward.distances`
for the tiling, numerics, masking and sharding conventions): no ``N x N`` matrix is formed, so
working memory is ``O(block^2 + N*C)``.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from genalign_jax.reward.distances import (  # the shared tile kernels of this package
    _HIGHEST,
    Metric,
    default_snap_tol,
    _block_for,
    _blocked,
    _check_metric,
    _is_concrete,
    _masked_mean,
    _pad_rows,
    _prepare,
    _resolve_mesh,
    _round_up,
    _tile,
    _validate,
)

logger = logging.getLogger(__name__)

__all__ = ["ClassDistanceMetrics", "class_distance_metrics"]


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
