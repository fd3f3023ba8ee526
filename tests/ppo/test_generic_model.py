"""PPO with a non-Llama NNX causal LM: custom policy_apply, full fine-tuning, separate critic."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genalign_jax import ppo

VOCAB, DIM, B, P, N = 16, 8, 4, 3, 5


class ToyLM(nnx.Module):
    """Causal LM: running mean of embeddings -> tanh MLP -> vocabulary."""

    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Embed(VOCAB, DIM, rngs=rngs)
        self.mix = nnx.Linear(DIM, DIM, rngs=rngs)
        self.head = nnx.Linear(DIM, VOCAB, rngs=rngs)

    def __call__(self, tokens, mask):
        x = self.embed(tokens) * mask[..., None]
        count = jnp.maximum(jnp.cumsum(mask, axis=1), 1)[..., None]
        hidden = jnp.tanh(self.mix(jnp.cumsum(x, axis=1) / count))
        return self.head(hidden), hidden


def toy_apply(model, tokens, mask, use_lora):
    """``PolicyApply`` for ToyLM (no adapters, so ``use_lora`` is ignored)."""
    del use_lora
    return model(tokens, mask)


class FakeSample(NamedTuple):
    """Any sampler's output with the SampleOutput fields make_rollout reads."""

    tokens: jax.Array
    mask: jax.Array
    prompt_length: int
    completion_mask: jax.Array
    logprobs: jax.Array


def _sample(seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, size=(B, P + N)).astype(np.int32)
    completion_mask = np.ones((B, N), np.int32)
    completion_mask[1, 3:] = 0
    mask = np.concatenate([np.ones((B, P), np.int32), completion_mask], axis=1)
    scores = rng.normal(size=B).astype(np.float32)
    return FakeSample(jnp.asarray(tokens), jnp.asarray(mask), P, jnp.asarray(completion_mask),
                      jnp.zeros((B, N))), jnp.asarray(scores)


def _params(model):
    return jax.tree.map(np.array, nnx.state(model, nnx.Param))


CONFIG = ppo.PPOConfig(trainable="full", num_minibatches=2, ppo_epochs=2, learning_rate=1e-2,
                       value_head={"critic": "separate", "init_scale": 0.01})


def test_full_finetuning_with_separate_critic_and_reference_copy():
    policy, critic = ToyLM(nnx.Rngs(0)), ToyLM(nnx.Rngs(1))
    policy_before, critic_before = _params(policy), _params(critic)
    state = ppo.init_ppo_state(policy, CONFIG, rngs=nnx.Rngs(2), critic=critic,
                               policy_apply=toy_apply)
    assert set(state.trainable) == {"policy", "critic", "value_head"}
    initial = jax.tree.map(np.array, state.trainable)
    sample, scores = _sample()
    batch = ppo.make_rollout(state, sample, scores, CONFIG)
    np.testing.assert_allclose(np.asarray(batch.ref_logprobs), np.asarray(batch.logprobs),
                               atol=1e-6)
    assert float(jnp.abs(batch.values).max()) > 0  # small random head on the critic's features

    new_state, metrics = ppo.ppo_update(state, batch, CONFIG, jax.random.key(0))
    assert np.isfinite(float(metrics["loss"]))
    # Policy, critic and value head all trained; the reference kept the initial weights.
    for name in ("policy", "critic", "value_head"):
        pairs = zip(jax.tree.leaves(new_state.trainable[name]), jax.tree.leaves(initial[name]))
        assert any(not np.allclose(np.asarray(a), b) for a, b in pairs), name
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, new_state.reference),
                 policy_before)
    after = ppo.make_rollout(new_state, sample, scores, CONFIG)
    assert np.abs(np.asarray(after.logprobs - after.ref_logprobs)).max() > 1e-4
    np.testing.assert_allclose(np.asarray(after.ref_logprobs), np.asarray(batch.ref_logprobs),
                               atol=1e-6)
    ppo.sync_model(policy, new_state, critic)
    assert any(not np.allclose(a, b) for a, b in
               zip(jax.tree.leaves(_params(policy)), jax.tree.leaves(policy_before)))
    assert any(not np.allclose(a, b) for a, b in
               zip(jax.tree.leaves(_params(critic)), jax.tree.leaves(critic_before)))


def test_explicit_reference_params_and_init_errors():
    policy, other = ToyLM(nnx.Rngs(0)), ToyLM(nnx.Rngs(5))
    # Same config and graphs as above: the compiled rollout program is reused.
    state = ppo.init_ppo_state(policy, CONFIG, rngs=nnx.Rngs(0), critic=ToyLM(nnx.Rngs(1)),
                               policy_apply=toy_apply,
                               reference_params=nnx.state(other, nnx.Param))
    sample, scores = _sample(1)
    batch = ppo.make_rollout(state, sample, scores, CONFIG)
    # The reference is the other model: its log-probs, and a non-zero KL penalty.
    logits, _ = other(sample.tokens, sample.mask)
    expected, _ = ppo.completion_logprobs(logits, sample.tokens, P, N, with_entropy=False)
    cmask = np.asarray(sample.completion_mask) > 0
    np.testing.assert_allclose(np.asarray(batch.ref_logprobs)[cmask], np.asarray(expected)[cmask],
                               atol=1e-5)
    assert float(jnp.abs(batch.kl).max()) > 0
    shared = CONFIG.replace(value_head={"critic": "shared"})
    with pytest.raises(ValueError, match="structure of"):
        ppo.init_ppo_state(ToyLM(nnx.Rngs(0)), shared, rngs=nnx.Rngs(0), policy_apply=toy_apply,
                           reference_params={"head": {}})
    with pytest.raises(ValueError, match="no module named any of"):
        ppo.init_ppo_state(ToyLM(nnx.Rngs(0)), ppo.PPOConfig(), rngs=nnx.Rngs(0),
                           policy_apply=toy_apply)
    with pytest.raises(ValueError, match="needs critic=<model>"):
        ppo.init_ppo_state(ToyLM(nnx.Rngs(0)), CONFIG, rngs=nnx.Rngs(0), policy_apply=toy_apply)
    with pytest.raises(ValueError, match="critic= was given"):
        ppo.init_ppo_state(ToyLM(nnx.Rngs(0)), shared, rngs=nnx.Rngs(0), critic=ToyLM(nnx.Rngs(1)),
                           policy_apply=toy_apply)


def test_state_checkpoint_round_trip_and_donation(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    state = ppo.init_ppo_state(ToyLM(nnx.Rngs(0)), CONFIG, rngs=nnx.Rngs(0),
                               critic=ToyLM(nnx.Rngs(1)), policy_apply=toy_apply)
    sample, scores = _sample(2)
    old_leaf = jax.tree.leaves(state.trainable)[0]
    state, _ = ppo.ppo_update(state, ppo.make_rollout(state, sample, scores, CONFIG), CONFIG,
                              jax.random.key(0))
    assert old_leaf.is_deleted(), "trainable buffers should be donated to the update"
    items = state.checkpoint_items()
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "ppo", items)
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(tmp_path / "ppo", jax.tree.map(jnp.zeros_like, items))
    fresh = ppo.init_ppo_state(ToyLM(nnx.Rngs(7)), CONFIG, rngs=nnx.Rngs(7),
                               critic=ToyLM(nnx.Rngs(8)), policy_apply=toy_apply).restore(restored)
    for a, b in zip(jax.tree.leaves(fresh.checkpoint_items()), jax.tree.leaves(items)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(fresh.step) == 1 and float(fresh.beta) == pytest.approx(float(state.beta))
    with pytest.raises(ValueError, match="unknown items"):
        state.restore({"frozen": {}})


def test_concat_rollouts_pads_prompts_and_rewhitens():
    state = ppo.init_ppo_state(ToyLM(nnx.Rngs(0)), CONFIG, rngs=nnx.Rngs(0),
                               critic=ToyLM(nnx.Rngs(1)), policy_apply=toy_apply)
    first, scores1 = _sample(3)
    rng = np.random.default_rng(4)  # a second sampler call with a longer prompt bucket
    tokens = rng.integers(0, VOCAB, size=(B, P + 2 + N)).astype(np.int32)
    second = FakeSample(jnp.asarray(tokens), jnp.ones_like(jnp.asarray(tokens)), P + 2,
                        jnp.ones((B, N), jnp.int32), jnp.zeros((B, N)))
    parts = [ppo.make_rollout(state, first, scores1, CONFIG),
             ppo.make_rollout(state, second, jnp.asarray(rng.normal(size=B)), CONFIG)]
    joined = ppo.concat_rollouts(parts, CONFIG)
    assert joined.prompt_length == P + 2 and joined.tokens.shape == (2 * B, P + 2 + N)
    np.testing.assert_array_equal(np.asarray(joined.mask[:B, :2]), 0)  # left padding
    # Log-probs of the padded rows are unchanged by the padding.
    logits, _ = ToyLM(nnx.Rngs(0))(joined.tokens, joined.mask)
    recomputed, _ = ppo.completion_logprobs(logits, joined.tokens, P + 2, N, with_entropy=False)
    cmask = np.asarray(joined.completion_mask) > 0
    np.testing.assert_allclose(np.asarray(recomputed)[cmask], np.asarray(joined.logprobs)[cmask],
                               atol=1e-5)
    # Advantages are whitened over the joined batch, from the stored rewards and values.
    expected, returns = ppo.compute_advantages(joined.rewards, joined.values, joined.completion_mask,
                                               CONFIG.gamma, CONFIG.lam, True)
    np.testing.assert_allclose(np.asarray(joined.advantages), np.asarray(expected), atol=1e-6)
    np.testing.assert_allclose(np.asarray(joined.returns), np.asarray(returns), atol=1e-6)
    with pytest.raises(ValueError, match="no batches"):
        ppo.concat_rollouts([], CONFIG)
