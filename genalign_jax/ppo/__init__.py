"""PPO for causal LMs in JAX/Flax NNX: value head, LoRA policy, KL penalty, one-jit updates.

Self-contained: it needs jax, flax, optax and numpy only (no datasets,
transformers, or the GenAlign loop), and works with any NNX causal LM through
one callable, ``policy_apply(model, tokens, mask, use_lora) -> (logits [B, T, V],
hidden [B, T, D])`` (default: our ``Llama``; see ``genalign_jax.ppo.policy``).

Usage with any sampler that returns tokens/mask/prompt_length/completion_mask/
logprobs (e.g. ``genalign_jax.generator.generate``)::

    from genalign_jax import ppo
    config = ppo.PPOConfig(learning_rate=1e-4, target_kl=4.0)     # or PPOConfig.from_dict(d)
    state = ppo.init_ppo_state(model, config, rngs=nnx.Rngs(0))   # adds LoRA + value head
    for step in range(num_steps):
        ppo.sync_model(model, state)                               # trained adapters -> model
        sample = generate(model, prompts, prompt_mask, sampling_config, next(keys))
        batch = ppo.make_rollout(state, sample, reward_fn(sample), config)  # one score per row
        state, metrics = ppo.ppo_update(state, batch, config, next(keys))

For another model pass ``policy_apply=`` (and, for LoRA, modules exposing
``kernel/lora_a/lora_b/lora_scale`` and honouring ``use_lora``); for full
fine-tuning use ``PPOConfig(trainable="full")`` (optionally with
``reference_params=``); for a separate critic set
``value_head={"critic": "separate"}`` and pass ``critic=``.

Pieces, usable on their own:

* ``PPOConfig`` / ``ValueHeadConfig`` — validated hyper-parameters.
* ``add_lora`` — ``nnx.LoRAParam`` adapters on named projections (stacked layers
  get a leading layer axis); ``nnx.state(model, nnx.LoRAParam)`` selects them.
* ``ValueHead`` — linear value head on final hidden states.
* ``kl_estimate``, ``per_token_rewards``, ``init_kl_controller`` /
  ``update_kl_controller`` — k1/k3 KL, −β·KL token rewards, Ziegler et al.'s
  adaptive β.
* ``gae``, ``compute_advantages``, ``whiten``, ``masked_mean`` — GAE as a reverse scan.
* ``policy_loss``, ``value_loss``, ``completion_logprobs`` — loss terms.
* ``init_ppo_state`` / ``PPOState``, ``make_rollout`` / ``RolloutBatch``,
  ``concat_rollouts`` (several sampler calls -> one batch), ``ppo_update``,
  ``sync_model``, ``policy_model``.

On CPU the rollout and update programs compile their matrix products with XLA's Eigen path
instead of YNNPACK (faster at their thousands of rows; ``genalign_jax.cpu_dots``).
"""

from genalign_jax.ppo.config import DEFAULT_LORA_TARGETS, PPOConfig, ValueHeadConfig
from genalign_jax.ppo.gae import compute_advantages, gae, masked_mean, masked_var, whiten
from genalign_jax.ppo.kl import (KLControllerState, init_kl_controller, kl_estimate,
                                 last_token_index, per_token_rewards, update_kl_controller)
from genalign_jax.ppo.lora import add_lora, count_params, has_lora
from genalign_jax.ppo.losses import (completion_logprobs, explained_variance, policy_loss,
                                     value_loss)
from genalign_jax.ppo.policy import PolicyApply, PPOProgram, llama_apply
from genalign_jax.ppo.rollout import RolloutBatch, concat_rollouts, make_rollout
from genalign_jax.ppo.state import (PPOState, init_ppo_state, make_optimizer, policy_model,
                                    sync_model)
from genalign_jax.ppo.update import ppo_loss, ppo_update
from genalign_jax.ppo.value_head import ValueHead

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "PPOConfig",
    "ValueHeadConfig",
    "compute_advantages",
    "gae",
    "masked_mean",
    "masked_var",
    "whiten",
    "KLControllerState",
    "init_kl_controller",
    "kl_estimate",
    "last_token_index",
    "per_token_rewards",
    "update_kl_controller",
    "add_lora",
    "count_params",
    "has_lora",
    "completion_logprobs",
    "explained_variance",
    "policy_loss",
    "value_loss",
    "PolicyApply",
    "PPOProgram",
    "llama_apply",
    "RolloutBatch",
    "concat_rollouts",
    "make_rollout",
    "PPOState",
    "init_ppo_state",
    "make_optimizer",
    "policy_model",
    "sync_model",
    "ppo_loss",
    "ppo_update",
    "ValueHead",
]
