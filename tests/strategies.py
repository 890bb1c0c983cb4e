"""Hypothesis strategies shared by the sampler tests: one generator for the whole mode product.

In the spirit of PyTorch's OpInfo, :func:`sampler_cases` draws a complete call of
``grid_sample`` -- dimension (4-D or 5-D), shape (size-1 axes and non-square
included), kernel, padding and ``align_corners``, from the settings of
``stnref.sampler_settings`` -- plus ``U``, ``grid`` and a cotangent ``dV``.  Arrays are drawn from a
``numpy.random.Generator`` seeded by hypothesis, so every example is
reproducible and shrinking acts on the seed and the shape.

Finite-difference checks need points on the smooth pieces of the sampler.
:func:`kink_distance` measures, per grid point, how far (in pixels) the point
is from the nearest place where the sampler is not smooth, following
docs/conventions.md §3-4 (see :func:`kinks_of` for the list and its derivation);
grids with ``away_from_kinks=True`` redraw every point closer than
:data:`KINK_MARGIN`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from hypothesis import strategies as st

from stnref.sampler_settings import (
    CUBIC_A,
    CUBIC_MODES,
    FILL_PADDINGS,
    FILL_VALUE,
    MODES,
    PADDING_MODES,
    SETTINGS,
    TAPS,
    combinations,
)

PADDINGS = PADDING_MODES
MAX_SPATIAL = 6   # every spatial size of U and of the grid is in 1..MAX_SPATIAL
MAX_NC = 3        # N and C are in 1..MAX_NC
GRID_RANGE = 3.0  # normalised coordinates uniform in [-GRID_RANGE, GRID_RANGE]: well outside [-1, 1]
# Distance, in pixels, kept between a drawn point and every kink.  A central
# difference with step 1e-6 on a normalised coordinate moves the pixel
# coordinate by at most 1e-6 * MAX_SPATIAL / 2, far below this.
KINK_MARGIN = 1e-3
FAR_COORDS = (-1e3, -50.0, -7.25, 7.75, 50.0, 1e3)  # far outside: several reflection periods
MAX_REDRAWS = 200  # rejection rounds before a grid is declared impossible (never reached in practice)
CUBIC_AS = (CUBIC_A, -0.5, -1.0, 0.25)  # Keys' A: PyTorch's, PIL's, and two others (finite: any)
FILL_SCALE = 2.0   # fill values are drawn from N(0, FILL_SCALE^2): off the data's scale


def combos(dims=(2, 3), pytorch=None):
    """Every supported ``(k, mode, padding_mode, align_corners)`` (``pytorch``: True, only
    PyTorch's settings; False, only the others; None, all)."""
    return [(k, m, p, ac) for k, m, p in combinations(dims, pytorch) for ac in (False, True)]


def combo_id(combo):
    k, m, p, ac = combo
    return f"{k}d-{m}-{p}-{'ac' if ac else 'noac'}"


# --------------------------------------------------------------------------- pixel coordinates

def unnormalize(x, size, align_corners):
    """docs/conventions.md §3.1: normalised coordinate -> pixel coordinate ``i``."""
    x = np.asarray(x, dtype=np.float64)
    if align_corners:
        return (x + 1) / 2 * (size - 1)
    return ((x + 1) * size - 1) / 2


def normalize(i, size, align_corners):
    """Inverse of :func:`unnormalize` (``size == 1`` with ``align_corners``: 0)."""
    i = np.asarray(i, dtype=np.float64)
    if align_corners:
        return np.zeros_like(i) if size == 1 else 2 * i / (size - 1) - 1
    return (2 * i + 1) / size - 1


def _fold_span(size, align_corners):
    """Reflection interval ``(low, span)``: pixel centres (align_corners) or pixel edges."""
    if align_corners:
        return 0.0, float(size - 1)
    return -0.5, float(size)


def _dist_to_lattice(t, period, offset=0.0):
    """Distance from ``t`` to the nearest ``offset + k * period``."""
    r = np.mod(t - offset, period)
    return np.minimum(r, period - r)


def kinks_of(size, mode, padding_mode, align_corners):
    """Describe where the sampler along one axis of ``size`` pixels is not smooth.

    Returns a dict with

    ``integers``
        True: every integer ``i`` is a kink -- a bilinear cell edge or a
        change of the bicubic tap set, and, since integers are where taps
        enter or leave ``[0, size - 1]``, the zeros-padding cut-offs too.
    ``half_integers``
        True for nearest: ``rint`` jumps at ``k + 0.5`` of the padded coordinate.
    ``folds``
        ``(low, span)`` or None: reflection folds at ``low + k * span`` in ``i``
        (every span, both directions).  With ``align_corners`` they are
        integers; without, half-integers (pixel edges).
    ``clip``
        ``(0, size - 1)`` or None: the border clip, applied to ``i`` (border)
        or to the reflected coordinate (reflection).
    ``bands``
        ``(low, 0)`` and ``(size - 1, low + span)`` or None: reflection's
        half-pixel bands with ``align_corners=False`` (edge value, zero slope);
        their ends are a fold and a clip border.

    A setting that pads taps, not the coordinate (bicubic, wrap), has only the
    integers as kinks (the tap set changes there; the weights are C1 across
    them, but the padded tap indices are not).
    """
    info = {"integers": True, "half_integers": mode == "nearest",
            "folds": None, "clip": None, "bands": None}
    if SETTINGS[mode, padding_mode].pads == TAPS:
        return info
    if padding_mode in ("border", "reflection"):
        info["clip"] = (0.0, float(size - 1))
    if padding_mode == "reflection" and size > 1:
        low, span = _fold_span(size, align_corners)
        if span > 0:
            info["folds"] = (low, span)
        if not align_corners:
            info["bands"] = ((low, 0.0), (float(size - 1), low + span))
    return info


def padded_coordinate(i, size, padding_mode, align_corners):
    """docs/conventions.md §3.2-3.5: image of ``i`` under the padding (bilinear / nearest), float64.

    Written from the rule, independently of ``stnref.sampling``: reflect into
    ``[low, low + span]`` by a floored modulo of period ``2 span``, then clip.
    """
    i = np.asarray(i, dtype=np.float64)
    if padding_mode in ("zeros", "constant"):   # taps outside read the fill: no coordinate map
        return i
    if padding_mode == "reflection":
        low, span = _fold_span(size, align_corners)
        if span == 0:
            i = np.zeros_like(i)
        else:
            t = np.mod(i - low, 2 * span)
            i = low + np.where(t <= span, t, 2 * span - t)
    return np.clip(i, 0, size - 1)


def kink_distance(i, size, mode, padding_mode, align_corners):
    """Distance (pixels) from each pixel coordinate ``i`` to the nearest kink of :func:`kinks_of`.

    Kinks are looked for both in ``i`` and in its padded image ``p``, since
    either can cross one: ``i`` crosses folds and clip borders, ``p`` crosses
    cell edges and (nearest) rounding ties.  ``p`` is only examined where it is
    not clipped -- a clipped ``p`` sits exactly on the border and is constant in
    ``i``, which is smooth.
    """
    i = np.asarray(i, dtype=np.float64)
    if align_corners and size == 1:
        return np.full(i.shape, np.inf)  # i == 0 for every x: the axis is constant, no kinks
    info = kinks_of(size, mode, padding_mode, align_corners)
    d = _dist_to_lattice(i, 1.0)  # integers
    if info["half_integers"]:
        d = np.minimum(d, _dist_to_lattice(i, 1.0, 0.5))
    if info["folds"] is not None:
        low, span = info["folds"]
        d = np.minimum(d, _dist_to_lattice(i, span, low))
    if SETTINGS[mode, padding_mode].pads == TAPS:
        return d
    p = padded_coordinate(i, size, padding_mode, align_corners)
    if info["clip"] is not None:
        lo, hi = info["clip"]
        if padding_mode == "border":
            d = np.minimum(d, np.minimum(np.abs(i - lo), np.abs(i - hi)))
        interior = (p > lo) & (p < hi)
    else:
        interior = np.ones(p.shape, dtype=bool)
    if info["bands"] is not None:
        # reflected but unclipped coordinate: distance to both ends of both bands
        low, span = info["folds"]
        t = np.mod(i - low, 2 * span)
        r = low + np.where(t <= span, t, 2 * span - t)
        for a, b in info["bands"]:
            d = np.minimum(d, np.minimum(np.abs(r - a), np.abs(r - b)))
    pd = _dist_to_lattice(p, 1.0)
    if info["half_integers"]:
        pd = np.minimum(pd, _dist_to_lattice(p, 1.0, 0.5))
    return np.where(interior, np.minimum(d, pd), d)


def grid_kink_distance(grid, spatial_in, mode, padding_mode, align_corners):
    """Per grid point, the smallest :func:`kink_distance` over its axes; shape ``grid.shape[:-1]``.

    ``spatial_in`` is ``U.shape[2:]``, i.e. ``(H, W)`` or ``(D, H, W)``; grid axis
    ``a`` (x, y, z) reads size ``spatial_in[-1 - a]``.
    """
    k = grid.shape[-1]
    d = np.full(grid.shape[:-1], np.inf)
    for a in range(k):
        size = spatial_in[k - 1 - a]
        i = unnormalize(grid[..., a], size, align_corners)
        d = np.minimum(d, kink_distance(i, size, mode, padding_mode, align_corners))
    return d


def smooth_grid(rng, shape, spatial_in, mode, padding_mode, align_corners, low=-GRID_RANGE,
                high=GRID_RANGE, margin=KINK_MARGIN):
    """Uniform grid in ``[low, high]`` with every point at least ``margin`` pixels from a kink."""
    grid = rng.uniform(low, high, size=shape)
    for _ in range(MAX_REDRAWS):
        near = grid_kink_distance(grid, spatial_in, mode, padding_mode, align_corners) < margin
        if not near.any():
            return grid
        grid[near] = rng.uniform(low, high, size=(int(near.sum()), shape[-1]))
    raise RuntimeError("smooth_grid(): could not draw a grid away from kinks")


def kinky_grid(rng, shape, spatial_in, align_corners):
    """Finite grid that hits the kinks on purpose, for parity tests (torch, scipy).

    Each coordinate is, at random, uniform in ``[-GRID_RANGE, GRID_RANGE]``, an
    exact integer or half-integer pixel position in ``[-2, size + 1]`` mapped
    back to the normalised coordinate, or one of :data:`FAR_COORDS`.
    """
    k = shape[-1]
    grid = rng.uniform(-GRID_RANGE, GRID_RANGE, size=shape)
    kind = rng.integers(0, 4, size=shape)
    for a in range(k):
        size = spatial_in[k - 1 - a]
        ipix = rng.integers(-4, 2 * size + 3, size=shape[:-1]) / 2.0  # integers and halves
        far = rng.choice(FAR_COORDS, size=shape[:-1])
        ga = grid[..., a]
        ga[:] = np.where(kind[..., a] == 1, normalize(ipix, size, align_corners), ga)
        ga[:] = np.where(kind[..., a] == 2, far, ga)
    return grid


# --------------------------------------------------------------------------- cases

class Case(NamedTuple):
    """One call of ``grid_sample``: arrays in float64 and the options."""

    U: np.ndarray
    grid: np.ndarray
    dV: np.ndarray
    mode: str
    padding_mode: str
    align_corners: bool
    fill_value: float = FILL_VALUE
    cubic_a: float = CUBIC_A

    @property
    def kwargs(self):
        return {"mode": self.mode, "padding_mode": self.padding_mode,
                "align_corners": self.align_corners, "fill_value": self.fill_value,
                "cubic_a": self.cubic_a}

    def __repr__(self):
        return (f"Case(U{self.U.shape}, grid{self.grid.shape}, {self.mode}, {self.padding_mode}, "
                f"align_corners={self.align_corners}, fill_value={self.fill_value}, "
                f"cubic_a={self.cubic_a})")


def draw_options(rng, mode, padding_mode, defaults=False):
    """``(fill_value, cubic_a)`` for a setting: drawn where the setting has them, else defaults."""
    fill = FILL_VALUE if defaults or padding_mode not in FILL_PADDINGS else \
        float(FILL_SCALE * rng.standard_normal())
    a = CUBIC_A if defaults or mode not in CUBIC_MODES else float(rng.choice(CUBIC_AS))
    return fill, a


@st.composite
def shapes(draw, k, max_spatial=MAX_SPATIAL, max_nc=MAX_NC):
    """``(U.shape, grid.shape)`` for ``k`` spatial dims: size-1 axes and non-square allowed."""
    n = draw(st.integers(1, max_nc))
    c = draw(st.integers(1, max_nc))
    spatial_in = tuple(draw(st.integers(1, max_spatial)) for _ in range(k))
    spatial_out = tuple(draw(st.integers(1, max_spatial)) for _ in range(k))
    return (n, c, *spatial_in), (n, *spatial_out, k)


@st.composite
def sampler_cases(draw, dims=(2, 3), modes=MODES, paddings=PADDINGS, align=(False, True),
                  grids="smooth", max_spatial=MAX_SPATIAL, max_nc=MAX_NC, defaults=False):
    """Draw a :class:`Case` from the mode product.

    Parameters
    ----------
    dims, modes, paddings, align
        The options to draw from (pass one value each to pin a combination); a
        dimension is drawn among those the setting supports.
    grids : {"smooth", "kinky"}
        ``"smooth"``: :func:`smooth_grid` (for finite differences and oracles);
        ``"kinky"``: :func:`kinky_grid` (exact integers, halves, far points).
    defaults : bool, default False
        Keep ``fill_value`` and ``cubic_a`` at their defaults (PyTorch's); otherwise they
        are drawn where the setting has them (:func:`draw_options`).
    """
    mode = draw(st.sampled_from(modes))
    padding_mode = draw(st.sampled_from(paddings))
    k = draw(st.sampled_from([d for d in dims if d in SETTINGS[mode, padding_mode].dims]))
    align_corners = draw(st.sampled_from(align))
    u_shape, g_shape = draw(shapes(k, max_spatial, max_nc))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    U = rng.standard_normal(u_shape)
    if grids == "smooth":
        grid = smooth_grid(rng, g_shape, u_shape[2:], mode, padding_mode, align_corners)
    else:
        grid = kinky_grid(rng, g_shape, u_shape[2:], align_corners)
    dV = rng.standard_normal((u_shape[0], u_shape[1], *g_shape[1:-1]))
    return Case(U, grid, dV, mode, padding_mode, align_corners,
                *draw_options(rng, mode, padding_mode, defaults))
