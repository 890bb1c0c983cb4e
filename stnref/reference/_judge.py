"""Judging one result array against its golden array, locating its worst element, and
naming the rule that explains a difference.

The pass rule (docs/conventions.md §6.3): the same shape, NaN exactly where the golden
array has NaN, and ``|result - golden| <= atol + rtol * |golden|`` elsewhere; an infinite
golden value is matched exactly.  :func:`compare` returns everything a kernel author needs
to act on a failure: how many elements fail of how many, the worst one, and on which side
each NaN is.  :func:`explain` tests a few models of common departures from PyTorch on the
failing grid points -- non-finite coordinates, a float32 result judged in float64,
rounding before reflecting, another tie rule, huge coordinates -- and names only those
that predict what the result actually holds.
"""

from __future__ import annotations

import dataclasses

import numpy as np

TOLERANCES = {"float64": {"rtol": 1e-10, "atol": 1e-10}, "float32": {"rtol": 1e-5, "atol": 1e-5}}
HUGE_PIXELS = 1e4        # a pixel coordinate this far out is "huge": far beyond every golden image
INT32_LIMIT = 2.0**31
INT64_LIMIT = 2.0**63
MODEL_RANGE = 1e6        # nearest models are evaluated where float64 reflects exactly
# Arrays whose leading axes are (n, c, *grid point) or (n, *grid point, k), per op family.
GRID_POINT_ARRAYS = {"V": "nc", "tV": "nc", "g_dV": "nc", "dgrid": "k", "g_grid": "k"}
PIXEL_ARRAYS = ("dU", "g_U")
AXES = "xyz"


@dataclasses.dataclass
class ArrayVerdict:
    """How one result array compares with its golden array (see :func:`compare`)."""

    name: str
    ok: bool
    elements: int = 0
    failing: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    problem: str = ""                    # a dtype or shape mismatch: nothing else compared
    worst: tuple | None = None           # index of the largest error among finite mismatches
    golden_value: float = 0.0
    result_value: float = 0.0
    nan_in_result: int = 0               # result NaN where golden is not
    nan_in_golden: int = 0               # golden NaN where result is not
    first_nan_in_result: tuple | None = None
    first_nan_in_golden: tuple | None = None
    mask: np.ndarray | None = dataclasses.field(default=None, repr=False)  # failing elements
    result_dtype: str = ""


def _index(flat, shape):
    return tuple(int(i) for i in np.unravel_index(flat, shape))


def compare(name, golden, result, tol):
    """Compare ``result`` with ``golden`` under ``tol`` (``{"atol", "rtol"}``).

    Returns
    -------
    ArrayVerdict
        ``ok``; the number of ``elements`` and of ``failing`` ones (NaN mismatches
        included); ``max_abs`` and ``max_rel`` (``err / max(|golden|, atol / rtol)``, or
        ``err / |golden|`` when ``rtol`` is 0) over the elements where both are not NaN;
        the ``worst`` index (largest error among the elements failing the tolerance) with
        both values there; NaN mismatches counted per side with the first index of each.
    """
    if result.dtype.kind != "f":
        return ArrayVerdict(name, False, problem=f"dtype {result.dtype}, expected a float array")
    if result.shape != golden.shape:
        return ArrayVerdict(name, False, problem=f"shape {result.shape}, expected {golden.shape}")
    g, r = golden.astype(np.float64), result.astype(np.float64)
    nan_g, nan_r = np.isnan(g), np.isnan(r)
    both = ~nan_g & ~nan_r
    with np.errstate(invalid="ignore"):
        err = np.where(both, np.abs(r - g), 0.0)
        err = np.where(both & (r == g), 0.0, err)  # equal infinities
    scale = np.abs(np.where(np.isfinite(g), g, 0.0))  # an infinite golden value is matched exactly
    # relative to |golden|, floored where the absolute tolerance dominates (no 1e300 for golden 0);
    # no floor when rtol = 0 (an absolute or an exact rule), and a zero error is 0, never 0 / 0
    floor = tol["atol"] / tol["rtol"] if tol["rtol"] > 0 else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(err > 0, err / np.maximum(scale, floor), 0.0)
    with np.errstate(over="ignore"):    # a manifest may allow up to the largest float: bound inf
        off = both & (err > tol["atol"] + tol["rtol"] * scale)
    only_r, only_g = nan_r & ~nan_g, nan_g & ~nan_r
    mask = off | only_r | only_g
    verdict = ArrayVerdict(name, not mask.any(), elements=int(g.size), failing=int(mask.sum()),
                           max_abs=float(err.max()) if err.size else 0.0,
                           max_rel=float(rel.max()) if rel.size else 0.0, mask=mask,
                           nan_in_result=int(only_r.sum()), nan_in_golden=int(only_g.sum()),
                           result_dtype=result.dtype.name)
    if off.any():
        worst = _index(int(np.argmax(np.where(off, err, -1.0))), g.shape)
        verdict.worst, verdict.golden_value, verdict.result_value = worst, g[worst], r[worst]
    if only_r.any():
        verdict.first_nan_in_result = _index(int(np.argmax(only_r)), g.shape)
    if only_g.any():
        verdict.first_nan_in_golden = _index(int(np.argmax(only_g)), g.shape)
    return verdict


# --------------------------------------------------------------------------- locations

class Context:
    """What locates an element of a case's arrays: the sampler's grid and pixel coordinates
    (docs/conventions.md §3.1, computed in float64), or nothing for other ops."""

    def __init__(self, op, options, inputs):
        self.op, self.options, self.inputs = op, options, inputs
        grid, U = inputs.get("grid"), inputs.get("U")
        self.sampler = op.startswith("grid_sample") and grid is not None and U is not None \
            and grid.ndim == U.ndim and grid.shape[-1] == U.ndim - 2
        if self.sampler:
            self.grid = grid.astype(np.float64)
            self.spatial = U.shape[2:]
            self.pixel = pixel_coordinates(self.grid, self.spatial, bool(options.get("align_corners")))

    def point(self, name, index):
        """The grid point of element ``index`` of array ``name``, or None."""
        if not self.sampler:
            return None
        layout = GRID_POINT_ARRAYS.get(name)
        if layout == "nc":
            return (index[0], *index[2:])
        if layout == "k":
            return tuple(index[:-1])
        return None

    def describe(self, name, index):
        """Where element ``index`` of array ``name`` is, in grid and pixel coordinates."""
        point = self.point(name, index)
        if point is not None:
            k = self.grid.shape[-1]
            coords = ", ".join(f"{AXES[a]} {self.grid[point][a]:.9g}" for a in range(k))
            pixels = ", ".join(f"i{AXES[a]} {self.pixel[point][a]:.9g}" for a in range(k))
            return f"grid point {list(point)}: {coords}; pixel {pixels}"
        if self.sampler and name in PIXEL_ARRAYS:
            k = len(self.spatial)
            return "pixel " + ", ".join(f"i{AXES[a]} {index[-1 - a]}" for a in range(k))
        return None


def pixel_coordinates(grid, spatial, align_corners):
    """Pixel coordinates ``i`` of a grid (docs/conventions.md §3.1), float64, per axis."""
    k = grid.shape[-1]
    out = np.empty_like(grid)
    with np.errstate(over="ignore", invalid="ignore"):
        for a in range(k):
            size, x = spatial[k - 1 - a], grid[..., a]
            out[..., a] = (x + 1) / 2 * (size - 1) if align_corners else ((x + 1) * size - 1) / 2
    return out


# --------------------------------------------------------------------------- explanations

def _reflect(p, size, align_corners):
    """Reflection of docs/conventions.md §3.4 in float64, then the clip (exact for |p| < 2^52)."""
    low, span = (0.0, size - 1.0) if align_corners else (-0.5, float(size))
    if span <= 0:
        return np.zeros_like(p)
    e = np.mod(np.abs(p - low), 2 * span)
    return np.clip(np.where(e <= span, low + e, low + 2 * span - e), 0, size - 1)


def _pad(p, size, padding, align_corners):
    if padding == "border":
        return np.clip(p, 0, size - 1)
    if padding == "reflection":
        return _reflect(p, size, align_corners)
    return p


ROUNDINGS = {
    "half to even": np.rint,
    "half up": lambda p: np.floor(p + 0.5),
    "half down": lambda p: np.ceil(p - 0.5),
    "half away from zero": lambda p: np.sign(p) * np.floor(np.abs(p) + 0.5),
    "down (floor, as a truncating cast does)": np.floor,
}


def _nearest_model(ctx, rounding, round_first):
    """V of nearest sampling with another tie rule, or rounding before padding: (n, c, *out).
    Wrap pads the rounded tap (docs/conventions.md §3.10); a tap outside reads the fill value."""
    U = ctx.inputs["U"].astype(np.float64)
    k = len(ctx.spatial)
    padding, ac = ctx.options.get("padding_mode"), bool(ctx.options.get("align_corners"))
    index, inside = [], np.ones(ctx.grid.shape[:-1], dtype=bool)
    with np.errstate(invalid="ignore"):
        for a in range(k):
            size = ctx.spatial[k - 1 - a]
            p = ctx.pixel[..., a]
            if padding == "wrap":
                p = np.mod(ROUNDINGS[rounding](p), size)
            else:
                p = _pad(ROUNDINGS[rounding](p), size, padding, ac) if round_first else \
                    ROUNDINGS[rounding](_pad(p, size, padding, ac))
            ok = np.isfinite(p) & (p >= 0) & (p <= size - 1)
            inside &= ok
            index.append(np.where(ok, p, 0).astype(np.intp))
    n = np.broadcast_to(np.arange(U.shape[0]).reshape((-1,) + (1,) * k), inside.shape)
    picked = np.moveaxis(U, 1, -1)[(n, *index[::-1])]                # (n, *out, c)
    fill = float(ctx.options.get("fill_value", 0.0))
    return np.moveaxis(np.where(inside[..., None], picked, fill), -1, 1)


def _points(mask, layout):
    """Failing grid points (n, *out) of a failing-element mask."""
    return mask.any(axis=1) if layout == "nc" else mask.any(axis=-1)


def _nearest_explanations(ctx, result, golden, tol, remaining):
    """(name, points explained) for each nearest model that predicts ``result`` at failing
    grid points where it differs from ``golden``."""
    found = []
    near = np.all(np.abs(ctx.pixel) < MODEL_RANGE, axis=-1)
    r, g = result.astype(np.float64), golden.astype(np.float64)
    bound = tol["atol"] + tol["rtol"] * np.abs(g)
    models = [("rounds the coordinate before reflecting it; PyTorch reflects, then rounds "
               "half to even (docs/conventions.md §3.4, §4.2)", "half to even", True)] \
        if ctx.options.get("padding_mode") == "reflection" else []
    models += [(f"rounds ties {rule}; PyTorch rounds half to even (docs/conventions.md §4.2)", rule, False)
               for rule in ROUNDINGS if rule != "half to even"]
    for text, rounding, round_first in models:
        with np.errstate(invalid="ignore"):
            model = _nearest_model(ctx, rounding, round_first)
            fits = np.all(np.abs(r - model) <= bound, axis=1) & np.any(np.abs(g - model) > bound, axis=1)
        hit = remaining & near & fits
        if hit.any():
            found.append((text, hit))
            remaining = remaining & ~hit
    return found, remaining


def _huge_explanation(ctx, remaining, failing_points):
    """(text, points) when every remaining failing point is huge and smaller ones agree."""
    finite = np.all(np.isfinite(ctx.pixel), axis=-1)
    mag = np.where(finite, np.max(np.abs(np.where(finite[..., None], ctx.pixel, 0)), axis=-1), np.nan)
    if not remaining.any() or not (finite[remaining]).all():
        return None
    low = float(np.min(mag[remaining]))
    agreeing = finite & ~failing_points & (mag < low)
    if low < HUGE_PIXELS or not agreeing.any():
        return None
    high = float(np.max(mag[agreeing]))
    others = " not explained above" if (failing_points & (mag < low)).any() else ""
    if high < INT32_LIMIT <= low:
        cause = "where an int32 index overflows (2^31 = 2.1e9)"
    elif high < INT64_LIMIT <= low:
        cause = "where an int64 index overflows (2^63 = 9.2e18)"
    elif ctx.options.get("padding_mode") == "reflection":
        cause = "where only PyTorch's own fold arithmetic gives PyTorch's answer (docs/conventions.md §3.7)"
    elif ctx.options.get("padding_mode") == "wrap":
        cause = "where only the remainder as docs/conventions.md §3.10 computes it gives the answer"
    else:
        cause = "finite coordinates of any size are simply out of range (docs/conventions.md §5.1)"
    return (f"differs only where |pixel coordinate| >= {low:.3g} and agrees at every point "
            f"below{others}, up to {high:.3g}: {cause}", remaining)


def explain(ctx, verdicts, results, goldens, tols, judged_dtype):
    """The rules that explain the failing elements of one case, each with the number of
    failing grid points it explains; or a statement that none does.

    Parameters
    ----------
    ctx : Context
    verdicts : dict of str to ArrayVerdict
        The compared arrays (failing ones are explained).
    results, goldens, tols : dict of str
        The arrays and tolerances compared, by name.
    judged_dtype : str
        The dtype whose answers the case was judged against.
    """
    failing = {name: v for name, v in verdicts.items() if not v.ok and not v.problem}
    if not failing:
        return []
    narrower = [v for v in failing.values()
                if np.dtype(v.result_dtype).itemsize < np.dtype(judged_dtype).itemsize]
    lead = []
    if narrower:
        lead = [f"the result is {narrower[0].result_dtype} and this case is judged with "
                f"{judged_dtype} answers; a kernel computing in float32 is judged with --dtype "
                f"float32 (docs/conventions.md §6.3)"]
        small = all(v.nan_in_result == v.nan_in_golden == 0 and v.max_abs <= TOLERANCES["float32"]["atol"]
                    * max(1.0, _finite_max(goldens[v.name])) for v in failing.values())
        if small:
            return lead
        lead[0] += ", though float32 rounding does not explain all of it"
    if not ctx.sampler:
        return lead or ["no known rule explains it"]
    lines = []
    failing_points = np.zeros(ctx.grid.shape[:-1], dtype=bool)
    for name, v in failing.items():
        if name in GRID_POINT_ARRAYS:
            failing_points |= _points(v.mask, GRID_POINT_ARRAYS[name])
    total = int(failing_points.sum())
    remaining = failing_points.copy()
    nonfinite = ~np.all(np.isfinite(ctx.grid), axis=-1)
    if (remaining & nonfinite).any():
        hit = remaining & nonfinite
        lines.append(("differs at grid points with a NaN or inf coordinate: stnref's rule, which "
                      "PyTorch does not follow either (docs/conventions.md §5.2)", hit))
        remaining &= ~hit
    if ctx.options.get("mode") == "nearest" and "V" in failing:
        found, remaining = _nearest_explanations(ctx, results["V"], goldens["V"], tols["V"], remaining)
        lines += found
    huge = _huge_explanation(ctx, remaining, failing_points)
    if huge:
        lines.append(huge)
        remaining = remaining & ~huge[1]
    texts = [f"{text} ({int(hit.sum())} of {total} failing grid points)" for text, hit in lines]
    left = int(remaining.sum())
    unlocated = sorted(n for n in failing if n not in GRID_POINT_ARRAYS)
    if left and texts:
        texts.append(f"{left} of {total} failing grid points unexplained")
    if not texts:
        return lead or ["no known rule explains it (tested: non-finite coordinates, float32 "
                        "results, rounding order, tie rules, huge coordinates)"]
    if unlocated:
        texts.append(f"{', '.join(unlocated)} not explained (no grid point to test)")
    return lead + texts


def _finite_max(x):
    finite = np.abs(x[np.isfinite(x)])
    return float(finite.max()) if finite.size else 0.0
