"""Prompt strings to left-padded token batches, and completions back to strings.

``encode_prompts`` produces exactly what ``genalign_jax.sampling.generate``
expects: ``int32`` tokens and a 0/1 mask, left-padded to a power-of-two
length bucket, optionally rendered through the tokenizer's chat template (for
instruct checkpoints).  ``decode_completions`` turns a ``SampleOutput`` back
into text, dropping padding, the stop token and special tokens.

Tokenizers are Hugging Face ``PreTrainedTokenizerBase`` objects (e.g. from
``AutoTokenizer.from_pretrained``); nothing here imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from genalign_jax.sampling import SampleOutput, bucket_length

log = logging.getLogger(__name__)

__all__ = ["load_tokenizer", "pad_token_id", "stop_token_ids", "encode_prompts",
           "decode_completions"]

Message = Mapping[str, str]


def load_tokenizer(name_or_path: str, **kwargs: Any):
    """``AutoTokenizer.from_pretrained`` (local folder or HF cache), kept lazy-imported."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(name_or_path, **kwargs)


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its EOS id (Llama-3 has no pad token), else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    log.warning("tokenizer has neither a pad nor an EOS token; padding with id 0")
    return 0


def stop_token_ids(tokenizer: Any, extra: Sequence[str] = ()) -> tuple[int, ...]:
    """EOS id(s) of ``tokenizer`` plus the single-token ids of ``extra`` strings (e.g. ``"\\n"``).

    Useful for ``SamplingConfig.stop_token_ids`` (add ``LlamaConfig.eos_token_ids``
    for checkpoints whose generation config lists several EOS ids, as Llama-3.1
    does); an ``extra`` string that is not exactly one token raises ``ValueError``.
    """
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    if eos is not None:
        ids.extend(eos if isinstance(eos, (list, tuple)) else [eos])
    for text in extra:
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(f"stop string {text!r} is {len(encoded)} tokens {encoded}, "
                             "expected exactly one")
        ids.append(encoded[0])
    return tuple(dict.fromkeys(int(i) for i in ids))


def _render(tokenizer: Any, prompt: str | Sequence[Message], chat: bool,
            system_prompt: str | None) -> tuple[str, bool]:
    """Prompt text and whether the tokenizer should add its special tokens."""
    if not chat:
        if not isinstance(prompt, str):
            raise ValueError("encode_prompts: chat=False needs string prompts, got "
                             f"{type(prompt).__name__}")
        return prompt, True
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("encode_prompts: chat=True but the tokenizer has no chat_template "
                         "(base checkpoints have none; use chat=False)")
    if isinstance(prompt, str):
        messages: list[Message] = [{"role": "user", "content": prompt}]
        if system_prompt is not None:
            messages.insert(0, {"role": "system", "content": system_prompt})
    else:
        messages = list(prompt)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # The template writes BOS itself when the model wants one.
    return text, False


def encode_prompts(tokenizer: Any, prompts: Sequence[str] | Sequence[Sequence[Message]], *,
                   chat: bool = False, system_prompt: str | None = None, bucket_min: int = 16,
                   bucket: bool = True, max_length: int | None = None,
                   pad_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Tokenises a batch of prompts into left-padded ``(tokens, mask)`` ``int32 [B, P]``.

    Args:
      tokenizer: a Hugging Face tokenizer.
      prompts: strings, or (with ``chat=True``) chat conversations as lists of
        ``{"role", "content"}`` messages; plain strings are wrapped as one user turn.
      chat: render through ``tokenizer.apply_chat_template`` with the generation prompt.
      system_prompt: with ``chat=True`` and string prompts, a system turn to prepend.
      bucket_min, bucket: pad the length up to a power of two >= ``bucket_min``
        (same buckets as ``SamplingConfig.prompt_bucket_min``).
      max_length: keep at most the last ``max_length`` tokens of each prompt
        (left truncation keeps the end, where the instruction usually is).
      pad_id: padding id (default ``pad_token_id(tokenizer)``).
    """
    if isinstance(prompts, str):
        raise ValueError("encode_prompts: pass a list of prompts, not a single string")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("encode_prompts: empty prompt batch")
    if max_length is not None and max_length < 1:
        raise ValueError(f"encode_prompts: max_length must be >= 1, got {max_length}")
    pad = pad_token_id(tokenizer) if pad_id is None else int(pad_id)
    rows = []
    for i, prompt in enumerate(prompts):
        text, add_special = _render(tokenizer, prompt, chat, system_prompt)
        ids = tokenizer.encode(text, add_special_tokens=add_special)
        if not ids:
            raise ValueError(f"encode_prompts: prompt {i} ({text!r}) encodes to no tokens")
        if max_length is not None and len(ids) > max_length:
            log.debug("prompt %d truncated from %d to %d tokens", i, len(ids), max_length)
            ids = ids[-max_length:]
        rows.append(ids)
    longest = max(len(r) for r in rows)
    length = bucket_length(longest, bucket_min) if bucket else longest
    tokens = np.full((len(rows), length), pad, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, ids in enumerate(rows):
        tokens[i, length - len(ids):] = ids
        mask[i, length - len(ids):] = 1
    return tokens, mask


def decode_completions(tokenizer: Any, out: SampleOutput, *, strip_stop: bool = True,
                       skip_special_tokens: bool = True) -> list[str]:
    """The generated text of each row of ``out``.

    Padding after a row finished is dropped; with ``strip_stop`` the final stop
    token (EOS, newline...) of rows that stopped is dropped too, and special
    tokens are skipped by the tokenizer when ``skip_special_tokens``.
    """
    tokens = np.asarray(out.completion_tokens)
    lengths = np.asarray(out.lengths)
    stopped = np.asarray(out.stopped)
    texts = []
    for row, n, stop in zip(tokens, lengths, stopped):
        n = int(n) - (1 if strip_stop and stop else 0)
        texts.append(tokenizer.decode(row[:max(n, 0)].tolist(),
                                      skip_special_tokens=skip_special_tokens))
    return texts
