"""grid_sample / grid_sample_backward: finite differences, loop oracle, dtypes, purity, errors.

Every kernel x padding x align_corners x dimension combination is a separate
parametrised test whose shapes and arrays come from ``tests/strategies.py``;
grids lie in [-3, 3] (well outside the image) with every point kept
``KINK_MARGIN`` pixels from the sampler's kinks, so central differences see
smooth pieces only (kinks have their own tests in ``test_conventions.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stnref import affine_grid, affine_grid_backward, gradcheck, grid_sample, grid_sample_backward
from stnref.sampler_settings import FILL_PADDINGS, MODES, combinations

import loops
from strategies import (
    KINK_MARGIN,
    MAX_REDRAWS,
    combo_id,
    combos,
    draw_options,
    grid_kink_distance,
    kink_distance,
    sampler_cases,
)

FD_EPS = 1e-6          # central-difference step (float64)
LOOP_TOL = 1e-12       # vectorised vs per-point loops: the same sums in another order
F32_TOL = 2e-5         # float32 vs float64 result, relative to the data scale (~1e-7 * few taps)
THETA_NOISE = 0.6      # spread of random affine matrices around the identity
FD_EXAMPLES = 10       # hypothesis examples per combination for the finite-difference checks
ALL = combos()
ALL_IDS = [combo_id(c) for c in ALL]
LOOP_COMBOS = [c for c in ALL if loops.implements(c[1], c[2])]   # the loop oracle's settings


def _case(combo, **kw):
    k, mode, padding, ac = combo
    return sampler_cases(dims=(k,), modes=(mode,), paddings=(padding,), align=(ac,), **kw)


def _fd(case, full_max=200):
    """Central differences of every input the setting has: ``U``, ``grid`` and ``fill_value``."""
    kw = case.kwargs
    if case.padding_mode not in FILL_PADDINGS:
        return gradcheck(
            lambda U, grid: grid_sample(U, grid, **kw),
            lambda dV, U, grid: grid_sample_backward(dV, U, grid, **kw),
            [case.U, case.grid], names=["U", "grid"], eps=FD_EPS, full_max=full_max,
        )
    kw.pop("fill_value")

    def vjp(dV, U, grid, fill):
        dU, dgrid, dfill = grid_sample_backward(dV, U, grid, fill_value=float(fill[0]),
                                                need_dfill_value=True, **kw)
        return dU, dgrid, np.array([dfill])

    return gradcheck(
        lambda U, grid, fill: grid_sample(U, grid, fill_value=float(fill[0]), **kw), vjp,
        [case.U, case.grid, np.array([case.fill_value])], names=["U", "grid", "fill_value"],
        eps=FD_EPS, full_max=full_max,
    )


# --------------------------------------------------------------------------- finite differences

@pytest.mark.parametrize("combo", ALL, ids=ALL_IDS)
@settings(max_examples=FD_EXAMPLES)
@given(data=st.data())
def test_fd_dU_and_dgrid(combo, data):
    case = data.draw(_case(combo, max_spatial=5, max_nc=2))
    _fd(case).raise_if_failed()


def _smooth_theta(rng, size, in_spatial, mode, padding, ac):
    """Random affine theta whose grid (of ``size``) keeps KINK_MARGIN away from U's kinks."""
    k = len(in_spatial)
    eye = np.concatenate([np.eye(k), np.zeros((k, 1))], axis=1)
    for _ in range(MAX_REDRAWS):
        theta = eye + THETA_NOISE * rng.standard_normal((size[0], k, k + 1))
        grid = affine_grid(theta, size, ac)
        if (grid_kink_distance(grid, in_spatial, mode, padding, ac) >= KINK_MARGIN).all():
            return theta
    raise RuntimeError("no affine theta with a kink-free grid found")


@pytest.mark.parametrize("combo", ALL, ids=ALL_IDS)
@settings(max_examples=6)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 2), out=st.integers(2, 4))
def test_fd_dtheta_through_affine_grid(combo, seed, n, out):
    k, mode, padding, ac = combo
    rng = np.random.default_rng(seed)
    in_spatial = tuple(int(s) for s in rng.integers(2, 6, size=k))
    size = (n, 2, *(out,) * k)
    U = rng.standard_normal((n, 2, *in_spatial))
    theta = _smooth_theta(rng, size, in_spatial, mode, padding, ac)
    fill, a = draw_options(rng, mode, padding)
    kw = {"mode": mode, "padding_mode": padding, "align_corners": ac, "fill_value": fill, "cubic_a": a}

    def fn(theta):
        return grid_sample(U, affine_grid(theta, size, ac), **kw)

    def vjp(dV, theta):
        _, dgrid = grid_sample_backward(dV, U, affine_grid(theta, size, ac), need_dU=False, **kw)
        return (affine_grid_backward(dgrid, size, ac),)

    gradcheck(fn, vjp, [theta], names=["theta"], eps=FD_EPS).raise_if_failed()


# --------------------------------------------------------------------------- loop oracle

@pytest.mark.parametrize("combo", LOOP_COMBOS, ids=combo_id)
@settings(max_examples=8)
@given(data=st.data())
def test_forward_and_dU_match_loops(combo, data):
    for grids in ("smooth", "kinky"):
        case = data.draw(_case(combo, grids=grids, max_spatial=4, max_nc=2))
        V = grid_sample(case.U, case.grid, **case.kwargs)
        np.testing.assert_allclose(V, loops.grid_sample_loop(case.U, case.grid, **case.kwargs),
                                   rtol=0, atol=LOOP_TOL * max(1.0, abs(case.fill_value)))
        need_dfill = case.padding_mode in FILL_PADDINGS
        dU, _, *dfill = grid_sample_backward(case.dV, case.U, case.grid,
                                             need_dfill_value=need_dfill, **case.kwargs)
        expect, expect_dfill = loops.grid_sample_dU_loop(case.dV, case.U.shape, case.grid,
                                                         **case.kwargs)
        np.testing.assert_allclose(dU, expect, rtol=0, atol=LOOP_TOL)
        if need_dfill:  # every tap of every point may read the fill: the sum grows with them
            assert abs(dfill[0] - expect_dfill) <= LOOP_TOL * case.dV.size


# --------------------------------------------------------------------------- dtypes

@settings(max_examples=40)
@given(case=sampler_cases())
def test_float32_in_float32_out_and_close_to_float64(case):
    U32, g32, dV32 = (a.astype(np.float32) for a in (case.U, case.grid, case.dV))
    V32 = grid_sample(U32, g32, **case.kwargs)
    dU32, dg32 = grid_sample_backward(dV32, U32, g32, **case.kwargs)
    assert V32.dtype == dU32.dtype == dg32.dtype == np.float32
    # reference: the float32 values promoted, so only the arithmetic differs
    V64 = grid_sample(U32.astype(np.float64), g32.astype(np.float64), **case.kwargs)
    dU64, dg64 = grid_sample_backward(dV32.astype(np.float64), U32.astype(np.float64),
                                      g32.astype(np.float64), **case.kwargs)
    np.testing.assert_allclose(V32, V64, rtol=0, atol=F32_TOL * np.abs(case.U).max())
    np.testing.assert_allclose(dU32, dU64, rtol=0, atol=F32_TOL * np.abs(case.dV).max())
    scale = max(1.0, np.abs(dg64).max())
    np.testing.assert_allclose(dg32, dg64, rtol=0, atol=F32_TOL * scale * 10)


def test_python_lists_are_float64():
    V = grid_sample([[[[0.0, 1.0], [2.0, 3.0]]]], [[[[0.0, 0.0]]]])
    assert V.dtype == np.float64
    assert V[0, 0, 0, 0] == 1.5


# --------------------------------------------------------------------------- purity

@settings(max_examples=30)
@given(case=sampler_cases())
def test_inputs_never_modified_and_deterministic(case):
    U, grid, dV = case.U.copy(), case.grid.copy(), case.dV.copy()
    V1 = grid_sample(case.U, case.grid, **case.kwargs)
    dU1, dg1 = grid_sample_backward(case.dV, case.U, case.grid, **case.kwargs)
    V2 = grid_sample(case.U, case.grid, **case.kwargs)
    dU2, dg2 = grid_sample_backward(case.dV, case.U, case.grid, **case.kwargs)
    for before, after in ((U, case.U), (grid, case.grid), (dV, case.dV)):
        np.testing.assert_array_equal(before, after)
    # bit-identical: compare the bytes, so NaN and -0.0 count too
    for a, b in ((V1, V2), (dU1, dU2), (dg1, dg2)):
        assert a.tobytes() == b.tobytes()


@settings(max_examples=20)
@given(case=sampler_cases())
def test_read_only_and_non_contiguous_inputs(case):
    expect_V = grid_sample(case.U, case.grid, **case.kwargs)
    expect_dU, expect_dg = grid_sample_backward(case.dV, case.U, case.grid, **case.kwargs)

    def strided(a):
        """Same values, non-contiguous (every other element of a doubled array), read-only."""
        big = np.repeat(a, 2, axis=-1)[..., ::2]
        assert not big.flags.c_contiguous or a.shape[-1] == 1
        big.flags.writeable = False
        return big

    def fortran(a):
        f = np.asfortranarray(a)
        f.flags.writeable = False
        return f

    for wrap in (strided, fortran):
        U, grid, dV = wrap(case.U), wrap(case.grid), wrap(case.dV)
        np.testing.assert_array_equal(grid_sample(U, grid, **case.kwargs), expect_V)
        dU, dg = grid_sample_backward(dV, U, grid, **case.kwargs)
        np.testing.assert_array_equal(dU, expect_dU)
        np.testing.assert_array_equal(dg, expect_dg)

    # negative strides: every axis reversed, against contiguous copies of the same views
    flip = tuple(slice(None, None, -1) for _ in range(case.U.ndim))
    U, grid, dV = case.U[flip], case.grid[flip], case.dV[flip]
    copies = [np.ascontiguousarray(a) for a in (U, grid, dV)]
    np.testing.assert_array_equal(grid_sample(U, grid, **case.kwargs),
                                  grid_sample(*copies[:2], **case.kwargs))
    for got, want in zip(grid_sample_backward(dV, U, grid, **case.kwargs),
                         grid_sample_backward(copies[2], *copies[:2], **case.kwargs)):
        np.testing.assert_array_equal(got, want)


def test_need_dU_false_skips_dU_only():
    rng = np.random.default_rng(3)
    U, grid = rng.standard_normal((2, 3, 4, 5)), rng.uniform(-1, 1, (2, 3, 2, 2))
    dV = rng.standard_normal((2, 3, 3, 2))
    dU, dg = grid_sample_backward(dV, U, grid, need_dU=False)
    assert dU is None
    np.testing.assert_array_equal(dg, grid_sample_backward(dV, U, grid)[1])


@pytest.mark.parametrize("mode", MODES)
def test_large_float32_image_takes_the_int64_row_path(mode):
    # A float32 image whose padded extent passes 2**23 pixels: tap rows are summed in
    # int64 there, not in float32 (sampling._rows).  Pixel (r, c) holds r * W + c, so a
    # wrong row or column shows as an error of W or 1, far above float32 rounding.
    H, W = 2049, 4100
    U = (np.arange(H, dtype=np.float64)[:, None] * W + np.arange(W))[None, None]
    rng = np.random.default_rng(4)
    # inside the image, so U changes by at most W per pixel and float32's coordinate
    # rounding (5e-4 px at 4096) moves a value by about 2
    rows = np.concatenate([rng.integers(H - 10, H - 2, 16), rng.integers(1, H - 2, 16)])
    cols = np.concatenate([rng.integers(W - 10, W - 2, 16), rng.integers(1, W - 2, 16)])
    frac = rng.uniform(0.1, 0.4, (2, 32))   # away from pixel edges and rounding ties
    grid = np.stack([(cols + frac[0]) * 2 / (W - 1) - 1, (rows + frac[1]) * 2 / (H - 1) - 1],
                    axis=-1)[None, None]
    kw = dict(mode=mode, padding_mode="zeros", align_corners=True)
    want = grid_sample(U, grid, **kw)
    got = grid_sample(U.astype(np.float32), grid.astype(np.float32), **kw)
    np.testing.assert_allclose(got, want, rtol=0, atol=16)
    dV = np.ones_like(want)
    for g, w in zip(grid_sample_backward(dV.astype(np.float32), U.astype(np.float32),
                                         grid.astype(np.float32), **kw),
                    grid_sample_backward(dV, U, grid, **kw)):
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-3 * np.abs(w).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("padded", [(6, 7), (4104, 4104), (9, 2049, 4100), (300, 300, 300)])
def test_tap_rows_are_exact(padded, dtype):
    # sampling._rows sums first-tap pixels times strides in floating point only while
    # that is exact; (4104, 4104) and (300, 300, 300) pass 2**24 pixels, where float32
    # would round the far corner's row (odd and above 2**24) to an even neighbour
    from stnref.sampling import _rows, _strides
    strides = _strides(padded)[:len(padded)]
    far = [np.array([n - 1, n - 2, 0, -2], dtype=dtype) for n in padded[::-1]]
    want = sum(f.astype(np.int64) * s for f, s in zip(far, strides))
    np.testing.assert_array_equal(_rows(far, strides, padded), want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 128, 2**20 + 1])
def test_wrapped_base_is_the_exact_remainder(dtype, size):
    # sampling._wrap replaces np.mod by floor division with a correction below 2^mantissa;
    # it must be the exact remainder there, at the switch, and beyond (huge coordinates)
    from stnref.sampling import _wrap
    rng = np.random.default_rng(6)
    top = 2.0 ** np.finfo(dtype).nmant
    base = np.concatenate([np.floor(rng.uniform(-3 * top, 3 * top, 4000)),
                           np.floor(rng.uniform(-1e4, 1e4, 4000)),
                           [top - 1, 1 - top, top, -top, 4 * top, 1e30, -1e30, 0, -1, size, -size]])
    base = base.astype(dtype)
    np.testing.assert_array_equal(_wrap(base, size), np.mod(base, dtype(size)))


@pytest.mark.parametrize("k, mode, padding", combinations())
def test_backward_from_kept_taps_is_the_backward(k, mode, padding):
    # SpatialTransformer keeps the forward's taps for its backward (sampling._sample with
    # keep=True); that must change nothing, bit for bit, across several chunks
    from stnref import sampling
    rng = np.random.default_rng(8)
    shape = (3, 2, 40, 50) if k == 2 else (2, 2, 9, 10, 11)
    out = (3, 130, 120) if k == 2 else (2, 30, 31, 32)          # several chunks
    U = rng.standard_normal(shape)
    grid = rng.uniform(-1.2, 1.2, out + (k,))
    grid.reshape(-1)[::101] = np.round(grid.reshape(-1)[::101] * 8) / 8   # kinks
    grid.reshape(-1)[::997] = np.nan
    dV = rng.standard_normal(shape[:2] + out[1:])
    fill, a = draw_options(rng, mode, padding)
    V, kept = sampling._sample(U, grid, mode, padding, False, keep=True, fill_value=fill, cubic_a=a)
    assert V.tobytes() == grid_sample(U, grid, mode, padding, fill_value=fill, cubic_a=a).tobytes()
    assert len(kept) > 1
    for need_dU in (True, False):
        got = sampling._sample_backward(dV, U, grid, mode, padding, False, need_dU, kept, fill, a)
        want = grid_sample_backward(dV, U, grid, mode, padding, need_dU=need_dU, fill_value=fill,
                                    cubic_a=a)
        for g, w in zip(got, want):
            assert (g is None and w is None) or g.tobytes() == w.tobytes()


# --------------------------------------------------------------------------- bad input

def _ok(k=2):
    rng = np.random.default_rng(0)
    U = rng.standard_normal((2, 3, *(4,) * k))
    grid = rng.uniform(-1, 1, (2, *(3,) * k, k))
    dV = rng.standard_normal((2, 3, *(3,) * k))
    return U, grid, dV


@pytest.mark.parametrize("fn", ["forward", "backward"])
@pytest.mark.parametrize("bad, exc, match", [
    ("U_rank3", ValueError, r"expected U of shape"),
    ("U_rank6", ValueError, r"expected U of shape"),
    ("grid_rank", ValueError, r"expected grid of shape \(N, H_out, W_out, 2\)"),
    ("grid_last_dim", ValueError, r"expected grid of shape \(N, H_out, W_out, 2\).*got \(2, 3, 3, 3\)"),
    ("grid_last_dim_3d", ValueError, r"expected grid of shape \(N, D_out, H_out, W_out, 3\)"),
    ("batch", ValueError, r"expected grid with batch N=2 like U, got 1"),
    ("mode", ValueError, r"expected mode to be one of 'bilinear', 'nearest', 'bicubic', got 'linear'"),
    ("padding", ValueError, r"expected padding_mode to be one of 'zeros', 'border', 'reflection', "
                            r"'constant', 'wrap', got 'mirror'"),
    ("fill", ValueError, r"fill_value=1.5 applies only with padding_mode='constant', "
                         r"got padding_mode='zeros'"),
    ("fill_nan", ValueError, r"expected a finite fill_value, got nan"),
    ("fill_f32", ValueError, r"expected fill_value finite in float32 \(\|fill_value\| <= 3.403e\+38\), "
                             r"got 1e\+300"),
    ("fill_str", TypeError, r"expected fill_value to be a real number, got str '1'"),
    ("cubic_a", ValueError, r"cubic_a=-0.5 applies only with mode='bicubic', got mode='bilinear'"),
    ("cubic_a_inf", ValueError, r"expected a finite cubic_a, got -inf"),
    ("int_U", TypeError, r"expected U of dtype float32 or float64, got int64"),
    ("complex_grid", TypeError, r"expected grid of dtype float32 or float64, got complex128"),
    ("bool_U", TypeError, r"expected U of dtype float32 or float64, got bool"),
    ("none_U", TypeError, r"expected U to be a float array"),
    ("mixed", TypeError, r"expected U and grid to have the same dtype, got float32 and float64"),
    ("align_int", TypeError, r"expected align_corners to be a bool"),
])
def test_bad_input_raises_naming_the_argument(fn, bad, exc, match):
    U, grid, dV = _ok()
    kw = {"mode": "bilinear", "padding_mode": "zeros", "align_corners": False}
    if bad == "U_rank3":
        U = U[0]
    elif bad == "U_rank6":
        U = U[..., None, None]
    elif bad == "grid_rank":
        grid = grid[0]
    elif bad == "grid_last_dim":
        grid = np.concatenate([grid, grid[..., :1]], axis=-1)
    elif bad == "grid_last_dim_3d":
        U, grid, dV = _ok(3)
        grid = grid[..., :2]
    elif bad == "batch":
        grid = grid[:1]
    elif bad == "mode":
        kw["mode"] = "linear"
    elif bad == "padding":
        kw["padding_mode"] = "mirror"
    elif bad == "fill":
        kw["fill_value"] = 1.5
    elif bad == "fill_nan":
        kw.update(padding_mode="constant", fill_value=np.nan)
    elif bad == "fill_f32":
        U, grid, dV = (a.astype(np.float32) for a in (U, grid, dV))
        kw.update(padding_mode="constant", fill_value=1e300)
    elif bad == "fill_str":
        kw.update(padding_mode="constant", fill_value="1")
    elif bad == "cubic_a":
        kw["cubic_a"] = -0.5
    elif bad == "cubic_a_inf":
        kw.update(mode="bicubic", cubic_a=-np.inf)
    elif bad == "int_U":
        U = np.ones(U.shape, dtype=np.int64)
    elif bad == "complex_grid":
        grid = grid.astype(np.complex128)
    elif bad == "bool_U":
        U = U > 0
    elif bad == "none_U":
        U = None
    elif bad == "mixed":
        U = U.astype(np.float32)
    elif bad == "align_int":
        kw["align_corners"] = 1
    name = "grid_sample" if fn == "forward" else "grid_sample_backward"
    with pytest.raises(exc, match=rf"{name}\(\): " + match):
        if fn == "forward":
            grid_sample(U, grid, **kw)
        else:
            grid_sample_backward(dV, U, grid, **kw)


@pytest.mark.parametrize("bad, exc, match", [
    ("shape", ValueError, r"expected dV of shape \(2, 3, 3, 3\), got \(2, 3, 3, 4\)"),
    ("channels", ValueError, r"expected dV of shape \(2, 3, 3, 3\), got \(2, 2, 3, 3\)"),
    ("dtype", TypeError, r"expected dV and U to have the same dtype, got float32 and float64"),
    ("int", TypeError, r"expected dV of dtype float32 or float64, got int64"),
    ("need_dU", TypeError, r"expected need_dU to be a bool"),
])
def test_bad_dV_raises(bad, exc, match):
    U, grid, dV = _ok()
    kw = {}
    if bad == "shape":
        dV = np.zeros((2, 3, 3, 4))
    elif bad == "channels":
        dV = dV[:, :2]
    elif bad == "dtype":
        dV = dV.astype(np.float32)
    elif bad == "int":
        dV = np.zeros(dV.shape, dtype=np.int64)
    elif bad == "need_dU":
        kw["need_dU"] = "yes"
    with pytest.raises(exc, match=r"grid_sample_backward\(\): " + match):
        grid_sample_backward(dV, U, grid, **kw)


@pytest.mark.parametrize("theta_shape, size, match", [
    ((2, 2, 3), (3, 1, 4, 4), r"affine_grid\(\): size \(3, 1, 4, 4\) has batch 3 but theta has batch 2"),
    ((2, 2, 3), (2, 1, 4, 4, 4), r"affine_grid\(\): expected size with 4 entries"),
    ((2, 3, 4), (2, 1, 4, 4), r"affine_grid\(\): expected size with 5 entries"),
    ((2, 2, 4), (2, 1, 4, 4), r"affine_grid\(\): expected theta of shape \(N, 2, 3\) or \(N, 3, 4\)"),
])
def test_affine_grid_size_disagreeing_with_theta(theta_shape, size, match):
    with pytest.raises(ValueError, match=match):
        affine_grid(np.zeros(theta_shape), size)


@pytest.mark.parametrize("grid_shape, U_batch", [((2, 0, 3, 2), 2), ((0, 3, 3, 2), 0),
                                                  ((1, 2, 0, 2, 3), 1)])
def test_empty_grids_give_empty_outputs(grid_shape, U_batch):
    k = grid_shape[-1]
    U = np.ones((U_batch, 3, *(4,) * k))
    grid = np.zeros(grid_shape)
    V = grid_sample(U, grid)
    assert V.shape == (U_batch, 3, *grid_shape[1:-1])
    dU, dgrid = grid_sample_backward(np.zeros(V.shape), U, grid)
    assert dU.shape == U.shape and not dU.any() and dgrid.shape == grid.shape


@pytest.mark.parametrize("mode, padding, ac, size, i, expect", [
    ("bilinear", "zeros", False, 4, [2.0, 2.5, -1.25, 7.9], [0.0, 0.5, 0.25, 0.1]),
    ("nearest", "zeros", False, 4, [2.5, 2.25, -0.5], [0.0, 0.25, 0.0]),
    ("bilinear", "border", True, 5, [-3.3, 4.0, 3.75], [0.3, 0.0, 0.25]),
    # folds at -0.5 + 4k: 7.5, -8.5; band [-0.5, 0) interior is smooth but near its ends
    ("bilinear", "reflection", False, 4, [7.5, -8.5, -0.25, 3.4, 11.45], [0.0, 0.0, 0.25, 0.1, 0.05]),
    # folds at 4k are integers; reflected 0.3 -> 0.3 from the lattice
    ("bilinear", "reflection", True, 5, [8.0, -0.3, 12.7], [0.0, 0.3, 0.3]),
    ("nearest", "reflection", True, 5, [6.5, 6.25], [0.0, 0.25]),
    ("bicubic", "reflection", False, 4, [7.5, 2.2], [0.5, 0.2]),  # taps padded: integers only
    ("bicubic", "border", True, 1, [0.3], [np.inf]),               # size 1, align_corners: constant
])
def test_kink_distance_of_the_strategy(mode, padding, ac, size, i, expect):
    # the strategy that keeps finite differences off kinks must itself find every kink
    d = kink_distance(np.array(i), size, mode, padding, ac)
    np.testing.assert_allclose(d, expect, rtol=0, atol=1e-12)
