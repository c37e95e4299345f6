"""A deep ensemble of cell-type annotation models: one prediction from several independently seeded models."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from scipy.special import softmax
from scvi import settings as scvi_settings

from .. import _constants as K
from ..tl._calibration import scaled_probabilities
from ._annotation import (
    AnnotationTask,
    calibrated_settings,
    calibration_labels,
    calibration_record,
    check_false_unknown_rate,
    check_predict_args,
    write_predictions,
)
from ._model import GenoHoptionModel
from ._resume import EpochSeed

if TYPE_CHECKING:
    from anndata import AnnData

MEMBER_PREFIX = "member{}_"
"""File-name prefix of member ``i``'s files in a saved ensemble (``member0_model.safetensors``, ...)."""


def member_seed(seed: int, member: int) -> int:
    """Seed of ensemble member ``member`` >= 1 of a run seeded ``seed``: independent streams per (seed, member).

    Member 0 is not reseeded: it is the model ``GenoHoptionModel`` would build and train at that seed.
    """
    return int(np.random.SeedSequence([int(seed), int(member)]).generate_state(1)[0])


def _indices(model: GenoHoptionModel, name: str) -> np.ndarray:
    """Return a split of the model's cells set by training (``train_indices``, ...), empty when there is none."""
    value = getattr(model, name, None)
    return np.asarray([] if value is None else value, dtype=np.int64)


class GenoHoptionEnsemble:
    """Several annotation models trained alike from different random starts; their probabilities averaged.

    A deep ensemble (Lakshminarayanan et al. 2017, "Simple and scalable predictive uncertainty estimation
    using deep ensembles"): ``n_members`` :class:`GenoHoptionModel` of the same settings on the same
    reference, differing only in their initial weights and in the random draws of training (minibatch order,
    dropout). A cell's class probabilities are the mean of the members' softmax probabilities; the ensemble's
    class scores are their logarithm, which :meth:`calibrate` temperature-scales like one model's logits. The
    mean is steadier from seed to seed than any one member and its uncertainty includes the members'
    disagreement. Training and prediction cost ``n_members`` times one model's.

    Member 0 is the model ``GenoHoptionModel(adata, **model_kwargs)`` builds at the current seed (same
    initial weights, split and draws); member ``i >= 1`` is initialised and trained with the seed
    :func:`member_seed` ``(seed, i)``. Every member holds out the same cells (member 0's split) so that
    :meth:`calibrate` can use them.

    Parameters
    ----------
    adata
        Reference registered with :meth:`GenoHoptionModel.setup_anndata` and ``labels_key``, ``(n_obs, n_vars)``.
    n_members
        Number of models (default 3); 1 is a single model.
    seed
        Seed of members 1, 2, ...; default ``scvi.settings.seed`` (0 when unset).
    **model_kwargs
        Arguments of :class:`GenoHoptionModel` (``attention``, ``dropout``, ...), the same for every member.

    Raises
    ------
    ValueError
        If ``n_members`` is not a positive integer, or ``adata`` is set up for another task than annotation.
    TypeError
        If ``model_kwargs`` holds an argument :class:`GenoHoptionModel` does not take.

    Examples
    --------
    >>> ensemble = gh.model.GenoHoptionEnsemble(reference, n_members=3, attention="ppr", dropout=0.2)
    >>> ensemble.train(max_epochs=20, batch_size=32)
    >>> ensemble.calibrate()  # on the cells every member held out
    >>> ensemble.predict(query, unknown_threshold="calibrated")
    """

    def __init__(self, adata: AnnData, n_members: int = 3, *, seed: int | None = None, **model_kwargs):
        if isinstance(n_members, bool) or not isinstance(n_members, int | np.integer) or n_members < 1:
            raise ValueError(f"n_members must be a positive integer, got {n_members!r}.")
        self.seed = int(scvi_settings.seed or 0) if seed is None else int(seed)
        members = [GenoHoptionModel(adata, **model_kwargs)]
        for i in range(1, int(n_members)):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(member_seed(self.seed, i))
                members.append(GenoHoptionModel(adata, **model_kwargs))
        self._set_members(members)
        self.calibration_: dict[str, Any] | None = None

    @classmethod
    def from_models(cls, models: Sequence[GenoHoptionModel], *, seed: int | None = None) -> GenoHoptionEnsemble:
        """Make an ensemble of annotation models built (and trained) elsewhere, in the given order.

        Raises
        ------
        TypeError
            If an element is not a :class:`GenoHoptionModel` or a model does not classify cells.
        ValueError
            If ``models`` is empty, or the models differ in their genes or cell types.
        """
        self = cls.__new__(cls)
        self.seed = int(scvi_settings.seed or 0) if seed is None else int(seed)
        self._set_members(list(models))
        self.calibration_ = None
        return self

    def _set_members(self, members: list[GenoHoptionModel]) -> None:
        if not members:
            raise ValueError("An ensemble needs at least one model.")
        for i, m in enumerate(members):
            if not isinstance(m, GenoHoptionModel):
                raise TypeError(f"member {i} is a {type(m).__name__}, not a GenoHoptionModel.")
            if not isinstance(m._task, AnnotationTask):
                raise TypeError(f"member {i} is a {m._task.name} model; an ensemble averages cell-type "
                                "classifiers (setup_anndata(adata, labels_key=...)).")
        first = members[0]
        classes = [str(c) for c in first._task.labels]
        for i, m in enumerate(members[1:], start=1):
            if [str(c) for c in m._task.labels] != classes:
                raise ValueError(f"member {i} predicts other cell types than member 0 ({list(m._task.labels)} "
                                 f"against {classes}): train every member on the same reference.")
            if not m.var_names.equals(first.var_names):
                raise ValueError(f"member {i} reads other genes than member 0: train every member on the same "
                                 "reference genes.")
        self.members = members

    # ------------------------------------------------------------------ properties
    @property
    def n_members(self) -> int:
        """Number of models."""
        return len(self.members)

    @property
    def classes(self) -> list[str]:
        """Cell types, in the order of the probability columns."""
        return [str(c) for c in self.members[0]._task.labels]

    @property
    def is_trained_(self) -> bool:
        """Whether every member is trained."""
        return all(m.is_trained_ for m in self.members)

    @property
    def history_(self) -> list[dict]:
        """Each member's training history (:attr:`GenoHoptionModel.history_`)."""
        return [m.history_ for m in self.members]

    def __repr__(self) -> str:
        state = "trained" if self.is_trained_ else "untrained"
        return (f"GenoHoptionEnsemble of {self.n_members} {state} annotation models "
                f"({len(self.classes)} cell types, {self.members[0].var_names.size} genes, seed {self.seed})")

    # ------------------------------------------------------------------ training
    def pretrain(self, adata: AnnData | None = None, **kwargs) -> None:
        """Pretrain every member's backbone (:meth:`GenoHoptionModel.pretrain` with the same arguments)."""
        for i, m in enumerate(self.members):
            self._with_member_seed(i, lambda m=m: m.pretrain(adata, **kwargs))

    def train(self, **kwargs) -> None:
        """Train every member with :meth:`GenoHoptionModel.train`'s arguments ``kwargs``.

        Member 0 trains as the one model would; the others hold out the same cells (member 0's split, passed
        as ``datasplitter_kwargs["external_indexing"]``), get their own :class:`~genohoption.model.EpochSeed`
        (seed :func:`member_seed`) unless one is given, and fresh copies of the ``callbacks`` (e.g. Lightning's
        stochastic weight averaging keeps state). An earlier :meth:`calibrate` no longer holds.

        Raises
        ------
        ValueError, FileNotFoundError
            As :meth:`GenoHoptionModel.train`.
        """
        callbacks = list(kwargs.pop("callbacks", None) or [])
        fresh = [copy.deepcopy(callbacks) for _ in self.members[1:]]  # copied before member 0 changes them
        self.members[0].train(callbacks=callbacks, **kwargs)
        split = [_indices(self.members[0], name) for name in ("train_indices", "validation_indices", "test_indices")]
        for i, (m, cbs) in enumerate(zip(self.members[1:], fresh, strict=True), start=1):
            cbs = list(cbs)
            if not any(isinstance(c, EpochSeed) for c in cbs):
                cbs.append(EpochSeed(member_seed(self.seed, i)))
            member_kwargs = dict(kwargs)
            if len(split[1]):  # the same held-out cells as member 0
                member_kwargs["datasplitter_kwargs"] = {"external_indexing": split,
                                                        **(kwargs.get("datasplitter_kwargs") or {})}
            self._with_member_seed(i, lambda m=m, cbs=cbs, kw=member_kwargs: m.train(callbacks=cbs, **kw))
        self.calibration_ = None

    def _with_member_seed(self, member: int, fn) -> None:
        """Run ``fn`` with torch's generator seeded for ``member`` (member 0: unchanged), restored afterwards."""
        if member == 0:
            fn()
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(member_seed(self.seed, member))
            fn()

    # ------------------------------------------------------------------ outputs
    def _scores(self, adata: AnnData | None, batch_size: int):
        """Return the resolved query, the members' embeddings and the ensemble's class scores ``log(mean_m softmax(logits_m))``."""
        query = self.members[0]._resolve(adata)  # one alignment serves all: the members share genes and set-up
        latents, probs = [], None
        for m in self.members:
            z, logits = m._task._forward(m.module, query, batch_size)
            p = softmax(np.asarray(logits, dtype=np.float64), axis=1)
            probs = p if probs is None else probs + p
            latents.append(z)
        return query, latents, np.log(np.maximum(probs / self.n_members, np.finfo(np.float64).tiny))

    def calibrate(self, adata: AnnData | None = None, labels_key: str | None = None, *,
                  false_unknown_rate: float = 0.05, batch_size: int = 128) -> dict[str, Any]:
        """Fit the temperature and the "Unknown" threshold of the averaged probabilities on held-out cells.

        :meth:`GenoHoptionModel.calibrate` applied to the ensemble's class scores (the log of the members'
        mean probabilities): temperature scaling (Guo et al. 2017) and the conformal threshold
        (:func:`genohoption.tl.unknown_threshold`). Default cells: those every member held out in training.

        Parameters
        ----------
        adata
            Labelled cells no member trained on, of the reference's cell types; default the members' shared
            validation cells.
        labels_key
            Column of ``adata.obs`` with their cell types; default the reference's ``labels_key``.
        false_unknown_rate
            Largest fraction of known-type cells called "Unknown", in ``(0, 1)`` (default 0.05).
        batch_size
            Cells per forward pass.

        Returns
        -------
        The record (also :attr:`calibration_`), with the keys of :meth:`GenoHoptionModel.calibrate`.

        Raises
        ------
        ValueError
            If no cells are given and the members hold out none, or not the same ones; or as
            :meth:`GenoHoptionModel.calibrate`.
        KeyError
            If ``labels_key`` is not a column of ``adata.obs``.
        """
        check_false_unknown_rate(false_unknown_rate)
        first = self.members[0]
        source = "given cells"
        if adata is None:
            held = [np.sort(_indices(m, "validation_indices")) for m in self.members]
            if first.adata is None or len(held[0]) == 0:
                raise ValueError("The members have no held-out cells (trained with train_size=1, or loaded): pass "
                                 "labelled cells none of them trained on, ensemble.calibrate(held_out).")
            if any(not np.array_equal(h, held[0]) for h in held[1:]):
                raise ValueError("The members held out different cells (trained separately): pass labelled cells none "
                                 "of them trained on, ensemble.calibrate(held_out).")
            adata, source = first.adata[held[0]].copy(), "validation cells"
        adata, codes = calibration_labels(first._task, adata, labels_key, first.registry_)
        _, _, scores = self._scores(adata, batch_size)
        self.calibration_ = {**calibration_record(scores, codes, false_unknown_rate=false_unknown_rate),
                             "source": source, "n_members": self.n_members}
        return dict(self.calibration_)

    def predict(self, adata: AnnData | None = None, *, batch_size: int = 128, key_added: str = K.PREDICTION_KEY,
                unknown_threshold: float | Literal["calibrated"] | None = None) -> pd.Series:
        """Predict cell types from the members' averaged probabilities and write them to ``adata``.

        Writes what :meth:`GenoHoptionModel.predict` writes (``obs[key_added]``, the confidence and uncertainty
        columns, ``obsm["genohoption_probabilities"]``: the mean probabilities, temperature-scaled after
        :meth:`calibrate`; ``uns["genohoption"]["predict"]`` with ``n_members``).

        Parameters
        ----------
        adata
            Query cells, ``(n_obs, n_vars)``, genes matched by name; default the reference.
        batch_size
            Cells per forward pass.
        key_added
            Column of ``adata.obs`` for the predicted cell type.
        unknown_threshold
            A number in ``[0, 1]``, ``"calibrated"`` (the threshold of :meth:`calibrate`) or ``None`` (default:
            every cell gets a reference type).

        Returns
        -------
        pandas.Series
            Predicted cell types, categorical, indexed by ``adata.obs_names``.

        Raises
        ------
        ValueError
            For an ``unknown_threshold`` that is not a number in [0, 1], "calibrated" or None, "calibrated"
            before :meth:`calibrate`, or a query the members cannot read.
        """
        unknown_threshold, temperature = calibrated_settings(unknown_threshold, self.calibration_, "ensemble")
        check_predict_args(key_added, unknown_threshold)
        query, _, scores = self._scores(adata, batch_size)
        record = {"attention": self.members[0].params["attention"], "n_members": self.n_members}
        return write_predictions(query, scores, self.classes, key_added=key_added, temperature=temperature,
                                 unknown_threshold=unknown_threshold, record=record, stacklevel=3)

    def predict_probabilities(self, adata: AnnData | None = None, *, batch_size: int = 128) -> pd.DataFrame:
        """Class probabilities ``(n_obs, n_classes)``: the members' mean, temperature-scaled after :meth:`calibrate`.

        Nothing is written to ``adata``.
        """
        query, _, scores = self._scores(adata, batch_size)
        temperature = self.calibration_["temperature"] if self.calibration_ is not None else 1.0
        return pd.DataFrame(scaled_probabilities(scores, temperature), index=query.adata.obs_names,
                            columns=self.classes)

    def get_latent_representation(self, adata: AnnData | None = None, *, batch_size: int = 128) -> np.ndarray:
        """Return the members' cell embeddings side by side, ``(n_obs, n_members * d_latent)`` float32.

        Each member's embedding (:meth:`GenoHoptionModel.get_latent_representation`) lives in its own
        coordinates, so they are concatenated, not averaged; neighbours and UMAP on the result see every member.
        """
        _, latents, _ = self._scores(adata, batch_size)
        return np.concatenate(latents, axis=1).astype(np.float32)

    # ------------------------------------------------------------------ save / load
    def save(self, dir_path: str | os.PathLike, overwrite: bool = False) -> None:
        """Write every member (:meth:`GenoHoptionModel.save`, prefix ``member{i}_``) and ``ensemble.json``.

        Raises
        ------
        FileExistsError
            If an ensemble is saved in ``dir_path`` and ``overwrite`` is false, or ``dir_path`` is a file.
        """
        path = Path(dir_path)
        if path.is_file():
            raise FileExistsError(f"{path} is a file; give a directory.")
        if (path / K.ENSEMBLE_FILE).exists() and not overwrite:
            raise FileExistsError(f"An ensemble is already saved in {path}; pass overwrite=True to replace it.")
        path.mkdir(parents=True, exist_ok=True)
        for i, m in enumerate(self.members):
            m.save(path, prefix=MEMBER_PREFIX.format(i), overwrite=True)
        record = {"n_members": self.n_members, "seed": self.seed, "calibration": self.calibration_}
        (path / K.ENSEMBLE_FILE).write_text(json.dumps(record, indent=1))

    @classmethod
    def load(cls, dir_path: str | os.PathLike, adata: AnnData | None = None, **load_kwargs) -> GenoHoptionEnsemble:
        """Load an ensemble written by :meth:`save` (each member with :meth:`GenoHoptionModel.load`).

        Raises
        ------
        FileNotFoundError
            If ``dir_path`` holds no ``ensemble.json`` or a member's files are missing.
        """
        path = Path(dir_path)
        if not (path / K.ENSEMBLE_FILE).is_file():
            raise FileNotFoundError(f"{path} holds no {K.ENSEMBLE_FILE}: give the directory GenoHoptionEnsemble.save "
                                    "wrote (a single model loads with GenoHoptionModel.load).")
        record = json.loads((path / K.ENSEMBLE_FILE).read_text())
        models = [GenoHoptionModel.load(path, adata=adata, prefix=MEMBER_PREFIX.format(i), **load_kwargs)
                  for i in range(int(record["n_members"]))]
        self = cls.from_models(models, seed=record["seed"])
        self.calibration_ = record["calibration"]
        return self
