"""Checkpoints: ``.npz`` files of named arrays plus JSON metadata, written atomically.

Format (docs/conventions.md §8.3): a zip archive whose members are ``<name>.npy``
arrays (names as in a PyTorch ``state_dict``: ``0.loc.1.weight``), readable by
``numpy.load``, plus the metadata as JSON in a 0-d unicode array under
:data:`METADATA_KEY`.  The members are written with a fixed timestamp, in sorted
order, uncompressed, and the JSON with sorted keys, so the same state always gives
a byte-identical file.

Writing goes to a temporary file in the destination directory, which is flushed and
``fsync``-ed, then renamed over the destination with ``os.replace`` (atomic on
POSIX and Windows), and the directory is ``fsync``-ed so the rename itself survives a
crash.  A crash at any point leaves either the old file or the new one, never a
half-written checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import zipfile

import numpy as np

from ._io import FILE_MODE, atomic_open
from .nn import Module

__all__ = ["METADATA_KEY", "load_checkpoint", "load_into", "save_checkpoint"]

METADATA_KEY = "__metadata__"
# Zip members carry a timestamp; a fixed one (the zip epoch) keeps files reproducible.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
# Array dtype kinds a checkpoint may hold: bool, signed, unsigned, float, complex, unicode.
ALLOWED_KINDS = "biufcU"
# Deflate cannot expand data by more than about 1032:1; a member declaring more is lying.
MAX_DEFLATE_RATIO = 1100


def _check_arrays(arrays, fn):
    if not isinstance(arrays, dict):
        raise TypeError(
            f"{fn}(): expected arrays to be a dict of name -> ndarray, got {type(arrays).__name__}"
        )
    out = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"{fn}(): expected array names to be non-empty str, got {name!r}")
        if name == METADATA_KEY:
            raise ValueError(f"{fn}(): the name {METADATA_KEY!r} is reserved for the metadata")
        if "/" in name or "\\" in name:
            raise ValueError(f"{fn}(): expected array names without path separators, got {name!r}")
        arr = np.asarray(value)
        if arr.dtype.kind not in ALLOWED_KINDS:
            raise TypeError(
                f"{fn}(): array {name!r} has dtype {arr.dtype}; checkpoints hold numeric and "
                f"unicode arrays only (no objects, so no pickles)"
            )
        out[name] = arr
    return out


def _metadata_json(metadata, fn):
    if not isinstance(metadata, dict):
        raise TypeError(f"{fn}(): expected metadata to be a dict, got {type(metadata).__name__}")
    try:
        return json.dumps(metadata, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{fn}(): metadata is not JSON-serialisable: {err}") from err


def _write_member(zf, name, arr):
    info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = FILE_MODE << 16
    with zf.open(info, "w", force_zip64=True) as member:
        np.lib.format.write_array(member, np.asarray(arr, order="C"), allow_pickle=False)


def save_checkpoint(path, arrays, metadata):
    """Write ``arrays`` and ``metadata`` to the ``.npz`` file ``path``, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination, used as given (no suffix is appended).  Its directory must exist.
    arrays : dict[str, ndarray]
        Name -> array (numeric or unicode dtypes; e.g. ``module.state_dict()``).
        The name ``"__metadata__"`` is reserved.
    metadata : dict
        JSON-serialisable (no NaN / inf); stored with sorted keys.

    Raises
    ------
    TypeError
        Non-dict arguments, non-str names, object arrays.
    ValueError
        Reserved or path-like names, metadata that is not JSON.

    Notes
    -----
    The same ``arrays`` and ``metadata`` always give a byte-identical file.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
    >>> save_checkpoint(path, {"w": np.eye(2)}, {"step": 3})
    >>> load_checkpoint(path)[1]
    {'step': 3}
    """
    fn = "save_checkpoint"
    arrays = _check_arrays(arrays, fn)
    text = _metadata_json(metadata, fn)
    with atomic_open(path) as f:
        with zipfile.ZipFile(f, "w") as zf:
            for name in sorted(arrays):
                _write_member(zf, name, arrays[name])
            _write_member(zf, METADATA_KEY, np.array(text))


def _check_members(path, fn, what="checkpoint"):
    """Check every member's ``.npy`` header against the bytes the member holds, before any
    array is allocated: a header claiming 10^12 elements in a small file is refused here,
    not discovered as a ``MemoryError`` (``docs/conventions.md`` §8.3).

    Returns ``{array name: (shape, dtype)}`` from the headers (the metadata member included).
    """
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{fn}(): cannot read {what} {path!r}: not an .npz archive (a zip "
                         f"of .npy arrays): a bare .npy, a truncated archive or another file")
    headers = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            where = f"{fn}(): {what} {path!r}, member {info.filename!r}"
            if not info.filename.endswith(".npy"):
                raise ValueError(f"{where}: not an .npy array")
            if info.compress_type != zipfile.ZIP_STORED and \
                    info.file_size > MAX_DEFLATE_RATIO * max(info.compress_size, 1):
                raise ValueError(f"{where}: declares {info.file_size} bytes from "
                                 f"{info.compress_size} compressed, more than deflate can give")
            with zf.open(info) as member:
                try:
                    version = np.lib.format.read_magic(member)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(member)
                except ValueError as err:
                    raise ValueError(f"{where}: bad .npy header: {err}") from err
                header_bytes = member.tell()
            if dtype.hasobject or dtype.kind not in ALLOWED_KINDS:
                raise ValueError(f"{where}: dtype {dtype} is not allowed (numeric and unicode "
                                 f"arrays only, never pickled objects)")
            data_bytes = math.prod(shape) * dtype.itemsize
            if data_bytes != info.file_size - header_bytes:
                raise ValueError(f"{where}: header claims shape {shape} of {dtype} "
                                 f"({data_bytes} bytes) but the member holds "
                                 f"{info.file_size - header_bytes} bytes")
            headers[info.filename[:-4]] = (tuple(shape), dtype)
    return headers


def _check_expected(path, headers, metadata, expect, fn):
    """Compare the headers with ``expect(metadata)`` (name -> shape) before reading arrays."""
    expected = expect(metadata)
    headers = {k: shape for k, (shape, _) in headers.items() if k != METADATA_KEY}
    missing = sorted(k for k in expected if k not in headers)
    unexpected = sorted(k for k in headers if k not in expected)
    wrong = [f"{k}: header claims shape {headers[k]}, expected {tuple(expected[k])}"
             for k in expected if k in headers and headers[k] != tuple(expected[k])]
    if missing or unexpected or wrong:
        raise ValueError(f"{fn}(): checkpoint {path!r} does not hold what its metadata describes: "
                         f"missing arrays {missing[:5]}, unexpected arrays {unexpected[:5]}, "
                         f"{'; '.join(wrong[:3]) or 'no shape mismatch'}")


def _read_metadata(zf, path, fn):
    """The metadata member alone (its header already checked), as a dict."""
    with zf.open(f"{METADATA_KEY}.npy") as member:
        text = np.lib.format.read_array(member, allow_pickle=False)
    return _parse_metadata(text, path, fn)


def _parse_metadata(text, path, fn):
    if text is None or text.shape != () or text.dtype.kind != "U":
        raise ValueError(
            f"{fn}(): checkpoint {path!r} has no metadata (a 0-d string array {METADATA_KEY!r})"
        )
    try:
        metadata = json.loads(str(text))
    except ValueError as err:
        raise ValueError(f"{fn}(): checkpoint {path!r} has invalid metadata JSON: {err}") from err
    if not isinstance(metadata, dict):
        raise ValueError(f"{fn}(): checkpoint {path!r} metadata is not a JSON object")
    return metadata


def load_checkpoint(path, expect=None):
    """Read a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path : str or os.PathLike
    expect : callable, optional
        ``expect(metadata) -> {name: shape}``: the arrays the metadata says the file
        holds (e.g. a model's ``state_dict`` shapes for the config it stores).  Compared
        with the members' headers before any array is read, so a member of the wrong
        shape -- however small its compressed size -- is refused without being
        allocated.  ``expect`` may raise ``ValueError`` itself (invalid metadata).

    Returns
    -------
    arrays : dict[str, ndarray]
        In the file's (sorted) order.
    metadata : dict

    Raises
    ------
    ValueError
        Naming the file: missing, not a zip of ``.npy`` arrays, truncated or corrupt
        (CRC mismatch), holding pickled objects (never unpickled: ``allow_pickle=False``),
        or without valid metadata.
    """
    fn = "load_checkpoint"
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{fn}(): checkpoint file {path!r} does not exist")
    try:
        headers = _check_members(path, fn)
        if expect is not None:
            if METADATA_KEY not in headers:
                raise ValueError(f"{fn}(): checkpoint {path!r} has no metadata (a 0-d string "
                                 f"array {METADATA_KEY!r})")
            with zipfile.ZipFile(path) as zf:
                _check_expected(path, headers, _read_metadata(zf, path, fn), expect, fn)
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{fn}(): cannot read checkpoint {path!r}: {err}") from err
    try:
        with open(path, "rb") as f:  # ours to close, also when numpy fails half-way
            with np.load(f, allow_pickle=False) as npz:
                # Reading every member here surfaces truncation, CRC errors and pickles now.
                arrays = {name: npz[name] for name in npz.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, KeyError) as err:
        raise ValueError(f"{fn}(): cannot read checkpoint {path!r}: {err}") from err
    return arrays, _parse_metadata(arrays.pop(METADATA_KEY, None), path, fn)


def load_into(module, arrays):
    """Load ``arrays`` into ``module``'s parameters (``module.load_state_dict``), strictly.

    Parameters
    ----------
    module : stnref.nn.Module
    arrays : dict[str, ndarray]
        Typically the first result of :func:`load_checkpoint`.

    Raises
    ------
    ValueError
        Listing every missing key, unexpected key and shape mismatch at once; the
        module is left unchanged.
    """
    fn = "load_into"
    if not isinstance(module, Module):
        raise TypeError(f"{fn}(): expected a stnref.nn.Module, got {type(module).__name__}")
    if not isinstance(arrays, dict):
        raise TypeError(f"{fn}(): expected arrays to be a dict, got {type(arrays).__name__}")
    params = module.state_dict()  # every name, a shared parameter under each of its names
    missing = sorted(k for k in params if k not in arrays)
    unexpected = sorted(k for k in arrays if k not in params)
    mis_shaped = [f"{k}: expected {params[k].shape}, got {np.shape(arrays[k])}"
                  for k in params if k in arrays and np.shape(arrays[k]) != params[k].shape]
    if missing or unexpected or mis_shaped:
        raise ValueError(
            f"{fn}(): arrays do not match {type(module).__name__}: missing keys {missing}, "
            f"unexpected keys {unexpected}, shape mismatches {mis_shaped}"
        )
    module.load_state_dict(arrays)
