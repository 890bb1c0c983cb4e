"""Golden-vector reference: reproducible export, self-check, live agreement, failure reports."""

import io
import json
import os
import shutil

import numpy as np
import pytest
from examples import load_example

from stnref import reference
from stnref.reference import check, compute_outputs, export
from stnref.reference.golden import MODES, PADDINGS, RULES, SAMPLER_OPS

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


def test_check_of_golden_against_itself_passes(golden, manifest):
    ok, lines, text = _run_check(golden, golden)
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
