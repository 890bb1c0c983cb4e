"""SpatialTransformer and Parallel: identity start, finite-difference gradients, containers, errors."""

import math

import numpy as np
import pytest

from stnref import gradcheck_module
from stnref.grids import affine_grid
from stnref.nn import Flatten, Linear, ReLU, Sequential, Tanh
from stnref.sampling import grid_sample
from stnref.transformer import Parallel, SpatialTransformer, localisation_prefixes
from stnref.registry import TRANSFORMS, get_transform

TRANSFORM_NAMES = ("affine", "attention", "projective", "tps")
# Scale of the random change to the regression layer that moves theta off the identity
# (and the sample points off pixel centres, where bilinear sampling has kinks).
PERTURB = 0.05
# Closest a sample point may come to an integer pixel coordinate in a finite-difference
# check: central differences with step 1e-6 move points by ~1e-6 pixels.
KINK_MARGIN = 1e-4
# The identity warp reproduces U up to rounding of the base coordinates.
IDENTITY_TOL = 1e-12


def perturb_regression(st, rng, scale=PERTURB):
    """Move the regression layer of ``st``'s localisation net away from zero / the identity."""
    reg = st.loc[-1]
    np.copyto(reg.weight, scale * rng.standard_normal(reg.weight.shape))
    np.copyto(reg.bias, reg.bias + scale * rng.standard_normal(reg.bias.shape))


def pixel_distance_to_kinks(st, U):
    """Smallest distance (pixels) of the last forward's sample points to an integer position."""
    H, W = U.shape[2:]
    size = U.shape[:2] + (st.out_size or (H, W))
    grid = st.transform.grid(st.last_theta, size, st.align_corners)
    ix = ((grid[..., 0] + 1) * W - 1) / 2     # align_corners=False
    iy = ((grid[..., 1] + 1) * H - 1) / 2
    return float(min(np.abs(ix - np.rint(ix)).min(), np.abs(iy - np.rint(iy)).min()))


def small_st(transform, in_shape=(2, 5, 6), out_size=(4, 3), seed=0, dtype=np.float64, **sampler):
    rng = np.random.default_rng(seed)
    t = get_transform(transform)
    n_in = math.prod(in_shape)
    loc = Sequential(Flatten(), Linear(n_in, 8, rng=rng, dtype=dtype), Tanh(),
                     Linear(8, math.prod(t.theta_shape), rng=rng, dtype=dtype))
    return SpatialTransformer(loc, transform, out_size=out_size, **sampler)


@pytest.mark.parametrize("transform", TRANSFORM_NAMES)
def test_identity_initialisation_reproduces_the_input(transform):
    st = small_st(transform, out_size=None)
    reg = st.loc[-1]
    assert not reg.weight.any()
    np.testing.assert_array_equal(reg.bias, TRANSFORMS[transform].identity().reshape(-1))
    U = np.random.default_rng(1).standard_normal((3, 2, 5, 6))
    V = st(U)
    assert V.shape == U.shape
    assert np.abs(V - U).max() <= IDENTITY_TOL
    np.testing.assert_array_equal(st.last_theta, np.broadcast_to(
        TRANSFORMS[transform].identity(), (3, *st.theta_shape)))


@pytest.mark.parametrize("transform", TRANSFORM_NAMES)
def test_gradients_match_finite_differences(transform):
    st = small_st(transform)
    rng = np.random.default_rng(2)
    perturb_regression(st, rng)
    U = rng.standard_normal((2, 2, 5, 6))
    st(U)
    assert pixel_distance_to_kinks(st, U) > KINK_MARGIN
    assert np.abs(st.last_theta - TRANSFORMS[transform].identity()).max() > PERTURB / 10
    gradcheck_module(st, U).raise_if_failed()


@pytest.mark.parametrize("sampler", [
    {"mode": "bicubic", "padding_mode": "constant", "fill_value": 0.5, "cubic_a": -0.5},
    {"mode": "bilinear", "padding_mode": "wrap"},
])
def test_sampler_options_reach_the_sampler_forward_and_backward(sampler):
    st = small_st("affine", **sampler)
    rng = np.random.default_rng(4)
    perturb_regression(st, rng, scale=0.3)   # points outside the image: the padding matters
    U = rng.standard_normal((2, 2, 5, 6))
    V = st(U)
    grid = affine_grid(st.last_theta, (2, 2, 4, 3))
    np.testing.assert_array_equal(V, grid_sample(U, grid, **sampler))
    assert pixel_distance_to_kinks(st, U) > KINK_MARGIN
    gradcheck_module(st, U).raise_if_failed()


def test_affine_forward_equals_generator_then_sampler():
    st = small_st("affine")
    rng = np.random.default_rng(3)
    perturb_regression(st, rng)
    U = rng.standard_normal((2, 2, 5, 6))
    V = st(U)
    theta = st.loc(U).reshape(2, 2, 3)
    np.testing.assert_array_equal(st.last_theta, theta)
    expected = grid_sample(U, affine_grid(theta, (2, 2, 4, 3)))
    np.testing.assert_array_equal(V, expected)


def test_last_theta_is_a_copy():
    st = small_st("affine")
    U = np.random.default_rng(4).standard_normal((1, 2, 5, 6))
    st(U)
    st.last_theta[...] = 7.0
    st(U)
    np.testing.assert_array_equal(st.last_theta[0], np.eye(2, 3))


def test_input_grad_false_returns_none_but_fills_loc_grads():
    rng = np.random.default_rng(5)
    st = small_st("affine")
    perturb_regression(st, rng)
    U = rng.standard_normal((2, 2, 5, 6))
    dV = rng.standard_normal((2, 2, 4, 3))
    st(U)
    assert st.backward(dV) is not None
    reference = {k: v.copy() for k, v in st.grads.items()}
    st.input_grad = False
    st.zero_grad()
    st(U)
    assert st.backward(dV) is None
    for k, v in st.grads.items():
        np.testing.assert_array_equal(v, reference[k])


def test_parameter_names():
    st = small_st("affine")
    assert list(st.params) == ["loc.1.weight", "loc.1.bias", "loc.3.weight", "loc.3.bias"]
    model = Sequential(st, Flatten())
    assert localisation_prefixes(model) == ["0.loc."]
    assert localisation_prefixes(Parallel(small_st("affine"), small_st("tps"))) == ["0.loc.", "1.loc."]


def test_float32_in_float32_out():
    st = small_st("projective", dtype=np.float32)
    U = np.random.default_rng(6).standard_normal((2, 2, 5, 6)).astype(np.float32)
    V = st(U)
    assert V.dtype == np.float32
    dU = st.backward(np.ones_like(V))
    assert dU.dtype == np.float32
    assert all(g.dtype == np.float32 for g in st.grads.values())


def test_parallel_concatenates_and_back_propagates():
    rng = np.random.default_rng(7)
    a, b = small_st("affine", seed=1), small_st("attention", seed=2)
    perturb_regression(a, rng)
    perturb_regression(b, rng)
    par = Parallel(a, b)
    U = rng.standard_normal((2, 2, 5, 6))
    Va, Vb = a(U), b(U)
    V = par(U)
    assert V.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(V, np.concatenate([Va, Vb], axis=1))
    assert list(par.params) == [f"{i}.loc.{j}.{p}"
                                for i in (0, 1) for j in (1, 3) for p in ("weight", "bias")]
    # The input gradient is the sum of the branches' gradients.
    dV = rng.standard_normal(V.shape)
    dU = par.backward(dV)
    a(U)
    b(U)
    np.testing.assert_allclose(dU, a.backward(dV[:, :2]) + b.backward(dV[:, 2:]), rtol=0, atol=1e-14)
    gradcheck_module(par, U, full_max=64).raise_if_failed()


def test_parallel_of_non_transformers_and_none_gradients():
    par = Parallel(ReLU(), Sequential(Tanh()), ReLU())
    x = np.random.default_rng(8).standard_normal((2, 1, 3, 3))
    y = par(x)
    assert y.shape == (2, 3, 3, 3)
    np.testing.assert_array_equal(y[:, 1:2], np.tanh(x))
    dx = par.backward(np.ones_like(y))
    np.testing.assert_allclose(dx, 2 * (x > 0) + (1 - np.tanh(x) ** 2), rtol=0, atol=1e-15)
    st = small_st("affine", in_shape=(1, 3, 3), out_size=None)
    st.input_grad = False
    par = Parallel(st, ReLU())
    par(x)
    assert par.backward(np.ones((2, 2, 3, 3))) is None


def test_errors():
    rng = np.random.default_rng(9)
    with pytest.raises(TypeError, match="Linear regression layer"):
        SpatialTransformer(Sequential(Linear(4, 6, rng=rng), ReLU()))
    with pytest.raises(ValueError, match="out_features 6"):
        SpatialTransformer(Sequential(Flatten(), Linear(4, 5, rng=rng)))
    with pytest.raises(ValueError, match="affine"):
        SpatialTransformer(Sequential(Flatten(), Linear(4, 6, rng=rng)), "shear")
    with pytest.raises(TypeError, match="transform"):
        SpatialTransformer(Sequential(Flatten(), Linear(4, 6, rng=rng)), 3)
    with pytest.raises(ValueError, match="mode"):
        SpatialTransformer(Sequential(Flatten(), Linear(4, 6, rng=rng)), mode="cubic")
    with pytest.raises(ValueError, match=r"SpatialTransformer\(\): fill_value=1.0 applies only with "
                                         r"padding_mode='constant', got padding_mode='zeros'"):
        SpatialTransformer(Sequential(Flatten(), Linear(4, 6, rng=rng)), fill_value=1.0)
    with pytest.raises(ValueError, match=r"SpatialTransformer\(\): cubic_a=-0.5 applies only"):
        SpatialTransformer(Sequential(Flatten(), Linear(4, 6, rng=rng)), cubic_a=-0.5)
    with pytest.raises(TypeError, match="loc"):
        SpatialTransformer("loc")
    st = SpatialTransformer(Sequential(Flatten(), Linear(4, 6, rng=rng)))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        st(np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"SpatialTransformer\.backward\(\): no pending forward"):
        st.backward(np.zeros((1, 1, 2, 2)))
    with pytest.raises(ValueError, match="at least one"):
        Parallel()
