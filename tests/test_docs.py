"""The documentation is executable and complete.

* Every ```` ```python ```` block of ``docs/tutorial.md`` and ``README.md`` runs, in document
  order, in one namespace per file, in a temporary directory; ```` ```console ```` blocks in
  between run their ``$ stnref ...`` lines as ``python -m stnref ...`` (output lines in the
  block are illustrative and not compared).
* Every public name has a docstring (numpydoc ``Parameters`` / ``Returns`` for the functions
  of ``stnref.__all__``) and a line in ``docs/api.md``.
* Every module's doctests pass.
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import inspect
import io
import os
import pkgutil
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import stnref

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
PROMPT = "$ "
CLI_TIMEOUT_S = 120      # one tiny training run; generous for a loaded 2-core machine


def fenced_blocks(path):
    """``(language, code)`` of every fenced block of ``path``, in order."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(path.read_text(encoding="utf-8"))]


def run_console(block, cwd):
    """Run the ``$ stnref ...`` lines of a console block with this interpreter."""
    for line in block.splitlines():
        if not line.startswith(PROMPT):
            continue
        argv = shlex.split(line[len(PROMPT):])
        assert argv[0] == "stnref", f"console blocks may only run stnref, got {line!r}"
        done = subprocess.run([sys.executable, "-m", "stnref", *argv[1:]], cwd=cwd,
                              capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
                              env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
        assert done.returncode == 0, f"{line!r} failed:\n{done.stdout}\n{done.stderr}"


def run_document(path, tmp_path, monkeypatch):
    """Execute ``path``'s python and console blocks in order; return the namespace."""
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_{path.stem}"}
    ran = 0
    for language, code in fenced_blocks(path):
        if language == "python":
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(code, f"{path.name} block {ran}", "exec"), namespace)
            ran += 1
        elif language == "console":
            run_console(code, tmp_path)
            ran += 1
    assert ran, f"{path} has no executable blocks"
    return namespace


def test_tutorial_runs(tmp_path, monkeypatch):
    ns = run_document(DOCS / "tutorial.md", tmp_path, monkeypatch)
    # The claims the text makes about its own output.
    assert tuple(map(int, ns["where"])) == (4, 17)   # +30 degrees in theta: the dot turns CCW
    assert ns["result"].ok and ns["st_result"].ok
    assert ns["layer"].last_theta.shape == (8, 2, 3)
    assert len(ns["metrics"]["epochs"]) == 1


def test_readme_runs(tmp_path, monkeypatch):
    run_document(ROOT / "README.md", tmp_path, monkeypatch)


def test_readme_starts_with_the_setup_block():
    blocks = fenced_blocks(ROOT / "README.md")
    assert blocks[0] == ("", "pip install . && stnref demo\n"
                             'pip install ".[test]" && python -m pytest -q\n')
