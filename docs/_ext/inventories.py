"""Small intersphinx inventories written at build time, so that the docs link AnnData, scvi-tools, torch ...
without fetching anything: each entry is (name, role, page), the page relative to the project's docs URL.

Sphinx reads an inventory from a local file when ``intersphinx_mapping`` gives one; the format (version 2:
four header lines, then zlib-compressed lines ``name domain:role priority uri display``) is Sphinx's own
(``sphinx.util.inventory``). Only the names the API pages refer to are listed; add one when a docstring
or a type hint names a new outside object (an unresolved name renders as plain text, never as an error).
"""

from __future__ import annotations

import zlib
from pathlib import Path

# project: (documentation URL, version shown, [(name, role, page relative to the URL), ...])
# Names as Python reports them (``anndata._core.anndata.AnnData``) point to the public page, as the
# public names do: type hints are resolved to the defining module.
PROJECTS: dict[str, tuple[str, str, list[tuple[str, str, str]]]] = {
    "python": ("https://docs.python.org/3/", "3.11", [
        *[(f"collections.abc.{n}", "class", "library/collections.abc.html") for n in
          ("Sequence", "Mapping", "Callable", "Iterable", "Iterator", "Hashable")],
        ("os.PathLike", "class", "library/os.html"),
        ("pathlib.Path", "class", "library/pathlib.html"),
        *[(f"typing.{n}", "data", "library/typing.html") for n in ("Literal", "Any", "Optional", "Union")],
        ("random", "module", "library/random.html"),
        ("pickle.UnpicklingError", "exception", "library/pickle.html"),
        *[(n, "exception", "library/exceptions.html") for n in
          ("ValueError", "KeyError", "TypeError", "FileNotFoundError", "RuntimeError", "UserWarning")],
    ]),
    "numpy": ("https://numpy.org/doc/stable/", "2", [
        ("numpy.ndarray", "class", "reference/generated/numpy.ndarray.html"),
        ("numpy.random.Generator", "class", "reference/random/generator.html"),
        ("numpy.random.default_rng", "function", "reference/random/generator.html"),
        ("numpy.random.RandomState", "class", "reference/random/legacy.html"),
        ("numpy.digitize", "function", "reference/generated/numpy.digitize.html"),
        ("numpy.quantile", "function", "reference/generated/numpy.quantile.html"),
    ]),
    "pandas": ("https://pandas.pydata.org/docs/", "2", [
        *[(f"{prefix}.{n}", "class", f"reference/api/pandas.{n}.html") for n, prefix in
          (("DataFrame", "pandas"), ("Series", "pandas"), ("Index", "pandas"),
           ("DataFrame", "pandas.core.frame"), ("Series", "pandas.core.series"), ("Index", "pandas.core.indexes.base"))],
        ("pandas.Categorical", "class", "reference/api/pandas.Categorical.html"),
    ]),
    "scipy": ("https://docs.scipy.org/doc/scipy/", "1", [
        *[(f"scipy.sparse.{n}", "class", f"reference/generated/scipy.sparse.{n}.html") for n in
          ("csr_matrix", "csc_matrix", "spmatrix", "csr_array", "sparray")],
        ("scipy.sparse._csr.csr_matrix", "class", "reference/generated/scipy.sparse.csr_matrix.html"),
    ]),
    "anndata": ("https://anndata.readthedocs.io/en/stable/", "0.12", [
        ("anndata.AnnData", "class", "generated/anndata.AnnData.html"),
        ("anndata._core.anndata.AnnData", "class", "generated/anndata.AnnData.html"),
        ("anndata.AnnData.write_h5ad", "method", "generated/anndata.AnnData.write_h5ad.html"),
        ("anndata.read_h5ad", "function", "generated/anndata.io.read_h5ad.html"),
        ("anndata.experimental.read_elem_lazy", "function", "generated/anndata.experimental.read_elem_lazy.html"),
    ]),
    "mudata": ("https://mudata.readthedocs.io/stable/", "0.3", [
        ("mudata.MuData", "class", "api/generated/mudata.MuData.html"),
        ("mudata._core.mudata.MuData", "class", "api/generated/mudata.MuData.html"),
    ]),
    "scanpy": ("https://scanpy.readthedocs.io/en/stable/", "1.11", [
        *[(f"scanpy.{n}", "function", f"generated/scanpy.{n}.html") for n in
          ("pp.normalize_total", "pp.log1p", "pp.neighbors", "pp.highly_variable_genes", "tl.umap",
           "pl.umap", "pl.embedding", "read_h5ad", "datasets.pbmc68k_reduced")],
    ]),
    "scvi-tools": ("https://docs.scvi-tools.org/en/stable/", "1.4", [
        *[(f"scvi.{n}", "class", f"api/reference/scvi.{n}.html") for n in
          ("model.base.BaseModelClass", "dataloaders.DataSplitter", "train.TrainRunner", "train.Trainer",
           "train.SaveCheckpoint", "train.TrainingPlan", "data.AnnDataManager", "model.SCANVI", "model.SCVI",
           "module.base.BaseModuleClass")],
        ("scvi.model.base._base_model.BaseModelClass", "class", "api/reference/scvi.model.base.BaseModelClass.html"),
        ("scvi.train._callbacks.SaveCheckpoint", "class", "api/reference/scvi.train.SaveCheckpoint.html"),
        ("scvi.model.base.BaseModelClass.save", "method", "api/reference/scvi.model.base.BaseModelClass.html"),
        ("scvi.model.base.BaseModelClass.load", "method", "api/reference/scvi.model.base.BaseModelClass.html"),
        ("scvi.data.AnnDataManager.register_fields", "method", "api/reference/scvi.data.AnnDataManager.html"),
    ]),
    "torch": ("https://docs.pytorch.org/docs/stable/", "2.13", [
        ("torch.Tensor", "class", "tensors.html"),
        ("torch.device", "class", "tensor_attributes.html"),
        ("torch.dtype", "class", "tensor_attributes.html"),
        *[(f"torch.{n}", "class", f"generated/torch.{n}.html") for n in
          ("Generator", "nn.Module", "nn.LayerNorm", "nn.Embedding", "nn.BatchNorm1d", "nn.Linear")],
        ("torch._C.Generator", "class", "generated/torch.Generator.html"),
        ("torch.nn.modules.module.Module", "class", "generated/torch.nn.Module.html"),
        *[(f"torch.{n}", "function", f"generated/torch.{n}.html") for n in
          ("save", "load", "sort", "searchsorted", "randperm", "nn.functional.cross_entropy",
           "nn.functional.scaled_dot_product_attention")],
    ]),
    "lightning": ("https://lightning.ai/docs/pytorch/stable/", "2.6", [
        *[(f"lightning.pytorch.{n}", "class", f"api/lightning.pytorch.{n}.html") for n in
          ("callbacks.Callback", "callbacks.ModelCheckpoint", "callbacks.StochasticWeightAveraging",
           "callbacks.EarlyStopping", "core.LightningModule", "trainer.trainer.Trainer")],
        ("lightning.pytorch.callbacks.callback.Callback", "class", "api/lightning.pytorch.callbacks.Callback.html"),
        ("lightning.pytorch.Trainer", "class", "api/lightning.pytorch.trainer.trainer.Trainer.html"),
        ("lightning.pytorch.LightningModule", "class", "api/lightning.pytorch.core.LightningModule.html"),
    ]),
    "sklearn": ("https://scikit-learn.org/stable/", "1.7", [
        *[(f"sklearn.{n}", role, f"modules/generated/sklearn.{n}.html") for n, role in
          (("linear_model.LogisticRegression", "class"), ("metrics.f1_score", "function"),
           ("metrics.accuracy_score", "function"), ("metrics.roc_auc_score", "function"),
           ("model_selection.train_test_split", "function"))],
    ]),
    "matplotlib": ("https://matplotlib.org/stable/", "3", [
        ("matplotlib.axes.Axes", "class", "api/_as_gen/matplotlib.axes.Axes.html"),
        ("matplotlib.axes._axes.Axes", "class", "api/_as_gen/matplotlib.axes.Axes.html"),
        ("matplotlib.figure.Figure", "class", "api/_as_gen/matplotlib.figure.Figure.html"),
    ]),
}


def write_inventory(path: Path, project: str, version: str, entries: list[tuple[str, str, str]]) -> None:
    """Write one inventory in Sphinx's version-2 format (each entry anchored at ``#<name>``)."""
    lines = []
    for name, role, page in entries:
        domain_role = "std:label" if role == "label" else f"py:{role}"
        anchor = f"module-{name}" if role == "module" else name
        lines.append(f"{name} {domain_role} 1 {page}#{anchor} -\n")
    header = (f"# Sphinx inventory version 2\n# Project: {project}\n# Version: {version}\n"
              "# The remainder of this file is compressed using zlib.\n").encode()
    path.write_bytes(header + zlib.compress("".join(lines).encode()))


def intersphinx_mapping(folder: Path) -> dict[str, tuple[str, str]]:
    """Write every inventory into ``folder``; return the ``intersphinx_mapping`` that reads them."""
    folder.mkdir(parents=True, exist_ok=True)
    mapping = {}
    for project, (url, version, entries) in PROJECTS.items():
        path = folder / f"{project}.inv"
        write_inventory(path, project, version, entries)
        mapping[project] = (url, str(path))
    return mapping
