"""Sphinx configuration (sphinx-book-theme + myst-nb), offline: no intersphinx fetches."""

from __future__ import annotations

import sys
from datetime import datetime
from importlib.metadata import metadata
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "src"))

info = metadata("genohoption")
project = "genohoption"
author = "genohoption developers"
copyright = f"{datetime.now():%Y}, {author}"
version = info["Version"]
release = version

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx_autodoc_typehints",
]
autosummary_generate = True
autodoc_member_order = "groupwise"
autodoc_inherit_docstrings = False  # torch/scvi docstrings of overridden methods are not numpydoc
autodoc_default_options = {"members": True, "inherited-members": False, "show-inheritance": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
napoleon_use_param = True
typehints_defaults = "braces"
always_document_param_types = False
myst_enable_extensions = ["colon_fence", "dollarmath", "amsmath"]
nb_execution_mode = "off"  # tutorials are stored executed; building docs runs no training
nb_merge_streams = True
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
templates_path = ["_templates"]
# tutorials/unexecuted: notebooks not yet run (stored executed, they move to tutorials/)
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "tutorials/unexecuted"]
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type"]
nitpicky = False

html_theme = "sphinx_book_theme"
html_title = "genohoption"
html_static_path = ["_static"]
html_theme_options = {"repository_url": "https://github.com/genohoption/genohoption", "use_repository_button": True}
