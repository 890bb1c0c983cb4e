"""Grid generators (paper §3.2): ``T_theta`` maps the regular output grid to source points.

Every generator returns a sampling grid ``(N, H_out, W_out, 2)`` of normalised
source coordinates ``(x_s, y_s)`` (``(N, D, H, W, 3)`` with ``(x_s, y_s, z_s)`` for
volumes) for :func:`stnref.grid_sample`, and has a ``*_backward`` that turns the
gradient of that grid into the gradient of ``theta``.  One protocol for all four:
``X_grid(theta, size, align_corners)`` and ``X_grid_backward(dgrid, theta, size,
align_corners)`` -- the backward takes the forward's inputs (the TPS ones with
``control_points`` before ``align_corners``), as the registry's
:class:`~stnref.registry.Transform` does.  The affine, attention and TPS grids are
linear in ``theta``, so their backwards also take the theta-free form
``X_grid_backward(dgrid, size, ...)`` (PyTorch's ``affine_grid_generator_backward``).
Derivations: ``docs/derivations/grids.md``.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from . import _checks

__all__ = [
    "PROJECTIVE_FAR", "affine_grid", "affine_grid_backward", "attention_grid",
    "attention_grid_backward", "base_coordinates", "projective_grid", "projective_grid_backward",
    "tps_control_points", "tps_grid", "tps_grid_backward", "tps_matrix",
]

# Normalised source coordinate given to projective grid points at or beyond the horizon
# (w' <= 0), or whose quotient x'/w' would reach it in magnitude: finite, far outside
# [-1, 1], and a constant (zero gradient).  docs/derivations/grids.md, "The horizon rule".
PROJECTIVE_FAR = 1e6

# Thin-plate splines: default number of control points (the paper's 16-point TPS), the
# smallest K that fixes the affine part, the reciprocal condition number below which the
# system matrix L counts as singular, and how many matrices stay cached (per output size,
# points, align_corners and dtype; a 224 x 224, K = 16 float64 A is 6.4 MB).
TPS_DEFAULT_K = 16
TPS_MIN_POINTS = 3
TPS_RCOND = 1e-10
TPS_CACHE_SIZE = 8


def base_coordinates(n, align_corners, dtype=np.float64):
    """Normalised target coordinates of ``n`` pixels along one axis.

    ``linspace(-1, 1, n)``, scaled by ``(n - 1) / n`` when ``align_corners`` is
    False so the points are pixel centres ``(2 i + 1) / n - 1``; a size-1 axis has
    the single coordinate 0.  This is PyTorch's ``linspace_from_neg_one``.

    Parameters
    ----------
    n : int
        Number of pixels.
    align_corners : bool
        Whether -1 and 1 are the centres (True) or the outer edges (False) of
        the corner pixels.
    dtype : dtype
        Output dtype.

    Returns
    -------
    ndarray, shape (n,)
    """
    if n == 1:
        return np.zeros(1, dtype=dtype)
    base = np.linspace(-1.0, 1.0, n)
    if not align_corners:
        base = base * ((n - 1) / n)
    return base.astype(dtype, copy=False)


def _spatial_bases(spatial, align_corners, dtype):
    """Base coordinates ``[x (W,), y (H,), z (D,)]`` broadcast to the grid's spatial axes.

    ``spatial`` is ``(H, W)`` or ``(D, H, W)``; axis ``a`` of the coordinate
    vector (x=0, y=1, z=2) runs along array axis ``-1 - a``.
    """
    k = len(spatial)
    bases = []
    for a in range(k):
        n = spatial[k - 1 - a]
        shape = [1] * k
        shape[k - 1 - a] = n
        bases.append(base_coordinates(n, align_corners, dtype).reshape(shape))
    return bases


def _homogeneous_targets(spatial, align_corners, dtype):
    """Rows ``(x_t, y_t[, z_t], 1)`` over every output point, row-major (x fastest): (k + 1, P).

    ``P = prod(spatial)``; column ``p`` is output point ``p`` of the flattened grid.
    """
    count = int(np.prod(spatial))
    rows = [np.broadcast_to(b, spatial).reshape(count) for b in _spatial_bases(spatial, align_corners, dtype)]
    return np.stack(rows + [np.ones(count, dtype=dtype)])


def _check_theta(theta, size, fn, name="theta"):
    theta = _checks.float_array(theta, name, fn)
    _checks.check_ndim(theta, name, fn, (3,), "(N, 2, 3) or (N, 3, 4)")
    if theta.shape[1:] not in ((2, 3), (3, 4)):
        raise ValueError(f"{fn}(): expected {name} of shape (N, 2, 3) or (N, 3, 4), got {theta.shape}")
    k = theta.shape[1]
    size = _checks.check_size(size, "size", fn, (k + 2,))
    if size[0] != theta.shape[0]:
        raise ValueError(
            f"{fn}(): size {size} has batch {size[0]} but {name} has batch {theta.shape[0]}"
        )
    _checks.check_finite(theta, name, fn)
    return theta, size


@_checks.quiet_nonfinite
def affine_grid(theta, size, align_corners=False):
    """Affine sampling grid, paper eq. (1): ``(x_s, y_s)^T = A_theta (x_t, y_t, 1)^T``.

    Parameters
    ----------
    theta : ndarray, shape (N, 2, 3) or (N, 3, 4)
        Affine matrices mapping target to source coordinates (3-D: rows
        ``x, y, z``, columns ``x_t, y_t, z_t, 1``).  float32 or float64.
    size : tuple of int
        Output size ``(N, C, H_out, W_out)`` or ``(N, C, D_out, H_out, W_out)``.
    align_corners : bool, default False
        See :func:`base_coordinates`.

    Returns
    -------
    grid : ndarray, shape (N, H_out, W_out, 2) or (N, D_out, H_out, W_out, 3)
        Source coordinates ``(x_s, y_s[, z_s])``, dtype of ``theta``.

    Raises
    ------
    TypeError
        ``theta`` is not a float array.
    ValueError
        Wrong shapes, batch mismatch between ``theta`` and ``size``, non-finite ``theta``.

    Notes
    -----
    Matches ``torch.nn.functional.affine_grid``.  Computed separably,
    ``x_s = theta[0,0] x_t + theta[0,1] y_t + theta[0,2]``, not by a matmul
    over a base grid.

    Examples
    --------
    >>> import numpy as np
    >>> from stnref import affine_grid
    >>> theta = np.array([[[1.0, 0, 0], [0, 1, 0]]])
    >>> affine_grid(theta, (1, 1, 2, 2), align_corners=True)[0, :, :, 0]
    array([[-1.,  1.],
           [-1.,  1.]])
    """
    fn = "affine_grid"
    theta, size = _check_theta(theta, size, fn)
    align_corners = _checks.check_bool(align_corners, "align_corners", fn)
    k = theta.shape[1]
    spatial = size[2:]
    _checks.check_budget((size[0], *spatial, k), fn, "grid")
    bases = _spatial_bases(spatial, align_corners, theta.dtype)
    grid = np.empty((size[0], *spatial, k), dtype=theta.dtype)
    expand = (slice(None),) + (None,) * k  # theta[:, r, a] -> (N, 1, ..., 1)
    for r in range(k):
        # (theta_rk + theta_r0 x) + theta_r1 y [+ theta_r2 z]: the partial sums grow one
        # axis at a time, and only the last addition is full size, written in place
        acc = theta[:, r, k][expand]
        for a in range(k - 1):
            acc = acc + theta[:, r, a][expand] * bases[a]
        np.add(acc, theta[:, r, k - 1][expand] * bases[k - 1], out=grid[..., r])
    return grid


def _is_size(value):
    """Whether ``value`` is a size (a sequence of ints), which a theta (a float array) never is."""
    if isinstance(value, np.ndarray):
        return value.ndim == 1 and value.dtype.kind in "iu"
    return isinstance(value, (tuple, list)) and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in value)


def _theta_free(theta, size, align_corners, fn):
    """``(theta or None, size, align_corners)`` of a linear generator's backward.

    Besides ``(dgrid, theta, size, align_corners)``, accepts the theta-free form
    ``(dgrid, size, align_corners)``: ``theta`` None, or a size in theta's place (the
    size then sits in ``theta``, and a positional ``align_corners`` in ``size``).
    """
    if theta is not None and not _is_size(theta):
        if size is None:
            raise TypeError(f"{fn}(): expected (dgrid, theta, size, ...), got theta but no size")
        return theta, size, align_corners
    if theta is None:
        if size is None:
            raise TypeError(f"{fn}(): expected (dgrid, theta, size, ...) or (dgrid, size, ...), "
                            f"got no size")
        return None, size, align_corners
    if size is not None and not isinstance(size, (bool, np.bool_)):
        raise TypeError(f"{fn}(): expected (dgrid, theta, size, ...) or (dgrid, size, ...), got "
                        f"a size {tuple(theta)} where theta goes and {type(size).__name__} after it")
    return None, theta, align_corners if size is None else size


def _check_dgrid(dgrid, size, fn, k_options=(2, 3)):
    dgrid = _checks.float_array(dgrid, "dgrid", fn)
    _checks.check_ndim(dgrid, "dgrid", fn, tuple(k + 2 for k in k_options),
                       "(N, H_out, W_out, 2) or (N, D_out, H_out, W_out, 3)")
    k = dgrid.ndim - 2
    size = _checks.check_size(size, "size", fn, (k + 2,))
    expected = (size[0], *size[2:], k)
    if dgrid.shape != expected:
        raise ValueError(f"{fn}(): expected dgrid of shape {expected} for size {size}, got {dgrid.shape}")
    return dgrid, size


# Backward of grid[n, p, r] = sum_a theta[n, r, a] b[a, p]  with b[:, p] = (x_t, y_t[, z_t], 1)
#   dtheta[n, r, a] = sum_p dgrid[n, p, r] b[a, p]      one (k + 1, P) @ (P, k) product per sample
# (docs/derivations/grids.md).
@_checks.quiet_nonfinite
def affine_grid_backward(dgrid, theta=None, size=None, align_corners=False):
    """Gradient of :func:`affine_grid` with respect to ``theta``.

    Takes the forward's inputs after ``dgrid``; the gradient does not depend on
    ``theta`` (the grid is linear in it), which is only checked against ``size``.
    The theta-free form ``affine_grid_backward(dgrid, size, align_corners)`` (PyTorch's
    ``affine_grid_generator_backward``) gives the same result.

    Parameters
    ----------
    dgrid : ndarray, shape (N, H_out, W_out, 2) or (N, D_out, H_out, W_out, 3)
        Gradient of the loss with respect to the grid.
    theta : ndarray, shape (N, 2, 3) or (N, 3, 4), or None
        The ``theta`` given to :func:`affine_grid`.
    size : tuple of int
        The ``size`` given to :func:`affine_grid`.
    align_corners : bool, default False
        As given to :func:`affine_grid`.

    Returns
    -------
    dtheta : ndarray, shape (N, 2, 3) or (N, 3, 4)
        Same dtype as ``dgrid``.

    Examples
    --------
    >>> import numpy as np
    >>> from stnref import affine_grid_backward
    >>> affine_grid_backward(np.ones((1, 2, 2, 2)), np.eye(2, 3)[None], (1, 1, 2, 2))[0]
    array([[0., 0., 4.],
           [0., 0., 4.]])
    """
    fn = "affine_grid_backward"
    theta, size, align_corners = _theta_free(theta, size, align_corners, fn)
    dgrid, size = _check_dgrid(dgrid, size, fn)
    if theta is not None:
        theta, _ = _check_theta(theta, size, fn)
        if theta.shape[1] != dgrid.ndim - 2:
            raise ValueError(f"{fn}(): expected theta of shape (N, {dgrid.ndim - 2}, "
                             f"{dgrid.ndim - 1}) for dgrid {dgrid.shape}, got {theta.shape}")
    align_corners = _checks.check_bool(align_corners, "align_corners", fn)
    k = dgrid.ndim - 2
    b = _homogeneous_targets(size[2:], align_corners, dgrid.dtype)      # (k + 1, P)
    dtheta_t = b @ dgrid.reshape(size[0], -1, k)                          # (N, k + 1, k)
    return np.ascontiguousarray(dtheta_t.transpose(0, 2, 1))            # (N, k, k + 1)


def _check_theta_2d(theta, size, fn, shape, layout):
    """Validate a 2-D generator's ``theta`` of per-sample ``shape`` and its 4-D ``size``.

    Returns ``theta`` (a float ndarray, not copied) and ``size`` as a tuple of ints.
    """
    theta = _checks.float_array(theta, "theta", fn)
    if theta.shape[1:] != shape or theta.ndim != len(shape) + 1:
        raise ValueError(f"{fn}(): expected theta of shape {layout}, got {theta.shape}")
    size = _checks.check_size(size, "size", fn, (4,))
    if size[0] != theta.shape[0]:
        raise ValueError(f"{fn}(): size {size} has batch {size[0]} but theta has batch {theta.shape[0]}")
    _checks.check_finite(theta, "theta", fn)
    return theta, size


def _attention_to_affine(theta):
    """``(s, t_x, t_y)`` -> ``[[s, 0, t_x], [0, s, t_y]]``, shape (N, 2, 3)."""
    affine = np.zeros((theta.shape[0], 2, 3), dtype=theta.dtype)
    affine[:, 0, 0] = affine[:, 1, 1] = theta[:, 0]
    affine[:, :, 2] = theta[:, 1:]
    return affine


@_checks.quiet_nonfinite
def attention_grid(theta, size, align_corners=False):
    """Attention grid, paper eq. (2): isotropic scale ``s`` and translation ``(t_x, t_y)``.

    Parameters
    ----------
    theta : ndarray, shape (N, 3)
        ``(s, t_x, t_y)`` per sample, float32 or float64; the identity is ``(1, 0, 0)``.
    size : tuple of int
        Output size ``(N, C, H_out, W_out)``.
    align_corners : bool, default False

    Returns
    -------
    grid : ndarray, shape (N, H_out, W_out, 2)
        Equal to :func:`affine_grid` of ``[[s, 0, t_x], [0, s, t_y]]``; dtype of ``theta``.

    Raises
    ------
    TypeError
        ``theta`` is not a float array.
    ValueError
        ``theta`` not of shape (N, 3), ``size`` not 4 entries, batch mismatch,
        non-finite ``theta``.

    Examples
    --------
    >>> import numpy as np
    >>> from stnref import attention_grid
    >>> attention_grid(np.array([[0.5, 0.5, 0.0]]), (1, 1, 1, 3), align_corners=True)[0, 0, :, 0]
    array([0. , 0.5, 1. ])
    """
    fn = "attention_grid"
    theta, size = _check_theta_2d(theta, size, fn, (3,), "(N, 3) = (s, t_x, t_y)")
    return affine_grid(_attention_to_affine(theta), size, align_corners)


# Backward through A = [[s, 0, t_x], [0, s, t_y]]:
#   ds = dA[0,0] + dA[1,1],  dt_x = dA[0,2],  dt_y = dA[1,2]
@_checks.quiet_nonfinite
def attention_grid_backward(dgrid, theta=None, size=None, align_corners=False):
    """Gradient of :func:`attention_grid` with respect to ``theta = (s, t_x, t_y)``.

    Takes the forward's inputs after ``dgrid`` (``theta`` is only checked: the grid is
    linear in it); the theta-free form ``attention_grid_backward(dgrid, size,
    align_corners)`` gives the same result.

    Parameters
    ----------
    dgrid : ndarray, shape (N, H_out, W_out, 2)
    theta : ndarray, shape (N, 3), or None
        The forward's ``theta``.
    size : tuple of int
        ``(N, C, H_out, W_out)`` as given to the forward.
    align_corners : bool, default False

    Returns
    -------
    dtheta : ndarray, shape (N, 3)
        ``(ds, dt_x, dt_y)``, dtype of ``dgrid``.

    Raises
    ------
    TypeError, ValueError
        ``dgrid`` not a float array of shape (N, H_out, W_out, 2) matching ``size``.

    Examples
    --------
    >>> import numpy as np
    >>> from stnref import attention_grid_backward
    >>> theta = np.array([[1.0, 0.0, 0.0]])
    >>> attention_grid_backward(np.ones((1, 1, 3, 2)), theta, (1, 1, 1, 3), align_corners=True)
    array([[0., 3., 3.]])
    """
    fn = "attention_grid_backward"
    theta, size, align_corners = _theta_free(theta, size, align_corners, fn)
    dgrid, size = _check_dgrid(dgrid, size, fn, k_options=(2,))
    if theta is not None:
        _check_theta_2d(theta, size, fn, (3,), "(N, 3) = (s, t_x, t_y)")
    dA = affine_grid_backward(dgrid, None, size, align_corners)
    return np.stack([dA[:, 0, 0] + dA[:, 1, 1], dA[:, 0, 2], dA[:, 1, 2]], axis=1)


# --------------------------------------------------------------------------- projective

def _projective_parts(theta, size, align_corners):
    """Source points of a homography, shared by the forward and the backward.

    Returns ``src (N, H*W, 2)`` (``(x_s, y_s)``, or ``PROJECTIVE_FAR`` at far points),
    ``w (N, H*W)`` (``w'``, replaced by 1 at far points), ``near (N, H*W)`` (bool,
    False at far points) and the homogeneous targets ``b (3, H*W) = (x_t, y_t, 1)``.
    """
    dt = theta.dtype.type
    b = _homogeneous_targets(size[2:], align_corners, theta.dtype)     # (3, HW)
    src = np.empty((size[0], b.shape[1], 2), dtype=theta.dtype)
    # Far points divide by w' <= 0 or overflow; their values are replaced below, so the
    # floating-point flags they raise are not the caller's concern.
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        h = theta @ b                                                  # (N, 3, HW): x', y', w'
        ahead = h[:, 2] > 0
        w = np.where(ahead, h[:, 2], dt(1))
        np.divide(h[:, 0], w, out=src[..., 0])
        np.divide(h[:, 1], w, out=src[..., 1])
        near = ahead & (np.abs(src[..., 0]) < PROJECTIVE_FAR) & (np.abs(src[..., 1]) < PROJECTIVE_FAR)
    far = ~near
    np.copyto(src, dt(PROJECTIVE_FAR), where=far[..., None])
    np.copyto(w, dt(1), where=far)
    return src, w, near, b


@_checks.quiet_nonfinite
def projective_grid(theta, size, align_corners=False):
    """Plane-projective grid (paper §3.2, 8 parameters): a homography of the target grid.

    ``(x', y', w')^T = theta (x_t, y_t, 1)^T`` and ``(x_s, y_s) = (x' / w', y' / w')``.

    Parameters
    ----------
    theta : ndarray, shape (N, 3, 3)
        Homographies mapping target to source coordinates, float32 or float64.
        The identity is ``eye(3)``; ``theta`` has a free overall positive scale.
    size : tuple of int
        Output size ``(N, C, H_out, W_out)``.
    align_corners : bool, default False
        See :func:`base_coordinates`.

    Returns
    -------
    grid : ndarray, shape (N, H_out, W_out, 2)
        Source coordinates ``(x_s, y_s)``, dtype of ``theta``, computed in that dtype.
        A target point at or beyond the horizon (``w' <= 0``), or one whose
        source coordinate would reach ``PROJECTIVE_FAR`` (1e6) in magnitude, gets
        the finite far-outside point ``(PROJECTIVE_FAR, PROJECTIVE_FAR)``: it samples
        padding (zero with ``padding_mode="zeros"``) and has zero gradient in
        :func:`projective_grid_backward`.  No floating-point warning is raised.

    Raises
    ------
    TypeError
        ``theta`` is not a float array, or ``size`` is not a tuple of ints.
    ValueError
        ``theta`` not of shape (N, 3, 3), ``size`` not 4 entries, batch mismatch,
        non-finite ``theta``.

    Notes
    -----
    With last row ``(0, 0, 1)`` this is :func:`affine_grid` of the first two rows.

    Examples
    --------
    >>> import numpy as np
    >>> from stnref.grids import projective_grid
    >>> projective_grid(np.eye(3)[None], (1, 1, 2, 2), align_corners=True)[0, :, :, 0]
    array([[-1.,  1.],
           [-1.,  1.]])
    >>> behind = np.diag([1.0, 1.0, -1.0])[None]  # w' = -1 everywhere: beyond the horizon
    >>> projective_grid(behind, (1, 1, 1, 1))[0, 0, 0]
    array([1000000., 1000000.])
    """
    fn = "projective_grid"
    theta, size = _check_theta_2d(theta, size, fn, (3, 3), "(N, 3, 3)")
    align_corners = _checks.check_bool(align_corners, "align_corners", fn)
    _checks.check_budget((size[0], *size[2:], 2), fn, "grid")
    src, _, _, _ = _projective_parts(theta, size, align_corners)
    return src.reshape(size[0], *size[2:], 2)


# Backward of x_s = x'/w', y_s = y'/w' with (x', y', w') = theta b_p, b_p = (x_t, y_t, 1)
# (quotient rule; docs/derivations/grids.md):
#   d x_s / d theta[0] = b / w',   d y_s / d theta[1] = b / w',
#   d x_s / d theta[2] = -x_s b / w',   d y_s / d theta[2] = -y_s b / w'
# so with g = dgrid / w' per pixel, dtheta = [g_x; g_y; -(g_x x_s + g_y y_s)] @ b, one
# (3, H*W) @ (H*W, 3) product per sample.  Far points are constants: dividing their
# dgrid by w' = inf makes g exactly 0 there.
@_checks.quiet_nonfinite
def projective_grid_backward(dgrid, theta, size, align_corners=False):
    """Gradient of :func:`projective_grid` with respect to ``theta``.

    Unlike the affine backward this needs ``theta``: the grid is not linear in it.

    Parameters
    ----------
    dgrid : ndarray, shape (N, H_out, W_out, 2)
        Gradient of the loss with respect to the grid.
    theta : ndarray, shape (N, 3, 3)
        The forward's ``theta``.
    size : tuple of int
        The forward's ``(N, C, H_out, W_out)``.
    align_corners : bool, default False

    Returns
    -------
    dtheta : ndarray, shape (N, 3, 3)
        dtype of ``theta`` (``dgrid`` is cast to it); exactly zero contribution
        from far points (see :func:`projective_grid`).

    Raises
    ------
    TypeError, ValueError
        As :func:`projective_grid`, and ``dgrid`` not of shape (N, H_out, W_out, 2).

    Examples
    --------
    >>> import numpy as np
    >>> from stnref.grids import projective_grid_backward
    >>> dgrid = np.zeros((1, 1, 1, 2)); dgrid[..., 0] = 1.0  # d loss / d x_s at the centre
    >>> projective_grid_backward(dgrid, np.eye(3)[None], (1, 1, 1, 1))[0]
    array([[0., 0., 1.],
           [0., 0., 0.],
           [0., 0., 0.]])
    """
    fn = "projective_grid_backward"
    theta, size = _check_theta_2d(theta, size, fn, (3, 3), "(N, 3, 3)")
    dgrid, size = _check_dgrid(dgrid, size, fn, k_options=(2,))
    align_corners = _checks.check_bool(align_corners, "align_corners", fn)
    src, w, near, b = _projective_parts(theta, size, align_corners)
    flat = dgrid.reshape(size[0], -1, 2).astype(theta.dtype, copy=False)
    w = np.where(near, w, np.inf)                      # 1 / inf = 0: far points drop out
    rows = np.empty((size[0], 3, b.shape[1]), dtype=theta.dtype)   # (N, 3, HW)
    np.divide(flat[..., 0], w, out=rows[:, 0])
    np.divide(flat[..., 1], w, out=rows[:, 1])
    rows[:, 2] = rows[:, 0] * src[..., 0]
    rows[:, 2] += rows[:, 1] * src[..., 1]
    np.negative(rows[:, 2], out=rows[:, 2])
    return rows @ b.T                                  # (N, 3, 3)


# --------------------------------------------------------------------------- thin-plate spline

def tps_control_points(k=TPS_DEFAULT_K):
    """Default TPS control points: a regular ``sqrt(k) x sqrt(k)`` grid on ``[-1, 1]^2``.

    Parameters
    ----------
    k : int, default 16
        Number of points, a perfect square >= 4 (the paper uses 16).

    Returns
    -------
    P : ndarray, shape (k, 2), float64
        Points ``(x, y)`` in target space, x varying fastest (row-major like the grid).
        A new array on every call.

    Raises
    ------
    TypeError
        ``k`` is not an int.
    ValueError
        ``k`` is not a perfect square >= 4, or ``(k, 2)`` is over the element
        budget (:func:`stnref.set_max_elements`).

    Examples
    --------
    >>> from stnref.grids import tps_control_points
    >>> tps_control_points(4)
    array([[-1., -1.],
           [ 1., -1.],
           [-1.,  1.],
           [ 1.,  1.]])
    """
    fn = "tps_control_points"
    k = _checks.check_int(k, "k", fn)
    if k < 4 or math.isqrt(k) ** 2 != k:
        raise ValueError(f"{fn}(): expected k to be a perfect square >= 4 (4, 9, 16, ...), got {k}")
    _checks.check_budget((k, 2), fn, "control points")
    side = math.isqrt(k)
    line = np.linspace(-1.0, 1.0, side)
    return np.stack([np.tile(line, side), np.repeat(line, side)], axis=1)


def _tps_radial(d2):
    """TPS radial basis from squared distances: ``U = r^2 log r^2``, ``U(0) = 0``."""
    positive = d2 > 0
    return np.where(positive, d2 * np.log(np.where(positive, d2, 1.0)), 0.0)


def _squared_distances(a, b):
    """``|a_i - b_j|^2`` for ``a (M, 2)``, ``b (K, 2)``: (M, K)."""
    diff = a[:, None, :] - b[None, :, :]
    return np.einsum("mkc,mkc->mk", diff, diff)


def _points_from_key(points_key, k):
    return np.frombuffer(points_key, dtype=np.float64).reshape(k, 2)


@functools.lru_cache(maxsize=TPS_CACHE_SIZE)
def _tps_inverse(points_key, k):
    """First K columns of ``L^-1``, shape (K + 3, K), or None when ``L`` is singular.

    ``L = [[Kmat, P1], [P1^T, 0]]`` with ``Kmat[i, j] = U(|P_i - P_j|)`` and
    ``P1 = [1, x, y]``; it is singular exactly when the points are collinear or two
    coincide, which the smallest singular value detects robustly.
    """
    points = _points_from_key(points_key, k)
    p1 = np.concatenate([np.ones((k, 1)), points], axis=1)             # (K, 3)
    L = np.zeros((k + 3, k + 3))
    L[:k, :k] = _tps_radial(_squared_distances(points, points))
    L[:k, k:] = p1
    L[k:, :k] = p1.T
    singular_values = np.linalg.svd(L, compute_uv=False)
    if singular_values[-1] <= TPS_RCOND * singular_values[0]:
        return None
    inverse = np.linalg.solve(L, np.eye(k + 3, k))                     # (K + 3, K)
    inverse.flags.writeable = False
    return inverse


@functools.lru_cache(maxsize=TPS_CACHE_SIZE)
def _tps_matrix(height, width, align_corners, points_key, k, dtype_name):
    """Cached read-only ``A (H*W, K)`` with ``grid = A @ theta``, built in float64."""
    if dtype_name != "float64":
        A = _tps_matrix(height, width, align_corners, points_key, k, "float64").astype(dtype_name)
    else:
        points = _points_from_key(points_key, k)
        targets = _homogeneous_targets((height, width), align_corners, np.float64)[:2].T  # (HW, 2)
        B = np.concatenate(
            [_tps_radial(_squared_distances(targets, points)), np.ones((height * width, 1)), targets],
            axis=1,
        )                                                                  # (HW, K + 3)
        A = B @ _tps_inverse(points_key, k)                                # (HW, K)
    A.flags.writeable = False
    return A


def _check_control_points(control_points, fn):
    """Validated control points as a C-contiguous float64 (K, 2) array and its cache key."""
    if control_points is None:
        points = tps_control_points()
    else:
        points = _checks.float_array(control_points, "control_points", fn)
        if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] < TPS_MIN_POINTS:
            raise ValueError(
                f"{fn}(): expected control_points of shape (K, 2) with K >= {TPS_MIN_POINTS}, "
                f"got {points.shape}"
            )
        _checks.check_finite(points, "control_points", fn)
        points = np.ascontiguousarray(points, dtype=np.float64)
    key = points.tobytes()
    if _tps_inverse(key, len(points)) is None:
        raise ValueError(
            f"{fn}(): control_points are degenerate (collinear or duplicated points make the "
            f"TPS system singular), got {len(points)} points {points.tolist()}"
        )
    return points, key


def tps_matrix(height, width, control_points=None, align_corners=False):
    """The fixed matrix ``A`` of the thin-plate-spline grid: ``grid = A @ theta``.

    ``A = B @ inv(L)[:, :K]`` where ``L = [[Kmat, P1], [P1^T, 0]]`` is the TPS
    system of the control points and ``B[p] = (U(|p - P_1|), ..., U(|p - P_K|), 1, x_t, y_t)``
    for output pixel ``p``.  Built once in float64 and cached per
    ``(height, width, control points, align_corners)`` (least recently used,
    ``TPS_CACHE_SIZE`` entries); the same read-only array is returned every time.

    Parameters
    ----------
    height, width : int
        Output size ``H_out, W_out``.
    control_points : ndarray, shape (K, 2), optional
        Target-space control points, K >= 3, not collinear, no duplicates;
        default :func:`tps_control_points` ``(16)``.
    align_corners : bool, default False

    Returns
    -------
    A : ndarray, shape (H_out * W_out, K), float64, read-only
        Row ``i * W_out + j`` holds the weights of pixel ``(i, j)``.

    Raises
    ------
    TypeError, ValueError
        As :func:`tps_grid`.

    Examples
    --------
    >>> import numpy as np
    >>> from stnref.grids import tps_matrix
    >>> A = tps_matrix(4, 4, align_corners=True)  # pixels sit on the default control points
    >>> bool(abs(A - np.eye(16)).max() < 1e-12), A.flags.writeable
    (True, False)
    """
    fn = "tps_matrix"
    height = _checks.check_int(height, "height", fn, minimum=1)
    width = _checks.check_int(width, "width", fn, minimum=1)
    align_corners = _checks.check_bool(align_corners, "align_corners", fn)
    points, key = _check_control_points(control_points, fn)
    _checks.check_budget((height * width, len(points) + 3), fn, "TPS basis")
    return _tps_matrix(height, width, align_corners, key, len(points), "float64")


@_checks.quiet_nonfinite
def tps_grid(theta, size, control_points=None, align_corners=False):
    """Thin-plate-spline grid (paper §3.2 and the 16-point TPS of paper §4.1).

    ``T_theta(p) = a_0 + a_1 x_t + a_2 y_t + sum_k c_k U(|p - P_k|)`` with
    ``U(r) = r^2 log r^2``, the exact interpolant with ``T_theta(P_k) = theta_k``.
    The grid is linear in ``theta``: ``grid = A @ theta`` (:func:`tps_matrix`).

    Parameters
    ----------
    theta : ndarray, shape (N, K, 2)
        Where each control point lands in the source, ``(x_s, y_s)``; the
        identity is ``theta = control_points``.  float32 or float64.
    size : tuple of int
        Output size ``(N, C, H_out, W_out)``.
    control_points : ndarray, shape (K, 2), optional
        Target-space control points (K >= 3, not collinear, no duplicates);
        default :func:`tps_control_points` ``(16)``.
    align_corners : bool, default False

    Returns
    -------
    grid : ndarray, shape (N, H_out, W_out, 2)
        Source coordinates, dtype of ``theta`` (``A`` is built in float64 and
        applied in ``theta``'s dtype).

    Raises
    ------
    TypeError
        Non-float ``theta`` or ``control_points``.
    ValueError
        Wrong shapes, batch mismatch, non-finite ``theta`` or ``control_points``,
        fewer than 3 control points, collinear or duplicated control points.

    Examples
    --------
    >>> import numpy as np
    >>> from stnref.grids import tps_control_points, tps_grid
    >>> P = tps_control_points(4)
    >>> grid = tps_grid(P[None], (1, 1, 2, 2), control_points=P, align_corners=True)
    >>> np.allclose(grid[0].reshape(4, 2), P)  # the identity warp
    True
    """
    fn = "tps_grid"
    points, key = _check_control_points(control_points, fn)
    k = len(points)
    theta, size = _check_theta_2d(theta, size, fn, (k, 2), f"(N, K={k}, 2)")
    align_corners = _checks.check_bool(align_corners, "align_corners", fn)
    _checks.check_budget((size[0], *size[2:], 2), fn, "grid")
    A = _tps_matrix(*size[2:], align_corners, key, k, theta.dtype.name)  # (HW, K)
    grid = np.einsum("pk,nkc->npc", A, theta, optimize=True)            # (N, HW, 2)
    return grid.reshape(size[0], *size[2:], 2)


# Backward of grid[n] = A @ theta[n] with A (H*W, K) fixed by the control points and the
# output size (docs/derivations/grids.md): the map is linear, so dtheta[n] = A^T @ dgrid[n].
@_checks.quiet_nonfinite
def tps_grid_backward(dgrid, theta=None, size=None, control_points=None, align_corners=False):
    """Gradient of :func:`tps_grid` with respect to ``theta``: ``dtheta = A^T @ dgrid``.

    Takes the forward's inputs after ``dgrid`` (``theta`` is only checked: the grid is
    linear in it); the theta-free form ``tps_grid_backward(dgrid, size, control_points,
    align_corners)`` gives the same result.

    Parameters
    ----------
    dgrid : ndarray, shape (N, H_out, W_out, 2)
        Gradient of the loss with respect to the grid.
    theta : ndarray, shape (N, K, 2), or None
        The forward's ``theta``.
    size : tuple of int
        The forward's ``(N, C, H_out, W_out)``.
    control_points : ndarray, shape (K, 2), optional
        As given to :func:`tps_grid`.
    align_corners : bool, default False

    Returns
    -------
    dtheta : ndarray, shape (N, K, 2)
        dtype of ``dgrid``.

    Raises
    ------
    TypeError, ValueError
        As :func:`tps_grid`, and ``dgrid`` not of shape (N, H_out, W_out, 2).

    Examples
    --------
    >>> import numpy as np
    >>> from stnref.grids import tps_grid_backward
    >>> theta = tps_control_points()[None]
    >>> dtheta = tps_grid_backward(np.ones((1, 3, 3, 2)), theta, (1, 1, 3, 3))
    >>> dtheta.shape, bool(np.isclose(dtheta.sum(), 18.0))  # A reproduces constants
    ((1, 16, 2), True)
    """
    fn = "tps_grid_backward"
    if _is_size(theta):     # theta-free, positionally: (dgrid, size, control_points, align_corners)
        options = [v for v in (size, control_points) if v is not None]
        flags = [v for v in options if isinstance(v, (bool, np.bool_))]
        points = [v for v in options if not isinstance(v, (bool, np.bool_))]
        if len(flags) > 1 or len(points) > 1 or (flags and align_corners is not False):
            raise TypeError(f"{fn}(): expected (dgrid, theta, size, control_points, align_corners) "
                            f"or (dgrid, size, control_points, align_corners), got options {options}")
        theta, size = None, theta
        control_points = points[0] if points else None
        align_corners = flags[0] if flags else align_corners
    theta, size, align_corners = _theta_free(theta, size, align_corners, fn)
    points, key = _check_control_points(control_points, fn)
    dgrid, size = _check_dgrid(dgrid, size, fn, k_options=(2,))
    if theta is not None:
        k = len(points)
        _check_theta_2d(theta, size, fn, (k, 2), f"(N, K={k}, 2)")
    align_corners = _checks.check_bool(align_corners, "align_corners", fn)
    A = _tps_matrix(*size[2:], align_corners, key, len(points), dgrid.dtype.name)
    return np.einsum("pk,npc->nkc", A, dgrid.reshape(size[0], -1, 2), optimize=True)  # (N, K, 2)
