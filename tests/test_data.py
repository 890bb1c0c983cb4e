"""Tests for stnref.data: procedural digits, the §4.1 distortions, IDX files, datasets."""

from __future__ import annotations

import gzip
import os
import time
import tracemalloc

import numpy as np
import pytest

import stnref
from stnref.data import digits as data
from stnref.data import (
    DISTORTIONS, distort, load_dataset, load_mnist, read_idx, split_sizes, synthetic_digits,
    write_idx,
)
from stnref import affine_grid, grid_sample
from stnref.grids import tps_control_points

OUT_SIZES = {"none": 28, "r": 28, "rts": 42, "p": 28, "e": 28, "tc": 60}
PX = 2.0 / 28                      # normalised units per 28x28 source pixel
CENTROID_TOL_PX = 0.35             # bilinear resampling moves a blob's centroid by less
FAST_FAIL_S = 1.0                  # a lying header must be rejected at once
IDX_REFUSE_PEAK_BYTES = 1 << 20    # traced peak of refusing an IDX file over the budget
IDX_CUT_PEAK_BYTES = 8 << 20       # ... of keeping a few hundred images of a big one


@pytest.fixture(scope="module")
def digits():
    return synthetic_digits(600, seed=11)


# --------------------------------------------------------------------------- digits

def test_digits_deterministic_and_seeded():
    a, la = synthetic_digits(40, seed=5)
    b, lb = synthetic_digits(40, seed=5)
    c, _ = synthetic_digits(40, seed=6)
    assert a.tobytes() == b.tobytes() and np.array_equal(la, lb)
    assert not np.array_equal(a, c)


def test_digits_prefix_property_across_chunks():
    k, n = data.CHUNK + 7, data.CHUNK + 40
    a, la = synthetic_digits(k, seed=2)
    b, lb = synthetic_digits(n, seed=2)
    assert a.tobytes() == b[:k].tobytes()
    assert np.array_equal(la, lb[:k])


def test_digits_labels_balanced():
    _, labels = synthetic_digits(2 * data.CHUNK, seed=0)
    counts = np.bincount(labels, minlength=10)
    assert labels.dtype == np.int64
    # every full chunk holds each digit 102 or 103 times
    assert counts.min() >= 204 and counts.max() <= 206


def test_digits_range_dtype_and_placement(digits):
    x, y = digits
    assert x.shape == (600, 28, 28) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert (x.max(axis=(1, 2)) > 0.8).all()                 # saturated stroke cores
    # the digit sits in the central 20x20 box (plus offset and the blur's tail): the
    # frame's outer pixel holds at most faint ink, the outer 2 pixels almost none
    for width, most, share in [(1, 0.02, 1e-5), (2, 0.3, 1e-3)]:
        border = np.ones((28, 28), bool)
        border[width:-width, width:-width] = False
        assert x[:, border].max() < most and x[:, border].sum() < share * x.sum()
    r = np.arange(28) + 0.5
    mass = x.sum(axis=(1, 2))
    cy = (x.sum(axis=2) @ r) / mass
    cx = (x.sum(axis=1) @ r) / mass
    assert np.abs(cy - 14).max() < 5 and np.abs(cx - 14).max() < 5
    # the longest side of the ink's bounding box fills most of the 20x20 box
    rows, cols = x.max(axis=2) > 0.2, x.max(axis=1) > 0.2
    extent = np.maximum(rows.sum(axis=1), cols.sum(axis=1))
    assert 14 <= extent.min() and extent.max() <= 22


def test_digits_vary_within_a_class(digits):
    x, y = digits
    ones = x[y == 1].reshape(-1, 784)
    eights = x[y == 8].reshape(-1, 784)
    assert np.linalg.norm(ones - ones.mean(0), axis=1).min() > 1.0
    # classes differ more between than within: nearest class mean classifies well
    means = np.stack([x[y == d].mean(0).ravel() for d in range(10)])
    pred = np.argmin(((x.reshape(-1, 1, 784) - means) ** 2).sum(-1), axis=1)
    assert (pred == y).mean() > 0.6
    assert eights.shape[0] > 0


def test_digits_other_size():
    x, _ = synthetic_digits(5, seed=0, size=40)
    assert x.shape == (5, 40, 40) and x.dtype == np.float32 and x.max() > 0.8


@pytest.mark.parametrize("kwargs, err", [
    (dict(n=0), ValueError), (dict(n=2.0), TypeError), (dict(n=3, seed=-1), ValueError),
    (dict(n=3, size=4), ValueError), (dict(n=3, seed="a"), TypeError),
])
def test_digits_errors(kwargs, err):
    with pytest.raises(err, match="synthetic_digits"):
        synthetic_digits(**kwargs)


def _fit_softmax(X, y, steps, lr):
    """Full-batch gradient descent on multinomial logistic regression (float64)."""
    W = np.zeros((X.shape[1], 10))
    b = np.zeros(10)
    onehot = np.eye(10)[y]
    for _ in range(steps):
        z = X @ W + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) / len(y)
        W -= lr * (X.T @ g)
        b -= lr * g.sum(0)
    return W, b


def test_digits_learnable_but_not_trivial():
    x, y = synthetic_digits(1500, seed=21)
    xt, yt = synthetic_digits(500, seed=22)
    W, b = _fit_softmax(x.reshape(len(x), -1).astype(np.float64), y, steps=60, lr=1.0)
    err = (np.argmax(xt.reshape(len(xt), -1) @ W + b, axis=1) != yt).mean()
    assert 0.01 < err < 0.4


# --------------------------------------------------------------------------- distortions

@pytest.mark.parametrize("kind", DISTORTIONS)
def test_distort_shapes_dtype_determinism(digits, kind):
    x = digits[0][:40]
    out, params = distort(x, kind, seed=4)
    again, _ = distort(x, kind, seed=4)
    S = OUT_SIZES[kind]
    assert out.shape == (40, S, S) and out.dtype == np.float32
    assert out.tobytes() == again.tobytes()
    assert out.min() >= 0 and out.max() <= 1.0 + 1e-6
    for v in params.values():
        assert v.shape[0] == 40
    if kind != "none":
        other, _ = distort(x, kind, seed=5)
        assert not np.array_equal(out, other)
    assert np.array_equal(x, digits[0][:40])          # input untouched


def test_distort_none_is_copy_and_float64_input(digits):
    x = digits[0][:10]
    out, params = distort(x.astype(np.float64), "none")
    assert out.dtype == np.float32 and np.array_equal(out, x) and params == {}


@pytest.mark.parametrize("kind", ["r", "rts", "p", "e"])
def test_distort_prefix_property(digits, kind):
    x = np.concatenate([digits[0]] * 2)[:data.CHUNK + 30]
    full, pf = distort(x, kind, seed=9)
    part, pp = distort(x[:data.CHUNK + 3], kind, seed=9)
    assert full[:data.CHUNK + 3].tobytes() == part.tobytes()
    assert np.array_equal(pf["theta"][:data.CHUNK + 3], pp["theta"])


def _blob(points_px, size=28, sigma=1.2):
    """Images with a small Gaussian blob at each (x, y) pixel position (pixel centres k + 0.5)."""
    r = np.arange(size) + 0.5
    gx = np.exp(-0.5 * ((r[None, :] - points_px[:, 0, None]) / sigma) ** 2)
    gy = np.exp(-0.5 * ((r[None, :] - points_px[:, 1, None]) / sigma) ** 2)
    return gy[:, :, None] * gx[:, None, :]


def _centroid(img):
    r = np.arange(img.shape[-1]) + 0.5
    mass = img.sum(axis=(1, 2))
    return np.stack([(img.sum(axis=1) @ r) / mass, (img.sum(axis=2) @ r) / mass], axis=1)


def test_distort_r_angle_and_direction():
    n = 400
    src = np.tile([[14.0 + 6.0, 14.0]], (n, 1))          # blob 6 px right of centre
    out, params = distort(_blob(src), "r", seed=3)
    angle = params["angle"]
    assert np.abs(angle).max() <= 90 and angle.min() < -80 and angle.max() > 80
    # recovered from the grid's theta = R(-angle)
    theta = params["theta"]
    np.testing.assert_allclose(np.degrees(np.arctan2(theta[:, 0, 1], theta[:, 0, 0])), angle, atol=1e-9)
    a = np.radians(angle)
    expected = 14.0 + 6.0 * np.stack([np.cos(a), np.sin(a)], axis=1)   # y down: clockwise on screen
    assert np.abs(_centroid(out) - expected).max() < CENTROID_TOL_PX


def test_distort_rts_ranges_and_placement():
    n = 500
    src = np.tile([[14.0, 14.0 - 5.0]], (n, 1))          # blob 5 px above centre
    out, params = distort(_blob(src), "rts", seed=8)
    angle, scale, shift = params["angle"], params["scale"], params["shift_px"]
    assert np.abs(angle).max() <= 45 and angle.min() < -40 and angle.max() > 40
    assert scale.min() >= 0.7 and scale.max() <= 1.2 and scale.min() < 0.75 and scale.max() > 1.15
    # the scaled 20x20 box stays on the 42x42 canvas
    assert (np.abs(shift) + 10 * scale[:, None] <= 21 + 1e-9).all()
    a = np.radians(angle)
    off = np.stack([5.0 * np.sin(a), -5.0 * np.cos(a)], axis=1) * scale[:, None]   # R(a) (0, -5) s
    assert np.abs(_centroid(out) - (21.0 + shift + off)).max() < CENTROID_TOL_PX


def test_distort_rts_keeps_the_digit_on_the_canvas(digits):
    x = digits[0]
    out, params = distort(x, "rts", seed=2)
    kept = out.sum(axis=(1, 2)) / (x.sum(axis=(1, 2)) * params["scale"] ** 2)
    # (bilinear sampling of a shrunk digit conserves ink only approximately)
    assert kept.min() > 0.8 and np.median(kept) > 0.99 and kept.max() < 1.05


def test_distort_p_corner_noise_and_homography():
    n = 2000
    x = np.zeros((n, 28, 28))
    _, params = distort(x, "p", seed=1)
    noise, corners, theta, scale = (params[k] for k in ("corner_noise_px", "corners", "theta", "scale"))
    stretch = params["corner_stretch_px"]
    assert scale.min() >= 0.75 and scale.max() <= 1.0
    assert abs(stretch.std() - 5.0) < 0.15 and abs(stretch.mean()) < 0.15
    # each corner moves along its diagonal, outward for a positive stretch
    signs = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float)
    np.testing.assert_allclose(noise, stretch[..., None] * signs / np.sqrt(2), atol=1e-12)
    # folded draws are redrawn: every moved quadrilateral is convex, clockwise on screen
    edges = np.roll(corners, -1, axis=1) - corners
    nxt = np.roll(edges, -1, axis=1)
    assert (edges[..., 0] * nxt[..., 1] - edges[..., 1] * nxt[..., 0] > 0).all()
    # corners (output) are the scaled image corners moved by the noise, in normalised units
    np.testing.assert_allclose((corners - scale[:, None, None] * signs) / PX, noise, atol=1e-9)
    # the grid's homography maps each moved corner back onto the image corner
    h = np.einsum("nij,nkj->nki", theta, np.concatenate([corners, np.ones((n, 4, 1))], axis=2))
    np.testing.assert_allclose(h[..., :2] / h[..., 2:], np.broadcast_to(signs, (n, 4, 2)), atol=1e-7)


def test_distort_p_moves_blob_where_the_inverse_homography_says():
    n = 200
    src = np.tile([[14.0 + 4.0, 14.0 + 3.0]], (n, 1))
    out, params = distort(_blob(src, sigma=1.0), "p", seed=5)
    q = np.array([(src[0, 0] - 14) * PX, (src[0, 1] - 14) * PX, 1.0])
    t = np.linalg.solve(params["theta"], np.broadcast_to(q, (n, 3))[..., None])[..., 0]
    expected = t[:, :2] / t[:, 2:] / PX + 14.0
    inside = (np.abs(expected - 14) < 10).all(axis=1)
    assert inside.mean() > 0.8
    assert np.median(np.abs(_centroid(out[inside]) - expected[inside])) < CENTROID_TOL_PX


def test_distort_e_control_noise_and_direction():
    n = 1000
    P = tps_control_points(16)
    x = np.zeros((n, 28, 28))
    _, params = distort(x, "e", seed=2)
    theta, scale, noise = params["theta"], params["scale"], params["control_noise_px"]
    assert theta.shape == (n, 16, 2) and scale.min() >= 0.75 and scale.max() <= 1.0
    np.testing.assert_allclose((theta - P / scale[:, None, None]) / PX, noise, atol=1e-9)
    assert abs(noise.std() - 1.5) < 0.05
    # a blob at the source point theta_k shows up at the output control point P_k
    k = 5                                        # an interior control point, (-1/3, -1/3)
    src = theta[:200, k] / PX + 14.0
    out, again = distort(_blob(src, sigma=1.0), "e", seed=2)
    np.testing.assert_allclose(again["theta"], theta[:200])
    assert np.median(np.abs(_centroid(out) - (P[k] / PX + 14.0))) < CENTROID_TOL_PX


def test_distort_tc_translation_and_clutter(digits):
    x = digits[0][:300]
    out, params = distort(x, "tc", seed=6)
    shift, src, crop, place = (params[k] for k in ("shift_px", "clutter_source", "clutter_crop",
                                                   "clutter_position"))
    assert np.abs(shift).max() <= 16
    assert src.shape == (300, 6) and (src != np.arange(300)[:, None]).all()
    # crops anywhere in the other digit's 28x28 frame, patches anywhere on the canvas
    assert crop.min() == 0 and crop.max() == 22 and place.min() == 0 and place.max() == 54
    # the canvas is the translated digit plus every patch at its place, clipped at 1
    expected = grid_sample(x[:, None].astype(np.float64), affine_grid(params["theta"], (300, 1, 60, 60)))[:, 0]
    for ii in range(300):
        for kk in range(6):
            (cx, cy), (px, py) = crop[ii, kk], place[ii, kk]
            expected[ii, py:py + 6, px:px + 6] += x[src[ii, kk], cy:cy + 6, cx:cx + 6]
    np.testing.assert_allclose(out, np.minimum(expected, 1.0), atol=1e-5)
    # clutter adds ink beyond the digit: the canvas holds more than the digit alone
    assert (out.sum(axis=(1, 2)) > x.sum(axis=(1, 2)) + 1e-3).mean() > 0.9
    # with empty other digits there is no clutter: the canvas is the digit translated by
    # shift (bilinear translation keeps the mass and moves the centroid exactly)
    lone = np.zeros((3, 28, 28))
    lone[0] = x[0]
    lone_out, lp = distort(lone, "tc", seed=6)
    assert abs(lone_out[0].sum() - x[0].sum()) < 1e-4 * x[0].sum()
    # and equal to sampling the whole canvas with the returned theta
    full = grid_sample(lone[:, None], affine_grid(lp["theta"], (3, 1, 60, 60)))[:, 0]
    np.testing.assert_allclose(lone_out[0], full[0], atol=1e-6)
    np.testing.assert_allclose(_centroid(lone_out[:1]), _centroid(x[:1]) + 16 + lp["shift_px"][:1], atol=1e-3)


@pytest.mark.parametrize("args, err", [
    ((np.zeros((2, 28, 27), np.float32), "r"), ValueError),
    ((np.zeros((2, 28, 28), np.float32), "x"), ValueError),
    ((np.zeros((2, 28, 28), np.uint8), "r"), TypeError),
    ((np.zeros((1, 28, 28), np.float32), "tc"), ValueError),
])
def test_distort_errors(args, err):
    with pytest.raises(err, match="distort"):
        distort(*args)


# --------------------------------------------------------------------------- IDX

@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("shape", [(7, 5, 4), (9,)])
def test_idx_round_trip(tmp_path, suffix, shape):
    a = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    path = tmp_path / f"f{suffix}"
    write_idx(path, a)
    b = read_idx(path)
    assert b.dtype == np.uint8 and np.array_equal(a, b)
    assert os.listdir(tmp_path) == [path.name]             # no temporary left behind
    raw = gzip.decompress(path.read_bytes()) if suffix else path.read_bytes()
    assert raw[:4] == bytes([0, 0, 8, len(shape)])
    assert np.array_equal(np.frombuffer(raw[4:4 + 4 * len(shape)], ">i4"), shape)


def test_idx_gz_deterministic(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a)
    write_idx(tmp_path / "b.gz", a)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


def _raw_idx(code, dims, payload):
    return bytes([0, 0, code, len(dims)]) + np.asarray(dims, ">i4").tobytes() + payload


def _write_raw(tmp_path, name, raw):
    path = tmp_path / name
    path.write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    return path


BAD_FILES = {
    "truncated": (_raw_idx(8, (2, 3, 3), bytes(17)), "truncated"),
    "oversized": (_raw_idx(8, (2, 3, 3), bytes(19)), "oversized"),
    "wrong_magic": (b"\x01\x02" + _raw_idx(8, (4,), bytes(4))[2:], "wrong magic"),
    "wrong_ndim": (_raw_idx(8, (2, 2), bytes(4)), "wrong magic"),
    "dtype_float32": (_raw_idx(0x0D, (4,), bytes(16)), r"unsupported dtype code 0x0d \(float32\)"),
    "dtype_unknown": (_raw_idx(0x42, (4,), bytes(4)), "unsupported dtype code 0x42"),
    "zero_dim": (_raw_idx(8, (0, 3, 3), b""), "positive"),
    "negative_dim": (_raw_idx(8, (-2, 3, 3), bytes(18)), "positive"),
    "short_header": (bytes([0, 0, 8, 3, 0, 0]), "truncated header"),
    "empty": (b"", "truncated header"),
}


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_idx_rejects_bad_files(tmp_path, case, suffix):
    raw, message = BAD_FILES[case]
    path = _write_raw(tmp_path, f"{case}{suffix}", raw)
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_lying_header_fails_fast(tmp_path, suffix):
    # claims 10^9 images of 1x1 (within the element budget), 10^12 of 1x1 and 10^9 of
    # 1000 x 1000 (over it): only 100 bytes follow.  A plain file's size is checked first; a
    # .gz header over the budget is refused before decompressing anything.
    for dims, gz_message in [((10**9, 1, 1), "truncated"), ((10**6, 10**6, 1), "over the budget"),
                             ((10**9, 1000, 1000), "over the budget")]:
        path = _write_raw(tmp_path, f"lie{suffix}", _raw_idx(8, dims, bytes(100)))
        start = time.perf_counter()
        with pytest.raises(ValueError, match=gz_message if suffix else "truncated"):
            read_idx(path)
        assert time.perf_counter() - start < FAST_FAIL_S


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_over_budget_refused_before_allocating(tmp_path, suffix):
    """Decoded IDX data had no element budget: a 760 KB .gz of 10^6 zero images took 3.9 GB."""
    n = 10_000                                        # 7.8 MB decoded, 8 KB compressed
    path = _write_raw(tmp_path, f"big{suffix}", _raw_idx(8, (n, 28, 28), bytes(n * 784)))
    previous = stnref.set_max_elements(n * 784 - 1)
    try:
        tracemalloc.start()
        with pytest.raises(ValueError, match=rf"read_idx\(\): IDX file .*big{suffix}' of shape "
                                             rf"\({n}, 28, 28\) .* over the budget") as info:
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        stnref.set_max_elements(previous)
    assert str(path) in str(info.value)
    assert peak < IDX_REFUSE_PEAK_BYTES
    assert read_idx(path).shape == (n, 28, 28)        # the default budget accepts it


def test_idx_not_gzip(tmp_path):
    path = _write_raw(tmp_path, "plain.gz", b"")
    path.write_bytes(_raw_idx(8, (4,), bytes(4)))
    with pytest.raises(ValueError, match="gzip"):
        read_idx(path)


def test_idx_cut_gzip_stream(tmp_path):
    compressed = gzip.compress(_raw_idx(8, (50, 4, 4), bytes(range(200)) * 4))
    path = tmp_path / "cut.gz"
    path.write_bytes(compressed[:len(compressed) // 2])
    with pytest.raises(ValueError, match="cut.gz"):
        read_idx(path)


def test_write_idx_errors(tmp_path):
    with pytest.raises(TypeError, match="write_idx"):
        write_idx(tmp_path / "a", np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="write_idx"):
        write_idx(tmp_path / "a", np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="write_idx"):
        write_idx(tmp_path / "a", np.zeros((0, 2, 2), np.uint8))
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- MNIST / datasets

def _fake_mnist(directory, n_train=30, n_test=12, gz=True):
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for i, (name, a) in enumerate(arrays.items()):
        write_idx(os.path.join(directory, name + (".gz" if gz and i % 2 == 0 else "")), a)
    return arrays


def test_load_mnist(tmp_path):
    arrays = _fake_mnist(tmp_path)
    x_tr, y_tr, x_te, y_te = load_mnist(tmp_path)
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int64
    np.testing.assert_array_equal(x_tr, arrays["train-images-idx3-ubyte"] / np.float32(255))
    np.testing.assert_array_equal(y_te, arrays["t10k-labels-idx1-ubyte"])
    assert x_te.shape == (12, 28, 28) and x_tr.max() <= 1 and x_tr.min() >= 0


def test_load_mnist_missing_and_mismatch(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.*t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path)
    _fake_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(11, np.uint8))
    with pytest.raises(ValueError, match="12 images but .* 11 labels"):
        load_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(12, 10, np.uint8))
    with pytest.raises(ValueError, match="0-9"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("kind", DISTORTIONS)
def test_load_dataset_builtin(kind):
    x_tr, y_tr, x_te, y_te = load_dataset(kind, train_size=20, test_size=10, seed=3)
    S = OUT_SIZES[kind]
    assert x_tr.shape == (20, 1, S, S) and x_te.shape == (10, 1, S, S)
    assert x_tr.dtype == x_te.dtype == np.float32 and y_tr.dtype == y_te.dtype == np.int64
    assert not np.array_equal(x_tr[:10], x_te)


def test_load_dataset_seeds_and_subsets():
    a = load_dataset("r", train_size=30, test_size=5, seed=1)
    b = load_dataset("r", train_size=12, test_size=5, seed=1)
    c = load_dataset("r", train_size=12, test_size=5, seed=2)
    assert a[0][:12].tobytes() == b[0].tobytes() and np.array_equal(a[1][:12], b[1])
    assert not np.array_equal(b[0], c[0])
    # undistorted train digits differ from synthetic_digits(seed) and from the test split
    plain = load_dataset("none", train_size=10, test_size=10, seed=1)
    assert not np.array_equal(plain[0][:, 0], synthetic_digits(10, seed=1)[0])


def test_load_dataset_from_files(tmp_path):
    arrays = _fake_mnist(tmp_path, gz=False)
    x_tr, y_tr, x_te, y_te = load_dataset("none", data_dir=tmp_path, train_size=7)
    assert x_tr.shape == (7, 1, 28, 28) and x_te.shape == (12, 1, 28, 28)
    np.testing.assert_array_equal(x_tr[:, 0], arrays["train-images-idx3-ubyte"][:7] / np.float32(255))
    np.testing.assert_array_equal(y_tr, arrays["train-labels-idx1-ubyte"][:7])
    x_tr, _, x_te, _ = load_dataset("rts", data_dir=tmp_path, test_size=4)
    assert x_tr.shape == (30, 1, 42, 42) and x_te.shape == (4, 1, 42, 42)


def _big_mnist(directory, suffix, n_train=20_000, n_random=500):
    """MNIST files of ``n_train`` training images, the first ``n_random`` random, then zeros."""
    rng = np.random.default_rng(2)
    images = np.zeros((n_train, 28, 28), np.uint8)
    images[:n_random] = rng.integers(0, 256, (n_random, 28, 28), dtype=np.uint8)
    arrays = {"train-images-idx3-ubyte": images,
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, 40, dtype=np.uint8)}
    for name, a in arrays.items():
        _write_raw(directory, name + suffix, _raw_idx(8, a.shape, a.tobytes()))
    return arrays


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_load_dataset_small_request_from_big_files(tmp_path, suffix):
    """The whole split was converted to float32 before train_size was applied (3.9 GB of RSS
    for 500 images of a 10^6-image file): now only the kept images are allocated, and they
    are the same arrays as cutting the whole split."""
    arrays = _big_mnist(tmp_path, suffix)
    tracemalloc.start()
    try:
        x_tr, y_tr, x_te, y_te = load_dataset("none", tmp_path, 300, 30, seed=5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < IDX_CUT_PEAK_BYTES                   # the whole split is 62.7 MB of float32
    full = load_mnist(tmp_path)
    for got, whole, n in ((x_tr[:, 0], full[0], 300), (y_tr, full[1], 300),
                          (x_te[:, 0], full[2], 30), (y_te, full[3], 30)):
        assert got.dtype == whole.dtype and got.tobytes() == whole[:n].tobytes()
    np.testing.assert_array_equal(y_tr, arrays["train-labels-idx1-ubyte"][:300])


def test_load_dataset_cut_is_the_same_selection(tmp_path):
    """Asking for a prefix gives the first samples of the whole split, distorted alike."""
    _big_mnist(tmp_path, ".gz", n_train=2100, n_random=2100)
    whole = load_dataset("rts", tmp_path, None, None, seed=7)
    cut = load_dataset("rts", tmp_path, 1500, 9, seed=7)
    for a, b in zip(cut, whole):
        assert a.tobytes() == b[:len(a)].tobytes()


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_load_dataset_cut_still_checks_whole_files(tmp_path, suffix):
    """Keeping a prefix does not skip checking the rest: labels past it, the payload's length."""
    arrays = _big_mnist(tmp_path, suffix, n_train=300, n_random=300)
    labels = arrays["train-labels-idx1-ubyte"].copy()
    labels[-1] = 10
    write_idx(tmp_path / ("train-labels-idx1-ubyte" + suffix), labels)
    with pytest.raises(ValueError, match="0-9"):
        load_dataset("none", tmp_path, 5, 5)
    write_idx(tmp_path / ("train-labels-idx1-ubyte" + suffix), arrays["train-labels-idx1-ubyte"])
    images = _raw_idx(8, (300, 28, 28), arrays["train-images-idx3-ubyte"].tobytes())
    _write_raw(tmp_path, "train-images-idx3-ubyte" + suffix, images[:-1])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*truncated"):
        load_dataset("none", tmp_path, 5, 5)


def test_mnist_file_both_plain_and_gz_that_disagree_is_refused(tmp_path):
    """With both train-images-idx3-ubyte and a .gz of another size the plain one was silently used."""
    _fake_mnist(tmp_path, gz=False)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.full((31, 28, 28), 9, np.uint8))
    plain, gz = (str(tmp_path / "train-images-idx3-ubyte"), str(tmp_path / "train-images-idx3-ubyte.gz"))
    for fn, call in (("load_mnist", lambda: load_mnist(tmp_path)),
                     ("load_mnist", lambda: load_dataset("none", tmp_path, 2, 2)),
                     ("split_sizes", lambda: split_sizes(tmp_path))):
        with pytest.raises(ValueError, match=rf"{fn}\(\): .* disagree") as info:
            call()
        assert plain in str(info.value) and gz in str(info.value)


def test_mnist_file_both_plain_and_gz_that_agree_reads_the_plain_one(tmp_path):
    """torchvision's MNIST/raw keeps each .gz beside the file it extracted."""
    _fake_mnist(tmp_path, gz=False)
    expected = load_mnist(tmp_path)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        write_idx(tmp_path / f"{name}.gz", read_idx(tmp_path / name))
    for got, want in zip(load_mnist(tmp_path), expected):
        np.testing.assert_array_equal(got, want)


def test_load_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="load_dataset.*distortion"):
        load_dataset("rotate")
    with pytest.raises(ValueError, match="train_size"):
        load_dataset(train_size=0)
    with pytest.raises(FileNotFoundError):
        load_dataset(data_dir=tmp_path)


# --------------------------------------------------------------------------- fuzzer regressions

# gzip header bytes 4-9 (mtime, extra flags, OS) are not checked by any reader
GZIP_UNCHECKED_HEADER = range(4, 10)


def test_idx_every_bit_flip_in_gzip_is_a_value_error(tmp_path):
    """A flipped bit inside the deflate stream raised zlib.error (not an OSError) uncaught.

    Every single-bit flip of a small .gz file must read back the original array (a
    flip in an ignored field) or be a ValueError naming the file.
    """
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x.idx.gz"
    write_idx(path, a)
    raw = path.read_bytes()
    messages = []
    for i in (i for i in range(len(raw)) if i not in GZIP_UNCHECKED_HEADER):
        for bit in range(8):
            flipped = bytearray(raw)
            flipped[i] ^= 1 << bit
            path.write_bytes(bytes(flipped))
            try:
                np.testing.assert_array_equal(read_idx(path), a)
            except ValueError as err:
                assert "x.idx.gz" in str(err)
                messages.append(str(err))
    assert any("while decompressing" in m for m in messages)   # the zlib.error case is covered
    assert any("CRC check failed" in m for m in messages)


def test_write_idx_goes_through_atomic_open(tmp_path, monkeypatch):
    """write_idx shares stnref._io's atomic writer: a failure mid-write keeps the old file."""
    import stnref._io

    path = tmp_path / "a.idx.gz"
    old = np.full((1, 2, 2), 7, np.uint8)
    write_idx(path, old)
    assert (path.stat().st_mode & 0o777) == stnref._io.FILE_MODE

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="No space left"):
        write_idx(path, np.zeros((3, 2, 2), np.uint8))
    monkeypatch.undo()
    np.testing.assert_array_equal(read_idx(path), old)
    assert os.listdir(tmp_path) == [path.name]


def test_load_dataset_data_dir_type_named():
    with pytest.raises(TypeError, match=r"load_dataset\(\): expected data_dir to be a path"):
        load_dataset("none", 3, 2, 2)


@pytest.mark.parametrize("sizes, name", [((10**12, 2), "train_size"), ((2, 10**12), "test_size")])
def test_load_dataset_huge_size_refused_before_allocating(sizes, name):
    """load_dataset skipped synthetic_digits' budget check (MemoryError on 10^12 digits)."""
    with pytest.raises(ValueError, match=rf"load_dataset\(\): {name} images of shape .* over the budget"):
        load_dataset("rts", None, *sizes)


def test_distort_empty_set():
    """An empty set is refused by name for the random distortions (it was an IndexError)."""
    out, params = distort(np.zeros((0, 28, 28), np.float32), "none")
    assert out.shape == (0, 28, 28) and params == {}
    with pytest.raises(ValueError, match=r"distort\(\): kind 'r' .* n >= 1"):
        distort(np.zeros((0, 28, 28), np.float32), "r")
