"""Grid generators (paper §3.2): ``T_theta`` maps the regular output grid to source points.

Every generator returns a sampling grid ``(N, H_out, W_out, 2)`` of normalised
source coordinates ``(x_s, y_s)`` (``(N, D, H, W, 3)`` with ``(x_s, y_s, z_s)`` for
volumes) for :func:`stnref.grid_sample`, and has a ``*_backward`` that turns the
gradient of that grid into the gradient of ``theta``.  Derivations:
``docs/derivations/grids.md``.
"""

from __future__ import annotations

import numpy as np

from . import _checks

__all__ = [
    "affine_grid", "affine_grid_backward", "attention_grid", "attention_grid_backward",
    "base_coordinates",
]


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
        out = grid[..., r]
        np.copyto(out, theta[:, r, k][expand])
        for a in range(k):
            out += theta[:, r, a][expand] * bases[a]
    return grid


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


# Backward of grid[n, p, r] = sum_a theta[n, r, a] b_a[p] + theta[n, r, k]
#   dtheta[n, r, a] = sum_p dgrid[n, p, r] b_a[p]     (b_a: base coordinate of axis a)
#   dtheta[n, r, k] = sum_p dgrid[n, p, r]
# b_a varies along one spatial axis only, so sum dgrid over the other axes first.
def affine_grid_backward(dgrid, size, align_corners=False):
    """Gradient of :func:`affine_grid` with respect to ``theta``.

    Parameters
    ----------
    dgrid : ndarray, shape (N, H_out, W_out, 2) or (N, D_out, H_out, W_out, 3)
        Gradient of the loss with respect to the grid.
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
    >>> affine_grid_backward(np.ones((1, 2, 2, 2)), (1, 1, 2, 2))[0]
    array([[0., 0., 4.],
           [0., 0., 4.]])
    """
    fn = "affine_grid_backward"
    dgrid, size = _check_dgrid(dgrid, size, fn)
    align_corners = _checks.check_bool(align_corners, "align_corners", fn)
    k = dgrid.ndim - 2
    spatial = size[2:]
    dtheta = np.empty((size[0], k, k + 1), dtype=dgrid.dtype)
    for a in range(k):
        axis = 1 + (k - 1 - a)  # array axis of dgrid along which b_a varies
        other = tuple(ax for ax in range(1, k + 1) if ax != axis)
        profile = dgrid.sum(axis=other)  # (N, n_a, k)
        b = base_coordinates(spatial[k - 1 - a], align_corners, dgrid.dtype)
        dtheta[:, :, a] = np.einsum("npr,p->nr", profile, b)
    dtheta[:, :, k] = dgrid.sum(axis=tuple(range(1, k + 1)))
    return dtheta


def _check_attention_theta(theta, fn):
    theta = _checks.float_array(theta, "theta", fn)
    if theta.ndim != 2 or theta.shape[1] != 3:
        raise ValueError(f"{fn}(): expected theta of shape (N, 3) = (s, t_x, t_y), got {theta.shape}")
    _checks.check_finite(theta, "theta", fn)
    return theta


def _attention_to_affine(theta):
    """``(s, t_x, t_y)`` -> ``[[s, 0, t_x], [0, s, t_y]]``, shape (N, 2, 3)."""
    affine = np.zeros((theta.shape[0], 2, 3), dtype=theta.dtype)
    affine[:, 0, 0] = affine[:, 1, 1] = theta[:, 0]
    affine[:, :, 2] = theta[:, 1:]
    return affine


def attention_grid(theta, size, align_corners=False):
    """Attention grid, paper eq. (2): isotropic scale ``s`` and translation ``(t_x, t_y)``.

    Parameters
    ----------
    theta : ndarray, shape (N, 3)
        ``(s, t_x, t_y)`` per sample; the identity is ``(1, 0, 0)``.
    size : tuple of int
        Output size ``(N, C, H_out, W_out)``.
    align_corners : bool, default False

    Returns
    -------
    grid : ndarray, shape (N, H_out, W_out, 2)
        Equal to :func:`affine_grid` of ``[[s, 0, t_x], [0, s, t_y]]``.

    Examples
    --------
    >>> import numpy as np
    >>> from stnref import attention_grid
    >>> attention_grid(np.array([[0.5, 0.5, 0.0]]), (1, 1, 1, 3), align_corners=True)[0, 0, :, 0]
    array([0.  , 0.5 , 1.  ])
    """
    fn = "attention_grid"
    theta = _check_attention_theta(theta, fn)
    size = _checks.check_size(size, "size", fn, (4,))
    if size[0] != theta.shape[0]:
        raise ValueError(f"{fn}(): size {size} has batch {size[0]} but theta has batch {theta.shape[0]}")
    return affine_grid(_attention_to_affine(theta), size, align_corners)


# Backward through A = [[s, 0, t_x], [0, s, t_y]]:
#   ds = dA[0,0] + dA[1,1],  dt_x = dA[0,2],  dt_y = dA[1,2]
def attention_grid_backward(dgrid, size, align_corners=False):
    """Gradient of :func:`attention_grid` with respect to ``theta = (s, t_x, t_y)``.

    Parameters
    ----------
    dgrid : ndarray, shape (N, H_out, W_out, 2)
    size : tuple of int
        ``(N, C, H_out, W_out)`` as given to the forward.
    align_corners : bool, default False

    Returns
    -------
    dtheta : ndarray, shape (N, 3)
    """
    fn = "attention_grid_backward"
    dgrid, size = _check_dgrid(dgrid, size, fn, k_options=(2,))
    dA = affine_grid_backward(dgrid, size, align_corners)
    return np.stack([dA[:, 0, 0] + dA[:, 1, 1], dA[:, 0, 2], dA[:, 1, 2]], axis=1)
