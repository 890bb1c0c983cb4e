"""Which of PyTorch's ``grid_sample`` conventions each installed sampling library follows.

Usage::

    python docs/examples/conformance.py [--only torch scipy ...] [--no-backward] [--json FILE]

For every library installed here -- PyTorch, JAX, TensorFlow, ONNX Runtime (and ONNX's
reference evaluator), OpenCV, kornia, torch-interpol, dm-pix, scikit-image, MONAI, SciPy --
and the modes and paddings it offers, this runs
:func:`stnref.reference.diagnose` on an adapter and prints one markdown table with the
versions, the date and the machine.  Libraries that are not installed are simply absent.

Each adapter maps stnref's layouts -- ``U`` ``(N, C, H, W)`` float64, ``grid``
``(N, H', W', 2)`` holding normalised ``(x, y)`` -- onto the library's call and nothing more:
libraries whose native coordinates are pixels (SciPy, JAX, OpenCV, TensorFlow, kornia's
``remap``, torch-interpol, dm-pix, scikit-image, MONAI) get the grid values as their pixel
coordinates unchanged, so the table shows what each library does with its own coordinates.
The rows hold for the versions printed above the table; another version may differ.  Copy an adapter to diagnose your own kernel the same way.

Each library runs in a child process of its own: a segfault inside a compiled kernel (which
no Python code can catch) becomes a row of the table, and the next setting goes on in a new
child.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import subprocess
import sys

import numpy as np

import stnref
from stnref.reference import diagnose
from stnref.sampler_settings import combinations

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow: no start-up banner


# --------------------------------------------------------------------------- adapters

def torch_sampler(mode, padding_mode, align_corners):
    """``torch.nn.functional.grid_sample``; backward by autograd."""
    import torch
    F = torch.nn.functional
    kw = {"mode": mode, "padding_mode": padding_mode, "align_corners": align_corners}

    def fn(U, grid):
        with torch.no_grad():
            return F.grid_sample(torch.from_numpy(U), torch.from_numpy(grid), **kw).numpy()

    def backward(dV, U, grid):
        U_t, g = torch.from_numpy(U).requires_grad_(), torch.from_numpy(grid).requires_grad_()
        dU, dgrid = torch.autograd.grad(F.grid_sample(U_t, g, **kw), (U_t, g), torch.from_numpy(dV))
        return dU.numpy(), dgrid.numpy()

    return fn, backward


def jax_sampler(order, mode):
    """``jax.scipy.ndimage.map_coordinates`` on each plane, pixel coordinates (row, col) = (y, x);
    float64 (``jax_enable_x64``); backward by ``jax.vjp``."""
    import jax
    jax.config.update("jax_enable_x64", True)

    def plane(image, g):                      # (H, W), (H', W', 2) -> (H', W')
        return jax.scipy.ndimage.map_coordinates(image, [g[..., 1], g[..., 0]], order=order, mode=mode)

    batch = jax.vmap(jax.vmap(plane, in_axes=(0, None)), in_axes=(0, 0))  # channels share a grid

    def fn(U, grid):
        return np.asarray(batch(U, grid))

    def backward(dV, U, grid):
        _, vjp = jax.vjp(batch, U, grid)
        return tuple(np.asarray(x) for x in vjp(dV))

    return fn, backward


def tensorflow_sampler(interpolation, fill_mode):
    """``tf.raw_ops.ImageProjectiveTransformV3`` (the kernel of ``tf.keras`` random rotations
    and ``transform``): each grid point becomes a 1x1 output whose transform is the
    translation to that point, so the library samples exactly at ``(x, y)`` in its own
    pixel coordinates.  No gradient with respect to the transform."""
    import tensorflow as tf

    def fn(U, grid):
        N, C = U.shape[:2]
        P = grid.shape[1] * grid.shape[2]
        images = np.repeat(U.transpose(0, 2, 3, 1), P, axis=0)         # (N P, H, W, C)
        points = grid.reshape(N * P, 2)
        transforms = np.zeros((N * P, 8), dtype=np.float32)            # float32 is required
        transforms[:, 0] = transforms[:, 4] = 1.0
        transforms[:, 2], transforms[:, 5] = points[:, 0], points[:, 1]
        V = tf.raw_ops.ImageProjectiveTransformV3(
            images=images, transforms=transforms, output_shape=[1, 1], fill_value=0.0,
            interpolation=interpolation, fill_mode=fill_mode)
        return V.numpy().reshape(N, *grid.shape[1:3], C).transpose(0, 3, 1, 2)

    return fn, None


def _onnx_model(mode, padding_mode, align_corners):
    from onnx import TensorProto, helper
    node = helper.make_node("GridSample", ["X", "grid"], ["Y"], mode=mode, padding_mode=padding_mode,
                            align_corners=int(align_corners))
    io = [helper.make_tensor_value_info(name, TensorProto.DOUBLE, None) for name in ("X", "grid", "Y")]
    graph = helper.make_graph([node], "grid_sample", io[:2], io[2:])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])  # 20: float64


def onnxruntime_sampler(mode, padding_mode, align_corners):
    """A one-node ONNX model ``GridSample`` (opset 20: modes linear, nearest, cubic) on the CPU."""
    import onnxruntime
    model = _onnx_model(mode, padding_mode, align_corners)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return (lambda U, grid: session.run(None, {"X": U, "grid": grid})[0]), None


def onnx_reference_sampler(mode, padding_mode, align_corners):
    """The same model run by ``onnx.reference.ReferenceEvaluator`` (ONNX's Python reference)."""
    from onnx.reference import ReferenceEvaluator
    evaluator = ReferenceEvaluator(_onnx_model(mode, padding_mode, align_corners))
    return (lambda U, grid: evaluator.run(None, {"X": U, "grid": grid})[0]), None


def opencv_sampler(interpolation, border):
    """``cv2.remap`` on each plane; the maps (x and y, float32) are the pixel coordinates."""
    import cv2

    def fn(U, grid):
        mx, my = grid[..., 0].astype(np.float32), grid[..., 1].astype(np.float32)
        return np.stack([np.stack([cv2.remap(plane, mx[n], my[n], getattr(cv2, interpolation),
                                             borderMode=getattr(cv2, border), borderValue=0)
                                   for plane in U[n]]) for n in range(len(U))])

    return fn, None


def scipy_sampler(order, mode):
    """``scipy.ndimage.map_coordinates`` on each plane, pixel coordinates (row, col) = (y, x)."""
    from scipy import ndimage

    def fn(U, grid):
        return np.stack([np.stack([ndimage.map_coordinates(plane, [g[..., 1], g[..., 0]], order=order,
                                                           mode=mode) for plane in image])
                         for image, g in zip(U, grid)])

    return fn, None


def kornia_sampler(mode, padding_mode, align_corners):
    """``kornia.geometry.transform.remap`` with the grid as pixel maps
    (``normalized_coordinates=False``); backward by autograd."""
    import torch
    from kornia.geometry.transform import remap
    kw = {"mode": mode, "padding_mode": padding_mode, "align_corners": align_corners}

    def run(U, grid):
        return remap(U, grid[..., 0], grid[..., 1], normalized_coordinates=False, **kw)

    def fn(U, grid):
        with torch.no_grad():
            return run(torch.from_numpy(U), torch.from_numpy(grid)).numpy()

    def backward(dV, U, grid):
        U_t, g = torch.from_numpy(U).requires_grad_(), torch.from_numpy(grid).requires_grad_()
        dU, dgrid = torch.autograd.grad(run(U_t, g), (U_t, g), torch.from_numpy(dV))
        return dU.numpy(), dgrid.numpy()

    return fn, backward


def interpol_sampler(order, bound, extrapolate):
    """torch-interpol's ``grid_pull``: the grid values as pixel coordinates (row, col) = (y, x)."""
    import interpol
    import torch

    def fn(U, grid):
        g = torch.from_numpy(np.ascontiguousarray(grid[..., ::-1]))
        with torch.no_grad():
            return interpol.grid_pull(torch.from_numpy(U), g, interpolation=order, bound=bound,
                                      extrapolate=extrapolate).numpy()

    return fn, None


def dm_pix_sampler(function, cval):
    """dm-pix's ``flat_nd_linear_interpolate`` (and ``_constant``, with ``cval``) on each plane,
    pixel coordinates (row, col) = (y, x); float64 (``jax_enable_x64``); backward by ``jax.vjp``."""
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    import dm_pix
    interpolate = getattr(dm_pix, function)
    kw = {} if cval is None else {"cval": cval}

    def plane(image, g):                      # (H, W), (H', W', 2) -> (H', W')
        return interpolate(image, jnp.stack([g[..., 1], g[..., 0]]), **kw)

    batch = jax.vmap(jax.vmap(plane, in_axes=(0, None)), in_axes=(0, 0))

    def backward(dV, U, grid):
        _, vjp = jax.vjp(batch, U, grid)
        return tuple(np.asarray(x) for x in vjp(dV))

    return (lambda U, grid: np.asarray(batch(U, grid))), backward


def skimage_sampler(order, mode):
    """scikit-image's ``transform.warp`` with an array of pixel coordinates (row, col) = (y, x),
    ``clip=False`` so that what the kernel computes is seen unclipped."""
    from skimage.transform import warp

    def fn(U, grid):
        return np.stack([np.stack([warp(plane, np.stack([g[..., 1], g[..., 0]]), order=order, mode=mode,
                                        clip=False, preserve_range=True) for plane in image])
                         for image, g in zip(U, grid)])

    return fn, None


def monai_sampler(mode, padding_mode):
    """MONAI's ``transforms.Resample`` (``norm_coords=True``: pixel coordinates centred on the
    image), float64; a string mode runs ``grid_sample``, an integer one ``scipy.ndimage``."""
    import torch
    from monai.transforms import Resample
    resample = Resample(mode=mode, padding_mode=padding_mode, norm_coords=True, dtype=torch.float64)

    def fn(U, grid):
        out = []
        for image, g in zip(U, grid):
            rows_cols = np.stack([g[..., 1], g[..., 0], np.ones(g.shape[:2])])   # (3, H', W')
            out.append(np.asarray(resample(torch.from_numpy(image), torch.from_numpy(rows_cols))))
        return np.stack(out)

    return fn, None


# --------------------------------------------------------------------------- libraries

def _product(*axes):
    out = [()]
    for axis in axes:
        out = [o + (a,) for o in out for a in axis]
    return out


TORCH_SETTINGS = [(m, p, ac) for _, m, p in combinations(dims=(2,), pytorch=True) for ac in (False, True)]
ONNX_SETTINGS = _product(("nearest", "linear", "cubic"), ("zeros", "border", "reflection"), (False, True))

# name -> (module to import, adapter, settings, how to print a setting)
LIBRARIES = {
    "PyTorch": ("torch", torch_sampler, TORCH_SETTINGS,
                lambda s: f"grid_sample(mode={s[0]!r}, padding_mode={s[1]!r}, align_corners={s[2]})"),
    "JAX": ("jax", jax_sampler, _product((0, 1), ("constant", "nearest", "mirror", "reflect", "wrap")),
            lambda s: f"jax.scipy.ndimage.map_coordinates(order={s[0]}, mode={s[1]!r})"),
    "TensorFlow": ("tensorflow", tensorflow_sampler,
                   _product(("NEAREST", "BILINEAR"), ("CONSTANT", "NEAREST", "REFLECT", "WRAP")),
                   lambda s: f"ImageProjectiveTransformV3(interpolation={s[0]!r}, fill_mode={s[1]!r})"),
    "ONNX Runtime": ("onnxruntime", onnxruntime_sampler, ONNX_SETTINGS,
                     lambda s: f"GridSample(mode={s[0]!r}, padding_mode={s[1]!r}, align_corners={int(s[2])})"),
    "ONNX reference": ("onnx", onnx_reference_sampler, ONNX_SETTINGS,
                       lambda s: f"GridSample(mode={s[0]!r}, padding_mode={s[1]!r}, align_corners={int(s[2])})"),
    "OpenCV": ("cv2", opencv_sampler,
               _product(("INTER_NEAREST", "INTER_LINEAR", "INTER_CUBIC"),
                        ("BORDER_CONSTANT", "BORDER_REPLICATE", "BORDER_REFLECT", "BORDER_REFLECT_101",
                         "BORDER_WRAP")),
               lambda s: f"cv2.remap({s[0]}, {s[1]})"),
    "kornia": ("kornia", kornia_sampler,
               [*_product(("nearest", "bilinear", "bicubic"), ("zeros", "border", "reflection"), (True,)),
                ("bilinear", "zeros", False)],
               lambda s: f"geometry.transform.remap(mode={s[0]!r}, padding_mode={s[1]!r}, "
                         f"align_corners={s[2]}, normalized_coordinates=False)"),
    "torch-interpol": ("interpol", interpol_sampler,
                       [*_product((1,), ("zero", "replicate", "dct1", "dct2", "dft"), (False, True)),
                        *_product((0, 3), ("zero",), (False, True))],
                       lambda s: f"grid_pull(interpolation={s[0]}, bound={s[1]!r}, extrapolate={s[2]})"),
    "dm-pix": ("dm_pix", dm_pix_sampler,
               [("flat_nd_linear_interpolate", None), ("flat_nd_linear_interpolate_constant", 0.0),
                ("flat_nd_linear_interpolate_constant", 0.5)],
               lambda s: f"{s[0]}({'' if s[1] is None else f'cval={s[1]:g}'})"),
    "scikit-image": ("skimage", skimage_sampler,
                     _product((0, 1, 3), ("constant", "edge", "symmetric", "reflect", "wrap")),
                     lambda s: f"transform.warp(order={s[0]}, mode={s[1]!r})"),
    "MONAI": ("monai", monai_sampler,
              [*_product(("nearest", "bilinear"), ("zeros", "border", "reflection")),
               (1, "zeros"), (3, "reflect")],
              lambda s: f"transforms.Resample(mode={s[0]!r}, padding_mode={s[1]!r}, norm_coords=True)"),
    "SciPy": ("scipy", scipy_sampler,
              _product((0, 1, 3), ("constant", "grid-constant", "nearest", "mirror", "reflect", "grid-wrap",
                                   "wrap")),
              lambda s: f"ndimage.map_coordinates(order={s[0]}, mode={s[1]!r})"),
}


def installed(only=None):
    """``{name: version}`` of the libraries of ``LIBRARIES`` that import here."""
    found = {}
    for name, (module, *_) in LIBRARIES.items():
        if only and name not in only and module not in only:
            continue
        try:
            found[name] = importlib.import_module(module).__version__
        except Exception:  # noqa: BLE001, S112 -- not installed, or broken: absent from the table
            continue
    return found


def _cell(text):
    return text.replace("|", "\\|")


def row(name, call, d):
    """One markdown row of the table from a Diagnosis."""
    kernel = d.kernel + (f" A={d.cubic_a:g}" if d.cubic_a is not None else "")
    padding = d.padding + (f" {d.fill:g}" if "constant" in d.padding else "")
    standard = "coordinate" if "cubic" not in d.kernel else "taps"     # PyTorch's place for this kernel
    if d.padded != "unknown" and standard not in d.padded.split(" or ") and d.padding != "zeros":
        padding += f" ({d.padded} padded)"
    if d.positions.startswith("rounded"):
        kernel += f", positions {d.positions.removeprefix('rounded to multiples of ')}"
    if d.output_mask != "none":
        padding += f"; {d.output_mask}"
    ties = "" if d.nearest_rounding == "n/a" else d.nearest_rounding
    non_finite = " / ".join(d.non_finite.get(k, "?") for k in ("nan", "+inf", "-inf"))
    topics = "; ".join(dict.fromkeys(line.split(":")[0] for line in d.differences))
    verdict = "**yes**" if d.matches_pytorch else "no"
    cells = [name, f"`{call}`", kernel, d.coordinates, padding, ties, d.precision, non_finite, verdict, topics]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _worker(name, start, with_backward):
    """Diagnose the settings of one library from ``start`` on; one JSON line per setting."""
    _, adapter, settings, show = LIBRARIES[name]
    for setting in settings[start:]:
        call = show(setting)
        try:
            fn, backward = adapter(*setting)
        except Exception as err:  # noqa: BLE001 -- a setting the library refuses: its row says so
            line = {"row": f"| {name} | `{_cell(call)}` | adapter failed: {_cell(type(err).__name__)} "
                           f"|||||| no | |", "diagnosis": None}
        else:
            d = diagnose(fn, backward if with_backward else None)
            line = {"row": row(name, call, d), "diagnosis": {"call": call, **d.to_json()}}
        print(json.dumps(line, default=str), flush=True)


def _run_isolated(name, with_backward):
    """Yield ``(row, diagnosis)`` for every setting of ``name``, each library in a child process:
    a crash of the process (a segfault in a compiled kernel) becomes a row, and the next
    setting runs in a new child."""
    settings, show = LIBRARIES[name][2], LIBRARIES[name][3]
    start = 0
    while start < len(settings):
        argv = [sys.executable, os.path.abspath(__file__), "--worker", name, "--start", str(start)]
        argv += [] if with_backward else ["--no-backward"]
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for text in child.stdout:
            line = json.loads(text)
            start += 1
            yield line["row"], line["diagnosis"]
        status = child.wait()
        if start < len(settings) and status != 0:
            why = f"signal {-status}" if status < 0 else f"exit status {status}"
            crashed = (f"| {name} | `{_cell(show(settings[start]))}` | **the process crashed** ({why}) "
                       f"|||||| no | crash |")
            yield crashed, {"call": show(settings[start]), "crash": why}
            start += 1
        elif start < len(settings):
            break  # the child stopped early without an error: nothing more to learn


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", help="library names or modules, e.g. torch SciPy")
    parser.add_argument("--no-backward", action="store_true", help="forward only (faster)")
    parser.add_argument("--json", help="write every diagnosis to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.start, not args.no_backward)
        return 0

    versions = installed(args.only)
    print(f"Conformance to PyTorch `grid_sample`, by `stnref.reference.diagnose` (stnref "
          f"{stnref.__version__}), {datetime.date.today().isoformat()}, Python {platform.python_version()}, "
          f"NumPy {np.__version__}, {platform.machine()} {platform.system()}.")
    print("Installed: " + (", ".join(f"{n} {v}" for n, v in versions.items()) or "none of the libraries") + ".\n")
    print("| library | call | kernel | coordinates | padding | nearest ties | precision | NaN / +inf / -inf "
          "| matches PyTorch | differences |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    everything = []
    for name in versions:
        for text, diagnosis in _run_isolated(name, not args.no_backward):
            print(text, flush=True)
            everything.append({"library": name, "version": versions[name], **(diagnosis or {})})
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(everything, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
