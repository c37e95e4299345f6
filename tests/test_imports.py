"""Layering at import time: pp / tl / datasets / pl and the command line never load torch, scvi or Lightning."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "scvi", "lightning")


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_light_namespaces_do_not_import_torch_scvi_lightning():
    code = f"""
import sys
import numpy as np, anndata as ad, pandas as pd
import genohoption as gh
from genohoption import datasets, pl, pp, tl
a = ad.AnnData(np.random.default_rng(0).random((20, 6)).astype("float32"))
a.var_names = ["MYC", "ABCB1", "G2", "G3", "G4", "G5"]
gh.pp.build_gene_graph(a, min_corr=0.0, n_neighbors=2)
assert a.uns["gene_graph"]["n_prior_edges"] >= 1
a.obs["cell_type"] = pd.Categorical(["x", "y"] * 10)
a.obs["genohoption_prediction"] = a.obs["cell_type"]
assert gh.tl.annotation_metrics(a, "cell_type")["accuracy"] == 1.0
assert gh.tl.parse_condition("ctrl+KLF1") == ("KLF1",)
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""
    assert _run(code) == "[]"


def test_command_line_help_does_not_import_torch():
    code = f"""
import contextlib, io, sys
from genohoption.__main__ import main
with contextlib.redirect_stdout(io.StringIO()) as buf:
    try:
        main(["--help"])
    except SystemExit as e:
        assert e.code == 0
assert "annotate" in buf.getvalue()
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""
    assert _run(code) == "[]"


def test_model_loads_on_first_access():
    code = """
import sys
import genohoption as gh
assert "torch" not in sys.modules
assert {"pp", "tl", "pl", "datasets", "GenoHoptionModel"} <= set(dir(gh))
model_cls = gh.GenoHoptionModel
assert model_cls.__name__ == "GenoHoptionModel" and "torch" in sys.modules
print("ok")
"""
    assert _run(code) == "ok"


def test_unknown_attribute():
    import genohoption as gh

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gh.nope  # noqa: B018


def test_nn_does_not_import_anndata_scanpy_scvi_lightning():
    """The building blocks work on tensors alone (the CSR checks they share with _validate are NumPy-only)."""
    code = """
import sys
import genohoption.nn
print(sorted(m for m in ("anndata", "scanpy", "scvi", "lightning", "genohoption._validate") if m in sys.modules))
"""
    assert _run(code) == "[]"
