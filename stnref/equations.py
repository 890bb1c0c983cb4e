"""The paper's equations (1)-(7), literally: start reading stnref here.

Each function below is one equation of Jaderberg et al., *Spatial Transformer
Networks* (NIPS 2015), written the way the paper writes it, with plain NumPy
broadcasting: no chunks, no zero rings, no in-place arithmetic, no rounding
flavours.  They are slow (``sample`` visits every input pixel for every output
pixel) and 2-D only, and they are the definition the engineered functions are
tested against:

=================================  ==========================================
here                               engineered, PyTorch-exact
=================================  ==========================================
:func:`affine_grid` (eq. 1)        :func:`stnref.affine_grid`
:func:`attention_theta` (eq. 2)    :func:`stnref.attention_grid`
:func:`sample` (eqs. 3-5)          :func:`stnref.grid_sample`
:func:`sample_backward` (6, 7)     :func:`stnref.grid_sample_backward`
=================================  ==========================================

``tests/test_equations.py`` checks that the two agree to 1e-12 in float64 on
random inputs, that :func:`sample_backward` agrees with finite differences, and
pins the two places where the paper's printed rule and stnref (like PyTorch)
differ: eq. (4) rounds the ties ``m + 1/2`` with ``m`` even up where stnref rounds
half to even (and, in floating point, reads pixel 1 at 0.49999999999999994, see
:func:`integer_kernel`), and eq. (7) at an exact integer coordinate gives a slope
that is not a one-sided derivative (docs/conventions.md §4.2, §6.5).
``docs/sampler.md`` walks from :func:`sample` to :mod:`stnref.sampling` one step at a
time.

Letters: as in the paper, ``m`` and ``n`` index the input's columns and rows and
``i`` the output points (here an output pixel ``(p, q)``, row ``p``); the batch
index is ``b``.

Coordinates are normalised, ``-1`` the left/top and ``+1`` the right/bottom of
the image; the paper leaves open how they map to the pixel indices ``m``, ``n``
of eq. (3), and stnref uses PyTorch's rule, :func:`pixel_coordinate`
(docs/conventions.md §3.1).  The functions that take arrays compute in float64
and return the input's dtype, and check their arguments as everywhere in stnref
(a wrong type, shape or size, or a non-finite theta, is a ``TypeError`` /
``ValueError`` naming the function and the argument); those few lines come first
in each function and are not the maths.  The kernels and :func:`pixel_coordinate`
are the bare formulas, applied to what they are given.
"""

from __future__ import annotations

import numpy as np

from . import _checks

__all__ = [
    "KERNELS", "affine_grid", "affine_grid_backward", "attention_theta", "bilinear_kernel",
    "cubic_kernel", "integer_kernel", "pixel_coordinate", "sample", "sample_backward",
]


def _target_grid(H, W, align_corners):
    """The regular target grid ``G``: ``(H, W, 3)`` homogeneous points ``(x_t, y_t, 1)``.

    Normalised pixel centres ``(2 j + 1) / W - 1`` (``align_corners=False``) or
    ``linspace(-1, 1, W)`` (True); an axis of one pixel has the coordinate 0.
    """
    def axis(n):
        if n == 1:
            return np.zeros(1)
        return np.linspace(-1, 1, n) if align_corners else (2 * np.arange(n) + 1) / n - 1

    y_t, x_t = np.meshgrid(axis(H), axis(W), indexing="ij")
    return np.stack([x_t, y_t, np.ones((H, W))], axis=-1)


def affine_grid(theta, size, align_corners=False):
    """Eq. (1): every target point ``(x_t, y_t)`` goes to ``(x_s, y_s)^T = A_theta (x_t, y_t, 1)^T``.

    Parameters
    ----------
    theta : ndarray, shape (N, 2, 3)
        ``A_theta`` of each sample.
    size : tuple (N, C, H, W)
        Shape of the output ``V``.
    align_corners : bool, default False
        Target points at pixel centres (False) or with -1 and +1 at the corner pixels' centres.

    Returns
    -------
    grid : ndarray, shape (N, H, W, 2)
        Source points ``(x_s, y_s)``, normalised.

    Examples
    --------
    >>> grid = affine_grid(np.array([[[1.0, 0, 0], [0, 1, 0]]]), (1, 1, 2, 2))
    >>> grid[0, 0, 0]                         # the top-left pixel's centre
    array([-0.5, -0.5])
    """
    theta = _checks.float_array(theta, "theta", "affine_grid")
    _checks.check_finite(theta, "theta", "affine_grid")
    N, C, H, W = _checks.check_size(size, "size", "affine_grid", (4,))
    if theta.shape != (N, 2, 3):
        raise ValueError(f"affine_grid(): expected theta of shape ({N}, 2, 3), got {theta.shape}")
    G = _target_grid(H, W, align_corners)                       # (H, W, 3)
    A = theta.astype(np.float64)[:, None, None]                 # (N, 1, 1, 2, 3)
    grid = A @ G[..., None]                                     # (N, H, W, 2, 1): A (x_t, y_t, 1)^T
    return grid[..., 0].astype(theta.dtype)


def affine_grid_backward(dgrid, size, align_corners=False):
    """Gradient of :func:`affine_grid`: ``dtheta = sum over target points of dgrid (x_t, y_t, 1)``.

    ``x_s = A_00 x_t + A_01 y_t + A_02``, so ``d x_s / d A_0j`` is ``x_t``, ``y_t``
    or 1: each row of ``dtheta`` is the sum of ``dgrid``'s component times the
    homogeneous target point.

    Parameters
    ----------
    dgrid : ndarray, shape (N, H, W, 2)
    size : tuple (N, C, H, W)
    align_corners : bool, default False

    Returns
    -------
    dtheta : ndarray, shape (N, 2, 3)
    """
    dgrid = _checks.float_array(dgrid, "dgrid", "affine_grid_backward")
    N, C, H, W = _checks.check_size(size, "size", "affine_grid_backward", (4,))
    if dgrid.shape != (N, H, W, 2):
        raise ValueError(f"affine_grid_backward(): expected dgrid of shape {(N, H, W, 2)}, "
                         f"got {dgrid.shape}")
    G = _target_grid(H, W, align_corners)                       # (H, W, 3)
    dtheta = np.einsum("nhwi,hwj->nij", dgrid.astype(np.float64), G)
    return dtheta.astype(dgrid.dtype)


def attention_theta(s, tx, ty):
    """Eq. (2): the attention transform ``A_theta = [[s, 0, t_x], [0, s, t_y]]``.

    Isotropic scale ``s`` and translation ``(t_x, t_y)``; pass the result to
    :func:`affine_grid`.

    Parameters
    ----------
    s, tx, ty : array_like, shape (N,)
        Finite, of one float dtype (lists of floats are float64).

    Returns
    -------
    theta : ndarray, shape (N, 2, 3)

    Examples
    --------
    >>> attention_theta([0.5], [0.25], [-0.25])
    array([[[ 0.5 ,  0.  ,  0.25],
            [ 0.  ,  0.5 , -0.25]]])
    """
    fn, names = "attention_theta", ("s", "tx", "ty")
    s, tx, ty = (_checks.float_array(a, name, fn) for a, name in zip((s, tx, ty), names))
    for a, name in zip((s, tx, ty), names):
        _checks.check_finite(a, name, fn)
        if a.ndim != 1 or a.shape != s.shape or a.dtype != s.dtype:
            raise ValueError(f"{fn}(): expected s, tx, ty of one shape (N,) and one dtype, got {name} "
                             f"{a.dtype} {a.shape} and s {s.dtype} {s.shape}")
    zero = np.zeros_like(s)
    return np.stack([np.stack([s, zero, tx], axis=-1),
                     np.stack([zero, s, ty], axis=-1)], axis=-2)


def integer_kernel(d):
    """Eq. (4)'s kernel, the nearest pixel: ``k(d) = delta(floor(d + 0.5))``.

    ``k(x_s - m)`` is 1 for the one pixel ``m = floor(x_s + 0.5)`` and 0
    elsewhere.  stnref's ``mode="nearest"`` (and PyTorch) read pixel ``rint(x_s)``
    instead, rounding half to even.  In float64 the two differ at the ties
    ``m + 1/2`` with ``m`` even (0.5, 2.5, -1.5: eq. (4) reads ``m + 1``,
    ``grid_sample`` ``m``) and at one more point, ``x_s = 0.49999999999999994``,
    the largest double below 0.5, where ``x_s + 0.5`` rounds to 1: eq. (4) reads
    pixel 1 and ``grid_sample`` pixel 0.  ``tests/test_equations.py`` checks every tie
    ``m + 1/2`` with ``|m| <= 300`` and the six doubles on either side of it, and
    finds no other.

    Examples
    --------
    >>> integer_kernel(np.array([-0.6, -0.5, 0.0, 0.49, 0.5]))
    array([0., 1., 1., 1., 0.])
    >>> x_s = np.nextafter(0.5, 0)                # 0.49999999999999994
    >>> integer_kernel(x_s - np.arange(2)), np.rint(x_s)
    (array([0., 1.]), np.float64(0.0))
    """
    return (np.floor(d + 0.5) == 0).astype(np.float64)


def bilinear_kernel(d):
    """Eq. (5)'s kernel, the tent: ``k(d) = max(0, 1 - |d|)``.

    Examples
    --------
    >>> bilinear_kernel(np.array([-1.5, -0.25, 0.0, 0.5, 1.0]))
    array([0.  , 0.75, 1.  , 0.5 , 0.  ])
    """
    return np.maximum(0, 1 - np.abs(d))


def cubic_kernel(d, a=-0.75):
    """Keys' cubic convolution kernel: eq. (3) with a kernel the paper does not print.

    ``(a + 2)|d|^3 - (a + 3)|d|^2 + 1`` for ``|d| <= 1``, ``a|d|^3 - 5a|d|^2 + 8a|d| - 4a``
    for ``1 < |d| < 2``, else 0.  With ``a = -0.75`` (PyTorch's) and zero padding,
    ``sample(U, grid, "bicubic")`` is ``grid_sample(..., mode="bicubic")``.

    Examples
    --------
    >>> cubic_kernel(np.array([0.0, 0.5, 1.0, 1.5, 2.0]))
    array([ 1.     ,  0.59375,  0.     , -0.09375,  0.     ])
    """
    d = np.abs(d)
    near = (a + 2) * d**3 - (a + 3) * d**2 + 1
    far = a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


KERNELS = {"nearest": integer_kernel, "bilinear": bilinear_kernel, "bicubic": cubic_kernel}


def pixel_coordinate(x, size, align_corners=False):
    """Normalised coordinate ``x`` to the pixel coordinate of eq. (3) (docs/conventions.md §3.1).

    ``(x + 1)/2 (size - 1)`` with ``align_corners``, else ``((x + 1) size - 1)/2``:
    pixel ``m`` sits at ``m``, and -1, +1 are the corner pixels' centres
    (True) or outer edges (False).

    Examples
    --------
    >>> pixel_coordinate(np.array([-1.0, 0.0, 1.0]), 4)
    array([-0.5,  1.5,  3.5])
    """
    if align_corners:
        return (x + 1) / 2 * (size - 1)
    return ((x + 1) * size - 1) / 2


def sample(U, grid, kernel="bilinear", align_corners=False, fill_value=0.0):
    """Eq. (3): ``V_i^c = sum_n sum_m U_nm^c k(x_s_i - m) k(y_s_i - n)``, over every pixel.

    With the bilinear kernel this is eq. (5), with the integer kernel eq. (4).
    Every lattice point ``(m, n)`` outside the image holds ``fill_value``: 0 is
    ``padding_mode="zeros"``, any other value ``padding_mode="constant"``.  Their
    weights are the rest of 1, since the kernels sum to 1 over all lattice points
    (they reproduce a constant image), so eq. (3) gains one term:
    ``+ fill_value (1 - sum_n sum_m k(x_s_i - m) k(y_s_i - n))``.  Every input
    pixel is weighted for every output pixel: ``N H' W' H W`` weights, for small inputs.

    Parameters
    ----------
    U : ndarray, shape (N, C, H, W)
    grid : ndarray, shape (N, H', W', 2)
        Normalised source points ``(x_s, y_s)``.
    kernel : {"bilinear", "nearest", "bicubic"} or callable, default "bilinear"
        :func:`bilinear_kernel`, :func:`integer_kernel`, :func:`cubic_kernel`, or any ``k(d)``
        (with a ``fill_value``, one that sums to 1 over the integers).
    align_corners : bool, default False
    fill_value : float, default 0.0
        The value of every lattice point outside the image.

    Returns
    -------
    V : ndarray, shape (N, C, H', W')

    Examples
    --------
    >>> U = np.arange(4.0).reshape(1, 1, 2, 2)
    >>> sample(U, np.zeros((1, 1, 1, 2)))     # the centre: the mean of the four pixels
    array([[[[1.5]]]])
    >>> sample(U, np.array([[[[1.0, 0.0]]]]), fill_value=5.0)   # the right edge: half outside
    array([[[[3.5]]]])
    """
    U, grid = _checks.check_U_grid(U, grid, "sample", (4,))
    k = kernel if callable(kernel) else KERNELS[_checks.check_choice(kernel, "kernel", "sample", KERNELS)]
    N, C, H, W = U.shape
    _checks.check_budget(grid.shape[:3] + (H, W), "sample", "weights")
    dtype, U, grid = U.dtype, U.astype(np.float64), grid.astype(np.float64)
    x_s = pixel_coordinate(grid[..., 0], W, align_corners)[..., None, None]  # (N, H', W', 1, 1)
    y_s = pixel_coordinate(grid[..., 1], H, align_corners)[..., None, None]
    m, n = np.arange(W), np.arange(H)[:, None]                               # (W,), (H, 1)
    weights = k(x_s - m) * k(y_s - n)                                         # (N, H', W', H, W)
    V = np.einsum("bcnm,bpqnm->bcpq", U, weights)                            # sum over n and m
    V = V + fill_value * (1 - weights.sum(axis=(-2, -1)))[:, None]           # lattice outside
    return V.astype(dtype)


def sample_backward(dV, U, grid, align_corners=False):
    """Eqs. (6) and (7): gradients of the bilinear :func:`sample`, as the paper writes them.

    Eq. (6): ``dV_i/dU_nm = max(0, 1 - |x_s_i - m|) max(0, 1 - |y_s_i - n|)``, so
    ``dU_nm = sum_i dV_i k(x_s_i - m) k(y_s_i - n)``.  The paper prints eq. (6) with
    a double sum ``sum_n sum_m`` in front; the derivative with respect to one pixel
    ``U_nm`` has no sum over pixels, so it is left out here (the sum over output
    points ``i`` is the chain rule's).  Eq. (7):

    ``dV_i/dx_s_i = sum_n sum_m U_nm max(0, 1 - |y_s_i - n|) * {0 if |m - x_s_i| >= 1;
    +1 if m >= x_s_i; -1 if m < x_s_i}``, and the same for ``y_s``.

    Chained with ``d x_s / d grid_x`` (``W/2``, or ``(W - 1)/2`` with
    ``align_corners``) and summed over channels against ``dV``.  At an exact
    integer ``x_s`` the case split is not a one-sided derivative: it gives
    ``+U[m]`` where stnref (and PyTorch) take the right-sided
    ``U[m + 1] - U[m]`` (docs/conventions.md §6.5); elsewhere the two agree.

    Parameters
    ----------
    dV : ndarray, shape (N, C, H', W')
    U : ndarray, shape (N, C, H, W)
    grid : ndarray, shape (N, H', W', 2)
    align_corners : bool, default False

    Returns
    -------
    dU : ndarray, shape (N, C, H, W)
    dgrid : ndarray, shape (N, H', W', 2)
    """
    U, grid = _checks.check_U_grid(U, grid, "sample_backward", (4,))
    dV = _checks.check_dV(dV, U, grid, "sample_backward")
    N, C, H, W = U.shape
    _checks.check_budget(grid.shape[:3] + (H, W), "sample_backward", "weights")
    dtype, dV, U, grid = U.dtype, dV.astype(np.float64), U.astype(np.float64), grid.astype(np.float64)
    x_s = pixel_coordinate(grid[..., 0], W, align_corners)[..., None, None]  # (N, H', W', 1, 1)
    y_s = pixel_coordinate(grid[..., 1], H, align_corners)[..., None, None]
    m, n = np.arange(W), np.arange(H)[:, None]
    kx, ky = bilinear_kernel(x_s - m), bilinear_kernel(y_s - n)              # (N, H', W', 1|H, W|1)
    dU = np.einsum("bcpq,bpqnm->bcnm", dV, kx * ky)                           # eq. (6)
    sign_x = np.where(np.abs(m - x_s) >= 1, 0, np.where(m >= x_s, 1, -1))    # eq. (7)'s cases
    sign_y = np.where(np.abs(n - y_s) >= 1, 0, np.where(n >= y_s, 1, -1))
    dV_dx = np.einsum("bcnm,bpqnm->bcpq", U, ky * sign_x)                   # dV_i / dx_s_i
    dV_dy = np.einsum("bcnm,bpqnm->bcpq", U, kx * sign_y)
    scale_x, scale_y = ((W - 1) / 2, (H - 1) / 2) if align_corners else (W / 2, H / 2)
    dgrid = np.stack([scale_x * np.einsum("bcpq,bcpq->bpq", dV, dV_dx),
                      scale_y * np.einsum("bcpq,bcpq->bpq", dV, dV_dy)], axis=-1)
    return dU.astype(dtype), dgrid.astype(dtype)
