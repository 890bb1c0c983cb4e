"""One transform protocol: every grid generator's backward, public and registry, takes
``(dgrid, theta, size, align_corners)`` -- the forward's inputs -- and the linear ones keep
their theta-free form ``(dgrid, size, ...)`` (PyTorch's) with the same result."""

import inspect

import numpy as np
import pytest

import stnref
from stnref import TRANSFORMS, grids
from stnref.registry import Transform

SIZE = (2, 1, 4, 5)


def theta_of(name, rng):
    identity = TRANSFORMS[name].identity()
    return identity[None].repeat(SIZE[0], 0) + 0.1 * rng.standard_normal((SIZE[0], *identity.shape))


BACKWARDS = {"affine": grids.affine_grid_backward, "attention": grids.attention_grid_backward,
             "projective": grids.projective_grid_backward, "tps": grids.tps_grid_backward}


@pytest.mark.parametrize("name", sorted(BACKWARDS))
def test_every_public_backward_takes_the_forwards_inputs(name):
    params = list(inspect.signature(BACKWARDS[name]).parameters)
    forward = list(inspect.signature(getattr(grids, f"{name}_grid")).parameters)
    assert params == ["dgrid", *forward]


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("name", sorted(BACKWARDS))
def test_public_and_registry_backwards_agree(name, align_corners):
    rng = np.random.default_rng(0)
    theta = theta_of(name, rng)
    dgrid = rng.standard_normal((SIZE[0], *SIZE[2:], 2))
    registry = TRANSFORMS[name].backward(dgrid, theta, SIZE, align_corners)
    public = BACKWARDS[name](dgrid, theta, SIZE, align_corners=align_corners)
    np.testing.assert_array_equal(registry, public)
    if name != "projective":                                 # linear in theta: the theta-free forms
        np.testing.assert_array_equal(BACKWARDS[name](dgrid, SIZE, align_corners=align_corners), public)
        np.testing.assert_array_equal(BACKWARDS[name](dgrid, size=SIZE, align_corners=align_corners),
                                      public)
        np.testing.assert_array_equal(BACKWARDS[name](dgrid, None, SIZE, align_corners=align_corners),
                                      public)
        if name != "tps":
            np.testing.assert_array_equal(BACKWARDS[name](dgrid, SIZE, align_corners), public)


def test_tps_theta_free_positional_form():
    rng = np.random.default_rng(1)
    points = stnref.tps_control_points(9) * 0.9
    theta = points[None].repeat(SIZE[0], 0) + 0.05 * rng.standard_normal((SIZE[0], 9, 2))
    dgrid = rng.standard_normal((SIZE[0], *SIZE[2:], 2))
    expect = grids.tps_grid_backward(dgrid, theta, SIZE, points, True)
    np.testing.assert_array_equal(grids.tps_grid_backward(dgrid, SIZE, points, True), expect)
    np.testing.assert_array_equal(grids.tps_grid_backward(dgrid, SIZE, points, align_corners=True),
                                  expect)
    np.testing.assert_array_equal(grids.tps_grid_backward(dgrid, SIZE, control_points=points,
                                                          align_corners=True), expect)


@pytest.mark.parametrize("call, match", [
    (lambda d, t: grids.affine_grid_backward(d, t), "got theta but no size"),
    (lambda d, t: grids.affine_grid_backward(d), "got no size"),
    (lambda d, t: grids.affine_grid_backward(d, t[:1], SIZE), "batch"),
    (lambda d, t: grids.affine_grid_backward(d, SIZE, "yes"), "size .* where theta goes"),
    (lambda d, t: grids.affine_grid_backward(d, np.full_like(t, np.nan), SIZE), "finite"),
    (lambda d, t: grids.attention_grid_backward(d, t, SIZE), r"\(N, 3\)"),
    (lambda d, t: grids.tps_grid_backward(d, t, SIZE), r"\(N, K=16, 2\)"),
])
def test_wrong_thetas_are_refused_by_name(call, match):
    rng = np.random.default_rng(2)
    theta = theta_of("affine", rng)
    dgrid = rng.standard_normal((SIZE[0], *SIZE[2:], 2))
    with pytest.raises((TypeError, ValueError), match=match):
        call(dgrid, theta)


def test_a_new_transform_follows_the_protocol_and_drives_a_transformer():
    """What docs/prototyping.md does: a shear with its own backward, checked, then used."""

    def shear_grid(theta, size, align_corners=False):
        affine = np.zeros((len(theta), 2, 3))
        affine[:, 0, 0] = affine[:, 1, 1] = 1
        affine[:, 0, 1] = theta[:, 0]
        return grids.affine_grid(affine, size, align_corners)

    def shear_backward(dgrid, theta, size, align_corners=False):
        return grids.affine_grid_backward(dgrid, None, size, align_corners)[:, 0, 1:2]

    shear = Transform("shear", (1,), shear_grid, shear_backward, lambda: np.zeros(1))
    theta = np.random.default_rng(3).standard_normal((SIZE[0], 1))
    stnref.gradcheck(lambda t: shear.grid(t, SIZE), lambda d, t: (shear.backward(d, t, SIZE),),
                     [theta]).raise_if_failed()
    loc = stnref.nn.Sequential(stnref.nn.Flatten(), stnref.nn.Linear(20, 1))
    x = np.random.default_rng(4).standard_normal(SIZE)
    st = stnref.SpatialTransformer(loc, shear)
    np.testing.assert_allclose(st(x), x, atol=1e-12)
    loc[1].weight[...] = 0.1
    stnref.gradcheck_module(st, x).raise_if_failed()
