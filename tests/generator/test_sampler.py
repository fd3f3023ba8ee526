"""Sampler: HF greedy parity, log-prob alignment, sampling controls, stops, compiles, mesh, LoRA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genalign_jax import ppo
from genalign_jax.compile_counter import CompileCounter
from genalign_jax.generator import (Llama, SamplingConfig, filter_logits, generate, get_preset,
                                    load_llama, pad_prompts, sample_tokens)
from genalign_jax.generator import sampler as sampler_mod
from tests.hf_fixtures import make_tiny_hf_llama, padded_batch

REPO = Path(__file__).resolve().parents[2]
LENGTHS = [5, 9, 3, 7]


@pytest.fixture(scope="module")
def model():
    return Llama(get_preset("tiny"), rngs=nnx.Rngs(0))


def bucketed_batch(lengths, total, vocab, seed):
    """``padded_batch`` left-padded to its power-of-two bucket, as encode_prompts shapes prompts."""
    tokens, mask, _ = pad_prompts(*padded_batch(lengths, total, vocab, left=True, seed=seed))
    return tokens, mask


@pytest.fixture(scope="module")
def prompts():
    return bucketed_batch(LENGTHS, 9, 256, seed=3)


@pytest.fixture(scope="module")
def greedy_ref(model, prompts):
    return generate(model, *prompts, SamplingConfig(max_new_tokens=8, greedy=True))


@nnx.jit(static_argnames="use_lora")
def _forward(model, tokens, mask, use_lora=True):
    return model(tokens, mask, use_lora=use_lora, return_hidden=True)


def _full_forward(model, out, use_lora=True):
    """Logits, log-probs and hidden states of a fresh uncached forward, at completion positions."""
    logits, hidden = _forward(model, out.tokens, out.mask, use_lora=use_lora)
    p = out.prompt_length
    logits, hidden = logits[:, p - 1:-1], hidden[:, p - 1:-1]
    logp = jax.nn.log_softmax(logits, axis=-1)
    lp = jnp.take_along_axis(logp, out.completion_tokens[..., None], axis=-1)[..., 0]
    return np.asarray(logits), np.asarray(lp), np.asarray(hidden)


# ----------------------------------------------------------------- HF parity


def test_greedy_matches_hf_generate(tmp_path):
    torch = pytest.importorskip("torch")
    hf_model = make_tiny_hf_llama(tmp_path, "plain", seed=1)
    ours = load_llama(tmp_path)
    tokens, mask = bucketed_batch([7, 3, 11, 5], 11, 128, seed=5)
    n_new = 10

    def hf_generate(eos):
        hf_model.generation_config.eos_token_id = eos
        with torch.no_grad():
            out = hf_model.generate(input_ids=torch.tensor(tokens, dtype=torch.long),
                                    attention_mask=torch.tensor(mask, dtype=torch.long),
                                    max_new_tokens=n_new, do_sample=False, pad_token_id=0,
                                    eos_token_id=eos)
        return out[:, tokens.shape[1]:].numpy()

    free = hf_generate(None)
    stop = int(free[0, 1])  # a token row 0 emits early, so stopping is compared too
    for eos, hf_new in ((None, free), (stop, hf_generate(stop))):
        config = SamplingConfig(max_new_tokens=n_new, greedy=True, pad_token_id=0,
                                stop_token_ids=() if eos is None else (eos,))
        out = generate(ours, tokens, mask, config)
        ours_new = np.asarray(out.completion_tokens)
        np.testing.assert_array_equal(ours_new[:, :hf_new.shape[1]], hf_new)
        assert (ours_new[:, hf_new.shape[1]:] == 0).all()  # HF stops once every row is done
        assert out.prompt_length == 16 and out.tokens.shape == (4, 16 + n_new)
    assert bool(out.stopped[0]) and int(out.lengths[0]) <= 2


# ----------------------------------------------------------------- log-probs and hidden


def test_logprobs_and_hidden_match_full_forward(model, prompts):
    config = SamplingConfig(max_new_tokens=8, temperature=0.7, top_k=50, top_p=0.9,
                            stop_token_ids=(7, 9, 11), return_hidden=True)
    out = generate(model, *prompts, config, jax.random.key(4))
    logits, lp, hidden = _full_forward(model, out)
    m = np.asarray(out.completion_mask).astype(bool)
    got = np.asarray(out.logprobs)
    assert np.abs(got[m] - lp[m]).max() <= 1e-4
    assert (got[~m] == 0).all() and (np.asarray(out.sampling_logprobs)[~m] == 0).all()
    assert np.abs(np.asarray(out.hidden)[m] - hidden[m]).max() <= 1e-4
    # The sampling distribution's log-probs: temperature, top-k and nucleus applied.
    filtered = filter_logits(jnp.asarray(logits), config)
    slp = np.asarray(jnp.take_along_axis(jax.nn.log_softmax(filtered, -1),
                                         out.completion_tokens[..., None], -1)[..., 0])
    assert np.abs(np.asarray(out.sampling_logprobs)[m] - slp[m]).max() <= 1e-3
    # PPO's recomputation from a full forward's logits gives the same numbers.
    full_logits, _ = _forward(model, out.tokens, out.mask)
    helper, _ = ppo.completion_logprobs(full_logits, out.tokens, out.prompt_length,
                                        out.completion_tokens.shape[1], with_entropy=False)
    helper = np.where(m, np.asarray(helper), 0.0)
    assert np.abs(helper - got).max() <= 1e-4
    # Full mask = prompt mask then completion mask; positions line up with default_positions.
    np.testing.assert_array_equal(np.asarray(out.mask[:, out.prompt_length:]), m)
    assert np.asarray(out.mask[:, :out.prompt_length]).sum(1).tolist() == LENGTHS


# ----------------------------------------------------------------- sampling controls


def test_top_k_one_and_temperature_limit_equal_greedy(model, prompts, greedy_ref):
    logits = jnp.asarray(np.random.default_rng(0).normal(0, 3, (512, 256)), jnp.float32)
    argmax = np.asarray(jnp.argmax(logits, -1))
    for config in (SamplingConfig(top_k=1), SamplingConfig(temperature=1e-6),
                   SamplingConfig(top_k=1, top_p=0.5, temperature=3.0)):
        tokens, _, slp = sample_tokens(logits, jax.random.key(1), config)
        np.testing.assert_array_equal(np.asarray(tokens), argmax, err_msg=str(config))
        if config.top_k == 1:
            np.testing.assert_allclose(np.asarray(slp), 0.0, atol=1e-6)
    # End to end on the model: temperature -> 0 gives the greedy tokens (and T == 0 is greedy).
    expected = np.asarray(greedy_ref.completion_tokens)
    for temperature in (1e-6, 0.0):
        out = generate(model, *prompts, SamplingConfig(max_new_tokens=8, temperature=temperature),
                       jax.random.key(11))
        np.testing.assert_array_equal(np.asarray(out.completion_tokens), expected)
        np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(greedy_ref.logprobs),
                                   atol=1e-6)


def test_top_p_keeps_exactly_the_nucleus():
    probs = np.array([0.05, 0.4, 0.1, 0.25, 0.2], np.float32)  # sorted: 1, 3, 4, 2, 0
    logits = jnp.asarray(np.log(probs))[None]

    def support(**kw):
        kept = np.isfinite(np.asarray(filter_logits(logits, SamplingConfig(**kw))[0]))
        return set(np.flatnonzero(kept).tolist())

    assert support(top_p=0.3) == {1}
    assert support(top_p=0.6) == {1, 3}
    assert support(top_p=0.7) == {1, 3, 4}
    assert support(top_p=0.9) == {1, 3, 4, 2}
    assert support(top_p=1.0) == {0, 1, 2, 3, 4}
    assert support(top_k=2) == {1, 3}
    assert support(top_k=3, top_p=0.6) == {1, 3}
    assert support(top_k=2, top_p=0.95) == {1, 3}
    # Samples come only from the nucleus, in renormalised proportions.
    rows = 4000
    config = SamplingConfig(top_p=0.6)
    tokens, lp, slp = sample_tokens(jnp.tile(logits, (rows, 1)), jax.random.key(0), config)
    tokens = np.asarray(tokens)
    assert set(np.unique(tokens).tolist()) == {1, 3}
    assert abs((tokens == 1).mean() - 0.4 / 0.65) < 0.03
    np.testing.assert_allclose(np.asarray(lp), np.log(probs[tokens]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(slp), np.log(probs[tokens] / 0.65), atol=1e-5)


def _reference_filter(logits, k, p):
    """Sort-based top-k then nucleus, per row (numpy)."""
    out = np.full_like(logits, -np.inf)
    for r, row in enumerate(logits):
        ranked = np.sort(row)[::-1][:k or None]
        probs = np.exp(ranked - ranked.max())
        probs /= probs.sum()
        last = int(np.argmax(np.cumsum(probs) >= p)) if p < 1 else len(ranked) - 1
        out[r] = np.where(row >= ranked[last], row, -np.inf)
    return out


@pytest.mark.parametrize("k,p,t", [(7, 1.0, 1.0), (0, 0.8, 1.0), (20, 0.6, 0.5), (0, 0.3, 2.0)])
def test_filter_logits_matches_a_sorting_reference(k, p, t):
    logits = np.random.default_rng(k).normal(0, 2, (32, 300)).astype(np.float32)
    config = SamplingConfig(top_k=k, top_p=p, temperature=t)
    got = np.asarray(filter_logits(jnp.asarray(logits), config))
    expected = _reference_filter(logits / np.float32(t), k, p)
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(expected))
    np.testing.assert_allclose(got[np.isfinite(got)], expected[np.isfinite(expected)], rtol=1e-6)


def test_sampling_is_reproducible(model, prompts):
    config = SamplingConfig(max_new_tokens=8, temperature=1.5)
    a = generate(model, *prompts, config, jax.random.key(7))
    b = generate(model, *prompts, config, jax.random.key(7))
    c = generate(model, *prompts, config, jax.random.key(8))
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_array_equal(np.asarray(a.logprobs), np.asarray(b.logprobs))
    assert not np.array_equal(np.asarray(a.tokens), np.asarray(c.tokens))


def _check_stops(out, ref, stops_per_row):
    ref = np.asarray(ref.completion_tokens)
    toks, cm = np.asarray(out.completion_tokens), np.asarray(out.completion_mask)
    for row, stops in enumerate(stops_per_row):
        hits = np.flatnonzero(np.isin(ref[row], stops))
        n = hits[0] + 1 if hits.size else ref.shape[1]
        np.testing.assert_array_equal(toks[row, :n], ref[row, :n])
        assert (toks[row, n:] == 0).all() and cm[row].tolist() == [1] * n + [0] * (8 - n)
        assert int(out.lengths[row]) == n and bool(out.stopped[row]) == bool(hits.size)
        assert (np.asarray(out.logprobs)[row, n:] == 0).all()
    full = np.asarray(out.mask)
    np.testing.assert_array_equal(full[:, out.prompt_length:], cm)


def test_stop_tokens_end_rows_and_masks(model, prompts, greedy_ref):
    ref = np.asarray(greedy_ref.completion_tokens)
    stop = int(ref[0, 2])
    out = generate(model, *prompts,
                   SamplingConfig(max_new_tokens=8, greedy=True, stop_token_ids=(stop, 255)))
    _check_stops(out, greedy_ref, [[stop, 255]] * 4)
    assert bool(out.stopped[0]) and int(out.lengths[0]) <= 3
    # Per-row stop sets on top of the shared ones.
    extra = np.array([[-1], [int(ref[1, 1])], [int(ref[2, 4])], [-1]], np.int32)
    out = generate(model, *prompts,
                   SamplingConfig(max_new_tokens=8, greedy=True, stop_token_ids=(stop,)),
                   row_stop_token_ids=extra)
    _check_stops(out, greedy_ref, [[stop] + [t for t in row if t >= 0] for row in extra])
    assert bool(out.stopped[1]) and int(out.lengths[1]) <= 2


# ----------------------------------------------------------------- compilation


def test_no_recompilation_within_a_bucket(model):
    config = SamplingConfig(max_new_tokens=8, temperature=0.7, top_k=50, top_p=0.9,
                            return_hidden=True)
    keys = [jax.random.key(i) for i in range(3)]
    batches = [bucketed_batch([5, 2, 4, 1], 5, 256, seed=s) for s in (1, 2)]
    batches.append(bucketed_batch([12, 3, 9, 1], 12, 256, seed=3))  # same bucket (16)
    batches.append(bucketed_batch([20, 3, 9, 1], 20, 256, seed=4))  # bucket 32
    jax.block_until_ready(generate(model, *batches[0], config, keys[0]).tokens)
    # Same bucket, other prompts, rng, stop ids and temperature-free knobs: nothing compiles.
    with CompileCounter() as same_bucket:
        for batch, key, stops in zip(batches[1:3], keys[1:], [(3,), (4, 5, 6, 7)]):
            out = generate(model, *batch, config.replace(stop_token_ids=stops), key)
            jax.block_until_ready(out.tokens)
            assert out.prompt_length == 16
    assert same_bucket.count == 0
    with CompileCounter() as new_bucket:  # a new bucket compiles its program
        out = generate(model, *batches[3], config, keys[0])
        jax.block_until_ready(out.tokens)
    assert out.prompt_length == 32 and new_bucket.count >= 1
    with CompileCounter() as again:  # ... once: the second call in that bucket compiles nothing
        jax.block_until_ready(generate(model, *batches[3], config, keys[1]).tokens)
    assert again.count == 0


def test_prompts_run_at_the_shape_given(model, prompts, greedy_ref):
    """generate does not re-pad: an unbucketed batch runs at its own width, same tokens."""
    tokens, mask = padded_batch(LENGTHS, 9, 256, left=True, seed=3)
    np.testing.assert_array_equal(np.asarray(prompts[0])[:, -9:], tokens)
    out = generate(model, tokens, mask, SamplingConfig(max_new_tokens=8, greedy=True))
    assert out.prompt_length == 9 and out.tokens.shape == (4, 17)
    np.testing.assert_array_equal(np.asarray(out.completion_tokens),
                                  np.asarray(greedy_ref.completion_tokens))
    np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(greedy_ref.logprobs),
                               atol=1e-5)


# ----------------------------------------------------------------- LoRA and split state


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the split is XLA:CPU's")
def test_cpu_split_programs_equal_the_fused_program(model, prompts):
    """On CPU the prefill (Eigen dots) and decode (YNNPACK) run as two programs: same sample."""
    config = SamplingConfig(max_new_tokens=8, temperature=0.8, top_p=0.9, return_hidden=True)
    graphdef, state = nnx.split(model)
    tokens, mask = (jnp.asarray(x, jnp.int32) for x in prompts)
    stops = jnp.asarray(sampler_mod._stop_array(config.stop_token_ids, None, len(LENGTHS)))
    args = (graphdef, state, tokens, mask, stops, jax.random.key(5), config.program_key())
    fused = sampler_mod._generate_jit(*args)
    before = sampler_mod._prefill_cpu_jit._cache_size(), sampler_mod._decode_cpu_jit._cache_size()
    split = generate(model, *prompts, config, jax.random.key(5))
    after = sampler_mod._prefill_cpu_jit._cache_size(), sampler_mod._decode_cpu_jit._cache_size()
    assert after == (before[0] + 1, before[1] + 1)  # generate ran the two CPU programs
    np.testing.assert_array_equal(np.asarray(split.tokens), np.asarray(fused["tokens"]))
    np.testing.assert_array_equal(np.asarray(split.mask), np.asarray(fused["mask"]))
    for name in ("logprobs", "sampling_logprobs", "hidden"):
        np.testing.assert_allclose(np.asarray(getattr(split, name)), np.asarray(fused[name]),
                                   atol=1e-5, err_msg=name)
    prefill_hlo = sampler_mod._prefill_cpu_jit.lower(*args).compile().as_text()
    assert " dot(" in prefill_hlo and "__ynn_fusion" not in prefill_hlo


def test_lora_adapters_and_use_lora_false(model, prompts, greedy_ref):
    lora_model = nnx.clone(model)
    cfg = lora_model.config
    rng = np.random.default_rng(0)
    for lin, (d_in, d_out) in ((lora_model.layers.attn.q_proj, (64, 64)),
                               (lora_model.layers.mlp.down_proj, (128, 64))):
        lin.lora_a = nnx.LoRAParam(jnp.asarray(rng.normal(0, 1.0, (cfg.num_layers, d_in, 4)),
                                               jnp.float32))
        lin.lora_b = nnx.LoRAParam(jnp.asarray(rng.normal(0, 1.0, (cfg.num_layers, 4, d_out)),
                                               jnp.float32))
    lin = lora_model.lm_head
    lin.lora_a = nnx.LoRAParam(jnp.asarray(rng.normal(0, 1.0, (64, 4)), jnp.float32))
    lin.lora_b = nnx.LoRAParam(jnp.asarray(rng.normal(0, 1.0, (4, 256)), jnp.float32))
    config = SamplingConfig(max_new_tokens=8, greedy=True)
    base = generate(lora_model, *prompts, config.replace(use_lora=False))
    np.testing.assert_array_equal(np.asarray(base.completion_tokens),
                                  np.asarray(greedy_ref.completion_tokens))
    tuned = generate(nnx.split(lora_model), *prompts, config)  # (graphdef, state) form
    assert not np.array_equal(np.asarray(tuned.completion_tokens),
                              np.asarray(base.completion_tokens))
    _, lp, _ = _full_forward(lora_model, tuned, use_lora=True)
    assert np.abs(np.asarray(tuned.logprobs) - lp).max() <= 1e-4


# ----------------------------------------------------------------- sharding

_SHARDED_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    jax.config.update("jax_default_matmul_precision", "highest")
    from flax import nnx
    from genalign_jax.generator import SamplingConfig, generate, load_llama, pad_prompts
    from genalign_jax.sharding import make_mesh, shard_state
    from tests.hf_fixtures import padded_batch
    path = sys.argv[1]
    assert jax.device_count() == 4, jax.devices()
    config = SamplingConfig(max_new_tokens=6, greedy=True)
    single = load_llama(path)
    sharded = load_llama(path, mesh=make_mesh({"fsdp": 2, "tensor": 2}))
    g, state = nnx.split(single)
    placed = (g, shard_state(state, make_mesh({"data": 2, "tensor": 2})))
    tokens, mask, _ = pad_prompts(*padded_batch([6, 2, 9, 4], 9, 128, left=True, seed=4))
    ref = generate(single, tokens, mask, config)
    result = {}
    # Rows are independent, so the odd batch (replicated over data=2) compares to 3 ref rows.
    for name, m, rows in (("fsdp_tensor", sharded, 4), ("data_tensor_odd_batch", placed, 3)):
        out = generate(m, tokens[:rows], mask[:rows], config)
        result[name] = dict(
            same=bool(np.array_equal(np.asarray(ref.tokens[:rows]), np.asarray(out.tokens))),
            lp_err=float(np.abs(np.asarray(ref.logprobs[:rows])
                                - np.asarray(out.logprobs)).max()),
            sharding=str(out.tokens.sharding))
    print("RESULT" + json.dumps(result))
""")


def test_sharded_generation_matches_single_device(tmp_path):
    make_tiny_hf_llama(tmp_path, "plain", seed=2)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT, str(tmp_path)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    result = json.loads(line[len("RESULT"):])
    for name, r in result.items():
        assert r["same"], f"{name}: sharded greedy tokens differ ({r})"
        assert r["lp_err"] <= 1e-4, f"{name}: {r}"


# ----------------------------------------------------------------- errors


def test_bad_configs_and_inputs_raise(model, prompts):
    for kwargs, match in ((dict(top_p=0.0), "top_p must be in"), (dict(top_p=1.5), "top_p"),
                          (dict(temperature=-1.0), "temperature must be >= 0"),
                          (dict(top_k=-1), "top_k"), (dict(max_new_tokens=0), "max_new_tokens")):
        with pytest.raises(ValueError, match=match):
            SamplingConfig(**kwargs)
    tokens, mask = prompts
    config = SamplingConfig(max_new_tokens=2, greedy=True)
    with pytest.raises(ValueError, match="empty prompt batch"):
        generate(model, tokens[:0], mask[:0], config)
    with pytest.raises(ValueError, match="does not match"):
        generate(model, tokens, mask[:, 1:], config)
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, tokens, mask[:, ::-1], config)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(model, tokens, mask, config.replace(stop_token_ids=(256,)))
    with pytest.raises(ValueError, match="token ids must be in"):
        generate(model, np.where(mask == 1, 999, 0), mask, config)
    with pytest.raises(ValueError, match="row_stop_token_ids"):
        generate(model, tokens, mask, config, row_stop_token_ids=np.zeros((2, 1)))
