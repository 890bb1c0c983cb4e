"""Slow per-point loop reference of the sampler, paper eq. (3) -- tiny inputs only.

``V_i^c = sum_{taps} U^c[tap] k(x_i - tap_x) k(y_i - tap_y) [k(z_i - tap_z)]``

written as plain Python loops over batch, grid points, channels and taps, in
scalar ``math`` arithmetic, straight from docs/conventions.md §3-4 and
independently of ``stnref.sampling`` (the numpy-ml ``_backward_naive`` idea):

* bilinear with a coordinate padding is eq. (5) literally, ``max(0, 1 - |x - m|)``
  summed over every pixel ``m`` of the image, after padding the continuous coordinate;
* nearest rounds the padded coordinate with Python's ``round`` (half to even);
* bicubic evaluates the Keys kernel (parameter ``A``) as a function of the tap
  distance, on the four taps ``floor(i) - 1 .. floor(i) + 2`` of each axis (64 in 3-D);
* a padding that acts on taps (bicubic's, and wrap's under every kernel) takes the
  taps ``floor(i) + 0, 1`` (bilinear) or ``round(i)`` (nearest) and pads each;
* a tap outside the image with zeros or constant padding reads ``fill_value``
  (0 for zeros), whole, for every kernel.

The kernels are restated here, not imported: an oracle that reused the code under
test would check nothing.  It is the oracle for bicubic, wrap and constant and a
second oracle for bilinear and nearest.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

KEYS_A = -0.75  # Keys cubic convolution parameter (PyTorch's); restated here, not imported
MODES = ("nearest", "bilinear", "bicubic")          # what these loops implement
PADDINGS = ("zeros", "border", "reflection", "constant", "wrap")
TAP_PADDINGS = ("wrap",)                            # pad each tap under every kernel
FILL_PADDINGS = ("zeros", "constant")               # a tap outside the image reads the fill


def implements(mode, padding_mode):
    """Whether the loops below evaluate this setting (the parity coverage of the loop oracle)."""
    return mode in MODES and padding_mode in PADDINGS


def keys(d, A=KEYS_A):
    """Keys cubic convolution kernel at distance ``d``."""
    d = abs(d)
    if d <= 1:
        return (A + 2) * d**3 - (A + 3) * d**2 + 1
    if d < 2:
        return A * d**3 - 5 * A * d**2 + 8 * A * d - 4 * A
    return 0.0


def tent(d):
    """Bilinear kernel of eq. (5): ``max(0, 1 - |d|)``."""
    return max(0.0, 1.0 - abs(d))


def unnormalize(x, size, align_corners):
    """Normalised coordinate -> pixel coordinate (docs/conventions.md §3.1)."""
    if align_corners:
        return (x + 1) / 2 * (size - 1)
    return ((x + 1) * size - 1) / 2


def reflect(i, size, align_corners):
    """Reflect ``i`` into ``[0, size-1]`` (centres) or ``[-0.5, size-0.5]`` (edges)."""
    low, high = (0.0, size - 1.0) if align_corners else (-0.5, size - 0.5)
    span = high - low
    if span == 0:
        return low
    t = math.fmod(i - low, 2 * span)
    if t < 0:
        t += 2 * span
    return low + (t if t <= span else 2 * span - t)


def pad_coordinate(i, size, padding_mode, align_corners):
    """Bilinear / nearest: pad the continuous coordinate."""
    if padding_mode in FILL_PADDINGS:
        return i
    if padding_mode == "reflection":
        i = reflect(i, size, align_corners)
    return min(max(i, 0.0), size - 1.0)


def pad_tap(t, size, padding_mode, align_corners):
    """Pad one integer tap; None if it reads the fill value."""
    if padding_mode in FILL_PADDINGS:
        return t if 0 <= t < size else None
    if padding_mode == "wrap":
        return t % size  # Python's % is floored: always in [0, size)
    if padding_mode == "reflection":
        t = reflect(float(t), size, align_corners)
    return int(min(max(t, 0.0), size - 1.0))


def _axis_terms(i, size, mode, padding_mode, align_corners, cubic_a):
    """``[(pixel index or None for the fill, weight), ...]`` along one axis at pixel coordinate ``i``."""
    if mode == "bicubic" or padding_mode in TAP_PADDINGS:
        if mode == "nearest":
            taps = [(round(i), 1.0)]
        else:
            f = math.floor(i)
            kernel = (lambda d: keys(d, cubic_a)) if mode == "bicubic" else tent
            offsets = range(-1, 3) if mode == "bicubic" else range(2)
            taps = [(f + o, kernel(i - (f + o))) for o in offsets]
        return [(pad_tap(t, size, padding_mode, align_corners), w) for t, w in taps]
    p = pad_coordinate(i, size, padding_mode, align_corners)
    if mode == "nearest":
        m = round(p)
        return [(m if 0 <= m < size else None, 1.0)]
    # eq. (5) over the image's pixels, and the fill's share: the two lattice points around p
    # that fall outside (a far-away point has both outside)
    inside = [(m, tent(p - m)) for m in range(size) if tent(p - m) != 0.0]
    outside = [(None, tent(p - m)) for m in (math.floor(p), math.floor(p) + 1)
               if not 0 <= m < size and tent(p - m) != 0.0]
    return inside + outside


def _point_terms(coords, spatial, mode, padding_mode, align_corners, cubic_a):
    """Taps of one grid point: ``[(index tuple in U's spatial axes, or None: fill; weight), ...]``,
    or None for a non-finite point."""
    k = len(spatial)
    if not all(math.isfinite(c) for c in coords):
        return None
    per_axis = []
    for a in range(k):  # a: x, y, z; array axis -1 - a
        size = spatial[k - 1 - a]
        i = unnormalize(float(coords[a]), size, align_corners)
        per_axis.append(_axis_terms(i, size, mode, padding_mode, align_corners, cubic_a))
    terms = []
    for combo in itertools.product(*per_axis):
        idx = tuple(combo[a][0] for a in reversed(range(k)))  # (z,) y, x
        w = 1.0
        for _, wa in combo:
            w *= wa
        terms.append((None if None in idx else idx, w))
    return terms


def _points(grid, spatial, mode, padding_mode, align_corners, cubic_a):
    """``(n, output position, terms)`` for every grid point."""
    N = grid.shape[0]
    for n in range(N):
        for pos in itertools.product(*(range(s) for s in grid.shape[1:-1])):
            yield n, pos, _point_terms(grid[(n, *pos)], spatial, mode, padding_mode,
                                       align_corners, cubic_a)


def grid_sample_loop(U, grid, mode="bilinear", padding_mode="zeros", align_corners=False,
                     fill_value=0.0, cubic_a=KEYS_A):
    """Eq. (3) by loops; float64 result shaped like ``stnref.grid_sample``'s."""
    U = np.asarray(U, dtype=np.float64)
    grid = np.asarray(grid, dtype=np.float64)
    C = U.shape[1]
    V = np.zeros((U.shape[0], C, *grid.shape[1:-1]))
    for n, pos, terms in _points(grid, U.shape[2:], mode, padding_mode, align_corners, cubic_a):
        for c in range(C):
            if terms is None:
                V[(n, c, *pos)] = math.nan
                continue
            acc = 0.0
            for idx, w in terms:
                acc += w * (fill_value if idx is None else U[(n, c, *idx)])
            V[(n, c, *pos)] = acc
    return V


def grid_sample_dU_loop(dV, U_shape, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False, fill_value=0.0, cubic_a=KEYS_A):
    """Eq. (6) by loops: ``dU[tap] += w * dV`` for every point, channel and tap inside the
    image, and ``dfill_value += w * dV`` for every tap that read the fill.

    Returns ``(dU, dfill_value)``.
    """
    dV = np.asarray(dV, dtype=np.float64)
    grid = np.asarray(grid, dtype=np.float64)
    C = U_shape[1]
    dU = np.zeros(U_shape)
    dfill = 0.0
    for n, pos, terms in _points(grid, tuple(U_shape[2:]), mode, padding_mode, align_corners,
                                 cubic_a):
        if terms is None:
            continue
        for c in range(C):
            for idx, w in terms:
                if idx is None:
                    dfill += w * dV[(n, c, *pos)]
                else:
                    dU[(n, c, *idx)] += w * dV[(n, c, *pos)]
    return dU, dfill
