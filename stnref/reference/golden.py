"""Golden vectors for kernel authors: a versioned, byte-reproducible set of reference cases.

:func:`export` writes one ``.npz`` per case plus ``manifest.json``; :func:`check`
compares a directory of someone else's results, case by case and array by array,
against the golden one, and :func:`run_check` returns the verdicts as a :class:`Report`
(a table, JSON or JUnit XML).  Every op of the package is covered -- the four grid
generators and their backward, the 4-D and 5-D sampler with its backward in every setting
of :mod:`stnref.sampler_settings` (from version 3; PyTorch's settings before), the
sampler's JVP and double backward -- in general position, plus edge-case families that
each pin one convention rule of docs/conventions.md (integer knots, border clips,
reflection folds, half-pixel bands, wrap periods, non-finite and huge coordinates,
duplicate sample points, size-1 axes, nearest ties, the projective horizon).  From
version 2 every sampler family is generated for every setting in which its behaviour
exists (the coverage rule, docs/conventions.md §7.7).

A case file holds the op's inputs, the cotangents (or tangents) it is differentiated
with, and its outputs: for a sampler case ``U``, ``grid``, ``dV`` and ``V``, ``dU``,
``dgrid``; from version 2 also the float32 answers ``V.float32``, ... that
``--dtype float32`` judges against.  The manifest names each array's role.  Inputs come
from a generator seeded by a hash of ``(version, case id)``; members are written
uncompressed, sorted, with a fixed zip timestamp, and the JSON with sorted keys, so the
same version always gives byte-identical files.  Layout: docs/conventions.md §7.5.
Guide: ``docs/kernel_authors.md``.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys

import numpy as np

from .._io import atomic_write_bytes
from ..checkpoint import save_checkpoint
from ._cases import (
    FORMAT_NAME,
    MODES,
    PADDINGS,
    REFERENCE_VERSION,
    RULES,
    RULES_BY_VERSION,
    SAMPLER_OPS,
    SUPPORTED_VERSIONS,
    check_version,
    compute_outputs,
    load_cases,
    sampler_settings,
)
from ._files import MANIFEST_LIMIT, MANIFEST_NAME, brief, read_arrays, read_manifest, result_path, write_case_file
from ._judge import TOLERANCES, Context, compare, explain
from ._report import CaseResult, Report, array_notes

__all__ = ["MANIFEST_LIMIT", "MANIFEST_NAME", "MODES", "PADDINGS", "REFERENCE_VERSION", "RULES",
           "SAMPLER_OPS", "SUPPORTED_VERSIONS", "TOLERANCES", "Report", "check", "compute_outputs",
           "export", "load_cases", "run_check", "sampler_settings"]

FLOAT32_SUFFIX = ".float32"    # version 2: member of a float64 case holding a float32 answer
COMPARISON = ("per output array: same shape, NaN exactly where golden is NaN, and "
              "|result - golden| <= atol + rtol * |golden| elsewhere")


# --------------------------------------------------------------------------- export

def _describe(arrays):
    return {name: {"shape": list(x.shape), "dtype": x.dtype.name} for name, x in sorted(arrays.items())}


def _tolerance(outputs):
    """Per output array: rtol and an absolute tolerance scaled by the golden array's magnitude."""
    tol = {}
    for name, x in sorted(outputs.items()):
        base = TOLERANCES[x.dtype.name]
        finite = x[np.isfinite(x)]
        scale = max(1.0, float(np.max(np.abs(finite)))) if finite.size else 1.0
        tol[name] = {"rtol": base["rtol"], "atol": float(base["atol"] * scale)}
    return tol


def _export_case(directory, case, version):
    """Write one case file; its manifest entry."""
    outputs = case["outputs"]
    dtype = next(iter(outputs.values())).dtype.name
    entry = {
        "id": case["id"], "file": f"{case['id']}.npz", "op": case["op"],
        "family": case["family"], "rule": RULES_BY_VERSION[version][case["family"]],
        "options": case["options"], "dtype": dtype, "seed": case["seed"],
        "finite": bool(all(np.isfinite(x).all() for x in case["inputs"].values())),
        "inputs": _describe(case["inputs"]), "cotangents": _describe(case["cotangents"]),
        "outputs": _describe(outputs), "tolerance": _tolerance(outputs),
    }
    if "pytorch" in case:
        entry["pytorch"] = case["pytorch"]
    arrays = {**case["inputs"], **case["cotangents"], **outputs}
    roles = {"format": FORMAT_NAME, "version": version, "id": case["id"],
             "inputs": sorted(case["inputs"]), "cotangents": sorted(case["cotangents"]),
             "outputs": sorted(outputs)}
    path = os.path.join(directory, entry["file"])
    if version == 1:
        save_checkpoint(path, arrays, roles)
        return entry
    single = case["float32"]
    members = {name: name if dtype == "float32" else name + FLOAT32_SUFFIX for name in single}
    entry["float32"] = {name: {"member": members[name], **tol} for name, tol in _tolerance(single).items()}
    if dtype != "float32":
        arrays.update({members[name]: x for name, x in single.items()})
    write_case_file(path, arrays, {**roles, "float32": members})
    return entry


def export(directory, version=REFERENCE_VERSION):
    """Write the golden cases of ``version`` to ``directory`` (created if needed).

    Parameters
    ----------
    directory : str or os.PathLike
        Destination; existing case files of the same names are replaced atomically.
    version : int, default REFERENCE_VERSION
        Reference set version; the same version always gives byte-identical files.

    Returns
    -------
    dict
        The manifest written to ``directory/manifest.json``: ``format``, ``version``,
        ``comparison`` (the pass rule) and ``cases``, one entry per ``<id>.npz`` with
        ``id``, ``file``, ``op``, ``family``, ``rule`` (the convention an edge case pins,
        or null), ``options``, ``dtype``, ``seed``, ``finite`` (all inputs finite),
        ``inputs``/``cotangents``/``outputs`` (name -> shape, dtype), ``tolerance``
        (output name -> rtol, atol); from version 2 ``float32`` (output name -> ``member``,
        the array holding the float32 answer, with its rtol and atol); from version 3
        ``pytorch`` (whether PyTorch has the op and the setting).
        Layout and fields: docs/conventions.md §7.5-7.6.

    Examples
    --------
    >>> import tempfile
    >>> manifest = export(tempfile.mkdtemp())
    >>> manifest["cases"][0]["file"]
    'affine_grid-2d-noac.npz'
    >>> manifest["cases"][0]["float32"]["grid"]["member"]
    'grid.float32'
    """
    fn = "export"
    version = check_version(version, fn)
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    entries = [_export_case(directory, case, version) for case in load_cases(version)]
    manifest = {"format": FORMAT_NAME, "version": version, "comparison": COMPARISON, "cases": entries}
    atomic_write_bytes(os.path.join(directory, MANIFEST_NAME),
                       (json.dumps(manifest, sort_keys=True, indent=1) + "\n").encode())
    return manifest


# --------------------------------------------------------------------------- check

def _compare(golden, result, tol):
    """(ok, max abs err, max rel err, problem) for one output array (:func:`_judge.compare`)."""
    v = compare("result", golden, result, tol)
    if v.problem:
        return False, np.nan, np.nan, v.problem
    return v.ok, v.max_abs, v.max_rel, "" if v.ok else array_notes(v, Context("", {}, {}), golden, result)


def _answers(case, dtype):
    """(judged dtype, output name -> golden member, output name -> tolerance) of ``case``."""
    own = case.get("dtype") if isinstance(case.get("dtype"), str) else "float64"
    if dtype is None or dtype == own:
        return own, {n: n for n in case["outputs"]}, case["tolerance"]
    answers = case["float32"]
    return dtype, {n: a["member"] for n, a in answers.items()}, \
        {n: {"atol": a["atol"], "rtol": a["rtol"]} for n, a in answers.items()}


def _case_inputs(golden_file, case):
    """The golden inputs of ``case`` (to locate and explain a failure), or {} if unreadable."""
    names = case.get("inputs")
    if not isinstance(names, dict):
        return {}
    try:
        arrays, problems = read_arrays(golden_file, dict.fromkeys(names))
    except ValueError:
        return {}
    return {} if problems else arrays


def _judge(case, golden_dir, results_dir, outputs, dtype):
    """The :class:`CaseResult` of one validated manifest case."""
    judged, members, tols = _answers(case, dtype)
    names = [n for n in sorted(members) if outputs is None or n in outputs]
    op = case.get("op") if isinstance(case.get("op"), str) else "case"
    family = case.get("family") if isinstance(case.get("family"), str) else "general"
    result = CaseResult(case["id"], op, family, "fail", judged, {n: tols[n] for n in names},
                        pins=case.get("rule"))
    if not names:
        result.verdict = "skip"
        result.notes = [f"no output among --outputs (its outputs: {', '.join(sorted(members))})"]
        return result
    path, problem = result_path(results_dir, case)
    if problem:
        result.notes = [problem]
        return result
    golden_file = os.path.join(golden_dir, case["file"])
    try:
        golden, problems = read_arrays(golden_file, {members[n]: None for n in names})
    except ValueError as err:
        problems = [str(err)]
    if problems:
        result.notes = [f"golden {case['file']}: {p}" for p in problems]
        return result
    golden = {n: golden[members[n]] for n in names}
    try:
        mine, problems = read_arrays(path, {n: golden[n].shape for n in names})
    except ValueError as err:
        mine, problems = {}, [f"{os.path.basename(path)}: {err}"]
    verdicts = {n: compare(n, golden[n], mine[n], tols[n]) for n in sorted(mine)}
    result.arrays = list(verdicts.values())
    failing = [v for v in verdicts.values() if not v.ok]
    if failing:
        options = case.get("options") if isinstance(case.get("options"), dict) else {}
        ctx = Context(op, options, _case_inputs(golden_file, case))
        result.where = ctx.describe
        problems += [array_notes(v, ctx, golden[v.name], mine[v.name]) for v in failing]
        result.explanations = explain(ctx, verdicts, mine, golden, tols, judged)
    result.notes = problems
    result.verdict = "fail" if problems else "pass"
    return result


def _selected(cases, only, exclude, fn):
    """The cases whose id matches a pattern of ``only`` (all if empty) and none of ``exclude``;
    a pattern matching no case id is refused (a typo would silently judge nothing)."""
    ids = [c["id"] for c in cases]
    for what, patterns in (("only", only), ("exclude", exclude)):
        for pattern in patterns:
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(f"{fn}(): expected {what} patterns to be non-empty strings, got "
                                 f"{brief(pattern)}")
            if not any(fnmatch.fnmatchcase(i, pattern) for i in ids):
                raise ValueError(f"{fn}(): {what} pattern {brief(pattern)} matches no case id "
                                 f"(ids look like {ids[-1]!r}; * ? [...] as in a shell)")
    picked = [c for c in cases
              if (not only or any(fnmatch.fnmatchcase(c["id"], p) for p in only))
              and not any(fnmatch.fnmatchcase(c["id"], p) for p in exclude)]
    if not picked:
        raise ValueError(f"{fn}(): only {list(only)} and exclude {list(exclude)} leave no case to check")
    return picked


def _check_selection(cases, outputs, dtype, version, fn):
    """Refuse an output name no selected case has, or float32 answers the golden set lacks."""
    if outputs is not None:
        have = sorted({name for c in cases for name in c["outputs"]})
        unknown = [o for o in outputs if o not in have]
        if not outputs or unknown:
            raise ValueError(f"{fn}(): expected outputs among {', '.join(have)} (the selected cases' "
                             f"outputs), got {brief(unknown[0] if unknown else list(outputs))}")
    if dtype is not None:
        if dtype != "float32":
            raise ValueError(f"{fn}(): expected dtype None (each case's own) or 'float32', got {brief(dtype)}")
        lacking = [c["id"] for c in cases if c.get("dtype") != "float32" and "float32" not in c]
        if lacking:
            raise ValueError(f"{fn}(): dtype 'float32': the golden set (reference version "
                             f"{brief(version)}) holds no float32 answers for {lacking[0]!r} and "
                             f"{len(lacking) - 1} more cases; export version 2 or later")


def run_check(golden_dir, results_dir, *, outputs=None, only=(), exclude=(), dtype=None):
    """Judge ``results_dir`` against the golden cases of ``golden_dir``: a :class:`Report`.

    Parameters
    ----------
    golden_dir : str or os.PathLike
        A directory written by :func:`export` (any supported version).
    results_dir : str or os.PathLike
        The outputs of the implementation under test: per case ``<case id>.npz``, or a
        directory ``<case id>/`` holding one ``<name>.npy`` per output (docs/conventions.md
        §7.5).  Extra arrays are ignored.
    outputs : sequence of str, optional
        Judge only these outputs (e.g. ``["V"]`` for a forward-only kernel); a case with
        none of them is skipped.  Default: every output.
    only, exclude : sequence of str
        Shell-style patterns on case ids: the cases matching a pattern of ``only`` (all if
        empty) and none of ``exclude``.  A pattern matching no id is refused.
    dtype : {None, "float32"}
        None judges each case in its own dtype; ``"float32"`` judges every case against its
        float32 answers with the float32 tolerances (a kernel that computes in float32).

    Returns
    -------
    Report
        Per selected case: ``pass``, ``fail`` (with what failed, where, the rules that
        explain it and the rule the case pins) or ``skip``.  ``report.ok`` is True only if
        no case fails and at least one was judged.

    Raises
    ------
    TypeError
        ``outputs``, ``only`` or ``exclude`` is a string, not a list of strings.
    ValueError
        ``golden_dir`` has no readable manifest (not a regular file, larger than
        ``MANIFEST_LIMIT`` bytes, nested too deep, not JSON, cases lacking ``id``,
        ``file``, ``outputs`` or finite tolerances, ...); ``results_dir`` is not a directory
        or is ``golden_dir`` itself; a pattern matches no case; an output no selected case
        has; ``dtype="float32"`` on a golden set without float32 answers (version 1).
    """
    fn = "check"
    golden_dir, results_dir = os.fspath(golden_dir), os.fspath(results_dir)
    manifest = read_manifest(os.path.join(golden_dir, MANIFEST_NAME), fn)
    if not os.path.isdir(results_dir):
        state = "is not a directory" if os.path.exists(results_dir) else "does not exist"
        raise ValueError(f"{fn}(): results directory {results_dir!r} {state} (expected a directory "
                         f"of one <case id>.npz per case, written by your implementation)")
    if os.path.realpath(results_dir) == os.path.realpath(golden_dir):
        raise ValueError(f"{fn}(): results directory {results_dir!r}: the results directory is the "
                         f"golden directory {golden_dir!r}; expected the directory your "
                         f"implementation wrote its <case id>.npz files to")
    for name, value in (("outputs", outputs), ("only", only), ("exclude", exclude)):
        if isinstance(value, str):   # a string is a sequence of characters: never meant
            raise TypeError(f"{fn}(): expected {name} to be a list of strings, got the string "
                            f"{brief(value)} (write [{value!r}])")
    only, exclude = tuple(only), tuple(exclude)
    outputs = None if outputs is None else tuple(outputs)
    cases = _selected(manifest["cases"], only, exclude, fn)
    _check_selection(cases, outputs, dtype, manifest.get("version"), fn)
    results = [_judge(case, golden_dir, results_dir, outputs, dtype) for case in cases]
    version = manifest.get("version")
    return Report(golden_dir, results_dir, version if isinstance(version, int) else brief(version),
                  len(manifest["cases"]), results, only, exclude, outputs, dtype)


def check(golden_dir, results_dir, out=sys.stdout, **selection):
    """Compare ``results_dir`` against the golden cases in ``golden_dir``; print a table.

    For every selected case of ``golden_dir/manifest.json`` the results (``<case
    id>.npz`` or ``<case id>/<name>.npy``, read with ``allow_pickle=False``, every
    ``.npy`` header checked against its bytes, a float dtype and the golden shape before
    the array is read) are compared with the golden arrays: same shape, NaN at exactly the
    golden NaN positions, and ``|result - golden| <= atol + rtol * |golden|`` with the
    case's tolerances (both 0: exact agreement).

    Parameters
    ----------
    golden_dir, results_dir : str or os.PathLike
        As :func:`run_check`.
    out : file-like, default sys.stdout
        Where the table goes: per case its id, PASS/FAIL/SKIP, the dtype it was judged in,
        max abs error, max relative error (``err / max(|golden|, atol / rtol)``), and for a
        failure per array how many elements fail of how many, the worst one with its grid
        point and pixel coordinates, which side holds a NaN, the rules that explain the
        difference, and the rule the case pins.
    **selection
        ``outputs``, ``only``, ``exclude``, ``dtype``: as :func:`run_check`.

    Returns
    -------
    bool
        True only if no selected case fails and at least one was judged; a missing,
        unreadable or mis-shaped file or array is a failure.

    Raises
    ------
    ValueError
        As :func:`run_check`.
    """
    report = run_check(golden_dir, results_dir, **selection)
    print(report.table(), file=out)
    return report.ok
