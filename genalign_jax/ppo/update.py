"""``ppo_update``: epochs × shuffled minibatches of PPO in one jitted program.

The program is a pure function of ``(frozen params, trainable params,
opt_state, KL-controller state, step, batch, rng)`` with the graph
definitions, optimizer and config static.  The trainable parameters and the
optimizer state are donated (updated in place on accelerators); the frozen
base weights are only read.  Epochs and minibatches run as one
``lax.scan`` loop, so one compile serves any number of steps.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from genalign_jax.cpu_dots import jit_eigen_dots_on_cpu
from genalign_jax.ppo.config import PPOConfig
from genalign_jax.ppo.gae import masked_mean, masked_var
from genalign_jax.ppo.kl import kl_estimate, update_kl_controller
from genalign_jax.ppo.losses import explained_variance, policy_loss, value_loss
from genalign_jax.ppo.policy import PPOProgram, evaluate
from genalign_jax.ppo.rollout import RolloutBatch
from genalign_jax.ppo.state import PPOState

__all__ = ["ppo_update", "ppo_loss"]

# Fields that shape the optimizer or the parameter split at init_ppo_state.
_INIT_FIELDS = ("learning_rate", "lr_schedule", "warmup_steps", "total_steps", "max_grad_norm",
                "weight_decay", "adam_b1", "adam_b2", "adam_eps", "trainable", "value_head")


def ppo_loss(trainable: dict, program: PPOProgram, frozen: dict, batch: RolloutBatch,
             config: PPOConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total PPO loss on a (mini)batch and its components.

    ``loss = pg_loss + vf_coef · vf_loss − ent_coef · entropy``, all averaged
    over valid completion tokens.
    """
    mask = batch.completion_mask
    logprobs, entropy, values = evaluate(program, frozen, trainable, batch.tokens, batch.mask,
                                         batch.prompt_length, batch.num_completion, config,
                                         with_entropy=True)
    pg = policy_loss(logprobs, batch.logprobs, batch.advantages, mask, config.clip_eps)
    vf = value_loss(values, batch.values, batch.returns, mask, config.value_clip_eps)
    mean_entropy = masked_mean(entropy, mask)
    loss = pg.loss + config.vf_coef * vf.loss - config.ent_coef * mean_entropy
    kl_ref = masked_mean(kl_estimate(jax.lax.stop_gradient(logprobs), batch.ref_logprobs,
                                     config.kl_estimator), mask)
    metrics = {"loss": loss, "policy_loss": pg.loss, "value_loss": vf.loss,
               "entropy": mean_entropy, "approx_kl": pg.approx_kl, "kl_ref": kl_ref,
               "clip_frac": pg.clip_frac, "value_clip_frac": vf.clip_frac}
    return loss, metrics


@functools.partial(jit_eigen_dots_on_cpu, static_argnums=(0, 1), donate_argnums=(3, 4))
def _update_program(program: PPOProgram, config: PPOConfig, frozen: dict, trainable: dict,
                    opt_state: Any, kl_state: Any, step: jax.Array, batch: RolloutBatch,
                    rng: jax.Array):
    """The jitted update; ``trainable`` and ``opt_state`` are donated."""
    batch_size = batch.tokens.shape[0]
    per_minibatch = batch_size // config.num_minibatches
    grad_fn = jax.value_and_grad(ppo_loss, has_aux=True)

    def minibatch_step(carry, indices):
        params, opt = carry
        minibatch = jax.tree.map(lambda x: x[indices], batch)
        (_, metrics), grads = grad_fn(params, program, frozen, minibatch, config)
        metrics["grad_norm"] = optax.tree.norm(grads)
        updates, opt = program.tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), opt), metrics

    # One shuffled permutation per epoch, cut into minibatches; a single scan runs
    # all epochs x minibatches (one loop compiles faster than two nested ones).
    keys = jax.random.split(rng, config.ppo_epochs)
    orders = jax.vmap(lambda key: jax.random.permutation(key, batch_size))(keys)
    groups = orders.reshape(config.ppo_epochs * config.num_minibatches, per_minibatch)
    (trainable, opt_state), metrics = jax.lax.scan(minibatch_step, (trainable, opt_state), groups)
    metrics = jax.tree.map(jnp.mean, metrics)

    mask = batch.completion_mask
    rollout_kl = jnp.mean(jnp.sum(batch.kl, axis=-1))
    kl_state = update_kl_controller(kl_state, rollout_kl, batch_size, config)
    optimizer_steps = (step + 1) * config.ppo_epochs * config.num_minibatches
    metrics.update({
        "explained_variance": explained_variance(batch.values, batch.returns, mask),
        "returns_mean": masked_mean(batch.returns, mask),
        "returns_std": jnp.sqrt(masked_var(batch.returns, mask)),
        "advantages_mean": masked_mean(batch.advantages, mask),
        "advantages_std": jnp.sqrt(masked_var(batch.advantages, mask)),
        "values_mean": masked_mean(batch.values, mask),
        "score_mean": jnp.mean(batch.scores),
        "rollout_kl": rollout_kl,
        "completion_length": jnp.mean(jnp.sum(mask, axis=-1)),
        "beta": kl_state.beta,
        "learning_rate": jnp.asarray(program.schedule(optimizer_steps - 1), jnp.float32),
    })
    return trainable, opt_state, kl_state, step + 1, metrics


def _check_config(state: PPOState, config: PPOConfig, batch: RolloutBatch) -> None:
    if not isinstance(config, PPOConfig):
        raise TypeError(f"ppo_update: config must be a PPOConfig, got {type(config).__name__}")
    if not isinstance(batch, RolloutBatch):
        raise TypeError(f"ppo_update: batch must be a RolloutBatch, got {type(batch).__name__} "
                        "(build it with make_rollout)")
    built = state.program.config
    for field in _INIT_FIELDS:
        if getattr(config, field) != getattr(built, field):
            raise ValueError(f"ppo_update: config.{field}={getattr(config, field)!r} differs from "
                             f"the value the state was built with ({getattr(built, field)!r}); "
                             "rebuild the state with init_ppo_state")
    if batch.batch_size % config.num_minibatches:
        raise ValueError(f"ppo_update: rollout batch size {batch.batch_size} is not divisible by "
                         f"config.num_minibatches={config.num_minibatches}")


def ppo_update(state: PPOState, batch: RolloutBatch, config: PPOConfig,
               rng: jax.Array) -> tuple[PPOState, dict[str, jax.Array]]:
    """Runs ``ppo_epochs`` × ``num_minibatches`` PPO steps on ``batch`` and updates β.

    The state's trainable buffers and optimizer state are donated: arrays
    taken from the old state (or a model synced from it) are invalid
    afterwards, so call ``sync_model(model, new_state)`` before sampling again.

    Returns:
      ``(new_state, metrics)`` with scalar metrics: ``policy_loss``,
      ``value_loss``, ``entropy``, ``loss``, ``approx_kl`` (to the behaviour
      policy), ``kl_ref`` (per-token, to the reference), ``clip_frac``,
      ``value_clip_frac``, ``grad_norm`` (means over all minibatch steps),
      ``explained_variance``, ``returns_mean/std``, ``advantages_mean/std``,
      ``values_mean``, ``score_mean``, ``rollout_kl`` (mean per-sequence KL,
      the controller's input), ``completion_length``, ``beta`` (after the
      controller step) and ``learning_rate``.
    """
    _check_config(state, config, batch)
    trainable, opt_state, kl_state, step, metrics = _update_program(
        state.program, config, state.frozen, state.trainable, state.opt_state, state.kl,
        state.step, batch, rng)
    new_state = dataclasses.replace(state, trainable=trainable, opt_state=opt_state, kl=kl_state,
                                    step=step)
    return new_state, metrics
