"""Linear baselines for cell-type annotation (scikit-learn; no torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from .._constants import BASELINE_PREDICTION_KEY
from .._utils import companion_key

if TYPE_CHECKING:
    from anndata import AnnData


def _matrix(adata: AnnData, layer: str | None, name: str):
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        raise KeyError(f"layer={layer!r} is not a layer of the {name}; available: {list(adata.layers)}.")
    return adata.layers[layer]


def _aligned_query_matrix(reference: AnnData, query: AnnData, layer: str | None):
    """Query expression as ``(n_query_obs, n_reference_vars)``, columns in the reference's gene order.

    Query genes absent from the reference are dropped; reference genes absent from the query are 0.
    Returns the matrix and the number of reference genes found in the query.
    """
    X = _matrix(query, layer, "query")
    pos = query.var_names.get_indexer(reference.var_names)  # query column of each reference gene, -1 if absent
    present = pos >= 0
    n_shared = int(present.sum())
    if n_shared == 0:
        raise ValueError(
            "The query shares no gene with the reference (var_names are matched by name); use the same "
            "gene identifiers (symbols or Ensembl IDs) in both."
        )
    if n_shared == reference.n_vars and np.array_equal(pos, np.arange(query.n_vars)):
        return X, n_shared
    cols = np.flatnonzero(present)
    if sparse.issparse(X):
        # selection matrix S, (n_query_vars, n_reference_vars), S[pos[i], i] = 1: X @ S is aligned
        S = sparse.csr_matrix(
            (np.ones(n_shared, dtype=X.dtype), (pos[present], cols)), shape=(query.n_vars, reference.n_vars)
        )
        return sparse.csr_matrix(X) @ S, n_shared
    X = np.asarray(X)
    out = np.zeros((query.n_obs, reference.n_vars), dtype=X.dtype)
    out[:, cols] = X[:, pos[present]]
    return out, n_shared


def logistic_regression_baseline(
    reference: AnnData,
    query: AnnData,
    labels_key: str,
    *,
    layer: str | None = None,
    key_added: str = BASELINE_PREDICTION_KEY,
    C: float = 1.0,
    max_iter: int = 1000,
    random_state: int | None = 0,
    copy: bool = False,
) -> pd.Series | AnnData:
    """Annotate the query with a multinomial logistic regression fitted on the reference.

    A linear reference point for :meth:`genohoption.GenoHoptionModel.predict`: scikit-learn's
    :class:`~sklearn.linear_model.LogisticRegression` (``lbfgs`` solver, multinomial loss, L2 penalty)
    fitted on the reference cells' expression and applied to the query. It sees the same values as the
    model (``layer`` or ``X``, unscaled) and aligns genes by name like the model does: query genes
    missing from the reference are dropped, reference genes missing from the query count as 0. Score it
    with ``annotation_metrics(query, labels_key, prediction_key=key_added)``.

    Parameters
    ----------
    reference
        Labelled cells, ``(n_ref_obs, n_ref_vars)``, unique ``var_names``.
    query
        Cells to annotate, ``(n_query_obs, n_query_vars)``, unique ``var_names``; genes matched to the
        reference's by name.
    labels_key
        Column of ``reference.obs`` with the cell types (at least two, no missing value).
    layer
        Layer of both objects with the expression; ``None`` uses ``X``. Sparse or dense.
    key_added
        Column of ``query.obs`` to write the predictions to.
    C
        Inverse L2 regularisation strength (scikit-learn's ``C``).
    max_iter
        Maximum ``lbfgs`` iterations (pbmc68k_reduced converges in about 65).
    random_state
        Passed to the classifier (the ``lbfgs`` fit is deterministic; kept for other solvers).
    copy
        Leave ``query`` unchanged and return a copy of it with the predictions written.

    Returns
    -------
    If ``copy`` is false, the predicted cell types: a categorical :class:`~pandas.Series` of length
    ``n_query_obs`` indexed by ``query.obs_names``, categories the reference's cell types (in the order
    of its categorical column, otherwise sorted); otherwise the modified copy of ``query``. Writes

    ``query.obs[key_added]``
        The predicted cell types (categorical);
    ``query.obs[key_added.removesuffix("prediction") + "confidence"]`` (``logreg_confidence``; ``f"{key_added}_confidence"``
    for a key not ending in ``prediction``)
        The probability of the predicted type (its uncertainty is ``1 -`` that);
    ``query.uns[key_added]``
        ``{"method", "labels_key", "layer", "C", "max_iter", "n_iter", "converged", "n_genes_shared",
        "n_reference_genes"}``: the fit's parameters (``layer`` is ``"X"`` for ``X``), its iterations,
        and how many reference genes the query holds.

    Raises
    ------
    KeyError
        If ``labels_key`` is not in ``reference.obs`` or ``layer`` is missing from either object.
    ValueError
        If ``var_names`` are duplicated, the query shares no gene with the reference, or the reference
        labels have missing values or fewer than two classes.

    Warns
    -----
    sklearn.exceptions.ConvergenceWarning
        If ``lbfgs`` did not converge within ``max_iter`` (``uns[key_added]["converged"]`` is then
        false).

    Examples
    --------
    >>> import genohoption as gh
    >>> adata = gh.datasets.pbmc68k_reduced()
    >>> ref, query = adata[adata.obs["lane"] != "8"].copy(), adata[adata.obs["lane"] == "8"].copy()
    >>> pred = gh.tl.logistic_regression_baseline(ref, query, "bulk_labels")
    >>> metrics = gh.tl.annotation_metrics(query, "bulk_labels", prediction_key="logreg_prediction")
    """
    from sklearn.linear_model import LogisticRegression

    if labels_key not in reference.obs:
        raise KeyError(
            f"labels_key={labels_key!r} is not a column of reference.obs; available: "
            f"{list(reference.obs.columns)}."
        )
    for adata, name in ((reference, "reference"), (query, "query")):
        if not adata.var_names.is_unique:
            dup = adata.var_names[adata.var_names.duplicated()].unique()[:5].tolist()
            raise ValueError(f"The {name} has duplicated var_names (e.g. {dup}); make them unique first.")
    labels = reference.obs[labels_key]
    if labels.isna().any():
        raise ValueError(
            f"reference.obs[{labels_key!r}] has {int(labels.isna().sum())} missing labels; drop those cells."
        )
    y = labels.astype(str).to_numpy()
    classes = np.unique(y)
    if classes.size < 2:
        raise ValueError(
            f"reference.obs[{labels_key!r}] holds {classes.size} cell type(s); at least two needed."
        )
    X_ref = _matrix(reference, layer, "reference")
    X_query, n_shared = _aligned_query_matrix(reference, query, layer)

    clf = LogisticRegression(C=C, max_iter=max_iter, random_state=random_state)
    clf.fit(X_ref, y)  # scikit-learn warns (ConvergenceWarning) when lbfgs stops at max_iter
    n_iter = int(np.max(clf.n_iter_))
    if isinstance(labels.dtype, pd.CategoricalDtype):  # keep the reference's order (and so its plot colours)
        categories = [str(c) for c in labels.cat.categories if str(c) in set(classes)]
    else:
        categories = classes.tolist()
    proba = clf.predict_proba(X_query)
    pred = pd.Categorical(clf.classes_[proba.argmax(1)], categories=categories)
    pred = pd.Series(pred, index=query.obs_names.copy(), name=key_added)

    if copy:
        query = query.copy()
    query.obs[key_added] = pred
    query.obs[companion_key(key_added, "confidence")] = proba.max(1)
    query.uns[key_added] = {
        "method": "sklearn.linear_model.LogisticRegression",
        "labels_key": labels_key,
        "layer": "X" if layer is None else layer,
        "C": float(C),
        "max_iter": int(max_iter),
        "n_iter": n_iter,
        "converged": n_iter < max_iter,
        "n_genes_shared": n_shared,
        "n_reference_genes": int(reference.n_vars),
    }
    return query if copy else pred
