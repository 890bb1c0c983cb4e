"""The differentiable sampler (paper §3.3): ``V = grid_sample(U, grid)`` and its backward.

One pipeline serves every kernel, padding and dimension:

1. unnormalise each grid coordinate to a pixel coordinate ``ix`` (``iy``, ``iz``);
2. bilinear / nearest: apply the padding to the continuous coordinate
   (``_PADDINGS``), keeping its derivative multiplier;
3. the kernel (``_KERNELS``) turns the coordinate into integer taps with weights
   ``w(t)`` and derivatives ``dw/dt``; bicubic pads each integer tap instead;
4. taps index a copy of ``U`` padded by one zero pixel on every side and laid
   out channels-last, so every tap is in bounds and an out-of-range tap reads 0;
5. the per-axis taps combine into a tensor product (4 bilinear taps in 2-D,
   8 trilinear in 3-D, 16 bicubic) of flat row indices and weights.

Forward gathers rows and sums weighted taps; the backward scatters ``dV`` back
with a sparse product (``dU = S^T dV``) and contracts the derivative weights
with the gathered taps for ``dgrid``.  Derivations: ``docs/derivations/sampling.md``.
Conventions (PyTorch's): ``../shared/CONVENTIONS.md`` §3-6.
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

import numpy as np
import scipy.sparse

from . import _checks

__all__ = ["grid_sample", "grid_sample_backward", "CUBIC_A"]

CUBIC_A = -0.75  # Keys cubic convolution parameter; PyTorch's value
CHUNK = 1 << 14  # grid points per chunk: temporaries stay cache-sized, memory bounded


# --------------------------------------------------------------------------- coordinates

def _unnormalize(coord, size, align_corners):
    """Normalised coordinate -> pixel coordinate, and its derivative ``s``.

    The expressions are those of PyTorch's CPU kernel (``(x + 1) * s`` and
    ``(x + 1) * s - 0.5``), so float32 rounding -- and hence ``floor`` near a
    cell edge -- agrees with it.
    """
    dt = coord.dtype.type
    if align_corners:
        s = dt(size - 1) / dt(2)
        return (coord + dt(1)) * s, s
    s = dt(size) / dt(2)
    return (coord + dt(1)) * s - dt(0.5), s


def _clip(i, size):
    """Clip to ``[0, size - 1]``; multiplier 0 at and beyond the border (inclusive)."""
    hi = i.dtype.type(size - 1)
    res = np.minimum(np.maximum(i, 0), hi)
    mult = ((i > 0) & (i < hi)).astype(i.dtype)
    return res, mult


def _reflect(i, size, align_corners):
    """Reflect about pixel centres (align_corners) or edges; returns ``(coord, +-1)``.

    PyTorch's vectorised formula: ``extra = |i - low| mod 2 span`` by
    truncated division, then one more fold if ``extra`` passes the span.
    """
    dt = i.dtype.type
    if align_corners:
        if size <= 1:
            return np.zeros_like(i), np.zeros_like(i)
        low, twice_span = dt(0), dt(size - 1) * dt(2)
    else:
        low, twice_span = dt(-0.5), dt(size) * dt(2)
    shifted = i - low
    a = np.abs(shifted)
    extra = a - np.trunc(a / twice_span) * twice_span
    reflected = twice_span - extra
    flip = extra > reflected
    res = np.where(flip, reflected, extra) + low
    sign = np.where(flip ^ (shifted < 0), dt(-1), dt(1))
    return res, sign


def _pad_identity(i, size, align_corners):
    return i, None


def _pad_border(i, size, align_corners):
    return _clip(i, size)


def _pad_reflection(i, size, align_corners):
    r, sign = _reflect(i, size, align_corners)
    res, mult = _clip(r, size)
    return res, mult * sign


class _Padding(NamedTuple):
    coord: object         # (i, size, align_corners) -> (coordinate, multiplier or None for 1)
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
    dw: list             # d w / d coordinate of each tap, array or scalar (None: flat kernel)
    ddw: list            # d^2 w / d coordinate^2 of each tap (None: zero)


def _nearest(i):
    # np.rint rounds half to even, as PyTorch's nearbyint
    base = np.rint(i)
    return _Taps(base, (0,), [np.ones_like(i)], None, None)


def _linear(i):
    base = np.floor(i)  # at an integer the right-hand cell: right-sided derivative
    t = i - base
    one = i.dtype.type(1)
    return _Taps(base, (0, 1), [one - t, t], [-one, one], None)


def _cubic(i):
    """Keys cubic convolution weights of taps ``floor(i) - 1 .. floor(i) + 2``.

    With ``t = i - floor(i)`` the tap distances are ``1 + t, t, 1 - t, 2 - t``;
    ``k1(x) = ((A+2) x - (A+3)) x^2 + 1`` for ``|x| <= 1`` and
    ``k2(x) = ((A x - 5A) x + 8A) x - 4A`` for ``1 < |x| < 2``.
    """
    dt = i.dtype.type
    A = dt(CUBIC_A)
    base = np.floor(i)
    t = i - base

    def k1(x):
        return ((A + dt(2)) * x - (A + dt(3))) * x * x + dt(1)

    def k2(x):
        return ((A * x - dt(5) * A) * x + dt(8) * A) * x - dt(4) * A

    def dk1(x):  # d k1 / d x
        return (dt(3) * (A + dt(2)) * x - dt(2) * (A + dt(3))) * x

    def dk2(x):
        return (dt(3) * A * x - dt(10) * A) * x + dt(8) * A

    def ddk1(x):
        return dt(6) * (A + dt(2)) * x - dt(2) * (A + dt(3))

    def ddk2(x):
        return dt(6) * A * x - dt(10) * A

    x0, x1, x2, x3 = t + dt(1), t, dt(1) - t, dt(2) - t
    w = [k2(x0), k1(x1), k1(x2), k2(x3)]
    # d/dt of the distances is (+1, +1, -1, -1)
    dw = [dk2(x0), dk1(x1), -dk1(x2), -dk2(x3)]
    ddw = [ddk2(x0), ddk1(x1), ddk1(x2), ddk2(x3)]
    return _Taps(base, (-1, 0, 1, 2), w, dw, ddw)


class _Kernel(NamedTuple):
    taps: object           # coordinate -> _Taps
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
    U = _checks.float_array(U, "U", fn)
    grid = _checks.float_array(grid, "grid", fn)
    _checks.check_ndim(U, "U", fn, (4, 5), "(N, C, H_in, W_in) or (N, C, D_in, H_in, W_in)")
    k = U.ndim - 2
    layout = "(N, H_out, W_out, 2)" if k == 2 else "(N, D_out, H_out, W_out, 3)"
    if grid.ndim != U.ndim or grid.shape[-1] != k:
        raise ValueError(
            f"{fn}(): expected grid of shape {layout} for {U.ndim}-D U, got {grid.shape}"
        )
    if grid.shape[0] != U.shape[0]:
        raise ValueError(
            f"{fn}(): expected grid with batch N={U.shape[0]} like U, got {grid.shape[0]} "
            f"(grid {grid.shape}, U {U.shape})"
        )
    if min(U.shape[2:]) < 1:
        raise ValueError(f"{fn}(): expected U with non-empty spatial dimensions, got {U.shape}")
    _checks.check_same_dtype(U, "U", grid, "grid", fn)
    _checks.check_choice(mode, "mode", fn, _KERNELS)
    _checks.check_choice(padding_mode, "padding_mode", fn, _PADDINGS)
    align_corners = _checks.check_bool(align_corners, "align_corners", fn)
    if k not in _KERNELS[mode].dims:
        raise ValueError(f"{fn}(): mode={mode!r} supports 4-D input only, got {U.ndim}-D U {U.shape}")
    _checks.check_budget((U.shape[0], U.shape[1], *grid.shape[1:-1]), fn, "V")
    return U, grid, align_corners


# --------------------------------------------------------------------------- taps

class _Axis(NamedTuple):
    """Taps of one spatial axis for a set of points; each list holds one (M,) array per tap."""

    idx: list    # int64 index into the zero-ringed axis
    w: list      # weights
    dw: list     # d w / d g (normalised coordinate), or None
    ddw: list    # d^2 w / d g^2, or None (zero)


def _axis(coord, size, kernel, padding, align_corners, order):
    """Unnormalise, pad and expand one coordinate into kernel taps (steps 1-3 above).

    Derivatives with respect to the normalised coordinate ``g`` follow the
    chain rule ``d/dg = s * multiplier * d/di`` through the unnormalisation
    scale ``s`` and the padding multiplier (0 on clip borders, -1 per fold).
    """
    i, s = _unnormalize(coord, size, align_corners)
    mult = None
    if kernel.pads_coordinate:
        i, mult = padding.coord(i, size, align_corners)
    if padding.zero_outside:
        # Beyond this window every tap is out of range: clamping changes nothing
        # but keeps indices in the ring (and 1e30 from overflowing int64).
        i = np.clip(i, -(kernel.offsets[-1] + 1), size - kernel.offsets[0])
    taps = kernel.taps(i)
    if kernel.pads_coordinate or padding.zero_outside:
        first = taps.base.astype(np.int64) + kernel.ring
        idx = [first + o if o else first for o in taps.offsets]
    else:  # border / reflection bicubic: each integer tap is padded on its own
        idx = [padding.coord(taps.base + i.dtype.type(o), size, align_corners)[0].astype(np.int64)
               + kernel.ring for o in taps.offsets]
    scale = s if mult is None else s * mult
    dw = [d * scale for d in taps.dw] if order >= 1 and taps.dw is not None else None
    ddw = [d * (scale * scale) for d in taps.ddw] if order >= 2 and taps.ddw is not None else None
    return _Axis(idx, taps.w, dw, ddw)


def _flat_coords(grid):
    """(N, *out, k) -> (M, k) coordinates with non-finite points moved to 0, and their mask."""
    k = grid.shape[-1]
    coords = grid.reshape(-1, k)
    if np.isfinite(coords).all():
        return coords, None
    bad = ~functools.reduce(np.logical_and, (np.isfinite(coords[:, a]) for a in range(k)))
    return np.where(bad[:, None], 0, coords), bad


def _padded_shape(U_shape, mode):
    ring = _KERNELS[mode].ring
    return tuple(n + 2 * ring for n in U_shape[2:])


def _axes(coords, start, stop, U_shape, grid_shape, padded, mode, padding_mode, align_corners,
          order):
    """Per-axis taps of points ``start:stop`` and the padded row of their image's origin."""
    k = coords.shape[1]
    kernel, padding = _KERNELS[mode], _PADDINGS[padding_mode]
    strides = np.cumprod((1,) + padded[::-1])  # x, y, z strides, then the image size
    P = int(np.prod(grid_shape[1:-1]))
    origin = (np.arange(start, stop, dtype=np.int64) // P) * strides[k]
    axes = []
    for a in range(k):
        ax = _axis(coords[start:stop, a], U_shape[-1 - a], kernel, padding, align_corners, order)
        axes.append(ax._replace(idx=[i * strides[a] for i in ax.idx]))
    return axes, origin


def _taps(axes, origin, order):
    """Yield ``(rows, W, [dW/dg_a])`` for every tap of the tensor product of the axes."""
    k = len(axes)
    for combo in itertools.product(*(range(len(ax.w)) for ax in axes)):
        rows = origin
        for a in range(k):
            rows = rows + axes[a].idx[combo[a]]
        w = [axes[a].w[combo[a]] for a in range(k)]
        W = functools.reduce(np.multiply, w)
        dW = None
        if order >= 1 and axes[0].dw is not None:
            dW = [functools.reduce(np.multiply, w[:a] + [axes[a].dw[combo[a]]] + w[a + 1:])
                  for a in range(k)]
        yield rows, W, dW


def _padded_rows(U, padded):
    """Copy ``U`` (N, C, *spatial) into a zero ring, channels-last: (N * prod(padded), C)."""
    N, C = U.shape[:2]
    k = U.ndim - 2
    ring = (padded[0] - U.shape[2]) // 2
    out = np.zeros((N, *padded, C), dtype=U.dtype)
    inner = (slice(None),) + (slice(ring, -ring),) * k
    out[inner] = np.moveaxis(U, 1, -1)
    return out.reshape(-1, C)


def _chunks(M):
    return ((start, min(start + CHUNK, M)) for start in range(0, M, CHUNK))


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


def _plan(U_shape, grid, mode, padding_mode, align_corners, order):
    """Dense taps, weights and (``order`` 1, 2) their grid derivatives for every grid point."""
    k = grid.shape[-1]
    coords, bad = _flat_coords(grid)
    M = coords.shape[0]
    padded = _padded_shape(U_shape, mode)
    axes, origin = _axes(coords, 0, M, U_shape, grid.shape, padded, mode, padding_mode,
                         align_corners, order)
    taps = list(_taps(axes, origin, order))
    rows = np.stack([t[0] for t in taps], axis=1)
    weights = np.stack([t[1] for t in taps], axis=1)
    dweights = ddweights = None
    if order >= 1 and taps[0][2] is not None:
        dweights = [np.stack([t[2][a] for t in taps], axis=1) for a in range(k)]
    if order >= 2 and axes[0].dw is not None:
        # d^2 W / d g_a d g_b: ddw_a prod w (a == b), dw_a dw_b prod w (a != b); bilinear has ddw = 0
        ddweights = {}
        combos = list(itertools.product(*(range(len(ax.w)) for ax in axes)))
        for a in range(k):
            for b in range(a, k):
                if a == b and axes[a].ddw is None:
                    continue
                cols = []
                for combo in combos:
                    f = [axes[c].w[combo[c]] for c in range(k)]
                    if a == b:
                        f[a] = axes[a].ddw[combo[a]]
                    else:
                        f[a], f[b] = axes[a].dw[combo[a]], axes[b].dw[combo[b]]
                    cols.append(functools.reduce(np.multiply, f))
                ddweights[a, b] = np.stack(cols, axis=1)
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
    Matches ``torch.nn.functional.grid_sample`` (rules: ``CONVENTIONS.md`` §3-5).

    Examples
    --------
    >>> import numpy as np
    >>> from stnref import grid_sample
    >>> U = np.arange(4.0).reshape(1, 1, 2, 2)
    >>> grid = np.array([[[[0.0, 0.0]]]])  # the centre of the image
    >>> grid_sample(U, grid)
    array([[[[1.5]]]])
    """
    fn = "grid_sample"
    U, grid, align_corners = _check_inputs(U, grid, mode, padding_mode, align_corners, fn)
    N, C = U.shape[:2]
    padded = _padded_shape(U.shape, mode)
    U_rows = _padded_rows(U, padded)
    if C == 1:
        U_rows = U_rows.reshape(-1)
    coords, bad = _flat_coords(grid)
    M = coords.shape[0]
    V_rows = np.zeros((M, C) if C > 1 else M, dtype=U.dtype)
    for start, stop in _chunks(M):
        axes, origin = _axes(coords, start, stop, U.shape, grid.shape, padded, mode,
                             padding_mode, align_corners, order=0)
        out = V_rows[start:stop]
        for rows, W, _ in _taps(axes, origin, order=0):
            vals = np.take(U_rows, rows, axis=0)                  # (m[, C])
            out += vals * (W if C == 1 else W[:, None])
    if bad is not None:
        V_rows[bad] = np.nan
    return _to_channels_first(V_rows.reshape(M, C), N, grid.shape[1:-1])


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
    multipliers on clip borders (``CONVENTIONS.md`` §3-4, §6).
    """
    fn = "grid_sample_backward"
    U, grid, align_corners = _check_inputs(U, grid, mode, padding_mode, align_corners, fn)
    dV = _checks.float_array(dV, "dV", fn)
    expected = (U.shape[0], U.shape[1], *grid.shape[1:-1])
    if dV.shape != expected:
        raise ValueError(f"{fn}(): expected dV of shape {expected}, got {dV.shape}")
    _checks.check_same_dtype(dV, "dV", U, "U", fn)
    need_dU = _checks.check_bool(need_dU, "need_dU", fn)

    N, C = U.shape[:2]
    k = U.ndim - 2
    padded = _padded_shape(U.shape, mode)
    U_rows = _padded_rows(U, padded)
    coords, bad = _flat_coords(grid)
    M = coords.shape[0]
    dV_rows = np.moveaxis(dV, 1, -1).reshape(M, C)
    if bad is not None:
        dV_rows = np.where(bad[:, None], 0, dV_rows)
    if C == 1:
        U_rows, dV_rows = U_rows.reshape(-1), dV_rows.reshape(-1)
    smooth = _KERNELS[mode].taps is not _nearest
    T = len(_KERNELS[mode].offsets) ** k
    dgrid = np.zeros((M, k), dtype=grid.dtype)
    if need_dU:
        S_rows = np.empty((M, T), dtype=np.int64)
        S_data = np.empty((M, T), dtype=U.dtype)
    for start, stop in _chunks(M):
        axes, origin = _axes(coords, start, stop, U.shape, grid.shape, padded, mode,
                             padding_mode, align_corners, order=1)
        g = dV_rows[start:stop]
        for t, (rows, W, dW) in enumerate(_taps(axes, origin, order=1)):
            if need_dU:
                S_rows[start:stop, t] = rows
                S_data[start:stop, t] = W
            if smooth:
                vals = np.take(U_rows, rows, axis=0)
                G = vals * g if C == 1 else np.einsum("mc,mc->m", vals, g)
                for a in range(k):
                    dgrid[start:stop, a] += dW[a] * G

    dU = None
    if need_dU:
        S = scipy.sparse.csr_matrix(
            (S_data.reshape(-1), S_rows.reshape(-1), np.arange(0, M * T + 1, T)),
            shape=(M, U_rows.shape[0]),
        )
        dU_rows = np.asarray(S.T @ dV_rows, dtype=U.dtype).reshape(N, *padded, C)
        ring = _KERNELS[mode].ring
        inner = (slice(None),) + (slice(ring, -ring),) * k
        dU = np.ascontiguousarray(np.moveaxis(dU_rows[inner], -1, 1))
    if bad is not None:
        dgrid[bad] = np.nan
    return dU, dgrid.reshape(grid.shape)
