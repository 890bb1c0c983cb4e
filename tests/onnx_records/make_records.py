"""Record what ONNX's reference GridSample computes for cubic sampling, 2-D and 3-D.

Usage (needs onnx; writes ``cubic.npz`` next to this script)::

    python tests/onnx_records/make_records.py

ONNX's GridSample (opset 20) defines N-D cubic sampling, and ``onnx.reference.ReferenceEvaluator``
evaluates it in Python: the only other tricubic with a public definition.  Its reference
stores pixel coordinates in float32 and computes the Keys weights in float32, so the grid
points recorded here are dyadic (multiples of 1/16 pixel, spatial sizes chosen so that
normalised and pixel coordinates are both exact): there the weights are exact in float32 and
the two implementations differ only in the order of the sums.

Families (one case per dimension and ``align_corners``):

``zeros``
    ``mode="cubic", padding_mode="zeros"``, points inside, on integer and half-integer
    pixels, and up to three pixels outside: stnref's bicubic (2-D) and tricubic (3-D) must agree.
``border``
    ``mode="cubic", padding_mode="border"`` with points outside: ONNX clamps the continuous
    coordinate before taking the taps (and clamps the taps), PyTorch and stnref clamp each
    tap only.  The records pin the difference (docs/conventions.md §7.4).

The file is written with ``stnref.save_checkpoint`` (uncompressed, sorted, byte-reproducible
for the same onnx); its metadata names the onnx and NumPy versions and the date, and lists
every case: id, family, options, input names (``<id>.U``, ``<id>.grid``) and output
(``<id>.onnx.V``).  ``tests/test_onnx_records.py`` reads it; it needs no onnx.
"""

from __future__ import annotations

import datetime
import hashlib
import pathlib
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from stnref import save_checkpoint  # noqa: E402

FORMAT = "stnref-onnx-records"
RECORDS_VERSION = 1
OPSET = 20
STEP = 1 / 16            # pixel coordinates are multiples of this: exact in float32 weights
# spatial sizes (D, H, W) with an exact scale s: size / 2 (align_corners=False), (size - 1) / 2
SPATIAL = {False: (4, 4, 8), True: (5, 5, 9)}
OUT = (2, 3, 4)          # output spatial shape (D, H, W); 2-D uses the last two
N, C = 2, 2


def seed_of(case_id):
    return int.from_bytes(hashlib.sha256(f"onnx-records/{case_id}".encode()).digest()[:8], "little")


def onnx_cubic(U, grid, padding_mode, align_corners):
    """ONNX's reference GridSample, mode cubic, on float64 arrays."""
    k = grid.shape[-1]
    node = helper.make_node("GridSample", ["X", "grid"], ["Y"], mode="cubic",
                            padding_mode=padding_mode, align_corners=int(align_corners))
    shape_x = [None] * (k + 2)
    graph = helper.make_graph(
        [node], "grid_sample",
        [helper.make_tensor_value_info("X", TensorProto.DOUBLE, shape_x),
         helper.make_tensor_value_info("grid", TensorProto.DOUBLE, [None] * (k + 2))],
        [helper.make_tensor_value_info("Y", TensorProto.DOUBLE, shape_x)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return ReferenceEvaluator(model).run(None, {"X": U, "grid": grid})[0]


def dyadic_grid(rng, k, spatial, align_corners, reach):
    """Normalised grid whose pixel coordinates are multiples of STEP in [-reach, size - 1 + reach];
    a third of them integers or half-integers."""
    shape = (N, *OUT[-k:])
    grid = np.empty(shape + (k,))
    for a in range(k):
        size = spatial[k - 1 - a]
        i = rng.integers(round(-reach / STEP), round((size - 1 + reach) / STEP) + 1, size=shape) * STEP
        knots = rng.random(shape) < 1 / 3
        i = np.where(knots, np.round(i * 2) / 2, i)
        # conventions §3.1 inverted: exact, since (size - 1) / 2 or size is a power of two
        grid[..., a] = 2 * i / (size - 1) - 1 if align_corners else (2 * i + 1) / size - 1
    return grid


def cases():
    for family, padding, reach in (("zeros", "zeros", 3.0), ("border", "border", 3.0)):
        for k in (2, 3):
            for ac in (False, True):
                case_id = f"cubic-{family}-{k}d-{'ac' if ac else 'noac'}"
                rng = np.random.default_rng(seed_of(case_id))
                spatial = SPATIAL[ac][-k:]
                U = rng.standard_normal((N, C, *spatial))
                grid = dyadic_grid(rng, k, spatial, ac, reach)
                yield case_id, family, {"mode": "bicubic", "padding_mode": padding,
                                        "align_corners": ac}, U, grid


def main():
    arrays, listed = {}, []
    for case_id, family, options, U, grid in cases():
        V = onnx_cubic(U, grid, options["padding_mode"], options["align_corners"])
        arrays.update({f"{case_id}.U": U, f"{case_id}.grid": grid, f"{case_id}.onnx.V": V})
        listed.append({"id": case_id, "family": family, "options": options,
                       "inputs": ["U", "grid"], "outputs": ["V"]})
    metadata = {"format": FORMAT, "records_version": RECORDS_VERSION, "family": "cubic",
                "onnx": onnx.__version__, "opset": OPSET, "numpy": np.__version__,
                "date": datetime.date.today().isoformat(),
                "generator": "tests/onnx_records/make_records.py", "cases": listed}
    path = HERE / "cubic.npz"
    save_checkpoint(path, arrays, metadata)
    print(f"{len(listed)} cases, {path.stat().st_size / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
