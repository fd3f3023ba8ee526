"""Label-conditioned in-context-learning prompts for the generator.

Each prompt asks the generator to "write one new example of <label description>" after showing
``k`` real examples from the ICL pool, either all of the target label (``same_label=True``) or
drawn from the whole pool (mixed).  Every :class:`Prompt` carries both forms:

* ``text`` - the plain form for base checkpoints.  It ends with ``Text:``; the model writes its
  example on that line, and the parser cuts the completion at the first newline (stop convention);
* ``messages`` - the chat form (system + user message) for instruct checkpoints; the generator
  renders it with the tokenizer's own chat template (``genalign_jax.generator.render_chat``, or
  ``encode_prompts(..., chat=True)``).

It also records the ICL pool rows it showed, so that the parser can reject copies of them.
Templates (:class:`~genalign_jax.data.registry.PromptTemplate`) come from the dataset spec and
can be overridden from config with a mapping of fields, a full template or a plain-form string.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from genalign_jax.data.registry import DatasetSpec, PromptTemplate, get_dataset_spec

__all__ = [
    "Prompt",
    "PromptBuilder",
    "balanced_labels",
    "resolve_template",
]

logger = logging.getLogger(__name__)

PROMPT_FIELDS = frozenset({"task_description", "label_name", "label_description", "examples", "k"})
EXAMPLE_FIELDS = frozenset({"text", "label_name", "label_description", "index"})
_TEMPLATE_FIELDS = {
    "plain": PROMPT_FIELDS,
    "example": EXAMPLE_FIELDS,
    "chat_system": PROMPT_FIELDS,
    "chat_user": PROMPT_FIELDS,
}


@dataclass(frozen=True)
class Prompt:
    """One generation request: target label, the ICL examples shown, and both prompt forms.

    Attributes:
        label: target label id (the label the synthetic example will get).
        label_name: its name.
        text: the plain prompt (ends with ``Text:``).
        messages: chat messages (``role``/``content`` dicts) for ``generator.render_chat``.
        icl_indices: rows of the ICL pool shown in the prompt, in prompt order.
        icl_texts: their texts (the parser rejects copies of these).
        icl_labels: their labels.
    """

    label: int
    label_name: str
    text: str
    messages: tuple[dict[str, str], ...]
    icl_indices: tuple[int, ...]
    icl_texts: tuple[str, ...]
    icl_labels: tuple[int, ...]


def _check_fields(name: str, template: str) -> None:
    allowed = _TEMPLATE_FIELDS[name]
    try:
        used = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ValueError(f"prompt template {name!r} is not a valid format string: {exc}") from exc
    unknown = sorted(f for f in used if f.split(".")[0].split("[")[0] not in allowed)
    if unknown:
        raise ValueError(
            f"prompt template {name!r} uses unknown field(s) {unknown}; allowed: {sorted(allowed)} "
            "(write literal braces as {{ and }})"
        )


def resolve_template(
    spec: DatasetSpec, override: PromptTemplate | Mapping[str, str] | str | None = None
) -> PromptTemplate:
    """Merge a config override into the spec's template and validate every field.

    ``override`` may be ``None`` (spec default), a full :class:`PromptTemplate`, a mapping of
    some of its fields (``plain``, ``example``, ``chat_system``, ``chat_user``; empty values are
    ignored, so config defaults of ``""`` mean "keep the dataset's"), or a string that replaces
    the plain form only.
    """
    template = spec.prompt_template
    if isinstance(override, PromptTemplate):
        template = override
    elif isinstance(override, str):
        if override:
            template = template.replace(plain=override)
    elif override is not None:
        changes = {k: v for k, v in dict(override).items() if v}
        unknown = sorted(set(changes) - set(_TEMPLATE_FIELDS))
        if unknown:
            raise ValueError(
                f"unknown prompt template field(s) {unknown}; known: {sorted(_TEMPLATE_FIELDS)}"
            )
        template = template.replace(**changes)
    for name in _TEMPLATE_FIELDS:
        _check_fields(name, getattr(template, name))
    return template


def balanced_labels(n: int, num_labels: int, rng: np.random.Generator | int | None = None) -> list[int]:
    """``n`` target labels, as even as possible over the classes, in random order."""
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    labels = np.arange(n) % num_labels
    return gen.permutation(labels).tolist()


class PromptBuilder:
    """Builds label-conditioned ICL prompts from an ICL pool.

    Args:
        spec: registry name or spec (label names/descriptions, task description, template).
        icl_pool: the pool of real examples: a ``datasets.Dataset`` or mapping with ``text`` and
            ``label`` columns (e.g. ``Splits.icl_pool``).
        k: examples per prompt (0 = zero-shot).
        same_label: show only examples of the target label; otherwise draw from the whole pool.
        seed: seed of the builder's own random stream (used when ``build`` gets no ``rng``).
        template: config override, see :func:`resolve_template`.
        use_system_message: put the instructions in a system message (turn off for chat
            templates without a system role; the system text then opens the user message).
    """

    def __init__(
        self,
        spec: DatasetSpec | str,
        icl_pool: Any,
        k: int = 4,
        same_label: bool = True,
        seed: int = 0,
        template: PromptTemplate | Mapping[str, str] | str | None = None,
        use_system_message: bool = True,
    ) -> None:
        self.spec = get_dataset_spec(spec)
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        self.k = int(k)
        self.same_label = bool(same_label)
        self.template = resolve_template(self.spec, template)
        self.use_system_message = use_system_message
        self._rng = np.random.default_rng(seed)
        self.texts: list[str] = list(icl_pool["text"][:])
        self.labels = np.asarray(icl_pool["label"][:], dtype=np.int64)
        if len(self.texts) != len(self.labels):
            raise ValueError("icl_pool: text and label columns differ in length")
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= self.spec.num_labels):
            raise ValueError(
                f"icl_pool has labels outside 0..{self.spec.num_labels - 1} for {self.spec.name!r}"
            )
        self._by_label = [np.flatnonzero(self.labels == c) for c in range(self.spec.num_labels)]
        if self.k and len(self.texts) < self.k and not self.same_label:
            raise ValueError(f"the ICL pool has {len(self.texts)} rows, fewer than k={self.k}")
        self._warned: set[int] = set()

    def _pick(self, label: int, rng: np.random.Generator) -> np.ndarray:
        if self.k == 0:
            return np.zeros(0, dtype=np.int64)
        candidates = self._by_label[label] if self.same_label else np.arange(len(self.texts))
        if len(candidates) == 0:
            raise ValueError(
                f"the ICL pool has no example of label {label} ({self.spec.label_names[label]!r}) "
                "for a same-label prompt; enlarge the pool or use mixed examples"
            )
        if len(candidates) < self.k and label not in self._warned:
            self._warned.add(label)
            logger.warning("ICL pool has only %d examples of label %r (k=%d); showing all of them",
                           len(candidates), self.spec.label_names[label], self.k)
        return rng.choice(candidates, size=min(self.k, len(candidates)), replace=False)

    def _render_examples(self, rows: np.ndarray) -> str:
        parts = []
        for pos, row in enumerate(rows):
            y = int(self.labels[row])
            parts.append(self.template.example.format(
                text=self.texts[row], label_name=self.spec.label_names[y],
                label_description=self.spec.label_descriptions[y], index=pos + 1,
            ))
        return "\n".join(p.rstrip("\n") for p in parts) + ("\n" if parts else "")

    def build_one(self, label: int, rng: np.random.Generator) -> Prompt:
        """Build the prompt for one target label, drawing its ICL examples from ``rng``."""
        label = int(label)
        if not 0 <= label < self.spec.num_labels:
            raise ValueError(f"label {label} is outside 0..{self.spec.num_labels - 1} "
                             f"for {self.spec.name!r}")
        rows = self._pick(label, rng)
        fields = dict(
            task_description=self.spec.task_description,
            label_name=self.spec.label_names[label],
            label_description=self.spec.label_descriptions[label],
            examples=self._render_examples(rows),
            k=len(rows),
        )
        system = self.template.chat_system.format(**fields).strip()
        user = self.template.chat_user.format(**fields).strip()
        if self.use_system_message:
            messages = ({"role": "system", "content": system}, {"role": "user", "content": user})
        else:
            messages = ({"role": "user", "content": f"{system}\n\n{user}"},)
        return Prompt(
            label=label,
            label_name=self.spec.label_names[label],
            text=self.template.plain.format(**fields),
            messages=messages,
            icl_indices=tuple(int(r) for r in rows),
            icl_texts=tuple(self.texts[r] for r in rows),
            icl_labels=tuple(int(self.labels[r]) for r in rows),
        )

    def build(
        self, label_ids: Sequence[int], rng: np.random.Generator | int | None = None
    ) -> list[Prompt]:
        """One prompt per target label in ``label_ids``.

        ``rng`` may be a Generator, a seed, or ``None`` to continue the builder's own stream
        (seeded at construction, so a run's sequence of prompts is reproducible).
        """
        gen = self._rng if rng is None else (
            rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        )
        return [self.build_one(label, gen) for label in label_ids]

    def build_balanced(self, n: int, rng: np.random.Generator | int | None = None) -> list[Prompt]:
        """``n`` prompts with target labels spread evenly over the classes (random order)."""
        gen = self._rng if rng is None else (
            rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        )
        return self.build(balanced_labels(n, self.spec.num_labels, gen), gen)
