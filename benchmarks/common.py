"""Shared helpers for the benchmarks: timing, the matmul roofline, tables and JSON results.

Roofline: every CPU benchmark measures the matmul peak in the same process as the code it
times (``matmul_peak``: one jitted [n, n] x [n, n] product in JAX, and ``torch.mm`` when a
peer runs in PyTorch) and reports ``roofline(flops, seconds, peak)``: achieved FLOP/s and its
fraction of that peak.  FLOPs are counted analytically (2 x multiply-adds of every matmul),
each benchmark says which matmuls it counts.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

# Dense bf16 peak FLOP/s by device kind, for MFU.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
                   "TPU v5p": 459e12, "TPU v5e": 197e12, "TPU v4": 275e12}


def peak_flops(device_kind: str) -> float | None:
    """The bf16 peak of a device kind (``None`` when unknown, e.g. CPU)."""
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k.lower() in device_kind.lower()), None)


def time_fn(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time in seconds of ``fn()`` (which must block until done)."""
    for _ in range(warmup):
        fn()
    return median_time(fn, repeats)


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall seconds over ``repeats`` calls of a blocking ``fn`` (no warm-up)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(statistics.median(times))


def matmul_peak(size: int = 2048, repeats: int = 7, torch: Any = None,
                dtype: str = "float32") -> dict[str, float]:
    """Achieved matmul FLOP/s of one [size]^2 x [size]^2 product (median of ``repeats``) in JAX,
    and in PyTorch when ``torch`` (the module) is given: the roofline's ceiling on this machine."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    a = jnp.asarray(np.random.default_rng(0).normal(size=(size, size)), dtype)
    square = jax.jit(lambda x: x @ x)
    square(a).block_until_ready()
    flops = 2.0 * size ** 3
    out = {"size": size, "dtype": dtype,
           "jax_flops": flops / median_time(lambda: square(a).block_until_ready(), repeats)}
    if torch is not None:
        ta = torch.from_numpy(np.array(a, np.float32)).to(getattr(torch, dtype))
        torch.mm(ta, ta)
        out["torch_flops"] = flops / median_time(lambda: torch.mm(ta, ta), repeats)
    return out


def roofline(flops: float, seconds: float, peak_flops_per_s: float) -> dict[str, float]:
    """Achieved FLOP/s of ``flops`` done in ``seconds`` and its fraction of the measured peak."""
    achieved = flops / seconds
    return {"flops": float(flops), "flops_per_s": achieved,
            "fraction_of_peak": achieved / peak_flops_per_s}


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Prints ``rows`` as an aligned text table."""
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """Writes ``payload`` (plus machine info) to ``benchmarks/results/<name>.json``."""
    import jax
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "jax": jax.__version__, "backend": jax.default_backend(),
                    "devices": [str(d) for d in jax.devices()]},
        **payload,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path
