"""Benchmark: one MLP block's forward + backward with rank-3 vs rank-2 token matmuls.

Why it exists: on XLA:CPU a ``[batch, time, in] @ [in, out]`` matmul is slow in the backward
pass when a non-trivial activation (GELU, SiLU) sits between the two matmuls: the weight
gradient contracts over two axes, XLA assigns a transposed layout to the activation gradient
and runs the fused activation-derivative loop with strided writes.  Folding the tokens into one
axis first (``genalign_jax.ops.token_matmul``) computes the same thing as rank-2 matmuls.
This benchmark times both forms side by side, interleaved, for each activation, at the
MiniLM MLP shape by default, and reports achieved FLOP/s against the fp32 matmul peak
measured in the same run (``common.matmul_peak``).  FLOPs: 3 x (2 matmuls of
2·tokens·in·hidden) — forward, input gradient and weight gradient.

Usage::

    python benchmarks/mlp_layout.py                                  # MiniLM: 16 x 64, 384 -> 1536
    python benchmarks/mlp_layout.py --batch 32 --seq 304 --dim 576 --hidden 1536   # SmolLM2
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import matmul_peak, roofline, write_json  # noqa: E402

from genalign_jax.ops import token_matmul  # noqa: E402

ACTIVATIONS = {"relu": jax.nn.relu, "gelu": lambda h: jax.nn.gelu(h, approximate=False),
               "silu": jax.nn.silu}


def _grad_fn(activation, rank2: bool):
    matmul = token_matmul if rank2 else jnp.matmul

    def loss(x, w_in, w_out, cotangent):
        return jnp.sum(matmul(activation(matmul(x, w_in)), w_out) * cotangent)

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--hidden", type=int, default=1536)
    p.add_argument("--rounds", type=int, default=9, help="interleaved timed rounds per variant")
    p.add_argument("--out", default=None, help="result name under benchmarks/results/")
    args = p.parse_args()
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    x = jax.random.normal(keys[0], (args.batch, args.seq, args.dim))
    w_in = jax.random.normal(keys[1], (args.dim, args.hidden)) / np.sqrt(args.dim)
    w_out = jax.random.normal(keys[2], (args.hidden, args.dim)) / np.sqrt(args.hidden)
    cotangent = jax.random.normal(keys[3], x.shape)
    operands = (x, w_in, w_out, cotangent)
    variants = {(name, form): _grad_fn(act, form == "rank2")
                for name, act in ACTIVATIONS.items() for form in ("rank3", "rank2")}
    for name in ACTIVATIONS:  # same numbers either way
        a = variants[(name, "rank3")](*operands)
        b = variants[(name, "rank2")](*operands)
        for ga, gb in zip(a, b):
            np.testing.assert_allclose(np.asarray(ga), np.asarray(gb), rtol=2e-4, atol=2e-4)
    peak = matmul_peak()["jax_flops"]
    seconds: dict = {key: [] for key in variants}
    for _ in range(args.rounds):
        for key, fn in variants.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*operands))
            seconds[key].append(time.perf_counter() - start)
    flops = 3 * 2 * (2.0 * args.batch * args.seq * args.dim * args.hidden)
    rows = []
    print(f"MLP fwd+bwd, {args.batch} x {args.seq} tokens, {args.dim} -> {args.hidden} -> "
          f"{args.dim}, fp32, {jax.default_backend()}; matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"{'activation':<10} {'rank-3 ms':>10} {'rank-2 ms':>10} {'speed-up':>9} "
          f"{'rank-2 of peak':>15}")
    for name in ACTIVATIONS:
        t3 = float(np.median(seconds[(name, "rank3")]))
        t2 = float(np.median(seconds[(name, "rank2")]))
        rows.append(dict(activation=name, rank3_ms=1e3 * t3, rank2_ms=1e3 * t2,
                         speedup=t3 / t2, rank3_roofline=roofline(flops, t3, peak),
                         rank2_roofline=roofline(flops, t2, peak)))
        print(f"{name:<10} {1e3 * t3:>10.1f} {1e3 * t2:>10.1f} {t3 / t2:>8.2f}x "
              f"{rows[-1]['rank2_roofline']['fraction_of_peak']:>15.2f}")
    if args.out:
        path = write_json(args.out, dict(benchmark="mlp_layout", batch=args.batch, seq=args.seq,
                                         dim=args.dim, hidden=args.hidden, rounds=args.rounds,
                                         flops=flops, matmul_peak_flops=peak, results=rows))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
