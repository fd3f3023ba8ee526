"""The model protocol PPO needs, and the pure forward passes built on it.

PPO works with any NNX causal LM through one callable::

    policy_apply(model, tokens, mask, use_lora) -> (logits [B, T, V], hidden [B, T, D])

``logits[:, t]`` predicts ``tokens[:, t + 1]`` and ``hidden`` are the final
hidden states the value head reads.  ``use_lora=False`` must run the reference
(base) model; for ``trainable="full"`` PPO instead swaps in reference
parameters, and the flag only matters if the model also has adapters.  The
default, ``llama_apply``, calls our ``Llama`` as
``model(tokens, mask, use_lora=use_lora, return_hidden=True)``.

The functions below are pure (graph definitions are static, states are
pytrees) so they run inside ``jax.jit``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import optax
from flax import nnx

from genalign_jax.ppo.config import PPOConfig
from genalign_jax.ppo.losses import completion_logprobs

__all__ = ["PolicyApply", "llama_apply", "PPOProgram", "evaluate", "reference_logprobs"]


class PolicyApply(Protocol):
    """``(model, tokens, mask, use_lora) -> (logits [B, T, V], hidden [B, T, D])``."""

    def __call__(self, model: nnx.Module, tokens: jax.Array, mask: jax.Array,
                 use_lora: bool) -> tuple[jax.Array, jax.Array]: ...


def llama_apply(model: nnx.Module, tokens: jax.Array, mask: jax.Array,
                use_lora: bool = True) -> tuple[jax.Array, jax.Array]:
    """Default ``PolicyApply`` for ``genalign_jax.models.llama.Llama``."""
    return model(tokens, mask, use_lora=use_lora, return_hidden=True)


class PPOProgram(NamedTuple):
    """Static (hashable) parts of a ``PPOState``: graph definitions, optimizer, callables.

    Attributes:
      policy_graphdef: graph of the policy model.
      value_head_graphdef: graph of the ``ValueHead``.
      critic_graphdef: graph of the separate critic, or ``None`` for a shared trunk.
      tx: the optax optimizer over ``PPOState.trainable``.
      schedule: learning rate as a function of the optimizer step.
      policy_apply, critic_apply: the ``PolicyApply`` callables.
      config: the ``PPOConfig`` the state was built with.
    """

    policy_graphdef: Any
    value_head_graphdef: Any
    critic_graphdef: Any
    tx: optax.GradientTransformation
    schedule: Callable[[Any], Any]
    policy_apply: Callable
    critic_apply: Callable | None
    config: PPOConfig


def _completion_slice(x: jax.Array, prompt_length: int, num_completion: int) -> jax.Array:
    return jax.lax.dynamic_slice_in_dim(x, prompt_length - 1, num_completion, axis=1)


def evaluate(program: PPOProgram, frozen: dict, trainable: dict, tokens: jax.Array,
             mask: jax.Array, prompt_length: int, num_completion: int, config: PPOConfig,
             with_entropy: bool = True) -> tuple[jax.Array, jax.Array | None, jax.Array]:
    """Current policy log-probs, entropy and values of the completion tokens.

    Returns ``(logprobs [B, N], entropy [B, N] or None, values [B, N])``;
    values are read at positions ``P−1+j``, aligned with the log-probs.
    """
    model = nnx.merge(program.policy_graphdef, frozen["policy"], trainable["policy"])
    logits, hidden = program.policy_apply(model, tokens, mask, True)
    logprobs, entropy = completion_logprobs(logits, tokens, prompt_length, num_completion,
                                            config.temperature, with_entropy)
    if program.critic_graphdef is None:
        features = _completion_slice(hidden, prompt_length, num_completion)
        if config.value_head.stop_gradient:
            features = jax.lax.stop_gradient(features)
    else:
        critic = nnx.merge(program.critic_graphdef, frozen["critic"], trainable["critic"])
        _, critic_hidden = program.critic_apply(critic, tokens, mask, True)
        features = _completion_slice(critic_hidden, prompt_length, num_completion)
    value_head = nnx.merge(program.value_head_graphdef, trainable["value_head"])
    return logprobs, entropy, value_head(features)


def reference_logprobs(program: PPOProgram, frozen: dict, trainable: dict, reference: Any,
                       tokens: jax.Array, mask: jax.Array, prompt_length: int,
                       num_completion: int, config: PPOConfig) -> jax.Array:
    """Reference-policy log-probs ``[B, N]``: adapters off, or the reference params."""
    params = trainable["policy"] if reference is None else reference
    model = nnx.merge(program.policy_graphdef, frozen["policy"], params)
    logits, _ = program.policy_apply(model, tokens, mask, False)
    logprobs, _ = completion_logprobs(logits, tokens, prompt_length, num_completion,
                                      config.temperature, with_entropy=False)
    return logprobs
