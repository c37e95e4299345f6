"""GRN-guided simulation of CRISPRi Perturb-seq (single and double knock-downs).

Cells simulated on a real regulatory subnetwork (by default the packaged OmniPath prior,
:func:`~genohoption.pp.read_prior`), in GEARS format, with known perturbation effects and no download.

The simulator is a Hill-function steady-state model of transcription, in the spirit of SERGIO
(Dibaeinia & Sinha, 2020) but deterministic-plus-noise rather than stochastic differential equations:

- production of gene ``i``: ``p_i = b_i + Σ_{j → i} K_ij h_ij(x_j)`` with ``h = x^n / (k^n + x^n)`` for an
  activating and ``k^n / (k^n + x^n)`` for a repressing edge (``n`` = ``hill``, ``k_j`` = the regulator's
  mean unperturbed level); unit decay, so the steady state solves ``x = p(x)``, found by damped
  fixed-point iteration for all cells at once;
- cell-to-cell variation: basal rates ``b_i`` times a log-normal factor per cell and gene;
- CRISPRi knock-down of gene ``g``: its level is scaled by a per-cell efficiency factor in
  ``knockdown_range`` at every iteration, so the effect spreads to its targets and their targets;
  double knock-downs combine non-additively through the Hill functions;
- counts: Poisson sampling of ``x / Σx`` times a log-normal library size; ``X`` holds
  ``log1p`` of counts normalised to the median library size.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._constants import UNS_SIMULATION

logger = logging.getLogger(__name__)


def _subnetwork(net: pd.DataFrame, n_genes: int, n_regulators: int, rng: np.random.Generator):
    net = net[net["source"] != net["target"]].drop_duplicates(["source", "target"])
    out_deg = net["source"].value_counts()
    candidates = out_deg.index[: max(4 * n_regulators, 100)].to_numpy()
    regulators = rng.choice(candidates, size=min(n_regulators, candidates.size), replace=False)
    sub = net[net["source"].isin(regulators)]
    # targets most regulated by the chosen regulators first (ties broken at random)
    in_deg = sub["target"].value_counts()
    order = in_deg.index.to_numpy()[np.lexsort((rng.random(in_deg.size), -in_deg.to_numpy()))]
    genes = list(dict.fromkeys([*regulators, *order]))[:n_genes]
    keep = net["source"].isin(genes) & net["target"].isin(genes)
    return np.asarray(genes, dtype=object), net[keep].reset_index(drop=True)


def simulate_perturbation(
    network: pd.DataFrame | None = None,
    *,
    n_genes: int = 200,
    n_regulators: int = 50,
    n_perturbed: int = 40,
    n_combos: int = 40,
    n_control: int = 500,
    cells_per_condition: int = 25,
    knockdown_range: tuple[float, float] = (0.05, 0.2),
    hill: float = 2.0,
    noise: float = 0.25,
    library_size: float = 3000.0,
    seed: int = 0,
):
    """Simulate a GEARS-format Perturb-seq experiment on a real regulatory subnetwork.

    See the module docstring for the model. Regulators are drawn among the network's most connected
    sources; the subnetwork keeps them and the genes they regulate most. Perturbed genes are the
    regulators with the most targets in the subnetwork; double perturbations are random pairs of them.

    Parameters
    ----------
    network
        Directed regulatory edges: ``source``, ``target`` and optional ``weight`` (sign: ``< 0``
        represses); default the packaged OmniPath prior (:func:`~genohoption.pp.read_prior`).
    n_genes
        Genes of the subnetwork (``n_vars``).
    n_regulators
        Regulators drawn to seed the subnetwork.
    n_perturbed
        Genes with a single knock-down.
    n_combos
        Double knock-downs.
    n_control
        Control cells.
    cells_per_condition
        Cells per perturbation condition.
    knockdown_range
        Range of the remaining fraction of a knocked-down gene (uniform per cell).
    hill
        Hill coefficient ``n``.
    noise
        Standard deviation of the log-normal basal-rate noise.
    library_size
        Median total counts per cell.
    seed
        Seed of everything random.

    Returns
    -------
    AnnData ``(n_obs, n_genes)`` with ``X`` log-normalised (CSR float32), ``layers["counts"]``,
    ``obs["condition"]`` (``"ctrl"``, ``"A+ctrl"``, ``"A+B"``), ``obs["cell_type"]``, ``var_names`` and
    ``var["gene_name"]`` gene symbols, ``uns["simulation"]`` (parameters, the perturbed genes and the
    simulated edges as ``source`` / ``target`` / ``sign`` / ``strength`` lists).

    Raises
    ------
    ValueError
        If the network has too few genes or the sizes are inconsistent.
    """
    from anndata import AnnData

    from ..pp._priors import read_prior

    rng = np.random.default_rng(seed)
    net = read_prior("default") if network is None else network
    if not {"source", "target"} <= set(net.columns):
        raise ValueError("network needs 'source' and 'target' columns (and optionally 'weight').")
    genes, edges = _subnetwork(net, n_genes, n_regulators, rng)
    if genes.size < 10 or edges.empty:
        raise ValueError(
            f"The network gives only {genes.size} genes / {len(edges)} edges; pass a larger one."
        )
    n = genes.size
    gidx = pd.Index(genes)
    src = gidx.get_indexer(edges["source"])
    tgt = gidx.get_indexer(edges["target"])
    sign = np.sign(edges["weight"].to_numpy(float)) if "weight" in edges else np.ones(len(edges))
    sign[sign == 0] = 1
    in_deg = np.bincount(tgt, minlength=n)
    strength = rng.uniform(1.0, 4.0, len(edges)) / np.sqrt(in_deg[tgt])
    basal = rng.uniform(0.1, 1.0, n) * np.where(in_deg > 0, 0.15, 1.0)
    scatter = sp.csr_matrix((strength, (np.arange(len(edges)), tgt)), shape=(len(edges), n))
    act = sign > 0

    def steady(b: np.ndarray, kd: np.ndarray, k: np.ndarray, n_iter: int = 80) -> np.ndarray:
        x = b.copy()
        for _ in range(n_iter):
            xs = x[:, src] ** hill
            ks = k[src] ** hill
            h = np.where(act, xs / (ks + xs), ks / (ks + xs))
            p = (b + np.asarray(h @ scatter)) * kd
            x = 0.5 * x + 0.5 * p
        return x

    # half-responses at the regulators' unperturbed levels
    k = np.ones(n)
    ref = steady(basal[None, :], np.ones((1, n)), k)[0]
    k = np.maximum(ref, 1e-3)

    deg_sub = np.bincount(src, minlength=n)
    regs = np.flatnonzero(deg_sub > 0)
    perturbed = regs[np.argsort(-deg_sub[regs], kind="stable")][:n_perturbed]
    if perturbed.size < 2:
        raise ValueError("The subnetwork has fewer than 2 regulators to perturb; raise n_regulators.")
    singles = [(g,) for g in perturbed]
    pairs: set[tuple[int, int]] = set()
    max_pairs = perturbed.size * (perturbed.size - 1) // 2
    while len(pairs) < min(n_combos, max_pairs):
        a, b = rng.choice(perturbed, 2, replace=False)
        pairs.add((min(a, b), max(a, b)))
    conditions = [(), *singles, *sorted(pairs)]
    sizes = [n_control] + [cells_per_condition] * (len(conditions) - 1)

    blocks, labels = [], []
    for genes_kd, size in zip(conditions, sizes, strict=True):
        b = basal[None, :] * rng.lognormal(0.0, noise, (size, n))
        kd = np.ones((size, n))
        for g in genes_kd:
            kd[:, g] = rng.uniform(*knockdown_range, size)
        blocks.append(steady(b, kd, k))
        name = (
            "ctrl"
            if not genes_kd
            else (f"{genes[genes_kd[0]]}+ctrl" if len(genes_kd) == 1 else "+".join(genes[list(genes_kd)]))
        )
        labels += [name] * size
    x = np.vstack(blocks)
    lib = library_size * rng.lognormal(0.0, 0.3, x.shape[0])
    counts = rng.poisson(x / x.sum(1, keepdims=True) * lib[:, None]).astype(np.float32)
    total = counts.sum(1, keepdims=True)
    lognorm = np.log1p(counts / np.maximum(total, 1) * np.median(total)).astype(np.float32)
    obs = pd.DataFrame(
        {"condition": pd.Categorical(labels), "cell_type": pd.Categorical(["simulated"] * len(labels))},
        index=pd.Index([f"cell{i}" for i in range(len(labels))]),
    )
    var = pd.DataFrame({"gene_name": genes.astype(str)}, index=pd.Index(genes.astype(str)))
    adata = AnnData(X=sp.csr_matrix(lognorm), obs=obs, var=var, layers={"counts": sp.csr_matrix(counts)})
    adata.uns[UNS_SIMULATION] = {
        "params": {
            "n_genes": int(n),
            "n_perturbed": int(perturbed.size),
            "n_combos": len(pairs),
            "n_control": n_control,
            "cells_per_condition": cells_per_condition,
            "knockdown_range": list(knockdown_range),
            "hill": hill,
            "noise": noise,
            "library_size": library_size,
            "seed": seed,
        },
        "perturbed_genes": genes[perturbed].astype(str).tolist(),
        "edges": {
            "source": genes[src].astype(str).tolist(),
            "target": genes[tgt].astype(str).tolist(),
            "sign": sign.astype(int).tolist(),
            "strength": strength.round(4).tolist(),
        },
    }
    logger.info("simulated %d cells x %d genes, %d conditions", adata.n_obs, n, len(conditions))
    return adata
