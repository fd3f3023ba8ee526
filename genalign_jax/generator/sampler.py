"""Batched autoregressive sampling from a Llama policy, compiled once per prompt shape.

``generate(model, prompt_tokens, prompt_mask, config, rng)`` runs one jitted
program: a prefill over the left-padded prompt batch that fills a KV cache,
then a ``jax.lax.while_loop`` of one-token decode steps that stops when every
row has produced a stop token or ``max_new_tokens`` tokens were generated.  On
CPU the two halves are two programs, so the prefill's many-row products compile
with Eigen dots and the decode's few-row ones with YNNPACK (``genalign_jax.cpu_dots``;
at SmolLM2-135M, 32 x 208 prompt tokens, the prefill took 5.71 against 6.89 s).

Shapes and compilation
    The prompt batch runs with the shape it is given: shape it first with
    ``generator.tokenize.encode_prompts`` (or ``pad_prompts`` for token ids), which
    left-pads to a fixed length or a power-of-two bucket; ``generate`` only
    validates it.  A run compiles one program per (model graph, batch size,
    prompt length, ``config.program_key()``); later calls with the same shapes
    compile nothing (``genalign_jax.compile_counter.CompileCounter`` counts; on CPU the
    first call compiles the prefill and the decode program).
    The program is a plain ``jax.jit`` over ``nnx.split(model)`` state (the
    graph definition is a static argument).  The prefill is the model's scanned
    forward (``Llama.prefill``) and builds the KV cache (one buffer pair per layer,
    ``generator.llama.KVCache``) *inside* the program: XLA owns the buffers and
    updates them in place across the while-loop.  The decode step runs the layers one
    after the other on per-layer weights sliced once per call (``Llama.layer_blocks``),
    so no step copies weight or cache slices out of stacked arrays.  Stop ids travel as
    an array (padded to >= 4 slots), so changing them does not recompile either.

Sharding
    A model whose parameters sit on a mesh (``load_llama(..., mesh=)`` or
    ``sharding.shard_state``) is run under that mesh: prompt rows go on the
    ``data``/``fsdp`` axes (replicated if the batch does not divide) and the
    KV cache on (batch rows, ``tensor`` for KV heads).

Alignment with a full forward
    ``tokens``/``mask`` (``[B, P + N]``) can be fed to ``model(tokens, mask)``
    with ``default_positions(mask)``: the logits at position ``P - 1 + j``
    predict completion token ``j``.  ``hidden[:, j]`` is the final hidden state
    at that same position (the value head's input for action ``j``).
    ``genalign_jax.ppo.completion_logprobs`` does that recomputation from logits.

Which log-probabilities
    * ``logprobs`` = ``log_softmax(raw logits / logprob_temperature)[token]``
      (``logprob_temperature`` defaults to 1: the policy's own distribution pi),
      exactly what PPO recomputes from a fresh forward at that temperature (no
      truncation).  Use these as the PPO behaviour/old log-probs; the PPO ratio
      then compares pi_new and pi_old on the same footing.  A PPO whose policy
      is softmax(logits / T) sets ``logprob_temperature=T`` to reuse them.
    * ``sampling_logprobs`` = log-probability under the distribution actually
      sampled from, q = softmax(logits / T) restricted to the top-k and
      nucleus sets and renormalised (0 for greedy rows).  With
      ``temperature=1, top_k=0, top_p=1`` q equals pi and both fields agree;
      otherwise rollouts are drawn from q != pi and are slightly off-policy
      for pi (the usual RLHF practice is to ignore the pi/q weight).  For
      exactly on-policy PPO, sample with T=1 and no truncation; if the policy
      is *defined* as softmax(logits / T), compute both the old and the new
      log-probs with ``ppo.completion_logprobs(..., temperature=T)``.
    In float32 the returned ``logprobs`` match a full forward to ~1e-5; in
    bfloat16 the cached decode and a full forward round differently, so PPO
    should recompute old log-probs with a forward when it needs ratio == 1
    exactly at the first epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from genalign_jax import sharding as sharding_lib
from genalign_jax.cpu_dots import EIGEN_CPU_DOTS
from genalign_jax.generator.llama import default_positions
from genalign_jax.generator.logits import sample_tokens
from genalign_jax.generator.tokenize import check_prompt_batch, power_of_two_bucket

log = logging.getLogger(__name__)

__all__ = ["SamplingConfig", "SampleOutput", "generate"]


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to sample.  Every field is static: a change compiles a new program.

    Attributes:
      max_new_tokens: completion length N (the generation bucket; use powers of two).
      temperature: logits are divided by it before sampling; ``0`` means greedy.
      top_k: keep only the k most likely tokens (``0`` = off).
      top_p: keep the smallest set of most likely tokens whose probability
        reaches ``top_p`` (nucleus sampling; ``1.0`` = off).
      greedy: take the argmax (temperature/top-k/top-p are then ignored).
      stop_token_ids: a row ends after emitting any of these (EOS ids, newline...);
        the stop token itself is part of the completion.
      pad_token_id: emitted after a row has finished, and used for prompt padding.
      return_hidden: also return final hidden states ``[B, N, D]``.
      use_lora: run with LoRA adapters (``False`` = base/reference model).
      logprob_temperature: ``logprobs`` are taken of ``logits / logprob_temperature``
        (no truncation): 1 = the raw policy; PPO's temperature to let PPO reuse them.
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    stop_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    return_hidden: bool = False
    use_lora: bool = True
    logprob_temperature: float = 1.0

    def __post_init__(self):
        if isinstance(self.stop_token_ids, int):
            object.__setattr__(self, "stop_token_ids", (self.stop_token_ids,))
        else:
            object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if int(self.max_new_tokens) < 1:
            raise ValueError(f"SamplingConfig.max_new_tokens must be >= 1, "
                             f"got {self.max_new_tokens}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"SamplingConfig.temperature must be >= 0 (0 = greedy), "
                             f"got {self.temperature}")
        if not math.isfinite(self.logprob_temperature) or self.logprob_temperature <= 0:
            raise ValueError(f"SamplingConfig.logprob_temperature must be > 0, "
                             f"got {self.logprob_temperature}")
        if int(self.top_k) < 0:
            raise ValueError(f"SamplingConfig.top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if int(self.pad_token_id) < 0:
            raise ValueError(f"SamplingConfig.pad_token_id must be >= 0, got {self.pad_token_id}")
        if any(t < 0 for t in self.stop_token_ids):
            raise ValueError(f"SamplingConfig.stop_token_ids must be >= 0, "
                             f"got {self.stop_token_ids}")

    @property
    def is_greedy(self) -> bool:
        """True when tokens are argmaxes (``greedy`` or ``temperature == 0``)."""
        return self.greedy or self.temperature == 0.0

    def replace(self, **changes: Any) -> "SamplingConfig":
        """Returns a copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def program_key(self) -> "SamplingConfig":
        """This config with the fields that do not change the compiled program normalised.

        Stop ids travel as an array argument, so configs differing only there
        (or greedy configs differing only in ignored sampling knobs) share one
        program.
        """
        changes: dict[str, Any] = dict(stop_token_ids=())
        if self.is_greedy:
            changes.update(greedy=True, temperature=1.0, top_k=0, top_p=1.0)
        return self.replace(**changes)


class SampleOutput(flax.struct.PyTreeNode):
    """Result of ``generate``; ``P`` is the prompt length, ``N`` = max_new_tokens.

    Attributes:
      tokens: ``[B, P + N]`` left-padded prompt followed by the completion.
      mask: ``[B, P + N]`` 1 for real prompt tokens and generated tokens
        (including the stop token), 0 for padding.
      prompt_length: ``P`` (static).
      completion_tokens: ``[B, N]`` (``pad_token_id`` after a row finished).
      completion_mask: ``[B, N]`` 1 for generated tokens, including the stop token.
      logprobs: ``[B, N]`` float32 ``log_softmax(raw logits / logprob_temperature)[token]``,
        0 where masked.
      sampling_logprobs: ``[B, N]`` float32 log-prob under the sampling
        distribution (temperature/top-k/top-p applied; 0 for greedy or masked).
      hidden: ``[B, N, D]`` final hidden state at the position whose logits
        produced each token (model dtype), or ``None``.
      lengths: ``[B]`` number of generated tokens per row.
      stopped: ``[B]`` whether the row ended with a stop token.
      logprob_temperature: the temperature ``logprobs`` were taken at (static).
    """

    tokens: jax.Array
    mask: jax.Array
    prompt_length: int = flax.struct.field(pytree_node=False)
    completion_tokens: jax.Array
    completion_mask: jax.Array
    logprobs: jax.Array
    sampling_logprobs: jax.Array
    hidden: jax.Array | None
    lengths: jax.Array
    stopped: jax.Array
    logprob_temperature: float = flax.struct.field(pytree_node=False, default=1.0)


# --------------------------------------------------------------------------- the program


def _cache_spec(batch: int, kv_heads: int) -> P | None:
    """KV-cache PartitionSpec under the active mesh: rows on the batch axes, heads on tensor."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return None
    names = mesh.axis_names
    batch_axes = tuple(a for a in sharding_lib.BATCH_AXES if a in names)
    rows = batch_axes if batch_axes and batch % sharding_lib.batch_multiple(mesh) == 0 else None
    heads = "tensor" if "tensor" in names and kv_heads % mesh.shape["tensor"] == 0 else None
    return P(rows, heads, None, None)


def _choose(j, logits, done, rng, stop_ids, config: SamplingConfig):
    """Token ``j`` of every row: sampled token, its log-probs, liveness and the new ``done``."""
    key = jax.random.fold_in(rng, j)
    tok, lp, slp = sample_tokens(logits, key, config)
    live = ~done
    tok = jnp.where(live, tok, jnp.int32(config.pad_token_id))
    is_stop = jnp.any(tok[:, None] == stop_ids, axis=1) & live
    return tok, jnp.where(live, lp, 0.0), jnp.where(live, slp, 0.0), live, done | is_stop


def _record(bufs, j, tok, lp, slp, live, hid):
    """Writes token ``j``'s results into the ``[B, N]`` output buffers."""
    tokens, lps, slps, live_buf, hids = bufs
    tokens = tokens.at[:, j].set(tok)
    lps = lps.at[:, j].set(lp)
    slps = slps.at[:, j].set(slp)
    live_buf = live_buf.at[:, j].set(live)
    if hids is not None:
        hids = hids.at[:, j].set(hid.astype(hids.dtype))
    return tokens, lps, slps, live_buf, hids


def _prefill_impl(graphdef: nnx.GraphDef, state: nnx.State, prompt: jax.Array,
                  prompt_mask: jax.Array, stop_ids: jax.Array, rng: jax.Array,
                  config: SamplingConfig) -> tuple[Any, ...]:
    """Prefill and completion token 0: ``(cache, token, done, buffers)``, the decode's start.

    ``stop_ids`` is ``[B, K]``: shared and per-row stop ids, -1 = unused.
    """
    model = nnx.merge(graphdef, state)
    mcfg = model.config
    b, p = prompt.shape
    n = config.max_new_tokens
    hidden, cache = model.prefill(prompt, prompt_mask, default_positions(prompt_mask),
                                  max_len=p + n, use_lora=config.use_lora)
    spec = _cache_spec(b, mcfg.num_kv_heads)
    if spec is not None:
        cache = jax.lax.with_sharding_constraint(cache, spec)
    last_hidden = hidden[:, -1]
    logits = model.logits(last_hidden, config.use_lora)
    bufs = (jnp.full((b, n), jnp.int32(config.pad_token_id), jnp.int32),
            jnp.zeros((b, n), jnp.float32), jnp.zeros((b, n), jnp.float32),
            jnp.zeros((b, n), bool),
            jnp.zeros((b, n, mcfg.hidden_size), hidden.dtype) if config.return_hidden else None)
    tok, lp, slp, live, done = _choose(0, logits, jnp.zeros((b,), bool), rng, stop_ids, config)
    return cache, tok, done, _record(bufs, 0, tok, lp, slp, live, last_hidden)


def _decode_impl(graphdef: nnx.GraphDef, state: nnx.State, prompt: jax.Array,
                 prompt_mask: jax.Array, stop_ids: jax.Array, rng: jax.Array,
                 config: SamplingConfig, cache: Any, tok: jax.Array, done: jax.Array,
                 bufs: tuple) -> dict[str, jax.Array]:
    """The while-loop decode from ``_prefill_impl``'s output, and the sample's fields."""
    model = nnx.merge(graphdef, state)
    b, p = prompt.shape
    n = config.max_new_tokens
    use_lora = config.use_lora
    kv_mask = jnp.concatenate([prompt_mask, jnp.ones((b, n), prompt_mask.dtype)], axis=1)
    next_position = jnp.sum(prompt_mask, axis=1).astype(jnp.int32)  # position of completion token 0
    # Per-layer weights, sliced once here, outside the decode loop (see Llama.forward).
    layers = model.layer_blocks()

    def cond(carry):
        j, _, _, done, _ = carry
        return (j < n) & ~jnp.all(done)

    def body(carry):
        j, cache, prev, done, bufs = carry
        positions = (next_position + j - 1)[:, None]
        hidden, cache = model.forward(prev[:, None], None, positions, cache=cache,
                                      cache_index=p + j - 1, kv_mask=kv_mask, use_lora=use_lora,
                                      layers=layers)
        h = hidden[:, 0]
        tok, lp, slp, live, done = _choose(j, model.logits(h, use_lora), done, rng, stop_ids,
                                           config)
        return j + 1, cache, tok, done, _record(bufs, j, tok, lp, slp, live, h)

    carry = (jnp.int32(1), cache, tok, done, bufs)
    _, _, _, done, bufs = jax.lax.while_loop(cond, body, carry)
    tokens, lps, slps, live, hids = bufs
    completion_mask = live.astype(jnp.int32)
    return dict(
        tokens=jnp.concatenate([prompt, tokens], axis=1),
        mask=jnp.concatenate([prompt_mask.astype(jnp.int32), completion_mask], axis=1),
        completion_tokens=tokens, completion_mask=completion_mask, logprobs=lps,
        sampling_logprobs=slps, hidden=hids, lengths=jnp.sum(completion_mask, axis=1),
        stopped=done)


def _generate_impl(graphdef: nnx.GraphDef, state: nnx.State, prompt: jax.Array,
                   prompt_mask: jax.Array, stop_ids: jax.Array, rng: jax.Array,
                   config: SamplingConfig) -> dict[str, jax.Array]:
    """Prefill + while-loop decode in one program (accelerators)."""
    args = (graphdef, state, prompt, prompt_mask, stop_ids, rng, config)
    return _decode_impl(*args, *_prefill_impl(*args))


_generate_jit = jax.jit(_generate_impl, static_argnames=("graphdef", "config"))
# XLA:CPU: the prefill's thousands of rows run faster on Eigen dots and the decode's few rows on
# YNNPACK (genalign_jax.cpu_dots), so on CPU they are two programs.  The output buffers are
# donated to the decode (they become its outputs); the cache is not returned, so XLA copies it
# into the loop once (377 MB at SmolLM2, 32 x 256: tens of ms against a ~5.7 s prefill; returning
# it donated instead measured the same, 4.35 vs 4.31 s per decode).
_prefill_cpu_jit = jax.jit(_prefill_impl, static_argnames=("graphdef", "config"),
                           compiler_options=EIGEN_CPU_DOTS)
_decode_cpu_jit = jax.jit(_decode_impl, static_argnames=("graphdef", "config"),
                          donate_argnames=("bufs",))


def _run_program(graphdef, state, tokens, mask, row_stop, rng,
                 config: SamplingConfig) -> dict[str, jax.Array]:
    """One generation: two programs on CPU, one elsewhere (same computation)."""
    args = (graphdef, state, tokens, mask, row_stop, rng, config)
    if jax.default_backend() != "cpu":
        return _generate_jit(*args)
    return _decode_cpu_jit(*args, *_prefill_cpu_jit(*args))


# --------------------------------------------------------------------------- entry point


def _state_mesh(state: Any) -> jax.sharding.Mesh | None:
    """The mesh of the first NamedSharding-placed array in ``state`` (None if on one device)."""
    for leaf in jax.tree.leaves(state):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding) and sharding.mesh.size > 1:
            return sharding.mesh
    return None


def _stop_array(shared: tuple[int, ...], per_row: Any, batch: int) -> np.ndarray:
    """``[B, K]`` stop ids (shared ones first, -1 = unused), K padded to a power of two >= 4."""
    if per_row is None:
        per_row = np.full((batch, 0), -1, np.int32)
    else:
        per_row = np.asarray(per_row, np.int32)
        if per_row.ndim == 1:
            per_row = per_row[:, None]
        if per_row.ndim != 2 or per_row.shape[0] != batch:
            raise ValueError(f"generate: row_stop_token_ids must be [batch={batch}, K], "
                             f"got shape {per_row.shape}")
    k = len(shared) + per_row.shape[1]
    out = np.full((batch, power_of_two_bucket(max(k, 1), 4)), -1, np.int32)
    out[:, :len(shared)] = shared
    out[:, len(shared):k] = per_row
    return out


def generate(model: nnx.Module | tuple[nnx.GraphDef, nnx.State], prompt_tokens: Any,
             prompt_mask: Any, config: SamplingConfig, rng: jax.Array | None = None, *,
             row_stop_token_ids: Any = None) -> SampleOutput:
    """Samples completions for a left-padded prompt batch.

    Args:
      model: a ``Llama`` (possibly sharded over a mesh, possibly with LoRA
        adapters) or its ``(graphdef, state)`` from ``nnx.split``.
      prompt_tokens: ``[B, P]`` int token ids, left-padded (numpy or jax), already shaped
        (``generator.tokenize.encode_prompts`` / ``pad_prompts``); the program runs at ``P``.
      prompt_mask: ``[B, P]`` 1 for real tokens; every row needs a real last token.
      config: a ``SamplingConfig``.
      rng: a PRNG key (ignored for greedy; defaults to ``jax.random.key(0)``).
      row_stop_token_ids: optional ``[B, K]`` extra stop ids per row (``-1`` = unused),
        added to ``config.stop_token_ids``.

    Returns:
      a ``SampleOutput``; its ``prompt_length`` is ``P``.
    """
    if not isinstance(config, SamplingConfig):
        raise ValueError(f"generate: config must be a SamplingConfig, got {type(config).__name__}")
    if isinstance(model, tuple):
        graphdef, state = model
    else:
        graphdef, state = nnx.split(model)
    mcfg = nnx.merge(graphdef, state).config if isinstance(model, tuple) else model.config
    vocab = mcfg.vocab_size
    bad = [t for t in (*config.stop_token_ids, config.pad_token_id) if t >= vocab]
    if bad:
        raise ValueError(f"generate: stop/pad token ids {bad} are outside the vocabulary ({vocab})")
    tokens, mask = check_prompt_batch(prompt_tokens, prompt_mask, vocab)
    tokens, mask = tokens.astype(np.int32), mask.astype(np.int32)
    b, p = tokens.shape
    if p + config.max_new_tokens > mcfg.max_position_embeddings:
        log.warning("prompt length %d + %d new tokens exceeds max_position_embeddings=%d",
                    p, config.max_new_tokens, mcfg.max_position_embeddings)
    row_stop = _stop_array(config.stop_token_ids, row_stop_token_ids, b)
    if rng is None:
        rng = jax.random.key(0)

    mesh = _state_mesh(state)
    context = contextlib.nullcontext()
    if mesh is not None:
        if jax.sharding.get_abstract_mesh().empty:
            context = jax.set_mesh(mesh)
        place = (sharding_lib.batch_sharding(mesh) if b % sharding_lib.batch_multiple(mesh) == 0
                 else NamedSharding(mesh, P()))
        tokens, mask, row_stop = jax.device_put((tokens, mask, row_stop), place)
    with context:
        out = _run_program(graphdef, state, tokens, mask, row_stop, rng, config.program_key())
    return SampleOutput(prompt_length=p, logprob_temperature=config.logprob_temperature, **out)
