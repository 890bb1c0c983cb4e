"""The distortions of paper §4.1 (R, RTS, P, E, TC), made with stnref's own grids and sampler.

:func:`distort` warps any ``(n, 28, 28)`` digit source.  Each distortion draws its
parameters per chunk of :data:`~stnref.data.digits.CHUNK` samples from its own
seeded generator, so a prefix of a set gets the same distortions as in the full set.
Details and pictures: ``docs/data.md``.
"""

from __future__ import annotations

import numpy as np

from .. import _checks, grids
from ..sampling import grid_sample
from .digits import CHUNK, MNIST_BOX, MNIST_SIZE, _check_seed, _chunk_rng

__all__ = ["DISTORTIONS", "distort"]

# Distortions (paper §4.1 appendix).  Pixel quantities are in 28x28 source pixels.
DISTORTIONS = ("none", "r", "rts", "p", "e", "tc")
R_ANGLE_MAX_DEG = 90.0
RTS_ANGLE_MAX_DEG = 45.0
RTS_SCALE_RANGE = (0.7, 1.2)
RTS_CANVAS = 42
P_SCALE_RANGE = (0.75, 1.0)
P_CORNER_STD_PX = 5.0         # each corner stretched along its diagonal (outward > 0) by N(0, this)
P_TRIES = 4                   # corner draws per sample; a draw that folds the image is redrawn
E_SCALE_RANGE = (0.75, 1.0)
E_CONTROL_STD_PX = 1.5
E_CONTROL_POINTS = 16
TC_CANVAS = 60
TC_PATCHES = 6
TC_PATCH = 6
TC_WINDOW = MNIST_SIZE + 1    # canvas pixels a sub-pixel translated 28x28 frame can touch
# Clutter crops are taken anywhere in the 28x28 frame of another digit, and added to the canvas
# with intensities clipped at 1, as DeepMind's public mnist-cluttered generator does.
TC_CROP_RANGE = (0, MNIST_SIZE - TC_PATCH)


def _px_to_norm(size):
    """Normalised units per pixel on an axis of ``size`` pixels (docs/conventions.md §3.1, no align_corners)."""
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


def _warp(images, grid_fn, theta, side):
    """``images (m, 28, 28)`` sampled (bilinear, zeros) on the ``grid_fn(theta)`` grid of a
    ``side x side`` output -> ``(m, side, side)``.  In float32, as the data are stored: the
    grid's rounding (about 1e-6 pixel) is far below what a pixel shows."""
    grid = grid_fn(theta.astype(np.float32), (len(images), 1, side, side))
    return grid_sample(images[:, None].astype(np.float32), grid, mode="bilinear",
                       padding_mode="zeros", align_corners=False)[:, 0]


# Each _distort_* draws its random numbers for a full CHUNK and keeps the first m, so a
# short last chunk gets the same parameters as the same samples in a longer set.

def _distort_r(rng, images):
    m = len(images)
    angle = rng.uniform(-R_ANGLE_MAX_DEG, R_ANGLE_MAX_DEG, size=CHUNK)[:m]
    theta = _similarity_theta(np.deg2rad(angle), np.ones(m), np.zeros((m, 2)), MNIST_SIZE, MNIST_SIZE)
    out = _warp(images, grids.affine_grid, theta, MNIST_SIZE)
    return out, {"angle": angle, "theta": theta}


def _distort_rts(rng, images):
    m = len(images)
    angle = rng.uniform(-RTS_ANGLE_MAX_DEG, RTS_ANGLE_MAX_DEG, size=CHUNK)[:m]
    scale = rng.uniform(*RTS_SCALE_RANGE, size=CHUNK)[:m]
    # the scaled 20x20 digit box stays on the canvas (rotation may clip its corners)
    reach = 0.5 * (RTS_CANVAS - MNIST_BOX * scale)
    shift = rng.uniform(-1.0, 1.0, size=(CHUNK, 2))[:m] * reach[:, None]
    theta = _similarity_theta(np.deg2rad(angle), scale, shift, RTS_CANVAS, MNIST_SIZE)
    out = _warp(images, grids.affine_grid, theta, RTS_CANVAS)
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
    # each corner moves along its diagonal, away from the centre for a positive draw
    stretch = rng.normal(0.0, P_CORNER_STD_PX, size=(CHUNK, P_TRIES, 4))[:m]
    tries = stretch[..., None] * (_CORNERS / np.sqrt(2.0))       # (m, P_TRIES, 4, 2) pixels
    # where the scaled image's corners land in the output (normalised output coordinates)
    moved = scale[:, None, None, None] * _CORNERS + tries * _px_to_norm(MNIST_SIZE)
    # keep the first draw whose corners form a convex quadrilateral (same orientation as
    # the image), so the homography is one-to-one on the image; none convex: no noise
    edges = np.roll(moved, -1, axis=2) - moved                    # (m, P_TRIES, 4, 2)
    nxt = np.roll(edges, -1, axis=2)
    turn = edges[..., 0] * nxt[..., 1] - edges[..., 1] * nxt[..., 0]
    convex = (turn > 0).all(axis=2)                               # (m, P_TRIES)
    pick = np.argmax(convex, axis=1)
    kept = convex.any(axis=1)
    stretch_px = np.where(kept[:, None], stretch[np.arange(m), pick], 0.0)
    noise_px = np.where(kept[:, None, None], tries[np.arange(m), pick], 0.0)
    corners = scale[:, None, None] * _CORNERS + noise_px * _px_to_norm(MNIST_SIZE)
    # the grid maps output to source, so solve for the homography corners -> image corners
    theta = _homography(corners, np.broadcast_to(_CORNERS, corners.shape))
    out = _warp(images, grids.projective_grid, theta, MNIST_SIZE)
    return out, {"scale": scale, "corner_stretch_px": stretch_px, "corner_noise_px": noise_px,
                 "corners": corners, "theta": theta}


def _distort_e(rng, images):
    m = len(images)
    scale = rng.uniform(*E_SCALE_RANGE, size=CHUNK)[:m]
    noise_px = rng.normal(0.0, E_CONTROL_STD_PX, size=(CHUNK, E_CONTROL_POINTS, 2))[:m]
    P = grids.tps_control_points(E_CONTROL_POINTS)
    # control point P_k of the output reads the source at P_k / scale + noise
    theta = P / scale[:, None, None] + noise_px * _px_to_norm(MNIST_SIZE)
    out = _warp(images, grids.tps_grid, theta, MNIST_SIZE)
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
    window = _warp(images, grids.affine_grid, inner, TC_WINDOW)
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
        out[at] = np.minimum(out[at] + patch, 1.0)
    return out, {"shift_px": shift, "theta": theta, "clutter_source": other,
                 "clutter_crop": crop, "clutter_position": place}


_DISTORT_FNS = {"r": _distort_r, "rts": _distort_rts, "p": _distort_p, "e": _distort_e}
_OUT_SIZES = {"none": MNIST_SIZE, "r": MNIST_SIZE, "rts": RTS_CANVAS, "p": MNIST_SIZE,
              "e": MNIST_SIZE, "tc": TC_CANVAS}


@_checks.quiet_nonfinite
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


def _distort(images, kind, entropy, out=None):
    """:func:`distort` of checked arguments, seeded by ``entropy``, into ``out`` if given
    (``(n, S, S)`` float32)."""
    n = len(images)
    S = _OUT_SIZES[kind]
    out = np.empty((n, S, S), dtype=np.float32) if out is None else out
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
