"""Train and test sets for one distortion: built-in digits or MNIST files, distorted."""

from __future__ import annotations

import os

import numpy as np

from .. import _checks
from .digits import MNIST_SIZE, _check_seed, _digits
from .distortions import _OUT_SIZES, DISTORTIONS, _distort
from .idx import _load_mnist, _mnist_files, read_idx

__all__ = ["distort_epoch", "load_dataset", "load_digits", "split_sizes"]

# Seeds for load_dataset: (seed, split, stage[, epoch]).  Tags are nonzero because
# SeedSequence pads entropy with zeros, so (seed, 0) would equal (seed,).
TRAIN, TEST = 1, 2
STAGE_DIGITS, STAGE_DISTORT, STAGE_HELD_OUT = 1, 2, 3
DEFAULT_SIZES = {TRAIN: 60_000, TEST: 10_000}


def _split_size(value, name, fn):
    """``None`` (the whole split) or a positive int."""
    return None if value is None else _checks.check_int(value, name, fn, minimum=1)


def split_sizes(data_dir=None):
    """How many training and test samples :func:`load_dataset` gives when a size is None.

    Parameters
    ----------
    data_dir : str or os.PathLike, optional
        Directory with the MNIST IDX files; None: the built-in digits.

    Returns
    -------
    (int, int)
        Training and test samples: the labels in the files (only the label files are
        read), or 60,000 and 10,000 built-in digits.
    """
    if data_dir is None:
        return DEFAULT_SIZES[TRAIN], DEFAULT_SIZES[TEST]
    found = _mnist_files(os.fspath(data_dir), "split_sizes")
    return len(read_idx(found["train_labels"])), len(read_idx(found["test_labels"]))


def _check_digit_budget(distortion, train_size, test_size):
    """Refuse built-in digit splits over the element budget (they are generated as asked)."""
    side = _OUT_SIZES[distortion]
    for name, size in (("train_size", train_size), ("test_size", test_size)):
        if size is not None:
            _checks.check_budget((size, side, side), "load_dataset", f"{name} images")


def load_digits(data_dir=None, train_size=None, test_size=None, seed=0, validation=False):
    """The undistorted digits of :func:`load_dataset`: training and evaluation splits.

    Parameters
    ----------
    data_dir, train_size, test_size, seed
        As :func:`load_dataset`.
    validation : bool, default False
        Evaluate on held-out training digits: the evaluation split is the ``test_size``
        training digits after the first ``train_size`` (the test split is not read).
        The training digits are the same as without ``validation``.

    Returns
    -------
    x_train : ndarray, shape (n_train, 28, 28), float32
    y_train : ndarray, shape (n_train,), int64
    x_eval : ndarray, shape (n_eval, 28, 28), float32
    y_eval : ndarray, shape (n_eval,), int64
    """
    return _load_digits(data_dir, train_size, test_size, seed, validation, "load_digits")


def _load_digits(data_dir, train_size, test_size, seed, validation, fn):
    seed = _check_seed(seed, fn)
    sizes = {TRAIN: _split_size(train_size, "train_size", fn),
             TEST: _split_size(test_size, "test_size", fn)}
    if not isinstance(validation, bool):
        raise TypeError(f"{fn}(): expected validation to be a bool, got {validation!r}")
    if data_dir is not None and not isinstance(data_dir, (str, bytes, os.PathLike)):
        raise TypeError(f"{fn}(): expected data_dir to be a path (str or os.PathLike) or None, "
                        f"got {type(data_dir).__name__} {data_dir!r}")
    if validation:
        n_eval = DEFAULT_SIZES[TEST] if sizes[TEST] is None else sizes[TEST]
        n_train = sizes[TRAIN]
        if n_train is None:   # every training digit but the held-out ones
            n_train = (DEFAULT_SIZES[TRAIN] if data_dir is None else split_sizes(data_dir)[0]) - n_eval
            if n_train < 1:
                raise ValueError(f"{fn}(): validation holds out test_size={n_eval} training digits, "
                                 f"which leaves none to train on")
        if data_dir is None:
            x, y = _digits(n_train + n_eval, (seed, TRAIN, STAGE_DIGITS), MNIST_SIZE)
        else:
            x, y = _mnist(data_dir, n_train + n_eval, 1, fn, ("train_size + test_size", "training"))[:2]
        return x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    if data_dir is None:
        x_tr, y_tr = _digits(DEFAULT_SIZES[TRAIN] if sizes[TRAIN] is None else sizes[TRAIN],
                             (seed, TRAIN, STAGE_DIGITS), MNIST_SIZE)
        x_te, y_te = _digits(DEFAULT_SIZES[TEST] if sizes[TEST] is None else sizes[TEST],
                             (seed, TEST, STAGE_DIGITS), MNIST_SIZE)
        return x_tr, y_tr, x_te, y_te
    return _mnist(data_dir, sizes[TRAIN], sizes[TEST], fn)


def _mnist(data_dir, train_size, test_size, fn, train_name=("train_size", "training")):
    """The first ``train_size`` / ``test_size`` MNIST digits of ``data_dir`` (None: all)."""
    x_tr, y_tr, x_te, y_te = _load_mnist(data_dir, (train_size, test_size))
    if x_tr.shape[1:] != (MNIST_SIZE, MNIST_SIZE) or x_te.shape[1:] != (MNIST_SIZE, MNIST_SIZE):
        raise ValueError(f"{fn}(): expected 28x28 images in {os.fspath(data_dir)!r}, "
                         f"got {x_tr.shape[1:]} (train) and {x_te.shape[1:]} (test)")
    for (name, what), size, have in ((train_name, train_size, len(x_tr)),
                                     (("test_size", "test"), test_size, len(x_te))):
        if size is not None and size > have:   # then the whole split was kept
            raise ValueError(f"{fn}(): {name}={size} is more than the {have} {what} images "
                             f"in {os.fspath(data_dir)!r}")
    return x_tr, y_tr, x_te, y_te


def distort_epoch(images, distortion, seed=0, epoch=1, *, out=None):
    """The distorted training images of one epoch: epoch 1 those of :func:`load_dataset`,
    every later epoch a new draw of the distortions of the same digits.

    Parameters
    ----------
    images : ndarray, shape (n, 28, 28)
        Undistorted training digits (:func:`load_digits`).
    distortion : str
        One of ``DISTORTIONS``.
    seed : int
        The dataset's seed.
    epoch : int, default 1
        Epochs count from 1; each has its own seeded draw, so an epoch is the same
        whenever it is computed (a resumed run sees the images it would have seen).
    out : ndarray, shape (n, 1, S, S), float32, C-contiguous, optional
        Written with the epoch's images and returned, e.g. the previous epoch's array
        once it is no longer needed: a new array every epoch is paid for again in page
        faults on first touch (a third to a half of the time of drawing an epoch of
        60,000 images, measured).  Not ``images``.

    Returns
    -------
    ndarray, shape (n, 1, S, S), float32
        ``out`` when given.
    """
    fn = "distort_epoch"
    distortion = _checks.check_choice(distortion, "distortion", fn, DISTORTIONS)
    seed = _check_seed(seed, fn)
    epoch = _checks.check_int(epoch, "epoch", fn, minimum=1)
    entropy = (seed, TRAIN, STAGE_DISTORT) + ((epoch,) if epoch > 1 else ())
    if out is None:
        return _distort(images, distortion, entropy)[0][:, None]
    shape = (len(images), 1, _OUT_SIZES[distortion], _OUT_SIZES[distortion])
    if not isinstance(out, np.ndarray) or out.dtype != np.float32:
        got = f"{out.dtype} array" if isinstance(out, np.ndarray) else type(out).__name__
        raise TypeError(f"{fn}(): expected out to be a float32 array of shape {shape}, got {got}")
    if out.shape != shape or not out.flags.c_contiguous or not out.flags.writeable:
        got = (f"shape {out.shape}{'' if out.flags.c_contiguous else ', not C-contiguous'}"
               f"{'' if out.flags.writeable else ', read-only'}")
        raise ValueError(f"{fn}(): expected out to be a writeable C-contiguous array of shape "
                         f"{shape}, got {got}")
    if np.shares_memory(out, images):
        raise ValueError(f"{fn}(): out shares memory with images; give another array")
    _distort(images, distortion, entropy, out[:, 0])
    return out


def load_dataset(distortion="none", data_dir=None, train_size=None, test_size=None, seed=0,
                 validation=False):
    """Train and test sets for one distortion of paper §4.1, built-in digits or MNIST files.

    Parameters
    ----------
    distortion : str, default "none"
        One of ``DISTORTIONS`` (see :func:`distort`).
    data_dir : str or os.PathLike, optional
        Directory with the MNIST IDX files (:func:`load_mnist`).  When None,
        :func:`synthetic_digits` supplies 60,000 training and 10,000 test digits
        from seeds distinct per split.
    train_size, test_size : int, optional
        Keep only the first this many samples of each split (default: all).  With MNIST
        files, more than a file holds is a ``ValueError`` naming the count available, and
        only the kept images are allocated (every file is still checked whole); the
        built-in digits are generated, so any number can be asked for.
    seed : int, default 0
        Seeds digits and distortions, distinct per split.
    validation : bool, default False
        Return held-out training digits in place of the test set: the ``test_size``
        (default 10,000) training digits after the first ``train_size`` (default: the
        rest), distorted by a draw of their own (:func:`load_digits`).

    Returns
    -------
    x_train : ndarray, shape (n_train, 1, S, S), float32
    y_train : ndarray, shape (n_train,), int64
    x_test : ndarray, shape (n_test, 1, S, S), float32
    y_test : ndarray, shape (n_test,), int64
        ``S`` = 28, 42 (``rts``) or 60 (``tc``).
    """
    return _dataset(distortion, data_dir, train_size, test_size, seed, validation)[0]


def _dataset(distortion, data_dir, train_size, test_size, seed, validation):
    """:func:`load_dataset`'s ``(x_train, y_train, x_test, y_test)``, and the undistorted
    training digits they were drawn from (for :func:`distort_epoch`)."""
    fn = "load_dataset"
    distortion = _checks.check_choice(distortion, "distortion", fn, DISTORTIONS)
    seed = _check_seed(seed, fn)
    train_size = _split_size(train_size, "train_size", fn)
    test_size = _split_size(test_size, "test_size", fn)
    if data_dir is None:
        _check_digit_budget(distortion, train_size, test_size)
    x_tr, y_tr, x_te, y_te = _load_digits(data_dir, train_size, test_size, seed, validation, fn)
    for images in (x_tr, x_te):
        if distortion == "tc" and len(images) < 2:
            raise ValueError(f"{fn}(): 'tc' needs at least 2 samples per split, got {len(images)}")
    held_out = (seed, TRAIN, STAGE_HELD_OUT) if validation else (seed, TEST, STAGE_DISTORT)
    return (distort_epoch(x_tr, distortion, seed), y_tr,
            _distort(x_te, distortion, held_out)[0][:, None], y_te), x_tr
