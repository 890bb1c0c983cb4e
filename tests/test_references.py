"""The repository is self-contained: every file, section and test it cites exists.

* No file refers to a path outside the repository.
* Every ``docs/...`` or ``tests/...`` path named in code, tests or docs exists.
* Every citation of the spec -- "docs/conventions.md §4.1", "conventions §3-6", including the
  ``pins`` that ``stnref reference check`` prints -- names a numbered section of
  ``docs/conventions.md``.
* Every test the spec names as pinning a rule exists.

Each checker is also run on planted mistakes, so a broken reference cannot pass unnoticed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "docs" / "conventions.md"
# Every text file of the project but this one (whose planted mistakes are deliberate).
SOURCES = sorted(p for top in ("stnref", "tests", "docs") for p in (ROOT / top).rglob("*")
                 if p.suffix in (".py", ".md") and p != Path(__file__)) + \
    [ROOT / "README.md", ROOT / "pyproject.toml", ROOT / ".ci" / "run"]

# Paths that exist only on a developer's machine (assembled so this file does not match itself).
OUTSIDE = re.compile("|".join([r"CONVENTIONS" + r"\.md", r"\.\./" + "shared", "/" + "work/",
                               "/" + "home/", "/" + "root/"]))
CITED_PATH = re.compile(r"(?<![\w/.-])((?:docs|tests|stnref)/[\w/.-]+\.(?:md|py|png))")
# "conventions §4.1", "conventions.md §3-6", "(conventions.md#..)" is a link (test_docs checks it);
# a run of sections "§3.2, §4.1, §4.3" or a range "§3.2–3.5" after one citation counts in full.
CITATION = re.compile(r"conventions(?:\.md)?`?\)?\s*((?:§\s*[\d.]+(?:\s*[-–]\s*[\d.]+)?(?:,\s*)?)+)")
SECTION = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", re.MULTILINE)
CITED_TEST = re.compile(r"`(?:tests/[\w/]+\.py::)?(test_\w+)`")


def read(path):
    return path.read_text(encoding="utf-8")


def spec_sections():
    return set(SECTION.findall(read(SPEC)))


def outside_references(text):
    return [m.group(0) for m in OUTSIDE.finditer(text)]


def missing_paths(text):
    return sorted({p for p in CITED_PATH.findall(text) if not (ROOT / p.rstrip(".")).exists()})


def missing_sections(text, sections):
    """Section numbers cited from the spec that it does not have."""
    missing = []
    for run in CITATION.findall(text):
        for number in re.findall(r"\d+(?:\.\d+)?", run):
            if number not in sections:
                missing.append(number)
    return missing


def defined_tests():
    return {name for p in (ROOT / "tests").glob("test_*.py")
            for name in re.findall(r"^def (test_\w+)", read(p), re.MULTILINE)}


def label(path):
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", SOURCES, ids=label)
def test_no_reference_outside_the_repository(path):
    assert not outside_references(read(path)), f"{label(path)}: {outside_references(read(path))}"


@pytest.mark.parametrize("path", SOURCES, ids=label)
def test_cited_files_exist(path):
    assert not missing_paths(read(path)), f"{label(path)} cites missing {missing_paths(read(path))}"


@pytest.mark.parametrize("path", SOURCES, ids=label)
def test_cited_sections_of_the_spec_exist(path):
    missing = missing_sections(read(path), spec_sections())
    assert not missing, f"{label(path)} cites conventions §{missing}, which do not exist"


def test_spec_is_numbered():
    sections = spec_sections()
    assert {str(n) for n in range(1, 10)} <= sections
    assert {"3.1", "4.1", "5.2", "6.3"} <= sections


def test_reference_check_pins_cite_the_spec():
    """What `stnref reference check` prints for a failing edge case resolves to a section."""
    from stnref.reference.golden import RULES
    sections = spec_sections()
    for family, rule in RULES.items():
        if rule is None:
            continue
        assert CITATION.search(rule), f"{family}: the rule cites no section of the spec"
        assert not missing_sections(rule, sections), family


def test_tests_named_by_the_spec_exist():
    named = set(CITED_TEST.findall(read(SPEC)))
    assert named, "the spec names no tests"
    assert not named - defined_tests(), f"docs/conventions.md names missing tests {named - defined_tests()}"


# ----------------------------------------------------------------------------- planted mistakes

def test_checkers_catch_planted_mistakes():
    sections = spec_sections()
    assert missing_sections("see conventions §4.9 and §4.1", sections) == ["4.9"]
    assert missing_sections("(docs/conventions.md §3.2, §11)", sections) == ["11"]
    assert missing_sections("[conventions §3–12](conventions.md)", sections) == ["12"]
    assert missing_sections("docs/conventions.md §3.1 and paper §3.3", sections) == []
    assert missing_paths("see docs/derivations/nowhere.md.") == ["docs/derivations/nowhere.md"]
    assert missing_paths("see docs/derivations/sampling.md") == []
    assert outside_references("background in " + "/" + "work/shared/x.md") != []
    assert not CITED_TEST.findall("`test_this_does_not_exist`")[0] in defined_tests()
