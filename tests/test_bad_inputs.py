"""Bad and awkward inputs, as a careful user and a hostile file would give them (issue 14).

Every case of the tables names what it expects: an exception (type and a message fragment that names the
fix), a warning (type and fragment), or acceptance. After the call, the caller's AnnData objects (X, obs,
var, names, uns, layers, obsm, varp, obsp) and every file of the case's directory are compared with a copy
taken just before it: a refused call changes nothing, an accepted one only what it documents. Cases that
crashed the interpreter before issue 14 (malformed CSR structures reaching C code) run in a subprocess, so
that a segfault fails those tests instead of the whole run.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import genohoption as gh

SMALL = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_hid": 32}
QUIET = {"enable_progress_bar": False}
TYPES = ("Dendritic", "CD14+ Monocyte", "CD19+ B", "CD4+/CD25 T Reg")  # one name holds a "/"
N_REF, N_QUERY = 25, 10


# ------------------------------------------------------------------------------------------ fixtures
def _pbmc():
    adata = gh.datasets.pbmc68k_reduced()
    labels = adata.obs["bulk_labels"].astype(str)
    ref_rows, query_rows = [], []
    for t in TYPES:
        rows = np.flatnonzero(labels == t)
        ref_rows += list(rows[:N_REF])
        query_rows += list(rows[N_REF : N_REF + N_QUERY])
    adata.obs["bulk_labels"] = labels.astype("category")
    ref, query = adata[sorted(ref_rows)].copy(), adata[sorted(query_rows)].copy()
    ref.obs["bulk_labels"] = ref.obs["bulk_labels"].cat.remove_unused_categories()
    query.obs["bulk_labels"] = query.obs["bulk_labels"].cat.remove_unused_categories()
    gh.pp.build_gene_graph(ref, prior=None, min_corr=0.2)
    return ref, query


def _raw_counts(adata):
    """Integer counts behind pbmc68k_reduced's log-normalised values (``expm1(X) * n_counts / 1e4``)."""
    raw = adata.copy()
    X = np.expm1(raw.X.toarray()) * raw.obs["n_counts"].to_numpy()[:, None] / 1e4
    raw.X = sp.csr_matrix(np.round(X).astype(np.float32))
    return raw


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    import scvi

    scvi.settings.seed = 0
    ref, query = _pbmc()
    fresh = ref.copy()  # never registered: setup_anndata cases start from copies of it
    gh.GenoHoptionModel.setup_anndata(ref, labels_key="bulk_labels")
    model = gh.GenoHoptionModel(ref, **SMALL)
    model.train(max_epochs=1, batch_size=32, train_size=1.0, **QUIET)
    saved = tmp_path_factory.mktemp("saved") / "model"
    model.save(saved)
    untrained = gh.GenoHoptionModel(ref, **SMALL)

    pert = gh.datasets.simulate_perturbation(n_genes=30, n_regulators=10, n_perturbed=5, n_combos=3, n_control=40,
                                             cells_per_condition=6, library_size=1500, seed=0)
    gh.pp.build_gene_graph(pert)
    gh.GenoHoptionModel.setup_anndata(pert, perturbation_key="condition", gene_symbols="gene_name")
    pert_model = gh.GenoHoptionModel(pert, d_model=16, n_heads=2, n_layers=1, d_hid=32, n_hops=2)
    pert_model.train(max_epochs=1, batch_size=32, train_size=1.0, **QUIET)
    conditions = pert.obs["condition"].astype(str)
    ctrl = pert[(conditions == "ctrl").to_numpy()].copy()
    single = sorted(c for c in set(conditions) if "ctrl" in c and c != "ctrl")[0]
    baseline = gh.tl.MeanBaseline().fit(pert, gene_symbols="gene_name")
    return SimpleNamespace(ref=ref, fresh=fresh, query=query, raw=_raw_counts(query), model=model, saved=saved,
                           untrained=untrained, pert=pert, pert_model=pert_model, ctrl=ctrl, single=single,
                           triple="+".join(sorted(set(pert.var["gene_name"].astype(str)))[:3]),
                           mixed=pert[np.r_[np.flatnonzero(conditions == "ctrl")[:10],
                                            np.flatnonzero(conditions != "ctrl")[:5]]].copy(),
                           baseline=baseline)


class Ctx(SimpleNamespace):
    """What one case works on: fresh copies of the fixtures' data and a copy of the saved model."""


def _ctx(env, tmp_path: Path) -> Ctx:
    saved = tmp_path / "saved"
    shutil.copytree(env.saved, saved)
    return Ctx(env=env, tmp=tmp_path, saved=saved, q=env.query.copy(), r=env.fresh.copy(), raw=env.raw.copy(),
               ctrl=env.ctrl.copy(), mixed=env.mixed.copy(), model=env.model)


# ------------------------------------------------------------------------------------------ comparison
def _same_matrix(a, b, where: str) -> None:
    assert type(a) is type(b), where
    if a is None:
        return
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, obj=where)
        return
    if sp.issparse(a):
        assert a.format == b.format and a.shape == b.shape and a.dtype == b.dtype, where
        for name in ("data", "indices", "indptr") if a.format in ("csr", "csc") else ("data",):
            assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=a.dtype.kind in "fc"), where
        return
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, where
    assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), where


def _same_value(a, b, where: str) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for k in a:
            _same_value(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, np.ndarray | pd.DataFrame) or sp.issparse(a):
        _same_matrix(a, b, where)
    elif isinstance(a, pd.Series):
        pd.testing.assert_series_equal(a, b, obj=where)
    else:
        assert type(a) is type(b) and (a == b or (a != a and b != b)), where


def _same(before: Snapshot, after: ad.AnnData, name: str, skip: set[str]) -> None:
    """Assert that ``after`` holds what ``before`` held, except the fields named in ``skip``."""
    for attr in ("obs_names", "var_names"):
        a, b = getattr(before, attr), getattr(after, attr)
        assert a.equals(b) and a.dtype == b.dtype, f"{name}.{attr}"
    before = before.adata
    if "X" not in skip:
        _same_matrix(before.X, after.X, f"{name}.X")
    for attr in ("obs", "var"):
        if attr not in skip:  # names compared above (AnnData.copy makes integer names strings)
            a, b = getattr(before, attr), getattr(after, attr)
            pd.testing.assert_frame_equal(a, b.set_axis(b.index.astype(str)), obj=f"{name}.{attr}")
    for attr in ("layers", "obsm", "varp", "obsp"):
        if attr in skip:
            continue
        a, b = getattr(before, attr), getattr(after, attr)
        assert set(a) == set(b), f"{name}.{attr}: {set(a) ^ set(b)}"
        for k in a:
            _same_matrix(a[k], b[k], f"{name}.{attr}[{k!r}]")
    if "uns" not in skip:
        _same_value(dict(before.uns), dict(after.uns), f"{name}.uns")


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


WATCHED = ("q", "r", "raw", "ctrl", "mixed", "v")


@dataclass
class Snapshot:
    """A copy of an AnnData, and its names as they were (``AnnData.copy`` makes integer names strings)."""

    adata: ad.AnnData
    obs_names: pd.Index
    var_names: pd.Index

    @classmethod
    def of(cls, adata: ad.AnnData) -> Snapshot:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # copying damaged inputs (e.g. duplicated names) makes anndata warn
            return cls(adata.copy(), adata.obs_names.copy(), adata.var_names.copy())


def _snapshots(ctx: Ctx) -> dict[str, Snapshot]:
    out = {name: Snapshot.of(getattr(ctx, name)) for name in WATCHED
           if isinstance(getattr(ctx, name, None), ad.AnnData) and not getattr(ctx, name).isbacked}
    out["model.adata"] = Snapshot.of(ctx.env.model.adata)
    out["pert_model.adata"] = Snapshot.of(ctx.env.pert_model.adata)
    return out


def _current(ctx: Ctx, name: str) -> ad.AnnData:
    return {"model.adata": ctx.env.model.adata, "pert_model.adata": ctx.env.pert_model.adata}.get(
        name, getattr(ctx, name, None))


# ------------------------------------------------------------------------------------------ the table
@dataclass
class Case:
    """One bad or awkward input.

    ``prep`` damages the inputs (before the snapshot), ``act`` makes the call under test. ``expect`` is an
    exception class (``kind="error"``), a warning class (``"warn"``) or ``None`` (``"ok"``: accepted);
    ``match`` a regular expression the message must contain (the fix it names). ``writes`` lists the
    fields an accepted call may change, as ``"q.obs"`` (object ``q`` of the context, field ``obs``).
    """

    id: str
    act: Callable[[Ctx], object]
    expect: type | None
    match: str | None = None
    prep: Callable[[Ctx], None] | None = None
    writes: tuple[str, ...] = ()
    kind: str = field(init=False)

    def __post_init__(self):
        if self.expect is None:
            self.kind = "ok"
        elif issubclass(self.expect, Warning):
            self.kind = "warn"
        else:
            self.kind = "error"


WRITES_PREDICT = ("q.obs", "q.obsm", "q.uns")


def _setup(ctx, **kwargs):
    return gh.GenoHoptionModel.setup_anndata(ctx.r, **{"labels_key": "bulk_labels", **kwargs})


def _set(obj, attr, value):
    setattr(obj, attr, value)


def _dense_x(adata, dtype=np.float32):
    adata.X = adata.X.toarray().astype(dtype)


def _poke(adata, value, dtype=np.float32):
    _dense_x(adata, dtype)
    adata.X[0, 0] = value


def _registered(ctx, **kwargs):
    _setup(ctx, **kwargs)


def _tiny_model(ctx, **kwargs):
    _setup(ctx)
    ctx.m = gh.GenoHoptionModel(ctx.r, **SMALL, **kwargs)


def _mudata_without_rna(ctx):
    mudata = pytest.importorskip("mudata")
    mudata.set_options(pull_on_update=False)
    ctx.md = mudata.MuData({"atac": ctx.q.copy()})


def _mudata_rna(ctx):
    mudata = pytest.importorskip("mudata")
    mudata.set_options(pull_on_update=False)
    ctx.md = mudata.MuData({"rna": ctx.q})


def _backed(ctx, name="q", csc=False):
    path = ctx.tmp / f"{name}.h5ad"
    adata = getattr(ctx, name)
    if csc:  # backed CSC cannot be read a few cells at a time
        adata = adata.copy()
        adata.X = sp.csc_matrix(adata.X)
    adata.write_h5ad(path)
    ctx.backed = ad.read_h5ad(path, backed="r")


def _rewrite_weights(path: Path, change: Callable[[dict], dict]) -> None:
    """Change the saved tensors and record the new checksum, as a hostile or buggy writer would."""
    from safetensors.torch import load, save

    weights, meta_file = path / "model.safetensors", path / "model.json"
    data = save(change(dict(load(weights.read_bytes()))))
    weights.write_bytes(data)
    meta = json.loads(meta_file.read_text())
    meta["weights_sha256"] = hashlib.sha256(data).hexdigest()
    meta_file.write_text(json.dumps(meta))


def _edit_meta(path: Path, change: Callable[[dict], object]) -> None:
    meta_file = path / "model.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps(change(meta)))


def _truncate(path: Path, n: int) -> None:
    path.write_bytes(path.read_bytes()[:n])


def _nan_first_float(state: dict) -> dict:
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    return state


def _wrong_shape(state: dict) -> dict:
    key = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 2)
    state[key] = state[key][:, :-1].contiguous()
    return state


def _damaged_model(ctx, value=float("nan")):
    """A loaded copy of the trained model with one non-finite weight (its file is not touched)."""
    ctx.m = gh.GenoHoptionModel.load(ctx.saved)
    param = dict(ctx.m.module.named_parameters())["backbone.encoder.embedding.weight"]
    param.data[0, 0] = value


def _drop_graph(state):
    state.pop("graph_indptr")
    return state


def _extra_tensor(state):
    import torch

    state["intruder.weight"] = torch.zeros(3)
    return state


def _integer_var_names(ctx):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's "variable names are not strings" (the case under test)
        ctx.r.var_names = pd.Index(np.arange(ctx.r.n_vars))
    assert ctx.r.var_names.dtype.kind == "i"


def _train_and_predict_self(ctx):
    _setup(ctx)
    m = gh.GenoHoptionModel(ctx.r, **SMALL)
    m.train(max_epochs=1, batch_size=64, train_size=1.0, **QUIET)
    pred = m.predict(ctx.r)
    assert len(pred) == ctx.r.n_obs and pred.notna().all()


def _three_cells(ctx):
    labels = ctx.r.obs["bulk_labels"].astype(str).to_numpy()
    rows = [np.flatnonzero(labels == TYPES[0])[0], *np.flatnonzero(labels == TYPES[1])[:2]]
    ctx.r = ctx.r[rows].copy()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Category .* has fewer than 3 cells")  # scvi-tools, at set-up
        _setup(ctx)
    ctx.m = gh.GenoHoptionModel(ctx.r, **SMALL)


def _train_three(ctx):
    ctx.m.train(max_epochs=2, batch_size=64, **QUIET)  # default train_size=0.9 and early stopping
    assert ctx.m.is_trained_ and len(ctx.m.history_["train_loss"]) == 2


def _predict_and_write(ctx):
    ctx.model.predict(ctx.q)
    path = ctx.tmp / "predicted.h5ad"
    ctx.q.write_h5ad(path)  # pytest turns anndata's "forward slashes" FutureWarning into an error
    back = ad.read_h5ad(path)
    classes = back.uns["genohoption"]["predict"]["classes"]
    assert "CD4+/CD25 T Reg" in list(classes)
    assert list(back.obsm["genohoption_probabilities"].columns) == [c.replace("/", "|") for c in classes]
    path.unlink()


def _shuffled_subset(ctx):
    rng = np.random.default_rng(0)
    sub = ctx.q[:, rng.permutation(ctx.q.n_vars)[: int(0.8 * ctx.q.n_vars)]].copy()
    ctx.model.get_latent_representation(sub)


def _loaded_without_data(ctx):
    ctx.m = gh.GenoHoptionModel.load(ctx.saved)


def _relabel_known(ctx):
    ctx.q.obs["bulk_labels"] = ctx.q.obs["bulk_labels"].astype(str).astype("category")


def _drop_first_label(ctx):
    labels = ctx.r.obs["bulk_labels"].copy()
    ctx.r.obs["bulk_labels"] = labels.where(np.arange(ctx.r.n_obs) > 0)


def _set_uns(ctx, name="q"):
    getattr(ctx, name).uns["genohoption"] = "not a dict"


CASES: list[Case] = [
    # ---------------------------------------------------------------- setup_anndata
    Case("setup/numpy", lambda c: gh.GenoHoptionModel.setup_anndata(c.r.X, labels_key="bulk_labels"), TypeError,
         r"anndata\.AnnData\(X"),
    Case("setup/dataframe", lambda c: gh.GenoHoptionModel.setup_anndata(c.r.to_df(), labels_key="bulk_labels"),
         TypeError, r"wrap a matrix with anndata\.AnnData"),
    Case("setup/mudata-without-rna", lambda c: gh.GenoHoptionModel.setup_anndata(c.md, labels_key="bulk_labels"),
         KeyError, "gene-expression modality", prep=_mudata_without_rna),
    Case("setup/labels-key-missing", lambda c: _setup(c, labels_key="celltype"), KeyError, "available"),
    Case("setup/graph-key-missing", lambda c: _setup(c, graph_key="nope"), KeyError, "build_gene_graph"),
    Case("setup/layer-missing", lambda c: _setup(c, layer="counts"), KeyError, "available"),
    Case("setup/duplicated-genes", _setup, ValueError, "var_names_make_unique",
         prep=lambda c: _set(c.r, "var_names", pd.Index(["g"] * c.r.n_vars))),
    Case("setup/nan", _setup, ValueError, "impute", prep=lambda c: _poke(c.r, np.nan)),
    Case("setup/inf", _setup, ValueError, "NaN or infinite", prep=lambda c: _poke(c.r, np.inf)),
    Case("setup/negative", _setup, ValueError, r"normalize_total \+ sc\.pp\.log1p",
         prep=lambda c: _poke(c.r, -1.0)),
    Case("setup/float64-overflow", _setup, ValueError, "become infinite in float32.*normalize_total",
         prep=lambda c: _poke(c.r, 1e39, np.float64)),
    Case("setup/float16", _setup, TypeError, r"astype\('float32'\)", prep=lambda c: _dense_x(c.r, np.float16)),
    Case("setup/complex", _setup, TypeError, "convert it to float32", prep=lambda c: _dense_x(c.r, np.complex64)),
    Case("setup/x-none", _setup, ValueError, "pass layer=", prep=lambda c: _set(c.r, "X", None)),
    Case("setup/missing-labels", _setup, ValueError, "drop those cells", prep=_drop_first_label),
    Case("setup/one-cell-type", lambda c: _setup(c, labels_key="one"), ValueError, "at least 2 cell types",
         prep=lambda c: c.r.obs.__setitem__("one", "T")),
    Case("setup/graph-nan-weight", _setup, ValueError, "rebuild it with gh.pp.build_gene_graph",
         prep=lambda c: c.r.varp["gene_graph"].data.__setitem__(0, np.nan)),
    Case("setup/graph-negative-weight", _setup, ValueError, "store 1 \\(or a positive weight\\)",
         prep=lambda c: c.r.varp["gene_graph"].data.__setitem__(0, -0.5)),
    Case("setup/graph-self-loops-only", _setup, ValueError, "self-loops only.*lower min_corr",
         prep=lambda c: c.r.varp.__setitem__("gene_graph", sp.identity(c.r.n_vars, np.float32, format="csr"))),
    Case("setup/graph-empty", _setup, ValueError, "no edge.*attention='dense'",
         prep=lambda c: c.r.varp.__setitem__("gene_graph", sp.csr_matrix((c.r.n_vars, c.r.n_vars), dtype=np.float32))),
    Case("setup/graph-complex", _setup, ValueError, "real edge weights",
         prep=lambda c: c.r.varp.__setitem__("gene_graph", c.r.varp["gene_graph"].astype(np.complex64))),
    Case("setup/backed-csc", lambda c: gh.GenoHoptionModel.setup_anndata(c.backed, labels_key="bulk_labels"),
         ValueError, r"backed CSC.*to_memory\(\)", prep=lambda c: _backed(c, "r", csc=True)),
    Case("setup/backed-perturbation", lambda c: gh.GenoHoptionModel.setup_anndata(
        c.backed, perturbation_key="condition", gene_symbols="gene_name"), ValueError, r"to_memory\(\)",
         prep=lambda c: _backed(c, "ctrl")),
    Case("setup/perturbation-key-missing", lambda c: gh.GenoHoptionModel.setup_anndata(
        c.ctrl, perturbation_key="perturbation", gene_symbols="gene_name"), KeyError, "available"),
    Case("setup/no-control-cell", lambda c: gh.GenoHoptionModel.setup_anndata(
        c.ctrl, perturbation_key="condition", control_value="DMSO", gene_symbols="gene_name"), ValueError,
         "control"),
    Case("setup/integer-var-names-train-predict", _train_and_predict_self, None, prep=_integer_var_names,
         writes=("r.obs", "r.obsm", "r.uns")),
    # ---------------------------------------------------------------- GenoHoptionModel(...)
    Case("init/attention", lambda c: gh.GenoHoptionModel(c.r, attention="flash"), ValueError, "choose one of",
         prep=_registered, writes=("r.obs", "r.uns")),
    Case("init/backbone", lambda c: gh.GenoHoptionModel(c.r, backbone="bert"), ValueError, "use one of",
         prep=_registered, writes=("r.obs", "r.uns")),
    Case("init/max-seq-len", lambda c: gh.GenoHoptionModel(c.r, max_seq_len=1), ValueError, "at least 2",
         prep=_registered, writes=("r.obs", "r.uns")),
    Case("init/heads-divide", lambda c: gh.GenoHoptionModel(c.r, d_model=30, n_heads=4), ValueError,
         "n_heads must divide d_model", prep=_registered, writes=("r.obs", "r.uns")),
    Case("init/n-hops-0", lambda c: gh.GenoHoptionModel(c.r, n_hops=0), ValueError, "positive integers",
         prep=_registered, writes=("r.obs", "r.uns")),
    Case("init/cell-emb", lambda c: gh.GenoHoptionModel(c.r, cell_emb="mean"), ValueError, "choose one of",
         prep=_registered, writes=("r.obs", "r.uns")),
    Case("init/cls-input-norm", lambda c: gh.GenoHoptionModel(c.r, cls_input_norm="group"), ValueError,
         "choose one of", prep=_registered, writes=("r.obs", "r.uns")),
    Case("init/sparse-attention-without-graph", lambda c: gh.GenoHoptionModel(c.r, attention="ppr"), ValueError,
         "attention='dense'", prep=lambda c: _setup(c, graph_key=None), writes=("r.obs", "r.uns")),
    Case("init/pretrained-missing", lambda c: gh.GenoHoptionModel(c.r, pretrained=c.tmp / "none"),
         FileNotFoundError, "not found", prep=_registered, writes=("r.obs", "r.uns")),
    Case("init/pretrained-without-adata", lambda c: gh.GenoHoptionModel(None, pretrained=c.tmp), ValueError,
         "needs adata"),
    Case("init/numpy", lambda c: gh.GenoHoptionModel(c.r.X), TypeError, r"anndata\.AnnData\(X"),
    # ---------------------------------------------------------------- train
    Case("train/max-epochs-0", lambda c: c.m.train(max_epochs=0), ValueError, "positive integer",
         prep=_tiny_model, writes=("r.obs", "r.uns")),
    Case("train/max-epochs-float", lambda c: c.m.train(max_epochs=2.5), ValueError, "positive integer",
         prep=_tiny_model, writes=("r.obs", "r.uns")),
    Case("train/batch-size-0", lambda c: c.m.train(batch_size=0), ValueError, "positive integer",
         prep=_tiny_model, writes=("r.obs", "r.uns")),
    Case("train/batch-size-bool", lambda c: c.m.train(batch_size=True), ValueError, "positive integer",
         prep=_tiny_model, writes=("r.obs", "r.uns")),
    Case("train/train-size-0", lambda c: c.m.train(train_size=0), ValueError, r"train_size must be in \(0, 1\]",
         prep=_tiny_model, writes=("r.obs", "r.uns")),
    Case("train/train-size-1.5", lambda c: c.m.train(train_size=1.5), ValueError, r"train_size must be in",
         prep=_tiny_model, writes=("r.obs", "r.uns")),
    Case("train/validation-size", lambda c: c.m.train(train_size=0.9, validation_size=0.5), ValueError,
         r"validation_size must be in \[0, 1 - train_size\]", prep=_tiny_model, writes=("r.obs", "r.uns")),
    Case("train/optimizer", lambda c: c.m.train(plan_kwargs={"optimizer": "SGD"}), ValueError, "choose one of",
         prep=_tiny_model, writes=("r.obs", "r.uns")),
    Case("train/lr-0", lambda c: c.m.train(lr=0.0), ValueError, "lr must be > 0", prep=_tiny_model,
         writes=("r.obs", "r.uns")),
    Case("train/class-weight", lambda c: c.m.train(plan_kwargs={"class_weight": "inverse"}), ValueError,
         "use 'balanced'", prep=_tiny_model, writes=("r.obs", "r.uns")),
    Case("train/label-smoothing", lambda c: c.m.train(plan_kwargs={"label_smoothing": 1.0}), ValueError,
         r"label_smoothing must be in \[0, 1\)", prep=_tiny_model, writes=("r.obs", "r.uns")),
    Case("train/warmup", lambda c: c.m.train(plan_kwargs={"warmup": 1.0}), ValueError,
         r"warmup must be a fraction in \[0, 1\)", prep=_tiny_model, writes=("r.obs", "r.uns")),
    Case("train/ckpt-path-missing", lambda c: c.m.train(max_epochs=1, ckpt_path=c.tmp / "none.ckpt"),
         FileNotFoundError, "TrainingCheckpoint", prep=_tiny_model, writes=("r.obs", "r.uns")),
    Case("train/checkpoint-every-0", lambda c: gh.model.TrainingCheckpoint(c.tmp / "ck", every_n_epochs=0),
         ValueError, "positive integer"),
    Case("train/loaded-without-data", lambda c: c.m.train(max_epochs=1), ValueError, "adata=reference",
         prep=_loaded_without_data),
    Case("train/three-cells-default-early-stopping", _train_three, UserWarning, "pass train_size=1.0",
         prep=_three_cells, writes=("r.obs", "r.uns")),
    # ---------------------------------------------------------------- pretrain
    Case("pretrain/numpy", lambda c: c.m.pretrain(c.q.X, max_epochs=1), TypeError, r"anndata\.AnnData\(X",
         prep=_tiny_model),
    Case("pretrain/perturbation-model-mask-ratio", lambda c: c.env.pert_model.pretrain(c.ctrl, max_epochs=1,
                                                                                       mask_ratio=0.0),
         ValueError, r"mask_ratio must be in \(0, 1\)"),
    Case("pretrain/mask-ratio-1", lambda c: c.m.pretrain(c.q, max_epochs=1, mask_ratio=1.0), ValueError,
         r"mask_ratio must be in \(0, 1\)", prep=_tiny_model),
    # ---------------------------------------------------------------- gene networks / reverse perturbation
    Case("get_gene_network/numpy", lambda c: c.model.get_gene_network(c.q.X), TypeError, r"anndata\.AnnData"),
    Case("get_gene_network/groupby-missing", lambda c: c.model.get_gene_network(c.q, groupby="nope"), KeyError,
         "nope"),
    Case("rank_perturbations/numpy-ctrl",
         lambda c: gh.tl.rank_perturbations(c.env.pert_model, c.ctrl.X, c.ctrl, ["A+ctrl"]), TypeError,
         r"anndata\.AnnData"),
    Case("rank_perturbations/unknown-metric",
         lambda c: gh.tl.rank_perturbations(c.env.pert_model, c.ctrl, c.ctrl, ["A+ctrl"], metric="spearman"),
         ValueError, "choose one of"),
    # ---------------------------------------------------------------- predict / get_latent_representation
    Case("predict/numpy", lambda c: c.model.predict(c.q.X), TypeError, r"anndata\.AnnData\(X"),
    Case("predict/dataframe", lambda c: c.model.predict(c.q.to_df()), TypeError, r"anndata\.AnnData"),
    Case("predict/mudata-without-rna", lambda c: c.model.predict(c.md), KeyError, "gene-expression modality",
         prep=_mudata_without_rna),
    Case("predict/zero-cells", lambda c: c.model.predict(c.q[:0].copy()), ValueError, "at least one cell"),
    Case("latent/zero-cells", lambda c: c.model.get_latent_representation(c.q[:0].copy()), ValueError,
         "at least one cell"),
    Case("predict/no-shared-gene", lambda c: c.model.predict(c.q), ValueError, "same identifiers",
         prep=lambda c: _set(c.q, "var_names", pd.Index([f"x{i}" for i in range(c.q.n_vars)]))),
    Case("predict/nan", lambda c: c.model.predict(c.q), ValueError, "impute", prep=lambda c: _poke(c.q, np.nan)),
    Case("predict/negative", lambda c: c.model.predict(c.q), ValueError, "not scaled or centred",
         prep=lambda c: _poke(c.q, -2.0)),
    Case("predict/float16", lambda c: c.model.predict(c.q), TypeError, r"astype\('float32'\)",
         prep=lambda c: _dense_x(c.q, np.float16)),
    Case("predict/float64-overflow", lambda c: c.model.predict(c.q), ValueError, "normalise the data first",
         prep=lambda c: _poke(c.q, 1e300, np.float64)),
    Case("latent/float64-overflow", lambda c: c.model.get_latent_representation(c.q), ValueError,
         "normalise the data first", prep=lambda c: _poke(c.q, 1e300, np.float64)),
    Case("predict/x-none", lambda c: c.model.predict(c.q), ValueError, "pass layer=",
         prep=lambda c: _set(c.q, "X", None)),
    Case("predict/duplicated-genes", lambda c: c.model.predict(c.q), ValueError, "var_names_make_unique",
         prep=lambda c: _set(c.q, "var_names", pd.Index(["g"] * c.q.n_vars))),
    Case("predict/batch-size-0", lambda c: c.model.predict(c.q, batch_size=0), ValueError,
         "batch_size must be a positive integer"),
    Case("predict/unknown-threshold-2", lambda c: c.model.predict(c.q, unknown_threshold=2), ValueError,
         r"unknown_threshold must be a number in \[0, 1\]"),
    Case("calibrate/numpy", lambda c: c.model.calibrate(c.q.X), TypeError, r"anndata\.AnnData\(X"),
    Case("calibrate/labels-key-missing", lambda c: c.model.calibrate(c.q, labels_key="celltype"), KeyError,
         "available"),
    Case("calibrate/new-cell-type", lambda c: c.model.calibrate(c.q), ValueError, "drop the others",
         prep=lambda c: c.q.obs.__setitem__("bulk_labels", pd.Categorical(["a new type"] * c.q.n_obs))),
    Case("calibrate/rate-0", lambda c: c.model.calibrate(c.q, false_unknown_rate=0), ValueError,
         r"false_unknown_rate must be in \(0, 1\)"),
    Case("latent/batch-size-negative", lambda c: c.model.get_latent_representation(c.q, batch_size=-3),
         ValueError, "batch_size must be a positive integer"),
    Case("predict/batch-size-float", lambda c: c.model.predict(c.q, batch_size=2.5), ValueError,
         "batch_size must be a positive integer"),
    Case("predict/key-added-empty", lambda c: c.model.predict(c.q, key_added=""), ValueError,
         "non-empty string without '/'"),
    Case("predict/key-added-slash", lambda c: c.model.predict(c.q, key_added="a/b"), ValueError,
         "non-empty string without '/'"),
    Case("predict/key-added-int", lambda c: c.model.predict(c.q, key_added=5), ValueError,
         "non-empty string without '/'"),
    Case("predict/uns-not-dict", lambda c: c.model.predict(c.q), TypeError, "rename or delete it",
         prep=_set_uns),
    Case("predict/backed-csc", lambda c: c.model.predict(c.backed), ValueError, r"backed CSC.*to_memory\(\)",
         prep=lambda c: _backed(c, csc=True)),
    Case("predict/raw-counts-into-log-normalised", lambda c: c.model.predict(c.raw), UserWarning,
         r"raw counts.*sc\.pp\.log1p", writes=("raw.obs", "raw.obsm", "raw.uns")),
    Case("latent/raw-counts-into-log-normalised", lambda c: c.model.get_latent_representation(c.raw), UserWarning,
         r"raw counts.*normalize_total"),
    Case("predict/few-shared-genes", lambda c: c.model.predict(c.q[:, :100].copy()), UserWarning,
         "treated as not expressed"),
    Case("predict/untrained", lambda c: c.env.untrained.predict(c.q), UserWarning, r"call model\.train\(\)",
         writes=WRITES_PREDICT),
    Case("latent/untrained", lambda c: c.env.untrained.get_latent_representation(c.q), UserWarning,
         r"call model\.train\(\)"),
    Case("predict/nan-weight", lambda c: c.m.predict(c.q), ValueError,
         r"backbone\.encoder\.embedding\.weight.*retrain", prep=_damaged_model),
    Case("latent/inf-weight", lambda c: c.m.get_latent_representation(c.q), ValueError,
         r"NaN or infinite values \(\['backbone\.encoder\.embedding\.weight'\]\)",
         prep=lambda c: _damaged_model(c, float("inf"))),
    Case("predict/annotation-model-perturbation", lambda c: c.model.predict_perturbation(c.q, "A+ctrl"),
         TypeError, "perturbation_key="),
    Case("predict/view", lambda c: c.model.predict(c.v), UserWarning, r"adata\.copy\(\)",
         prep=lambda c: _set(c, "v", c.q[:10]), writes=("v.obs", "v.obsm", "v.uns")),
    Case("predict/slash-in-cell-types-writes-h5ad", _predict_and_write, None, writes=WRITES_PREDICT),
    Case("predict/mudata-rna", lambda c: c.model.predict(c.md), None, prep=_mudata_rna, writes=WRITES_PREDICT),
    Case("predict/known-labels-column", lambda c: c.model.predict(c.q), None, prep=_relabel_known,
         writes=WRITES_PREDICT),
    Case("latent/shuffled-gene-subset", _shuffled_subset, None),
    Case("predict/loaded-without-data-none", lambda c: c.m.predict(), ValueError, r"model\.predict\(adata\)",
         prep=_loaded_without_data),
    # ---------------------------------------------------------------- load / save
    Case("load/missing-dir", lambda c: gh.GenoHoptionModel.load(c.tmp / "absent"), FileNotFoundError,
         r"GenoHoptionModel\.save\(\)"),
    Case("load/dir-is-file", lambda c: gh.GenoHoptionModel.load(c.saved / "model.json"), FileNotFoundError,
         r"GenoHoptionModel\.save\(\)"),
    Case("load/json-missing", lambda c: gh.GenoHoptionModel.load(c.saved), FileNotFoundError, "model.json",
         prep=lambda c: (c.saved / "model.json").unlink()),
    Case("load/truncated-weights", lambda c: gh.GenoHoptionModel.load(c.saved), ValueError,
         "checksum.*save the model again", prep=lambda c: _truncate(c.saved / "model.safetensors", 100)),
    Case("load/truncated-weights-no-checksum", lambda c: gh.GenoHoptionModel.load(c.saved), ValueError,
         "not a valid safetensors file.*save the model again",
         prep=lambda c: (_truncate(c.saved / "model.safetensors", 100),
                         _edit_meta(c.saved, lambda m: {k: v for k, v in m.items() if k != "weights_sha256"}))),
    Case("load/garbled-weights-header", lambda c: gh.GenoHoptionModel.load(c.saved), ValueError,
         "not a valid safetensors file",
         prep=lambda c: ((c.saved / "model.safetensors").write_bytes(b"\xff" * 64),
                         _edit_meta(c.saved, lambda m: {k: v for k, v in m.items() if k != "weights_sha256"}))),
    Case("load/bit-flip", lambda c: gh.GenoHoptionModel.load(c.saved), ValueError, "damaged or were replaced",
         prep=lambda c: (c.saved / "model.safetensors").write_bytes(
             (lambda b: b[:-5] + bytes([b[-5] ^ 0x40]) + b[-4:])((c.saved / "model.safetensors").read_bytes()))),
    Case("load/garbled-json", lambda c: gh.GenoHoptionModel.load(c.saved), ValueError,
         "model.json is damaged.*save the model again",
         prep=lambda c: (c.saved / "model.json").write_text('{"class": "GenoHoptionModel", "init')),
    Case("load/empty-json", lambda c: gh.GenoHoptionModel.load(c.saved), ValueError, "model.json is damaged",
         prep=lambda c: (c.saved / "model.json").write_text("")),
    Case("load/binary-json", lambda c: gh.GenoHoptionModel.load(c.saved), ValueError, "model.json is damaged",
         prep=lambda c: (c.saved / "model.json").write_bytes(b"\xff\xfe\x00garbage")),
    Case("load/json-list", lambda c: gh.GenoHoptionModel.load(c.saved), ValueError, "not a JSON object",
         prep=lambda c: (c.saved / "model.json").write_text("[1, 2]")),
    Case("load/query-without-model-genes", lambda c: gh.GenoHoptionModel.load(c.saved, adata=c.q), ValueError,
         r"lacks \d+ of the model's \d+ genes.*predict\(\)",
         prep=lambda c: _set(c.q, "var_names", [f"other{i}" for i in range(c.q.n_vars)])),
    Case("load_registry/missing-dir", lambda c: gh.GenoHoptionModel.load_registry(c.tmp / "absent"),
         FileNotFoundError, r"GenoHoptionModel\.save\(\)"),
    Case("load_registry/garbled-json", lambda c: gh.GenoHoptionModel.load_registry(c.saved), ValueError,
         "model.json is damaged.*save the model again",
         prep=lambda c: (c.saved / "model.json").write_text('{"class": "GenoHoptionModel", "init')),
    Case("view_setup_args/json-list", lambda c: gh.GenoHoptionModel.view_setup_args(c.saved), ValueError,
         "not a JSON object", prep=lambda c: (c.saved / "model.json").write_text("[1, 2]")),
    Case("update_setup_method_args/unknown-argument", lambda c: c.model.update_setup_method_args({"labelskey": 1}),
         KeyError, "not arguments of setup_anndata"),
    Case("convert_legacy_save/any-directory", lambda c: gh.GenoHoptionModel.convert_legacy_save(
         str(c.saved), str(c.tmp / "converted")), NotImplementedError, r"GenoHoptionModel\.load\(dir_path\)"),
    Case("view_registry/loaded-without-data", lambda c: c.m.view_registry(), None, prep=_loaded_without_data),
    Case("load/json-without-registry", lambda c: gh.GenoHoptionModel.load(c.saved), ValueError,
         "no valid registry", prep=lambda c: _edit_meta(c.saved, lambda m: {**m, "registry": None})),
    Case("load/json-bad-array", lambda c: gh.GenoHoptionModel.load(c.saved), ValueError, "model.json is damaged",
         prep=lambda c: _edit_meta(c.saved, lambda m: {**m, "history": {"__ndarray__": [1], "dtype": "nonsense"}})),
    Case("load/json-bad-settings", lambda c: gh.GenoHoptionModel.load(c.saved), ValueError,
         "does not describe a valid GenoHoptionModel.*save the model again",
         prep=lambda c: _edit_meta(c.saved, lambda m: (m["init_params"]["kwargs"].__setitem__("attention", "flash"),
                                                       m)[1])),
    Case("load/other-class", lambda c: gh.GenoHoptionModel.load(c.saved), ValueError, "not a GenoHoptionModel",
         prep=lambda c: _edit_meta(c.saved, lambda m: {**m, "class": "SCVI"})),
    Case("load/nan-weights-valid-checksum", lambda c: gh.GenoHoptionModel.load(c.saved), ValueError,
         "NaN or infinite weights.*retrain", prep=lambda c: _rewrite_weights(c.saved, _nan_first_float)),
    Case("load/wrong-shape-valid-checksum", lambda c: gh.GenoHoptionModel.load(c.saved), ValueError,
         "does not fit the model.*save the model again", prep=lambda c: _rewrite_weights(c.saved, _wrong_shape)),
    Case("load/extra-tensor-valid-checksum", lambda c: gh.GenoHoptionModel.load(c.saved), ValueError,
         "does not fit the model", prep=lambda c: _rewrite_weights(c.saved, _extra_tensor)),
    Case("load/no-graph-valid-checksum", lambda c: gh.GenoHoptionModel.load(c.saved), ValueError,
         r"has no 'graph_indptr'.*GenoHoptionModel\.save", prep=lambda c: _rewrite_weights(c.saved, _drop_graph)),
    Case("load/adata-numpy", lambda c: gh.GenoHoptionModel.load(c.saved, adata=c.q.X), TypeError,
         r"anndata\.AnnData\(X"),
    Case("load/prefix-slash", lambda c: gh.GenoHoptionModel.load(c.saved, prefix="a/b"), ValueError,
         "put folders in dir_path"),
    Case("load/damaged-saved-adata", lambda c: gh.GenoHoptionModel.load(c.saved), ValueError,
         "pass adata= to load", prep=lambda c: (c.saved / "adata.h5ad").write_bytes(b"not an h5ad file")),
    Case("save/into-file", lambda c: c.model.save(c.saved / "model.json"), FileExistsError, "pass a directory"),
    Case("save/twice", lambda c: c.model.save(c.saved), FileExistsError, "overwrite=True"),
    Case("save/anndata-without-data", lambda c: c.m.save(c.tmp / "again", save_anndata=True), ValueError,
         "holds no AnnData", prep=_loaded_without_data),
    Case("save/prefix-slash", lambda c: c.model.save(c.tmp / "again", prefix="x/"), ValueError,
         "put folders in dir_path"),
    Case("load/query-view-attached", lambda c: gh.GenoHoptionModel.load(c.saved, adata=c.q[:5]).predict(c.q), None,
         writes=WRITES_PREDICT),
    # ---------------------------------------------------------------- perturbation
    Case("perturb/non-control-cells", lambda c: c.env.pert_model.predict_perturbation(c.mixed, c.env.single),
         UserWarning, r"are not controls.*adata\[adata\.obs\['condition'\] == 'ctrl'\]",
         writes=("mixed.layers", "mixed.uns")),
    Case("perturb/conditions-int", lambda c: c.env.pert_model.predict_perturbation(c.ctrl, 5), TypeError,
         "a condition string or a list"),
    Case("perturb/unknown-gene", lambda c: c.env.pert_model.predict_perturbation(c.ctrl, "NOTAGENE+ctrl"),
         KeyError, "NOTAGENE"),
    Case("perturb/malformed-condition", lambda c: c.env.pert_model.predict_perturbation(c.ctrl, c.env.single + "+"),
         ValueError, "write them as 'ctrl', 'A\\+ctrl'"),
    Case("perturb/three-genes", lambda c: c.env.pert_model.predict_perturbation(c.ctrl, [c.env.triple]), None,
         writes=("ctrl.uns",)),
    Case("perturb/uns-not-dict", lambda c: c.env.pert_model.predict_perturbation(c.ctrl, c.env.single),
         TypeError, "rename or delete it", prep=lambda c: _set_uns(c, "ctrl")),
    Case("perturb/key-prefix-slash", lambda c: c.env.pert_model.predict_perturbation(c.ctrl, c.env.single,
                                                                                      key_prefix="a/"),
         ValueError, "without '/'"),
    Case("perturb/numpy", lambda c: c.env.pert_model.predict_perturbation(c.ctrl.X, c.env.single), TypeError,
         r"anndata\.AnnData\(X"),
    Case("perturb/predict-on-perturbation-model", lambda c: c.env.pert_model.predict(c.ctrl), TypeError,
         "predict\\(\\) does not apply"),
    Case("perturb/zero-genes-shared", lambda c: c.env.pert_model.predict_perturbation(c.ctrl, c.env.single),
         ValueError, "same identifiers",
         prep=lambda c: _set(c.ctrl, "var_names", pd.Index([f"x{i}" for i in range(c.ctrl.n_vars)]))),
    Case("baseline/uns-not-dict", lambda c: c.env.baseline.predict_perturbation(c.ctrl, c.env.single), TypeError,
         "rename or delete it", prep=lambda c: _set_uns(c, "ctrl")),
    Case("baseline/numpy", lambda c: c.env.baseline.predict_perturbation(c.ctrl.X, c.env.single), TypeError,
         r"anndata\.AnnData\(X"),
    Case("baseline/fit-numpy", lambda c: gh.tl.MeanBaseline().fit(c.ctrl.X), TypeError, r"anndata\.AnnData\(X"),
    Case("baseline/nan", lambda c: c.env.baseline.predict_perturbation(c.ctrl, c.env.single), ValueError,
         "impute", prep=lambda c: _poke(c.ctrl, np.nan)),
    Case("baseline/writes-layer", lambda c: c.env.baseline.predict_perturbation(c.ctrl, c.env.single), None,
         writes=("ctrl.layers", "ctrl.uns")),
    # ---------------------------------------------------------------- gene graph (pp) through _validate
    Case("pp/key-added-empty", lambda c: gh.pp.build_gene_graph(c.q, prior=None, key_added=""), ValueError,
         "non-empty string"),
    Case("pp/nan", lambda c: gh.pp.build_gene_graph(c.q, prior=None), ValueError, "impute",
         prep=lambda c: _poke(c.q, np.nan)),
    Case("pp/numpy", lambda c: gh.pp.build_gene_graph(c.q.X, prior=None), TypeError, r"anndata\.AnnData\(X"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, env, tmp_path):
    ctx = _ctx(env, tmp_path)
    if case.prep is not None:
        case.prep(ctx)
    before, files = _snapshots(ctx), _files(tmp_path)
    if case.kind == "error":
        with pytest.raises(case.expect, match=case.match):
            case.act(ctx)
    elif case.kind == "warn":
        with pytest.warns(case.expect, match=case.match):
            case.act(ctx)
    else:
        case.act(ctx)
    for name, snapshot in before.items():
        skip = {w.split(".", 1)[1] for w in case.writes if w.split(".", 1)[0] == name}
        _same(snapshot, _current(ctx, name), name, skip)
    assert _files(tmp_path) == files


def _names_used(*functions: Callable | None) -> set[str]:
    """Global and attribute names the functions read (``gh.pp.build_gene_graph`` gives ``build_gene_graph``),
    following nested code and the helper functions of this module they call (``_setup`` → ``setup_anndata``)."""
    names, seen = set(), set()
    stack = [(f.__code__, f.__globals__) for f in functions if f is not None]
    while stack:
        code, scope = stack.pop()
        if code in seen:
            continue
        seen.add(code)
        names |= set(code.co_names)
        stack += [(c, scope) for c in code.co_consts if isinstance(c, type(code))]
        stack += [(scope[n].__code__, scope) for n in code.co_names
                  if inspect.isfunction(scope.get(n)) and scope[n].__module__ == __name__]
    return names


def _checked_entry_points() -> set[str]:
    """The package's public entry points that take user data through the shared checks (read from the package).

    Every public method that :class:`~genohoption.GenoHoptionModel` defines (not those inherited from
    scvi-tools) and the constructor; every public function of ``gh.pp`` / ``gh.tl``, and public method of
    their classes, whose code calls ``genohoption._validate.as_anndata``.
    """
    model = gh.GenoHoptionModel
    found = {model.__name__} | {
        name for name, value in inspect.getmembers(model)
        if not name.startswith("_") and callable(value)
        and getattr(value, "__module__", "").startswith("genohoption.")
    }
    for namespace in (gh.pp, gh.tl):
        for public in namespace.__all__:
            obj = getattr(namespace, public)
            members = inspect.getmembers(obj, inspect.isfunction) if inspect.isclass(obj) else [(public, obj)]
            found |= {name for name, fn in members if not name.startswith("_")
                      and "as_anndata" in inspect.unwrap(fn).__code__.co_names}
    return found


def test_table_size_and_kinds():
    """The table is large and varied, and covers every entry point of the package that checks user data."""
    kinds = pd.Series([c.kind for c in CASES]).value_counts()
    assert len({c.id for c in CASES}) == len(CASES)
    assert len(CASES) + len(CRASH_CASES) + len(CLI_CASES) >= 80, kinds
    assert kinds["error"] > kinds["warn"] > 0 and kinds["ok"] > 0
    entry_points = _checked_entry_points()
    assert {"GenoHoptionModel", "setup_anndata", "train", "predict", "predict_perturbation", "save", "load",
            "build_gene_graph", "fit"} <= entry_points, entry_points  # the search itself finds them
    called = set().union(*(_names_used(c.act, c.prep) for c in CASES))
    assert entry_points - called == set(), "entry points without a bad-input case (add one to CASES)"


# ------------------------------------------------------------------------------------------ crash cases
CRASH_SCRIPT = textwrap.dedent(r'''
    import hashlib, json, shutil, sys, warnings
    from pathlib import Path

    import numpy as np
    import torch

    torch.set_num_threads(1)
    import anndata as ad
    import scipy.sparse as sp
    from safetensors.torch import load, save

    import genohoption as gh
    from genohoption.nn import BatchGraph, induced_batch_graph
    from genohoption.nn import _kernels

    saved, work = Path(sys.argv[1]), Path(sys.argv[2])


    def files(root):
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


    def damaged_model(name, change):
        path = work / name
        shutil.copytree(saved, path)
        state = dict(load((path / "model.safetensors").read_bytes()))
        change(state)
        data = save(state)
        (path / "model.safetensors").write_bytes(data)
        meta = json.loads((path / "model.json").read_text())
        meta["weights_sha256"] = hashlib.sha256(data).hexdigest()  # a consistent checksum: only the checks see it
        (path / "model.json").write_text(json.dumps(meta))
        before = files(path)

        def act():
            model = gh.GenoHoptionModel.load(path)
            model.predict(query())  # where the malformed graph crashed before issue 14
        return act, lambda: files(path) == before


    def query():
        a = gh.datasets.pbmc68k_reduced()[:20].copy()
        a.obs = a.obs[[]]
        return a


    def indptr_decreasing(state):
        p = state["graph_indptr"].clone()
        i = int(torch.nonzero(p.diff() > 0)[0])
        p[i + 1] = p[i] - 1 if p[i] > 0 else p[i + 2] + 5
        state["graph_indptr"] = p


    def index_out_of_range(state):
        state["graph_indices"] = state["graph_indices"].clone()
        state["graph_indices"][0] = 10**6


    def index_negative(state):
        state["graph_indices"] = state["graph_indices"].clone()
        state["graph_indices"][3] = -2


    def indptr_too_long(state):
        state["graph_indptr"] = torch.cat([state["graph_indptr"], state["graph_indptr"][-1:]])


    def tensor_case(fn, *tensors):
        copies = [t.clone() for t in tensors]
        return fn, lambda: all(torch.equal(a, b) for a, b in zip(copies, tensors))


    ok_indptr = torch.tensor([0, 2, 3, 5, 6])
    ok_indices = torch.tensor([1, 2, 0, 3, 1, 0])
    tokens = torch.tensor([[0, 1, 2, 3, -1]])
    bad_indptr = torch.tensor([0, 2, 1, 5, 6])
    wrapping = torch.tensor([1, 2, 0, -3, 1, 0])
    beyond = torch.tensor([1, 2, 0, 99, 1, 0])
    float_indptr = ok_indptr.double()


    def batch_graph_across_cells():
        indptr = torch.tensor([0, 1, 2, 3, 4])
        indices = torch.tensor([0, 2, 2, 3])  # token 1 of cell 0 attends to token 0 of cell 1
        return tensor_case(lambda: BatchGraph(indptr, indices, 2, 2), indptr, indices)


    def batch_graph_short_indices():
        indptr = torch.tensor([0, 1, 2, 9, 9])
        indices = torch.tensor([0, 1, 2])
        return tensor_case(lambda: BatchGraph(indptr, indices, 2, 2), indptr, indices)


    def spmm_short_col():
        crow = torch.tensor([0, 2, 40], dtype=torch.int32)
        col = torch.tensor([0, 1], dtype=torch.int32)
        val, x = torch.ones(2), torch.ones(2, 8)
        out = torch.empty(2, 8)
        return tensor_case(lambda: _kernels.spmm(crow, col, val, x, out), crow, col, val, x)


    def sddmm_bad_crow():
        crow = torch.tensor([0, 1], dtype=torch.int64)
        col = torch.tensor([0], dtype=torch.int64)
        a, b = torch.ones(3, 8), torch.ones(3, 8)
        out = torch.zeros(1)
        return tensor_case(lambda: _kernels.sddmm(crow, col, a, b, out), crow, col, a, b)


    def module_graph_replaced():
        model = gh.GenoHoptionModel.load(saved)
        p = model.module.graph_indptr.clone()
        first, second = int(p[1]), int(p[2])
        p[1], p[2] = second + 3, first  # decreasing
        model.module.graph_indptr = p
        q = query()
        return (lambda: model.predict(q)), lambda: "genohoption_prediction" not in q.obs


    def corrupt_varp_graph():
        a = gh.datasets.pbmc68k_reduced()[:60].copy()
        a.obs["t"] = np.where(np.arange(a.n_obs) % 2, "x", "y")
        g = sp.csr_matrix(np.eye(a.n_vars, k=1, dtype=np.float32))
        g.indptr[[2, 3]] = g.indptr[[3, 2]] + np.array([1, 0])  # decreasing, bypassing SciPy's checks
        a.varp["gene_graph"] = sp.csr_matrix((a.n_vars, a.n_vars), dtype=np.float32)
        a.varp._data["gene_graph"] = g
        before = g.indptr.copy()
        return (lambda: gh.GenoHoptionModel.setup_anndata(a, labels_key="t")), (
            lambda: np.array_equal(g.indptr, before) and "_scvi_uuid" not in a.uns)


    def corrupt_query_x():
        model = gh.GenoHoptionModel.load(saved)
        q = query()
        q.X = sp.csr_matrix(q.X)
        q.X.indices[5] = q.n_vars + 1000  # out of range, bypassing SciPy's checks
        before = q.X.indices.copy()
        return (lambda: model.predict(q)), lambda: np.array_equal(q.X.indices, before) and "genohoption_prediction" not in q.obs


    def corrupt_reference_x():
        a = gh.datasets.pbmc68k_reduced()[:60].copy()
        gh.pp.build_gene_graph(a, prior=None, min_corr=0.2)
        a.X = sp.csr_matrix(a.X)
        a.X.indptr[10] = a.X.indptr[12] + 7  # decreasing afterwards
        before = a.X.indptr.copy()
        return (lambda: gh.GenoHoptionModel.setup_anndata(a, labels_key="bulk_labels")), (
            lambda: np.array_equal(a.X.indptr, before) and "_scvi_uuid" not in a.uns)


    CASES = {
        "load/graph-indptr-decreasing": lambda: damaged_model("dec", indptr_decreasing),
        "load/graph-index-out-of-range": lambda: damaged_model("oor", index_out_of_range),
        "load/graph-index-negative": lambda: damaged_model("neg", index_negative),
        "load/graph-indptr-too-long": lambda: damaged_model("long", indptr_too_long),
        "nn/induced-indptr-decreasing": lambda: tensor_case(
            lambda: induced_batch_graph(tokens, bad_indptr, ok_indices), bad_indptr, ok_indices),
        "nn/induced-index-negative": lambda: tensor_case(
            lambda: induced_batch_graph(tokens, ok_indptr, wrapping), ok_indptr, wrapping),
        "nn/induced-index-out-of-range": lambda: tensor_case(
            lambda: induced_batch_graph(tokens, ok_indptr, beyond), ok_indptr, beyond),
        "nn/induced-float-indptr": lambda: tensor_case(
            lambda: induced_batch_graph(tokens, float_indptr, ok_indices), float_indptr, ok_indices),
        "nn/batch-graph-across-cells": batch_graph_across_cells,
        "nn/batch-graph-short-indices": batch_graph_short_indices,
        "nn/spmm-short-col": spmm_short_col,
        "nn/sddmm-bad-crow": sddmm_bad_crow,
        "model/graph-buffer-replaced": module_graph_replaced,
        "setup/corrupt-varp-graph": corrupt_varp_graph,
        "predict/corrupt-sparse-query": corrupt_query_x,
        "setup/corrupt-sparse-reference": corrupt_reference_x,
    }

    for name in sys.argv[3:]:
        act, unchanged = CASES[name]()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                act()
            error = message = None
        except Exception as exc:
            error, message = type(exc).__name__, str(exc)
        print(json.dumps({"id": name, "error": error, "message": message, "unchanged": bool(unchanged())}),
              flush=True)
''')

CRASH_CASES = {
    # id: (exception name, message fragment naming the fix)
    "load/graph-indptr-decreasing": ("ValueError", "row pointers decrease.*repair the file"),
    "load/graph-index-out-of-range": ("ValueError", r"column index out of \[0, \d+\).*rebuild it"),
    "load/graph-index-negative": ("ValueError", "column index out of.*-2"),
    "load/graph-indptr-too-long": ("ValueError", "row pointers of length.*rebuild it"),
    "nn/induced-indptr-decreasing": ("ValueError", "row pointers decrease; they must be non-decreasing"),
    "nn/induced-index-negative": ("ValueError", r"column index out of \[0, 4\): -3\.\.2"),
    "nn/induced-index-out-of-range": ("ValueError", r"column index out of \[0, 4\): 0\.\.99"),
    "nn/induced-float-indptr": ("ValueError", "indptr must be a 1-D integer array, got torch.float64"),
    "nn/batch-graph-across-cells": ("ValueError", "two different cells"),
    "nn/batch-graph-short-indices": ("ValueError", r"row pointers must run from 0 to len\(indices\) = 3, got 0\.\.9"),
    "nn/spmm-short-col": ("ValueError", r"col has 2 entries but crow\[-1\] = 40"),
    "nn/sddmm-bad-crow": ("ValueError", "crow must have n_rows \\+ 1 = 4 entries"),
    "model/graph-buffer-replaced": ("ValueError", r"the gene graph is not a valid CSR matrix \(row pointers decrease"),
    "setup/corrupt-varp-graph": ("ValueError", r"adata\.varp\['gene_graph'\] is not a valid CSR.*build_gene_graph"),
    "predict/corrupt-sparse-query": ("ValueError", r"adata\.X is not a valid CSR matrix.*read the data again"),
    "setup/corrupt-sparse-reference": ("ValueError", r"adata\.X is not a valid CSR matrix"),
}


@pytest.fixture(scope="module")
def crash_results(env, tmp_path_factory):
    """Run every crash case in one subprocess; a crash there leaves the cases after it without a result."""
    work = tmp_path_factory.mktemp("crash")
    script = work / "cases.py"
    script.write_text(CRASH_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(env.saved), str(work), *CRASH_CASES],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"})
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            results[record["id"]] = record
    return results, proc


@pytest.mark.parametrize("case_id", list(CRASH_CASES))
def test_crash_case_in_subprocess(case_id, crash_results):
    results, proc = crash_results
    assert case_id in results, (
        f"no result: the subprocess ended with status {proc.returncode} (negative: killed by a signal, e.g. -11 "
        f"= segmentation fault) before this case; stderr: {proc.stderr[-2000:]}"
    )
    record = results[case_id]
    error, match = CRASH_CASES[case_id]
    assert record["error"] == error, record
    assert pd.Series([record["message"]]).str.contains(match, regex=True).iloc[0], record["message"]
    assert record["unchanged"], f"{case_id} changed its inputs"


# ------------------------------------------------------------------------------------------ command line
def _cli_files(tmp: Path, env) -> dict[str, Path]:
    paths = {"ref": tmp / "ref.h5ad", "query": tmp / "query.h5ad"}
    env.fresh.write_h5ad(paths["ref"])
    env.query.write_h5ad(paths["query"])
    return paths


def _query_variant(tmp: Path, env, change) -> Path:
    q = env.query.copy()
    change(q)
    path = tmp / "bad_query.h5ad"
    q.write_h5ad(path)
    return path


CLI_CASES = {
    # id: (make the extra arguments from (tmp, env, files), expected fragment of the one-line error)
    "cli/query-nan": (lambda t, e, f: ["--query", str(_query_variant(t, e, lambda q: _poke(q, np.nan)))],
                      "the query's X contains NaN or infinite values"),
    "cli/query-negative": (lambda t, e, f: ["--query", str(_query_variant(t, e, lambda q: _poke(q, -1.0)))],
                           "the query's X contains negative values"),
    "cli/query-float16": (lambda t, e, f: ["--query", str(_query_variant(t, e, lambda q: _dense_x(q, np.float16)))],
                          "float16"),
    "cli/query-no-cells": (lambda t, e, f: ["--query", str(_query_variant(t, e, lambda q: q._inplace_subset_obs(
        np.zeros(q.n_obs, bool))))], "the query has no cells"),
    "cli/query-is-directory": (lambda t, e, f: ["--query", str(t)], "is not a file"),
    "cli/save-model-is-file": (lambda t, e, f: ["--save-model", str(f["query"])], "is a file, not a directory"),
    "cli/save-model-holds-model": (lambda t, e, f: ["--save-model", str(e.saved)], "already holds a saved model"),
}


@pytest.mark.parametrize("case_id", list(CLI_CASES))
def test_cli_refuses_before_training(case_id, env, tmp_path, capsys):
    from genohoption.cli import main

    files = _cli_files(tmp_path, env)
    make, expected = CLI_CASES[case_id]
    extra = make(tmp_path, env, files)
    argv = ["annotate", "--reference", str(files["ref"]), "--query", str(files["query"]), "--labels-key", "bulk_labels",
            *extra,
            "--out", str(tmp_path / "out"), "--prior", "none", "--max-epochs", "1"]
    before = _files(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("genohoption annotate: error: "), err
    assert expected in lines[0], lines[0]
    assert not (tmp_path / "out").exists() and _files(tmp_path) == before


def test_cli_warns_on_raw_count_query(env, capsys):
    from genohoption.cli._annotate import check_data
    from genohoption.cli._main import build_parser

    args = build_parser().parse_args(["annotate"])
    check_data(env.fresh.copy(), env.raw.copy(), "bulk_labels", args)
    err = capsys.readouterr().err
    assert err.startswith("genohoption annotate: warning: the query holds integers (raw counts)"), err
    assert "the reference holds non-integer values" in err and "sc.pp.log1p" in err
    check_data(env.fresh.copy(), env.query.copy(), "bulk_labels", args)
    assert capsys.readouterr().err == ""


def test_value_scale_saved_with_the_model(env, tmp_path):
    model = env.model
    assert model.value_scale_["integer"] is False and 0 < model.value_scale_["max"] < 20
    loaded = gh.GenoHoptionModel.load(env.saved)
    assert loaded.value_scale_ == model.value_scale_
    meta = json.loads((env.saved / "model.json").read_text())
    del meta["value_scale"]  # a model saved before the scale was recorded: no comparison, no warning
    old = tmp_path / "old"
    shutil.copytree(env.saved, old)
    (old / "model.json").write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gh.GenoHoptionModel.load(old).get_latent_representation(env.raw.copy())


def test_copy_helpers_do_not_share_state(env, tmp_path):
    """The comparison itself notices a change (guards the table against a comparison that sees nothing)."""
    ctx = _ctx(env, tmp_path)
    before = _snapshots(ctx)
    ctx.q.obs["new"] = 1
    with pytest.raises(AssertionError):
        _same(before["q"], ctx.q, "q", set())
    ctx.q.obs.pop("new")
    ctx.q.uns["x"] = {"a": np.arange(3)}
    with pytest.raises(AssertionError):
        _same(before["q"], ctx.q, "q", set())
