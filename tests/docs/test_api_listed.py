"""Every public name of every namespace is listed on the API pages (docs/api/); no docstring placeholder leaks."""

import importlib
import inspect
import re
from pathlib import Path

import pytest

import genohoption as gh

API = "\n".join(p.read_text() for p in sorted((Path(__file__).resolve().parents[2] / "docs" / "api").glob("*.md")))
NAMESPACES = ["pp", "tl", "pl", "datasets", "nn", "data", "model", "module"]


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_public_names_in_api_page(namespace):
    mod = importlib.import_module(f"genohoption.{namespace}")
    missing = [n for n in mod.__all__ if f"{namespace}.{n}" not in API and not (namespace == "model" and n == "GenoHoptionModel")]
    assert not missing, f"add to docs/api/user.md or developer.md: {missing}"
    assert "GenoHoptionModel" in API


def test_no_placeholder_in_docstrings():
    for namespace in NAMESPACES:
        mod = importlib.import_module(f"genohoption.{namespace}")
        for name in mod.__all__:
            doc = inspect.getdoc(getattr(mod, name)) or ""
            assert not re.search(r"%\(\w+\)s|\{\w+\}s", doc), f"{namespace}.{name}"
    assert gh.GenoHoptionModel.__doc__


def test_model_methods_are_documented():
    """The class page lists own members only (``:no-inherited-members:``): the user API must be defined on it."""
    own = vars(gh.GenoHoptionModel)
    for name in ("setup_anndata", "train", "predict", "predict_perturbation", "get_latent_representation",
                 "save", "load"):
        assert name in own and inspect.getdoc(getattr(gh.GenoHoptionModel, name)), name
