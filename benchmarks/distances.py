"""Benchmark: blocked, jitted distances (ours) vs scikit-learn and SciPy on CPU.

Default size is the issue's: 20,000 × 768 fp32 embeddings, 4 classes. Tasks:

* ``pairwise_cosine`` / ``pairwise_euclidean``: the full all-pairs matrix.
* ``class_metrics``: intra/inter-class distances plus per-sample versions. Ours never builds the
  N×N matrix; the baselines build it (``sklearn.metrics.pairwise_distances``, or SciPy ``cdist``)
  and reduce it with NumPy.

Each (task, implementation) runs in a fresh child process so its peak memory can be measured:
``peak_rss_mb`` is the child's peak RSS during the task minus its RSS just before (Linux: the peak
counter is reset via ``/proc/self/clear_refs``; elsewhere ``resource.getrusage``), which covers XLA
buffers too; ``py_heap_peak_mb`` is ``tracemalloc``'s peak (NumPy allocations, not XLA).
SciPy's ``cdist`` is single-threaded and slow, so by default it computes ``--scipy-rows`` rows
against all columns and its time is extrapolated linearly to N rows (marked ``extrapolated``).

Roofline: the all-pairs work is one Gram matrix, 2·N²·D FLOPs (norms and the per-class sums are
O(N²) and not counted); achieved FLOP/s of each implementation is reported against the fp32
matmul peak measured by the parent process in the same run (``benchmarks.common.matmul_peak``).
``--rounds R`` repeats every (task, implementation) child R times, interleaved (round-robin over
tasks and implementations), and reports the median.

Usage::

    python benchmarks/distances.py                      # 20,000 × 768 (a few minutes on 2 cores)
    python benchmarks/distances.py --dim 384 --rounds 3 --impls ours,sklearn \
        --out benchmarks/results/distances_minilm_cpu.json   # MiniLM's embedding width
    python benchmarks/distances.py --n 2000 --dim 128   # quick run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("pairwise_cosine", "pairwise_euclidean", "class_metrics")
IMPLS = ("ours", "sklearn", "scipy")
SAMPLE_ROWS = 64  # rows of each matrix saved for the cross-implementation accuracy check


def make_data(n: int, dim: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class-structured fp32 embeddings with a shared offset (like real sentence embeddings)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centers = rng.standard_normal((classes, dim)).astype(np.float32)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x += 0.5 * centers[labels] + 0.3
    return x, labels


def _class_stats_from_sums(sums: np.ndarray, labels: np.ndarray, classes: int) -> dict[str, float]:
    """Intra/inter from per-row class sums ``S[i, c]`` (same definitions as ours)."""
    onehot = np.eye(classes, dtype=np.float64)[labels]
    count = onehot.sum(0)
    own = (sums * onehot).sum(1)
    n_own = count[labels]
    per_intra = own / np.maximum(n_own - 1, 1)
    per_inter = (sums.sum(1) - own) / np.maximum(len(labels) - n_own, 1)
    pair = onehot.T @ sums
    intra = np.mean([pair[c, c] / (count[c] * (count[c] - 1)) for c in range(classes) if count[c] >= 2])
    inter = (pair.sum() - np.trace(pair)) / (len(labels) ** 2 - (count**2).sum())
    return {"intra": float(intra), "inter": float(inter), "per_sample_intra_mean": float(per_intra.mean()),
            "per_sample_inter_mean": float(per_inter.mean())}


def _rss_kib(field: str) -> int:
    """``VmRSS``/``VmHWM`` of this process in KiB (Linux), or -1 when unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def _reset_peak() -> int:
    """Reset the peak-RSS counter (Linux ``clear_refs`` 5) and return the baseline RSS in KiB.

    Falls back to ``ru_maxrss`` (peak so far) where the reset is not available.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _rss_kib("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_kib() -> int:
    hwm = _rss_kib("VmHWM")
    return hwm if hwm >= 0 else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _stop_memory() -> tuple[int, int]:
    """Peak RSS (KiB) and tracemalloc peak (bytes) since the last reset; stops tracemalloc."""
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return _peak_kib(), py_peak


def run_worker(task: str, impl: str, args: argparse.Namespace, sample_path: str) -> dict:
    """Run one (task, impl) in this process and return timings, memory and a result sample."""
    x, labels = make_data(args.n, args.dim, args.classes)
    metric = {"pairwise_cosine": "cosine", "pairwise_euclidean": "euclidean"}.get(task, args.class_metric)
    extra: dict = {}
    if impl == "ours":
        import jax

        from genalign_jax.reward import class_distance_metrics, pairwise_distances

        xj = jax.device_put(x)
        if task == "class_metrics":
            def fn(a):
                return class_distance_metrics(a, labels, args.classes, metric=metric, block_size=args.block_size)
        else:
            def fn(a):
                return pairwise_distances(a, metric=metric, block_size=args.block_size)
        # Compile ahead of time (timed separately), then time one execution of the executable.
        t0 = time.perf_counter()
        compiled = jax.jit(fn).lower(xj).compile()
        extra["compile_seconds"] = time.perf_counter() - t0
        base = _reset_peak()
        tracemalloc.start()
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(xj))
        seconds = time.perf_counter() - t0
        peak, py_peak = _stop_memory()
        rows = args.n
        if task == "class_metrics":
            result = {"intra": float(out.intra), "inter": float(out.inter),
                      "per_sample_intra_mean": float(np.mean(out.per_sample_intra)),
                      "per_sample_inter_mean": float(np.mean(out.per_sample_inter))}
        else:
            np.save(sample_path, np.asarray(out[:SAMPLE_ROWS]))
            result = {}
    else:
        rows = args.n if impl == "sklearn" else min(args.scipy_rows or args.n, args.n)
        if impl == "sklearn":
            from sklearn.metrics import pairwise_distances as compute

            def full(a):
                return compute(a, x, metric=metric) if a is not x else compute(x, metric=metric)
        else:
            from scipy.spatial.distance import cdist

            def full(a):
                return cdist(a, x, metric=metric)
        base = _reset_peak()
        tracemalloc.start()
        t0 = time.perf_counter()
        a = x if rows == args.n else x[:rows]
        d = full(a)
        if task == "class_metrics":
            onehot = np.eye(args.classes, dtype=d.dtype)[labels]
            sums = d @ onehot
        seconds = time.perf_counter() - t0
        peak, py_peak = _stop_memory()
        if task == "class_metrics":
            result = _class_stats_from_sums(sums.astype(np.float64), labels[:rows], args.classes) \
                if rows == args.n else {}
        else:
            np.save(sample_path, np.asarray(d[:SAMPLE_ROWS], np.float32))
            result = {}
    scale = 1024.0  # KiB -> MiB
    return {
        "task": task, "impl": impl, "metric": metric, "rows_computed": rows,
        "seconds": seconds * args.n / rows, "measured_seconds": seconds,
        "extrapolated": rows != args.n,
        "peak_rss_mb": max(peak - base, 0) / scale, "py_heap_peak_mb": py_peak / 2**20,
        "result": result, **extra,
    }


def _spawn(task: str, impl: str, args: argparse.Namespace, tmp: str) -> dict | None:
    sample = os.path.join(tmp, f"{task}_{impl}.npy")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", f"{task}:{impl}", "--sample", sample,
           "--n", str(args.n), "--dim", str(args.dim), "--classes", str(args.classes),
           "--block-size", str(args.block_size), "--scipy-rows", str(args.scipy_rows),
           "--class-metric", args.class_metric]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"[{task}/{impl}] failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    rec["sample"] = sample if os.path.exists(sample) else None
    return rec


def main(argv: list[str] | None = None) -> None:
    """Parse flags; as the parent, run every (task, impl) in a child and write table + JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=20_000, help="rows (embeddings)")
    p.add_argument("--dim", type=int, default=768, help="embedding dimension")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--block-size", type=int, default=1024)
    p.add_argument("--class-metric", default="cosine", choices=("cosine", "euclidean", "sqeuclidean"))
    p.add_argument("--scipy-rows", type=int, default=500,
                   help="rows SciPy computes (time extrapolated to --n); 0 = all rows")
    p.add_argument("--rounds", type=int, default=1,
                   help="interleaved repeats of every (task, impl) child; medians are reported")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "distances_cpu.json"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--sample", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.scipy_rows <= 0:
        args.scipy_rows = args.n

    if args.worker:
        task, impl = args.worker.split(":")
        print(json.dumps(run_worker(task, impl, args, args.sample)))
        return

    import jax
    import scipy
    import sklearn

    sys.path.insert(0, ROOT)
    from benchmarks.common import matmul_peak, roofline

    peak = matmul_peak()
    records = []
    t_start = time.perf_counter()
    tasks, impls = args.tasks.split(","), args.impls.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        runs: dict[tuple[str, str], list[dict]] = {}
        for _ in range(args.rounds):
            for task in tasks:
                for impl in impls:
                    rec = _spawn(task, impl, args, tmp)
                    if rec is None:
                        continue
                    print(f"  {task:20s} {impl:8s} {rec['seconds']:9.2f} s  "
                          f"peak +{rec['peak_rss_mb']:8.1f} MB", flush=True)
                    runs.setdefault((task, impl), []).append(rec)
        for task in tasks:
            for impl in impls:
                if (task, impl) not in runs:
                    continue
                rounds = runs[(task, impl)]
                rec = dict(rounds[-1])
                rec["seconds_rounds"] = [r["seconds"] for r in rounds]
                rec["seconds"] = float(np.median(rec["seconds_rounds"]))
                # "seconds" is per N rows (extrapolated where fewer were computed)
                rec["roofline"] = roofline(2.0 * args.n * args.n * args.dim, rec["seconds"],
                                           peak["jax_flops"])
                records.append(rec)
            # Accuracy: max |ours − baseline| over the first SAMPLE_ROWS rows.
            by_impl = {r["impl"]: r for r in records if r["task"] == task}
            if "ours" in by_impl:
                ours = by_impl["ours"]
                for name, rec in by_impl.items():
                    if name == "ours":
                        continue
                    if rec.get("sample") and ours.get("sample"):
                        a, b = np.load(ours["sample"]), np.load(rec["sample"])
                        rec["max_abs_diff_vs_ours"] = float(np.nanmax(np.abs(a.astype(np.float64) - b)))
                    elif rec["result"] and ours["result"]:
                        rec["max_abs_diff_vs_ours"] = max(abs(rec["result"][k] - ours["result"][k])
                                                          for k in ours["result"])
        for r in records:
            r.pop("sample", None)

    ratios = {}
    for task in sorted({r["task"] for r in records}):
        by_impl = {r["impl"]: r for r in records if r["task"] == task}
        if "ours" not in by_impl:
            continue
        ours = by_impl["ours"]
        for name in ("sklearn", "scipy"):
            if name in by_impl:
                ratios[f"{task}/speedup_vs_{name}"] = by_impl[name]["seconds"] / ours["seconds"]
                if by_impl[name]["peak_rss_mb"] > 0 and not by_impl[name]["extrapolated"]:
                    ratios[f"{task}/peak_mem_ours_over_{name}"] = ours["peak_rss_mb"] / by_impl[name]["peak_rss_mb"]

    header = (f"{'task':20s} {'impl':8s} {'seconds':>10s} {'x ours':>8s} {'GFLOP/s':>8s} "
              f"{'of peak':>7s} {'peak RSS MB':>12s} {'py heap MB':>11s}  notes")
    print(f"\nN={args.n} dim={args.dim} classes={args.classes} block={args.block_size} "
          f"cpus={os.cpu_count()} jax={jax.__version__} sklearn={sklearn.__version__} scipy={scipy.__version__}")
    print(header)
    print("-" * len(header))
    for r in records:
        ours_t = next(o["seconds"] for o in records if o["task"] == r["task"] and o["impl"] == "ours") \
            if any(o["task"] == r["task"] and o["impl"] == "ours" for o in records) else float("nan")
        notes = []
        if r["extrapolated"]:
            notes.append(f"extrapolated from {r['rows_computed']} rows")
        if "compile_seconds" in r:
            notes.append(f"+ compile {r['compile_seconds']:.2f} s")
        if "max_abs_diff_vs_ours" in r:
            notes.append(f"max|diff| vs ours {r['max_abs_diff_vs_ours']:.2e}")
        roof = r["roofline"]
        print(f"{r['task']:20s} {r['impl']:8s} {r['seconds']:10.2f} {r['seconds'] / ours_t:8.2f} "
              f"{roof['flops_per_s'] / 1e9:8.1f} {roof['fraction_of_peak']:7.2f} "
              f"{r['peak_rss_mb']:12.1f} {r['py_heap_peak_mb']:11.1f}  {'; '.join(notes)}")
    print(f"fp32 matmul peak ({peak['size']}^3, JAX, this run): {peak['jax_flops'] / 1e9:.1f} GFLOP/s")

    report = {
        "config": {"n": args.n, "dim": args.dim, "classes": args.classes, "block_size": args.block_size,
                   "class_metric": args.class_metric, "scipy_rows": args.scipy_rows, "dtype": "float32",
                   "cpu_count": os.cpu_count(), "platform": platform.platform(),
                   "jax": jax.__version__, "sklearn": sklearn.__version__, "scipy": scipy.__version__,
                   "jax_backend": jax.default_backend(),
                   "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                   "total_wall_seconds": time.perf_counter() - t_start},
        "results": records,
        "ratios": ratios,
        "matmul_peak": peak, "rounds": args.rounds,
        "notes": ("seconds: one execution (ours: of the ahead-of-time compiled program, compile time "
                  "reported separately); peak_rss_mb: growth of the "
                  "child's peak RSS during the task; scipy rows extrapolated linearly."),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
