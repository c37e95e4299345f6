"""Sphinx configuration (sphinx-book-theme + myst-nb), offline: no fetch of any kind at build time.

Links to AnnData, scvi-tools, torch, ... come from small inventories written at build time
(``_ext/inventories.py``); MathJax is served from the docs' own static files (the ``doc`` extra installs
it from PyPI); the command-line page is generated from the command's parser (sphinx-argparse).
"""

from __future__ import annotations

import importlib
import shutil
import sys
from datetime import datetime
from importlib.metadata import metadata
from importlib.util import find_spec
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE / "_ext"))

from inventories import intersphinx_mapping as _local_inventories  # noqa: E402
from method_figure import draw as _draw_method_figure  # noqa: E402

_draw_method_figure(HERE / "_figures" / "method.svg")  # docs/method.md shows it; not stored in git

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
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx_autodoc_typehints",
    "sphinxarg.ext",
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
typehints_fully_qualified = False
always_document_param_types = False
myst_enable_extensions = ["colon_fence", "dollarmath", "amsmath", "substitution"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # tutorials are stored executed (tests/docs runs them); building docs runs no training
nb_merge_streams = True
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
templates_path = ["_templates"]
# tutorials/unexecuted: notebooks not yet run (stored executed, they move to tutorials/)
exclude_patterns = ["_build", "_ext", "_figures", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "tutorials/unexecuted"]
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type"]
nitpicky = False

# --- links to other projects' docs, from inventories written here (no network) ---
intersphinx_mapping = _local_inventories(HERE / "_build" / "inventories")
intersphinx_timeout = 1

# --- maths: MathJax 3 from the doc extra's files, no CDN ---
MATHJAX_FILE = "tex-svg.js"  # one self-contained file (fonts as SVG paths)
mathjax_path = f"mathjax/{MATHJAX_FILE}"

html_theme = "sphinx_book_theme"
html_title = f"genohoption {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {
    "repository_url": "https://github.com/genohoption/genohoption",
    "use_repository_button": True,
    "show_toc_level": 2,
    "max_navbar_depth": 2,  # the sidebar stops at the API pages; their tables list the functions
    "navigation_with_keys": False,
}
html_context = {"default_mode": "light"}

myst_substitutions = {"version": release}


def _mathjax_source() -> Path | None:
    """The MathJax file of the ``doc`` extra (PyPI ``django-static-mathjax``: MathJax 3.2.2, Apache-2.0)."""
    spec = find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax" / "es5" / MATHJAX_FILE
    return path if path.is_file() else None


def _copy_mathjax(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    source = _mathjax_source()
    if source is None:
        raise RuntimeError("MathJax not found: install the doc extra (pip install -e '.[doc]').")
    target = Path(app.outdir) / "_static" / "mathjax"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target / MATHJAX_FILE)


def _public_target(app, env, node, contnode):
    """Resolve ``genohoption.x._module.Name`` (type hints name the defining module) to ``genohoption.x.Name``."""
    target = node.get("reftarget", "")
    if not target.startswith("genohoption.") or "._" not in target:
        return None
    parts = target.split(".")
    public = [p for p in parts if not p.startswith("_")]
    for cut in range(len(public) - 1, 0, -1):  # genohoption.nn.BatchGraph, then genohoption.BatchGraph ...
        candidate = ".".join([*public[:cut], parts[-1]])
        try:
            module = importlib.import_module(".".join(public[:cut]))
        except ImportError:
            continue
        if parts[-1] in getattr(module, "__all__", ()):
            domain = env.get_domain("py")
            return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], candidate, node, contnode)
    return None


def setup(app):
    app.connect("build-finished", _copy_mathjax)
    app.connect("missing-reference", _public_target)
