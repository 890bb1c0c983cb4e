"""Forward mode and second order: JVPs of the sampler and the grids, and the sampler's double backward.

Everything builds on the sampler's shared plan (``stnref.sampling._plan``): for
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

import numpy as np
import scipy.sparse

from . import _checks, grids
from .sampling import _check_inputs, _padded_rows, _plan, _to_channels_first

__all__ = [
    "affine_grid_jvp",
    "attention_grid_jvp",
    "grid_sample_double_backward",
    "grid_sample_jvp",
    "projective_grid_jvp",
    "tps_grid_jvp",
]


# --------------------------------------------------------------------------- helpers

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


def _unpad_rows(rows, U_shape, padded):
    """(N * prod(padded), C) zero-ringed rows -> (N, C, *spatial) without the ring."""
    N, C = U_shape[:2]
    ring = (padded[0] - U_shape[2]) // 2  # as _padded_rows: the ring width depends on the kernel
    inner = (slice(None),) + (slice(ring, -ring),) * len(padded) + (slice(None),)
    return np.ascontiguousarray(np.moveaxis(rows.reshape(N, *padded, C)[inner], -1, 1))


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
@_checks.quiet_nonfinite
def grid_sample_jvp(U, grid, tU, tgrid, mode="bilinear", padding_mode="zeros", align_corners=False):
    """Jacobian-vector product (forward mode) of :func:`stnref.grid_sample`.

    ``tV = grid_sample(tU, grid) + sum_a tgrid_a * dV/dg_a``, the directional
    derivative of ``V = grid_sample(U, grid)`` along ``(tU, tgrid)``.

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
    mode, padding_mode, align_corners
        As for :func:`stnref.grid_sample`.

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
    holds exactly for ``(dU, dgrid) = grid_sample_backward(dV, U, grid)``.
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
    U, grid, align_corners = _check_inputs(U, grid, mode, padding_mode, align_corners, fn)
    tU = _check_like(tU, U, "tU", "U", fn)
    tgrid = _check_like(tgrid, grid, "tgrid", "grid", fn)
    N, C = U.shape[:2]
    k = U.ndim - 2
    plan = _plan(U.shape, grid, mode, padding_mode, align_corners, order=1)
    M = plan.rows.shape[0]
    tV_rows = np.zeros((M, C), dtype=U.dtype)
    if tU is not None:
        tV_rows += _contract(plan.weights, np.take(_padded_rows(tU, plan.padded), plan.rows, axis=0))
    if tgrid is not None and plan.dweights is not None:
        t = tgrid.reshape(M, k)
        if plan.bad is not None:
            t = np.where(plan.bad[:, None], 0, t)
        Wt = _directional(plan.dweights, t)                                  # (M, T)
        tV_rows += _contract(Wt, np.take(_padded_rows(U, plan.padded), plan.rows, axis=0))
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
@_checks.quiet_nonfinite
def grid_sample_double_backward(g_dU, g_dgrid, dV, U, grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False):
    """Double backward of :func:`stnref.grid_sample`: VJP of :func:`stnref.grid_sample_backward`.

    For ``(dU, dgrid) = grid_sample_backward(dV, U, grid, ...)`` and cotangents
    ``(g_dU, g_dgrid)``, returns the gradients of
    ``L = <g_dU, dU> + <g_dgrid, dgrid>`` with respect to ``dV``, ``U`` and
    ``grid`` -- what ``torch.autograd.grad(..., create_graph=True)`` followed by a
    second ``grad`` computes.

    Parameters
    ----------
    g_dU : ndarray, shape of ``U``, or None
        Cotangent of ``dU`` (None: zero).
    g_dgrid : ndarray, shape of ``grid``, or None
        Cotangent of ``dgrid`` (None: zero).
    dV : ndarray, shape (N, C, H_out, W_out) or (N, C, D_out, H_out, W_out)
        The first backward's incoming gradient.
    U, grid, mode, padding_mode, align_corners
        The forward's arguments; everything shares the dtype of ``U``.

    Returns
    -------
    g_dV : ndarray, shape of ``dV``
        ``grid_sample_jvp(U, grid, g_dU, g_dgrid)``.
    g_U : ndarray, shape of ``U``
        Scatter of ``dV`` with the weights' derivative along ``g_dgrid``.
    g_grid : ndarray, shape of ``grid``
        ``sum_t dW_b H + sum_a g_dgrid_a sum_t ddW_ab G`` (see the source comment).

    Notes
    -----
    ``nearest``: ``dgrid`` is identically zero and ``dU`` does not depend on
    ``U``, so every grid term is zero: ``g_U = 0``, ``g_grid = 0`` and
    ``g_dV = grid_sample(g_dU, grid)``.  No error is raised.
    Derivatives at kinks are the one-sided ones of the first-order backward.
    Grid points with a non-finite coordinate: NaN in ``g_dV`` and ``g_grid``,
    no contribution to ``g_U`` (docs/conventions.md §5.2).  Matches PyTorch's
    double backward of ``grid_sample`` (float64, all modes and paddings).

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
    U, grid, align_corners = _check_inputs(U, grid, mode, padding_mode, align_corners, fn)
    dV = _checks.check_dV(dV, U, grid, fn)
    g_dU = _check_like(g_dU, U, "g_dU", "U", fn)
    g_dgrid = _check_like(g_dgrid, grid, "g_dgrid", "grid", fn)

    N, C = U.shape[:2]
    k = U.ndim - 2
    plan = _plan(U.shape, grid, mode, padding_mode, align_corners, order=2)
    M, T = plan.rows.shape
    n_rows = N * int(np.prod(plan.padded))
    dV_rows = np.moveaxis(dV, 1, -1).reshape(M, C)
    if plan.bad is not None:
        dV_rows = np.where(plan.bad[:, None], 0, dV_rows)

    g_dV_rows = np.zeros((M, C), dtype=U.dtype)
    g_U_rows = np.zeros((n_rows, C), dtype=U.dtype)
    g_grid = np.zeros((M, k), dtype=U.dtype)
    taps_g = None
    if g_dU is not None:
        taps_g = np.take(_padded_rows(g_dU, plan.padded), plan.rows, axis=0)  # (M, T, C)
        g_dV_rows += _contract(plan.weights, taps_g)
    if plan.dweights is not None:
        taps_U = np.take(_padded_rows(U, plan.padded), plan.rows, axis=0)    # (M, T, C)
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
    g_U = _unpad_rows(g_U_rows, U.shape, plan.padded)
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
