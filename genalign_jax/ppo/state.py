"""PPO training state: trainable/frozen parameter split, optimizer, KL controller."""

from __future__ import annotations

import functools
import logging
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from genalign_jax.ppo.config import PPOConfig
from genalign_jax.ppo.kl import KLControllerState, init_kl_controller
from genalign_jax.ppo.lora import add_lora, count_params, has_lora
from genalign_jax.ppo.policy import PPOProgram, PolicyApply, llama_apply
from genalign_jax.ppo.value_head import ValueHead

log = logging.getLogger(__name__)

__all__ = ["PPOState", "init_ppo_state", "make_optimizer", "sync_model", "policy_model"]


@struct.dataclass
class PPOState:
    """Everything ``ppo_update`` reads and writes.

    Attributes:
      step: number of ``ppo_update`` calls so far.
      trainable: ``{"policy": State, "value_head": State[, "critic": State]}`` —
        LoRA adapters (``trainable="lora"``) or all ``nnx.Param`` (``"full"``).
        These buffers are donated to each update.
      opt_state: optax state over ``trainable``.
      kl: adaptive KL controller state (β and its statistics).
      frozen: the rest of each model (base weights), never donated or copied.
      reference: reference-policy parameters for ``trainable="full"``, else ``None``.
      program: static graph definitions, optimizer and callables (not a pytree leaf).
    """

    step: jax.Array
    trainable: dict
    opt_state: Any
    kl: KLControllerState
    frozen: dict
    reference: Any
    program: PPOProgram = struct.field(pytree_node=False)

    @property
    def beta(self) -> jax.Array:
        """Current KL coefficient."""
        return self.kl.beta

    def checkpoint_items(self) -> dict[str, Any]:
        """What to checkpoint (not the frozen base weights): step, trainable, opt_state, kl."""
        return {"step": self.step, "trainable": self.trainable, "opt_state": self.opt_state,
                "kl": self.kl}

    def restore(self, items: dict[str, Any]) -> "PPOState":
        """Returns a state with ``checkpoint_items()``-shaped ``items`` put back."""
        unknown = set(items) - {"step", "trainable", "opt_state", "kl"}
        if unknown:
            raise ValueError(f"PPOState.restore: unknown items {sorted(unknown)}")
        return self.replace(**items)


@functools.lru_cache(maxsize=32)
def make_optimizer(config: PPOConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with warm-up + constant/cosine/linear schedule and global-norm clipping.

    Cached per config, so states built from equal configs and models share
    one compiled update program.
    """
    lr = config.learning_rate
    decay_steps = max(config.total_steps - config.warmup_steps, 1)
    if config.lr_schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, decay_steps)
    elif config.lr_schedule == "linear":
        main = optax.linear_schedule(lr, 0.0, decay_steps)
    else:
        main = optax.constant_schedule(lr)
    if config.warmup_steps > 0:
        warmup = optax.linear_schedule(0.0, lr, config.warmup_steps)
        schedule = optax.join_schedules([warmup, main], [config.warmup_steps])
    else:
        schedule = main
    parts = []
    if config.max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(config.max_grad_norm))
    parts.append(optax.adamw(schedule, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps,
                             weight_decay=config.weight_decay))
    return optax.chain(*parts), schedule


def _hidden_size(model: nnx.Module, apply: PolicyApply) -> int:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "hidden_size"):
        return int(config.hidden_size)
    tokens = jnp.zeros((1, 2), jnp.int32)
    _, hidden = jax.eval_shape(lambda: apply(model, tokens, jnp.ones_like(tokens), True))
    return int(hidden.shape[-1])


def _split(model: nnx.Module, config: PPOConfig, name: str):
    """``(graphdef, trainable copy, frozen, original trainable arrays)`` of one model."""
    wanted = nnx.LoRAParam if config.trainable == "lora" else nnx.Param
    graphdef, trainable, frozen = nnx.split(model, wanted, ...)
    if config.trainable == "lora" and not jax.tree.leaves(trainable):
        log.warning("%s has no LoRA adapters; only the value head will be trained", name)
    # Copies (same devices/sharding), so donating them to ppo_update never invalidates the
    # caller's model.
    return graphdef, jax.device_put(trainable, may_alias=False), frozen, trainable


def init_ppo_state(model: nnx.Module, config: PPOConfig, *, rngs: nnx.Rngs,
                   critic: nnx.Module | None = None, reference_params: Any = None,
                   policy_apply: PolicyApply = llama_apply,
                   critic_apply: PolicyApply | None = None) -> PPOState:
    """Builds the PPO state for ``model`` (and attaches LoRA if needed).

    Args:
      model: the policy, any NNX causal LM served by ``policy_apply``.  With
        ``trainable="lora"`` and no ``nnx.LoRAParam`` in it, adapters are
        attached in place with ``add_lora(config.lora_rank, config.lora_alpha,
        targets=config.lora_targets)``.
      config: PPO hyper-parameters.
      rngs: random streams for LoRA and value-head init.
      critic: separate critic model (required iff ``config.value_head.critic ==
        "separate"``); it gets adapters too under ``trainable="lora"``.
      reference_params: ``trainable="full"`` only: ``nnx.State`` of the
        reference policy's ``nnx.Param`` (same structure as the model's);
        defaults to the model's current parameters (the update trains copies).
      policy_apply, critic_apply: the model protocol (see ``genalign_jax.ppo.policy``);
        ``critic_apply`` defaults to ``policy_apply``.

    The trainable parameters are copied into the state: after ``ppo_update``
    call ``sync_model(model, state)`` (or use ``policy_model(state)``) before
    sampling from ``model`` again.
    """
    if not isinstance(config, PPOConfig):
        raise TypeError(f"init_ppo_state: config must be a PPOConfig, got {type(config).__name__}")
    separate = config.value_head.critic == "separate"
    if separate and critic is None:
        raise ValueError("init_ppo_state: config.value_head.critic='separate' needs critic=<model>")
    if not separate and critic is not None:
        raise ValueError("init_ppo_state: critic= was given but config.value_head.critic is "
                         "'shared'; set it to 'separate'")
    if critic is not None and critic is model:
        raise ValueError("init_ppo_state: the critic must be a different model object than the "
                         "policy (use value_head.critic='shared' to share the trunk)")
    if config.trainable == "lora":
        if reference_params is not None:
            raise ValueError("init_ppo_state: reference_params is only used with trainable='full'; "
                             "with 'lora' the reference is the model with adapters switched off")
        for name, module in (("policy", model), ("critic", critic)):
            if module is not None and not has_lora(module):
                add_lora(module, config.lora_rank, config.lora_alpha, targets=config.lora_targets,
                         rngs=rngs)
    critic_apply = critic_apply or policy_apply

    policy_gd, policy_train, policy_frozen, policy_orig = _split(model, config, "policy")
    trainable = {"policy": policy_train}
    frozen = {"policy": policy_frozen}
    reference = None
    if config.trainable == "full":
        reference = policy_orig if reference_params is None else reference_params
        if jax.tree.structure(reference) != jax.tree.structure(policy_orig):
            raise ValueError("init_ppo_state: reference_params must have the structure of "
                             "nnx.state(model, nnx.Param)")
    critic_gd = None
    feature_source, feature_apply = model, policy_apply
    if separate:
        critic_gd, critic_train, critic_frozen, _ = _split(critic, config, "critic")
        trainable["critic"] = critic_train
        frozen["critic"] = critic_frozen
        feature_source, feature_apply = critic, critic_apply
    value_head = ValueHead(_hidden_size(feature_source, feature_apply),
                           init_scale=config.value_head.init_scale, rngs=rngs)
    value_gd, value_state = nnx.split(value_head)
    trainable["value_head"] = value_state

    tx, schedule = make_optimizer(config)
    program = PPOProgram(policy_graphdef=policy_gd, value_head_graphdef=value_gd,
                         critic_graphdef=critic_gd, tx=tx, schedule=schedule,
                         policy_apply=policy_apply,
                         critic_apply=critic_apply if separate else None, config=config)
    log.info("PPO state: trainable=%s, %d trainable params (%s), %d frozen params",
             config.trainable, count_params(trainable),
             ", ".join(f"{k}: {count_params(v)}" for k, v in trainable.items()),
             count_params(frozen))
    return PPOState(step=jnp.zeros((), jnp.int32), trainable=trainable,
                    opt_state=tx.init(trainable), kl=init_kl_controller(config), frozen=frozen,
                    reference=reference, program=program)


def sync_model(model: nnx.Module, state: PPOState, critic: nnx.Module | None = None) -> None:
    """Writes the state's trained parameters into ``model`` (and ``critic``) in place."""
    nnx.update(model, state.trainable["policy"])
    if critic is not None:
        if "critic" not in state.trainable:
            raise ValueError("sync_model: the state has no separate critic")
        nnx.update(critic, state.trainable["critic"])


def policy_model(state: PPOState) -> nnx.Module:
    """A fresh policy module built from the state's parameters (e.g. for sampling)."""
    return nnx.merge(state.program.policy_graphdef, state.frozen["policy"],
                     state.trainable["policy"])
