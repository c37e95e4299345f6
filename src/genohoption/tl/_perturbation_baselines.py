"""Simple baselines of perturbation prediction, with the call shape of ``model.predict_perturbation``.

Each baseline is fitted on training cells (control cells and perturbed cells, GEARS conditions) and
predicts a *change* ``Δ_p`` (``(n_vars,)``) and a *scale* ``s_p`` (``(n_vars,)``, 1 but for the
target-gene baseline) for a condition ``p``; the prediction for a control cell ``x`` is
``s_p · x + Δ_p``, so the mean prediction over control cells is ``s_p`` times their mean plus ``Δ_p``. This is
how the model is used (control cells in, perturbed cells out) and lets every figure be computed the
same way for the model and its baselines. Plain numpy (no torch).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import _constants as K
from .._conditions import (
    GeneUniverse,
    case_message,
    condition_list,
    control_mask,
    gene_universe,
    parse_condition,
    parse_conditions,
    perturbation_result,
)
from .._validate import (
    as_anndata,
    check_key,
    check_obs_key,
    check_unique_var_names,
    check_values,
    get_matrix,
    matrix_name,
    uns_entry,
)

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)


def _mean_rows(X, rows: np.ndarray) -> np.ndarray:
    return np.asarray(X[rows].astype(np.float64).mean(0)).ravel()


class PerturbationBaseline:
    """Common interface of the perturbation baselines: :meth:`fit` on training cells, then :meth:`predict_perturbation`.

    Subclasses define :meth:`_fit` (after the training pseudobulk is computed) and :meth:`effect`.

    Attributes
    ----------
    var_names
        Genes of the training data (the predicted genes), after :meth:`fit`.
    control_mean
        ``(n_vars,)`` mean expression of the training control cells.
    pseudobulk
        :class:`~pandas.DataFrame` of the training conditions' mean expression, conditions × genes
        (control included).
    n_cells
        Cells per training condition (:class:`~pandas.Series`).
    """

    name: ClassVar[str] = "baseline"
    key_prefix: ClassVar[str] = ""

    def __init__(self):
        self.var_names: pd.Index | None = None
        self.control_mean: np.ndarray | None = None
        self.pseudobulk: pd.DataFrame | None = None
        self.n_cells: pd.Series | None = None
        self.perturbation_key = "condition"
        self.control_value = "ctrl"
        self.gene_symbols: str | None = None
        self.layer: str | None = None
        self.symbols: np.ndarray | None = None

    def __repr__(self) -> str:
        state = "unfitted" if self.var_names is None else f"fitted on {len(self.pseudobulk) - 1} perturbations"
        return f"{type(self).__name__}({state})"

    # ---------------------------------------------------------------- fit
    def fit(self, adata: AnnData, *, perturbation_key: str = "condition", control_value: str = "ctrl",
            gene_symbols: str | None = None, layer: str | None = None):
        """Fit on training cells.

        Parameters
        ----------
        adata
            Training cells, ``(n_obs, n_vars)``: control cells and perturbed cells, GEARS conditions in
            ``adata.obs[perturbation_key]``; the same kind of values as the data to predict (log-normalised).
        perturbation_key, control_value
            Condition column and control condition.
        gene_symbols
            Column of ``adata.var`` with the symbols the conditions use; ``None``: ``var_names``.
        layer
            Layer with the expression; ``None``: ``adata.X``.

        Returns
        -------
        The fitted baseline (``self``).

        Raises
        ------
        KeyError
            If ``perturbation_key``, ``gene_symbols`` or ``layer`` is missing.
        ValueError
            For malformed conditions, no control cell, duplicated ``var_names`` or NaN / negative values.
        TypeError
            If ``adata`` is not an AnnData / MuData.
        """
        adata = as_anndata(adata)
        check_obs_key(adata, perturbation_key, "perturbation_key")
        check_unique_var_names(adata)
        if gene_symbols is not None and gene_symbols not in adata.var:
            raise KeyError(f"gene_symbols={gene_symbols!r} is not a column of adata.var; available: "
                           f"{list(adata.var.columns)}.")
        X = get_matrix(adata, layer)
        check_values(X, matrix_name(layer))
        values = adata.obs[perturbation_key].astype(str).to_numpy()
        parse_conditions(values, control_value)
        is_ctrl = control_mask(values, control_value)
        if not is_ctrl.any():
            raise ValueError(f"No control cells (adata.obs[{perturbation_key!r}] == {control_value!r}) to fit on; "
                             "pass control_value= naming the control condition.")
        conds = [control_value, *sorted(set(values) - {control_value})]
        rows = {c: np.flatnonzero(values == c) for c in conds}
        self.pseudobulk = pd.DataFrame(np.stack([_mean_rows(X, rows[c]) for c in conds]), index=conds,
                                       columns=adata.var_names.astype(str))
        self.n_cells = pd.Series({c: int(rows[c].size) for c in conds})
        self.var_names = adata.var_names.astype(str)
        self.control_mean = self.pseudobulk.loc[control_value].to_numpy()
        self.perturbation_key, self.control_value = perturbation_key, control_value
        self.gene_symbols, self.layer = gene_symbols, layer
        symbols = adata.var[gene_symbols] if gene_symbols is not None else adata.var_names
        self.symbols = np.asarray(symbols, dtype=str)
        self._fit()
        return self

    def _fit(self) -> None:
        """Fit the baseline's own parameters from :attr:`pseudobulk`."""

    @property
    def training_conditions(self) -> list[str]:
        """Perturbed conditions of the training data."""
        self._check_fitted()
        return [c for c in self.pseudobulk.index if c != self.control_value]

    def _changes(self) -> pd.DataFrame:
        """Training conditions' mean changes from the control mean, conditions × genes."""
        return self.pseudobulk.loc[self.training_conditions] - self.control_mean

    def _check_fitted(self) -> None:
        if self.var_names is None:
            raise ValueError(f"This {type(self).__name__} is not fitted: call .fit(train_adata) first.")

    # ---------------------------------------------------------------- predict
    def effect(self, condition: str) -> np.ndarray:
        """Predicted change ``Δ_p`` of every training gene under ``condition``, ``(n_vars,)``."""
        raise NotImplementedError

    def scale(self, condition: str) -> np.ndarray:
        """Factor ``s_p`` of every training gene's input value under ``condition``, ``(n_vars,)``; 1 here."""
        self._check_fitted()
        return np.ones(len(self.var_names))

    def predict_perturbation(self, adata: AnnData, conditions: str | Sequence[str], *,
                             key_prefix: str | None = None) -> np.ndarray | AnnData:
        """Predict the expression of control cells under perturbations (as ``model.predict_perturbation``).

        The prediction for a cell ``x`` is ``s_p · x + Δ_p`` (:meth:`scale`, :meth:`effect`). Genes are
        matched to the training genes by name; genes the baseline was not fitted on keep their value.
        Everything is computed before anything is written.

        Parameters
        ----------
        adata
            Control cells, ``(n_obs, n_vars)``, the same kind of values (``layer``) as the training data.
        conditions
            One GEARS condition (per-cell predictions written to ``adata.layers``) or a list (mean
            predicted profiles returned, nothing written to layers).
        key_prefix
            Prefix of the layer name; default the baseline's own (``"no_change_"``, ``"mean_"``,
            ``"additive_"``, ``"linear_"``, ``"target_gene_control_"``, ``"target_gene_mean_"``,
            ``"prior_network_"``, ``"matching_mean_"``).

        Returns
        -------
        For one condition: ``(n_obs, n_vars)`` float32 array, also written to
        ``adata.layers[f"{key_prefix}{condition}"]``. For a list: AnnData ``(n_conditions, n_vars)`` of
        mean predicted profiles, ``obs_names`` = conditions, ``var`` = ``adata.var``, ``obs["n_cells"]``.
        Either way ``adata.uns["genohoption"]["perturbation_baseline"][name]`` records the call.

        Raises
        ------
        ValueError
            If the baseline is not fitted, a condition is malformed, or ``adata`` shares no gene with the
            training data.
        TypeError
            If ``adata`` is not an AnnData / MuData, ``conditions`` is not a string or a list of strings,
            or ``adata.uns["genohoption"]`` is not a dict.
        KeyError
            If the training layer is missing from ``adata``.
        """
        self._check_fitted()
        adata = as_anndata(adata)
        prefix = self.key_prefix if key_prefix is None else key_prefix
        conds, single = condition_list(conditions)
        parse_conditions(conds, self.control_value)
        if single:
            check_key(f"{prefix}{conds[0]}", "the layer name key_prefix + condition")
        uns_entry(adata)
        check_unique_var_names(adata)
        X = get_matrix(adata, self.layer)
        check_values(X, matrix_name(self.layer))
        pos = self.var_names.get_indexer(adata.var_names.astype(str))  # adata gene -> training gene
        has = pos >= 0
        if not has.any():
            raise ValueError("adata shares no gene with the training data (var_names matched by name).")
        effects, scales = [], []
        for c in conds:
            full, factor = np.zeros(adata.n_vars), np.ones(adata.n_vars)
            full[has] = self.effect(c)[pos[has]]
            factor[has] = self.scale(c)[pos[has]]
            effects.append(full)
            scales.append(factor)
        record = {"conditions": conds, "method": type(self).__name__, "n_genes_matched": int(has.sum()),
                  "n_training_conditions": len(self.training_conditions)}
        if single:
            dense = X.toarray() if sp.issparse(X) else np.asarray(X)
            predictions = [(dense * scales[0] + effects[0]).astype(np.float32)]
        else:  # the mean of (s * cell + effect) over cells: s * mean + effect
            mean = _mean_rows(X, np.arange(adata.n_obs))
            predictions = [mean * f + e for f, e in zip(scales, effects, strict=True)]
        return perturbation_result(adata, conds, single, predictions, key_prefix=prefix, record=record,
                                   record_path=(K.UNS_PERTURBATION_BASELINE, self.name))


class NoChangeBaseline(PerturbationBaseline):
    """Predict no change: a perturbed cell is its control cell (the mean profile is the control mean).

    ``Δ_p = 0`` for every condition. The GEARS metrics give it ``pearson_delta = 0`` by convention
    (Roohani et al. 2023); its errors measure how large the effects are. Any perturbed gene is
    accepted, measured or not.
    """

    name = "no_change"
    key_prefix = K.NO_CHANGE_LAYER_PREFIX

    def effect(self, condition: str) -> np.ndarray:
        """``Δ_p = 0``."""
        self._check_fitted()
        return np.zeros(len(self.var_names))


class MeanBaseline(PerturbationBaseline):
    """Predict the mean effect of the training perturbations for every condition.

    ``Δ_p = mean_q (ȳ_q) - c̄`` over the training perturbations ``q`` (each condition's centroid counts
    once), ``c̄`` the training control mean: the mean profile of a prediction is the centroid of the
    training perturbations (Systema's "perturbed centroid", Viñas Torné et al., Nat Biotechnol 2025;
    GEARS' and Ahlmann-Eltze et al.'s mean baseline). It ignores which gene is perturbed, so it predicts
    measured and unmeasured genes alike; control-referenced Pearson delta rewards it when effects
    share a systematic component.
    """

    name = "mean"
    key_prefix = K.MEAN_LAYER_PREFIX

    def _fit(self) -> None:
        changes = self._changes()
        self._delta = changes.mean(0).to_numpy() if len(changes) else np.zeros(len(self.var_names))

    def effect(self, condition: str) -> np.ndarray:
        """``Δ_p`` = mean of the training perturbations' changes, whatever ``condition``."""
        self._check_fitted()
        return self._delta.copy()


class AdditiveBaseline(PerturbationBaseline):
    """Predict the sum of the training single perturbations' changes of the condition's genes.

    ``Δ_{A+B} = (ȳ_A - c̄) + (ȳ_B - c̄)``, ``ȳ_g`` the mean of the training cells of the single
    perturbation of ``g`` (``"g+ctrl"`` or ``"ctrl+g"``). A gene without a training single perturbation
    contributes no change, so an unseen single perturbation (measured gene or not) is predicted as no
    change. The additive model had the lowest error on the Norman double perturbations (Ahlmann-Eltze,
    Huber & Anders, Nat Methods 2025).
    """

    name = "additive"
    key_prefix = K.ADDITIVE_LAYER_PREFIX

    def _fit(self) -> None:
        changes = self._changes()
        self._single = {}
        for c in changes.index:
            genes = parse_condition(c, self.control_value)
            if len(genes) == 1:
                self._single[genes[0]] = changes.loc[c].to_numpy()

    @property
    def seen_genes(self) -> list[str]:
        """Genes with a training single perturbation."""
        self._check_fitted()
        return sorted(self._single)

    def effect(self, condition: str) -> np.ndarray:
        """``Σ_g Δ_g`` over the condition's genes with a training single perturbation."""
        self._check_fitted()
        out = np.zeros(len(self.var_names))
        for g in parse_condition(condition, self.control_value):
            out += self._single.get(g, 0.0)
        return out


class LinearBaseline(PerturbationBaseline):
    """Linear model of Ahlmann-Eltze, Huber & Anders (Nat Methods 2025): ``Y ≈ G W Pᵀ + b``.

    Following the authors' ``run_linear_pretrained_model.R`` with both embeddings from the training
    data: the training pseudobulk ``X`` (genes × training conditions, control included) gives the gene
    embedding ``G`` (``n_vars × n_components``) by PCA (genes as observations, each condition centred);
    a perturbation ``p`` is embedded as the row of ``G`` of its gene (``P``, control = 0). With ``Y`` the
    changes from the control mean (genes × conditions) and ``b`` its row means, ``W`` is fitted by ridge
    regression on both sides, ``W = (GᵀG + λI)⁻¹ Gᵀ (Y - b) Pᵀ (P Pᵀ + λI)⁻¹`` (``λ = ridge``); the
    prediction is ``Δ_p = G W p + b`` (``p`` = 0 gives ``b``, the mean change of the training conditions).

    Unmeasured perturbed genes (no row of ``G``; the authors' model cannot predict them): ``p`` is the
    mean ``G`` row of the measured genes joined to the gene in the ``prior`` network (its regulators and
    targets), as the model reaches them; a gene of the network or of ``extra_genes`` with no such
    neighbour gets ``p = 0``, the mean change. This applies to training conditions too. A combination's
    ``p`` is the sum of its genes' embeddings. A gene that is neither measured nor in the network nor in
    ``extra_genes`` is an error (:meth:`effect` raises ``KeyError``), not a silent mean change.

    Parameters
    ----------
    n_components
        PCA dimensions (the authors' default 10; capped by the number of training conditions).
    ridge
        Ridge penalty ``λ`` (the authors' default 0.1).
    prior
        Prior network giving unmeasured genes' neighbours (see :func:`genohoption.pp.read_prior`;
        ``"default"``: the packaged OmniPath network; ``None``: none).
    extra_genes
        More symbols that may be perturbed although neither measured nor in ``prior`` (predicted as the
        mean change), as ``setup_anndata(extra_genes=)`` for the model.
    """

    name = "linear"
    key_prefix = K.LINEAR_LAYER_PREFIX

    def __init__(self, n_components: int = 10, ridge: float = 0.1,
                 prior: pd.DataFrame | str | os.PathLike | None = "default", extra_genes: Sequence[str] = ()):
        super().__init__()
        if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
            raise ValueError(f"n_components must be a positive integer, got {n_components!r}.")
        if not ridge >= 0:
            raise ValueError(f"ridge must be >= 0, got {ridge!r}.")
        self.n_components = n_components
        self.ridge = float(ridge)
        self.prior = prior
        self.extra_genes = tuple(str(g) for g in extra_genes)
        self.universe: GeneUniverse | None = None

    def _gene_embedding(self, gene: str) -> np.ndarray:
        pos, how = self.universe.lookup(gene)
        if how == "case":
            raise KeyError(case_message([(gene, self.universe.symbol(pos))], "the condition"))
        if pos is None:
            raise KeyError(
                f"Perturbed gene {gene!r} is neither measured nor in the prior network nor in extra_genes: the "
                f"linear baseline has nothing to embed it with. Pass LinearBaseline(extra_genes=[{gene!r}]) to "
                "predict it as the mean change of the training perturbations."
            )
        if pos < self.universe.n_measured:
            return self.G[pos]
        nb = self.universe.neighbors(pos)
        return self.G[nb].mean(0) if nb.size else np.zeros(self.G.shape[1])

    def _embed(self, condition: str) -> np.ndarray:
        out = np.zeros(self.G.shape[1])
        for g in parse_condition(condition, self.control_value):
            out += self._gene_embedding(g)
        return out

    def _fit(self) -> None:
        network = None
        if self.prior is not None:
            from ..pp import read_prior

            network = read_prior(self.prior)
        self.universe = gene_universe(self.symbols, network, self.extra_genes)
        M = self.pseudobulk.to_numpy().T  # genes × conditions (control first)
        Mc = M - M.mean(0, keepdims=True)
        k = max(1, min(self.n_components, *Mc.shape))
        U, S, _ = np.linalg.svd(Mc, full_matrices=False)
        self.G = U[:, :k] * S[:k]
        conds = list(self.pseudobulk.index)
        Y = (self.pseudobulk.to_numpy() - self.control_mean).T  # genes × conditions, control column = 0
        P = np.stack([self._embed(c) for c in conds], axis=1)  # k × conditions, control = 0
        self.b = Y.mean(1)
        Yc = Y - self.b[:, None]
        eye = np.eye(k)
        left = np.linalg.solve(self.G.T @ self.G + self.ridge * eye, self.G.T @ Yc)
        self.W = np.linalg.solve(P @ P.T + self.ridge * eye, (left @ P.T).T).T

    def effect(self, condition: str) -> np.ndarray:
        """``Δ_p = G W p + b``."""
        self._check_fitted()
        return self.G @ (self.W @ self._embed(condition)) + self.b


class TargetGeneBaseline(PerturbationBaseline):
    """Control (or the mean of the training perturbations) with only the perturbed genes' own values scaled.

    For a condition whose perturbed genes ``T`` are measured, the prediction for a control cell ``x`` is
    ``x_g · r`` for ``g ∈ T`` and ``x_g + Δ_g`` for the other genes, with ``Δ = 0`` (``on="control"``) or
    ``Δ`` the mean change of the training perturbations (``on="mean"``, :class:`MeanBaseline`). The ratio
    ``r = mean over (q, g) of ȳ_q[g] / c̄[g]`` is fitted on the training conditions ``q`` whose perturbed
    genes ``g`` are measured (and expressed in control, ``c̄[g] > 0``): below 1 for knock-downs and
    knock-outs, above 1 for activation. Without such a training condition ``r = 1``. For unmeasured genes
    the prediction is the no-change (``on="control"``) or mean baseline (``on="mean"``). It is the
    strongest simple baseline of knock-down screens whose targets are measured: the target gene is
    usually the top differentially expressed gene of its own knock-down.

    Parameters
    ----------
    on
        ``"control"`` or ``"mean"``: what the other genes are predicted as.

    Attributes
    ----------
    ratio
        ``r``, after :meth:`~PerturbationBaseline.fit`.
    n_ratio_pairs
        Number of (training condition, measured perturbed gene) pairs ``r`` averages.
    """

    name = "target_gene"
    key_prefix = K.TARGET_GENE_CONTROL_LAYER_PREFIX
    ON = ("control", "mean")

    def __init__(self, on: str = "control"):
        super().__init__()
        if on not in self.ON:
            raise ValueError(f"on={on!r} is unknown; choose one of {self.ON}.")
        self.on = on
        self.name = f"target_gene_{on}"
        self.key_prefix = K.TARGET_GENE_CONTROL_LAYER_PREFIX if on == "control" else K.TARGET_GENE_MEAN_LAYER_PREFIX
        self.ratio = 1.0
        self.n_ratio_pairs = 0

    def _fit(self) -> None:
        changes = self._changes()
        self._delta = (changes.mean(0).to_numpy() if len(changes) and self.on == "mean"
                       else np.zeros(len(self.var_names)))
        ratios = []
        for c, positions in zip(self.training_conditions, self._targets(self.training_conditions), strict=True):
            for g in positions:
                if self.control_mean[g] > 0:
                    ratios.append(self.pseudobulk.loc[c].iloc[g] / self.control_mean[g])
        self.ratio = float(np.mean(ratios)) if ratios else 1.0
        self.n_ratio_pairs = len(ratios)

    def _targets(self, conditions: Sequence[str]) -> list[np.ndarray]:
        from ._perturbation import target_positions

        return target_positions(conditions, self.symbols, self.control_value)

    def effect(self, condition: str) -> np.ndarray:
        """``Δ`` (0 or the mean change), 0 on the condition's measured perturbed genes."""
        self._check_fitted()
        out = self._delta.copy()
        out[self._targets([condition])[0]] = 0.0
        return out

    def scale(self, condition: str) -> np.ndarray:
        """``r`` on the condition's measured perturbed genes, 1 elsewhere."""
        self._check_fitted()
        out = np.ones(len(self.var_names))
        out[self._targets([condition])[0]] = self.ratio
        return out


def _neighbor_sets(network: pd.DataFrame | None) -> dict[str, set[str]]:
    """Upper-case symbol → the upper-case symbols joined to it in ``network`` (either direction, no self)."""
    out: dict[str, set[str]] = {}
    if network is None or not len(network):
        return out
    src = network["source"].astype(str).str.upper().to_numpy()
    tgt = network["target"].astype(str).str.upper().to_numpy()
    for a, b in zip(src, tgt, strict=True):
        if a != b:
            out.setdefault(a, set()).add(b)
            out.setdefault(b, set()).add(a)
    return out


class PriorNetworkBaseline(PerturbationBaseline):
    """The mean change of the training perturbations of the condition's regulatory neighbours.

    For a condition with perturbed genes ``G``: the training single perturbations ``q`` whose gene is
    joined to a gene of ``G`` in the ``prior`` network (either direction; symbols matched
    case-insensitively; a gene of ``G`` itself is not its own neighbour) give ``Δ_p = mean_q (ȳ_q - c̄)``;
    with no such neighbour, ``Δ_p`` is the mean change of all training perturbations
    (:class:`MeanBaseline`). Any symbol is accepted.

    Parameters
    ----------
    prior
        Prior regulatory network (see :func:`genohoption.pp.read_prior`; ``"default"``: the packaged
        OmniPath network; ``None``: none, i.e. the mean baseline).
    """

    name = "prior_network"
    key_prefix = K.PRIOR_NETWORK_LAYER_PREFIX

    def __init__(self, prior: pd.DataFrame | str | os.PathLike | None = "default"):
        super().__init__()
        self.prior = prior

    def _fit(self) -> None:
        network = None
        if self.prior is not None:
            from ..pp import read_prior

            network = read_prior(self.prior)
        self._neighbors = _neighbor_sets(network)
        changes = self._changes()
        self._mean = changes.mean(0).to_numpy() if len(changes) else np.zeros(len(self.var_names))
        self._single = {}
        for c in changes.index:
            genes = parse_condition(c, self.control_value)
            if len(genes) == 1:
                self._single[genes[0].upper()] = changes.loc[c].to_numpy()

    def neighbors(self, condition: str) -> list[str]:
        """Perturbed genes of the training single perturbations the prediction of ``condition`` averages."""
        self._check_fitted()
        genes = {g.upper() for g in parse_condition(condition, self.control_value)}
        found = set().union(*(self._neighbors.get(g, set()) for g in genes)) - genes
        return sorted(g for g in found if g in self._single)

    def effect(self, condition: str) -> np.ndarray:
        """Mean change of the neighbours' training perturbations, else the mean change."""
        used = self.neighbors(condition)
        if not used:
            return self._mean.copy()
        return np.mean([self._single[g] for g in used], axis=0)


class MatchingMeanBaseline(PerturbationBaseline):
    """Systema's matching mean (Viñas Torné et al., Nat Biotechnol 2025; ``src/run_matching-mean.py``).

    For each perturbed gene of the condition, the centroid of its training single perturbation if there is
    one, else the mean of all training perturbed cells (pooled, each cell once); the prediction's mean
    profile is the average of these over the condition's genes, i.e. ``Δ_p`` = that average minus the
    control mean. For a single perturbation of an unseen gene it is the pooled perturbed mean, which
    differs from :class:`MeanBaseline` (each condition once) by weighting conditions by their cells.
    """

    name = "matching_mean"
    key_prefix = K.MATCHING_MEAN_LAYER_PREFIX

    def _fit(self) -> None:
        conds = self.training_conditions
        if conds:
            weights = self.n_cells[conds].to_numpy(dtype=np.float64)
            pooled = (self.pseudobulk.loc[conds].to_numpy() * weights[:, None]).sum(0) / weights.sum()
        else:
            pooled = self.control_mean.copy()
        self._pooled = pooled
        self._single = {}
        for c in conds:
            genes = parse_condition(c, self.control_value)
            if len(genes) == 1:
                self._single[genes[0]] = self.pseudobulk.loc[c].to_numpy()

    def effect(self, condition: str) -> np.ndarray:
        """Average of the genes' training centroids (or the pooled perturbed mean) minus the control mean."""
        self._check_fitted()
        genes = parse_condition(condition, self.control_value)
        return np.mean([self._single.get(g, self._pooled) for g in genes], axis=0) - self.control_mean


BASELINES = {
    "no_change": NoChangeBaseline, "mean": MeanBaseline, "additive": AdditiveBaseline, "linear": LinearBaseline,
    "target_gene_control": TargetGeneBaseline, "target_gene_mean": TargetGeneBaseline,
    "prior_network": PriorNetworkBaseline, "matching_mean": MatchingMeanBaseline,
}
"""Names of :func:`fit_perturbation_baselines`' baselines and their classes."""


def _make(name: str, prior, extra_genes: Sequence[str]) -> PerturbationBaseline:
    cls = BASELINES[name]
    if cls is LinearBaseline:
        return cls(prior=prior, extra_genes=extra_genes)
    if cls is TargetGeneBaseline:
        return cls(on=name.removeprefix("target_gene_"))
    if cls is PriorNetworkBaseline:
        return cls(prior=prior)
    return cls()


def fit_perturbation_baselines(
    adata: AnnData, *, perturbation_key: str = "condition", control_value: str = "ctrl",
    gene_symbols: str | None = None, layer: str | None = None, prior="default",
    extra_genes: Sequence[str] = (), baselines: Sequence[str] | None = None,
) -> dict[str, PerturbationBaseline]:
    """Fit the perturbation baselines on the same training cells.

    Parameters
    ----------
    adata
        Training cells (control and perturbed), as for :meth:`PerturbationBaseline.fit`.
    perturbation_key, control_value, gene_symbols, layer
        As for :meth:`PerturbationBaseline.fit`.
    prior
        Prior network of :class:`LinearBaseline` and :class:`PriorNetworkBaseline`.
    extra_genes
        Symbols :class:`LinearBaseline` accepts although neither measured nor in ``prior``.
    baselines
        Names to fit (keys of :data:`BASELINES`); ``None``: all of them.

    Returns
    -------
    ``{"no_change": NoChangeBaseline, "mean": MeanBaseline, "additive": AdditiveBaseline,
    "linear": LinearBaseline, "target_gene_control": TargetGeneBaseline(on="control"),
    "target_gene_mean": TargetGeneBaseline(on="mean"), "prior_network": PriorNetworkBaseline,
    "matching_mean": MatchingMeanBaseline}`` (or the names asked for, in that order), fitted; each has
    ``predict_perturbation(ctrl_adata, conditions)``.

    Raises
    ------
    ValueError
        For an unknown name in ``baselines``, and as :meth:`PerturbationBaseline.fit`.
    """
    names = list(BASELINES) if baselines is None else list(baselines)
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"Unknown baselines {unknown!r}; choose among {list(BASELINES)}.")
    fitted = {}
    for name in [n for n in BASELINES if n in names]:
        fitted[name] = _make(name, prior, extra_genes).fit(
            adata, perturbation_key=perturbation_key, control_value=control_value, gene_symbols=gene_symbols,
            layer=layer)
    return fitted
