"""Rollout batches: what PPO trains on, filled from a sampler's output.

``make_rollout`` takes the sampler's ``SampleOutput`` (or anything with the
same fields: ``tokens``, ``mask``, ``prompt_length``, ``completion_mask``,
``logprobs``) and one scalar reward per sequence, and in one jitted program
computes behaviour and reference log-probs, values, per-token rewards
(−β·KL plus the score on the last completion token), GAE advantages and
returns.

With ``config.recompute_logprobs=False`` and a sample that carries ``hidden``
(``SamplingConfig(return_hidden=True)``), the behaviour log-probs and the
value head's inputs come from the sampler itself and the policy forward is
skipped: only the reference forward runs (half the work).  The sampler must
then take its log-probs at PPO's temperature
(``SamplingConfig(logprob_temperature=config.temperature)``; checked).  The sampler's
KV-cached decode gives the same numbers as a fresh forward to float rounding
in float32; in bfloat16 the two differ by more than rounding, so keep
``recompute_logprobs=True`` there (the PPO ratio then starts at exactly 1).
A separate critic model always runs its own forward.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from genalign_jax.cpu_dots import jit_eigen_dots_on_cpu
from genalign_jax.ppo.config import PPOConfig
from genalign_jax.ppo.gae import compute_advantages
from genalign_jax.ppo.kl import per_token_rewards
from genalign_jax.ppo.policy import PPOProgram, evaluate, reference_logprobs
from genalign_jax.ppo.state import PPOState

log = logging.getLogger(__name__)

__all__ = ["RolloutBatch", "make_rollout", "concat_rollouts"]


@struct.dataclass
class RolloutBatch:
    """One batch of sampled sequences with everything PPO needs (float32 per-token arrays).

    Attributes:
      tokens: ``[B, P+N]`` left-padded prompt + completion.
      mask: ``[B, P+N]`` 1 for real tokens.
      completion_mask: ``[B, N]`` 1 for generated tokens (incl. the stop token).
      logprobs: ``[B, N]`` behaviour-policy log-probs of the completion tokens.
      ref_logprobs: ``[B, N]`` reference-policy log-probs.
      values: ``[B, N]`` value predictions at the rollout.
      rewards: ``[B, N]`` per-token rewards (−β·KL, plus the score on the last token).
      advantages: ``[B, N]`` GAE advantages (whitened if configured).
      returns: ``[B, N]`` value targets (raw advantages + values).
      kl: ``[B, N]`` per-token KL estimate between behaviour and reference.
      scores: ``[B]`` sequence-level rewards.
      prompt_length: ``P`` (static).
    """

    tokens: jax.Array
    mask: jax.Array
    completion_mask: jax.Array
    logprobs: jax.Array
    ref_logprobs: jax.Array
    values: jax.Array
    rewards: jax.Array
    advantages: jax.Array
    returns: jax.Array
    kl: jax.Array
    scores: jax.Array
    prompt_length: int = struct.field(pytree_node=False)

    @property
    def batch_size(self) -> int:
        """Number of sequences ``B``."""
        return int(self.tokens.shape[0])

    @property
    def num_completion(self) -> int:
        """Completion length ``N``."""
        return int(self.completion_mask.shape[1])


@functools.partial(jit_eigen_dots_on_cpu, static_argnums=(0, 1, 2))
def _rollout_program(program: PPOProgram, config: PPOConfig, prompt_length: int, frozen: dict,
                     trainable: dict, reference: Any, beta: jax.Array, tokens: jax.Array,
                     mask: jax.Array, completion_mask: jax.Array, sample_logprobs: jax.Array,
                     sample_hidden: jax.Array | None, scores: jax.Array) -> RolloutBatch:
    """Forward passes, rewards and advantages of one rollout (static: program, config, P)."""
    num_completion = completion_mask.shape[1]
    cmask = completion_mask.astype(jnp.float32)
    if sample_hidden is None:
        logprobs, _, values = evaluate(program, frozen, trainable, tokens, mask, prompt_length,
                                       num_completion, config, with_entropy=False)
    else:  # the sampler already holds what the policy forward would recompute
        value_head = nnx.merge(program.value_head_graphdef, trainable["value_head"])
        values = value_head(sample_hidden)
    if not config.recompute_logprobs:
        logprobs = sample_logprobs.astype(jnp.float32)
    ref = reference_logprobs(program, frozen, trainable, reference, tokens, mask, prompt_length,
                             num_completion, config)
    logprobs, ref, values = logprobs * cmask, ref * cmask, values * cmask
    rewards, kl = per_token_rewards(scores, logprobs, ref, cmask, beta, config.kl_estimator)
    advantages, returns = compute_advantages(rewards, values, cmask, config.gamma, config.lam,
                                             config.whiten_advantages)
    return RolloutBatch(tokens=tokens, mask=mask, completion_mask=cmask, logprobs=logprobs,
                        ref_logprobs=ref, values=values, rewards=rewards, advantages=advantages,
                        returns=returns, kl=kl, scores=scores.astype(jnp.float32),
                        prompt_length=prompt_length)


def make_rollout(state: PPOState, sample: Any, scores: jax.Array | np.ndarray,
                 config: PPOConfig) -> RolloutBatch:
    """Fills a ``RolloutBatch`` from a sampler output and per-sequence ``scores`` [B].

    Args:
      state: the current ``PPOState`` (its policy must be the one that sampled).
      sample: ``SampleOutput``-like: ``tokens``/``mask`` [B, P+N], static int
        ``prompt_length`` P, ``completion_mask`` [B, N] and ``logprobs`` [B, N]
        (log-softmax of the raw logits at the sampled tokens); optionally
        ``hidden`` [B, N, D] (used with ``recompute_logprobs=False``, see above).
      scores: sequence-level rewards, one per row.
      config: PPO hyper-parameters (β comes from ``state.kl``).
    """
    tokens, mask = jnp.asarray(sample.tokens), jnp.asarray(sample.mask)
    completion_mask = jnp.asarray(sample.completion_mask)
    prompt_length = int(sample.prompt_length)
    scores = jnp.asarray(scores, jnp.float32)
    if tokens.ndim != 2 or mask.shape != tokens.shape:
        raise ValueError(f"make_rollout: tokens {tokens.shape} and mask {mask.shape} must be the "
                         "same [B, P+N] shape")
    b, total = tokens.shape
    if completion_mask.ndim != 2 or completion_mask.shape[0] != b:
        raise ValueError(f"make_rollout: completion_mask {completion_mask.shape} must be "
                         f"[B={b}, N]")
    if not 1 <= prompt_length < total or prompt_length + completion_mask.shape[1] != total:
        raise ValueError(f"make_rollout: prompt_length {prompt_length} + completion length "
                         f"{completion_mask.shape[1]} must equal the sequence length {total} "
                         "(and the prompt must be non-empty)")
    if scores.shape != (b,):
        raise ValueError(f"make_rollout: scores must have shape [{b}], got {scores.shape}")
    sample_temperature = float(getattr(sample, "logprob_temperature", 1.0))
    if not config.recompute_logprobs and sample_temperature != config.temperature:
        raise ValueError(f"make_rollout: recompute_logprobs=False reuses the sampler's log-probs, "
                         f"which were taken at temperature {sample_temperature}, but PPO's "
                         f"temperature is {config.temperature}: sample with "
                         f"SamplingConfig(logprob_temperature={config.temperature})")
    sample_logprobs = jnp.asarray(sample.logprobs, jnp.float32)
    hidden = getattr(sample, "hidden", None)
    reuse = (not config.recompute_logprobs and hidden is not None
             and state.program.critic_graphdef is None)
    if reuse and hidden.shape[:2] != completion_mask.shape:
        raise ValueError(f"make_rollout: sample.hidden {hidden.shape} must be [B, N, D] with "
                         f"[B, N] = {completion_mask.shape}")
    return _rollout_program(state.program, config, prompt_length, state.frozen, state.trainable,
                            state.reference, state.kl.beta, tokens, mask, completion_mask,
                            sample_logprobs, jnp.asarray(hidden) if reuse else None, scores)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _concat_program(config: PPOConfig, prompt_length: int,
                    batches: tuple[RolloutBatch, ...]) -> RolloutBatch:
    """Left-pads prompts to ``prompt_length``, concatenates rows, recomputes advantages."""
    def pad(x, batch):
        return jnp.pad(x, ((0, 0), (prompt_length - batch.prompt_length, 0)))

    def cat(get):
        return jnp.concatenate([get(b) for b in batches], axis=0)

    tokens = cat(lambda b: pad(b.tokens, b))
    mask = cat(lambda b: pad(b.mask, b))
    fields = {name: cat(lambda b, name=name: getattr(b, name))
              for name in ("completion_mask", "logprobs", "ref_logprobs", "values", "rewards",
                           "kl", "scores")}
    advantages, returns = compute_advantages(fields["rewards"], fields["values"],
                                             fields["completion_mask"], config.gamma, config.lam,
                                             config.whiten_advantages)
    return RolloutBatch(tokens=tokens, mask=mask, advantages=advantages, returns=returns,
                        prompt_length=prompt_length, **fields)


def concat_rollouts(batches: Sequence[RolloutBatch], config: PPOConfig) -> RolloutBatch:
    """Joins rollout batches (e.g. one per sampler call) into one for ``ppo_update``.

    Prompts are left-padded to the longest prompt length (padding is masked,
    so log-probs and values are unchanged), and advantages/returns are
    recomputed from the stored rewards and values over the joined batch, so
    whitening uses the statistics of the whole batch.  All batches need the
    same completion length.
    """
    batches = tuple(batches)
    if not batches:
        raise ValueError("concat_rollouts: no batches given")
    lengths = {b.num_completion for b in batches}
    if len(lengths) > 1:
        raise ValueError(f"concat_rollouts: completion lengths differ: {sorted(lengths)}")
    if len(batches) == 1:
        return batches[0]
    return _concat_program(config, max(b.prompt_length for b in batches), batches)
