"""Forward mode and double backward of the sampler, and JVPs of the grid generators.

Oracles: central differences of ``grid_sample`` (JVP) and of ``grid_sample_backward``
(double backward) on grids away from kinks; exact transpose identities against the
first-order backward on any finite grid; symmetry of mixed second derivatives.  PyTorch's
double backward and JVP are compared on every run through the records of
tests/test_torch_records.py.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stnref import grids
from stnref.sampling import grid_sample, grid_sample_backward
from stnref.second_order import (
    affine_grid_jvp,
    attention_grid_jvp,
    grid_sample_double_backward,
    grid_sample_jvp,
    projective_grid_jvp,
    tps_grid_jvp,
)
from stnref.sampler_settings import FILL_PADDINGS
from strategies import combo_id, combos, draw_options, kinky_grid, sampler_cases, smooth_grid

FD_EPS = 1e-6      # central-difference step on every argument (float64)
FD_ATOL = 1e-6     # truncation ~eps^2 * third derivative, rounding ~1e-16 / eps
FD_RTOL = 1e-5
EXACT_RTOL = 1e-12  # transpose identities and symmetries: equal up to summation order
COMBOS = combos()
FILL_COMBOS = [c for c in COMBOS if c[2] in FILL_PADDINGS]   # settings with a fill value


def _draw(combo, seed, grid_kind="smooth"):
    """Tiny random problem for ``combo``: U, grid, dV and two more U/grid-shaped arrays."""
    k, mode, padding_mode, align_corners = combo
    rng = np.random.default_rng(seed)
    n, c = rng.integers(1, 3, size=2)
    spatial_in = tuple(int(s) for s in rng.integers(1, 5, size=k))
    spatial_out = tuple(int(s) for s in rng.integers(1, 4, size=k))
    U = rng.standard_normal((n, c, *spatial_in))
    g_shape = (n, *spatial_out, k)
    if grid_kind == "smooth":
        grid = smooth_grid(rng, g_shape, spatial_in, mode, padding_mode, align_corners)
    else:
        grid = kinky_grid(rng, g_shape, spatial_in, align_corners)
    dV = rng.standard_normal((n, c, *spatial_out))
    extra = (rng.standard_normal(U.shape), rng.standard_normal(grid.shape),
             rng.standard_normal(dV.shape))
    fill, a = draw_options(rng, mode, padding_mode)
    kwargs = {"mode": mode, "padding_mode": padding_mode, "align_corners": align_corners,
              "fill_value": fill, "cubic_a": a}
    return U, grid, dV, extra, kwargs, rng


def _close(a, b, atol, rtol):
    return np.all(np.abs(np.asarray(a) - np.asarray(b)) <= atol + rtol * np.abs(b))


# --------------------------------------------------------------------------- sampler JVP

@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_jvp_matches_central_differences(combo):
    U, grid, _, (tU, tgrid, _), kw, _ = _draw(combo, 1)
    tV = grid_sample_jvp(U, grid, tU, tgrid, **kw)
    numeric = (grid_sample(U + FD_EPS * tU, grid + FD_EPS * tgrid, **kw)
               - grid_sample(U - FD_EPS * tU, grid - FD_EPS * tgrid, **kw)) / (2 * FD_EPS)
    assert tV.shape == numeric.shape
    assert _close(tV, numeric, FD_ATOL, FD_RTOL), np.max(np.abs(tV - numeric))


@pytest.mark.parametrize("combo", FILL_COMBOS, ids=combo_id)
def test_jvp_along_the_fill_value_matches_central_differences(combo):
    U, grid, _, (tU, tgrid, _), kw, rng = _draw(combo, 11)
    tfill = float(rng.standard_normal())
    tV = grid_sample_jvp(U, grid, tU, tgrid, tfill_value=tfill, **kw)
    f = kw.pop("fill_value")
    numeric = (grid_sample(U + FD_EPS * tU, grid + FD_EPS * tgrid, fill_value=f + FD_EPS * tfill, **kw)
               - grid_sample(U - FD_EPS * tU, grid - FD_EPS * tgrid, fill_value=f - FD_EPS * tfill, **kw)
               ) / (2 * FD_EPS)
    assert _close(tV, numeric, FD_ATOL, FD_RTOL), np.max(np.abs(tV - numeric))


@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_jvp_is_transpose_of_backward(combo):
    # <dV, J (tU, tgrid, tfill)> == <J^T dV, (tU, tgrid, tfill)> exactly, kinks and far points included
    U, grid, dV, (tU, tgrid, _), kw, rng = _draw(combo, 2, grid_kind="kinky")
    if combo[2] in FILL_PADDINGS:
        tfill = float(rng.standard_normal())
        dU, dgrid, dfill = grid_sample_backward(dV, U, grid, need_dfill_value=True, **kw)
        lhs = np.vdot(dV, grid_sample_jvp(U, grid, tU, tgrid, tfill_value=tfill, **kw))
        rhs = np.vdot(dU, tU) + np.vdot(dgrid, tgrid) + dfill * tfill
    else:
        dU, dgrid = grid_sample_backward(dV, U, grid, **kw)
        lhs = np.vdot(dV, grid_sample_jvp(U, grid, tU, tgrid, **kw))
        rhs = np.vdot(dU, tU) + np.vdot(dgrid, tgrid)
    assert lhs == pytest.approx(rhs, rel=EXACT_RTOL, abs=EXACT_RTOL)


def test_jvp_none_tangents_and_nearest_grid_term():
    U, grid, _, (tU, tgrid, _), kw, _ = _draw((2, "bilinear", "zeros", False), 3)
    both = grid_sample_jvp(U, grid, tU, tgrid, **kw)
    only_u = grid_sample_jvp(U, grid, tU, None, **kw)
    only_g = grid_sample_jvp(U, grid, None, tgrid, **kw)
    np.testing.assert_allclose(only_u, grid_sample(tU, grid, **kw), rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(only_u + only_g, both, rtol=1e-14, atol=1e-14)
    np.testing.assert_array_equal(grid_sample_jvp(U, grid, None, None, **kw), 0)
    kw["mode"] = "nearest"
    np.testing.assert_array_equal(grid_sample_jvp(U, grid, None, tgrid, **kw), 0)


# --------------------------------------------------------------------------- double backward

def _second_order_loss(g_dU, g_dgrid, dV, U, grid, kw):
    dU, dgrid = grid_sample_backward(dV, U, grid, **kw)
    return np.vdot(g_dU, dU) + np.vdot(g_dgrid, dgrid)


@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_double_backward_matches_central_differences(combo):
    U, grid, dV, (g_dU, g_dgrid, _), kw, rng = _draw(combo, 4)
    results = grid_sample_double_backward(g_dU, g_dgrid, dV, U, grid, **kw)
    args = [dV, U, grid]
    for i, (name, result) in enumerate(zip(("dV", "U", "grid"), results)):
        assert result.shape == args[i].shape, name
        v = rng.standard_normal(args[i].shape)
        plus, minus = list(args), list(args)
        plus[i], minus[i] = args[i] + FD_EPS * v, args[i] - FD_EPS * v
        numeric = (_second_order_loss(g_dU, g_dgrid, *plus, kw)
                   - _second_order_loss(g_dU, g_dgrid, *minus, kw)) / (2 * FD_EPS)
        analytic = np.vdot(result, v)
        assert abs(analytic - numeric) <= FD_ATOL + FD_RTOL * abs(numeric), (name, analytic, numeric)


@pytest.mark.parametrize("combo", FILL_COMBOS, ids=combo_id)
def test_double_backward_with_the_fill_value_matches_central_differences(combo):
    # L = <g_dU, dU> + <g_dgrid, dgrid> + g_dfill dfill, differentiated along (dV, U, grid, fill)
    U, grid, dV, (g_dU, g_dgrid, _), kw, rng = _draw(combo, 12)
    g_dfill = float(rng.standard_normal())
    f = kw.pop("fill_value")

    def loss(dV, U, grid, fill):
        dU, dgrid, dfill = grid_sample_backward(dV, U, grid, fill_value=fill, need_dfill_value=True, **kw)
        return np.vdot(g_dU, dU) + np.vdot(g_dgrid, dgrid) + g_dfill * dfill

    results = grid_sample_double_backward(g_dU, g_dgrid, dV, U, grid, fill_value=f, g_dfill_value=g_dfill,
                                          need_g_fill_value=True, **kw)
    args = [dV, U, grid, f]
    for i, (name, result) in enumerate(zip(("dV", "U", "grid", "fill_value"), results)):
        v = rng.standard_normal(np.shape(args[i]))
        plus, minus = list(args), list(args)
        plus[i], minus[i] = args[i] + FD_EPS * v, args[i] - FD_EPS * v
        numeric = (loss(*plus) - loss(*minus)) / (2 * FD_EPS)
        analytic = np.vdot(result, v)
        assert abs(analytic - numeric) <= FD_ATOL + FD_RTOL * abs(numeric), (name, analytic, numeric)
    # the fill value's cotangent enters g_dV as the JVP's tangent does
    np.testing.assert_allclose(results[0], grid_sample_jvp(U, grid, g_dU, g_dgrid, fill_value=f,
                                                           tfill_value=g_dfill, **kw), rtol=1e-13, atol=1e-13)


@settings(max_examples=25)
@given(case=sampler_cases(max_spatial=4, max_nc=2), seed=st.integers(0, 2**32 - 1))
def test_double_backward_directional_differences_over_the_mode_product(case, seed):
    # one random direction through all of (dV, U, grid) at once, shapes from the shared strategy
    rng = np.random.default_rng(seed)
    g_dU, g_dgrid = rng.standard_normal(case.U.shape), rng.standard_normal(case.grid.shape)
    args = (case.dV, case.U, case.grid)
    vs = [rng.standard_normal(x.shape) for x in args]
    results = grid_sample_double_backward(g_dU, g_dgrid, *args, **case.kwargs)
    plus = [x + FD_EPS * v for x, v in zip(args, vs)]
    minus = [x - FD_EPS * v for x, v in zip(args, vs)]
    numeric = (_second_order_loss(g_dU, g_dgrid, *plus, case.kwargs)
               - _second_order_loss(g_dU, g_dgrid, *minus, case.kwargs)) / (2 * FD_EPS)
    analytic = sum(np.vdot(r, v) for r, v in zip(results, vs))
    assert abs(analytic - numeric) <= FD_ATOL + FD_RTOL * abs(numeric)


@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_double_backward_symmetries(combo):
    # Mixed second derivatives of f(U, grid) = <dV, grid_sample(U, grid)> commute:
    #   grid-grid block: <w, H v> == <v, H w>;  U-grid block: <a, g_U(v)> == <v, g_grid(a)>
    # and g_dV is the JVP.  Exact on any finite grid, kinks included.
    U, grid, dV, (a, v, _), kw, rng = _draw(combo, 5, grid_kind="kinky")
    w = rng.standard_normal(grid.shape)
    _, g_U_v, Hv = grid_sample_double_backward(None, v, dV, U, grid, **kw)
    _, _, Hw = grid_sample_double_backward(None, w, dV, U, grid, **kw)
    assert np.vdot(w, Hv) == pytest.approx(np.vdot(v, Hw), rel=EXACT_RTOL, abs=EXACT_RTOL)
    _, _, g_grid_a = grid_sample_double_backward(a, None, dV, U, grid, **kw)
    assert np.vdot(a, g_U_v) == pytest.approx(np.vdot(v, g_grid_a), rel=EXACT_RTOL, abs=EXACT_RTOL)
    g_dV, _, _ = grid_sample_double_backward(a, v, dV, U, grid, **kw)
    np.testing.assert_allclose(g_dV, grid_sample_jvp(U, grid, a, v, **kw), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("k, padding_mode", [(k, p) for k, m, p, _ in COMBOS if m == "nearest" and _])
def test_nearest_double_backward_has_zero_grid_terms(k, padding_mode):
    U, grid, dV, (g_dU, g_dgrid, _), kw, _ = _draw((k, "nearest", padding_mode, True), 6)
    g_dV, g_U, g_grid = grid_sample_double_backward(g_dU, g_dgrid, dV, U, grid, **kw)
    np.testing.assert_array_equal(g_U, 0)
    np.testing.assert_array_equal(g_grid, 0)
    np.testing.assert_array_equal(g_dV, grid_sample(g_dU, grid, **(kw | {"fill_value": 0.0})))


def test_double_backward_none_cotangents_and_duplicates():
    # every grid point on the same spot: the U-gradient accumulates over all of them
    U, _, _, _, kw, rng = _draw((2, "bilinear", "zeros", False), 7)
    grid = np.broadcast_to(rng.uniform(-0.9, 0.9, size=2), (U.shape[0], 3, 2, 2)).copy()
    dV = rng.standard_normal((U.shape[0], U.shape[1], 3, 2))
    g_dgrid = rng.standard_normal(grid.shape)
    g_dV, g_U, g_grid = grid_sample_double_backward(None, g_dgrid, dV, U, grid, **kw)
    summed = np.zeros_like(U)
    for j in range(3):
        for i in range(2):
            one = np.zeros_like(g_dgrid)
            one[:, j, i] = g_dgrid[:, j, i]
            summed += grid_sample_double_backward(None, one, dV, U, grid, **kw)[1]
    np.testing.assert_allclose(g_U, summed, rtol=1e-13, atol=1e-13)
    zero = grid_sample_double_backward(None, None, dV, U, grid, **kw)
    for z, ref in zip(zero, (dV, U, grid)):
        assert z.shape == ref.shape
        np.testing.assert_array_equal(z, 0)


def test_non_finite_points_follow_the_nan_rule():
    U, grid, dV, (g_dU, g_dgrid, _), kw, _ = _draw((2, "bicubic", "reflection", False), 8)
    grid = np.concatenate([grid, grid], axis=2)
    dV = np.concatenate([dV, dV], axis=3)
    bad = grid.copy()
    bad[0, 0, 0, 0] = np.nan
    bad[-1, -1, -1, 1] = np.inf
    g_dgrid = np.concatenate([g_dgrid, g_dgrid], axis=2)
    g_dV, g_U, g_grid = grid_sample_double_backward(g_dU, g_dgrid, dV, U, bad, **kw)
    mask = ~np.isfinite(bad).all(axis=-1)                                  # (N, H, W)
    assert np.isnan(g_dV.transpose(0, 2, 3, 1)[mask]).all()
    assert np.isnan(g_grid[mask]).all()
    assert np.isfinite(g_dV.transpose(0, 2, 3, 1)[~mask]).all()
    assert np.isfinite(g_grid[~mask]).all()
    # g_U is what the finite points alone give
    keep = np.where(mask[..., None], 0.0, g_dgrid)
    dV_keep = np.where(mask[:, None], 0.0, dV)
    ref = grid_sample_double_backward(g_dU, keep, dV_keep, U, np.where(mask[..., None], 0.0, bad), **kw)[1]
    np.testing.assert_allclose(g_U, ref, rtol=1e-13, atol=1e-13)
    tV = grid_sample_jvp(U, bad, g_dU, g_dgrid, **kw)
    assert np.isnan(tV.transpose(0, 2, 3, 1)[mask]).all()


def test_float32_in_float32_out_and_validation():
    U, grid, dV, (g_dU, g_dgrid, _), kw, _ = _draw((2, "bilinear", "border", False), 9)
    f32 = [x.astype(np.float32) for x in (g_dU, g_dgrid, dV, U, grid)]
    out = grid_sample_double_backward(*f32, **kw)
    ref = grid_sample_double_backward(g_dU, g_dgrid, dV, U, grid, **kw)
    for o, r in zip(out, ref):
        assert o.dtype == np.float32
        np.testing.assert_allclose(o, r, rtol=1e-3, atol=1e-3)
    assert grid_sample_jvp(f32[3], f32[4], f32[0], f32[1], **kw).dtype == np.float32
    with pytest.raises(ValueError, match=r"grid_sample_double_backward\(\): expected g_dU of shape"):
        grid_sample_double_backward(g_dU[:, :1, :1], g_dgrid, dV, U, grid, **kw)
    with pytest.raises(TypeError, match=r"grid_sample_jvp\(\): expected tgrid and grid"):
        grid_sample_jvp(U, grid, g_dU, f32[1], **kw)
    with pytest.raises(ValueError, match=r"grid_sample_double_backward\(\): expected dV of shape"):
        grid_sample_double_backward(g_dU, g_dgrid, dV[..., :0], U, grid, **kw)
    with pytest.raises(ValueError, match="mode"):
        grid_sample_jvp(U, grid, g_dU, g_dgrid, mode="cubic")
    with pytest.raises(TypeError, match="g_dgrid"):
        grid_sample_double_backward(g_dU, g_dgrid.astype(int), dV, U, grid, **kw)


def test_fill_value_arguments_only_with_constant_padding():
    U, grid, dV, (g_dU, g_dgrid, _), kw, _ = _draw((2, "bilinear", "border", False), 13)
    where = r"applies only with padding_mode='constant', got padding_mode='border'"
    with pytest.raises(ValueError, match=r"grid_sample_jvp\(\): tfill_value " + where):
        grid_sample_jvp(U, grid, None, None, tfill_value=1.0, **kw)
    with pytest.raises(ValueError, match=r"grid_sample_double_backward\(\): g_dfill_value " + where):
        grid_sample_double_backward(g_dU, g_dgrid, dV, U, grid, g_dfill_value=1.0, **kw)
    with pytest.raises(ValueError, match=r"grid_sample_double_backward\(\): need_g_fill_value=True " + where):
        grid_sample_double_backward(g_dU, g_dgrid, dV, U, grid, need_g_fill_value=True, **kw)
    kw["padding_mode"] = "constant"
    with pytest.raises(TypeError, match=r"grid_sample_jvp\(\): expected tfill_value to be a real number"):
        grid_sample_jvp(U, grid, None, None, tfill_value=np.ones(1), **kw)
    with pytest.raises(ValueError, match=r"grid_sample_double_backward\(\): expected a finite g_dfill_value"):
        grid_sample_double_backward(g_dU, g_dgrid, dV, U, grid, g_dfill_value=np.nan, **kw)
    with pytest.raises(TypeError, match=r"expected need_g_fill_value to be a bool"):
        grid_sample_double_backward(g_dU, g_dgrid, dV, U, grid, need_g_fill_value=1, **kw)


# --------------------------------------------------------------------------- grid generator JVPs

def _generators(rng, n, h, w):
    """(name, jvp, forward, backward, theta) for every generator, backward as J^T."""
    k_pts = grids.tps_control_points(9)
    affine = np.array([[0.9, 0.2, 0.1], [-0.1, 1.1, -0.2]]) + 0.1 * rng.standard_normal((n, 2, 3))
    affine3 = np.eye(3, 4) + 0.1 * rng.standard_normal((n, 3, 4))
    projective = np.eye(3) + 0.1 * rng.standard_normal((n, 3, 3))
    return [
        ("affine", affine_grid_jvp, grids.affine_grid,
         lambda d, t, s, ac: grids.affine_grid_backward(d, s, ac), affine, (n, 1, h, w)),
        ("affine3d", affine_grid_jvp, grids.affine_grid,
         lambda d, t, s, ac: grids.affine_grid_backward(d, s, ac), affine3, (n, 1, 2, h, w)),
        ("attention", attention_grid_jvp, grids.attention_grid,
         lambda d, t, s, ac: grids.attention_grid_backward(d, s, ac),
         np.array([0.8, 0.1, -0.2]) + 0.1 * rng.standard_normal((n, 3)), (n, 1, h, w)),
        ("projective", projective_grid_jvp, grids.projective_grid, grids.projective_grid_backward,
         projective, (n, 1, h, w)),
        ("tps", lambda t, tt, s, ac: tps_grid_jvp(t, tt, s, k_pts, ac),
         lambda t, s, ac: grids.tps_grid(t, s, k_pts, ac),
         lambda d, t, s, ac: grids.tps_grid_backward(d, s, k_pts, ac),
         k_pts + 0.1 * rng.standard_normal((n, 9, 2)), (n, 1, h, w)),
    ]


@pytest.mark.parametrize("align_corners", [False, True])
def test_grid_jvps_against_differences_and_backward(align_corners):
    rng = np.random.default_rng(12)
    for name, jvp, forward, backward, theta, size in _generators(rng, 2, 3, 4):
        ttheta = rng.standard_normal(theta.shape)
        tgrid = jvp(theta, ttheta, size, align_corners)
        numeric = (forward(theta + FD_EPS * ttheta, size, align_corners)
                   - forward(theta - FD_EPS * ttheta, size, align_corners)) / (2 * FD_EPS)
        assert _close(tgrid, numeric, FD_ATOL, FD_RTOL), name
        dgrid = rng.standard_normal(tgrid.shape)
        lhs = np.vdot(dgrid, tgrid)
        rhs = np.vdot(backward(dgrid, theta, size, align_corners), ttheta)
        assert lhs == pytest.approx(rhs, rel=EXACT_RTOL, abs=EXACT_RTOL), name


def test_projective_jvp_far_points_and_validation():
    theta = np.diag([1.0, 1.0, -1.0])[None]  # every point beyond the horizon
    np.testing.assert_array_equal(projective_grid_jvp(theta, np.ones((1, 3, 3)), (1, 1, 2, 2)), 0)
    with pytest.raises(ValueError, match=r"projective_grid_jvp\(\): expected ttheta of shape"):
        projective_grid_jvp(np.eye(3)[None], np.ones((1, 2, 3)), (1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"affine_grid_jvp\(\): expected finite ttheta"):
        affine_grid_jvp(np.zeros((1, 2, 3)), np.full((1, 2, 3), np.nan), (1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"tps_grid_jvp\(\)"):
        tps_grid_jvp(np.zeros((1, 4, 2)), np.zeros((1, 4, 2)), (1, 1, 2, 2))
    with pytest.raises(TypeError, match=r"attention_grid_jvp\(\): expected ttheta"):
        attention_grid_jvp(np.zeros((1, 3)), None, (1, 1, 2, 2))
