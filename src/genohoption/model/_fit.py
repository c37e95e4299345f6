"""The one training set-up: data splitter, plan, callbacks and scvi-tools' TrainRunner (Lightning).

:meth:`GenoHoptionModel.train` (every task) and :meth:`GenoHoptionModel.pretrain` both call :func:`fit`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from scvi import settings as scvi_settings
from scvi.train import TrainRunner

from ._callbacks import PreciseBatchNorm
from ._distributed import distributed_splitter_kwargs, pin_split
from ._resume import EpochSeed
from ._training import RestoreBestWeights

if TYPE_CHECKING:
    from ._task import Task

CKPT_SHORTCUTS = ("last", "best", "hpc", "registry")
"""``ckpt_path`` values Lightning resolves itself (not file paths)."""

HIDDEN_WARNINGS = (
    # Lightning 2.6 building pytree specs the way torch 2.13 deprecates (lightning/pytorch/utilities/_pytree.py)
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\.utilities\._pytree"),
)
"""(message, category, module) of third-party internal deprecations that training does not show users."""

ADVERTISEMENTS = ("litlogger",)
"""Words of third-party log lines that advertise a product (Lightning's cloud-logger tip); training drops them."""

ROUTINE_INFO = ("GPU available:", "TPU available:", "HPU available:", "`Trainer.fit` stopped:")
"""Starts of Lightning's routine INFO lines (the hardware report, the end of ``fit``), which say nothing about the
run that ``model.history_`` and the progress bar do not; dropped unless :data:`SHOW_ROUTINE_INFO`."""

SHOW_ROUTINE_INFO = False
"""Show Lightning's routine INFO lines during training (``genohoption ... --verbose`` sets it)."""


class _DropAdvertisements(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not SHOW_ROUTINE_INFO and message.startswith(ROUTINE_INFO):
            return False
        return not any(word in message for word in ADVERTISEMENTS)


@contextlib.contextmanager
def quiet_training() -> Iterator[None]:
    """Within the block, hide third-party noise that says nothing about the user's run.

    Every :meth:`GenoHoptionModel.train` and ``pretrain`` runs inside it; wrap the training of another
    Lightning-based model with it (e.g. scvi-tools' ``SCANVI.train`` beside GenoHoption in a notebook) to
    hide the same lines there: ``with gh.model.quiet_training(): scanvi.train()``.

    Lightning's internal deprecations (:data:`HIDDEN_WARNINGS`) are filtered by message, category and module,
    and its advertisement log line (:data:`ADVERTISEMENTS`) and routine hardware / end-of-fit lines
    (:data:`ROUTINE_INFO`, unless :data:`SHOW_ROUTINE_INFO`) are dropped from the logger that emits them; every
    other warning and log line (seed, progress bar) is unchanged, and both filters are removed when the block
    ends.
    """
    from lightning_utilities.core import rank_zero

    emitter = rank_zero.log  # the logger of Lightning's rank_zero_info
    drop = _DropAdvertisements()
    emitter.addFilter(drop)
    try:
        with warnings.catch_warnings():
            for message, category, module in HIDDEN_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category, module=module)
            yield
    finally:
        emitter.removeFilter(drop)


def check_training_args(max_epochs: Any, batch_size: Any, train_size: Any, validation_size: Any,
                        ckpt_path: Any) -> None:
    """Raise for arguments of ``train`` / ``pretrain`` that cannot work, before anything is set up.

    Raises
    ------
    ValueError
        For non-positive ``max_epochs`` / ``batch_size``, a ``train_size`` outside ``(0, 1]`` or a
        ``validation_size`` outside ``[0, 1 - train_size]``.
    FileNotFoundError
        If ``ckpt_path`` is not a file (nor one of Lightning's shortcuts).
    """
    for name, value in (("max_epochs", max_epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if isinstance(train_size, bool) or not isinstance(train_size, int | float) or not 0 < train_size <= 1:
        raise ValueError(f"train_size must be in (0, 1], got {train_size!r}.")
    if validation_size is not None and (isinstance(validation_size, bool) or not isinstance(
            validation_size, int | float) or not 0 <= validation_size < 1 or train_size + validation_size > 1):
        raise ValueError(f"validation_size must be in [0, 1 - train_size], got {validation_size!r}.")
    if ckpt_path is not None and not (ckpt_path in CKPT_SHORTCUTS or os.path.isfile(ckpt_path)):
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path!r} is not a file; pass the checkpoint written by "
            "genohoption.model.TrainingCheckpoint (its .path, e.g. 'ckpt_dir/last.ckpt')."
        )


def fit(
    host,
    task: Task,
    *,
    max_epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    train_size: float,
    validation_size: float | None,
    early_stopping: bool,
    early_stopping_patience: int,
    restore_best_weights: bool,
    accelerator: str,
    devices,
    datasplitter_kwargs: dict | None,
    plan_kwargs: dict | None,
    trainer_kwargs: dict,
) -> None:
    """Train ``host.module`` on ``host.adata_manager``'s data with the task's plan and data splitter.

    ``host`` is what scvi-tools' :class:`~scvi.train.TrainRunner` reads and writes: the model itself
    (``train``) or a :class:`~genohoption.model._pretraining.TrainingRun` (``pretrain``). After the run
    ``host.history_``, ``host.is_trained_`` and the split indices are set by scvi-tools, and the module is
    in evaluation mode. See :meth:`GenoHoptionModel.train` for the arguments.

    Third-party noise is hidden during the run (:func:`quiet_training`). Callbacks added unless the caller
    gave one of the kind: :class:`~genohoption.model.PreciseBatchNorm`,
    :class:`~genohoption.model.RestoreBestWeights` (with validation cells and ``restore_best_weights``)
    and :class:`~genohoption.model.EpochSeed` (seeded by ``scvi.settings.seed``).

    Raises
    ------
    ValueError, FileNotFoundError
        See :func:`check_training_args`.

    Warns
    -----
    UserWarning
        When the cells are too few to hold any out for validation: training then runs on all of them.
    """
    trainer_kwargs = dict(trainer_kwargs)
    check_training_args(max_epochs, batch_size, train_size, validation_size, trainer_kwargs.get("ckpt_path"))
    has_validation = train_size < 1 or (validation_size or 0) > 0
    n_cells = host.adata_manager.adata.n_obs
    n_train = math.ceil(train_size * n_cells)
    n_val = n_cells - n_train if validation_size is None else math.floor(n_cells * validation_size)
    if has_validation and n_val == 0:
        warnings.warn(
            f"{n_cells} cells leave no validation cell with train_size={train_size}: training on all of them for "
            f"max_epochs={max_epochs} epochs, without early stopping or best-epoch weights; pass train_size=1.0 "
            "to ask for this, or give more cells.",
            UserWarning,
            stacklevel=3,
        )
        has_validation, train_size, validation_size = False, 1.0, None
    plan = task.training_plan(host.module, host.adata_manager,
                              **{"lr": lr, "weight_decay": weight_decay, **(plan_kwargs or {})})
    strategy = trainer_kwargs.get("strategy")
    splitter = task.data_splitter_cls(
        host.adata_manager, train_size=train_size, validation_size=validation_size, batch_size=batch_size,
        **distributed_splitter_kwargs(strategy, datasplitter_kwargs),  # a shard per process under DDP
    )
    pin_split(splitter, strategy)  # DDP: one train / validation split for every process
    callbacks = list(trainer_kwargs.pop("callbacks", None) or [])
    if not any(isinstance(c, PreciseBatchNorm) for c in callbacks):
        callbacks.append(PreciseBatchNorm())  # a no-op for modules without BatchNorm
    if has_validation and restore_best_weights and not any(isinstance(c, RestoreBestWeights) for c in callbacks):
        callbacks.append(RestoreBestWeights("validation_loss", "min"))
    if not any(isinstance(c, EpochSeed) for c in callbacks):  # each epoch's draws depend on (seed, epoch) only
        callbacks.append(EpochSeed(scvi_settings.seed or 0))
    trainer_kwargs.setdefault("early_stopping_monitor", "validation_loss")
    trainer_kwargs.setdefault("early_stopping_patience", early_stopping_patience)
    if has_validation:
        trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
    trainer_kwargs.setdefault("log_every_n_steps", 1)  # metrics are logged per epoch; no warning for few batches
    host.module.train()  # a loaded model is in evaluation mode
    with quiet_training():
        TrainRunner(
            host,
            training_plan=plan,
            data_splitter=splitter,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            early_stopping=early_stopping and has_validation,
            callbacks=callbacks,
            **trainer_kwargs,
        )()
