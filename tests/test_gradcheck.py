"""The finite-difference checker itself: it must pass right gradients and catch wrong ones."""

from __future__ import annotations

import numpy as np
import pytest

from stnref import gradcheck, grid_sample, grid_sample_backward
from stnref.gradcheck import GradcheckError


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
