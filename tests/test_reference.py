"""Golden vectors: reproducible export, the layout, the coverage rule, versions, the manifest's
bounds, the CLI.  The checker's judgement is tested in tests/test_reference_check.py."""

import ast
import hashlib
import io
import json
import math
import os
import re
import shutil
import struct
import tracemalloc
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest
from examples import load_example
from golden_helpers import golden, load, manifest, read_manifest, results_copy, run  # noqa: F401

from stnref import reference
from stnref.app import cli
from stnref.reference import check, compute_outputs, export, load_cases, run_check
from stnref.reference import golden as golden_module
from stnref.reference._cases import COVERAGE, HUGE_MAGNITUDES, RULES, SAMPLER_OPS, Setting, sampler_settings
from stnref.reference._files import MANIFEST_DEPTH, MANIFEST_LIMIT
from stnref.sampler_settings import combinations
from stnref.reference._judge import _nearest_model, Context, pixel_coordinates

# sha256 of every case's id and input arrays, per version: earlier versions are frozen
FROZEN_INPUTS = {1: "9752050ccbef8a5d926367ea348dc9a20ee0eb28d30c98704bab5bec711113ee",
                 2: "946380fc2517138250ac6cac589d821ba647576e43f5f155432aa42b502864c8"}


@pytest.fixture(scope="module")
def golden_v1(tmp_path_factory):
    directory = tmp_path_factory.mktemp("golden_v1")
    export(directory, version=1)
    return directory


def _setting(case):
    o = case["options"]
    return Setting(len(case["inputs"]["grid"]["shape"]) - 2, o["mode"], o["padding_mode"], o["align_corners"],
                   o.get("fill_value", 0.0), o.get("cubic_a", -0.75))


# --------------------------------------------------------------------------- export and versions

def test_export_is_byte_identical(golden, tmp_path):
    again = tmp_path / "again"
    export(again)
    names = sorted(os.listdir(golden))
    assert names == sorted(os.listdir(again))
    assert not [n for n in names if n.endswith(".tmp")]
    for name in names:
        assert (golden / name).read_bytes() == (again / name).read_bytes(), name


@pytest.mark.parametrize("version", sorted(FROZEN_INPUTS))
def test_earlier_versions_are_frozen(version):
    digest = hashlib.sha256()
    for case in load_cases(version):
        digest.update(case["id"].encode())
        for role in ("inputs", "cotangents"):
            for name in sorted(case[role]):
                x = np.ascontiguousarray(case[role][name])
                digest.update(name.encode() + x.dtype.str.encode() + str(x.shape).encode() + x.tobytes())
    assert digest.hexdigest() == FROZEN_INPUTS[version]


def test_version_2_is_still_checkable(tmp_path):
    export(tmp_path / "v2", version=2)
    m = read_manifest(tmp_path / "v2")
    assert m["version"] == 2 and len(m["cases"]) == 383 and "pytorch" not in m["cases"][0]
    ok, rows, text = run(tmp_path / "v2", results_copy(tmp_path / "v2", tmp_path))
    assert ok and len(rows) == 383, text


def test_version_1_is_still_checkable(golden_v1, tmp_path):
    m = read_manifest(golden_v1)
    assert m["version"] == 1 and len(m["cases"]) == 206 and "float32" not in m["cases"][0]
    assert load(golden_v1 / m["cases"][0]["file"])["__metadata__"].dtype.kind == "U"
    results = results_copy(golden_v1, tmp_path)
    ok, rows, text = run(golden_v1, results)
    assert ok and len(rows) == 206, text
    assert run(golden_v1, results, outputs=["V"], only=["grid_sample-*"])[0]
    with pytest.raises(ValueError, match=r"^check\(\): dtype 'float32': the golden set \(reference "
                                         r"version 1\) holds no float32 answers for 'affine_grid-2d-noac' "
                                         r"and 203 more cases; export version 2 or later$"):
        run(golden_v1, results, dtype="float32")


def test_check_of_a_copy_of_golden_passes(golden, manifest, tmp_path):
    ok, rows, text = run(golden, results_copy(golden, tmp_path))
    assert ok, text
    assert set(rows) == {c["id"] for c in manifest["cases"]}
    assert all(" PASS " in row for row in rows.values())


def test_golden_files_agree_with_live_code(golden, manifest):
    for case in manifest["cases"]:
        arrays = load(golden / case["file"])
        inputs = {n: arrays[n] for n in (*case["inputs"], *case["cotangents"])}
        live = compute_outputs(case["op"], case["options"], inputs)
        single = compute_outputs(case["op"], case["options"],
                                 {n: x.astype(np.float32) for n, x in inputs.items()})
        assert sorted(live) == sorted(case["outputs"]), case["id"]
        for name, value in live.items():
            np.testing.assert_array_equal(value, arrays[name], err_msg=f"{case['id']}: {name}")
            member = case["float32"][name]["member"]
            assert arrays[member].dtype == np.float32
            np.testing.assert_array_equal(single[name], arrays[member], err_msg=f"{case['id']}: {member}")
        for name, x in inputs.items():   # float32 kernels read exactly the same numbers
            np.testing.assert_array_equal(x.astype(np.float32).astype(x.dtype), x)


@pytest.mark.parametrize("key, patterns", [("only", [""]), ("only", [3]), ("exclude", ["*-2d-*", None])])
def test_patterns_must_be_non_empty_strings(golden, tmp_path, key, patterns):
    with pytest.raises(ValueError, match=rf"^check\(\): expected {key} patterns to be non-empty strings, got "):
        run(golden, tmp_path, **{key: patterns})


def test_a_pattern_matching_nothing_shows_an_id(golden, manifest, tmp_path):
    last = manifest["cases"][-1]["id"]
    with pytest.raises(ValueError, match=rf"^check\(\): exclude pattern 'x\*' matches no case id "
                                         rf"\(ids look like {re.escape(repr(last))}; \* \? \[\.\.\.\] as in a shell\)$"):
        run(golden, tmp_path, exclude=["x*"])


def test_a_selection_given_as_a_string_is_refused(golden, tmp_path):
    for key, value in (("outputs", "dU"), ("only", "grid*"), ("exclude", "*")):
        with pytest.raises(TypeError, match=rf"^check\(\): expected {key} to be a list of strings, "
                                            rf"got the string '.*' \(write \['.*'\]\)$"):
            run(golden, tmp_path, **{key: value})


def test_check_without_manifest_and_bad_versions(tmp_path):
    with pytest.raises(ValueError, match=r"^check\(\): cannot read the golden manifest '.*manifest.json': "
                                         r"No such file or directory$"):
        check(tmp_path, tmp_path, out=io.StringIO())
    with pytest.raises(ValueError, match=r"export\(\): expected version in \(1, 2, 3\), got 99"):
        export(tmp_path, version=99)
    with pytest.raises(TypeError, match="version"):
        export(tmp_path, version="1")


def test_adapter_results_pass_the_check(golden, tmp_path):
    # with torch installed this is a parity test of the whole golden set against PyTorch
    adapter = load_example("reference_adapter")
    used = adapter.run(golden, tmp_path / "results", "torch", log=io.StringIO())
    ok, _, text = run(golden, tmp_path / "results")
    assert ok, text
    assert sum(used.values()) == len(os.listdir(golden)) - 1


# --------------------------------------------------------------------------- layout and manifest

def _npy_without_numpy(raw):
    """(descr, fortran_order, shape, data) of an .npy v1.0 member, parsed as a C reader would."""
    assert raw[:8] == b"\x93NUMPY\x01\x00", raw[:8]
    (length,) = struct.unpack("<H", raw[8:10])
    header = ast.literal_eval(raw[10:10 + length].decode("latin1"))
    return header["descr"], header["fortran_order"], header["shape"], raw[10 + length:]


def test_golden_files_follow_the_layout_without_numpy(golden, manifest):
    """Every member: stored, dated 1980, .npy v1.0, little-endian, C order; the metadata is
    UTF-8 JSON bytes; read here with zipfile, struct and the JSON parser only."""
    sizes = {"<f8": 8, "<f4": 4, "|u1": 1}
    for case in manifest["cases"][::7]:
        with zipfile.ZipFile(golden / case["file"]) as zf:
            infos = zf.infolist()
            assert [i.filename for i in infos] == sorted(i.filename for i in infos)
            members = {}
            for info in infos:
                assert info.compress_type == zipfile.ZIP_STORED and info.date_time == (1980, 1, 1, 0, 0, 0)
                descr, fortran, shape, data = _npy_without_numpy(zf.read(info))
                assert descr in sizes and fortran is False, (case["id"], info.filename, descr)
                assert len(data) == math.prod(shape) * sizes[descr]
                members[info.filename[:-4]] = (descr, shape, data)
        descr, shape, data = members.pop("__metadata__")
        meta = json.loads(data.decode("utf-8"))
        assert descr == "|u1" and meta["id"] == case["id"] and meta["version"] == 3
        roles = {**case["inputs"], **case["cotangents"], **case["outputs"]}
        assert set(members) == set(roles) | {a["member"] for a in case["float32"].values()}
        for name, desc in roles.items():
            assert list(members[name][1]) == desc["shape"]
            assert members[name][0] == {"float64": "<f8", "float32": "<f4"}[desc["dtype"]]
        grid = members.get("grid")
        if grid and grid[0] == "<f8":   # the raw bytes are the values, C order, little-endian
            values = struct.unpack(f"<{len(grid[2]) // 8}d", grid[2])
            np.testing.assert_array_equal(np.array(values).reshape(grid[1]), load(golden / case["file"])["grid"])


def test_manifest_schema(golden, manifest):
    assert manifest["format"] == "stnref-golden"
    assert manifest["version"] == reference.REFERENCE_VERSION == 3
    ids = [c["id"] for c in manifest["cases"]]
    assert len(ids) == len(set(ids)) == 858
    keys = {"id", "file", "op", "family", "rule", "options", "dtype", "seed", "finite", "inputs",
            "cotangents", "outputs", "tolerance", "float32", "pytorch"}
    for case in manifest["cases"]:
        assert set(case) == keys, case["id"]
        assert case["file"] == case["id"] + ".npz" and re.fullmatch(r"[\w.+-]{1,200}", case["id"])
        assert (case["rule"] is None) == (case["family"] == "general")
        assert case["rule"] == RULES[case["family"]]
        assert set(case["tolerance"]) == set(case["outputs"]) == set(case["float32"])
        arrays = load(golden / case["file"])
        for name, tol in case["float32"].items():
            golden32 = arrays[tol["member"]]
            scale = max(1.0, float(np.abs(golden32[np.isfinite(golden32)]).max(initial=0)))
            assert tol["rtol"] == 1e-5 and tol["atol"] == pytest.approx(1e-5 * scale)
            assert tol["member"] == (name if case["dtype"] == "float32" else f"{name}.float32")
        assert case["finite"] == all(np.isfinite(arrays[n]).all() for n in case["inputs"])
    assert {c["op"] for c in manifest["cases"]} >= {"affine_grid", "attention_grid",
                                                    "projective_grid", "tps_grid"}
    assert sum(c["pytorch"] for c in manifest["cases"]) == 345 + 30    # 30 have a non-finite grid
    for case in manifest["cases"]:
        o = case["options"]
        assert ("fill_value" in o) == (o.get("padding_mode") == "constant") and o.get("fill_value", -1.25) == -1.25
        assert ("cubic_a" in o) == (o.get("mode") == "bicubic")
        if o.get("padding_mode") == "constant":   # the fill value's gradients are outputs
            assert {"dfill_value", "g_fill_value"} & set(case["outputs"]) or case["op"] == "grid_sample_jvp"
    total = sum(os.path.getsize(golden / n) for n in os.listdir(golden))
    assert total < 12e6


# --------------------------------------------------------------------------- the coverage rule

def test_every_family_covers_every_setting_it_applies_to(manifest):
    settings = set(sampler_settings())
    assert len(settings) == 80 and len(set(sampler_settings(2))) == 30
    assert {s[:3] for s in settings} == set(combinations())     # every row of the table, every rank
    covered = {}
    for case in manifest["cases"]:
        if case["op"] in SAMPLER_OPS:
            covered.setdefault((case["family"], case["op"]), set()).add(_setting(case))
    for family, (ops, applies) in COVERAGE.items():
        expected = {s for s in settings if applies(s)}
        assert expected, family
        for op in SAMPLER_OPS:
            assert covered.get((family, op), set()) == (expected if op in ops else set()), (family, op)
    assert {f for f, _ in covered} == set(COVERAGE)


def test_huge_coordinates_cover_each_axis_sign_and_overflow_limit(golden, manifest):
    huge = [c for c in manifest["cases"] if c["family"] == "huge-coordinates"]
    assert len(huge) == 60
    magnitudes = np.float32(HUGE_MAGNITUDES).astype(np.float64)
    for case in huge:
        a = load(golden / case["file"])
        grid, k = a["grid"], a["grid"].shape[-1]
        pixel = pixel_coordinates(grid, a["U"].shape[2:], case["options"]["align_corners"])
        for n in range(grid.shape[0]):
            points = grid[n].reshape(-1, k)
            for axis in range(k):
                others = np.delete(points, axis, axis=1)
                inside = np.all(np.abs(others) < 1, axis=1)
                for sign in (1, -1):
                    for m in magnitudes:
                        assert (inside & (points[:, axis] == sign * m)).any(), (case["id"], n, axis, sign, m)
        size = np.abs(pixel)
        for limit in (2.0**31, 2.0**63):   # pixel coordinates on both sides of each index limit
            assert ((size > limit / 10) & (size < limit)).any() and (size > limit).any(), case["id"]


def test_ties_reach_beyond_the_folds(golden, manifest):
    ties = [c for c in manifest["cases"] if c["family"] == "nearest-ties"]
    assert len(ties) == 20 and {c["options"]["mode"] for c in ties} == {"nearest"}
    caught = 0
    for case in ties:
        a = load(golden / case["file"])
        o = case["options"]
        spatial = a["U"].shape[2:]
        pixel = pixel_coordinates(a["grid"], spatial, o["align_corners"])
        assert np.all(pixel % 1 == 0.5), case["id"]
        for axis, size in enumerate(spatial[::-1]):
            assert pixel[..., axis].min() <= -2 * size + 0.5 and pixel[..., axis].max() >= 3 * size - 0.5
        if o["padding_mode"] == "reflection" and not o["align_corners"]:
            ctx = Context("grid_sample", o, a)
            round_first = _nearest_model(ctx, "half to even", True)
            caught += int(np.any(round_first != a["V"]))
    assert caught == 2      # both dimensions: rounding before reflecting about edges shows


def test_edge_cases_pin_what_they_claim(golden):
    ties = load(golden / "grid_sample-nearest-ties-2d-nearest-zeros-noac.npz")
    ix = ((ties["grid"][..., 0] + 1) * 8 - 1) / 2            # W = 8: exact half-integers
    assert np.all(ix % 1 == 0.5)
    nonfinite = load(golden / "grid_sample-non-finite-2d-bilinear-border-noac.npz")
    bad = ~np.isfinite(nonfinite["grid"]).all(axis=-1)
    assert bad.any() and np.isnan(nonfinite["V"].transpose(0, 2, 3, 1)[bad]).all()
    assert np.isfinite(nonfinite["dU"]).all()
    knots = load(golden / "grid_sample-integer-knots-2d-bilinear-zeros-ac.npz")
    iy = (knots["grid"][..., 1] + 1) / 2 * (5 - 1)          # H = 5 with align_corners: integers
    assert np.all(iy % 1 == 0) and set(np.unique(iy)) == set(range(-2, 7))
    horizon = load(golden / "projective_grid-projective-horizon-2d-noac.npz")
    assert (horizon["grid"] == 1e6).any() and (np.abs(horizon["grid"]) < 1e6).any()


# --------------------------------------------------------------------------- the manifest's bounds

def _golden_with_manifest(golden, directory, edit):
    """``directory``: a copy of the first two golden cases whose manifest ``edit(manifest)`` changed."""
    directory.mkdir()
    manifest = read_manifest(golden)
    manifest["cases"] = manifest["cases"][:2]
    for case in manifest["cases"]:
        shutil.copy(golden / case["file"], directory)
    manifest = edit(manifest)
    (directory / "manifest.json").write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    return directory


_DELETE = object()


def _set(case_key, value, index=0):
    def edit(manifest):
        case = manifest["cases"][index]
        if value is _DELETE:
            del case[case_key]
        else:
            case[case_key] = value
        return manifest
    return edit


def _tols(**override):
    return _set("tolerance", {"dtheta": {"atol": 0, "rtol": 0}, "grid": {"atol": 0, "rtol": 0}, **override})


@pytest.mark.parametrize("edit, message", [
    (lambda m: {**m, "cases": []}, r"expected 'cases' to be a non-empty list of cases, got a JSON list of 0 items"),
    (lambda m: {**m, "cases": {"a": 1}}, r"expected 'cases' to be .*, got a JSON object of 1 items"),
    (lambda m: {"version": 1}, r"expected 'cases' to be a non-empty list of cases, got None"),
    (lambda m: m["cases"], r"expected a JSON object, got list"),
    (lambda m: {**m, "cases": [1]}, r"case 0: expected an object, got int"),
    (_set("id", _DELETE, 1), r"case 1: expected 'id' to be a non-empty string, got None"),
    (_set("file", 7), r"case 0: expected 'file' to be a non-empty string, got 7"),
    (_set("file", "../elsewhere.npz"), r"case 0: expected 'file' to be a file name without a directory, got '../elsewhere.npz'"),
    (_set("file", "other.npz"), r"case 0: expected 'file' to be the id with '.npz', affine_grid-2d-noac.npz, got 'other.npz'"),
    (_set("id", "a b"), r"case 0: expected 'id' to be 1 to 200 letters, .*, got 'a b'"),
    (_set("id", "x" * 201), r"case 0: expected 'id' to be 1 to 200 .*, got 'xxx.*x'\.\.\. \(201 characters\)"),
    (lambda m: {**m, "cases": [m["cases"][1], m["cases"][1]]}, r"case 1: the id 'affine_grid-3d-noac' is used by an earlier case"),
    (_set("outputs", {}), r"case 0: expected 'outputs' to be a non-empty object of output arrays, got a JSON object of 0 items"),
    (_set("outputs", _DELETE), r"case 0: expected 'outputs' to be a non-empty object .*, got None"),
    (_set("outputs", {"../V": {}}), r"case 0: expected an output name to be 1 to 200 .*, got '../V'"),
    (_set("tolerance", _DELETE), r"case 0: expected 'tolerance' to be an object .*, got None"),
    (_set("tolerance", {}), r"case 0: tolerance of output 'dtheta': expected a tolerance .*, got NoneType"),
    (_tols(dtheta={"atol": -1, "rtol": 0}), r"case 0: tolerance of output 'dtheta': expected atol to be a finite number >= 0, got -1"),
    (_tols(dtheta={"atol": 0}), r"case 0: .* expected rtol to be a finite number >= 0, got None"),
    (_tols(dtheta={"atol": 0, "rtol": float("nan")}), r"case 0: .* expected rtol to be a finite number >= 0, got nan"),
    (_tols(dtheta={"atol": "1e-3", "rtol": 0}), r"case 0: .* expected atol to be a finite number >= 0, got '1e-3'"),
    (_tols(dtheta={"atol": True, "rtol": 0}), r"case 0: .* expected atol to be a finite number >= 0, got True"),
    (_tols(dtheta={"atol": 10**400, "rtol": 0}), r"case 0: .* expected atol to be a finite number >= 0, got 1000+\.\.\. \(401 characters\)"),
    (_set("rule", ["x"]), r"case 0: expected 'rule' to be a string or null, got a JSON list of 1 items"),
    (_set("op", "a\x01b"), r"case 0: expected 'op' to be 1 to 200 letters, .*, got 'a\\x01b'"),
    (_set("family", "y" * 300), r"case 0: expected 'family' to be 1 to 200 .*, got 'yyy.*'\.\.\. \(300 characters\)"),
    (_set("options", [1]), r"case 0: expected 'options' to be an object, got a JSON list of 1 items"),
    (_set("float32", {"grid": {}}), r"case 0: expected 'float32' to be an object with the outputs \['dtheta', 'grid'\]"),
    (_set("float32", {"grid": {"atol": 0, "rtol": 0, "member": "/etc/x"}, "dtheta": {}}),
     r"case 0: float32 answer of output 'dtheta': expected atol to be a finite number >= 0, got None"),
    (_set("float32", {"grid": {"atol": 0, "rtol": 0, "member": "../x"}, "dtheta": {"atol": 0, "rtol": 0, "member": "d"}}),
     r"case 0: float32 answer of output 'grid': expected float32 member of 'grid' to be 1 to 200"),
    (lambda m: "[" * (MANIFEST_DEPTH + 1) + "]" * (MANIFEST_DEPTH + 1),
     rf"nested {MANIFEST_DEPTH + 1} levels deep, expected at most {MANIFEST_DEPTH}$"),
    (lambda m: "[" * 200_000, r"nested 200000 levels deep, expected at most 32$"),
], ids=["empty", "dict", "no-cases", "list", "case-not-object", "no-id", "file-int", "file-path",
        "file-not-id", "id-space", "id-201", "id-twice", "no-outputs", "outputs-missing",
        "output-path", "no-tolerance", "tolerance-missing-output", "atol-negative", "rtol-missing",
        "rtol-nan", "atol-string", "atol-bool", "atol-huge-int", "rule-list", "op-control", "family-long",
        "options-list", "float32-outputs",
        "float32-tolerance", "float32-member", "depth-33", "depth-200000"])
def test_manifest_is_validated_up_front(golden, tmp_path, edit, message):
    """Empty cases passed 0/0, outputs {} passed, a missing id or tolerance was a KeyError, a dict
    of cases a TypeError, a deeply nested manifest a RecursionError: each is one ValueError
    naming the manifest and the problem, never echoing more than a bounded part of it."""
    directory = _golden_with_manifest(golden, tmp_path / "edited", edit)
    path = str(directory / "manifest.json")
    with pytest.raises(ValueError, match=rf"^check\(\): golden manifest {re.escape(repr(path))}: {message}") as err:
        check(directory, golden, out=io.StringIO())
    assert len(str(err.value)) < 400


def test_tolerances_are_accepted_up_to_the_largest_float(golden, tmp_path):
    """0 and the largest finite float are valid tolerances; JSON's 1e999 (inf) is not."""
    import sys
    top = sys.float_info.max
    ok_dir = _golden_with_manifest(golden, tmp_path / "ok", _tols(dtheta={"atol": top, "rtol": top}))
    assert run(ok_dir, golden)[0]
    bad = _golden_with_manifest(golden, tmp_path / "inf", lambda m: json.dumps(_tols(dtheta={"atol": top, "rtol": 0})(m))
                                .replace(repr(top), "1e999"))
    with pytest.raises(ValueError, match=r"tolerance of output 'dtheta': expected atol to be a finite number >= 0, got inf"):
        run(bad, golden)


def test_manifest_bounds_are_exact(golden, tmp_path):
    """A manifest of exactly MANIFEST_LIMIT bytes nested exactly MANIFEST_DEPTH deep is read;
    one more byte or one more level is refused unparsed."""
    def padded(extra_depth, size):
        def edit(manifest):
            text = json.dumps(manifest)
            deep = "[" * (MANIFEST_DEPTH - 1 - extra_depth) + "]" * (MANIFEST_DEPTH - 1 - extra_depth)
            text = text[:-1] + f', "deep": {deep}' + "}"
            return text + " " * (size - len(text))
        return edit

    ok_dir = _golden_with_manifest(golden, tmp_path / "ok", padded(0, MANIFEST_LIMIT))
    assert os.path.getsize(ok_dir / "manifest.json") == MANIFEST_LIMIT
    assert run(ok_dir, golden)[0]
    big = _golden_with_manifest(golden, tmp_path / "big", padded(0, MANIFEST_LIMIT + 1))
    with pytest.raises(ValueError, match=rf"expected at most {MANIFEST_LIMIT} bytes, got {MANIFEST_LIMIT + 1}"):
        run(big, golden)
    deep = _golden_with_manifest(golden, tmp_path / "deep", padded(-1, 1000))
    with pytest.raises(ValueError, match=rf"nested {MANIFEST_DEPTH + 1} levels deep"):
        run(deep, golden)


@pytest.mark.parametrize("text, message", [
    ('{"cases": [' + "9" * 5000 + "]}", r"cannot read the golden manifest .*: Exceeds the limit"),
    ("\xff\xfe", r"cannot read the golden manifest .*: 'utf-8' codec can't decode"),
    ('{"cases": [', r"cannot read the golden manifest .*: Expecting value"),
], ids=["huge-integer", "not-utf8", "truncated"])
def test_every_parse_error_is_one_line(golden, tmp_path, capsys, text, message):
    directory = tmp_path / "bad"
    directory.mkdir()
    (directory / "manifest.json").write_bytes(text.encode("latin1"))
    with pytest.raises(ValueError, match=rf"^check\(\): {message}"):
        check(directory, golden, out=io.StringIO())
    assert cli.main(["reference", "check", str(directory), str(golden)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stnref: error: check(): cannot read") and err.count("\n") == 1, err


def test_a_huge_case_id_is_refused_not_padded(golden, tmp_path, capsys):
    """A 7 MiB case id padded every row of the table to 7 MiB: refused up front, in one
    bounded line."""
    directory = _golden_with_manifest(golden, tmp_path / "long", _set("id", "x" * (7 * 2**20)))
    assert cli.main(["reference", "check", str(directory), str(golden)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and len(err) < 500 and "(7340032 characters)" in err


# --------------------------------------------------------------------------- the CLI

def test_cli_options_select_judge_and_report(golden, manifest, tmp_path, capsys):
    results = tmp_path / "results"            # a forward-only float32 kernel: <id>/V.npy
    for case in manifest["cases"]:
        if case["op"] == "grid_sample":
            (results / case["id"]).mkdir(parents=True)
            np.save(results / case["id"] / "V.npy", load(golden / case["file"])[case["float32"]["V"]["member"]])
    json_path, junit_path = tmp_path / "r.json", tmp_path / "r.xml"
    argv = ["reference", "check", str(golden), str(results), "--outputs", "V", "--only", "grid_sample-*-2d-*",
            "--only", "grid_sample-2d-*", "--exclude", "*bicubic*", "--dtype", "float32",
            "--json", str(json_path), "--junit", str(junit_path)]
    assert cli.main(argv) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    selected = [c for c in read_manifest(golden)["cases"] if c["id"].startswith("grid_sample-")
                and "-2d-" in c["id"] and "bicubic" not in c["id"]]
    assert f"{len(selected)}/{len(selected)} cases passed, {858 - len(selected)} of 858 not selected " \
           f"(reference version 3; judged with float32 answers and tolerances)" in out
    report = json.loads(json_path.read_text())
    assert report["ok"] and report["summary"] == {"cases": 858, "selected": len(selected),
                                                 "passed": len(selected), "failed": 0, "skipped": 0}
    assert [c["id"] for c in report["cases"]] == [c["id"] for c in selected]
    first = report["cases"][0]
    assert first["verdict"] == "pass" and first["dtype"] == "float32" and set(first["tolerance"]) == {"V"}
    assert first["tolerance"]["V"]["rtol"] == 1e-5 and [a["name"] for a in first["arrays"]] == ["V"]
    suite = ET.parse(junit_path).getroot()
    assert suite.get("tests") == str(len(selected)) and suite.get("failures") == "0"
    assert len(suite.findall(".//testcase")) == len(selected)


def test_cli_reports_failures_and_skips_per_case(golden, tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    np.savez(results / "affine_grid-2d-noac.npz", grid=np.zeros((2, 3, 4, 2)))
    json_path, junit_path = tmp_path / "r.json", tmp_path / "r.xml"
    argv = ["reference", "check", str(golden), str(results), "--outputs", "grid",
            "--only", "affine_grid-2d-*", "--only", "attention_grid-2d-ac", "--only", "grid_sample_jvp-2d-bilinear-zeros-noac",
            "--json", str(json_path), "--junit", str(junit_path)]
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    assert "0/3 cases passed, 1 skipped (none of --outputs grid)" in out
    verdicts = {c["id"]: c for c in json.loads(json_path.read_text())["cases"]}
    assert verdicts["grid_sample_jvp-2d-bilinear-zeros-noac"]["verdict"] == "skip"
    wrong = verdicts["affine_grid-2d-noac"]
    assert wrong["verdict"] == "fail" and wrong["failing"] > 0 and wrong["arrays"][0]["worst"]["index"]
    assert wrong["reason"].startswith("grid: ") and " elements fail; worst off by " in wrong["reason"]
    assert verdicts["affine_grid-2d-ac"]["reason"].startswith("missing file affine_grid-2d-ac.npz")
    suite = ET.parse(junit_path).getroot()
    failures = {c.get("name"): c.find("failure") for c in suite.iter("testcase")}
    assert suite.get("failures") == "3" and suite.get("skipped") == "1"
    assert "worst off by" in failures["affine_grid-2d-noac"].get("message")
    assert "0 of 24 elements" not in failures["affine_grid-2d-noac"].text


@pytest.mark.parametrize("args, message", [
    (["--outputs", "V,,dU"], r"--outputs: expected output names separated by commas, e.g. V,dU,dgrid, got 'V,,dU'"),
    (["--outputs", "Vx"], r"check\(\): expected outputs among V, dU, dfill_value, dgrid, dtheta, .*got 'Vx'"),
    (["--only", "nope*"], r"check\(\): only pattern 'nope\*' matches no case id"),
    (["--exclude", "*"], r"check\(\): only \[\] and exclude \['\*'\] leave no case to check"),
    (["--exclude", ""], r"--exclude: expected a pattern such as 'grid_sample-\*', got ''"),
    (["--dtype", "float16"], r"--dtype: invalid choice: 'float16'"),
    (["--only", "affine_grid-*", "--outputs", "V"], r"check\(\): expected outputs among dtheta, grid .*got 'V'"),
    (["--frobnicate"], r"unrecognized arguments: --frobnicate"),
    (["--json", "{tmp}"], r"--json: .* is a directory; give a file name"),
    (["--json", "{tmp}/missing/r.json"], r"--json: directory .* does not exist"),
    (["--json", "{tmp}/same", "--junit", "{tmp}/same"], r"--junit .*: the same file as --json"),
    (["--junit", "{golden}/report.xml"], r"--junit .*: a file among the golden cases or the results"),
], ids=["empty-name", "unknown-output", "no-match", "nothing-left", "empty-pattern", "dtype",
        "output-not-selected", "unknown-option", "json-dir", "json-missing-dir",
        "same-file", "into-golden"])
def test_cli_refuses_malformed_options_in_one_line(golden, tmp_path, capsys, args, message):
    results = tmp_path / "results"
    results.mkdir()
    args = [a.format(tmp=tmp_path, golden=golden) for a in args]
    assert cli.main(["reference", "check", str(golden), str(results), *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert re.search(message, err), err


# --------------------------------------------------------------------------- audit regressions

def test_result_headers_are_checked_before_any_array_is_read(golden, tmp_path):
    """A header claiming 10^12 elements was a MemoryError traceback; a 128 MB member deflated to
    about 130 kB of the wrong shape was read whole before the shape was compared."""
    from golden_helpers import npy_header
    results = results_copy(golden, tmp_path)
    lying, huge, bare, ints = ("affine_grid-2d-noac", "grid_sample-2d-bilinear-zeros-noac",
                               "attention_grid-2d-noac", "tps_grid-2d-noac")
    _write_npz(results / f"{lying}.npz", {"grid": npy_header((10**6, 10**6))})
    _write_deflated_zeros(results / f"{huge}.npz", "V", (4096, 4096))
    assert os.path.getsize(results / f"{huge}.npz") < 1e6
    with open(results / f"{bare}.npz", "wb") as f:  # a bare .npy, which numpy.load reads whole
        f.write(npy_header((10**6, 10**6)))
    dtheta = load(golden / f"{ints}.npz")["dtheta"]
    _write_npz(results / f"{ints}.npz", {"grid": npy_header((1,)) + bytes(8),
                                         "dtheta": npy_header(dtheta.shape, "<i8") + bytes(dtheta.nbytes)})
    os.makedirs(results / lying.replace("noac", "ac"))
    os.remove(results / f"{lying.replace('noac', 'ac')}.npz")
    with open(results / lying.replace("noac", "ac") / "grid.npy", "wb") as f:   # a directory form
        f.write(npy_header((10**6, 10**6)))
    tracemalloc.start()
    try:
        ok, rows, _ = run(golden, results)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not ok and peak < 64e6, peak
    assert "header claims shape (1000000, 1000000) of float64" in rows[lying]
    assert "grid.npy: header claims shape (1000000, 1000000) of float64" in rows[lying.replace("noac", "ac")]
    assert "V: header claims shape (4096, 4096), expected (2, 2, 3, 4)" in rows[huge]
    assert "not an .npz archive" in rows[bare]
    assert "dtheta: header claims dtype int64, expected a float array" in rows[ints]
    assert "grid: header claims shape (1,), expected (2, 3, 4, 2)" in rows[ints]
    assert sum(" FAIL " in row for row in rows.values()) == 5


def _write_npz(path, members, compression=zipfile.ZIP_STORED):
    """An .npz whose members are raw bytes: name -> header + data, as a writer may lie."""
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, raw in members.items():
            zf.writestr(f"{name}.npy", raw)


def _write_deflated_zeros(path, name, shape):
    """An honest .npz member of float64 zeros of ``shape``, deflated ~1000:1, written in chunks."""
    from golden_helpers import npy_header
    nbytes, chunk = math.prod(shape) * 8, bytes(1 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf, \
            zf.open(f"{name}.npy", "w", force_zip64=True) as member:
        member.write(npy_header(shape))
        for start in range(0, nbytes, len(chunk)):
            member.write(chunk[:nbytes - start])


def test_golden_files_are_read_through_the_same_checks(golden, tmp_path):
    from golden_helpers import npy_header
    golden_copy = results_copy(golden, tmp_path)
    shutil.copy(golden / "manifest.json", golden_copy)
    _write_npz(golden_copy / "affine_grid-2d-ac.npz", {"grid": npy_header((10**6, 10**6)),
                                                      "dtheta": npy_header((2,)) + bytes(16)})
    ok, rows, _ = run(golden_copy, golden)
    assert not ok and sum(" FAIL " in row for row in rows.values()) == 1
    assert "golden affine_grid-2d-ac.npz: unreadable:" in rows["affine_grid-2d-ac"]
    assert "header claims shape (1000000, 1000000)" in rows["affine_grid-2d-ac"]


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
    path = str(directory / "manifest.json")
    with pytest.raises(ValueError, match=rf"^check\(\): golden manifest {re.escape(repr(path))}: "
                                         rf"{message}$"):
        check(directory, golden, out=io.StringIO())
    assert cli.main(["reference", "check", str(directory), str(golden)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stnref: error: check(): golden manifest") and err.count("\n") == 1, err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_fifos_are_refused_without_blocking(golden, tmp_path):
    directory = _golden_whose_manifest_is(golden, tmp_path / "fifo", os.mkfifo)
    with pytest.raises(ValueError, match=r"golden manifest .*: expected a regular file, got a FIFO$"):
        check(directory, golden, out=io.StringIO())
    results = results_copy(golden, tmp_path)
    os.remove(results / "affine_grid-2d-ac.npz")
    os.mkfifo(results / "affine_grid-2d-ac.npz")
    os.remove(results / "affine_grid-2d-noac.npz")
    os.mkdir(results / "affine_grid-2d-noac")
    os.mkfifo(results / "affine_grid-2d-noac" / "grid.npy")
    ok, rows, _ = run(golden, results, only=["affine_grid-2d-*"])
    assert not ok and "affine_grid-2d-ac.npz is not a regular file" in rows["affine_grid-2d-ac"]
    assert "grid.npy is not a regular file" in rows["affine_grid-2d-noac"]


def test_cli_check_errors_are_one_line(golden, tmp_path, capsys):
    from golden_helpers import npy_header
    directory = _golden_with_manifest(golden, tmp_path / "edited", _set("tolerance", _DELETE))
    for args in ([directory, golden], [golden, directory / "manifest.json"]):
        capsys.readouterr()
        assert cli.main(["reference", "check", *map(str, args)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("stnref: error: check(): ") and err.count("\n") == 1, err
    results = results_copy(golden, tmp_path)
    _write_npz(results / "affine_grid-2d-noac.npz", {"grid": npy_header((10**6, 10**6))})
    assert cli.main(["reference", "check", str(golden), str(results)]) == 1
    out, err = capsys.readouterr()
    assert err == "" and "header claims shape (1000000, 1000000)" in out


# --------------------------------------------------------------------------- compute_outputs

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


# --------------------------------------------------------------------------- the kernel authors' page

def test_the_kernel_authors_walkthrough_runs(tmp_path):
    """Steps 1-3 of docs/kernel_authors.md section 1, as written: export, the float32 adapter,
    the forward-only check with a JUnit report; exit 0 and every selected case passes."""
    import shlex
    import subprocess
    import sys

    page = (Path(__file__).resolve().parent.parent / "docs" / "kernel_authors.md").read_text(encoding="utf-8")
    section = page.split("## 1. ", 1)[1].split("\n## 2. ", 1)[0]
    blocks = re.findall(r"^```(\w+)\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    (tmp_path / "adapter.py").write_text(next(code for lang, code in blocks if lang == "python"))
    commands = [line for lang, code in blocks if lang == "sh" for line in code.splitlines() if line.strip()]
    assert [c.split()[:3] for c in commands] == [["stnref", "reference", "export"],
                                                 ["python", "adapter.py", "golden"],
                                                 ["stnref", "reference", "check"]]
    for command in commands:
        argv = shlex.split(command)
        argv = [sys.executable, "-m", "stnref", *argv[1:]] if argv[0] == "stnref" else [sys.executable, *argv[1:]]
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr)
    assert "522/522 cases passed, 336 of 858 not selected (reference version 3; judged with float32 " \
           "answers and tolerances)" in done.stdout
    assert done.stdout.splitlines()[-2] in " ".join(page.split())     # the page quotes it
    suite = ET.parse(tmp_path / "check.xml").getroot()
    assert suite.get("tests") == "522" and suite.get("failures") == "0"
    pytorch_only = run_check(tmp_path / "golden", tmp_path / "results", outputs=["V"], only=["grid_sample-*"],
                             exclude=["*constant*", "*wrap*", "*3d-bicubic*", "*-a-0.5-*"], dtype="float32")
    assert pytorch_only.ok and len(pytorch_only.cases) == 247      # as the page says
    assert "--exclude '*constant*' --exclude '*wrap*' --exclude '*3d-bicubic*' --exclude '*-a-0.5-*'" in page


def _pull_request_section():
    page = (Path(__file__).resolve().parent.parent / "docs" / "kernel_authors.md").read_text(encoding="utf-8")
    return page.split("## 8. ", 1)[1]


def test_the_pull_request_selections_select_what_the_page_says(golden, tmp_path):
    """Section 8's selections: 67 tricubic cases, 64 constant-padding cases, none of them a
    setting PyTorch has; with no results every selected case is missing and the check fails."""
    section = " ".join(_pull_request_section().split())
    (tmp_path / "results").mkdir()
    pr_excluded = ["*-a-0.5-*", "*non-finite*"]
    cases = {c["id"]: c for c in read_manifest(golden)["cases"]}
    for only, exclude, count in ((["grid_sample-*3d-bicubic-*"], pr_excluded, 67),
                                 (["grid_sample-*-constant-*"], ["*3d-bicubic*", *pr_excluded], 64)):
        report = run_check(golden, tmp_path / "results", only=only, exclude=exclude,
                           outputs=["V", "dU", "dgrid"])
        assert len(report.cases) == count and not report.ok, only
        assert f"{count} " in section and f"'{only[0]}'" in section
        assert not any(cases[case.id]["pytorch"] for case in report.cases)
    assert "--only 'grid_sample-*3d-bicubic-*' --exclude '*-a-0.5-*' --exclude '*non-finite*' " \
           "--outputs V,dU,dgrid" in section


def test_the_pull_request_adapter_runs_on_pytorch(golden, tmp_path):
    """Section 8's adapter, as written, on the 3-D bilinear sampler of the installed PyTorch:
    the cases of settings PyTorch lacks are refused (missing), the 41 others of PyTorch's
    settings pass in V, dU and dgrid but the 6 non-finite ones, which follow stnref's rule."""
    pytest.importorskip("torch")
    import subprocess
    import sys

    blocks = re.findall(r"^```python\n(.*?)^```$", _pull_request_section(), re.MULTILINE | re.DOTALL)
    (tmp_path / "pr_adapter.py").write_text(blocks[0])
    pattern = "grid_sample-*3d-bilinear-*"
    done = subprocess.run([sys.executable, "pr_adapter.py", str(golden), "results", pattern],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "-constant-noac: refused" in done.stdout and "-wrap-noac: refused" in done.stdout
    selection = {"only": [pattern], "exclude": ["*constant*", "*wrap*"], "outputs": ["V", "dU", "dgrid"]}
    report = run_check(golden, tmp_path / "results", **selection)
    failed = [case.id for case in report.cases if case.verdict != "pass"]
    assert len(report.cases) == 47 and len(failed) == 6
    assert all("-non-finite-" in case_id for case_id in failed)
    selection["exclude"].append("*non-finite*")
    assert run_check(golden, tmp_path / "results", **selection).ok
