"""The probes of :func:`stnref.reference.diagnose`: which hypothesis a black-box sampler follows.

The hypotheses and their model are in :mod:`stnref.reference._models`.  The probes
(``_probe_*``) call the sampler through :class:`_Box`, which turns every exception or wrong
shape into a recorded finding, and place their points in pixel space through the
:class:`_Geometry` found first.  Each probe decides one property on its own evidence.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from ..sampler_settings import CUBIC_A
from ._models import (
    CONVENTIONS,
    KERNELS,
    PADDINGS,
    PYTORCH_CONVENTIONS,
    ROUNDINGS,
    TIE_RULES,
    Behaviour,
    keys_basis,
    model_sample,
    predict,
    quantise,
    to_grid,
)

# --------------------------------------------------------------------------- tolerances

SEED = 16                # every probe's data comes from one generator seeded here
TOL_ID = 1e-4            # identification: rival hypotheses differ by > 1e-2, float32 by < 1e-5
TOL_PARITY = 1e-10       # agreement with PyTorch in float64, times max(1, |V|) (conventions §6.3)
TOL_FLOAT32 = 1e-5       # the same for a sampler that computes in float32
EXACT = 1e-13            # a float64 computation that reads a pixel returns it to the last bit
HALF_GAP = 0.01          # pixels either side of a half-integer: nearest's steps, not its ties
POSITION_STEPS = 4096    # positions per pixel where a step in the positions is looked for
FD_STEP = 1e-6           # central differences of fn, in pixels (conventions §7.1)
UNKNOWN = "unknown"


# --------------------------------------------------------------------------- the black box

def _describe_error(err):
    message = " ".join(str(err).split())
    return f"{type(err).__name__}: {message[:200]}"


class _Box:
    """Calls into the sampler under test, each isolated; failures become findings."""

    def __init__(self, fn, backward):
        self.fn, self.backward = fn, backward
        self.calls = 0
        self.dtypes = set()
        self.failures = {}  # probe -> what went wrong (first failure)

    def _call(self, f, args, probe):
        self.calls += 1
        try:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return f(*(a.copy() for a in args)), None
        except KeyboardInterrupt:
            raise
        # the black box may raise anything, even SystemExit (the CLI would exit 0): a finding
        except BaseException as err:  # noqa: BLE001
            return None, self._fail(probe, f"raised {_describe_error(err)}")

    def _fail(self, probe, why):
        self.failures.setdefault(probe, why)
        return why

    def _array(self, x, shape, what, probe):
        if x is None:
            return None, self._fail(probe, f"returned None, expected {what} of shape {tuple(shape)} "
                                           f"(docs/conventions.md §1.1)")
        try:
            x = np.asarray(x)
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # noqa: BLE001 -- e.g. a tensor that needs .detach()
            return None, self._fail(probe, f"returned a {what} that is not an array "
                                           f"({_describe_error(err)})")
        if x.shape != tuple(shape):
            return None, self._fail(probe, f"returned {what} of shape {x.shape}, expected {tuple(shape)} "
                                           f"(docs/conventions.md §1.1)")
        if x.dtype.kind != "f":
            return None, self._fail(probe, f"returned {what} of dtype {x.dtype}, expected a float array "
                                           f"(docs/conventions.md §1.4)")
        self.dtypes.add(x.dtype.name)
        return x.astype(np.float64), None

    def sample(self, U, grid, probe):
        """``fn(U, grid)`` as float64 ``(N, C, H', W')``, or ``(None, why)``."""
        out, why = self._call(self.fn, (U, grid), probe)
        if why:
            return None, why
        return self._array(out, (*U.shape[:2], *grid.shape[1:3]), "V", probe)

    def gradients(self, dV, U, grid, probe):
        """``backward(dV, U, grid)`` as float64 ``(dU, dgrid)``, or ``(None, why)``."""
        out, why = self._call(self.backward, (dV, U, grid), probe)
        if why:
            return None, why
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            return None, self._fail(probe, f"returned {type(out).__name__}, expected (dU, dgrid)")
        dU, why = self._array(out[0], U.shape, "dU", probe)
        dgrid, why2 = self._array(out[1], grid.shape, "dgrid", probe)
        return (None, why or why2) if why or why2 else ((dU, dgrid), None)


class _Geometry(NamedTuple):
    """Where the sampler's grid puts pixels: ``i = a g + b`` per axis, and the component order."""

    name: str             # a CONVENTIONS key, or a description of the fitted map
    order: str            # "xy" or "yx"
    fitted: tuple = None  # per axis (x, y): (a0, a1, b0, b1), a = a0 + a1 n, b = b0 + b1 n; or None

    def maps(self, H, W):
        if self.fitted is None:
            return CONVENTIONS[self.name](W), CONVENTIONS[self.name](H)
        return tuple((a0 + a1 * n, b0 + b1 * n) for (a0, a1, b0, b1), n in zip(self.fitted, (W, H)))

    def grid(self, ix, iy, H, W):
        """Pixel coordinates ``(N, P)`` -> the grid ``(N, 1, P, 2)`` this sampler reads there."""
        return to_grid(ix, iy, self.maps(H, W), self.order)[:, None]

    def sizes(self):
        """``(H, W)`` for which the conventions' maps are exact in binary: ties stay ties."""
        return (5, 9) if self.name == "align_corners=True" else (4, 8)

    @property
    def x_component(self):
        return 0 if self.order == "xy" else 1


class _Run:
    """State shared by the probes of one diagnosis."""

    def __init__(self, box, diagnosis):
        self.box = box
        self.rng = np.random.default_rng(SEED)
        self.d = diagnosis
        self.geo = None
        self.behaviour = Behaviour()
        self.cubic_fit = None  # Keys' A as fitted, unrounded
        self.quantum = 0.0     # the step positions are rounded to, 0: none found
        self.alike = ()        # paddings that give the same value at every point (under a mask)
        self.alike_pads = ()   # and the places of the one chosen that do

    def sample(self, U, ix, iy, probe, geo=None):
        """``fn`` at pixel coordinates ``(N, P)``: ``(N, C, P)``, or None (a recorded failure)."""
        H, W = U.shape[2:]
        V, _ = self.box.sample(U, (geo or self.geo).grid(ix, iy, H, W), probe)
        return None if V is None else V[:, :, 0]

    def image(self, H, W, N=1, C=1):
        """Random pixel values in [1, 2]: never the fill value 0, never float32-representable."""
        return self.rng.uniform(1.0, 2.0, (N, C, H, W))

    def tolerance(self):
        return TOL_FLOAT32 if self.d.precision.startswith(("float32", "mixed")) else TOL_PARITY

    def predict(self, U, ix, iy, behaviour=None):
        ac = PYTORCH_CONVENTIONS.get(self.d.coordinates, False)
        return predict(U, ix, iy, behaviour or self.behaviour, align_corners=ac)


# --------------------------------------------------------------------------- probes: forward

def _gap(A, B):
    """Elementwise ``|A - B|``: 0 where they are equal (NaN with NaN, an infinity with itself),
    inf where a NaN or an infinity meets anything else -- a NaN never agrees with a number
    (``err > tol`` is False for a NaN)."""
    same = (A == B) | (np.isnan(A) & np.isnan(B))
    with np.errstate(invalid="ignore"):
        gap = np.abs(A - B)
    return np.where(same, 0.0, np.where(np.isnan(gap), np.inf, gap))


def _probe_layout(run):
    U = run.image(5, 7, N=2, C=3)
    grid = run.rng.uniform(-0.5, 0.5, (2, 3, 4, 2))
    V, why = run.box.sample(U, grid, "layout")
    if V is None:
        run.d.differences.append(f"fn(U {U.shape}, grid {grid.shape}) {why}; nothing else could be "
                                 f"probed")
        return False
    again, _ = run.box.sample(U, grid, "layout")
    gap = np.inf if again is None else np.max(_gap(V, again), initial=0.0)
    if gap > TOL_ID * max(1.0, np.max(np.abs(V[np.isfinite(V)]), initial=0.0)):
        change = "fails" if again is None else f"differs by up to {gap:.3g}"
        run.d.differences.append(f"fn is not deterministic: a second call on the same (U, grid) "
                                 f"{change}; nothing else could be probed")
        return False
    if gap > 0:  # e.g. a multi-threaded reduction: last bits only, well below what tells rivals apart
        run.d.notes.append(f"not bitwise deterministic: two calls on the same input differ by up "
                           f"to {gap:.3g}")
    run.d.evidence["layout"] = f"fn(U {U.shape}, grid {grid.shape}) returned {V.shape} {sorted(run.box.dtypes)}"
    return True


def _probe_coordinates(run):
    """Every convention x axis order: does each knot of a random image read its own pixel?"""
    H, W = 7, 11
    U = run.image(H, W)
    ky, kx = np.mgrid[0:H, 0:W].reshape(2, -1)                  # every pixel's knot
    m = np.arange(W - 1)
    hx = np.concatenate([m + 0.5 - HALF_GAP, m + 0.5 + HALF_GAP])
    hy = np.concatenate([np.arange(H - 1) + 0.5 - HALF_GAP, np.arange(H - 1) + 0.5 + HALF_GAP])
    ix = np.concatenate([kx, hx, (np.arange(len(hy)) * 3) % W])[None]
    iy = np.concatenate([ky, (np.arange(len(hx)) * 2) % H, hy])[None]
    knots = slice(0, H * W)
    expect = U[0, 0, np.rint(iy[0]).astype(int), np.rint(ix[0]).astype(int)]
    scores = []
    for name in CONVENTIONS:
        for order in ("xy", "yx"):
            V = run.sample(U, ix, iy, "coordinates", _Geometry(name, order))
            if V is None:
                continue
            err = np.abs(V[0, 0] - expect)
            scores.append((float(err[knots].max()), float(err.max()), name, order))
    fits = [s for s in scores if s[0] <= TOL_ID]
    if len(fits) > 1 and any(s[1] <= TOL_ID for s in fits):  # nearest: knots alone tell little
        fits = [s for s in fits if s[1] <= TOL_ID]
    rest = sorted(s for s in scores if s not in fits[:1])
    if fits:
        knot_err, _, name, order = fits[0]
        run.geo = _Geometry(name, order)
        best_other = f"; next best {rest[0][2]} ({rest[0][3]}): {rest[0][0]:.1e}" if rest else ""
        run.d.evidence["coordinates"] = (
            f"knots of all {H * W} pixels of a random {H}x{W} image and points {HALF_GAP} px either "
            f"side of half-integers read their pixel under {name} ({order}), max error "
            f"{knot_err:.1e}{best_other}")
        if len(fits) > 1:
            run.d.notes.append("coordinates: also consistent with " +
                               ", ".join(f"{s[2]} ({s[3]})" for s in fits[1:]))
    elif (ramp := _ramp_conventions(run)) is not None:
        run.geo, err, others = ramp
        best = min(scores) if scores else None
        run.d.evidence["coordinates"] = (
            "no named convention reads the knots" + (f" (best {best[2]}: {best[0]:.1e})" if best else "")
            + f"; interior points of ramp images read their own coordinates under {run.geo.name} "
            f"({run.geo.order}) to {err:.1e}: the kernel reproduces lines but does not interpolate")
        if others:
            run.d.notes.append("coordinates: also consistent with " + ", ".join(others))
    else:
        run.geo = _estimate_coordinates(run)
        if run.geo is None:
            run.d.differences.append("coordinates: no convention puts the knots on their pixels and no "
                                     "ramp could be fitted; nothing else could be probed "
                                     "(docs/conventions.md §3.1)")
            return False
        best = min(scores) if scores else None
        run.d.evidence["coordinates"] = (
            "no named convention reads the knots" + (f" (best {best[2]}: {best[0]:.1e})" if best else "")
            + "; scale and offset fitted to ramp images (estimated)")
    run.d.coordinates = run.geo.name
    run.d.axis_order = run.geo.order
    return True


def _ramp_conventions(run):
    """``(geometry, error, other fits)`` of the named convention under which ramp images
    (``U = column``, ``U = row``) read their coordinates at interior points, or None.

    Every kernel that reproduces straight lines does (bilinear, Keys with ``A = -1/2``, B-splines,
    interpolating or not), two pixels away from the border.
    """
    H, W = 9, 13
    cols, rows = np.meshgrid(np.arange(W, dtype=float), np.arange(H, dtype=float))
    U = np.stack([cols, rows])[None]
    ix, iy = run.rng.uniform(2, W - 3, (1, 16)), run.rng.uniform(2, H - 3, (1, 16))
    fits = []
    for name in CONVENTIONS:
        for order in ("xy", "yx"):
            V = run.sample(U, ix, iy, "coordinates", _Geometry(name, order))
            if V is not None:
                err = max(float(np.abs(V[0, 0] - ix).max()), float(np.abs(V[0, 1] - iy).max()))
                if err <= TOL_ID:
                    fits.append((err, name, order))
    if not fits:
        return None
    fits.sort()
    err, name, order = fits[0]
    return _Geometry(name, order), err, [f"{f[1]} ({f[2]})" for f in fits[1:]]


def _ramp_fit(g, v, n):
    """Fit ``v = a g + b`` on the rising run nearest ``g = 0``; ``(a, b, samples)`` or None.

    ``v`` is a pixel-index ramp sampled along ``g``.  A continuous kernel rises
    smoothly inside the image; nearest rises in unit steps at ``v = m + 1/2``.
    """
    dv = np.diff(v)
    inside = (v[:-1] >= 0.5) & (v[1:] <= n - 1.5)
    rising = np.flatnonzero(inside & (dv > 1e-9) & (dv < 0.9))
    if len(rising) >= 4:
        xs, ys = g[rising], v[rising]
    else:  # steps of one pixel: the step between samples k and k+1 sits at v = v_k + 1/2
        steps = np.flatnonzero((np.abs(dv - 1) < 1e-6) & (v[:-1] >= 0) & (v[1:] <= n - 1))
        xs, ys = (g[steps] + g[steps + 1]) / 2, v[steps] + 0.5
    if len(xs) < 3:
        return None
    # runs of consecutive samples; keep the one nearest g = 0 (copies repeat under wrap)
    breaks = np.flatnonzero(np.diff(ys) <= 0) + 1
    runs = [r for r in np.split(np.arange(len(xs)), breaks) if len(r) >= 3]
    if not runs:
        return None
    nearest = min(runs, key=lambda r: (min(abs(xs[r[0]]), abs(xs[r[-1]]))
                                       if xs[r[0]] * xs[r[-1]] > 0 else 0, -len(r)))
    a, b = np.polyfit(xs[nearest], ys[nearest], 1)
    return float(a), float(b), len(nearest)


def _scan_maps(run, H, W):
    """``(order, ((a_x, b_x), (a_y, b_y)))`` fitted to ramp images ``U = column``, ``U = row``."""
    ramps = {"x": (np.broadcast_to(np.arange(W, dtype=float), (H, W)), W),
             "y": (np.broadcast_to(np.arange(H, dtype=float)[:, None], (H, W)), H)}
    scan = np.unique(np.concatenate([np.linspace(-64, 64, 1025), np.linspace(-2, 2, 257)]))
    fits = {}
    for comp in (0, 1):
        for axis, (image, n) in ramps.items():
            U = np.array(image)[None, None]
            best = None
            for other in (0.0, 0.5, -0.5, 2.0, 5.0):  # the other component: somewhere inside
                grid = np.zeros((1, 1, len(scan), 2))
                grid[..., comp], grid[..., 1 - comp] = scan, other
                V, _ = run.box.sample(U, grid, "coordinates")
                fit = None if V is None else _ramp_fit(scan, V[0, 0, 0], n)
                if fit and (best is None or fit[2] > best[2]):
                    best = fit
            fits[comp, axis] = best
    orders = {"xy": (fits[0, "x"], fits[1, "y"]), "yx": (fits[1, "x"], fits[0, "y"])}
    scored = [(min(f[2] for f in pair), order) for order, pair in orders.items() if all(pair)]
    if not scored:
        return None
    order = max(scored)[1]
    return order, tuple(f[:2] for f in orders[order])


def _affine_in_size(c0, c1):
    """``c1 size + c0`` as text: "0.5 size - 0.3", "1", "0"."""
    text = f"{c1:.4g} size" if abs(c1) > 1e-9 else ""
    if abs(c0) > 1e-9 or not text:
        text += f" {'-' if c0 < 0 else '+'} {abs(c0):.4g}" if text else f"{c0:.4g}"
    return text


def _estimate_coordinates(run):
    """Scale and offset of each axis from ramps at two image sizes: every convention is affine
    in the size (``a = (size - 1)/2``, ``size/2``, 1, ...), so two sizes determine it."""
    sizes = ((7, 11), (13, 21))
    scans = [_scan_maps(run, H, W) for H, W in sizes]
    if None in scans or scans[0][0] != scans[1][0]:
        return None
    fitted, parts = [], []
    for axis, k in (("x", 1), ("y", 0)):
        n1, n2 = sizes[0][k], sizes[1][k]
        (a1, b1), (a2, b2) = scans[0][1][1 - k], scans[1][1][1 - k]
        da, db = (a2 - a1) / (n2 - n1), (b2 - b1) / (n2 - n1)
        coef = (a1 - da * n1, da, b1 - db * n1, db)
        fitted.append(coef)
        parts.append(f"along {axis} i = a {axis} + b with a = {_affine_in_size(coef[0], coef[1])}, "
                     f"b = {_affine_in_size(coef[2], coef[3])}")
    name = "neither (estimated): " + "; ".join(parts)
    return _Geometry(name, scans[0][0], tuple(fitted))


def _probe_kernel(run):
    """Impulse response of a one-hot pixel; least squares against every kernel of the table."""
    n, c = 41, 20
    U = np.zeros((1, 1, n, n))
    U[0, 0, c, c] = 1.0
    d = np.arange(-40, 41) / 16                                 # 1/16 px steps over +-2.5
    lattice = np.linspace(-2, 2, 9)
    ox, oy = np.meshgrid(lattice, lattice)
    rnd = run.rng.uniform(-2.2, 2.2, (2, 24))
    dx = np.concatenate([d, np.zeros_like(d), ox.ravel(), rnd[0]])
    dy = np.concatenate([np.zeros_like(d), d, oy.ravel(), rnd[1]])
    V = run.sample(U, c + dx[None], c + dy[None], "kernel")
    if V is None:
        run.d.kernel, run.d.nearest_rounding = UNKNOWN, "n/a"
        return
    r = V[0, 0]
    tie = (np.abs(np.abs(dx) % 1 - 0.5) < 1e-6) | (np.abs(np.abs(dy) % 1 - 0.5) < 1e-6)
    if run.quantum:   # the continuous kernels see the positions rounded to the step found
        dx, dy = quantise(dx, run.quantum), quantise(dy, run.quantum)
    line = (dx == 0) | (dy == 0)
    k0, k1 = keys_basis(np.where(dy == 0, dx, dy)[line])
    a = float(np.sum(k1 * (r[line] - k0)) / np.sum(k1 * k1))
    if abs(a - CUBIC_A) < 1e-6:
        a = CUBIC_A
    errors = {}
    for name, kernel in KERNELS.items():
        if kernel.weight is None:
            pred, use = (np.abs(dx) < 0.5) * (np.abs(dy) < 0.5) * 1.0, ~tie
        else:
            pred, use = kernel.weight(dx, a) * kernel.weight(dy, a), np.ones_like(tie)
        errors[name] = float(np.abs(r - pred)[use].max())
    # a nearest that truncates reads pixel c on [c, c + 1): a box shifted by half a pixel
    floor = float(np.abs(r - (dx >= 0) * (dx < 1) * (dy >= 0) * (dy < 1)).max())
    if floor < errors["nearest"]:
        errors["nearest"] = floor
        run.d.nearest_rounding = "down (floor)"
    best = min(errors, key=errors.get)
    others = ", ".join(f"{k}: {v:.1e}" for k, v in sorted(errors.items(), key=lambda kv: kv[1]) if k != best)
    fitted = f" with A = {a:.6g}" if best == "bicubic" else ""
    run.d.evidence["kernel"] = (f"impulse response of a one-hot pixel at {len(r)} offsets (1-D and 2-D): "
                                f"{best}{fitted} fits to {errors[best]:.1e} ({others})")
    if errors[best] > TOL_ID:
        run.d.kernel = "none of these"
        run.d.nearest_rounding = "n/a"   # ties belong to a nearest kernel, not found here
        run.d.evidence["kernel"] += f"; no kernel fits to {TOL_ID:g}"
        return
    run.d.kernel = best
    if best == "bicubic":
        run.cubic_fit, run.d.cubic_a = a, round(a, 6)
    if best != "nearest":
        run.d.nearest_rounding = "n/a"
    else:
        run.d.positions = "n/a"           # a step in the positions is invisible to nearest
        if run.d.nearest_rounding != "down (floor)":
            run.d.nearest_rounding = UNKNOWN  # the ties probe tells


def _model_kernel(run):
    """The kernel the models use: the one found, or nearest's pattern (knots read pixels)."""
    return run.d.kernel if run.d.kernel in KERNELS else "nearest"


def _probe_padding(run):
    """Integer pixels far either side decide the extension; points beside the border decide
    whether it is blended, and whether the coordinate or each tap is padded."""
    H, W = run.geo.sizes()
    U = run.image(H, W)
    xs, ys = np.arange(-3 * W - 1, 4 * W + 2.0), np.arange(-3 * H - 1, 4 * H + 2.0)
    ix = np.concatenate([xs, np.full(len(ys), W // 2)])[None]
    iy = np.concatenate([np.full(len(xs), H // 2), ys])[None]
    V = run.sample(U, ix, iy, "padding (knots)")
    if V is None:
        return
    observed = V[0, 0]
    outside = ((ix < 0) | (ix > W - 1) | (iy < 0) | (iy > H - 1))[0]
    fill = float(np.median(observed[outside]))
    kernel = _model_kernel(run)
    base = Behaviour(kernel, fill=fill, cubic_a=run.cubic_fit or CUBIC_A, quantum=run.quantum,
                     pads="taps" if "cubic" in kernel else "coordinate",
                     rounding=run.d.nearest_rounding if run.d.nearest_rounding in ROUNDINGS
                     else "half to even")
    errors, near_errors = {}, {}
    near = ((ix > -2 * W) & (ix < 3 * W - 1) & (iy > -2 * H) & (iy < 3 * H - 1))[0]   # within 2 sizes
    for name, padding in PADDINGS.items():
        if name == "constant" and abs(fill) <= TOL_ID:
            continue  # constant 0 is zeros
        f = fill if "constant" in name else 0.0
        diffs = [np.abs(observed - model_sample(U, ix, iy, base._replace(padding=name, fill=f, pads=pads))[0, 0])
                 for pads in padding.places]
        errors[name] = min(float(e.max()) for e in diffs)
        near_errors[name] = min(float(e[near].max()) for e in diffs)
    fits = [k for k, e in errors.items() if e <= TOL_ID]
    ranked = ", ".join(f"{k}: {e:.1e}" for k, e in sorted(errors.items(), key=lambda kv: kv[1])[:4])
    run.d.evidence["padding"] = (f"integer pixels {xs[0]:g}..{xs[-1]:g} along x and {ys[0]:g}..{ys[-1]:g} "
                                 f"along y of a random {H}x{W} image ({ranked})")
    if not fits:   # far away, a sampler may give up its extension: the parity probe says where
        fits = [k for k, e in near_errors.items() if e <= TOL_ID]
        run.d.evidence["padding"] += (f"; within 2 sizes of the image {', '.join(fits)} fits, nothing fits "
                                      f"beyond" if fits else "; no extension fits")
    if not fits:
        return
    # beside the border: blended or cut off; the coordinate padded or each tap
    edge = np.array([-2.75, -1.5, -1.25, -0.75, -0.5, -0.25, 0.25, 0.5])
    bx = np.concatenate([edge, W - 1 - edge, np.full(2 * len(edge), W // 2 + 0.25)])
    by = np.concatenate([np.full(2 * len(edge), H // 2 + 0.25), edge, H - 1 - edge])
    if kernel == "nearest":  # half-integers are ties, a separate question
        keep = (np.abs(bx % 1 - 0.5) > 1e-9) & (np.abs(by % 1 - 0.5) > 1e-9)
        bx, by = bx[keep], by[keep]
    V = run.sample(U, bx[None], by[None], "padding (border)")
    if V is None:
        return
    standard = base.pads
    variants = [(name, pads) for name in fits
                for pads in dict.fromkeys([standard, "taps", "coordinate"]) if pads in PADDINGS[name].places]
    scored = []
    for name, pads in variants:
        b = base._replace(padding=name, pads=pads, fill=fill if "constant" in name else 0.0)
        scored.append((float(np.abs(V[0, 0] - model_sample(U, bx[None], by[None], b)[0, 0]).max()), b))
    good = [s for s in scored if s[0] <= TOL_ID]
    err, chosen = good[0] if good else min(scored, key=lambda s: s[0])
    # nothing fits, or a cut at the edge pixels: is there a band outside that is not cut?
    if (not good or PADDINGS[chosen.padding].cutoff) and (banded := _probe_band(run, U, base)) is not None:
        chosen = banded
        err = float(np.abs(V[0, 0] - model_sample(U, bx[None], by[None], chosen)[0, 0]).max())
        good = [(err, chosen)] if err <= TOL_ID else []
    run.behaviour = chosen
    run.d.padding, run.d.padded, run.d.fill = chosen.padding, chosen.pads, chosen.fill
    places = run.alike_pads or [b.pads for e, b in good if b.padding == chosen.padding]
    if len(places) > 1:      # e.g. bilinear: padding the coordinate or each tap gives the same values
        run.d.padded = " or ".join(dict.fromkeys(places))
    if len(run.alike) > 1:   # one model computes them all; the name says they cannot be told apart
        run.d.padding = " or ".join(run.alike)
    run.d.evidence["padding"] += (f"; {len(bx)} points beside the border fit {chosen.padding}, "
                                  f"{chosen.pads} padded, to {err:.1e}")
    if not good:
        run.d.evidence["padding"] += " (no model fits them)"


def _probe_ties(run):
    """Nearest only: every half-integer pixel coordinate from ``-3 size`` to ``4 size`` on each
    axis decides the tie rule and, for paddings that move points, whether the coordinate is
    padded before rounding or the rounded index after (JAX, OpenCV, ONNX Runtime)."""
    if run.d.kernel != "nearest" or run.d.nearest_rounding == "down (floor)":
        return
    H, W = run.geo.sizes()
    U = run.image(H, W)
    hx, hy = np.arange(-3 * W, 4 * W) + 0.5, np.arange(-3 * H, 4 * H) + 0.5
    ix = np.concatenate([hx, np.full(len(hy), W // 2)])[None]
    iy = np.concatenate([np.full(len(hx), H // 2), hy])[None]
    V = run.sample(U, ix, iy, "nearest ties")
    if V is None:
        return
    inside = ((ix >= 0) & (ix <= W - 1) & (iy >= 0) & (iy <= H - 1))[0]
    # a constant outside: padding the coordinate or the rounded index reads the same
    places = ("coordinate",) if run.behaviour.padding in ("zeros", "constant") else \
        PADDINGS[run.behaviour.padding].places
    # PyTorch's choice first: among rules that fit equally, no difference is invented
    rules = sorted(TIE_RULES, key=lambda r: r != "half to even")
    candidates = [(r, p) for r in rules for p in dict.fromkeys([run.behaviour.pads, *places]) if p in places]
    err_in, err_all = {}, {}
    for rule, pads in candidates:
        guess = model_sample(U, ix, iy, run.behaviour._replace(rounding=rule, pads=pads))[0, 0]
        diff = np.abs(V[0, 0] - guess)
        err_in[rule, pads], err_all[rule, pads] = float(diff[inside].max()), float(diff.max())
    fits = [c for c in candidates if err_all[c] <= TOL_ID]
    run.d.evidence["nearest ties"] = (
        f"{int(inside.sum())} ties inside the image and {int((~inside).sum())} outside, "
        f"inside/all: " + ", ".join(f"{r}{'' if len(places) == 1 else ' (' + p + ' padded)'}: "
                                    f"{err_in[r, p]:.1e}/{err_all[r, p]:.1e}" for r, p in candidates))
    if not fits:   # the ties inside tell the rule; what happens outside is the parity probe's finding
        fits = [c for c in candidates if err_in[c] <= TOL_ID and c[1] == run.behaviour.pads]
        if not fits:
            run.d.nearest_rounding = "none of these"
            return
        run.d.notes.append(f"nearest ties: {fits[0][0]} fits the ties inside the image; no rule fits "
                           f"those outside it")
        fits = fits[:1]
    (rule, pads), others = fits[0], fits[1:]
    run.behaviour = run.behaviour._replace(rounding=rule, pads=pads)
    # rules (and places) that read the same pixel at every tie: each is named, none preferred
    run.d.nearest_rounding = " or ".join(dict.fromkeys(r for r, _ in fits))
    run.d.padded = " or ".join(dict.fromkeys(p for _, p in fits))
    if others:
        alike = ", ".join(r + ("" if len(places) == 1 else f" with the {p} padded") for r, p in fits)
        run.d.notes.append(f"nearest ties: {alike} read the same pixel at every tie from {hx[0]:g} to "
                           f"{hx[-1]:g} with this padding; no probe can tell them apart")


def _probe_positions(run):
    """A random image read at 8192 positions over two pixels along each axis.  An exact sampler
    changes its value at every position; one that rounds positions to a step first (OpenCV's
    ``remap``: 1/32 pixel, ``INTER_BITS = 5``) is constant on each step's cell, whatever its
    kernel.  The step is a power of two coarser than the probe's spacing; its ties go to even
    or up."""
    H, W = 9, 13
    U = run.image(H, W)
    n = 2 * POSITION_STEPS
    t = np.arange(n) / POSITION_STEPS                           # 0 .. 2 px
    ix = np.concatenate([5 + t, np.full(n, 6.25)])[None]
    iy = np.concatenate([np.full(n, 4.25), 3 + t])[None]
    V = run.sample(U, ix, iy, "positions")
    if V is None:
        return
    scans = ((V[0, 0, :n], 5 + t), (V[0, 0, n:], 3 + t))
    changes = sum(int(np.count_nonzero(np.diff(v))) for v, _ in scans)
    run.d.evidence["positions"] = (f"a random image read at {2 * n} positions 1/{POSITION_STEPS} px apart: "
                                   f"the value changes at {changes} of {2 * (n - 1)} steps")
    if changes >= 0.99 * 2 * (n - 1):
        run.d.positions = "exact"
        return
    for k in range(1, int(np.log2(POSITION_STEPS))):
        step = 2.0 ** -k
        cells = [(v, p / step) for v, p in scans]
        if not all(_constant_on_cells(v, c) for v, c in cells):
            continue
        if step == 1.0:                                         # whole pixels: a nearest kernel
            return
        # at an exact half step the cell is a tie: even or up, unless the coordinate's own
        # rounding (a few ulps) moved it
        rules = [name for name, rule in (("ties to even", np.rint), ("ties up", lambda c: np.floor(c + 0.5)))
                 if all(_ties_follow(v, c, rule) for v, c in cells)]
        ties = f" ({rules[0]})" if len(rules) == 1 else ""
        run.quantum = step
        run.d.positions = f"rounded to multiples of 1/{2 ** k} px{ties}"
        run.d.evidence["positions"] += f", and is constant on each 1/{2 ** k} px cell{ties}"
        return


def _constant_on_cells(v, c):
    """Whether ``v`` is constant on each cell ``rint(c)`` away from ties and changes between cells."""
    tie = np.abs(c - np.floor(c) - 0.5) < 1e-6
    cells = np.rint(c)
    same_cell = (np.diff(cells) == 0) & ~tie[1:] & ~tie[:-1]
    moved = np.diff(v) != 0
    new_cell = (np.diff(cells) != 0) & ~tie[1:] & ~tie[:-1]
    return not np.any(moved & same_cell) and bool(np.all(moved[new_cell]))


def _ties_follow(v, c, rule):
    """Whether each tie reads the value of the cell ``rule`` sends it to (its neighbours' values)."""
    tie = np.flatnonzero(np.abs(c - np.floor(c) - 0.5) < 1e-6)
    tie = tie[(tie > 0) & (tie < len(c) - 1)]
    up = rule(c[tie]) > c[tie]
    return bool(np.all(v[tie] == np.where(up, v[tie + 1], v[tie - 1])))


def _probe_band(run, U, base):
    """Points 0.001 to 1.5 px outside each border, 1/1000 px apart: is every point from some
    distance on set to the fill value (an output mask, torch-interpol's ``extrapolate=False``),
    and which padding reads the points inside that band?  Returns the :class:`Behaviour`, or None."""
    H, W = U.shape[2:]
    d = np.arange(1, 1501) / 1000
    mid_x, mid_y = np.full(len(d), W // 2 + 0.25), np.full(len(d), H // 2 + 0.25)
    ix = np.concatenate([-d, W - 1 + d, mid_x, mid_x])[None]
    iy = np.concatenate([mid_y, mid_y, -d, H - 1 + d])[None]
    dist = np.tile(d, 4)
    V = run.sample(U, ix, iy, "padding (band)")
    if V is None:
        return None
    observed = V[0, 0]
    filled = np.abs(observed - base.fill) <= TOL_ID
    if filled.all() or filled[dist == d[-1]].sum() < 4:       # cut at the edge, or no cut at all
        return None
    beyond = float(d[d > dist[~filled].max()][0])               # from here on every point reads fill
    band = float(dist[filled].min())                            # the first point that does
    certain = (dist < band) | (dist >= beyond)                  # between: the side's rounding decides
    found = []
    for name, padding in PADDINGS.items():
        if padding.cutoff or (name == "constant" and abs(base.fill) <= TOL_ID):
            continue
        for pads in padding.places:
            b = base._replace(padding=name, pads=pads, band=band,
                              fill=base.fill if "constant" in name else 0.0)
            if np.abs(observed - model_sample(U, ix, iy, b)[0, 0])[certain].max() <= TOL_ID:
                found.append(b)
    if not found:
        return None
    within = f"{band:g} px" if beyond <= band + 0.0015 else f"{band:g} to {beyond:g} px (depending on the side)"
    run.d.output_mask = f"points {band:g} px or more outside [0, size - 1] read {base.fill:g}"
    run.d.evidence["output mask"] = (f"{len(dist)} points 0.001 to 1.5 px outside the four borders: the "
                                     f"fill value from {within} on, the padding's value nearer; inside the "
                                     f"band {found[0].padding} fits")
    alike = list(dict.fromkeys(b.padding for b in found))
    if len(alike) > 1:   # the same value at every point: no probe can tell them apart
        run.d.notes.append(f"padding: {' and '.join(alike)} give the same value at every point, since "
                           f"only points less than {band:g} px outside are not masked")
    run.alike = tuple(alike)
    run.alike_pads = tuple(dict.fromkeys(b.pads for b in found if b.padding == found[0].padding))
    return found[0]


def _probe_precision(run):
    """Knots of float64 data read the pixel exactly in float64; interior points agree with the
    model to 1e-15 in float64 and to about 1e-8 when the work is done in float32."""
    H, W = run.geo.sizes()
    U = run.image(H, W)
    ky, kx = np.mgrid[0:H, 0:W].reshape(2, -1).astype(float)
    gx, gy = run.rng.uniform(0.1, W - 1.1, 32), run.rng.uniform(0.1, H - 1.1, 32)
    ix, iy = np.concatenate([kx, gx])[None], np.concatenate([ky, gy])[None]
    V = run.sample(U, ix, iy, "precision")
    if V is None:
        return
    knots, general = V[0, 0, :H * W], V[0, 0, H * W:]
    kernel = KERNELS.get(run.d.kernel)
    e_knots = float(np.abs(knots - U[0, 0].ravel()).max()) if kernel and kernel.interpolating else None
    e_model = None
    if kernel and run.d.padding != UNKNOWN:   # the behaviour found models it
        e_model = float(np.abs(general - run.predict(U, ix[:, H * W:], iy[:, H * W:])[0, 0]).max())
    single = bool(np.all(V[0, 0].astype(np.float32) == V[0, 0]))
    returns32 = "float32" in run.box.dtypes
    parts = [f"knots {_fmt_err(e_knots)}", f"interior points vs the model {_fmt_err(e_model)}",
             f"outputs float32-representable: {'all' if single else 'not all'}",
             f"dtype returned: {', '.join(sorted(run.box.dtypes))}"]
    run.d.evidence["precision"] = "float64 data: " + "; ".join(parts)
    # float32 results are float32 numbers; float32 coordinates or weights with float64 sums are
    # not, but miss an exact model by ~1e-7 while reading the knots (dyadic) exactly
    exact_model = run.d.kernel in ("nearest", "bilinear", "bicubic")
    if returns32 or single:
        run.d.precision = "float32"
    elif (exact_model and e_model is not None and TOL_PARITY < e_model <= TOL_ID
          and (e_knots is None or e_knots <= EXACT)):
        run.d.precision = "mixed: float32 coordinates or weights"
    else:
        run.d.precision = "float64"


def _fmt_err(e):
    return "n/a" if e is None else f"{e:.1e}"
