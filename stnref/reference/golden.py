"""Golden vectors for kernel authors: a versioned, byte-reproducible set of reference cases.

:func:`export` writes one ``.npz`` per case plus ``manifest.json``; :func:`check`
compares a directory of someone else's results, file by file and array by
array, against the golden one.  Every op of the package is covered -- the four
grid generators and their backward, the 4-D and 5-D sampler with its backward
for every mode, padding and ``align_corners``, the sampler's JVP and double
backward -- in general position, plus edge cases that each pin one convention
rule of docs/conventions.md (integer knots, border clips, reflection folds,
half-pixel bands, non-finite and huge coordinates, duplicate sample points,
size-1 axes, nearest ties, the projective horizon).

A case file holds the op's inputs, the cotangents (or tangents) it is
differentiated with, and its outputs: for a sampler case ``U``, ``grid``,
``dV`` and ``V``, ``dU``, ``dgrid``.  The manifest names each array's role.
Inputs come from a generator seeded by a hash of ``(version, case id)``, the
``.npz`` members are written uncompressed, sorted, with a fixed zip timestamp
(:func:`stnref.checkpoint.save_checkpoint`), and the JSON with sorted keys, so
the same version always gives byte-identical files.  Guide:
``docs/kernel_authors.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
import zlib
from collections.abc import Mapping

import numpy as np

from .. import _checks, grids
from .._io import atomic_write_bytes, read_regular_file
from ..checkpoint import _check_members, save_checkpoint
from ..sampler_settings import PYTORCH_MODES, PYTORCH_PADDING_MODES, combinations
from ..sampling import grid_sample, grid_sample_backward
from ..second_order import grid_sample_double_backward, grid_sample_jvp

__all__ = ["MANIFEST_NAME", "REFERENCE_VERSION", "check", "compute_outputs", "export", "load_cases"]

REFERENCE_VERSION = 1
SUPPORTED_VERSIONS = (1,)
MANIFEST_NAME = "manifest.json"
MANIFEST_LIMIT = 64 * 2**20  # bytes; the version-1 manifest is about 100 KB
FORMAT_NAME = "stnref-golden"
# Tolerances per dtype: |result - golden| <= atol * scale + rtol * |golden| elementwise, with
# scale = max(1, max |golden|) of that array.  float64: the parity target of docs/conventions.md §6.3.
# float32: a few ulps of float32 on O(1) data, for a kernel computing in float32.
TOLERANCES = {"float64": {"rtol": 1e-10, "atol": 1e-10}, "float32": {"rtol": 1e-5, "atol": 1e-5}}
GENERAL_RANGE = 1.4        # general-position grids: normalised coordinates uniform in +-1.4
HUGE_COORDS = (1e30, -1e30, 1e15, -3e9, 2e6, -4.5e4)
REFLECTION_HUGE = (1e4, -3.3e3, 777.7)   # reflection: large but well-conditioned fold counts
NONFINITE = (np.nan, np.inf, -np.inf)
MODES = PYTORCH_MODES              # the golden set holds PyTorch's settings (stnref.sampler_settings)
PADDINGS = PYTORCH_PADDING_MODES
SAMPLER_OPS = ("grid_sample", "grid_sample_jvp", "grid_sample_double_backward")
SAMPLER_OPTIONS = ("mode", "padding_mode", "align_corners")
GRID_OPTIONS = ("size", "align_corners")
# The arrays each op of compute_outputs reads (inputs, then cotangents or tangents).
OP_ARRAYS = {
    "affine_grid": ("theta", "dgrid"),
    "attention_grid": ("theta", "dgrid"),
    "projective_grid": ("theta", "dgrid"),
    "tps_grid": ("theta", "control_points", "dgrid"),
    "grid_sample": ("U", "grid", "dV"),
    "grid_sample_jvp": ("U", "grid", "tU", "tgrid"),
    "grid_sample_double_backward": ("U", "grid", "dV", "g_dU", "g_dgrid"),
}

# The convention each edge-case family pins (sections of docs/conventions.md in brackets).
RULES = {
    "general": None,
    "integer-knots": "integer pixel coordinates: taps floor(i), floor(i)+1 and the right-sided "
                     "derivative; bicubic tap set changes; zeros taps entering [0, size-1] (docs/conventions.md §3.2, §4.1, §4.3)",
    "border-clips": "border: clip to [0, size-1], clip gradient multiplier 0 at i <= 0 and "
                    "i >= size-1 (inclusive); bicubic clips each tap, not the coordinate (docs/conventions.md §3.3, §4.3)",
    "reflection-folds": "reflection about pixel centres (align_corners) or edges, fold sign +-1, "
                        "several periods; bicubic reflects each tap (docs/conventions.md §3.4, §4.3)",
    "half-pixel-bands": "reflection without align_corners: i in [-0.5, 0) or (size-1, size-0.5] "
                        "takes the edge value with zero grid gradient (docs/conventions.md §3.5)",
    "non-finite": "NaN/inf coordinate: NaN in every channel of V and in dgrid at that point, no "
                  "contribution to dU (stnref rule; PyTorch differs or crashes) (docs/conventions.md §5.2)",
    "huge-coordinates": "finite coordinates of any magnitude are simply out of range; no index "
                        "overflow (docs/conventions.md §5.1)",
    "duplicate-points": "sample points sharing pixels: dU accumulates over every point "
                        "(scatter-add, never a[idx] += w) (docs/conventions.md §6.2)",
    "size-1-axes": "size-1 axis: align_corners=True unnormalises to 0 with zero grid gradient; "
                   "reflection/border of one pixel (docs/conventions.md §2.1, §3.6)",
    "nearest-ties": "nearest rounds half to even (np.rint): 0.5, 1.5, 2.5 -> 0, 2, 2 (docs/conventions.md §4.2)",
    "projective-horizon": "projective: points with w' <= 0 go to (PROJECTIVE_FAR, PROJECTIVE_FAR) "
                          "with zero gradient (docs/conventions.md §2.3)",
    "float32": "float32 in, float32 out, computed in float32 (docs/conventions.md §1.4)",
}


# --------------------------------------------------------------------------- ops

def _require(mapping, keys, what, op, fn):
    """Refuse a missing key of ``mapping`` (the case's ``options`` or ``arrays``) by name."""
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{fn}(): expected {what} to be a dict, got {type(mapping).__name__}")
    missing = [k for k in keys if k not in mapping]
    if missing:
        raise ValueError(f"{fn}(): op {op!r} needs {what} {', '.join(repr(k) for k in missing)}, "
                         f"missing from {what} with keys {sorted(map(str, mapping))}")


def compute_outputs(op, options, arrays):
    """Evaluate one reference op with stnref: the golden outputs of a case.

    Parameters
    ----------
    op : str
        A manifest ``op``: ``affine_grid``, ``attention_grid``, ``projective_grid``,
        ``tps_grid``, ``grid_sample``, ``grid_sample_jvp`` or ``grid_sample_double_backward``.
    options : dict
        The case's ``options`` (``size`` and ``align_corners`` for grids; ``mode``,
        ``padding_mode`` and ``align_corners`` for the sampler).
    arrays : mapping of str to ndarray
        The case's inputs and cotangents, by name.

    Returns
    -------
    dict of str to ndarray
        Grids: ``grid`` and ``dtheta`` (the backward applied to ``dgrid``).
        ``grid_sample``: ``V``, ``dU``, ``dgrid`` (backward applied to ``dV``).
        ``grid_sample_jvp``: ``tV``.  ``grid_sample_double_backward``: ``g_dV``, ``g_U``, ``g_grid``.

    Raises
    ------
    ValueError
        Unknown ``op``; an option or array the op needs is missing (named, see
        ``OP_ARRAYS``); or the op's own validation fails.
    TypeError
        ``options`` or ``arrays`` is not a dict.
    """
    fn = "compute_outputs"
    op = _checks.check_choice(op, "op", fn, OP_ARRAYS)
    _require(options, SAMPLER_OPTIONS if op in SAMPLER_OPS else GRID_OPTIONS, "options", op, fn)
    _require(arrays, OP_ARRAYS[op], "arrays", op, fn)
    a = arrays
    if op in SAMPLER_OPS:
        kw = {key: options[key] for key in SAMPLER_OPTIONS}
        if op == "grid_sample":
            dU, dgrid = grid_sample_backward(a["dV"], a["U"], a["grid"], **kw)
            return {"V": grid_sample(a["U"], a["grid"], **kw), "dU": dU, "dgrid": dgrid}
        if op == "grid_sample_jvp":
            return {"tV": grid_sample_jvp(a["U"], a["grid"], a["tU"], a["tgrid"], **kw)}
        g_dV, g_U, g_grid = grid_sample_double_backward(a["g_dU"], a["g_dgrid"], a["dV"], a["U"],
                                                        a["grid"], **kw)
        return {"g_dV": g_dV, "g_U": g_U, "g_grid": g_grid}
    size, ac = options["size"], options["align_corners"]
    if op == "affine_grid":
        return {"grid": grids.affine_grid(a["theta"], size, ac),
                "dtheta": grids.affine_grid_backward(a["dgrid"], size, ac)}
    if op == "attention_grid":
        return {"grid": grids.attention_grid(a["theta"], size, ac),
                "dtheta": grids.attention_grid_backward(a["dgrid"], size, ac)}
    if op == "projective_grid":
        return {"grid": grids.projective_grid(a["theta"], size, ac),
                "dtheta": grids.projective_grid_backward(a["dgrid"], a["theta"], size, ac)}
    cp = a["control_points"]                                        # op == "tps_grid"
    return {"grid": grids.tps_grid(a["theta"], size, cp, ac),
            "dtheta": grids.tps_grid_backward(a["dgrid"], size, cp, ac)}


# --------------------------------------------------------------------------- case inputs

def _normalize(i, size, align_corners):
    """Pixel coordinate -> normalised coordinate (inverse of docs/conventions.md §3.1's unnormalisation)."""
    i = np.asarray(i, dtype=np.float64)
    if align_corners:
        return np.zeros_like(i) if size == 1 else 2 * i / (size - 1) - 1
    return (2 * i + 1) / size - 1


# Spatial sizes whose integer and half-integer pixel coordinates normalise exactly: the divisor
# of the normalisation, size (align_corners=False) or size - 1 (True), is a power of two.
DYADIC_SPATIAL = {(2, False): (4, 8), (2, True): (5, 9), (3, False): (2, 4, 4), (3, True): (3, 5, 5)}


def _pixel_grid(rng, n, out, spatial, align_corners, candidates):
    """Grid (n, *out, k) whose pixel coordinates along axis a are drawn from ``candidates(size_a)``."""
    k = len(spatial)
    grid = np.empty((n, *out, k))
    for a in range(k):
        size = spatial[k - 1 - a]
        grid[..., a] = _normalize(rng.choice(candidates(size), size=(n, *out)), size, align_corners)
    return grid


def _general_grid(rng, shape):
    return rng.uniform(-GENERAL_RANGE, GENERAL_RANGE, size=shape)


def _fold_points(size, align_corners):
    low, span = (0.0, size - 1.0) if align_corners else (-0.5, float(size))
    folds = [low + j * span for j in range(-4, 5)] if span > 0 else [0.0]
    return np.array(folds + [low + 7.25 * span, low - 5.5 * span, 1.25, size - 1.75])


def _band_points(size, align_corners):
    return np.array([-0.5, -0.375, -0.25, -0.125, size - 0.875, size - 0.75, size - 0.5,
                     -0.5 - 2 * size + 0.25, 1.25])


def _sampler_grid(family, rng, n, out, spatial, align_corners):
    """Grid for a sampler edge-case ``family`` (general position otherwise)."""
    k = len(spatial)
    shape = (n, *out, k)
    if family == "integer-knots":
        return _pixel_grid(rng, n, out, spatial, align_corners, lambda s: np.arange(-2.0, s + 2.0))
    if family == "border-clips":
        return _pixel_grid(rng, n, out, spatial, align_corners,
                           lambda s: np.array([-3.0, -1.0, 0.0, 0.0, s - 1.0, s - 1.0, s, s + 2.0,
                                               0.25, s - 1.25]))
    if family == "reflection-folds":
        return _pixel_grid(rng, n, out, spatial, align_corners, lambda s: _fold_points(s, align_corners))
    if family == "half-pixel-bands":
        return _pixel_grid(rng, n, out, spatial, align_corners, lambda s: _band_points(s, align_corners))
    if family == "nearest-ties":
        return _pixel_grid(rng, n, out, spatial, align_corners, lambda s: np.arange(-2.5, s + 1.0))
    grid = _general_grid(rng, shape)
    if family == "non-finite":
        hit = rng.random(shape) < 0.2
        grid = np.where(hit, rng.choice(NONFINITE, size=shape), grid)
    elif family == "huge-coordinates":
        hit = rng.random(shape) < 0.4
        grid = np.where(hit, rng.choice(HUGE_COORDS, size=shape), grid)
    elif family == "huge-coordinates-reflection":
        hit = rng.random(shape) < 0.4
        grid = np.where(hit, rng.choice(REFLECTION_HUGE, size=shape), grid)
    elif family == "duplicate-points":
        flat = grid.reshape(-1, k)
        flat[:] = flat[0]
        flat[1::3] = flat[-1] if len(flat) > 1 else flat[0]
        grid = flat.reshape(shape)
    return grid


def _case_seed(version, case_id):
    digest = hashlib.sha256(f"{FORMAT_NAME}/{version}/{case_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _option_tag(mode, padding_mode, align_corners):
    return f"{mode}-{padding_mode}-{'ac' if align_corners else 'noac'}"


def _sampler_specs():
    """(case id, op, family, k, mode, padding_mode, align_corners, dtype) of every sampler case."""
    specs = []

    def add(op, family, k, m, p, ac, dtype="float64"):
        tag = _option_tag(m, p, ac)
        prefix = op if family == "general" else f"{op}-{family}"
        specs.append((f"{prefix}-{k}d-{tag}" + ("" if dtype == "float64" else f"-{dtype}"),
                      op, family, k, m, p, ac, dtype))

    full = [(k, m, p, ac) for k, m, p in combinations(pytorch=True) for ac in (False, True)]
    for op in SAMPLER_OPS:
        for combo in full:
            add(op, "general", *combo)
    for k, m, p, ac in full:
        if k == 2 or m == "bilinear":
            add("grid_sample", "integer-knots", k, m, p, ac)
            add("grid_sample", "size-1-axes", k, m, p, ac)
    for ac in (False, True):
        for m in MODES:
            add("grid_sample", "border-clips", 2, m, "border", ac)
            add("grid_sample", "reflection-folds", 2, m, "reflection", ac)
        for p in PADDINGS:
            add("grid_sample", "nearest-ties", 2, "nearest", p, ac)
    for m in MODES:
        add("grid_sample", "half-pixel-bands", 2, m, "reflection", False)
        add("grid_sample", "duplicate-points", 2, m, "zeros", False)
        for p in PADDINGS:
            add("grid_sample", "non-finite", 2, m, p, False)
            add("grid_sample", "huge-coordinates", 2, m, p, False)
    for p in PADDINGS:
        add("grid_sample", "non-finite", 3, "bilinear", p, True)
    add("grid_sample", "border-clips", 3, "bilinear", "border", True)
    add("grid_sample", "reflection-folds", 3, "bilinear", "reflection", False)
    add("grid_sample", "duplicate-points", 3, "bilinear", "zeros", True)
    add("grid_sample", "float32", 2, "bilinear", "zeros", False, "float32")
    add("grid_sample", "float32", 2, "bicubic", "border", True, "float32")
    add("grid_sample_double_backward", "integer-knots", 2, "bilinear", "border", False)
    add("grid_sample_double_backward", "integer-knots", 2, "bicubic", "reflection", True)
    return specs


def _sampler_case(spec, rng):
    case_id, op, family, k, mode, padding_mode, ac, dtype = spec
    n, c = 2, 2
    if family in ("integer-knots", "nearest-ties"):
        spatial = DYADIC_SPATIAL[k, ac]
    elif family == "size-1-axes":
        spatial = (1, 3) if k == 2 else (1, 3, 1)
    else:
        spatial = (4, 5) if k == 2 else (2, 3, 4)
    out = (3, 4) if k == 2 else (2, 2, 3)
    grid_family = family
    if family == "huge-coordinates" and padding_mode == "reflection":
        grid_family = "huge-coordinates-reflection"
    grid = _sampler_grid(grid_family, rng, n, out, spatial, ac)
    U = rng.standard_normal((n, c, *spatial))
    dV = rng.standard_normal((n, c, *out))
    arrays = {"U": U, "grid": grid}
    if op == "grid_sample":
        cot = {"dV": dV}
    elif op == "grid_sample_jvp":
        cot = {"tU": rng.standard_normal(U.shape), "tgrid": rng.standard_normal(grid.shape)}
    else:
        arrays = {"dV": dV, "U": U, "grid": grid}
        cot = {"g_dU": rng.standard_normal(U.shape), "g_dgrid": rng.standard_normal(grid.shape)}
    cast = {name: x.astype(dtype) for name, x in arrays.items()}
    cot = {name: x.astype(dtype) for name, x in cot.items()}
    options = {"mode": mode, "padding_mode": padding_mode, "align_corners": ac}
    return case_id, op, family, options, cast, cot


def _grid_specs():
    specs = []
    for ac in (False, True):
        tag = "ac" if ac else "noac"
        for op, k in (("affine_grid", 2), ("affine_grid", 3), ("attention_grid", 2),
                      ("projective_grid", 2), ("tps_grid", 2)):
            specs.append((f"{op}-{k}d-{tag}", op, "general", k, ac))
        specs.append((f"affine_grid-size-1-axes-2d-{tag}", "affine_grid", "size-1-axes", 2, ac))
        specs.append((f"affine_grid-size-1-axes-3d-{tag}", "affine_grid", "size-1-axes", 3, ac))
        specs.append((f"projective_grid-projective-horizon-2d-{tag}", "projective_grid",
                      "projective-horizon", 2, ac))
    return specs


def _grid_case(spec, rng):
    case_id, op, family, k, ac = spec
    n = 2
    if family == "size-1-axes":
        spatial = (1, 3) if k == 2 else (1, 1, 2)
    else:
        spatial = (3, 4) if k == 2 else (2, 3, 4)
    size = [n, 1, *spatial]
    arrays = {}
    if op == "affine_grid":
        theta = np.eye(k, k + 1) + 0.3 * rng.standard_normal((n, k, k + 1))
    elif op == "attention_grid":
        theta = np.array([0.7, 0.1, -0.2]) + 0.2 * rng.standard_normal((n, 3))
    elif op == "projective_grid":
        theta = np.eye(3) + 0.2 * rng.standard_normal((n, 3, 3))
        if family == "projective-horizon":
            theta[:, 2, :2] = rng.choice([-1.5, 1.5], size=(n, 2))  # w' <= 0 on part of the image
    else:
        cp = grids.tps_control_points(16)
        theta = cp + 0.1 * rng.standard_normal((n, 16, 2))
        arrays["control_points"] = cp
    arrays["theta"] = theta
    cot = {"dgrid": rng.standard_normal((n, *spatial, k))}
    return case_id, op, family, {"size": size, "align_corners": ac}, arrays, cot


def load_cases(version=REFERENCE_VERSION):
    """Build every case of a reference ``version`` in memory (no files).

    Returns
    -------
    list of dict
        Per case: ``id``, ``op``, ``family``, ``options``, ``seed``, ``inputs``,
        ``cotangents`` and ``outputs`` (dicts of name -> ndarray).
    """
    _check_version(version, "load_cases")
    cases = []
    builders = [(s, _grid_case) for s in _grid_specs()] + [(s, _sampler_case) for s in _sampler_specs()]
    for spec, build in builders:
        seed = _case_seed(version, spec[0])
        case_id, op, family, options, inputs, cot = build(spec, np.random.default_rng(seed))
        outputs = compute_outputs(op, options, {**inputs, **cot})
        cases.append({"id": case_id, "op": op, "family": family, "options": options, "seed": seed,
                      "inputs": inputs, "cotangents": cot, "outputs": outputs})
    return cases


def _check_version(version, fn):
    version = _checks.check_int(version, "version", fn, minimum=1)
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"{fn}(): expected version in {SUPPORTED_VERSIONS}, got {version}")
    return version


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
        ``inputs``/``cotangents``/``outputs`` (name -> shape, dtype) and ``tolerance``
        (output name -> rtol, atol).

    Examples
    --------
    >>> import tempfile
    >>> manifest = export(tempfile.mkdtemp())
    >>> manifest["cases"][0]["file"]
    'affine_grid-2d-noac.npz'
    """
    fn = "export"
    version = _check_version(version, fn)
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    entries = []
    for case in load_cases(version):
        outputs = case["outputs"]
        entry = {
            "id": case["id"], "file": f"{case['id']}.npz", "op": case["op"],
            "family": case["family"], "rule": RULES[case["family"]], "options": case["options"],
            "dtype": next(iter(outputs.values())).dtype.name, "seed": case["seed"],
            "finite": bool(all(np.isfinite(x).all() for x in case["inputs"].values())),
            "inputs": _describe(case["inputs"]), "cotangents": _describe(case["cotangents"]),
            "outputs": _describe(outputs), "tolerance": _tolerance(outputs),
        }
        arrays = {**case["inputs"], **case["cotangents"], **outputs}
        save_checkpoint(os.path.join(directory, entry["file"]), arrays,
                        {"format": FORMAT_NAME, "version": version, "id": case["id"],
                         "inputs": sorted(case["inputs"]), "cotangents": sorted(case["cotangents"]),
                         "outputs": sorted(outputs)})
        entries.append(entry)
    manifest = {
        "format": FORMAT_NAME, "version": version,
        "comparison": "per output array: same shape, NaN exactly where golden is NaN, and "
                      "|result - golden| <= atol + rtol * |golden| elsewhere",
        "cases": entries,
    }
    atomic_write_bytes(os.path.join(directory, MANIFEST_NAME),
                       (json.dumps(manifest, sort_keys=True, indent=1) + "\n").encode())
    return manifest


# --------------------------------------------------------------------------- check

def _header_problem(headers, name, shape):
    """Why output ``name`` cannot be compared, from its ``.npy`` header alone; or None.

    ``headers`` maps member names to ``(shape, dtype)``.  Nothing is allocated: a missing
    member, a non-float dtype or a shape other than ``shape`` (None: any) is found before
    the array is read.
    """
    if name not in headers:
        return f"missing array {name!r}"
    found, dtype = headers[name]
    if dtype.kind != "f":
        return f"{name}: header claims dtype {dtype}, expected a float array"
    if shape is not None and found != shape:
        return f"{name}: header claims shape {found}, expected {shape}"
    return None


def _read_outputs(path, shapes):
    """Read the output arrays of one case file, each ``.npy`` header checked before it is read.

    Every member's header is first checked against the bytes the member holds
    (:func:`stnref.checkpoint._check_members`: no lying sizes, no objects), then each
    named member's against a float dtype and its expected shape.  Only the named
    members are read (``allow_pickle=False``).

    Parameters
    ----------
    path : str
        An ``.npz`` file.
    shapes : dict of str to tuple or None
        Output name -> the shape its header must claim (None: any shape).

    Returns
    -------
    arrays : dict of str to ndarray
        The outputs whose headers qualified.
    problems : list of str
        One per output that is missing or whose header claims a non-float dtype or
        another shape.

    Raises
    ------
    ValueError
        ``"unreadable: ..."``: not an ``.npz`` archive, corrupt, or a member whose
        header lies about its size or holds objects.
    """
    try:
        headers = _check_members(path, "check", "file")
        with np.load(path, allow_pickle=False) as npz:
            why = {name: _header_problem(headers, name, shape) for name, shape in shapes.items()}
            arrays = {name: npz[name] for name in shapes if why[name] is None}
    except (OSError, EOFError, ValueError, RuntimeError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"unreadable: {err}") from err
    return arrays, [problem for problem in why.values() if problem]


def _compare(golden, result, tol):
    """(ok, max abs err, max rel err, problem) for one output array."""
    if result.dtype.kind != "f":
        return False, np.nan, np.nan, f"dtype {result.dtype}, expected a float array"
    if result.shape != golden.shape:
        return False, np.nan, np.nan, f"shape {result.shape}, expected {golden.shape}"
    g, r = golden.astype(np.float64), result.astype(np.float64)
    nan_g, nan_r = np.isnan(g), np.isnan(r)
    if (nan_g != nan_r).any():
        where = tuple(int(i) for i in np.argwhere(nan_g != nan_r)[0])
        return False, np.nan, np.nan, f"NaN positions differ (first at {where})"
    both = ~nan_g
    with np.errstate(invalid="ignore"):
        err = np.where(both, np.abs(r - g), 0.0)
        err = np.where(both & (r == g), 0.0, err)  # equal infinities
    scale = np.abs(np.where(np.isfinite(g), g, 0.0))  # an infinite golden value is matched exactly
    # relative to |golden|, floored where the absolute tolerance dominates (no 1e300 for golden 0);
    # no floor when rtol = 0 (an absolute or an exact rule), and a zero error is 0, never 0 / 0
    floor = tol["atol"] / tol["rtol"] if tol["rtol"] > 0 else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(err > 0, err / np.maximum(scale, floor), 0.0)
    max_abs = float(err.max()) if err.size else 0.0
    max_rel = float(rel.max()) if rel.size else 0.0
    bad = err > tol["atol"] + tol["rtol"] * scale
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        return False, max_abs, max_rel, (f"off by {err[where]:.3e} at {where} "
                                         f"(golden {g[where]:.17g}, result {r[where]:.17g})")
    return True, max_abs, max_rel, ""


def _tolerance_problem(tol):
    """Why ``tol`` is not ``{"atol": a, "rtol": r}`` with finite a, r >= 0; or None."""
    if not isinstance(tol, dict):
        return f"expected a tolerance {{'atol': ..., 'rtol': ...}}, got {type(tol).__name__}"
    for key in ("atol", "rtol"):
        value = tol.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not 0 <= value <= sys.float_info.max:  # refuses NaN, inf and ints beyond float
            return f"expected {key} to be a finite number >= 0, got {value!r}"
    return None


def _case_problem(case):
    """Why a manifest ``case`` cannot be checked (a missing or malformed key); or None."""
    if not isinstance(case, dict):
        return f"expected an object, got {type(case).__name__}"
    for key in ("id", "file"):
        if not isinstance(case.get(key), str) or not case[key]:
            return f"expected {key!r} to be a non-empty string, got {case.get(key)!r}"
    if os.path.basename(case["file"]) != case["file"] or case["file"] in (".", ".."):
        return f"expected 'file' to be a file name without a directory, got {case['file']!r}"
    outputs, tolerance = case.get("outputs"), case.get("tolerance")
    if not isinstance(outputs, dict) or not outputs:
        return f"expected 'outputs' to be a non-empty object of output arrays, got {outputs!r}"
    if not isinstance(tolerance, dict):
        return f"expected 'tolerance' to be an object (output name -> atol, rtol), got {tolerance!r}"
    for name in sorted(outputs):
        problem = _tolerance_problem(tolerance.get(name))
        if problem:
            return f"tolerance of output {name!r}: {problem}"
    return None


def _read_manifest(path):
    """The manifest at ``path`` with its cases validated, or ValueError naming the problem."""
    fn = "check"
    try:  # a FIFO, a device or a file over MANIFEST_LIMIT is refused before anything is read
        manifest = json.loads(read_regular_file(path, MANIFEST_LIMIT, fn, "golden manifest").decode())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{fn}(): cannot read the golden manifest {path!r}: {err}") from err
    if not isinstance(manifest, dict):  # a file's content, not an argument: ValueError
        raise ValueError(f"{fn}(): golden manifest {path!r}: expected a JSON object, got "  # noqa: TRY004
                         f"{type(manifest).__name__}")
    cases = manifest.get("cases")
    if not isinstance(cases, list) or not cases:
        raise ValueError(f"{fn}(): golden manifest {path!r}: expected 'cases' to be a non-empty "
                         f"list of cases, got {repr(cases)[:80]}")
    for i, case in enumerate(cases):
        problem = _case_problem(case)
        if problem:
            raise ValueError(f"{fn}(): golden manifest {path!r}: case {i}: {problem}")
    return manifest


def _check_case(case, golden_dir, results_dir):
    """(problems, max abs error, max rel error) of one validated manifest case."""
    file = case["file"]
    if not os.path.isfile(os.path.join(results_dir, file)):
        return [f"missing file {file}"], 0.0, 0.0
    names = sorted(case["outputs"])
    try:
        golden, problems = _read_outputs(os.path.join(golden_dir, file), dict.fromkeys(names))
    except ValueError as err:
        return [f"golden {file}: {err}"], 0.0, 0.0
    if problems:
        return [f"golden {file}: {problem}" for problem in problems], 0.0, 0.0
    try:
        result, problems = _read_outputs(os.path.join(results_dir, file),
                                         {name: golden[name].shape for name in names})
    except ValueError as err:
        return [f"{file}: {err}"], 0.0, 0.0
    max_abs = max_rel = 0.0
    for name in sorted(result):
        ok, a, r, why = _compare(golden[name], result[name], case["tolerance"][name])
        max_abs, max_rel = np.nanmax([max_abs, a]), np.nanmax([max_rel, r])
        if not ok:
            problems.append(f"{name}: {why}")
    return problems, max_abs, max_rel


def check(golden_dir, results_dir, out=sys.stdout):
    """Compare ``results_dir`` against the golden cases in ``golden_dir``; print a table.

    For every case of ``golden_dir/manifest.json`` the file of the same name in
    ``results_dir`` is opened (``allow_pickle=False``) and each output array
    named in the manifest is compared with the golden one: same shape, NaN at
    exactly the golden NaN positions, and ``|result - golden| <= atol + rtol *
    |golden|`` with the case's tolerances (both 0: exact agreement).  Extra
    arrays are ignored.  Every ``.npy`` header, golden or result, is checked
    against the bytes its member holds, and a result's against a float dtype and
    the golden shape, before the array is read: a header claiming a huge shape is
    a failure of the case, never an allocation.

    Parameters
    ----------
    golden_dir : str or os.PathLike
        A directory written by :func:`export`.
    results_dir : str or os.PathLike
        A directory of ``<case id>.npz`` files holding the outputs of the
        implementation under test (see ``docs/examples/reference_adapter.py``).
    out : file-like, default sys.stdout
        Where the per-case table goes: case id, PASS/FAIL, max abs error, max
        relative error (``err / max(|golden|, atol / rtol)``; ``err / |golden|``
        when ``rtol`` is 0), and for a failure what failed, where, and the rule
        the case pins.

    Returns
    -------
    bool
        True only if every case passes; a missing, unreadable or mis-shaped file
        or array is a failure.

    Raises
    ------
    ValueError
        ``golden_dir`` has no readable manifest; the manifest's ``cases`` is not a
        non-empty list of cases with ``id``, ``file`` (a plain file name),
        non-empty ``outputs`` and a ``tolerance`` of finite ``atol >= 0`` and
        ``rtol >= 0`` per output; the manifest is not a regular file (a FIFO, a
        device) or is larger than ``MANIFEST_LIMIT`` bytes; ``results_dir`` is not a
        directory, or is ``golden_dir`` itself (the same directory after
        resolving symlinks).
    """
    fn = "check"
    golden_dir, results_dir = os.fspath(golden_dir), os.fspath(results_dir)
    manifest = _read_manifest(os.path.join(golden_dir, MANIFEST_NAME))
    if not os.path.isdir(results_dir):
        state = "is not a directory" if os.path.exists(results_dir) else "does not exist"
        raise ValueError(f"{fn}(): results directory {results_dir!r} {state} (expected a directory "
                         f"of one <case id>.npz per case, written by your implementation)")
    if os.path.realpath(results_dir) == os.path.realpath(golden_dir):
        raise ValueError(f"{fn}(): results directory {results_dir!r}: the results directory is the "
                         f"golden directory {golden_dir!r}; expected the directory your "
                         f"implementation wrote its <case id>.npz files to")
    cases = manifest["cases"]
    width = max([len(c["id"]) for c in cases] + [len("case")])
    print(f"{'case':<{width}}  result  {'max abs':>10}  {'max rel':>10}  notes", file=out)
    n_pass = 0
    for case in cases:
        problems, max_abs, max_rel = _check_case(case, golden_dir, results_dir)
        n_pass += not problems
        notes = ""
        if problems:
            pins = f"pins: {case['rule']}" if case.get("rule") else "general position"
            notes = f"{'; '.join(problems)} | {pins}"
        print(f"{case['id']:<{width}}  {'FAIL' if problems else 'PASS':<6}  {max_abs:10.3e}  "
              f"{max_rel:10.3e}  {notes}".rstrip(), file=out)
    print(f"{n_pass}/{len(cases)} cases passed (reference version {manifest.get('version')})", file=out)
    return n_pass == len(cases)
