"""PPO step throughput: one ``ppo_update`` (epochs x minibatches in one jit) and its rollout pass.

Measures, on random tokens of a fixed shape (``--batch`` rows of ``--seq_len``
tokens, the last ``--completion_len`` of them the completion):

* ``make_rollout``: policy + reference forward, values, rewards, GAE;
* ``ppo_update``: ``ppo_epochs`` x ``num_minibatches`` clipped-PPO steps, with
  tokens/s = epochs x batch x seq_len / time;
* a baseline in the same run: a bare jitted LoRA forward+backward+AdamW step on
  one minibatch (cross-entropy of the completion), times the number of
  minibatch steps.  ``overhead`` = update time / baseline time shows what the
  PPO machinery (value head, entropy, clipping, scan, metrics) costs on top of
  the model's own gradient.
* a roofline: analytic FLOPs (LoRA: ``benchmarks/flops.py``, ``model`` = forward + backward,
  ``hardware`` = + the recompute with ``--remat full``; the LM head only at the completion
  window; full fine-tuning: per token 2N forward + 4N backward + attention) over the measured
  time, against the matmul peak measured in the same process (fp32 [2048]^2 on CPU) or the
  device's datasheet bf16 peak on accelerators.

CPU (default): the ``tiny`` preset; writes ``benchmarks/results/ppo_step_cpu.json``.  The
``:embedded`` loop's shape (SmolLM2-135M, 64 rows of 256 prompt + 48 completion tokens, 2
minibatches, LoRA rank 8)::

    python benchmarks/ppo_step.py --preset smollm2_135m --random_weights --batch 64 \
        --seq_len 304 --completion_len 48 --num_minibatches 2 --lora_rank 8 --remat full,dots
GPU (8B shape, random bf16 weights, no download)::

    python benchmarks/ppo_step.py --preset llama3p1_8b --random_weights --dtype bfloat16 \\
        --lora_rank 32 --batch 64 --seq_len 384 --completion_len 128 --num_minibatches 8
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.common import (matmul_peak, peak_flops, print_table, roofline,  # noqa: E402
                               write_json)
from benchmarks.flops import lora_update_flops, rollout_flops  # noqa: E402
from genalign_jax import ppo  # noqa: E402
from genalign_jax.generator import Llama, LlamaConfig, get_preset, load_llama  # noqa: E402
from genalign_jax.generator.llama_config import REMAT_POLICIES  # noqa: E402

log = logging.getLogger("ppo_step")


class FakeSample(NamedTuple):
    """The ``SampleOutput`` fields ``make_rollout`` reads."""

    tokens: jax.Array
    mask: jax.Array
    prompt_length: int
    completion_mask: jax.Array
    logprobs: jax.Array


def build_model(args, remat: str = "full") -> Llama:
    """A random-weight Llama of the preset (jit-initialised) or a loaded checkpoint."""
    overrides = dict(dtype=args.dtype, param_dtype=args.dtype, remat=remat)
    if args.checkpoint:
        return load_llama(args.checkpoint, **overrides)
    if not args.random_weights and args.preset not in ("tiny", "tiny_llama3"):
        raise SystemExit(f"--preset {args.preset} needs --random_weights or --checkpoint")
    config = get_preset(args.preset, **overrides)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0))))
    state = jax.jit(lambda: nnx.split(Llama(config, rngs=nnx.Rngs(args.seed)))[1])()
    return nnx.merge(graphdef, state)


def make_sample(config: LlamaConfig, args) -> tuple[FakeSample, jax.Array]:
    """Random full-length prompts + completions (some rows stop early) and random scores."""
    rng = np.random.default_rng(args.seed)
    b, t, n = args.batch, args.seq_len, args.completion_len
    tokens = rng.integers(3, config.vocab_size, size=(b, t)).astype(np.int32)
    lengths = rng.integers(n // 2, n + 1, size=b)
    completion_mask = (np.arange(n)[None] < lengths[:, None]).astype(np.int32)
    mask = np.concatenate([np.ones((b, t - n), np.int32), completion_mask], axis=1)
    sample = FakeSample(jnp.asarray(tokens), jnp.asarray(mask), t - n, jnp.asarray(completion_mask),
                        jnp.zeros((b, n), jnp.float32))
    return sample, jnp.asarray(rng.normal(size=b).astype(np.float32))


def model_flops_per_token(config: LlamaConfig, seq_len: int, trainable: str) -> tuple[float, float]:
    """(training FLOPs per token per epoch, forward FLOPs per token) — analytic estimate."""
    n = config.num_params - config.vocab_size * config.hidden_size  # embedding lookup is free
    if config.tie_word_embeddings:
        n += config.vocab_size * config.hidden_size  # but the tied head is a matmul
    attn = 4 * seq_len * config.num_heads * config.head_dim * config.num_layers
    forward = 2 * n + attn
    backward = (2 * n if trainable == "lora" else 4 * n) + 2 * attn
    return forward + backward, forward


def baseline_step(state: ppo.PPOState, sample: FakeSample, mb: int, config: ppo.PPOConfig):
    """A bare LoRA/full cross-entropy grad + optimizer step on one minibatch (jitted)."""
    program, tx = state.program, state.program.tx
    p, n = sample.prompt_length, sample.completion_mask.shape[1]
    tokens, mask, cmask = sample.tokens[:mb], sample.mask[:mb], sample.completion_mask[:mb]

    def loss_fn(trainable, frozen):
        model = nnx.merge(program.policy_graphdef, frozen["policy"], trainable["policy"])
        logits, _ = program.policy_apply(model, tokens, mask, True)
        logprobs, _ = ppo.completion_logprobs(logits, tokens, p, n, with_entropy=False)
        return -ppo.masked_mean(logprobs, cmask)

    @jax.jit
    def step(trainable, opt_state, frozen):
        grads = jax.grad(loss_fn)(trainable, frozen)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state

    trainable = jax.device_put(state.trainable, may_alias=False)
    opt_state = tx.init(trainable)
    return lambda: jax.block_until_ready(step(trainable, opt_state, state.frozen))


def _prepare(state, sample, scores, config, args) -> dict:
    """Compiles the rollout, the update and (unless ``--no_baseline``) the bare-gradient step;
    returns their compile times and blocking zero-argument callables."""
    keys = iter(jax.random.split(jax.random.key(args.seed), 10_000))
    start = time.perf_counter()
    batch = jax.block_until_ready(ppo.make_rollout(state, sample, scores, config))
    rollout_compile = time.perf_counter() - start
    holder = {"state": state}

    def update():
        holder["state"], metrics = ppo.ppo_update(holder["state"], batch, config, next(keys))
        jax.block_until_ready(metrics)

    start = time.perf_counter()
    update()
    calls = {"rollout": lambda: jax.block_until_ready(
                 ppo.make_rollout(holder["state"], sample, scores, config)),
             "update": update}
    out = {"rollout_compile_s": rollout_compile, "update_compile_s": time.perf_counter() - start,
           "calls": calls}
    if not args.no_baseline:
        calls["baseline"] = baseline_step(holder["state"], sample,
                                          args.batch // args.num_minibatches, config)
        calls["baseline"]()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="Llama preset (tiny, llama3p1_8b, ...)")
    parser.add_argument("--random_weights", action="store_true",
                        help="random weights in the preset's shape (required for big presets)")
    parser.add_argument("--checkpoint", default=None, help="HF checkpoint folder to load instead")
    parser.add_argument("--dtype", default="float32", help="compute/param dtype (bfloat16 on GPU)")
    parser.add_argument("--trainable", default="lora", choices=("lora", "full"))
    parser.add_argument("--lora_rank", type=int, default=16)
    parser.add_argument("--lora_alpha", type=float, default=None, help="default: 2 x rank")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq_len", type=int, default=384)
    parser.add_argument("--completion_len", type=int, default=128)
    parser.add_argument("--ppo_epochs", type=int, default=1)
    parser.add_argument("--num_minibatches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="device peak for MFU (default: looked up from the device kind)")
    parser.add_argument("--no_baseline", action="store_true",
                        help="skip the bare-gradient baseline")
    parser.add_argument("--remat", default="full",
                        help="comma-separated LlamaConfig.remat policies (full, dots, none), "
                             "timed interleaved")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="result name (default ppo_step_<backend>)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not 0 < args.completion_len < args.seq_len:
        raise SystemExit("--completion_len must be in (0, --seq_len)")

    remats = [x for x in args.remat.split(",") if x]
    if not remats or set(remats) - set(REMAT_POLICIES):
        parser.error(f"--remat {args.remat!r}: expected comma-separated {', '.join(REMAT_POLICIES)}")
    b, t, n = args.batch, args.seq_len, args.completion_len
    steps = args.ppo_epochs * args.num_minibatches
    variants = {}
    for remat in remats:
        model = build_model(args, remat)
        mcfg = model.config
        config = ppo.PPOConfig(ppo_epochs=args.ppo_epochs, num_minibatches=args.num_minibatches,
                               trainable=args.trainable, lora_rank=args.lora_rank,
                               lora_alpha=args.lora_alpha or 2.0 * args.lora_rank,
                               learning_rate=1e-5)
        state = ppo.init_ppo_state(model, config, rngs=nnx.Rngs(args.seed))
        sample, scores = make_sample(mcfg, args)
        variants[remat] = _prepare(state, sample, scores, config, args)
    # Interleaved repeats (one call of each variant per round): load changes hit all alike.
    times: dict[tuple[bool, str], list[float]] = {}
    for _ in range(args.repeats):
        for remat, v in variants.items():
            for name, fn in v["calls"].items():
                start = time.perf_counter()
                fn()
                times.setdefault((remat, name), []).append(time.perf_counter() - start)
    med = {key: float(np.median(ts)) for key, ts in times.items()}

    device = jax.devices()[0]
    backend = jax.default_backend()
    peak = matmul_peak() if backend == "cpu" else None
    peak_per_s = (peak["jax_flops"] if peak else
                  args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(device.device_kind))
    if args.trainable == "lora":
        counted = lora_update_flops(mcfg, b // args.num_minibatches, t, n, args.lora_rank,
                                    config.lora_targets, steps)
        update_flops = {"model": counted["model"], "hardware": counted["hardware"]}
        r_flops = rollout_flops(mcfg, b, t, n, args.lora_rank, config.lora_targets)
    else:
        train_tok, fwd_tok = model_flops_per_token(mcfg, t, args.trainable)
        update_flops = {"model": train_tok * b * t * args.ppo_epochs}
        update_flops["hardware"] = update_flops["model"]
        r_flops = 2 * fwd_tok * b * t
    rows = []
    for remat, v in variants.items():
        update_s = med[(remat, "update")]
        rollout_s = med[(remat, "rollout")]
        row = {"impl": f"ppo_update remat={remat}",
               "compile_s": v["update_compile_s"], "seconds": update_s,
               "tokens_per_s": args.ppo_epochs * b * t / update_s,
               "tflops_per_s": update_flops["model"] / update_s / 1e12,
               "rollout_compile_s": v["rollout_compile_s"], "rollout_seconds": rollout_s,
               "rollout_tokens_per_s": b * t / rollout_s, "times": {
                   name: times[(remat, name)] for name in v["calls"]}}
        if peak_per_s:
            # "dots" recomputes only attention and elementwise ops: counted as model FLOPs
            hw = update_flops["hardware"] if remat == "full" else update_flops["model"]
            row["roofline_model"] = roofline(update_flops["model"], update_s, peak_per_s)
            row["roofline_hardware"] = roofline(hw, update_s, peak_per_s)
            row["peak_fraction"] = row["roofline_model"]["fraction_of_peak"]
            row["rollout_roofline"] = roofline(r_flops, rollout_s, peak_per_s)
            row["rollout_peak_fraction"] = row["rollout_roofline"]["fraction_of_peak"]
        if "baseline" in v["calls"]:
            baseline_s = med[(remat, "baseline")] * steps
            row["bare_grad_seconds"] = baseline_s
            row["overhead_vs_bare_grad"] = update_s / baseline_s
        rows.append(row)
    for row in rows[1:]:
        row["speedup_vs_first"] = rows[0]["seconds"] / row["seconds"]
    print_table(rows, ["impl", "compile_s", "seconds", "tokens_per_s", "tflops_per_s",
                       "peak_fraction", "rollout_seconds", "rollout_peak_fraction",
                       "overhead_vs_bare_grad", "speedup_vs_first"])
    if peak:
        print(f"fp32 matmul peak ({peak['size']}^3): {peak['jax_flops'] / 1e9:.1f} GFLOP/s; "
              f"update model FLOPs {update_flops['model'] / 1e9:.1f} G, rollout "
              f"{r_flops / 1e9:.1f} G")
    payload = {
        "preset": args.preset, "random_weights": args.random_weights,
        "checkpoint": args.checkpoint, "dtype": args.dtype, "device_kind": device.device_kind,
        "num_params": mcfg.num_params, "trainable": args.trainable,
        "lora_rank": args.lora_rank,
        "batch": b, "seq_len": t, "completion_len": n,
        "ppo_epochs": args.ppo_epochs, "num_minibatches": args.num_minibatches,
        "minibatch_steps": steps, "update_flops": update_flops, "rollout_flops": r_flops,
        "matmul_peak": peak, "peak_flops_per_s": peak_per_s, "repeats": args.repeats,
        "results": rows,
    }
    path = write_json(args.out or f"ppo_step_{jax.default_backend()}", payload)
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
