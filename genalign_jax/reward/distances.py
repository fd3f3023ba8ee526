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

