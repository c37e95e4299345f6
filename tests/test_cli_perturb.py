"""The ``genohoption perturb`` command line: one-line errors, a tiny run with the model and every baseline."""

from __future__ import annotations

import json
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

import genohoption as gh
from genohoption.cli import main

FAST = ["--max-epochs", "1", "--threads", "1", "--batch-size", "32"]


def _run(argv, capsys) -> tuple[int, str, str]:
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    """A simulated screen in GEARS format; one perturbed gene's column removed (an unmeasured target)."""
    sim = gh.datasets.simulate_perturbation(n_genes=30, n_regulators=10, n_perturbed=8, n_combos=3, n_control=60,
                                           cells_per_condition=6, library_size=1500, seed=0)
    hidden = sim.uns["simulation"]["perturbed_genes"][0]
    adata = sim[:, sim.var_names != hidden].copy()
    adata.obs["my_split"] = np.where(adata.obs["condition"].astype(str).isin([f"{hidden}+ctrl"]), "test", "train")
    path = tmp_path_factory.mktemp("perturb_cli") / "screen.h5ad"
    adata.write_h5ad(path)
    return path, hidden


def test_perturb_help_lists_options_without_torch(capsys):
    rc, out, _ = _run(["perturb", "--help"], capsys)
    assert rc == 0
    for option in ("--data", "--split", "--seed", "--cell-type", "--gene-symbols", "--prior", "--attention",
                   "--max-epochs", "--threads", "--out", "--save-model", "--no-plot"):
        assert option in out, option
    code = ("import contextlib, io, sys\nfrom genohoption.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    try:\n        main(['perturb', '--help'])\n"
            "    except SystemExit:\n        pass\nprint(sorted(m for m in ('torch', 'scvi', 'lightning') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout.strip() == "[]", result.stderr


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--split", "nope"], "--split 'nope' is neither 'simulation', 'kfold' nor an obs column"),
        (["--split", "kfold", "--n-folds", "3", "--fold", "3"], "--fold must be below --n-folds (3)"),
        (["--gene-symbols", "nope"], "no var column 'nope'"),
        (["--cell-type", "nope"], "--cell-type 'nope': no such cell type"),
        (["--train-gene-fraction", "1.5"], "--train-gene-fraction must be in (0, 1)"),
        (["--control-value", "none"], "no control cells"),
        (["--prior", "missing.csv"], "--prior missing.csv: no such file"),
        (["--max-epochs", "0"], "argument --max-epochs: must be an integer >= 1, got 0"),
    ],
)
def test_perturb_errors_are_one_line(screen, tmp_path, capsys, extra, expected):
    path, _ = screen
    rc, _, err = _run(["perturb", "--data", str(path), "--out", str(tmp_path / "o"), *FAST, *extra], capsys)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_perturb_missing_file(tmp_path, capsys):
    rc, _, err = _run(["perturb", "--data", str(tmp_path / "none.h5ad")], capsys)
    assert rc == 2 and "no such file" in err and len(err.strip().splitlines()) == 1


# the 50 x 50 format fixture: few prior edges among its genes, one or two cells per condition (scvi-tools warns)
@pytest.mark.filterwarnings("ignore:The prior network gives edges:UserWarning")
@pytest.mark.filterwarnings("ignore:Category .* has fewer than 3 cells:UserWarning")
def test_perturb_norman_subset(tmp_path, capsys, shared_data):
    """A real GEARS file end to end: none of its perturbed genes is measured, each can be trained and predicted."""
    norman = shared_data / "perturbation" / "norman_subset_gears_format.h5ad"
    rc, _, err = _run(["perturb", "--data", str(norman), "--out", str(tmp_path / "n"), "--no-plot", *FAST], capsys)
    assert rc == 0, err
    assert "have fewer than 2 cells and are not scored" in err
    metrics = json.loads((tmp_path / "n" / "metrics.json").read_text())
    assert metrics["test_conditions"] and set(metrics["test_targets"].values()) == {"unmeasured"}


def test_perturb_runs_model_and_baselines(screen, tmp_path, capsys):
    path, hidden = screen
    out = tmp_path / "out"
    rc, stdout, err = _run(["perturb", "--data", str(path), "--split", "my_split", "--out", str(out),
                            "--save-model", str(tmp_path / "model"), *FAST], capsys)
    assert rc == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    methods = ["genohoption", "no_change", "mean", "additive", "linear", "target_gene_control", "target_gene_mean",
               "prior_network", "matching_mean"]
    assert list(metrics["summary"]) == methods and metrics["baselines"] == methods[1:]
    assert metrics["test_conditions"] == [f"{hidden}+ctrl"]
    assert metrics["test_targets"] == {f"{hidden}+ctrl": "unmeasured"}
    for name in methods:
        assert set(metrics["summary"][name]) == {"all", "unmeasured"}
        assert {"centroid_accuracy", "pearson_delta_pert_excl_target", "l2_skill", "direction_accuracy_de",
                "de_recall"} <= set(metrics["summary"][name]["all"])
    assert metrics["summary"]["no_change"]["all"]["pearson_delta"] == 0.0
    # every method's scores carry their interval; the mean baseline's skill is 0 by construction
    assert metrics["intervals"]["mean"]["l2_skill"]["degenerate"] is True
    assert metrics["intervals"]["no_change"]["pearson_delta"]["degenerate"] is True
    one = metrics["intervals"]["genohoption"]["mse_de"]
    assert one["n_conditions"] == 1 and one["low"] == one["estimate"] == one["high"]  # one condition: no spread
    versus = metrics["versus_best_baseline"]["l2_top_expressed"]
    assert versus["best_baseline"] in methods[1:]
    per = metrics["per_condition"]
    assert versus["difference"] == pytest.approx(per[versus["best_baseline"]][f"{hidden}+ctrl"]["l2_top_expressed"]
                                                 - per["genohoption"][f"{hidden}+ctrl"]["l2_top_expressed"], abs=1e-5)
    assert metrics["n_control_cells"] == 60 and metrics["bootstrap"]["unit"] == "test condition"
    assert set(metrics["shuffle_null"]["centroid_accuracy"]) == {"null_mean", "null_low", "null_high", "observed",
                                                                "p_value"}
    pred = ad.read_h5ad(out / "predictions.h5ad")
    assert list(pred.obs_names) == [f"{hidden}+ctrl"] and set(methods) <= set(pred.layers)
    assert (out / "perturbation_response.png").is_file()
    loaded = gh.GenoHoptionModel.load(tmp_path / "model")
    assert loaded._task.universe.find(hidden) >= loaded.summary_stats.n_vars
    assert "genohoption" in stdout and "linear" in stdout


def test_perturb_simulation_split_without_plot(screen, tmp_path, capsys):
    path, _ = screen
    rc, _, err = _run(["perturb", "--data", str(path), "--out", str(tmp_path / "s"), "--no-plot", "--seed", "2",
                       "--attention", "dense", "--max-cells-per-condition", "4", *FAST], capsys)
    assert rc == 0, err
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert metrics["split"] == "simulation" and metrics["test_subgroups"]
    # at most 4 cells of each training perturbation, and every control cell (the inputs and the reference)
    assert metrics["n_train_cells"] <= 4 * len(metrics["train_conditions"]) + 60
    assert metrics["n_control_cells"] == 60


def test_perturb_kfold_residual_pretrain(screen, tmp_path, capsys):
    """Fold 1 of 3 disjoint folds, the residual model pretrained on the control cells; intervals over 3+ conditions."""
    path, _ = screen
    rc, stdout, err = _run(["perturb", "--data", str(path), "--out", str(tmp_path / "k"), "--no-plot", "--split",
                            "kfold", "--n-folds", "3", "--fold", "1", "--residual", "--pretrain-epochs", "1",
                            "--n-boot", "200", *FAST], capsys)
    assert rc == 0, err
    metrics = json.loads((tmp_path / "k" / "metrics.json").read_text())
    folds = metrics["folds"]
    assert len(folds) == 3 and metrics["test_conditions"] == folds[1]
    assert sorted(c for f in folds for c in f) == sorted(metrics["train_conditions"] + folds[1])
    assert metrics["residual"] is True and metrics["pretrain_epochs"] == 1
    ci = metrics["intervals"]["genohoption"]["centroid_accuracy"]
    assert ci["low"] <= ci["estimate"] <= ci["high"] and ci["n_conditions"] == len(folds[1])
    assert "vs" in stdout and "genohoption - best baseline" in stdout
    assert not (tmp_path / "s" / "perturbation_response.png").exists()
