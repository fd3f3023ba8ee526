"""Blocked distances vs scikit-learn / SciPy, class metrics vs a NumPy double loop, sharding."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.metrics import pairwise_distances as sk_pairwise

from genalign_jax.reward import class_distance_metrics, default_snap_tol, pairwise_distances

METRICS = ("euclidean", "sqeuclidean", "cosine")
RTOL = 1e-5


def _data(n: int = 203, d: int = 24, seed: int = 0, offset: float = 0.0) -> np.ndarray:
    """Random fp32 rows with duplicates (5≡17≡n-1) and two zero vectors (20, 21); n > 21."""
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32) + offset
    x[17] = x[5]
    x[n - 1] = x[5]
    x[20] = 0.0
    x[21] = 0.0
    return x


def _assert_close(ours, ref, scale: float) -> None:
    """≤ 1e-5 relative, with an absolute floor of 1e-6·scale for entries that are ~0."""
    ours = np.asarray(ours, np.float64)
    assert np.all(np.isfinite(ours)) and ours.min() >= 0
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=1e-6 * scale)


@pytest.mark.parametrize("metric", METRICS)
def test_self_distances_match_sklearn_and_scipy(metric):
    x = _data()
    ours = np.asarray(pairwise_distances(x, metric=metric, block_size=64))  # 203 % 64 != 0
    ref = sk_pairwise(x.astype(np.float64), metric=metric)
    _assert_close(ours, ref, ref.max())
    # Identical rows give exactly 0 (not sqrt of rounding noise), self-pairs too.
    assert ours[5, 17] == ours[17, -1] == ours[5, -1] == 0.0
    assert np.all(np.diag(ours) == 0.0)
    if metric == "cosine":  # sklearn convention: a zero vector has similarity 0 -> distance 1
        assert ours[20, 21] == 1.0 and ours[20, 20] == 0.0
        assert np.all(ours[20, np.arange(len(x)) != 20] == 1.0)
    nonzero = np.linalg.norm(x, axis=1) > 0
    ref_scipy = cdist(x[nonzero].astype(np.float64), x[nonzero].astype(np.float64), metric=metric)
    _assert_close(ours[np.ix_(nonzero, nonzero)], ref_scipy, ref.max())


@pytest.mark.parametrize("metric", METRICS)
def test_cross_distances_match_cdist(metric):
    a = _data(203, 24, seed=1, offset=3.0)  # offset: common component, stresses the matmul form
    b = _data(77, 24, seed=2, offset=3.0)
    b[3] = a[8]
    ours = np.asarray(pairwise_distances(a, b, metric=metric, block_size=32))
    nonzero_a, nonzero_b = np.linalg.norm(a, axis=1) > 0, np.linalg.norm(b, axis=1) > 0
    ref = cdist(a[nonzero_a].astype(np.float64), b[nonzero_b].astype(np.float64), metric=metric)
    _assert_close(ours[np.ix_(nonzero_a, nonzero_b)], ref, ref.max())
    assert ours[8, 3] == 0.0
    if metric == "cosine":  # explicit b: zero vs zero is a real pair, distance 1
        assert ours[20, 21] == 1.0 and ours[20, 20] == 1.0 and ours[21, 5] == 1.0
    ref_sk = sk_pairwise(a.astype(np.float64), b.astype(np.float64), metric=metric)
    _assert_close(ours, ref_sk, ref_sk.max())


def test_padding_never_changes_result():
    a, b = _data(50, 16, seed=3), _data(31, 16, seed=4)
    a_pad = np.concatenate([a, np.full((14, 16), np.nan, np.float32)])
    b_pad = np.concatenate([np.full((5, 16), np.inf, np.float32), b, 1e30 * np.ones((3, 16), np.float32)])
    a_mask = np.arange(64) < 50
    b_mask = np.r_[np.zeros(5, bool), np.ones(31, bool), np.zeros(3, bool)]
    out = np.asarray(pairwise_distances(a_pad, b_pad, metric="euclidean", block_size=16, a_mask=a_mask, b_mask=b_mask))
    assert np.all(np.isfinite(out))
    ref = sk_pairwise(a.astype(np.float64), b.astype(np.float64))
    np.testing.assert_allclose(out[np.ix_(a_mask, b_mask)], ref, rtol=RTOL, atol=1e-6 * ref.max())
    assert np.all(out[~a_mask] == 0) and np.all(out[:, ~b_mask] == 0)
    out_self = np.asarray(pairwise_distances(a_pad, metric="cosine", block_size=16, a_mask=a_mask))
    ref_self = sk_pairwise(a.astype(np.float64), metric="cosine")
    np.testing.assert_allclose(out_self[:50, :50], ref_self, rtol=RTOL, atol=1e-6)
    assert np.all(out_self[50:] == 0) and np.all(out_self[:, 50:] == 0)


def test_large_offset_duplicates_are_exactly_zero_and_snap_is_tight():
    x = _data(64, 768, seed=5, offset=100.0)  # ‖x‖ ≈ 2800, pairwise distances ≈ 39
    d = np.asarray(pairwise_distances(x, x.copy(), metric="euclidean", block_size=32))
    ref = cdist(x.astype(np.float64), x.astype(np.float64))
    np.testing.assert_allclose(d, ref, rtol=RTOL, atol=1e-6 * ref.max())
    assert d[5, 17] == 0.0 and d[20, 21] == 0.0
    # The snap threshold only covers rounding noise: sqrt(tol * 2 * ‖x‖²) of centred data is tiny.
    assert default_snap_tol(768) < 2e-5


def _dist(u: np.ndarray, v: np.ndarray, metric: str) -> float:
    if metric == "cosine":
        nu, nv = np.linalg.norm(u), np.linalg.norm(v)
        return 1.0 if nu == 0 or nv == 0 else 1.0 - float(u @ v) / (nu * nv)
    sq = float(np.sum((u - v) ** 2))
    return sq if metric == "sqeuclidean" else np.sqrt(sq)


def _reference_metrics(x, y, num_classes, metric, mask):
    """Plain NumPy double loop over valid rows, float64."""
    x = x.astype(np.float64)
    idx = np.flatnonzero(mask)
    n = len(x)
    ps_intra, ps_inter = np.zeros(n), np.zeros(n)
    ps_intra_ok, ps_inter_ok = np.zeros(n, bool), np.zeros(n, bool)
    pair_sum = np.zeros((num_classes, num_classes))
    pair_cnt = np.zeros((num_classes, num_classes))
    for i in idx:
        same, other = [], []
        for j in idx:
            if i == j:
                continue
            d = _dist(x[i], x[j], metric)
            (same if y[i] == y[j] else other).append(d)
            pair_sum[y[i], y[j]] += d
            pair_cnt[y[i], y[j]] += 1
        if same:
            ps_intra[i], ps_intra_ok[i] = np.mean(same), True
        if other:
            ps_inter[i], ps_inter_ok[i] = np.mean(other), True
    counts = np.array([np.sum(y[idx] == c) for c in range(num_classes)])
    pcm = np.divide(pair_sum, pair_cnt, out=np.zeros_like(pair_sum), where=pair_cnt > 0)
    per_class_intra = np.diag(pcm).copy()
    intra = np.mean([per_class_intra[c] for c in range(num_classes) if counts[c] >= 2])
    off = ~np.eye(num_classes, dtype=bool)
    inter = pair_sum[off].sum() / pair_cnt[off].sum()
    cents = {c: x[idx][y[idx] == c].mean(0) for c in range(num_classes) if counts[c] > 0}
    keys = sorted(cents)
    cpairs = [_dist(cents[a], cents[b], metric) for ai, a in enumerate(keys) for b in keys[ai + 1:]]
    return dict(
        intra=intra, inter=inter, centroid_inter=np.mean(cpairs), per_class_intra=per_class_intra,
        per_class_count=counts, class_pair_mean=pcm, per_sample_intra=ps_intra,
        per_sample_inter=ps_inter, per_sample_intra_valid=ps_intra_ok,
        per_sample_inter_valid=ps_inter_ok, classes_too_small=counts < 2,
    )


def _class_data(seed: int = 0, n: int = 45, d: int = 12):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    y[7] = 3  # class 3 is a singleton; class 4 is empty
    x = (rng.standard_normal((n, d)) + 2.0 * np.eye(5, d)[y]).astype(np.float32)
    x[11] = x[12]
    y[11] = y[12]
    x[20] = 0.0
    mask = np.ones(n, bool)
    mask[[3, 30, 31]] = False
    x[30] = np.nan  # masked garbage must not matter
    return x, y, mask


@pytest.mark.parametrize("metric", METRICS)
def test_class_metrics_match_double_loop(metric):
    x, y, mask = _class_data()
    ref = _reference_metrics(x, y, 5, metric, mask)
    # Trailing padding (inf rows, out-of-range labels) on top of the masked rows inside the data.
    pad_x = np.concatenate([x, np.full((9, x.shape[1]), np.inf, np.float32)])
    pad_y = np.concatenate([y, np.full(9, 99)])
    pad_m = np.concatenate([mask, np.zeros(9, bool)])
    out = class_distance_metrics(pad_x, pad_y, 5, metric=metric, block_size=13, mask=pad_m)  # 54 % 13 != 0
    for key in ("per_sample_intra", "per_sample_inter"):
        assert np.all(np.asarray(getattr(out, key))[~pad_m] == 0), key
    for key, value in ref.items():
        got = np.asarray(getattr(out, key))
        got = got[: len(x)] if key.startswith("per_sample") else got
        if got.dtype == bool or key == "per_class_count":
            np.testing.assert_array_equal(got, value, err_msg=key)
        else:
            np.testing.assert_allclose(got, value, rtol=RTOL, atol=1e-6, err_msg=key)
    assert bool(out.intra_valid) and bool(out.inter_valid) and bool(out.centroid_inter_valid)
    assert np.asarray(out.classes_too_small).tolist() == [False, False, False, True, True]
    assert out.per_sample_intra[7] == 0 and not out.per_sample_intra_valid[7]  # singleton: 0, flagged


def test_per_sample_metrics_average_to_batch_metrics():
    rng = np.random.default_rng(7)
    y = np.repeat(np.arange(4), [30, 10, 25, 15])
    x = (rng.standard_normal((80, 16)) + 3.0 * np.eye(4, 16)[y]).astype(np.float32)
    out = class_distance_metrics(x, y, 4, metric="cosine", block_size=24)  # 4 × 4 tiles of 24 rows
    psa, pse = np.asarray(out.per_sample_intra, np.float64), np.asarray(out.per_sample_inter, np.float64)
    # Blocked accumulation equals reductions of sklearn's full matrix.
    full = sk_pairwise(x.astype(np.float64), metric="cosine")
    same = (y[:, None] == y[None, :]) & ~np.eye(80, dtype=bool)
    np.testing.assert_allclose(psa, (full * same).sum(1) / same.sum(1), rtol=RTOL)
    np.testing.assert_allclose(out.inter, full[y[:, None] != y[None, :]].mean(), rtol=RTOL)
    # intra: per-class mean of per-sample intra, then unweighted mean over classes.
    per_class = np.array([psa[y == c].mean() for c in range(4)])
    np.testing.assert_allclose(per_class, out.per_class_intra, rtol=1e-6)
    np.testing.assert_allclose(per_class.mean(), out.intra, rtol=1e-6)
    # inter is pair-weighted: mean of per-sample inter weighted by each sample's number of partners.
    partners = 80 - np.bincount(y)[y]
    np.testing.assert_allclose(np.average(pse, weights=partners), out.inter, rtol=1e-6)
    assert abs(pse.mean() - float(out.inter)) > 1e-4  # unbalanced: the plain mean differs
    # Balanced classes: the plain mean equals the pair-weighted one.
    yb = np.repeat(np.arange(4), 20)
    outb = class_distance_metrics(x, yb, 4, metric="cosine", block_size=24)
    np.testing.assert_allclose(np.mean(np.asarray(outb.per_sample_inter, np.float64)), outb.inter, rtol=1e-6)


def test_tiny_classes_reported_not_nan():
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    out = class_distance_metrics(x, np.array([0, 1, 2, 3]), 4, metric="cosine")
    assert float(out.intra) == 0.0 and not bool(out.intra_valid)
    assert bool(out.inter_valid) and float(out.inter) > 0
    assert np.all(np.asarray(out.classes_too_small)) and not np.any(np.asarray(out.per_sample_intra_valid))
    one = class_distance_metrics(x, np.zeros(4, int), 4, metric="cosine")
    assert float(one.inter) == 0.0 and not bool(one.inter_valid) and not bool(one.centroid_inter_valid)
    assert float(one.intra) > 0 and bool(one.intra_valid)
    for leaf in (out, one):
        assert all(np.all(np.isfinite(np.asarray(v))) for v in (leaf.intra, leaf.inter, leaf.per_sample_inter))


def test_invalid_inputs_raise():
    x = np.zeros((5, 3), np.float32)
    with pytest.raises(ValueError, match="labels must lie in"):
        class_distance_metrics(x, np.array([0, 1, 2, 0, 1]), 2)
    with pytest.raises(ValueError, match="unknown metric"):
        pairwise_distances(x, metric="manhattan")
    with pytest.raises(ValueError, match="dim"):
        pairwise_distances(x, np.zeros((2, 4), np.float32))


_SHARDED_SCRIPT = textwrap.dedent(
    """
    import numpy as np, jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from genalign_jax.reward import class_distance_metrics, pairwise_distances
    assert jax.device_count() == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rng = np.random.default_rng(0)
    keys = ("intra", "inter", "centroid_inter", "per_class_intra", "per_sample_intra", "per_sample_inter")
    n = 102  # not a multiple of 4 devices: padded internally to 104
    y = rng.integers(0, 3, n)
    x = (rng.standard_normal((n, 16)) + np.eye(3, 16)[y]).astype(np.float32)
    mask = np.ones(n, bool); mask[5] = False
    base = class_distance_metrics(x, y, 3, metric="cosine", block_size=16, mask=mask)
    sh = class_distance_metrics(x, y, 3, metric="cosine", block_size=16, mask=mask, mesh=mesh)
    # Already row-sharded input: the mesh and axis are taken from its NamedSharding.
    xs = jax.device_put(np.pad(x, ((0, 2), (0, 0))), NamedSharding(mesh, P("data")))
    auto = class_distance_metrics(xs, np.pad(y, (0, 2)), 3, metric="cosine", block_size=16, mask=np.pad(mask, (0, 2)))
    assert len(auto.per_sample_intra.sharding.device_set) == 4, auto.per_sample_intra.sharding
    for out in (sh, auto):
        for k in keys:
            got = np.asarray(getattr(out, k))[: n] if k.startswith("per_sample") else np.asarray(getattr(out, k))
            np.testing.assert_allclose(got, np.asarray(getattr(base, k)), rtol=1e-6, atol=1e-7, err_msg=k)
    d0 = pairwise_distances(x, metric="euclidean", block_size=8, a_mask=mask)
    d1 = pairwise_distances(x, metric="euclidean", block_size=8, a_mask=mask, mesh=mesh)
    np.testing.assert_allclose(np.asarray(d1), np.asarray(d0), rtol=1e-6, atol=1e-6)
    assert np.all(np.diag(np.asarray(d1)) == 0) and float(np.asarray(d1).max()) > 1
    print("SHARDED_OK", float(base.inter))
    """
)


def test_sharded_rows_match_unsharded():
    """Rows sharded over a 4-device 'data' axis (simulated CPU devices, fresh process)."""
    env = dict(os.environ)
    # Fewer LLVM passes: ~35% less compile time, and both sides of the comparison use the same flags.
    flags = " --xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + flags).strip()
    env["JAX_PLATFORMS"] = "cpu"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", _SHARDED_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SHARDED_OK" in proc.stdout
