"""The beyond-labels tutorial runs from top to bottom (slow: it trains a model; needs nbclient + ipykernel)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# stored unexecuted until it has been run on a quiet machine (then: executed, in tutorials/ and its index)
NOTEBOOK = Path(__file__).resolve().parents[2] / "tutorials" / "unexecuted" / "beyond_labels.ipynb"


@pytest.mark.slow
def test_beyond_labels_notebook_executes(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    path = tmp_path / NOTEBOOK.name
    shutil.copy(NOTEBOOK, path)
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=1800, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
