"""Dataset registry: entries, label parsing, errors."""

from __future__ import annotations

import dataclasses

import pytest

from genalign_jax.data.registry import (
    DatasetSpec,
    PromptTemplate,
    SplitLayout,
    get_dataset_spec,
    list_datasets,
    register_dataset,
)


def test_known_datasets():
    assert {"sst2", "ag_news", "trec", "rotten_tomatoes"} <= set(list_datasets())


@pytest.mark.parametrize(
    "name, labels",
    [
        ("sst2", ("negative", "positive")),
        ("ag_news", ("World", "Sports", "Business", "Sci/Tech")),
        ("trec", ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")),
        ("rotten_tomatoes", ("negative", "positive")),
    ],
)
def test_entries(name, labels):
    spec = get_dataset_spec(name)
    assert spec.label_names == labels
    assert spec.num_labels == len(labels)
    assert len(spec.label_descriptions) == len(labels)
    assert all(d and d not in labels for d in spec.label_descriptions)
    assert spec.task_description and spec.hub_id
    for source in spec.split_layout.as_dict().values():
        assert source in spec.default_files and source in spec.hub_splits
    assert isinstance(spec.prompt_template, PromptTemplate)


def test_lookup_is_case_insensitive_and_passes_specs_through():
    spec = get_dataset_spec(" SST2 ")
    assert get_dataset_spec(spec) is spec


def test_unknown_name_lists_known_names():
    with pytest.raises(KeyError) as err:
        get_dataset_spec("imdb")
    assert "imdb" in str(err.value) and "sst2" in str(err.value) and "trec" in str(err.value)


def test_label_parsing():
    ag = get_dataset_spec("ag_news")
    assert [ag.parse_label(x) for x in ("1", "2", "3", "4")] == [0, 1, 2, 3]
    assert ag.parse_label("sci/tech") == 3 and ag.parse_label(" World ") == 0
    assert ag.parse_label("5") is None and ag.parse_label("0") is None
    rt = get_dataset_spec("rotten_tomatoes")
    assert rt.parse_label("fresh") == 1 and rt.parse_label("rotten") == 0
    assert rt.parse_label("plot") is None
    trec = get_dataset_spec("trec")
    assert trec.parse_label("NUM") == 5 and trec.parse_label("enty") == 2
    sst2 = get_dataset_spec("sst2")
    assert sst2.parse_label(0) == 0 and sst2.parse_label("1") == 1 and sst2.parse_label("2") is None


def test_specs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_dataset_spec("sst2").name = "x"  # type: ignore[misc]


def test_register_custom_dataset():
    base = get_dataset_spec("sst2")
    spec = dataclasses.replace(base, name="sst2_custom_test")
    register_dataset(spec)
    assert get_dataset_spec("sst2_custom_test") is spec
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(spec)
    register_dataset(spec, overwrite=True)


def test_inconsistent_spec_rejected():
    base = get_dataset_spec("sst2")
    with pytest.raises(ValueError, match="label descriptions"):
        dataclasses.replace(base, label_descriptions=("only one",))
    with pytest.raises(ValueError, match="split_layout"):
        dataclasses.replace(base, split_layout=SplitLayout("train", "dev", "dev"))
    assert isinstance(base, DatasetSpec)
