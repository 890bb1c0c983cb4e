"""Built-in handwritten digits (for the paper's §4.1 experiments without a download).

:func:`synthetic_digits` draws procedural digits -- pen-font stroke templates bent
by random jitter, slant, aspect, rotation and a smooth local deformation, rendered
anti-aliased into an MNIST-like 28x28 frame.  Everything random comes from
``numpy.random.SeedSequence(entropy, spawn_key=(chunk,))`` per chunk of
:data:`CHUNK` samples, so the same seed gives bit-identical digits and the first
``k`` digits of a set of ``n`` equal a set of ``k``.  Details and measurements:
``docs/data.md``.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _checks

__all__ = ["synthetic_digits"]

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
