"""``stnref.reference.diagnose`` on real libraries, graded against truth tables from their source.

Each table row says what one library setting computes, read off the library's own code (the
lines are named in the comments), independently of what diagnose finds. The tests run the
adapters of ``docs/examples/conformance.py`` on the installed library and require every answer
to be right: a property diagnose cannot observe may name alternatives (``"half up or half away
from zero"``), but the truth must be among them and every alternative must be one the row lists
as reading the same values. A library that is not installed is skipped.
"""

from __future__ import annotations

import pytest

from examples import load_example

CONFORMANCE = load_example("conformance")

PIXELS = "pixel coordinates, i = x"
CENTRES, EDGES = "reflection about centres", "reflection about edges"
COORD_OR_TAPS = {"coordinate", "taps"}     # bilinear: padding the coordinate or each tap, same values
UP_OR_AWAY = {"half up", "half away from zero"}   # the same pixel at every tie a padding lets through


def truth(kernel, padding, coordinates=PIXELS, *, padded=None, rounding="n/a", positions=None,
          precision="float64", cubic_a=None, mask="none", fill=0.0):
    """One row: each value is the truth, or ``(truth, {values that read the same})``."""
    if positions is None:
        positions = "n/a" if kernel == "nearest" else "exact"
    if padded is None:
        padded = ("taps", COORD_OR_TAPS) if kernel != "nearest" else "coordinate"
    return {"kernel": kernel, "padding": padding, "coordinates": coordinates, "padded": padded,
            "nearest_rounding": rounding, "positions": positions, "precision": precision,
            "cubic_a": cubic_a, "output_mask": mask, "fill": fill}


def check(d, row):
    wrong = []
    for field, want in row.items():
        value = getattr(d, field)
        if field == "output_mask":
            ok = value == want if want == "none" else value.startswith(want)
        elif field == "padded" and d.padding == "zeros":
            ok = True                                  # nothing to pad: either place
        elif isinstance(want, tuple):
            right, same = want
            named = set(str(value).split(" or "))
            ok = right in named and named <= same | {right}
        else:
            ok = value == want
        if not ok:
            wrong.append(f"{field}: found {value!r}, the source says {want!r}")
    assert not wrong, "\n".join(wrong) + "\n\n" + d.report()


def run(library, setting):
    module, adapter, *_ = CONFORMANCE.LIBRARIES[library]
    pytest.importorskip(module)
    fn, _ = adapter(*setting)
    from stnref.reference import diagnose
    return diagnose(fn)


# ---------------------------------------------------------------------------- JAX
# jax/_src/scipy/ndimage.py: order 0 rounds with lax.round (half away from zero), order 1 takes
# floor and floor + 1; each integer index then goes through _INDEX_FIXERS[mode] (the taps are
# padded); 'constant' masks indices outside [0, size).
JAX_PADDING = {"constant": "zeros", "nearest": "border", "mirror": CENTRES, "reflect": EDGES, "wrap": "wrap"}
JAX = {(0, mode): truth("nearest", padding, padded=("taps", {"coordinate"} if mode in ("nearest", "wrap", "reflect")
                                                         else set()),
                        rounding=("half away from zero", set() if mode in ("constant", "mirror") else UP_OR_AWAY))
       for mode, padding in JAX_PADDING.items()}
JAX |= {(1, mode): truth("bilinear", padding) for mode, padding in JAX_PADDING.items()}

# ---------------------------------------------------------------------------- OpenCV
# modules/imgproc/src/imgwarp.cpp (remap): float maps become short indices by saturate_cast
# (cvRound: half to even) for INTER_NEAREST, and cvRound(x * INTER_TAB_SIZE) with INTER_BITS = 5
# for INTER_LINEAR (1/32 px, exact weights k/32 in the float table); each integer tap goes through
# borderInterpolate. INTER_CUBIC on CV_64F data measures unquantised positions with float32
# Keys weights (A = -0.75, interpolateCubic).
CV_BORDER = {"BORDER_CONSTANT": "zeros", "BORDER_REPLICATE": "border", "BORDER_REFLECT": EDGES,
             "BORDER_REFLECT_101": CENTRES, "BORDER_WRAP": "wrap"}
# rounding half to even commutes with clipping, wrapping and mirroring about a pixel centre, so
# there the index and the coordinate padded read the same pixels; about an edge they do not
OPENCV = {("INTER_NEAREST", b): truth("nearest", p, padded=("taps", {"coordinate"} if b in (
    "BORDER_REPLICATE", "BORDER_WRAP", "BORDER_REFLECT_101") else set()), rounding="half to even")
    for b, p in CV_BORDER.items()}
OPENCV |= {("INTER_LINEAR", b): truth("bilinear", p, positions="rounded to multiples of 1/32 px (ties to even)")
           for b, p in CV_BORDER.items()}
OPENCV |= {("INTER_CUBIC", b): truth("bicubic", p, cubic_a=-0.75, padded=("taps", {"coordinate"} if p == CENTRES
                                                                          else set()),
                                     precision="mixed: float32 coordinates or weights")
           for b, p in CV_BORDER.items() if b != "BORDER_WRAP"}

# ---------------------------------------------------------------------------- ONNX Runtime
# onnxruntime/core/providers/cpu/tensor/grid_sample.cc: GsDenormalize by align_corners; nearest
# is std::nearbyint (half to even) and then PixelAtGrid pads the integer index (zeros: 0 outside,
# border: clamp, reflection: GsReflect about [-0.5, size - 0.5] or [0, size - 1]); linear and
# cubic (alpha -0.75) read every integer tap through PixelAtGrid.
ORT_PADDING = {("zeros", False): "zeros", ("zeros", True): "zeros", ("border", False): "border",
               ("border", True): "border", ("reflection", False): EDGES, ("reflection", True): CENTRES}
ONNXRUNTIME = {}
for (padding_mode, ac), padding in ORT_PADDING.items():
    coords = f"align_corners={ac}"
    ONNXRUNTIME[("nearest", padding_mode, ac)] = truth(
        "nearest", padding, coords, rounding="half to even",
        padded=("taps", {"coordinate"} if padding in ("border", CENTRES) else set()))
    ONNXRUNTIME[("linear", padding_mode, ac)] = truth("bilinear", padding, coords)
    ONNXRUNTIME[("cubic", padding_mode, ac)] = truth(
        "bicubic", padding, coords, cubic_a=-0.75, padded=("taps", {"coordinate"} if padding == CENTRES else set()))

# ---------------------------------------------------------------------------- torch-interpol
# interpol/iso1.py pull2d + jit_utils.inbounds_mask_2d: extrapolate=False multiplies by the mask
# (g > -0.05) & (g < n - 1 + 0.05); bounds zero, replicate, dct1 (mirror about centres), dct2
# (about edges), dft (wrap) index every tap. Within 0.05 px of the border replicate and dct2
# read the same value.
INTERPOL_BOUND = {"zero": "zeros", "replicate": "border", "dct1": CENTRES, "dct2": EDGES, "dft": "wrap"}
BAND = "points 0.05 px or more outside [0, size - 1] read 0"
INTERPOL = {}
for bound, padding in INTERPOL_BOUND.items():
    same = {"border", EDGES} if bound in ("replicate", "dct2") else set()
    INTERPOL[(1, bound, False)] = truth("bilinear", (padding, same) if same else padding, mask=BAND)
    INTERPOL[(1, bound, True)] = truth("bilinear", padding)
INTERPOL[(0, "zero", True)] = truth("nearest", "zeros", rounding="half to even")
INTERPOL[(3, "zero", True)] = truth("cubic B-spline (not interpolating)", "zeros")

# ---------------------------------------------------------------------------- dm-pix
# dm_pix/_src/interpolation.py: taps floor and ceil clipped to the volume (border);
# flat_nd_linear_interpolate_constant returns cval wherever a coordinate is outside [0, size - 1].
DM_PIX = {("flat_nd_linear_interpolate", None): truth("bilinear", "border")}
DM_PIX |= {("flat_nd_linear_interpolate_constant", c): truth("bilinear", "constant beyond the edge pixels", fill=c)
           for c in (0.0, 0.5)}

# ---------------------------------------------------------------------------- scikit-image
# skimage/transform/_warps.py warp -> scipy.ndimage.map_coordinates(prefilter=order > 1) with
# _to_ndimage_mode then _fix_ndimage_mode: constant -> grid-constant, edge -> nearest,
# symmetric -> reflect, reflect -> mirror, wrap -> grid-wrap. scipy pads the coordinate and
# rounds half up for order 0 (ni_interpolation.c).
SKIMAGE_MODE = {"constant": "zeros", "edge": "border", "symmetric": EDGES, "reflect": CENTRES, "wrap": "wrap"}
SKIMAGE = {(0, m): truth("nearest", p, padded=("coordinate", {"taps"} if m in ("edge", "wrap") else set()),
                         rounding="half up" if m in ("constant", "reflect") else ("half up", UP_OR_AWAY))
           for m, p in SKIMAGE_MODE.items()}
SKIMAGE |= {(1, m): truth("bilinear", p) for m, p in SKIMAGE_MODE.items()}
SKIMAGE |= {(3, m): truth("cubic B-spline", p, padded=("taps", {"coordinate"} if p in (CENTRES, "wrap") else set()))
            for m, p in SKIMAGE_MODE.items()}

# ---------------------------------------------------------------------------- kornia, MONAI
# kornia/geometry/transform/imgwarp.py remap: pixel maps normalised with the align_corners=True
# rule, then torch.nn.functional.grid_sample (with align_corners=True: pixel coordinates exactly).
KORNIA_PADDING = {"zeros": "zeros", "border": "border", "reflection": CENTRES}
NEAREST_PADDED = {"border": ("coordinate", {"taps"}), CENTRES: ("coordinate", {"taps"})}   # see OpenCV
KORNIA = {(m, p, True): truth(m, padding, padded=("taps", {"coordinate"} if padding == CENTRES else set())
                              if m == "bicubic" else NEAREST_PADDED.get(padding) if m == "nearest" else None,
                              rounding="half to even" if m == "nearest" else "n/a",
                              cubic_a=-0.75 if m == "bicubic" else None)
          for m in ("nearest", "bilinear", "bicubic") for p, padding in KORNIA_PADDING.items()}
# monai/transforms/spatial/array.py Resample(norm_coords=True): coordinates centred on the image,
# grid_sample with align_corners=False for a string mode (output float32 per its docstring),
# scipy.ndimage.map_coordinates for an integer one.
CENTRED = "centred pixel coordinates, i = x + (size - 1)/2"
MONAI = {(m, p): truth(m, padding, CENTRED, precision="float32", rounding="half to even" if m == "nearest" else "n/a",
                       padded=NEAREST_PADDED.get(padding) if m == "nearest" else None)
         for m in ("nearest", "bilinear")
         for p, padding in {"zeros": "zeros", "border": "border", "reflection": EDGES}.items()}
MONAI[(1, "zeros")] = truth("bilinear", "constant beyond the edge pixels", CENTRED, precision="float32")

TABLES = {"JAX": JAX, "OpenCV": OPENCV, "ONNX Runtime": ONNXRUNTIME, "torch-interpol": INTERPOL,
          "dm-pix": DM_PIX, "scikit-image": SKIMAGE, "kornia": KORNIA, "MONAI": MONAI}
CASES = [(library, setting) for library, table in TABLES.items() for setting in table]


@pytest.mark.parametrize("library, setting", CASES, ids=[f"{lib}-{s}" for lib, s in CASES])
def test_diagnose_names_what_the_source_says(library, setting):
    check(run(library, setting), TABLES[library][setting])


def test_a_setting_pytorch_lacks_never_matches_pytorch():
    """The constant fill, wrap, Keys' A of -0.5: named, estimated, and a difference."""
    d = run("dm-pix", ("flat_nd_linear_interpolate_constant", 0.5))
    assert d.fill == 0.5 and any(line.startswith("padding") for line in d.differences)
    d = run("OpenCV", ("INTER_LINEAR", "BORDER_WRAP"))
    assert d.padding == "wrap" and "matches PyTorch" not in d.verdict


def test_the_torch_interpol_band_is_measured_to_a_thousandth_of_a_pixel():
    d = run("torch-interpol", (1, "zero", False))
    assert d.output_mask == BAND and "output mask" in {line.split(":")[0] for line in d.differences}
    assert "the fill value from 0.05 px on" in d.evidence["output mask"]
