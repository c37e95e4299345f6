"""Batch covariate of annotation and pretraining models: registration, per-cell codes of a query, new batches.

``setup_anndata(adata, batch_key=...)`` registers ``adata.obs[batch_key]`` as scvi-tools' batch field
(:class:`~scvi.data.fields.CategoricalObsField` under ``REGISTRY_KEYS.BATCH_KEY``); the registry keeps the
batch categories, in code order, and is saved with the model. At inference the cells' batch names are
mapped to those codes; a batch the model was not trained on gets a code of its own above them (see
:mod:`genohoption.nn._batch`), and the model's domain-specific normalisations estimate its statistics from
its cells in the query before the cells are run (:func:`adapted_batch_norms`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS
from scvi.data.fields import CategoricalObsField

from ..module._encode import module_forward
from ..nn import DomainSpecificBatchNorm
from ..nn._batch import batch_parts
from ._query import Query, iter_rows

if TYPE_CHECKING:
    from anndata import AnnData
    from torch import nn

MIN_CELLS_TO_ADAPT = 10
"""Cells a batch not seen in training needs in a query for its own normalisation statistics; a smaller new
batch is normalised with the pooled statistics of the training batches."""


# ---------------------------------------------------------------- registration
def check_batch_column(adata: AnnData, batch_key: str) -> pd.Series:
    """Return ``adata.obs[batch_key]`` after checking it can serve as the batch of every cell.

    Raises
    ------
    KeyError
        If the column is missing (naming the available ones).
    ValueError
        If some cells have no batch (NaN).
    """
    if not isinstance(batch_key, str) or batch_key not in adata.obs:
        raise KeyError(f"batch_key={batch_key!r} is not a column of adata.obs; available: {list(adata.obs.columns)}.")
    values = adata.obs[batch_key]
    if values.isna().any():
        raise ValueError(
            f"adata.obs[{batch_key!r}] has {int(values.isna().sum())} cells without a batch (NaN); give them one "
            f"(e.g. adata.obs[{batch_key!r}] = adata.obs[{batch_key!r}].cat.add_categories('unknown').fillna('unknown')"
            f") or drop them."
        )
    return values


def batch_field(adata: AnnData, batch_key: str | None) -> list[CategoricalObsField]:
    """Return the scvi-tools batch field of ``adata.obs[batch_key]`` (a list of one), or ``[]`` when ``batch_key`` is ``None``.

    Raises
    ------
    KeyError, ValueError
        See :func:`check_batch_column`.
    """
    if batch_key is None:
        return []
    check_batch_column(adata, batch_key)
    return [CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key)]


def batch_categories(registry: Mapping) -> np.ndarray | None:
    """Return the training batches, in code order, from a model's registry; ``None`` when set up without ``batch_key``."""
    if not registry["setup_args"].get("batch_key"):
        return None
    state = registry["field_registries"][REGISTRY_KEYS.BATCH_KEY]["state_registry"]
    return np.asarray(state["categorical_mapping"]).astype(str)


def n_batches(registry: Mapping) -> int:
    """Return the number of training batches (0 without ``batch_key``)."""
    categories = batch_categories(registry)
    return 0 if categories is None else len(categories)


def check_batch_params(params: Mapping[str, Any], registry: Mapping) -> None:
    """Raise for batch options of the model that the registered data cannot support.

    Raises
    ------
    ValueError
        For an unknown ``batch_representation``, a negative ``batch_adversarial``, or an adversarial weight
        without ``batch_key`` or with a single batch.
    """
    batch_parts(params.get("batch_representation"))
    weight = params.get("batch_adversarial", 0.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight >= 0:
        raise ValueError(f"batch_adversarial must be a non-negative number, got {weight!r}.")
    if weight and n_batches(registry) < 2:
        raise ValueError(
            f"batch_adversarial={weight} needs the cells' batches: set up the data with "
            "GenoHoptionModel.setup_anndata(adata, ..., batch_key='batch') with at least two batches."
            if not registry["setup_args"].get("batch_key") else
            f"batch_adversarial={weight} needs at least two batches in adata.obs[{registry['setup_args']['batch_key']!r}]."
        )


# ---------------------------------------------------------------- queries
def query_batch_codes(adata: AnnData, registry: Mapping) -> tuple[np.ndarray, list[str]] | None:
    """Each cell's batch code for a model's registry, and the batches the model was not trained on.

    Training batches get their code (``0 … n_batches - 1``); each new batch with at least
    :data:`MIN_CELLS_TO_ADAPT` cells gets a code of its own above ``n_batches`` (its statistics are then
    estimated from its cells); the cells of smaller new batches get ``n_batches``, the unknown batch.

    Returns
    -------
    ``(codes (n_obs,) int64, new batch names)``, or ``None`` for a model set up without ``batch_key``.

    Raises
    ------
    KeyError
        If ``adata.obs`` lacks the model's batch column.
    ValueError
        If some cells have no batch.
    """
    categories = batch_categories(registry)
    if categories is None:
        return None
    batch_key = registry["setup_args"]["batch_key"]
    if batch_key not in adata.obs:
        raise KeyError(
            f"The model was trained with batch_key={batch_key!r}, but adata.obs has no column {batch_key!r}: add "
            f"each cell's batch (adata.obs[{batch_key!r}] = ...); a batch the model has not seen is fine (its cells "
            "are normalised with their own statistics)."
        )
    names = check_batch_column(adata, batch_key).astype(str).to_numpy()
    codes = pd.Index(categories).get_indexer(names).astype(np.int64)
    unseen = codes < 0
    new = sorted(set(names[unseen].tolist()))
    unknown = len(categories)
    for j, name in enumerate(new):
        cells = names == name
        codes[cells] = unknown + 1 + j if cells.sum() >= MIN_CELLS_TO_ADAPT else unknown
    return codes, new


def resolve_batches(query: Query, registry: Mapping) -> Query:
    """Return the query with its cells' batch codes (:func:`query_batch_codes`); unchanged for a model without batches."""
    found = query_batch_codes(query.adata, registry)
    if found is None:
        return query
    return dataclasses.replace(query, batch_codes=found[0], new_batches=tuple(found[1]))


def iter_query(query: Query, batch_size: int, device: torch.device,
               where: str = "adata.X") -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield ``(x, batch_index)`` minibatches of the query's cells in order (:func:`~._query.iter_rows`).

    ``batch_index`` is the ``(B,)`` int64 batch codes of the cells, or ``None`` for a model without batches.
    """
    codes = query.batch_codes
    start = 0
    for x in iter_rows(query.X, batch_size, device, where):
        b = None
        if codes is not None:
            b = torch.as_tensor(codes[start : start + x.shape[0]], device=device)
        start += x.shape[0]
        yield x, b


@contextlib.contextmanager
def adapted_batch_norms(module: nn.Module, query: Query, batch_size: int,
                        forward: Callable[[torch.Tensor, torch.Tensor | None], Any] | None = None) -> Iterator[None]:
    """Within the block, the module's domain-specific normalisations know the statistics of the query's new batches.

    AdaBN (Li et al. 2016): the cells of a batch not seen in training (codes above ``n_batches``) are
    normalised with their own batch's statistics, estimated over every one of its cells in the query. One
    pass over the query per :class:`~genohoption.nn.DomainSpecificBatchNorm` of the module (each pass fixes the
    statistics of one more level, the input's first); nothing is done when the query has no such batch.
    The statistics are forgotten when the block ends.

    Parameters
    ----------
    module
        The task module, in evaluation mode.
    query
        The resolved query (:func:`resolve_batches`).
    batch_size
        Cells per forward pass.
    forward
        Runs the module on one ``(x, batch_index)`` minibatch; default its own evaluation pass
        (:func:`~genohoption.module._encode.module_forward`).
    """
    if forward is None:
        forward = functools.partial(module_forward, module)
    norms = [m for m in module.modules() if isinstance(m, DomainSpecificBatchNorm)]
    codes = query.batch_codes
    new = bool(norms) and codes is not None and bool((codes > norms[0].n_batches).any())
    try:
        if new:
            with torch.no_grad():
                for _ in norms:
                    for norm in norms:
                        norm.begin_adaptation()
                    for x, b in iter_query(query, batch_size, module.device):
                        forward(x, b)
                    for norm in norms:
                        norm.end_adaptation()
        yield
    finally:
        for norm in norms:
            norm.clear_adaptation()


# ---------------------------------------------------------------- training
def batch_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{"batch_index": (B,) int64}`` from a minibatch with the batch field, else ``{}`` (module keyword)."""
    if REGISTRY_KEYS.BATCH_KEY not in batch:
        return {}
    return {"batch_index": batch[REGISTRY_KEYS.BATCH_KEY].reshape(-1).long()}


def pretraining_batch_obs(query: Query, registry: Mapping) -> pd.DataFrame:
    """``obs`` of the light AnnData that pretrains an annotation model's backbone: the cells' batches.

    A categorical column with the model's batch categories (so that the registered codes are the model's),
    empty for a model without batches.

    Raises
    ------
    ValueError
        If some cells belong to batches the model was not trained on.
    """
    obs = pd.DataFrame(index=query.adata.obs_names.astype(str))
    categories = batch_categories(registry)
    if categories is None:
        return obs
    if query.new_batches:
        raise ValueError(
            f"pretrain() received cells of batches the model was not trained on ({list(query.new_batches)[:3]}): "
            "its batch embedding and normalisations have no slot for them; pretrain on cells of the model's "
            f"batches ({list(categories)[:5]}), or set up a model whose data include every batch."
        )
    obs[PRETRAINING_BATCH_COLUMN] = pd.Categorical.from_codes(query.batch_codes, categories=categories)
    return obs


PRETRAINING_BATCH_COLUMN = "batch"
"""Column of the light AnnData registered by ``pretrain`` with the cells' batches."""


def pretraining_batch_fields(registry: Mapping) -> list[CategoricalObsField]:
    """Return the batch field of that light AnnData (``[]`` for a model without batches)."""
    if batch_categories(registry) is None:
        return []
    return [CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, PRETRAINING_BATCH_COLUMN)]
