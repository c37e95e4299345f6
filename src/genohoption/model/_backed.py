"""Minibatches of a backed AnnData (``anndata.read_h5ad(path, backed="r")``), read from disk in the sampler's order.

scvi-tools' :class:`~scvi.data.AnnTorchDataset` already reads a backed matrix a minibatch at a time
(anndata's backed CSR dataset or an ``h5py`` dataset, indexed by the minibatch's cells), but it sorts the
cells of each minibatch first (``h5py`` needs increasing indices) and returns them sorted. The cells of a
minibatch then meet the model in another order than in memory, which changes float round-off (and,
through Adam, the weights). :class:`OrderedAnnTorchDataset` reads the sorted rows and puts them back in
the sampler's order, so training on a backed AnnData gives the weights of training in memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scvi.data import AnnDataManager, AnnTorchDataset
from torch.utils.data import Subset

from .._validate import is_backed_matrix

__all__ = ["GenoHoptionDataManager", "OrderedAnnTorchDataset"]


class OrderedAnnTorchDataset(AnnTorchDataset):
    """:class:`~scvi.data.AnnTorchDataset` whose backed minibatches keep the order of the requested cells.

    Parameters
    ----------
    adata_manager
        Registered :class:`~scvi.data.AnnDataManager`.
    getitem_tensors, load_sparse_tensor
        As for :class:`~scvi.data.AnnTorchDataset`.
    """

    @property
    def on_disk(self) -> bool:
        """Whether a registered field is read from disk (a backed AnnData, or a matrix on disk in ``X``)."""
        if not hasattr(self, "_on_disk"):
            self._on_disk = self.adata_manager.adata.isbacked or any(is_backed_matrix(v) for v in self.data.values())
        return self._on_disk

    def __getitem__(self, indexes):
        """Rows ``indexes`` of every registered field, in the order given (read from disk in increasing order).

        A registered h5py dataset outside a backed AnnData is read by the parent with the sorted indices too.
        """
        if not (isinstance(indexes, list | np.ndarray) and self.on_disk):
            return super().__getitem__(indexes)
        indexes = np.asarray(indexes)
        order = np.argsort(indexes, kind="stable")
        data = super().__getitem__(indexes[order])  # the parent reads sorted rows
        back = np.empty_like(order)
        back[order] = np.arange(order.size)
        return {key: _take(value, back) for key, value in data.items()}


def _take(value, rows: np.ndarray):
    if isinstance(value, torch.Tensor):
        return value[torch.as_tensor(rows)]
    return value[rows]


class GenoHoptionDataManager(AnnDataManager):
    """:class:`~scvi.data.AnnDataManager` whose torch datasets are :class:`OrderedAnnTorchDataset`.

    In memory nothing changes; for a backed AnnData, minibatches are read from disk (never the whole
    matrix) and reach the model in the sampler's order.
    """

    def create_torch_dataset(
        self,
        indices: Sequence[int] | Sequence[bool] | None = None,
        data_and_attributes: list[str] | dict[str, np.dtype] | None = None,
        load_sparse_tensor: bool = False,
    ):
        """Create the torch dataset of the registered AnnData (see :meth:`scvi.data.AnnDataManager.create_torch_dataset`).

        Parameters
        ----------
        indices
            Cells to include (positions or a boolean mask); ``None``: all.
        data_and_attributes
            Registry keys to load, with their NumPy dtypes (or a list of keys); ``None``: all.
        load_sparse_tensor
            Load sparse rows as torch sparse tensors (scvi-tools' experimental option).

        Returns
        -------
        :class:`OrderedAnnTorchDataset`, wrapped in a :class:`torch.utils.data.Subset` when ``indices`` is given.
        """
        dataset = OrderedAnnTorchDataset(self, getitem_tensors=data_and_attributes,
                                         load_sparse_tensor=load_sparse_tensor)
        if indices is not None:
            indices = np.asarray(indices)
            if indices.dtype == bool:
                indices = np.flatnonzero(indices)
            dataset = Subset(dataset, indices)
        return dataset
