"""Cell-type annotation metrics and reference/query splits."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split

from .._constants import PREDICTION_KEY

if TYPE_CHECKING:
    from anndata import AnnData


def annotation_metrics(
    adata: AnnData,
    labels_key: str,
    *,
    prediction_key: str = PREDICTION_KEY,
) -> dict:
    """Score predicted cell types against known labels.

    Uses :func:`sklearn.metrics.accuracy_score` and :func:`sklearn.metrics.f1_score`, as the
    GenoHoption paper reports accuracy and macro F1 for annotation.

    Parameters
    ----------
    adata
        Annotated data with true labels in ``adata.obs[labels_key]`` and predictions in
        ``adata.obs[prediction_key]``.
    labels_key
        Column of ``adata.obs`` with the true cell types.
    prediction_key
        Column of ``adata.obs`` with the predicted cell types (written by
        :meth:`~genohoption.GenoHoptionModel.predict`).

    Returns
    -------
    Dictionary with ``accuracy`` (fraction in [0, 1]), ``macro_f1`` (unweighted mean of per-class F1
    over the classes present in truth or prediction), ``per_class_f1`` (class → F1) and ``n_obs``.

    Raises
    ------
    KeyError
        If either column is missing.
    """
    for key, what in ((labels_key, "labels_key"), (prediction_key, "prediction_key")):
        if key not in adata.obs:
            raise KeyError(
                f"{what}={key!r} is not a column of adata.obs; available: {list(adata.obs.columns)}. "
                + ("Run model.predict(adata) first." if what == "prediction_key" else "")
            )
    truth = adata.obs[labels_key].astype(str).to_numpy()
    pred = adata.obs[prediction_key].astype(str).to_numpy()
    classes = np.unique(np.concatenate([truth, pred]))
    per_class = f1_score(truth, pred, labels=classes, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(truth, pred)),
        "macro_f1": float(f1_score(truth, pred, labels=classes, average="macro", zero_division=0)),
        "per_class_f1": {str(c): float(f) for c, f in zip(classes, per_class, strict=True)},
        "n_obs": int(adata.n_obs),
    }


def stratified_split(
    adata: AnnData,
    labels_key: str,
    *,
    test_size: float = 0.3,
    seed: int = 0,
) -> tuple[AnnData, AnnData]:
    """Split cells into reference and query, stratified by label.

    Wraps :func:`sklearn.model_selection.train_test_split`. Classes with a single cell go to the
    reference.

    Parameters
    ----------
    adata
        Annotated data, ``(n_obs, n_vars)``.
    labels_key
        Column of ``adata.obs`` to stratify on.
    test_size
        Fraction of cells in the query, in (0, 1).
    seed
        Random seed.

    Returns
    -------
    ``(reference, query)`` as copies.

    Raises
    ------
    KeyError
        If ``labels_key`` is missing.
    ValueError
        If ``test_size`` is not in (0, 1).
    """
    if labels_key not in adata.obs:
        raise KeyError(f"labels_key={labels_key!r} is not a column of adata.obs.")
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}.")
    labels = adata.obs[labels_key].astype(str)
    counts = labels.value_counts()
    single = labels.isin(counts.index[counts < 2]).to_numpy()
    idx = np.flatnonzero(~single)
    ref_idx, query_idx = train_test_split(
        idx, test_size=test_size, random_state=seed, stratify=labels.to_numpy()[idx]
    )
    ref_idx = np.sort(np.concatenate([ref_idx, np.flatnonzero(single)]))
    return adata[ref_idx].copy(), adata[np.sort(query_idx)].copy()


