"""Benchmark: XLA:CPU's two dot libraries, YNNPACK (jaxlib 0.10's default) and Eigen, per shape.

Why it exists: the sampler's prefill, the rollout and the PPO update compile with Eigen dots on
CPU (``genalign_jax.cpu_dots``) and the sampler's decode stays on YNNPACK.  This benchmark
is the evidence: every matrix product shape the ``:embedded`` loop runs (SmolLM2-135M decode at
32 rows, prefill at 32 x 208, rollout/PPO at 32 x 256 incl. the backward's ``dy @ W^T``; MiniLM
at 16 x 64), compiled twice in one process (``compiler_options``), timed interleaved (A B A B),
medians.  FLOPs = 2 x rows x in x out; the roofline is each library's fp32 [2048]^2 product in
the same run, and the best of the two is the peak quoted.

Usage::

    python benchmarks/cpu_dot_library.py    # writes benchmarks/results/cpu_dot_library_cpu.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import print_table, write_json  # noqa: E402

from genalign_jax.cpu_dots import EIGEN_CPU_DOTS  # noqa: E402

LIBRARIES = {"ynnpack": {}, "eigen": EIGEN_CPU_DOTS}

# (stage, rows, in, out, form): form "nn" is x @ W, "nt" is dy @ W^T (the backward's input grad).
SHAPES = [
    ("decode q/o", 32, 576, 576, "nn"), ("decode gate/up", 32, 576, 1536, "nn"),
    ("decode down", 32, 1536, 576, "nn"), ("decode LM head", 32, 576, 49152, "nn"),
    ("classifier qkvo", 1024, 384, 384, "nn"), ("classifier up", 1024, 384, 1536, "nn"),
    ("classifier down", 1024, 1536, 384, "nn"),
    ("prefill gate/up", 6656, 576, 1536, "nn"), ("prefill down", 6656, 1536, 576, "nn"),
    ("ppo q/o", 8192, 576, 576, "nn"), ("ppo k/v", 8192, 576, 192, "nn"),
    ("ppo gate/up", 8192, 576, 1536, "nn"), ("ppo down", 8192, 1536, 576, "nn"),
    ("ppo bwd gate/up", 8192, 1536, 576, "nt"), ("ppo bwd down", 8192, 576, 1536, "nt"),
]


def _product(form: str):
    if form == "nn":
        return lambda x, w: x @ w
    return lambda x, w: jnp.einsum("mk,nk->mn", x, w)


def _operands(rows: int, d_in: int, d_out: int, form: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(rows, d_in)), jnp.float32)
    w_shape = (d_in, d_out) if form == "nn" else (d_out, d_in)
    return x, jnp.asarray(rng.normal(size=w_shape), jnp.float32)


def interleaved(fn, args, repeats: int) -> dict[str, float]:
    """Median seconds per library, the two compiled programs called alternately."""
    compiled = {name: jax.jit(fn).lower(*args).compile(compiler_options=opts)
                for name, opts in LIBRARIES.items()}
    for c in compiled.values():
        c(*args).block_until_ready()
    times = {name: [] for name in compiled}
    for _ in range(repeats):
        for name, c in compiled.items():
            start = time.perf_counter()
            c(*args).block_until_ready()
            times[name].append(time.perf_counter() - start)
    return {name: float(statistics.median(t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9, help="rounds for products >= 1 GFLOP")
    parser.add_argument("--small_repeats", type=int, default=200, help="rounds for smaller ones")
    parser.add_argument("--out", default="cpu_dot_library_cpu")
    args = parser.parse_args()

    size = 2048
    square = _operands(size, size, size, "nn")
    peak_s = interleaved(_product("nn"), square, args.repeats)
    peaks = {name: 2.0 * size ** 3 / s for name, s in peak_s.items()}
    peak = max(peaks.values())

    rows = []
    for stage, m, d_in, d_out, form in SHAPES:
        flops = 2.0 * m * d_in * d_out
        repeats = args.repeats if flops >= 1e9 else args.small_repeats
        secs = interleaved(_product(form), _operands(m, d_in, d_out, form), repeats)
        rows.append({"stage": stage, "shape": f"{m}x{d_in}x{d_out} {form}",
                     "ynnpack_ms": secs["ynnpack"] * 1e3, "eigen_ms": secs["eigen"] * 1e3,
                     "eigen_speedup": secs["ynnpack"] / secs["eigen"],
                     "ynnpack_peak_fraction": flops / secs["ynnpack"] / peak,
                     "eigen_peak_fraction": flops / secs["eigen"] / peak})
    print_table(rows, ["stage", "shape", "ynnpack_ms", "eigen_ms", "eigen_speedup",
                       "ynnpack_peak_fraction", "eigen_peak_fraction"])
    print(f"fp32 [{size}]^2 peak: ynnpack {peaks['ynnpack'] / 1e9:.0f}, "
          f"eigen {peaks['eigen'] / 1e9:.0f} GFLOP/s (fractions are of the larger)")
    path = write_json(args.out, {
        "benchmark": "cpu_dot_library", "method": "each shape compiled with both libraries in "
        "one process, called alternately, median seconds; FLOPs = 2*rows*in*out",
        "peak_flops_per_s": peaks, "repeats": args.repeats, "small_repeats": args.small_repeats,
        "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
