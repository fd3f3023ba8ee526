"""Turn generator completions into synthetic examples, counting every rejection.

Each completion gets exactly one outcome, ``"kept"`` or one rejection reason, checked in this order:

1. ``empty`` - nothing with a letter or digit is left after cleaning;
2. ``too_short`` / ``too_long`` - fewer than ``min_words`` / more than ``max_words``
   whitespace-separated words;
3. ``copy_of_icl_example`` - the text equals (after normalisation) or is a near duplicate of one
   of the ICL examples shown in its own prompt;
4. ``duplicate`` - equal after normalisation to an example kept earlier in the batch;
5. ``near_duplicate`` - token-set Jaccard similarity >= ``near_duplicate_threshold`` with an
   example kept earlier in the batch.

Cleaning: leading whitespace is dropped and the completion is cut at the first stop marker
(newline, end-of-turn tokens, or a ``Label:``/``Text:`` field the model starts after its text);
a preamble line such as "Here is a new example:" is skipped (alone, it leaves nothing: empty);
list markers, echoed field names (``Text:``, ``Example 3:``), echoed labels (``Label: positive``,
``positive:``, ``(positive)``) and surrounding quotes are stripped.

Normalisation (for duplicate checks): Unicode NFKC, case-folded, every run of characters that are
not letters or digits replaced by one space.  Near duplicates compare the sets of normalised
words; the batch check is O(n^2) but done with sparse matrix products in blocks, about a second
for 10,000 completions.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from genalign_jax.data.registry import DatasetSpec, get_dataset_spec

__all__ = [
    "KEPT",
    "REASONS",
    "ParseConfig",
    "ParseResult",
    "clean_completion",
    "normalize_text",
    "parse_completions",
    "parse_prompt_completions",
]

KEPT = "kept"
REASONS = ("empty", "too_short", "too_long", "copy_of_icl_example", "duplicate", "near_duplicate")

DEFAULT_STOP_MARKERS = (
    "\n", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "</s>",
)
_FIELD_NAMES = (
    r"(?:text|example|sentence|review|question|answer|output|article|news|snippet|headline"
    r"|new example|synthetic example)"
)
_FIELD_PREFIX = re.compile(rf"^\s*{_FIELD_NAMES}(?:\s*#?\s*\d+)?\s*(?::|-\s)\s*", re.IGNORECASE)
_LIST_MARKER = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+")
_MIDLINE_FIELD = re.compile(r"\s(?:label|text)\s*:", re.IGNORECASE)
_PREAMBLE = re.compile(
    r"^\s*(?:sure|okay|ok|certainly|of course|absolutely|here(?:'s| is| are)|new example|example)\b.*:\s*$",
    re.IGNORECASE,
)
_PAIRED_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "\u00ab": "\u00bb", "`": "`"}
_LONE_QUOTES = '"\u201c\u201d'
_NON_ALNUM = re.compile(r"[\W_]+", re.UNICODE)


@dataclass(frozen=True)
class ParseConfig:
    """Settings of :func:`parse_completions` (see the module docstring for the rules).

    Attributes:
        min_words / max_words: accepted length range in whitespace-separated words.
        near_duplicate_threshold: token-set Jaccard at or above which two kept candidates are
            near duplicates (``> 1`` disables the check).
        icl_copy_threshold: same measure against the prompt's own ICL examples.
        stop_markers: the completion is cut at the first of these.
        label_names: labels the model may echo (stripped at the start or end of the text).
    """

    min_words: int = 3
    max_words: int = 200
    near_duplicate_threshold: float = 0.8
    icl_copy_threshold: float = 0.8
    stop_markers: tuple[str, ...] = DEFAULT_STOP_MARKERS
    label_names: tuple[str, ...] = ()

    @classmethod
    def for_spec(cls, spec: DatasetSpec | str, **overrides: Any) -> "ParseConfig":
        """Defaults for a dataset (its label names are stripped when echoed) plus overrides."""
        spec = get_dataset_spec(spec)
        overrides.setdefault("label_names", tuple(spec.label_names))
        return cls(**overrides)


@dataclass
class ParseResult:
    """Outcome of parsing a batch of completions.

    Attributes:
        kept_texts / kept_labels: the accepted examples and their target labels.
        kept_indices: position of each kept example in the input list.
        rejected: reason -> count, with every reason of :data:`REASONS` present.
        reasons_per_completion: ``"kept"`` or the reason, one per completion.
        cleaned_texts: the cleaned text of every completion (for logging rejected samples).
    """

    kept_texts: list[str]
    kept_labels: list[int]
    kept_indices: list[int]
    rejected: dict[str, int]
    reasons_per_completion: list[str]
    cleaned_texts: list[str] = field(default_factory=list)

    @property
    def num_kept(self) -> int:
        """Number of accepted examples."""
        return len(self.kept_texts)

    def counts(self) -> dict[str, int]:
        """``{"kept": n, <reason>: n, ...}``; the values sum to the number of completions."""
        return {KEPT: self.num_kept, **self.rejected}

    def kept_fraction(self) -> float:
        """Share of completions that became examples (0.0 for an empty batch)."""
        total = len(self.reasons_per_completion)
        return self.num_kept / total if total else 0.0


def normalize_text(text: str) -> str:
    """NFKC, case-fold, and replace every run of non-alphanumerics with one space."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_NON_ALNUM.sub(" ", text).split())


def _strip_quotes(text: str) -> str:
    changed = True
    while changed and text:
        changed = False
        text = text.strip()
        if len(text) >= 2 and text[0] in _PAIRED_QUOTES and text[-1] == _PAIRED_QUOTES[text[0]]:
            text, changed = text[1:-1], True
        elif text and text[0] in _LONE_QUOTES and not any(q in text[1:] for q in _LONE_QUOTES):
            text, changed = text[1:], True
        elif text and text[-1] in _LONE_QUOTES and not any(q in text[:-1] for q in _LONE_QUOTES):
            text, changed = text[:-1], True
    return text


def _label_patterns(label_names: Sequence[str]) -> tuple[re.Pattern[str], re.Pattern[str]] | None:
    if not label_names:
        return None
    names = "|".join(re.escape(n) for n in sorted(label_names, key=len, reverse=True))
    head = re.compile(
        rf"^\s*(?:(?:label|category|class|sentiment|topic)\s*[:=]\s*)?[\[(]?(?:{names})[\])]?"
        rf"\s*(?:[:|\u2013\u2014]|-\s)\s*",
        re.IGNORECASE,
    )
    tail = re.compile(
        rf"\s*(?:[\[(]\s*(?:(?:label|sentiment|category)\s*[:=]\s*)?(?:{names})\s*[\])]|"
        rf"[-|\u2013\u2014]\s*(?:{names}))\s*\.?\s*$",
        re.IGNORECASE,
    )
    return head, tail


def clean_completion(raw: str, config: ParseConfig = ParseConfig()) -> str:
    """Cut a completion at its stop marker and strip echoed fields, labels, list marks and quotes."""
    text = raw.lstrip()
    non_newline = [m for m in config.stop_markers if m and m != "\n"]
    for marker in non_newline:
        pos = text.find(marker)
        if pos >= 0:
            text = text[:pos]
    if "\n" in config.stop_markers:
        lines = text.split("\n")
        while len(lines) > 1 and (not lines[0].strip() or _PREAMBLE.match(lines[0])):
            lines.pop(0)
        text = "" if _PREAMBLE.match(lines[0]) else lines[0]  # a lone preamble is empty
    match = _MIDLINE_FIELD.search(text)
    if match and text[:match.start()].strip():
        text = text[:match.start()]
    patterns = _label_patterns(config.label_names)
    for _ in range(3):  # prefixes can nest: '1. Text: "Label: positive - ..."'
        before = text
        text = _LIST_MARKER.sub("", text)
        text = _FIELD_PREFIX.sub("", text)
        if patterns is not None:
            text = patterns[0].sub("", text)
            text = patterns[1].sub("", text)
        text = _strip_quotes(text)
        if text == before:
            break
    return " ".join(text.split())


def _jaccard_neighbours(token_sets: list[frozenset[str]], threshold: float,
                        block: int = 512) -> list[np.ndarray]:
    """For each i, the indices j < i whose token-set Jaccard with i is >= threshold."""
    n = len(token_sets)
    out = [np.zeros(0, dtype=np.int64) for _ in range(n)]
    if n < 2 or threshold > 1:
        return out
    from scipy import sparse  # scikit-learn's dependency; imported lazily

    vocab: dict[str, int] = {}
    rows, cols = [], []
    for i, tokens in enumerate(token_sets):
        for tok in tokens:
            rows.append(i)
            cols.append(vocab.setdefault(tok, len(vocab)))
    x = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                          shape=(n, max(len(vocab), 1)))
    sizes = np.asarray([len(t) for t in token_sets], dtype=np.float32)
    xt = x.T.tocsc()
    for start in range(0, n, block):
        stop = min(start + block, n)
        inter = (x[start:stop] @ xt).toarray()
        union = sizes[start:stop, None] + sizes[None, :] - inter
        sim = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        for r in range(stop - start):
            i = start + r
            hits = np.flatnonzero(sim[r, :i] >= threshold - 1e-9)
            if hits.size:
                out[i] = hits
    return out


def _token_jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def parse_completions(
    completions: Sequence[str],
    target_labels: Sequence[int],
    icl_texts_per_prompt: Sequence[Sequence[str]] | None = None,
    config: ParseConfig = ParseConfig(),
) -> ParseResult:
    """Parse completions into labelled examples and count why the others were rejected.

    Args:
        completions: raw generated strings (prompt excluded), one per prompt.
        target_labels: the label each prompt asked for (becomes the example's label).
        icl_texts_per_prompt: the ICL texts shown in each prompt (``Prompt.icl_texts``), for
            the copy check; ``None`` skips it.
        config: :class:`ParseConfig`.

    Returns:
        :class:`ParseResult`; ``counts()`` sums to ``len(completions)``.
    """
    n = len(completions)
    if len(target_labels) != n:
        raise ValueError(f"{n} completions but {len(target_labels)} target labels")
    if icl_texts_per_prompt is not None and len(icl_texts_per_prompt) != n:
        raise ValueError(f"{n} completions but {len(icl_texts_per_prompt)} ICL example lists")
    cleaned = [clean_completion(c, config) for c in completions]
    normed = [normalize_text(t) for t in cleaned]
    reasons: list[str | None] = [None] * n
    for i, (text, norm) in enumerate(zip(cleaned, normed)):
        words = len(text.split())
        if not norm:
            reasons[i] = "empty"
        elif words < config.min_words:
            reasons[i] = "too_short"
        elif words > config.max_words:
            reasons[i] = "too_long"
        elif icl_texts_per_prompt is not None:
            tokens = frozenset(norm.split())
            for icl in icl_texts_per_prompt[i]:
                icl_norm = normalize_text(icl)
                if icl_norm == norm or _token_jaccard(tokens, frozenset(icl_norm.split())) >= (
                    config.icl_copy_threshold
                ):
                    reasons[i] = "copy_of_icl_example"
                    break
    candidates = [i for i in range(n) if reasons[i] is None]
    neighbours = _jaccard_neighbours([frozenset(normed[i].split()) for i in candidates],
                                     config.near_duplicate_threshold)
    kept_norms: set[str] = set()
    kept_pos: set[int] = set()  # positions within `candidates`
    for pos, i in enumerate(candidates):
        if normed[i] in kept_norms:
            reasons[i] = "duplicate"
        elif any(int(j) in kept_pos for j in neighbours[pos]):
            reasons[i] = "near_duplicate"
        else:
            reasons[i] = KEPT
            kept_norms.add(normed[i])
            kept_pos.add(pos)
    final = [r if r is not None else KEPT for r in reasons]
    kept_indices = [i for i, r in enumerate(final) if r == KEPT]
    rejected = {reason: 0 for reason in REASONS}
    for r in final:
        if r != KEPT:
            rejected[r] += 1
    return ParseResult(
        kept_texts=[cleaned[i] for i in kept_indices],
        kept_labels=[int(target_labels[i]) for i in kept_indices],
        kept_indices=kept_indices,
        rejected=rejected,
        reasons_per_completion=final,
        cleaned_texts=cleaned,
    )


def parse_prompt_completions(prompts: Sequence[Any], completions: Sequence[str],
                             config: ParseConfig = ParseConfig()) -> ParseResult:
    """:func:`parse_completions` for :class:`~genalign_jax.data.prompts.Prompt` objects."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    return parse_completions(
        completions, [p.label for p in prompts], [p.icl_texts for p in prompts], config
    )
