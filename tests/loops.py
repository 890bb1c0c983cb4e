"""Slow per-point loop reference of the sampler, paper eq. (3) -- tiny inputs only.

``V_i^c = sum_{taps} U^c[tap] k(x_i - tap_x) k(y_i - tap_y) [k(z_i - tap_z)]``

written as plain Python loops over batch, grid points, channels and taps, in
scalar ``math`` arithmetic, straight from docs/conventions.md §3-4 and
independently of ``stnref.sampling`` (the numpy-ml ``_backward_naive`` idea):

* bilinear is eq. (5) literally, ``max(0, 1 - |x - m|)`` summed over every
  pixel ``m`` of the image, after padding the continuous coordinate;
* nearest rounds the padded coordinate with Python's ``round`` (half to even);
* bicubic evaluates the Keys kernel (``A = -0.75``) as a function of the tap
  distance, on the four taps ``floor(i) - 1 .. floor(i) + 2``, each tap padded
  on its own.

It is the oracle for bicubic and a second oracle for bilinear and nearest.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

KEYS_A = -0.75  # Keys cubic convolution parameter (PyTorch's); restated here, not imported
MODES = ("nearest", "bilinear", "bicubic")          # what these loops implement
PADDINGS = ("zeros", "border", "reflection")


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
    if padding_mode == "zeros":
        return i
    if padding_mode == "reflection":
        i = reflect(i, size, align_corners)
    return min(max(i, 0.0), size - 1.0)


def pad_tap(t, size, padding_mode, align_corners):
    """Bicubic: pad one integer tap; None if it reads zero."""
    if padding_mode == "zeros":
        return t if 0 <= t < size else None
    if padding_mode == "reflection":
        t = reflect(float(t), size, align_corners)
    return int(min(max(t, 0.0), size - 1.0))


def _axis_terms(i, size, mode, padding_mode, align_corners):
    """``[(pixel index, weight), ...]`` along one axis for pixel coordinate ``i``."""
    if mode == "bicubic":
        f = math.floor(i)
        terms = []
        for t in range(f - 1, f + 3):
            idx = pad_tap(t, size, padding_mode, align_corners)
            terms.append((idx, keys(i - t)))
        return [(idx, w) for idx, w in terms if idx is not None]
    p = pad_coordinate(i, size, padding_mode, align_corners)
    if mode == "nearest":
        m = round(p)
        return [(m, 1.0)] if 0 <= m < size else []
    return [(m, tent(p - m)) for m in range(size) if tent(p - m) != 0.0]


def _point_terms(coords, spatial, mode, padding_mode, align_corners):
    """Taps of one grid point: ``[(index tuple in U's spatial axes, weight), ...]``, or None."""
    k = len(spatial)
    if not all(math.isfinite(c) for c in coords):
        return None
    per_axis = []
    for a in range(k):  # a: x, y, z; array axis -1 - a
        size = spatial[k - 1 - a]
        i = unnormalize(float(coords[a]), size, align_corners)
        per_axis.append(_axis_terms(i, size, mode, padding_mode, align_corners))
    terms = []
    for combo in itertools.product(*per_axis):
        idx = tuple(combo[a][0] for a in reversed(range(k)))  # (z,) y, x
        w = 1.0
        for _, wa in combo:
            w *= wa
        terms.append((idx, w))
    return terms


def grid_sample_loop(U, grid, mode="bilinear", padding_mode="zeros", align_corners=False):
    """Eq. (3) by loops; float64 result shaped like ``stnref.grid_sample``'s."""
    U = np.asarray(U, dtype=np.float64)
    grid = np.asarray(grid, dtype=np.float64)
    N, C = U.shape[:2]
    spatial = U.shape[2:]
    out_spatial = grid.shape[1:-1]
    V = np.zeros((N, C, *out_spatial))
    for n in range(N):
        for pos in itertools.product(*(range(s) for s in out_spatial)):
            terms = _point_terms(grid[(n, *pos)], spatial, mode, padding_mode, align_corners)
            for c in range(C):
                if terms is None:
                    V[(n, c, *pos)] = math.nan
                    continue
                acc = 0.0
                for idx, w in terms:
                    acc += w * U[(n, c, *idx)]
                V[(n, c, *pos)] = acc
    return V


def grid_sample_dU_loop(dV, U_shape, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False):
    """Eq. (6) by loops: ``dU[tap] += w * dV`` for every point, channel and tap."""
    dV = np.asarray(dV, dtype=np.float64)
    grid = np.asarray(grid, dtype=np.float64)
    N, C = U_shape[:2]
    spatial = tuple(U_shape[2:])
    out_spatial = grid.shape[1:-1]
    dU = np.zeros(U_shape)
    for n in range(N):
        for pos in itertools.product(*(range(s) for s in out_spatial)):
            terms = _point_terms(grid[(n, *pos)], spatial, mode, padding_mode, align_corners)
            if terms is None:
                continue
            for c in range(C):
                for idx, w in terms:
                    dU[(n, c, *idx)] += w * dV[(n, c, *pos)]
    return dU
