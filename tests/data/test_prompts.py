"""Label-conditioned ICL prompts: k examples, labels, templates.

Chat rendering is the generator's (``tests/generator/test_tokenize.py``)."""

from __future__ import annotations

import logging
from collections import Counter

import datasets
import numpy as np
import pytest

from genalign_jax.data.prompts import Prompt, PromptBuilder, balanced_labels, resolve_template
from genalign_jax.data.registry import PromptTemplate, get_dataset_spec


@pytest.fixture(scope="module")
def pool() -> datasets.Dataset:
    texts = [f"negative review number {i} {{braces}}" for i in range(6)] + [
        f"positive review number {i}" for i in range(10)
    ]
    return datasets.Dataset.from_dict({"text": texts, "label": [0] * 6 + [1] * 10})


def test_same_label_prompts(pool):
    spec = get_dataset_spec("sst2")
    builder = PromptBuilder(spec, pool, k=3, same_label=True, seed=0)
    prompts = builder.build([0, 1, 1, 0], rng=0)
    assert [p.label for p in prompts] == [0, 1, 1, 0]
    for p in prompts:
        assert isinstance(p, Prompt)
        assert len(p.icl_indices) == 3 == len(set(p.icl_indices))
        assert set(p.icl_labels) == {p.label}
        assert list(p.icl_texts) == [pool["text"][i] for i in p.icl_indices]
        assert all(t in p.text for t in p.icl_texts)
        assert spec.label_descriptions[p.label] in p.text
        assert p.text.endswith("Text:")  # the model writes its example on this line
        assert p.label_name == spec.label_names[p.label]
        assert spec.task_description in p.messages[0]["content"]
        assert all(t in p.messages[1]["content"] for t in p.icl_texts)
        assert spec.label_descriptions[p.label] in p.messages[1]["content"]


def test_mixed_prompts_draw_from_all_labels(pool):
    builder = PromptBuilder("sst2", pool, k=4, same_label=False, seed=0)
    prompts = builder.build([0] * 20, rng=1)
    seen = Counter(y for p in prompts for y in p.icl_labels)
    assert set(seen) == {0, 1}
    assert all(len(p.icl_indices) == 4 for p in prompts)
    assert "Label: positive" in prompts[0].text or "Label: negative" in prompts[0].text


def test_reproducible_and_stream(pool):
    a = PromptBuilder("sst2", pool, k=2, seed=5).build([0, 1, 0, 1])
    b = PromptBuilder("sst2", pool, k=2, seed=5).build([0, 1, 0, 1])
    assert a == b
    builder = PromptBuilder("sst2", pool, k=2, seed=5)
    first, second = builder.build([1] * 8), builder.build([1] * 8)
    assert first == PromptBuilder("sst2", pool, k=2, seed=5).build([1] * 8)
    assert [p.icl_indices for p in first] != [p.icl_indices for p in second]  # stream advances
    assert builder.build([1, 0], rng=3) == builder.build([1, 0], rng=np.random.default_rng(3))


def test_zero_shot_and_small_pool(pool, caplog):
    p = PromptBuilder("sst2", pool, k=0).build([1])[0]
    assert p.icl_indices == () and "Text:" in p.text
    small = datasets.Dataset.from_dict({"text": ["a b c", "d e f", "g h i"], "label": [0, 1, 1]})
    with caplog.at_level(logging.WARNING):
        q = PromptBuilder("sst2", small, k=4).build([1])[0]
    assert sorted(q.icl_indices) == [1, 2] and "only 2 examples" in caplog.text
    with pytest.raises(ValueError, match="no example of label 1"):
        PromptBuilder("sst2", {"text": ["x"], "label": [0]}, k=1).build([1])
    with pytest.raises(ValueError, match="outside"):
        PromptBuilder("sst2", pool, k=1).build([2])


def test_balanced_labels():
    labels = balanced_labels(10, 4, rng=0)
    assert sorted(Counter(labels).values()) == [2, 2, 3, 3]
    builder = PromptBuilder("ag_news", {"text": [f"t {i}" for i in range(8)],
                                        "label": [0, 1, 2, 3] * 2}, k=1)
    assert Counter(p.label for p in builder.build_balanced(8)) == {0: 2, 1: 2, 2: 2, 3: 2}


def test_template_overrides(pool):
    spec = get_dataset_spec("sst2")
    builder = PromptBuilder(spec, pool, k=2, seed=0, template={
        "plain": "Examples:\n{examples}Now one {label_name} review:", "example": "* {text}\n",
        "chat_user": "",  # empty config values keep the dataset default
    })
    p = builder.build([1])[0]
    assert p.text.startswith("Examples:\n* positive review number")
    assert p.text.endswith("Now one positive review:")
    assert p.messages[1]["content"].startswith("Here are 2 real examples")
    only_plain = PromptBuilder(spec, pool, k=1, template="Write a {label_name} one:\nText:")
    assert only_plain.build([0])[0].text == "Write a negative one:\nText:"
    full = PromptTemplate(plain="{examples}", example="{index}. {text}")
    assert PromptBuilder(spec, pool, k=2, template=full).build([0])[0].text.startswith("1. ")


@pytest.mark.parametrize("override, match", [
    ({"plain": "Write {label}"}, "unknown field"),
    ({"example": "{label_description} {k}"}, "unknown field"),
    ({"bogus": "x"}, "unknown prompt template field"),
    ("{unclosed", "not a valid format string"),
])
def test_bad_templates(override, match):
    with pytest.raises(ValueError, match=match):
        resolve_template(get_dataset_spec("trec"), override)


def test_every_dataset_default_template_renders(pool):
    for name in ("sst2", "ag_news", "trec", "rotten_tomatoes"):
        spec = get_dataset_spec(name)
        labels = np.arange(16) % spec.num_labels
        p = PromptBuilder(spec, {"text": pool["text"][:], "label": labels}, k=2).build([0])[0]
        assert spec.label_descriptions[0] in p.text and p.text.endswith("Text:")
