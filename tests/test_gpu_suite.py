"""The GPU suite's CPU dry run: 8B programs from abstract shapes, and the loop's 80 GB budget.

Compiling the 8B programs on 2 CPU cores takes minutes, so this test *lowers* the loop's three
8B programs (sampler, rollout, PPO update) without compiling them and checks the memory by shape
arithmetic: the exact bytes of every argument of the lowered programs (``Lowered.args_info``,
what ``compiled.memory_analysis()`` reports as argument bytes on any backend) against the budget's
items.  ``python benchmarks/gpu_suite.py --dry_run`` also compiles them and prints
``memory_analysis()``.  The FLOP count behind the MFU is checked against XLA's cost analysis of
the lowered update and rollout programs at one layer (XLA counts a scanned loop's body once).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from benchmarks import flops as flops_lib
from benchmarks import gpu_suite as gs

GB = 1e9


def test_shapes_are_the_loops_defaults():
    from genalign_jax.config import RunConfig
    c, s = RunConfig(), gs.Shapes()
    assert c.generator.preset == s.preset and c.generator.param_dtype == s.dtype
    assert c.generator.sampling.batch_size == s.batch
    assert c.generator.max_prompt_tokens == s.prompt_len
    assert c.generator.sampling.max_new_tokens == s.new_tokens
    assert (c.generator.lora_rank, c.generator.lora_alpha) == (s.lora_rank, s.lora_alpha)
    assert c.loop.rollouts_per_epoch == s.loop_rows
    assert (c.ppo.ppo_epochs, c.ppo.num_minibatches) == (s.loop_epochs, s.loop_minibatches)
    assert c.classifier.preset == s.classifier_preset
    assert (c.classifier.batch_size, c.classifier.max_length) == (s.classifier_batch,
                                                                  s.classifier_seq)
    # The timed update keeps the loop's minibatch shape.
    assert s.bench_rows // s.bench_minibatches == s.loop_rows // s.loop_minibatches


def test_dry_run_8b_loop_fits_in_80gb(tmp_path):
    s = gs.Shapes()
    report = gs.dry_run(s, programs=gs.LOOP_PROGRAMS, compile_programs=False,
                        out=tmp_path / "dry.json")
    budget = report["loop_budget"]
    items = budget["items"]
    total = budget["total_bytes"]
    print(f"\n8B loop resident device memory: {total / GB:.2f} GB of 80 GB "
          + ", ".join(f"{k} {v / GB:.3f}" for k, v in items.items()))
    assert budget["fits"] and total < 80e9
    # The items are what the 8B loop holds: bf16 weights, fp32 LoRA/Adam, a bf16 KV cache.
    config = gs.llama_config(s)
    assert budget["policy_dtypes"] == ["bfloat16"]
    assert items["policy_weights"] == 2 * config.num_params
    assert items["reference_policy"] == 0
    assert items["adam_state"] >= 2 * (items["lora_adapters"] + items["value_head"])
    kv = 2 * config.num_layers * s.batch * s.seq_len * config.num_kv_heads * config.head_dim * 2
    assert items["kv_cache"] == kv
    assert 21 * GB < total < 23 * GB

    # Cross-check the arithmetic against the lowered 8B programs' exact argument bytes.
    rows = {r["program"]: r for r in report["programs"]}
    weights_and_lora = items["policy_weights"] + items["lora_adapters"]
    for name in gs.LOOP_PROGRAMS:
        row = rows[name]
        assert row["argument_bytes_lowered"] == row["argument_bytes_shapes"], name
        assert weights_and_lora < row["argument_bytes_lowered"] < weights_and_lora + 0.6 * GB, name
        assert row["largest_arguments"][0].startswith("bfloat16[32, "), name  # stacked MLP
    # The update donates exactly the trainable parameters and their optimizer state.
    assert rows["ppo_update_loop"]["donated_bytes"] == (
        items["lora_adapters"] + items["value_head"] + items["adam_state"])
    assert rows["generate"]["donated_bytes"] == 0


@pytest.mark.parametrize("program", ["update", "rollout"])
def test_flop_count_matches_xla_cost_analysis(program):
    from genalign_jax import ppo
    from genalign_jax.generator import Llama, LlamaConfig
    from genalign_jax.ppo import rollout as rollout_mod
    from genalign_jax.ppo import update as update_mod
    config = LlamaConfig(vocab_size=2048, hidden_size=512, intermediate_size=1024, num_layers=1,
                         num_heads=8, num_kv_heads=2, max_position_embeddings=1024)
    s = dataclasses.replace(gs.SMOKE, batch=4, prompt_len=96, new_tokens=32, lora_rank=8,
                            loop_rows=4, loop_minibatches=1, bench_rows=4, bench_minibatches=1)
    model = nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))
    cfg = ppo.PPOConfig(lora_rank=8, lora_alpha=16.0, ppo_epochs=1, num_minibatches=1)
    state = ppo.init_ppo_state(model, cfg, rngs=nnx.Rngs(0))
    S, i32, f32 = jax.ShapeDtypeStruct, jnp.int32, jnp.float32
    b, t, n = s.batch, s.seq_len, s.new_tokens
    frozen, trainable = gs.abstract(state.frozen), gs.abstract(state.trainable)
    if program == "update":
        lowered = update_mod._update_program.lower(
            state.program, cfg, frozen, trainable, gs.abstract(state.opt_state),
            gs.abstract(state.kl), S((), i32), gs._rollout_batch(b, s), jax.random.key(0))
        ours = flops_lib.lora_update_flops(config, b, t, n, 8, cfg.lora_targets)["hardware"]
    else:
        lowered = rollout_mod._rollout_program.lower(
            state.program, cfg, s.prompt_len, frozen, trainable, None, S((), f32),
            S((b, t), i32), S((b, t), i32), S((b, n), i32), S((b, n), f32), None, S((b,), f32))
        ours = flops_lib.rollout_flops(config, b, t, n, 8, cfg.lora_targets)
    xla = lowered.cost_analysis()["flops"]
    print(f"\n{program}: analytic {ours:.4e} FLOPs, XLA cost analysis {xla:.4e} "
          f"(ratio {xla / ours:.4f})")
    # XLA also counts elementwise work (norms, softmax, optimizer): slightly above the matmuls.
    assert 0.99 < xla / ours < 1.03


def test_model_flops_at_8b_are_about_4n_per_token():
    config = gs.llama_config(gs.Shapes())
    rows, t, n = 64, 576, 64
    flops = flops_lib.lora_update_flops(config, rows, t, n, 16, ("q_proj", "k_proj", "v_proj", "o_proj",
                                                         "gate_proj", "up_proj", "down_proj"))
    per_token = flops["model"] / (rows * t)
    dense = config.num_params - 2 * config.vocab_size * config.hidden_size
    # 4N for the trunk (forward + activation gradients), plus attention, LoRA and the windowed head.
    assert 4 * dense < per_token < 4.6 * dense
    assert flops["hardware"] > flops["model"]


def test_forwarded_args_drop_sections():
    assert gs._forwarded_args(["--smoke", "--sections", "llama8b", "--budget_s=10"]) == \
        ["--smoke", "--budget_s=10"]
    assert gs._forwarded_args(["--sections=loop", "--cpu"]) == ["--cpu"]
