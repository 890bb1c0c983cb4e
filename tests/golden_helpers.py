"""Shared by the golden-vector tests: a golden directory, result writers, and kernels that are
deliberately wrong in one known way each (the classes of departure ``check`` must catch)."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct

import numpy as np
import pytest

from stnref import grid_sample
from stnref.reference import export, run_check
from stnref.reference._judge import pixel_coordinates


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    directory = tmp_path_factory.mktemp("golden")
    export(directory)
    return directory


@pytest.fixture(scope="module")
def manifest(golden):
    return read_manifest(golden)


def read_manifest(directory):
    with open(os.path.join(directory, "manifest.json"), encoding="utf-8") as f:
        return json.load(f)


def load(path):
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def results_copy(golden, tmp_path, name="results"):
    """The golden files as results (every case passes)."""
    results = tmp_path / name
    shutil.copytree(golden, results)
    os.remove(results / "manifest.json")
    return results


def run(golden, results, **selection):
    """(ok, {case id: table row}, the table) of ``check``."""
    report = run_check(golden, results, **selection)
    text = report.table()
    rows = {line.split()[0]: line for line in text.splitlines()[1:-1]}
    return report.ok, rows, text


def cases_of(golden, op="grid_sample", k=None, tag=None):
    """The manifest cases of ``op`` (dimension ``k``, option tag ``mode-padding-ac``)."""
    out = []
    for case in read_manifest(golden)["cases"]:
        if case["op"] != op:
            continue
        o = case["options"]
        if k is not None and len(case["inputs"]["grid"]["shape"]) != k + 2:
            continue
        if tag is not None and option_tag(o["mode"], o["padding_mode"], o["align_corners"],
                                          o.get("cubic_a", -0.75)) != tag:
            continue
        out.append(case)
    return out


def option_tag(mode, padding_mode, align_corners, cubic_a=-0.75):
    """The setting's part of a case id: ``bicubic-border-ac``, ``bicubic-a-0.5-border-ac``."""
    mode = mode if cubic_a == -0.75 else f"{mode}-a{cubic_a:g}"
    return f"{mode}-{padding_mode}-{'ac' if align_corners else 'noac'}"


def write_forward(golden, results, kernel, cases, form="npz"):
    """Write ``V = kernel(U, grid, mode, padding_mode, align_corners)`` for ``cases``: as
    ``<id>.npz`` or as ``<id>/V.npy``."""
    os.makedirs(results, exist_ok=True)
    for case in cases:
        a = load(os.path.join(golden, case["file"]))
        o = case["options"]
        extra = {key: o[key] for key in ("fill_value", "cubic_a") if key in o}
        V = kernel(a["U"], a["grid"], o["mode"], o["padding_mode"], o["align_corners"], **extra)
        if form == "npz":
            np.savez(os.path.join(results, case["file"]), V=V)
        else:
            os.makedirs(os.path.join(results, case["id"]), exist_ok=True)
            np.save(os.path.join(results, case["id"], "V.npy"), V)


# --------------------------------------------------------------------------- wrong kernels

def _normalise(p, spatial, align_corners):
    """Pixel coordinates (per axis x, y, z) back to a normalised grid."""
    k = p.shape[-1]
    grid = np.empty_like(p)
    for a in range(k):
        size = spatial[k - 1 - a]
        if align_corners:
            grid[..., a] = 0.0 if size == 1 else 2 * p[..., a] / (size - 1) - 1
        else:
            grid[..., a] = (2 * p[..., a] + 1) / size - 1
    return grid


def right_kernel(U, grid, mode, padding_mode, align_corners, **numeric):
    return grid_sample(U, grid, mode, padding_mode, align_corners, **numeric)


def _rewritten(U, grid, align_corners, where, new_pixel):
    """``grid`` with the pixel coordinates selected by ``where(p)`` replaced by ``new_pixel(p)``;
    every other coordinate is passed on unchanged (each wrong kernel is wrong in one way only)."""
    p = pixel_coordinates(grid, U.shape[2:], align_corners)
    with np.errstate(over="ignore", invalid="ignore"):
        hit = where(p)
        return np.where(hit, _normalise(np.where(hit, new_pixel(p), 0.0), U.shape[2:], align_corners), grid)


def overflow_kernel(U, grid, mode, padding_mode, align_corners, **numeric):
    """An index cast to int64 as x86 does it: |i| >= 2^63 becomes -2^63 (ONNX Runtime's class)."""
    grid = _rewritten(U, grid, align_corners, lambda p: np.abs(p) >= 2.0**63, lambda p: -(2.0**63) + 0 * p)
    return grid_sample(U, grid, mode, padding_mode, align_corners, **numeric)


def round_then_reflect_kernel(U, grid, mode, padding_mode, align_corners, **numeric):
    """Nearest that rounds the pixel coordinate before padding it (ONNX Runtime's reflection)."""
    grid = _rewritten(U, grid, align_corners, lambda p: np.abs(p) < 1e6, np.rint)
    return grid_sample(U, grid, mode, padding_mode, align_corners, **numeric)


def half_up_kernel(U, grid, mode, padding_mode, align_corners, **numeric):
    """Nearest rounding ties up, floor(i + 0.5) (the paper's formula); zeros and border only."""
    grid = _rewritten(U, grid, align_corners, lambda p: np.abs(p) < 1e6, lambda p: np.floor(p + 0.5))
    return grid_sample(U, grid, mode, padding_mode, align_corners, **numeric)


def scipy_kernel(scipy_mode):
    """Bilinear by scipy.ndimage.map_coordinates with ``scipy_mode`` (fill from ``fill_value``):
    'grid-wrap' and 'grid-constant' are stnref's wrap and constant, 'wrap' (period size - 1)
    and 'constant' (a point beyond the edge pixels reads the fill whole) are not."""
    from scipy import ndimage

    def kernel(U, grid, mode, padding_mode, align_corners, fill_value=0.0):
        p = pixel_coordinates(grid, U.shape[2:], align_corners)      # (n, *out, k) as x, y
        V = np.empty(U.shape[:2] + grid.shape[1:-1])
        for n in range(U.shape[0]):
            coords = [p[n, ..., a] for a in range(p.shape[-1])][::-1]
            for c in range(U.shape[1]):
                V[n, c] = ndimage.map_coordinates(U[n, c], coords, order=1, mode=scipy_mode,
                                                  cval=fill_value, prefilter=False)
        return V
    return kernel


def float32_kernel(U, grid, mode, padding_mode, align_corners, **numeric):
    """Right, but computing in float32 only (as ONNX Runtime's opset-16 GridSample)."""
    return grid_sample(U.astype(np.float32), grid.astype(np.float32), mode, padding_mode, align_corners, **numeric)


def nan_far_kernel(U, grid, mode, padding_mode, align_corners, **numeric):
    """NaN wherever a pixel coordinate is beyond 1e3, where PyTorch is finite."""
    V = grid_sample(U, grid, mode, padding_mode, align_corners, **numeric)
    with np.errstate(invalid="ignore"):
        far = np.any(np.abs(pixel_coordinates(grid, U.shape[2:], align_corners)) > 1e3, axis=-1)
    return np.where(far[:, None], np.nan, V)


# --------------------------------------------------------------------------- .npy without numpy

def npy_by_hand(values, shape, big_endian=False):
    """The bytes of a float64 ``.npy`` v1.0 file assembled with ``struct`` from a list of
    Python floats: what a minimal writer in another language produces (no header padding)."""
    order = ">" if big_endian else "<"
    header = f"{{'descr': '{order}f8', 'fortran_order': False, 'shape': {tuple(shape)}, }}\n"
    header = header.encode("latin1")
    return (b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header
            + struct.pack(f"{order}{len(values)}d", *values))


def npy_header(shape, descr="<f8"):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()
