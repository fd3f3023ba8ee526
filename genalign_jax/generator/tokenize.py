"""The one owner of prompt shaping: text (or chat) → left-padded token batches → text again.

``encode_prompts`` renders each prompt (plain text, or through the tokenizer's chat template
with ``chat=True``), tokenises it and left-pads / left-truncates the batch to its final
length: exactly ``length`` tokens when ``length > 0`` (a fixed shape: the sampler and PPO
programs never recompile), the smallest of a fixed set of ``buckets`` that holds the longest
prompt (one compile per bucket; no padding-only columns beyond it), or a power-of-two bucket
of the longest prompt when ``length == 0``.
``pad_prompts`` does the same shaping for batches that are already token ids.  The sampler
(``generator.sampler.generate``) runs on the shape it is given and only validates it with
``check_prompt_batch``.  ``decode_completions`` turns a ``SampleOutput`` back into text.

Stop and pad ids come from here too: ``stop_token_ids`` (EOS, single-token strings, and with
``newline=True`` every token whose text contains a newline) and ``pad_token_id``.

Tokenizers are Hugging Face ``PreTrainedTokenizerBase`` objects (``load_tokenizer``, or the
built-in character tokenizer of the tiny configs, ``build_char_tokenizer``).
"""

from __future__ import annotations

import logging
import string
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

if TYPE_CHECKING:  # type-only: sampler.py imports this module
    from genalign_jax.generator.sampler import SampleOutput

log = logging.getLogger(__name__)

__all__ = [
    "load_tokenizer",
    "build_char_tokenizer",
    "char_vocab",
    "pad_token_id",
    "newline_token_ids",
    "stop_token_ids",
    "render_chat",
    "power_of_two_bucket",
    "check_prompt_buckets",
    "encode_prompts",
    "pad_prompts",
    "check_prompt_batch",
    "decode_completions",
]

Message = Mapping[str, str]
CHAR_SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")


# --------------------------------------------------------------------------- tokenizers


def load_tokenizer(name_or_path: str, **kwargs: Any) -> Any:
    """``AutoTokenizer.from_pretrained`` (local folder or HF cache)."""
    from transformers import AutoTokenizer  # lazy: transformers imports torch when installed (~4 s)
    return AutoTokenizer.from_pretrained(name_or_path, **kwargs)


def char_vocab() -> dict[str, int]:
    """Character tokenizer vocabulary: the four specials, newline, tab, printable ASCII."""
    chars = ["\n", "\t"] + [c for c in string.printable if c not in "\n\t\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate(CHAR_SPECIAL_TOKENS)}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    return vocab


def build_char_tokenizer(model_max_length: int = 1 << 20) -> Any:
    """The built-in character tokenizer of the tiny configs and tests (no download, no asset).

    Each printable ASCII character (plus newline and tab) is one id, unknown characters are
    ``<unk>``, and encoded text is wrapped as ``<s> ... </s>`` like RoBERTa.  It is a real
    ``transformers.PreTrainedTokenizerFast``, so the rest of the code treats it like any other.
    """
    # Lazy: transformers imports torch when installed (~4 s); tokenizers comes with it.
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = char_vocab()
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", cls_token="<s>", sep_token="</s>", model_max_length=model_max_length)


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its EOS id (Llama-3 has no pad token), else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    log.warning("tokenizer has neither a pad nor an EOS token; padding with id 0")
    return 0


def newline_token_ids(tokenizer: Any) -> list[int]:
    """Every token id whose text contains a newline, sorted (to end an example at a line end)."""
    return sorted(i for tok, i in tokenizer.get_vocab().items()
                  if "\n" in tokenizer.convert_tokens_to_string([tok]))


def stop_token_ids(tokenizer: Any, extra: Sequence[str] = (), *,
                   newline: bool = False) -> tuple[int, ...]:
    """Stop ids for ``SamplingConfig.stop_token_ids``, in order and without repeats.

    The EOS id(s) of ``tokenizer``, then the single-token ids of the ``extra`` strings (a
    string that is not exactly one token raises ``ValueError``), then with ``newline`` every
    token containing a newline (``newline_token_ids``).  Add ``LlamaConfig.eos_token_ids`` for
    checkpoints whose generation config lists several EOS ids, as Llama-3.1 does.
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
    if newline:
        ids.extend(newline_token_ids(tokenizer))
    return tuple(dict.fromkeys(int(i) for i in ids))


# --------------------------------------------------------------------------- rendering


def render_chat(tokenizer: Any, conversation: str | Sequence[Message], *,
                system_prompt: str | None = None) -> str:
    """A conversation rendered by the tokenizer's chat template, ending with the generation prompt.

    ``conversation`` is a list of ``{"role", "content"}`` messages (e.g. ``data.Prompt.messages``)
    or a string, taken as one user turn (after ``system_prompt`` if given).  Any tokenizer with
    a chat template works (ChatML for SmolLM2/Qwen, Llama-3's own...).  The template writes BOS
    itself when the model wants one.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no chat_template (base "
                         "checkpoints have none): use plain prompts (chat=False) or set "
                         "tokenizer.chat_template")
    if isinstance(conversation, str):
        messages: list[dict[str, str]] = [{"role": "user", "content": conversation}]
        if system_prompt is not None:
            messages.insert(0, {"role": "system", "content": system_prompt})
    else:
        messages = [dict(m) for m in conversation]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _prompt_ids(tokenizer: Any, prompt: str | Sequence[Message], chat: bool,
                system_prompt: str | None) -> list[int]:
    if chat:
        return tokenizer.encode(render_chat(tokenizer, prompt, system_prompt=system_prompt),
                                add_special_tokens=False)
    if not isinstance(prompt, str):
        raise ValueError("encode_prompts: chat=False needs string prompts, got "
                         f"{type(prompt).__name__}")
    return tokenizer.encode(prompt, add_special_tokens=True)


# --------------------------------------------------------------------------- shaping


def power_of_two_bucket(n: int, minimum: int = 16) -> int:
    """The smallest power of two that is >= ``n`` and >= ``minimum`` (few distinct shapes)."""
    if n < 1:
        raise ValueError(f"power_of_two_bucket needs a positive length, got {n}")
    return max(int(minimum), 1 << (int(n) - 1).bit_length())


def _fit(tokens: np.ndarray, mask: np.ndarray, length: int,
         pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads or left-crops a left-padded ``[B, P]`` batch to exactly ``length`` columns."""
    b, p = tokens.shape
    if p >= length:
        return tokens[:, p - length:], mask[:, p - length:]
    return (np.concatenate([np.full((b, length - p), pad_id, tokens.dtype), tokens], 1),
            np.concatenate([np.zeros((b, length - p), mask.dtype), mask], 1))


def _target_length(width: int, length: int, bucket_min: int,
                   buckets: Sequence[int] = ()) -> int:
    """Final width of a batch whose longest prompt has ``width`` tokens.

    ``length > 0`` with ``buckets``: the smallest bucket that holds ``width`` (``length`` when
    none does); ``length > 0`` alone: ``length``; ``length == 0``: the power-of-two bucket.
    """
    if length < 0:
        raise ValueError(f"prompt length must be >= 0 (0 = power-of-two buckets), got {length}")
    check_prompt_buckets(buckets, length)
    if length == 0:
        return power_of_two_bucket(width, bucket_min)
    return next((b for b in buckets if b >= width), length)


def check_prompt_buckets(buckets: Sequence[int], length: int) -> None:
    """Checks prompt ``buckets`` against the maximum prompt ``length``; raises ``ValueError``.

    Buckets need ``length > 0`` and must be strictly ascending integers in ``(0, length)``.
    """
    if not buckets:
        return
    if length <= 0:
        raise ValueError("prompt buckets need a maximum length (length > 0); length=0 "
                         "already buckets by powers of two")
    if (any(isinstance(b, bool) or not isinstance(b, int) for b in buckets)
            or list(buckets) != sorted(set(buckets)) or any(not 0 < b < length for b in buckets)):
        raise ValueError(f"prompt buckets must be strictly ascending integers in (0, {length}), "
                         f"got {tuple(buckets)}")


def pad_prompts(tokens: Any, mask: Any, *, length: int = 0, pad_id: int = 0,
                bucket_min: int = 16,
                buckets: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray, int]:
    """Shapes an already tokenised left-padded batch like ``encode_prompts`` does.

    ``length > 0``: left-pad / left-truncate to exactly ``length`` columns, or with ``buckets``
    to the smallest bucket holding the longest prompt; ``length == 0``: left-pad the width up
    to ``power_of_two_bucket(width, bucket_min)``.  Returns ``int32``
    ``(tokens, mask, number of prompts that lost tokens)``.
    """
    tokens, mask = check_prompt_batch(tokens, mask, caller="pad_prompts")
    tokens, mask = np.asarray(tokens, np.int32), np.asarray(mask, np.int32)
    width = int(mask.sum(axis=1).max()) if buckets else tokens.shape[1]
    target = _target_length(width, length, bucket_min, buckets)
    truncated = int((mask.sum(axis=1) > target).sum())
    tokens, mask = _fit(tokens, mask, target, pad_id)
    return tokens, mask, truncated


def encode_prompts(tokenizer: Any, prompts: Sequence[str] | Sequence[Sequence[Message]], *,
                   chat: bool = False, length: int = 0, system_prompt: str | None = None,
                   bucket_min: int = 16, buckets: Sequence[int] = (),
                   pad_id: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Renders, tokenises and left-pads a batch of prompts into ``int32 [B, L]`` tokens and mask.

    Args:
      tokenizer: a Hugging Face tokenizer.
      prompts: strings, or (with ``chat=True``) conversations as lists of
        ``{"role", "content"}`` messages; strings are then wrapped as one user turn.
      chat: render through the tokenizer's chat template (``render_chat``).
      length: ``> 0``: exactly this many tokens per row, longer prompts keep their last
        ``length`` tokens (the instruction is at the end); ``0``: no truncation, the width is
        the power-of-two bucket (``>= bucket_min``) of the longest prompt.
      buckets: with ``length > 0``, strictly ascending widths below ``length``: the batch
        takes the smallest one that holds its longest prompt (``length`` when none does), so
        a program compiles once per bucket and no prompt is truncated below ``length``.
        Dropping all-padding columns changes no result: positions come from the mask.
      system_prompt: with ``chat=True`` and string prompts, a system turn to prepend.
      bucket_min: smallest bucket when ``length == 0``.
      pad_id: padding id (default ``pad_token_id(tokenizer)``).

    Returns:
      ``(tokens, mask, truncated)``: ``truncated`` counts prompts that lost tokens.
    """
    if isinstance(prompts, str):
        raise ValueError("encode_prompts: pass a list of prompts, not a single string")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("encode_prompts: empty prompt batch")
    pad = pad_token_id(tokenizer) if pad_id is None else int(pad_id)
    rows = []
    for i, prompt in enumerate(prompts):
        ids = _prompt_ids(tokenizer, prompt, chat, system_prompt)
        if not ids:
            raise ValueError(f"encode_prompts: prompt {i} ({prompt!r}) encodes to no tokens")
        rows.append(ids)
    longest = max(len(r) for r in rows)
    target = _target_length(longest, length, bucket_min, buckets)
    tokens = np.full((len(rows), longest), pad, np.int32)
    mask = np.zeros((len(rows), longest), np.int32)
    for i, ids in enumerate(rows):
        tokens[i, longest - len(ids):] = ids
        mask[i, longest - len(ids):] = 1
    truncated = sum(len(r) > target for r in rows)
    if truncated:
        log.debug("%d of %d prompts left-truncated to %d tokens", truncated, len(rows), target)
    tokens, mask = _fit(tokens, mask, target, pad)
    return tokens, mask, truncated


def check_prompt_batch(tokens: Any, mask: Any, vocab_size: int | None = None, *,
                       caller: str = "generate") -> tuple[Any, Any]:
    """Checks that ``(tokens, mask)`` is a left-padded ``[B, P]`` batch; returns them as arrays.

    Every row needs a real last token and no holes (a 0 after a 1); with ``vocab_size`` the
    real ids must lie in ``[0, vocab_size)``.  Arrays that are not fully addressable (multi-host)
    are only checked for shape.  Raises ``ValueError`` naming ``caller``.
    """
    if tokens is None or mask is None:
        raise ValueError(f"{caller}: prompt_tokens and prompt_mask are both required")
    tokens = tokens if isinstance(tokens, jax.Array) else np.asarray(tokens)
    mask = mask if isinstance(mask, jax.Array) else np.asarray(mask)
    if tokens.ndim != 2:
        raise ValueError(f"{caller}: prompt_tokens must be [batch, length], "
                         f"got shape {tokens.shape}")
    if mask.shape != tokens.shape:
        raise ValueError(f"{caller}: prompt_mask shape {mask.shape} does not match "
                         f"prompt_tokens shape {tokens.shape}")
    if 0 in tokens.shape:
        raise ValueError(f"{caller}: empty prompt batch (shape {tokens.shape})")
    if not all(getattr(x, "is_fully_addressable", True) for x in (tokens, mask)):
        return tokens, mask
    t, m = np.asarray(tokens), np.asarray(mask)
    if not np.isin(m, (0, 1)).all():
        raise ValueError(f"{caller}: prompt_mask must contain only 0 and 1")
    if not (m[:, -1] == 1).all():
        empty = np.flatnonzero(m.sum(1) == 0)
        raise ValueError(
            f"{caller}: prompts must be left-padded with a real last token; rows "
            f"{np.flatnonzero(m[:, -1] == 0)[:8].tolist()} end in padding"
            + (f" (rows {empty[:8].tolist()} are empty)" if empty.size else "")
            + " — shape them with genalign_jax.generator.encode_prompts or pad_prompts")
    if (np.diff(m, axis=1) < 0).any():
        raise ValueError(f"{caller}: prompt_mask has holes (a 0 after a 1); prompts must be "
                         "left-padded")
    real = t[m == 1]
    if vocab_size is not None and real.size and (real.min() < 0 or real.max() >= vocab_size):
        raise ValueError(f"{caller}: prompt token ids must be in [0, {vocab_size}), got "
                         f"range [{real.min()}, {real.max()}]")
    return tokens, mask


# --------------------------------------------------------------------------- decoding


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
