"""One test per rule of docs/conventions.md §1-6, named after its section.

The rules about kinks (integer knots, clip borders, folds, half-pixel bands,
rounding ties) are checked here at the kink itself with exact known values;
the smooth pieces are checked by finite differences in ``test_sampling.py``.
Exact pixel positions are built with sizes whose scale ``s`` is a power of two
(``size - 1`` with ``align_corners``, ``size`` without), so the normalised
coordinate and its unnormalised image are both exact in binary.
"""

from __future__ import annotations

import numpy as np
import pytest

import loops
from stnref import (
    affine_grid,
    affine_grid_backward,
    attention_grid,
    grid_sample,
    grid_sample_backward,
    grid_sample_jvp,
)
from stnref.grids import base_coordinates, projective_grid, tps_control_points, tps_grid
from stnref.registry import get_transform
from stnref.sampler_settings import MODES
from stnref.sampling import keys
from stnref.second_order import grid_sample_double_backward, grid_sample_jvp
from strategies import PADDINGS, combo_id, combos, kinky_grid, normalize, unnormalize

IDENTITY_TOL = 1e-12  # identity warp: one multiply-add per coordinate, then weights 1 and 0
EXACT_SIZE = {True: 5, False: 4}  # s = 2 either way: pixel <-> normalised is exact in binary
ALL = combos()
ALL_IDS = [combo_id(c) for c in ALL]
BILINEAR_NEAREST = [c for c in ALL if c[1] != "bicubic"]


def _kw(mode="bilinear", padding_mode="zeros", align_corners=False):
    return {"mode": mode, "padding_mode": padding_mode, "align_corners": align_corners}


def points_grid(pixels, spatial, align_corners, exact=True):
    """Grid (1, 1, P, k) or (1, 1, 1, P, k) at pixel coordinates ``pixels`` (P, k) = (ix, iy[, iz]).

    With ``exact``, checks that each coordinate is exact: the normalised value
    unnormalises back to the requested pixel coordinate.
    """
    pixels = np.asarray(pixels, dtype=np.float64)
    k = pixels.shape[1]
    grid = np.empty_like(pixels)
    for a in range(k):
        size = spatial[k - 1 - a]
        grid[:, a] = normalize(pixels[:, a], size, align_corners)
        finite = np.isfinite(pixels[:, a])
        back = unnormalize(grid[finite, a], size, align_corners)
        if exact and not (size == 1 and align_corners):
            np.testing.assert_array_equal(back, pixels[finite, a])
    return grid.reshape((1,) * k + grid.shape)


def ramp_image(spatial, axis_weights, square=False):
    """U (1, 1, *spatial) = sum_a w_a * index_a (+ x^2 if ``square``): exact slopes per axis."""
    idx = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in spatial), indexing="ij")
    U = sum(w * idx[len(spatial) - 1 - a] for a, w in enumerate(axis_weights))
    if square:
        U = U + idx[-1] ** 2
    return U[None, None]


# =========================================================================== §1 layout

@pytest.mark.parametrize("k", [2, 3])
def test_1_layout_nchw_and_grid_last_axis_is_x_y_z(k):
    spatial = (3, 4, 5)[-k:]
    U = np.arange(np.prod(spatial), dtype=np.float64).reshape(1, 1, *spatial)
    # a point at pixel (ix, iy, iz) reads U[..., iz, iy, ix]
    pix = np.array([[4, 1, 2][:k], [0, 3, 1][:k], [2, 0, 0][:k]], dtype=np.float64)
    pix = np.minimum(pix, np.array(spatial[::-1]) - 1)
    V = grid_sample(U, points_grid(pix, spatial, True), align_corners=True)
    expect = [U[(0, 0, *p[::-1].astype(int))] for p in pix]
    np.testing.assert_array_equal(V.reshape(-1), expect)
    assert V.shape == (1, 1, *(1,) * (k - 1), len(pix))


def test_1_channels_share_one_grid():
    rng = np.random.default_rng(0)
    U = rng.standard_normal((2, 3, 4, 5))
    grid = rng.uniform(-1.5, 1.5, (2, 3, 2, 2))
    V = grid_sample(U, grid)
    for c in range(3):
        np.testing.assert_array_equal(V[:, c:c + 1], grid_sample(U[:, c:c + 1].copy(), grid))


def test_1_batch_sizes_must_match_no_broadcasting():
    U = np.zeros((2, 1, 3, 3))
    with pytest.raises(ValueError, match=r"grid_sample\(\): expected grid with batch N=2"):
        grid_sample(U, np.zeros((1, 2, 2, 2)))


@pytest.mark.parametrize("k", [2, 3])
def test_1_theta_maps_output_to_input_inverse_warp(k):
    # x_s = x_t + 0.5 is a shift of +1 pixel (s = W/2 = 2): V[j] = U[j + 1]
    spatial = (4,) * k
    U = np.random.default_rng(1).standard_normal((1, 1, *spatial))
    theta = np.concatenate([np.eye(k), np.zeros((k, 1))], axis=1)[None]
    theta[0, 0, k] = 0.5
    V = grid_sample(U, affine_grid(theta, U.shape))
    np.testing.assert_allclose(V[..., :-1], U[..., 1:], rtol=0, atol=IDENTITY_TOL)
    np.testing.assert_array_equal(V[..., -1], 0.0)  # the source column 4 is outside: zeros


def test_1_dtype_float32_in_float32_out_integer_or_complex_rejected():
    U = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    grid = np.full((1, 2, 2, 2), 0.1, dtype=np.float32)
    assert grid_sample(U, grid).dtype == np.float32
    assert all(g.dtype == np.float32 for g in grid_sample_backward(np.ones((1, 1, 2, 2), np.float32),
                                                                    U, grid))
    for bad in (U.astype(np.int32), U.astype(np.complex64)):
        with pytest.raises(TypeError, match=r"expected U of dtype float32 or float64"):
            grid_sample(bad, grid)


def test_1_align_corners_defaults_to_false():
    rng = np.random.default_rng(2)
    U, grid = rng.standard_normal((1, 2, 3, 4)), rng.uniform(-1, 1, (1, 3, 3, 2))
    np.testing.assert_array_equal(grid_sample(U, grid), grid_sample(U, grid, align_corners=False))
    theta = rng.standard_normal((1, 2, 3))
    np.testing.assert_array_equal(affine_grid(theta, (1, 1, 3, 3)),
                                  affine_grid(theta, (1, 1, 3, 3), align_corners=False))


# =========================================================================== §2 generators

@pytest.mark.parametrize("n", [1, 2, 5, 6])
@pytest.mark.parametrize("align_corners", [False, True])
def test_2_affine_base_coordinates_linspace_or_pixel_centres(n, align_corners):
    b = base_coordinates(n, align_corners)
    if n == 1:
        expect = np.zeros(1)
    elif align_corners:
        expect = np.linspace(-1, 1, n)
    else:
        expect = (2 * np.arange(n) + 1) / n - 1
    np.testing.assert_allclose(b, expect, rtol=0, atol=1e-15)


@pytest.mark.parametrize("combo", ALL, ids=ALL_IDS)
@pytest.mark.parametrize("spatial", [5, 6], ids=["odd", "even"])
def test_2_affine_identity_theta_reproduces_the_input(combo, spatial):
    k, mode, padding, ac = combo
    shape = (2, 2, *(spatial - a for a in range(k)))  # non-square: e.g. (5, 4, 3)
    U = np.random.default_rng(3).standard_normal(shape)
    theta = np.broadcast_to(np.concatenate([np.eye(k), np.zeros((k, 1))], axis=1), (2, k, k + 1))
    V = grid_sample(U, affine_grid(theta, shape, ac), **_kw(mode, padding, ac))
    np.testing.assert_allclose(V, U, rtol=0, atol=IDENTITY_TOL)


@pytest.mark.parametrize("k", [2, 3])
def test_2_affine_backward_is_sum_of_dgrid_outer_base(k):
    rng = np.random.default_rng(4)
    size = (2, 1, *(3, 4, 5)[:k])
    dgrid = rng.standard_normal((2, *size[2:], k))
    for ac in (False, True):
        axes = [base_coordinates(size[2 + k - 1 - a], ac) for a in range(k)]  # x, y, z
        mesh = np.meshgrid(*axes[::-1], indexing="ij")[::-1]                # x_t, y_t, z_t on the grid
        base = np.stack([*mesh, np.ones_like(mesh[0])], axis=-1)              # (*spatial, k + 1)
        expect = np.einsum("npr,pa->nra", dgrid.reshape(2, -1, k), base.reshape(-1, k + 1))
        np.testing.assert_allclose(affine_grid_backward(dgrid, size, ac), expect, rtol=0, atol=1e-13)


def test_2_attention_is_affine_scale_and_translation():
    theta = np.array([[0.7, 0.2, -0.3], [1.0, 0.0, 0.0]])
    A = np.array([[[0.7, 0, 0.2], [0, 0.7, -0.3]], [[1.0, 0, 0], [0, 1.0, 0]]])
    for ac in (False, True):
        np.testing.assert_array_equal(attention_grid(theta, (2, 1, 3, 4), ac),
                                      affine_grid(A, (2, 1, 3, 4), ac))


def test_2_projective_is_a_homography_with_perspective_divide():
    size = (1, 1, 3, 4)
    H = np.array([[[1.1, 0.2, 0.1], [-0.1, 0.9, 0.0], [0.2, -0.1, 1.0]]])
    grid = projective_grid(H, size)
    base = affine_grid(np.array([[[1.0, 0, 0], [0, 1, 0]]]), size)  # (x_t, y_t)
    hom = np.concatenate([base, np.ones(base.shape[:-1] + (1,))], axis=-1) @ H[0].T
    np.testing.assert_allclose(grid, hom[..., :2] / hom[..., 2:], rtol=0, atol=1e-14)
    np.testing.assert_allclose(projective_grid(np.eye(3)[None] * 2.5, size), base, rtol=0, atol=1e-15)


def test_2_tps_identity_is_the_control_points_and_grid_is_linear_in_theta():
    P = tps_control_points()
    size = (1, 1, 5, 6)
    base = affine_grid(np.array([[[1.0, 0, 0], [0, 1, 0]]]), size)
    np.testing.assert_allclose(tps_grid(P[None], size), base, rtol=0, atol=1e-12)
    rng = np.random.default_rng(5)
    t1, t2 = rng.standard_normal((2, 1, len(P), 2))
    np.testing.assert_allclose(tps_grid(2 * t1 - t2, size),
                               2 * tps_grid(t1, size) - tps_grid(t2, size),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["affine", "attention", "projective", "tps"])
def test_2_every_generator_has_backward_and_identity(name):
    t = get_transform(name)
    size = (1, 1, 4, 5)
    theta = t.identity()[None]
    base = affine_grid(np.array([[[1.0, 0, 0], [0, 1, 0]]]), size)
    np.testing.assert_allclose(t.grid(theta, size, False), base, rtol=0, atol=1e-12)
    assert t.backward(np.ones_like(base), theta, size, False).shape == theta.shape


# =========================================================================== §3 coordinates

@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("align_corners", [False, True])
def test_3_unnormalise_and_scale_s(k, align_corners):
    # U = index along x (a ramp), interior points: V is the pixel coordinate, dgrid_x the scale s
    spatial = (4, 5, 6)[:k]
    W = spatial[-1]
    U = ramp_image(spatial, [1.0] + [0.0] * (k - 1))
    x = np.array([-0.3, 0.05, 0.4])
    grid = np.zeros((1, *(1,) * (k - 1), 3, k))
    grid[..., 0] = x
    V, (_, dgrid) = grid_sample(U, grid, align_corners=align_corners), grid_sample_backward(
        np.ones((1, 1, *(1,) * (k - 1), 3)), U, grid, align_corners=align_corners)
    i = (x + 1) / 2 * (W - 1) if align_corners else ((x + 1) * W - 1) / 2
    s = (W - 1) / 2 if align_corners else W / 2
    np.testing.assert_allclose(V.reshape(-1), i, rtol=0, atol=1e-14)
    np.testing.assert_allclose(dgrid[..., 0].reshape(-1), s, rtol=0, atol=1e-14)


@pytest.mark.parametrize("k", [2, 3])
def test_3_zeros_padding_outside_taps_read_zero_and_get_no_gradient(k):
    spatial = (4,) * k
    U = np.random.default_rng(6).standard_normal((1, 1, *spatial)) + 3
    pix = np.zeros((1, k))
    pix[0, 0] = -0.25  # x tap -1 (weight 0.25) outside, tap 0 (0.75) inside
    grid = points_grid(pix, spatial, False)
    V = grid_sample(U, grid)
    np.testing.assert_allclose(V.reshape(()), 0.75 * U[(0, 0, *(0,) * k)], rtol=1e-15)
    dU, _ = grid_sample_backward(np.ones_like(V), U, grid)
    expect = np.zeros_like(U)
    expect[(0, 0, *(0,) * k)] = 0.75
    np.testing.assert_array_equal(dU, expect)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("align_corners", [False, True])
def test_3_border_clip_gradient_is_zero_inclusive_at_the_border(k, align_corners):
    spatial = (EXACT_SIZE[align_corners],) * k
    n = spatial[0]
    U = ramp_image(spatial, [2.0] + [0.0] * (k - 1))
    pix = np.zeros((5, k)) + 1.5
    pix[:, 0] = [0.0, n - 1.0, -0.75, n + 0.25, 0.5]
    grid = points_grid(pix, spatial, align_corners)
    kw = _kw("bilinear", "border", align_corners)
    V = grid_sample(U, grid, **kw)
    _, dgrid = grid_sample_backward(np.ones_like(V), U, grid, **kw)
    dx = dgrid[..., 0].reshape(-1)
    np.testing.assert_array_equal(dx[:4], 0.0)       # at i = 0, i = size-1 exactly, and beyond
    assert dx[4] == 2.0 * 2.0                        # inside: slope 2 times s = 2
    np.testing.assert_array_equal(V.reshape(-1), [0.0, 2 * (n - 1), 0.0, 2 * (n - 1), 1.0])


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("align_corners", [False, True])
def test_3_reflection_folds_with_sign_flip(k, align_corners):
    # reflected about pixel centres (0, size-1) or edges (-0.5, size-0.5), repeating every span
    spatial = (EXACT_SIZE[align_corners],) * k
    n = spatial[0]
    low, span = (0.0, n - 1.0) if align_corners else (-0.5, float(n))
    U = ramp_image(spatial, [1.0] + [0.0] * (k - 1), square=True)  # U = x + x^2: slope 2x + 1
    inside = np.array([0.25, 1.75, 2.5])
    mirrored = 2 * low - inside              # fold once at the low end: sign -1
    twice = inside + 2 * span                # one full period: sign +1
    thrice = 2 * (low + span) - inside + 2 * span  # high fold one period on: sign -1
    pix = np.zeros((12, k)) + 1.25
    pix[:, 0] = np.concatenate([inside, mirrored, twice, thrice])
    grid = points_grid(pix, spatial, align_corners)
    kw = _kw("bilinear", "reflection", align_corners)
    V = grid_sample(U, grid, **kw).reshape(4, 3)
    _, dgrid = grid_sample_backward(np.ones((1, 1, *(1,) * (k - 1), 12)), U, grid, **kw)
    dx = dgrid[..., 0].reshape(4, 3)
    for row in range(1, 4):
        np.testing.assert_allclose(V[row], V[0], rtol=0, atol=1e-13)
    np.testing.assert_allclose(dx, dx[0] * np.array([[1], [-1], [1], [-1]]), rtol=0, atol=1e-13)
    assert (dx[0] != 0).all()


@pytest.mark.parametrize("k", [2, 3])
def test_3_reflection_half_pixel_band_gives_edge_value_and_zero_gradient(k):
    spatial = (4,) * k
    U = np.random.default_rng(7).standard_normal((1, 2, *spatial))
    pix = np.zeros((4, k)) + 1.5
    pix[:, 0] = [-0.5, -0.25, 3.25, 3.5]  # both bands, ends included (the folds)
    grid = points_grid(pix, spatial, False)
    kw = _kw("bilinear", "reflection", False)
    V = grid_sample(U, grid, **kw)
    _, dgrid = grid_sample_backward(np.ones_like(V), U, grid, **kw)
    at_y = grid_sample(U, points_grid(np.array([[0.0] + [1.5] * (k - 1), [3.0] + [1.5] * (k - 1)]),
                                       spatial, False), **kw).reshape(2, 2)
    np.testing.assert_array_equal(V.reshape(2, 4)[:, :2], at_y[:, :1].repeat(2, axis=1))
    np.testing.assert_array_equal(V.reshape(2, 4)[:, 2:], at_y[:, 1:].repeat(2, axis=1))
    np.testing.assert_array_equal(dgrid[..., 0], 0.0)


@pytest.mark.parametrize("combo", [c for c in ALL if c[3]], ids=combo_id)
def test_3_size_one_with_align_corners_is_coordinate_zero_gradient_zero(combo):
    k, mode, padding, _ = combo
    U = np.random.default_rng(8).standard_normal((1, 2, *(1,) * k))
    grid = np.random.default_rng(9).uniform(-3, 3, (1, *(2,) * k, k))
    kw = _kw(mode, padding, True)
    V = grid_sample(U, grid, **kw)
    np.testing.assert_allclose(V, np.broadcast_to(U.reshape(1, 2, *(1,) * k), V.shape),
                               rtol=0, atol=1e-15)
    _, dgrid = grid_sample_backward(np.ones_like(V), U, grid, **kw)
    np.testing.assert_array_equal(dgrid, 0.0)


@pytest.mark.parametrize("combo", ALL, ids=ALL_IDS)
def test_3_no_dropped_last_row_or_column(combo):
    # sample exactly the centres of the last row / column (and the last slice)
    k, mode, padding, ac = combo
    spatial = (EXACT_SIZE[ac],) * k
    U = np.arange(np.prod(spatial), dtype=np.float64).reshape(1, 1, *spatial)
    last = spatial[0] - 1.0
    pix = np.array([[last] * k] + [[last if b == a else 1.0 for b in range(k)] for a in range(k)])
    V = grid_sample(U, points_grid(pix, spatial, ac), **_kw(mode, padding, ac)).reshape(-1)
    expect = [U[(0, 0, *p[::-1].astype(int))] for p in pix]
    np.testing.assert_allclose(V, expect, rtol=0, atol=1e-13)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("mode", MODES)
def test_3_constant_taps_outside_read_the_fill_value(k, mode):
    # size 4 without align_corners: s = 2, exact.  i_x = 3.5: bilinear blends the last column
    # and the fill half and half; nearest rounds 3.5 to 4 (even), outside: the fill.  i_x = 50:
    # every tap outside, exactly the fill.  Inside taps get dV, the fill gets the rest.
    f = -2.5
    spatial = (4,) * k
    U = np.arange(4.0 ** k).reshape(1, 1, *spatial) / 7
    pix = np.array([[3.5] + [1.0] * (k - 1), [50.0] + [2.0] * (k - 1), [1.0] * k])
    grid = points_grid(pix, spatial, False)
    kw = _kw(mode, "constant", False)
    V = grid_sample(U, grid, fill_value=f, **kw).reshape(-1)
    edge = U[(0, 0) + (1,) * (k - 1) + (3,)]
    assert V[1] == f and V[2] == U[(0, 0) + (1,) * k]
    assert V[0] == {"bilinear": 0.5 * edge + 0.5 * f, "nearest": f}.get(mode, V[0])
    dV = np.ones(V.shape).reshape(grid.shape[:-1])[:, None]
    dU, _, dfill = grid_sample_backward(dV, U, grid, fill_value=f, need_dfill_value=True, **kw)
    share = grid_sample(U, grid, fill_value=1.0, **kw) - grid_sample(U, grid, fill_value=0.0, **kw)
    assert dfill == pytest.approx(share.sum(), abs=1e-15) and dfill >= 1.0
    assert dU.sum() + dfill == pytest.approx(3.0, abs=1e-13)   # the weights of each point sum to 1


@pytest.mark.parametrize("k, mode", [(k, m) for k in (2, 3) for m in MODES])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_3_zeros_is_constant_with_zero_bit_for_bit(k, mode, dtype):
    rng = np.random.default_rng(21)
    spatial = (4, 5, 3)[:k]
    U = rng.standard_normal((2, 2, *spatial)).astype(dtype)
    grid = kinky_grid(rng, (2, *(3, 4, 2)[:k], k), spatial, False).astype(dtype)
    dV = rng.standard_normal((2, 2, *(3, 4, 2)[:k])).astype(dtype)
    tU, tgrid = rng.standard_normal(U.shape).astype(dtype), rng.standard_normal(grid.shape).astype(dtype)
    for ac in (False, True):
        zeros, const = _kw(mode, "zeros", ac), _kw(mode, "constant", ac)
        pairs = [(grid_sample(U, grid, **zeros), grid_sample(U, grid, **const)),
                 (grid_sample_jvp(U, grid, tU, tgrid, **zeros), grid_sample_jvp(U, grid, tU, tgrid, **const))]
        pairs += zip(grid_sample_backward(dV, U, grid, **zeros), grid_sample_backward(dV, U, grid, **const))
        pairs += zip(grid_sample_double_backward(tU, tgrid, dV, U, grid, **zeros),
                     grid_sample_double_backward(tU, tgrid, dV, U, grid, **const))
        for a, b in pairs:
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_3_wrap_pads_each_tap_modulo_size(mode, align_corners):
    # Taps are pixel indices modulo size (period: size pixels) after PyTorch's unnormalisation.
    # Pixel coordinates i, i + size and i - 3 size read the same taps with the same weights
    # (nearest away from its ties: rint rounds 4.5 to 4 but 9.5 to 10, 0 modulo 5).
    spatial = (EXACT_SIZE[align_corners],) * 2
    W = spatial[1]
    rng = np.random.default_rng(22)
    U = rng.integers(-8, 8, (1, 1, *spatial)).astype(np.float64)
    i = np.array([-0.25, 0.375, W - 0.5 + (mode == "nearest") * 0.25, W - 0.375, 2.125])
    pix = np.stack([np.concatenate([i, i + W, i - 3 * W]), np.full(3 * len(i), 1.0)], axis=1)
    kw = _kw(mode, "wrap", align_corners)
    V = grid_sample(U, points_grid(pix, spatial, align_corners), **kw).reshape(3, -1)
    assert (V[0] == V[1]).all() and (V[0] == V[2]).all()
    row = U[0, 0, 1]
    if mode == "bilinear":   # i = W - 0.5 blends the last and the first pixel
        assert V[0, 2] == 0.5 * row[-1] + 0.5 * row[0]
    if mode == "nearest":    # W - 0.375 rounds to W: pixel 0
        assert V[0, 3] == row[0]
    # the normalised period: 2 W / (W - 1) with align_corners, 2 without
    x = rng.uniform(-1, 1, (1, 1, 6, 2))
    period = 2 * W / (W - 1) if align_corners else 2.0
    np.testing.assert_allclose(grid_sample(U, x + [period, 0], **kw), grid_sample(U, x, **kw),
                               rtol=0, atol=1e-12)


def test_3_wrap_nearest_rounds_ties_to_even_before_the_modulo():
    # with an odd size, i and i + size are not the same tie: 4.5 -> 4, but 9.5 -> 10 = 0 (mod 5)
    U = np.arange(25.0).reshape(1, 1, 5, 5)
    grid = points_grid(np.array([[4.5, 1.0], [9.5, 1.0]]), (5, 5), True)
    V = grid_sample(U, grid, mode="nearest", padding_mode="wrap", align_corners=True)
    assert V.reshape(-1).tolist() == [U[0, 0, 1, 4], U[0, 0, 1, 0]]


def test_3_wrap_grid_gradient_multiplier_is_s_only():
    # bilinear wrap at i = -0.25 reads taps -1 -> W - 1 and 0: dV/di = U[0] - U[W - 1], times s
    spatial = (4, 4)
    U = np.zeros((1, 1, *spatial))
    U[..., :] = np.array([1.0, 3.0, 4.0, 7.0])
    grid = points_grid(np.array([[-0.25, 1.5]]), spatial, False)
    _, dgrid = grid_sample_backward(np.ones((1, 1, 1, 1)), U, grid, padding_mode="wrap")
    assert dgrid[0, 0, 0, 0] == 2.0 * (1.0 - 7.0)


# =========================================================================== §4 kernels

@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding", PADDINGS)
def test_4_bilinear_right_sided_derivative_at_integer_knots(k, align_corners, padding):
    spatial = (EXACT_SIZE[align_corners],) * k
    U = ramp_image(spatial, [0.0] * k, square=True)  # U = x^2: left and right slopes differ
    U = U + ramp_image(spatial, [0.0] + [0.5] * (k - 1))  # and a y (z) slope
    knots = np.array([1.0, 2.0])                      # interior integers
    pix = np.zeros((2, k)) + 1.5
    pix[:, 0] = knots
    grid = points_grid(pix, spatial, align_corners)
    kw = _kw("bilinear", padding, align_corners)
    _, dgrid = grid_sample_backward(np.ones((1, 1, *(1,) * (k - 1), 2)), U, grid, **kw)
    s = 2.0
    right_slope = (knots + 1) ** 2 - knots ** 2       # cell [i, i+1] of x^2
    np.testing.assert_allclose(dgrid[..., 0].reshape(-1), s * right_slope, rtol=0, atol=1e-13)
    # the other axes, at the half-integer 1.5, are smooth: slope 0.5 times s
    for a in range(1, k):
        np.testing.assert_allclose(dgrid[..., a].reshape(-1), s * 0.5, rtol=0, atol=1e-13)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("padding", PADDINGS)
def test_4_nearest_rounds_half_to_even(k, padding):
    spatial = (5,) * k  # align_corners=True, s = 2: ties are exact
    U = ramp_image(spatial, [1.0] + [10.0] * (k - 1))
    pix = np.zeros((4, k)) + 1.5
    pix[:, 0] = [0.5, 1.5, 2.5, 3.5]
    V = grid_sample(U, points_grid(pix, spatial, True), **_kw("nearest", padding, True))
    # ties 0.5, 1.5, 2.5, 3.5 -> 0, 2, 2, 4; the other axes at 1.5 -> 2, i.e. +20 each
    np.testing.assert_array_equal(V.reshape(-1), np.array([0.0, 2, 2, 4]) + 20 * (k - 1))


@pytest.mark.parametrize("combo", [c for c in ALL if c[1] == "nearest"], ids=combo_id)
def test_4_nearest_gradient_of_grid_is_exactly_zero_and_dU_goes_to_the_rounded_pixel(combo):
    k, _, padding, ac = combo
    rng = np.random.default_rng(10)
    U = rng.standard_normal((2, 2, *(4,) * k))
    grid = rng.uniform(-3, 3, (2, *(3,) * k, k))
    dV = rng.standard_normal((2, 2, *(3,) * k))
    kw = _kw("nearest", padding, ac)
    dU, dgrid = grid_sample_backward(dV, U, grid, **kw)
    assert not dgrid.any()
    np.testing.assert_allclose(dU, loops.grid_sample_dU_loop(dV, U.shape, grid, **kw)[0], rtol=0,
                               atol=1e-14)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [False, True])
def test_4_bicubic_pads_taps_not_coordinates(padding, align_corners):
    # i = -0.5: taps -2, -1, 0, 1 at distances 1.5, 0.5, 0.5, 1.5.  Border pads taps to 0, 0, 0, 1:
    # V = (1 - k(1.5)) U0 + k(1.5) U1 = 1.09375 U0 - 0.09375 U1, whereas clipping the
    # coordinate first would give U0.
    spatial = (EXACT_SIZE[align_corners],) * 2
    U = np.zeros((1, 1, *spatial))
    U[..., :] = np.arange(spatial[1], dtype=np.float64) ** 2 + 1.0  # varies along x only
    pix = np.array([[-0.5, 1.0], [-1.25, 2.0], [spatial[1] - 0.25, 1.0]])
    grid = points_grid(pix, spatial, align_corners)
    kw = _kw("bicubic", padding, align_corners)
    V = grid_sample(U, grid, **kw).reshape(-1)
    np.testing.assert_allclose(V, loops.grid_sample_loop(U, grid, **kw).reshape(-1), rtol=0,
                               atol=1e-13)
    if padding == "border":
        # clipping the coordinate first would give U0 = 1 exactly
        assert V[0] == 1.09375 * U[0, 0, 0, 0] - 0.09375 * U[0, 0, 0, 1] == 1.09375 - 0.1875


@pytest.mark.parametrize("padding", PADDINGS)
def test_4_bicubic_grad_grid_multiplier_is_s_only(padding):
    # outside the image, border/reflection bilinear would have a zero multiplier; bicubic does not
    spatial = (4, 4)
    U = np.zeros((1, 1, *spatial))
    U[..., :] = np.array([0.0, 1.0, 3.0, 2.0])
    pix = np.array([[-0.7, 1.5], [3.3, 1.5]])
    grid = points_grid(pix, spatial, False, exact=False)
    kw = _kw("bicubic", padding, False)
    _, dgrid = grid_sample_backward(np.ones((1, 1, 1, 2)), U, grid, **kw)
    h = 1e-6
    fd = (grid_sample(U, grid + [h, 0], **kw) - grid_sample(U, grid - [h, 0], **kw)) / (2 * h)
    np.testing.assert_allclose(dgrid[..., 0], fd[:, 0], rtol=1e-6, atol=1e-8)
    assert (np.abs(dgrid[..., 0]) > 1e-3).all()


def test_4_bicubic_overshoots_the_data_range_not_clamped():
    # taps 2..5 read 0, 1, 1, 1 at distances 1.5, 0.5, 0.5, 1.5: V = 1 - k(1.5) = 1.09375 > max(U)
    U = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]).reshape(1, 1, 1, 6) * np.ones((1, 1, 3, 1))
    grid = points_grid(np.array([[3.5, 1.0], [1.5, 1.0]]), (3, 6), False)
    V = grid_sample(U, grid, mode="bicubic").reshape(-1)
    assert V[0] == 1.09375 and V[1] == -0.09375


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [False, True])
def test_4_tricubic_on_one_slice_volumes_is_bicubic(padding, align_corners):
    # 5-D bicubic is tricubic: the z taps of a D = 1 volume at z = 0 weigh (0, 1, 0, 0), and
    # every other z tap reads the fill (zeros, constant) or the one slice (border, reflection,
    # wrap).  Exactly the 2-D result at dyadic points; to rounding elsewhere (the 2-D and 3-D
    # unnormalisations round differently, conventions §3.7).
    rng = np.random.default_rng(23)
    U2 = rng.standard_normal((2, 3, 5, 4))
    grid2 = rng.uniform(-1.6, 1.6, (2, 3, 4, 2))
    dyadic = np.round(grid2 * 16) / 16
    kw = _kw("bicubic", padding, align_corners) | {"cubic_a": -0.5}
    if padding == "constant":
        kw["fill_value"] = 0.75
    for g, tol in ((grid2, 1e-13), (dyadic, 0.0)):
        grid3 = np.concatenate([g, np.zeros(g.shape[:-1] + (1,))], axis=-1)[:, None]
        V3 = grid_sample(U2[:, :, None], grid3, **kw)[:, :, 0]
        np.testing.assert_allclose(V3, grid_sample(U2, g, **kw), rtol=tol, atol=tol)


def test_4_tricubic_is_the_separable_keys_kernel_over_64_taps():
    rng = np.random.default_rng(24)
    U = rng.standard_normal((1, 1, 6, 7, 8))
    i = np.array([3.3, 2.6, 2.45])                               # (ix, iy, iz), interior
    grid = points_grid(i[None], U.shape[2:], True, exact=False)
    i = np.array([unnormalize(grid.reshape(-1)[a], U.shape[4 - a], True) for a in range(3)])
    taps = [np.floor(i[a]) + np.arange(-1, 3) for a in range(3)]
    w = [keys(i[a] - taps[a]) for a in range(3)]
    z, y, x = (t.astype(int) for t in taps[::-1])
    expect = np.einsum("z,y,x,zyx->", w[2], w[1], w[0], U[0, 0][np.ix_(z, y, x)])
    V = grid_sample(U, grid, mode="bicubic", align_corners=True)
    assert V.reshape(()) == pytest.approx(expect, abs=1e-14)


@pytest.mark.parametrize("a", [-0.75, -0.5, -1.0, 0.5])
def test_4_cubic_a_is_keys_parameter(a):
    # Keys with parameter A: k(0.5) = (4 - A)/8, k(1.5) = A/8, k(integer != 0) = 0 for every A,
    # so knots read the pixel and half-way points weigh A/8 and (4 - A)/8, exactly
    U = np.array([[[[1.0, 2.0, 4.0, 8.0, 16.0, 32.0]]]])
    grid = points_grid(np.array([[2.5, 0.0], [3.0, 0.0]]), (1, 6), False)
    V = grid_sample(U, grid, mode="bicubic", cubic_a=a).reshape(-1)
    assert V[0] == a / 8 * (2.0 + 16.0) + (4 - a) / 8 * (4.0 + 8.0)
    assert V[1] == 8.0
    # A = -0.5 reproduces quadratics between the pixels (Keys' third-order choice); others do not
    x = np.arange(9.0)
    quad = (x ** 2 - 3 * x + 1).reshape(1, 1, 1, 9)
    i = np.linspace(2, 6, 33)
    V = grid_sample(quad, points_grid(np.stack([i, np.zeros_like(i)], 1), (1, 9), False),
                    mode="bicubic", cubic_a=a).reshape(-1)
    assert (np.abs(V - (i ** 2 - 3 * i + 1)).max() < 1e-12) == (a == -0.5)


# =========================================================================== §5 extremes

@pytest.mark.parametrize("combo", ALL, ids=ALL_IDS)
def test_5_huge_finite_coordinates_are_out_of_range_not_a_crash(combo):
    k, mode, padding, ac = combo
    rng = np.random.default_rng(11)
    spatial = (3, 4, 5)[:k]
    U = rng.standard_normal((1, 2, *spatial))
    vals = np.array([1e30, -1e30, 0.1])
    pts = np.array(np.meshgrid(*[vals] * k, indexing="ij")).reshape(k, -1).T[:-1]  # drop all-0.1
    grid = pts.reshape(1, *(1,) * (k - 1), len(pts), k)
    kw = _kw(mode, padding, ac)
    V = grid_sample(U, grid, **kw)
    dU, dgrid = grid_sample_backward(np.ones_like(V), U, grid, **kw)
    assert np.isfinite(V).all() and np.isfinite(dU).all() and np.isfinite(dgrid).all()
    if padding == "zeros":
        np.testing.assert_array_equal(V, 0.0)
        np.testing.assert_array_equal(dU, 0.0)
        np.testing.assert_array_equal(dgrid, 0.0)
    if padding == "border":
        # every huge coordinate clips to its edge pixel
        for j, p in enumerate(pts):
            if np.all(np.abs(p) == 1e30):
                corner = tuple(0 if c < 0 else n - 1 for c, n in zip(p[::-1], spatial))
                np.testing.assert_allclose(V[..., j].reshape(-1), U[(0, slice(None), *corner)],
                                           rtol=0, atol=1e-12 if mode != "bicubic" else 1e-9)


@pytest.mark.parametrize("combo", ALL, ids=ALL_IDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_5_non_finite_coordinate_gives_nan_there_and_nothing_elsewhere(combo, bad):
    k, mode, padding, ac = combo
    rng = np.random.default_rng(12)
    U = rng.standard_normal((2, 3, *(4,) * k))
    grid = rng.uniform(-1.2, 1.2, (2, *(3,) * k, k))
    dV = rng.standard_normal((2, 3, *(3,) * k))
    kw = _kw(mode, padding, ac)
    for axis in range(k):
        where = (1, *(1,) * k)  # batch 1, middle point
        g = grid.copy()
        g[(*where, axis)] = bad
        V = grid_sample(U, g, **kw)
        dU, dgrid = grid_sample_backward(dV, U, g, **kw)
        point = (where[0], slice(None), *where[1:])
        assert np.isnan(V[point]).all()                          # every channel
        assert np.isnan(dgrid[where]).all()                      # its grid gradient
        # everything else is as if the point had any finite coordinate and a zero dV
        V_ref = grid_sample(U, grid, **kw)
        dV0 = dV.copy()
        dV0[point] = 0
        dU_ref, dgrid_ref = grid_sample_backward(dV0, U, grid, **kw)
        mask = np.ones(V.shape, dtype=bool)
        mask[point] = False
        np.testing.assert_array_equal(V[mask], V_ref[mask])
        np.testing.assert_allclose(dU, dU_ref, rtol=0, atol=1e-13)
        # and the same non-finite grid with that point's dV zeroed gives the same dU
        np.testing.assert_array_equal(dU, grid_sample_backward(dV0, U, g, **kw)[0])
        gmask = np.ones(dgrid.shape, dtype=bool)
        gmask[where] = False
        np.testing.assert_array_equal(dgrid[gmask], dgrid_ref[gmask])


# =========================================================================== §6 backward

@pytest.mark.parametrize("combo", ALL, ids=ALL_IDS)
def test_6_duplicate_sample_points_accumulate_in_dU(combo):
    k, mode, padding, ac = combo
    rng = np.random.default_rng(13)
    U = rng.standard_normal((1, 2, *(4,) * k))
    point = rng.uniform(-0.9, 0.9, k)
    grid = np.broadcast_to(point, (1, *(3,) * k, k)).copy()  # every point at the same place
    dV = rng.standard_normal((1, 2, *(3,) * k))
    kw = _kw(mode, padding, ac)
    dU, _ = grid_sample_backward(dV, U, grid, **kw)
    single = grid[(0,) + (slice(0, 1),) * k]
    total = dV.sum(axis=tuple(range(2, 2 + k))).reshape(1, 2, *(1,) * k)
    dU_one, _ = grid_sample_backward(total, U, single[None], **kw)
    np.testing.assert_allclose(dU, dU_one, rtol=1e-13, atol=1e-13)
    assert np.abs(dU).sum() > 0


@pytest.mark.parametrize("combo", ALL, ids=ALL_IDS)
def test_6_backward_signature_shapes_and_bit_identical_repeats(combo):
    k, mode, padding, ac = combo
    rng = np.random.default_rng(14)
    U = rng.standard_normal((2, 3, *(5, 4, 3)[:k]))
    grid = rng.uniform(-2, 2, (2, *(4, 2, 3)[:k], k))
    dV = rng.standard_normal((2, 3, *(4, 2, 3)[:k]))
    outs = [grid_sample_backward(dV, U, grid, mode=mode, padding_mode=padding, align_corners=ac)
            for _ in range(2)]
    dU, dgrid = outs[0]
    assert dU.shape == U.shape and dgrid.shape == grid.shape
    assert outs[0][0].tobytes() == outs[1][0].tobytes()
    assert outs[0][1].tobytes() == outs[1][1].tobytes()


@pytest.mark.parametrize("padding", PADDINGS)
def test_6_fill_value_gradient_is_asked_for_and_only_with_constant(padding):
    rng = np.random.default_rng(25)
    U, grid = rng.standard_normal((1, 2, 3, 4)), rng.uniform(-2, 2, (1, 5, 2, 2))
    dV = rng.standard_normal((1, 2, 5, 2))
    if padding != "constant":
        with pytest.raises(ValueError, match=r"grid_sample_backward\(\): need_dfill_value=True "
                                             r"applies only with padding_mode='constant', got "
                                             rf"padding_mode='{padding}'"):
            grid_sample_backward(dV, U, grid, padding_mode=padding, need_dfill_value=True)
        return
    two = grid_sample_backward(dV, U, grid, padding_mode=padding, fill_value=0.5)
    dU, dgrid, dfill = grid_sample_backward(dV, U, grid, padding_mode=padding, fill_value=0.5,
                                            need_dfill_value=True)
    assert len(two) == 2 and two[0].tobytes() == dU.tobytes() and two[1].tobytes() == dgrid.tobytes()
    assert isinstance(dfill, np.float64)
    no_dU, _, dfill_alone = grid_sample_backward(dV, U, grid, need_dU=False, padding_mode=padding,
                                                 fill_value=0.5, need_dfill_value=True)
    assert no_dU is None and dfill_alone == dfill
    # §5.2: a non-finite point is NaN in V and dgrid and gives nothing to dU or dfill_value
    bad = grid.copy()
    bad[0, 1, 0, 0] = np.nan
    kw = {"padding_mode": padding, "fill_value": 0.5}
    assert np.isnan(grid_sample(U, bad, **kw)[0, :, 1, 0]).all()
    dU_bad, dgrid_bad, dfill_bad = grid_sample_backward(dV, U, bad, need_dfill_value=True, **kw)
    quiet = dV.copy()
    quiet[0, :, 1, 0] = 0
    dU_ref, _, dfill_ref = grid_sample_backward(quiet, U, np.where(np.isnan(bad), 0.0, bad),
                                                need_dfill_value=True, **kw)
    assert np.isnan(dgrid_bad[0, 1, 0]).all() and dfill_bad == pytest.approx(dfill_ref, abs=1e-14)
    np.testing.assert_allclose(dU_bad, dU_ref, rtol=0, atol=1e-14)


@pytest.mark.parametrize("combo", ALL, ids=ALL_IDS)
@pytest.mark.parametrize("dtype, big", [(np.float64, 1e308), (np.float32, 3e38)], ids=["f64", "f32"])
def test_5_overflowing_finite_coordinates_never_crash(combo, dtype, big):
    # finite grid values whose unnormalised image overflows to inf: no index may leave the array
    k, mode, padding, ac = combo
    rng = np.random.default_rng(15)
    spatial = (3, 4, 5)[:k]
    U = rng.standard_normal((1, 2, *spatial)).astype(dtype)
    grid = np.full((1, *(1,) * (k - 1), 2, k), 0.3, dtype=dtype)
    grid[..., 0, 0], grid[..., 1, 0] = big, -big
    kw = _kw(mode, padding, ac)
    with np.errstate(all="ignore"):
        V = grid_sample(U, grid, **kw)
        dU, dgrid = grid_sample_backward(np.ones_like(V), U, grid, **kw)
    assert V.shape == (1, 2, *(1,) * (k - 1), 2) and dU.shape == U.shape
    assert dgrid.shape == grid.shape
    if padding == "border" and mode != "bicubic":
        # clipped to the last / first column, like any other far coordinate
        far = grid.copy()
        far[..., 0, 0], far[..., 1, 0] = 1e3, -1e3
        np.testing.assert_allclose(V, grid_sample(U, far, **kw), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- §6.5 kinks

KINK_PADDINGS = ("zeros", "border", "reflection")
KINK_U = {True: np.array([1.0, 3.0, 4.0, 8.0, 9.0]), False: np.array([1.0, 3.0, 4.0, 8.0])}
STEP = 2.0**-20                     # pixels: with s = 2 the normalised step is exact too


def _row_sampler(align_corners, padding, mode="bilinear"):
    """``V(i)``, ``dV/dx(i)`` of the row ``KINK_U[align_corners]`` at exact pixel coordinates."""
    U = KINK_U[align_corners].reshape(1, 1, 1, -1)
    W = U.shape[-1]

    def grid(i):
        g = np.zeros((1, 1, len(i), 2))
        g[..., 0] = normalize(np.asarray(i, dtype=np.float64), W, align_corners)
        return g

    def value(i):
        return grid_sample(U, grid(i), **_kw(mode, padding, align_corners))[0, 0, 0]

    def slope(i):
        g = grid(i)
        return grid_sample_backward(np.ones((1, 1, 1, len(i))), U, g, **_kw(mode, padding, align_corners))[1][0, 0, :, 0]

    def tangent(i):                 # forward mode along x (§6.4): the same value as the backward
        g = grid(i)
        t = np.zeros_like(g)
        t[..., 0] = 1.0
        return grid_sample_jvp(U, g, None, t, **_kw(mode, padding, align_corners))[0, 0, 0]

    slope.tangent = tangent
    return value, slope


def _one_sided(value, i):
    """``(left, right)`` derivatives in the grid coordinate (s = 2): exact for bilinear."""
    i = np.asarray(i, dtype=np.float64)
    s = 2.0
    left = (value(i) - value(i - STEP)) / STEP * s
    right = (value(i + STEP) - value(i)) / STEP * s
    return left, right


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding", KINK_PADDINGS)
def test_6_kink_rule_right_sided_in_p_times_mu(padding, align_corners):
    """docs/conventions.md §6.5: dV/dx = s mu d+V/dp at every integer and half-integer pixel
    coordinate from -3W to 4W, with p and mu as §3.2-3.5 define them."""
    U = KINK_U[align_corners]
    W, s = len(U), 2.0
    i = np.arange(-3 * W, 4 * W + 0.5, 0.5)
    _, slope = _row_sampler(align_corners, padding)
    if padding == "zeros":
        p, mu = i, np.ones_like(i)
    elif padding == "border":
        p, mu = np.clip(i, 0, W - 1), ((i > 0) & (i < W - 1)) * 1.0
    else:
        low, L = (0.0, W - 1.0) if align_corners else (-0.5, float(W))
        a = np.abs(i - low)
        e = np.mod(a, 2 * L)
        flip = e > L
        r = np.where(flip, low + 2 * L - e, low + e)
        sign = np.where(flip != (i < low), -1.0, 1.0)
        p, mu = np.clip(r, 0, W - 1), sign * ((r > 0) & (r < W - 1))
    f = np.floor(p).astype(int)
    ext = lambda m: np.where((m >= 0) & (m < W), U[np.clip(m, 0, W - 1)], 0.0)  # noqa: E731
    expect = s * mu * (ext(f + 1) - ext(f))
    np.testing.assert_array_equal(slope(i) + 0.0, expect + 0.0)
    np.testing.assert_array_equal(slope.tangent(i) + 0.0, expect + 0.0)


# (padding, align_corners, i, left, right, returned): the table of §6.5
KINK_TABLE = [
    ("zeros", True, 2, 2, 8, 8), ("border", True, 2, 2, 8, 8), ("reflection", False, 2, 2, 8, 8),
    ("zeros", True, 4, 2, -18, -18),
    ("zeros", True, -1, 0, 2, 2),
    ("border", True, 0, 0, 4, 0), ("border", False, 0, 0, 4, 0), ("reflection", False, 0, 0, 4, 0),
    ("border", False, 3, 8, 0, 0), ("reflection", False, 3, 8, 0, 0),
    ("reflection", False, -1, -4, 0, 0),
    ("reflection", True, 0, -4, 4, 0), ("reflection", True, 4, 2, -2, 0),
    ("reflection", True, 8, -4, 4, 0), ("reflection", True, -4, 2, -2, 0),
    ("reflection", True, -2, -8, -2, -8), ("reflection", False, -3, -8, -2, -8),
    ("reflection", False, -0.5, 0, 0, 0),
]


@pytest.mark.parametrize("padding, align_corners, i, left, right, returned", KINK_TABLE)
def test_6_kink_table_examples(padding, align_corners, i, left, right, returned):
    value, slope = _row_sampler(align_corners, padding)
    found_left, found_right = _one_sided(value, [i])
    assert (found_left[0], found_right[0], slope([i])[0]) == (left, right, returned)


@pytest.mark.parametrize("padding", KINK_PADDINGS)
def test_6_kink_table_bicubic_and_nearest_rows(padding):
    """Bicubic has no kink at integers (both sides equal, and returned); nearest returns 0."""
    value, slope = _row_sampler(True, padding, "bicubic")
    i = np.arange(-6.0, 11.0)
    left, right = _one_sided(value, i)
    np.testing.assert_allclose(left, right, rtol=0, atol=1e-4)       # O(STEP) curvature only
    np.testing.assert_allclose(slope(i), (left + right) / 2, rtol=0, atol=1e-4)
    _, slope = _row_sampler(True, padding, "nearest")
    assert not np.any(slope(np.arange(-6.0, 11.0, 0.5)))


@pytest.mark.parametrize("align_corners, below, above", [
    (False, [0, 1, 5, 13, 14, 17, 25], [2]), (True, [17, 21, 25], [])])
def test_6_identity_start_columns_below_their_pixel(align_corners, below, above):
    """§6.5 "the identity start": at W = 28 in float64 these columns of the identity grid lie a
    few ulps below (above) their pixel and take the left-sided (right-sided) derivative."""
    W = 28
    theta = np.array([[[1.0, 0, 0], [0, 1, 0]]])
    x = affine_grid(theta, (1, 1, 1, W), align_corners)[0, 0, :, 0]
    s = (W - 1) / 2 if align_corners else W / 2
    i = (x + 1) * s - (0.0 if align_corners else 0.5)          # the 4-D expression, §3.7
    m = np.arange(W)
    assert np.flatnonzero(i < m).tolist() == below and np.flatnonzero(i > m).tolist() == above
    assert np.abs(i - m).max() < 4e-15
    U = np.random.default_rng(5).standard_normal((1, 1, 1, W)) ** 2 + np.arange(W) ** 2
    grid = np.stack([x, np.zeros(W)], -1)[None, None]
    dgrid = grid_sample_backward(np.ones((1, 1, 1, W)), U, grid, align_corners=align_corners)[1][0, 0, :, 0]
    Uz = np.concatenate([[0.0], U[0, 0, 0], [0.0]])                 # zeros padding either side
    left, right = s * (Uz[1:-1] - Uz[:-2]), s * (Uz[2:] - Uz[1:-1])
    expect = np.where(i < m, left, right)
    np.testing.assert_allclose(dgrid, expect, rtol=1e-12, atol=1e-12)
    assert np.all(np.abs(left - right)[below] > 1)                  # the sides really differ there


@pytest.mark.parametrize("size", [5, 28, 224])
@pytest.mark.parametrize("align_corners", [False, True])
def test_2_affine_identity_is_exact_to_a_few_ulps_of_the_coordinate(size, align_corners):
    """§2.1: nearest exactly; bilinear and bicubic within 1e-15 max(H, W) max|U|, not zero."""
    U = np.random.default_rng(6).standard_normal((1, 2, size, size + 3))
    theta = np.array([[[1.0, 0, 0], [0, 1, 0]]])
    grid = affine_grid(theta, U.shape, align_corners)
    worst = 0.0
    for mode in ("nearest", "bilinear", "bicubic"):
        for padding in KINK_PADDINGS:
            err = np.abs(grid_sample(U, grid, **_kw(mode, padding, align_corners)) - U).max()
            assert err == 0.0 if mode == "nearest" else err <= 1e-15 * (size + 3) * np.abs(U).max()
            worst = max(worst, err)
    assert worst > 0 or size == 5
