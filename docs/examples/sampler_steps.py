"""From eq. (3) to ``stnref.grid_sample``, one step at a time (the code of docs/sampler.md).

Every step below computes the same bilinear sampling with zeros padding and
``align_corners=False`` (2-D) as the step before it, with one more idea; the tests
(``tests/test_sampler_steps.py``) check that each agrees with
:func:`stnref.equations.sample` and with :func:`stnref.grid_sample`.  Run as a script
it times every step, and the three ways to scatter eq. (6), on the same inputs::

    OPENBLAS_NUM_THREADS=1 python docs/examples/sampler_steps.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import platform
import time
import tracemalloc

import numpy as np
import scipy.sparse

import stnref
from stnref import equations

CHUNK = 1 << 15  # points per chunk, as stnref.sampling.CHUNK
RING = 2         # zero ring: wide enough for both taps of a coordinate clamped to [-2, size]


def pixels(grid, H, W):
    """Step 1a: normalised (x_s, y_s) -> pixel coordinates, each (N, P) (docs/conventions.md §3.1)."""
    N = grid.shape[0]
    g = grid.reshape(N, -1, 2)
    return equations.pixel_coordinate(g[..., 0], W), equations.pixel_coordinate(g[..., 1], H)


def to_image(V, grid):
    """(N, P, C) -> (N, C, H', W')."""
    N, P, C = V.shape
    return np.moveaxis(V, 2, 1).reshape(N, C, *grid.shape[1:3])


# ----------------------------------------------------------------------------- forward

def step0_dense(U, grid):
    """Eq. (3) as written: every input pixel weighted for every output pixel."""
    return equations.sample(U, grid)


def step1_four_neighbours(U, grid):
    """Only the 2 x 2 pixels around each point have a non-zero tent weight: read just those."""
    N, C, H, W = U.shape
    x, y = pixels(grid, H, W)
    x0, y0 = np.floor(x), np.floor(y)
    b = np.arange(N)[:, None]                                          # batch index
    V = 0
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            w = (1 - np.abs(x - xi)) * (1 - np.abs(y - yi))            # eq. (5) at this tap
            inside = (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)       # zeros padding
            xc, yc = np.clip(xi, 0, W - 1).astype(int), np.clip(yi, 0, H - 1).astype(int)
            V = V + (w * inside)[..., None] * U[b, :, yc, xc]          # (N, P, C)
    return to_image(V, grid)


def step2_zero_ring(U, grid):
    """Pad U with zeros and clamp far coordinates into the ring: no masks, no clipping of taps."""
    N, C, H, W = U.shape
    Up = np.pad(U, ((0, 0), (0, 0), (RING, RING), (RING, RING)))
    x, y = pixels(grid, H, W)
    x, y = np.clip(x, -RING, W), np.clip(y, -RING, H)                  # beyond: all taps read 0
    x0, y0 = np.floor(x), np.floor(y)
    b = np.arange(N)[:, None]                                          # batch index
    V = 0
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            w = (1 - np.abs(x - xi)) * (1 - np.abs(y - yi))
            V = V + w[..., None] * Up[b, :, (yi + RING).astype(int), (xi + RING).astype(int)]
    return to_image(V, grid)


def padded_rows(U):
    """Step 3a: the zero-ringed image, channels last, one flat row per pixel: (N Hp Wp, C)."""
    N, C, H, W = U.shape
    Up = np.pad(U, ((0, 0), (0, 0), (RING, RING), (RING, RING)))
    return np.moveaxis(Up, 1, -1).reshape(-1, C), (H + 2 * RING, W + 2 * RING)


def flat_taps(points, image, H, W):
    """Step 3b: for points (M, 2) of images ``image`` (M,), the row of the top-left tap and (t_x, t_y)."""
    Hp, Wp = H + 2 * RING, W + 2 * RING
    x = np.clip(equations.pixel_coordinate(points[:, 0], W), -RING, W)
    y = np.clip(equations.pixel_coordinate(points[:, 1], H), -RING, H)
    x0, y0 = np.floor(x), np.floor(y)
    base = (image * Hp + (y0 + RING).astype(np.int64)) * Wp + (x0 + RING).astype(np.int64)
    return base, x - x0, y - y0


def contract(rows, base, tx, ty, Wp):
    """Gather rows base, base + 1, base + Wp, base + Wp + 1; weight x within each row, then y."""
    top = rows.take(base, axis=0) * (1 - tx)[:, None] + rows.take(base + 1, axis=0) * tx[:, None]
    bottom = (rows.take(base + Wp, axis=0) * (1 - tx)[:, None]
              + rows.take(base + Wp + 1, axis=0) * tx[:, None])
    return top * (1 - ty)[:, None] + bottom * ty[:, None]


def points_of(grid):
    """(N, H', W', 2) -> points (M, 2) and the image of each point (M,)."""
    N = grid.shape[0]
    points = grid.reshape(-1, 2)
    return points, np.repeat(np.arange(N), points.shape[0] // N)


def step3_flat_gather(U, grid):
    """Four taps of every point as rows of one flat image, gathered with ``take``."""
    N, C, H, W = U.shape
    rows, (Hp, Wp) = padded_rows(U)
    points, image = points_of(grid)
    V = contract(rows, *flat_taps(points, image, H, W), Wp)
    return to_image(V.reshape(N, -1, C), grid)


def step4_chunks(U, grid):
    """The same, CHUNK points at a time: temporaries stay in cache and memory stays bounded."""
    N, C, H, W = U.shape
    rows, (Hp, Wp) = padded_rows(U)
    points, image = points_of(grid)
    V = np.empty((points.shape[0], C))
    for start in range(0, points.shape[0], CHUNK):
        part = slice(start, start + CHUNK)
        V[part] = contract(rows, *flat_taps(points[part], image[part], H, W), Wp)
    return to_image(V.reshape(N, -1, C), grid)


def step5_stnref(U, grid):
    """stnref.grid_sample: all of the above, plus every mode, padding and dimension."""
    return stnref.grid_sample(U, grid)


FORWARD = (step0_dense, step1_four_neighbours, step2_zero_ring, step3_flat_gather, step4_chunks,
           step5_stnref)


# ----------------------------------------------------------------------------- backward

def tap_rows_and_weights(U, grid):
    """Every (point, tap) pair: ``(M, 4)`` rows into the zero-ringed image and weights."""
    N, C, H, W = U.shape
    Hp, Wp = H + 2 * RING, W + 2 * RING
    base, tx, ty = flat_taps(*points_of(grid), H, W)
    taps = base[:, None] + np.array([0, 1, Wp, Wp + 1])
    w = np.stack([(1 - tx) * (1 - ty), tx * (1 - ty), (1 - tx) * ty, tx * ty], axis=1)
    return taps, w, (Hp, Wp)


def dU_from_rows(dU_rows, U, Hp, Wp):
    """Cut the ring off a (R, C) gradient: (N, C, H, W)."""
    N, C, H, W = U.shape
    inner = dU_rows.reshape(N, Hp, Wp, C)[:, RING:RING + H, RING:RING + W]
    return np.moveaxis(inner, -1, 1)


def scatter_fancy_index(dV, U, grid):
    """WRONG: ``dU[rows] += w dV`` keeps one contribution per pixel when points share it."""
    taps, w, (Hp, Wp) = tap_rows_and_weights(U, grid)
    g = np.moveaxis(dV, 1, -1).reshape(-1, U.shape[1])                # (M, C)
    dU_rows = np.zeros((U.shape[0] * Hp * Wp, U.shape[1]))
    for t in range(4):
        dU_rows[taps[:, t]] += w[:, t, None] * g
    return dU_from_rows(dU_rows, U, Hp, Wp)


def scatter_add_at(dV, U, grid):
    """Eq. (6) by ``np.add.at``: correct, unbuffered."""
    taps, w, (Hp, Wp) = tap_rows_and_weights(U, grid)
    g = np.moveaxis(dV, 1, -1).reshape(-1, U.shape[1])
    dU_rows = np.zeros((U.shape[0] * Hp * Wp, U.shape[1]))
    np.add.at(dU_rows, taps.ravel(), (w[..., None] * g[:, None]).reshape(-1, U.shape[1]))
    return dU_from_rows(dU_rows, U, Hp, Wp)


def scatter_bincount(dV, U, grid):
    """Eq. (6) by ``np.bincount`` per channel: sums duplicates in one pass."""
    taps, w, (Hp, Wp) = tap_rows_and_weights(U, grid)
    g = np.moveaxis(dV, 1, -1).reshape(-1, U.shape[1])
    R = U.shape[0] * Hp * Wp
    dU_rows = np.stack([np.bincount(taps.ravel(), (w * g[:, c, None]).ravel(), minlength=R)
                        for c in range(U.shape[1])], axis=1)
    return dU_from_rows(dU_rows, U, Hp, Wp)


def scatter_sparse(dV, U, grid):
    """Eq. (6) as stnref does it: ``dU = S^T dV`` with S[m, row] = weight, a CSR matrix."""
    taps, w, (Hp, Wp) = tap_rows_and_weights(U, grid)
    g = np.moveaxis(dV, 1, -1).reshape(-1, U.shape[1])
    M, R = taps.shape[0], U.shape[0] * Hp * Wp
    S = scipy.sparse.csr_matrix((w.ravel(), taps.ravel(), np.arange(0, 4 * M + 1, 4)), shape=(M, R))
    return dU_from_rows(np.asarray(S.T @ g), U, Hp, Wp)


def dgrid_from_taps(dV, U, grid):
    """Eq. (7) from the same four taps: d V / d x_s = (1 - t_y)(U01 - U00) + t_y (U11 - U10)."""
    N, C, H, W = U.shape
    rows, (Hp, Wp) = padded_rows(U)
    base, tx, ty = flat_taps(*points_of(grid), H, W)
    v00, v01 = rows.take(base, axis=0), rows.take(base + 1, axis=0)
    v10, v11 = rows.take(base + Wp, axis=0), rows.take(base + Wp + 1, axis=0)
    dx = (v01 - v00) * (1 - ty)[:, None] + (v11 - v10) * ty[:, None]    # (M, C)
    dy = (v10 - v00) * (1 - tx)[:, None] + (v11 - v01) * tx[:, None]
    g = np.moveaxis(dV, 1, -1).reshape(-1, C)
    # chain rule through i = ((x + 1) W - 1) / 2; a clamped point reads only the ring: slope 0
    dgrid = np.stack([W / 2 * (dx * g).sum(1), H / 2 * (dy * g).sum(1)], axis=1)
    return dgrid.reshape(grid.shape)


SCATTERS = (scatter_add_at, scatter_bincount, scatter_sparse)


# ----------------------------------------------------------------------------- timing

def inputs(shape, out, seed=0):
    """U (N, C, H, W) and a grid of a random affine warp (zoom, rotation, shift) of it."""
    rng = np.random.default_rng(seed)
    U = rng.standard_normal(shape)
    theta = np.eye(2, 3) + rng.uniform(-0.2, 0.2, (shape[0], 2, 3))
    return U, stnref.affine_grid(theta, (shape[0], shape[1], *out))


def best_of(fn, rounds):
    """Minimum CPU time of ``rounds`` calls, in ms."""
    times = []
    for _ in range(rounds):
        start = time.thread_time()
        fn()
        times.append(time.thread_time() - start)
    return 1e3 * min(times)


def peak_mb(fn):
    """Peak memory allocated while ``fn`` runs (NumPy reports to tracemalloc), in MB."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


SHAPES = (((16, 1, 28, 28), (28, 28)), ((64, 1, 28, 28), (28, 28)), ((1, 1, 512, 512), (512, 512)))
DENSE_MAX = 16 * 28**4  # weights of step 0: 16 images of 28^2, 98 MB


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    print(f"{platform.machine()}, numpy {np.__version__}, scipy {scipy.__version__}; "
          f"float64, bilinear, zeros; CPU ms, best of {args.rounds}")
    print("| step | " + " | ".join(f"{s} -> {o}" for s, o in SHAPES) + " | peak MB, last shape |")
    print("|---|" + "---:|" * (len(SHAPES) + 1))
    cases = [inputs(s, o) for s, o in SHAPES]
    for step in FORWARD:
        cells = []
        for U, grid in cases:
            big = U.shape[0] * U.shape[2] * U.shape[3] * grid.shape[1] * grid.shape[2] > DENSE_MAX
            cells.append("-" if step is step0_dense and big else
                         f"{best_of(lambda: step(U, grid), args.rounds):.2f}")
        cells.append("-" if cells[-1] == "-" else f"{peak_mb(lambda: step(*cases[-1])):.1f}")
        print(f"| {step.__name__} | " + " | ".join(cells) + " |")
    for scatter in (*SCATTERS, dgrid_from_taps):
        cells = []
        for U, grid in cases:
            dV = np.ones((U.shape[0], U.shape[1], *grid.shape[1:3]))
            cells.append(f"{best_of(lambda: scatter(dV, U, grid), args.rounds):.2f}")
        dV = np.ones((cases[-1][0].shape[0], cases[-1][0].shape[1], *cases[-1][1].shape[1:3]))
        cells.append(f"{peak_mb(lambda: scatter(dV, *cases[-1])):.1f}")
        print(f"| {scatter.__name__} | " + " | ".join(cells) + " |")
    cells = []
    for U, grid in cases:
        dV = np.ones((U.shape[0], U.shape[1], *grid.shape[1:3]))
        cells.append(f"{best_of(lambda: stnref.grid_sample_backward(dV, U, grid), args.rounds):.2f}")
    cells.append(f"{peak_mb(lambda: stnref.grid_sample_backward(dV, U, grid)):.1f}")
    print("| stnref.grid_sample_backward (dU and dgrid) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
