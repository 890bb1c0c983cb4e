"""The hypotheses :func:`stnref.reference.diagnose` tells apart, as small tables, and their model.

A hypothesis about a black-box sampler is a :class:`Behaviour`: one entry of each table
below.  PyTorch's settings are one corner of the space, the rest is what other
implementations do (docs/kernel_authors.md, docs/conformance.md):

===========  ==========================================================================
coordinates  ``i = a x + b`` on each axis: ``align_corners`` True or False
             (docs/conventions.md §3.1), pixel coordinates (plain or centred), three others
positions    used as given, or rounded to a multiple of a step first (OpenCV's ``remap``
             quantises to 1/32 pixel)
kernel       nearest (four tie rules, or rounding down), bilinear, Keys cubic convolution
             with any ``A``, cubic B-spline (interpolating, as ``scipy.ndimage`` order 3, or not)
padding      zeros, a constant, a constant beyond the edge pixels without blending,
             border, reflection about pixel centres or edges, wrap (period ``size`` or
             ``size - 1``)
padded       the continuous coordinate (PyTorch's nearest and bilinear) or each integer
             tap (PyTorch's bicubic, docs/conventions.md §4.3; a nearest that rounds first
             and then pads the integer index)
output mask  none, or the fill value for every point farther than a band outside
             ``[0, size - 1]`` (torch-interpol's ``extrapolate=False``)
===========  ==========================================================================

:func:`model_sample` evaluates any combination in float64 on pixel coordinates; for
PyTorch's own settings :func:`predict` uses :func:`stnref.grid_sample` itself.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..sampler_settings import CUBIC_A, CUBIC_MODES, SETTINGS, is_pytorch
from ..sampling import grid_sample, keys

# --------------------------------------------------------------------------- coordinates

# name -> (a, b) of the pixel coordinate i = a x + b along an axis of n pixels
CONVENTIONS = {
    "align_corners=False": lambda n: (n / 2, (n - 1) / 2),
    "align_corners=True": lambda n: ((n - 1) / 2, (n - 1) / 2),
    "pixel coordinates, i = x": lambda n: (1.0, 0.0),
    "centred pixel coordinates, i = x + (size - 1)/2": lambda n: (1.0, (n - 1) / 2),   # MONAI's
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
    quantum: float = 0.0            # positions rounded (half to even) to multiples of this; 0: exact
    band: float | None = None       # points this far or farther outside [0, size - 1] read fill

    def pytorch(self):
        """``(mode, padding_mode, align_corners or None)`` of PyTorch computing exactly this, or None."""
        if self.padding not in PYTORCH_PADDINGS:
            return None
        if self.quantum or self.band is not None:
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
    if behaviour.quantum:
        i = quantise(i, behaviour.quantum)
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
    if behaviour.band is not None:
        out = beyond(ix, W, behaviour.band) | beyond(iy, H, behaviour.band)
        V = np.where(out[:, None, :], behaviour.fill, V)
    return V


def quantise(i, step):
    """``i`` rounded to the nearest multiple of ``step``, ties to even (OpenCV: ``cvRound(32 i)``)."""
    return np.rint(i / step) * step


def beyond(i, n, band):
    """Whether the pixel coordinate ``i`` lies ``band`` or more outside ``[0, n - 1]``, compared
    as ``i <= -band`` or ``i >= n - 1 + band`` (the bounds rounded once, as implementations do)."""
    return (i <= -band) | (i >= n - 1 + band)


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
