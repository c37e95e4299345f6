"""scvi-tools data plumbing of perturbation models: the condition field and control-cell pairing.

Training pairs a perturbed (target) cell with a random control (input) cell, as GEARS and scGPT do.
The pairing is drawn per minibatch inside a scvi-tools data loader (:class:`PairedControlDataLoader`,
used through :class:`PerturbationDataSplitter`): scvi-tools keeps the train / validation split, the
batching and the Lightning plumbing; the loader adds two tensors to every minibatch, the expression of
randomly drawn control cells (``"ctrl_x"``) and the perturbed genes' indices (``"pert_genes"``).
Draws come from a generator seeded by the run's seed and the epoch (training: a new pairing every epoch,
which training resumed from a checkpoint repeats) or by the seed alone (validation: the same pairing at
every pass).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scvi import REGISTRY_KEYS, settings
from scvi.data.fields import CategoricalObsField
from scvi.dataloaders import AnnDataLoader, DataSplitter

from .._conditions import GeneUniverse, condition_gene_indices
from .._constants import CTRL_X_KEY, PERT_GENES_KEY, PERT_KEY

__all__ = ["PairedControlDataLoader", "PerturbationDataSplitter", "PerturbationField", "registry_universe"]


class PerturbationField(CategoricalObsField):
    """Categorical ``obs`` field of perturbation conditions that also records the genes' symbols.

    The state registry gains ``gene_symbols`` (symbols of ``var_names``, used to place perturbation
    flags), ``control_value`` and the gene universe (``universe_genes``, ``universe_indptr``,
    ``universe_indices``: the unmeasured genes that can be perturbed and their edges to measured
    genes, see :class:`genohoption._conditions.GeneUniverse`), so that a saved model can map condition
    strings to genes without the training data.

    Parameters
    ----------
    registry_key
        Key in the registry (:data:`PERT_KEY`).
    obs_key
        Column of ``adata.obs`` with the conditions.
    gene_symbols
        Column of ``adata.var`` with the symbols the conditions use; ``None``: ``var_names``.
    control_value
        The control condition.
    universe
        The gene universe built at set-up (``None`` when a saved registry is transferred: its universe
        is kept).
    """

    def __init__(self, registry_key: str, obs_key: str, gene_symbols: str | None, control_value: str,
                 universe: GeneUniverse | None = None):
        super().__init__(registry_key, obs_key)
        self.gene_symbols = gene_symbols
        self.control_value = control_value
        self.universe = universe

    def _symbols(self, adata) -> np.ndarray:
        if self.gene_symbols is None:
            return np.asarray(adata.var_names, dtype=str)
        return np.asarray(adata.var[self.gene_symbols].astype(str), dtype=str)

    def register_field(self, adata) -> dict:
        """Register the categories and record the gene symbols, control value and gene universe."""
        state = super().register_field(adata)
        symbols = self._symbols(adata)
        universe = self.universe if self.universe is not None else GeneUniverse(symbols)
        return {**state, "gene_symbols": symbols, "control_value": self.control_value, **universe.to_state()}

    def transfer_field(self, state_registry: dict, adata_target, **kwargs) -> dict:
        """Transfer the categories; symbols are taken from the target, the universe from the source."""
        state = super().transfer_field(state_registry, adata_target, **kwargs)
        universe = {k: state_registry[k] for k in ("universe_genes", "universe_indptr", "universe_indices")
                    if k in state_registry}
        return {**state, "gene_symbols": self._symbols(adata_target), "control_value": self.control_value,
                **universe}


def registry_universe(state: dict) -> GeneUniverse:
    """Return the :class:`~genohoption._conditions.GeneUniverse` of a perturbation field's state registry."""
    return GeneUniverse.from_state(state["gene_symbols"], state)


class PairedControlDataLoader(AnnDataLoader):
    """:class:`~scvi.dataloaders.AnnDataLoader` whose minibatches carry paired control cells.

    Every minibatch gets ``"ctrl_x"`` ``(B, n_vars)`` float32, the expression of ``B`` control cells drawn
    uniformly with replacement, and ``"pert_genes"`` ``(B, max_genes)`` int64, the perturbed genes of
    each target cell (``-1`` = none).

    Parameters
    ----------
    adata_manager
        The registered data.
    control_x
        ``(n_control, n_vars)`` expression of the control cells (dense or sparse).
    condition_genes
        ``(n_conditions, max_genes)`` perturbed gene indices per condition code.
    seed
        Seed of the pairing. A shuffling (training) loader draws the pairing of epoch ``e`` from
        ``seed + 1 + e`` (:meth:`set_epoch`; without it, ``e`` counts the passes over the loader); a
        non-shuffling (validation / test) loader draws the same pairing, from ``seed``, on every pass.
    **kwargs
        Passed to :class:`~scvi.dataloaders.AnnDataLoader`.
    """

    def __init__(self, adata_manager, *, control_x, condition_genes: np.ndarray, seed: int = 0, **kwargs):
        super().__init__(adata_manager, **kwargs)
        self._control_x = sp.csr_matrix(control_x) if sp.issparse(control_x) else np.asarray(control_x)
        self._condition_genes = torch.as_tensor(condition_genes, dtype=torch.int64)
        self._fixed = not kwargs.get("shuffle", False)
        self._seed = int(seed)
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass draw the pairing of training epoch ``epoch`` (called at the start of every epoch).

        :class:`~genohoption.model.EpochSeed` calls it with the trainer's epoch, so that a run resumed from a
        checkpoint of epoch ``k`` pairs epoch ``k + 1`` as uninterrupted training does.
        """
        self._epoch = int(epoch)

    def __iter__(self):
        # the body runs at the first minibatch, after the epoch-start hooks (set_epoch) of this epoch
        seed = self._seed if self._fixed else self._seed + 1 + self._epoch
        self._epoch += 1
        generator = torch.Generator().manual_seed(seed)
        n_control = self._control_x.shape[0]
        for batch in super().__iter__():
            codes = batch[PERT_KEY].view(-1).long()
            pick = torch.randint(n_control, (codes.shape[0],), generator=generator).numpy()
            rows = self._control_x[pick]
            rows = rows.toarray() if sp.issparse(rows) else rows
            batch[CTRL_X_KEY] = torch.as_tensor(np.asarray(rows, dtype=np.float32))
            batch[PERT_GENES_KEY] = self._condition_genes[codes]
            yield batch


class PerturbationDataSplitter(DataSplitter):
    """scvi-tools :class:`~scvi.dataloaders.DataSplitter` that pairs cells with random control cells.

    The split of cells into training and validation is scvi-tools' (random, seeded by
    ``scvi.settings.seed``); every loader is a :class:`PairedControlDataLoader`. The control cells and
    the condition → genes table are read from the registry (see
    :meth:`genohoption.GenoHoptionModel.setup_anndata` with ``perturbation_key``). All control cells
    serve as inputs, whichever split they fall in.

    Parameters
    ----------
    adata_manager
        Registered data of a perturbation model.
    **kwargs
        Passed to :class:`~scvi.dataloaders.DataSplitter`.
    """

    data_loader_cls = PairedControlDataLoader

    def __init__(self, adata_manager, **kwargs):
        super().__init__(adata_manager, **kwargs)
        state = adata_manager.get_state_registry(PERT_KEY)
        codes = np.asarray(adata_manager.get_from_registry(PERT_KEY)).reshape(-1)
        mapping = np.asarray(state["categorical_mapping"]).astype(str)
        control = state["control_value"]
        is_control = mapping[codes] == control
        X = adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        self.data_loader_kwargs.update(
            control_x=X[np.flatnonzero(is_control)],
            condition_genes=condition_gene_indices(list(mapping), registry_universe(state), control),
            seed=settings.seed or 0,
        )
