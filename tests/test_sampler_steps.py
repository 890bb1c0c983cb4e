"""docs/examples/sampler_steps.py: every step from eq. (3) to grid_sample computes the same thing.

docs/sampler.md derives stnref's sampler from ``stnref.equations.sample`` one idea at a
time; each intermediate version lives in that example and must agree with the plain
equation (and so with ``stnref.grid_sample``), including points far outside and on
the zero ring's edge.  The wrong scatter it shows (fancy-index ``+=``) must be wrong.
"""

import re
from pathlib import Path

import numpy as np
import pytest
from examples import load_example

import stnref
from stnref import equations

TOL = 1e-12  # same sums in another order, float64, relative to the output's scale


@pytest.fixture(scope="module")
def steps():
    return load_example("sampler_steps")


def cases():
    rng = np.random.default_rng(0)
    for shape, out in (((2, 3, 5, 4), (3, 6)), ((1, 1, 1, 7), (2, 2)), ((3, 2, 6, 6), (4, 4))):
        U = rng.standard_normal(shape)
        grid = rng.uniform(-1.6, 1.6, (shape[0], *out, 2))
        grid[0, 0, 0] = (40.0, -1e6)                       # far outside: clamped into the ring
        grid[-1, -1, -1] = (1.0, -1.0)                     # the image's corner
        yield U, grid


def close(a, b):
    return np.abs(a - b).max() <= TOL * max(1.0, np.abs(b).max())


@pytest.mark.parametrize("index", range(6))
def test_every_forward_step_is_eq_3(steps, index):
    step = steps.FORWARD[index]
    for U, grid in cases():
        assert close(step(U, grid), equations.sample(U, grid)), step.__name__


def test_the_scatters_are_eq_6_and_fancy_indexing_is_not(steps):
    for U, grid in cases():
        dV = np.random.default_rng(1).standard_normal((U.shape[0], U.shape[1], *grid.shape[1:3]))
        dU = equations.sample_backward(dV, U, grid)[0]
        for scatter in steps.SCATTERS:
            assert close(scatter(dV, U, grid), dU), scatter.__name__
    U = np.ones((1, 1, 4, 4))
    grid = np.zeros((1, 3, 3, 2))                          # nine points on one spot
    dV = np.ones((1, 1, 3, 3))
    np.testing.assert_allclose(steps.scatter_sparse(dV, U, grid).sum(), 9.0)
    assert steps.scatter_fancy_index(dV, U, grid).sum() == pytest.approx(1.0)   # 8 of 9 lost


def test_eq_7_from_the_four_taps(steps):
    rng = np.random.default_rng(2)
    U = rng.standard_normal((2, 3, 5, 6))
    grid = rng.uniform(-1.6, 1.6, (2, 4, 4, 2))
    grid[0, 0, 0] = (40.0, -3.0)
    dV = rng.standard_normal((2, 3, 4, 4))
    expected = stnref.grid_sample_backward(dV, U, grid)[1]   # random points: never on an integer
    assert close(steps.dgrid_from_taps(dV, U, grid), expected)


def test_the_timing_table_runs(steps, monkeypatch, capsys):
    monkeypatch.setattr(steps, "SHAPES", (((2, 1, 6, 6), (5, 5)), ((1, 2, 40, 40), (40, 40))))
    monkeypatch.setattr(steps, "DENSE_MAX", 2 * 6 * 6 * 5 * 5)
    steps.main(["--rounds", "1"])
    table = capsys.readouterr().out.splitlines()
    assert table[1].startswith("| step |") and len(table) == 3 + 6 + 4 + 1
    assert "| step0_dense | " in table[3] and table[3].endswith("| - |")


def test_the_page_points_at_code_that_exists(steps):
    """docs/sampler.md names the private functions and tables of stnref/sampling.py that do
    each step; renaming one must update the page."""
    root = Path(__file__).resolve().parent.parent
    page = (root / "docs" / "sampler.md").read_text(encoding="utf-8")
    code = (root / "stnref" / "sampling.py").read_text(encoding="utf-8")
    named = set(re.findall(r"`(_[A-Za-z]\w*)", page))
    assert {"_planes", "_gather", "_contract", "_chunks", "_sample_backward"} <= named
    missing = [n for n in named if not re.search(rf"^(def |class )?{n}\b", code, re.MULTILINE)]
    assert not missing, f"docs/sampler.md names {missing}, not in stnref/sampling.py"
    # links name a symbol and its file, never a line number: they survive edits of the code
    assert not re.search(r"\.py#L\d+", page), "docs/sampler.md links into code by line number"
    links = re.findall(r"\[`(\w+)`\]\(\.\./(stnref/[\w/]+\.py)\)", page)
    assert len(links) >= 20
    stale = [(name, path) for name, path in links
             if not re.search(rf"^(def |class )?{name}\b",
                              (root / path).read_text(encoding="utf-8"), re.MULTILINE)]
    assert not stale, f"docs/sampler.md links to symbols its files do not define: {stale}"
    for name in re.findall(r"`(step\d_\w+|scatter_\w+|dgrid_from_taps)`", page):
        assert hasattr(steps, name), f"docs/sampler.md names {name}, not in sampler_steps.py"
