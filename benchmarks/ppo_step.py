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
* on accelerators, model FLOPs utilisation (MFU) from an analytic FLOP count:
  per token 2N forward, + 2N backward (activation gradients only for LoRA; 4N
  with weight gradients for full fine-tuning), plus attention 4·T·D_attn·L per
  forward (x3 with backward); N excludes the embedding table.

CPU (default): the ``tiny`` preset; writes ``benchmarks/results/ppo_step_cpu.json``.
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

from benchmarks.common import peak_flops, print_table, time_fn, write_json  # noqa: E402
from genalign_jax import ppo  # noqa: E402
from genalign_jax.generator import Llama, LlamaConfig, get_preset, load_llama  # noqa: E402

log = logging.getLogger("ppo_step")


class FakeSample(NamedTuple):
    """The ``SampleOutput`` fields ``make_rollout`` reads."""

    tokens: jax.Array
    mask: jax.Array
    prompt_length: int
    completion_mask: jax.Array
    logprobs: jax.Array


def build_model(args) -> Llama:
    """A random-weight Llama of the preset (jit-initialised) or a loaded checkpoint."""
    overrides = dict(dtype=args.dtype, param_dtype=args.dtype)
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="result name (default ppo_step_<backend>)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not 0 < args.completion_len < args.seq_len:
        raise SystemExit("--completion_len must be in (0, --seq_len)")

    model = build_model(args)
    mcfg = model.config
    config = ppo.PPOConfig(ppo_epochs=args.ppo_epochs, num_minibatches=args.num_minibatches,
                           trainable=args.trainable, lora_rank=args.lora_rank,
                           lora_alpha=args.lora_alpha or 2.0 * args.lora_rank,
                           learning_rate=1e-5)
    state = ppo.init_ppo_state(model, config, rngs=nnx.Rngs(args.seed))
    sample, scores = make_sample(mcfg, args)
    keys = iter(jax.random.split(jax.random.key(args.seed), 1000))

    start = time.perf_counter()
    batch = jax.block_until_ready(ppo.make_rollout(state, sample, scores, config))
    rollout_compile = time.perf_counter() - start
    rollout_s = time_fn(lambda: jax.block_until_ready(
        ppo.make_rollout(state, sample, scores, config)), repeats=args.repeats, warmup=0)

    holder = {"state": state}

    def update():
        holder["state"], metrics = ppo.ppo_update(holder["state"], batch, config, next(keys))
        jax.block_until_ready(metrics)

    start = time.perf_counter()
    update()
    update_compile = time.perf_counter() - start
    update_s = time_fn(update, repeats=args.repeats, warmup=0)

    b, t = args.batch, args.seq_len
    steps = args.ppo_epochs * args.num_minibatches
    train_flops_tok, fwd_flops_tok = model_flops_per_token(mcfg, t, args.trainable)
    update_flops = train_flops_tok * b * t * args.ppo_epochs
    rollout_flops = 2 * fwd_flops_tok * b * t  # policy + reference forwards
    result = {"impl": "ppo_update", "compile_s": update_compile, "seconds": update_s,
              "tokens_per_s": args.ppo_epochs * b * t / update_s,
              "tflops_per_s": update_flops / update_s / 1e12,
              "rollout_compile_s": rollout_compile, "rollout_seconds": rollout_s,
              "rollout_tokens_per_s": b * t / rollout_s}
    rows = [result]
    if not args.no_baseline:
        step = baseline_step(holder["state"], sample, b // args.num_minibatches, config)
        start = time.perf_counter()
        step()
        baseline_compile = time.perf_counter() - start
        baseline_s = time_fn(step, repeats=args.repeats, warmup=0) * steps
        rows.append({"impl": "bare_grad_steps", "compile_s": baseline_compile,
                     "seconds": baseline_s, "tokens_per_s": args.ppo_epochs * b * t / baseline_s})
        result["overhead_vs_bare_grad"] = update_s / baseline_s

    device = jax.devices()[0]
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(device.device_kind)
    if peak and jax.default_backend() != "cpu":
        result["mfu"] = update_flops / update_s / peak
        result["rollout_mfu"] = rollout_flops / rollout_s / peak
    print_table(rows, ["impl", "compile_s", "seconds", "tokens_per_s", "tflops_per_s", "mfu",
                       "rollout_seconds", "overhead_vs_bare_grad"])
    payload = {
        "preset": args.preset, "random_weights": args.random_weights,
        "checkpoint": args.checkpoint, "dtype": args.dtype, "device_kind": device.device_kind,
        "num_params": mcfg.num_params, "trainable": args.trainable,
        "trainable_params": ppo.count_params(holder["state"].trainable),
        "lora_rank": args.lora_rank,
        "batch": b, "seq_len": t, "completion_len": args.completion_len,
        "ppo_epochs": args.ppo_epochs, "num_minibatches": args.num_minibatches,
        "minibatch_steps": steps, "flops_per_update": update_flops, "peak_flops": peak,
        "results": rows,
    }
    path = write_json(args.out or f"ppo_step_{jax.default_backend()}", payload)
    log.info("wrote %s", path)


if __name__ == "__main__":
    main()
