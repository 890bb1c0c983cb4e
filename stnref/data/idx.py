"""IDX files, the format MNIST and its drop-in relatives are distributed in (docs/conventions.md §9).

:func:`read_idx` checks the header against the payload size before allocating
anything; :func:`write_idx` writes atomically; :func:`load_mnist` reads the four
files of a data set, plain or gzip-compressed.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import zlib

import numpy as np

from .. import _checks
from .._text import shown
from .._io import atomic_open, open_regular_file
from .digits import NUM_CLASSES

__all__ = ["load_mnist", "read_idx", "write_idx"]

# IDX format: docs/conventions.md §9.
IDX_UINT8 = 0x08
IDX_NDIMS = (1, 3)            # labels, images
IDX_READ_CHUNK = 1 << 20      # bytes per read of the payload
# What reading a file can raise besides our own ValueErrors: gzip's BadGzipFile (an OSError)
# and EOFError, zlib.error, OSError, and MemoryError for the records kept.
IDX_READ_ERRORS = (OSError, EOFError, zlib.error, MemoryError)
IDX_DTYPE_NAMES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32",
                   0x0D: "float32", 0x0E: "float64"}
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}
PIXEL_MAX = 255.0


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


def _read_payload(f, count, keep, path):
    """Read the ``count`` data bytes in bounded chunks (never trusting ``count`` to allocate),
    keeping the first ``keep``: the rest is read and dropped, so a ``.gz`` stream's length
    and CRC are checked all the same, and so is what follows the data."""
    buf = bytearray()
    seen = 0
    while seen < count:
        piece = f.read(min(IDX_READ_CHUNK, count - seen))
        if not piece:
            raise _idx_error(path, f"truncated: header claims {count} data bytes, found {seen}")
        buf += piece[:keep - len(buf)]
        seen += len(piece)
    extra = len(f.read(IDX_READ_CHUNK))
    if extra:
        raise _idx_error(path, f"oversized: {'at least ' if extra == IDX_READ_CHUNK else ''}{extra} "
                               f"bytes after the {count} data bytes the header claims")
    return np.frombuffer(buf, dtype=np.uint8)


def read_idx(path):
    """Read an IDX file (plain, or gzip if the name ends in ``.gz``), docs/conventions.md §9.1.

    Only uint8 images (magic ``0x00000803``, 3-D) and labels (``0x00000801``, 1-D)
    are accepted; dimensions are big-endian int32 and must be positive, and the
    payload must be exactly their product in bytes.  A plain file's size is
    checked before anything is allocated; so is the element budget
    (:func:`stnref.set_max_elements`), which a ``.gz`` file's header must meet
    before anything is decompressed.  A ``.gz`` stream is then read in bounded
    chunks, so a header claiming more than the stream holds fails at its end.

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
        non-positive dimensions, more elements than the budget, truncated or
        oversized payload, bad gzip data.
    """
    return _read_idx(path)[1]


def _read_idx(path, limit=None):
    """:func:`read_idx`, keeping only the first ``limit`` records (all if None).

    The whole file is checked as by :func:`read_idx`, but only the kept records are
    allocated.  Returns ``(shape, data)``: the file's shape and the kept records, of
    shape ``(min(n, limit), ...)``.
    """
    path = os.fspath(path)
    with _idx_stream(path) as f:
        shape = _read_header(f, path)
        count = math.prod(shape)
        if not path.endswith(".gz"):    # a plain file's size is known: checked before reading
            actual = os.fstat(f.fileno()).st_size - (4 + 4 * len(shape))
            if actual < count:
                raise _idx_error(path, f"truncated: header claims {count} data bytes, file has "
                                       f"{actual}")
            if actual > count:
                raise _idx_error(path, f"oversized: {actual - count} bytes after the {count} data "
                                       f"bytes the header claims")
        _check_idx_budget(shape, path)
        keep = _kept(shape, limit)
        data = _read_payload(f, count, math.prod(keep), path)
    return shape, data.reshape(keep)


@contextlib.contextmanager
def _idx_stream(path):
    """The bytes of the IDX file ``path``, decompressed if its name ends in ``.gz``.

    ``path`` must be a regular file (:func:`stnref._io.open_regular_file`; a missing one
    is a ``FileNotFoundError``).  Whatever reading it raises -- gzip's ``BadGzipFile``
    and ``EOFError``, ``zlib.error``, ``OSError``, ``MemoryError`` -- is a ValueError
    naming the file.
    """
    with open_regular_file(path, "read_idx", "IDX file") as raw:
        try:
            if path.endswith(".gz"):
                with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                    yield f
            else:
                yield raw
        except IDX_READ_ERRORS as err:
            what = "bad gzip data" if path.endswith(".gz") else "unreadable"
            raise _idx_error(path, f"{what} ({shown(f'{type(err).__name__}: {err}')})") from err


def _check_idx_budget(shape, path):
    """Refuse a file of more elements than the budget, as any other stnref output."""
    _checks.check_budget(shape, "read_idx", f"IDX file {path!r}")


def _kept(shape, limit):
    """The shape of the first ``limit`` records of an array of ``shape`` (all if None)."""
    return shape if limit is None else (min(shape[0], limit), *shape[1:])


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


def _shape_of(path):
    """The shape an IDX file's header claims (a ``.gz`` one decompressed that far only)."""
    with _idx_stream(path) as f:
        return _read_header(f, path)


def _find_mnist_file(directory, stem, fn):
    """The path of ``stem`` or ``stem.gz`` in ``directory`` (None if neither).  Both may be
    there (torchvision keeps the download beside what it extracted): the plain file is read
    if their headers agree, and a ValueError names both if they do not."""
    found = [path for path in (os.path.join(directory, stem), os.path.join(directory, stem + ".gz"))
             if os.path.isfile(path)]
    if len(found) == 2 and _shape_of(found[0]) != _shape_of(found[1]):
        raise ValueError(f"{fn}(): {found[0]!r} (shape {_shape_of(found[0])}) and {found[1]!r} "
                         f"(shape {_shape_of(found[1])}) disagree; remove the one not meant")
    return found[0] if found else None


def _mnist_files(directory, fn):
    """``{key: path}`` of the four MNIST files in ``directory``; FileNotFoundError listing
    every missing one, ValueError if one is there plain and ``.gz`` with different headers."""
    found = {key: _find_mnist_file(directory, stem, fn) for key, stem in MNIST_FILES.items()}
    missing = [MNIST_FILES[k] + "[.gz]" for k, v in found.items() if v is None]
    if missing:
        raise FileNotFoundError(f"{fn}(): missing in {directory!r}: {', '.join(missing)}")
    return found


def load_mnist(directory):
    """Load the four MNIST IDX files (plain or ``.gz``) from ``directory``.

    Parameters
    ----------
    directory : str or os.PathLike
        Holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each plain or with
        ``.gz``; with both, the plain one is read if their headers agree (an error
        otherwise).

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
        A bad IDX file (:func:`read_idx`), a file both plain and ``.gz`` with
        different headers,
        images/labels count mismatch, labels outside 0-9, image files of the wrong
        rank.
    """
    return _load_mnist(directory)


def _load_mnist(directory, sizes=(None, None)):
    """:func:`load_mnist`, keeping only the first ``sizes`` (train, test) samples (all if None).

    Every file is checked whole, but only the kept images are allocated and converted.
    """
    fn = "load_mnist"
    directory = os.fspath(directory)
    found = _mnist_files(directory, fn)
    out = []
    for split, size in zip(("train", "test"), sizes):
        img_path, lab_path = found[f"{split}_images"], found[f"{split}_labels"]
        (img_shape, images), (lab_shape, labels) = _read_idx(img_path, size), _read_idx(lab_path)
        if len(img_shape) != 3 or len(lab_shape) != 1:
            raise ValueError(f"{fn}(): expected 3-D images in {img_path!r} and 1-D labels in "
                             f"{lab_path!r}, got shapes {img_shape} and {lab_shape}")
        if img_shape[0] != lab_shape[0]:
            raise ValueError(f"{fn}(): {img_path!r} has {img_shape[0]} images but {lab_path!r} "
                             f"has {lab_shape[0]} labels")
        if labels.max() >= NUM_CLASSES:
            raise ValueError(f"{fn}(): labels in {lab_path!r} must be 0-9, got {int(labels.max())}")
        pixels = images.astype(np.float32)
        pixels /= np.float32(PIXEL_MAX)
        out += [pixels, labels[:len(images)].astype(np.int64)]
    return tuple(out)
