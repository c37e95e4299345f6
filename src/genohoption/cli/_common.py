"""Pieces both commands use: the parser, option types, checks of paths, error translation, console output.

Nothing here imports torch, scvi-tools or Lightning at import time (``genohoption --help`` stays quick);
:func:`start_training` imports them when a job is about to train.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from .._constants import ENSEMBLE_FILE, WEIGHTS_FILE

PROG = "genohoption"

METRICS_FILE = "metrics.json"
"""The metrics and settings of a run, written by both commands into ``--out``."""


class UserError(Exception):
    """A mistake in the command line or the input files: reported in one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """Argument parser whose errors are one line on stderr (``prog: error: message``), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def int_at_least(minimum: int):
    """Argument type: an integer ``>= minimum``, with a one-line message otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def add_run_options(parser: argparse.ArgumentParser, *, threads_help: str, save_model: bool = True) -> None:
    """Add ``--threads``, ``--save-model`` and ``--verbose``, which both commands take."""
    parser.add_argument("--threads", type=int_at_least(1), default=None, metavar="N", help=threads_help)
    if save_model:
        parser.add_argument("--save-model", type=Path, default=None, metavar="DIR",
                            help="also save the trained model there (GenoHoptionModel.load reads it; an ensemble "
                            "of several models: GenoHoptionEnsemble.load)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the INFO messages of scvi-tools and Lightning (seed, accelerator), "
                        "hidden by default")


# ---------------------------------------------------------------------------- errors and warnings
OPTION_OF = {name: "--" + name.replace("_", "-") for name in (
    "labels_key", "layer", "gene_symbols", "prior", "attention", "perturbation_key", "control_value", "split",
    "seed", "train_gene_fraction", "batch_size", "max_epochs",
)}
"""Parameters of the package that a command-line option sets (the option carries the parameter's name)."""

# ``name=`` where it stands for the parameter, not inside a call written out (``setup_anndata(adata, layer=...)``)
_PARAMETER = re.compile(r"(?<![\w.(])(?<!, )(" + "|".join(OPTION_OF) + r")=(['\"\w\[]?)")


def _as_option(match: re.Match) -> str:
    option = OPTION_OF[match[1]]
    return f"{option} {match[2]}" if match[2] else option


def user_error(err: Exception, context: str | None = None) -> UserError:
    """Translate a typed error of the package, raised on the user's input, into a one-line :class:`UserError`.

    Parameters
    ----------
    err
        The ``KeyError``, ``ValueError``, ``TypeError`` or ``FileNotFoundError`` raised (its message names
        the fix).
    context
        What was being checked or done, put before the message (``"the reference"``); left out when the
        message already starts with it.

    Returns
    -------
    The error to raise: the message on one line, the package's parameters written as the options that set
    them (``labels_key='x'`` becomes ``--labels-key 'x'``, ``pass layer=`` becomes ``pass --layer``).
    """
    message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    message = _PARAMETER.sub(_as_option, " ".join(str(message).split()))
    if context and not message.startswith(context):
        message = f"{context}: {message}"
    return UserError(message)


def warn(command: str, message: str) -> None:
    """Print a warning of ``genohoption <command>`` on one line of stderr."""
    print(f"{PROG} {command}: warning: {' '.join(message.split())}", file=sys.stderr)


@contextlib.contextmanager
def warnings_as_lines(command: str, replace: tuple[str, str] | None = None) -> Iterator[None]:
    """Print the warnings raised inside the block as one-line warnings of the command (see :func:`warn`).

    ``replace`` (old, new) rewrites a phrase of the package's message that reads wrong for the command.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        message = str(warning.message)
        warn(command, message.replace(*replace) if replace else message)


# ---------------------------------------------------------------------------- checks of paths
def check_input_file(path: Path, option: str, what: str = "an .h5ad file") -> None:
    """``path`` must be a readable file."""
    if not path.exists():
        raise UserError(f"{option} {path}: no such file; give the path of {what}.")
    if not path.is_file():
        raise UserError(f"{option} {path} is not a file; give the path of {what}.")
    if not os.access(path, os.R_OK):
        raise UserError(f"{option} {path}: file is not readable (permissions).")


def check_writable_dir(path: Path, option: str, *, create: bool) -> None:
    """``path`` must be a directory or creatable as one; create it when ``create``."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file, not a directory; give a directory path (it is created if "
                        "missing).")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"{option} {path}: cannot create the directory ({err.strerror or err}); choose "
                            "another path.") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{option} {path}: directory is not writable; choose another path.")
        return
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: cannot create it under {parent} (not a writable directory); choose "
                        "another path.")


def check_prior_and_outputs(args: argparse.Namespace) -> None:
    """Check ``--prior``, ``--out`` and ``--save-model`` (both commands have them) before any work is done."""
    if args.prior.lower() not in ("default", "none") and not Path(args.prior).is_file():
        raise UserError(f"--prior {args.prior}: no such file; give a CSV / TSV / parquet network file, 'none' "
                        "(co-expression only) or leave it out (packaged network).")
    check_writable_dir(args.out, "--out", create=False)
    if args.save_model is not None:
        check_writable_dir(args.save_model, "--save-model", create=False)
        if (args.save_model / WEIGHTS_FILE).exists() or (args.save_model / ENSEMBLE_FILE).exists():
            raise UserError(f"--save-model {args.save_model} already holds a saved model; choose an empty "
                            "directory or delete that one.")


def prior_of(args: argparse.Namespace):
    """Return the ``prior=`` of :func:`genohoption.pp.build_gene_graph` that ``--prior`` names."""
    return {"default": "default", "none": None}.get(args.prior.lower(), args.prior)


def unreadable(path: Path, option: str, err: Exception) -> UserError:
    """Return the error for a file that cannot be read as .h5ad (``err``: what the reader raised)."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return UserError(f"{option} {path}: cannot read it as .h5ad ({type(err).__name__}: {first}); give an AnnData "
                     "file written by anndata / scanpy.")


def read_h5ad(path: Path, option: str):
    """Read an .h5ad file given as ``option``; a file that is not one is a :class:`UserError`."""
    import anndata as ad

    try:
        return ad.read_h5ad(path)
    except Exception as err:  # h5py and anndata raise many kinds for a file that is not .h5ad
        raise unreadable(path, option, err) from None


# ---------------------------------------------------------------------------- threads, logging, training
YIELDING_THREADS = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
"""OpenMP settings the command line sets (unless already set) before torch and numba load their thread pools."""


def yielding_thread_pools() -> None:
    """Let idle OpenMP worker threads sleep instead of spinning, so that jobs sharing cores do not slow each other.

    torch's and numba's OpenMP pools (GNU libgomp; ``KMP_BLOCKTIME`` is Intel OpenMP's equivalent) read these
    variables once, when they load: this runs before the commands import them, and does nothing when they are
    already imported (e.g. ``main`` called from Python) or the user set the variables.
    """
    if "torch" in sys.modules or "numba" in sys.modules:
        return
    for name, value in YIELDING_THREADS.items():
        os.environ.setdefault(name, value)


THIRD_PARTY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "scvi")
"""Loggers whose INFO messages (seed, accelerator) the commands show only with ``--verbose``.

Lightning sets the levels of ``lightning.pytorch`` and ``lightning.fabric`` when it is imported, so
:func:`start_training` sets them after importing it."""

_levels_before: dict[str, int] = {}


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is at each record (as :data:`logging.lastResort` does)."""

    def __init__(self):
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return sys.stderr


@contextlib.contextmanager
def console_output(verbose: bool) -> Iterator[None]:
    """Set up what a command prints, for the duration of the block, and restore it afterwards.

    genohoption's INFO messages go to stderr, once, as plain lines (a handler on the ``genohoption`` logger,
    which then does not propagate; the root logger is left alone, so Lightning and scvi-tools keep their own
    handlers and nothing is printed twice). Unless ``verbose``, :func:`start_training` turns
    :data:`THIRD_PARTY_LOGGERS` down to WARNING. (Lightning's advertisement and internal deprecations are
    hidden by the package's training itself.)
    """
    package = logging.getLogger("genohoption")
    level, propagate = package.level, package.propagate
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    package.propagate = False
    _levels_before.clear()
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(level)
        package.propagate = propagate
        for name, before in _levels_before.items():
            logging.getLogger(name).setLevel(before)
        _levels_before.clear()


def _quiet_third_parties() -> None:
    for name in THIRD_PARTY_LOGGERS:
        logger = logging.getLogger(name)
        _levels_before.setdefault(name, logger.level)
        logger.setLevel(logging.WARNING)


def start_training(args: argparse.Namespace) -> None:
    """Import the training stack and set it up: figures without a display, threads, quiet logs, seed.

    ``scvi.settings.seed`` seeds ``random``, numpy and torch (through Lightning).
    """
    import matplotlib

    matplotlib.use("Agg")
    import scvi
    import torch

    from ..model import _fit

    _fit.SHOW_ROUTINE_INFO = bool(args.verbose)
    if not args.verbose:
        _quiet_third_parties()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    scvi.settings.seed = args.seed
