"""The tutorials are stored executed (docs/conf.py: ``nb_execution_mode = "off"``), and a slow test runs them again.

Fast checks on the stored JSON, nothing is executed: every code cell ran, in order, without error; no output
leaks a local path, progress-bar noise, warnings or Lightning's INFO lines; no cell sets up the machine (threads,
loggers, warning filters); code lines fit 88 columns; every figure the text quotes (a number with 2-3 decimals)
is printed by a cell of the notebook; no cell uses a name the package removed.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[2] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))

LOCAL_PATH = re.compile(r"/work/|/tmp/|/root/|/home/|site-packages")
PROGRESS = re.compile(r"it/s\]|s/it\]|Epoch \d+/\d+|%\|")
LIGHTNING_INFO = re.compile(r"GPU available:|TPU available:|💡 Tip|litlogger")
BLANKET_FILTER = re.compile(r"""warnings\.(?:filterwarnings|simplefilter)\(\s*["']ignore["']\s*\)""")
REMOVED_NAMES = ("prior_network", "accuracy_validation", "accuracy_train", "data.parse_condition")
MACHINE_SETUP = re.compile(r"set_num_threads|NUMBA_NUM_THREADS|warnings\.(?:filterwarnings|simplefilter)|"
                           r"logging\.getLogger\(.*\)\.setLevel|\.\./shared/data|GENOHOPTION_SHARED_DATA")
WARNING_TEXT = re.compile(r"\w+Warning:")
FIGURE = re.compile(r"(?<![\w.])-?\d+\.\d{2,3}(?!\d)")
MAX_LINE = 88


def unprinted_figures(nb: dict) -> list[str]:
    """Numbers with 2-3 decimals in the markdown cells that no code cell shows: neither an output (a result, as
    printed) nor the code (a setting such as ``alpha=0.25``)."""
    code = [cell for cell in nb["cells"] if cell["cell_type"] == "code"]
    printed = "\n".join([text for cell in code for output in cell.get("outputs", [])
                          for _, text in _output_texts(output)] + [_text(cell.get("source", "")) for cell in code])
    quoted = {m.group(0) for cell in nb["cells"] if cell["cell_type"] == "markdown"
              for m in FIGURE.finditer(_text(cell.get("source", "")))}
    return sorted(q for q in quoted if q not in printed and q.lstrip("-") not in printed)


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _output_texts(output: dict) -> list[tuple[str, str]]:
    """(kind, text) of each text an output shows: stream, text/* data, error name, value and traceback."""
    kind = output["output_type"]
    if kind == "stream":
        return [(f"stream:{output.get('name')}", _text(output.get("text", "")))]
    if kind in ("execute_result", "display_data"):
        return [(mime, _text(v)) for mime, v in output.get("data", {}).items() if mime.startswith("text/")]
    if kind == "error":
        parts = [output.get("ename", ""), output.get("evalue", ""), *output.get("traceback", [])]
        return [("error", "\n".join(parts))]
    return []


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def check_notebook(path: Path) -> list[str]:
    """Problems found in one stored notebook (empty when it is clean)."""
    nb = _load(path)
    problems = []
    code_cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    if not code_cells:
        problems.append("no code cell")
    counts = [c.get("execution_count") for c in code_cells]
    if None in counts:
        missing = [i for i, n in enumerate(counts) if n is None]
        problems.append(f"code cells not executed (execution_count None at code cells {missing})")
    elif counts != list(range(1, len(counts) + 1)):
        problems.append(f"code cells not executed top to bottom in one kernel: execution counts {counts}")
    for i, cell in enumerate(nb["cells"]):
        source = _text(cell.get("source", ""))
        for name in REMOVED_NAMES:
            if name in source:
                problems.append(f"cell {i} uses the removed name {name!r}")
        if cell["cell_type"] == "code" and BLANKET_FILTER.search(source):
            problems.append(f"cell {i} ignores every warning: filter the one warning (message=...), say why")
        if cell["cell_type"] == "code" and (m := MACHINE_SETUP.search(source)):
            problems.append(f"cell {i} sets up the machine or reads local data ({m.group(0)!r}): the package "
                            "must be quiet and the data come from gh.datasets")
        if cell["cell_type"] == "code":
            long = [n for n, line in enumerate(source.splitlines()) if len(line) > MAX_LINE]
            if long:
                problems.append(f"cell {i} has lines over {MAX_LINE} characters (lines {long})")
        for output in cell.get("outputs", []):
            if output["output_type"] == "error":
                problems.append(f"cell {i} has an error output: {output.get('ename')}: "
                                f"{output.get('evalue')}")
            for kind, text in _output_texts(output):
                if m := LOCAL_PATH.search(text):
                    around = text[max(m.start() - 40, 0):m.end() + 40]
                    problems.append(f"cell {i} {kind} shows a local path: ...{around!r}...")
                if "\r" in text:
                    problems.append(f"cell {i} {kind} holds a carriage return (progress bar)")
                if m := PROGRESS.search(text):
                    problems.append(f"cell {i} {kind} holds progress-bar text: {m.group(0)!r}")
                if kind.startswith("stream") and (m := WARNING_TEXT.search(text)):
                    problems.append(f"cell {i} {kind} shows a warning: {m.group(0)!r}")
                if m := LIGHTNING_INFO.search(text):
                    problems.append(f"cell {i} {kind} holds Lightning INFO output ({m.group(0)!r}): "
                                    "raise the 'lightning.pytorch' logger to WARNING")
    if missing := unprinted_figures(nb):
        problems.append(f"the text quotes figures no cell prints: {missing}")
    return problems


def test_tutorials_exist():
    assert {p.name for p in NOTEBOOKS} >= {"annotation.ipynb", "perturbation.ipynb", "pretrained.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_stored_notebook_is_clean(path):
    problems = check_notebook(path)
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


def test_checker_catches_dirty_notebooks(tmp_path):
    """The checks fire on each kind of problem (a clean notebook with one defect added at a time)."""
    def notebook(source="x = 1", outputs=(), count=1):
        cell = {"cell_type": "code", "execution_count": count, "metadata": {}, "source": source,
                "outputs": list(outputs)}
        return {"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}

    def stream(text):
        return {"output_type": "stream", "name": "stderr", "text": text}

    cases = {
        "clean": notebook(),
        "path": notebook(outputs=[stream("/work/main/.venv/lib/python3.11/site-packages/x.py:1: W\n")]),
        "html path": notebook(outputs=[{"output_type": "display_data", "metadata": {},
                                        "data": {"text/html": "<p>saved to /tmp/abc</p>"}}]),
        "carriage return": notebook(outputs=[stream("\rTraining")]),
        "tqdm": notebook(outputs=[stream("Epoch 3/10:  30%|███ | 3/10 [00:06<00:14,  2.0s/it]\n")]),
        "error": notebook(outputs=[{"output_type": "error", "ename": "ValueError", "evalue": "x",
                                    "traceback": []}]),
        "not executed": notebook(count=None),
        "removed name": notebook(source='gh.pl.training_history(model, ("accuracy_train",))'),
        "lightning info": notebook(outputs=[stream("GPU available: False, used: False\n")]),
        "blanket filter": notebook(source='import warnings\nwarnings.filterwarnings("ignore")'),
        "out of order": notebook(count=2),
        "threads": notebook(source="torch.set_num_threads(1)"),
        "long line": notebook(source="x = " + "1" * 90),
        "warning": notebook(outputs=[stream("x.py:3: UserWarning: careful\n")]),
        "figure not printed": {**notebook(outputs=[stream("accuracy 0.812\n")]),
                               "cells": [*notebook(outputs=[stream("accuracy 0.812\n")])["cells"],
                                         {"cell_type": "markdown", "metadata": {}, "source": "reaches 0.862"}]},
    }
    for name, nb in cases.items():
        path = tmp_path / f"{name}.ipynb"
        path.write_text(json.dumps(nb))
        assert bool(check_notebook(path)) == (name != "clean"), name


# ------------------------------------------------------------------ executed (slow)
EXECUTED = sorted(TUTORIALS.glob("*.ipynb"))
# stored unexecuted until it has been run on a quiet machine (then: executed, in tutorials/ and its index)
UNEXECUTED = sorted((TUTORIALS / "unexecuted").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", EXECUTED + UNEXECUTED, ids=[p.stem for p in EXECUTED + UNEXECUTED])
def test_tutorial_executes_and_prints_what_its_text_quotes(path, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    nb = nbformat.read(copy, as_version=4)
    nbclient.NotebookClient(nb, timeout=2400, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    if path in EXECUTED:
        assert not unprinted_figures(nb), "the text quotes figures this run did not print"
