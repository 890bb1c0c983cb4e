"""The differentiable sampler (paper §3.3): ``V = grid_sample(U, grid)`` and its backward.

This is the engineered version of :func:`stnref.equations.sample` and
:func:`stnref.equations.sample_backward` -- eqs. (3)-(7) as plain code, which
visit every input pixel for every output pixel.  It computes the same numbers
(tested to 1e-12) and follows PyTorch's ``grid_sample`` to the last rounding
rule in every setting PyTorch has (docs/conventions.md §3-6); ``docs/sampler.md``
derives it from the plain version step by step.  The settings (modes, paddings,
ranks, where each padding acts) are one table, :mod:`stnref.sampler_settings`.
One pipeline serves every kernel, padding and dimension:

1. unnormalise each grid coordinate to a pixel coordinate ``ix`` (``iy``, ``iz``)
   with the arithmetic of PyTorch's CPU kernel for that dimension (``_FLAVOURS``);
2. settings that pad the coordinate: apply the padding to the continuous
   coordinate (``_PADDINGS``), keeping its derivative multiplier;
3. the kernel (``_KERNELS``) turns the coordinate into the few integer taps where
   ``k(x_s - m)`` is non-zero, with weights ``w(t)`` and derivatives ``dw/dt``;
   settings that pad taps pad each integer tap instead;
4. taps index a copy of ``U`` surrounded by a ring as wide as the kernel
   (``_planes``) that holds what an out-of-range tap reads: the fill value (0 unless
   ``padding_mode="constant"``), or with wrap the image continued periodically; so
   every tap is in bounds.  With zeros or constant padding far-away coordinates are
   clamped into the ring, with wrap the base tap is taken modulo the size;
5. the taps of all axes form a tensor product (4 bilinear taps in 2-D, 8
   trilinear, 16 bicubic, 64 tricubic): contiguous taps are read as shifted views
   from one base index per point (``_gather``), and the weighted sum is taken
   one axis at a time (``_contract``).

Points are processed in chunks of ``CHUNK``, so temporaries stay small.  The
backward re-gathers the taps for ``dgrid`` (eq. 7) and scatters ``dV`` back with
a sparse product ``dU = S^T dV`` (eq. 6; duplicate points accumulate); what the
scatter puts in the ring is the gradient of the fill value, or, with wrap, is added
back to the pixels the ring holds (``_unring``).
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

from . import _checks, _keys
from . import sampler_settings as settings
from ._keys import keys
from .sampler_settings import CUBIC_A, FILL_VALUE, TAPS

__all__ = ["grid_sample", "grid_sample_backward", "keys", "CUBIC_A"]

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


def _each_tap(pad):
    """The taps map of a coordinate map: each integer tap ``base + o`` padded on its own."""
    def taps(base, offsets, size, align_corners, flavour):
        return [pad(base + base.dtype.type(o), size, align_corners, flavour)[0] for o in offsets]
    return taps


def _wrap(base, size):
    """Pixel index modulo ``size`` of an integer-valued float, exactly; period ``size`` pixels.

    ``base - floor(base / size) size`` is exact below ``2^mantissa`` (the quotient may be
    one off; one correction each way fixes it) and 2-3x faster than ``np.mod``, which
    takes over beyond.  The taps around a wrapped base read the ring, which holds the
    image's opposite edges (:func:`_planes`).  An infinite base (a pixel coordinate
    overflowed from a finite grid value) has no remainder (NaN; the caller silences the
    warning): it reads pixel 0, as a reflected NaN does.
    """
    S = base.dtype.type(size)
    r = base - np.floor(base / S) * S
    r = np.where(r < 0, r + S, r)
    r = np.where(r >= S, r - S, r)
    big = np.abs(base) >= 2.0 ** np.finfo(base.dtype).nmant
    if big.any():
        r[big] = np.mod(base[big], S)
    return np.fmax(r, 0)


class _Padding(NamedTuple):
    """A padding's maps, for the two places a padding may act, and what the ring holds."""

    coord: object   # (i, size, align_corners, flavour) -> (padded, multiplier or None), for
                    # settings that pad the continuous coordinate (sampler_settings.COORDINATE)
    taps: object    # (base, offsets, size, align_corners, flavour) -> padded integer taps, for
                    # settings that pad each tap; None: the taps read the ring around U
    wraps: bool     # the ring holds the image's opposite edges (else the fill value)


# Which map a setting uses is a column of stnref.sampler_settings.SETTINGS.
_PADDINGS = {
    "zeros": _Padding(_pad_identity, None, False),
    "border": _Padding(_pad_border, _each_tap(_pad_border), False),
    "reflection": _Padding(_pad_reflection, _each_tap(_pad_reflection), False),
    "constant": _Padding(_pad_identity, None, False),
    "wrap": _Padding(None, None, True),
}


# --------------------------------------------------------------------------- kernels

class _Taps(NamedTuple):
    base: np.ndarray     # float tap origin (floor or rint of the coordinate)
    offsets: tuple       # integer offsets of the taps from base
    w: list              # weight of each tap, arrays like the coordinate
    dw: list             # d w / d coordinate of each tap, array or scalar (None: flat kernel
                         # or order 0)
    ddw: list            # d^2 w / d coordinate^2 of each tap (None: zero or order < 2)


def _nearest(i, order, cubic_a):
    # np.rint rounds half to even, as PyTorch's nearbyint
    base = np.rint(i)
    return _Taps(base, (0,), [np.ones_like(i)], None, None)


def _linear(i, order, cubic_a):
    base = np.floor(i)  # at an integer the right-hand cell: right-sided derivative
    t = np.subtract(i, base, out=i)
    one = i.dtype.type(1)
    return _Taps(base, (0, 1), [one - t, t], [-one, one], None)


def _cubic(i, order, cubic_a):
    """Keys cubic convolution weights of taps ``floor(i) - 1 .. floor(i) + 2``.

    With ``t = i - floor(i)`` the tap distances are ``1 + t, t, 1 - t, 2 - t``: the
    outer two on ``k2``, the inner two on ``k1`` (:mod:`stnref._keys`: PyTorch's Horner forms).
    """
    dt = i.dtype.type
    A = dt(cubic_a)
    base = np.floor(i)
    t = i - base
    x0, x1, x2, x3 = t + dt(1), t, dt(1) - t, dt(2) - t
    w = [_keys.k2(x0, A), _keys.k1(x1, A), _keys.k1(x2, A), _keys.k2(x3, A)]
    # d/dt of the distances is (+1, +1, -1, -1); derivatives only up to ``order``
    dw = ([_keys.dk2(x0, A), _keys.dk1(x1, A), -_keys.dk1(x2, A), -_keys.dk2(x3, A)]
          if order >= 1 else None)
    ddw = ([_keys.ddk2(x0, A), _keys.ddk1(x1, A), _keys.ddk1(x2, A), _keys.ddk2(x3, A)]
           if order >= 2 else None)
    return _Taps(base, (-1, 0, 1, 2), w, dw, ddw)


class _Kernel(NamedTuple):
    taps: object           # (coordinate, a temporary it may overwrite; order, cubic_a) -> _Taps
    offsets: tuple         # tap offsets from the base, lo .. hi

    @property
    def ring(self):
        """Ring of fill pixels around U wide enough for every tap of a clamped coordinate."""
        return self.offsets[-1] - self.offsets[0] + 1


_KERNELS = {
    "nearest": _Kernel(_nearest, (0,)),
    "bilinear": _Kernel(_linear, (0, 1)),
    "bicubic": _Kernel(_cubic, (-1, 0, 1, 2)),
}


class _Options(NamedTuple):
    """A validated setting, resolved to the tables above."""

    mode: str
    kernel: _Kernel
    padding: _Padding
    pads_taps: bool       # the padding acts on each integer tap, not on the coordinate
    align_corners: bool
    fill: float           # value of the ring around U: what a tap outside the image reads
    cubic_a: float


def _check_inputs(U, grid, mode, padding_mode, align_corners, fn, fill_value=FILL_VALUE,
                  cubic_a=CUBIC_A, fill_arguments=()):
    """Validated ``U``, ``grid`` and :class:`_Options` (the rules: stnref.sampler_settings)."""
    U, grid = _checks.check_U_grid(U, grid, fn, (4, 5))
    fill_value, cubic_a = settings.check(mode, padding_mode, fn, k=U.ndim - 2,
                                         fill_value=fill_value, cubic_a=cubic_a,
                                         fill_arguments=fill_arguments)
    _checks.check_representable(fill_value, "fill_value", U.dtype, fn)
    _checks.check_representable(cubic_a, "cubic_a", U.dtype, fn)
    align_corners = _checks.check_bool(align_corners, "align_corners", fn)
    _checks.check_budget((U.shape[0], U.shape[1], *grid.shape[1:-1]), fn, "V")
    # U may be a broadcast view: its ringed copy (and dU) are real allocations
    _checks.check_budget((U.shape[0], U.shape[1], *_padded_shape(U.shape, mode)), fn, "padded U")
    opts = _Options(mode, _KERNELS[mode], _PADDINGS[padding_mode],
                    settings.SETTINGS[mode, padding_mode].pads == TAPS, align_corners,
                    fill_value, cubic_a)
    return U, grid, opts


# --------------------------------------------------------------------------- taps

class _Axis(NamedTuple):
    """Taps of one spatial axis for a chunk of points, as row offsets into the padded image."""

    first: np.ndarray   # (m,) integer-valued float: pixel of the first tap, the others follow
    idx: list           # per tap (m,) int64 offsets when taps are padded one by one, else None
    w: list             # per tap weights (m,)
    dw: list            # per tap d w / d g (array or scalar), or None
    ddw: list           # per tap d^2 w / d g^2, or None (zero)


def _axis(coord, size, stride, opts, order, flavour):
    """Unnormalise, pad and expand one coordinate into kernel taps (steps 1-3 above).

    Derivatives with respect to the normalised coordinate ``g`` follow the
    chain rule ``d/dg = s * multiplier * d/di`` through the unnormalisation
    scale ``s`` and the padding multiplier (0 on clip borders, -1 per fold).
    Offsets exclude the ring, which the caller adds once per point.
    """
    kernel, padding = opts.kernel, opts.padding
    i, s = flavour.unnormalize(coord, size, opts.align_corners)
    mult = None
    if not opts.pads_taps:
        i, mult = padding.coord(i, size, opts.align_corners, flavour)
    if padding.taps is None and not padding.wraps:
        # Beyond this window every tap reads the fill: clamping changes nothing
        # but keeps indices in the ring (and 1e30 from overflowing int64).
        np.clip(i, -(kernel.offsets[-1] + 1), size - kernel.offsets[0], out=i)
    first, idx = None, None
    # an unclamped pixel coordinate overflowed to +-inf has NaN weights and a padded index of
    # its own (conventions §5.1, §3.10); clamped ones are finite
    with np.errstate(invalid="ignore"):
        taps = kernel.taps(i, order, opts.cubic_a)
        if opts.pads_taps and padding.taps is not None:   # each integer tap padded on its own
            idx = [m.astype(np.int64) * stride
                   for m in padding.taps(taps.base, taps.offsets, size, opts.align_corners, flavour)]
        else:
            base = _wrap(taps.base, size) if padding.wraps else taps.base
            first = base + i.dtype.type(taps.offsets[0]) if taps.offsets[0] else base
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


def _chunk(coords, start, stop, U_shape, padded, opts, order):
    """Taps of points ``start:stop`` along every axis, and the rows of their tap product.

    ``start:stop`` lies within one image or covers whole images (:func:`_chunks`).
    """
    k = coords.shape[1]
    P = coords.shape[0] // U_shape[0] if U_shape[0] else 0
    strides = _strides(padded)
    axes = [_axis(coords[start:stop, a], U_shape[-1 - a], strides[a], opts, order, _FLAVOURS[k])
            for a in range(k)]
    combos = _combos(axes)
    if axes[0].idx is None:
        base = _add_origins(_rows([ax.first for ax in axes], strides, padded),
                            start, stop, P, padded, opts.mode)
        offsets = [sum(c[a] * strides[a] for a in range(k)) for c in combos]
        return _Chunk(axes, base, offsets)
    rows = [_add_origins(functools.reduce(np.add, (axes[a].idx[c[a]] for a in range(k))),
                         start, stop, P, padded, opts.mode) for c in combos]
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


def _planes(U, padded, fill=FILL_VALUE, wrap=False):
    """Copy ``U`` (N, C, *spatial) into its ring, channel-major: (C, N * prod(padded)).

    The ring holds what a tap outside the image reads: ``fill`` (0, or ``fill_value``
    with ``padding_mode="constant"``), or with ``wrap`` the image continued periodically.
    For C = 1 the result is 1-D, so tap values and weights are both (m,).
    """
    N, C = U.shape[:2]
    k = U.ndim - 2
    ring = (padded[0] - U.shape[2]) // 2
    if wrap:
        out = np.pad(U.swapaxes(0, 1), ((0, 0), (0, 0)) + ((ring, ring),) * k, mode="wrap")
    else:
        if fill == 0 and math.copysign(1.0, fill) > 0:
            out = np.zeros((C, N, *padded), dtype=U.dtype)
        else:
            out = np.full((C, N, *padded), fill, dtype=U.dtype)
        out[(slice(None), slice(None)) + (slice(ring, -ring),) * k] = U.swapaxes(0, 1)
    out = out.reshape(C, N * math.prod(padded))
    return out[0] if C == 1 else out


def _unring(rows, ring, wrap):
    """``(N, *padded, C)`` ringed rows (a scatter's result) -> ``(N, *spatial, C)``, the image.

    With ``wrap`` each ring row is added to the pixel it holds (its index modulo the size),
    axis by axis, so what the taps read there reaches that pixel; otherwise the ring is dropped.
    """
    for a in range(1, rows.ndim - 1):
        x = np.moveaxis(rows, a, 0)
        size = x.shape[0] - 2 * ring
        inner = x[ring:ring + size]
        if wrap:
            inner = inner.copy()
            for p in itertools.chain(range(ring), range(ring + size, 2 * ring + size)):
                inner[(p - ring) % size] += x[p]
        rows = np.moveaxis(inner, 0, a)
    return rows


def _chunks(N, P):
    """``(start, stop)`` of about ``CHUNK`` of the ``N * P`` points: whole images or part of one."""
    if P >= CHUNK:
        return ((start, min(start + CHUNK, (n + 1) * P))
                for n in range(N) for start in range(n * P, (n + 1) * P, CHUNK))
    step = CHUNK // P * P if P else 1
    return ((start, min(start + step, N * P)) for start in range(0, N * P, step))


# --------------------------------------------------------------------------- public API

def grid_sample(U, grid, mode="bilinear", padding_mode="zeros", align_corners=False, *,
                fill_value=FILL_VALUE, cubic_a=CUBIC_A):
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
        cubic convolution (tricubic in 3-D: 64 taps).
    padding_mode : {"zeros", "border", "reflection", "constant", "wrap"}
        What a point outside ``U`` reads: 0, the nearest edge pixel, the image
        reflected about its border, ``fill_value``, or the image repeated with a
        period of its size (docs/conventions.md §3).
    align_corners : bool, default False
        True: -1 and +1 are the centres of the corner pixels; False: their outer edges.
    fill_value : float, default 0.0
        Finite; the value of every pixel outside ``U`` with ``padding_mode="constant"``
        (refused with another padding), so ``"zeros"`` is ``"constant"`` with 0.
    cubic_a : float, default -0.75
        Finite; Keys' parameter ``A`` of ``mode="bicubic"`` (refused with another mode).
        PyTorch and OpenCV use -0.75, PIL, scikit-image and MATLAB -0.5.

    Returns
    -------
    V : ndarray, shape (N, C, H_out, W_out) or (N, C, D_out, H_out, W_out)
        Same dtype as ``U``; computed in that dtype.  A grid point with a
        non-finite coordinate gives NaN in every channel.

    Raises
    ------
    TypeError
        Non-float ``U`` or ``grid``, different dtypes, a non-number ``fill_value``
        or ``cubic_a``.
    ValueError
        Wrong ranks or shapes, batch mismatch, unknown mode or padding, a
        non-finite ``fill_value`` or ``cubic_a``, or one the setting does not have
        (the rules: :mod:`stnref.sampler_settings`).

    Notes
    -----
    Matches ``torch.nn.functional.grid_sample`` in the settings PyTorch has
    (:func:`stnref.sampler_settings.is_pytorch`; rules: docs/conventions.md §3-5);
    the others are specified in docs/conventions.md §3.9, §3.10, §4.4 and §4.5.
    The plain version of eq. (3) is :func:`stnref.equations.sample`.

    Examples
    --------
    >>> import numpy as np
    >>> from stnref import grid_sample
    >>> U = np.arange(4.0).reshape(1, 1, 2, 2)
    >>> grid = np.array([[[[0.0, 0.0]]]])  # the centre of the image
    >>> grid_sample(U, grid)
    array([[[[1.5]]]])
    >>> grid_sample(U, grid + 2.0, padding_mode="constant", fill_value=-1.0)  # far outside
    array([[[[-1.]]]])
    """
    return _sample(U, grid, mode, padding_mode, align_corners, keep=False, fill_value=fill_value,
                   cubic_a=cubic_a)[0]


@_checks.quiet_nonfinite
def _sample(U, grid, mode, padding_mode, align_corners, keep, fill_value=FILL_VALUE,
            cubic_a=CUBIC_A):
    """:func:`grid_sample`, and with ``keep`` the taps of every chunk for :func:`_sample_backward`.

    The kept taps carry their grid derivatives too (order 1), so a backward on
    the same ``U`` and ``grid`` skips recomputing them; they are read-only.
    """
    U, grid, opts = _check_inputs(U, grid, mode, padding_mode, align_corners, "grid_sample",
                                  fill_value, cubic_a)
    N, C = U.shape[:2]
    padded = _padded_shape(U.shape, mode)
    planes = _planes(U, padded, opts.fill, opts.padding.wraps)  # (C, R) or (R,) for C = 1
    coords, bad = _flat_coords(grid)
    M = coords.shape[0]
    V = np.empty(planes.shape[:-1] + (M,), dtype=U.dtype)  # (C, M) or (M,)
    kept = [] if keep else None
    for start, stop in _chunks(N, M // N if N else 0):
        chunk = _chunk(coords, start, stop, U.shape, padded, opts, order=1 if keep else 0)
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
#   The ring of U_rows holds fill_value, one variable read by every tap outside the image:
#   d fill_value = sum of dU_rows over the ring (docs/derivations/sampling.md §9); with wrap
#   it holds the image's opposite edges, so its rows are added back to those pixels (§10).
def grid_sample_backward(dV, U, grid, mode="bilinear", padding_mode="zeros", align_corners=False,
                         need_dU=True, *, fill_value=FILL_VALUE, cubic_a=CUBIC_A,
                         need_dfill_value=False):
    """Gradients of :func:`grid_sample` with respect to ``U`` and ``grid`` (and ``fill_value``).

    Parameters
    ----------
    dV : ndarray, shape (N, C, H_out, W_out) or (N, C, D_out, H_out, W_out)
        Gradient of the loss with respect to the forward's output.
    U, grid, mode, padding_mode, align_corners, fill_value, cubic_a
        The forward's arguments.
    need_dU : bool, default True
        If False, skip the scatter and return ``None`` for ``dU`` (a network's
        input data needs no gradient).
    need_dfill_value : bool, default False
        Also return the gradient with respect to ``fill_value`` (only with
        ``padding_mode="constant"``, the padding that reads it).

    Returns
    -------
    dU : ndarray, shape of ``U`` (or None)
        Scatter-add of ``w * dV``: sample points sharing a pixel accumulate.
    dgrid : ndarray, shape of ``grid``
        Exactly 0 for ``nearest``; NaN at grid points with a non-finite coordinate.
    dfill_value : scalar of ``U``'s dtype, only with ``need_dfill_value=True``
        ``sum dV * w`` over every tap that read ``fill_value`` (all points and channels;
        none from points with a non-finite coordinate).

    Notes
    -----
    Matches PyTorch's ``grid_sampler_2d_backward`` / ``grid_sampler_3d_backward``
    in the settings PyTorch has, including one-sided derivatives at integer pixel
    positions and zero multipliers on clip borders (docs/conventions.md §3-4, §6).
    Eqs. (6) and (7) as the paper writes them: :func:`stnref.equations.sample_backward`.

    Examples
    --------
    >>> import numpy as np
    >>> U = np.ones((1, 1, 2, 2))
    >>> grid = np.array([[[[1.0, 0.0]]]])  # the right edge: half of the taps read fill_value
    >>> dU, dgrid, dfill = grid_sample_backward(np.ones((1, 1, 1, 1)), U, grid,
    ...     padding_mode="constant", fill_value=3.0, need_dfill_value=True)
    >>> float(dfill), dgrid[0, 0, 0].tolist()
    (0.5, [2.0, 0.0])
    """
    return _sample_backward(dV, U, grid, mode, padding_mode, align_corners, need_dU, None,
                            fill_value, cubic_a, need_dfill_value)


@_checks.quiet_nonfinite
def _sample_backward(dV, U, grid, mode, padding_mode, align_corners, need_dU, kept,
                     fill_value=FILL_VALUE, cubic_a=CUBIC_A, need_dfill_value=False):
    """:func:`grid_sample_backward`, reusing the taps ``kept`` by :func:`_sample` on the same
    ``U`` and ``grid`` (None: recompute them)."""
    fn = "grid_sample_backward"
    need_dfill_value = _checks.check_bool(need_dfill_value, "need_dfill_value", fn)
    U, grid, opts = _check_inputs(U, grid, mode, padding_mode, align_corners, fn, fill_value,
                                  cubic_a, ["need_dfill_value=True"] if need_dfill_value else [])
    dV = _checks.check_dV(dV, U, grid, fn)
    need_dU = _checks.check_bool(need_dU, "need_dU", fn)
    scatter = need_dU or need_dfill_value

    N, C = U.shape[:2]
    k = U.ndim - 2
    padded = _padded_shape(U.shape, mode)
    planes = _planes(U, padded, opts.fill, opts.padding.wraps)
    coords, bad = _flat_coords(grid)
    M = coords.shape[0]
    g = dV.swapaxes(0, 1).reshape(C, M)                    # (C, M)
    if bad is not None:
        g = np.where(bad, 0, g)
    if C == 1:
        g = g[0]
    smooth = opts.kernel.taps is not _nearest
    T = len(opts.kernel.offsets) ** k
    R = planes.shape[-1]
    index = np.int32 if max(R, M * T) < INT_MAX else np.int64  # int32: scipy's fast path
    dgrid = np.zeros((M, k), dtype=grid.dtype)
    if scatter:
        S_rows = np.empty((M, T), dtype=index)
        S_data = np.empty((M, T), dtype=U.dtype)
        if T > DIRECT_TAPS:
            tap_rows = np.empty((T, min(CHUNK, M)), dtype=index)
            tap_data = np.empty((T, min(CHUNK, M)), dtype=U.dtype)
    for number, (start, stop) in enumerate(_chunks(N, M // N if N else 0)):
        if kept is None:
            chunk = _chunk(coords, start, stop, U.shape, padded, opts, order=1)
        else:
            chunk = kept[number]
        if scatter:
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

    dU = dfill = None
    if scatter:
        S = scipy.sparse.csr_matrix(
            (S_data.reshape(-1), S_rows.reshape(-1), np.arange(0, M * T + 1, T, dtype=index)),
            shape=(M, R),
        )
        dU_rows = np.asarray(S.T @ (g if C == 1 else g.T), dtype=U.dtype)  # (R,) or (R, C)
        dU_rows = dU_rows.reshape(N, *padded, C)
        if need_dU:
            dU_inner = _unring(dU_rows, opts.kernel.ring, opts.padding.wraps)
            dU = np.ascontiguousarray(np.moveaxis(dU_inner, -1, 1))
        if need_dfill_value:
            ring = np.ones(padded, dtype=bool)
            ring[(slice(opts.kernel.ring, -opts.kernel.ring),) * k] = False
            dfill = U.dtype.type(dU_rows[:, ring].sum())
    if bad is not None:
        dgrid[bad] = np.nan
    if need_dfill_value:
        return dU, dgrid.reshape(grid.shape), dfill
    return dU, dgrid.reshape(grid.shape)
