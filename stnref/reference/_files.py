"""Golden files on disk: the case-file writer, the manifest reader and the result readers.

Layout (docs/conventions.md §7.5): a golden directory holds ``manifest.json`` and one
``<case id>.npz`` per case, a zip archive of uncompressed ``.npy`` version 1.0 members,
little-endian, C order.  From version 2 the case metadata member ``__metadata__.npy`` is
the UTF-8 JSON as a ``uint8`` array, readable by any ``.npy`` reader (version 1 stored a
0-d unicode array).  Results are ``<case id>.npz`` or a directory ``<case id>/`` holding
one ``<name>.npy`` per output.

Everything read from disk is bounded before it is parsed: the manifest's size and its
nesting, every ``.npy`` header against the bytes it describes, every string that reaches a
report.  Problems are returned or raised as one line.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import stat
import sys
import zipfile
import zlib

import numpy as np

from .._io import FILE_MODE, atomic_open, read_regular_file
from .._text import shown
from ..checkpoint import METADATA_KEY, ZIP_EPOCH, _check_members

MANIFEST_NAME = "manifest.json"
MANIFEST_LIMIT = 8 * 2**20       # bytes; the version-2 manifest is about 0.9 MB
MANIFEST_DEPTH = 32              # nesting of JSON containers; a manifest uses 5
# Case ids and output names become file names (<id>.npz, <id>/<name>.npy) and report cells.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,199}")
TEXT_LIMIT = 2000                # characters of a manifest's free text (a rule) that are shown
FOUND_SHOWN = 8                  # array names listed when an expected one is missing
NPY_SUFFIX = ".npy"


def brief(value, limit=80):
    """A short, single-line description of ``value`` for an error message: never a repr of
    unbounded size or depth."""
    if isinstance(value, (dict, list)):
        kind = "object" if isinstance(value, dict) else "list"
        return f"a JSON {kind} of {len(value)} items"
    if isinstance(value, str):
        return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} characters)"
    text = repr(value)   # numbers: a JSON integer may have thousands of digits
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def clip_text(text, limit=TEXT_LIMIT):
    """``text`` on one line, cut to ``limit`` characters saying how long it was
    (:func:`stnref._text.shown`: control characters escaped)."""
    return shown(text, limit)


# --------------------------------------------------------------------------- writing

def _npy_bytes(array):
    """One ``.npy`` version 1.0 member: little-endian, C order (docs/conventions.md §7.5)."""
    array = np.asarray(array)       # 0-d stays 0-d (ascontiguousarray would make it 1-d)
    array = array.astype(array.dtype.newbyteorder("<"), order="C", copy=False)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, version=(1, 0), allow_pickle=False)
    return buf.getvalue()


def write_case_file(path, arrays, metadata):
    """Write one version-2 golden case file atomically: members sorted, stored, timestamp
    fixed, metadata as UTF-8 JSON bytes in a ``uint8`` array, so the same case always gives
    the same bytes."""
    text = json.dumps(metadata, sort_keys=True, allow_nan=False).encode()
    members = {**arrays, METADATA_KEY: np.frombuffer(text, dtype=np.uint8)}
    with atomic_open(path) as f, zipfile.ZipFile(f, "w") as zf:
        for name in sorted(members, key=lambda n: n + NPY_SUFFIX):    # sorted by member name
            info = zipfile.ZipInfo(name + NPY_SUFFIX, date_time=ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = FILE_MODE << 16
            zf.writestr(info, _npy_bytes(members[name]))


# --------------------------------------------------------------------------- the manifest

def _depth_problem(raw):
    """Why the JSON text ``raw`` nests deeper than MANIFEST_DEPTH; or None.  Brackets inside
    strings count too, which only overestimates: the manifest's own strings have none."""
    codes = np.frombuffer(raw, dtype=np.uint8)
    step = np.zeros(len(codes), dtype=np.int32)
    step[(codes == ord("[")) | (codes == ord("{"))] = 1
    step[(codes == ord("]")) | (codes == ord("}"))] = -1
    depth = int(np.cumsum(step).max()) if len(step) else 0
    if depth > MANIFEST_DEPTH:
        return f"nested {depth} levels deep, expected at most {MANIFEST_DEPTH}"
    return None


def _name_problem(value, what):
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        return (f"expected {what} to be 1 to 200 letters, digits, '_', '.', '+' or '-' "
                f"(starting with a letter or digit), got {brief(value)}")
    return None


def _tolerance_problem(tol):
    """Why ``tol`` is not ``{"atol": a, "rtol": r}`` with finite a, r >= 0; or None."""
    if not isinstance(tol, dict):
        return f"expected a tolerance {{'atol': ..., 'rtol': ...}}, got {type(tol).__name__}"
    for key in ("atol", "rtol"):
        value = tol.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not 0 <= value <= sys.float_info.max:  # refuses NaN, inf and ints beyond float
            return f"expected {key} to be a finite number >= 0, got {brief(value)}"
    return None


def _answers_problem(case):
    """Why the version-2 ``float32`` answers of ``case`` are malformed; or None."""
    answers = case.get("float32")
    if answers is None:
        return None
    if not isinstance(answers, dict) or set(answers) != set(case["outputs"]):
        return (f"expected 'float32' to be an object with the outputs "
                f"{sorted(case['outputs'])}, got {brief(answers)}")
    for name in sorted(answers):
        entry = answers[name]
        problem = _tolerance_problem(entry) or (
            _name_problem(entry.get("member"), f"float32 member of {name!r}"))
        if problem:
            return f"float32 answer of output {name!r}: {problem}"
    return None


def _case_problem(case):
    """Why a manifest ``case`` cannot be checked (a missing or malformed key); or None."""
    if not isinstance(case, dict):
        return f"expected an object, got {type(case).__name__}"
    for key in ("id", "file"):
        if not isinstance(case.get(key), str) or not case[key]:
            return f"expected {key!r} to be a non-empty string, got {brief(case.get(key))}"
    if os.path.basename(case["file"]) != case["file"] or case["file"] in (".", ".."):
        return f"expected 'file' to be a file name without a directory, got {brief(case['file'])}"
    problem = _name_problem(case["id"], "'id'")
    if problem:
        return problem
    if case["file"] != case["id"] + ".npz":
        return f"expected 'file' to be the id with '.npz', {case['id']}.npz, got {brief(case['file'])}"
    outputs, tolerance = case.get("outputs"), case.get("tolerance")
    if not isinstance(outputs, dict) or not outputs:
        return f"expected 'outputs' to be a non-empty object of output arrays, got {brief(outputs)}"
    for name in outputs:
        problem = _name_problem(name, "an output name")
        if problem:
            return problem
    if not isinstance(tolerance, dict):
        return f"expected 'tolerance' to be an object (output name -> atol, rtol), got {brief(tolerance)}"
    for name in sorted(outputs):
        problem = _tolerance_problem(tolerance.get(name))
        if problem:
            return f"tolerance of output {name!r}: {problem}"
    rule = case.get("rule")
    if rule is not None and not isinstance(rule, str):
        return f"expected 'rule' to be a string or null, got {brief(rule)}"
    for key in ("op", "family"):       # shown in every report: names, as ids are
        if key in case and _name_problem(case[key], repr(key)):
            return _name_problem(case[key], repr(key))
    if not isinstance(case.get("options", {}), dict):
        return f"expected 'options' to be an object, got {brief(case['options'])}"
    return _answers_problem(case)


def read_manifest(path, fn="check"):
    """The manifest at ``path`` with its cases validated, or one ValueError naming the problem.

    Bounded before parsing: a regular file (never a FIFO or a device) of at most
    ``MANIFEST_LIMIT`` bytes, nested at most ``MANIFEST_DEPTH`` levels; any error of the JSON
    parser, or of a case, is one line naming the manifest.
    """
    try:  # a FIFO, a device or a file over MANIFEST_LIMIT is refused before anything is read
        raw = read_regular_file(path, MANIFEST_LIMIT, fn, "golden manifest")
    except OSError as err:
        raise ValueError(f"{fn}(): cannot read the golden manifest {path!r}: "
                         f"{err.strerror or err}") from None
    where = f"{fn}(): golden manifest {path!r}"
    problem = _depth_problem(raw)
    if problem:
        raise ValueError(f"{where}: {problem}")
    try:
        manifest = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as err:   # JSON, huge integers
        raise ValueError(f"{fn}(): cannot read the golden manifest {path!r}: "
                         f"{clip_text(' '.join(str(err).split()), 200)}") from None
    if not isinstance(manifest, dict):  # a file's content, not an argument: ValueError
        raise ValueError(f"{where}: expected a JSON object, got {type(manifest).__name__}")  # noqa: TRY004
    cases = manifest.get("cases")
    if not isinstance(cases, list) or not cases:
        raise ValueError(f"{where}: expected 'cases' to be a non-empty list of cases, got {brief(cases)}")
    seen = set()
    for i, case in enumerate(cases):
        problem = _case_problem(case)
        if problem is None and case["id"] in seen:
            problem = f"the id {case['id']!r} is used by an earlier case"
        if problem:
            raise ValueError(f"{where}: case {i}: {problem}")
        seen.add(case["id"])
    return manifest


# --------------------------------------------------------------------------- arrays

def _missing(name, found):
    """The problem of a missing array ``name``, naming (some of) the arrays ``found``."""
    found = sorted(k for k in found if k != METADATA_KEY)
    shown = ", ".join(repr(clip_text(k, 40)) for k in found[:FOUND_SHOWN])
    more = f" and {len(found) - FOUND_SHOWN} more" if len(found) > FOUND_SHOWN else ""
    return f"missing array {name!r} (found {shown + more if found else 'no arrays'})"


def _header_problem(headers, name, shape):
    """Why array ``name`` cannot be compared, from its ``.npy`` header alone; or None.

    ``headers`` maps array names to ``(shape, dtype)``.  Nothing is allocated: a missing
    array, a non-float dtype or a shape other than ``shape`` (None: any) is found before
    the array is read.
    """
    if name not in headers:
        return _missing(name, headers)
    found, dtype = headers[name]
    if dtype.kind != "f":
        return f"{name}: header claims dtype {dtype}, expected a float array"
    if shape is not None and found != shape:
        return f"{name}: header claims shape {found}, expected {shape}"
    return None


def _read_npz(path, shapes):
    headers = _check_members(path, "check", "file")
    with np.load(path, allow_pickle=False) as npz:
        why = {name: _header_problem(headers, name, shape) for name, shape in shapes.items()}
        arrays = {name: npz[name] for name in shapes if why[name] is None}
    return arrays, [problem for problem in why.values() if problem]


def _npy_header(path):
    """``(shape, dtype)`` of the ``.npy`` file ``path``, checked against its size; or ValueError."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{os.path.basename(path)} is not a regular file")
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise ValueError(f"{os.path.basename(path)}: .npy version {version} is not supported")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{os.path.basename(path)}: dtype {dtype} holds objects (pickles are never read)")
    data = math.prod(shape) * dtype.itemsize
    if data != info.st_size - offset:
        raise ValueError(f"{os.path.basename(path)}: header claims shape {tuple(shape)} of {dtype} "
                         f"({data} bytes) but the file holds {info.st_size - offset} bytes")
    return tuple(shape), dtype


def _listed_npy(directory, limit=1000):
    """Names of up to ``limit`` ``.npy`` files in ``directory`` (the arrays found)."""
    names = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.endswith(NPY_SUFFIX):
                names.append(entry.name[:-len(NPY_SUFFIX)])
                if len(names) >= limit:
                    break
    return names


def _read_npy_dir(directory, shapes):
    headers, problems, found = {}, {}, None
    for name in shapes:
        path = os.path.join(directory, name + NPY_SUFFIX)
        if os.path.lexists(path):
            try:
                headers[name] = _npy_header(path)
            except (ValueError, OverflowError, RecursionError) as err:   # whatever the header holds
                problems[name] = clip_text(" ".join(str(err).split()), 300)
        elif found is None:
            found = _listed_npy(directory)
    arrays = {}
    for name, shape in shapes.items():
        if name in problems:
            continue
        problem = _header_problem(headers, name, shape) if name in headers else _missing(name, found)
        if problem:
            problems[name] = problem
        else:
            arrays[name] = np.load(os.path.join(directory, name + NPY_SUFFIX), allow_pickle=False)
    return arrays, list(problems.values())


def read_arrays(path, shapes):
    """Read the named arrays of one case: ``path`` is an ``.npz`` file or a directory of
    ``.npy`` files, every header checked before its array is read.

    Parameters
    ----------
    path : str
        ``<dir>/<case id>.npz`` or ``<dir>/<case id>`` (a directory).
    shapes : dict of str to tuple or None
        Array name -> the shape its header must claim (None: any shape).

    Returns
    -------
    arrays : dict of str to ndarray
        The arrays whose headers qualified (float dtype, the expected shape).
    problems : list of str
        One per array that is missing (naming the arrays found), unreadable, or whose
        header claims a non-float dtype or another shape.

    Raises
    ------
    ValueError
        ``"unreadable: ..."``: not an ``.npz`` archive, corrupt, or a member whose header
        lies about its size or holds objects.
    """
    try:
        if os.path.isdir(path):
            return _read_npy_dir(path, shapes)
        return _read_npz(path, shapes)
    except (OSError, EOFError, ValueError, RuntimeError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"unreadable: {clip_text(' '.join(str(err).split()), 300)}") from None


def result_path(results_dir, case):
    """Where the results of ``case`` are: ``(path, problem)``, exactly one of them None.

    ``<id>.npz`` or a directory ``<id>/`` of ``.npy`` files; both at once is ambiguous and
    refused, neither is a missing result."""
    npz = os.path.join(results_dir, case["file"])
    directory = os.path.join(results_dir, case["id"])
    has_npz, has_dir = os.path.isfile(npz), os.path.isdir(directory)
    if has_npz and has_dir:
        return None, (f"both {case['file']} and a directory {case['id']}/ are in the results; "
                      f"keep one")
    if has_npz or has_dir:
        return (npz if has_npz else directory), None
    if os.path.lexists(npz):
        return None, f"{case['file']} is not a regular file"
    return None, f"missing file {case['file']} (or a directory {case['id']}/ of .npy files)"
