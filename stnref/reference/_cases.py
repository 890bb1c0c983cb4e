"""The golden cases of every reference version: the ops, the settings, the families, the inputs.

A case is one op of the package evaluated on seeded inputs: its id, op, family (the
convention it pins, or ``general``), options, inputs, cotangents and outputs.  Version 1
is frozen: its list of cases and its inputs never change (``export(dir, version=1)``
reproduces it byte for byte).  From version 2 the sampler cases are generated from two
tables, so that a new sampler setting is a new set of cases:

* :func:`sampler_settings` -- every (dimension, mode, padding, ``align_corners``) the
  sampler supports;
* :data:`COVERAGE` -- per family, the ops it exercises and the settings it applies to
  (the coverage rule of docs/conventions.md §7.7: a family is generated for every setting
  in which its behaviour exists).

Version 2 inputs are exactly representable in float32, and every float64 case also holds
the float32 answers (the outputs computed in float32 from the same numbers), so a kernel
that computes in float32 is judged against what float32 gives, not against float64.
Versions 1 and 2 hold PyTorch's settings; version 3 holds every row of
:mod:`stnref.sampler_settings` (constant fill, wrap, tricubic) and bicubic with a second
Keys parameter, with the gradient of the fill value among the outputs.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Mapping

import numpy as np

from .. import _checks, grids
from .. import sampler_settings as table
from ..sampling import grid_sample, grid_sample_backward
from ..second_order import grid_sample_double_backward, grid_sample_jvp

FORMAT_NAME = "stnref-golden"
REFERENCE_VERSION = 3
SUPPORTED_VERSIONS = (1, 2, 3)
GENERAL_RANGE = 1.4        # general-position grids: normalised coordinates uniform in +-1.4
HUGE_COORDS = (1e30, -1e30, 1e15, -3e9, 2e6, -4.5e4)
REFLECTION_HUGE = (1e4, -3.3e3, 777.7)   # version 1, reflection: well-conditioned fold counts
# Version 2, every setting: normalised magnitudes whose pixel coordinates straddle 2^31
# (int32 indices: 1e9 -> ~2e9 px, 3e9 -> ~7e9 px) and 2^63 (int64: 1e18 -> ~2.5e18 px,
# 1e19 -> ~2.5e19 px), and the range where a reflection's fold count needs all 53 bits.
HUGE_MAGNITUDES = (4.5e4, 2e6, 1e9, 3e9, 1e12, 1e15, 1e16, 1e17, 1e18, 1e19, 1e30)
NONFINITE = (np.nan, np.inf, -np.inf)
MODES, PADDINGS = table.MODES, table.PADDING_MODES      # of the current version
PYTORCH_MODES = ("bilinear", "nearest", "bicubic")         # versions 1 and 2: PyTorch 2.13's,
PYTORCH_PADDINGS = ("zeros", "border", "reflection")       # frozen with them
FILL_CASE = -1.25      # version 3: the fill value of every constant-padding case (exact in float32)
CUBIC_A_CASE = -0.5    # version 3: the second Keys parameter, beside PyTorch's -0.75
SAMPLER_OPS = ("grid_sample", "grid_sample_jvp", "grid_sample_double_backward")
SAMPLER_OPTIONS = ("mode", "padding_mode", "align_corners")
NUMERIC_OPTIONS = ("fill_value", "cubic_a")      # version 3: present where the setting has them
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
# ... and with a fill padding (the fill value's tangent or cotangent, 0-d)
FILL_ARRAYS = {"grid_sample": (), "grid_sample_jvp": ("tfill_value",),
               "grid_sample_double_backward": ("g_dfill_value",)}

# The convention each edge-case family pins (sections of docs/conventions.md in brackets).
RULES_V1 = {
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
RULES = {
    **RULES_V1,
    "huge-coordinates": "finite coordinates of any magnitude, both signs, on each axis, across "
                        "2^31 and 2^63 pixels: out of range with no index overflow; reflection "
                        "folds as PyTorch computes them (docs/conventions.md §5.1, §3.7)",
    "nearest-ties": "nearest rounds half to even after padding: ties inside, outside and beyond "
                    "folds, where rounding before reflecting differs (docs/conventions.md §4.2, §3.4)",
    "wrap-periods": "wrap: each tap's index modulo the size, over several periods both ways; "
                    "nearest rounds before the modulo (docs/conventions.md §3.10)",
}
RULES_BY_VERSION = {1: RULES_V1, 2: RULES, 3: RULES}


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
        In the inputs' dtype (float32 in, float32 out, computed in float32).

    Raises
    ------
    ValueError
        Unknown ``op``; an option or array the op needs is missing (named, see
        ``OP_ARRAYS``); or the op's own validation fails.
    TypeError
        ``options`` or ``arrays`` is not a dict.

    Examples
    --------
    >>> import numpy as np
    >>> out = compute_outputs("affine_grid", {"size": (1, 1, 2, 2), "align_corners": True},
    ...                       {"theta": np.eye(2, 3)[None], "dgrid": np.ones((1, 2, 2, 2))})
    >>> out["grid"][0, :, :, 0]
    array([[-1.,  1.],
           [-1.,  1.]])
    """
    fn = "compute_outputs"
    op = _checks.check_choice(op, "op", fn, OP_ARRAYS)
    _require(options, SAMPLER_OPTIONS if op in SAMPLER_OPS else GRID_OPTIONS, "options", op, fn)
    _require(arrays, OP_ARRAYS[op], "arrays", op, fn)
    a = arrays
    if op in SAMPLER_OPS:
        return _sampler_outputs(op, options, a, fn)
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


def _sampler_outputs(op, options, a, fn):
    """The sampler ops of :func:`compute_outputs`; with a fill padding, the fill value's tangent
    (``tfill_value``), cotangent (``g_dfill_value``) and gradients (``dfill_value``,
    ``g_fill_value``) too, as 0-d arrays."""
    kw = {key: options[key] for key in SAMPLER_OPTIONS}
    kw.update({key: options[key] for key in NUMERIC_OPTIONS if key in options})
    fill = options["padding_mode"] in table.FILL_PADDINGS
    if fill:
        _require(a, FILL_ARRAYS[op], "arrays", op, fn)
    if op == "grid_sample":
        V = grid_sample(a["U"], a["grid"], **kw)
        grads = grid_sample_backward(a["dV"], a["U"], a["grid"], **kw, need_dfill_value=fill)
        out = {"V": V, "dU": grads[0], "dgrid": grads[1]}
        return {**out, "dfill_value": np.asarray(grads[2])} if fill else out
    if op == "grid_sample_jvp":
        extra = {"tfill_value": a["tfill_value"][()]} if fill else {}
        return {"tV": grid_sample_jvp(a["U"], a["grid"], a["tU"], a["tgrid"], **kw, **extra)}
    extra = {"g_dfill_value": a["g_dfill_value"][()], "need_g_fill_value": True} if fill else {}
    g = grid_sample_double_backward(a["g_dU"], a["g_dgrid"], a["dV"], a["U"], a["grid"], **kw, **extra)
    out = {"g_dV": g[0], "g_U": g[1], "g_grid": g[2]}
    return {**out, "g_fill_value": np.asarray(g[3])} if fill else out


# --------------------------------------------------------------------------- settings and coverage

Setting = collections.namedtuple("Setting", "k mode padding_mode align_corners fill_value cubic_a",
                                 defaults=(table.FILL_VALUE, table.CUBIC_A))


def sampler_settings(version=REFERENCE_VERSION):
    """Every sampler setting of reference ``version``: a :class:`Setting` per dimension ``k``,
    mode, padding, ``align_corners`` and numeric options.

    Versions 1 and 2: PyTorch's settings, frozen (bicubic 2-D only).  Version 3: every row
    of :mod:`stnref.sampler_settings` in every dimension it supports, constant padding with
    ``fill_value=FILL_CASE``, and each cubic setting again with ``cubic_a=CUBIC_A_CASE``.
    """
    if version < 3:
        return [Setting(k, m, p, ac) for k in (2, 3) for m in PYTORCH_MODES for p in PYTORCH_PADDINGS
                for ac in (False, True) if not (m == "bicubic" and k == 3)]
    settings = []
    for k, m, p in table.combinations():
        fill = FILL_CASE if p in table.FILL_PADDINGS else table.FILL_VALUE
        for ac in (False, True):
            settings.append(Setting(k, m, p, ac, fill))
            if m in table.CUBIC_MODES:
                settings.append(Setting(k, m, p, ac, fill, CUBIC_A_CASE))
    return settings


def _base(setting):
    """The setting itself, not a second Keys parameter: A enters only the weights, so the
    families whose behaviour does not depend on the weights are generated once."""
    return setting.cubic_a == table.CUBIC_A


def _every(setting):
    return True


# family -> (ops it exercises, the settings it applies to): the coverage rule, versions 2-3.
COVERAGE = {
    "general": (SAMPLER_OPS, _every),
    "integer-knots": (SAMPLER_OPS, _every),
    "size-1-axes": (("grid_sample",), _base),
    "huge-coordinates": (("grid_sample",), _base),
    "non-finite": (("grid_sample",), _base),
    "duplicate-points": (("grid_sample",), _base),
    "float32": (("grid_sample",), _base),
    "border-clips": (("grid_sample",), lambda s: _base(s) and s.padding_mode == "border"),
    "reflection-folds": (("grid_sample",), lambda s: _base(s) and s.padding_mode == "reflection"),
    "half-pixel-bands": (("grid_sample",), lambda s: _base(s) and s.padding_mode == "reflection"
                         and not s.align_corners),
    "nearest-ties": (("grid_sample",), lambda s: s.mode == "nearest"),
    "wrap-periods": (("grid_sample",), lambda s: _base(s) and s.padding_mode == "wrap"),
}


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


def _balanced_pixel_grid(rng, n, out, spatial, align_corners, candidates):
    """As :func:`_pixel_grid`, each candidate used as evenly as the points allow (version 2)."""
    k = len(spatial)
    grid = np.empty((n, *out, k))
    points = n * int(np.prod(out))
    for a in range(k):
        size = spatial[k - 1 - a]
        values = rng.permutation(np.resize(candidates(size), points))
        grid[..., a] = _normalize(values.reshape(n, *out), size, align_corners)
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


def _clip_points(size):
    return np.array([-3.0, -1.0, 0.0, 0.0, size - 1.0, size - 1.0, size, size + 2.0, 0.25, size - 1.25])


def _tie_points(size):
    """Half-integers from two periods of reflection below the image to two above it."""
    return np.arange(-2.0 * size - 0.5, 3.0 * size + 1.0)


def _period_points(size):
    """Each wrap period's first and last pixel, its edges and a quarter inside, three periods
    below the image to three above."""
    offsets = np.array([0.0, 0.25, 0.5, size - 1.0, size - 0.5])
    return (np.arange(-3, 4)[:, None] * size + offsets).ravel()


def _sampler_grid(family, rng, n, out, spatial, align_corners):
    """Version 1: grid for a sampler edge-case ``family`` (general position otherwise)."""
    k = len(spatial)
    shape = (n, *out, k)
    if family == "integer-knots":
        return _pixel_grid(rng, n, out, spatial, align_corners, lambda s: np.arange(-2.0, s + 2.0))
    if family == "border-clips":
        return _pixel_grid(rng, n, out, spatial, align_corners, _clip_points)
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


def _huge_grid(rng, n, out, k):
    """Version 2: per batch element, every (magnitude, sign, axis) of HUGE_MAGNITUDES once,
    the other axes inside the image (so a wrong value shows), the rest huge on every axis."""
    combos = [(m, s, a) for m in HUGE_MAGNITUDES for s in (1.0, -1.0) for a in range(k)]
    points = int(np.prod(out))
    grid = np.empty((n, points, k))
    for b in range(n):
        g = rng.uniform(-0.9, 0.9, size=(points, k))
        for p, (m, s, a) in enumerate(combos):
            g[p, a] = s * m
        rest = slice(len(combos), points)
        g[rest] = rng.choice(HUGE_MAGNITUDES, size=g[rest].shape) * rng.choice((1.0, -1.0), size=g[rest].shape)
        grid[b] = g[rng.permutation(points)]
    return grid.reshape(n, *out, k)


def _sampler_grid_v2(family, rng, n, out, spatial, align_corners):
    """Version 2: grid for a sampler family; pixel families use each candidate evenly."""
    pixel = {
        "integer-knots": lambda s: np.arange(-2.0, s + 2.0),
        "border-clips": _clip_points,
        "reflection-folds": lambda s: _fold_points(s, align_corners),
        "half-pixel-bands": lambda s: _band_points(s, align_corners),
        "nearest-ties": _tie_points,
        "wrap-periods": _period_points,
    }
    if family in pixel:
        return _balanced_pixel_grid(rng, n, out, spatial, align_corners, pixel[family])
    if family == "huge-coordinates":
        return _huge_grid(rng, n, out, len(spatial))
    return _sampler_grid(family, rng, n, out, spatial, align_corners)


def _case_seed(version, case_id):
    digest = hashlib.sha256(f"{FORMAT_NAME}/{version}/{case_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _option_tag(mode, padding_mode, align_corners, cubic_a=table.CUBIC_A):
    """``mode-padding-ac|noac``; a Keys parameter other than PyTorch's joins the mode (``bicubic-a-0.5``)."""
    mode = mode if cubic_a == table.CUBIC_A else f"{mode}-a{cubic_a:g}"
    return f"{mode}-{padding_mode}-{'ac' if align_corners else 'noac'}"


def _case_id(op, family, k, mode, padding_mode, align_corners, dtype, cubic_a=table.CUBIC_A):
    prefix = op if family == "general" else f"{op}-{family}"
    suffix = "" if dtype == "float64" else f"-{dtype}"
    return f"{prefix}-{k}d-{_option_tag(mode, padding_mode, align_corners, cubic_a)}{suffix}"


def _sampler_specs():
    """Version 1: (case id, op, family, k, mode, padding_mode, align_corners, dtype) of every
    sampler case."""
    specs = []

    def add(op, family, k, m, p, ac, dtype="float64"):
        specs.append((_case_id(op, family, k, m, p, ac, dtype), op, family, k, m, p, ac, dtype))

    full = [tuple(s)[:4] for s in sampler_settings(1)]
    for op in SAMPLER_OPS:
        for combo in full:
            add(op, "general", *combo)
    for k, m, p, ac in full:
        if k == 2 or m == "bilinear":
            add("grid_sample", "integer-knots", k, m, p, ac)
            add("grid_sample", "size-1-axes", k, m, p, ac)
    for ac in (False, True):
        for m in PYTORCH_MODES:
            add("grid_sample", "border-clips", 2, m, "border", ac)
            add("grid_sample", "reflection-folds", 2, m, "reflection", ac)
        for p in PYTORCH_PADDINGS:
            add("grid_sample", "nearest-ties", 2, "nearest", p, ac)
    for m in PYTORCH_MODES:
        add("grid_sample", "half-pixel-bands", 2, m, "reflection", False)
        add("grid_sample", "duplicate-points", 2, m, "zeros", False)
        for p in PYTORCH_PADDINGS:
            add("grid_sample", "non-finite", 2, m, p, False)
            add("grid_sample", "huge-coordinates", 2, m, p, False)
    for p in PYTORCH_PADDINGS:
        add("grid_sample", "non-finite", 3, "bilinear", p, True)
    add("grid_sample", "border-clips", 3, "bilinear", "border", True)
    add("grid_sample", "reflection-folds", 3, "bilinear", "reflection", False)
    add("grid_sample", "duplicate-points", 3, "bilinear", "zeros", True)
    add("grid_sample", "float32", 2, "bilinear", "zeros", False, "float32")
    add("grid_sample", "float32", 2, "bicubic", "border", True, "float32")
    add("grid_sample_double_backward", "integer-knots", 2, "bilinear", "border", False)
    add("grid_sample_double_backward", "integer-knots", 2, "bicubic", "reflection", True)
    return specs


def _sampler_specs_table(version):
    """Versions 2-3: every family of :data:`COVERAGE` on every setting it applies to:
    (case id, op, family, setting, dtype)."""
    specs = []
    for setting in sampler_settings(version):
        k, mode, padding, ac, _, cubic_a = setting
        for family, (ops, applies) in COVERAGE.items():
            if not applies(setting):
                continue
            dtype = "float32" if family == "float32" else "float64"
            for op in ops:
                specs.append((_case_id(op, family, k, mode, padding, ac, dtype, cubic_a), op, family,
                              setting, dtype))
    return specs


# family -> (spatial size, output size) of the version-2 sampler cases, per dimension k
_SHAPES_V2 = {
    "huge-coordinates": {2: ((4, 5), (6, 8)), 3: ((2, 3, 4), (3, 4, 6))},
    "size-1-axes": {2: ((1, 3), (3, 4)), 3: ((1, 3, 1), (2, 2, 3))},
    "general": {2: ((4, 5), (3, 4)), 3: ((2, 3, 4), (2, 2, 3))},
}
_PIXEL_FAMILIES = ("integer-knots", "border-clips", "reflection-folds", "half-pixel-bands", "nearest-ties",
                   "wrap-periods")


def _sampler_shapes(version, family, k, ac):
    if version == 1:
        if family in ("integer-knots", "nearest-ties"):
            spatial = DYADIC_SPATIAL[k, ac]
        elif family == "size-1-axes":
            spatial = (1, 3) if k == 2 else (1, 3, 1)
        else:
            spatial = (4, 5) if k == 2 else (2, 3, 4)
        return spatial, ((3, 4) if k == 2 else (2, 2, 3))
    if family in _PIXEL_FAMILIES:       # exact pixel coordinates, every candidate on every axis
        return DYADIC_SPATIAL[k, ac], ((4, 8) if k == 2 else (2, 4, 4))
    return _SHAPES_V2.get(family, _SHAPES_V2["general"])[k]


def _sampler_case(spec, rng, version=1):
    if version == 1:
        case_id, op, family, k, mode, padding_mode, ac, dtype = spec
        setting = Setting(k, mode, padding_mode, ac)
    else:
        case_id, op, family, setting, dtype = spec
        k, mode, padding_mode, ac = setting[:4]
    n, c = 2, 2
    spatial, out = _sampler_shapes(version, family, k, ac)
    if version == 1:
        grid_family = family
        if family == "huge-coordinates" and padding_mode == "reflection":
            grid_family = "huge-coordinates-reflection"
        grid = _sampler_grid(grid_family, rng, n, out, spatial, ac)
    else:
        grid = _sampler_grid_v2(family, rng, n, out, spatial, ac)
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
    options = {"mode": mode, "padding_mode": padding_mode, "align_corners": ac}
    if version >= 3:     # the numeric options the setting has, and the fill value's tangents
        if padding_mode in table.FILL_PADDINGS:
            options["fill_value"] = setting.fill_value
            cot.update({name: rng.standard_normal(()) for name in FILL_ARRAYS[op]})
        if mode in table.CUBIC_MODES:
            options["cubic_a"] = setting.cubic_a
    cast = {name: x.astype(dtype) for name, x in arrays.items()}
    cot = {name: x.astype(dtype) for name, x in cot.items()}
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


def _grid_case(spec, rng, version=1):
    del version  # the generator cases are the same in every version
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


def check_version(version, fn):
    version = _checks.check_int(version, "version", fn, minimum=1)
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"{fn}(): expected version in {SUPPORTED_VERSIONS}, got {version}")
    return version


def _as_float32_exact(arrays):
    """Every float64 array rounded to the nearest float32 and back: numbers a float32 kernel
    reads exactly (version 2)."""
    return {name: x.astype(np.float32).astype(x.dtype) if x.dtype == np.float64 else x
            for name, x in arrays.items()}


def _pytorch_has(op, options, inputs):
    """Whether PyTorch has the op and, for the sampler, the setting (stnref.sampler_settings)."""
    if op not in SAMPLER_OPS:
        return op == "affine_grid"
    return table.is_pytorch(options["mode"], options["padding_mode"], inputs["grid"].ndim - 2,
                            options.get("fill_value", table.FILL_VALUE), options.get("cubic_a", table.CUBIC_A))


def load_cases(version=REFERENCE_VERSION):
    """Build every case of a reference ``version`` in memory (no files).

    Parameters
    ----------
    version : int, default REFERENCE_VERSION
        A supported reference version (``SUPPORTED_VERSIONS``).

    Returns
    -------
    list of dict
        Per case: ``id``, ``op``, ``family``, ``options``, ``seed``, ``inputs``,
        ``cotangents`` and ``outputs`` (dicts of name -> ndarray, the outputs in the case's
        dtype).  From version 2 also ``float32``: the outputs computed in float32 from the
        same inputs (the outputs themselves for a float32 case); from version 3 ``pytorch``:
        whether PyTorch has the op and the setting.

    Examples
    --------
    >>> cases = load_cases()
    >>> sorted(next(c for c in cases if c["op"] == "grid_sample")["float32"])
    ['V', 'dU', 'dgrid']
    """
    version = check_version(version, "load_cases")
    cases = []
    builders = [(s, _grid_case) for s in _grid_specs()]
    builders += [(s, _sampler_case) for s in (_sampler_specs() if version == 1 else _sampler_specs_table(version))]
    for spec, build in builders:
        seed = _case_seed(version, spec[0])
        case_id, op, family, options, inputs, cot = build(spec, np.random.default_rng(seed), version)
        if version >= 2:
            inputs, cot = _as_float32_exact(inputs), _as_float32_exact(cot)
        arrays = {**inputs, **cot}
        outputs = compute_outputs(op, options, arrays)
        case = {"id": case_id, "op": op, "family": family, "options": options, "seed": seed,
                "inputs": inputs, "cotangents": cot, "outputs": outputs}
        if version >= 3:
            case["pytorch"] = _pytorch_has(op, options, inputs)
        if version >= 2:
            single = {name: x.astype(np.float32) for name, x in arrays.items()}
            same = all(x.dtype == np.float32 for x in arrays.values())
            case["float32"] = outputs if same else compute_outputs(op, options, single)
        cases.append(case)
    return cases
