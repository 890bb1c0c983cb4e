"""The differentiable sampler (paper §3.3): ``V = grid_sample(U, grid)`` and its backward.

This is the engineered version of :func:`stnref.equations.sample` and
:func:`stnref.equations.sample_backward` -- eqs. (3)-(7) as plain code, which
visit every input pixel for every output pixel.  It computes the same numbers
(tested to 1e-12) and follows PyTorch's ``grid_sample`` to the last rounding
rule (docs/conventions.md §3-6); ``docs/sampler.md`` derives it from the plain
version step by step.  One pipeline serves every kernel, padding and dimension:

1. unnormalise each grid coordinate to a pixel coordinate ``ix`` (``iy``, ``iz``)
   with the arithmetic of PyTorch's CPU kernel for that dimension (``_FLAVOURS``);
2. bilinear / nearest: apply the padding to the continuous coordinate
   (``_PADDINGS``), keeping its derivative multiplier;
3. the kernel (``_KERNELS``) turns the coordinate into the few integer taps where
   ``k(x_s - m)`` is non-zero, with weights ``w(t)`` and derivatives ``dw/dt``;
   bicubic pads each integer tap instead;
4. taps index a copy of ``U`` surrounded by a zero ring as wide as the kernel
   (``_planes``), so every tap is in bounds and an out-of-range tap reads 0;
   with zeros padding, far-away coordinates are clamped into the ring;
5. the taps of all axes form a tensor product (4 bilinear taps in 2-D, 8
   trilinear in 3-D, 16 bicubic): contiguous taps are read as shifted views
   from one base index per point (``_gather``), and the weighted sum is taken
   one axis at a time (``_contract``).

Points are processed in chunks of ``CHUNK``, so temporaries stay small.  The
backward re-gathers the taps for ``dgrid`` (eq. 7) and scatters ``dV`` back with
a sparse product ``dU = S^T dV`` (eq. 6; duplicate points accumulate).
Derivations: ``docs/derivations/sampling.md``.
"""
from __future__ import annotations

import functools
import itertools
import math
import operator
from typing import NamedTuple

import numpy as np
import scipy.sparse

from . import _checks

__all__ = ["grid_sample", "grid_sample_backward", "CUBIC_A"]

CUBIC_A = -0.75  # Keys cubic convolution parameter; PyTorch's value
CHUNK = 1 << 15  # grid points per chunk: temporaries stay cache-sized, memory bounded
DIRECT_TAPS = 4  # up to this many taps per point, S's columns are written in place


# --------------------------------------------------------------------------- coordinates

# PyTorch's CPU backend has two kernels with different floating-point
# expressions: a vectorised one for 4-D input and a scalar one for 5-D.  They
# agree mathematically but round differently (float32 floors near cell edges,
# reflection of huge coordinates), so stnref follows each in its dimension.

def _unnormalize_vectorised(coord, size, align_corners):
    """Normalised coordinate -> pixel coordinate, and its derivative ``s`` (4-D kernel).

    ``(x + 1) * s`` or ``(x + 1) * s - 0.5`` with ``s = (size - 1) / 2`` or ``size / 2``.
    """
    dt = coord.dtype.type
    s = dt(size - 1) / dt(2) if align_corners else dt(size) / dt(2)
    i = coord + dt(1)  # in place from here: the same roundings, fewer temporaries
    i *= s
    if not align_corners:
        i -= dt(0.5)
    return i, s


def _unnormalize_scalar(coord, size, align_corners):
    """As :func:`_unnormalize_vectorised`, in the 5-D kernel's expressions.

    ``(x + 1) / 2 * (size - 1)`` or ``((x + 1) * size - 1) / 2``.
    """
    dt = coord.dtype.type
    i = coord + dt(1)
    if align_corners:
        i /= dt(2)
        i *= dt(size - 1)
        return i, dt(size - 1) / dt(2)
    i *= dt(size)
    i -= dt(1)
    i /= dt(2)
    return i, dt(size) / dt(2)


def _reflect_span(size, align_corners, dt):
    """``(low, span)`` of the reflection: pixel centres [0, size-1] or edges [-0.5, size-0.5]."""
    if align_corners:
        return dt(0), dt(size - 1)
    return dt(-0.5), dt(size)


def _reflect_vectorised(i, size, align_corners):
    """Reflect into ``[low, low + span]``; returns ``(coord, +-1)`` (4-D kernel).

    ``extra = |i - low| - trunc(|i - low| / 2 span) * 2 span``, then one more
    fold if ``extra`` passes the span.
    """
    dt = i.dtype.type
    if align_corners and size <= 1:
        return np.zeros_like(i), np.zeros_like(i)
    low, span = _reflect_span(size, align_corners, dt)
    twice_span = span * dt(2)
    shifted = i - low
    a = np.abs(shifted)
    extra = a - np.trunc(a / twice_span) * twice_span
    reflected = twice_span - extra
    flip = extra > reflected
    res = np.where(flip, reflected, extra) + low
    sign = np.where(flip ^ (shifted < 0), dt(-1), dt(1))
    return res, sign


INT_MAX = 2**31 - 1  # the 5-D kernel counts folds in a C int


def _reflect_scalar(i, size, align_corners):
    """As :func:`_reflect_vectorised`, in the 5-D kernel's arithmetic.

    ``extra = fmod(|i - low|, span)``; the number of folds ``floor(|i - low| /
    span)`` is cast to a C int, which on x86 turns a count past ``INT_MAX``
    into ``INT_MIN`` -- even -- so such coordinates never fold back.
    """
    dt = i.dtype.type
    if align_corners and size <= 1:
        return np.zeros_like(i), np.zeros_like(i)
    low, span = _reflect_span(size, align_corners, dt)
    shifted = i - low
    a = np.abs(shifted)
    extra = np.fmod(a, span)
    flips = np.floor(a / span)
    odd = (np.fmod(flips, 2) == 1) & (flips <= INT_MAX)
    res = np.where(odd, span - extra, extra) + low
    sign = np.where(odd ^ (shifted < 0), dt(-1), dt(1))
    return res, sign


class _Flavour(NamedTuple):
    unnormalize: object
    reflect: object


# spatial dimensionality -> the PyTorch CPU kernel whose arithmetic it follows
_FLAVOURS = {
    2: _Flavour(_unnormalize_vectorised, _reflect_vectorised),
    3: _Flavour(_unnormalize_scalar, _reflect_scalar),
}


def _clip(i, size):
    """Clip to ``[0, size - 1]``; multiplier 0 at and beyond the border (inclusive).

    NaN (reflection of an overflowed coordinate) clips to 0, as in PyTorch.
    """
    hi = i.dtype.type(size - 1)
    res = np.minimum(np.fmax(i, 0), hi)
    mult = ((i > 0) & (i < hi)).astype(i.dtype)
    return res, mult


def _pad_identity(i, size, align_corners, flavour):
    return i, None


def _pad_border(i, size, align_corners, flavour):
    return _clip(i, size)


def _pad_reflection(i, size, align_corners, flavour):
    r, sign = flavour.reflect(i, size, align_corners)
    res, mult = _clip(r, size)
    return res, mult * sign


class _Padding(NamedTuple):
    coord: object         # (i, size, align_corners, flavour) -> (coordinate, multiplier or None)
    zero_outside: bool    # out-of-range taps read 0, so far-away coordinates may be clamped


# Bilinear/nearest apply the coordinate map to the continuous coordinate; bicubic to each tap.
_PADDINGS = {
    "zeros": _Padding(_pad_identity, True),
    "border": _Padding(_pad_border, False),
    "reflection": _Padding(_pad_reflection, False),
}


# --------------------------------------------------------------------------- kernels

class _Taps(NamedTuple):
    base: np.ndarray     # float tap origin (floor or rint of the coordinate)
    offsets: tuple       # integer offsets of the taps from base
    w: list              # weight of each tap, arrays like the coordinate
    dw: list             # d w / d coordinate of each tap, array or scalar (None: flat kernel
                         # or order 0)
    ddw: list            # d^2 w / d coordinate^2 of each tap (None: zero or order < 2)


def _nearest(i, order):
    # np.rint rounds half to even, as PyTorch's nearbyint
    base = np.rint(i)
    return _Taps(base, (0,), [np.ones_like(i)], None, None)


def _linear(i, order):
    base = np.floor(i)  # at an integer the right-hand cell: right-sided derivative
    t = np.subtract(i, base, out=i)
    one = i.dtype.type(1)
    return _Taps(base, (0, 1), [one - t, t], [-one, one], None)


def _cubic(i, order):
    """Keys cubic convolution weights of taps ``floor(i) - 1 .. floor(i) + 2``.

    With ``t = i - floor(i)`` the tap distances are ``1 + t, t, 1 - t, 2 - t``;
    ``k1(x) = ((A+2) x - (A+3)) x^2 + 1`` for ``|x| <= 1`` and
    ``k2(x) = ((A x - 5A) x + 8A) x - 4A`` for ``1 < |x| < 2``.
    """
    dt = i.dtype.type
    A = dt(CUBIC_A)
    base = np.floor(i)
    t = i - base

    # Horner steps in place, in the order (and so with the roundings) of
    # k1(x) = ((A+2) x - (A+3)) x x + 1,  k2(x) = ((A x - 5A) x + 8A) x - 4A
    # and their derivatives written the same way
    def k1(x):
        r = x * (A + dt(2))
        r -= A + dt(3)
        r *= x
        r *= x
        r += dt(1)
        return r

    def k2(x):
        r = x * A
        r -= dt(5) * A
        r *= x
        r += dt(8) * A
        r *= x
        r -= dt(4) * A
        return r

    def dk1(x):  # d k1 / d x = (3 (A+2) x - 2 (A+3)) x
        r = x * (dt(3) * (A + dt(2)))
        r -= dt(2) * (A + dt(3))
        r *= x
        return r

    def dk2(x):  # (3A x - 10A) x + 8A
        r = x * (dt(3) * A)
        r -= dt(10) * A
        r *= x
        r += dt(8) * A
        return r

    def ddk1(x):  # 6 (A+2) x - 2 (A+3)
        r = x * (dt(6) * (A + dt(2)))
        r -= dt(2) * (A + dt(3))
        return r

    def ddk2(x):  # 6A x - 10A
        r = x * (dt(6) * A)
        r -= dt(10) * A
        return r

    x0, x1, x2, x3 = t + dt(1), t, dt(1) - t, dt(2) - t
    w = [k2(x0), k1(x1), k1(x2), k2(x3)]
    # d/dt of the distances is (+1, +1, -1, -1); derivatives only up to ``order``
    dw = [dk2(x0), dk1(x1), -dk1(x2), -dk2(x3)] if order >= 1 else None
    ddw = [ddk2(x0), ddk1(x1), ddk1(x2), ddk2(x3)] if order >= 2 else None
    return _Taps(base, (-1, 0, 1, 2), w, dw, ddw)


class _Kernel(NamedTuple):
    taps: object           # (coordinate, a temporary it may overwrite; order) -> _Taps
    offsets: tuple         # tap offsets from the base, lo .. hi
    pads_coordinate: bool  # padding on the continuous coordinate (else on each tap)
    dims: tuple            # supported spatial dimensionalities

    @property
    def ring(self):
        """Zero ring around U wide enough for every tap of a clamped coordinate."""
        return self.offsets[-1] - self.offsets[0] + 1


_KERNELS = {
    "nearest": _Kernel(_nearest, (0,), True, (2, 3)),
    "bilinear": _Kernel(_linear, (0, 1), True, (2, 3)),
    "bicubic": _Kernel(_cubic, (-1, 0, 1, 2), False, (2,)),
}


def _check_inputs(U, grid, mode, padding_mode, align_corners, fn):
    U, grid = _checks.check_U_grid(U, grid, fn, (4, 5))
    _checks.check_choice(mode, "mode", fn, _KERNELS)
    _checks.check_choice(padding_mode, "padding_mode", fn, _PADDINGS)
    align_corners = _checks.check_bool(align_corners, "align_corners", fn)
    if U.ndim - 2 not in _KERNELS[mode].dims:
        raise ValueError(f"{fn}(): mode={mode!r} supports 4-D input only, got {U.ndim}-D U {U.shape}")
    _checks.check_budget((U.shape[0], U.shape[1], *grid.shape[1:-1]), fn, "V")
    # U may be a broadcast view: its zero-ringed copy (and dU) are real allocations
    _checks.check_budget((U.shape[0], U.shape[1], *_padded_shape(U.shape, mode)), fn, "padded U")
    return U, grid, align_corners


# --------------------------------------------------------------------------- taps

class _Axis(NamedTuple):
    """Taps of one spatial axis for a chunk of points, as row offsets into the padded image."""

    first: np.ndarray   # (m,) integer-valued float: pixel of the first tap, the others follow
    idx: list           # per tap (m,) int64 offsets when taps are padded one by one, else None
    w: list             # per tap weights (m,)
    dw: list            # per tap d w / d g (array or scalar), or None
    ddw: list           # per tap d^2 w / d g^2, or None (zero)


def _axis(coord, size, stride, kernel, padding, align_corners, order, flavour):
    """Unnormalise, pad and expand one coordinate into kernel taps (steps 1-3 above).

    Derivatives with respect to the normalised coordinate ``g`` follow the
    chain rule ``d/dg = s * multiplier * d/di`` through the unnormalisation
    scale ``s`` and the padding multiplier (0 on clip borders, -1 per fold).
    Offsets exclude the zero ring, which the caller adds once per point.
    """
    i, s = flavour.unnormalize(coord, size, align_corners)
    mult = None
    if kernel.pads_coordinate:
        i, mult = padding.coord(i, size, align_corners, flavour)
    if padding.zero_outside:
        # Beyond this window every tap is out of range: clamping changes nothing
        # but keeps indices in the ring (and 1e30 from overflowing int64).
        np.clip(i, -(kernel.offsets[-1] + 1), size - kernel.offsets[0], out=i)
    taps = kernel.taps(i, order)
    first, idx = None, None
    if kernel.pads_coordinate or padding.zero_outside:
        first = taps.base + i.dtype.type(taps.offsets[0]) if taps.offsets[0] else taps.base
    else:  # border / reflection bicubic: each integer tap is padded on its own
        idx = [padding.coord(taps.base + i.dtype.type(o), size, align_corners, flavour)[0]
               .astype(np.int64)
               * stride for o in taps.offsets]
    scale = s if mult is None else s * mult
    dw = [d * scale for d in taps.dw] if order >= 1 and taps.dw is not None else None
    ddw = [d * (scale * scale) for d in taps.ddw] if order >= 2 and taps.ddw is not None else None
    return _Axis(first, idx, taps.w, dw, ddw)


def _flat_coords(grid):
    """(N, *out, k) -> (M, k) coordinates with non-finite points moved to 0, and their mask."""
    k = grid.shape[-1]
    coords = grid.reshape(-1, k)
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.sum(coords)
    if np.isfinite(total):  # a NaN or inf anywhere makes the sum non-finite
        return coords, None
    bad = ~functools.reduce(np.logical_and, (np.isfinite(coords[:, a]) for a in range(k)))
    return np.where(bad[:, None], 0, coords), bad


def _padded_shape(U_shape, mode):
    ring = _KERNELS[mode].ring
    return tuple(n + 2 * ring for n in U_shape[2:])


def _strides(padded):
    """Row strides of the x, y[, z] axes of a padded image, then the image's size."""
    return tuple(itertools.accumulate((1,) + tuple(padded[::-1]), operator.mul))


def _add_origins(base, start, stop, P, padded, mode):
    """Add to ``base`` (rows of points ``start:stop``) the row of their image's origin.

    The origin of image ``n`` is ``n * prod(padded)`` shifted by the zero ring.
    A chunk lies within one image or covers whole images (:func:`_chunks`),
    so the origins are one number or one per image, broadcast over its ``P`` points.
    """
    strides = _strides(padded)
    k = len(padded)
    shift = _KERNELS[mode].ring * sum(strides[:k])
    if stop == start:
        return base
    first, last = start // P, (stop - 1) // P
    if first == last:
        base += first * strides[k] + shift
    else:
        images = base.reshape(last - first + 1, P)  # a view: adds in place
        images += (np.arange(first, last + 1, dtype=np.int64) * strides[k] + shift)[:, None]
    return base


class _Chunk(NamedTuple):
    axes: list          # one _Axis per spatial axis (x, y[, z])
    base: np.ndarray    # (m,) row of the first tap (contiguous taps), or None
    offsets: list       # per tap combination: row offset from base, or the explicit rows


def _chunk(coords, start, stop, U_shape, padded, mode, padding_mode, align_corners, order):
    """Taps of points ``start:stop`` along every axis, and the rows of their tap product.

    ``start:stop`` lies within one image or covers whole images (:func:`_chunks`).
    """
    k = coords.shape[1]
    P = coords.shape[0] // U_shape[0] if U_shape[0] else 0
    kernel, padding = _KERNELS[mode], _PADDINGS[padding_mode]
    strides = _strides(padded)
    axes = [_axis(coords[start:stop, a], U_shape[-1 - a], strides[a], kernel, padding,
                  align_corners, order, _FLAVOURS[k]) for a in range(k)]
    combos = _combos(axes)
    if axes[0].idx is None:
        base = _add_origins(_rows([ax.first for ax in axes], strides, padded),
                            start, stop, P, padded, mode)
        offsets = [sum(c[a] * strides[a] for a in range(k)) for c in combos]
        return _Chunk(axes, base, offsets)
    rows = [_add_origins(functools.reduce(np.add, (axes[a].idx[c[a]] for a in range(k))),
                         start, stop, P, padded, mode) for c in combos]
    return _Chunk(axes, None, rows)


def _rows(firsts, strides, padded):
    """Row offset ``sum_a first_a * stride_a`` (int64) of each point's first tap.

    The ``firsts`` are integer-valued floats of magnitude below the padded
    extent, so while ``2 * prod(padded)`` fits the mantissa every partial sum
    is an exact integer and the sum is taken in floating point and converted
    once (11% of a bilinear forward at 1024^2); beyond, axis by axis in int64.
    """
    dt = firsts[0].dtype
    if 2 * math.prod(padded) <= 2 ** (np.finfo(dt).nmant + 1):
        rows = firsts[-1] * dt.type(strides[len(firsts) - 1])
        for a in range(len(firsts) - 1):
            rows += firsts[a] if strides[a] == 1 else firsts[a] * dt.type(strides[a])
        return rows.astype(np.int64)
    rows = firsts[0].astype(np.int64)
    for a in range(1, len(firsts)):
        rows += firsts[a].astype(np.int64) * strides[a]
    return rows


def _combos(axes):
    """Tap combinations ``(o_x, o_y[, o_z])`` with x fastest, the last axis slowest."""
    return [c[::-1] for c in itertools.product(*(range(len(ax.w)) for ax in reversed(axes)))]


def _gather(U_planes, chunk):
    """Tap values ``(..., m)`` of every tap combination, in :func:`_combos` order.

    One channel: each tap reads a shifted view of the flat image at the base
    indices.  Several channels: a shifted view of ``(C, R)`` planes is not
    contiguous and ``np.take`` would copy it (4x slower), so the offset is added
    to the indices instead.
    """
    if chunk.base is None:
        return [np.take(U_planes, rows, axis=-1) for rows in chunk.offsets]
    if U_planes.ndim == 1:
        return [np.take(U_planes[off:], chunk.base) for off in chunk.offsets]
    return [np.take(U_planes, chunk.base + off, axis=-1) for off in chunk.offsets]


def _contract(axes, vals, order):
    """Sum the tap values over the kernel, one axis at a time (separable).

    Returns ``[V, dV/dg_0, ..., dV/dg_{k-1}]`` (only ``[V]`` for order 0 or a
    flat kernel), each ``(..., m)``: innermost the x taps, outermost the last axis,
    ``V = sum_j w_j sum_i w_i v_ij`` and ``dV/dg_a`` with ``dw`` in place of axis a's ``w``.
    """
    k = len(axes)
    derive = order >= 1 and axes[0].dw is not None
    # per tap combination: [value, derivatives so far]; every array is a temporary
    # of this function (the gathered values, then sums), so products are taken in place
    level = [[v] for v in vals]
    for a in range(k):
        ax = axes[a]
        n = len(ax.w)
        nxt = []
        for group in range(len(level) // n):
            acc = None
            for o in range(n):
                terms = level[group * n + o]
                if derive:
                    d = ax.dw[o] * terms[0]
                for x in terms:
                    x *= ax.w[o]
                if derive:
                    terms.append(d)
                if acc is None:
                    acc = terms
                else:
                    for p, q in zip(acc, terms):
                        p += q
            nxt.append(acc)
        level = nxt
    return level[0]


def _planes(U, padded):
    """Copy ``U`` (N, C, *spatial) into a zero ring, channel-major: (C, N * prod(padded)).

    For C = 1 the result is 1-D, so tap values and weights are both (m,).
    """
    N, C = U.shape[:2]
    k = U.ndim - 2
    ring = (padded[0] - U.shape[2]) // 2
    out = np.zeros((C, N, *padded), dtype=U.dtype)
    out[(slice(None), slice(None)) + (slice(ring, -ring),) * k] = U.swapaxes(0, 1)
    out = out.reshape(C, N * math.prod(padded))
    return out[0] if C == 1 else out


def _padded_rows(U, padded):
    """:func:`_planes` channels-last, ``(N * prod(padded), C)``: one row per padded pixel."""
    planes = _planes(U, padded)
    return np.ascontiguousarray(planes.reshape(U.shape[1], planes.shape[-1]).T)


def _chunks(N, P):
    """``(start, stop)`` of about ``CHUNK`` of the ``N * P`` points: whole images or part of one."""
    if P >= CHUNK:
        return ((start, min(start + CHUNK, (n + 1) * P))
                for n in range(N) for start in range(n * P, (n + 1) * P, CHUNK))
    step = CHUNK // P * P if P else 1
    return ((start, min(start + step, N * P)) for start in range(0, N * P, step))


def _to_channels_first(rows, N, spatial):
    """(N * P, C) -> (N, C, *spatial), contiguous."""
    C = rows.shape[1]
    return np.ascontiguousarray(np.moveaxis(rows.reshape(N, *spatial, C), -1, 1))


# --------------------------------------------------------------------------- plan (dense)

class _Plan(NamedTuple):
    """All taps of all points at once, for second-order work (``stnref.second_order``)."""

    rows: np.ndarray      # (M, T) int64 row of each tap in the padded channels-last U
    weights: np.ndarray   # (M, T) interpolation weight of each tap (0 at bad points)
    dweights: list        # per axis (x, y[, z]): (M, T) d weight / d grid coordinate, or None
    ddweights: dict       # (a, b), a <= b: (M, T) d^2 weight / d g_a d g_b (absent: 0), or None
    bad: np.ndarray       # (M,) bool, grid point with a non-finite coordinate, or None
    padded: tuple         # spatial shape of the padded U (see _padded_rows)


@_checks.quiet_nonfinite
def _plan(U_shape, grid, mode, padding_mode, align_corners, order):
    """Dense taps, weights and (``order`` 1, 2) their grid derivatives for every grid point."""
    k = grid.shape[-1]
    coords, bad = _flat_coords(grid)
    M = coords.shape[0]
    padded = _padded_shape(U_shape, mode)
    chunk = _chunk(coords, 0, M, U_shape, padded, mode, padding_mode, align_corners, order)
    axes = chunk.axes
    combos = _combos(axes)
    if chunk.base is not None:
        rows = np.stack([chunk.base + off for off in chunk.offsets], axis=1)
    else:
        rows = np.stack(chunk.offsets, axis=1)

    def product(factor):  # factor(a, o) -> per-axis factor; stacked over tap combinations
        return np.stack([np.broadcast_to(functools.reduce(np.multiply, [factor(a, c[a]) for a in range(k)]), (M,))
                         for c in combos], axis=1)

    weights = product(lambda a, o: axes[a].w[o])
    dweights = ddweights = None
    if order >= 1 and axes[0].dw is not None:
        # d W / d g_a = dw_a * prod_{b != a} w_b
        dweights = [product(lambda b, o, a=a: axes[b].dw[o] if b == a else axes[b].w[o])
                    for a in range(k)]
    if order >= 2 and axes[0].dw is not None:
        # d^2 W / d g_a d g_b: ddw_a prod w (a == b), dw_a dw_b prod w (a != b); bilinear has ddw = 0
        ddweights = {}
        for a in range(k):
            for b in range(a, k):
                if a == b and axes[a].ddw is None:
                    continue

                def factor(c, o, a=a, b=b):
                    if c == a == b:
                        return axes[c].ddw[o]
                    return axes[c].dw[o] if c in (a, b) else axes[c].w[o]

                ddweights[a, b] = product(factor)
    if bad is not None:
        weights = np.where(bad[:, None], 0, weights)
    return _Plan(rows, weights, dweights, ddweights, bad, padded)


# --------------------------------------------------------------------------- public API

def grid_sample(U, grid, mode="bilinear", padding_mode="zeros", align_corners=False):
    """Sample ``U`` at the points of ``grid``, paper eq. (3): ``V_i = sum_nm U_nm k(x_i - m) k(y_i - n)``.

    Parameters
    ----------
    U : ndarray, shape (N, C, H_in, W_in) or (N, C, D_in, H_in, W_in)
        Input feature map, float32 or float64.
    grid : ndarray, shape (N, H_out, W_out, 2) or (N, D_out, H_out, W_out, 3)
        Normalised source coordinates ``(x_s, y_s[, z_s])``; -1 is the left/top
        and +1 the right/bottom of ``U``.  Same dtype as ``U``.
    mode : {"bilinear", "nearest", "bicubic"}
        Kernel: eq. (5) (trilinear in 3-D), eq. (4) with ties to even, or Keys
        cubic convolution with ``A = -0.75`` (4-D only).
    padding_mode : {"zeros", "border", "reflection"}
        Value of out-of-range points: 0, the nearest edge pixel, or the image
        reflected about its border.
    align_corners : bool, default False
        True: -1 and +1 are the centres of the corner pixels; False: their outer edges.

    Returns
    -------
    V : ndarray, shape (N, C, H_out, W_out) or (N, C, D_out, H_out, W_out)
        Same dtype as ``U``; computed in that dtype.  A grid point with a
        non-finite coordinate gives NaN in every channel.

    Raises
    ------
    TypeError
        Non-float ``U`` or ``grid``, or different dtypes.
    ValueError
        Wrong ranks or shapes, batch mismatch, unknown mode or padding,
        bicubic on 5-D input.

    Notes
    -----
    Matches ``torch.nn.functional.grid_sample`` (rules: docs/conventions.md §3-5).
    The plain version of eq. (3) is :func:`stnref.equations.sample`.

    Examples
    --------
    >>> import numpy as np
    >>> from stnref import grid_sample
    >>> U = np.arange(4.0).reshape(1, 1, 2, 2)
    >>> grid = np.array([[[[0.0, 0.0]]]])  # the centre of the image
    >>> grid_sample(U, grid)
    array([[[[1.5]]]])
    """
    return _sample(U, grid, mode, padding_mode, align_corners, keep=False)[0]


@_checks.quiet_nonfinite
def _sample(U, grid, mode, padding_mode, align_corners, keep):
    """:func:`grid_sample`, and with ``keep`` the taps of every chunk for :func:`_sample_backward`.

    The kept taps carry their grid derivatives too (order 1), so a backward on
    the same ``U`` and ``grid`` skips recomputing them; they are read-only.
    """
    U, grid, align_corners = _check_inputs(U, grid, mode, padding_mode, align_corners,
                                           "grid_sample")
    N, C = U.shape[:2]
    padded = _padded_shape(U.shape, mode)
    planes = _planes(U, padded)                           # (C, R) or (R,) for C = 1
    coords, bad = _flat_coords(grid)
    M = coords.shape[0]
    V = np.empty(planes.shape[:-1] + (M,), dtype=U.dtype)  # (C, M) or (M,)
    kept = [] if keep else None
    for start, stop in _chunks(N, M // N if N else 0):
        chunk = _chunk(coords, start, stop, U.shape, padded, mode, padding_mode, align_corners,
                       order=1 if keep else 0)
        V[..., start:stop] = _contract(chunk.axes, _gather(planes, chunk), order=0)[0]
        if keep:
            kept.append(chunk)
    if bad is not None:
        V[..., bad] = np.nan
    V = V.reshape(C, N, *grid.shape[1:-1])
    return np.ascontiguousarray(V.swapaxes(0, 1)), kept


# Backward of V[m, c] = sum_t W[m, t] U_rows[rows[m, t], c]   (eqs. 6-7; docs/derivations/sampling.md)
#   dU_rows = S^T dV_rows with S[m, rows[m, t]] = W[m, t]    sparse product: duplicates accumulate
#   dgrid_a[m] = sum_t dW_a[m, t] sum_c dV[m, c] U_rows[rows[m, t], c]
#   dW_a = (dw_a/di_a) * s_a * padding multiplier * prod_{b != a} w_b; floor gives the
#   right-sided derivative at integer coordinates, as PyTorch does.
def grid_sample_backward(dV, U, grid, mode="bilinear", padding_mode="zeros", align_corners=False,
                         need_dU=True):
    """Gradients of :func:`grid_sample` with respect to ``U`` and ``grid``.

    Parameters
    ----------
    dV : ndarray, shape (N, C, H_out, W_out) or (N, C, D_out, H_out, W_out)
        Gradient of the loss with respect to the forward's output.
    U, grid, mode, padding_mode, align_corners
        The forward's arguments.
    need_dU : bool, default True
        If False, skip the scatter and return ``None`` for ``dU`` (a network's
        input data needs no gradient).

    Returns
    -------
    dU : ndarray, shape of ``U`` (or None)
        Scatter-add of ``w * dV``: sample points sharing a pixel accumulate.
    dgrid : ndarray, shape of ``grid``
        Exactly 0 for ``nearest``; NaN at grid points with a non-finite coordinate.

    Notes
    -----
    Matches PyTorch's ``grid_sampler_2d_backward`` / ``grid_sampler_3d_backward``,
    including one-sided derivatives at integer pixel positions and zero
    multipliers on clip borders (docs/conventions.md §3-4, §6).  Eqs. (6) and (7)
    as the paper writes them: :func:`stnref.equations.sample_backward`.
    """
    return _sample_backward(dV, U, grid, mode, padding_mode, align_corners, need_dU, kept=None)


@_checks.quiet_nonfinite
def _sample_backward(dV, U, grid, mode, padding_mode, align_corners, need_dU, kept):
    """:func:`grid_sample_backward`, reusing the taps ``kept`` by :func:`_sample` on the same
    ``U`` and ``grid`` (None: recompute them)."""
    fn = "grid_sample_backward"
    U, grid, align_corners = _check_inputs(U, grid, mode, padding_mode, align_corners, fn)
    dV = _checks.check_dV(dV, U, grid, fn)
    need_dU = _checks.check_bool(need_dU, "need_dU", fn)

    N, C = U.shape[:2]
    k = U.ndim - 2
    padded = _padded_shape(U.shape, mode)
    planes = _planes(U, padded)
    coords, bad = _flat_coords(grid)
    M = coords.shape[0]
    g = dV.swapaxes(0, 1).reshape(C, M)                    # (C, M)
    if bad is not None:
        g = np.where(bad, 0, g)
    if C == 1:
        g = g[0]
    smooth = _KERNELS[mode].taps is not _nearest
    T = len(_KERNELS[mode].offsets) ** k
    R = planes.shape[-1]
    index = np.int32 if max(R, M * T) < INT_MAX else np.int64  # int32: scipy's fast path
    dgrid = np.zeros((M, k), dtype=grid.dtype)
    if need_dU:
        S_rows = np.empty((M, T), dtype=index)
        S_data = np.empty((M, T), dtype=U.dtype)
        if T > DIRECT_TAPS:
            tap_rows = np.empty((T, min(CHUNK, M)), dtype=index)
            tap_data = np.empty((T, min(CHUNK, M)), dtype=U.dtype)
    for number, (start, stop) in enumerate(_chunks(N, M // N if N else 0)):
        if kept is None:
            chunk = _chunk(coords, start, stop, U.shape, padded, mode, padding_mode,
                           align_corners, order=1)
        else:
            chunk = kept[number]
        if need_dU:
            # tap t of every point is column t of S's (m, T) block; for wide blocks
            # the columns are filled tap-major and transposed once (T strided passes
            # over the block cost 3x more at T = 16)
            rows, data = S_rows[start:stop].T, S_data[start:stop].T
            if T > DIRECT_TAPS:
                rows, data = tap_rows[:, :stop - start], tap_data[:, :stop - start]
            for t, (off, combo) in enumerate(zip(chunk.offsets, _combos(chunk.axes))):
                if chunk.base is None:
                    rows[t] = off
                else:
                    np.add(chunk.base, off, out=rows[t], casting="unsafe")
                w = [ax.w[o] for ax, o in zip(chunk.axes, combo)]
                np.multiply(functools.reduce(np.multiply, w[:-1]), w[-1], out=data[t])
            if T > DIRECT_TAPS:
                S_rows[start:stop], S_data[start:stop] = rows.T, data.T
        if smooth:
            derivs = _contract(chunk.axes, _gather(planes, chunk), order=1)[1:]
            gc = g[..., start:stop]
            for a in range(k):
                if C == 1:
                    np.multiply(derivs[a], gc, out=dgrid[start:stop, a])
                else:
                    derivs[a] *= gc
                    derivs[a].sum(axis=0, out=dgrid[start:stop, a])

    dU = None
    if need_dU:
        S = scipy.sparse.csr_matrix(
            (S_data.reshape(-1), S_rows.reshape(-1), np.arange(0, M * T + 1, T, dtype=index)),
            shape=(M, R),
        )
        dU_rows = np.asarray(S.T @ (g if C == 1 else g.T), dtype=U.dtype)  # (R,) or (R, C)
        dU_rows = dU_rows.reshape(N, *padded, C)
        ring = _KERNELS[mode].ring
        inner = (slice(None),) + (slice(ring, -ring),) * k
        dU = np.ascontiguousarray(np.moveaxis(dU_rows[inner], -1, 1))
    if bad is not None:
        dgrid[bad] = np.nan
    return dU, dgrid.reshape(grid.shape)
