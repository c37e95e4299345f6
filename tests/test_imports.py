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
from genohoption.cli import main
with contextlib.redirect_stdout(io.StringIO()) as buf:
    try:
        main(["--help"])
    except SystemExit as e:
        assert e.code == 0
assert "annotate" in buf.getvalue()
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""
    assert _run(code) == "[]"


def test_python_m_genohoption_runs_the_command_line():
    out = subprocess.run([sys.executable, "-m", "genohoption", "perturb", "--help"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "--max-cells-per-condition" in out.stdout and "--verbose" in out.stdout


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


def _package_imports() -> dict[str, set[str]]:
    """Module -> the package modules it imports (module level and inside functions; not under TYPE_CHECKING)."""
    import ast
    from pathlib import Path

    import genohoption

    root = Path(genohoption.__file__).parent
    modules = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text())
        hidden = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                  and "TYPE_CHECKING" in ast.unparse(block.test) for n in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in hidden:
                continue
            if isinstance(node, ast.ImportFrom):
                base = name.split(".") if is_package else name.split(".")[:-1]
                if node.level:
                    base = base[: len(base) - (node.level - 1)] + ([node.module] if node.module else [])
                    target = ".".join(base)
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    edges[name].add(sub if sub in modules else target)
            elif isinstance(node, ast.Import):
                edges[name].update(a.name for a in node.names)
        edges[name] = {t for t in edges[name] if t in modules and t != name}
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles_in_the_package():
    edges = _package_imports()
    assert "genohoption.model._task" in edges["genohoption.model._annotation"]  # the parser sees relative imports
    assert _cycles(edges) == []


def test_nn_does_not_import_anndata_scanpy_scvi_lightning():
    """The building blocks work on tensors alone (the CSR checks they share with _validate are NumPy-only)."""
    code = """
import sys
import genohoption.nn
print(sorted(m for m in ("anndata", "scanpy", "scvi", "lightning", "genohoption._validate") if m in sys.modules))
"""
    assert _run(code) == "[]"
