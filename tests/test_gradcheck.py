"""The finite-difference checker itself: it must pass right gradients and catch wrong ones."""

from __future__ import annotations

import importlib
import re

import numpy as np
import pytest

from stnref import gradcheck, grid_sample, grid_sample_backward
from stnref.gradcheck import FD_ATOL, GradcheckError

gc = importlib.import_module("stnref.gradcheck")   # the module; stnref.gradcheck is the function


def _f(x, y):
    return np.sin(x) * y


def _vjp_right(u, x, y):
    return u * np.cos(x) * y, u * np.sin(x)


def _vjp_wrong_y(u, x, y):
    dx, dy = _vjp_right(u, x, y)
    return dx, 1.01 * dy  # 1% off: far above the tolerance


def _inputs(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n), rng.standard_normal(n)]


@pytest.mark.parametrize("n, method", [(6, "full"), (500, "directional")])
def test_passes_on_a_correct_vjp(n, method):
    res = gradcheck(_f, _vjp_right, _inputs(n), names=["x", "y"])
    assert res.ok
    assert [a.method for a in res.args] == [method, method]
    assert all(a.max_rel < 1e-6 for a in res.args)  # rounding ~ 1e-16 |L| / eps
    assert res.raise_if_failed() is res


@pytest.mark.parametrize("n", [6, 500])
def test_fails_on_a_wrong_vjp_and_names_the_argument(n):
    res = gradcheck(_f, _vjp_wrong_y, _inputs(n), names=["x", "y"])
    assert res.ok is False
    by_name = {a.name: a for a in res.args}
    assert by_name["x"].ok and not by_name["y"].ok
    with pytest.raises(GradcheckError, match=r"(?s)gradient check failed.*\ny .*FAIL at"):
        res.raise_if_failed()


def test_full_mode_reports_the_worst_entry():
    def vjp(u, x):
        g = u * np.cos(x)
        g[1, 2] += 0.5  # one wrong entry
        return (g,)

    x = np.random.default_rng(1).standard_normal((3, 4))
    res = gradcheck(np.sin, vjp, [x], names=["theta"], seed=3)
    (a,) = res.args
    assert (a.method, a.index, a.ok) == ("full", (1, 2), False)
    assert abs((a.analytic - a.numeric) - 0.5) < 1e-6
    assert "FAIL at (1, 2)" in str(res)


def test_full_max_switches_to_directional():
    x = np.linspace(0, 1, 10)
    res = gradcheck(np.sin, lambda u, x: (u * np.cos(x),), [x], full_max=5, n_directions=4)
    (a,) = res.args
    assert a.method == "directional" and a.ok and a.index[0] in range(4)


def test_directional_mode_catches_a_small_error_on_a_large_argument():
    x = np.random.default_rng(2).standard_normal(2000)
    res = gradcheck(np.sin, lambda u, x: (u * np.cos(x) * 1.001,), [x])
    assert not res.ok and res.args[0].method == "directional"


def test_report_formatting():
    res = gradcheck(_f, _vjp_wrong_y, _inputs(), names=["x", "y"])
    lines = str(res).splitlines()
    assert lines[0].split() == ["argument", "method", "max", "abs", "max", "rel", "result"]
    assert lines[1].startswith("x ") and lines[1].rstrip().endswith("ok")
    assert lines[2].startswith("y ") and "FAIL at (" in lines[2]
    assert "analytic" in lines[2] and "numeric" in lines[2]


def test_wrt_none_gradients_and_default_names():
    x, y = _inputs()
    res = gradcheck(_f, lambda u, x, y: (_vjp_right(u, x, y)[0], None), [x, y])
    assert [a.name for a in res.args] == ["x0"] and res.ok
    res = gradcheck(_f, _vjp_wrong_y, [x, y], wrt=[0])
    assert res.ok  # y, the wrong one, is not checked


def test_tuple_outputs_get_tuple_cotangents():
    def fn(x):
        return np.sin(x), x**2

    def vjp(us, x):
        u1, u2 = us
        return (u1 * np.cos(x) + 2 * x * u2,)

    assert gradcheck(fn, vjp, [np.linspace(-1, 1, 7)]).ok


def test_inputs_not_modified_and_bad_vjp_shapes_raise():
    x, y = _inputs()
    xc, yc = x.copy(), y.copy()
    gradcheck(_f, _vjp_right, [x, y])
    np.testing.assert_array_equal(x, xc)
    np.testing.assert_array_equal(y, yc)
    with pytest.raises(ValueError, match=r"vjp returned 1 gradients for 2 inputs"):
        gradcheck(_f, lambda u, x, y: (u,), [x, y])
    with pytest.raises(ValueError, match=r"gradient of y has shape \(3,\), expected \(6,\)"):
        gradcheck(_f, lambda u, x, y: (u, u[:3]), [x, y], names=["x", "y"])


def test_catches_a_wrong_sampler_gradient():
    # the sampler's dgrid with the sign of the x component flipped must fail on "grid"
    rng = np.random.default_rng(4)
    U, grid = rng.standard_normal((1, 2, 4, 4)), rng.uniform(-0.8, 0.8, (1, 2, 3, 2))

    def vjp(dV, U, grid):
        dU, dgrid = grid_sample_backward(dV, U, grid)
        return dU, dgrid * np.array([-1.0, 1.0])

    res = gradcheck(grid_sample, vjp, [U, grid], names=["U", "grid"])
    assert [a.ok for a in res.args] == [True, False]
    with pytest.raises(GradcheckError, match=r"grid .*FAIL"):
        res.raise_if_failed()


def _sin_vjp(u, x):
    return (u * np.cos(x),)


@pytest.mark.parametrize("args, exc, match", [
    ((None, None, [np.zeros(3)]), TypeError, r"gradcheck\(\): expected fn to be callable, got NoneType"),
    ((np.sin, "vjp", [np.zeros(3)]), TypeError, r"gradcheck\(\): expected vjp to be callable"),
    ((np.sin, _sin_vjp, np.zeros(3)), TypeError, r"expected inputs to be a list or tuple"),
    ((np.sin, _sin_vjp, "x"), TypeError, r"expected inputs to be a list or tuple"),
    ((np.sin, _sin_vjp, [np.zeros(3, complex)]), TypeError, r"expected inputs\[0\] to be a real"),
    ((np.sin, _sin_vjp, [None]), TypeError, r"expected inputs\[0\] to be a real"),
    ((np.sin, _sin_vjp, [[[1.0, 2.0], [3.0]]]), TypeError, r"expected inputs\[0\] to be a real"),
    ((np.sin, _sin_vjp, [np.arange(3)]), TypeError, r"inputs\[0\] \(x0\) has dtype int64; only float"),
])
def test_bad_arguments_are_named(args, exc, match):
    """Fuzzer regression: fn/vjp/inputs were used unchecked (complex inputs lost their imaginary part)."""
    with pytest.raises(exc, match=match):
        gradcheck(*args)


def test_integer_inputs_pass_through_undifferentiated():
    labels = np.array([2, 0, 1])
    x = np.random.default_rng(5).standard_normal(3)
    seen = []

    def fn(x, labels):
        seen.append(labels)
        return np.sin(x) * labels

    res = gradcheck(fn, lambda u, x, labels: (u * np.cos(x) * labels, None), [x, labels])
    assert res.ok and [a.name for a in res.args] == ["x0"]
    assert all(s is labels for s in seen)


@pytest.mark.parametrize("option, value, exc, match", [
    ("eps", 0.0, ValueError, r"gradcheck\(\): expected finite eps > 0, got 0.0"),
    ("eps", float("nan"), ValueError, r"expected finite eps > 0"),
    ("atol", -1e-6, ValueError, r"expected finite atol >= 0"),
    ("rtol", "1e-5", TypeError, r"expected rtol to be a real number, got str"),
    ("full_max", 1.5, TypeError, r"expected full_max to be an int"),
    ("n_directions", 0, ValueError, r"expected n_directions >= 1, got 0"),
    ("seed", -1, ValueError, r"expected seed >= 0, got -1"),
])
def test_bad_options_are_named(option, value, exc, match):
    with pytest.raises(exc, match=match):
        gradcheck(np.sin, _sin_vjp, [np.zeros(3)], **{option: value})


def test_report_columns_fit_long_names():
    res = gradcheck(_f, _vjp_right, _inputs(), names=["x", "0.loc.0.1.weight"])
    lines = str(res).splitlines()
    assert len({line.index(" full") for line in lines[1:]}) == 1   # the method column lines up
    assert lines[2].startswith("0.loc.0.1.weight full")


# ----------------------------------------------------------------------------- non-finite values

@pytest.mark.parametrize("n, method", [(3, "full"), (500, "directional")])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_analytic_gradient_fails_and_is_named(n, method, bad):
    """``err > tol`` is False for NaN: the old check called ``dy * nan`` ok."""
    def vjp(dy, x):
        g = 2 * dy
        g[n // 2] = bad
        return (g,)

    res = gradcheck(lambda x: 2 * x, vjp, [np.ones(n)], names=["x"])
    (a,) = res.args
    assert res.ok is False and a.method == method
    assert a.index == (n // 2,) and a.problem == f"analytic gradient is {bad}"
    assert f"FAIL at ({n // 2},): analytic gradient is {bad}" in str(res)
    assert a.max_abs == np.inf


def test_the_issue_examples_fail():
    assert not gradcheck(lambda x: 2 * x, lambda dy, x: dy * np.nan, [np.ones(3)]).ok
    res = gradcheck(lambda x: 2 * x * np.nan, lambda dy, x: 2 * dy, [np.ones(3)])
    assert not res.ok and "fn gives nan in output 0 at (0,) at the point itself" in str(res)


def quiet_sqrt(x):
    with np.errstate(invalid="ignore"):
        return np.sqrt(x)


@pytest.mark.parametrize("n, where", [(2, r"x\[0\] - eps"), (500, r"x [+-] eps \* direction \d")])
def test_a_forward_that_is_not_finite_at_a_step_fails_naming_the_side(n, where):
    x = np.full(n, 2.0)
    x[0] = 1e-9                                       # sqrt is NaN one step to the left

    res = gradcheck(quiet_sqrt, lambda u, x: (u / (2 * np.sqrt(x)),), [x], names=["x"])
    (a,) = res.args
    assert not res.ok and re.fullmatch("fn gives nan in output 0 at \\(0,\\) at " + where, a.problem), a.problem
    # a forward that overflows only at the right step
    res = gradcheck(lambda x: np.where(x > 1.0, np.inf, x), lambda u, x: (u,), [np.ones(2)], names=["x"])
    assert not res.ok and "fn gives inf in output 0 at (0,) at x[0] + eps" in str(res)


def test_a_forward_with_a_non_finite_output_fails_every_argument():
    res = gradcheck(lambda x, y: np.array([np.nan * x.sum(), y.sum()]),
                    lambda u, x, y: (np.full(3, u[0]), np.full(2, u[1])), [np.ones(3), np.ones(2)])
    assert [a.ok for a in res.args] == [False, False]
    assert all(a.problem == "fn gives nan in output 0 at (0,) at the point itself" for a in res.args)


def test_gradcheck_module_fails_a_backward_that_writes_nan_into_a_parameter_gradient():
    from stnref import gradcheck_module
    from stnref.nn import Linear

    class NaNWeight(Linear):
        def backward(self, dy):
            dx = super().backward(dy)
            self.grads["weight"][1, 0] = np.nan
            return dx

    res = gradcheck_module(NaNWeight(3, 2, rng=np.random.default_rng(0)), np.ones((2, 3)))
    assert {a.name: a.ok for a in res.args} == {"input": True, "weight": False, "bias": True}
    assert "weight       full                inf        inf  FAIL at (1, 0): analytic gradient is nan" \
        in str(res)


# ----------------------------------------------------------------------------- kinks

def relu(x):
    return np.maximum(x, 0.0)


RIGHT = lambda u, x: (u * (x >= 0),)                      # noqa: E731 -- PyTorch's choice at 0
LEFT = lambda u, x: (u * (x > 0),)                        # noqa: E731
AVERAGE = lambda u, x: (u * np.where(x == 0, 0.5, x > 0),)  # noqa: E731


@pytest.mark.parametrize("vjp, side", [(RIGHT, "right"), (LEFT, "left")])
def test_a_one_sided_derivative_at_a_kink_passes_and_the_kink_is_named(vjp, side):
    res = gradcheck(relu, vjp, [np.array([-1.0, 0.0, 2.0])], names=["x"])
    (a,) = res.args
    assert res.ok and a.kinks == 1 and a.index == (1,) and a.kinked == a.checked == 1
    assert a.left == 0.0 and a.right != 0.0
    assert a.analytic == (a.right if side == "right" else 0.0) and a.numeric == a.analytic
    line = str(res).splitlines()[1]
    assert f"ok; 1 entry at kinks, e.g. (1,): analytic {a.analytic + 0.0:.10g}, one-sided left 0, " \
           f"right {a.right:.10g} (1 output at a kink)" in line


@pytest.mark.parametrize("vjp", [AVERAGE, lambda u, x: (u * np.where(x == 0, 2.0, x > 0),),
                                 lambda u, x: (-u * (x >= 0),)], ids=["average", "twice", "negated"])
@pytest.mark.parametrize("n", [3, 500])
def test_a_wrong_value_at_a_kink_fails(vjp, n):
    """The mean of the two sides is the central difference, and still wrong at a kink."""
    x = np.zeros(n)
    x[0] = -1.0
    res = gradcheck(relu, vjp, [x], names=["x"])
    (a,) = res.args
    assert not res.ok and a.left is not None, str(res)
    assert ", a kink: analytic" in str(res) and "neither its left" in a.problem


def test_every_kinked_output_is_checked_one_by_one_on_a_large_argument():
    x = np.zeros(500)
    res = gradcheck(relu, RIGHT, [x])
    (a,) = res.args
    assert res.ok and a.method == "directional" and a.kinks == 3
    assert a.kinked == a.checked == 500


def test_beyond_kink_outputs_a_sample_is_checked_and_the_rest_bound_the_value(monkeypatch):
    monkeypatch.setattr(gc, "KINK_OUTPUTS", 10)
    x = np.zeros(500)
    res = gradcheck(relu, RIGHT, [x])
    (a,) = res.args
    assert res.ok and (a.kinked, a.checked) == (500, 10)
    assert "(500 outputs at a kink, 10 checked one by one)" in str(res)
    assert not gradcheck(relu, lambda u, x: (-u * (x >= 0),), [x]).ok


def test_curvature_is_not_a_kink():
    """sin(60 x): the one-sided differences differ by eps f'' ~ 4e-3, far above atol; doubling
    the step doubles that gap, so it is curvature."""
    x = np.linspace(0.1, 1.0, 7)
    res = gradcheck(lambda x: np.sin(60 * x), lambda u, x: (60 * u * np.cos(60 * x),), [x])
    assert res.ok and res.args[0].kinks == 0 and str(res).splitlines()[1].endswith("ok")


@pytest.mark.parametrize("offset, slope", [(0.3e-6, 1.0), (-0.3e-6, 0.0)])
def test_a_kink_closer_than_the_step_is_named_and_the_smooth_side_passes(offset, slope):
    res = gradcheck(relu, lambda u, x: (u * slope,), [np.array([offset])])
    assert res.ok and res.args[0].kinks == 1
    res = gradcheck(relu, lambda u, x: (u * (1 - slope),), [np.array([offset])])
    assert not res.ok


def test_a_sampler_at_pixel_centres_passes_with_kinks_and_a_wrong_backward_fails():
    """Identity grid, align_corners=True: every point on a knot in x and in y; each grid entry
    moves one coordinate, so each kinked output takes one side."""
    rng = np.random.default_rng(3)
    U = rng.standard_normal((1, 2, 3, 4))
    ys, xs = np.meshgrid(np.linspace(-1, 1, 3), np.linspace(-1, 1, 4), indexing="ij")
    grid = np.stack([xs, ys], -1)[None]

    def fn(grid):
        return grid_sample(U, grid, align_corners=True)

    def vjp(dV, grid, flip=1.0):
        return (grid_sample_backward(dV, U, grid, align_corners=True)[1] * np.array([flip, 1.0]),)

    res = gradcheck(fn, vjp, [grid], names=["grid"])
    assert res.ok and res.args[0].kinks > 0, str(res)
    assert not gradcheck(fn, lambda dV, g: vjp(dV, g, -1.0), [grid]).ok


def test_a_diagonal_step_across_a_pixel_corner_is_a_documented_failure():
    """Along a direction moving x and y at once, the per-coordinate right-sided derivative is
    neither one-sided difference along that direction: failed, named as a kink (Notes)."""
    U = np.random.default_rng(7).standard_normal((1, 1, 3, 3))
    grid = np.zeros((1, 1, 1, 2))                                # pixel (1, 1), align_corners=True

    def fn(grid):
        return grid_sample(U, grid, align_corners=True)

    def vjp(dV, grid):
        return (grid_sample_backward(dV, U, grid, align_corners=True)[1],)

    assert gradcheck(fn, vjp, [grid]).ok                         # entry by entry: one coordinate each
    res = gradcheck(fn, vjp, [grid], full_max=0, n_directions=8)
    assert not res.ok and "a kink" in str(res) and "neither its left" in res.args[0].problem


def test_a_fresh_spatial_transformer_passes_with_its_kinks_named():
    """Identity theta: every sample on a pixel centre (or one ulp below); the regression layer's
    entries each move one coordinate of every sample."""
    from stnref import SpatialTransformer, gradcheck_module
    from stnref.localisation import fc_localisation

    rng = np.random.default_rng(1)
    st = SpatialTransformer(fc_localisation((1, 8, 8), theta_size=6, hidden=(4, 4), rng=rng), "affine")
    x = rng.uniform(0, 1, (2, 1, 8, 8))
    res = gradcheck_module(st, x)
    assert res.ok, str(res)
    by_name = {a.name: a for a in res.args}
    assert by_name["loc.5.bias"].kinks == 6 and by_name["loc.5.weight"].kinks > 0
    assert all(a.kinks == 0 for name, a in by_name.items() if not name.startswith("loc.5"))
    assert len(str(res).splitlines()) == 1 + len(res.args)     # one line per argument


# ----------------------------------------------------------------------------- boundaries

def test_the_tolerance_is_inclusive_both_ways():
    """|analytic - numeric| == atol + rtol |numeric| passes; one ulp more fails."""
    const = lambda x: np.zeros(2)                            # noqa: E731 -- numeric exactly 0
    at = lambda g: gradcheck(const, lambda u, x: (np.full(1, g),), [np.zeros(1)],   # noqa: E731
                             atol=0.5, rtol=0.0).ok
    assert at(0.5) and at(-0.5)
    assert not at(np.nextafter(0.5, 1)) and not at(-np.nextafter(0.5, 1))
    # relative part: f = 2 x (numeric 2 u exactly), analytic 4 u: err 2|u| = rtol |numeric| at rtol 1
    double = lambda x: 2 * x                                 # noqa: E731
    assert gradcheck(double, lambda u, x: (4 * u,), [np.full(3, 0.5)], atol=0.0, rtol=1.0, eps=0.25).ok
    assert not gradcheck(double, lambda u, x: (4 * u,), [np.full(3, 0.5)], atol=0.0,
                         rtol=1 - 2.0**-10, eps=0.25).ok


def test_full_max_is_inclusive():
    x = np.linspace(0, 1, 10)
    assert gradcheck(np.sin, _sin_vjp, [x], full_max=10).args[0].method == "full"
    assert gradcheck(np.sin, _sin_vjp, [x], full_max=9).args[0].method == "directional"


def test_directions_are_unit_vectors():
    """A constant function, a gradient of 0.9 atol in one entry: along a unit direction the error
    is at most 0.9 atol (Cauchy-Schwarz), so it passes; an unnormalised direction would exceed atol."""
    n = 1000
    g = np.zeros(n)
    g[0] = 0.9 * FD_ATOL                     # the forward is constant: numeric 0, no relative slack
    res = gradcheck(lambda x: np.zeros(1), lambda u, x: (g,), [np.zeros(n)], n_directions=40)
    assert res.ok and res.args[0].method == "directional"
    assert res.args[0].max_abs <= 0.9 * FD_ATOL


def test_a_kinked_output_off_its_side_by_the_tolerance_is_the_boundary():
    """At a kink each output's contribution may be atol (plus rounding) off its side, no more."""
    x = np.array([0.0])

    def vjp_off(delta):
        return lambda u, x: (u * 1.0 + delta,)

    res = gradcheck(relu, vjp_off(0.0), [x], atol=1e-3, rtol=0.0)
    assert res.ok
    assert gradcheck(relu, vjp_off(0.9e-3), [x], atol=1e-3, rtol=0.0).ok
    assert not gradcheck(relu, vjp_off(1.1e-3), [x], atol=1e-3, rtol=0.0).ok


def test_agrees_is_the_inclusive_comparison_and_false_for_nan():
    agrees = gc._agrees
    assert agrees(1.5, 1.0, 0.5, 0.0) and not agrees(np.nextafter(1.5, 2), 1.0, 0.5, 0.0)
    assert agrees(3.0, 2.0, 0.0, 0.5) and not agrees(np.nextafter(3.0, 4), 2.0, 0.0, 0.5)
    assert agrees(1.25, 1.0, 0.0, 0.0, 0.25) and not agrees(1.25, 1.0, 0.0, 0.0, 0.125)
    assert not agrees(np.nan, 1.0, 1.0, 1.0) and not agrees(1.0, np.nan, 1.0, 1.0)
    np.testing.assert_array_equal(agrees(np.array([1.0, 2.0]), np.array([1.0, 1.0]), 0.5, 0.0),
                                  [True, False])


def test_at_a_kink_the_smooth_outputs_still_count():
    """Output 0 is a kink and takes its side; output 1, smooth, carries a 1 % error: a failure."""
    def fn(x):
        return np.array([max(x[0], 0.0), 3.0 * x[0]])

    def vjp(u, x, smooth=3.0):
        return (np.array([u[0] * (x[0] >= 0) + u[1] * smooth]),)

    assert gradcheck(fn, vjp, [np.zeros(1)]).ok
    res = gradcheck(fn, lambda u, x: vjp(u, x, 3.03), [np.zeros(1)])
    assert not res.ok and res.args[0].left is not None and res.args[0].problem == ""
