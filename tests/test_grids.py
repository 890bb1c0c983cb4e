"""Grid generators and the transform registry: oracles, finite differences, exact identities."""

import warnings

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from stnref import gradcheck, grid_sample, grid_sample_backward
from stnref.grids import (
    PROJECTIVE_FAR,
    TPS_CACHE_SIZE,
    _tps_matrix,
    affine_grid,
    affine_grid_backward,
    attention_grid,
    attention_grid_backward,
    base_coordinates,
    projective_grid,
    projective_grid_backward,
    tps_control_points,
    tps_grid,
    tps_grid_backward,
    tps_matrix,
)
from stnref.registry import TRANSFORMS, Transform, get_transform, tps_transform

EXACT = 1e-12          # float64 results that differ only by rounding of O(1) sums
F32_TOL = 1e-6         # float32 against float64 (a few ulps of O(1) values)
KINK_MARGIN = 1e-3     # bilinear FD checks keep pixel coordinates this far from integers
NOISE = 0.1            # size of random perturbations of the identity theta
NAMES = sorted(TRANSFORMS)

SIZES_2D = [(2, 1, 1, 1), (2, 3, 1, 5), (1, 1, 4, 1), (3, 2, 5, 6), (2, 1, 4, 7)]
SIZES_3D = [(2, 1, 3, 4, 5), (1, 1, 1, 2, 1), (2, 2, 4, 1, 3)]


def _noisy_theta(transform, n, rng, noise=NOISE):
    """Identity theta of ``transform`` for ``n`` samples plus Gaussian noise."""
    ident = transform.identity()
    return ident[None] + noise * rng.standard_normal((n, *ident.shape))


def _unnormalised(grid, size, align_corners):
    """Pixel coordinates (docs/conventions.md §3.1) of a grid (N, H, W, 2) for an input of ``size``."""
    widths = np.array([size[3], size[2]], dtype=np.float64)
    if align_corners:
        return (grid + 1) / 2 * (widths - 1)
    return ((grid + 1) * widths - 1) / 2


def _affine_fit_residual(grid):
    """Largest residual of the least-squares affine fit of grid (H, W, 2) to the target grid."""
    H, W = grid.shape[:2]
    x_t, y_t = np.meshgrid(base_coordinates(W, False), base_coordinates(H, False))
    design = np.stack([x_t.ravel(), y_t.ravel(), np.ones(H * W)], axis=1)
    values = grid.reshape(-1, 2)
    coef, *_ = np.linalg.lstsq(design, values, rcond=None)
    return np.abs(design @ coef - values).max()


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", [(2, 1, 3, 4), (1, 1, 1, 5), (2, 1, 2, 3, 2)])
def test_affine_backward_gradcheck(size, align_corners):
    rng = np.random.default_rng(7)
    theta = rng.standard_normal((size[0], len(size) - 2, len(size) - 1))
    gradcheck(
        lambda t: affine_grid(t, size, align_corners),
        lambda u, t: (affine_grid_backward(u, size, align_corners),),
        [theta], names=["theta"],
    ).raise_if_failed()


# --------------------------------------------------------------------------- FD, every generator

@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_generator_backward_gradcheck(name, align_corners):
    transform = get_transform(name)
    size = (2, 1, 5, 4)
    theta = _noisy_theta(transform, 2, np.random.default_rng(3))
    gradcheck(
        lambda t: transform.grid(t, size, align_corners),
        lambda u, t: (transform.backward(u, t, size, align_corners),),
        [theta], names=["theta"],
    ).raise_if_failed()


@settings(max_examples=25)
@given(
    name=st.sampled_from(NAMES),
    align_corners=st.booleans(),
    out_hw=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    in_hw=st.tuples(st.integers(2, 6), st.integers(2, 6)),
    seed=st.integers(0, 2**16),
)
def test_generator_through_sampler_gradcheck(name, align_corners, out_hw, in_hw, seed):
    # theta -> grid -> V = grid_sample(U, grid); the chain of the two hand-written backwards.
    transform = get_transform(name)
    rng = np.random.default_rng(seed)
    n = 2
    size = (n, 2, *out_hw)
    U = rng.standard_normal((n, 2, *in_hw))
    theta = _noisy_theta(transform, n, rng)
    pix = _unnormalised(transform.grid(theta, size, align_corners), U.shape, align_corners)
    assume(np.abs(pix - np.round(pix)).min() > KINK_MARGIN)

    def forward(t):
        return grid_sample(U, transform.grid(t, size, align_corners), align_corners=align_corners)

    def vjp(dV, t):
        grid = transform.grid(t, size, align_corners)
        _, dgrid = grid_sample_backward(dV, U, grid, align_corners=align_corners, need_dU=False)
        return (transform.backward(dgrid, t, size, align_corners),)

    gradcheck(forward, vjp, [theta], names=["theta"]).raise_if_failed()


@pytest.mark.parametrize("align_corners", [False, True])
def test_affine_3d_through_sampler_gradcheck(align_corners):
    rng = np.random.default_rng(16)   # a draw with no coordinate near an integer
    size = (2, 1, 3, 2, 4)
    U = rng.standard_normal((2, 1, 4, 3, 5))
    theta = np.eye(3, 4)[None] + NOISE * rng.standard_normal((2, 3, 4))
    pix = affine_grid(theta, size, align_corners)
    spans = np.array([U.shape[4], U.shape[3], U.shape[2]], dtype=np.float64)
    pix = (pix + 1) / 2 * (spans - 1) if align_corners else ((pix + 1) * spans - 1) / 2
    assert np.abs(pix - np.round(pix)).min() > KINK_MARGIN

    def forward(t):
        return grid_sample(U, affine_grid(t, size, align_corners), align_corners=align_corners)

    def vjp(dV, t):
        grid = affine_grid(t, size, align_corners)
        _, dgrid = grid_sample_backward(dV, U, grid, align_corners=align_corners, need_dU=False)
        return (affine_grid_backward(dgrid, size, align_corners),)

    gradcheck(forward, vjp, [theta], names=["theta"]).raise_if_failed()


# --------------------------------------------------------------------------- exact identities

@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_identity_theta_is_identity_warp(name, align_corners):
    transform = get_transform(name)
    U = np.random.default_rng(1).standard_normal((2, 3, 6, 5))
    theta = np.broadcast_to(transform.identity(), (2, *transform.theta_shape))
    V = grid_sample(U, transform.grid(theta, U.shape, align_corners), align_corners=align_corners)
    np.testing.assert_allclose(V, U, rtol=0, atol=EXACT)


def test_identity_is_fresh_and_matches_theta_shape():
    for name, transform in TRANSFORMS.items():
        assert isinstance(transform, Transform) and transform.name == name
        first = transform.identity()
        assert first.shape == transform.theta_shape and first.dtype == np.float64
        first[...] = 7.0
        assert not np.any(transform.identity() == 7.0)


@pytest.mark.parametrize("align_corners", [False, True])
def test_projective_with_affine_last_row_equals_affine(align_corners):
    rng = np.random.default_rng(5)
    A = rng.standard_normal((3, 2, 3))
    H = np.concatenate([A, np.broadcast_to([[0.0, 0.0, 1.0]], (3, 1, 3))], axis=1)
    size = (3, 1, 4, 7)
    np.testing.assert_allclose(projective_grid(H, size, align_corners),
                               affine_grid(A, size, align_corners), rtol=0, atol=EXACT)
    dgrid = rng.standard_normal((3, 4, 7, 2))
    np.testing.assert_allclose(projective_grid_backward(dgrid, H, size, align_corners)[:, :2],
                               affine_grid_backward(dgrid, size, align_corners), rtol=0, atol=EXACT)


def test_projective_gradient_orthogonal_to_theta():
    # x_s, y_s are invariant under theta -> c theta (c > 0), so <dtheta, theta> = 0.
    rng = np.random.default_rng(6)
    theta = _noisy_theta(get_transform("projective"), 3, rng)
    dtheta = projective_grid_backward(rng.standard_normal((3, 5, 6, 2)), theta, (3, 1, 5, 6))
    np.testing.assert_allclose(np.einsum("nij,nij->n", dtheta, theta), 0.0, atol=EXACT)


@pytest.mark.parametrize("align_corners", [False, True])
def test_attention_equals_matching_affine(align_corners):
    rng = np.random.default_rng(8)
    theta = rng.standard_normal((3, 3))
    s, tx, ty = theta.T
    zero = np.zeros(3)
    A = np.stack([np.stack([s, zero, tx], 1), np.stack([zero, s, ty], 1)], 1)
    size = (3, 2, 5, 4)
    np.testing.assert_array_equal(attention_grid(theta, size, align_corners),
                                  affine_grid(A, size, align_corners))
    dgrid = rng.standard_normal((3, 5, 4, 2))
    dA = affine_grid_backward(dgrid, size, align_corners)
    np.testing.assert_allclose(attention_grid_backward(dgrid, size, align_corners),
                               np.stack([dA[:, 0, 0] + dA[:, 1, 1], dA[:, 0, 2], dA[:, 1, 2]], 1),
                               rtol=0, atol=EXACT)


def test_tps_interpolates_control_points():
    # align_corners=True with a 4x4 output puts pixel (i, j) exactly on control point 4 i + j.
    theta = np.random.default_rng(9).uniform(-1, 1, (2, 16, 2))
    grid = tps_grid(theta, (2, 1, 4, 4), align_corners=True)
    np.testing.assert_allclose(grid.reshape(2, 16, 2), theta, rtol=0, atol=EXACT)


@pytest.mark.parametrize("align_corners", [False, True])
def test_tps_matches_scipy_rbf(align_corners):
    # Independent oracle: scipy's exact thin-plate RBF interpolant (r^2 log r, linear tail).
    from scipy.interpolate import RBFInterpolator

    rng = np.random.default_rng(14)
    points = rng.uniform(-1, 1, (9, 2))
    theta = points[None] + 0.3 * rng.standard_normal((2, 9, 2))
    grid = tps_grid(theta, (2, 1, 5, 6), points, align_corners)
    x_t, y_t = np.meshgrid(base_coordinates(6, align_corners), base_coordinates(5, align_corners))
    targets = np.stack([x_t.ravel(), y_t.ravel()], axis=1)
    for n in range(2):
        expected = RBFInterpolator(points, theta[n], kernel="thin_plate_spline", degree=1)(targets)
        np.testing.assert_allclose(grid[n].reshape(-1, 2), expected, rtol=0, atol=1e-10)


def test_tps_non_affine_theta_bends():
    # Regression: a TPS that silently degrades to its affine part passes the identity tests.
    P = tps_control_points()
    theta = P.copy()
    inner = (np.abs(P) < 1).all(axis=1)             # the 4 interior control points
    theta[inner] *= 0.3                             # pinch the centre
    grid = tps_grid(theta[None], (1, 1, 20, 20))
    assert _affine_fit_residual(grid[0]) > 0.05
    assert _affine_fit_residual(tps_grid(P[None], (1, 1, 20, 20))[0]) < EXACT


@pytest.mark.parametrize("align_corners", [False, True])
def test_tps_reproduces_affine_maps(align_corners):
    rng = np.random.default_rng(10)
    A = rng.standard_normal((2, 2, 3))
    points = rng.uniform(-1, 1, (7, 2))
    theta = np.einsum("nrc,kc->nkr", A, np.concatenate([points, np.ones((7, 1))], axis=1))
    size = (2, 1, 6, 5)
    np.testing.assert_allclose(tps_grid(theta, size, points, align_corners),
                               affine_grid(A, size, align_corners), rtol=0, atol=EXACT)


def test_tps_custom_points_transform():
    points = np.random.default_rng(11).uniform(-1, 1, (6, 2))
    transform = tps_transform(points)
    assert transform.theta_shape == (6, 2)
    np.testing.assert_array_equal(transform.identity(), points)
    points[0] = 5.0                                 # the entry keeps its own copy
    assert transform.identity()[0, 0] != 5.0
    grid = transform.grid(transform.identity()[None], (1, 1, 3, 4), False)
    np.testing.assert_allclose(grid, affine_grid(np.eye(2, 3)[None], (1, 1, 3, 4)), atol=EXACT)


def test_tps_cache_returns_same_read_only_matrix():
    first = tps_matrix(9, 11, align_corners=True)
    assert tps_matrix(9, 11, align_corners=True) is first
    assert not first.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        first[0, 0] = 1.0
    assert _tps_matrix.cache_info().maxsize == TPS_CACHE_SIZE
    grid = tps_grid(np.zeros((1, 16, 2)), (1, 1, 9, 11), align_corners=True)
    grid[...] = 1.0                                 # the caller's output is its own
    np.testing.assert_array_equal(tps_matrix(9, 11, align_corners=True), first)


# --------------------------------------------------------------------------- the horizon rule

def test_projective_beyond_horizon_is_far_without_warnings():
    # w' = x_t + 0.5 over x_t in {-1, -0.5, 0, 0.5, 1}: negative, exactly zero, positive columns.
    theta = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.5]]])
    size = (1, 1, 3, 5)
    dgrid = np.random.default_rng(12).standard_normal((1, 3, 5, 2))
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        grid = projective_grid(theta, size, align_corners=True)
        dtheta = projective_grid_backward(dgrid, theta, size, align_corners=True)
        dtheta_far = projective_grid_backward(
            np.where(np.arange(5)[None, None, :, None] < 2, dgrid, 0.0), theta, size, True)
        V = grid_sample(np.ones((1, 1, 4, 4)), grid, align_corners=True)
    np.testing.assert_array_equal(grid[:, :, :2], PROJECTIVE_FAR)
    assert np.all(np.abs(grid[:, :, 2:]) < 3)
    np.testing.assert_array_equal(dtheta_far, 0.0)
    assert np.abs(dtheta).max() > 0
    np.testing.assert_array_equal(V[..., :2], 0.0)


def test_projective_near_horizon_overflow_is_far():
    # w' = 1e-300 > 0 but x'/w' overflows: also the far point, no warning.
    theta = np.array([[[1.0, 0.0, 2.0], [0.0, 1.0, 2.0], [0.0, 0.0, 1e-300]]])
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        grid = projective_grid(theta, (1, 1, 2, 2), align_corners=True)
        dtheta = projective_grid_backward(np.ones((1, 2, 2, 2)), theta, (1, 1, 2, 2), True)
    np.testing.assert_array_equal(grid, PROJECTIVE_FAR)
    np.testing.assert_array_equal(dtheta, 0.0)


# --------------------------------------------------------------------------- dtypes

@pytest.mark.parametrize("name", NAMES)
def test_float32_in_float32_out(name):
    transform = get_transform(name)
    rng = np.random.default_rng(13)
    size = (2, 1, 6, 7)
    theta = _noisy_theta(transform, 2, rng)
    dgrid = rng.standard_normal((2, 6, 7, 2))
    grid64 = transform.grid(theta, size, False)
    grid32 = transform.grid(theta.astype(np.float32), size, False)
    dtheta64 = transform.backward(dgrid, theta, size, False)
    dtheta32 = transform.backward(dgrid.astype(np.float32), theta.astype(np.float32), size, False)
    assert grid32.dtype == np.float32 and dtheta32.dtype == np.float32
    assert grid64.dtype == np.float64 and dtheta64.dtype == np.float64
    np.testing.assert_allclose(grid32, grid64, rtol=0, atol=10 * F32_TOL)
    scale = np.abs(dtheta64).max()
    np.testing.assert_allclose(dtheta32, dtheta64, rtol=0, atol=100 * F32_TOL * scale)


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("name", NAMES)
def test_registry_errors(name):
    transform = get_transform(name)
    theta = transform.identity()[None].repeat(2, axis=0)
    size = (2, 1, 3, 3)
    with pytest.raises(ValueError, match=r"expected theta of shape"):
        transform.grid(theta[:, :-1], size, False)
    with pytest.raises(ValueError, match=r"has batch 3 but theta has batch 2"):
        transform.grid(theta, (3, 1, 3, 3), False)
    with pytest.raises(ValueError, match=r"size with 4 entries"):
        transform.grid(theta, (2, 1, 3, 3, 3), False)
    bad = theta.copy()
    bad.flat[1] = np.nan
    with pytest.raises(ValueError, match=r"expected finite theta"):
        transform.grid(bad, size, False)
    with pytest.raises(TypeError, match=r"float32 or float64"):
        transform.grid(theta.astype(np.int64), size, False)
    with pytest.raises(ValueError, match=r"expected dgrid of shape \(2, 3, 3, 2\)"):
        transform.backward(np.zeros((2, 3, 4, 2)), theta, size, False)


def test_projective_backward_checks_theta():
    with pytest.raises(ValueError, match=r"projective_grid_backward\(\): expected finite theta"):
        projective_grid_backward(np.zeros((1, 2, 2, 2)), np.full((1, 3, 3), np.inf), (1, 1, 2, 2))


def test_unknown_transform_lists_names():
    with pytest.raises(ValueError, match=r"'affine', 'attention', 'projective', 'tps', got 'rigid'"):
        get_transform("rigid")


@pytest.mark.parametrize("points, message", [
    (np.array([[-1.0, -1.0], [0.0, 0.0], [1.0, 1.0], [0.5, 0.5]]), "degenerate"),      # collinear
    (np.array([[-1.0, -1.0], [1.0, -1.0], [0.0, 1.0], [1.0, -1.0]]), "degenerate"),    # duplicated
    (np.array([[-1.0, -1.0], [1.0, -1.0]]), r"K >= 3, got \(2, 2\)"),                  # K < 3
    (np.zeros((4, 3)), r"shape \(K, 2\)"),
    (np.array([[-1.0, -1.0], [1.0, -1.0], [0.0, np.nan]]), "finite control_points"),
])
def test_degenerate_control_points(points, message):
    theta = np.zeros((1, len(points), 2))
    for call in (lambda: tps_grid(theta, (1, 1, 3, 3), points),
                 lambda: tps_grid_backward(np.zeros((1, 3, 3, 2)), (1, 1, 3, 3), points),
                 lambda: tps_transform(points)):
        with pytest.raises(ValueError, match=message) as excinfo:
            call()
        assert "control_points" in str(excinfo.value)


def test_degenerate_control_points_name_the_argument():
    collinear = np.array([[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match=r"tps_grid\(\): control_points are degenerate"):
        tps_grid(np.zeros((1, 3, 2)), (1, 1, 2, 2), collinear)


@pytest.mark.parametrize("k", [0, 3, 8, 10])
def test_tps_control_points_rejects_non_squares(k):
    with pytest.raises(ValueError, match=r"perfect square >= 4"):
        tps_control_points(k)


def test_tps_control_points_layout():
    P = tps_control_points(9)
    np.testing.assert_array_equal(P[:3], [[-1, -1], [0, -1], [1, -1]])   # x fastest
    np.testing.assert_array_equal(P[-1], [1, 1])


def test_affine_registry_is_2d_only():
    with pytest.raises(ValueError, match=r"size with 4 entries"):
        get_transform("affine").grid(np.zeros((1, 3, 4)), (1, 1, 2, 2, 2), False)


def test_tps_control_points_over_the_budget_refused():
    """Fuzzer regression: k = 10^10 (a perfect square) allocated a (10^10, 2) array.

    The budget is lowered instead, so a regression fails here without exhausting memory.
    """
    import stnref

    previous = stnref.set_max_elements(32)
    try:
        assert tps_control_points(16).shape == (16, 2)
        with pytest.raises(ValueError, match=r"tps_control_points\(\): control points of shape "
                                             r"\(25, 2\) .* over the budget of 32"):
            tps_control_points(25)
    finally:
        stnref.set_max_elements(previous)
