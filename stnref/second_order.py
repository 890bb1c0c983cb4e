"""Forward mode and second order: JVPs of the sampler and the grids, and the sampler's double backward.

Everything builds on the sampler's taps gathered into one dense plan (:func:`_plan`): for
each grid point ``m`` and tap ``t`` it holds the row ``rows[m, t]`` of the
zero-ringed, channels-last copy of ``U``, the weight ``W[m, t]``, its first
derivatives ``dW_a = dW/dg_a`` and second derivatives ``ddW_ab`` with respect to
the normalised grid coordinates ``g_a`` (``a`` = x, y[, z]).  The sampler is

    V[m, c] = sum_t W[m, t] U_rows[rows[m, t], c]                       (paper eq. 3)

which is linear in ``U`` and smooth in ``grid`` between the kinks of
docs/conventions.md §3-4 (integer pixel positions, clip borders, reflection
folds); at a kink every derivative here is the one-sided one the first-order
backward uses, so the functions below are exact derivatives of
:func:`stnref.grid_sample_backward` as written.  Derivations:
``docs/derivations/second_order.md``.

Non-finite grid points follow docs/conventions.md §5.2 at every order: NaN in the
output and in every grid-shaped result at that point, no contribution to any
``U``-shaped result.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import scipy.sparse

from . import _checks, grids
from .sampler_settings import CUBIC_A, FILL_VALUE
from .sampling import _check_inputs, _chunk, _combos, _flat_coords, _padded_shape, _planes, _unring

__all__ = [
    "affine_grid_jvp",
    "attention_grid_jvp",
    "grid_sample_double_backward",
    "grid_sample_jvp",
    "projective_grid_jvp",
    "tps_grid_jvp",
]


# --------------------------------------------------------------------------- helpers

def _padded_rows(U, padded, fill=FILL_VALUE, wrap=False):
    """:func:`_planes` channels-last, ``(N * prod(padded), C)``: one row per padded pixel."""
    planes = _planes(U, padded, fill, wrap)
    return np.ascontiguousarray(planes.reshape(U.shape[1], planes.shape[-1]).T)


def _to_channels_first(rows, N, spatial):
    """(N * P, C) -> (N, C, *spatial), contiguous."""
    C = rows.shape[1]
    return np.ascontiguousarray(np.moveaxis(rows.reshape(N, *spatial, C), -1, 1))


class _Plan(NamedTuple):
    """All taps of all points at once (the sampler's chunks hold a few thousand)."""

    rows: np.ndarray      # (M, T) int64 row of each tap in the padded channels-last U
    weights: np.ndarray   # (M, T) interpolation weight of each tap (0 at bad points)
    dweights: list        # per axis (x, y[, z]): (M, T) d weight / d grid coordinate, or None
    ddweights: dict       # (a, b), a <= b: (M, T) d^2 weight / d g_a d g_b (absent: 0), or None
    bad: np.ndarray       # (M,) bool, grid point with a non-finite coordinate, or None
    padded: tuple         # spatial shape of the padded U (see _padded_rows)


@_checks.quiet_nonfinite
def _plan(U_shape, grid, opts, order):
    """Dense taps, weights and (``order`` 1, 2) their grid derivatives for every grid point."""
    k = grid.shape[-1]
    coords, bad = _flat_coords(grid)
    M = coords.shape[0]
    padded = _padded_shape(U_shape, opts.mode)
    chunk = _chunk(coords, 0, M, U_shape, padded, opts, order)
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



def _check_like(x, ref, name, ref_name, fn):
    """``x`` as a float array with the shape and dtype of ``ref``; None stays None."""
    if x is None:
        return None
    x = _checks.float_array(x, name, fn)
    if x.shape != ref.shape:
        raise ValueError(f"{fn}(): expected {name} of shape {ref.shape} like {ref_name}, got {x.shape}")
    _checks.check_same_dtype(x, name, ref, ref_name, fn)
    return x


def _scatter_rows(weights, rows, values, n_rows):
    """``out[r] = sum_{(m, t): rows[m, t] = r} weights[m, t] values[m]`` as a sparse product.

    ``weights``/``rows`` are (M, T), ``values`` (M, C); duplicates accumulate.
    """
    M, T = rows.shape
    S = scipy.sparse.csr_matrix(
        (weights.reshape(-1), rows.reshape(-1), np.arange(0, M * T + 1, T)), shape=(M, n_rows)
    )
    return np.asarray(S.T @ values, dtype=values.dtype)  # (n_rows, C)


def _unpad_rows(rows, U_shape, padded, wrap):
    """(N * prod(padded), C) ringed rows (a scatter) -> ``(N, C, *spatial)``, the image (the
    wrapped ring added back, :func:`stnref.sampling._unring`), and the ring's sum (what flowed
    to the fill value)."""
    N, C = U_shape[:2]
    ring = (padded[0] - U_shape[2]) // 2  # as _padded_rows: the ring width depends on the kernel
    rows = rows.reshape(N, *padded, C)
    outside = np.ones(padded, dtype=bool)
    outside[(slice(ring, -ring),) * len(padded)] = False
    return (np.ascontiguousarray(np.moveaxis(_unring(rows, ring, wrap), -1, 1)),
            rows.dtype.type(rows[:, outside].sum()))


def _fill_tangent(value, name, fn):
    """A tangent or cotangent of ``fill_value``: None (zero) or a finite real number."""
    return None if value is None else _checks.check_finite_real(value, name, fn)


def _contract(weights, taps):
    """``sum_t weights[m, t] taps[m, t, c]`` -> (M, C)."""
    return np.einsum("mt,mtc->mc", weights, taps)


def _directional(dweights, tangent):
    """``sum_a tangent[m, a] dweights[a][m, t]`` -> (M, T): the weights' derivative along ``tangent``."""
    out = tangent[:, 0, None] * dweights[0]
    for a in range(1, len(dweights)):
        out = out + tangent[:, a, None] * dweights[a]
    return out


# --------------------------------------------------------------------------- sampler JVP

# Forward mode of V[m, c] = sum_t W[m, t] U_rows[rows[m, t], c]:
#   tV[m, c] = sum_t W[m, t] tU_rows[rows[m, t], c]                 linear in U: grid_sample(tU, grid)
#            + sum_t (sum_a tgrid[m, a] dW_a[m, t]) U_rows[rows[m, t], c]
# dW_a already carries the unnormalisation scale and the padding multiplier (clip mask, fold sign),
# so this is the exact transpose of grid_sample_backward's dgrid (see the VJP identity tests).
# The ring of U_rows holds fill_value and V is linear in it: the ring of tU_rows holds tfill_value.
@_checks.quiet_nonfinite
def grid_sample_jvp(U, grid, tU, tgrid, mode="bilinear", padding_mode="zeros", align_corners=False,
                    *, fill_value=FILL_VALUE, cubic_a=CUBIC_A, tfill_value=None):
    """Jacobian-vector product (forward mode) of :func:`stnref.grid_sample`.

    ``tV = grid_sample(tU, grid, fill_value=tfill_value) + sum_a tgrid_a * dV/dg_a``, the
    directional derivative of ``V = grid_sample(U, grid)`` along ``(tU, tgrid, tfill_value)``.

    Parameters
    ----------
    U : ndarray, shape (N, C, H_in, W_in) or (N, C, D_in, H_in, W_in)
        Input feature map, float32 or float64.
    grid : ndarray, shape (N, H_out, W_out, 2) or (N, D_out, H_out, W_out, 3)
        Normalised source coordinates, dtype of ``U``.
    tU : ndarray, shape of ``U``, or None
        Tangent of ``U`` (None: zero).
    tgrid : ndarray, shape of ``grid``, or None
        Tangent of ``grid`` (None: zero).
    mode, padding_mode, align_corners, fill_value, cubic_a
        As for :func:`stnref.grid_sample`.
    tfill_value : float, optional
        Tangent of ``fill_value`` (None: zero); only with ``padding_mode="constant"``.

    Returns
    -------
    tV : ndarray, shape of ``V`` = (N, C, H_out, W_out) or (N, C, D_out, H_out, W_out)
        Dtype of ``U``.  NaN at grid points with a non-finite coordinate (as ``V``).

    Notes
    -----
    ``nearest`` is piecewise constant in the grid: the ``tgrid`` term is zero.
    At kinks (integer pixel positions, clip borders, folds) the one-sided
    derivative of :func:`stnref.grid_sample_backward` is used, so
    ``<dV, grid_sample_jvp(U, grid, tU, tgrid)> == <dU, tU> + <dgrid, tgrid>``
    holds exactly for ``(dU, dgrid) = grid_sample_backward(dV, U, grid)`` (plus
    ``dfill_value * tfill_value`` with a fill value).
    Matches ``torch.autograd.functional.jvp`` of ``torch.nn.functional.grid_sample``
    (PyTorch has no forward-mode rule for it; that function uses the double-VJP trick).

    Examples
    --------
    >>> import numpy as np
    >>> U = np.arange(4.0).reshape(1, 1, 2, 2)
    >>> grid = np.zeros((1, 1, 1, 2))
    >>> tgrid = np.array([[[[1.0, 0.0]]]])  # move the point right
    >>> grid_sample_jvp(U, grid, None, tgrid, align_corners=True)
    array([[[[0.5]]]])
    """
    fn = "grid_sample_jvp"
    tfill = _fill_tangent(tfill_value, "tfill_value", fn)
    U, grid, opts = _check_inputs(U, grid, mode, padding_mode, align_corners, fn, fill_value,
                                  cubic_a, ["tfill_value"] if tfill is not None else [])
    tU = _check_like(tU, U, "tU", "U", fn)
    tgrid = _check_like(tgrid, grid, "tgrid", "grid", fn)
    N, C = U.shape[:2]
    k = U.ndim - 2
    plan = _plan(U.shape, grid, opts, order=1)
    M = plan.rows.shape[0]
    tV_rows = np.zeros((M, C), dtype=U.dtype)
    if tU is not None or tfill is not None:
        tU_rows = _padded_rows(np.zeros_like(U) if tU is None else tU, plan.padded,
                               FILL_VALUE if tfill is None else tfill, opts.padding.wraps)
        tV_rows += _contract(plan.weights, np.take(tU_rows, plan.rows, axis=0))
    if tgrid is not None and plan.dweights is not None:
        t = tgrid.reshape(M, k)
        if plan.bad is not None:
            t = np.where(plan.bad[:, None], 0, t)
        Wt = _directional(plan.dweights, t)                                  # (M, T)
        U_rows = _padded_rows(U, plan.padded, opts.fill, opts.padding.wraps)
        tV_rows += _contract(Wt, np.take(U_rows, plan.rows, axis=0))
    if plan.bad is not None:
        tV_rows[plan.bad] = np.nan
    return _to_channels_first(tV_rows, N, grid.shape[1:-1])


# --------------------------------------------------------------------------- double backward

# Double backward: the VJP of (dU, dgrid) = grid_sample_backward(dV, U, grid) with cotangents
# (g_dU, g_dgrid).  With L = <g_dU, dU> + <g_dgrid, dgrid>, G[m,t] = sum_c dV[m,c] U_rows[rows,c],
# H[m,t] = sum_c dV[m,c] gU_rows[rows,c] and Wg[m,t] = sum_a g_dgrid[m,a] dW_a[m,t]:
#   L = sum W dV gU_rows[rows] + sum_a g_dgrid_a sum_t dW_a G
#   g_dV[m,c]  = sum_t W gU_rows[rows,c] + sum_t Wg U_rows[rows,c]    = grid_sample_jvp(U, grid, g_dU, g_dgrid)
#   g_U_rows   = Wg-weighted scatter of dV                             sparse product, duplicates accumulate
#   g_grid_b   = sum_t dW_b H + sum_a g_dgrid_a sum_t ddW_ab G         ddW symmetric, stored for a <= b
# (docs/derivations/second_order.md).  Bilinear has ddW_aa = 0: only the cross terms a != b remain.
# With a fill value the rings carry it: U_rows holds fill_value, gU_rows the cotangent g_dfill_value
# of dfill_value (the ring's share of dU), and g_fill_value is the ring's share of g_U_rows.
@_checks.quiet_nonfinite
def grid_sample_double_backward(g_dU, g_dgrid, dV, U, grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False, *, fill_value=FILL_VALUE, cubic_a=CUBIC_A,
                                g_dfill_value=None, need_g_fill_value=False):
    """Double backward of :func:`stnref.grid_sample`: VJP of :func:`stnref.grid_sample_backward`.

    For ``(dU, dgrid) = grid_sample_backward(dV, U, grid, ...)`` and cotangents
    ``(g_dU, g_dgrid)``, returns the gradients of
    ``L = <g_dU, dU> + <g_dgrid, dgrid>`` with respect to ``dV``, ``U`` and
    ``grid`` -- what ``torch.autograd.grad(..., create_graph=True)`` followed by a
    second ``grad`` computes.  With ``padding_mode="constant"``, ``L`` may include
    ``g_dfill_value * dfill_value`` and its gradient with respect to ``fill_value``
    may be returned too.

    Parameters
    ----------
    g_dU : ndarray, shape of ``U``, or None
        Cotangent of ``dU`` (None: zero).
    g_dgrid : ndarray, shape of ``grid``, or None
        Cotangent of ``dgrid`` (None: zero).
    dV : ndarray, shape (N, C, H_out, W_out) or (N, C, D_out, H_out, W_out)
        The first backward's incoming gradient.
    U, grid, mode, padding_mode, align_corners, fill_value, cubic_a
        The forward's arguments; everything shares the dtype of ``U``.
    g_dfill_value : float, optional
        Cotangent of ``dfill_value`` (None: zero); only with ``padding_mode="constant"``.
    need_g_fill_value : bool, default False
        Also return ``g_fill_value``, the gradient of ``L`` with respect to
        ``fill_value`` (only with ``padding_mode="constant"``).

    Returns
    -------
    g_dV : ndarray, shape of ``dV``
        ``grid_sample_jvp(U, grid, g_dU, g_dgrid, tfill_value=g_dfill_value)``.
    g_U : ndarray, shape of ``U``
        Scatter of ``dV`` with the weights' derivative along ``g_dgrid``.
    g_grid : ndarray, shape of ``grid``
        ``sum_t dW_b H + sum_a g_dgrid_a sum_t ddW_ab G`` (see the source comment).
    g_fill_value : scalar of ``U``'s dtype, only with ``need_g_fill_value=True``
        The part of that scatter which fell outside the image.

    Notes
    -----
    ``nearest``: ``dgrid`` is identically zero and ``dU`` does not depend on
    ``U``, so every grid term is zero: ``g_U = 0``, ``g_grid = 0`` and
    ``g_dV = grid_sample(g_dU, grid)``.  No error is raised.
    Derivatives at kinks are the one-sided ones of the first-order backward.
    Grid points with a non-finite coordinate: NaN in ``g_dV`` and ``g_grid``,
    no contribution to ``g_U`` (docs/conventions.md §5.2).  Matches PyTorch's
    double backward of ``grid_sample`` (float64, all modes and paddings PyTorch has).

    Examples
    --------
    >>> import numpy as np
    >>> U = np.array([[[[0.0, 1.0], [2.0, 4.0]]]])
    >>> grid = np.zeros((1, 1, 1, 2))
    >>> dV = np.ones((1, 1, 1, 1))
    >>> g_dgrid = np.array([[[[0.0, 1.0]]]])
    >>> g_dV, g_U, g_grid = grid_sample_double_backward(None, g_dgrid, dV, U, grid, align_corners=True)
    >>> g_grid[0, 0, 0]  # d^2 V / dx dy = s_x s_y (U00 - U01 - U10 + U11): the bilinear cross term
    array([0.25, 0.  ])
    """
    fn = "grid_sample_double_backward"
    g_dfill = _fill_tangent(g_dfill_value, "g_dfill_value", fn)
    need_g_fill = _checks.check_bool(need_g_fill_value, "need_g_fill_value", fn)
    given = (["g_dfill_value"] if g_dfill is not None else []) + \
        (["need_g_fill_value=True"] if need_g_fill else [])
    U, grid, opts = _check_inputs(U, grid, mode, padding_mode, align_corners, fn, fill_value,
                                  cubic_a, given)
    dV = _checks.check_dV(dV, U, grid, fn)
    g_dU = _check_like(g_dU, U, "g_dU", "U", fn)
    g_dgrid = _check_like(g_dgrid, grid, "g_dgrid", "grid", fn)

    N, C = U.shape[:2]
    k = U.ndim - 2
    plan = _plan(U.shape, grid, opts, order=2)
    M, T = plan.rows.shape
    n_rows = N * int(np.prod(plan.padded))
    dV_rows = np.moveaxis(dV, 1, -1).reshape(M, C)
    if plan.bad is not None:
        dV_rows = np.where(plan.bad[:, None], 0, dV_rows)

    g_dV_rows = np.zeros((M, C), dtype=U.dtype)
    g_U_rows = np.zeros((n_rows, C), dtype=U.dtype)
    g_grid = np.zeros((M, k), dtype=U.dtype)
    taps_g = None
    if g_dU is not None or g_dfill is not None:
        gU_rows = _padded_rows(np.zeros_like(U) if g_dU is None else g_dU, plan.padded,
                               FILL_VALUE if g_dfill is None else g_dfill, opts.padding.wraps)
        taps_g = np.take(gU_rows, plan.rows, axis=0)                          # (M, T, C)
        g_dV_rows += _contract(plan.weights, taps_g)
    if plan.dweights is not None:
        U_rows = _padded_rows(U, plan.padded, opts.fill, opts.padding.wraps)
        taps_U = np.take(U_rows, plan.rows, axis=0)                           # (M, T, C)
        if g_dgrid is not None:
            gg = g_dgrid.reshape(M, k)
            if plan.bad is not None:
                gg = np.where(plan.bad[:, None], 0, gg)
            Wg = _directional(plan.dweights, gg)                              # (M, T)
            g_dV_rows += _contract(Wg, taps_U)
            g_U_rows = _scatter_rows(Wg, plan.rows, dV_rows, n_rows)
            G = np.einsum("mc,mtc->mt", dV_rows, taps_U)                      # (M, T)
            for (a, b), ddW in plan.ddweights.items():
                q = np.einsum("mt,mt->m", ddW, G)                             # d^2 <dV, V> / dg_a dg_b
                g_grid[:, b] += gg[:, a] * q
                if a != b:
                    g_grid[:, a] += gg[:, b] * q
        if taps_g is not None:
            H = np.einsum("mc,mtc->mt", dV_rows, taps_g)                      # (M, T)
            for b in range(k):
                g_grid[:, b] += np.einsum("mt,mt->m", plan.dweights[b], H)
    if plan.bad is not None:
        g_dV_rows[plan.bad] = np.nan
        g_grid[plan.bad] = np.nan
    g_dV = _to_channels_first(g_dV_rows, N, grid.shape[1:-1])
    g_U, g_fill = _unpad_rows(g_U_rows, U.shape, plan.padded, opts.padding.wraps)
    if need_g_fill:
        return g_dV, g_U, g_grid.reshape(grid.shape), g_fill
    return g_dV, g_U, g_grid.reshape(grid.shape)


# --------------------------------------------------------------------------- grid generator JVPs

def _check_tangent(theta, ttheta, fn):
    theta = _checks.float_array(theta, "theta", fn)
    ttheta = _check_like(ttheta, theta, "ttheta", "theta", fn)
    if ttheta is None:
        raise TypeError(f"{fn}(): expected ttheta to be a float array, got NoneType")
    _checks.check_finite(ttheta, "ttheta", fn)
    return theta, ttheta


# affine_grid is linear in theta (translation column included): J ttheta = affine_grid(ttheta).
@_checks.quiet_nonfinite
def affine_grid_jvp(theta, ttheta, size, align_corners=False):
    """Jacobian-vector product of :func:`stnref.affine_grid`.

    The grid is linear in ``theta``, so ``tgrid = affine_grid(ttheta, size)``.

    Parameters
    ----------
    theta : ndarray, shape (N, 2, 3) or (N, 3, 4)
        Point of evaluation (validated; the result does not depend on it).
    ttheta : ndarray, shape of ``theta``
        Tangent, same dtype.
    size : tuple of int
        ``(N, C, H_out, W_out)`` or ``(N, C, D_out, H_out, W_out)``.
    align_corners : bool, default False

    Returns
    -------
    tgrid : ndarray, shape (N, H_out, W_out, 2) or (N, D_out, H_out, W_out, 3)

    Examples
    --------
    >>> import numpy as np
    >>> theta = np.array([[[1.0, 0, 0], [0, 1, 0]]])
    >>> ttheta = np.array([[[0.0, 0, 1], [0, 0, 0]]])  # shift right
    >>> affine_grid_jvp(theta, ttheta, (1, 1, 1, 2))[0, 0]
    array([[1., 0.],
           [1., 0.]])
    """
    fn = "affine_grid_jvp"
    theta, ttheta = _check_tangent(theta, ttheta, fn)
    grids._check_theta(theta, size, fn)
    _checks.check_bool(align_corners, "align_corners", fn)
    return grids.affine_grid(ttheta, size, align_corners)


@_checks.quiet_nonfinite
def attention_grid_jvp(theta, ttheta, size, align_corners=False):
    """Jacobian-vector product of :func:`stnref.attention_grid`; linear: ``attention_grid(ttheta)``.

    Parameters
    ----------
    theta, ttheta : ndarray, shape (N, 3)
        ``(s, t_x, t_y)`` and its tangent.
    size : tuple of int
        ``(N, C, H_out, W_out)``.
    align_corners : bool, default False

    Returns
    -------
    tgrid : ndarray, shape (N, H_out, W_out, 2)
    """
    fn = "attention_grid_jvp"
    theta, ttheta = _check_tangent(theta, ttheta, fn)
    grids._check_theta_2d(theta, size, fn, (3,), "(N, 3) = (s, t_x, t_y)")
    _checks.check_bool(align_corners, "align_corners", fn)
    return grids.attention_grid(ttheta, size, align_corners)


@_checks.quiet_nonfinite
def tps_grid_jvp(theta, ttheta, size, control_points=None, align_corners=False):
    """Jacobian-vector product of :func:`stnref.grids.tps_grid`.

    The TPS grid is ``A @ theta`` with a fixed matrix ``A``: ``tgrid = tps_grid(ttheta)``.

    Parameters
    ----------
    theta, ttheta : ndarray, shape (N, K, 2)
        Control-point targets and their tangent.
    size : tuple of int
        ``(N, C, H_out, W_out)``.
    control_points : ndarray, shape (K, 2), optional
        As for :func:`stnref.grids.tps_grid`.
    align_corners : bool, default False

    Returns
    -------
    tgrid : ndarray, shape (N, H_out, W_out, 2)
    """
    fn = "tps_grid_jvp"
    theta, ttheta = _check_tangent(theta, ttheta, fn)
    points, _ = grids._check_control_points(control_points, fn)
    k = len(points)
    grids._check_theta_2d(theta, size, fn, (k, 2), f"(N, K={k}, 2)")
    _checks.check_bool(align_corners, "align_corners", fn)
    return grids.tps_grid(ttheta, size, control_points, align_corners)


# Forward mode of the homography x_s = x'/w', y_s = y'/w', (x', y', w') = theta b, b = (x_t, y_t, 1):
#   (tx', ty', tw') = ttheta b,   t x_s = (tx' - x_s tw') / w',   t y_s = (ty' - y_s tw') / w'
# (quotient rule, the transpose of projective_grid_backward).  Far points (beyond the horizon or
# clamped to PROJECTIVE_FAR) are constants: zero tangent there, as their zero gradient.
@_checks.quiet_nonfinite
def projective_grid_jvp(theta, ttheta, size, align_corners=False):
    """Jacobian-vector product of :func:`stnref.grids.projective_grid`.

    Parameters
    ----------
    theta : ndarray, shape (N, 3, 3)
        Homographies (point of evaluation).
    ttheta : ndarray, shape (N, 3, 3)
        Tangent, dtype of ``theta``.
    size : tuple of int
        ``(N, C, H_out, W_out)``.
    align_corners : bool, default False

    Returns
    -------
    tgrid : ndarray, shape (N, H_out, W_out, 2)
        ``(t x_s, t y_s)``; exactly zero at far points (``w' <= 0`` or a source
        coordinate clamped to ``PROJECTIVE_FAR``), matching
        :func:`stnref.grids.projective_grid_backward`.

    Examples
    --------
    >>> import numpy as np
    >>> ttheta = np.zeros((1, 3, 3)); ttheta[0, 2, 2] = 1.0   # grow w': points move to the centre
    >>> projective_grid_jvp(np.eye(3)[None], ttheta, (1, 1, 1, 2), align_corners=True)[0, 0]
    array([[ 1.,  0.],
           [-1.,  0.]])
    """
    fn = "projective_grid_jvp"
    theta, ttheta = _check_tangent(theta, ttheta, fn)
    theta, size = grids._check_theta_2d(theta, size, fn, (3, 3), "(N, 3, 3)")
    align_corners = _checks.check_bool(align_corners, "align_corners", fn)
    _checks.check_budget((size[0], *size[2:], 2), fn, "grid")
    src = grids.projective_grid(theta, size, align_corners)           # (N, H, W, 2)
    # far points are exactly (PROJECTIVE_FAR, PROJECTIVE_FAR); near ones are strictly inside
    near = ~(src == grids.PROJECTIVE_FAR).all(axis=-1)                # (N, H, W)
    x_t = grids.base_coordinates(size[3], align_corners, theta.dtype)[None, None, :]
    y_t = grids.base_coordinates(size[2], align_corners, theta.dtype)[None, :, None]

    def rows(t, r):  # (N, H, W): row r of t applied to (x_t, y_t, 1)
        return t[:, r, 0, None, None] * x_t + t[:, r, 1, None, None] * y_t + t[:, r, 2, None, None]

    w = np.where(near, rows(theta, 2), theta.dtype.type(1))           # w' > 0 at near points
    tw = rows(ttheta, 2)
    tsrc = np.stack([rows(ttheta, 0), rows(ttheta, 1)], axis=-1) - src * tw[..., None]
    return np.where(near[..., None], tsrc / w[..., None], theta.dtype.type(0))
