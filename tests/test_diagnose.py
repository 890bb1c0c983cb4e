"""``stnref.reference.diagnose`` tells every convention of a black-box sampler apart.

* stnref's own sampler in all 18 mode x padding x align_corners settings, each with and without
  its backward (36 black boxes), is identified exactly and matches PyTorch;
* ``scipy.ndimage.map_coordinates`` (orders 0, 1, 3; every mode) is identified as what it is;
* small NumPy fakes, each breaking one convention, are caught with that finding and no other;
* backwards that take the left-sided derivative or drop duplicate points are told apart;
* PyTorch's ``grid_sample`` is identified as matching (when torch is installed);
* a sampler that raises or returns the wrong shape is a finding, never a traceback.

The fakes are written here, independently of the hypotheses inside ``diagnose``.
"""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
from scipy import ndimage

from stnref import grid_sample, grid_sample_backward
from stnref.app import cli
from stnref.reference import Diagnosis, diagnose
from stnref.reference.diagnosis import TORCH_NON_FINITE, load_callable

MODES = ("nearest", "bilinear", "bicubic")
PADDINGS = ("zeros", "border", "reflection")
SETTINGS = [(m, p, ac) for m in MODES for p in PADDINGS for ac in (False, True)]
PADDING_FOUND = {"zeros": "zeros", "border": "border",
                 "reflection": {True: "reflection about centres", False: "reflection about edges"}}


def topics(d):
    """The property each difference is about: "kernel", "padding", "values differ ..."."""
    return {line.split(":")[0] for line in d.differences}


def stnref_box(mode, padding_mode, align_corners):
    def fn(U, grid):
        return grid_sample(U, grid, mode, padding_mode, align_corners)

    def backward(dV, U, grid):
        return grid_sample_backward(dV, U, grid, mode, padding_mode, align_corners)

    return fn, backward


# ----------------------------------------------------------------------------- stnref itself

@pytest.mark.parametrize("with_backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("mode, padding_mode, align_corners", SETTINGS,
                         ids=[f"{m}-{p}-{'ac' if ac else 'noac'}" for m, p, ac in SETTINGS])
def test_stnref_sampler_is_identified_exactly(mode, padding_mode, align_corners, with_backward):
    fn, backward = stnref_box(mode, padding_mode, align_corners)
    d = diagnose(fn, backward if with_backward else None)
    assert d.matches_pytorch, d.report()
    assert d.differences == []
    assert d.closest == {"mode": mode, "padding_mode": padding_mode, "align_corners": align_corners}
    assert d.kernel == mode and d.axis_order == "xy" and d.precision == "float64"
    assert d.coordinates == f"align_corners={align_corners}"
    expected = PADDING_FOUND[padding_mode]
    assert d.padding == (expected[align_corners] if isinstance(expected, dict) else expected)
    assert d.cubic_a == (-0.75 if mode == "bicubic" else None)
    assert d.nearest_rounding == ("half to even" if mode == "nearest" else "n/a")
    assert d.non_finite == {"nan": "NaN", "+inf": "NaN", "-inf": "NaN"}  # conventions §5.2
    if with_backward:
        knots = {"nearest": "zero (nearest)", "bilinear": "right-sided"}.get(mode, "n/a (Keys is C1 at knots)")
        clipped = mode == "bilinear" and padding_mode != "zeros"
        assert d.backward["knots"] == knots
        assert d.backward["clip borders"] == ("zero at and beyond the border" if clipped else "n/a")
        assert d.backward["duplicates"] == "accumulate"
        assert d.backward["gradient of fn"].startswith("yes")
        assert d.backward["matches_pytorch"] is True
    else:
        assert d.backward is None


# ----------------------------------------------------------------------------- scipy.ndimage

def scipy_box(order, mode):
    """map_coordinates with the grid read as pixel coordinates (x, y) -> (row, col) = (y, x)."""
    def fn(U, grid):
        return np.stack([np.stack([ndimage.map_coordinates(plane, [g[..., 1], g[..., 0]], order=order, mode=mode)
                                   for plane in image]) for image, g in zip(U, grid)])
    return fn


SCIPY_KERNELS = {0: "nearest", 1: "bilinear", 3: "cubic B-spline"}
# scipy mode -> what diagnose should call it (pictures in scipy's documentation)
SCIPY_MODES = {
    "constant": "constant beyond the edge pixels",  # 0 outside [0, size-1], no blending
    "grid-constant": "zeros",                       # | a b c d | with 0 taps outside
    "nearest": "border",
    "mirror": "reflection about centres",           # d c b | a b c d | c b a
    "reflect": "reflection about edges",            # d c b a | a b c d | d c b a
    "grid-wrap": "wrap",
    "wrap": "wrap with period size - 1",            # first and last pixel coincide
}
# Where scipy itself departs from the behaviour it is identified with (real findings):
SCIPY_QUIRKS = {
    (0, "mirror"): "half-integers",  # order 0 rounds ties beyond the border its own way
    (1, "nearest"): "far outside",   # 8e30 pixels reads the first pixel, not the last
}


@pytest.mark.parametrize("order", sorted(SCIPY_KERNELS))
@pytest.mark.parametrize("mode", sorted(SCIPY_MODES))
def test_scipy_map_coordinates_is_identified(order, mode):
    d = diagnose(scipy_box(order, mode))
    assert d.kernel == SCIPY_KERNELS[order]
    assert d.coordinates == "pixel coordinates, i = x" and d.axis_order == "xy"
    assert d.padding == SCIPY_MODES[mode] and d.fill == 0.0
    assert d.precision == "float64"
    if order == 0:   # scipy pads the coordinate, then rounds half up: only "grid-constant" lets a
        # negative tie reach the rounding, so elsewhere half away from zero reads the same pixels
        alternatives = d.nearest_rounding.split(" or ")
        assert "half up" in alternatives and set(alternatives) <= {"half up", "half away from zero"}
        assert (mode == "grid-constant") == (alternatives == ["half up"]) or mode == "mirror"
    else:
        assert d.nearest_rounding == "n/a"
    assert not d.matches_pytorch
    expected = {"coordinates"}
    expected |= {"nearest ties"} if order == 0 else set()
    expected |= {"kernel"} if order == 3 else set()
    expected |= {"padding"} if mode in ("constant", "grid-wrap", "wrap") else set()
    found = topics(d)
    quirk = SCIPY_QUIRKS.get((order, mode))
    if quirk:
        assert any(quirk in line for line in d.differences if line.startswith("values differ"))
        found = {t for t in found if not t.startswith("values differ")}
    assert found == expected, d.differences


# ----------------------------------------------------------------------------- fakes

def unnormalise(g, n, align_corners):
    return (g + 1) / 2 * (n - 1) if align_corners else ((g + 1) * n - 1) / 2


def keys(d, a):
    d = np.abs(d)
    return np.where(d <= 1, (a + 2) * d**3 - (a + 3) * d**2 + 1,
                    np.where(d < 2, a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a, 0.0))


def mirror(m, s, low, span):
    """Integer tap ``m`` folded into ``[low, low + span]`` (period ``2 span``), as an index."""
    e = np.mod(np.abs(m - low), 2 * span)
    return np.clip(np.where(e <= span, low + e, low + 2 * span - e), 0, s - 1)


TAP_READS = {  # padding -> integer tap m of an axis of s pixels -> pixel index, or -1 (fill)
    "zeros": lambda m, s: np.where((m >= 0) & (m < s), m, -1),
    "border": lambda m, s: np.clip(m, 0, s - 1),
    "wrap": lambda m, s: np.mod(m, s),
    "reflect edges": lambda m, s: mirror(m, s, -0.5, s),
    "reflect centres": lambda m, s: mirror(m, s, 0.0, s - 1),
}


def fake(U, grid, *, kernel="bilinear", a=-0.75, rounding=np.rint, padding="zeros", fill=0.0,
         clamp=False, align_corners=False, step=None, band=None, weights32=False):
    """A small sampler of its own: separable taps, each read through ``TAP_READS[padding]``;
    ``clamp`` clips the coordinate to the pixels first (as ONNX's reference bicubic does);
    ``step`` rounds positions to its multiples (half to even) first; ``band``: points that far or
    farther outside ``[0, size - 1]`` read ``fill``."""
    N, C, H, W = U.shape
    out = np.empty((N, C) + grid.shape[1:3])
    for n in range(N):
        taps, outside = [], np.zeros(grid.shape[1] * grid.shape[2], bool)
        for i, size in ((unnormalise(grid[n, ..., 0].ravel(), W, align_corners), W),
                        (unnormalise(grid[n, ..., 1].ravel(), H, align_corners), H)):
            if band is not None:
                outside |= (i <= -band) | (i >= size - 1 + band)
            i = np.clip(i, 0, size - 1) if clamp else i
            i = np.rint(i / step) * step if step else i
            if kernel == "nearest":
                m, w = rounding(i)[:, None], np.ones((len(i), 1))
            else:
                m = np.floor(i)[:, None] + ([0, 1] if kernel == "bilinear" else [-1, 0, 1, 2])
                w = np.maximum(0, 1 - np.abs(i[:, None] - m)) if kernel == "bilinear" else keys(i[:, None] - m, a)
            w = w.astype(np.float32).astype(np.float64) if weights32 else w
            taps.append((np.nan_to_num(TAP_READS[padding](m, size), nan=-1).astype(int), w))
        (cx, wx), (cy, wy) = taps
        vals = U[n][:, np.maximum(cy, 0)[:, :, None], np.maximum(cx, 0)[:, None, :]]  # (C, P, Ty, Tx)
        vals = np.where((cy < 0)[:, :, None] | (cx < 0)[:, None, :], fill, vals)
        V = np.where(outside, fill, np.einsum("cpyx,py,px->cp", vals, wy, wx))
        out[n] = V.reshape((C,) + grid.shape[1:3])
    return out


def nan_to_zero(U, grid):
    V = grid_sample(U, grid)
    return np.where(np.isnan(grid[..., 0])[:, None], 0.0, V)


def pixel_coordinates(U, grid):
    H, W = U.shape[2:]
    return grid_sample(U, np.stack([(2 * grid[..., 0] + 1) / W - 1, (2 * grid[..., 1] + 1) / H - 1], -1),
                       "bicubic")


# name -> (fake, the one difference it must produce, the property it shows in)
FAKES = {
    "swapped axes": (lambda U, g: grid_sample(U, g[..., ::-1]), "axis order", ("axis_order", "yx")),
    "A = -0.5": (lambda U, g: fake(U, g, kernel="bicubic", a=-0.5, padding="border"), "kernel",
                 ("cubic_a", -0.5)),
    "half-up ties": (lambda U, g: fake(U, g, kernel="nearest", rounding=lambda i: np.floor(i + 0.5)),
                     "nearest ties", ("nearest_rounding", "half up")),
    "clamped bicubic border": (
        lambda U, g: fake(U, g, kernel="bicubic", padding="border", clamp=True, align_corners=True),
        "padding", ("padded", "coordinate")),
    "float32 arithmetic": (
        lambda U, g: grid_sample(U.astype(np.float32), g.astype(np.float32), "bilinear", "border",
                                 True).astype(np.float64), "precision", ("precision", "float32")),
    "pixel coordinates": (pixel_coordinates, "coordinates", ("coordinates", "pixel coordinates, i = x")),
    "wrap": (lambda U, g: fake(U, g, padding="wrap"), "padding", ("padding", "wrap")),
    "constant 0.5": (lambda U, g: fake(U, g, fill=0.5), "padding", ("fill", 0.5)),
    "NaN -> 0": (nan_to_zero, None, ("non_finite", {"nan": "0", "+inf": "NaN", "-inf": "NaN"})),
    "nearest rounding down": (lambda U, g: fake(U, g, kernel="nearest", rounding=np.floor),
                              "nearest rounding", ("nearest_rounding", "down (floor)")),
}
# what each fake does apart from its one broken convention
BASE = {"kernel": "bilinear", "axis_order": "xy", "coordinates": "align_corners=False", "padding": "zeros",
        "precision": "float64", "nearest_rounding": "n/a"}
FAKE_BASE = {
    "A = -0.5": {"kernel": "bicubic", "padding": "border"},
    "half-up ties": {"kernel": "nearest", "nearest_rounding": "half up"},
    "nearest rounding down": {"kernel": "nearest", "nearest_rounding": "down (floor)"},
    "clamped bicubic border": {"kernel": "bicubic", "padding": "border", "coordinates": "align_corners=True"},
    "float32 arithmetic": {"padding": "border", "coordinates": "align_corners=True", "precision": "float32"},
    "pixel coordinates": {"kernel": "bicubic", "coordinates": "pixel coordinates, i = x"},
    "wrap": {"padding": "wrap"},
    "constant 0.5": {"padding": "constant"},
    "swapped axes": {"axis_order": "yx"},
}


@pytest.mark.parametrize("name", list(FAKES))
def test_fake_breaking_one_convention_is_caught_alone(name):
    fn, topic, (attribute, value) = FAKES[name]
    d = diagnose(fn)
    assert getattr(d, attribute) == value, d.report()
    assert topics(d) == ({topic} if topic else set()), d.differences
    assert d.matches_pytorch == (topic is None)
    for key, expected in {**BASE, **FAKE_BASE.get(name, {})}.items():
        assert getattr(d, key) == expected, (key, d.report())


def test_coordinate_clamped_bicubic_is_named_against_the_taps_rule():
    d = diagnose(FAKES["clamped bicubic border"][0])
    assert any("pads the coordinate before taking the taps" in line and "§4.3" in line
               for line in d.differences)
    assert d.closest == {"mode": "bicubic", "padding_mode": "border", "align_corners": True}


def test_unknown_kernel_is_none_of_these_and_a_difference():
    def cosine(U, grid):  # interpolating, but neither tent nor Keys: w = (1 - cos(pi t))/2
        H, W = U.shape[2:]  # (smoothstep 3t^2 - 2t^3 would be Keys with A = 0, and found as such)
        ix, iy = unnormalise(grid[..., 0], W, False), unnormalise(grid[..., 1], H, False)
        x0, y0 = np.floor(ix), np.floor(iy)
        sx, sy = (1 - np.cos(np.pi * (ix - x0))) / 2, (1 - np.cos(np.pi * (iy - y0))) / 2
        g = np.stack([(2 * (x0 + sx) + 1) / W - 1, (2 * (y0 + sy) + 1) / H - 1], -1)
        return grid_sample(U, g, "bilinear", "border")

    d = diagnose(cosine)
    assert d.kernel == "none of these" and d.padding == "border"
    assert d.coordinates == "align_corners=False" and "kernel" in topics(d)
    assert not d.matches_pytorch
    # ties belong to a nearest kernel: no "nearest ties: unknown ... DIFFERS" row for this one
    assert d.nearest_rounding == "n/a" and "nearest ties" not in d.report()


@pytest.mark.parametrize("align_corners, mode, padding", [(True, "nearest", "border"),
                                                           (False, "mirror", "reflection about centres")])
def test_a_b_spline_that_does_not_interpolate_is_identified(align_corners, mode, padding):
    """Its knots do not read their own pixels; ramp images tell the coordinates."""
    def fn(U, grid):
        H, W = U.shape[2:]
        ix, iy = unnormalise(grid[..., 0], W, align_corners), unnormalise(grid[..., 1], H, align_corners)
        return np.stack([np.stack([ndimage.map_coordinates(plane, [y, x], order=3, mode=mode,
                                                           prefilter=False) for plane in image])
                         for image, x, y in zip(U, ix, iy)])

    d = diagnose(fn)
    assert d.kernel == "cubic B-spline (not interpolating)"
    assert d.coordinates == f"align_corners={align_corners}" and d.axis_order == "xy"
    # about pixel centres a symmetric kernel reads the same values whether the coordinate or
    # each tap is mirrored; clipped (border), the two differ
    assert (d.padding, d.padded) == (padding, "taps" if mode == "nearest" else "taps or coordinate")
    assert "kernel" in topics(d) and not d.matches_pytorch


def test_a_sampler_that_is_not_a_function_of_its_inputs_stops_the_diagnosis():
    rng = np.random.default_rng(0)
    d = diagnose(lambda U, g: rng.standard_normal((*U.shape[:2], *g.shape[1:3])))
    assert d.differences == [d.differences[0]] and "not deterministic" in d.differences[0]
    assert (d.kernel, d.coordinates, d.padding) == ("unknown", "unknown", "unknown")
    assert not d.matches_pytorch


def test_a_sampler_that_differs_only_in_the_last_bits_between_calls_is_still_identified():
    """Multi-threaded reductions: two calls on the same input differ by an ulp, not by what tells
    conventions apart (TOL_ID); a note, and the diagnosis goes on."""
    rng = np.random.default_rng(0)

    def jittery(U, grid):
        V = grid_sample(U, grid, "bilinear", "zeros", False)
        return V * (1 + rng.choice([-1.0, 0.0, 1.0], V.shape) * 2.0**-52)

    d = diagnose(jittery)
    assert d.closest == {"mode": "bilinear", "padding_mode": "zeros", "align_corners": False}, d.report()
    assert d.differences == [] and d.matches_pytorch
    notes = [n for n in d.notes if n.startswith("not bitwise deterministic")]
    assert len(notes) == 1 and "two calls on the same input differ by up to " in notes[0], d.notes
    assert 0 < float(notes[0].rsplit(" ", 1)[1]) < 1e-14


def test_another_unnormalisation_is_estimated_as_scale_and_offset():
    def shifted(U, grid):  # i = (x + 1)/2 size - 0.3: neither align_corners nor pixel coordinates
        H, W = U.shape[2:]
        ix, iy = (grid[..., 0] + 1) / 2 * W - 0.3, (grid[..., 1] + 1) / 2 * H - 0.3
        return grid_sample(U, np.stack([(2 * ix + 1) / W - 1, (2 * iy + 1) / H - 1], -1), "bilinear", "border")

    d = diagnose(shifted)
    assert d.coordinates.startswith("neither (estimated)")
    assert "a = 0.5 size, b = 0.5 size - 0.3" in d.coordinates
    assert (d.kernel, d.padding, d.axis_order) == ("bilinear", "border", "xy")
    assert topics(d) == {"coordinates"}


# ----------------------------------------------------------------------------- backward

def bilinear_backward(dV, U, grid, left=False, accumulate=True):
    """Backward of bilinear, zeros padding, align_corners=False.  ``left``: the cell left of an
    integer coordinate (left-sided derivative); ``accumulate=False``: ``dU[idx] += w`` (fancy
    indexing keeps one of several equal indices)."""
    N, C, H, W = U.shape
    dU, dgrid = np.zeros_like(U), np.zeros_like(grid)
    for n in range(N):
        ix, iy = unnormalise(grid[n, ..., 0].ravel(), W, False), unnormalise(grid[n, ..., 1].ravel(), H, False)
        left_x, left_y = (left, left) if isinstance(left, bool) else left
        x0 = np.ceil(ix) - 1 if left_x else np.floor(ix)
        y0 = np.ceil(iy) - 1 if left_y else np.floor(iy)
        tx, ty = ix - x0, iy - y0
        g = dV[n].reshape(C, -1)
        v = {}
        for ox in (0, 1):
            for oy in (0, 1):
                mx, my = (x0 + ox).astype(int), (y0 + oy).astype(int)
                ok = (mx >= 0) & (mx < W) & (my >= 0) & (my < H)
                v[ox, oy] = np.where(ok, U[n][:, np.clip(my, 0, H - 1), np.clip(mx, 0, W - 1)], 0.0)
                c, p = np.nonzero(np.broadcast_to(ok, g.shape))
                w = ((tx if ox else 1 - tx) * (ty if oy else 1 - ty) * g)[c, p]
                if accumulate:
                    np.add.at(dU[n], (c, my[p], mx[p]), w)
                else:
                    dU[n][c, my[p], mx[p]] += w
        slope_x = (v[1, 0] - v[0, 0]) * (1 - ty) + (v[1, 1] - v[0, 1]) * ty
        slope_y = (v[0, 1] - v[0, 0]) * (1 - tx) + (v[1, 1] - v[1, 0]) * tx
        dgrid[n, ..., 0] = (g * slope_x).sum(0).reshape(grid.shape[1:3]) * W / 2
        dgrid[n, ..., 1] = (g * slope_y).sum(0).reshape(grid.shape[1:3]) * H / 2
    return dU, dgrid


@pytest.mark.parametrize("name, backward, knots, duplicates", [
    ("stnref", stnref_box("bilinear", "zeros", False)[1], "right-sided", "accumulate"),
    ("fake, right-sided", bilinear_backward, "right-sided", "accumulate"),
    ("fake, left-sided", lambda *a: bilinear_backward(*a, left=True), "left-sided", "accumulate"),
    ("fake, indexed +=", lambda *a: bilinear_backward(*a, accumulate=False), "right-sided", "keep one of them"),
])
def test_backwards_are_told_apart(name, backward, knots, duplicates):
    d = diagnose(stnref_box("bilinear", "zeros", False)[0], backward)
    assert d.backward["knots"] == knots
    assert d.backward["duplicates"] == duplicates
    assert d.backward["gradient of fn"].startswith("yes")  # right away from kinks in every case
    ok = knots == "right-sided" and duplicates == "accumulate"
    assert d.matches_pytorch == ok, d.differences
    assert d.backward["matches_pytorch"] == ok                 # kinks included
    sections = {"left-sided": "§4.1", "keep one of them": "§6.2"}
    for value in (knots, duplicates):
        if value in sections:
            assert any(sections[value] in line for line in d.differences)


def test_backward_of_another_function_is_not_its_gradient():
    fn, _ = stnref_box("bilinear", "border", True)
    d = diagnose(fn, stnref_box("bilinear", "border", False)[1])
    assert d.backward["gradient of fn"].startswith("no")
    assert any("not the gradient of fn" in line for line in d.differences)


# ----------------------------------------------------------------------------- PyTorch

def torch_box(torch, **setting):
    F = torch.nn.functional

    def fn(U, grid):
        with torch.no_grad():
            return F.grid_sample(torch.from_numpy(U), torch.from_numpy(grid), **setting).numpy()

    def backward(dV, U, grid):
        U_t, g = torch.from_numpy(U).requires_grad_(), torch.from_numpy(grid).requires_grad_()
        dU, dgrid = torch.autograd.grad(F.grid_sample(U_t, g, **setting), (U_t, g), torch.from_numpy(dV))
        return dU.numpy(), dgrid.numpy()

    return fn, backward


@pytest.mark.parametrize("setting", [("bilinear", "zeros", False), ("bicubic", "reflection", True)],
                         ids=["bilinear-zeros-noac", "bicubic-reflection-ac"])
def test_pytorch_grid_sample_matches(setting):
    torch = pytest.importorskip("torch")
    mode, padding_mode, align_corners = setting
    d = diagnose(*torch_box(torch, mode=mode, padding_mode=padding_mode, align_corners=align_corners))
    assert d.matches_pytorch, d.report()
    assert d.closest == {"mode": mode, "padding_mode": padding_mode, "align_corners": align_corners}
    assert d.backward["matches_pytorch"] is True


def test_pytorch_non_finite_table_is_what_torch_does():
    """TORCH_NON_FINITE (stated in reports for PyTorch 2.13) against the installed torch."""
    torch = pytest.importorskip("torch")
    for mode, padding_mode, align_corners in SETTINGS:
        fn, _ = torch_box(torch, mode=mode, padding_mode=padding_mode, align_corners=align_corners)
        found = diagnose(fn).non_finite
        assert tuple(found.values()) == TORCH_NON_FINITE[mode, padding_mode], (mode, padding_mode)


# ----------------------------------------------------------------------------- errors

def test_not_callable_is_a_type_error_naming_the_argument():
    with pytest.raises(TypeError, match=r"expected fn to be a callable fn\(U, grid\) -> V, got int 42"):
        diagnose(42)
    with pytest.raises(TypeError, match="expected backward to be a callable"):
        diagnose(grid_sample, backward="grad")


def test_wrong_shape_is_a_finding_not_a_traceback():
    d = diagnose(lambda U, grid: grid_sample(U, grid)[..., :1])
    assert isinstance(d, Diagnosis) and not d.matches_pytorch
    assert d.kernel == "unknown" and d.calls == 1
    assert "returned V of shape (2, 3, 3, 1), expected (2, 3, 3, 4)" in d.differences[0]
    assert "verdict:" in d.report() and d.report().endswith("\n(1 call of fn)")


def test_the_report_counts_calls_of_fn_and_of_backward_only_when_given():
    fn, backward = stnref_box("bilinear", "zeros", False)
    alone, both = diagnose(fn), diagnose(fn, backward)
    assert alone.report().splitlines()[-1] == f"({alone.calls} calls of fn)"
    assert both.report().splitlines()[-1] == f"({both.calls} calls of fn and backward)"
    assert both.calls > alone.calls > 1


def test_none_and_a_lone_array_are_named_as_such():
    d = diagnose(lambda U, grid: None)
    assert "returned None, expected V of shape (2, 3, 3, 4)" in d.differences[0]
    d = diagnose(grid_sample, lambda dV, U, grid: grid_sample_backward(dV, U, grid)[0])
    assert any("backward returned ndarray, expected (dU, dgrid)" in line for line in d.differences)
    assert not any("backward backward" in line for line in d.differences)
    d = diagnose(grid_sample, lambda dV, U, grid: (None, None))
    assert any("backward returned None, expected dU" in line for line in d.differences)


@pytest.mark.parametrize("failure", [ValueError("no"), MemoryError(), ZeroDivisionError()],
                         ids=["ValueError", "MemoryError", "ZeroDivisionError"])
def test_a_sampler_that_always_raises_is_a_finding(failure):
    def broken(U, grid):
        raise failure

    d = diagnose(broken)
    assert not d.matches_pytorch and type(failure).__name__ in d.differences[0]


@pytest.mark.parametrize("code", [0, 3, "stop"])
def test_a_sampler_that_calls_sys_exit_is_a_finding(code):
    """sys.exit(0) inside the black box ended ``stnref reference diagnose`` with status 0
    ("matches PyTorch") and no output."""
    def exits(U, grid):
        sys.exit(code)

    d = diagnose(exits)
    assert not d.matches_pytorch and f"raised SystemExit: {code};" in d.differences[0]
    d = diagnose(grid_sample, lambda dV, U, grid: sys.exit(0))
    assert not d.matches_pytorch
    assert any("backward raised SystemExit: 0" in line for line in d.differences), d.differences


def test_an_output_whose_conversion_exits_is_a_finding():
    class Exits:
        def __array__(self, dtype=None, copy=None):
            raise SystemExit(0)

    d = diagnose(lambda U, grid: Exits())
    assert not d.matches_pytorch and "not an array (SystemExit: 0)" in d.differences[0]


def test_keyboard_interrupt_still_stops_the_diagnosis():
    def interrupted(U, grid):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        diagnose(interrupted)


def test_sys_exit_through_the_cli_is_exit_1_with_the_finding(tmp_path, monkeypatch, capsys):
    (tmp_path / "exiting_sampler_mod.py").write_text("import sys\ndef fn(U, grid):\n    sys.exit(0)\n")
    (tmp_path / "exiting_import_mod.py").write_text("import sys\nsys.exit(0)\n")
    monkeypatch.chdir(tmp_path)
    for name in ("exiting_sampler_mod", "exiting_import_mod"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert cli.main(["reference", "diagnose", "exiting_sampler_mod:fn"]) == 1
    out, err = capsys.readouterr()
    assert "raised SystemExit: 0" in out and "verdict:" in out and err == ""
    assert cli.main(["reference", "diagnose", "exiting_import_mod:fn"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stnref: error: load_callable(): cannot import module 'exiting_import_mod'")
    assert "SystemExit: 0" in err and err.count("\n") == 1


def test_one_failing_probe_does_not_end_the_run():
    def no_far_points(U, grid):  # e.g. a kernel that casts to int32 before clamping
        if np.abs(grid[np.isfinite(grid)]).max() > 1e3:
            raise OverflowError("index out of range")
        return grid_sample(U, grid, "bilinear", "border")

    d = diagnose(no_far_points)
    assert (d.kernel, d.padding, d.coordinates) == ("bilinear", "border", "align_corners=False")
    assert topics(d) == {"far outside"}
    assert "OverflowError" in d.differences[0] and "§5.1" in d.differences[0]
    assert d.non_finite == {"nan": "NaN", "+inf": "NaN", "-inf": "NaN"}  # later probes still ran


def test_returning_a_tensor_like_or_integers_is_handled():
    d = diagnose(lambda U, grid: grid_sample(U, grid).tolist())   # nested lists: fine
    assert d.matches_pytorch
    d = diagnose(lambda U, grid: np.rint(grid_sample(U, grid)).astype(np.int64))
    assert not d.matches_pytorch and "expected a float array" in d.differences[0]


# ----------------------------------------------------------------------------- output

def test_report_and_json():
    fn, backward = stnref_box("bicubic", "border", True)
    d = diagnose(fn, backward)
    data = json.loads(json.dumps(d.to_json()))
    for key in ("kernel", "cubic_a", "coordinates", "axis_order", "padding", "nearest_rounding", "precision",
                "non_finite", "matches_pytorch", "differences", "evidence", "closest", "verdict", "backward"):
        assert key in data
    assert data["cubic_a"] == -0.75 and data["coordinates"] == "align_corners=True"
    assert data["verdict"] == ("matches PyTorch `grid_sample(mode='bicubic', padding_mode='border', "
                               "align_corners=True)` on finite inputs (forward and backward)")
    text = d.report()
    assert text.splitlines()[0].split() == ["property", "found", "PyTorch"]
    assert "verdict: matches PyTorch" in text and "evidence:" in text and str(d) == text


def test_differences_cite_sections_and_the_diagnosis_is_deterministic():
    first = diagnose(FAKES["half-up ties"][0]).to_json()
    assert first == diagnose(FAKES["half-up ties"][0]).to_json()
    for fn, *_ in FAKES.values():
        for line in diagnose(fn).differences:
            assert "docs/conventions.md §" in line, line


def test_load_callable():
    assert load_callable("stnref:grid_sample") is grid_sample
    assert load_callable("stnref.reference.diagnosis:Diagnosis.to_json") is Diagnosis.to_json
    for spec, message in [("stnref.grid_sample", "expected 'MODULE:FUNCTION'"), (":f", "expected"),
                          ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
                          ("stnref:no_such_function", "has no attribute 'no_such_function'"),
                          ("stnref.sampling:CUBIC_A", "is a float, not a callable"), (42, "expected")]:
        with pytest.raises(ValueError, match=message):
            load_callable(spec)


def test_help_states_the_exit_status_and_the_cli_keeps_it(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["reference", "diagnose", "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert ("exit status: 0 if the sampler (and its backward, if given) matches a PyTorch grid_sample "
            "setting on finite inputs; 1 if it differs") in text
    assert "2 if MODULE:FUNCTION cannot be loaded" in text and "130 if interrupted" in text
    (tmp_path / "half_up_sampler_mod.py").write_text(
        "import numpy as np\nfrom stnref import grid_sample\n"
        "def same(U, grid):\n    return grid_sample(U, grid)\n"
        "def shifted(U, grid):\n    return grid_sample(U, grid + 0.01)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "half_up_sampler_mod", raising=False)
    assert cli.main(["reference", "diagnose", "half_up_sampler_mod:same"]) == 0
    assert cli.main(["reference", "diagnose", "half_up_sampler_mod:shifted"]) == 1
    assert cli.main(["reference", "diagnose", "half_up_sampler_mod:missing"]) == 2


# ----------------------------------------------------------------------------- settings PyTorch lacks

HALF_AWAY = lambda i: np.copysign(np.floor(np.abs(i) + 0.5), i)   # noqa: E731 (JAX's lax.round)


@pytest.mark.parametrize("kernel", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("padding, fill, found", [("zeros", 0.7, "constant"), ("wrap", 0.0, "wrap")])
def test_a_constant_fill_and_wrap_are_found_for_every_kernel(kernel, padding, fill, found):
    d = diagnose(lambda U, g: fake(U, g, kernel=kernel, padding=padding, fill=fill))
    assert (d.kernel, d.padding, d.fill) == (kernel, found, fill), d.report()
    assert "padding" in topics(d) and not d.matches_pytorch and "matches PyTorch" not in d.verdict


@pytest.mark.parametrize("a", [-0.5, -0.6, -1.0])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflect edges"])
def test_keys_a_is_estimated_with_any_padding(a, padding):
    d = diagnose(lambda U, g: fake(U, g, kernel="bicubic", a=a, padding=padding))
    assert d.kernel == "bicubic" and d.cubic_a == a, d.report()
    assert "kernel" in topics(d) and not d.matches_pytorch
    assert any(f"A = {a:g}; PyTorch uses A = -0.75" in line for line in d.differences)


@pytest.mark.parametrize("padding, name", [("reflect edges", "reflection about edges"),
                                           ("reflect centres", "reflection about centres")])
def test_a_nearest_that_rounds_half_away_then_pads_the_index_is_named(padding, name):
    """JAX's order 0: lax.round, then the index fixer (the issue's wrong "half up, coordinate")."""
    d = diagnose(lambda U, g: fake(U, g, kernel="nearest", rounding=HALF_AWAY, padding=padding))
    assert (d.padding, d.nearest_rounding, d.padded) == (name, "half away from zero", "taps"), d.report()
    assert {"padding", "nearest ties"} <= topics(d)
    assert not any("negative ties are not observable" in n for n in d.notes)


def test_positions_rounded_to_a_step_are_found_for_any_kernel():
    for kernel in ("bilinear", "bicubic"):
        d = diagnose(lambda U, g: fake(U, g, kernel=kernel, step=1 / 32))
        assert d.kernel == kernel and d.positions.startswith("rounded to multiples of 1/32 px")
        assert d.precision == "float64" and "positions" in topics(d), d.report()
    d = diagnose(lambda U, g: fake(U, g, step=1 / 256))
    assert d.positions.startswith("rounded to multiples of 1/256 px")
    assert diagnose(grid_sample).positions == "exact"
    assert diagnose(lambda U, g: grid_sample(U, g, "nearest")).positions == "n/a"


@pytest.mark.parametrize("band", [0.05, 0.3])
def test_an_output_mask_band_is_measured(band):
    d = diagnose(lambda U, g: fake(U, g, padding="border", band=band))
    assert d.output_mask == f"points {band:g} px or more outside [0, size - 1] read 0", d.report()
    assert d.padding in ("border", "border or reflection about edges") and "output mask" in topics(d)
    assert d.kernel == "bilinear" and not d.matches_pytorch


def test_no_band_is_invented_for_a_cut_at_the_edge_pixels():
    d = diagnose(scipy_box(1, "constant"))
    assert d.output_mask == "none" and d.padding == "constant beyond the edge pixels"


def test_a_backward_right_sided_in_x_and_left_sided_in_y_is_a_difference():
    """The issue's surviving mutant: each axis is judged on its own probe."""
    d = diagnose(stnref_box("bilinear", "zeros", False)[0],
                 lambda *a: bilinear_backward(*a, left=(False, True)))
    assert d.backward["knots"] == "x: right-sided, y: left-sided"
    assert not d.matches_pytorch and d.backward["matches_pytorch"] is False
    assert any("§4.1" in line or "§6.5" in line for line in d.differences if line.startswith("backward at"))


def test_float32_weights_with_float64_sums_are_mixed_precision():
    d = diagnose(lambda U, g: fake(U, g, weights32=True))
    assert d.precision == "mixed: float32 coordinates or weights" and "precision" in topics(d), d.report()
    assert (d.kernel, d.padding) == ("bilinear", "zeros")


def test_values_a_billionth_off_are_a_difference():
    """Above the parity tolerance (1e-10 of the scale), below what tells conventions apart."""
    d = diagnose(lambda U, g: grid_sample(U, g) * (1 + 1e-9))
    assert d.closest == {"mode": "bilinear", "padding_mode": "zeros", "align_corners": False}
    assert topics(d) == {next(t for t in topics(d) if t.startswith("values differ"))}, d.differences
    assert not d.matches_pytorch and d.precision == "float64"


def test_a_clip_border_rule_that_differs_between_the_axes_is_a_difference():
    """x: PyTorch's zero multiplier on the border; y: the slope inside the image (zeros' rule)."""
    def backward(dV, U, grid):
        dU, dgrid = grid_sample_backward(dV, U, grid, "bilinear", "border")
        _, zeros = grid_sample_backward(dV, U, grid, "bilinear", "zeros")
        iy = unnormalise(grid[..., 1], U.shape[2], False)
        on = iy == 0
        dgrid[..., 1] = np.where(on, zeros[..., 1], dgrid[..., 1])
        return dU, dgrid

    d = diagnose(lambda U, g: grid_sample(U, g, "bilinear", "border"), backward)
    assert d.backward["clip borders"].startswith("x: zero at and beyond the border, y: "), d.backward
    assert any(line.startswith("backward on the clip border") for line in d.differences)


def test_a_row_whose_alternatives_include_pytorch_s_value_is_ok():
    report = diagnose(scipy_box(1, "mirror")).report()
    assert re.search(r"^padded +coordinate or taps +coordinate +ok$", report, re.MULTILINE), report


def test_the_models_quantise_ties_to_even_and_mask_from_the_band_on():
    from stnref.reference._models import beyond, quantise
    np.testing.assert_array_equal(quantise(np.array([1, 3, 5, -1, -3]) / 64, 1 / 32),
                                  np.array([0, 2, 2, 0, -2]) / 32)
    np.testing.assert_array_equal(beyond(np.array([-0.05, -0.0499, 0.0, 3.0, 3.0499, 3.05]), 4, 0.05),
                                  [True, False, False, False, False, True])


def test_a_bicubic_wrong_only_far_outside_is_a_difference():
    """Keys with A fitted to exactly PyTorch's -0.75 is compared with grid_sample everywhere,
    far points included (the model alone is not trusted beyond 1e6 pixels)."""
    rng = np.random.default_rng(0)

    def far_wrong(U, g):   # last-bit noise too: A fits to -0.75 within rounding, snapped to it
        V = grid_sample(U, g, "bicubic") * (1 + rng.choice([-1.0, 0.0, 1.0], (*U.shape[:2], *g.shape[1:3])) * 2.0**-52)
        return np.where((np.abs(g).max(-1) > 1e9)[:, None], 0.5, V)   # beyond 1e6 sizes only

    d = diagnose(far_wrong)
    assert d.kernel == "bicubic" and d.cubic_a == -0.75 and not d.matches_pytorch
    assert any(line.startswith("values differ") and "far outside" in line for line in d.differences)
