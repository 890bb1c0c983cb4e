"""Hypotheses about a black-box sampler, and the probes that tell which one it follows.

The engine of :func:`stnref.reference.diagnose`.  A hypothesis is a row of small tables;
PyTorch's settings are one corner of the space, the rest is what other implementations do
(docs/kernel_authors.md):

===========  ==========================================================================
coordinates  ``i = a x + b`` on each axis: ``align_corners`` True or False
             (docs/conventions.md §3.1), pixel coordinates, three other unnormalisations
kernel       nearest (four tie rules, or rounding down), bilinear, Keys cubic convolution with any ``A``,
             cubic B-spline (interpolating, as ``scipy.ndimage`` order 3, or not)
padding      zeros, a constant, a constant beyond the edge pixels without blending,
             border, reflection about pixel centres or edges, wrap (period ``size`` or
             ``size - 1``)
padded       the continuous coordinate (PyTorch's nearest and bilinear) or each integer
             tap (PyTorch's bicubic, docs/conventions.md §4.3)
===========  ==========================================================================

:func:`model_sample` evaluates any combination in float64 on pixel coordinates; for
PyTorch's own settings :func:`predict` uses :func:`stnref.grid_sample` itself.  The probes
(``_probe_*``) call the sampler through :class:`_Box`, which turns every exception or wrong
shape into a recorded finding, and place their points in pixel space through the
:class:`_Geometry` found first.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from ..sampler_settings import CUBIC_A, CUBIC_MODES, SETTINGS, is_pytorch
from ..sampling import grid_sample, keys

# --------------------------------------------------------------------------- tolerances

SEED = 16                # every probe's data comes from one generator seeded here
TOL_ID = 1e-4            # identification: rival hypotheses differ by > 1e-2, float32 by < 1e-5
TOL_PARITY = 1e-10       # agreement with PyTorch in float64, times max(1, |V|) (conventions §6.3)
TOL_FLOAT32 = 1e-5       # the same for a sampler that computes in float32
EXACT = 1e-13            # a float64 computation that reads a pixel returns it to the last bit
HALF_GAP = 0.01          # pixels either side of a half-integer: nearest's steps, not its ties
FD_STEP = 1e-6           # central differences of fn, in pixels (conventions §7.1)
UNKNOWN = "unknown"


# --------------------------------------------------------------------------- coordinates

# name -> (a, b) of the pixel coordinate i = a x + b along an axis of n pixels
CONVENTIONS = {
    "align_corners=False": lambda n: (n / 2, (n - 1) / 2),
    "align_corners=True": lambda n: ((n - 1) / 2, (n - 1) / 2),
    "pixel coordinates, i = x": lambda n: (1.0, 0.0),
    "normalised without the half-pixel shift, i = (x + 1)/2 * size": lambda n: (n / 2, n / 2),
    "[0, 1] coordinates, i = x * (size - 1)": lambda n: (n - 1.0, 0.0),
    "[0, 1] coordinates, i = x * size - 1/2": lambda n: (float(n), -0.5),
}
PYTORCH_CONVENTIONS = {"align_corners=False": False, "align_corners=True": True}


# --------------------------------------------------------------------------- kernels

SQRT3_POLE = np.sqrt(3.0) - 2.0  # pole of the cubic B-spline interpolation filter
CARDINAL_REACH = 20              # taps each side for the interpolating B-spline: pole^20 ~ 3e-12


def tent(d, a=None):
    """Bilinear kernel ``max(0, 1 - |d|)`` (paper eq. 5)."""
    return np.maximum(0.0, 1.0 - np.abs(d))


def keys_basis(d):
    """``(k0, k1)`` with ``keys(d, a) = k0 + a k1``: Keys' kernel is linear in ``a``."""
    d = np.abs(d)
    k0 = np.where(d <= 1, (2 * d - 3) * d * d + 1, 0.0)
    k1 = np.where(d <= 1, (d - 1) * d * d, np.where(d < 2, ((d - 5) * d + 8) * d - 4, 0.0))
    return k0, k1


def bspline3(d, a=None):
    """Cubic B-spline basis function (support 4, not interpolating: ``bspline3(0) = 2/3``)."""
    d = np.abs(d)
    return np.where(d < 1, 2 / 3 - d * d + d ** 3 / 2, np.where(d < 2, (2 - d) ** 3 / 6, 0.0))


def cardinal3(d, a=None):
    """Interpolating cubic B-spline: ``sum_k sqrt(3) z^|k| bspline3(d - k)``, ``z = sqrt(3) - 2``.

    The impulse response of ``scipy.ndimage.map_coordinates(order=3)`` (prefiltered)
    away from the image border; truncated at ``CARDINAL_REACH`` coefficients each side.
    """
    k = np.arange(-CARDINAL_REACH, CARDINAL_REACH + 1)
    coef = np.sqrt(3.0) * SQRT3_POLE ** np.abs(k)
    return np.sum(coef * bspline3(np.asarray(d)[..., None] - k), axis=-1)


class Kernel(NamedTuple):
    offsets: tuple       # integer tap offsets from floor(i) (nearest: the rounded i)
    weight: object       # k(d, a) for a tap at distance d; None for nearest
    interpolating: bool  # k(0) = 1 and k(m) = 0 at other integers: knots read the pixel


KERNELS = {
    "nearest": Kernel((0,), None, True),
    "bilinear": Kernel((0, 1), tent, True),
    "bicubic": Kernel((-1, 0, 1, 2), keys, True),
    "cubic B-spline": Kernel(tuple(range(1 - CARDINAL_REACH, CARDINAL_REACH + 1)), cardinal3, True),
    "cubic B-spline (not interpolating)": Kernel((-1, 0, 1, 2), bspline3, False),
}

# tie rule of nearest -> integer pixel of a coordinate
ROUNDINGS = {
    "half to even": np.rint,
    "half up": lambda i: np.floor(i + 0.5),
    "half away from zero": lambda i: np.copysign(np.floor(np.abs(i) + 0.5), i),
    "half down": lambda i: np.ceil(i - 0.5),
    "down (floor)": np.floor,  # not a tie rule: a nearest that truncates (told by the kernel probe)
}
TIE_RULES = tuple(r for r in ROUNDINGS if r.startswith("half"))


# --------------------------------------------------------------------------- paddings

def _reflect(i, low, span):
    """Fold ``i`` into ``[low, low + span]`` (mirrors at ``low + k span``), then clip to the pixels."""
    if span <= 0:
        return np.zeros_like(i)
    e = np.mod(np.abs(i - low), 2 * span)
    return np.where(e <= span, low + e, low + 2 * span - e)


def _inside(m, n):
    return np.where((m >= 0) & (m <= n - 1), m, -1)


def _clip(i, n):
    return np.clip(i, 0, n - 1)


def _centres(i, n):
    return _clip(_reflect(i, 0.0, n - 1.0), n)


def _edges(i, n):
    return _clip(_reflect(i, -0.5, float(n)), n)


def _wrap(i, n):
    return np.mod(i, n)


def _wrap_short(i, n):
    """Period ``n - 1`` outside ``[0, n - 1]``: from the left a multiple of the period lands
    on the last pixel, from the right on the first (``scipy.ndimage`` mode 'wrap')."""
    period = max(n - 1, 1)
    r = np.mod(i, period)
    r = np.where((r == 0) & (i < 0), period, r)
    return np.where((i >= 0) & (i <= n - 1), i, r)


class Padding(NamedTuple):
    coordinate: object  # (i, n) -> the padded continuous coordinate, when the coordinate is padded
    tap: object         # (m, n) -> pixel index of integer tap m, or -1: it reads the fill value
    cutoff: bool        # a point outside [0, n - 1] reads the fill value, whole (no blending)
    picture: str        # the row a b c d extended, as docs/conventions.md §3 draws it
    places: tuple = ("coordinate", "taps")  # where it may apply (the tap rule alone may be auxiliary)


PADDINGS = {
    "zeros": Padding(lambda i, n: i, _inside, False, "0 0 | a b c d | 0 0"),
    "constant": Padding(lambda i, n: i, _inside, False, "c c | a b c d | c c"),
    "border": Padding(_clip, _clip, False, "a a | a b c d | d d"),
    "reflection about centres": Padding(_centres, _centres, False, "c b | a b c d | c b"),
    "reflection about edges": Padding(_edges, _edges, False, "b a | a b c d | d c"),
    "wrap": Padding(_wrap, _wrap, False, "c d | a b c d | a b"),
    # scipy.ndimage 'wrap': first and last pixel coincide; taps beyond them mirror
    "wrap with period size - 1": Padding(_wrap_short, _centres, False, "b c | a b c d=a b c", ("coordinate",)),
    # scipy.ndimage 'constant': c outside [0, size - 1], taps inside mirror
    "constant beyond the edge pixels": Padding(lambda i, n: i, _centres, True, "c c |a b c d| c c"),
}
# padding name -> PyTorch padding_mode and the align_corners it needs (None: either)
PYTORCH_PADDINGS = {
    "zeros": ("zeros", None),
    "border": ("border", None),
    "reflection about centres": ("reflection", True),
    "reflection about edges": ("reflection", False),
}


class Behaviour(NamedTuple):
    """One hypothesis about what a sampler computes, in pixel coordinates."""

    kernel: str = "bilinear"
    padding: str = "zeros"
    pads: str = "coordinate"        # or "taps": where the padding applies
    fill: float = 0.0               # value of the "constant" paddings
    cubic_a: float = CUBIC_A        # Keys parameter of "bicubic"
    rounding: str = "half to even"  # tie rule of "nearest"

    def pytorch(self):
        """``(mode, padding_mode, align_corners or None)`` of PyTorch computing exactly this, or None."""
        if self.padding not in PYTORCH_PADDINGS:
            return None
        mode, needs = PYTORCH_PADDINGS[self.padding]
        a = self.cubic_a if self.kernel in CUBIC_MODES else CUBIC_A
        if not is_pytorch(self.kernel, mode, 2, cubic_a=a):
            return None
        if self.kernel == "nearest" and self.rounding != "half to even":
            return None
        if self.pads != SETTINGS[self.kernel, mode].pads and self.padding != "zeros":
            return None
        return self.kernel, mode, needs


def pytorch_behaviour(mode, padding_mode, align_corners):
    """The :class:`Behaviour` of PyTorch's ``grid_sample(mode, padding_mode, align_corners)``."""
    padding = {"zeros": "zeros", "border": "border",
               "reflection": "reflection about centres" if align_corners else "reflection about edges"}
    return Behaviour(mode, padding[padding_mode], SETTINGS[mode, padding_mode].pads)


# --------------------------------------------------------------------------- evaluation

def to_grid(ix, iy, maps, order):
    """Pixel coordinates -> the normalised grid a sampler reads, ``(..., 2)``.

    ``maps`` is ``((a_x, b_x), (a_y, b_y))`` with ``i = a g + b``; ``order`` "xy"
    puts ``g_x`` first (PyTorch's layout, docs/conventions.md §1.1), "yx" ``g_y``.
    """
    (ax, bx), (ay, by) = maps
    gx, gy = (np.asarray(ix, dtype=np.float64) - bx) / ax, (np.asarray(iy, dtype=np.float64) - by) / ay
    return np.stack([gx, gy] if order == "xy" else [gy, gx], axis=-1)


def _axis(i, n, behaviour):
    """Weights ``(..., T)`` and pixel indices ``(..., T)`` (-1: fill) of one axis's taps."""
    padding, kernel = PADDINGS[behaviour.padding], KERNELS[behaviour.kernel]
    if behaviour.pads == "coordinate":
        i = padding.coordinate(i, n)
    offsets = np.asarray(kernel.offsets, dtype=np.float64)
    if kernel.weight is None:
        m = ROUNDINGS[behaviour.rounding](i)[..., None] + offsets
        w = np.ones(m.shape)
    else:
        m = np.floor(i)[..., None] + offsets
        w = kernel.weight(i[..., None] - m, behaviour.cubic_a)
    return w, padding.tap(m, n).astype(np.int64)


def model_sample(U, ix, iy, behaviour):
    """Evaluate ``behaviour`` at pixel coordinates: eq. (3) over the padded taps, in float64.

    Parameters
    ----------
    U : ndarray, shape (N, C, H, W)
    ix, iy : ndarray, shape (N, P)
        Finite pixel coordinates (column, row), ``|i|`` below about ``1e6``.
    behaviour : Behaviour

    Returns
    -------
    V : ndarray, shape (N, C, P)

    Examples
    --------
    >>> U = np.arange(4.0).reshape(1, 1, 1, 4)
    >>> model_sample(U, np.array([[-1.0, 1.5]]), np.zeros((1, 2)), Behaviour(padding="wrap"))
    array([[[3. , 1.5]]])
    """
    U = np.asarray(U, dtype=np.float64)
    N, _, H, W = U.shape
    ix, iy = np.asarray(ix, dtype=np.float64), np.asarray(iy, dtype=np.float64)
    wx, mx = _axis(ix, W, behaviour)                            # (N, P, Tx)
    wy, my = _axis(iy, H, behaviour)                            # (N, P, Ty)
    rows, cols = my[..., :, None], mx[..., None, :]             # (N, P, Ty, Tx)
    batch = np.arange(N)[:, None, None, None]
    values = U.transpose(0, 2, 3, 1)[batch, np.maximum(rows, 0), np.maximum(cols, 0)]  # (.., C)
    values = np.where(((rows < 0) | (cols < 0))[..., None], behaviour.fill, values)
    V = np.einsum("npy,npx,npyxc->ncp", wy, wx, values)
    if PADDINGS[behaviour.padding].cutoff:
        out = (ix < 0) | (ix > W - 1) | (iy < 0) | (iy > H - 1)  # (N, P)
        V = np.where(out[:, None, :], behaviour.fill, V)
    return V


def pytorch_sample(U, ix, iy, setting):
    """``grid_sample`` in ``setting = (mode, padding_mode, align_corners)`` at pixel coordinates.

    Returns ``(N, C, P)`` for ``ix, iy`` of shape ``(N, P)``.
    """
    mode, padding_mode, align_corners = setting
    if not is_pytorch(mode, padding_mode, 2):
        raise ValueError(f"pytorch_sample(): expected a setting PyTorch has, got mode={mode!r}, "
                         f"padding_mode={padding_mode!r} (stnref.sampler_settings)")
    name = "align_corners=True" if align_corners else "align_corners=False"
    H, W = U.shape[2:]
    maps = (CONVENTIONS[name](W), CONVENTIONS[name](H))
    grid = to_grid(ix, iy, maps, "xy")[:, None]                 # (N, 1, P, 2)
    with np.errstate(all="ignore"):
        V = grid_sample(U, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    return V[:, :, 0]


def predict(U, ix, iy, behaviour, align_corners=False):
    """``behaviour`` at pixel coordinates: stnref itself where PyTorch computes it, else the model."""
    setting = behaviour.pytorch()
    if setting is None:
        return model_sample(U, ix, iy, behaviour)
    mode, padding_mode, needs = setting
    return pytorch_sample(U, ix, iy, (mode, padding_mode, align_corners if needs is None else needs))


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

def _call_gap(V, again):
    """The largest ``|V - again|`` of two calls on the same input: 0 if they agree bitwise
    (NaN where NaN), inf if NaNs or infinities sit in different places."""
    same = (V == again) | (np.isnan(V) & np.isnan(again))
    gap = np.abs(V[~same] - again[~same])
    return np.max(gap, initial=0.0) if np.isfinite(gap).all() else np.inf


def _probe_layout(run):
    U = run.image(5, 7, N=2, C=3)
    grid = run.rng.uniform(-0.5, 0.5, (2, 3, 4, 2))
    V, why = run.box.sample(U, grid, "layout")
    if V is None:
        run.d.differences.append(f"fn(U {U.shape}, grid {grid.shape}) {why}; nothing else could be "
                                 f"probed")
        return False
    again, _ = run.box.sample(U, grid, "layout")
    gap = np.inf if again is None else _call_gap(V, again)
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

    Every kernel that reproduces straight lines does (bilinear, Keys, B-splines, interpolating
    or not), two pixels away from the border.
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
        run.d.kernel = UNKNOWN
        return
    r = V[0, 0]
    tie = (np.abs(np.abs(dx) % 1 - 0.5) < 1e-6) | (np.abs(np.abs(dy) % 1 - 0.5) < 1e-6)
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
        run.d.evidence["kernel"] += f"; no kernel fits to {TOL_ID:g}"
        return
    run.d.kernel = best
    if best == "bicubic":
        run.cubic_fit, run.d.cubic_a = a, round(a, 6)
    if best != "nearest":
        run.d.nearest_rounding = "n/a"
    elif run.d.nearest_rounding != "down (floor)":
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
    base = Behaviour(kernel, fill=fill, cubic_a=run.cubic_fit or CUBIC_A,
                     pads="taps" if "cubic" in kernel else "coordinate",
                     rounding=run.d.nearest_rounding if run.d.nearest_rounding in ROUNDINGS
                     else "half to even")
    errors = {}
    for name, padding in PADDINGS.items():
        if name == "constant" and abs(fill) <= TOL_ID:
            continue  # constant 0 is zeros
        f = fill if "constant" in name else 0.0
        errors[name] = min(float(np.abs(observed - model_sample(U, ix, iy, base._replace(
            padding=name, fill=f, pads=pads))[0, 0]).max()) for pads in padding.places)
    fits = [k for k, e in errors.items() if e <= TOL_ID]
    ranked = ", ".join(f"{k}: {e:.1e}" for k, e in sorted(errors.items(), key=lambda kv: kv[1])[:4])
    run.d.evidence["padding"] = (f"integer pixels {xs[0]:g}..{xs[-1]:g} along x and {ys[0]:g}..{ys[-1]:g} "
                                 f"along y of a random {H}x{W} image ({ranked})")
    if not fits:
        run.d.evidence["padding"] += "; no extension fits"
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
    run.behaviour = chosen
    run.d.padding, run.d.padded, run.d.fill = chosen.padding, chosen.pads, chosen.fill
    run.d.evidence["padding"] += (f"; {len(bx)} points beside the border fit {chosen.padding}, "
                                  f"{chosen.pads} padded, to {err:.1e}")
    if not good:
        run.d.evidence["padding"] += " (no model fits them)"


def _probe_ties(run):
    """Nearest only: pixel coordinates ``k + 1/2`` inside (and outside) the image."""
    if run.d.kernel != "nearest" or run.d.nearest_rounding == "down (floor)":
        return
    H, W = run.geo.sizes()
    U = run.image(H, W)
    hx, hy = np.arange(-2, W + 1) + 0.5, np.arange(-2, H + 1) + 0.5
    ix = np.concatenate([hx, np.full(len(hy), W // 2)])[None]
    iy = np.concatenate([np.full(len(hx), H // 2), hy])[None]
    V = run.sample(U, ix, iy, "nearest ties")
    if V is None:
        return
    inside = ((ix >= 0) & (ix <= W - 1) & (iy >= 0) & (iy <= H - 1))[0]
    err_in, err_all = {}, {}
    for rule in TIE_RULES:
        diff = np.abs(V[0, 0] - model_sample(U, ix, iy, run.behaviour._replace(rounding=rule))[0, 0])
        err_in[rule], err_all[rule] = float(diff[inside].max()), float(diff.max())
    fits = [r for r in TIE_RULES if err_in[r] <= TOL_ID]
    narrowed = [r for r in fits if err_all[r] <= TOL_ID] or fits
    run.d.evidence["nearest ties"] = (f"{int(inside.sum())} ties inside the image and {int((~inside).sum())} "
                                      f"outside: " + ", ".join(f"{r}: {err_in[r]:.1e}/{err_all[r]:.1e}"
                                                               for r in TIE_RULES))
    if not narrowed:
        run.d.nearest_rounding = "none of these"
        return
    run.d.nearest_rounding = narrowed[0]
    run.behaviour = run.behaviour._replace(rounding=narrowed[0])
    if len(narrowed) > 1:
        run.d.notes.append(f"nearest ties: {narrowed[0]} fits, and so do {', '.join(narrowed[1:])} "
                           f"(negative ties are not observable with this padding)")


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
    if kernel and run.d.padding in PADDINGS:
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
