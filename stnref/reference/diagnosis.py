"""Tell a kernel author which conventions their 2-D sampler follows: :func:`diagnose`.

``fn(U, grid) -> V`` is any sampler on NumPy arrays in stnref's layouts -- ``U`` is
``(N, C, H, W)`` float64, ``grid`` ``(N, H', W', 2)`` normalised ``(x, y)``, ``V``
``(N, C, H', W')`` -- with the mode and padding bound by the caller.  :func:`diagnose`
probes it with designed inputs and decides each property on its own evidence (§:
sections of docs/conventions.md):

=============  =================================================  ==============================
property       probe                                              decided by
=============  =================================================  ==============================
layout         one call on ``U`` (2, 3, 5, 7)                     the shape of ``V`` (§1.1)
coordinates    every pixel of a random image, read at its knots   which ``i = a x + b`` (and axis
               under each convention and axis order, plus         order) puts every knot on its
               points 0.01 px either side of half-integers        pixel; else a ramp fit (§3.1)
positions      a random image at 8192 positions 1/4096 px apart   exact, or constant on the cells
                                                                  of a power-of-two step (§3.7)
kernel         a one-hot pixel's impulse response, 1-D and 2-D    least squares: nearest, tent,
                                                                  Keys ``A``, cubic B-splines (§4)
padding        integer pixels from ``-3 size`` to ``4 size``;     the extension pattern, then the
               non-integer points next to the border; points      model that fits; an output mask
               0.001 to 1.5 px outside (when nothing else fits)   band and what pads inside it
                                                                  (§3.2-3.5, §4.3)
ties           every ``k + 1/2`` from ``-3 size`` to ``4 size``   the tie rule, and whether the
               (nearest only)                                     rounded index or the coordinate
                                                                  is padded (§4.2)
precision      knots and interior points of float64 data          float32 numbers out, or 1e-7 misses
                                                                  of an exact model (§1.4)
parity         ~150 points per image: general, knots, ties,       agreement with ``grid_sample``
               borders, folds, bands, far outside                 to 1e-10 (§5.1, §6.3)
non-finite     NaN, +inf, -inf in x, one call each                NaN, 0, an edge pixel, error (§5.2)
backward       knots, clip borders, duplicate points, general     one-sided rules, scatter-add,
                                                                  finite differences (§3.3-6.5)
=============  =================================================  ==============================

A property no probe can observe is named with its alternatives ("coordinate or taps"), never
guessed.  Every call is isolated: an exception or a wrong shape in one probe is a finding, and the
others still run.  A crash of the process itself (a segfault in a compiled kernel) cannot be
caught from Python.  Inputs are seeded, so the same sampler always gets the same diagnosis.
Guide: ``docs/kernel_authors.md``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys

import numpy as np

from .._text import shown
from ..sampler_settings import PYTORCH_MODES, PYTORCH_PADDING_MODES
from ..sampling import CUBIC_A, grid_sample_backward
from ._identify import (
    FD_STEP,
    TOL_ID,
    UNKNOWN,
    _Box,
    _describe_error,
    _gap,
    _probe_coordinates,
    _probe_kernel,
    _probe_layout,
    _probe_padding,
    _probe_positions,
    _probe_precision,
    _probe_ties,
    _Run,
)
from ._models import (
    CONVENTIONS,
    KERNELS,
    PADDINGS,
    PYTORCH_CONVENTIONS,
    PYTORCH_PADDINGS,
    pytorch_behaviour,
    pytorch_sample,
    to_grid,
)

__all__ = ["Diagnosis", "diagnose", "load_callable"]

MODES = PYTORCH_MODES
TORCH_PADDINGS = PYTORCH_PADDING_MODES
# kernel found -> the PyTorch mode to compare with (absent: the closest one is searched)
_MODE_OF = {"nearest": "nearest", "bilinear": "bilinear", "bicubic": "bicubic",
            "cubic B-spline": "bicubic", "cubic B-spline (not interpolating)": "bicubic"}
# PyTorch 2.13's CPU forward at a non-finite x (measured; stnref gives NaN, conventions §5.2)
FIRST, LAST = "first pixel", "last pixel"
TORCH_NON_FINITE = {  # (mode, padding_mode) -> (NaN, +inf, -inf); the same for both align_corners
    ("nearest", "zeros"): ("0", "0", "0"),
    ("nearest", "border"): (FIRST, LAST, FIRST),
    ("nearest", "reflection"): (FIRST, FIRST, FIRST),
    ("bilinear", "zeros"): ("NaN", "NaN", "NaN"),
    ("bilinear", "border"): (FIRST, LAST, FIRST),
    ("bilinear", "reflection"): (FIRST, FIRST, FIRST),
    **{("bicubic", p): ("NaN", "NaN", "NaN") for p in TORCH_PADDINGS},
}
NON_FINITE = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf}


# --------------------------------------------------------------------------- result

@dataclasses.dataclass
class Diagnosis:
    """What :func:`diagnose` found out about a sampler, with the evidence for each finding.

    Attributes
    ----------
    kernel : str
        "nearest", "bilinear", "bicubic" (Keys), "cubic B-spline", "cubic B-spline (not
        interpolating)", "none of these" or "unknown".
    cubic_a : float or None
        Keys' ``A``, fitted (PyTorch: -0.75), for "bicubic".
    coordinates : str
        "align_corners=True", "align_corners=False", another named convention (e.g.
        "pixel coordinates, i = x") or an estimated ``i = a x + b`` per axis.
    axis_order : str
        "xy" if ``grid[..., 0]`` is x, the column (PyTorch's, docs/conventions.md §1.1), or "yx".
    padding : str
        A key of the padding table (zeros, constant, border, reflection about centres or
        edges, wrap, ...), or "unknown".
    padded : str
        "coordinate" or "taps": where the padding applies (PyTorch: taps for bicubic only).
    fill : float
        Value read outside the image by the constant paddings.
    nearest_rounding : str
        "half to even", "half up", "half away from zero", "half down", "down (floor)" (a
        nearest that truncates), "none of these", "n/a" (the kernel found is not nearest)
        or "unknown".
    positions : str
        "exact" (used as given, as PyTorch does), "rounded to multiples of 1/32 px (ties to
        even)" (fixed-point positions, OpenCV's ``remap``), "n/a" (nearest) or "unknown".
    output_mask : str
        "none", or which points are set to the fill value whatever the padding, e.g. "points
        0.05 px or more outside [0, size - 1] read 0" (torch-interpol's ``extrapolate=False``).
    precision : str
        "float64", "float32", "mixed: float32 coordinates or weights" or "unknown".
    non_finite : dict
        ``{"nan", "+inf", "-inf"}`` -> what the sampler gives at such an x coordinate.
    closest : dict
        The closest PyTorch setting: ``mode``, ``padding_mode``, ``align_corners``.
    matches_pytorch : bool
        True if nothing differs from ``closest`` on finite inputs (forward, and backward
        if one was given).
    differences : list of str
        Each departure from ``closest``, citing the section of docs/conventions.md.
    backward : dict or None
        Knot rule, clip borders, duplicate points, agreement (None: no backward given).
    notes : list of str
        Observations that are not departures on finite inputs (non-finite coordinates).
    evidence : dict
        Property -> the measurements it was decided on.
    calls : int
        Number of calls made to ``fn`` and (if it was probed) ``backward``.
    """

    kernel: str = UNKNOWN
    cubic_a: float | None = None
    coordinates: str = UNKNOWN
    axis_order: str = UNKNOWN
    padding: str = UNKNOWN
    padded: str = UNKNOWN
    fill: float = 0.0
    nearest_rounding: str = UNKNOWN
    positions: str = UNKNOWN
    output_mask: str = "none"
    precision: str = UNKNOWN
    non_finite: dict = dataclasses.field(default_factory=dict)
    closest: dict = dataclasses.field(default_factory=dict)
    matches_pytorch: bool = False
    differences: list = dataclasses.field(default_factory=list)
    backward: dict | None = None
    notes: list = dataclasses.field(default_factory=list)
    evidence: dict = dataclasses.field(default_factory=dict)
    calls: int = 0

    @property
    def setting(self):
        """The closest setting as the call: ``grid_sample(mode='...', padding_mode='...', align_corners=...)``."""
        if not self.closest:
            return "grid_sample(...)"
        return "grid_sample(" + ", ".join(f"{k}={v!r}" for k, v in self.closest.items()) + ")"

    @property
    def verdict(self):
        """One sentence: matches PyTorch in a setting, or the closest setting and how many differences."""
        if self.matches_pytorch:
            what = "forward and backward" if self.backward is not None else "forward"
            return f"matches PyTorch `{self.setting}` on finite inputs ({what})"
        n = len(self.differences)
        return f"closest PyTorch setting: `{self.setting}`, with {n} difference{'s' * (n != 1)}"

    def to_json(self):
        """A JSON-serialisable dict of every field, plus ``verdict`` and ``closest_pytorch``."""
        out = dataclasses.asdict(self)
        out["verdict"] = self.verdict
        out["closest_pytorch"] = self.setting
        return out

    def report(self):
        """The findings as text: one table (found vs the closest PyTorch setting), verdict, evidence."""
        rows = [("property", "found", "PyTorch", "")]
        rows += [(name, found, "-" if torch is None else torch,
                  "" if torch is None else "ok" if torch in found.split(" or ")
                  else "?" if found == UNKNOWN else "DIFFERS")
                 for name, found, torch in self._rows()
                 if not {found, torch} <= {"-", "n/a"}]  # rows that concern neither side: dropped
        width = [max(len(r[i]) for r in rows) for i in range(3)]
        line = "  ".join(f"{{:<{w}}}" for w in width) + "  {}"
        text = [line.format(*r).rstrip() for r in rows]
        text += ["", "verdict: " + self.verdict]
        text += [f"  - {d}" for d in self.differences]
        text += [f"note: {n}" for n in self.notes]
        text += ["", "evidence:"] + [f"  {k}: {v}" for k, v in self.evidence.items()]
        of = "fn and backward" if self.backward is not None else "fn"  # backward: probed, so called
        text += [f"({self.calls} call{'s' * (self.calls != 1)} of {of})"]
        return "\n".join(text)

    __str__ = report

    def _rows(self):
        """``(property, found, PyTorch's value or None)``: None where PyTorch is not compared."""
        t = self.closest
        if not t:
            return [(k, str(getattr(self, a)), None) for k, a in
                    (("coordinates", "coordinates"), ("axis order", "axis_order"), ("kernel", "kernel"),
                     ("padding", "padding"), ("precision", "precision"))]
        mode, cubic = t["mode"], t["mode"] == "bicubic"
        padding = self.padding + (f" {self.fill:g}" if "constant" in self.padding else "")
        torch_nf = TORCH_NON_FINITE[mode, t["padding_mode"]]
        rows = [
            ("coordinates", self.coordinates, f"align_corners={t['align_corners']}"),
            ("axis order", self.axis_order, "xy"),
            ("kernel", self.kernel, mode),
            ("cubic A", _fmt(self.cubic_a), _fmt(CUBIC_A) if cubic else "-"),
            ("padding", padding, _torch_padding(t)),
            ("padded", self.padded, "taps" if cubic else "coordinate"),
            ("nearest ties", self.nearest_rounding, "half to even" if mode == "nearest" else "n/a"),
            ("positions", self.positions, "n/a" if mode == "nearest" else "exact"),
            ("output mask", self.output_mask, "none"),
            ("precision", self.precision, "float64"),
            ("non-finite x", ", ".join(f"{k} -> {v}" for k, v in self.non_finite.items()) or "-", None),
            ("  PyTorch 2.13", ", ".join(f"{k} -> {v}" for k, v in zip(NON_FINITE, torch_nf)), None),
        ]
        if self.padding in ("zeros", "constant"):  # a constant: either place gives the same
            rows[5] = ("padded", self.padded, self.padded)
        for key, value in (self.backward or {}).items():
            if key != "matches_pytorch":
                rows.append((f"backward: {key}", str(value), _torch_backward(key, t, value)))
        return rows


def _torch_backward(key, torch, value):
    if key == "gradient of fn":
        return value if value.startswith("yes") else "yes"
    if key == "knots":
        return {"bilinear": "right-sided", "nearest": "zero (nearest)"}.get(torch["mode"],
                                                                         "n/a (Keys is C1 at knots)")
    if key == "clip borders":
        clipped = torch["mode"] == "bilinear" and torch["padding_mode"] != "zeros"
        return "zero at and beyond the border" if clipped else "n/a"
    return "accumulate"


def _fmt(a):
    return "-" if a is None else f"{a:g}"


def _torch_padding(torch):
    if torch.get("padding_mode") != "reflection":
        return torch.get("padding_mode", "")
    return "reflection about " + ("centres" if torch.get("align_corners") else "edges")


def _battery_points(run, H, W):
    """Pixel points ``(ix, iy)`` of one image, labelled by group: general position and every kink."""
    rng = run.rng
    groups = {}
    groups["general"] = (rng.uniform(-1.5 * W, 2.5 * W, 40), rng.uniform(-1.5 * H, 2.5 * H, 40))
    groups["interior"] = (rng.uniform(0, W - 1, 16), rng.uniform(0, H - 1, 16))
    kx, ky = rng.integers(-2, W + 2, 12).astype(float), rng.integers(-2, H + 2, 12).astype(float)
    groups["integer knots"] = (np.concatenate([kx, rng.uniform(0, W - 1, 12), kx]),
                               np.concatenate([rng.uniform(0, H - 1, 12), ky, ky[::-1]]))
    groups["half-integers"] = (np.concatenate([kx + 0.5, rng.uniform(0, W - 1, 12)]),
                               np.concatenate([rng.uniform(0, H - 1, 12), ky + 0.5]))
    low, span = (0.0, W - 1.0) if run.d.padding == "reflection about centres" else (-0.5, float(W))
    special = np.array([0, W - 1, -0.5, W - 0.5, -0.25, W - 0.75, -1, W, low + 2 * span, low - span,
                        low + 3 * span, low - 2 * span - 0.25])
    sy = np.array([0, H - 1, -0.5, H - 0.5, -0.25, H - 0.75, -1, H, 2 * H - 1, -H])
    groups["borders and folds"] = (np.concatenate([special, rng.uniform(0, W - 1, len(sy))]),
                                   np.concatenate([rng.uniform(0, H - 1, len(special)), sy]))
    return groups


def _far_points(run, H, W):
    """Finite points far outside (conventions §5.1); reflection up to 2e4 sizes, as the golden set."""
    reflect = run.d.padding.startswith("reflection")
    far = np.array([1e2 + 0.25, 1e3 + 0.5, 2e4 + 0.75] if reflect else [1e3, 1e6, 1e15, 1e30])
    far = np.concatenate([far, -far])
    return {"far outside": (np.concatenate([far * W, run.rng.uniform(0, W - 1, len(far))]),
                            np.concatenate([run.rng.uniform(0, H - 1, len(far)), far * H]))}


def _probe_parity(run):
    """~150 points per image of a 2-image, 2-channel batch: vs PyTorch and vs the behaviour found."""
    H, W = run.geo.sizes()
    U = run.image(H, W, N=2, C=2)
    batteries = []
    for probe, points in (("parity", _battery_points), ("far outside", _far_points)):
        per_image = [points(run, H, W) for _ in range(2)]
        names = list(per_image[0])
        ix = np.stack([np.concatenate([g[k][0] for k in names]) for g in per_image])
        iy = np.stack([np.concatenate([g[k][1] for k in names]) for g in per_image])
        label = np.concatenate([[k] * len(per_image[0][k][0]) for k in names])
        V = run.sample(U, ix, iy, probe)  # far points on their own: an error there hides nothing
        if V is not None:
            batteries.append((ix, iy, label, V))
    settings = _closest_candidates(run)
    if batteries:
        ix, iy, label, V = (np.concatenate(parts, axis=-1) for parts in zip(*batteries))
    else:
        run.d.closest = dict(zip(("mode", "padding_mode", "align_corners"), settings[0]))
        return
    scale = max(1.0, float(np.abs(U).max()))
    moderate = np.abs(np.concatenate([ix, iy])).max(axis=0) < 1e6 * max(H, W)
    scored = []
    for setting in settings:
        T = pytorch_sample(U, ix, iy, setting)
        scored.append((float(np.nanmean(np.abs(V - T)[..., moderate])), setting, T))
    _, setting, T = min(scored, key=lambda s: s[0])
    run.d.closest = dict(zip(("mode", "padding_mode", "align_corners"), setting))
    run.parity = (U, ix, iy, V, T, label, scale)


def _closest_candidates(run):
    """PyTorch settings compatible with what was found; the unknown parts are searched."""
    kernel_mode = _MODE_OF.get(run.d.kernel)
    modes = [kernel_mode] if kernel_mode else list(MODES)
    torch_pad = PYTORCH_PADDINGS.get(run.d.padding)
    if torch_pad:
        paddings, needs = [torch_pad[0]], torch_pad[1]
    else:
        paddings = ["zeros"] if "constant" in run.d.padding else list(TORCH_PADDINGS)
        needs = None
    ac = PYTORCH_CONVENTIONS.get(run.d.coordinates)
    # other coordinates: PyTorch's default (conventions §1.5) unless the reflection needs one
    acs = [ac if ac is not None else needs if needs is not None else False]
    return [(m, p, a) for m in modes for p in paddings for a in acs]


def _judge_parity(run):
    """Differences from the closest setting that the properties above do not already explain."""
    if not hasattr(run, "parity"):
        return
    U, ix, iy, V, T, label, scale = run.parity
    tol = run.tolerance() * scale
    moderate = np.abs(np.concatenate([ix, iy])).max(axis=0) < 1e6 * max(U.shape[2:])
    err_torch = _gap(V, T).max(axis=1)                         # (N, P): worst channel
    run.parity_ok = bool(np.all(err_torch <= tol))
    # compare with the behaviour found (the model): what it does not predict is unexplained
    if run.d.kernel in KERNELS and run.d.padding != UNKNOWN:   # the behaviour found models it
        if "B-spline" in run.d.kernel:  # implementations approximate the infinite prefilter
            tol = max(tol, TOL_ID * scale)
        use = np.ones_like(moderate) if run.behaviour.pytorch() else moderate
        P = np.full_like(V, np.nan)
        P[..., use] = run.predict(U, ix[:, use], iy[:, use])
        # a model that is not exactly PyTorch's is not asked far out; if every property found
        # is PyTorch's, PyTorch is (a nearest whose probes cannot tell coordinate from tap padding)
        far = err_torch if not run.d.differences else 0.0
        err = np.where(use, _gap(V, P).max(axis=1), far)
        reference = "the behaviour found above"
    else:
        err, reference = err_torch, "the closest setting"
    bad = err > tol
    if bad.any():
        groups = list(dict.fromkeys(label[bad.any(axis=0)]))
        n, p = np.unravel_index(np.argmax(err), err.shape)
        where = f"pixel ({ix[n, p]:.6g}, {iy[n, p]:.6g})"
        section = "§5.1" if groups == ["far outside"] else "§3-4"
        nan_v = np.isnan(V).any(axis=1) & bad
        nans = f", NaN where {reference} is finite at {int(nan_v.sum())}" if nan_v.any() else ""
        run.d.differences.append(
            f"values differ from {reference} at {int(bad.sum())} of {bad.size} points "
            f"({', '.join(groups)}{nans}): max error {err.max():.2e} at {where} "
            f"(docs/conventions.md {section})")
    run.d.evidence["parity"] = (f"{V.shape[-1]} points in each of 2 images x 2 channels "
                                f"({', '.join(dict.fromkeys(label))}): max |fn - {run.d.setting}| = "
                                f"{err_torch.max():.1e}, max |fn - model| = {err.max():.1e}")


def _property_differences(run):
    """One line per property that departs from the closest PyTorch setting."""
    d, diffs = run.d, run.d.differences
    mode, pad, ac = (d.closest.get(k) for k in ("mode", "padding_mode", "align_corners"))
    if d.coordinates != f"align_corners={ac}" and d.coordinates != UNKNOWN:
        rule = "(x + 1)/2 * (size - 1)" if ac else "((x + 1) * size - 1)/2"
        diffs.insert(0, f"coordinates: {d.coordinates}; PyTorch's grid is normalised, "
                        f"i = {rule} with align_corners={ac} (docs/conventions.md §3.1)")
    if d.axis_order == "yx":
        diffs.insert(0, "axis order: the grid is read as (y, x); PyTorch's last grid axis is (x, y) "
                        "(docs/conventions.md §1.1)")
    if d.kernel != mode:
        what = {"none of these": "a kernel that is none of nearest, bilinear, Keys cubic, cubic B-spline",
                UNKNOWN: "an unknown kernel (its probe failed)"}.get(d.kernel, d.kernel)
        diffs.append(f"kernel: {what}; PyTorch's {mode} is "
                     f"{'Keys cubic convolution with A = -0.75' if mode == 'bicubic' else mode} "
                     f"(docs/conventions.md §4, §7.3)")
    elif mode == "bicubic" and d.cubic_a != CUBIC_A:
        diffs.append(f"kernel: Keys cubic convolution with A = {d.cubic_a:g}; PyTorch uses A = -0.75 "
                     f"(docs/conventions.md §4.3)")
    expected = pytorch_behaviour(mode, pad, ac) if mode else None
    if expected and d.padding != expected.padding:
        detail = f" {d.fill:g}" if "constant" in d.padding else ""
        pictures = " or ".join(PADDINGS[p].picture for p in d.padding.split(" or ") if p in PADDINGS)
        diffs.append(f"padding: {d.padding}{detail} ({pictures or 'none of the pictures'}"
                     f"); PyTorch's {_torch_padding(d.closest)} is {PADDINGS[expected.padding].picture} "
                     f"(docs/conventions.md §3.2-3.5)")
    elif (expected and d.kernel == mode and d.padded != UNKNOWN and d.padding != "zeros"
          and expected.pads not in d.padded.split(" or ")):
        how = ("pads the coordinate before taking the taps" if d.padded == "coordinate"
               else "rounds first, then pads the integer index" if mode == "nearest" else "pads each integer tap")
        diffs.append(f"padding: {how}; PyTorch {'pads each tap' if mode == 'bicubic' else 'pads the coordinate'}"
                     f" for {mode} (docs/conventions.md §3.2, §4.3)")
    if d.kernel != "nearest":
        pass              # ties are a property of the nearest kernel: the kernel line says it all
    elif mode == "nearest" and d.nearest_rounding == "down (floor)":
        diffs.append("nearest rounding: down (floor), pixel m read on [m, m + 1); PyTorch rounds to the "
                     "nearest pixel, [m - 1/2, m + 1/2], half to even (docs/conventions.md §4.2)")
    elif mode == "nearest" and "half to even" not in d.nearest_rounding.split(" or "):
        diffs.append(f"nearest ties: {d.nearest_rounding}; PyTorch rounds half to even "
                     f"(docs/conventions.md §4.2)")
    if d.positions.startswith("rounded"):
        diffs.append(f"positions: {d.positions} before the kernel; PyTorch interpolates at the position "
                     f"as given (docs/conventions.md §3.1, §3.7)")
    if d.output_mask != "none":
        diffs.append(f"output mask: {d.output_mask}, whatever the padding; PyTorch's {_torch_padding(d.closest)} "
                     f"padding has no such cut (docs/conventions.md §3.2-3.5)")
    if d.precision not in ("float64", UNKNOWN):
        diffs.append(f"precision: {d.precision} for float64 input; PyTorch computes in the input's dtype "
                     f"(docs/conventions.md §1.4)")
    for probe, why in run.box.failures.items():
        if not probe.startswith(("non-finite", "backward", "layout")):
            section = _PROBE_SECTIONS.get(probe, "§3-4")
            cite = "" if "conventions.md" in why else f" (docs/conventions.md {section})"
            diffs.append(f"{probe}: fn {why}{cite}")


# probe -> the section of docs/conventions.md whose rules it checks
_PROBE_SECTIONS = {"coordinates": "§3.1", "positions": "§3.7", "kernel": "§4", "padding (knots)": "§3.2-3.5",
                   "padding (border)": "§3.2-3.5", "padding (band)": "§3.2-3.5", "nearest ties": "§4.2", "precision": "§1.4",
                   "parity": "§3-4", "far outside": "§5.1"}


def _probe_non_finite(run):
    """NaN, +inf and -inf in the x coordinate of one point, each call on its own."""
    H, W = run.geo.sizes()
    U = run.image(H, W, C=2)
    ix = np.array([W / 2 - 0.3, W / 2 + 0.2, 1.3, W - 2.2, 0.0, W - 1.0])[None]
    iy = np.array([H / 2 + 0.1, H / 2 - 0.4, 1.6, H - 1.7, H / 2 - 0.4, H / 2 - 0.4])[None]
    ref = run.sample(U, ix, iy, "non-finite (reference)")
    base = run.geo.grid(ix[:, :4], iy[:, :4], H, W)
    found = {}
    for key, value in NON_FINITE.items():
        grid = base.copy()
        grid[0, 0, 1, run.geo.x_component] = value
        V, why = run.box.sample(U, grid, f"non-finite ({key})")
        if V is None:
            found[key] = "error: " + why.removeprefix("raised ")
            continue
        v, others = V[0, :, 0, 1], V[0, :, 0, [0, 2, 3]]
        if np.isnan(v).all():
            found[key] = "NaN"
        elif np.isnan(v).any():
            found[key] = "NaN in some channels"
        elif np.all(v == 0):
            found[key] = "0"
        elif ref is not None and np.allclose(v, ref[0, :, 4], rtol=0, atol=TOL_ID):
            found[key] = FIRST
        elif ref is not None and np.allclose(v, ref[0, :, 5], rtol=0, atol=TOL_ID):
            found[key] = LAST
        else:
            found[key] = f"a finite value ({v[0]:.4g})" if np.isfinite(v).all() else "inf"
        if ref is not None and not np.allclose(others.T, ref[0, :, [0, 2, 3]].T, rtol=0, atol=TOL_ID,
                                               equal_nan=True):
            found[key] += " and other points change"
    run.d.non_finite = found
    run.d.evidence["non-finite"] = "one point of four with x = NaN, +inf, -inf (y finite), one call each"
    if any(v != "NaN" for v in found.values()):
        torch_nf = TORCH_NON_FINITE.get((run.d.closest.get("mode"), run.d.closest.get("padding_mode")))
        as_torch = torch_nf is not None and tuple(found.values()) == torch_nf
        run.d.notes.append(
            "non-finite x gives " + ", ".join(f"{k} -> {v}" for k, v in found.items())
            + ("; as PyTorch 2.13 does in this setting" if as_torch else "")
            + "; stnref gives NaN in every channel and no gradient (docs/conventions.md §5.2)")


# --------------------------------------------------------------------------- probes: backward

def _fd_slope(run, U, ix, iy, axis, h):
    """``(fn(i + h) - fn(i)) / h`` along ``axis`` ("x"/"y"), per grid unit: ``(P,)`` or None."""
    H, W = U.shape[2:]
    (ax, _), (ay, _) = run.geo.maps(H, W)
    sx, sy = (h, 0.0) if axis == "x" else (0.0, h)
    V0 = run.sample(U, ix, iy, "backward (finite differences)")
    V1 = run.sample(U, ix + sx, iy + sy, "backward (finite differences)")
    if V0 is None or V1 is None:
        return None
    return (V1 - V0)[0, 0] / (h / (ax if axis == "x" else ay))


def _classify(observed, hypotheses, scale):
    """Name of the first hypothesis ``observed`` agrees with (to ``TOL_ID * scale``), else "other"."""
    for name, pred in hypotheses.items():
        if pred is not None and np.abs(observed - pred).max() <= TOL_ID * scale:
            return name
    return "other"


def _backward_knots(run, H, W):
    """Bilinear at integer pixel coordinates: which one-sided slope does ``dgrid`` take?"""
    if run.d.kernel != "bilinear":
        return {"nearest": "zero (nearest)", "bicubic": "n/a (Keys is C1 at knots)"}.get(run.d.kernel, "n/a")
    U = run.image(H, W)
    found = []
    for axis, ix, iy in (("x", np.array([[1.0, 2.0, W - 2.0]]), np.array([[1.3, H / 2 + 0.4, H - 1.7]])),
                         ("y", np.array([[1.3, W / 2 + 0.4, W - 1.7]]), np.array([[1.0, 2.0, H - 2.0]]))):
        grid = run.geo.grid(ix, iy, H, W)
        out, _ = run.box.gradients(np.ones((1, 1, 1, 3)), U, grid, "backward (knots)")
        right = _fd_slope(run, U, ix, iy, axis, 0.25)
        left = _fd_slope(run, U, ix, iy, axis, -0.25)
        V = run.sample(U, ix, iy, "backward (knots)")
        if out is None or right is None or left is None or V is None:
            return UNKNOWN
        (ax, _), (ay, _) = run.geo.maps(H, W)
        comp = run.geo.x_component if axis == "x" else 1 - run.geo.x_component
        observed = out[1][0, 0, :, comp]
        found.append(_classify(observed, {
            "right-sided": right, "left-sided": left, "average of both sides": (right + left) / 2,
            "paper eq. (7): +U at the knot": V[0, 0] * (ax if axis == "x" else ay)},
            max(1.0, float(np.abs(right).max()))))
    return found[0] if found[0] == found[1] else f"x: {found[0]}, y: {found[1]}"


def _backward_borders(run, H, W):
    """Border / reflection with bilinear: ``dgrid`` at ``i = 0`` and ``size - 1`` exactly."""
    if run.d.kernel != "bilinear" or run.d.padding not in (
            "border", "reflection about centres", "reflection about edges"):
        return "n/a"
    U = run.image(H, W)
    found = []
    for axis, ix, iy in (("x", np.array([[0.0, W - 1.0]]), np.array([[1.3, H - 1.6]])),
                         ("y", np.array([[1.3, W - 1.6]]), np.array([[0.0, H - 1.0]]))):
        out, _ = run.box.gradients(np.ones((1, 1, 1, 2)), U, run.geo.grid(ix, iy, H, W),
                                   "backward (clip borders)")
        right = _fd_slope(run, U, ix, iy, axis, 0.25)
        left = _fd_slope(run, U, ix, iy, axis, -0.25)
        if out is None or right is None or left is None:
            return UNKNOWN
        comp = run.geo.x_component if axis == "x" else 1 - run.geo.x_component
        inside = np.array([right[0], left[1]])  # the slope on the image side of each border
        found.append(_classify(out[1][0, 0, :, comp], {
            "zero at and beyond the border": np.zeros(2), "the slope inside the image": inside},
            max(1.0, float(np.abs(inside).max()))))
    return found[0] if found[0] == found[1] else f"x: {found[0]}, y: {found[1]}"


def _backward_duplicates(run, H, W):
    """Five copies of one point against one: does ``dU`` add them up (a scatter-add)?"""
    U = run.image(H, W)
    ix, iy = np.full((1, 5), W / 2 - 0.3), np.full((1, 5), H / 2 + 0.2)
    one, _ = run.box.gradients(np.ones((1, 1, 1, 1)), U, run.geo.grid(ix[:, :1], iy[:, :1], H, W),
                               "backward (duplicates)")
    five, _ = run.box.gradients(np.ones((1, 1, 1, 5)), U, run.geo.grid(ix, iy, H, W),
                                "backward (duplicates)")
    if one is None or five is None or not np.any(one[0]):
        return UNKNOWN
    ratio = float(np.sum(five[0] * one[0]) / np.sum(one[0] * one[0]))
    if abs(ratio - 5) < 1e-6:
        return "accumulate"
    return "keep one of them" if abs(ratio - 1) < 1e-6 else f"other ({ratio:.4g} times one point)"


def _backward_general(run, H, W):
    """Points away from every kink: ``<dV, J t> = <dU, tU> + <dgrid, tgrid>`` by central
    differences of ``fn``, and ``grid_sample_backward`` when the forward matches PyTorch."""
    rng = run.rng
    U = run.image(H, W, N=2, C=2)
    frac = rng.choice([0.2, 0.3, 0.7, 0.8], (2, 2, 24)) + rng.uniform(-0.05, 0.05, (2, 2, 24))
    ix = np.floor(rng.uniform(-1.5 * W, 2.5 * W, (2, 24))) + frac[0]
    iy = np.floor(rng.uniform(-1.5 * H, 2.5 * H, (2, 24))) + frac[1]
    grid = run.geo.grid(ix, iy, H, W)
    dV = rng.standard_normal((2, 2, 1, 24))
    out, _ = run.box.gradients(dV, U, grid, "backward (general)")
    if out is None:
        return UNKNOWN, None
    dU, dgrid = out
    float32 = run.d.precision != "float64"
    step, tol = (1e-2, 1e-3) if float32 else (FD_STEP, 1e-6)
    (ax, _), (ay, _) = run.geo.maps(H, W)
    per_pixel = np.array([1 / ax, 1 / ay] if run.geo.order == "xy" else [1 / ay, 1 / ax])
    tU, tgrid = rng.standard_normal(U.shape), rng.standard_normal(grid.shape) * per_pixel
    plus, _ = run.box.sample(U + step * tU, grid + step * tgrid, "backward (finite differences)")
    minus, _ = run.box.sample(U - step * tU, grid - step * tgrid, "backward (finite differences)")
    if plus is None or minus is None:
        return UNKNOWN, None
    lhs = float(np.sum(dV * (plus - minus)) / (2 * step))
    rhs = float(np.sum(dU * tU) + np.sum(dgrid * tgrid))
    rel = abs(lhs - rhs) / max(1.0, abs(lhs), abs(rhs))
    consistent = f"yes (finite differences agree to {rel:.1e})" if rel <= tol else \
        f"no: <dV, J t> = {lhs:.6g} by finite differences, {rhs:.6g} from backward"
    if not getattr(run, "parity_ok", False):
        return consistent, None
    # PyTorch's gradient in the box's own coordinates: d/dg_box = d/dg_torch * a_box / a_torch
    setting = tuple(run.d.closest.values())
    name = f"align_corners={setting[2]}"
    (tx, _), (ty, _) = CONVENTIONS[name](W), CONVENTIONS[name](H)
    tgrid_torch = to_grid(ix, iy, (CONVENTIONS[name](W), CONVENTIONS[name](H)), "xy")[:, None]
    eU, eg = grid_sample_backward(dV, U, tgrid_torch, *setting)
    eg = eg * np.array([ax / tx, ay / ty])
    if run.geo.order == "yx":
        eg = eg[..., ::-1]
    tol = run.tolerance()
    ok = (np.abs(dU - eU).max() <= tol * max(1.0, np.abs(eU).max())
          and np.abs(dgrid - eg).max() <= tol * max(1.0, np.abs(eg).max()))
    return consistent, bool(ok)


def _probe_backward(run):
    if run.box.backward is None:
        return
    H, W = run.geo.sizes()
    consistent, agrees = _backward_general(run, H, W)
    b = {"gradient of fn": consistent, "knots": _backward_knots(run, H, W),
         "clip borders": _backward_borders(run, H, W), "duplicates": _backward_duplicates(run, H, W),
         "matches_pytorch": agrees}
    run.d.backward = b
    diffs = run.d.differences
    before = len(diffs)
    for probe, why in run.box.failures.items():
        if probe.startswith("backward") and "finite differences" not in probe:
            diffs.append(f"{probe}: backward {why}")
    if b["knots"] not in ("right-sided", "n/a", UNKNOWN) and run.d.kernel == "bilinear":
        diffs.append(f"backward at integer knots: {b['knots']}; PyTorch takes the right-sided derivative "
                     f"in the padded coordinate (docs/conventions.md §4.1, §6.5)")
    if b["clip borders"] not in ("zero at and beyond the border", "n/a", UNKNOWN):
        diffs.append(f"backward on the clip border: {b['clip borders']}; PyTorch's multiplier is 0 at the "
                     f"border itself (docs/conventions.md §3.3, §6.5)")
    if b["duplicates"] not in ("accumulate", UNKNOWN):
        diffs.append(f"backward with duplicate points: dU {b['duplicates']}; it must be a scatter-add "
                     f"(docs/conventions.md §6.2)")
    if consistent.startswith("no"):
        diffs.append(f"backward is not the gradient of fn: {consistent[4:]} (docs/conventions.md §7.1)")
    if agrees is False and not any(d.startswith("backward") for d in diffs):
        diffs.append(f"backward differs from grid_sample_backward in {run.d.setting} away from kinks "
                     f"(docs/conventions.md §6.3)")
    if agrees and len(diffs) > before:   # right away from kinks, not at them
        b["matches_pytorch"] = False
    run.d.evidence["backward"] = ("24 points per image away from kinks (random-direction finite differences "
                                  "of fn), integer knots, clip borders, 5 copies of one point")


# --------------------------------------------------------------------------- entry points

def diagnose(fn, backward=None):
    """Probe a black-box 2-D sampler and say which of PyTorch's conventions it follows.

    Parameters
    ----------
    fn : callable
        ``fn(U, grid) -> V`` with ``U`` ``(N, C, H, W)`` float64, ``grid``
        ``(N, H', W', 2)`` normalised ``(x, y)`` (docs/conventions.md §1.1), returning
        ``V`` ``(N, C, H', W')`` as anything ``np.asarray`` accepts.  Bind your own mode and
        padding, e.g. ``lambda U, g: my_sampler(U, g, mode="bilinear")``.  It receives
        copies; it may raise, return the wrong shape or NaN: each is a finding.
    backward : callable, optional
        ``backward(dV, U, grid) -> (dU, dgrid)``, the vector-Jacobian product of ``fn``.

    Returns
    -------
    Diagnosis
        Each property with its evidence, the closest PyTorch setting, whether it matches on
        finite inputs, and every difference with its section of docs/conventions.md.
        ``str(diagnosis)`` is the report; ``diagnosis.to_json()`` a dict.

    Raises
    ------
    TypeError
        ``fn`` (or ``backward``) is not callable.

    Notes
    -----
    About 25 calls of ``fn`` on images of at most 41 x 41 pixels, about 50 with a
    ``backward`` (more when no named coordinate convention fits).  A process crash inside ``fn`` (a segfault) ends the diagnosis; run
    suspect kernels in a subprocess.

    Examples
    --------
    >>> from stnref import grid_sample
    >>> d = diagnose(lambda U, grid: grid_sample(U, grid, mode="nearest", align_corners=True))
    >>> d.matches_pytorch, d.kernel, d.coordinates, d.nearest_rounding
    (True, 'nearest', 'align_corners=True', 'half to even')
    >>> d.verdict
    "matches PyTorch `grid_sample(mode='nearest', padding_mode='zeros', align_corners=True)` on finite inputs (forward)"
    """
    for name, f in (("fn", fn), ("backward", backward)):
        if (f is not None or name == "fn") and not callable(f):
            call = "fn(U, grid) -> V" if name == "fn" else "backward(dV, U, grid) -> (dU, dgrid)"
            raise TypeError(f"diagnose(): expected {name} to be a callable {call}, "
                            f"got {type(f).__name__} {f!r:.60}")
    run = _Run(_Box(fn, backward), Diagnosis())
    if _probe_layout(run) and _probe_coordinates(run):
        _probe_positions(run)
        _probe_kernel(run)
        _probe_padding(run)
        _probe_ties(run)
        _probe_precision(run)
        _probe_parity(run)
        _property_differences(run)
        _judge_parity(run)
        _probe_non_finite(run)
        _probe_backward(run)
    run.d.calls = run.box.calls
    run.d.matches_pytorch = not run.d.differences
    return run.d


def load_callable(spec):
    """Import ``"package.module:function"`` (the function may be dotted, ``Class.method``).

    The current directory is searched first, so ``stnref reference diagnose mymod:fn`` finds
    ``./mymod.py``.

    Parameters
    ----------
    spec : str
        ``MODULE:FUNCTION``.

    Returns
    -------
    callable

    Raises
    ------
    ValueError
        One message naming ``spec`` and the reason: not ``MODULE:FUNCTION``, the module
        cannot be imported (with its error), no such attribute, or not callable.

    Examples
    --------
    >>> load_callable("stnref:grid_sample").__name__
    'grid_sample'
    """
    fn = "load_callable"
    parts = spec.split(":") if isinstance(spec, str) else []
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"{fn}(): expected 'MODULE:FUNCTION', e.g. 'mypackage.sampler:grid_sample', "
                         f"got {shown(repr(spec))}")
    modname, attr = parts
    # the user's module runs here: whatever its import or an attribute lookup raises (even
    # SystemExit, which would end the CLI with status 0) is reported, only Ctrl-C goes through
    try:
        here = os.getcwd()
        added = here not in sys.path
        if added:
            sys.path.insert(0, here)
        try:
            obj = importlib.import_module(modname)
        finally:
            if added and here in sys.path:     # the module may have edited sys.path itself
                sys.path.remove(here)
    except KeyboardInterrupt:
        raise
    except BaseException as err:
        raise ValueError(f"{fn}(): cannot import module {shown(repr(modname))} of "
                         f"{shown(repr(spec))}: {_failure(err)}") from err
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except KeyboardInterrupt:
            raise
        except AttributeError:
            raise ValueError(f"{fn}(): {shown(repr(modname))} has no attribute {shown(repr(attr))} "
                             f"(from {shown(repr(spec))})") from None
        except BaseException as err:
            raise ValueError(f"{fn}(): looking up {shown(repr(part))} of {shown(repr(spec))} "
                             f"failed: {_failure(err)}") from err
    if not callable(obj):
        raise ValueError(f"{fn}(): {shown(repr(spec))} is a {type(obj).__name__}, not a callable")  # noqa: TRY004
    return obj


def _failure(err):
    """What a user module's exception says; its type alone if even that fails."""
    try:
        return _describe_error(err)
    except Exception:    # a hostile __str__
        return type(err).__name__
