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

import ast
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
import textwrap
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


class PrintRecorder:
    """A ``print`` for executed blocks that keeps what each line of the block printed."""

    def __init__(self):
        self.lines = {}                       # (block, line number) -> [printed text, ...]
        self.block = 0

    def __call__(self, *args, sep=" ", end="\n", file=None, flush=False):
        if file is not None:
            return print(*args, sep=sep, end=end, file=file, flush=flush)
        line = sys._getframe(1).f_lineno
        self.lines.setdefault((self.block, line), []).append(sep.join(str(a) for a in args))
        return None


def run_document(path, tmp_path, monkeypatch, recorder=None):
    """Execute ``path``'s python and console blocks in order; return the namespace."""
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_{path.stem}"}
    if recorder is not None:
        namespace["print"] = recorder
    ran = 0
    for language, code in fenced_blocks(path):
        if language == "python":
            if recorder is not None:
                recorder.block = ran
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(code, f"{path.name} block {ran}", "exec"), namespace)
            ran += 1
        elif language == "console":
            run_console(code, tmp_path)
            ran += 1
    assert ran, f"{path} has no executable blocks"
    return namespace


STATED = re.compile(r"^[-([{~0-9'\"]|^(True|False|ok)\b")   # a comment that states the output


def stated_outputs(path):
    """``((block, line), expected, approximate)`` for every print whose comment states its output:
    a comment after ``print(...)`` (up to a ``": "`` that starts an explanation), or the comment
    lines right below a ``print`` line that has none; ``~1e-16`` is an order of magnitude."""
    stated, ran = [], 0
    for language, code in fenced_blocks(path):
        if language == "console":
            ran += 1
        if language != "python":
            continue
        lines = code.splitlines()
        for number, text in enumerate(lines, start=1):
            if "print(" not in text:
                continue
            code_part, _, comment = text.partition("  #")
            comment = comment.strip()
            if comment and STATED.match(comment):
                expected = comment if comment.startswith(("[", "(", "{")) and ": " not in comment \
                    else comment.split(": ")[0]
                stated.append(((ran, number), expected, expected.startswith("~")))
            elif not comment and code_part.rstrip().endswith(")"):
                below = []
                for following in lines[number:]:
                    if not following.lstrip().startswith("# "):
                        break
                    below.append(following.lstrip()[2:])
                stated += [((ran, number), e, False) for e in below]
        ran += 1
    return stated


def check_stated_outputs(path, recorder):
    wrong = []
    for where, expected, approximate in stated_outputs(path):
        printed = recorder.lines.get(where, [])
        if approximate:
            bound = 10 * float(expected[1:])
            values = [float(v) for text in printed for v in text.split()]
            if not values or max(values) > bound:
                wrong.append(f"{path.name} block {where[0]} line {where[1]}: printed {printed}, stated {expected}")
        elif not any(expected in text for text in printed):
            wrong.append(f"{path.name} block {where[0]} line {where[1]}: printed {printed}, stated {expected!r}")
    assert not wrong, "\n".join(wrong)


def test_tutorial_runs(tmp_path, monkeypatch):
    recorder = PrintRecorder()
    ns = run_document(DOCS / "tutorial.md", tmp_path, monkeypatch, recorder)
    check_stated_outputs(DOCS / "tutorial.md", recorder)
    assert len(stated_outputs(DOCS / "tutorial.md")) >= 15   # the checker finds what the page states
    # The claims the text makes about its own output.
    assert tuple(map(int, ns["where"])) == (4, 17)   # +30 degrees in theta: the dot turns CCW
    assert np.abs(ns["V_paper"] - ns["V_fast"]).max() < 1e-12          # eq. (3) as printed
    assert np.abs(ns["dgrid_paper"] - ns["dgrid_fast"]).max() < 1e-12  # eqs. (6), (7)
    assert ns["result"].ok and ns["st_result"].ok
    assert ns["layer"].last_theta.shape == (8, 2, 3)
    assert len(ns["metrics"]["epochs"]) == 1
    reflected = np.round(ns["V"][0, 0, 4], 2)        # the last padding mode printed
    np.testing.assert_array_equal(reflected[:5], [0.43, 0.29, 0.14, 0.0, 0.0])


def test_prototyping_page_runs(tmp_path, monkeypatch):
    ns = run_document(DOCS / "prototyping.md", tmp_path, monkeypatch)
    # The claims the text makes about its own output.
    assert ns["model"].num_parameters() == 19600
    assert ns["check"].ok and len(ns["check"].args) == 13
    assert ns["result"]["warnings"][0].startswith("warning: spatial transformer 0.0 sampled 100% "
                                                  "of its points outside the input")
    assert ns["drifted"].last_outside == 1.0
    assert ns["st"].transform.name == "similarity"


def test_readme_runs(tmp_path, monkeypatch):
    run_document(ROOT / "README.md", tmp_path, monkeypatch)


def test_readme_starts_with_the_setup_block():
    blocks = fenced_blocks(ROOT / "README.md")
    assert blocks[0] == ("", 'pip install ".[plot]" && stnref demo\n'
                             'pip install ".[test]" && python -m pytest -q\n')


# ---------------------------------------------------------------------------- API coverage

# Modules whose public names docs/api.md lists: ``__all__`` where defined, otherwise every
# non-underscore function and class defined in the module itself.
API_MODULES = (
    "stnref", "stnref.equations", "stnref.grids", "stnref.sampling", "stnref.sampler_settings",
    "stnref.registry", "stnref.second_order",
    "stnref.localisation", "stnref.transformer", "stnref.networks", "stnref.nn", "stnref.training",
    "stnref.nn.losses", "stnref.nn.optim", "stnref.data", "stnref.app.train",
    "stnref.checkpoint", "stnref.app.experiment", "stnref.app.table1", "stnref.app.demo", "stnref.app.cli",
    "stnref.gradcheck", "stnref.reference", "stnref.reference.diagnosis", "stnref.app.bench",
    "stnref.app.plotting",
)
NUMPYDOC_SECTION = re.compile(r"^\s*(\w+)\n\s*-{3,}\s*$", re.MULTILINE)


def public_names(module):
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [name for name, obj in vars(module).items()
            if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
            and obj.__module__ == module.__name__]


def api_entries():
    entries = []
    for modname in API_MODULES:
        module = importlib.import_module(modname)
        entries += [(modname, name, getattr(module, name)) for name in public_names(module)]
    return entries


ENTRIES = api_entries()
MODULES = {modname: importlib.import_module(modname) for modname in API_MODULES}


def qualified_aliases(obj, name):
    """Every ``module.name`` of API_MODULES under which ``obj`` is reachable."""
    return {f"{m}.{name}" for m, mod in MODULES.items() if getattr(mod, name, None) is obj}


@pytest.mark.parametrize("modname, name, obj", ENTRIES, ids=[f"{m}.{n}" for m, n, _ in ENTRIES])
def test_public_name_is_in_api_md(modname, name, obj):
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    aliases = qualified_aliases(obj, name) | {f"{modname}.{name}"}
    assert any(f"`{alias}" in text for alias in aliases), \
        f"docs/api.md lists none of {sorted(aliases)}"


def sections(doc):
    return set(NUMPYDOC_SECTION.findall(doc))


CALLABLE_ENTRIES = [(m, n, o) for m, n, o in ENTRIES if inspect.isfunction(o) or inspect.isclass(o)]


@pytest.mark.parametrize(
    "modname, name, obj",
    CALLABLE_ENTRIES,
    ids=[f"{m}.{n}" for m, n, _ in CALLABLE_ENTRIES])
def test_public_callable_has_a_docstring(modname, name, obj):
    doc = obj.__doc__
    assert doc and doc.strip(), f"{modname}.{name} has no docstring"
    summary = doc.strip().splitlines()[0]
    assert summary.strip(), f"{modname}.{name}: the docstring must start with a summary line"


TOP_LEVEL = [(n, getattr(stnref, n)) for n in stnref.__all__
             if inspect.isfunction(getattr(stnref, n)) or inspect.isclass(getattr(stnref, n))]


@pytest.mark.parametrize("name, obj", TOP_LEVEL, ids=[n for n, _ in TOP_LEVEL])
def test_top_level_docstring_has_numpydoc_sections(name, obj):
    found = sections(inspect.getdoc(obj) or "")
    if inspect.isclass(obj):
        assert found & {"Parameters", "Attributes"}, f"stnref.{name}: no Parameters/Attributes"
        return
    if inspect.signature(obj).parameters:
        assert "Parameters" in found, f"stnref.{name}: no numpydoc Parameters section"
    if returns_a_value(obj):
        assert found & {"Returns", "Yields"}, f"stnref.{name}: no numpydoc Returns section"


def returns_a_value(fn):
    """Whether ``fn``'s own body (not nested functions) has a ``return <value>`` or ``yield``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            return True
        if isinstance(node, ast.Return) and node.value is not None:
            return True
        todo.extend(ast.iter_child_nodes(node))
    return False


def test_api_md_names_only_existing_objects():
    """Every ```stnref.a.b(``` / ```stnref.a.b``` entry of api.md resolves to an object."""
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    for qualname in re.findall(r"^- `(stnref[\w.]*)", text, re.MULTILINE):
        parts = qualname.split(".")
        for cut in range(len(parts), 0, -1):
            modname = ".".join(parts[:cut])
            try:
                obj = importlib.import_module(modname)
            except ImportError:
                continue
            for attr in parts[cut:]:
                assert hasattr(obj, attr), f"docs/api.md: {qualname} does not exist"
                obj = getattr(obj, attr)
            break


# ---------------------------------------------------------------------------- doctests

DOCTEST_MODULES = sorted(
    m.name for m in pkgutil.walk_packages(stnref.__path__, "stnref.")
    if not m.name.endswith("__main__")
)
# Modules whose doctests need an optional package.
OPTIONAL = {"stnref.app.plotting": "matplotlib"}


@pytest.mark.parametrize("modname", ["stnref", *DOCTEST_MODULES])
def test_doctests(modname):
    if modname in OPTIONAL:
        pytest.importorskip(OPTIONAL[modname])
    module = importlib.import_module(modname)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             report=False)
    assert result.failed == 0, f"{modname}: {result.failed} of {result.attempted} doctests failed"


# ---------------------------------------------------------------------------- links

PAGES = sorted([*DOCS.rglob("*.md"), ROOT / "README.md"])
LINK = re.compile(r"\]\(([^)\s]+)\)")


def github_slug(heading):
    """The anchor GitHub gives a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path):
    text = path.read_text(encoding="utf-8")
    text = FENCE.sub("", text)
    found = {github_slug(h) for h in re.findall(r"^#+ (.*)$", text, re.MULTILINE)}
    return found | set(re.findall(r'<a id="([^"]+)"></a>', text))


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page):
    for target in LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+://", target):
            continue
        file_part, _, anchor = target.partition("#")
        path = (page.parent / file_part).resolve() if file_part else page
        assert path.exists(), f"{page.name}: broken link {target!r}"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{page.name}: no anchor {anchor!r} in {path.name}"


def test_every_figure_is_shown_and_generated():
    shown = set()
    for page in (DOCS / "pictures.md", ROOT / "README.md", *sorted((DOCS / "derivations").glob("*.md"))):
        shown |= set(re.findall(r"figures/(\w+\.png)", page.read_text(encoding="utf-8")))
    on_disk = {p.name for p in (DOCS / "figures").glob("*.png")}
    script = (DOCS / "make_figures.py").read_text(encoding="utf-8")
    assert on_disk <= shown, f"figures not shown in docs: {sorted(on_disk - shown)}"
    assert shown <= on_disk, f"docs show missing figures: {sorted(shown - on_disk)}"
    assert all(f'"{name}"' in script for name in on_disk), "a figure make_figures.py does not write"


def documented_parameters(signature):
    """Parameter names of a signature as written in api.md: ``(a, b=1, *, c=(1, 2))``."""
    depth, names, current = 0, [], ""
    for ch in signature[1:-1] + ",":
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            name = re.split(r"[=:]", current)[0].strip().lstrip("*")
            if name:
                names.append(name)
            current = ""
        else:
            current += ch
    return names


def test_api_md_signatures_are_current():
    """Each ``- `stnref.x(a, b=...)` `` line names the parameters the function has today."""
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    stale = []
    for qualname, signature in re.findall(r"^- `(stnref[\w.]*)(\(.*?\))(?: -> \w+)?`", text,
                                          re.MULTILINE):
        if signature == "(...)":
            continue
        modname, _, name = qualname.rpartition(".")
        try:
            obj = getattr(importlib.import_module(modname), name)
        except ImportError:
            obj = getattr(importlib.import_module(modname.rpartition(".")[0]),
                          modname.rpartition(".")[2])
            obj = getattr(obj, name)
        actual = list(inspect.signature(obj).parameters)
        if documented_parameters(signature) != actual:
            stale.append(f"{qualname}: api.md has {signature}, the code has {actual}")
    assert not stale, "docs/api.md is out of date:\n" + "\n".join(stale)


# ---------------------------------------------------------------------------- figures

VISIBLE = 0.2            # a difference one can see in an image with range [0, 1]


def test_figure_mistakes_are_real_mistakes(monkeypatch):
    """Each reproduced mistake in docs/figures/mistakes.png differs visibly from stnref."""
    pytest.importorskip("matplotlib")
    monkeypatch.syspath_prepend(str(DOCS))
    make_figures = importlib.import_module("make_figures")
    for title, U, wrong, right in make_figures._mistakes():
        assert wrong.shape == right.shape == U.shape
        assert np.abs(wrong - right).max() > VISIBLE, title.splitlines()[0]
    # The correct column of the two identity rows is the input itself.
    rows = make_figures._mistakes()
    for _, U, _, right in rows[:2]:
        assert np.abs(right - U).max() < 1e-12


def test_package_version_is_the_project_version_and_in_the_changelog():
    declared = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert declared and declared.group(1) == stnref.__version__
    assert f"## {stnref.__version__}" in (DOCS / "changelog.md").read_text(encoding="utf-8")
