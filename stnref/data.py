"""Digits for the distorted-MNIST experiments (paper §4.1): built-in or MNIST files.

Three parts:

* :func:`synthetic_digits` draws procedural handwritten digits -- pen-font stroke
  templates bent by random jitter, slant, aspect, rotation and a smooth local
  deformation, rendered anti-aliased into an MNIST-like 28x28 frame.  No download.
* :func:`distort` applies the paper's distortions (R, RTS, P, E, TC) to any
  ``(n, 28, 28)`` digit source with stnref's own grid generators and sampler.
* :func:`read_idx` / :func:`write_idx` / :func:`load_mnist` handle the IDX files
  MNIST is distributed in (``CONVENTIONS.md`` §9).

:func:`load_dataset` puts them together.  Everything random comes from
``numpy.random.SeedSequence(entropy, spawn_key=(chunk,))`` per fixed-size chunk,
so the same seed gives bit-identical data and the first ``k`` samples of a set
of ``n`` equal a set of ``k``.  Details and measurements: ``docs/data.md``.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np

from . import _checks, grids
from ._io import atomic_open
from .sampling import grid_sample

__all__ = [
    "DISTORTIONS", "distort", "load_dataset", "load_mnist", "read_idx",
    "synthetic_digits", "write_idx",
]

# --------------------------------------------------------------------------- constants

NUM_CLASSES = 10
CHUNK = 1024                  # samples per generator chunk; fixed, so prefixes agree
MNIST_SIZE = 28               # MNIST frame; the digit sits in a 20x20 box inside it
MNIST_BOX = 20

# Stroke templates live in a unit box (x right, y down).  Catmull-Rom curves through
# the control points are sampled at this many points per unit of template length,
# which keeps neighbouring points under half a pixel apart after scaling to the box.
POINTS_PER_UNIT = 48

# Per-sample shape variation (template units unless noted).
JITTER_STD = 0.035            # control-point jitter
SLANT_MAX = 0.4               # shear x += slant * (0.5 - y)
ROTATION_MAX_DEG = 15.0
LOG_ASPECT_STD = 0.2          # width multiplier exp(N(0, .))
WAVES = 3                     # smooth deformation: sum of this many random sine waves
WAVE_AMPLITUDE_STD = 0.04
WAVE_FREQUENCY_STD = 3.0      # radians per template unit
FILL_RANGE = (0.8, 1.0)       # longest side, as a fraction of the box minus the stroke
OFFSET_MAX_PX = 1.5           # uniform offset of the box centre, in 28x28 pixels
# Rendering: unit ink per pixel of stroke length, blurred by a Gaussian of width
# BLUR_SIGMA_RANGE (pixels), then 1 - exp(-gain * ink / peak) with gain in GAIN_RANGE.
BLUR_SIGMA_RANGE = (0.55, 0.95)
BLUR_TRUNCATE = 3.0           # Gaussian kernels reach this many sigma
GAIN_RANGE = (2.0, 5.0)

# Distortions (paper §4.1 appendix).  Pixel quantities are in 28x28 source pixels.
DISTORTIONS = ("none", "r", "rts", "p", "e", "tc")
R_ANGLE_MAX_DEG = 90.0
RTS_ANGLE_MAX_DEG = 45.0
RTS_SCALE_RANGE = (0.7, 1.2)
RTS_CANVAS = 42
P_SCALE_RANGE = (0.75, 1.0)
P_CORNER_STD_PX = 5.0
P_TRIES = 4                   # corner draws per sample; ~1.3 % of single draws fold the image
E_SCALE_RANGE = (0.75, 1.0)
E_CONTROL_STD_PX = 1.5
E_CONTROL_POINTS = 16
TC_CANVAS = 60
TC_PATCHES = 6
TC_PATCH = 6
TC_WINDOW = MNIST_SIZE + 1    # canvas pixels a sub-pixel translated 28x28 frame can touch
# Clutter crops are taken inside the 20x20 box, where the ink is.
TC_CROP_RANGE = ((MNIST_SIZE - MNIST_BOX) // 2, (MNIST_SIZE + MNIST_BOX) // 2 - TC_PATCH)

# Seeds for load_dataset: (seed, split, stage).  Tags are nonzero because SeedSequence
# pads entropy with zeros, so (seed, 0) would equal (seed,).
TRAIN, TEST = 1, 2
STAGE_DIGITS, STAGE_DISTORT = 1, 2
DEFAULT_SIZES = {TRAIN: 60_000, TEST: 10_000}

# IDX (CONVENTIONS.md §9).
IDX_UINT8 = 0x08
IDX_NDIMS = (1, 3)            # labels, images
IDX_READ_CHUNK = 1 << 20      # bytes per read from a .gz stream
IDX_DTYPE_NAMES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32",
                   0x0D: "float32", 0x0E: "float64"}
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}
PIXEL_MAX = 255.0


def _chunk_rng(entropy, chunk):
    """The generator of chunk ``chunk``: independent of how many chunks are drawn."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy, spawn_key=(chunk,))))


def _check_seed(seed, fn):
    return _checks.check_int(seed, "seed", fn, minimum=0)


# --------------------------------------------------------------------------- templates

def _arc(cx, cy, rx, ry, start_deg, stop_deg, k):
    """``k`` points on an elliptic arc (angles clockwise on screen, 0 = right)."""
    a = np.deg2rad(np.linspace(start_deg, stop_deg, k))
    return [(cx + rx * c, cy + ry * s) for c, s in zip(np.cos(a), np.sin(a))]


# One entry per digit: a list of variants, each a list of strokes (control-point
# polylines).  Points repeated exactly, within or across strokes, are one control point,
# so joints stay joined under jitter.
_GLYPHS = {
    0: [[_arc(0.5, 0.5, 0.3, 0.5, -95, 275, 13)]],
    1: [[[(0.5, 0.0), (0.5, 0.5), (0.5, 1.0)]],
        [[(0.28, 0.22), (0.5, 0.0)], [(0.5, 0.0), (0.5, 0.5), (0.5, 1.0)]]],
    2: [[[(0.2, 0.25), (0.3, 0.07), (0.5, 0.0), (0.7, 0.07), (0.78, 0.25), (0.7, 0.45),
          (0.45, 0.7), (0.2, 0.97)],
         [(0.2, 0.97), (0.5, 0.97), (0.82, 0.97)]]],
    3: [[[(0.22, 0.1), (0.45, 0.0), (0.7, 0.08), (0.72, 0.27), (0.45, 0.46)],
         [(0.45, 0.46), (0.72, 0.58), (0.76, 0.8), (0.52, 1.0), (0.2, 0.92)]]],
    4: [[[(0.62, 0.0), (0.38, 0.33), (0.12, 0.66)], [(0.12, 0.66), (0.5, 0.66), (0.88, 0.66)],
         [(0.66, 0.15), (0.65, 0.6), (0.63, 1.0)]],
        [[(0.2, 0.0), (0.17, 0.3), (0.15, 0.6)], [(0.15, 0.6), (0.5, 0.62), (0.85, 0.6)],
         [(0.7, 0.02), (0.68, 0.5), (0.66, 1.0)]]],
    5: [[[(0.78, 0.0), (0.5, 0.0), (0.3, 0.0)], [(0.3, 0.0), (0.28, 0.22), (0.26, 0.44)],
         [(0.26, 0.44), (0.45, 0.37), (0.68, 0.45), (0.77, 0.68), (0.65, 0.92), (0.42, 1.0),
          (0.18, 0.9)]]],
    6: [[[(0.68, 0.0), (0.45, 0.18), (0.28, 0.45), (0.24, 0.72), (0.35, 0.95), (0.55, 1.0),
          (0.73, 0.85), (0.72, 0.63), (0.52, 0.52), (0.32, 0.6), (0.26, 0.72)]]],
    7: [[[(0.15, 0.02), (0.5, 0.02), (0.85, 0.0)], [(0.85, 0.0), (0.62, 0.45), (0.45, 1.0)]],
        [[(0.15, 0.02), (0.5, 0.02), (0.85, 0.0)], [(0.85, 0.0), (0.62, 0.45), (0.45, 1.0)],
         [(0.4, 0.52), (0.58, 0.5), (0.78, 0.48)]]],
    8: [[[(0.7, 0.12), (0.5, 0.0), (0.3, 0.1), (0.3, 0.3), (0.5, 0.47), (0.72, 0.63),
          (0.74, 0.85), (0.52, 1.0), (0.28, 0.88), (0.28, 0.65), (0.5, 0.47), (0.7, 0.3),
          (0.7, 0.12)]]],
    9: [[[(0.74, 0.2), (0.55, 0.0), (0.32, 0.05), (0.24, 0.25), (0.36, 0.44), (0.58, 0.42),
          (0.74, 0.2)],
         [(0.74, 0.2), (0.72, 0.6), (0.68, 1.0)]]],
}


def _catmull_rom_weights(t):
    """Uniform Catmull-Rom basis: weights of ``P0..P3`` at ``t`` in [0, 1), shape (len(t), 4)."""
    t2, t3 = t * t, t * t * t
    w = [-t + 2 * t2 - t3, 2 - 5 * t2 + 3 * t3, t + 4 * t2 - 3 * t3, t3 - t2]
    return 0.5 * np.stack(w, axis=1)


def _variant_matrices(strokes):
    """Control points ``(K, 2)``, sampling matrix ``(P, K)``, stroke id per dense point ``(P,)``."""
    keys = {}
    for stroke in strokes:
        for p in stroke:
            keys.setdefault(p, len(keys))
    ctrl = np.array(list(keys), dtype=np.float64)
    rows, stroke_ids = [], []
    for s, stroke in enumerate(strokes):
        idx = [keys[p] for p in stroke]
        padded = [idx[0], *idx, idx[-1]]  # end tangents from duplicated end points
        for j in range(len(idx) - 1):
            length = np.hypot(*(ctrl[idx[j + 1]] - ctrl[idx[j]]))
            m = max(2, math.ceil(length * POINTS_PER_UNIT))
            last = j == len(idx) - 2
            t = np.arange(m + last) / m  # the stroke's final segment also emits t = 1
            w = _catmull_rom_weights(t)
            block = np.zeros((len(t), len(ctrl)))
            for q in range(4):
                block[:, padded[j + q]] += w[:, q]
            rows.append(block)
            stroke_ids.extend([s] * len(t))
    return ctrl, np.concatenate(rows), np.array(stroke_ids)


def _build_templates():
    """Stack every variant, padded to common sizes.

    Returns control points ``(V, K, 2)``, sampling matrices ``(V, P, K)``, a mask
    ``(V, P - 1)`` of consecutive dense points on the same stroke, and per digit the
    first variant index and variant count.  Padding dense points repeat the last real
    point (so bounding boxes are unchanged) and are masked out of the ink.
    """
    variants = [(d, _variant_matrices(strokes)) for d in range(NUM_CLASSES) for strokes in _GLYPHS[d]]
    K = max(v[1][0].shape[0] for v in variants)
    P = max(v[1][1].shape[0] for v in variants)
    ctrl = np.zeros((len(variants), K, 2))
    dense = np.zeros((len(variants), P, K))
    same_stroke = np.zeros((len(variants), P - 1), dtype=bool)
    for v, (_, (c, d, ids)) in enumerate(variants):
        ctrl[v, :len(c)] = c
        dense[v, :len(d), :len(c)] = d
        dense[v, len(d):, :len(c)] = d[-1]
        same_stroke[v, :len(d) - 1] = ids[1:] == ids[:-1]
    digits = np.array([d for d, _ in variants])
    first = np.searchsorted(digits, np.arange(NUM_CLASSES))
    count = np.bincount(digits, minlength=NUM_CLASSES)
    return ctrl, dense, same_stroke, first, count


_CTRL, _DENSE, _SAME_STROKE, _VARIANT_FIRST, _VARIANT_COUNT = _build_templates()


# --------------------------------------------------------------------------- digits

def _draw_digit_params(rng, m):
    """Every random number of one chunk of ``m`` digits, in a fixed order."""
    labels = rng.permutation(np.arange(m) % NUM_CLASSES)
    variant = _VARIANT_FIRST[labels] + (rng.random(m) * _VARIANT_COUNT[labels]).astype(np.int64)
    return {
        "labels": labels,
        "variant": variant,
        "jitter": rng.normal(0.0, JITTER_STD, size=(m, _CTRL.shape[1], 2)),
        "wave_amp": rng.normal(0.0, WAVE_AMPLITUDE_STD, size=(m, WAVES, 2)),
        "wave_freq": rng.normal(0.0, WAVE_FREQUENCY_STD, size=(m, WAVES, 2)),
        "wave_phase": rng.uniform(0.0, 2 * np.pi, size=(m, WAVES)),
        "slant": rng.uniform(-SLANT_MAX, SLANT_MAX, size=m),
        "rotation": np.deg2rad(rng.uniform(-ROTATION_MAX_DEG, ROTATION_MAX_DEG, size=m)),
        "log_aspect": rng.normal(0.0, LOG_ASPECT_STD, size=m),
        "fill": rng.uniform(*FILL_RANGE, size=m),
        "offset": rng.uniform(-OFFSET_MAX_PX, OFFSET_MAX_PX, size=(m, 2)),
        "sigma": rng.uniform(*BLUR_SIGMA_RANGE, size=m),
        "gain": rng.uniform(*GAIN_RANGE, size=m),
    }


def _stroke_points(p, size):
    """Dense stroke points in pixel coordinates, coordinate-major ``(m, 2, P)``.

    Rows are ``x, y`` (y down); pixel centres sit at ``k + 0.5``.  The
    coordinate-major layout keeps every reduction over points contiguous.
    """
    m = len(p["labels"])
    ctrl = (_CTRL[p["variant"]] + p["jitter"]).transpose(0, 2, 1)   # (m, 2, K)
    pts = np.empty((m, 2, _DENSE.shape[1]))                         # (m, 2, P)
    for v in range(len(_DENSE)):  # one product per template variant, not per sample
        sel = p["variant"] == v
        pts[sel] = np.matmul(ctrl[sel], _DENSE[v].T)
    pts -= 0.5                                                      # centred on the box
    # smooth local deformation: displacement sum_j a_j sin(w_j . pts + phi_j)
    freq = p["wave_freq"][..., None]                                # (m, J, 2, 1)
    phase = freq[:, :, 0] * pts[:, None, 0] + freq[:, :, 1] * pts[:, None, 1]
    wave = np.sin(phase + p["wave_phase"][..., None])               # (m, J, P)
    pts += np.matmul(p["wave_amp"].transpose(0, 2, 1), wave)
    # rotation @ slant @ aspect; y points down, so slant leans the top to the right
    c, s = np.cos(p["rotation"]), np.sin(p["rotation"])
    a = np.exp(p["log_aspect"])
    lin = np.empty((m, 2, 2))
    lin[:, 0, 0] = c * a
    lin[:, 0, 1] = -c * p["slant"] - s
    lin[:, 1, 0] = s * a
    lin[:, 1, 1] = -s * p["slant"] + c
    pts = np.matmul(lin, pts)
    # fit the longest side into the box (less the stroke), centred, then offset
    lo, hi = pts.min(axis=2), pts.max(axis=2)                       # (m, 2)
    box = MNIST_BOX * size / MNIST_SIZE
    # the stroke is 2 sigma sqrt(2 ln gain) wide where its ink exceeds 1 - 1/e
    stroke_px = 2.0 * p["sigma"] * np.sqrt(2.0 * np.log(p["gain"])) * size / MNIST_SIZE
    scale = (box - stroke_px) * p["fill"] / (hi - lo).max(axis=1)
    centre = size / 2 + p["offset"] * size / MNIST_SIZE
    return (pts - 0.5 * (lo + hi)[:, :, None]) * scale[:, None, None] + centre[:, :, None]


def _splat(pts, weight, size):
    """Bilinear splat of weighted points ``(m, 2, P)`` into images ``(m, size, size)`` via bincount.

    The box fit keeps every point inside the frame; taps go to a canvas with a
    one-pixel margin (coordinates clipped into it for safety) that is cropped off.
    """
    m = weight.shape[0]
    side = size + 2
    u = np.clip(pts - 0.5, -1.0, size - 1.0)                     # pixel-centre coordinates
    i0 = np.floor(u)
    fx, fy = (u - i0).transpose(1, 0, 2)
    col, row = (i0.astype(np.int64) + 1).transpose(1, 0, 2)
    flat = (np.arange(m) * side * side)[:, None] + row * side + col     # (m, P) top-left tap
    taps = np.concatenate([flat, flat + 1, flat + side, flat + side + 1]).ravel()
    w = np.concatenate([weight * (1 - fx) * (1 - fy), weight * fx * (1 - fy),
                        weight * (1 - fx) * fy, weight * fx * fy]).ravel()
    ink = np.bincount(taps, w, minlength=m * side * side).reshape(m, side, side)
    return ink[:, 1:-1, 1:-1]


def _blur(img, sigma):
    """Separable Gaussian blur with a per-sample width ``sigma (m,)``; zero outside.

    ``img`` is ``(m, size, size)``; the result has its dtype.
    """
    radius = math.ceil(BLUR_TRUNCATE * sigma.max())
    k = np.arange(-radius, radius + 1)
    kern = np.exp(-0.5 * (k[None, :] / sigma[:, None]) ** 2)
    kern = (kern / kern.sum(axis=1, keepdims=True)).astype(img.dtype)[:, :, None, None]
    size = img.shape[-1]
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(img, pad)
        img = np.zeros_like(img)
        for j in range(kern.shape[1]):
            window = padded[:, j:j + size, :] if axis == 1 else padded[:, :, j:j + size]
            img += kern[:, j] * window
    return img


def _render_chunk(rng, size):
    """One full chunk of ``CHUNK`` digits: images (CHUNK, size, size) float32, labels int64."""
    p = _draw_digit_params(rng, CHUNK)
    pts = _stroke_points(p, size)
    # ink per point = half the length of its two stroke segments, so density is uniform
    step = np.diff(pts, axis=2)                                   # (m, 2, P - 1)
    seg = np.hypot(step[:, 0], step[:, 1]) * _SAME_STROKE[p["variant"]]
    weight = 0.5 * (np.pad(seg, ((0, 0), (1, 0))) + np.pad(seg, ((0, 0), (0, 1))))
    sigma = p["sigma"] * size / MNIST_SIZE
    ink = _blur(_splat(pts, weight, size).astype(np.float32), sigma)
    # a straight stroke's blurred ink peaks at 1 / (sqrt(2 pi) sigma) on its centre line
    peak = 1.0 / (np.sqrt(2 * np.pi) * sigma)
    img = -np.expm1(-(p["gain"] / peak).astype(np.float32)[:, None, None] * ink)
    return img, p["labels"].astype(np.int64)


def _digits(n, entropy, size):
    images = np.empty((n, size, size), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    for chunk, start in enumerate(range(0, n, CHUNK)):
        stop = min(start + CHUNK, n)
        img, lab = _render_chunk(_chunk_rng(entropy, chunk), size)
        images[start:stop] = img[:stop - start]
        labels[start:stop] = lab[:stop - start]
    return images, labels


def synthetic_digits(n, seed=0, size=MNIST_SIZE):
    """Procedural handwritten digits, MNIST-like, generated without any download.

    Each digit is a pen-font stroke template (Catmull-Rom curves through control
    points) with per-sample control-point jitter, a smooth random deformation,
    rotation, slant, aspect and scale, fitted into a 20x20 box centred in the
    28x28 frame (scaled with ``size``) and rendered anti-aliased: ink splatted
    along the strokes, blurred by a Gaussian of random width and saturated with a
    random gain (random stroke width).  See ``docs/data.md``.

    Parameters
    ----------
    n : int
        Number of digits, at least 1.
    seed : int, default 0
        Non-negative seed.  The same seed gives bit-identical output, and the
        first ``k`` digits of ``synthetic_digits(n, seed)`` equal
        ``synthetic_digits(k, seed)``.
    size : int, default 28
        Image side in pixels, at least 8.

    Returns
    -------
    images : ndarray, shape (n, size, size), float32
        Ink in [0, 1], background 0.
    labels : ndarray, shape (n,), int64
        Digits 0-9, each exactly 1/10 of every full chunk of 1024 (shuffled).

    Examples
    --------
    >>> from stnref.data import synthetic_digits
    >>> x, y = synthetic_digits(5, seed=1)
    >>> x.shape, x.dtype, y.dtype
    ((5, 28, 28), dtype('float32'), dtype('int64'))
    """
    fn = "synthetic_digits"
    n = _checks.check_int(n, "n", fn, minimum=1)
    seed = _check_seed(seed, fn)
    size = _checks.check_int(size, "size", fn, minimum=8)
    _checks.check_budget((n, size, size), fn, "images")
    return _digits(n, seed, size)


# --------------------------------------------------------------------------- distortions

def _px_to_norm(size):
    """Normalised units per pixel on an axis of ``size`` pixels (CONVENTIONS §3, no align_corners)."""
    return 2.0 / size


def _rotation(angle):
    """Rotation matrices ``(n, 2, 2)`` for angles in radians."""
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def _similarity_theta(angle, scale, shift_px, out_size, in_size):
    """Affine ``theta (n, 2, 3)`` showing the source rotated by ``angle``, scaled by ``scale``
    and its centre moved by ``shift_px`` (output pixels) on an ``out_size`` canvas.

    The grid maps output to source (inverse warp): with pixel offsets ``u`` from the
    output centre, the source offset is ``R(-angle) (u - shift) / scale``; normalised
    coordinates are ``u * 2 / size`` on each side.
    """
    inv = _rotation(-angle) / scale[:, None, None]                # (n, 2, 2), pixels -> pixels
    ratio = out_size / in_size                                    # output units -> source units
    theta = np.empty((len(angle), 2, 3))
    theta[:, :, :2] = inv * ratio
    theta[:, :, 2] = -np.einsum("nij,nj->ni", inv, shift_px) * _px_to_norm(in_size)
    return theta


def _sample(images, grid):
    """``grid_sample`` (bilinear, zeros) of ``images (n, H, W)`` in float64 -> (n, H_out, W_out)."""
    return grid_sample(images[:, None].astype(np.float64), grid, mode="bilinear",
                       padding_mode="zeros", align_corners=False)[:, 0]


# Each _distort_* draws its random numbers for a full CHUNK and keeps the first m, so a
# short last chunk gets the same parameters as the same samples in a longer set.

def _distort_r(rng, images):
    m = len(images)
    angle = rng.uniform(-R_ANGLE_MAX_DEG, R_ANGLE_MAX_DEG, size=CHUNK)[:m]
    theta = _similarity_theta(np.deg2rad(angle), np.ones(m), np.zeros((m, 2)), MNIST_SIZE, MNIST_SIZE)
    out = _sample(images, grids.affine_grid(theta, (m, 1, MNIST_SIZE, MNIST_SIZE)))
    return out, {"angle": angle, "theta": theta}


def _distort_rts(rng, images):
    m = len(images)
    angle = rng.uniform(-RTS_ANGLE_MAX_DEG, RTS_ANGLE_MAX_DEG, size=CHUNK)[:m]
    scale = rng.uniform(*RTS_SCALE_RANGE, size=CHUNK)[:m]
    # the scaled 20x20 digit box stays on the canvas (rotation may clip its corners)
    reach = 0.5 * (RTS_CANVAS - MNIST_BOX * scale)
    shift = rng.uniform(-1.0, 1.0, size=(CHUNK, 2))[:m] * reach[:, None]
    theta = _similarity_theta(np.deg2rad(angle), scale, shift, RTS_CANVAS, MNIST_SIZE)
    out = _sample(images, grids.affine_grid(theta, (m, 1, RTS_CANVAS, RTS_CANVAS)))
    return out, {"angle": angle, "scale": scale, "shift_px": shift, "theta": theta}


_CORNERS = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])  # image corners (x, y)


def _homography(src, dst):
    """4-point DLT: ``H (n, 3, 3)`` with ``H (src, 1) ~ (dst, 1)`` and ``H[2, 2] = 1``.

    ``src, dst`` are ``(n, 4, 2)``.  Each correspondence gives two rows of an
    ``(n, 8, 8)`` system in the eight unknown entries, solved with one batched
    ``np.linalg.solve``.
    """
    n = src.shape[0]
    x, y = src[..., 0], src[..., 1]
    u, v = dst[..., 0], dst[..., 1]
    one, zero = np.ones_like(x), np.zeros_like(x)
    rows_u = np.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1)   # (n, 4, 8)
    rows_v = np.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1)
    A = np.concatenate([rows_u, rows_v], axis=1)                         # (n, 8, 8)
    b = np.concatenate([u, v], axis=1)                                   # (n, 8)
    h = np.linalg.solve(A, b[..., None])[..., 0]
    return np.concatenate([h, np.ones((n, 1))], axis=1).reshape(n, 3, 3)


def _distort_p(rng, images):
    m = len(images)
    scale = rng.uniform(*P_SCALE_RANGE, size=CHUNK)[:m]
    tries = rng.normal(0.0, P_CORNER_STD_PX, size=(CHUNK, P_TRIES, 4, 2))[:m]
    # where the scaled image's corners land in the output (normalised output coordinates)
    moved = scale[:, None, None, None] * _CORNERS + tries * _px_to_norm(MNIST_SIZE)
    # keep the first draw whose corners form a convex quadrilateral (same orientation as
    # the image), so the homography is one-to-one on the image; none convex: no noise
    edges = np.roll(moved, -1, axis=2) - moved                    # (m, P_TRIES, 4, 2)
    nxt = np.roll(edges, -1, axis=2)
    turn = edges[..., 0] * nxt[..., 1] - edges[..., 1] * nxt[..., 0]
    convex = (turn > 0).all(axis=2)                               # (m, P_TRIES)
    pick = np.argmax(convex, axis=1)
    noise_px = np.where(convex.any(axis=1)[:, None, None], tries[np.arange(m), pick], 0.0)
    corners = scale[:, None, None] * _CORNERS + noise_px * _px_to_norm(MNIST_SIZE)
    # the grid maps output to source, so solve for the homography corners -> image corners
    theta = _homography(corners, np.broadcast_to(_CORNERS, corners.shape))
    out = _sample(images, grids.projective_grid(theta, (m, 1, MNIST_SIZE, MNIST_SIZE)))
    return out, {"scale": scale, "corner_noise_px": noise_px, "corners": corners, "theta": theta}


def _distort_e(rng, images):
    m = len(images)
    scale = rng.uniform(*E_SCALE_RANGE, size=CHUNK)[:m]
    noise_px = rng.normal(0.0, E_CONTROL_STD_PX, size=(CHUNK, E_CONTROL_POINTS, 2))[:m]
    P = grids.tps_control_points(E_CONTROL_POINTS)
    # control point P_k of the output reads the source at P_k / scale + noise
    theta = P / scale[:, None, None] + noise_px * _px_to_norm(MNIST_SIZE)
    out = _sample(images, grids.tps_grid(theta, (m, 1, MNIST_SIZE, MNIST_SIZE)))
    return out, {"scale": scale, "control_noise_px": noise_px, "theta": theta}


def _clutter_params(rng, m, n, start):
    """Source digit (never the sample itself), crop corner and canvas corner of each patch."""
    own = np.arange(start, start + m)[:, None]
    other = (own + 1 + rng.integers(0, n - 1, size=(CHUNK, TC_PATCHES))[:m]) % n
    crop = rng.integers(TC_CROP_RANGE[0], TC_CROP_RANGE[1] + 1, size=(CHUNK, TC_PATCHES, 2))[:m]
    place = rng.integers(0, TC_CANVAS - TC_PATCH + 1, size=(CHUNK, TC_PATCHES, 2))[:m]
    return other, crop, place


def _distort_tc(rng, images, source, start):
    m = len(images)
    reach = 0.5 * (TC_CANVAS - MNIST_SIZE)   # the whole 28x28 frame stays on the canvas
    shift = rng.uniform(-reach, reach, size=(CHUNK, 2))[:m]
    theta = _similarity_theta(np.zeros(m), np.ones(m), shift, TC_CANVAS, MNIST_SIZE)
    # Sampling the canvas with theta would spend most taps on empty space; sample only a
    # (28+1)^2 window at the integer part of the frame's corner, translated by the fraction.
    corner = np.clip(np.floor(reach + shift), 0, TC_CANVAS - TC_WINDOW).astype(np.int64)   # (m, 2)
    frac = reach + shift - corner
    inner = _similarity_theta(np.zeros(m), np.ones(m), frac - 0.5, TC_WINDOW, MNIST_SIZE)
    window = _sample(images, grids.affine_grid(inner, (m, 1, TC_WINDOW, TC_WINDOW)))
    out = np.zeros((m, TC_CANVAS, TC_CANVAS))
    rows = np.arange(m)[:, None, None]
    d = np.arange(TC_WINDOW)
    out[rows, corner[:, 1, None, None] + d[:, None], corner[:, 0, None, None] + d[None, :]] = window
    other, crop, place = _clutter_params(rng, m, len(source), start)
    d = np.arange(TC_PATCH)
    # one patch per sample at a time: within one assignment no index repeats
    for k in range(TC_PATCHES):
        patch = source[other[:, k, None, None],
                       crop[:, k, 1, None, None] + d[:, None],
                       crop[:, k, 0, None, None] + d[None, :]]              # (m, 6, 6)
        at = (rows, place[:, k, 1, None, None] + d[:, None], place[:, k, 0, None, None] + d[None, :])
        out[at] = np.maximum(out[at], patch)
    return out, {"shift_px": shift, "theta": theta, "clutter_source": other,
                 "clutter_crop": crop, "clutter_position": place}


_DISTORT_FNS = {"r": _distort_r, "rts": _distort_rts, "p": _distort_p, "e": _distort_e}
_OUT_SIZES = {"none": MNIST_SIZE, "r": MNIST_SIZE, "rts": RTS_CANVAS, "p": MNIST_SIZE,
              "e": MNIST_SIZE, "tc": TC_CANVAS}


def distort(images, kind, seed=0):
    """Apply one of the paper's §4.1 distortions, with stnref's own grids and sampler.

    Bilinear sampling, zero padding, ``align_corners=False``; pixel quantities
    below are in pixels of the 28x28 source (``2 / 28`` normalised units each).

    ========  =================================================================
    ``none``  copy (as float32)
    ``r``     rotation uniform in [-90, 90] degrees; 28x28
    ``rts``   rotation in [-45, 45] degrees, scale in [0.7, 1.2], the scaled
              20x20 box placed uniformly on a 42x42 canvas (affine grid)
    ``p``     scale in [0.75, 1], then the 4 image corners moved by N(0, 5 px):
              the 4-point homography (DLT), :func:`stnref.grids.projective_grid`
    ``e``     scale in [0.75, 1], then the 16 TPS control points (4x4 grid)
              moved by N(0, 1.5 px), :func:`stnref.grids.tps_grid`
    ``tc``    the 28x28 frame translated uniformly onto a 60x60 canvas plus six
              6x6 patches cropped from other digits of ``images`` (max-blended)
    ========  =================================================================

    Parameters
    ----------
    images : ndarray, shape (n, 28, 28), float32 or float64
        Digit source, background 0, n >= 1 (n = 0 only for ``none``).  Not modified.
    kind : str
        One of ``DISTORTIONS``.
    seed : int, default 0
        Non-negative seed; same seed, bit-identical output.  Except for ``tc``
        (whose clutter indexes the whole set) a prefix of ``images`` gets the
        same distortions as in the full set.

    Returns
    -------
    out : ndarray, shape (n, S, S), float32
        ``S`` = 28, 42 (``rts``) or 60 (``tc``).
    params : dict of str -> ndarray
        Per-sample parameters, first axis ``n``: ``theta`` (the grid's parameter,
        mapping output to source), plus ``angle`` (degrees), ``scale``,
        ``shift_px``, ``corner_noise_px`` / ``corners``, ``control_noise_px``,
        ``clutter_source`` / ``clutter_crop`` / ``clutter_position`` as applicable.

    Examples
    --------
    >>> import numpy as np
    >>> from stnref.data import distort
    >>> out, params = distort(np.zeros((2, 28, 28), np.float32), "rts", seed=3)
    >>> out.shape, sorted(params)
    ((2, 42, 42), ['angle', 'scale', 'shift_px', 'theta'])
    """
    fn = "distort"
    images = _checks.float_array(images, "images", fn)
    if images.ndim != 3 or images.shape[1:] != (MNIST_SIZE, MNIST_SIZE):
        raise ValueError(f"{fn}(): expected images of shape (n, 28, 28), got {images.shape}")
    kind = _checks.check_choice(kind, "kind", fn, DISTORTIONS)
    seed = _check_seed(seed, fn)
    n = len(images)
    if kind == "tc" and n < 2:
        raise ValueError(f"{fn}(): 'tc' crops clutter from other digits and needs n >= 2, got n={n}")
    if kind != "none" and n == 0:
        raise ValueError(f"{fn}(): kind {kind!r} draws per-sample parameters and needs images "
                         f"with n >= 1, got shape {images.shape}")
    _checks.check_budget((n, _OUT_SIZES[kind], _OUT_SIZES[kind]), fn, "out")
    return _distort(images, kind, seed)


def _distort(images, kind, entropy):
    n = len(images)
    S = _OUT_SIZES[kind]
    out = np.empty((n, S, S), dtype=np.float32)
    if kind == "none":
        out[...] = images
        return out, {}
    parts = []
    for chunk, start in enumerate(range(0, n, CHUNK)):
        block = images[start:start + CHUNK]
        rng = _chunk_rng(entropy, chunk)
        if kind == "tc":
            res, params = _distort_tc(rng, block, images, start)
        else:
            res, params = _DISTORT_FNS[kind](rng, block)
        out[start:start + len(block)] = res
        parts.append(params)
    return out, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# --------------------------------------------------------------------------- IDX files

def _idx_error(path, message):
    return ValueError(f"IDX file {os.fspath(path)!r}: {message}")


def _read_exact(f, count, path, what):
    data = f.read(count)
    if len(data) != count:
        raise _idx_error(path, f"truncated {what}: expected {count} bytes, got {len(data)}")
    return data


def _read_header(f, path):
    """Parse magic and dimensions; return the shape (tuple of positive ints)."""
    magic = _read_exact(f, 4, path, "header")
    if magic[0] != 0 or magic[1] != 0:
        raise _idx_error(path, f"wrong magic 0x{magic.hex()}: the first two bytes must be zero")
    code, ndim = magic[2], magic[3]
    if code != IDX_UINT8:
        name = IDX_DTYPE_NAMES.get(code, "unknown")
        raise _idx_error(path, f"unsupported dtype code 0x{code:02x} ({name}); "
                               f"only 0x08 (uint8) is supported")
    if ndim not in IDX_NDIMS:
        raise _idx_error(path, f"wrong magic 0x{magic.hex()}: expected 0x00000801 (labels, 1-D) or "
                               f"0x00000803 (images, 3-D), got {ndim} dimensions")
    dims = np.frombuffer(_read_exact(f, 4 * ndim, path, "header"), dtype=">i4")
    if (dims <= 0).any():
        raise _idx_error(path, f"dimensions must be positive, got {tuple(int(d) for d in dims)}")
    return tuple(int(d) for d in dims)


def _read_gz_payload(f, count, path):
    """Read exactly ``count`` bytes in bounded chunks (never trusting ``count`` to allocate)."""
    buf = bytearray()
    while len(buf) < count:
        piece = f.read(min(IDX_READ_CHUNK, count - len(buf)))
        if not piece:
            raise _idx_error(path, f"truncated: header claims {count} data bytes, found {len(buf)}")
        buf += piece
    extra = len(f.read(IDX_READ_CHUNK))
    if extra:
        raise _idx_error(path, f"oversized: {'at least ' if extra == IDX_READ_CHUNK else ''}{extra} "
                               f"bytes after the {count} data bytes the header claims")
    return np.frombuffer(buf, dtype=np.uint8)


def read_idx(path):
    """Read an IDX file (plain, or gzip if the name ends in ``.gz``), CONVENTIONS §9.

    Only uint8 images (magic ``0x00000803``, 3-D) and labels (``0x00000801``, 1-D)
    are accepted; dimensions are big-endian int32 and must be positive, and the
    payload must be exactly their product in bytes.  A plain file's size is
    checked before anything is allocated; a ``.gz`` stream is read in bounded
    chunks, so a header claiming 10^12 images fails at the end of the data.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    ndarray, uint8, shape (n, rows, cols) or (n,)

    Raises
    ------
    ValueError
        Naming the file and the mismatch: wrong magic, unsupported dtype code,
        non-positive dimensions, truncated or oversized payload, bad gzip data.
    """
    path = os.fspath(path)
    if path.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                shape = _read_header(f, path)
                data = _read_gz_payload(f, math.prod(shape), path)
        except (OSError, EOFError, zlib.error) as err:
            if isinstance(err, FileNotFoundError):
                raise
            raise _idx_error(path, f"bad gzip data ({err})") from err
        return data.reshape(shape)
    with open(path, "rb") as f:
        shape = _read_header(f, path)
        header = 4 + 4 * len(shape)
        count = math.prod(shape)
        actual = os.fstat(f.fileno()).st_size - header
        if actual < count:
            raise _idx_error(path, f"truncated: header claims {count} data bytes, file has {actual}")
        if actual > count:
            raise _idx_error(path, f"oversized: {actual - count} bytes after the {count} data bytes "
                                   f"the header claims")
        return np.fromfile(f, dtype=np.uint8, count=count).reshape(shape)


def write_idx(path, array):
    """Write a uint8 array as an IDX file, atomically; gzip if ``path`` ends in ``.gz``.

    Written through :func:`stnref._io.atomic_open` (a temporary file in the same
    directory, flushed, fsynced and renamed over ``path``), so a crash never
    leaves a partial file.  A ``.gz`` file has a zero gzip timestamp, so the
    same array always gives the same bytes.

    Parameters
    ----------
    path : str or os.PathLike
    array : ndarray, uint8, shape (n, rows, cols) or (n,), no zero dimension
    """
    fn = "write_idx"
    path = os.fspath(path)
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
        got = (f"array of dtype {array.dtype}" if isinstance(array, np.ndarray)
               else type(array).__name__)
        raise TypeError(f"{fn}(): expected array of dtype uint8, got {got}")
    if array.ndim not in IDX_NDIMS or 0 in array.shape:
        raise ValueError(f"{fn}(): expected array of shape (n,) or (n, rows, cols) with no zero "
                         f"dimension, got {array.shape}")
    header = bytes([0, 0, IDX_UINT8, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    payload = np.ascontiguousarray(array).tobytes()
    with atomic_open(path) as raw:
        if path.endswith(".gz"):
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
                f.write(header)
                f.write(payload)
        else:
            raw.write(header)
            raw.write(payload)


def _find_mnist_file(directory, stem):
    for name in (stem, stem + ".gz"):
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def load_mnist(directory):
    """Load the four MNIST IDX files (plain or ``.gz``) from ``directory``.

    Parameters
    ----------
    directory : str or os.PathLike
        Holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally
        with ``.gz`` (a plain file is preferred when both exist).

    Returns
    -------
    x_train : ndarray, shape (n_train, rows, cols), float32 in [0, 1]
    y_train : ndarray, shape (n_train,), int64
    x_test : ndarray, shape (n_test, rows, cols), float32 in [0, 1]
    y_test : ndarray, shape (n_test,), int64

    Raises
    ------
    FileNotFoundError
        Listing every missing file.
    ValueError
        A bad IDX file, images/labels count mismatch, labels outside 0-9,
        image files of the wrong rank.
    """
    fn = "load_mnist"
    directory = os.fspath(directory)
    found = {key: _find_mnist_file(directory, stem) for key, stem in MNIST_FILES.items()}
    missing = [MNIST_FILES[k] + "[.gz]" for k, v in found.items() if v is None]
    if missing:
        raise FileNotFoundError(f"{fn}(): missing in {directory!r}: {', '.join(missing)}")
    out = []
    for split in ("train", "test"):
        img_path, lab_path = found[f"{split}_images"], found[f"{split}_labels"]
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.ndim != 3 or labels.ndim != 1:
            raise ValueError(f"{fn}(): expected 3-D images in {img_path!r} and 1-D labels in "
                             f"{lab_path!r}, got shapes {images.shape} and {labels.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{fn}(): {img_path!r} has {len(images)} images but {lab_path!r} "
                             f"has {len(labels)} labels")
        if labels.max() >= NUM_CLASSES:
            raise ValueError(f"{fn}(): labels in {lab_path!r} must be 0-9, got {int(labels.max())}")
        out += [images.astype(np.float32) / np.float32(PIXEL_MAX), labels.astype(np.int64)]
    return tuple(out)


# --------------------------------------------------------------------------- datasets

def _split_size(value, name, fn):
    """``None`` (the whole split) or a positive int."""
    return None if value is None else _checks.check_int(value, name, fn, minimum=1)


def load_dataset(distortion="none", data_dir=None, train_size=None, test_size=None, seed=0):
    """Train and test sets for one distortion of §4.1, built-in digits or MNIST files.

    Parameters
    ----------
    distortion : str, default "none"
        One of ``DISTORTIONS`` (see :func:`distort`).
    data_dir : str or os.PathLike, optional
        Directory with the MNIST IDX files (:func:`load_mnist`).  When None,
        :func:`synthetic_digits` supplies 60,000 training and 10,000 test digits
        from seeds distinct per split.
    train_size, test_size : int, optional
        Keep only the first this many samples of each split (default: all).
    seed : int, default 0
        Seeds digits and distortions, distinct per split.

    Returns
    -------
    x_train : ndarray, shape (n_train, 1, S, S), float32
    y_train : ndarray, shape (n_train,), int64
    x_test : ndarray, shape (n_test, 1, S, S), float32
    y_test : ndarray, shape (n_test,), int64
        ``S`` = 28, 42 (``rts``) or 60 (``tc``).
    """
    fn = "load_dataset"
    distortion = _checks.check_choice(distortion, "distortion", fn, DISTORTIONS)
    seed = _check_seed(seed, fn)
    sizes = {TRAIN: _split_size(train_size, "train_size", fn),
             TEST: _split_size(test_size, "test_size", fn)}
    if data_dir is not None and not isinstance(data_dir, (str, bytes, os.PathLike)):
        raise TypeError(f"{fn}(): expected data_dir to be a path (str or os.PathLike) or None, "
                        f"got {type(data_dir).__name__} {data_dir!r}")
    if data_dir is None:
        side = _OUT_SIZES[distortion]
        for split, name in ((TRAIN, "train_size"), (TEST, "test_size")):
            if sizes[split] is not None:
                _checks.check_budget((sizes[split], side, side), fn, f"{name} images")
        splits = {split: _digits(DEFAULT_SIZES[split] if sizes[split] is None else sizes[split],
                                 (seed, split, STAGE_DIGITS), MNIST_SIZE)
                  for split in (TRAIN, TEST)}
    else:
        x_tr, y_tr, x_te, y_te = load_mnist(data_dir)
        if x_tr.shape[1:] != (MNIST_SIZE, MNIST_SIZE) or x_te.shape[1:] != (MNIST_SIZE, MNIST_SIZE):
            raise ValueError(f"{fn}(): expected 28x28 images in {os.fspath(data_dir)!r}, "
                             f"got {x_tr.shape[1:]} (train) and {x_te.shape[1:]} (test)")
        splits = {TRAIN: (x_tr[:sizes[TRAIN]], y_tr[:sizes[TRAIN]]),
                  TEST: (x_te[:sizes[TEST]], y_te[:sizes[TEST]])}
    out = []
    for split in (TRAIN, TEST):
        images, labels = splits[split]
        if distortion == "tc" and len(images) < 2:
            raise ValueError(f"{fn}(): 'tc' needs at least 2 samples per split, got {len(images)}")
        warped, _ = _distort(images, distortion, (seed, split, STAGE_DISTORT))
        out += [warped[:, None], labels]
    return tuple(out)
