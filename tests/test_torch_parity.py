"""Parity with torch.nn.functional.grid_sample (docs/conventions.md §6.3): forward, dU and dgrid.

Every kernel x padding x align_corners x dimension combination, on
hypothesis-drawn shapes and *kinky* finite grids: exact integer and
half-integer pixel positions, reflection folds, clip borders and points far
outside [-3, 3] (up to 1e3, and 1e30 separately).  Both implementations follow
the same one-sided rules at kinks, so parity must hold there too.  Non-finite
grids are excluded: PyTorch's CPU backward crashes on them (docs/conventions.md §5.2).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stnref import affine_grid, affine_grid_backward, grid_sample, grid_sample_backward
from stnref.sampler_settings import CUBIC_A, FILL_VALUE, is_pytorch
from strategies import Case, combo_id, combos, sampler_cases

torch = pytest.importorskip("torch")
F = torch.nn.functional

PARITY_TOL = 1e-10   # float64, relative to the output's scale (docs/conventions.md §6.3)
F32_TOL = 1e-5       # float32 forward, relative to the data scale
ALL = combos(pytorch=True)   # the settings PyTorch has (stnref.sampler_settings)
ALL_IDS = [combo_id(c) for c in ALL]


def torch_grid_sample(U, grid, dV, mode, padding_mode, align_corners, fill_value=FILL_VALUE,
                      cubic_a=CUBIC_A):
    """V, dU, dgrid from torch (float64 unless the arrays are float32), in a setting it has."""
    assert is_pytorch(mode, padding_mode, grid.shape[-1], fill_value, cubic_a)
    Ut = torch.tensor(U, requires_grad=True)
    gt = torch.tensor(grid, requires_grad=True)
    V = F.grid_sample(Ut, gt, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    V.backward(torch.tensor(dV))
    return V.detach().numpy(), Ut.grad.numpy(), gt.grad.numpy()


def assert_close_scaled(actual, expected, tol, what):
    """``|actual - expected| <= tol * max(1, max|expected|)``."""
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    err = float(np.abs(actual - expected).max(initial=0.0))
    assert err <= tol * scale, f"{what}: max error {err:.3e} > {tol:.0e} x scale {scale:.3g}"


def check_parity(case):
    V, dU, dgrid = torch_grid_sample(case.U, case.grid, case.dV, **case.kwargs)
    assert_close_scaled(grid_sample(case.U, case.grid, **case.kwargs), V, PARITY_TOL, "V")
    mine_dU, mine_dgrid = grid_sample_backward(case.dV, case.U, case.grid, **case.kwargs)
    assert_close_scaled(mine_dU, dU, PARITY_TOL, "dU")
    assert_close_scaled(mine_dgrid, dgrid, PARITY_TOL, "dgrid")


@pytest.mark.parametrize("combo", ALL, ids=ALL_IDS)
@settings(max_examples=15)
@given(data=st.data())
def test_parity_kinky_grids(combo, data):
    k, mode, padding, ac = combo
    check_parity(data.draw(sampler_cases(dims=(k,), modes=(mode,), paddings=(padding,),
                                         align=(ac,), grids="kinky", defaults=True)))


@pytest.mark.parametrize("combo", ALL, ids=ALL_IDS)
@settings(max_examples=5)
@given(data=st.data())
def test_parity_smooth_grids(combo, data):
    k, mode, padding, ac = combo
    check_parity(data.draw(sampler_cases(dims=(k,), modes=(mode,), paddings=(padding,),
                                         align=(ac,), defaults=True)))


@pytest.mark.parametrize("combo", ALL, ids=ALL_IDS)
@pytest.mark.parametrize("dtype, tol", [(np.float64, PARITY_TOL), (np.float32, F32_TOL)],
                         ids=["f64", "f32"])
def test_parity_huge_coordinates(combo, dtype, tol):
    # 1e30 and friends: far beyond every fold count and int64, still exactly PyTorch's answer
    k, mode, padding, ac = combo
    rng = np.random.default_rng(0)
    U = rng.standard_normal((2, 2, *(3, 4, 5)[:k])).astype(dtype)
    vals = np.array([1e30, -1e30, 1e15, -3e7, 0.3])
    pts = np.array(np.meshgrid(*[vals] * k, indexing="ij")).reshape(k, -1).T
    shape = (2, *(1,) * (k - 1), len(pts), k)
    grid = np.broadcast_to(pts.reshape(1, *shape[1:]), shape).astype(dtype)
    dV = rng.standard_normal((2, 2, *(1,) * (k - 1), len(pts))).astype(dtype)
    V, dU, dgrid = torch_grid_sample(U, grid, dV, mode, padding, ac)
    assert_close_scaled(grid_sample(U, grid, mode, padding, ac), V, tol, "V")
    mine_dU, mine_dgrid = grid_sample_backward(dV, U, grid, mode, padding, ac)
    assert_close_scaled(mine_dU, dU, tol, "dU")
    assert_close_scaled(mine_dgrid, dgrid, tol, "dgrid")


@pytest.mark.parametrize("combo", ALL, ids=ALL_IDS)
@settings(max_examples=5)
@given(data=st.data())
def test_parity_float32(combo, data):
    # float32 is computed in float32 by both; kinky grids too (same rounding before floor)
    k, mode, padding, ac = combo
    for grids in ("smooth", "kinky"):
        case = data.draw(sampler_cases(dims=(k,), modes=(mode,), paddings=(padding,),
                                       align=(ac,), grids=grids, defaults=True))
        U, grid, dV = (a.astype(np.float32) for a in (case.U, case.grid, case.dV))
        V, dU, dgrid = torch_grid_sample(U, grid, dV, **case.kwargs)
        mine = grid_sample(U, grid, **case.kwargs)
        mine_dU, mine_dgrid = grid_sample_backward(dV, U, grid, **case.kwargs)
        assert mine.dtype == mine_dU.dtype == mine_dgrid.dtype == np.float32
        assert_close_scaled(mine, V, F32_TOL, "V float32")
        assert_close_scaled(mine_dU, dU, F32_TOL, "dU float32")
        assert_close_scaled(mine_dgrid, dgrid, F32_TOL, "dgrid float32")


@pytest.mark.parametrize("combo", [(2, "bilinear", "zeros", False), (2, "bicubic", "reflection", True),
                                   (3, "bilinear", "border", False), (3, "nearest", "reflection", True)],
                         ids=combo_id)
def test_parity_across_internal_chunks(combo):
    # more grid points than one internal chunk of stnref.sampling (boundaries at multiples)
    from stnref.sampling import CHUNK
    k, mode, padding, ac = combo
    rng = np.random.default_rng(3)
    P = (2 * CHUNK + 17) // 3 + 1
    U = rng.standard_normal((3, 2, *(7,) * k))
    grid = rng.uniform(-1.5, 1.5, (3, P, *(1,) * (k - 1), k))
    dV = rng.standard_normal((3, 2, P, *(1,) * (k - 1)))
    check_parity(Case(U, grid, dV, mode, padding, ac))


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("align_corners", [False, True])
def test_parity_dtheta_through_affine_grid(k, align_corners):
    rng = np.random.default_rng(1)
    size = (2, 3, *(4, 5, 3)[:k])
    U = rng.standard_normal((2, 3, *(5, 3, 4)[:k]))
    theta = np.concatenate([np.eye(k), np.zeros((k, 1))], axis=1) + 0.5 * rng.standard_normal(
        (2, k, k + 1))
    dV = rng.standard_normal(size)
    th = torch.tensor(theta, requires_grad=True)
    V = F.grid_sample(torch.tensor(U), F.affine_grid(th, size, align_corners=align_corners),
                      align_corners=align_corners)
    V.backward(torch.tensor(dV))
    grid = affine_grid(theta, size, align_corners)
    _, dgrid = grid_sample_backward(dV, U, grid, align_corners=align_corners, need_dU=False)
    assert_close_scaled(grid_sample(U, grid, align_corners=align_corners), V.detach().numpy(),
                        PARITY_TOL, "V")
    assert_close_scaled(affine_grid_backward(dgrid, size, align_corners), th.grad.numpy(),
                        PARITY_TOL, "dtheta")
