"""The model protocol PPO needs, and the pure forward passes built on it.

PPO works with any NNX causal LM through one callable::

    policy_apply(model, tokens, mask, use_lora) -> (logits [B, T, V], hidden [B, T, D])

``logits[:, t]`` predicts ``tokens[:, t + 1]`` and ``hidden`` are the final
hidden states the value head reads.  PPO only needs the completion positions;
an apply function that sets the attribute ``supports_window = True`` is also
called with ``window=(start, length)`` and then returns logits and hidden states
for those positions only, which avoids the ``[B, T, V]`` logits of the prompt
(at 8B with a 128k vocabulary they dominate memory).  ``use_lora=False`` must run the reference
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
from genalign_jax.ppo.losses import step_logprobs

__all__ = ["PolicyApply", "llama_apply", "apply_window", "PPOProgram", "evaluate",
           "reference_logprobs"]


class PolicyApply(Protocol):
    """``(model, tokens, mask, use_lora) -> (logits [B, T, V], hidden [B, T, D])``."""

    def __call__(self, model: nnx.Module, tokens: jax.Array, mask: jax.Array,
                 use_lora: bool) -> tuple[jax.Array, jax.Array]: ...


def llama_apply(model: nnx.Module, tokens: jax.Array, mask: jax.Array,
                use_lora: bool = True, window: tuple[int, int] | None = None
                ) -> tuple[jax.Array, jax.Array]:
    """Default ``PolicyApply`` for ``genalign_jax.generator.llama.Llama``.

    With ``window=(start, length)`` only positions ``start .. start+length`` are
    projected to the vocabulary.
    """
    if window is None:
        return model(tokens, mask, use_lora=use_lora, return_hidden=True)
    hidden, _ = model.forward(tokens, mask, use_lora=use_lora)
    hidden = jax.lax.dynamic_slice_in_dim(hidden, window[0], window[1], axis=1)
    return model.logits(hidden, use_lora), hidden


llama_apply.supports_window = True


def apply_window(apply: Callable, model: nnx.Module, tokens: jax.Array, mask: jax.Array,
                 use_lora: bool, prompt_length: int, num_completion: int
                 ) -> tuple[jax.Array, jax.Array]:
    """Logits ``[B, N, V]`` and hidden ``[B, N, D]`` at the positions predicting the completion."""
    window = (prompt_length - 1, num_completion)
    if getattr(apply, "supports_window", False):
        return apply(model, tokens, mask, use_lora, window=window)
    logits, hidden = apply(model, tokens, mask, use_lora)
    return (_completion_slice(logits, prompt_length, num_completion),
            _completion_slice(hidden, prompt_length, num_completion))


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
    step_logits, hidden = apply_window(program.policy_apply, model, tokens, mask, True,
                                       prompt_length, num_completion)
    targets = _completion_slice(tokens, prompt_length + 1, num_completion)
    logprobs, entropy = step_logprobs(step_logits, targets, config.temperature, with_entropy)
    if program.critic_graphdef is None:
        features = hidden
        if config.value_head.stop_gradient:
            features = jax.lax.stop_gradient(features)
    else:
        critic = nnx.merge(program.critic_graphdef, frozen["critic"], trainable["critic"])
        _, features = apply_window(program.critic_apply, critic, tokens, mask, True,
                                   prompt_length, num_completion)
    value_head = nnx.merge(program.value_head_graphdef, trainable["value_head"])
    return logprobs, entropy, value_head(features)


def reference_logprobs(program: PPOProgram, frozen: dict, trainable: dict, reference: Any,
                       tokens: jax.Array, mask: jax.Array, prompt_length: int,
                       num_completion: int, config: PPOConfig) -> jax.Array:
    """Reference-policy log-probs ``[B, N]``: adapters off, or the reference params."""
    params = trainable["policy"] if reference is None else reference
    model = nnx.merge(program.policy_graphdef, frozen["policy"], params)
    step_logits, _ = apply_window(program.policy_apply, model, tokens, mask, False,
                                  prompt_length, num_completion)
    targets = _completion_slice(tokens, prompt_length + 1, num_completion)
    logprobs, _ = step_logprobs(step_logits, targets, config.temperature, with_entropy=False)
    return logprobs
