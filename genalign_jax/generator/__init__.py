"""The generator stage: a Llama policy that writes labelled examples from ICL prompts.

Data path: ``data.Prompt`` (text or chat messages) → ``tokenize.encode_prompts`` (render,
tokenise, left-pad/left-truncate to a fixed length or a power-of-two bucket) →
``sampler.generate`` (one jitted prefill + KV-cache decode loop per shape) → ``SampleOutput``
(tokens, masks, log-probs, hidden states for PPO) → ``tokenize.decode_completions`` → text for
``data.parse_prompt_completions``.

Modules:

* ``llama_config`` — ``LlamaConfig``, presets, HF ``config.json`` parsing, RoPE frequencies;
* ``llama`` — the NNX Llama (stacked, scanned layers; KV cache; LoRA-capable linears);
* ``weights`` — HF safetensors checkpoints → ``Llama`` (``load_llama``), streamed onto a mesh;
* ``gguf`` — GGUF files (llama.cpp) → ``Llama`` and their embedded tokenizer;
* ``tokenize`` — the one owner of prompt shaping, chat rendering, stop/pad ids, decoding;
* ``logits`` — per-step token choice (temperature, top-k, nucleus, log-probs);
* ``sampler`` — ``SamplingConfig``, ``SampleOutput``, ``generate``.
"""

from __future__ import annotations

from genalign_jax.generator.gguf import (GGUFCheckpoint, llama_config_from_gguf, load_gguf_llama,
                                         load_gguf_tokenizer, open_gguf)
from genalign_jax.generator.llama import KVCache, Llama, default_positions
from genalign_jax.generator.llama_config import (PRESETS, LlamaConfig, RopeScaling,
                                                 from_hf_config, get_preset,
                                                 rope_inverse_frequencies)
from genalign_jax.generator.logits import filter_logits, sample_tokens, token_logprobs
from genalign_jax.generator.sampler import SampleOutput, SamplingConfig, generate
from genalign_jax.generator.tokenize import (build_char_tokenizer, check_prompt_batch,
                                             check_prompt_buckets, decode_completions,
                                             encode_prompts, load_tokenizer, newline_token_ids,
                                             pad_prompts, pad_token_id, power_of_two_bucket,
                                             render_chat, stop_token_ids)
from genalign_jax.generator.weights import abstract_llama, load_llama

__all__ = [
    "GGUFCheckpoint",
    "KVCache",
    "Llama",
    "LlamaConfig",
    "PRESETS",
    "RopeScaling",
    "SampleOutput",
    "SamplingConfig",
    "abstract_llama",
    "build_char_tokenizer",
    "check_prompt_batch",
    "check_prompt_buckets",
    "decode_completions",
    "default_positions",
    "encode_prompts",
    "filter_logits",
    "from_hf_config",
    "generate",
    "get_preset",
    "llama_config_from_gguf",
    "load_gguf_llama",
    "load_gguf_tokenizer",
    "load_llama",
    "load_tokenizer",
    "newline_token_ids",
    "open_gguf",
    "pad_prompts",
    "pad_token_id",
    "power_of_two_bucket",
    "render_chat",
    "rope_inverse_frequencies",
    "sample_tokens",
    "stop_token_ids",
    "token_logprobs",
]
