"""Interrupted training that resumes where it stopped, with the weights uninterrupted training gives.

Two callbacks make :meth:`GenoHoptionModel.train` resumable:

- :class:`EpochSeed` (always added by ``train``) seeds torch, NumPy and :mod:`random` at the start of every
  epoch from ``(scvi.settings.seed, epoch)`` and gives the training loaders the epoch (``set_epoch``, e.g.
  the control-cell pairing of perturbation models), so an epoch's minibatch order, token sampling, pairing
  and dropout do not depend on what ran before it in the process;
- :class:`TrainingCheckpoint` writes the whole training state after every epoch (weights, optimiser and
  learning-rate schedule, epoch counter, the state of early stopping, of
  :class:`~genohoption.model.RestoreBestWeights` and of :class:`EpochSeed`) as a Lightning checkpoint,
  ``{dirpath}/last.ckpt``, which ``train(..., ckpt_path=...)`` reads back.
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from scvi.train import SaveCheckpoint
from torch.utils.data import DataLoader, RandomSampler

__all__ = ["CHECKPOINT_FILE", "EpochSeed", "TrainingCheckpoint", "epoch_seed"]

CHECKPOINT_FILE = "last.ckpt"
"""File name of the checkpoint :class:`TrainingCheckpoint` keeps (the latest epoch's)."""


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch`` of a run seeded with ``seed`` (a 32-bit integer; NumPy's SeedSequence)."""
    return int(np.random.SeedSequence([int(seed) % 2**63, int(epoch)]).generate_state(1)[0])


class EpochSeed(Callback):
    """Seed torch, NumPy and :mod:`random` at the start of every training epoch from ``(seed, epoch)``.

    What an epoch draws (minibatch order, sampled tokens, dropout) then depends on the seed and the epoch
    only, so training resumed from a checkpoint of epoch ``k`` repeats the draws of uninterrupted training.
    The seed is part of the checkpoint (:meth:`state_dict`), so a resumed run keeps it.

    Parameters
    ----------
    seed
        Seed of the run (``train`` passes ``scvi.settings.seed``).
    """

    def __init__(self, seed: int):
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        """Seed the generators for this epoch (before its minibatches are drawn).

        The training loaders' random samplers and their base seeds get generators of their own, seeded
        here too: Lightning creates the first epoch's loader iterator before this hook and later ones after
        it, so with the global generator the minibatch order of an epoch would depend on whether it is the
        first of a (resumed) run. Loaders with a ``set_epoch`` method (the perturbation models' control
        pairing, :class:`~genohoption.model._perturbation_data.PairedControlDataLoader`) get the epoch.
        """
        s = epoch_seed(self.seed, trainer.current_epoch)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)  # and every CUDA device
        for k, loader in enumerate(_loaders(trainer.train_dataloader)):
            if callable(getattr(loader, "set_epoch", None)):
                loader.set_epoch(trainer.current_epoch)
            loader.generator = torch.Generator().manual_seed(epoch_seed(s, 2 * k + 1))
            sampler = getattr(loader, "sampler", None)
            inner = getattr(sampler, "sampler", None)  # scvi-tools: BatchSampler(RandomSampler(dataset))
            for candidate in (sampler, inner):
                if isinstance(candidate, RandomSampler):
                    candidate.generator = torch.Generator().manual_seed(epoch_seed(s, 2 * k + 2))

    def state_dict(self) -> dict:
        """Return the seed, saved in Lightning checkpoints."""
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the seed of the interrupted run."""
        self.seed = int(state_dict["seed"])


def _loaders(obj) -> list[DataLoader]:
    """List the DataLoaders in what ``trainer.train_dataloader`` returns (a loader, or a list / dict of them)."""
    if isinstance(obj, DataLoader):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, list | tuple):
        return [dl for item in obj for dl in _loaders(item)]
    return []


class TrainingCheckpoint(SaveCheckpoint):
    """Save the whole training state after every epoch, to resume with ``train(ckpt_path=...)``.

    A Lightning :class:`~lightning.pytorch.callbacks.ModelCheckpoint` that keeps one file,
    ``{dirpath}/last.ckpt``, replaced (not versioned) after every ``every_n_epochs`` epochs: the module's weights, the
    optimiser and learning-rate schedule, the epoch counter and the state of the stateful callbacks (early
    stopping, :class:`~genohoption.model.RestoreBestWeights`, :class:`EpochSeed`). It is a subclass of
    scvi-tools' :class:`~scvi.train.SaveCheckpoint` only so that scvi-tools' Trainer accepts it as the
    checkpoint callback; it writes Lightning checkpoints, not model directories.

    Parameters
    ----------
    dirpath
        Directory of the checkpoint (created when first written).
    every_n_epochs
        Epochs between two saves.

    Examples
    --------
    >>> model.train(max_epochs=20, callbacks=[TrainingCheckpoint("ckpt")])  # interrupted
    >>> model = gh.GenoHoptionModel(adata)  # same set-up and scvi.settings.seed
    >>> model.train(max_epochs=20, callbacks=[TrainingCheckpoint("ckpt")], ckpt_path="ckpt/last.ckpt")
    """

    def __init__(self, dirpath: str | os.PathLike, every_n_epochs: int = 1):
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be a positive integer, got {every_n_epochs!r}.")
        ModelCheckpoint.__init__(self, dirpath=os.fspath(dirpath), filename=CHECKPOINT_FILE.removesuffix(".ckpt"),
                                 monitor=None, save_top_k=1, every_n_epochs=every_n_epochs,
                                 enable_version_counter=False)
        self.load_best_on_end = False
        self.loss_is_nan = False
        self.check_nan_gradients = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Lightning's set-up, without its warning about a non-empty directory (it holds the checkpoint to resume)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
            super().setup(trainer, pl_module, stage)

    @property
    def path(self) -> Path:
        """Path of the checkpoint file (``{dirpath}/last.ckpt``)."""
        return Path(self.dirpath) / CHECKPOINT_FILE

    # Lightning's own behaviour where scvi-tools' SaveCheckpoint replaces it with model directories
    on_save_checkpoint = Callback.on_save_checkpoint
    on_train_end = ModelCheckpoint.on_train_end
    on_exception = ModelCheckpoint.on_exception
    on_train_batch_end = ModelCheckpoint.on_train_batch_end
    _remove_checkpoint = ModelCheckpoint._remove_checkpoint
    _update_best_and_save = ModelCheckpoint._update_best_and_save
