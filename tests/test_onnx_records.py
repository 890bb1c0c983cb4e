"""stnref's bicubic and tricubic against ONNX's reference GridSample, from recorded results.

``tests/onnx_records/cubic.npz`` holds what ``onnx.reference.ReferenceEvaluator`` computed for
GridSample (opset 20, mode cubic) on dyadic grid points (written by
``tests/onnx_records/make_records.py``, which names the onnx version and the date), so this runs
without onnx.  With zeros padding stnref must agree to the float64 tolerance of
docs/conventions.md §6.3, in 2-D (bicubic) and 3-D (tricubic).  With border padding ONNX
clamps the continuous coordinate before it takes the taps, which PyTorch and stnref do not
(conventions §7.4): the records must match that rule and differ from stnref outside the image.
Where onnx is installed, the records are also checked to be what it computes today.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

import stnref
from stnref import grid_sample

RECORDS = Path(__file__).resolve().parent / "onnx_records" / "cubic.npz"
FORMAT = "stnref-onnx-records"
TOL = 1e-14          # relative to max(1, max |V|): on dyadic points only the order of the sums
                     # differs (measured: 4e-16), far inside the float64 bound of conventions §6.3
DIFFERENT = 1e-3     # the border rules differ by far more than any rounding


@functools.lru_cache(maxsize=None)
def load():
    arrays, meta = stnref.load_checkpoint(RECORDS)
    assert meta["format"] == FORMAT
    return arrays, meta


def cases(family):
    arrays, meta = load()
    return [(c, {name: arrays[f"{c['id']}.{name}"] for name in c["inputs"]}, arrays[f"{c['id']}.onnx.V"])
            for c in meta["cases"] if c["family"] == family]


def error(actual, expected):
    """``max |actual - expected| / max(1, max |expected|)``."""
    return float(np.abs(actual - expected).max() / max(1.0, np.abs(expected).max()))


def onnx_border_grid(grid, spatial, align_corners):
    """ONNX's cubic border rule: a pixel coordinate outside ``[low, high]`` (the reflection
    span: edges or centres) is clamped to ``[0, size - 1]`` before the taps are taken."""
    k = grid.shape[-1]
    out = grid.copy()
    for a in range(k):
        size = spatial[k - 1 - a]
        if align_corners:
            i, low, high = (grid[..., a] + 1) / 2 * (size - 1), 0.0, size - 1.0
        else:
            i, low, high = ((grid[..., a] + 1) * size - 1) / 2, -0.5, size - 0.5
        i = np.where((i < low) | (i > high), np.clip(i, 0, size - 1), i)
        out[..., a] = 2 * i / (size - 1) - 1 if align_corners else (2 * i + 1) / size - 1
    return out


def test_the_records_cover_2d_and_3d_both_align_corners():
    for family in ("zeros", "border"):
        found = {(a["grid"].shape[-1], c["options"]["align_corners"]) for c, a, _ in cases(family)}
        assert found == {(2, False), (2, True), (3, False), (3, True)}


@pytest.mark.parametrize("index", range(4))
def test_bicubic_and_tricubic_with_zeros_equal_the_onnx_reference(index):
    case, a, V = cases("zeros")[index]
    assert error(grid_sample(a["U"], a["grid"], **case["options"]), V) <= TOL, case["id"]


@pytest.mark.parametrize("index", range(4))
def test_onnx_cubic_border_clamps_the_coordinate_where_stnref_clamps_taps(index):
    case, a, V = cases("border")[index]
    spatial, ac = a["U"].shape[2:], case["options"]["align_corners"]
    clamped = grid_sample(a["U"], onnx_border_grid(a["grid"], spatial, ac), **case["options"])
    assert error(clamped, V) <= TOL, case["id"]
    assert error(grid_sample(a["U"], a["grid"], **case["options"]), V) > DIFFERENT


def test_a_perturbed_record_fails():
    case, a, V = cases("zeros")[3]
    bad = V.copy()
    bad.reshape(-1)[7] += 1e-8
    assert error(grid_sample(a["U"], a["grid"], **case["options"]), bad) > TOL


def test_records_state_where_they_come_from():
    _, meta = load()
    assert meta["generator"] == "tests/onnx_records/make_records.py"
    assert meta["onnx"] and meta["opset"] == 20 and meta["date"]


def test_records_are_what_onnx_computes_today():
    pytest.importorskip("onnx")
    import importlib.util
    # loaded under its own name: tests/torch_records has a make_records module too
    spec = importlib.util.spec_from_file_location("onnx_make_records", RECORDS.parent / "make_records.py")
    make_records = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_records)
    for case, a, V in cases("zeros") + cases("border"):
        now = make_records.onnx_cubic(a["U"], a["grid"], case["options"]["padding_mode"],
                                      case["options"]["align_corners"])
        np.testing.assert_array_equal(now, V)
