"""The golden checker's judgement: every comparison, limit and mask at its boundary both ways;
failure notes a kernel author can act on; kernels wrong in one known way each fail, with the
rule that explains them, and ``check`` agrees with ``diagnose`` on them; results written
without NumPy (struct, a C program) and by ONNX Runtime."""

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from golden_helpers import (  # noqa: F401
    cases_of,
    float32_kernel,
    golden,
    half_up_kernel,
    load,
    manifest,
    nan_far_kernel,
    npy_by_hand,
    option_tag,
    overflow_kernel,
    results_copy,
    right_kernel,
    round_then_reflect_kernel,
    run,
    scipy_kernel,
    write_forward,
)

from stnref.reference import diagnose, run_check
from stnref.reference._files import FOUND_SHOWN
from stnref.reference._judge import compare, pixel_coordinates
from stnref.reference._report import ID_COLUMN
from stnref.reference.golden import _compare, _tolerance

TOL = {"atol": 0.25, "rtol": 0.125}          # dyadic: bounds are exact in binary


def _verdict(golden, result, tol=TOL):
    return compare("V", np.asarray(golden, dtype=float), np.asarray(result, dtype=float), tol)


# --------------------------------------------------------------------------- comparison boundaries

@pytest.mark.parametrize("golden_value, bound", [(2.0, 0.5), (-2.0, 0.5), (0.0, 0.25), (8.0, 1.25)])
def test_the_tolerance_is_inclusive_and_exact_both_ways(golden_value, bound):
    """|result - golden| == atol + rtol |golden| passes, one ulp beyond fails, above and below."""
    for sign in (1.0, -1.0):
        edge = golden_value + sign * bound
        assert _verdict([golden_value], [edge]).ok
        beyond = np.nextafter(edge, sign * np.inf)
        v = _verdict([golden_value], [beyond])
        assert not v.ok and v.failing == 1 and v.worst == (0,)
        assert v.golden_value == golden_value and v.result_value == beyond


@pytest.mark.parametrize("golden_value, result_value, side", [
    (1.0, np.nan, "result"), (np.nan, 1.0, "golden"), (np.nan, np.inf, "golden"), (np.inf, np.nan, "result"),
])
def test_nan_masks_are_compared_both_ways(golden_value, result_value, side):
    """A result NaN where golden is finite fails, and a golden NaN the result fills in fails."""
    v = _verdict([0.5, golden_value], [0.5, result_value])
    assert not v.ok and v.failing == 1 and v.worst is None
    assert (v.nan_in_result, v.nan_in_golden) == ((1, 0) if side == "result" else (0, 1))
    assert (v.first_nan_in_result if side == "result" else v.first_nan_in_golden) == (1,)
    assert v.max_abs == 0 and v.max_rel == 0          # a NaN is counted, never measured
    same = _verdict([np.nan, 1.0], [np.nan, 1.0])
    assert same.ok and same.max_abs == same.max_rel == 0 and same.failing == 0


@pytest.mark.parametrize("golden_value, result_value, ok", [
    (np.inf, np.inf, True), (-np.inf, -np.inf, True), (np.inf, -np.inf, False),
    (np.inf, 1e308, False), (1e308, np.inf, False), (-0.0, 0.0, True), (0.0, -0.0, True),
])
def test_infinities_and_signed_zeros(golden_value, result_value, ok):
    for tol in (TOL, {"atol": 0.0, "rtol": 0.0}):
        assert _verdict([golden_value], [result_value], tol).ok is ok


def test_zero_tolerances_are_exact_and_rtol_zero_is_absolute():
    exact = {"atol": 0.0, "rtol": 0.0}
    v = _verdict([0.0, 2.0], [0.0, 2.0], exact)      # no error is 0, never 0 / 0
    assert v.ok and v.max_abs == 0 and v.max_rel == 0
    v = compare("V", np.zeros((0, 3)), np.zeros((0, 3)), TOL)
    assert v.ok and v.elements == v.failing == 0 and v.max_abs == v.max_rel == 0 and v.worst is None
    assert _verdict([1.0], [1.0], exact).ok and not _verdict([1.0], [np.nextafter(1.0, 2)], exact).ok
    absolute = {"atol": 0.5, "rtol": 0.0}
    assert _verdict([100.0], [100.5], absolute).ok and not _verdict([100.0], [100.5000001], absolute).ok
    v = _verdict([0.0, 4.0], [1.0, 4.0], absolute)     # rtol 0: relative error against |golden|
    assert v.max_rel == np.inf and v.max_abs == 1.0
    v = _verdict([0.0, 4.0], [0.125, 5.0])             # floored at atol / rtol = 2
    assert v.max_rel == pytest.approx(0.25) and v.max_abs == 1.0


def test_worst_is_the_largest_error_and_every_failure_counts():
    v = _verdict(np.zeros(6), [0.3, 2.0, 0.1, 0.9, np.nan, 0.2])
    assert not v.ok and v.failing == 4 and v.elements == 6       # 0.3, 2.0, 0.9 and the NaN
    assert v.worst == (1,) and v.result_value == 2.0 and v.max_abs == 2.0 and v.nan_in_result == 1


@pytest.mark.parametrize("result, problem", [
    (np.zeros(3, dtype=np.int64), "dtype int64, expected a float array"),
    (np.zeros(3, dtype=complex), "dtype complex128, expected a float array"),
    (np.zeros(4), "shape (4,), expected (3,)"),
])
def test_dtype_and_shape_are_compared_first(result, problem):
    v = compare("V", np.zeros(3), result, TOL)
    assert not v.ok and v.problem == problem
    ok, max_abs, max_rel, why = _compare(np.zeros(3), result, TOL)
    assert ok is False and np.isnan(max_abs) and np.isnan(max_rel) and why == problem


def test_tolerances_scale_with_the_finite_maximum_at_least_one():
    outputs = {"a": np.array([0.5, -0.25]), "b": np.array([3.0, np.inf, np.nan]),
               "c": np.full(2, np.nan), "d": np.array([1.0], dtype=np.float32)}
    tol = _tolerance(outputs)
    assert tol["a"] == {"rtol": 1e-10, "atol": 1e-10} and tol["c"]["atol"] == 1e-10
    assert tol["b"]["atol"] == pytest.approx(3e-10)
    assert tol["d"] == {"rtol": 1e-5, "atol": 1e-5}


# --------------------------------------------------------------------------- file and report limits

def test_a_npy_header_must_match_its_bytes_exactly(golden, tmp_path):
    case = "affine_grid-2d-ac"
    results = tmp_path / "results"
    good = load(golden / f"{case}.npz")
    for extra, ok in ((0, True), (1, False), (-1, False)):
        shutil.rmtree(results, ignore_errors=True)
        (results / case).mkdir(parents=True)
        for name in ("grid", "dtheta"):
            raw = npy_by_hand(good[name].ravel().tolist(), good[name].shape)
            (results / case / f"{name}.npy").write_bytes(raw[:len(raw) + extra] if extra < 0 else raw + bytes(extra))
        passed, rows, _ = run(golden, results, only=[case])
        assert passed is ok, rows
        if not ok:
            assert f"grid.npy: header claims shape {good['grid'].shape} of float64 ({good['grid'].nbytes} " \
                   f"bytes) but the file holds {good['grid'].nbytes + extra} bytes" in rows[case]


@pytest.mark.parametrize("shape", ["(" * 2000 + ")" * 2000, "(-1, 2)", "(" + "9" * 4000 + ",)"],
                         ids=["nested", "negative", "huge-integer"])
def test_a_hostile_npy_header_is_one_bounded_note(golden, tmp_path, shape):
    import struct
    header = ("{'descr': '<f8', 'fortran_order': False, 'shape': " + shape + ", }\n").encode()
    case = "affine_grid-2d-ac"
    for form in ("npy", "npz"):
        results = tmp_path / form
        raw = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header
        if form == "npy":
            (results / case).mkdir(parents=True)
            (results / case / "grid.npy").write_bytes(raw)
        else:
            results.mkdir()
            with zipfile.ZipFile(results / f"{case}.npz", "w") as zf:
                zf.writestr("grid.npy", raw)
        ok, rows, _ = run(golden, results, only=[case])
        assert not ok and len(rows[case]) < 1200, rows[case]


def test_text_from_files_is_bounded_exactly_at_its_limits(tmp_path):
    from stnref.reference._files import TEXT_LIMIT, _missing, brief, clip_text, read_arrays
    assert brief("x" * 80) == repr("x" * 80)
    assert brief("x" * 81) == repr("x" * 80) + "... (81 characters)"
    assert brief(10**79) == str(10**79) and brief(10**80) == str(10**80)[:80] + "... (81 characters)"
    assert brief([1, 2]) == "a JSON list of 2 items" and brief({"a": 1}) == "a JSON object of 1 items"
    assert clip_text("y" * TEXT_LIMIT) == "y" * TEXT_LIMIT
    assert clip_text("y" * (TEXT_LIMIT + 1)) == "y" * TEXT_LIMIT + f"... ({TEXT_LIMIT + 1} characters)"
    assert _missing("V", ["a" * 40]) == f"missing array 'V' (found '{'a' * 40}')"
    assert _missing("V", ["a" * 41]) == f"missing array 'V' (found '{'a' * 40}... (41 characters)')"
    assert _missing("V", []) == "missing array 'V' (found no arrays)"
    header = ("{'descr': '<f8', 'fortran_order': False, 'shape': " + "(" * 500 + ")" * 500 + ", }\n").encode()
    import struct
    raw = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header
    (tmp_path / "V.npy").write_bytes(raw)
    with zipfile.ZipFile(tmp_path / "case.npz", "w") as zf:
        zf.writestr("V.npy", raw)
    _, problems = read_arrays(str(tmp_path), {"V": None})
    assert len(problems) == 1 and re.fullmatch(r".{300}\.\.\. \(\d+ characters\)", problems[0]), problems
    with pytest.raises(ValueError) as err:
        read_arrays(str(tmp_path / "case.npz"), {"V": None})
    assert re.fullmatch(r"unreadable: .{300}\.\.\. \(\d+ characters\)", str(err.value)), err.value


@pytest.mark.parametrize("count", [FOUND_SHOWN, FOUND_SHOWN + 1])
def test_the_names_found_are_listed_up_to_a_limit(golden, tmp_path, count):
    results = tmp_path / "results"
    results.mkdir()
    names = {f"arr_{i}": np.zeros(1) for i in range(count)}
    np.savez(results / "affine_grid-2d-ac.npz", **names)
    _, rows, _ = run(golden, results, only=["affine_grid-2d-ac"])
    shown = ", ".join(repr(n) for n in sorted(names)[:FOUND_SHOWN])
    more = "" if count == FOUND_SHOWN else " and 1 more"
    assert f"missing array 'dtheta' (found {shown}{more})" in rows["affine_grid-2d-ac"]


def test_the_id_column_is_bounded(golden, tmp_path):
    """Rows are padded to the longest id up to ID_COLUMN characters; a longer id overflows only
    its own row."""
    directory = tmp_path / "ids"
    directory.mkdir()
    m = json.loads((golden / "manifest.json").read_text())
    cases = [c for c in m["cases"] if c["id"] in ("affine_grid-2d-ac", "affine_grid-2d-noac")]
    for case, length in zip(cases, (ID_COLUMN, ID_COLUMN + 1)):
        new_id = case["id"] + "x" * (length - len(case["id"]))
        shutil.copy(golden / case["file"], directory / f"{new_id}.npz")
        case["id"], case["file"] = new_id, f"{new_id}.npz"
    (directory / "manifest.json").write_text(json.dumps({**m, "cases": cases}))
    results = tmp_path / "results"
    results.mkdir()
    table = run_check(directory, results).table().splitlines()
    assert table[0].index("result") == ID_COLUMN + 2
    assert table[1].index("FAIL") == ID_COLUMN + 2 and table[2].index("FAIL") == ID_COLUMN + 3


def test_results_in_both_forms_are_ambiguous(golden, tmp_path):
    results = results_copy(golden, tmp_path)
    (results / "tps_grid-2d-ac").mkdir()
    ok, rows, _ = run(golden, results, only=["tps_grid-*"])
    assert not ok and "both tps_grid-2d-ac.npz and a directory tps_grid-2d-ac/ are in the results" \
        in rows["tps_grid-2d-ac"] and " PASS " in rows["tps_grid-2d-noac"]


def test_npy_of_every_version_byte_order_and_memory_order_is_read(golden, tmp_path):
    case = "affine_grid-3d-noac"
    arrays = load(golden / f"{case}.npz")
    results = tmp_path / "results"
    (results / case).mkdir(parents=True)
    for name, version, dtype, order in (("grid", (2, 0), ">f8", "F"), ("dtheta", (3, 0), "<f8", "C")):
        with open(results / case / f"{name}.npy", "wb") as f:
            np.lib.format.write_array(f, np.asarray(arrays[name], dtype=dtype, order=order), version=version)
    ok, rows, text = run(golden, results, only=[case])
    assert ok, text


# --------------------------------------------------------------------------- failure notes

def test_failure_notes_locate_the_worst_element_and_name_the_rule(golden, tmp_path):
    case = "grid_sample-2d-bilinear-zeros-noac"
    a = load(golden / f"{case}.npz")
    results = tmp_path / "results"
    results.mkdir()
    V, dU = a["V"].copy(), a["dU"].copy()
    V[0, 1, 2, 3] += 0.5
    V[1, 0, 0, 0] += 0.1
    V[1, 1, 2, 2] = np.nan
    dU[1, 0, 3, 4] += 1.0
    np.savez(results / f"{case}.npz", V=V, dU=dU, dgrid=a["dgrid"])
    np.savez(results / "grid_sample-2d-bilinear-zeros-ac.npz", arr_0=V, output=V)
    report = run_check(golden, results, only=["grid_sample-2d-bilinear-zeros-*"])
    notes = {c.id: c.row_notes() for c in report.cases}
    x, y = a["grid"][0, 2, 3]
    ix, iy = pixel_coordinates(a["grid"], (4, 5), False)[0, 2, 3]
    assert ix == ((x + 1) * 5 - 1) / 2 and iy == ((y + 1) * 4 - 1) / 2
    assert (f"V: 3 of 48 elements fail; worst off by 5.000e-01 at V[0, 1, 2, 3] (grid point [0, 2, 3]: "
            f"x {x:.9g}, y {y:.9g}; pixel ix {ix:.9g}, iy {iy:.9g}): golden {a['V'][0, 1, 2, 3]:.17g}, "
            f"result {V[0, 1, 2, 3]:.17g}") in notes[case]
    assert "the result holds NaN where golden is not at 1, first V[1, 1, 2, 2] (grid point [1, 2, 2]:" in notes[case]
    assert "dU: 1 of 80 elements fail; worst off by 1.000e+00 at dU[1, 0, 3, 4] (pixel ix 4, iy 3)" in notes[case]
    assert "explained by: no known rule explains it" in notes[case] and "general position" in notes[case]
    dgrid = a["dgrid"].copy()
    dgrid[1, 2, 1, 0] += 0.25
    np.savez(results / f"{case}.npz", V=a["V"], dU=a["dU"], dgrid=dgrid)
    note = run_check(golden, results, only=[case]).cases[0].row_notes()
    gx, gy = a["grid"][1, 2, 1]
    assert f"dgrid: 1 of 48 elements fail; worst off by 2.500e-01 at dgrid[1, 2, 1, 0] (grid point [1, 2, 1]: " \
           f"x {gx:.9g}, y {gy:.9g};" in note
    assert "missing array 'V' (found 'arr_0', 'output')" in notes["grid_sample-2d-bilinear-zeros-ac"]
    nonfinite = "grid_sample-non-finite-2d-nearest-border-noac"
    a = load(golden / f"{nonfinite}.npz")
    np.savez(results / f"{nonfinite}.npz", V=np.nan_to_num(a["V"]))      # NaN -> 0: a silent pixel
    report = run_check(golden, results, only=[nonfinite], outputs=["V"])
    note = report.cases[0].row_notes()
    assert "golden holds NaN where the result is not at" in note and "(result 0)" in note
    assert "explained by: differs at grid points with a NaN or inf coordinate" in note


def test_a_failing_fill_value_gradient_is_reported_without_a_place(golden, tmp_path):
    case = "grid_sample-2d-bilinear-constant-ac"
    a = load(golden / f"{case}.npz")
    results = tmp_path / "results"
    results.mkdir()
    np.savez(results / f"{case}.npz", V=a["V"], dU=a["dU"], dgrid=a["dgrid"], dfill_value=a["dfill_value"] + 1)
    note = run_check(golden, results, only=[case]).cases[0].row_notes()
    assert a["dfill_value"].shape == () and "dfill_value: 1 of 1 elements fail; worst off by 1.000e+00 at " \
        "dfill_value[]: golden" in note and "explained by: no known rule explains it" in note


def test_the_nearest_models_reproduce_every_nearest_case(golden, manifest):
    """The models the explanations test, in PyTorch's order with ties to even, give the golden V
    at every finite point below MODEL_RANGE pixels: every padding, fill and dimension."""
    from stnref.reference._judge import MODEL_RANGE, Context, _nearest_model
    checked = set()
    for case in manifest["cases"]:
        if case["op"] != "grid_sample" or case["options"]["mode"] != "nearest":
            continue
        a = load(golden / case["file"])
        ctx = Context("grid_sample", case["options"], a)
        near = np.all(np.abs(ctx.pixel) < MODEL_RANGE, axis=-1)[:, None]
        V = np.broadcast_to(np.isnan(a["V"]) | ~near, a["V"].shape)
        model = _nearest_model(ctx, "half to even", False)
        np.testing.assert_array_equal(np.where(V, 0, model), np.where(V, 0, a["V"]), err_msg=case["id"])
        checked.add((case["options"]["padding_mode"], case["family"]))
    assert {p for p, _ in checked} == {"zeros", "border", "reflection", "constant", "wrap"}
    assert {f for _, f in checked} >= {"nearest-ties", "reflection-folds", "size-1-axes", "wrap-periods"}


# --------------------------------------------------------------------------- wrong kernels

WRONG = [  # kernel, setting, what check's notes name; diagnose must agree on every one
    (right_kernel, ("bilinear", "zeros", False), None),
    (overflow_kernel, ("bilinear", "zeros", True), None),          # invisible with zeros padding
    (overflow_kernel, ("bilinear", "border", False), "where an int64 index overflows"),
    (overflow_kernel, ("nearest", "border", True), "where an int64 index overflows"),
    (overflow_kernel, ("bicubic", "border", True), "where an int64 index overflows"),
    (round_then_reflect_kernel, ("nearest", "reflection", False), "rounds the coordinate before reflecting it"),
    (round_then_reflect_kernel, ("nearest", "reflection", True), None),  # about centres: the same
    (half_up_kernel, ("nearest", "zeros", False), "rounds ties half up"),
    (half_up_kernel, ("nearest", "border", True), "rounds ties half up"),
    (float32_kernel, ("bilinear", "zeros", False), "the result is float32 and this case is judged with float64"),
    (float32_kernel, ("bicubic", "reflection", True), "the result is float32"),
]


def _judge_kernel(golden, tmp_path, kernel, setting, **selection):
    tag = option_tag(*setting)
    cases = [c for c in cases_of(golden, k=2, tag=tag) if c["family"] != "non-finite"]
    write_forward(golden, tmp_path / "results", kernel, cases)
    return run_check(golden, tmp_path / "results", outputs=["V"], exclude=["*non-finite*"],
                     only=[f"grid_sample-*2d-{tag}*"], **selection)   # and its -float32 case


@pytest.mark.parametrize("kernel, setting, named", WRONG,
                         ids=[f"{w.values[0].__name__ if hasattr(w, 'values') else w[0].__name__}-"
                              f"{option_tag(*(w.values[1] if hasattr(w, 'values') else w[1]))}" for w in WRONG])
def test_wrong_kernels_fail_and_check_agrees_with_diagnose(golden, tmp_path, kernel, setting, named):
    report = _judge_kernel(golden, tmp_path, kernel, setting)
    assert report.ok is (named is None), report.table()
    if named:   # every failing point explained by the one rule the kernel breaks
        failing = [c for c in report.cases if c.verdict == "fail"]
        assert all(named in " ".join(c.explanations) and "unexplained" not in " ".join(c.explanations)
                   for c in failing), report.table()
    assert diagnose(lambda U, grid: kernel(U, grid, *setting)).matches_pytorch is report.ok


@pytest.mark.parametrize("padding_mode, right, wrong", [("wrap", "grid-wrap", "wrap"),
                                                        ("constant", "grid-constant", "constant")])
def test_settings_beyond_pytorch_tell_their_rule_apart(golden, tmp_path, padding_mode, right, wrong):
    """scipy's grid-wrap and grid-constant are stnref's wrap and constant padding and pass; its
    wrap (period size - 1) and constant (the fill read whole beyond the edge pixels) fail.
    (scipy's remainder of 1e30 is not stnref's, and it has no NaN rule: those families are out.)"""
    for kernel, passes in ((scipy_kernel(right), True), (scipy_kernel(wrong), False)):
        for ac in (False, True):
            tag = option_tag("bilinear", padding_mode, ac)
            cases = cases_of(golden, tag=tag)
            results = tmp_path / f"{kernel.__qualname__}-{passes}-{tag}"
            write_forward(golden, results, kernel, cases)
            report = run_check(golden, results, outputs=["V"], only=[f"grid_sample-*-{tag}"],
                               exclude=["*huge*", "*non-finite*"])
            assert report.ok is passes, report.table()
            assert {c["family"] for c in cases} >= ({"wrap-periods"} if padding_mode == "wrap" else {"integer-knots"})


def test_a_float32_kernel_passes_with_its_float32_answers(golden, tmp_path):
    for setting in (("bilinear", "zeros", False), ("nearest", "reflection", True), ("bicubic", "border", False)):
        report = _judge_kernel(golden, tmp_path / option_tag(*setting), float32_kernel, setting, dtype="float32")
        assert report.ok and all(c.dtype == "float32" for c in report.cases), report.table()
        assert report.cases[0].tolerance["V"]["rtol"] == 1e-5


def test_diagnose_agrees_on_a_nan_where_pytorch_is_finite(golden, tmp_path):
    setting = ("bilinear", "border", False)
    report = _judge_kernel(golden, tmp_path, nan_far_kernel, setting)
    assert not report.ok
    assert "the result holds NaN where golden is not" in report.table()
    diagnosis = diagnose(lambda U, grid: nan_far_kernel(U, grid, *setting))
    assert diagnosis.matches_pytorch is report.ok
    assert any("NaN where the behaviour found above is finite" in d or "NaN where the closest setting is finite" in d
               for d in diagnosis.differences), diagnosis.differences


# --------------------------------------------------------------------------- other languages

def test_results_written_without_numpy_are_checked(golden, tmp_path):
    """Each V.npy assembled byte by byte with struct, as a minimal writer in C or Rust would:
    the right values pass (either byte order), one changed value fails."""
    cases = cases_of(golden, k=2, tag="bicubic-border-ac")
    results = tmp_path / "results"
    for case in cases:
        V = load(golden / case["file"])["V"]
        (results / case["id"]).mkdir(parents=True)
        values = [float(v) for v in V.ravel()]
        big = case["family"] == "general"
        (results / case["id"] / "V.npy").write_bytes(npy_by_hand(values, V.shape, big_endian=big))
    only = ["grid_sample-*2d-bicubic-border-ac", "grid_sample-*2d-bicubic-border-ac-float32"]
    ok, rows, text = run(golden, results, outputs=["V"], only=only)
    assert ok and len(rows) == len(cases) == 8, text
    V = load(golden / "grid_sample-2d-bicubic-border-ac.npz")["V"]
    values = [float(v) for v in V.ravel()]
    values[5] += 1e-6
    (results / "grid_sample-2d-bicubic-border-ac" / "V.npy").write_bytes(npy_by_hand(values, V.shape))
    ok, rows, _ = run(golden, results, outputs=["V"], only=only)
    assert not ok and "V: 1 of 48 elements fail; worst off by 1.000e-06 at V[0, 0, 1, 1]" in \
        rows["grid_sample-2d-bicubic-border-ac"]


C_KERNEL = r"""
/* A forward-only bilinear grid_sample (zeros padding, align_corners=False) in C: it reads
   U.npy and grid.npy as unzipped from a golden case file and writes V.npy. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double *read_npy(const char *path, long *dims, int *ndim) {
    unsigned char pre[10];
    FILE *f = fopen(path, "rb");
    if (!f || fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY\x01\x00", 8)) return NULL;
    unsigned len = pre[8] | (pre[9] << 8);
    char *h = calloc(len + 1, 1);
    if (fread(h, 1, len, f) != len || !strstr(h, "'fortran_order': False")) return NULL;
    int single = strstr(h, "'<f4'") != NULL;
    char *s = strstr(h, "'shape': (") + 10;
    long n = 1;
    for (*ndim = 0; *s != ')'; (*ndim)++) {
        dims[*ndim] = strtol(s, &s, 10);
        n *= dims[*ndim];
        while (*s == ',' || *s == ' ') s++;
    }
    double *out = malloc(n * sizeof(double));
    for (long i = 0; i < n; i++) {
        if (single) { float v; if (fread(&v, 4, 1, f) != 1) return NULL; out[i] = v; }
        else if (fread(&out[i], 8, 1, f) != 1) return NULL;
    }
    fclose(f);
    free(h);
    return out;
}

int main(int argc, char **argv) {
    char path[4096];
    long du[8], dg[8];
    int nu, ng;
    snprintf(path, sizeof path, "%s/U.npy", argv[1]);
    double *U = read_npy(path, du, &nu);
    snprintf(path, sizeof path, "%s/grid.npy", argv[1]);
    double *g = read_npy(path, dg, &ng);
    if (argc != 3 || !U || !g || nu != 4 || ng != 4) return 2;
    long N = du[0], C = du[1], H = du[2], W = du[3], Ho = dg[1], Wo = dg[2];
    double *V = malloc(N * C * Ho * Wo * sizeof(double));
    for (long n = 0; n < N; n++)
        for (long h = 0; h < Ho; h++)
            for (long w = 0; w < Wo; w++) {
                double x = g[((n * Ho + h) * Wo + w) * 2], y = g[((n * Ho + h) * Wo + w) * 2 + 1];
                double ix = (x + 1) * (W / 2.0) - 0.5, iy = (y + 1) * (H / 2.0) - 0.5;
                double x0 = floor(ix), y0 = floor(iy), tx = ix - x0, ty = iy - y0;
                for (long c = 0; c < C; c++) {
                    double sum = 0;
                    for (int dy = 0; dy < 2; dy++)
                        for (int dx = 0; dx < 2; dx++) {
                            double xx = x0 + dx, yy = y0 + dy;     /* bounds in double: no overflow */
                            if (xx >= 0 && xx <= W - 1 && yy >= 0 && yy <= H - 1)
                                sum += (dx ? tx : 1 - tx) * (dy ? ty : 1 - ty)
                                       * U[((n * C + c) * H + (long)yy) * W + (long)xx];
                        }
                    /* stnref's rule for a NaN or inf coordinate: NaN (docs/conventions.md 5.2) */
                    V[((n * C + c) * Ho + h) * Wo + w] = isfinite(x) && isfinite(y) ? sum : NAN;
                }
            }
    char header[128];
    int len = snprintf(header, sizeof header, "{'descr': '<f8', 'fortran_order': False, "
                       "'shape': (%ld, %ld, %ld, %ld), }\n", N, C, Ho, Wo);
    FILE *f = fopen(argv[2], "wb");
    unsigned char size[2] = {len & 255, len >> 8};
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fwrite(size, 1, 2, f);
    fwrite(header, 1, len, f);
    fwrite(V, sizeof(double), N * C * Ho * Wo, f);
    return fclose(f) != 0;
}
"""


@pytest.mark.skipif(sys.byteorder != "little", reason="the C kernel writes its host's byte order")
def test_a_kernel_in_c_passes_every_case_of_its_setting(golden, tmp_path):
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        pytest.skip("no C compiler")
    (tmp_path / "kernel.c").write_text(C_KERNEL)
    exe = tmp_path / "kernel"
    subprocess.run([compiler, "-O2", "-o", str(exe), str(tmp_path / "kernel.c"), "-lm"], check=True,
                   capture_output=True)
    cases = cases_of(golden, k=2, tag="bilinear-zeros-noac")
    results = tmp_path / "results"
    for case in cases:
        unzipped = tmp_path / "unzipped" / case["id"]
        with zipfile.ZipFile(golden / case["file"]) as zf:     # what `unzip` does
            zf.extractall(unzipped, members=["U.npy", "grid.npy"])
        (results / case["id"]).mkdir(parents=True)
        subprocess.run([str(exe), str(unzipped), str(results / case["id"] / "V.npy")], check=True)
    ok, rows, text = run(golden, results, outputs=["V"],
                         only=["grid_sample-*2d-bilinear-zeros-noac", "grid_sample-*2d-bilinear-zeros-noac-float32"])
    assert ok and len(rows) == len(cases) == 7, text
    assert {c["family"] for c in cases} >= {"huge-coordinates", "non-finite", "integer-knots"}


# --------------------------------------------------------------------------- ONNX Runtime

def _ort_sampler(onnx, onnxruntime, mode, padding_mode, align_corners, dtype, opset):
    from onnx import TensorProto, helper
    name = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode) if opset >= 20 else mode
    node = helper.make_node("GridSample", ["X", "grid"], ["Y"], mode=name, padding_mode=padding_mode,
                            align_corners=int(align_corners))
    kind = TensorProto.DOUBLE if dtype == np.float64 else TensorProto.FLOAT
    io = [helper.make_tensor_value_info(n, kind, None) for n in ("X", "grid", "Y")]
    model = helper.make_model(helper.make_graph([node], "g", io[:2], io[2:]),
                              opset_imports=[helper.make_opsetid("", opset)])
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda U, grid: session.run(None, {"X": np.ascontiguousarray(U, dtype),
                                              "grid": np.ascontiguousarray(grid, dtype)})[0]


SETTINGS_2D = [(m, p, ac) for m in ("bilinear", "nearest", "bicubic") for p in ("zeros", "border", "reflection")
               for ac in (False, True)]


def test_onnx_runtime_fails_in_every_setting_where_it_differs(golden, tmp_path):
    """ONNX Runtime's GridSample differs from PyTorch at huge coordinates in all 18 settings
    (its index overflows beyond 2^63 pixels, its folds lose the fold count from ~1e16) and
    rounds before reflecting: every setting fails, with the rule named, and every setting
    diagnose flags is one check fails.  diagnose flags 13: not the five other reflection settings,
    which differ only beyond 2e4 sizes, where it does not probe (see the xfail below)."""
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    failed, flagged, named = set(), set(), {}
    for setting in SETTINGS_2D:
        fn = _ort_sampler(onnx, onnxruntime, *setting, np.float64, 20)
        report = _judge_kernel(golden, tmp_path / option_tag(*setting), lambda U, g, *_, **__: fn(U, g), setting)
        if not report.ok:
            failed.add(setting)
            named[setting] = " ".join(e for c in report.cases for e in c.explanations)
        if not diagnose(fn).matches_pytorch:
            flagged.add(setting)
    assert failed == set(SETTINGS_2D)
    assert flagged == {s for s in SETTINGS_2D if s[1] != "reflection"} | {("nearest", "reflection", False)}
    assert "rounds the coordinate before reflecting it" in named["nearest", "reflection", False]
    for setting in SETTINGS_2D:
        if setting[1] == "zeros":
            assert "where an int64 index overflows" in named[setting], named[setting]
        if setting[1] == "reflection":
            assert "only PyTorch's own fold arithmetic" in named[setting], named[setting]


def test_onnx_runtime_passes_12_of_18_settings_of_version_1(tmp_path):
    """Version 1 had huge coordinates only without align_corners (and bilinear border on one
    axis): ONNX Runtime's finite forward passed 12 of its 18 settings there."""
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    from stnref.reference import export
    export(tmp_path / "v1", version=1)
    passed = set()
    for setting in SETTINGS_2D:
        fn = _ort_sampler(onnx, onnxruntime, *setting, np.float64, 20)
        cases = [c for c in cases_of(tmp_path / "v1", k=2, tag=option_tag(*setting)) if c["finite"]]
        write_forward(tmp_path / "v1", tmp_path / option_tag(*setting), lambda U, g, *_, **__: fn(U, g), cases)
        tag = option_tag(*setting)
        if run_check(tmp_path / "v1", tmp_path / tag, outputs=["V"], exclude=["*non-finite*"],
                     only=[f"grid_sample-*2d-{tag}*"]).ok:
            passed.add(setting)
    assert len(passed) == 12 and {s for s in SETTINGS_2D if s[2]} <= passed, passed


def test_onnx_runtime_float32_fails_with_float32_answers_too(golden, tmp_path):
    """Opset 16 has float32 GridSample only: judged with --dtype float32 it still fails where it
    differs (huge coordinates), and passes the cases where it does not."""
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    for setting in (("bilinear", "zeros", False), ("nearest", "reflection", False)):
        fn = _ort_sampler(onnx, onnxruntime, *setting, np.float32, 16)
        report = _judge_kernel(golden, tmp_path / option_tag(*setting), lambda U, g, *_, **__: fn(U, g),
                               setting, dtype="float32")
        verdicts = {c.family: c.verdict for c in report.cases}
        assert verdicts["huge-coordinates"] == "fail" and verdicts["general"] == "pass", report.table()


REFLECTION_GAP = "diagnose probes reflection only up to 2e4 sizes (as golden version 1); ONNX Runtime's " \
                 "reflection differs from about 1e16 pixels on"


@pytest.mark.parametrize("setting", [
    pytest.param(("bilinear", "reflection", False), marks=pytest.mark.xfail(strict=True, reason=REFLECTION_GAP)),
    ("nearest", "zeros", False), ("nearest", "border", True)], ids=lambda s: option_tag(*s))
def test_diagnose_flags_onnx_runtime_where_check_fails(golden, tmp_path, setting):
    pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    fn = _ort_sampler(None, onnxruntime, *setting, np.float64, 20)
    assert not _judge_kernel(golden, tmp_path, lambda U, g, *_, **__: fn(U, g), setting).ok
    assert not diagnose(fn).matches_pytorch


# --------------------------------------------------------------------------- PyTorch float32

def test_pytorch_float32_needs_float32_answers(golden, tmp_path):
    """PyTorch's own float32 forward passes every finite sampler case against the float32
    answers, and fails reflection cases of huge-coordinates against the float64 ones."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional

    def sample(U, grid, mode, padding_mode, align_corners, **numeric):   # PyTorch's A only
        with torch.no_grad():
            return F.grid_sample(torch.from_numpy(U.astype(np.float32)), torch.from_numpy(grid.astype(np.float32)),
                                 mode=mode, padding_mode=padding_mode, align_corners=align_corners).numpy()

    cases = [c for c in cases_of(golden) if c["finite"] and c["pytorch"]]
    write_forward(golden, tmp_path / "results", sample, cases)
    selection = {"outputs": ["V"], "only": [c["id"] for c in cases]}
    assert run_check(golden, tmp_path / "results", dtype="float32", **selection).ok
    report = run_check(golden, tmp_path / "results", **selection)
    float64 = [c for c in report.cases if c.dtype == "float64"]
    failing = {c.id for c in float64 if c.verdict == "fail" and c.max_abs > 1e-5 * 10}
    assert failing and all("huge-coordinates" in i and "reflection" in i for i in failing)
    assert os.path.isdir(tmp_path / "results")


def test_float32_answers_are_what_pytorch_float32_computes(manifest):
    """Every float32 answer of a finite case PyTorch can compute -- V, dU, dgrid, the JVP, the
    double backward, affine_grid -- is PyTorch's own float32 result to the float32 tolerance."""
    torch = pytest.importorskip("torch")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "torch_records"))
    try:
        import make_records
    finally:
        sys.path.pop(0)
    from stnref.reference import load_cases
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    make_records.setup()
    torch.set_default_dtype(torch.float32)   # PyTorch's float32 double backward needs it
    try:
        checked = 0
        for case in load_cases():
            arrays = {**case["inputs"], **case["cotangents"]}
            if not case["pytorch"] or not all(np.isfinite(x).all() for x in arrays.values()):
                continue
            theirs = make_records.torch_op(case["op"], case["options"],
                                           {n: x.astype(np.float32) for n, x in arrays.items()})
            tol = _tolerance(case["float32"])
            for name, answer in case["float32"].items():
                v = compare(name, answer, theirs[name], tol[name])
                assert v.ok, (case["id"], name, v.max_abs)
            checked += 1
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)
    assert checked == 345


# --------------------------------------------------------------------------- the report's formats

def test_the_report_formats_state_every_verdict_exactly(golden, tmp_path):
    """Table, summary, JSON and JUnit of one pass, one failure, one missing file, one skip."""
    import xml.etree.ElementTree as ET
    from stnref.reference._report import CaseResult, Report
    results = tmp_path / "results"
    results.mkdir()
    good, bad = load(golden / "grid_sample-2d-bilinear-zeros-noac.npz"), load(golden / "grid_sample-2d-bilinear-zeros-ac.npz")
    np.savez(results / "grid_sample-2d-bilinear-zeros-noac.npz", V=good["V"])
    np.savez(results / "grid_sample-2d-bilinear-zeros-ac.npz", V=bad["V"] + 1)
    only = ["grid_sample-2d-bilinear-zeros-*", "grid_sample-2d-bilinear-border-noac", "affine_grid-2d-ac"]
    report = run_check(golden, results, only=only, outputs=["V"])
    verdicts = {c.id: c for c in report.cases}
    assert [c.verdict for c in report.cases] == ["skip", "pass", "fail", "fail"]
    missing = verdicts["grid_sample-2d-bilinear-border-noac"]
    assert missing.max_abs == missing.max_rel == 0 and missing.failing == missing.elements == 0
    assert report.summary() == ("1/3 cases passed, 1 skipped (none of --outputs V), 854 of 858 not selected "
                                "(reference version 3)")
    skip_row = next(line for line in report.table().splitlines() if line.startswith("affine_grid-2d-ac"))
    assert "SKIP" in skip_row and skip_row.split()[3:5] == ["-", "-"]
    data = report.json_bytes().decode()
    parsed = json.loads(data, object_pairs_hook=lambda pairs: [k for k, _ in pairs] and dict(pairs))
    assert data.endswith("}\n") and data.startswith('{\n "cases": [\n  {') and parsed["ok"] is False
    worst = next(c for c in json.loads(data)["cases"] if c["id"] == "grid_sample-2d-bilinear-zeros-ac")
    index = tuple(worst["arrays"][0]["worst"]["index"])
    assert worst["arrays"][0]["worst"]["where"] == verdicts["grid_sample-2d-bilinear-zeros-ac"].where("V", index)
    assert worst["arrays"][0]["worst"]["where"].startswith("grid point [")
    xml = report.junit_bytes()
    assert xml.startswith(b"<?xml version='1.0' encoding='utf-8'?>\n<testsuites")
    suite = ET.fromstring(xml)
    assert len(suite.findall(".//failure")) == 2 and len(suite.findall(".//skipped")) == 1
    for length, message in ((500, "y" * 500), (501, "y" * 500 + "... (501 characters)")):
        long = Report("g", "r", 3, 1, [CaseResult("x", "grid_sample", "general", "fail", "float64", {},
                                                  notes=["y" * length])])
        assert ET.fromstring(long.junit_bytes()).find(".//failure").get("message") == message
    empty = Report("g", "r", 3, 1, [CaseResult("x", "grid_sample", "general", "skip", "float64", {})])
    assert not empty.ok and Report("g", "r", 3, 1, []).ok is False
