"""The landing page's quick start runs as written and prints the figures the page quotes (slow: it trains)."""

from __future__ import annotations

import ast
import contextlib
import io
import re
from pathlib import Path

import pytest

INDEX = Path(__file__).resolve().parents[2] / "docs" / "index.md"


def quick_start() -> str:
    """The first ``python`` code block of the landing page."""
    match = re.search(r"```python\n(.*?)```", INDEX.read_text(), re.S)
    assert match, "docs/index.md has no python block"
    return match.group(1)


def expected_output() -> str:
    """The ``text`` block the page shows as the quick start's output."""
    text = INDEX.read_text().split("```python", 1)[1]
    return re.search(r"```text\n(.*?)```", text, re.S).group(1)


def test_quick_start_is_valid_python_within_88_columns():
    source = quick_start()
    ast.parse(source)
    assert max(len(line) for line in source.splitlines()) <= 88
    assert len(expected_output().splitlines()) == 2


@pytest.mark.slow
def test_quick_start_runs_and_gives_the_quoted_figures(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(quick_start(), "docs/index.md", "exec"), {"__name__": "__quickstart__"})
    printed = [line for line in out.getvalue().splitlines() if line.endswith(tuple("0123456789"))]
    assert printed == expected_output().splitlines()
