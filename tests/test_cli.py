"""The ``genohoption annotate`` command line and the logistic-regression baseline it reports."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import genohoption as gh
from genohoption.cli import main

CELL_TYPES = ("Dendritic", "CD14+ Monocyte", "CD19+ B")
N_PER_TYPE = 40


def _run(argv, capsys) -> tuple[int, str, str]:
    """Run ``genohoption`` in-process; return (exit status, stdout, stderr)."""
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A small reference / query pair from pbmc68k_reduced: 3 cell types x 40 cells, every third to the query.

    The reference carries a layer ``lognorm`` that the query lacks; the query keeps scanpy's ``X_umap``.
    Also a query renamed so that it shares no gene with the reference.
    """
    adata = gh.datasets.pbmc68k_reduced()
    keep = np.concatenate([np.flatnonzero(adata.obs["bulk_labels"] == t)[:N_PER_TYPE] for t in CELL_TYPES])
    adata = adata[np.sort(keep)].copy()
    adata.obs["cell_type"] = adata.obs["bulk_labels"].astype(str).astype("category")
    in_query = np.arange(adata.n_obs) % 3 == 0
    ref, query = adata[~in_query].copy(), adata[in_query].copy()
    ref.layers["lognorm"] = ref.X.copy()
    assert "X_umap" in query.obsm and query.obsm["X_umap"].shape == (query.n_obs, 2)
    d = tmp_path_factory.mktemp("cli_inputs")
    paths = {"ref": d / "ref.h5ad", "query": d / "query.h5ad", "alien": d / "alien.h5ad"}
    ref.write_h5ad(paths["ref"])
    query.write_h5ad(paths["query"])
    alien = query.copy()
    alien.var_names = [f"NOT_{g}" for g in alien.var_names]
    alien.write_h5ad(paths["alien"])
    return paths


# ------------------------------------------------------------------------------------- help and errors
def test_help_exits_zero(capsys):
    rc, out, _ = _run(["--help"], capsys)
    assert rc == 0
    assert "annotate" in out
    rc, out, _ = _run(["annotate", "--help"], capsys)
    assert rc == 0
    for option in ("--reference", "--query", "--threads", "--prior", "--gene-symbols", "--save-model", "--seed",
                   "--out", "--max-epochs", "--batch-size", "--layer", "--no-plot"):
        assert option in out, option


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing_reference", "--reference"),
        ("only_reference", "only --reference given"),
        ("only_query", "only --query given"),
        ("out_is_file", "is a file, not a directory"),
        ("max_epochs_0", "argument --max-epochs: must be an integer >= 1, got 0"),
        ("batch_size_0", "argument --batch-size: must be an integer >= 1, got 0"),
        ("threads_0", "argument --threads: must be an integer >= 1, got 0"),
        ("missing_prior", "--prior"),
        ("no_shared_gene", "shares no gene with the reference"),
        ("missing_labels_key", "the reference: --labels-key 'no_such_column' is not a column of adata.obs"),
        ("layer_missing_in_query", "the query: --layer 'lognorm' is not in adata.layers"),
        ("layer_missing_everywhere", "the reference: --layer 'counts' is not in adata.layers"),
        ("gene_symbols_missing", "no var column 'symbol'"),
        ("not_h5ad", "cannot read it as .h5ad"),
        ("unknown_threshold_2", "argument --unknown-threshold: give 'calibrated', 'none' or a number in [0, 1], got '2'"),
        ("calibrated_no_held_out", "--unknown-threshold calibrated needs held-out reference cells"),
        ("calibration_fraction_1", "--calibration-fraction 1.0: give a fraction in [0, 1)"),
        ("false_unknown_rate_0", "--false-unknown-rate 0.0: give a fraction in (0, 1)"),
    ],
)
def test_user_errors_are_one_line_exit_2(case, expected, files, tmp_path, capsys):
    out_dir = tmp_path / "out"
    io = ["--reference", str(files["ref"]), "--query", str(files["query"])]
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an h5ad file\n")
    argv = {
        "missing_reference": ["--reference", str(tmp_path / "absent.h5ad"), "--query", str(files["query"])],
        "only_reference": ["--reference", str(files["ref"])],
        "only_query": ["--query", str(files["query"])],
        "out_is_file": [*io, "--out", str(text_file)],
        "max_epochs_0": [*io, "--max-epochs", "0"],
        "batch_size_0": [*io, "--batch-size", "0"],
        "threads_0": [*io, "--threads", "0"],
        "missing_prior": [*io, "--prior", str(tmp_path / "absent.csv")],
        "no_shared_gene": ["--reference", str(files["ref"]), "--query", str(files["alien"])],
        "missing_labels_key": [*io, "--labels-key", "no_such_column"],
        "layer_missing_in_query": [*io, "--layer", "lognorm"],
        "layer_missing_everywhere": [*io, "--layer", "counts"],
        "gene_symbols_missing": [*io, "--gene-symbols", "symbol"],
        "not_h5ad": ["--reference", str(text_file), "--query", str(files["query"])],
        "unknown_threshold_2": [*io, "--unknown-threshold", "2"],
        "calibrated_no_held_out": [*io, "--calibration-fraction", "0"],
        "calibration_fraction_1": [*io, "--calibration-fraction", "1"],
        "false_unknown_rate_0": [*io, "--false-unknown-rate", "0"],
    }[case]
    if "--out" not in argv:
        argv = [*argv, "--out", str(out_dir)]
    rc, out, err = _run(["annotate", *argv], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # one line, no usage block, no traceback
    assert lines[0].startswith("genohoption annotate: error: "), lines[0]
    assert expected in lines[0]
    assert "Traceback" not in err and out == ""
    assert not out_dir.exists()  # refused before anything was written (or trained)


def test_few_shared_genes_warns(files, capsys):
    from genohoption.cli._annotate import check_data
    from genohoption.cli._main import build_parser

    ref, query = ad.read_h5ad(files["ref"]), ad.read_h5ad(files["query"])
    args = build_parser().parse_args(["annotate"])
    check_data(ref, query, "cell_type", args)
    assert capsys.readouterr().err == ""  # all genes shared: silent
    check_data(ref, query[:, : ref.n_vars // 3].copy(), "cell_type", args)
    err = capsys.readouterr().err
    assert err.startswith("genohoption annotate: warning: the query holds only 255 of the reference's 765 "
                          "genes (33%)")


def test_package_errors_become_one_line_in_the_options_terms():
    from genohoption.cli._common import UserError, user_error

    err = user_error(KeyError("labels_key='x' is not a column of adata.obs; available: ['a']."), "the reference")
    assert isinstance(err, UserError)
    assert str(err) == "the reference: --labels-key 'x' is not a column of adata.obs; available: ['a']."
    err = user_error(ValueError("adata.X is empty (None); pass layer= naming the layer\nthat holds expression."))
    assert str(err) == "adata.X is empty (None); pass --layer naming the layer that holds expression."
    # a call written out in the message keeps the package's parameters; the context is not repeated
    err = user_error(TypeError("the query's X: register it with setup_anndata(adata, layer='counts') or (labels_key=None)"),
                     "the query")
    assert str(err) == "the query's X: register it with setup_anndata(adata, layer='counts') or (labels_key=None)"
    err = user_error(ValueError("no test condition; pass another seed= or split=."), "cannot split")
    assert str(err) == "cannot split: no test condition; pass another --seed or --split."
    assert str(user_error(FileNotFoundError("net.csv not found"), "x")) == "x: net.csv not found"


# ------------------------------------------------------------------------------------- successful runs
def _check_outputs(out_dir: Path, query_file: Path, *, seed: int) -> tuple[dict, ad.AnnData]:
    metrics = json.loads((out_dir / "metrics.json").read_text())
    written = ad.read_h5ad(out_dir / "query.h5ad")
    original = ad.read_h5ad(query_file)
    # the input's UMAP is untouched, the predictions are there
    assert np.array_equal(written.obsm["X_umap"], original.obsm["X_umap"])
    assert list(written.obs_names) == list(original.obs_names)
    pred = written.obs["genohoption_prediction"]
    assert pred.notna().all() and set(pred.astype(str)) <= {*CELL_TYPES, "Unknown"}
    assert set(written.obs["logreg_prediction"].astype(str)) <= set(CELL_TYPES)
    assert written.obsm["X_genohoption"].shape[0] == written.n_obs
    # the figures in metrics.json are those of the written predictions
    truth = written.obs["cell_type"].astype(str).to_numpy()
    # accuracy: a reference type for every cell (the probabilities' argmax), as the baseline's
    forced = written.obsm["genohoption_probabilities"].idxmax(axis=1).to_numpy()
    assert metrics["accuracy"] == pytest.approx(np.mean(forced == truth))
    # the written predictions call the cells above the calibrated threshold Unknown, the others keep their type
    unc, pred = metrics["uncertainty"], pred.astype(str).to_numpy()
    unknown = pred == "Unknown"
    np.testing.assert_array_equal(unknown, written.obs["genohoption_uncertainty"] > unc["unknown_threshold"])
    assert unc["unknown_threshold"] == pytest.approx(unc["calibration"]["threshold"])
    assert unc["n_unknown"] == unknown.sum() and (pred[~unknown] == forced[~unknown]).all()
    assert unc["accuracy_with_unknown"] == pytest.approx(np.mean(pred == truth))
    assert unc["calibration"]["n_cells"] == round(0.1 * 80) and unc["calibration"]["temperature"] > 0
    base = metrics["baseline_logreg"]
    baseline_pred = written.obs["logreg_prediction"].astype(str).to_numpy()
    assert base["accuracy"] == pytest.approx(np.mean(baseline_pred == truth))
    assert 0 <= metrics["macro_f1"] <= 1 and 0 <= base["macro_f1"] <= 1
    # three well-separated cell types: the linear baseline gets nearly all of them
    assert base["accuracy"] >= 0.9
    assert metrics["seed"] == seed and metrics["threads"] == 1
    # one epoch, and the pass of stochastic weight averaging that re-estimates the BatchNorm statistics
    assert metrics["epochs"] == 2 and metrics["prior"] == "none"
    assert metrics["n_query"] == original.n_obs == 40 and metrics["n_genes_shared"] == 765
    return metrics, written


def test_annotate_tiny_run_without_plot(files, tmp_path, capsys):
    out_dir, model_dir = tmp_path / "out", tmp_path / "model"
    rc, out, err = _run(["annotate", "--reference", str(files["ref"]), "--query", str(files["query"]),
                         "--max-epochs", "1", "--prior", "none", "--no-plot", "--threads", "1", "--seed", "3",
                         "--out", str(out_dir), "--save-model", str(model_dir)], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["metrics.json", "query.h5ad"]
    metrics, written = _check_outputs(out_dir, files["query"], seed=3)
    assert "X_umap_genohoption" not in written.obsm
    assert metrics["saved_model"] == str(model_dir)
    assert f"accuracy {metrics['accuracy']:.3f}" in out
    assert f"logistic regression: accuracy {metrics['baseline_logreg']['accuracy']:.3f}" in out
    assert f"{metrics['uncertainty']['n_unknown']} of 40 query cells Unknown" in out
    assert "calibration on 8 held-out reference cells: temperature" in out
    # the saved ensemble (3 models by default) reloads and predicts what the run wrote
    assert metrics["ensemble"] == 3 and metrics["recipe"] == "swa-ensemble"
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "ensemble.json", *(f"member{i}_model.{ext}" for i in range(3) for ext in ("json", "safetensors"))]
    query = ad.read_h5ad(files["query"])
    model = gh.model.GenoHoptionEnsemble.load(model_dir)
    assert model.n_members == 3 and model.calibration_ == pytest.approx(metrics["uncertainty"]["calibration"])
    reloaded = model.predict(query, unknown_threshold="calibrated")
    assert list(reloaded.astype(str)) == list(written.obs["genohoption_prediction"].astype(str))
    # a second run refuses to overwrite the saved model, before training
    rc, _, err = _run(["annotate", "--reference", str(files["ref"]), "--query", str(files["query"]),
                       "--out", str(tmp_path / "out2"), "--save-model", str(model_dir)], capsys)
    assert rc == 2 and "already holds a saved model" in err and len(err.strip().splitlines()) == 1


def test_annotate_tiny_run_with_plot(files, tmp_path, capsys):
    out_dir = tmp_path / "existing_dir"
    out_dir.mkdir()  # an existing directory is fine
    rc, _, err = _run(["annotate", "--reference", str(files["ref"]), "--query", str(files["query"]),
                       "--max-epochs", "1", "--prior", "none", "--threads", "1", "--seed", "0",
                       "--ensemble", "1", "--out", str(out_dir)], capsys)
    assert rc == 0, err
    recorded = json.loads((out_dir / "metrics.json").read_text())
    assert recorded["ensemble"] == 1 and recorded["recipe"] == "swa"
    assert (out_dir / "umap.png").stat().st_size > 10_000
    assert (out_dir / "umap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _, written = _check_outputs(out_dir, files["query"], seed=0)
    umap = written.obsm["X_umap_genohoption"]
    assert umap.shape == (written.n_obs, 2) and np.isfinite(umap).all()
    assert not np.allclose(umap, written.obsm["X_umap"])
    assert "genohoption_neighbors" in written.uns  # its own neighbour graph, not uns["neighbors"]
    assert "neighbors" not in written.uns and "connectivities" not in written.obsp


# ------------------------------------------------------------------------------------- the baseline
def _toy(n_per_class: int = 20, seed: int = 0, sparse_x: bool = False) -> ad.AnnData:
    """3 classes over 6 genes: class k expresses genes 2k and 2k+1 (values 2-3), the others 0-0.5."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(["A", "B", "C"], n_per_class)
    X = rng.uniform(0, 0.5, size=(labels.size, 6)).astype(np.float32)
    for k, _ in enumerate("ABC"):
        X[labels == "ABC"[k], 2 * k: 2 * k + 2] = rng.uniform(2, 3, size=(n_per_class, 2))
    obs = pd.DataFrame({"cell_type": pd.Categorical(labels)},
                       index=[f"cell{seed}_{i}" for i in range(labels.size)])
    var = pd.DataFrame(index=[f"g{j}" for j in range(6)])
    return ad.AnnData(sparse.csr_matrix(X) if sparse_x else X, obs=obs, var=var)


@pytest.mark.parametrize("sparse_x", [False, True])
def test_logistic_regression_baseline_known_answer(sparse_x):
    ref, query = _toy(seed=0, sparse_x=sparse_x), _toy(n_per_class=10, seed=1, sparse_x=sparse_x)
    pred = gh.tl.logistic_regression_baseline(ref, query, "cell_type")
    assert isinstance(pred.dtype, pd.CategoricalDtype) and list(pred.cat.categories) == ["A", "B", "C"]
    assert pred.index.equals(query.obs_names) and pred.name == "logreg_prediction"
    assert list(pred.astype(str)) == list(query.obs["cell_type"].astype(str))
    # the probability of the predicted type, beside the prediction (1 - it is the baseline's uncertainty)
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=1000).fit(ref.X, ref.obs["cell_type"].astype(str))
    np.testing.assert_allclose(query.obs["logreg_confidence"], clf.predict_proba(query.X).max(1), rtol=1e-6)
    assert query.obs["logreg_prediction"].equals(pred)
    m = gh.tl.annotation_metrics(query, "cell_type", prediction_key="logreg_prediction")
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0
    info = query.uns["logreg_prediction"]
    assert info["converged"] and info["n_genes_shared"] == 6 and info["layer"] == "X"


@pytest.mark.parametrize("sparse_x", [False, True])
def test_logistic_regression_baseline_aligns_genes(sparse_x):
    ref = _toy(seed=0)
    full = _toy(n_per_class=10, seed=2)
    # the aligned query: reference gene order, g0 and g1 (the markers of A) absent, i.e. 0
    aligned = full.copy()
    aligned.X[:, [0, 1]] = 0
    # the same cells with g0 and g1 missing, an extra gene the reference lacks, genes shuffled
    X = np.column_stack([full.X[:, [5, 3, 2, 4]], np.full(full.n_obs, 9.0, np.float32)])
    messy = ad.AnnData(sparse.csr_matrix(X) if sparse_x else X, obs=full.obs.copy(),
                       var=pd.DataFrame(index=["g5", "g3", "g2", "g4", "extra"]))
    expected = gh.tl.logistic_regression_baseline(ref, aligned, "cell_type", key_added="p")
    got = gh.tl.logistic_regression_baseline(ref, messy, "cell_type", key_added="p")
    assert list(got.astype(str)) == list(expected.astype(str))
    assert got.index.equals(messy.obs_names)
    assert messy.uns["p"]["n_genes_shared"] == 4
    # the missing genes matter (the A cells lose their markers), so the comparison above is not vacuous
    untouched = gh.tl.logistic_regression_baseline(ref, full, "cell_type", key_added="p")
    assert list(untouched.astype(str)) == list(full.obs["cell_type"].astype(str))
    assert (untouched.astype(str) != expected.astype(str)).sum() >= 5


def test_logistic_regression_baseline_layer_copy_and_errors():
    ref, query = _toy(seed=0), _toy(n_per_class=5, seed=3)
    ref.layers["expr"], query.layers["expr"] = ref.X.copy(), query.X.copy()
    ref.X, query.X = np.zeros_like(ref.X), np.zeros_like(query.X)  # X is useless: the layer must be used
    ref.obs["cell_type"] = ref.obs["cell_type"].cat.reorder_categories(["C", "A", "B"])
    result = gh.tl.logistic_regression_baseline(ref, query, "cell_type", layer="expr", copy=True)
    assert isinstance(result, ad.AnnData) and "logreg_prediction" not in query.obs
    assert list(result.obs["logreg_prediction"].astype(str)) == list(query.obs["cell_type"].astype(str))
    assert list(result.obs["logreg_prediction"].cat.categories) == ["C", "A", "B"]  # the reference's order
    assert result.uns["logreg_prediction"]["layer"] == "expr"
    with pytest.raises(KeyError, match="no_labels"):
        gh.tl.logistic_regression_baseline(ref, query, "no_labels")
    with pytest.raises(KeyError, match="counts"):
        gh.tl.logistic_regression_baseline(ref, query, "cell_type", layer="counts")
    alien = query.copy()
    alien.var_names = [f"x{i}" for i in range(alien.n_vars)]
    with pytest.raises(ValueError, match="shares no gene"):
        gh.tl.logistic_regression_baseline(ref, alien, "cell_type")
    one_type = ref[ref.obs["cell_type"] == "A"].copy()
    with pytest.raises(ValueError, match="at least two"):
        gh.tl.logistic_regression_baseline(one_type, query, "cell_type")


def test_baseline_module_does_not_import_torch():
    source = Path(gh.tl.logistic_regression_baseline.__code__.co_filename).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported and imported <= {"__future__", "typing", "numpy", "pandas", "scipy", "sklearn", "anndata"}
    assert "torch" not in imported


@pytest.mark.parametrize(("preset", "torch_first", "expected"),
                         [(None, False, "PASSIVE"), ("ACTIVE", False, "ACTIVE"), (None, True, None)])
def test_thread_pools_told_to_yield_before_torch_loads(preset, torch_first, expected):
    """The entry point asks OpenMP's idle threads to sleep, unless the user chose otherwise or it is too late."""
    import os
    import subprocess
    import sys

    code = ("import os, sys\n" + ("import torch\n" if torch_first else "") +
            "from genohoption.cli._common import yielding_thread_pools\nyielding_thread_pools()\n"
            "print(os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME")}
    if preset is not None:
        env["OMP_WAIT_POLICY"] = preset
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(expected)


def test_console_output_each_line_once_third_party_chatter_only_verbose(files, tmp_path):
    """A run in a fresh process: no line twice, no Lightning tip or internal deprecation, Lightning's INFO lines
    only with --verbose."""
    import collections
    import os
    import subprocess
    import sys

    def run(*extra):
        argv = [sys.executable, "-m", "genohoption", "annotate", "--reference", str(files["ref"]), "--query",
                str(files["query"]), "--max-epochs", "1", "--prior", "none", "--no-plot", "--threads", "1",
                "--seed", "3", "--ensemble", "1",  # one model: every trainer logs its own lines
                "--out", str(tmp_path / f"out{len(extra)}"), *extra]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                             env={**os.environ, "MPLBACKEND": "Agg", "PYTHONWARNINGS": ""})
        assert out.returncode == 0, out.stderr
        lines = [line for line in out.stderr.replace("\r", "\n").splitlines() if line.strip()]
        twice = [line for line, n in collections.Counter(lines).items() if n > 1]
        assert not twice, out.stderr  # each log line once (no "INFO: x" then "x")
        return out.stdout, out.stderr

    stdout, stderr = run()
    for text in ("Tip", "litlogger", "LeafSpec", "Seed set to", "GPU available", "INFO:"):
        assert text not in stdout + stderr, text
    assert "Added `adata.varp['gene_graph']`" in stderr  # genohoption's own messages stay
    assert "Epoch 1/" in stdout + stderr  # the progress bar stays (SWA adds a BatchNorm pass: 1/2)
    stdout, stderr = run("--verbose")
    for text in ("Seed set to 3", "GPU available"):
        assert stderr.count(text) == 1, (text, stderr)
    for text in ("litlogger", "LeafSpec"):  # advertisement and internal deprecation: never
        assert text not in stdout + stderr, text
    assert "Added `adata.varp['gene_graph']`" in stderr and "Epoch 1/" in stdout + stderr
