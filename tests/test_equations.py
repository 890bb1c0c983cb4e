"""stnref.equations -- the paper's equations as plain code -- against the engineered functions.

The plain functions define what stnref computes; the engineered ones (``stnref.grid_sample``,
``stnref.affine_grid``, ...) must agree with them to ``EQUIV_RTOL`` of the output's scale in
float64 wherever the paper's formulas are the same functions.  They are not at two places,
each pinned here: eq. (4) rounds ``x.5`` up (stnref rounds half to even), and eq. (7)'s case
split at an exact integer coordinate is not stnref's right-sided derivative
(docs/conventions.md §4.1, §4.2).
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import sampler_cases

import stnref
from stnref import equations as E

# Same sums taken in another order (a dense sum over every pixel against a few taps):
# agreement to a few hundred ulps of the output's scale.
EQUIV_RTOL = 1e-12
KERNEL_MODES = ("bilinear", "nearest", "bicubic")


def assert_close(a, b, what):
    scale = max(1.0, float(np.abs(b).max(initial=0.0)))
    err = float(np.abs(a - b).max(initial=0.0))
    assert err <= EQUIV_RTOL * scale, f"{what}: max difference {err:.3e} (scale {scale:.3g})"


def zeros_cases(modes, max_spatial=5, grids="smooth"):
    """Sampler cases with zeros padding (eq. 3 sums over the image only), 2-D, small.

    ``grids="smooth"`` keeps every point away from the kernel's kinks (integers; nearest:
    half-integers); ``"kinky"`` puts points on them on purpose, and far outside.
    """
    return sampler_cases(dims=(2,), modes=modes, paddings=("zeros",), max_spatial=max_spatial,
                         grids=grids, defaults=True)


# ----------------------------------------------------------------------------- eqs. (1), (2)

@given(n=st.integers(1, 3), h=st.integers(1, 6), w=st.integers(1, 6),
       align_corners=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_affine_grid_and_backward_equal_stnref(n, h, w, align_corners, seed):
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal((n, 2, 3))
    size = (n, 2, h, w)
    assert_close(E.affine_grid(theta, size, align_corners),
                 stnref.affine_grid(theta, size, align_corners), "affine_grid")
    dgrid = rng.standard_normal((n, h, w, 2))
    assert_close(E.affine_grid_backward(dgrid, size, align_corners),
                 stnref.affine_grid_backward(dgrid, size, align_corners), "affine_grid_backward")


def test_affine_grid_backward_against_finite_differences():
    rng = np.random.default_rng(1)
    size = (2, 1, 3, 4)
    check = stnref.gradcheck(lambda th: E.affine_grid(th, size, False),
                             lambda dg, th: (E.affine_grid_backward(dg, size, False),),
                             [rng.standard_normal((2, 2, 3))], names=["theta"])
    assert check.ok, check


@given(seed=st.integers(0, 2**32 - 1), align_corners=st.booleans())
def test_attention_theta_is_stnref_attention_grid(seed, align_corners):
    rng = np.random.default_rng(seed)
    s, tx, ty = rng.standard_normal((3, 4))
    size = (4, 1, 5, 3)
    assert_close(E.affine_grid(E.attention_theta(s, tx, ty), size, align_corners),
                 stnref.attention_grid(np.stack([s, tx, ty], axis=1), size, align_corners),
                 "attention")


def test_attention_theta_is_the_matrix_of_eq_2():
    np.testing.assert_array_equal(E.attention_theta([2.0], [3.0], [4.0]), [[[2, 0, 3], [0, 2, 4]]])
    assert E.attention_theta(*np.ones((3, 2), np.float32)).dtype == np.float32


@pytest.mark.parametrize("args, match", [
    (([np.nan], [0.0], [0.0]), r"attention_theta\(\): expected finite s, got nan at index \(0,\)"),
    (([1.0, 2.0], [0.0], [0.0]), r"attention_theta\(\): expected s, tx, ty of one shape \(N,\)"),
    ((1.0, 0.0, 0.0), r"attention_theta\(\): expected s, tx, ty of one shape \(N,\)"),
])
def test_attention_theta_checks_its_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        E.attention_theta(*args)


def test_affine_grid_refuses_a_non_finite_theta():
    with pytest.raises(ValueError, match=r"affine_grid\(\): expected finite theta, got inf"):
        E.affine_grid(np.array([[[1.0, 0, np.inf], [0, 1, 0]]]), (1, 1, 2, 2))


def test_float32_is_computed_in_float64_and_returned_as_float32():
    """The plain functions work in float64 whatever they are given (the module's promise)."""
    rng = np.random.default_rng(5)
    U, grid, dV = (rng.standard_normal(s).astype(np.float32) for s in ((2, 2, 4, 5), (2, 3, 3, 2),
                                                                        (2, 2, 3, 3)))
    f64 = [a.astype(np.float64) for a in (dV, U, grid)]
    V = E.sample(U, grid)
    assert V.dtype == np.float32
    np.testing.assert_array_equal(V, E.sample(*f64[1:]).astype(np.float32))
    for got, ref in zip(E.sample_backward(dV, U, grid), E.sample_backward(*f64)):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, ref.astype(np.float32))


# ----------------------------------------------------------------------------- kernels, eqs. (4), (5)

def test_kernels_as_written():
    d = np.array([-2.5, -1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.4999, 0.5, 1.0, 1.5])
    np.testing.assert_array_equal(E.bilinear_kernel(d), np.maximum(0, 1 - np.abs(d)))
    # delta(floor(d + 0.5)): 1 on [-0.5, 0.5), so x.5 rounds up
    np.testing.assert_array_equal(E.integer_kernel(d), [0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0])


def test_kernels_are_partitions_of_unity():
    """sum_m k(x - m) = 1 for every x: a constant image is reproduced by eq. (3)."""
    x = np.random.default_rng(2).uniform(-3, 3, 50)[:, None]
    m = np.arange(-8, 9)
    for k in E.KERNELS.values():
        np.testing.assert_allclose(k(x - m).sum(axis=1), 1.0, rtol=0, atol=1e-14)


def test_cubic_kernel_is_keys_with_pytorch_a():
    from loops import keys
    d = np.linspace(-2.5, 2.5, 101)
    np.testing.assert_allclose(E.cubic_kernel(d), [keys(v) for v in d], rtol=0, atol=1e-15)
    from stnref.sampling import CUBIC_A
    assert CUBIC_A == -0.75 == E.cubic_kernel.__defaults__[0]


# ----------------------------------------------------------------------------- eq. (3)

@given(case=st.one_of(zeros_cases(("bilinear", "bicubic")),
                      zeros_cases(("bilinear", "bicubic"), grids="kinky")))
def test_sample_equals_grid_sample(case):
    """Bilinear (eq. 5) and bicubic with zeros padding: the same function, kinks included."""
    V = E.sample(case.U, case.grid, case.mode, case.align_corners)
    assert_close(V, stnref.grid_sample(case.U, case.grid, **case.kwargs), repr(case))


@given(case=st.one_of(*(sampler_cases(dims=(2,), modes=("bilinear", "bicubic"), paddings=("constant",),
                                      max_spatial=5, grids=g) for g in ("smooth", "kinky"))))
def test_sample_with_a_fill_value_equals_constant_padding(case):
    """Eq. (3) with every lattice point outside holding fill_value: padding "constant", any A."""
    kernel = case.mode if case.mode == "bilinear" else (lambda d: E.cubic_kernel(d, case.cubic_a))
    V = E.sample(case.U, case.grid, kernel, case.align_corners, fill_value=case.fill_value)
    assert_close(V, stnref.grid_sample(case.U, case.grid, **case.kwargs), repr(case))


@given(case=zeros_cases(("nearest",)))
def test_integer_kernel_sample_equals_nearest_away_from_ties(case):
    """Eq. (4) and mode="nearest" pick the same pixel except at exact x.5 ties."""
    V = E.sample(case.U, case.grid, "nearest", case.align_corners)
    assert_close(V, stnref.grid_sample(case.U, case.grid, **case.kwargs), repr(case))


def test_eq_4_rounds_ties_up_where_stnref_rounds_half_to_even():
    U = np.arange(5.0).reshape(1, 1, 1, 5)                   # pixel m holds the value m
    ties = np.array([0.5, 1.5, 2.5, 3.5])                     # pixel coordinates x_s
    grid = np.zeros((1, 1, 4, 2))
    grid[..., 0] = (2 * ties + 1) / 5 - 1                     # exactly representable: x_s is a tie
    assert np.array_equal(E.pixel_coordinate(grid[..., 0], 5), ties[None, None])
    paper = E.sample(U, grid, "nearest")[0, 0, 0]
    ours = stnref.grid_sample(U, grid, mode="nearest")[0, 0, 0]
    np.testing.assert_array_equal(paper, [1, 2, 3, 4])       # floor(x + 0.5): half up
    np.testing.assert_array_equal(ours, [0, 2, 2, 4])        # rint: half to even


def test_sample_accepts_any_kernel():
    """Eq. (3) is general: a user kernel, here the tent written by hand."""
    rng = np.random.default_rng(3)
    U, grid = rng.standard_normal((2, 2, 4, 5)), rng.uniform(-1.2, 1.2, (2, 3, 3, 2))
    tent = lambda d: np.clip(1 - np.abs(d), 0, None)  # noqa: E731
    np.testing.assert_array_equal(E.sample(U, grid, tent), E.sample(U, grid, "bilinear"))


# ----------------------------------------------------------------------------- eqs. (6), (7)

@given(case=zeros_cases(("bilinear",)))
def test_sample_backward_equals_grid_sample_backward_away_from_integers(case):
    dU, dgrid = E.sample_backward(case.dV, case.U, case.grid, case.align_corners)
    dU_ref, dgrid_ref = stnref.grid_sample_backward(case.dV, case.U, case.grid, **case.kwargs)
    assert_close(dU, dU_ref, f"dU {case!r}")
    assert_close(dgrid, dgrid_ref, f"dgrid {case!r}")


@given(case=zeros_cases(("bilinear",), max_spatial=4))
def test_sample_backward_against_finite_differences(case):
    check = stnref.gradcheck(lambda U, g: E.sample(U, g, "bilinear", case.align_corners),
                             lambda dV, U, g: E.sample_backward(dV, U, g, case.align_corners),
                             [case.U, case.grid], names=["U", "grid"])
    assert check.ok, check


@pytest.mark.parametrize("align_corners", [False, True])
def test_eq_7_case_split_at_an_integer_is_not_the_right_sided_derivative(align_corners):
    """At an exact integer x_s = m0 the paper's rule gives U[m0] (the one pixel with
    |m - x_s| < 1 has m >= x_s); stnref's right-sided derivative is U[m0 + 1] - U[m0].
    The difference is 2 U[m0] - U[m0 + 1] (U = 0 beyond the image), times the y weights."""
    rng = np.random.default_rng(4)
    N, C, H = 1, 2, 4
    W = 5 if align_corners else 4                            # normalised integers exact in binary
    U = rng.standard_normal((N, C, H, W))
    m0 = np.array([0, 1, W - 2, W - 1])                      # integer x_s, last column included
    y_s = np.array([0.3, 1.7, 2.2, 2.9])                     # away from integers
    scale_x = (W - 1) / 2 if align_corners else W / 2
    to_norm = (lambda i, n: 2 * i / (n - 1) - 1) if align_corners else (lambda i, n: (2 * i + 1) / n - 1)
    grid = np.stack([to_norm(m0, W), to_norm(y_s, H)], axis=-1)[None, None]   # (1, 1, 4, 2)
    assert np.array_equal(E.pixel_coordinate(grid[..., 0], W, align_corners)[0, 0], m0)
    dV = rng.standard_normal((N, C, 1, 4))

    paper = E.sample_backward(dV, U, grid, align_corners)[1][0, 0, :, 0]
    ours = stnref.grid_sample_backward(dV, U, grid, align_corners=align_corners)[1][0, 0, :, 0]
    U_ext = np.concatenate([U, np.zeros((N, C, H, 1))], axis=3)             # the zero beyond
    ky = E.bilinear_kernel(y_s[:, None] - np.arange(H))                      # (points, H)
    for p in range(4):
        gap = 2 * U_ext[0, :, :, m0[p]] - U_ext[0, :, :, m0[p] + 1]           # (C, H)
        expected = scale_x * np.sum(dV[0, :, 0, p] * (gap @ ky[p]))
        np.testing.assert_allclose(paper[p] - ours[p], expected, rtol=1e-12, atol=1e-12)


def test_eq_7_gives_a_slope_on_a_constant_image():
    """The departure in one line: V does not depend on x_s, stnref says 0, the printed rule 1."""
    U = np.ones((1, 1, 3, 3))
    grid = np.array([[[[0.0, 0.1]]]])                        # x_s = 1.0 exactly (W = 3)
    dV = np.ones((1, 1, 1, 1))
    paper = E.sample_backward(dV, U, grid)[1][0, 0, 0, 0]
    ours = stnref.grid_sample_backward(dV, U, grid)[1][0, 0, 0, 0]
    assert ours == 0.0
    np.testing.assert_allclose(paper, 3 / 2)                 # dx_s/dgrid = W/2, slope 1


def test_sample_backward_dU_is_eq_6_even_at_integers():
    """Eq. (6) is continuous in x_s: the two agree on dU at every point, integers included."""
    rng = np.random.default_rng(5)
    U, dV = rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((1, 2, 2, 2))
    grid = np.array([[[[-0.75, -0.25], [0.25, 0.75]], [[-1.0, 1.0], [0.0, 0.0]]]])
    assert_close(E.sample_backward(dV, U, grid)[0], stnref.grid_sample_backward(dV, U, grid)[0], "dU")


# ----------------------------------------------------------------------------- hygiene

def test_float32_in_float32_out_and_inputs_untouched():
    rng = np.random.default_rng(6)
    U = rng.standard_normal((1, 1, 3, 3)).astype(np.float32)
    grid = rng.uniform(-1, 1, (1, 2, 2, 2)).astype(np.float32)
    dV = np.ones((1, 1, 2, 2), np.float32)
    copies = [a.copy() for a in (U, grid, dV)]
    assert E.sample(U, grid).dtype == np.float32
    assert all(a.dtype == np.float32 for a in E.sample_backward(dV, U, grid))
    theta = np.eye(2, 3, dtype=np.float32)[None]
    assert E.affine_grid(theta, (1, 1, 2, 2)).dtype == np.float32
    for a, b in zip((U, grid, dV), copies):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: E.sample(np.zeros((1, 1, 2, 2)), np.zeros((2, 1, 1, 2))), ValueError, r"sample\(\).*batch"),
    (lambda: E.sample(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 1, 3))), ValueError, r"sample\(\).*grid of shape"),
    (lambda: E.sample(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 1, 2)), "cubic"), ValueError, "kernel.*'bilinear'"),
    (lambda: E.sample(np.zeros((1, 1, 2, 2), int), np.zeros((1, 1, 1, 2))), TypeError, "U of dtype"),
    (lambda: E.sample_backward(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 1, 2))),
     ValueError, r"sample_backward\(\).*dV of shape"),
    (lambda: E.affine_grid(np.zeros((1, 3, 4)), (1, 1, 2, 2)), ValueError, r"affine_grid\(\).*\(1, 2, 3\)"),
    (lambda: E.affine_grid(np.zeros((1, 2, 3)), (1, 1, 2)), ValueError, "size with 4 entries"),
    (lambda: E.affine_grid_backward(np.zeros((1, 2, 2, 3)), (1, 1, 2, 2)), ValueError, "dgrid of shape"),
])
def test_bad_input_is_refused_by_name(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_eq_4_and_rint_differ_exactly_at_even_ties_and_one_double_below_a_half():
    """stnref.equations.integer_kernel's docstring, checked as stated: every tie m + 1/2 with
    |m| <= 300 and the six doubles either side of it."""
    differ = []
    for m in range(-300, 301):
        x = np.array([m + 0.5])
        around = [x]
        for direction in (-np.inf, np.inf):
            y = x
            for _ in range(6):
                y = np.nextafter(y, direction)
                around.append(y)
        for y in around:
            if np.floor(y[0] + 0.5) != np.rint(y[0]):
                differ.append(float(y[0]))
    ties = [m + 0.5 for m in range(-300, 301) if m % 2 == 0]
    assert sorted(differ) == sorted(ties + [0.49999999999999994])
    # the odd one out, read by both samplers: pixel 1 by eq. (4), pixel 0 by grid_sample
    U = np.array([[[[10.0, 20.0]]]])
    x_s = np.nextafter(0.5, 0.0)
    grid = np.array([[[[np.nextafter(1.0, 0.0) - 1, 0.0]]]])   # align_corners=True, W = 2: i = (x + 1)/2
    assert E.pixel_coordinate(grid[..., 0], 2, True)[0, 0, 0] == x_s
    assert E.sample(U, grid, "nearest", align_corners=True)[0, 0, 0, 0] == 20.0
    assert stnref.grid_sample(U, grid, "nearest", align_corners=True)[0, 0, 0, 0] == 10.0
