"""ppo_update on a tiny Llama with LoRA: what changes, reference log-probs, gradient sign.

Uses the toy-task config and shapes of ``test_e2e_toy`` so the compiled programs are shared.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genalign_jax import ppo
from genalign_jax.generator import Llama, generate, get_preset
from genalign_jax.ppo import rollout as rollout_module
from genalign_jax.ppo import update as update_module
from genalign_jax.sharding import param_path
from tests.ppo import BATCH, TOY_CONFIG, TOY_SAMPLING, toy_prompts, toy_reward

CONFIG = TOY_CONFIG


@pytest.fixture(scope="module")
def sample():
    """One toy-task sample from the initial (adapter-free) policy, and its scores."""
    model = Llama(get_preset("tiny"), rngs=nnx.Rngs(0))
    prompts = toy_prompts(np.random.default_rng(0))
    out = generate(model, prompts, np.ones_like(prompts), TOY_SAMPLING, jax.random.key(0))
    return out, toy_reward(out.completion_tokens, out.completion_mask)


def _fresh_state():
    model = Llama(get_preset("tiny"), rngs=nnx.Rngs(0))
    return model, ppo.init_ppo_state(model, CONFIG, rngs=nnx.Rngs(1))


def _numpy(tree):
    return jax.tree.map(lambda x: np.array(x), tree)


def _flat(tree) -> dict[str, np.ndarray]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {param_path(path): np.asarray(leaf) for path, leaf in leaves}


def test_lora_update_changes_only_adapters_and_value_head(sample):
    out, scores = sample
    model, state = _fresh_state()
    frozen_before = _numpy(state.frozen)
    trainable_before = _numpy(state.trainable)
    model_params_before = _numpy(nnx.state(model, nnx.Param))

    batch = ppo.make_rollout(state, out, scores, CONFIG)
    # Zero-initialised B: policy = reference = the sampler's policy.
    cmask = np.asarray(batch.completion_mask) > 0
    np.testing.assert_allclose(np.asarray(batch.logprobs)[cmask], np.asarray(out.logprobs)[cmask],
                               atol=1e-4)
    np.testing.assert_allclose(np.asarray(batch.ref_logprobs), np.asarray(batch.logprobs),
                               atol=1e-5)
    beta0 = float(state.beta)

    new_state, metrics = ppo.ppo_update(state, batch, CONFIG, jax.random.key(1))
    metrics = jax.device_get(metrics)
    assert int(new_state.step) == 1
    # Frozen base weights: untouched and not copied (the very same arrays).
    assert new_state.frozen is state.frozen
    jax.tree.map(np.testing.assert_array_equal, _numpy(new_state.frozen), frozen_before)
    # The caller's model was not invalidated by donation and its base weights are unchanged.
    jax.tree.map(np.testing.assert_array_equal, _numpy(nnx.state(model, nnx.Param)),
                 model_params_before)
    # Every LoRA B and the value head moved; nothing else is trainable.
    after_flat, before_flat = _flat(new_state.trainable), _flat(trainable_before)
    assert after_flat.keys() == before_flat.keys()
    assert len([k for k in after_flat if k.startswith("policy/")]) == 2 * len(CONFIG.lora_targets)
    for path, value in after_flat.items():
        if path.startswith("policy/"):
            assert path.endswith(("lora_a", "lora_b")), path
        moved = not np.array_equal(value, before_flat[path])
        if path.endswith("lora_b") or path.startswith("value_head/"):
            assert moved, path

    # Metrics: finite, and beta moved as the controller documents (KL was 0 < target).
    for name in ("policy_loss", "value_loss", "entropy", "approx_kl", "kl_ref", "clip_frac",
                 "explained_variance", "returns_mean", "returns_std", "advantages_mean",
                 "advantages_std", "beta", "grad_norm", "rollout_kl"):
        assert np.isfinite(metrics[name]), name
    assert metrics["rollout_kl"] == pytest.approx(0.0, abs=1e-4)
    error = max(metrics["rollout_kl"] / CONFIG.target_kl - 1, -CONFIG.kl_clip)
    assert metrics["beta"] == pytest.approx(beta0 * (1 + error * BATCH / CONFIG.kl_horizon),
                                            rel=1e-5)
    assert metrics["advantages_mean"] == pytest.approx(0.0, abs=1e-5)
    assert metrics["advantages_std"] == pytest.approx(1.0, abs=1e-3)

    # Reference log-probs (adapters off) still equal the base model's (the sampler ran the
    # adapter-free base), while the trained policy's differ.
    after = ppo.make_rollout(new_state, out, scores, CONFIG)
    np.testing.assert_allclose(np.asarray(after.ref_logprobs)[cmask],
                               np.asarray(out.logprobs)[cmask], atol=1e-4)
    assert np.abs(np.asarray(after.logprobs) - np.asarray(after.ref_logprobs))[cmask].max() > 1e-3

    # sync_model writes the trained adapters into the caller's model.
    ppo.sync_model(model, new_state)
    synced = _flat(nnx.state(model, nnx.LoRAParam))
    assert synced.keys() == {k[len("policy/"):] for k in after_flat if k.startswith("policy/")}
    for path, value in synced.items():
        np.testing.assert_array_equal(value, np.asarray(after_flat["policy/" + path]))


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["positive", "negative"])
def test_advantage_sign_moves_token_probability(sample, sign):
    out, scores = sample
    _, state = _fresh_state()
    batch = ppo.make_rollout(state, out, scores, CONFIG)
    j = 3  # the advantaged completion position, every row
    advantages = np.zeros(batch.advantages.shape, np.float32)
    advantages[:, j] = sign
    # returns == values (0 from the zero-init head): no value-loss gradient into the trunk.
    fixed = dataclasses.replace(batch, advantages=jnp.asarray(advantages) * batch.completion_mask,
                                returns=batch.values)
    before = np.asarray(batch.logprobs)[:, j]
    new_state, _ = ppo.ppo_update(state, fixed, CONFIG, jax.random.key(2))
    after = np.asarray(ppo.make_rollout(new_state, out, scores, CONFIG).logprobs)[:, j]
    rows = np.asarray(batch.completion_mask)[:, j] > 0
    delta = float(np.mean(after[rows] - before[rows]))
    assert sign * delta > 1e-3, f"advantage {sign:+} moved log-prob by {delta:+.4f}"


def test_update_and_rollout_validate_inputs(sample):
    out, scores = sample
    _, state = _fresh_state()
    with pytest.raises(ValueError, match=r"scores must have shape \[32\]"):
        ppo.make_rollout(state, out, scores[:3], CONFIG)
    with pytest.raises(ValueError, match="prompt_length 5 "):
        ppo.make_rollout(state, dataclasses.replace(out, prompt_length=5), scores, CONFIG)
    batch = ppo.make_rollout(state, out, scores, CONFIG)
    with pytest.raises(ValueError, match="not divisible by config.num_minibatches=3"):
        ppo.ppo_update(state, batch, CONFIG.replace(num_minibatches=3), jax.random.key(0))
    with pytest.raises(ValueError, match="config.learning_rate=0.5 differs"):
        ppo.ppo_update(state, batch, CONFIG.replace(learning_rate=0.5), jax.random.key(0))
    with pytest.raises(TypeError, match="batch must be a RolloutBatch"):
        ppo.ppo_update(state, out, CONFIG, jax.random.key(0))
    with pytest.raises(ValueError, match="reference_params is only used with trainable='full'"):
        ppo.init_ppo_state(Llama(get_preset("tiny"), rngs=nnx.Rngs(0)), CONFIG,
                           rngs=nnx.Rngs(0), reference_params={})


def test_rollout_reuses_the_samplers_logprobs_and_hidden_states(sample):
    """recompute_logprobs=False + sampler hidden states: no policy forward, the same batch."""
    out, scores = sample
    model, state = _fresh_state()
    state, _ = ppo.ppo_update(state, ppo.make_rollout(state, out, scores, CONFIG), CONFIG,
                              jax.random.key(1))
    ppo.sync_model(model, state)  # LoRA B != 0: the policy differs from the reference
    prompts = toy_prompts(np.random.default_rng(1))
    fresh = generate(model, prompts, np.ones_like(prompts),
                     dataclasses.replace(TOY_SAMPLING, return_hidden=True), jax.random.key(2))
    recomputed = ppo.make_rollout(state, fresh, scores, CONFIG)
    reused = ppo.make_rollout(state, fresh, scores,
                              dataclasses.replace(CONFIG, recompute_logprobs=False))
    assert float(np.abs(np.asarray(recomputed.logprobs - recomputed.ref_logprobs)).max()) > 1e-4
    for name in ("logprobs", "ref_logprobs", "values", "rewards", "advantages", "returns", "kl"):
        np.testing.assert_allclose(np.asarray(getattr(reused, name)),
                                   np.asarray(getattr(recomputed, name)), atol=2e-5, err_msg=name)
    # Without hidden states the values still come from a policy forward.
    no_hidden = fresh.replace(hidden=None)
    fallback = ppo.make_rollout(state, no_hidden, scores,
                                dataclasses.replace(CONFIG, recompute_logprobs=False))
    np.testing.assert_allclose(np.asarray(fallback.values), np.asarray(recomputed.values),
                               atol=1e-6)


def test_rollout_reuses_logprobs_taken_at_ppos_temperature(sample):
    """A PPO temperature != 1: the sampler takes its log-probs at that temperature
    (``logprob_temperature``) and the reuse path matches the recomputed batch; a sample taken at
    another temperature is refused, naming both."""
    out, scores = sample
    model, state = _fresh_state()
    config = dataclasses.replace(CONFIG, temperature=0.7)
    state, _ = ppo.ppo_update(state, ppo.make_rollout(state, out, scores, config), config,
                              jax.random.key(1))
    ppo.sync_model(model, state)
    prompts = toy_prompts(np.random.default_rng(3))
    sampling = dataclasses.replace(TOY_SAMPLING, temperature=0.7, return_hidden=True,
                                   logprob_temperature=0.7)
    fresh = generate(model, prompts, np.ones_like(prompts), sampling, jax.random.key(2))
    assert fresh.logprob_temperature == 0.7
    recomputed = ppo.make_rollout(state, fresh, scores, config)
    reused = ppo.make_rollout(state, fresh, scores,
                              dataclasses.replace(config, recompute_logprobs=False))
    for name in ("logprobs", "values", "rewards", "advantages", "returns", "kl"):
        np.testing.assert_allclose(np.asarray(getattr(reused, name)),
                                   np.asarray(getattr(recomputed, name)), atol=2e-5, err_msg=name)
    raw = generate(model, prompts, np.ones_like(prompts),
                   dataclasses.replace(sampling, logprob_temperature=1.0), jax.random.key(2))
    # Same tokens (the sampling distribution does not depend on logprob_temperature) ...
    np.testing.assert_array_equal(np.asarray(raw.tokens), np.asarray(fresh.tokens))
    # ... but log-probs of another distribution, which the reuse path refuses.
    assert float(np.abs(np.asarray(raw.logprobs - fresh.logprobs)).max()) > 1e-3
    with pytest.raises(ValueError, match=r"temperature 1.0, but PPO's temperature is 0.7"):
        ppo.make_rollout(state, raw, scores, dataclasses.replace(config, recompute_logprobs=False))


def test_padding_only_prompt_columns_change_nothing(sample):
    """Prompt buckets (``generator.prompt_buckets``) drop all-padding prompt columns: the samples,
    the rollout batch and the update are the same as at the wider shape, to float rounding."""
    _, scores = sample
    prompts = toy_prompts(np.random.default_rng(5))
    wide = np.concatenate([np.zeros((BATCH, 3), np.int32), prompts], axis=1)
    wide_mask = np.concatenate([np.zeros((BATCH, 3), np.int32), np.ones_like(prompts)], axis=1)
    sampling = dataclasses.replace(TOY_SAMPLING, return_hidden=True)
    config = dataclasses.replace(CONFIG, recompute_logprobs=False)
    outs, batches, trained = [], [], []
    for tokens, mask in ((prompts, np.ones_like(prompts)), (wide, wide_mask)):
        model, state = _fresh_state()
        out = generate(model, tokens, mask, sampling, jax.random.key(7))
        batch = ppo.make_rollout(state, out, scores, config)
        state, metrics = ppo.ppo_update(state, batch, config, jax.random.key(8))
        outs.append(out), batches.append(batch)
        trained.append((_flat(state.trainable), _numpy(metrics)))
    assert batches[1].prompt_length == batches[0].prompt_length + 3
    np.testing.assert_array_equal(np.asarray(outs[1].completion_tokens),
                                  np.asarray(outs[0].completion_tokens))
    for name in ("logprobs", "ref_logprobs", "values", "advantages", "returns", "kl"):
        np.testing.assert_allclose(np.asarray(getattr(batches[1], name)),
                                   np.asarray(getattr(batches[0], name)), atol=2e-5, err_msg=name)
    (narrow_params, narrow_metrics), (wide_params, wide_metrics) = trained
    for name, value in narrow_metrics.items():
        np.testing.assert_allclose(wide_metrics[name], value, rtol=1e-4, atol=1e-5, err_msg=name)
    # Adam normalises each step: float-rounding differences in near-zero gradients may move a
    # parameter by a fraction of one step (lr 1e-3), never more.
    for name, value in narrow_params.items():
        np.testing.assert_allclose(wide_params[name], value, atol=3e-4, err_msg=name)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's dot library")
def test_rollout_and_update_programs_run_their_dots_with_eigen_on_cpu(sample):
    """genalign_jax.cpu_dots.jit_eigen_dots_on_cpu: no product of either program goes to YNNPACK."""
    out, scores = sample
    _, state = _fresh_state()
    batch = ppo.make_rollout(state, out, scores, CONFIG)
    update = update_module._update_program.lower(
        state.program, CONFIG, state.frozen, state.trainable, state.opt_state, state.kl,
        state.step, batch, jax.random.key(0)).compile().as_text()
    rollout = rollout_module._rollout_program.lower(
        state.program, CONFIG, int(out.prompt_length), state.frozen, state.trainable,
        state.reference, state.kl.beta, jnp.asarray(out.tokens), jnp.asarray(out.mask),
        jnp.asarray(out.completion_mask), jnp.asarray(out.logprobs, jnp.float32), None,
        jnp.asarray(scores, jnp.float32)).compile().as_text()
    for text in (update, rollout):
        assert " dot(" in text
        assert "__ynn_fusion" not in text
