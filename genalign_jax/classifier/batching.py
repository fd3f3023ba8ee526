"""Classifier text batching: tokenising texts and padding them into bucketed, fixed-shape batches.

Compiled functions are keyed by input shapes, so every batch is padded to a
fixed number of rows and to a length from a small set of buckets: a run sees
at most ``len(buckets)`` shapes, whatever its texts.  Padding rows carry mask 0
and weight 0, so no example is dropped or counted twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_BUCKETS",
    "EncodedTexts",
    "Batch",
    "encode_texts",
    "normalise_buckets",
    "bucket_length",
    "make_batch",
    "ordered_batches",
    "array_batches",
    "check_labelled_texts",
]

DEFAULT_BUCKETS: tuple[int, ...] = (16, 32, 64, 128, 256, 512)


@dataclasses.dataclass(frozen=True)
class EncodedTexts:
    """Unpadded token ids of each text (truncated to ``max_length``)."""

    ids: tuple[np.ndarray, ...]
    pad_id: int
    max_length: int

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), np.int64, len(self.ids))


@dataclasses.dataclass(frozen=True)
class Batch:
    """A padded batch: ``tokens``/``mask`` ``[rows, length]``; ``index`` maps real rows to examples.

    ``valid`` is 1 for real rows and 0 for padding rows; ``index[valid == 0]`` is -1.
    """

    tokens: np.ndarray
    mask: np.ndarray
    index: np.ndarray
    valid: np.ndarray


def encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> EncodedTexts:
    """Tokenises ``texts`` with special tokens, truncating to ``max_length`` tokens.

    ``tokenizer`` is a ``transformers`` tokenizer (``AutoTokenizer``) that has a pad token.
    """
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, not a single string")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise ValueError(f"texts[{bad}] is {type(texts[bad]).__name__}, expected str")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has no pad token (set tokenizer.pad_token)")
    if len(texts) == 0:
        return EncodedTexts((), int(pad_id), int(max_length))
    encoded = tokenizer([str(t) for t in texts], truncation=True, max_length=int(max_length),
                        padding=False, add_special_tokens=True)["input_ids"]
    ids = tuple(np.asarray(row, np.int32) for row in encoded)
    return EncodedTexts(ids, int(pad_id), int(max_length))


def normalise_buckets(buckets: Sequence[int], max_length: int) -> tuple[int, ...]:
    """Sorted buckets no longer than ``max_length``, always ending with ``max_length``."""
    if any(int(b) <= 0 for b in buckets):
        raise ValueError(f"length_buckets must be positive, got {tuple(buckets)}")
    kept = sorted({int(b) for b in buckets if int(b) < max_length})
    return tuple(kept) + (int(max_length),)


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``length`` tokens (buckets from ``normalise_buckets``)."""
    for b in buckets:
        if length <= b:
            return b
    return buckets[-1]


def make_batch(encoded: EncodedTexts, index: np.ndarray, rows: int,
               buckets: Sequence[int]) -> Batch:
    """Pads the examples ``index`` into ``rows`` rows of a bucketed length."""
    index = np.asarray(index, np.int64)
    if len(index) > rows:
        raise ValueError(f"make_batch: {len(index)} examples do not fit in {rows} rows")
    longest = max((len(encoded.ids[i]) for i in index), default=1)
    length = bucket_length(longest, buckets)
    tokens = np.full((rows, length), encoded.pad_id, np.int32)
    mask = np.zeros((rows, length), np.int32)
    for row, i in enumerate(index):
        seq = encoded.ids[i]
        tokens[row, :len(seq)] = seq
        mask[row, :len(seq)] = 1
    full_index = np.full((rows,), -1, np.int64)
    full_index[:len(index)] = index
    valid = (full_index >= 0).astype(np.int32)
    return Batch(tokens, mask, full_index, valid)


def ordered_batches(encoded: EncodedTexts, rows: int, buckets: Sequence[int],
                    sort_by_length: bool = True) -> Iterator[Batch]:
    """Every example exactly once, in batches of ``rows`` (last one padded).

    With ``sort_by_length`` similar lengths share a batch, so padding is small;
    callers scatter results back with ``Batch.index``.
    """
    n = len(encoded)
    order = np.argsort(encoded.lengths, kind="stable") if sort_by_length else np.arange(n)
    for start in range(0, n, rows):
        yield make_batch(encoded, order[start:start + rows], rows, buckets)


def array_batches(tokens: np.ndarray, mask: np.ndarray, rows: int,
                  pad_id: int) -> Iterator[Batch]:
    """Already tokenised ``[N, T]`` arrays in batches of ``rows`` (last one padded), in order."""
    tokens, mask = np.asarray(tokens, np.int32), np.asarray(mask, np.int32)
    if tokens.shape != mask.shape or tokens.ndim != 2:
        raise ValueError(f"tokens {tokens.shape} and mask {mask.shape} must be equal [N, T] arrays")
    for start in range(0, len(tokens), rows):
        index = np.arange(start, min(start + rows, len(tokens)))
        pad = rows - len(index)
        yield Batch(np.pad(tokens[index], ((0, pad), (0, 0)), constant_values=pad_id),
                    np.pad(mask[index], ((0, pad), (0, 0))),
                    np.concatenate([index, np.full(pad, -1)]),
                    np.concatenate([np.ones(len(index), np.int32), np.zeros(pad, np.int32)]))


def check_labelled_texts(texts: Sequence[str], labels: Sequence[int] | np.ndarray,
                         num_labels: int, what: str) -> np.ndarray:
    """Validates a labelled text set (``what`` names the caller); returns labels as int32."""
    if isinstance(texts, str):
        raise ValueError(f"{what}: texts must be a sequence of strings, not a single string")
    if len(texts) == 0:
        raise ValueError(f"{what}: the example set is empty (no texts)")
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != len(texts):
        raise ValueError(f"{what}: texts and labels have different lengths "
                         f"({len(texts)} texts, {y.shape[0] if y.ndim else 'scalar'} labels)")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise ValueError(f"{what}: labels must be integers, got dtype {y.dtype}")
    bad = np.flatnonzero((y < 0) | (y >= num_labels))
    if bad.size:
        raise ValueError(f"{what}: label {y[bad[0]]} at index {bad[0]} is out of range "
                         f"[0, {num_labels}) ({bad.size} bad label(s))")
    return y.astype(np.int32)
