"""An external labelled test set: any TSV/CSV/JSONL file with a text and a label column.

``load_test_file(path, spec)`` reads it with ``datasets`` (``csv`` builder for ``.csv``/``.tsv``,
``json`` for ``.jsonl``/``.json``) and maps labels through the dataset's spec: integer ids
``0..C-1`` or any label name/alias the spec accepts (case-insensitive).  A missing column, an
empty text or an unknown label raises :class:`~genalign_jax.data.loaders.DataFileError` naming the
file, the row and the column; nothing is dropped silently.
"""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import numpy as np

from genalign_jax.data.loaders import DataFileError, clean_text
from genalign_jax.data.registry import DatasetSpec

__all__ = ["load_test_file"]

_BUILDERS = {".csv": ("csv", {}), ".tsv": ("csv", {"delimiter": "\t", "quoting": 3}),
             ".jsonl": ("json", {}), ".json": ("json", {})}


def load_test_file(path: str | os.PathLike, spec: DatasetSpec, *, text_column: str = "text",
                   label_column: str = "label") -> tuple[list[str], np.ndarray]:
    """``(texts, labels)`` of a labelled file, labels as ``0..spec.num_labels-1``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--test_file: {path} not found")
    suffix = path.suffix.lower()
    if suffix not in _BUILDERS:
        raise DataFileError(path, None, None, f"unsupported file type {suffix!r}; expected one of "
                                              f"{sorted(_BUILDERS)}")
    builder, options = _BUILDERS[suffix]
    try:
        table = datasets.load_dataset(builder, data_files=str(path), split="train", **options)
    except Exception as err:  # datasets wraps parser errors in several types
        raise DataFileError(path, None, None, f"cannot be parsed as {builder}: {err}") from None
    for column in (text_column, label_column):
        if column not in table.column_names:
            raise DataFileError(path, None, column, f"no such column; the file has "
                                                    f"{table.column_names}")
    header = 1 if builder == "csv" else 0  # rows as an editor shows them
    texts, labels = [], []
    for i, (raw_text, raw_label) in enumerate(zip(table[text_column], table[label_column])):
        row = i + 1 + header
        text = clean_text(str(raw_text)) if raw_text is not None else ""
        if not text:
            raise DataFileError(path, row, text_column, "empty text")
        label = _label(raw_label, spec)
        if label is None:
            raise DataFileError(path, row, label_column,
                                f"unknown label {raw_label!r}; expected 0..{spec.num_labels - 1} "
                                f"or one of {list(spec.label_names)}")
        texts.append(text)
        labels.append(label)
    if not texts:
        raise DataFileError(path, None, None, "no rows")
    return texts, np.asarray(labels, np.int64)


def _label(raw: object, spec: DatasetSpec) -> int | None:
    if isinstance(raw, (int, np.integer)) and not isinstance(raw, bool):
        return int(raw) if 0 <= int(raw) < spec.num_labels else None
    parsed = spec.parse_label(raw)
    if parsed is None and str(raw).strip().isdigit():
        value = int(str(raw).strip())
        return value if value < spec.num_labels else None
    return parsed
