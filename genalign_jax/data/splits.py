"""Seeded, disjoint, optionally stratified splits into ICL pool, golden set and test set.

* ICL pool - real examples shown to the generator in prompts;
* golden set - real examples the classifier is scored on during training (the reward's golden loss);
* test set - real examples for the final evaluation only; the training loop never sees them.

:func:`make_splits` splits one dataset three ways.  :func:`build_splits` knows each registered
dataset's layout (e.g. SST-2: pool from ``train.tsv``, golden and test from ``validation.tsv``) and
draws every role from its source, disjointly from the other roles sharing that source.

Stratified sampling keeps every class's share of each role equal to its share of the remaining
source rows (largest-remainder rounding), so small golden sets of imbalanced data keep all classes.
Everything is a pure function of ``seed``: the same seed and sizes give the same row indices.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np

from genalign_jax.data.loaders import PathOrFiles, load_labelled
from genalign_jax.data.registry import DatasetSpec, get_dataset_spec

__all__ = ["ROLES", "SplitSizes", "Splits", "build_splits", "make_splits", "sample_indices"]

logger = logging.getLogger(__name__)

ROLES = ("icl_pool", "golden", "test")


@dataclass(frozen=True)
class SplitSizes:
    """Number of rows per role; ``test=None`` means "every row of its source not used by another role"."""

    icl_pool: int
    golden: int
    test: int | None = None

    @classmethod
    def from_config(cls, cfg: "SplitSizes | Mapping[str, Any] | Any") -> "SplitSizes":
        """Accept a SplitSizes, a mapping or a config object with ``icl_pool[_size]``,
        ``golden[_size]`` and ``test[_size]`` fields (e.g. an ``ml_collections.ConfigDict``)."""
        if isinstance(cfg, SplitSizes):
            return cfg

        def get(name: str) -> Any:
            for key in (name, f"{name}_size"):
                if isinstance(cfg, Mapping) and key in cfg:
                    return cfg[key]
                if not isinstance(cfg, Mapping) and hasattr(cfg, key):
                    return getattr(cfg, key)
            if name == "test":
                return None
            raise KeyError(f"split sizes: missing {name!r} (or {name + '_size'!r}) in {cfg!r}")

        return cls(icl_pool=get("icl_pool"), golden=get("golden"), test=get("test"))

    def as_dict(self) -> dict[str, int | None]:
        """Role -> size, in drawing order."""
        return {"icl_pool": self.icl_pool, "golden": self.golden, "test": self.test}


@dataclass(frozen=True)
class Splits:
    """The three role datasets (columns ``text``, ``label``) plus where their rows came from.

    ``sources[role]`` names the source split and ``indices[role]`` the row indices in it, so that
    disjointness and reproducibility can be checked and logged.
    """

    icl_pool: datasets.Dataset
    golden: datasets.Dataset
    test: datasets.Dataset
    sources: dict[str, str] = field(default_factory=dict)
    indices: dict[str, np.ndarray] = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        """Role -> number of rows."""
        return {role: len(getattr(self, role)) for role in ROLES}

    def label_counts(self, num_labels: int) -> dict[str, list[int]]:
        """Role -> per-class row counts (for logs)."""
        return {
            role: np.bincount(np.asarray(getattr(self, role)["label"][:], dtype=np.int64),
                              minlength=num_labels).tolist()
            for role in ROLES
        }


def _apportion(size: int, available: np.ndarray) -> np.ndarray:
    """Split ``size`` over classes proportionally to ``available`` (largest remainder method).

    Ties go to the lower class id.  Never exceeds ``available`` per class.
    """
    total = int(available.sum())
    if size >= total:
        return available.copy()
    exact = size * available / total  # < available for every class, since size < total
    quotas = np.floor(exact).astype(np.int64)
    short = size - int(quotas.sum())  # <= number of classes with a fractional part
    order = np.argsort(-(exact - quotas), kind="stable")
    quotas[order[:short]] += 1
    return quotas


def sample_indices(
    labels: Sequence[int] | np.ndarray,
    sizes: Sequence[int | None],
    seed: int | Sequence[int],
    stratify: bool = True,
    *,
    what: str = "dataset",
    names: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """Draw disjoint index sets of the given sizes from ``range(len(labels))``.

    A ``None`` size (allowed only last) takes all remaining rows.  Returned indices are sorted.

    Raises:
        ValueError: when the sizes add up to more rows than ``labels`` has (naming the numbers).
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    fixed = [s for s in sizes if s is not None]
    if any(s is None for s in sizes[:-1]):
        raise ValueError("only the last size may be None (meaning: all remaining rows)")
    if any(int(s) < 0 for s in fixed):
        raise ValueError(f"split sizes must be >= 0, got {list(sizes)}")
    if sum(fixed) > n:
        named = ", ".join(f"{k}={v}" for k, v in zip(names or range(len(sizes)), sizes))
        raise ValueError(
            f"requested split sizes ({named}) add up to {sum(fixed)} rows but {what} has only "
            f"{n} rows"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    out: list[np.ndarray] = []
    if not stratify:
        start = 0
        for s in sizes:
            stop = n if s is None else start + int(s)
            out.append(np.sort(order[start:stop]))
            start = stop
        return out
    num_classes = int(labels.max()) + 1 if n else 0
    # Per class, its rows in random order; each role takes the next chunk of every class.
    per_class = [order[labels[order] == c] for c in range(num_classes)]
    taken = np.zeros(num_classes, dtype=np.int64)
    for s in sizes:
        available = np.array([len(p) for p in per_class], dtype=np.int64) - taken
        quotas = available if s is None else _apportion(int(s), available)
        chunk = [per_class[c][taken[c]:taken[c] + quotas[c]] for c in range(num_classes)]
        taken += quotas
        out.append(np.sort(np.concatenate(chunk)) if chunk else np.zeros(0, dtype=np.int64))
    return out


def _candidate_rows(texts: Sequence[str], unique_texts: bool, exclude: set[str]) -> np.ndarray:
    """Rows eligible for sampling: first occurrence of each text, minus texts in ``exclude``."""
    if not unique_texts and not exclude:
        return np.arange(len(texts))
    seen: set[str] = set()
    rows: list[int] = []
    for i, text in enumerate(texts):
        if text in exclude or (unique_texts and text in seen):
            continue
        seen.add(text)
        rows.append(i)
    return np.asarray(rows, dtype=np.int64)


def _draw(
    data: datasets.Dataset,
    sizes: Sequence[int | None],
    seed: int | Sequence[int],
    stratify: bool,
    unique_texts: bool,
    exclude: set[str],
    what: str,
    names: Sequence[str],
) -> list[np.ndarray]:
    texts = data["text"][:]
    rows = _candidate_rows(texts, unique_texts, exclude)
    if len(rows) < len(texts):
        logger.info("%s: %d of %d rows are eligible (%d repeat a text already used or present)",
                    what, len(rows), len(texts), len(texts) - len(rows))
    labels = np.asarray(data["label"][:], dtype=np.int64)[rows]
    if len(rows) < len(texts):
        what = f"{what} ({len(texts)} rows, of which {len(rows)} eligible)"
    picked = sample_indices(labels, sizes, seed, stratify, what=what, names=names)
    return [np.sort(rows[i]) for i in picked]


def make_splits(
    dataset: datasets.Dataset,
    icl_pool_size: int,
    golden_size: int,
    test_size: int | None,
    seed: int,
    stratify: bool = True,
    *,
    unique_texts: bool = True,
) -> Splits:
    """Split one labelled dataset into disjoint ICL pool, golden and test sets (by row index).

    ``test_size=None`` gives the test set every remaining eligible row.  With ``unique_texts``
    (default) only the first row of each repeated text is eligible, so that no text lands in two
    roles (rotten_tomatoes repeats 56 snippets, SST-2 train 371 phrases).

    Raises:
        ValueError: when the sizes exceed the eligible rows (the message names the numbers).
    """
    idx = _draw(dataset, [icl_pool_size, golden_size, test_size], seed, stratify, unique_texts,
                set(), "the dataset", ROLES)
    parts = {role: dataset.select(i) for role, i in zip(ROLES, idx)}
    return Splits(**parts, sources={r: "dataset" for r in ROLES}, indices=dict(zip(ROLES, idx)))


def _source_seed(seed: int, source: str) -> list[int]:
    """A stable per-source seed (numpy SeedSequence entropy), independent of PYTHONHASHSEED."""
    return [int(seed), sum(ord(ch) * 31**i for i, ch in enumerate(source)) % (2**32)]


def build_splits(
    spec: DatasetSpec | str,
    data_dir: PathOrFiles,
    sizes: SplitSizes | Mapping[str, Any] | Any,
    seed: int,
    stratify: bool = True,
    *,
    unique_texts: bool = True,
    cache_dir: str | None = None,
) -> Splits:
    """Load a registered dataset's sources and draw the ICL pool, golden and test sets.

    Sources follow ``spec.split_layout``: sst2 draws the pool from train and golden/test from
    validation; ag_news and rotten_tomatoes split one file three ways; trec draws pool and golden
    from train and the test set from test.txt.  Roles sharing a source are disjoint by row.  The
    source holding the test set is drawn first, and with ``unique_texts`` (default) no text is
    put in two roles: repeated texts within a source count once, and rows of other sources whose
    text was already drawn are not eligible (TREC's train.txt repeats 10 test.txt questions).
    Each source has its own seed stream, so the draw from one source never moves another's rows.

    Args:
        spec: registry name or spec.
        data_dir: anything :func:`load_labelled` accepts (a data root such as ``/work/shared/data``,
            the dataset's own folder, ``{split: file}``, or ``None`` for embedded/hub data).
        sizes: :class:`SplitSizes` or a mapping/config with ``icl_pool``, ``golden``, ``test``.
        seed: split seed (fixed per experiment).
        stratify: keep class proportions in every role.
        unique_texts: see above.
        cache_dir: ``datasets`` cache folder.

    Raises:
        ValueError: when the sizes exceed a source's eligible rows (the message names the numbers).
    """
    spec = get_dataset_spec(spec)
    sizes = SplitSizes.from_config(sizes)
    layout = spec.split_layout.as_dict()
    size_of = sizes.as_dict()
    by_source: dict[str, list[str]] = {}
    for role in ROLES:
        by_source.setdefault(layout[role], []).append(role)
    order = sorted(by_source, key=lambda src: (layout["test"] != src, src))  # test source first
    parts: dict[str, datasets.Dataset] = {}
    indices: dict[str, np.ndarray] = {}
    used_texts: set[str] = set()
    for source in order:
        roles = by_source[source]
        data = load_labelled(spec, data_dir, split=source, cache_dir=cache_dir)
        idx = _draw(
            data, [size_of[r] for r in roles], _source_seed(seed, source), stratify, unique_texts,
            used_texts if unique_texts else set(),
            f"{spec.name!r} split {source!r}", roles,
        )
        for role, i in zip(roles, idx):
            parts[role] = data.select(i)
            indices[role] = i
            if unique_texts:
                used_texts.update(parts[role]["text"][:])
    splits = Splits(**parts, sources=dict(layout), indices=indices)
    logger.info("%s splits (seed %d): sizes %s, label counts %s", spec.name, seed, splits.sizes(),
                splits.label_counts(spec.num_labels))
    return splits
