"""What the one-run-per-process benchmarks share: the command line, the runs in their own processes, the JSON.

Each run is a fresh process with ``--threads`` torch threads; it records the thread count and
``os.getloadavg()`` at its start and writes ``benchmarks/results/<name>.json``; ``--assemble`` prints the tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
log = logging.getLogger("benchmark")


def main(script: str, description: str, flag: str, values: list, run: Callable[..., dict], result_name: Callable,
         assemble: Callable[[], str], epochs: int, flag_type=int) -> None:
    """Parse ``--<flag> V | --all | --assemble`` (with ``--epochs``, ``--threads``) and do it."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(f"--{flag}", type=flag_type, default=None, help=f"one run, one of {values}")
    parser.add_argument("--all", action="store_true", help="every run in its own process, then the tables")
    parser.add_argument("--assemble", action="store_true", help="the tables from benchmarks/results")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    args = parser.parse_args()
    if args.all:
        for value in values:
            subprocess.run([sys.executable, script, f"--{flag}", str(value), "--threads", str(args.threads),
                            "--epochs", str(args.epochs)], check=True)
    if args.all or args.assemble:
        print(assemble())
        return
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)  # Lightning's few-batches / num_workers hints
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi", "genohoption"):
        logging.getLogger(name).setLevel(logging.ERROR)
    value = getattr(args, flag)
    load = os.getloadavg()
    log.info("%s %s: threads %d, load %s", flag, value, torch.get_num_threads(), load)
    start = time.time()
    out = run(value, args.epochs)
    out |= {"threads": torch.get_num_threads(), "load": [round(x, 1) for x in load], "seconds": time.time() - start,
            "epochs": args.epochs}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{result_name(value)}.json"
    path.write_text(json.dumps(out, default=float))
    log.info("wrote %s (%.0f s)", path, out["seconds"])
