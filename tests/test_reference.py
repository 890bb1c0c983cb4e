"""Golden-vector reference: reproducible export, self-check, live agreement, failure reports."""

import io
import json
import math
import os
import re
import shutil
import tracemalloc
import zipfile

import numpy as np
import pytest
from examples import load_example

from stnref import reference
from stnref.app import cli
from stnref.reference import check, compute_outputs, export
from stnref.reference import golden as golden_module
from stnref.reference.golden import MODES, PADDINGS, RULES, SAMPLER_OPS, _compare

SAMPLER_COMBOS = {(k, m, p, ac) for k in (2, 3) for m in MODES for p in PADDINGS
                  for ac in (False, True) if not (m == "bicubic" and k == 3)}


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    directory = tmp_path_factory.mktemp("golden")
    export(directory)
    return directory


@pytest.fixture(scope="module")
def manifest(golden):
    with open(golden / "manifest.json", encoding="utf-8") as f:
        return json.load(f)


def _load(path):
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def _results_copy(golden, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(golden, results)
    os.remove(results / "manifest.json")
    return results


def _run_check(golden, results):
    buf = io.StringIO()
    ok = check(golden, results, out=buf)
    lines = {line.split()[0]: line for line in buf.getvalue().splitlines()[1:-1]}
    return ok, lines, buf.getvalue()


def test_export_is_byte_identical(golden, tmp_path):
    again = tmp_path / "again"
    export(again)
    names = sorted(os.listdir(golden))
    assert names == sorted(os.listdir(again))
    assert not [n for n in names if n.endswith(".tmp")]
    for name in names:
        assert (golden / name).read_bytes() == (again / name).read_bytes(), name


def test_check_of_a_copy_of_golden_passes(golden, manifest, tmp_path):
    ok, lines, text = _run_check(golden, _results_copy(golden, tmp_path))
    assert ok, text
    assert set(lines) == {c["id"] for c in manifest["cases"]}
    assert all(" PASS " in line for line in lines.values())


def test_golden_files_agree_with_live_code(golden, manifest):
    for case in manifest["cases"]:
        arrays = _load(golden / case["file"])
        live = compute_outputs(case["op"], case["options"],
                               {n: arrays[n] for n in (*case["inputs"], *case["cotangents"])})
        assert sorted(live) == sorted(case["outputs"]), case["id"]
        for name, value in live.items():
            np.testing.assert_array_equal(value, arrays[name], err_msg=f"{case['id']}: {name}")


def test_manifest_schema_and_coverage(golden, manifest):
    assert manifest["format"] == "stnref-golden"
    assert manifest["version"] == reference.REFERENCE_VERSION
    ids = [c["id"] for c in manifest["cases"]]
    assert len(ids) == len(set(ids))
    keys = {"id", "file", "op", "family", "rule", "options", "dtype", "seed", "finite", "inputs",
            "cotangents", "outputs", "tolerance"}
    seen = {op: set() for op in SAMPLER_OPS}
    for case in manifest["cases"]:
        assert set(case) == keys, case["id"]
        assert case["file"] == case["id"] + ".npz"
        assert (case["rule"] is None) == (case["family"] == "general")
        assert case["rule"] == RULES[case["family"]]
        assert set(case["tolerance"]) == set(case["outputs"])
        arrays = _load(golden / case["file"])
        roles = {**case["inputs"], **case["cotangents"], **case["outputs"]}
        assert set(arrays) == set(roles) | {"__metadata__"}, case["id"]
        for name, desc in roles.items():
            assert list(arrays[name].shape) == desc["shape"] and arrays[name].dtype.name == desc["dtype"]
        assert case["finite"] == all(np.isfinite(arrays[n]).all() for n in case["inputs"])
        if case["op"] in seen and case["family"] == "general":
            o = case["options"]
            k = arrays["grid"].shape[-1]
            seen[case["op"]].add((k, o["mode"], o["padding_mode"], o["align_corners"]))
    for op, combos in seen.items():
        assert combos == SAMPLER_COMBOS, op
    assert {c["family"] for c in manifest["cases"]} == set(RULES)
    assert {c["op"] for c in manifest["cases"]} >= {"affine_grid", "attention_grid",
                                                    "projective_grid", "tps_grid"}
    total = sum(os.path.getsize(golden / n) for n in os.listdir(golden))
    assert total < 5e6


def test_edge_cases_pin_what_they_claim(golden, manifest):
    by_id = {c["id"]: c for c in manifest["cases"]}
    ties = _load(golden / by_id["grid_sample-nearest-ties-2d-nearest-zeros-noac"]["file"])
    ix = ((ties["grid"][..., 0] + 1) * 8 - 1) / 2            # W = 8: exact half-integers
    assert np.all(ix % 1 == 0.5)
    nonfinite = _load(golden / by_id["grid_sample-non-finite-2d-bilinear-border-noac"]["file"])
    bad = ~np.isfinite(nonfinite["grid"]).all(axis=-1)
    assert bad.any() and np.isnan(nonfinite["V"].transpose(0, 2, 3, 1)[bad]).all()
    assert np.isfinite(nonfinite["dU"]).all()
    knots = _load(golden / by_id["grid_sample-integer-knots-2d-bilinear-zeros-ac"]["file"])
    iy = (knots["grid"][..., 1] + 1) / 2 * (5 - 1)          # H = 5 with align_corners: integers
    assert np.all(iy % 1 == 0)
    horizon = _load(golden / by_id["projective_grid-projective-horizon-2d-noac"]["file"])
    assert (horizon["grid"] == 1e6).any() and (np.abs(horizon["grid"]) < 1e6).any()


def test_perturbed_result_fails_naming_the_case_and_rule(golden, tmp_path):
    results = _results_copy(golden, tmp_path)
    target = "grid_sample-integer-knots-2d-bilinear-border-noac"
    arrays = _load(results / f"{target}.npz")
    arrays["dgrid"] = arrays["dgrid"].copy()
    arrays["dgrid"][0, 1, 2, 0] += 1e-6
    np.savez(results / f"{target}.npz", **arrays)
    ok, lines, _ = _run_check(golden, results)
    assert not ok
    assert " FAIL " in lines[target] and "dgrid" in lines[target]
    assert "right-sided derivative" in lines[target]
    assert "(0, 1, 2, 0)" in lines[target]
    assert sum(" FAIL " in line for line in lines.values()) == 1


def test_missing_and_malformed_results_fail(golden, tmp_path):
    results = _results_copy(golden, tmp_path)
    os.remove(results / "tps_grid-2d-ac.npz")
    arrays = _load(results / "grid_sample-3d-bilinear-zeros-noac.npz")
    del arrays["dU"]
    np.savez(results / "grid_sample-3d-bilinear-zeros-noac.npz", **arrays)
    nan_case = "grid_sample-non-finite-2d-bicubic-zeros-noac"
    arrays = _load(results / f"{nan_case}.npz")
    arrays["V"] = np.nan_to_num(arrays["V"])                   # NaN -> 0: a silent pixel
    np.savez(results / f"{nan_case}.npz", **arrays)
    with open(results / "attention_grid-2d-ac.npz", "wb") as f:  # a pickle is never loaded
        np.save(f, np.array([object()], dtype=object), allow_pickle=True)
    with open(results / "attention_grid-2d-noac.npz", "wb") as f:  # an .npy, not an .npz
        np.save(f, np.zeros(3))
    shape_case = "affine_grid-2d-noac"
    arrays = _load(results / f"{shape_case}.npz")
    arrays["grid"] = arrays["grid"][:, :1]
    np.savez(results / f"{shape_case}.npz", **arrays)
    ok, lines, _ = _run_check(golden, results)
    assert not ok
    assert "missing file tps_grid-2d-ac.npz" in lines["tps_grid-2d-ac"]
    assert "missing array 'dU'" in lines["grid_sample-3d-bilinear-zeros-noac"]
    assert "NaN positions differ" in lines[nan_case] and "NaN/inf coordinate" in lines[nan_case]
    assert "unreadable" in lines["attention_grid-2d-ac"]
    assert "not an .npz archive" in lines["attention_grid-2d-noac"]
    assert "shape" in lines[shape_case] and "general position" in lines[shape_case]
    assert sum(" FAIL " in line for line in lines.values()) == 6


def test_check_without_manifest_and_bad_versions(tmp_path):
    with pytest.raises(ValueError, match=r"check\(\): cannot read the golden manifest"):
        check(tmp_path, tmp_path, out=io.StringIO())
    with pytest.raises(ValueError, match=r"export\(\): expected version in"):
        export(tmp_path, version=99)
    with pytest.raises(TypeError, match="version"):
        export(tmp_path, version="1")


def test_adapter_results_pass_the_check(golden, tmp_path):
    # with torch installed this is a parity test of the whole golden set against PyTorch
    adapter = load_example("reference_adapter")
    used = adapter.run(golden, tmp_path / "results", "torch", log=io.StringIO())
    ok, _, text = _run_check(golden, tmp_path / "results")
    assert ok, text
    assert sum(used.values()) == len(os.listdir(golden)) - 1


# --------------------------------------------------------------------------- fuzzer regressions

_SAMPLER_OPTIONS = {"mode": "bilinear", "padding_mode": "zeros", "align_corners": False}


@pytest.mark.parametrize("op, options, arrays, exc, match", [
    ("grid_sample", _SAMPLER_OPTIONS, {"U": np.zeros((1, 1, 2, 2)), "grid": np.zeros((1, 1, 1, 2))},
     ValueError, r"compute_outputs\(\): op 'grid_sample' needs arrays 'dV'"),
    ("grid_sample_jvp", _SAMPLER_OPTIONS, {}, ValueError, r"needs arrays 'U', 'grid', 'tU', 'tgrid'"),
    ("grid_sample", {"mode": "bilinear"}, {}, ValueError,
     r"op 'grid_sample' needs options 'padding_mode', 'align_corners'"),
    ("tps_grid", {"align_corners": False}, {}, ValueError, r"needs options 'size'"),
    ("tps_grid", {"size": (1, 1, 2, 2), "align_corners": False},
     {"theta": np.zeros((1, 16, 2)), "dgrid": np.zeros((1, 2, 2, 2))}, ValueError,
     r"needs arrays 'control_points'"),
    ("nope", {}, {}, ValueError, r"compute_outputs\(\): expected op to be one of"),
    (None, {}, {}, ValueError, r"expected op to be one of"),
    ("affine_grid", 3, {}, TypeError, r"expected options to be a dict, got int"),
    ("affine_grid", {"size": (1, 1, 2, 2), "align_corners": False}, None, TypeError,
     r"expected arrays to be a dict, got NoneType"),
])
def test_compute_outputs_names_what_is_missing(op, options, arrays, exc, match):
    """Missing arrays and options were KeyErrors (and an unknown op fell through to options['size'])."""
    with pytest.raises(exc, match=match):
        compute_outputs(op, options, arrays)


def test_compute_outputs_size_from_json_list():
    """A manifest's size comes back from JSON as a list: accepted as the tuple it was."""
    theta = np.eye(2, 3)[None]
    dgrid = np.ones((1, 2, 3, 2))
    as_list = compute_outputs("affine_grid", {"size": [1, 1, 2, 3], "align_corners": True},
                              {"theta": theta, "dgrid": dgrid})
    as_tuple = compute_outputs("affine_grid", {"size": (1, 1, 2, 3), "align_corners": True},
                               {"theta": theta, "dgrid": dgrid})
    for key in ("grid", "dtheta"):
        np.testing.assert_array_equal(as_list[key], as_tuple[key])


# --------------------------------------------------------------------------- audit regressions

def _npy_header(shape, descr="<f8"):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _write_npz(path, members, compression=zipfile.ZIP_STORED):
    """An .npz whose members are raw bytes: name -> header + data, as a writer may lie."""
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, raw in members.items():
            zf.writestr(f"{name}.npy", raw)


def _write_deflated_zeros(path, name, shape):
    """An honest .npz member of float64 zeros of ``shape``, deflated ~1000:1, written in chunks."""
    nbytes, chunk = math.prod(shape) * 8, bytes(1 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf, \
            zf.open(f"{name}.npy", "w", force_zip64=True) as member:
        member.write(_npy_header(shape))
        for start in range(0, nbytes, len(chunk)):
            member.write(chunk[:nbytes - start])


def test_result_headers_are_checked_before_any_array_is_read(golden, tmp_path):
    """A header claiming 10^12 elements was a MemoryError traceback; a 128 MB member deflated to
    about 130 kB of the wrong shape was read whole before the shape was compared."""
    results = _results_copy(golden, tmp_path)
    lying, huge, bare, ints = ("affine_grid-2d-noac", "grid_sample-2d-bilinear-zeros-noac",
                               "attention_grid-2d-noac", "tps_grid-2d-noac")
    _write_npz(results / f"{lying}.npz", {"grid": _npy_header((10**6, 10**6))})
    _write_deflated_zeros(results / f"{huge}.npz", "V", (4096, 4096))
    assert os.path.getsize(results / f"{huge}.npz") < 1e6
    with open(results / f"{bare}.npz", "wb") as f:  # a bare .npy, which numpy.load reads whole
        f.write(_npy_header((10**6, 10**6)))
    dtheta = _load(golden / f"{ints}.npz")["dtheta"]
    _write_npz(results / f"{ints}.npz", {"grid": _npy_header((1,)) + bytes(8),
                                         "dtheta": _npy_header(dtheta.shape, "<i8") + bytes(dtheta.nbytes)})
    tracemalloc.start()
    try:
        ok, lines, _ = _run_check(golden, results)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not ok and peak < 32e6, peak
    assert "header claims shape (1000000, 1000000) of float64" in lines[lying]
    assert "V: header claims shape (4096, 4096), expected (2, 2, 3, 4)" in lines[huge]
    assert "not an .npz archive" in lines[bare]
    assert "dtheta: header claims dtype int64, expected a float array" in lines[ints]
    assert "grid: header claims shape (1,), expected (2, 3, 4, 2)" in lines[ints]
    assert sum(" FAIL " in line for line in lines.values()) == 4


def test_golden_files_are_read_through_the_same_checks(golden, tmp_path):
    golden_copy = _results_copy(golden, tmp_path)
    shutil.copy(golden / "manifest.json", golden_copy)
    _write_npz(golden_copy / "affine_grid-2d-ac.npz", {"grid": _npy_header((10**6, 10**6)),
                                                      "dtheta": _npy_header((2,)) + bytes(16)})
    ok, lines, _ = _run_check(golden_copy, golden)
    assert not ok and sum(" FAIL " in line for line in lines.values()) == 1
    assert "golden affine_grid-2d-ac.npz: unreadable:" in lines["affine_grid-2d-ac"]
    assert "header claims shape (1000000, 1000000)" in lines["affine_grid-2d-ac"]


def _golden_with_manifest(golden, directory, edit):
    """``directory``: a copy of the first two golden cases whose manifest ``edit(manifest)`` changed."""
    directory.mkdir()
    with open(golden / "manifest.json", encoding="utf-8") as f:
        manifest = json.load(f)
    manifest["cases"] = manifest["cases"][:2]
    for case in manifest["cases"]:
        shutil.copy(golden / case["file"], directory)
    manifest = edit(manifest)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def _set(case_key, value, index=0):
    def edit(manifest):
        case = manifest["cases"][index]
        if value is _DELETE:
            del case[case_key]
        else:
            case[case_key] = value
        return manifest
    return edit


_DELETE = object()


@pytest.mark.parametrize("edit, message", [
    (lambda m: {**m, "cases": []}, r"expected 'cases' to be a non-empty list of cases, got \[\]"),
    (lambda m: {**m, "cases": {"a": 1}}, r"expected 'cases' to be a non-empty list of cases, got \{'a': 1\}"),
    (lambda m: {"version": 1}, r"expected 'cases' to be a non-empty list of cases, got None"),
    (lambda m: m["cases"], r"expected a JSON object, got list"),
    (lambda m: {**m, "cases": [1]}, r"case 0: expected an object, got int"),
    (_set("id", _DELETE, 1), r"case 1: expected 'id' to be a non-empty string, got None"),
    (_set("file", 7), r"case 0: expected 'file' to be a non-empty string, got 7"),
    (_set("file", "../elsewhere.npz"), r"case 0: expected 'file' to be a file name without a directory, got '../elsewhere.npz'"),
    (_set("outputs", {}), r"case 0: expected 'outputs' to be a non-empty object of output arrays, got \{\}"),
    (_set("outputs", _DELETE), r"case 0: expected 'outputs' to be a non-empty object of output arrays, got None"),
    (_set("tolerance", _DELETE), r"case 0: expected 'tolerance' to be an object .*, got None"),
    (_set("tolerance", {}), r"case 0: tolerance of output 'dtheta': expected a tolerance .*, got NoneType"),
    (_set("tolerance", {"dtheta": {"atol": -1, "rtol": 0}, "grid": {"atol": 0, "rtol": 0}}),
     r"case 0: tolerance of output 'dtheta': expected atol to be a finite number >= 0, got -1"),
    (_set("tolerance", {"dtheta": {"atol": 0}, "grid": {"atol": 0, "rtol": 0}}),
     r"case 0: tolerance of output 'dtheta': expected rtol to be a finite number >= 0, got None"),
    (_set("tolerance", {"dtheta": {"atol": 0, "rtol": float("nan")}, "grid": {"atol": 0, "rtol": 0}}),
     r"case 0: .* expected rtol to be a finite number >= 0, got nan"),
    (_set("tolerance", {"dtheta": {"atol": "1e-3", "rtol": 0}, "grid": {"atol": 0, "rtol": 0}}),
     r"case 0: .* expected atol to be a finite number >= 0, got '1e-3'"),
    (_set("tolerance", {"dtheta": {"atol": True, "rtol": 0}, "grid": {"atol": 0, "rtol": 0}}),
     r"case 0: .* expected atol to be a finite number >= 0, got True"),
    (_set("tolerance", {"dtheta": {"atol": 10**400, "rtol": 0}, "grid": {"atol": 0, "rtol": 0}}),
     r"case 0: .* expected atol to be a finite number >= 0, got 1000"),
], ids=["empty", "dict", "no-cases", "list", "case-not-object", "no-id", "file-int", "file-path",
        "no-outputs", "outputs-missing", "no-tolerance", "tolerance-missing-output", "atol-negative",
        "rtol-missing", "rtol-nan", "atol-string", "atol-bool", "atol-huge-int"])
def test_manifest_is_validated_up_front(golden, tmp_path, edit, message):
    """Empty cases passed 0/0, outputs {} passed, a missing id or tolerance was a KeyError, a dict
    of cases a TypeError: each is now one ValueError naming the manifest and the problem."""
    directory = _golden_with_manifest(golden, tmp_path / "edited", edit)
    manifest = str(directory / "manifest.json")
    with pytest.raises(ValueError, match=rf"^check\(\): golden manifest {re.escape(repr(manifest))}: {message}"):
        check(directory, golden, out=io.StringIO())


def test_zero_tolerances_demand_exact_agreement(golden, tmp_path):
    """atol = rtol = 0 was a ZeroDivisionError (atol / rtol); it is exact agreement, and rtol = 0
    with atol > 0 a purely absolute rule."""
    def tolerances(atol, rtol):
        def edit(manifest):
            for case in manifest["cases"]:
                case["tolerance"] = {n: {"atol": atol, "rtol": rtol} for n in case["outputs"]}
            return manifest
        return edit

    results = _results_copy(golden, tmp_path)
    target = "affine_grid-2d-noac"
    arrays = _load(results / f"{target}.npz")
    arrays["grid"] = arrays["grid"].copy()
    arrays["grid"][0, 0, 0, 0] = np.nextafter(arrays["grid"][0, 0, 0, 0], 2.0)
    exact = _golden_with_manifest(golden, tmp_path / "exact", tolerances(0, 0))
    ok, lines, _ = _run_check(exact, golden)
    assert ok and all(" PASS " in line for line in lines.values())
    np.savez(results / f"{target}.npz", **arrays)
    ok, lines, _ = _run_check(exact, results)
    assert not ok and " FAIL " in lines[target] and "grid: off by" in lines[target]
    assert len(lines) == 2 and sum(" FAIL " in line for line in lines.values()) == 1
    ok, lines, _ = _run_check(_golden_with_manifest(golden, tmp_path / "abs", tolerances(1e-12, 0)),
                              results)
    assert ok, lines


def test_an_infinite_golden_value_is_matched_exactly():
    """With golden inf the bound atol + rtol * |golden| was inf, so any finite result passed."""
    tol = {"atol": 1e-10, "rtol": 1e-10}
    golden = np.array([1.0, np.inf, -np.inf])
    assert _compare(golden, golden.copy(), tol)[0]
    ok, max_abs, _, why = _compare(golden, np.array([1.0, 5.0, -np.inf]), tol)
    assert not ok and max_abs == np.inf and "at (1,) (golden inf, result 5)" in why
    assert not _compare(golden, -golden, {"atol": 0, "rtol": 0})[0]


def test_results_that_are_a_file_are_not_a_directory(golden, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(ValueError, match=r"check\(\): results directory .*afile' is not a directory"):
        check(golden, afile, out=io.StringIO())
    with pytest.raises(ValueError, match=r"results directory .*nowhere' does not exist"):
        check(golden, tmp_path / "nowhere", out=io.StringIO())


def test_results_that_are_the_golden_directory_are_refused(golden, tmp_path):
    """Checking the golden files against themselves passes everything and proves nothing."""
    (tmp_path / "link").symlink_to(golden)
    for results in (golden, tmp_path / "link", golden / ".." / golden.name):
        with pytest.raises(ValueError, match=r"check\(\): results directory .*: the results "
                                             r"directory is the golden directory"):
            check(golden, results, out=io.StringIO())


def _golden_whose_manifest_is(golden, directory, make):
    """``directory``: a copy of the golden files whose manifest ``make(path)`` created."""
    shutil.copytree(golden, directory)
    os.remove(directory / "manifest.json")
    make(directory / "manifest.json")
    return directory


def _sparse(size):
    def make(path):
        with open(path, "wb") as f:
            f.truncate(size)
    return make


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
@pytest.mark.parametrize("make, message", [
    (lambda path: path.symlink_to("/dev/null"), "expected a regular file, got a character device"),
    (_sparse(golden_module.MANIFEST_LIMIT + 1),
     f"expected at most {golden_module.MANIFEST_LIMIT} bytes, got {golden_module.MANIFEST_LIMIT + 1} bytes"),
], ids=["device", "too-large"])
def test_a_manifest_that_is_not_a_regular_file_or_too_large_is_refused_unread(golden, tmp_path,
                                                                               capsys, make, message):
    """A symlink to /dev/zero was read forever (MemoryError), a FIFO blocked: refused from a stat."""
    directory = _golden_whose_manifest_is(golden, tmp_path / "odd", make)
    manifest = str(directory / "manifest.json")
    with pytest.raises(ValueError, match=rf"^check\(\): golden manifest {re.escape(repr(manifest))}: "
                                         rf"{message}$"):
        check(directory, golden, out=io.StringIO())
    assert cli.main(["reference", "check", str(directory), str(golden)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stnref: error: check(): golden manifest") and err.count("\n") == 1, err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_a_manifest_that_is_a_fifo_is_refused_without_blocking(golden, tmp_path):
    directory = _golden_whose_manifest_is(golden, tmp_path / "fifo", os.mkfifo)
    with pytest.raises(ValueError, match=r"golden manifest .*: expected a regular file, got a FIFO$"):
        check(directory, golden, out=io.StringIO())


def test_cli_check_errors_are_one_line(golden, tmp_path, capsys):
    directory = _golden_with_manifest(golden, tmp_path / "edited", _set("tolerance", _DELETE))
    for args in ([directory, golden], [golden, directory / "manifest.json"]):
        capsys.readouterr()
        assert cli.main(["reference", "check", *map(str, args)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("stnref: error: check(): ") and err.count("\n") == 1, err
    results = _results_copy(golden, tmp_path)
    _write_npz(results / "affine_grid-2d-noac.npz", {"grid": _npy_header((10**6, 10**6))})
    assert cli.main(["reference", "check", str(golden), str(results)]) == 1
    out, err = capsys.readouterr()
    assert err == "" and "header claims shape (1000000, 1000000)" in out
