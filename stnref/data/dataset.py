"""Train and test sets for one distortion: built-in digits or MNIST files, distorted."""

from __future__ import annotations

import os

from .. import _checks
from .digits import MNIST_SIZE, _check_seed, _digits
from .distortions import _OUT_SIZES, DISTORTIONS, _distort
from .idx import _load_mnist, _mnist_files, read_idx

__all__ = ["load_dataset", "split_sizes"]

# Seeds for load_dataset: (seed, split, stage).  Tags are nonzero because SeedSequence
# pads entropy with zeros, so (seed, 0) would equal (seed,).
TRAIN, TEST = 1, 2
STAGE_DIGITS, STAGE_DISTORT = 1, 2
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


def load_dataset(distortion="none", data_dir=None, train_size=None, test_size=None, seed=0):
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
        _check_digit_budget(distortion, sizes[TRAIN], sizes[TEST])
        splits = {split: _digits(DEFAULT_SIZES[split] if sizes[split] is None else sizes[split],
                                 (seed, split, STAGE_DIGITS), MNIST_SIZE)
                  for split in (TRAIN, TEST)}
    else:
        x_tr, y_tr, x_te, y_te = _load_mnist(data_dir, (sizes[TRAIN], sizes[TEST]))
        if x_tr.shape[1:] != (MNIST_SIZE, MNIST_SIZE) or x_te.shape[1:] != (MNIST_SIZE, MNIST_SIZE):
            raise ValueError(f"{fn}(): expected 28x28 images in {os.fspath(data_dir)!r}, "
                             f"got {x_tr.shape[1:]} (train) and {x_te.shape[1:]} (test)")
        for name, size, have, what in (("train_size", sizes[TRAIN], len(x_tr), "training"),
                                       ("test_size", sizes[TEST], len(x_te), "test")):
            if size is not None and size > have:   # then the whole split was kept
                raise ValueError(f"{fn}(): {name}={size} is more than the {have} {what} images "
                                 f"in {os.fspath(data_dir)!r}")
        splits = {TRAIN: (x_tr, y_tr), TEST: (x_te, y_te)}
    out = []
    for split in (TRAIN, TEST):
        images, labels = splits[split]
        if distortion == "tc" and len(images) < 2:
            raise ValueError(f"{fn}(): 'tc' needs at least 2 samples per split, got {len(images)}")
        warped, _ = _distort(images, distortion, (seed, split, STAGE_DISTORT))
        out += [warped[:, None], labels]
    return tuple(out)
