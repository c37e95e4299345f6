"""In silico perturbation of a trained model: delete or overexpress a gene and measure the embeddings' shift.

Geneformer's in silico deletion / overexpression (Theodoris et al., Nature 2023; ``InSilicoPerturber``),
written for both backbones. torch is imported only when the function runs (``import genohoption.tl`` stays
light).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._constants import IN_SILICO_KEY
from .._validate import check_key, uns_entry

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

MODES = ("delete", "overexpress")
"""Kinds of :func:`in_silico_perturbation`."""


@dataclass
class InSilicoResult:
    """What :func:`in_silico_perturbation` returns.

    Attributes
    ----------
    cell_shift
        ``(n_obs, n_perturbed)`` DataFrame: ``1 - cos(z, z')`` between each cell's embedding before and after
        the perturbation of each gene (0: unchanged); NaN where the perturbation does not apply (deleting a
        gene that is not one of the cell's tokens).
    gene_shift
        ``(n_vars, n_perturbed)`` DataFrame indexed by ``adata.var_names``: ``1 - cos`` of every other
        gene's token output before and after, averaged over the cells where the perturbation applies and
        the gene is a token both times; NaN where it never is (and for the perturbed gene itself).
    n_cells
        Cells where the perturbation of each gene applies (:class:`~pandas.Series`).
    original
        ``(n_obs, d_model)`` cell embeddings before (``return_embeddings=True``), else ``None``.
    perturbed
        Gene → ``(n_obs, d_model)`` embeddings after (the original where it does not apply), or ``None``.
    """

    cell_shift: pd.DataFrame
    gene_shift: pd.DataFrame
    n_cells: pd.Series
    original: np.ndarray | None = None
    perturbed: dict[str, np.ndarray] | None = None


def _perturbed(x, g: int, mode: str, value: float | None, medians):
    """Expression rows with gene ``g`` deleted or overexpressed, and the rows where that changes the input."""
    import torch

    out = x.clone()
    if mode == "delete":
        out[:, g] = 0.0
        return out
    if medians is not None:  # rank tokens: put the gene in front of every known gene of the cell
        known = torch.isfinite(medians) & (medians > 0)
        ratio = torch.where(known, x / torch.where(known, medians, torch.ones_like(medians)), torch.zeros_like(x))
        out[:, g] = medians[g] * (2.0 * ratio.amax(1) + 1.0)
    else:
        out[:, g] = value if value is not None else x.amax(1).clamp_min(1.0)
    return out


def _positions(genes, n: int):
    """``(B, n + 1)`` position of each gene among a cell's tokens (``-1``: not a token; column ``n`` unused)."""
    import torch

    b, length = genes.shape
    idx = torch.where((genes >= 0) & (genes < n), genes, torch.full_like(genes, n))
    pos = torch.full((b, n + 1), -1, dtype=torch.int64, device=genes.device)
    pos.scatter_(1, idx, torch.arange(length, device=genes.device).expand(b, length).contiguous())
    return pos


def in_silico_perturbation(
    model: Any,
    adata: AnnData,
    genes: str | Sequence[str],
    mode: str = "delete",
    *,
    value: float | None = None,
    batch_size: int = 64,
    key_added: str = IN_SILICO_KEY,
    return_embeddings: bool = False,
) -> InSilicoResult:
    """Delete or overexpress genes in silico and measure how each cell's and each gene's embedding moves.

    Geneformer's in silico perturbation (Theodoris et al., Nature 2023), on any trained annotation or
    pretraining :class:`~genohoption.GenoHoptionModel`. Each gene is perturbed on its own, in every cell, and
    the cells are encoded again (same tokenization, gene graph and weights):

    - ``"delete"``: the gene's expression is set to 0, so its token is removed (rank tokens: the genes after
      it move up one place; scGPT value tokens: the token leaves the sequence, or gets value 0 when every
      gene is a token, ``gene_tokens="all"``). Applies to the cells where the gene is a token.
    - ``"overexpress"``: Geneformer-style rank tokens move the gene to the front of the cell's ranking (its
      value is set above every other gene's median-scaled value); scGPT-style value tokens get ``value``
      (default: the cell's highest expression, at least 1). Applies to every cell.

    The cell embedding is the backbone's (:meth:`~genohoption.GenoHoptionModel.get_latent_representation`
    of a pretraining model: scGPT's CLS output, Geneformer's mean of gene tokens), without the expression
    projection of an annotation model's classifier input.

    Parameters
    ----------
    model
        A trained :class:`~genohoption.GenoHoptionModel` set up for annotation or pretraining.
    adata
        Cells ``(n_obs, n_vars)``, values as the model was trained on (genes aligned by name).
    genes
        Gene or genes of the model (``model.var_names``) to perturb, one at a time.
    mode
        ``"delete"`` (default) or ``"overexpress"``.
    value
        Overexpression value of scGPT-style value tokens (same scale as ``adata``); ignored otherwise.
    batch_size
        Cells per forward pass.
    key_added
        Keys of the results in ``adata``.
    return_embeddings
        Also return the cell embeddings before and after (``(n_obs, d_model)`` per gene; memory grows with
        the number of genes).

    Returns
    -------
    :class:`InSilicoResult`. Written to ``adata``:

    ``adata.obsm[key_added]``
        :attr:`InSilicoResult.cell_shift` (``(n_obs, n_perturbed)`` DataFrame);
    ``adata.varm[key_added]``
        :attr:`InSilicoResult.gene_shift` (``(n_vars, n_perturbed)`` DataFrame);
    ``adata.uns[key_added]``
        ``"params"`` (``mode``, ``genes``, ``value``, ``batch_size``) and ``"n_cells"`` per gene.

    Raises
    ------
    TypeError
        For a perturbation model (pretrain one on the control cells instead) or a non-model.
    ValueError
        Unknown ``mode``, no gene, a bad ``batch_size`` / ``key_added``, or ``"overexpress"`` of a gene outside
        a Geneformer vocabulary.
    KeyError
        If a gene is not one of the model's genes.

    Examples
    --------
    >>> res = gh.tl.in_silico_perturbation(model, adata, ["SPI1", "STAT1"], mode="delete")
    >>> res.cell_shift.mean()
    """
    import torch

    from ..module._encode import backbone_cell_embedding, check_encodable, encode_cells
    from ..nn import GeneformerBackbone

    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is unknown; choose one of {MODES}.")
    module = getattr(model, "module", None)
    if not hasattr(model, "var_names") or module is None:
        raise TypeError(f"model must be a trained GenoHoptionModel, got {type(model).__name__}.")
    check_encodable(module, "in_silico_perturbation")
    check_key(key_added)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    genes = [genes] if isinstance(genes, str) else list(dict.fromkeys(genes))
    if not genes:
        raise ValueError("Pass at least one gene to perturb.")
    var_names = pd.Index(model.var_names.astype(str))
    missing = [g for g in genes if g not in var_names]
    if missing:
        raise KeyError(f"Genes {missing[:5]} are not genes of the model (model.var_names).")
    index = [int(var_names.get_loc(g)) for g in genes]
    bb = module.backbone
    medians = bb.gene_medians.float() if isinstance(bb, GeneformerBackbone) else None
    if medians is not None and mode == "overexpress":
        unknown = [g for g, i in zip(genes, index, strict=True) if not (bool(torch.isfinite(medians[i]))
                                                                         and float(medians[i]) > 0)]
        if unknown:
            raise ValueError(f"Genes {unknown[:5]} are not in the Geneformer vocabulary (no median): they can never "
                             "be tokens, so they cannot be overexpressed.")
    query = model._resolve(adata)
    adata = query.adata
    uns_entry(adata)
    n = len(var_names)
    module.eval()
    from ..model._batch import adapted_batch_norms, iter_query

    shift = np.full((adata.n_obs, len(genes)), np.nan)
    g_sum = np.zeros((len(genes), n + 1))
    g_cnt = np.zeros((len(genes), n + 1), dtype=np.int64)
    original = np.empty((adata.n_obs, bb.d_model), np.float32) if return_embeddings else None
    perturbed = {g: np.empty((adata.n_obs, bb.d_model), np.float32) for g in genes} if return_embeddings else None
    start = 0
    with torch.inference_mode(), adapted_batch_norms(module, query, batch_size):
        if medians is not None:
            medians = medians.to(module.device)
        for x, batch in iter_query(query, batch_size, module.device):
            b = x.shape[0]
            rows = slice(start, start + b)
            h0, tok0, _ = encode_cells(module, x, batch)
            z0 = backbone_cell_embedding(module, h0, tok0)
            pos0 = _positions(tok0.genes, n)
            if original is not None:
                original[rows] = z0.float().cpu().numpy()
            for k, g in enumerate(index):
                h1, tok1, _ = encode_cells(module, _perturbed(x, g, mode, value, medians), batch)
                z1 = backbone_cell_embedding(module, h1, tok1)
                applies = pos0[:, g] >= 0 if mode == "delete" else torch.ones(b, dtype=torch.bool, device=x.device)
                cos = torch.nn.functional.cosine_similarity(z0.float(), z1.float(), dim=1)
                shift[rows, k] = np.where(applies.cpu().numpy(), (1.0 - cos).double().cpu().numpy(), np.nan)
                if perturbed is not None:
                    perturbed[genes[k]][rows] = torch.where(applies[:, None], z1, z0).float().cpu().numpy()
                pos1 = _positions(tok1.genes, n)
                both = (pos0[:, :n] >= 0) & (pos1[:, :n] >= 0) & applies[:, None]
                both[:, g] = False
                cell, gene = torch.nonzero(both, as_tuple=True)
                a = h0[cell, pos0[cell, gene]].float()
                c = h1[cell, pos1[cell, gene]].float()
                d = (1.0 - torch.nn.functional.cosine_similarity(a, c, dim=1)).double()
                g_sum[k] += torch.zeros(n + 1, dtype=torch.float64, device=x.device).index_add_(0, gene, d).cpu().numpy()
                g_cnt[k] += torch.bincount(gene, minlength=n + 1).cpu().numpy()
            start += b
    cell_shift = pd.DataFrame(shift, index=adata.obs_names, columns=genes)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(g_cnt[:, :n] > 0, g_sum[:, :n] / np.maximum(g_cnt[:, :n], 1), np.nan).T
    query_genes = adata.var_names.astype(str)
    pos = var_names.get_indexer(query_genes)  # adata gene -> model gene
    aligned = np.full((adata.n_vars, len(genes)), np.nan)
    aligned[pos >= 0] = mean[pos[pos >= 0]]
    gene_shift = pd.DataFrame(aligned, index=adata.var_names, columns=genes)
    n_cells = pd.Series(np.isfinite(shift).sum(0), index=genes, name="n_cells")
    if adata.is_view:
        adata._init_as_actual(adata.copy())
    adata.obsm[key_added] = cell_shift
    adata.varm[key_added] = gene_shift
    adata.uns[key_added] = {"params": {"mode": mode, "genes": genes, "value": value, "batch_size": int(batch_size)},
                            "n_cells": {g: int(c) for g, c in n_cells.items()}}
    logger.info("wrote adata.obsm[%r], adata.varm[%r], adata.uns[%r]", key_added, key_added, key_added)
    return InSilicoResult(cell_shift, gene_shift, n_cells, original, perturbed)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / den if den > 0 else float("nan")


def shift_alignment(result: InSilicoResult, targets: dict[str, np.ndarray], *,
                    null: dict[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """Whether in silico perturbations move cells toward observed perturbed states, with a permutation test.

    For a perturbed gene ``g`` with observed cells (e.g. the cells of its CRISPR knock-out), the alignment
    is ``cos(mean(z'_g - z), mean(t_g) - mean(z))``: the cosine between the mean in silico shift of the
    cells where the perturbation applies and the direction from the same cells' mean embedding to the
    observed cells' mean embedding ``t_g``. The null distribution replaces ``g``'s shift by the shifts of
    other perturbed genes (``null[g]``, e.g. random genes with expression matched to ``g``), against the
    same observed direction; the one-sided permutation p-value is
    ``(1 + #{null >= alignment}) / (1 + n_null)``.

    Parameters
    ----------
    result
        Output of :func:`in_silico_perturbation` with ``return_embeddings=True``, over ``g``, the null
        genes and the cells the directions start from.
    targets
        Gene → ``(n_target, d_model)`` embeddings (same model) of its observed perturbed cells.
    null
        Gene → genes of ``result`` whose shifts form its null distribution; ``None``: no test.

    Returns
    -------
    :class:`~pandas.DataFrame` indexed by the genes of ``targets``: ``alignment``; with ``null`` also
    ``null_mean``, ``n_null`` and ``p_value``.

    Raises
    ------
    ValueError
        If ``result`` holds no embeddings, or a gene of ``targets`` / ``null`` was not perturbed in it.
    """
    if result.original is None or result.perturbed is None:
        raise ValueError("result holds no embeddings: run in_silico_perturbation(..., return_embeddings=True).")
    wanted = set(targets) | {h for hs in (null or {}).values() for h in hs}
    absent = sorted(wanted - set(result.perturbed))
    if absent:
        raise ValueError(f"Genes {absent[:5]} were not perturbed in result; add them to genes=.")
    z = result.original

    def shift(gene: str) -> np.ndarray:
        applies = np.isfinite(result.cell_shift[gene].to_numpy())
        if not applies.any():
            return np.zeros(z.shape[1])
        return (result.perturbed[gene][applies] - z[applies]).mean(0)

    rows = {}
    for gene, observed in targets.items():
        applies = np.isfinite(result.cell_shift[gene].to_numpy())
        start = z[applies].mean(0) if applies.any() else z.mean(0)
        direction = np.asarray(observed, dtype=np.float64).mean(0) - start
        row = {"alignment": _cos(shift(gene), direction)}
        if null is not None:
            scores = np.array([_cos(shift(h), direction) for h in null.get(gene, ())])
            scores = scores[np.isfinite(scores)]
            row |= {"null_mean": float(scores.mean()) if scores.size else float("nan"), "n_null": int(scores.size),
                    "p_value": float((1 + (scores >= row["alignment"]).sum()) / (1 + scores.size))}
        rows[gene] = row
    return pd.DataFrame.from_dict(rows, orient="index")


__all__ = ["MODES", "InSilicoResult", "in_silico_perturbation", "shift_alignment"]
