"""Hostile input for every public function: the error contract, purity, odd-but-valid arrays.

For each public callable a *target* gives a small valid call.  Hypothesis then
replaces one argument by something hostile -- wrong rank or shape, int / bool /
complex / object / string / float16 dtype, None, str, scalars, nested lists,
NaN / inf / 1e300, a zero-size axis, a bad mode, a bad or huge size -- and checks:

- only ``ValueError`` or ``TypeError`` escape, and the message names the argument
  (or, for a size/batch/dtype disagreement, one of the arguments involved);
- no input array is modified (compared with copies taken before the call);
- nothing allocates beyond the memory guard (``RLIMIT_AS`` of the process raised by
  :data:`GUARD_BYTES` around each call, so a missing size check fails fast as a
  ``MemoryError`` instead of swapping the machine).

Odd-but-valid inputs -- read-only, non-contiguous (strided and reversed views),
Fortran-ordered, zero-stride broadcast arrays, lists of floats and zero batches
where supported -- must give exactly the result of a contiguous copy.

``CASES`` counts every call made (reported in docs/reliability.md).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import math
import os
import time
import zipfile
from typing import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stnref
from stnref import nn
from stnref.checkpoint import load_checkpoint, save_checkpoint
from stnref.data import distort, read_idx, synthetic_digits, write_idx
from stnref import nn as L
from stnref.networks import build_model
from stnref.training import Progress
from stnref.transformer import SpatialTransformer

try:
    import resource
except ImportError:  # not POSIX: no address-space guard
    resource = None

try:
    from stnref import second_order
except ImportError:
    second_order = None

try:
    from stnref import reference
except ImportError:
    reference = None

CASES = collections.Counter()   # calls made, per target
GUARD_BYTES = 2 << 30           # extra address space allowed per call (2 GiB)
FAST_SECONDS = 0.5              # a refused huge size must fail at least this fast
HUGE = 10**5                    # the brief's 10^5 x 10^5 output
EXAMPLES = 40                   # hypothesis examples per target (keeps the file well under 40 s)
ALLOWED = (ValueError, TypeError)
# A different memory layout may reorder floating-point sums: allow a few ulps of the result's scale.
LAYOUT_RTOL = {np.dtype(np.float64): 1e-13, np.dtype(np.float32): 1e-5}
# A message about the element budget is a clear message for any size-like argument.
ALWAYS_CLEAR = ("budget",)


# --------------------------------------------------------------------------- harness


@contextlib.contextmanager
def memory_guard():
    """Cap the address space at current use + GUARD_BYTES for the block (Linux only)."""
    if resource is None or not os.path.exists("/proc/self/statm"):
        yield
        return
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = used + GUARD_BYTES
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _snapshot(kwargs):
    return {k: v.copy() for k, v in kwargs.items() if isinstance(v, np.ndarray)}


def _assert_unmodified(kwargs, snapshot):
    for k, before in snapshot.items():
        after = kwargs[k]
        assert after.dtype == before.dtype and after.shape == before.shape, k
        if before.dtype.kind in "fc":
            assert np.array_equal(after, before, equal_nan=True), f"{k} was modified in place"
        else:
            assert np.array_equal(after, before), f"{k} was modified in place"


def call(target, kwargs, names=None):
    """Call ``target`` under the guard; returns ``(result, error)``; checks purity and messages."""
    CASES[target.name] += 1
    snapshot = _snapshot(kwargs)
    allowed = ALLOWED + ((OSError,) if target.file_errors else ())
    try:
        with memory_guard():
            result = target.fn(**kwargs)
        error = None
    except allowed as err:
        result, error = None, err
    _assert_unmodified(kwargs, snapshot)
    if error is not None and names is not None:
        message = str(error)
        accepted = set(names) | set(ALWAYS_CLEAR)
        for n in names:
            accepted |= set(target.related.get(n, ()))
        assert any(n in message for n in accepted), (
            f"{target.name}: message does not name {sorted(accepted)}: {message}")
        assert "\n" not in message.strip() or target.multiline, message
    return result, error


def same(a, b, rtol=0.0):
    """Equality of results (arrays, tuples, dicts, modules' and optimisers' state).

    Same dtype, shape and NaN positions; values equal, or within ``rtol`` times the
    largest magnitude of ``b`` (memory layout may change numpy's summation order).
    """
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        if a.dtype.kind not in "fc" or not a.size:
            return np.array_equal(a, b)
        if not np.array_equal(np.isnan(a), np.isnan(b)):
            return False
        finite = np.isfinite(b)
        scale = np.abs(b[finite]).max(initial=0.0)
        return (np.array_equal(a[~finite], b[~finite], equal_nan=True)
                and bool(np.all(np.abs(a[finite] - b[finite]) <= rtol * scale)))
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y, rtol) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], rtol) for k in a)
    if hasattr(a, "state_dict"):  # modules and optimisers
        return type(a) is type(b) and same(a.state_dict(), b.state_dict(), rtol)
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (a != a and b != b)
    return a == b


@dataclasses.dataclass
class Target:
    """A public callable with a small valid call and the hostile values of its arguments."""

    name: str
    fn: Callable                 # called with keyword arguments
    valid: Callable[[], dict]    # fresh valid kwargs
    arrays: tuple = ()           # float-array arguments (mutated with ARRAY_MUTATIONS)
    others: dict = dataclasses.field(default_factory=dict)  # argument -> hostile values
    related: dict = dataclasses.field(default_factory=dict)  # argument -> other names an error may cite
    zero_batch: bool = False     # axis 0 of every array argument may be empty
    multiline: bool = False
    file_errors: bool = False    # reads files: OSError (e.g. FileNotFoundError) is allowed too


def _rng():
    return np.random.default_rng(0)


# --------------------------------------------------------------------------- hostile values

def _poison(value, fill, data):
    out = np.array(value, dtype=value.dtype, copy=True)
    if out.size:
        out.flat[data.draw(st.integers(0, out.size - 1), label="index")] = fill
    return out


def _zero_axis(value, data):
    axis = data.draw(st.integers(0, value.ndim - 1), label="axis") if value.ndim else 0
    return np.take(value, [], axis=axis) if value.ndim else value.reshape(0)


ARRAY_MUTATIONS = {
    "None": lambda v, d: None,
    "str": lambda v, d: "abc",
    "bytes": lambda v, d: b"\x00\x01",
    "int scalar": lambda v, d: 3,
    "float scalar": lambda v, d: 2.5,
    "bool scalar": lambda v, d: True,
    "dict": lambda v, d: {"a": 1},
    "ragged list": lambda v, d: [[1.0, 2.0], [3.0]],
    "int64": lambda v, d: v.astype(np.int64),
    "uint8": lambda v, d: v.astype(np.uint8),
    "bool": lambda v, d: v > 0,
    "complex": lambda v, d: v.astype(np.complex128),
    "object": lambda v, d: v.astype(object),
    "unicode": lambda v, d: v.astype(str),
    "float16": lambda v, d: v.astype(np.float16),
    "longdouble": lambda v, d: v.astype(np.longdouble),
    "other float": lambda v, d: v.astype(np.float32 if v.dtype == np.float64 else np.float64),
    "add axis": lambda v, d: v[None],
    "drop axis": lambda v, d: v[0] if v.ndim else v.reshape(1),
    "flatten": lambda v, d: v.reshape(-1),
    "0-d": lambda v, d: np.array(1.0, v.dtype),
    "last axis + 1": lambda v, d: np.concatenate([v, v[..., :1]], axis=-1) if v.ndim else v,
    "first axis + 1": lambda v, d: np.concatenate([v, v[:1]], axis=0) if v.ndim else v,
    "swap last axes": lambda v, d: np.swapaxes(v, -1, -2) if v.ndim >= 2 else v,
    "zero-size axis": _zero_axis,
    "NaN": lambda v, d: _poison(v, np.nan, d),
    "+inf": lambda v, d: _poison(v, np.inf, d),
    "-inf": lambda v, d: _poison(v, -np.inf, d),
    "1e300": lambda v, d: _poison(v, 1e300 if v.dtype == np.float64 else 3e38, d),
    "all NaN": lambda v, d: np.full_like(v, np.nan),
}
INT_HOSTILE = [None, "3", b"3", 2.5, np.float64(2.0), -1, 0, True, np.bool_(True), [3], (3,),
               np.array([3]), 1j]
BOOL_HOSTILE = [None, "yes", "False", 1, 0, 2, 1.0, np.array([True, False]), [True]]
MODE_HOSTILE = [None, "", "bogus", 3, b"bilinear", "BILINEAR", ["bilinear"], "bilinear "]
SEED_HOSTILE = [None, "0", -1, 1.5, True, [0], np.float64(0.0)]


def _size_hostile(valid):
    """Bad ``size`` tuples derived from a valid one (``valid`` = (N, C, H, W) or 5-D)."""
    n = len(valid)
    return [None, "abc", 3, 3.0, valid[:-1], valid + (1,), (0,) + valid[1:], valid[:-1] + (-2,),
            valid[:-1] + (2.0,), valid[:-1] + (True,), valid[:-1] + (None,), valid[:-1] + ("4",),
            (valid[0] + 1,) + valid[1:], valid[:n - 2] + (HUGE, HUGE),
            valid[:n - 2] + (2**40, 2**40), {"a": 1}]


# --------------------------------------------------------------------------- targets


def _theta_affine(n=2):
    return np.eye(2, 3)[None].repeat(n, 0) + 0.1 * _rng().standard_normal((n, 2, 3))


SIZE = (2, 3, 4, 5)


def _tps_transform_used(control_points):
    """``tps_transform`` plus one use of its grid (a Transform holds closures: compare outputs)."""
    t = stnref.tps_transform(control_points)
    theta = t.identity()[None] + 0.1
    return t.theta_shape, t.grid(theta, (1, 1, 3, 4)), t.backward(np.ones((1, 3, 4, 2)), theta, (1, 1, 3, 4))
SIZE3 = (2, 3, 2, 3, 4)


def _U(shape=(2, 3, 5, 4), dtype=np.float64):
    return _rng().standard_normal(shape).astype(dtype)


def _grid(shape=(2, 3, 4, 2), dtype=np.float64):
    return _rng().uniform(-1.2, 1.2, shape).astype(dtype)


def _tps_theta(n=2):
    return stnref.tps_control_points()[None].repeat(n, 0) + 0.05 * _rng().standard_normal((n, 16, 2))


GRID_ARGS = {"mode": MODE_HOSTILE, "padding_mode": MODE_HOSTILE, "align_corners": BOOL_HOSTILE}
GRIDGEN_ARGS = {"size": _size_hostile(SIZE), "align_corners": BOOL_HOSTILE}
SAMPLE_RELATED = {"grid": ("U", "dV", "V"), "U": ("grid", "dV"), "dV": ("U", "grid", "V")}


def _grid_targets():
    return [
        Target("affine_grid", stnref.affine_grid,
               lambda: {"theta": _theta_affine(), "size": SIZE, "align_corners": False},
               ("theta",), GRIDGEN_ARGS, {"theta": ("size",), "size": ("theta", "grid")}),
        Target("affine_grid 3-D", stnref.affine_grid,
               lambda: {"theta": np.eye(3, 4)[None].repeat(2, 0), "size": SIZE3},
               ("theta",), {"size": _size_hostile(SIZE3)}, {"theta": ("size",), "size": ("theta", "grid")}),
        Target("affine_grid_backward", stnref.affine_grid_backward,
               lambda: {"dgrid": _grid((2, 4, 5, 2)), "size": SIZE, "align_corners": True},
               ("dgrid",), GRIDGEN_ARGS, {"dgrid": ("size",), "size": ("dgrid",)}),
        Target("attention_grid", stnref.attention_grid,
               lambda: {"theta": np.array([[1.0, 0.1, -0.2], [0.5, 0.0, 0.3]]), "size": SIZE},
               ("theta",), GRIDGEN_ARGS, {"theta": ("size",), "size": ("theta", "grid")}),
        Target("attention_grid_backward", stnref.attention_grid_backward,
               lambda: {"dgrid": _grid((2, 4, 5, 2)), "size": SIZE},
               ("dgrid",), GRIDGEN_ARGS, {"dgrid": ("size",), "size": ("dgrid",)}),
        Target("projective_grid", stnref.projective_grid,
               lambda: {"theta": np.eye(3)[None].repeat(2, 0) + 0.05 * _rng().standard_normal((2, 3, 3)),
                        "size": SIZE},
               ("theta",), GRIDGEN_ARGS, {"theta": ("size",), "size": ("theta", "grid")}),
        Target("projective_grid_backward", stnref.projective_grid_backward,
               lambda: {"dgrid": _grid((2, 4, 5, 2)), "theta": np.eye(3)[None].repeat(2, 0),
                        "size": SIZE},
               ("dgrid", "theta"), GRIDGEN_ARGS,
               {"dgrid": ("size", "theta"), "theta": ("dgrid", "size"), "size": ("dgrid", "theta")}),
        Target("tps_grid", stnref.tps_grid,
               lambda: {"theta": _tps_theta(), "size": SIZE, "control_points": None},
               ("theta",), {**GRIDGEN_ARGS, "control_points": [np.zeros((16, 2)), np.zeros(3), "x", 5]},
               {"theta": ("size", "control_points"), "size": ("theta", "grid"),
                "control_points": ("theta",)}),
        Target("tps_grid_backward", stnref.tps_grid_backward,
               lambda: {"dgrid": _grid((2, 4, 5, 2)), "size": SIZE},
               ("dgrid",), GRIDGEN_ARGS, {"dgrid": ("size",), "size": ("dgrid",)}),
        Target("tps_matrix", stnref.tps_matrix,
               lambda: {"height": 4, "width": 5,
                        "control_points": stnref.tps_control_points(9) * 0.9},
               ("control_points",),
               {"height": INT_HOSTILE + [HUGE], "width": INT_HOSTILE + [HUGE], "align_corners": BOOL_HOSTILE}),
        Target("tps_control_points", stnref.tps_control_points, lambda: {"k": 9}, (),
               {"k": [None, "9", 9.0, -4, 0, 1, 2, 3, 5, True]}),
        Target("tps_transform", _tps_transform_used,
               lambda: {"control_points": stnref.tps_control_points(4) * 0.5}, ("control_points",)),
        Target("get_transform", lambda name: stnref.get_transform(name).name, lambda: {"name": "affine"}, (),
               {"name": MODE_HOSTILE}),
        Target("set_max_elements", lambda n: stnref.set_max_elements(stnref.set_max_elements(n)),
               lambda: {"n": 2**31}, (), {"n": INT_HOSTILE}),
        Target("manual_seed", _manual_seed_state, lambda: {"seed": 5}, (), {"seed": INT_HOSTILE}),
        Target("fit", _fit, lambda: {"epochs": 1, "batch_size": 4, "seed": 0}, (),
               {"epochs": INT_HOSTILE, "batch_size": INT_HOSTILE, "seed": INT_HOSTILE,
                "seconds": [0, -1.0, math.nan, math.inf, "1", True],
                "clip_norm": [-1.0, math.nan, "1", True], "on_nonfinite": MODE_HOSTILE}),
    ]


def _manual_seed_state(seed):
    """The generator's state after ``stnref.manual_seed(seed)``; the state before is restored."""
    before = stnref.nn.default_generator().bit_generator.state
    try:
        return stnref.manual_seed(seed).bit_generator.state
    finally:
        stnref.nn.default_generator().bit_generator.state = before


def _fit(**options):
    """``stnref.fit`` of a fresh small model on fixed data: the trained weights."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 3, rng=_rng()))
    x, y = _rng().standard_normal((6, 2, 4)), np.arange(6) % 3
    stnref.fit(model, nn.SGD(model, lr=0.1), (x, y), progress=Progress(io.StringIO()), **options)
    return model.state_dict()


def _sample_targets():
    out = [
        Target("grid_sample", stnref.grid_sample,
               lambda: {"U": _U(), "grid": _grid(), "mode": "bilinear", "padding_mode": "zeros",
                        "align_corners": False},
               ("U", "grid"), GRID_ARGS, SAMPLE_RELATED, zero_batch=True),
        Target("grid_sample bicubic float32", stnref.grid_sample,
               lambda: {"U": _U(dtype=np.float32), "grid": _grid(dtype=np.float32), "mode": "bicubic",
                        "padding_mode": "reflection", "align_corners": True},
               ("U", "grid"), GRID_ARGS, SAMPLE_RELATED, zero_batch=True),
        Target("grid_sample 5-D", stnref.grid_sample,
               lambda: {"U": _U((2, 2, 3, 4, 3)), "grid": _grid((2, 2, 3, 2, 3)),
                        "padding_mode": "border"},
               ("U", "grid"), GRID_ARGS, SAMPLE_RELATED, zero_batch=True),
        Target("grid_sample_backward", stnref.grid_sample_backward,
               lambda: {"dV": _U((2, 3, 3, 4)), "U": _U(), "grid": _grid(), "mode": "nearest",
                        "padding_mode": "border"},
               ("dV", "U", "grid"), {**GRID_ARGS, "need_dU": BOOL_HOSTILE}, SAMPLE_RELATED,
               zero_batch=True),
        Target("grid_sample_backward bilinear reflection", stnref.grid_sample_backward,
               lambda: {"dV": _U((2, 3, 3, 4)), "U": _U(), "grid": _grid(),
                        "padding_mode": "reflection", "need_dU": False},
               ("dV", "U", "grid"), GRID_ARGS, SAMPLE_RELATED, zero_batch=True),
    ]
    if second_order is not None:
        rel = {"U": ("grid", "tU", "tgrid", "g_dU", "dV"), "grid": ("U", "tU", "tgrid", "g_dgrid", "dV"),
               "tU": ("U",), "tgrid": ("grid",), "g_dU": ("U",), "g_dgrid": ("grid",),
               "dV": ("U", "grid", "V")}
        out += [
            Target("grid_sample_jvp", second_order.grid_sample_jvp,
                   lambda: {"U": _U(), "grid": _grid(), "tU": _U() * 0.5, "tgrid": _grid() * 0.5},
                   ("U", "grid", "tU", "tgrid"), GRID_ARGS, rel, zero_batch=True),
            Target("grid_sample_double_backward", second_order.grid_sample_double_backward,
                   lambda: {"g_dU": _U() * 0.5, "g_dgrid": _grid() * 0.5, "dV": _U((2, 3, 3, 4)),
                            "U": _U(), "grid": _grid(), "mode": "bicubic"},
                   ("g_dU", "g_dgrid", "dV", "U", "grid"), GRID_ARGS, rel, zero_batch=True),
            Target("affine_grid_jvp", second_order.affine_grid_jvp,
                   lambda: {"theta": _theta_affine(), "ttheta": _theta_affine(), "size": SIZE},
                   ("theta", "ttheta"), GRIDGEN_ARGS,
                   {"theta": ("ttheta", "size"), "ttheta": ("theta", "size"), "size": ("theta", "ttheta", "grid")}),
            Target("attention_grid_jvp", second_order.attention_grid_jvp,
                   lambda: {"theta": np.array([[1.0, 0.1, -0.2], [0.5, 0.0, 0.3]]),
                            "ttheta": np.ones((2, 3)), "size": SIZE},
                   ("theta", "ttheta"), GRIDGEN_ARGS,
                   {"theta": ("ttheta", "size"), "ttheta": ("theta", "size"), "size": ("theta", "ttheta", "grid")}),
            Target("projective_grid_jvp", second_order.projective_grid_jvp,
                   lambda: {"theta": np.eye(3)[None].repeat(2, 0), "ttheta": np.ones((2, 3, 3)),
                            "size": SIZE},
                   ("theta", "ttheta"), GRIDGEN_ARGS,
                   {"theta": ("ttheta", "size"), "ttheta": ("theta", "size"), "size": ("theta", "ttheta", "grid")}),
            Target("tps_grid_jvp", second_order.tps_grid_jvp,
                   lambda: {"theta": _tps_theta(), "ttheta": _tps_theta(), "size": SIZE},
                   ("theta", "ttheta"), GRIDGEN_ARGS,
                   {"theta": ("ttheta", "size", "control_points"), "ttheta": ("theta", "size", "control_points"),
                    "size": ("theta", "ttheta", "grid")}),
        ]
    return out


# -- stnref.nn: functional forms, module forward/backward, constructors, losses, optimisers

def _module_call(make, x):
    module = make()
    return module.forward(x)


def _module_backward(make, x, dy):
    module = make()
    module.forward(x)
    dx = module.backward(dy)
    return dx, module.grads


def _linear():
    return nn.Linear(4, 3, rng=np.random.default_rng(1))


def _conv():
    return nn.Conv2d(2, 3, 3, stride=1, padding=1, rng=np.random.default_rng(1))


def _st():
    from stnref.localisation import fc_localisation

    return SpatialTransformer(fc_localisation((1, 6, 6), 6, hidden=(5,), rng=np.random.default_rng(2)),
                              "affine", out_size=(4, 4))


LAYER_FACTORIES = {
    "Linear": (_linear, (3, 4), (3, 3)),
    "Conv2d": (_conv, (2, 2, 5, 5), (2, 3, 5, 5)),
    "MaxPool2d": (lambda: nn.MaxPool2d(2), (2, 2, 4, 5), (2, 2, 2, 2)),
    "AvgPool2d": (lambda: nn.AvgPool2d(2, 1), (2, 2, 4, 5), (2, 2, 3, 4)),
    "ReLU": (nn.ReLU, (2, 5), (2, 5)),
    "Tanh": (nn.Tanh, (2, 5), (2, 5)),
    "Flatten": (nn.Flatten, (2, 2, 3), (2, 6)),
    "Dropout": (lambda: nn.Dropout(0.3, rng=np.random.default_rng(3)), (2, 5), (2, 5)),
    "Sequential": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(6, 2, rng=np.random.default_rng(1)),
                                         nn.Tanh()), (2, 2, 3), (2, 2)),
    "SpatialTransformer": (_st, (2, 1, 6, 6), (2, 1, 4, 4)),
}


def _layer_targets():
    out = []
    for name, (make, x_shape, y_shape) in LAYER_FACTORIES.items():
        out.append(Target(f"{name}.forward", lambda x, make=make: _module_call(make, x),
                          lambda s=x_shape: {"x": _U(s)}, ("x",), {}, {"x": ("input",)},
                          zero_batch=name != "SpatialTransformer"))
        out.append(Target(f"{name}.backward", lambda x, dy, make=make: _module_backward(make, x, dy),
                          lambda s=x_shape, t=y_shape: {"x": _U(s), "dy": _U(t)}, ("dy",),
                          {}, {"dy": ("x", "dV", "grad", "output", "y")},
                          zero_batch=name != "SpatialTransformer"))
    rel_xw = {"x": ("weight", "input"), "weight": ("x", "input"), "bias": ("weight",),
              "dy": ("x", "weight", "y")}
    out += [
        Target("linear", L.linear,
               lambda: {"x": _U((3, 4)), "weight": _U((2, 4)), "bias": _U((2,))},
               ("x", "weight", "bias"), {}, rel_xw, zero_batch=False),
        Target("linear_backward", L.linear_backward,
               lambda: {"dy": _U((3, 2)), "x": _U((3, 4)), "weight": _U((2, 4))},
               ("dy", "x", "weight"), {"bias": BOOL_HOSTILE}, rel_xw),
        Target("conv2d", L.conv2d,
               lambda: {"x": _U((2, 2, 5, 5)), "weight": _U((3, 2, 3, 3)), "bias": _U((3,)),
                        "stride": 1, "padding": 1},
               ("x", "weight", "bias"),
               {"stride": INT_HOSTILE + [(1, 2, 3), (0, 1)], "padding": INT_HOSTILE[:-6] + [(1, -1)]},
               rel_xw),
        Target("conv2d_backward", L.conv2d_backward,
               lambda: {"dy": _U((2, 3, 3, 3)), "x": _U((2, 2, 5, 5)), "weight": _U((3, 2, 3, 3))},
               ("dy", "x", "weight"), {"stride": INT_HOSTILE, "bias": BOOL_HOSTILE}, rel_xw),
        Target("max_pool2d", L.max_pool2d, lambda: {"x": _U((2, 2, 4, 5)), "kernel_size": 2},
               ("x",), {"kernel_size": INT_HOSTILE + [(2, 0), 10**9], "stride": INT_HOSTILE}),
        Target("max_pool2d_backward", L.max_pool2d_backward,
               lambda: {"dy": _U((2, 2, 2, 2)), "x": _U((2, 2, 4, 5)), "kernel_size": 2},
               ("dy", "x"), {"kernel_size": INT_HOSTILE}, rel_xw),
        Target("avg_pool2d", L.avg_pool2d, lambda: {"x": _U((2, 2, 4, 5)), "kernel_size": 2},
               ("x",), {"kernel_size": INT_HOSTILE, "stride": INT_HOSTILE}),
        Target("relu_backward", L.relu_backward, lambda: {"dy": _U((2, 3)), "x": _U((2, 3))},
               ("dy", "x"), {}, rel_xw),
        Target("tanh_backward", L.tanh_backward, lambda: {"dy": _U((2, 3)), "x": _U((2, 3))},
               ("dy", "x"), {}, rel_xw),
        Target("cross_entropy", nn.cross_entropy,
               lambda: {"logits": _U((4, 3)), "labels": np.array([0, 2, 1, 2])},
               ("logits",),
               {"labels": [None, "x", np.array([0.0, 2.0, 1.0, 2.0]), np.array([0, 3, 1, 2]),
                           np.array([0, -1, 1, 2]), np.array([0, 1]), np.array([[0, 2, 1, 2]]),
                           np.array([True, False, True, True]), [0, 2, 1, 2.5], 3]},
               {"logits": ("labels",), "labels": ("logits",)}),
        Target("log_softmax", nn.log_softmax, lambda: {"logits": _U((4, 3)), "axis": -1},
               ("logits",), {"axis": [None, "0", 1.0, 2, -3, True, (0, 1)]}),
        Target("softmax", nn.softmax, lambda: {"logits": _U((4, 3))}, ("logits",),
               {"axis": [None, 5, 0.5]}),
    ]
    return out


def _ctor_targets():
    rng = {"rng": [3, "seed", np.random.RandomState(0), [1]]}
    dtype = {"dtype": [np.int32, "int64", np.complex128, object, 3, np.float16]}
    opt_rel = {"lr_scale": ("prefix", "parameter", "scale")}
    return [
        Target("Linear()", nn.Linear,
               lambda: {"in_features": 4, "out_features": 3, "rng": np.random.default_rng(0)}, (),
               {"in_features": INT_HOSTILE, "out_features": INT_HOSTILE, "bias": BOOL_HOSTILE,
                **rng, **dtype}),
        Target("Conv2d()", nn.Conv2d,
               lambda: {"in_channels": 2, "out_channels": 3, "kernel_size": 3,
                        "rng": np.random.default_rng(0)}, (),
               {"in_channels": INT_HOSTILE, "out_channels": INT_HOSTILE,
                "kernel_size": INT_HOSTILE + [(3, 0), (1, 2, 3)], "stride": INT_HOSTILE,
                "padding": [-1, 1.5, "1", None], **rng, **dtype}),
        Target("MaxPool2d()", nn.MaxPool2d, lambda: {"kernel_size": 2}, (),
               {"kernel_size": INT_HOSTILE, "stride": INT_HOSTILE}),
        Target("AvgPool2d()", nn.AvgPool2d, lambda: {"kernel_size": 2}, (),
               {"kernel_size": INT_HOSTILE, "stride": [0, -1, 1.5]}),
        Target("Dropout()", nn.Dropout, lambda: {"p": 0.5}, (),
               {"p": [None, "0.5", -0.1, 1.0, 1.5, np.nan, np.inf, True], **rng}),
        Target("Sequential()", lambda modules: nn.Sequential(*modules), lambda: {"modules": [nn.ReLU()]},
               (), {"modules": [[None], [3], ["relu"], [nn.ReLU], [np.zeros(3)]]}, {"modules": ("Module",)}),
        Target("SGD()", lambda module, **kw: nn.SGD(module, **kw),
               lambda: {"module": _linear(), "lr": 0.1}, (),
               {"module": [None, "model", 3, [_linear()], np.zeros(3)],
                "lr": [None, "0.1", -0.1, np.nan, np.inf, True, [0.1]],
                "momentum": [-0.5, 1.5, np.nan, "0.9", None], "weight_decay": [-1.0, np.inf, "x"],
                "lr_scale": [3, "x", {"weight": -1.0}, {"weight": np.nan}, {"nope": 1.0}, {3: 1.0},
                             {"weight": "x"}]},
               {**opt_rel, "module": ("Module",)}),
        Target("Adam()", lambda module, **kw: nn.Adam(module, **kw),
               lambda: {"module": _linear(), "lr": 0.01}, (),
               {"module": [None, 3], "lr": [None, -1.0, np.nan], "betas": [None, (0.9,), (1.0, 0.5),
                                                                            (-0.1, 0.9), "ab", (0.9, np.nan)],
                "eps": [-1e-8, np.nan, None, "x"], "lr_scale": [{"nope": 2.0}, 5]},
               {**opt_rel, "module": ("Module",)}),
        Target("clip_grad_norm", nn.clip_grad_norm,
               lambda: {"module": _linear(), "max_norm": 1.0}, (),
               {"module": [None, 3, "m"], "max_norm": [None, -1.0, 0.0, np.nan, np.inf, "1", True]},
               {"module": ("Module",)}),
        Target("build_model", build_model,
               lambda: {"name": "st-fcn", "transform": "affine", "input_size": 12, "n_classes": 4,
                        "rng": np.random.default_rng(0)}, (),
               {"name": MODE_HOSTILE + ["resnet"], "transform": MODE_HOSTILE + ["spiral"],
                "input_size": INT_HOSTILE + [1, 3], "n_classes": INT_HOSTILE, **rng, **dtype}),
        Target("SpatialTransformer()", SpatialTransformer,
               lambda: {"loc": _st().loc if hasattr(_st(), "loc") else _linear(), "transform": "affine",
                        "out_size": (4, 4)}, (),
               {"loc": [None, 3, "loc", np.zeros(3)], "transform": MODE_HOSTILE + ["spiral"],
                "out_size": [3, "44", (4,), (4, 0), (4, -1), (4, 4.0), (4, 4, 4, 4), (True, 4)],
                "mode": MODE_HOSTILE, "padding_mode": MODE_HOSTILE, "align_corners": BOOL_HOSTILE,
                "input_grad": BOOL_HOSTILE},
               {"loc": ("localisation", "Module"), "transform": ("TRANSFORMS",)}),
    ]


def _train_config(**fields):
    from stnref.app.train import TrainConfig

    return TrainConfig(**fields).validated()


NUMBER_HOSTILE = [None, "0.1", -1.0, np.nan, np.inf, True, [0.1], 1j]


def _load_dataset(**kwargs):
    from stnref.data import load_dataset

    return load_dataset(**kwargs)


def _write_then_read_idx(array):
    """``write_idx`` into a fresh directory, then ``read_idx`` (a round trip must be exact)."""
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "a.idx")
        write_idx(path, array)
        out = read_idx(path)
    np.testing.assert_array_equal(out, array)
    return out


def _data_targets():
    return [
        Target("load_dataset", _load_dataset,
               lambda: {"distortion": "p", "data_dir": None, "train_size": 3, "test_size": 2, "seed": 4}, (),
               {"distortion": MODE_HOSTILE, "data_dir": ["/nonexistent/mnist", 3],
                "train_size": INT_HOSTILE[1:] + [10**12], "test_size": INT_HOSTILE[1:], "seed": SEED_HOSTILE},
               {"data_dir": ("load_mnist", "missing", "mnist")}, file_errors=True),
        Target("write_idx", _write_then_read_idx,
               lambda: {"array": np.arange(24, dtype=np.uint8).reshape(2, 3, 4)}, (),
               {"array": [None, "x", 3, np.zeros((2, 3, 4)), np.zeros((2, 3), np.uint8),
                          np.zeros((0, 3, 4), np.uint8), np.zeros((2, 3, 4), np.int8),
                          np.zeros((2, 2, 2, 2), np.uint8), [[1, 2]], np.zeros((2, 3, 4), bool)]}),
        Target("TrainConfig.validated", _train_config,
               lambda: {"model": "st-fcn", "transform": "tps", "distortion": "e", "epochs": 2,
                        "batch_size": 8, "lr": 0.01, "momentum": 0.5, "optimizer": "sgd",
                        "train_size": 16, "test_size": None, "seed": 1, "clip_norm": None,
                        "checkpoint_every": 3, "on_nonfinite": "skip"}, (),
               {"model": MODE_HOSTILE + ["resnet"], "transform": MODE_HOSTILE, "distortion": MODE_HOSTILE,
                "optimizer": MODE_HOSTILE + ["lbfgs"], "on_nonfinite": MODE_HOSTILE,
                "epochs": INT_HOSTILE, "batch_size": INT_HOSTILE, "checkpoint_every": INT_HOSTILE,
                "train_size": INT_HOSTILE[1:], "test_size": INT_HOSTILE[1:], "seed": SEED_HOSTILE,
                "lr": NUMBER_HOSTILE + [0.0], "loc_lr_scale": NUMBER_HOSTILE, "momentum": NUMBER_HOSTILE,
                "clip_norm": NUMBER_HOSTILE[1:], "data": ["/nonexistent/mnist", 3, b"x"]}),
        Target("distort", distort,
               lambda: {"images": _rng().random((3, 28, 28)), "kind": "rts", "seed": 1},
               ("images",), {"kind": MODE_HOSTILE + ["x"], "seed": SEED_HOSTILE}, zero_batch=False),
        Target("synthetic_digits", synthetic_digits, lambda: {"n": 2, "seed": 0, "size": 12}, (),
               {"n": INT_HOSTILE + [10**12], "seed": SEED_HOSTILE, "size": INT_HOSTILE + [7, 10**7]}),
        Target("gradcheck", stnref.gradcheck,
               lambda: {"fn": np.sin, "vjp": lambda u, x: (u * np.cos(x),),
                        "inputs": [_U((3,))]}, (),
               {"fn": [None, 3, "sin"], "vjp": [None, 3], "inputs": [None, 3, "x", [None], [np.arange(3)],
                                                                     [np.zeros(3, complex)]]},
               {"vjp": ("gradients",), "inputs": ("x", "float")}, multiline=True),
    ]


TARGETS = _grid_targets() + _sample_targets() + _layer_targets() + _ctor_targets() + _data_targets()
if reference is not None:
    TARGETS.append(Target(
        "reference.compute_outputs", reference.compute_outputs,
        lambda: {"op": "grid_sample", "options": {"mode": "bilinear", "padding_mode": "zeros",
                                                  "align_corners": False},
                 "arrays": {"U": _U(), "grid": _grid(), "dV": _U((2, 3, 3, 4))}}, (),
        {"op": [None, "nope", 3], "options": [None, {"mode": "x"}, {}, 3],
         "arrays": [None, {}, {"U": _U()}, {"U": "x", "grid": _grid()}, 3]},
        {"op": ("op",), "options": ("mode", "padding_mode", "align_corners", "options", "size"),
         "arrays": ("U", "grid", "arrays")}))

TARGET_IDS = [t.name for t in TARGETS]


def _hostile_choices(target):
    choices = [(a, m) for a in target.arrays for m in ARRAY_MUTATIONS]
    choices += [(a, i) for a, values in target.others.items() for i in range(len(values))]
    return choices


# --------------------------------------------------------------------------- the fuzz tests


@pytest.mark.parametrize("target", TARGETS, ids=TARGET_IDS)
def test_valid_call_works(target):
    result, error = call(target, target.valid())
    assert error is None, f"{target.name}: the valid call failed: {error}"
    again, _ = call(target, target.valid())
    assert same(result, again), f"{target.name}: not deterministic"


HOSTILE_TARGETS = [t for t in TARGETS if _hostile_choices(t)]


@pytest.mark.parametrize("target", HOSTILE_TARGETS, ids=[t.name for t in HOSTILE_TARGETS])
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_hostile_argument(target, data):
    """One argument hostile: only ValueError/TypeError naming it, inputs never modified."""
    arg, how = data.draw(st.sampled_from(_hostile_choices(target)), label="argument, mutation")
    kwargs = target.valid()
    if arg in target.arrays:
        kwargs[arg] = ARRAY_MUTATIONS[how](kwargs[arg], data)
    else:
        kwargs[arg] = target.others[arg][how]
    call(target, kwargs, names=(arg,))


PAIR_TARGETS = [t for t in TARGETS if len(t.arrays) >= 2]


@pytest.mark.parametrize("target", PAIR_TARGETS, ids=[t.name for t in PAIR_TARGETS])
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_two_hostile_arrays(target, data):
    """Two array arguments hostile at once (e.g. both float32 and int, or both empty)."""
    a, b = data.draw(st.permutations(target.arrays), label="arguments")[:2]
    kwargs = target.valid()
    for arg in (a, b):
        how = data.draw(st.sampled_from(sorted(ARRAY_MUTATIONS)), label=f"mutation of {arg}")
        kwargs[arg] = ARRAY_MUTATIONS[how](kwargs[arg], data)
    call(target, kwargs, names=(a, b))


# -- odd but valid: the result of a contiguous copy


def _rtol(result):
    dtypes = [a.dtype for a in _arrays_in(result) if a.dtype.kind == "f"]
    return max((LAYOUT_RTOL.get(d, 0.0) for d in dtypes), default=0.0)


def _strided(v):
    big = np.zeros(v.shape + (2,), v.dtype)
    big[..., 0] = v
    return big[..., 0]


def _reversed(v):
    flipped = np.ascontiguousarray(v[::-1]) if v.ndim else v.copy()
    return flipped[::-1] if v.ndim else flipped


def _readonly(v):
    out = v.copy()
    out.flags.writeable = False
    return out


def _broadcast(v):
    """A zero-stride view with the same values when ``v`` is constant along axis 0."""
    if not v.ndim or not len(v):
        return v
    return np.broadcast_to(v[:1], v.shape)


ODD_LAYOUTS = {
    "read-only": _readonly,
    "strided view": _strided,
    "reversed view": _reversed,
    "Fortran order": np.asfortranarray,
    "swapped-axes view": lambda v: np.swapaxes(np.swapaxes(v, 0, -1).copy(), 0, -1) if v.ndim else v,
}


@pytest.mark.parametrize("target", [t for t in TARGETS if t.arrays],
                         ids=[t.name for t in TARGETS if t.arrays])
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_odd_layouts_give_the_same_result(target, data):
    kwargs = target.valid()
    layouts = {a: data.draw(st.sampled_from(sorted(ODD_LAYOUTS)), label=a) for a in target.arrays}
    odd = dict(kwargs)
    for a, how in layouts.items():
        odd[a] = ODD_LAYOUTS[how](kwargs[a])
        assert np.array_equal(odd[a], kwargs[a])
    expected, err = call(target, kwargs)
    assert err is None
    got, err = call(target, odd)
    assert err is None, f"{target.name} refused {layouts}: {err}"
    assert same(got, expected, _rtol(expected)), f"{target.name}: {layouts} changed the result"


@pytest.mark.parametrize("target", [t for t in TARGETS if t.arrays],
                         ids=[t.name for t in TARGETS if t.arrays])
def test_broadcast_views_give_the_same_result(target):
    """Zero-stride (``np.broadcast_to``) read-only inputs, constant along the batch."""
    kwargs = target.valid()
    const = {a: np.ascontiguousarray(_broadcast(kwargs[a])) for a in target.arrays}
    views = {a: _broadcast(kwargs[a]) for a in target.arrays}
    expected, err = call(target, {**kwargs, **const})
    if err is not None:  # a constant batch may be invalid (e.g. labels); nothing to compare
        return
    got, err = call(target, {**kwargs, **views})
    assert err is None, f"{target.name} refused broadcast views: {err}"
    assert same(got, expected, _rtol(expected))


LIST_TARGETS = [t for t in TARGETS if any(
    isinstance(v, np.ndarray) and v.dtype == np.float64 for k, v in t.valid().items() if k in t.arrays)]


@pytest.mark.parametrize("target", LIST_TARGETS, ids=[t.name for t in LIST_TARGETS])
def test_lists_of_floats_are_accepted(target):
    kwargs = target.valid()
    expected, _ = call(target, kwargs)
    as_lists = {k: v.tolist() if k in target.arrays and v.dtype == np.float64 else v
                for k, v in kwargs.items()}
    got, err = call(target, as_lists)
    assert err is None, f"{target.name} refused nested lists: {err}"
    assert same(got, expected)


@pytest.mark.parametrize("target", [t for t in TARGETS if t.zero_batch],
                         ids=[t.name for t in TARGETS if t.zero_batch])
def test_zero_batch(target):
    kwargs = target.valid()
    empty = {k: v[:0] if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    full, err = call(target, kwargs)
    assert err is None
    got, err = call(target, empty)
    assert err is None, f"{target.name} refused a zero batch: {err}"
    for out, ref in zip(_arrays_in(got), _arrays_in(full), strict=True):
        # batch-shaped outputs become empty; parameter gradients keep their shape
        assert out.dtype == ref.dtype and out.shape in (ref.shape, (0,) + ref.shape[1:])
        assert np.isfinite(out).all()


def _arrays_in(result):
    if isinstance(result, np.ndarray):
        return [result]
    if isinstance(result, (tuple, list)):
        return [a for r in result for a in _arrays_in(r)]
    if isinstance(result, dict):
        return [a for r in result.values() for a in _arrays_in(r)]
    return []


# --------------------------------------------------------------------------- memory budget


HUGE_CALLS = {
    "affine_grid": lambda: stnref.affine_grid(np.zeros((1, 2, 3)), (1, 1, HUGE, HUGE)),
    "attention_grid": lambda: stnref.attention_grid(np.zeros((1, 3)), (1, 1, HUGE, HUGE)),
    "projective_grid": lambda: stnref.projective_grid(np.eye(3)[None], (1, 1, HUGE, HUGE)),
    "tps_grid": lambda: stnref.tps_grid(stnref.tps_control_points()[None], (1, 1, HUGE, HUGE)),
    "tps_matrix": lambda: stnref.tps_matrix(HUGE, HUGE),
    "affine_grid 3-D": lambda: stnref.affine_grid(np.zeros((1, 3, 4)), (1, 1, HUGE, HUGE, HUGE)),
    # zero-stride views: a 10^5 x 10^5 grid that itself costs 16 bytes
    "grid_sample": lambda: stnref.grid_sample(
        np.zeros((1, 1, 4, 4)), np.broadcast_to(np.zeros(2), (1, HUGE, HUGE, 2))),
    "grid_sample channels": lambda: stnref.grid_sample(
        np.broadcast_to(np.zeros(1), (1, HUGE, 4, 4)), np.broadcast_to(np.zeros(2), (1, 10**3, 10**3, 2))),
    "grid_sample_backward": lambda: stnref.grid_sample_backward(
        np.broadcast_to(np.zeros(1), (1, 1, HUGE, HUGE)), np.zeros((1, 1, 4, 4)),
        np.broadcast_to(np.zeros(2), (1, HUGE, HUGE, 2))),
    # dU has U's shape: a zero-stride U of 10^10 elements needs a 10^10-element dU
    "grid_sample_backward dU": lambda: stnref.grid_sample_backward(
        np.zeros((1, 1, 1, 1)), np.broadcast_to(np.zeros(1), (1, 1, HUGE, HUGE)), np.zeros((1, 1, 1, 2))),
    "synthetic_digits": lambda: synthetic_digits(HUGE, size=HUGE),
    "load_dataset": lambda: _load_dataset(distortion="none", train_size=10**12, test_size=2),
    "Linear": lambda: nn.Linear(HUGE, HUGE),
    "Conv2d": lambda: nn.Conv2d(10**4, 10**4, 100),
    "conv2d padding": lambda: L.conv2d(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 3, 3)), padding=10**6),
    "build_model": lambda: build_model("fcn", input_size=HUGE),
    "fc_localisation": lambda: _fc_localisation((1, HUGE, HUGE), 6),
    "tps_control_points": lambda: stnref.tps_control_points(10**10),
    "SpatialTransformer out_size": lambda: _st_huge(),
}
if second_order is not None:
    HUGE_CALLS["affine_grid_jvp"] = lambda: second_order.affine_grid_jvp(
        np.zeros((1, 2, 3)), np.zeros((1, 2, 3)), (1, 1, HUGE, HUGE))
    HUGE_CALLS["grid_sample_jvp"] = lambda: second_order.grid_sample_jvp(
        np.zeros((1, 1, 4, 4)), np.broadcast_to(np.zeros(2), (1, HUGE, HUGE, 2)),
        np.zeros((1, 1, 4, 4)), np.broadcast_to(np.zeros(2), (1, HUGE, HUGE, 2)))


def _fc_localisation(*args):
    from stnref.localisation import fc_localisation

    return fc_localisation(*args)


def _st_huge():
    from stnref.localisation import fc_localisation

    st_layer = SpatialTransformer(fc_localisation((1, 6, 6), 6, hidden=(4,)), out_size=(HUGE, HUGE))
    return st_layer.forward(np.zeros((1, 1, 6, 6)))


@pytest.mark.parametrize("name", sorted(HUGE_CALLS))
def test_huge_output_refused_before_allocating(name):
    CASES[f"huge {name}"] += 1
    t0 = time.perf_counter()
    with memory_guard(), pytest.raises(ValueError, match="budget"):
        HUGE_CALLS[name]()
    assert time.perf_counter() - t0 < FAST_SECONDS


def test_set_max_elements_is_the_budget():
    theta = np.zeros((1, 2, 3))
    previous = stnref.set_max_elements(2 * 4 * 5)
    try:
        assert stnref.affine_grid(theta, (1, 1, 4, 5)).shape == (1, 4, 5, 2)  # exactly at the budget
        with pytest.raises(ValueError, match="budget"):
            stnref.affine_grid(theta, (1, 1, 4, 6))
        with pytest.raises(ValueError, match="budget"):
            stnref.grid_sample(np.zeros((1, 3, 2, 2)), np.zeros((1, 4, 5, 2)))
    finally:
        assert stnref.set_max_elements(previous) == 40


# --------------------------------------------------------------------------- files


def _idx_images(data):
    rows = data.draw(st.integers(1, 3), label="rows")
    n = data.draw(st.integers(1, 3), label="n")
    images = np.arange(n * rows * 2, dtype=np.uint8).reshape(n, rows, 2)
    return images


@settings(max_examples=60)
@given(data=st.data())
def test_read_idx_hostile_bytes(tmp_path_factory, data):
    """Random bytes, and a valid file with random edits: ValueError naming the file, or a valid read."""
    directory = tmp_path_factory.mktemp("idx")
    gz = data.draw(st.booleans(), label="gzip")
    path = directory / ("f.idx" + (".gz" if gz else ""))
    images = _idx_images(data)
    write_idx(path, images)
    raw = bytearray(path.read_bytes())
    edits = ["random", "flip", "truncate", "append"] + ([] if gz else ["header"])
    kind = data.draw(st.sampled_from(edits), label="edit")
    if kind == "random":
        raw = bytearray(data.draw(st.binary(max_size=64), label="bytes"))
    elif kind == "flip":
        i = data.draw(st.integers(0, len(raw) - 1), label="at")
        raw[i] ^= data.draw(st.integers(1, 255), label="xor")
    elif kind == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1), label="keep")]
    elif kind == "append":
        raw += data.draw(st.binary(min_size=1, max_size=16), label="tail")
    else:  # header: a huge, negative or zero dimension claim
        raw[4:8] = data.draw(st.sampled_from([b"\x7f\xff\xff\xff", b"\xff\xff\xff\xff", b"\0\0\0\0"]))
    path.write_bytes(bytes(raw))
    CASES["read_idx"] += 1
    try:
        with memory_guard():
            out = read_idx(path)
    except ValueError as err:
        assert str(path) in str(err) or path.name in str(err), err
        return
    assert out.dtype == np.uint8 and out.ndim in (1, 3)


def test_read_idx_corrupt_deflate_stream(tmp_path):
    """A corrupted .gz payload is a ValueError naming the file (zlib.error must not escape)."""
    path = tmp_path / "x.idx.gz"
    write_idx(path, np.arange(12, dtype=np.uint8).reshape(3, 2, 2))
    raw = bytearray(path.read_bytes())
    raw[33] ^= 0xFF  # inside the deflate stream: "invalid distance code"
    path.write_bytes(bytes(raw))
    CASES["read_idx"] += 1
    with pytest.raises(ValueError, match="x.idx.gz"):
        read_idx(path)


@pytest.mark.parametrize("path", [None, 3, b"\0", "", "/nonexistent/dir/file", 2.5])
def test_read_idx_hostile_path(path):
    CASES["read_idx"] += 1
    with pytest.raises((ValueError, TypeError, OSError)):
        read_idx(path)


@settings(max_examples=40)
@given(data=st.data())
def test_load_checkpoint_hostile_bytes(tmp_path_factory, data):
    """A valid checkpoint with random edits: ValueError naming the file, or a consistent read."""
    directory = tmp_path_factory.mktemp("ckpt")
    path = directory / "c.npz"
    arrays = {"w": np.arange(6.0).reshape(2, 3), "b": np.array([1, 2], np.int32)}
    if data.draw(st.booleans(), label="deflated"):   # as numpy.savez_compressed writes it
        np.savez_compressed(path, **arrays, __metadata__=np.array('{"step": 3}'))
    else:
        save_checkpoint(path, arrays, {"step": 3})
    raw = bytearray(path.read_bytes())
    kind = data.draw(st.sampled_from(["flip", "truncate", "append", "random", "zero run"]), label="edit")
    if kind == "flip":
        i = data.draw(st.integers(0, len(raw) - 1), label="at")
        raw[i] ^= data.draw(st.integers(1, 255), label="xor")
    elif kind == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1), label="keep")]
    elif kind == "append":
        raw += data.draw(st.binary(min_size=1, max_size=32), label="tail")
    elif kind == "random":
        raw = bytearray(data.draw(st.binary(max_size=256), label="bytes"))
    else:
        i = data.draw(st.integers(0, len(raw) - 1), label="at")
        raw[i:i + 16] = bytes(len(raw[i:i + 16]))
    path.write_bytes(bytes(raw))
    CASES["load_checkpoint"] += 1
    try:
        with memory_guard():
            got, meta = load_checkpoint(path)
    except ValueError as err:
        assert str(path) in str(err), err
        return
    # Accepted only if it still holds consistent data (edits in slack bytes of the zip).
    assert isinstance(meta, dict)
    for k, v in got.items():
        assert isinstance(v, np.ndarray) and v.dtype.kind != "O", k


def test_load_checkpoint_refuses_pickles(tmp_path):
    path = tmp_path / "p.npz"
    with zipfile.ZipFile(path, "w") as zf:
        with zf.open("x.npy", "w") as f:
            np.lib.format.write_array(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    CASES["load_checkpoint"] += 1
    with pytest.raises(ValueError, match="p.npz"):
        load_checkpoint(path)


@pytest.mark.parametrize("path", [None, 3, "", "/nonexistent/c.npz"])
def test_load_checkpoint_hostile_path(path):
    CASES["load_checkpoint"] += 1
    with pytest.raises((ValueError, TypeError)):
        load_checkpoint(path)


# --------------------------------------------------------------------------- non-finite theta

THETA_CALLS = {
    "affine_grid": (lambda th: stnref.affine_grid(th, SIZE), _theta_affine),
    "attention_grid": (lambda th: stnref.attention_grid(th, SIZE), lambda: np.ones((2, 3))),
    "projective_grid": (lambda th: stnref.projective_grid(th, SIZE), lambda: np.eye(3)[None].repeat(2, 0)),
    "projective_grid_backward": (lambda th: stnref.projective_grid_backward(_grid((2, 4, 5, 2)), th, SIZE),
                                 lambda: np.eye(3)[None].repeat(2, 0)),
    "tps_grid": (lambda th: stnref.tps_grid(th, SIZE), _tps_theta),
}
if second_order is not None:
    THETA_CALLS.update({
        "affine_grid_jvp": (lambda th: second_order.affine_grid_jvp(th, _theta_affine(), SIZE), _theta_affine),
        "projective_grid_jvp": (lambda th: second_order.projective_grid_jvp(th, np.ones((2, 3, 3)), SIZE),
                                lambda: np.eye(3)[None].repeat(2, 0)),
    })


@pytest.mark.parametrize("name", sorted(THETA_CALLS))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_theta_rejected(name, bad):
    """docs/conventions.md §2.5: a non-finite theta is a ValueError naming theta and the bad value."""
    fn, make = THETA_CALLS[name]
    theta = make()
    theta.flat[-1] = bad
    CASES[f"theta {name}"] += 1
    with pytest.raises(ValueError, match="theta") as info:
        fn(theta)
    assert str(bad) in str(info.value)


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_grid_point_is_nan_everywhere_and_only_there(mode, padding_mode, bad):
    """docs/conventions.md §5.2: NaN in every channel of V and in dgrid at that point, nothing in dU."""
    U, grid = _U(), _grid()
    grid[1, 2, 3, 0] = bad
    CASES["non-finite grid"] += 1
    V = stnref.grid_sample(U, grid, mode=mode, padding_mode=padding_mode)
    dU, dgrid = stnref.grid_sample_backward(np.ones_like(V), U, grid, mode=mode, padding_mode=padding_mode)
    nan_points = np.isnan(V).any(axis=1)
    assert np.isnan(V[1, :, 2, 3]).all() and nan_points.sum() == 1
    assert np.isnan(dgrid[1, 2, 3]).all() and np.isnan(dgrid).sum() == 2
    assert np.isfinite(dU).all()
    finite = grid.copy()
    finite[1, 2, 3] = 50.0  # far outside with zeros padding contributes nothing either way
    dU_ref, _ = stnref.grid_sample_backward(np.where(np.isnan(V), 0.0, 1.0), U, finite, mode=mode,
                                            padding_mode=padding_mode)
    np.testing.assert_allclose(dU, dU_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
def test_zero_channels(mode):
    """U with C = 0 is valid: V is (N, 0, H_out, W_out), dU (N, 0, H, W), dgrid all zero."""
    U, grid = np.zeros((2, 0, 5, 4)), _grid()
    CASES["zero channels"] += 1
    V = stnref.grid_sample(U, grid, mode=mode)
    dU, dgrid = stnref.grid_sample_backward(np.zeros((2, 0, 3, 4)), U, grid, mode=mode)
    assert V.shape == (2, 0, 3, 4) and dU.shape == U.shape
    assert dgrid.shape == grid.shape and not dgrid.any()


@pytest.mark.parametrize("call, name", [
    (lambda: nn.log_softmax(np.zeros((2, 3)), axis="0"), "axis"),
    (lambda: nn.softmax(np.zeros((2, 3)), axis=0.5), "axis"),
    (lambda: nn.softmax(np.zeros((2, 0))), "logits"),
    (lambda: nn.Linear(2, 3, dtype=3), "dtype"),
    (lambda: nn.SGD(nn.Linear(2, 3), lr=0.1, lr_scale=3), "lr_scale"),
    (lambda: stnref.gradcheck(None, None, [np.zeros(3)]), "fn"),
    (lambda: stnref.gradcheck(np.sin, lambda u, x: (u * np.cos(x),), [np.zeros(3, complex)]), "inputs"),
    (lambda: L.linear(np.zeros((4, 3)), np.zeros((2, 3)), np.zeros(5)), "bias"),
    (lambda: L.conv2d(np.zeros((1, 1, 4, 4)), np.zeros((2, 1, 3, 3)), np.zeros(3)), "bias"),
    (lambda: _load_dataset(distortion="none", data_dir=3, train_size=2, test_size=2), "data_dir"),
], ids=["log_softmax-axis-str", "softmax-axis-float", "softmax-empty-classes", "Linear-dtype-int",
        "SGD-lr_scale-int", "gradcheck-fn-None", "gradcheck-complex-inputs", "linear-bias-shape",
        "conv2d-bias-shape", "load_dataset-data_dir-int"])
def test_refused_with_the_argument_named(call, name):
    """Inputs that must be refused (not silently accepted), each once found leaking numpy's message."""
    CASES["named refusals"] += 1
    with pytest.raises((ValueError, TypeError), match=name):
        call()
