"""The numbers, quotations and citations the derivations and docs/sampler.md state, checked.

``tests/test_docs.py`` runs the tutorial and checks links; this file checks what the other
pages claim in prose: the worked bilinear example, the lines docs/sampler.md quotes, the
ratios it derives from its own table, that every derivation page uses the shared notation
and cites the kink rule, and that every Table 1 cell docs/results.md quotes is its record
(``results.json`` under ``docs/results/``, each cell's last epoch in its ``metrics.json``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import stnref
from stnref.app.experiment import PAPER_TABLE

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DERIVATIONS = sorted(p for p in (DOCS / "derivations").glob("*.md") if p.name != "notation.md")
KINK_RULE = "conventions.md#65-the-derivative-at-a-kink"


def page(path):
    return path.read_text(encoding="utf-8")


def python_blocks(path):
    return re.findall(r"^```python\n(.*?)^```", page(path), re.MULTILINE | re.DOTALL)


def test_the_worked_bilinear_cell():
    """derivations/sampling.md §4: the numbers of the one-cell example, by stnref itself."""
    U = np.array([[[[1.0, 3.0], [4.0, 8.0]]]])
    grid = np.array([[[[-0.25, 0.0]]]])
    V = stnref.grid_sample(U, grid)
    dU, dgrid = stnref.grid_sample_backward(np.full((1, 1, 1, 1), 2.0), U, grid)
    assert V[0, 0, 0, 0] == 3.25
    np.testing.assert_array_equal(dU[0, 0], [[0.75, 0.25], [0.75, 0.25]])
    np.testing.assert_array_equal(dgrid[0, 0, 0], [6.0, 7.0])
    text = page(DOCS / "derivations" / "sampling.md")
    for stated in ("`(i_x, i_y) = (0.25, 0.5)`", "= 3.25", "dU = dV · ω = [[0.75, 0.25], [0.75, 0.25]]",
                   "= 2 · 3   = 6", "= 2 · 3.5 = 7", "bilinear_cell.png"):
        assert stated in text, stated


def test_the_figure_of_the_worked_cell_is_drawn_from_the_same_numbers(monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.syspath_prepend(str(DOCS))
    import make_figures
    (ix, iy), V, dU, dgrid = make_figures.bilinear_cell()
    assert (ix, iy, V) == (0.25, 0.5, 3.25) and list(dgrid) == [6.0, 7.0]


def test_sampler_md_quotes_steps_0_and_1_line_for_line():
    """"Every line of the blocks of steps 0 and 1 is a line of its function, in order"."""
    blocks = python_blocks(DOCS / "sampler.md")
    sources = [page(ROOT / "stnref" / "equations.py"), page(DOCS / "examples" / "sampler_steps.py")]
    for block, source in zip(blocks[:2], sources):
        lines = [line.strip() for line in source.splitlines()]
        position = 0
        for line in (b.strip() for b in block.splitlines() if b.strip()):
            assert line in lines[position:], f"not quoted in order: {line!r}"
            position = lines.index(line, position) + 1


def test_sampler_md_ratios_follow_from_its_table():
    text = page(DOCS / "sampler.md")
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and re.match(r"\d\.", cells[0]):
            rows[cells[0][0]] = [float(c) if c not in ("–", "") else None for c in cells[1:]]
    assert rows["0"][0] / rows["1"][0] == pytest.approx(46, abs=0.5)            # "(46×)"
    assert "(46×)" in text
    ratios = [rows["2"][k] / rows["3"][k] for k in (1, 2)]                          # "2.0–2.7×"
    assert f"{min(ratios):.1f}–{max(ratios):.1f}×" == "2.0–2.7×" and "2.0–2.7×" in text
    change = [rows["2"][k] / rows["1"][k] - 1 for k in (0, 1, 2)]                  # step 2 vs step 1
    assert round(-min(change) * 100) == 2 and round(max(change) * 100) == 6
    assert "from 2 % faster to 6 % slower" in text
    assert round((1 - rows["2"][3] / rows["1"][3]) * 100) == 8 and "8 % less memory" in text
    assert (rows["4"][2], rows["5"][2], rows["4"][1], rows["5"][1]) == (7.60, 6.03, 0.77, 0.59)
    assert "(7.60 → 6.03 ms at 512², 0.77 → 0.59 ms at 64×28²)" in text


@pytest.mark.parametrize("path", DERIVATIONS, ids=[p.name for p in DERIVATIONS])
def test_every_derivation_page_uses_the_notation_and_cites_the_kink_rule(path):
    text = page(path)
    assert "(notation.md)" in text, f"{path.name} does not link its notation"
    if path.name != "layers.md":                     # no sampler on that page: no sampler kinks
        assert KINK_RULE in text, f"{path.name} does not cite conventions §6.5"


@pytest.mark.parametrize("name", ["tutorial.md", "sampler.md"])
def test_the_user_pages_cite_the_kink_rule(name):
    assert KINK_RULE in page(DOCS / name)


def test_the_paper_letters_are_not_reused_on_the_derivation_pages():
    """notation.md: one meaning per letter. The retired uses do not come back."""
    retired = {
        "grids.md": [r"U\(r\)", r"\bw_k,c", r"a0_c", r"\bp = i·W_out"],
        "sampling.md": [r"\bP\(i\)", r"W_\{jl\}", r"V_i\^c", r"U\^c\[t_l"],
        "second_order.md": [r"\bW\[m, t\]", r"dW_a", r"ddW_ab", r"w_a'"],
        "transformer.md": [r"\bP = prod", r"W_reg"],
    }
    for name, patterns in retired.items():
        text = page(DOCS / "derivations" / name)
        for pattern in patterns:
            assert not re.search(pattern, text), f"{name}: {pattern}"


def test_layers_md_relu_rule_and_the_crop_at_zero_padding():
    """derivations/layers.md: ``dx = where(x <= 0, 0, dy)`` lets NaN through; the crop
    ``p_h : H_p - p_h`` keeps every row at ``p_h = 0`` (``p_h : -p_h`` keeps none)."""
    from stnref.nn.activation import relu_backward
    x = np.array([-1.0, 0.0, np.nan, 2.0, -0.0])
    dy = np.array([5.0, 5.0, 5.0, 5.0, 5.0])
    np.testing.assert_array_equal(relu_backward(dy, x), [0.0, 0.0, 5.0, 5.0, 0.0])
    assert not np.isnan(dy * (x > 0)).any()                 # the other formula would drop the NaN
    rows = np.arange(6)
    assert rows[0:6 - 0].size == 6 and rows[0:-0].size == 0
    assert "dx = where(x ≤ 0, 0, dy)" in page(DOCS / "derivations" / "layers.md")


def test_the_conformance_generator_runs_and_reproduces_its_scipy_rows(capsys):
    """docs/conformance.md's rows are per version: with the SciPy it names, the generator
    writes the same SciPy rows again."""
    import scipy

    from examples import load_example
    conformance = load_example("conformance")
    assert conformance.main(["--only", "no-such-library"]) == 0
    assert "Installed: none of the libraries." in capsys.readouterr().out
    text = page(DOCS / "conformance.md")
    assert "**Rows are per version.**" in text
    stated = re.search(r"SciPy (\d+(?:\.\d+)*)", text.split("Installed: ", 1)[1].splitlines()[0]).group(1)
    if stated != scipy.__version__:
        pytest.skip(f"the page's rows are for SciPy {stated}, this is {scipy.__version__}")
    module, adapter, settings, show = conformance.LIBRARIES["SciPy"]
    from stnref.reference import diagnose
    for setting in ((0, "grid-constant"), (1, "mirror"), (3, "wrap")):
        fn, _ = adapter(*setting)
        assert conformance.row("SciPy", show(setting), diagnose(fn)) in text, setting


# --------------------------------------------------------------------------- results.md

# docs/results.md's Table 1 tables, by header: the records (under docs/results/) they quote
TABLES = {"| model | R | RTS | P | E | TC |": ("table1", "table1_cnn"),             # test digits
          "| model (3 seeds) | R | RTS | P | E | TC |": ("table1_seeds",),
          "| model (held-out digits) | R | RTS | P | E | TC |": ("table1_validation",)}
COLUMNS = ("r", "rts", "p", "e", "tc")
CELL = re.compile(r"^(\d+\.\d\d)(?: ± (\d+\.\d\d))? \((\d+(?:\.\d+)?)\) (\d+\.\d\d)$")


def _recorded(records):
    cells = {}
    for name in records:
        payload = json.loads((DOCS / "results" / name / "results.json").read_text(encoding="utf-8"))
        for key, cell in payload["cells"].items():
            assert key not in cells, f"{key} is recorded twice ({name})"
            cells[key] = cell
    return cells


def _quoted():
    """``(records, row label, column, text)`` of every cell of the page's Table 1 tables."""
    lines = (DOCS / "results.md").read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines):
        if line.strip() not in TABLES:
            continue
        for row in lines[i + 2:]:
            if not row.startswith("|"):
                break
            label, *texts = [t.strip() for t in row.strip().strip("|").split("|")]
            out += [(TABLES[line.strip()], label, col, text)
                    for col, text in zip(COLUMNS, texts) if text]
    return out


def test_the_page_quotes_table_1_cells():
    quoted = _quoted()
    assert {q[0] for q in quoted} == set(TABLES.values()) and len(quoted) >= 36


@pytest.mark.parametrize("records, label, column, text", _quoted())
def test_a_quoted_cell_is_its_record(records, label, column, text):
    model, _, transform = label.lower().partition(" ")
    key = f"{model}-{transform}|{column}" if transform else f"{model}|{column}"
    recorded = _recorded(records)
    assert key in recorded, f"results.md quotes {label} on {column.upper()}, which {records} do not hold"
    errors = recorded[key]["errors"]
    match = CELL.match(text)
    assert match, f"{label} {column}: {text!r} is not 'ours [± sd] (paper) ratio'"
    ours, sd, paper, ratio = match.groups()
    mean = sum(errors) / len(errors)
    assert float(paper) == PAPER_TABLE[model, transform or None][column]
    assert (ours, ratio) == (f"{mean:.2f}", f"{mean / float(paper):.2f}")
    # several seeds: the sample standard deviation, as OUT/table1.md gives it; one: none
    assert sd == (f"{np.std(errors, ddof=1):.2f}" if len(errors) > 1 else None)


@pytest.mark.parametrize("name", sorted({name for names in TABLES.values() for name in names}))
def test_a_record_s_errors_are_its_cells_last_epochs(name):
    root = DOCS / "results" / name
    payload = json.loads((root / "results.json").read_text(encoding="utf-8"))
    for key, cell in payload["cells"].items():
        last = [json.loads((root / run / "metrics.json").read_text(encoding="utf-8"))["epochs"][-1]
                for run in cell["run_dirs"]]
        assert [e["test_error"] for e in last] == cell["errors"], key
