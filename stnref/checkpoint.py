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

import contextlib
import json
import math
import os
import tokenize
import warnings
import zipfile
import zlib

import numpy as np

from ._text import shown
from ._io import FILE_MODE, atomic_open, open_regular_file, read_at_most
from .nn import Module

__all__ = ["METADATA_KEY", "load_checkpoint", "load_into", "save_checkpoint"]

METADATA_KEY = "__metadata__"
# Zip members carry a timestamp; a fixed one (the zip epoch) keeps files reproducible.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
# Array dtype kinds a checkpoint may hold: bool, signed, unsigned, float, complex, unicode.
ALLOWED_KINDS = "biufcU"
# Deflate cannot expand data by more than about 1032:1; a member declaring more is lying.
MAX_DEFLATE_RATIO = 1100
# Compression method -> the most bytes one compressed byte can give: the members read.
EXPANSION = {zipfile.ZIP_STORED: 1, zipfile.ZIP_DEFLATED: MAX_DEFLATE_RATIO}
ENCRYPTED = 0x1           # zip general-purpose flag bit of an encrypted member
NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                      (2, 0): np.lib.format.read_array_header_2_0}
# What reading a zip of .npy members can raise: zipfile's documented errors (BadZipFile,
# LargeZipFile, RuntimeError for encryption, NotImplementedError for a compression method,
# zlib.error, EOFError, OSError), numpy's header parsing (ValueError; SyntaxError and
# tokenize.TokenError from its Python 2 fallback), and what parsing hostile bytes can raise
# anywhere: RecursionError (a RuntimeError), OverflowError, MemoryError.
READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, zlib.error, EOFError,
               OSError, ValueError, SyntaxError, tokenize.TokenError, OverflowError, MemoryError)
JSON_ERRORS = (ValueError, RecursionError, MemoryError)   # JSONDecodeError is a ValueError


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
        if arr.dtype.kind == "U" and _invalid_code_points(arr):
            raise ValueError(f"{fn}(): array {name!r} holds lone surrogates, which are not "
                             f"unicode text (a checkpoint would not read it back)")
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


def _member_limit(info, file_size):
    """The most bytes the member ``info`` can give: the compressed bytes really in the file
    from the member's offset (not the size its directory entry claims), times the largest
    expansion of its compression method."""
    present = min(info.compress_size, file_size - info.header_offset)
    return present * EXPANSION[info.compress_type]


class _Npz:
    """An ``.npz`` file opened for reading, every size taken from bytes really there.

    Opening checks every member before any array is allocated: its entry (an ``.npy``
    name without a path, not repeated; stored or deflated; not encrypted), its ``.npy``
    header (format version, a dtype of :data:`ALLOWED_KINDS`, no negative dimension), the
    bytes the header claims against :func:`_member_limit`, and the claims of all members
    together against the file's size (compressed bytes shared by two members count
    twice).  :meth:`read` then streams a member up to one byte past what its header
    claims: a member holding fewer or more bytes, or other than its directory entry says,
    is refused.  Whatever the zip, zlib and numpy header readers raise becomes one
    ``ValueError`` naming the file and the member.
    """

    def __init__(self, path, fn, what):
        self.path, self.fn, self.what = os.fspath(path), fn, what
        self.headers = {}      # array name -> (shape, dtype, fortran_order, header bytes)
        self.infos = {}        # array name -> its zipfile.ZipInfo
        try:    # a FIFO or a device is a ValueError of its own; a missing file an OSError
            self.file = open_regular_file(self.path, fn, what)
        except OSError as err:
            raise ValueError(f"{fn}(): cannot read {what} {shown(repr(self.path))}: "
                             f"{shown(err)}") from err
        try:
            with self.reading(None):
                size = os.fstat(self.file.fileno()).st_size
                try:
                    self.zip = zipfile.ZipFile(self.file)
                except zipfile.BadZipFile as err:
                    raise _Refused(f"not an .npz archive (a zip of .npy arrays): a bare .npy, "
                                   f"a truncated archive or another file ({err})") from err
            used = 0      # the fewest compressed bytes the members' claims need, together
            for info in self.zip.infolist():
                with self.reading(info.filename):
                    claimed = self._check_member(info, size)
                    used += -(-claimed // EXPANSION[info.compress_type])
                    if used > size:
                        raise _Refused(f"the members claim more bytes than the {size} bytes of "
                                       f"the file can give")
        except BaseException:
            self.file.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()      # the ZipFile was given an open file: closing it is ours

    @contextlib.contextmanager
    def reading(self, member):
        """Whatever reading ``member`` (None: the archive) raises, as one ValueError."""
        try:
            yield
        except READ_ERRORS as err:
            where = f", member {shown(repr(member))}" if member is not None else ""
            reason = err if isinstance(err, _Refused) else f"{type(err).__name__}: {err}"
            raise ValueError(f"{self.fn}(): cannot read {self.what} {shown(repr(self.path))}"
                             f"{where}: {shown(reason)}") from err

    def _check_member(self, info, file_size):
        """Check one member's entry and header; returns the bytes the header claims."""
        name = info.filename[:-4]
        if not info.filename.endswith(".npy") or not name:
            raise _Refused("not an .npy array")
        if "/" in name or "\\" in name:
            raise _Refused("a name with a path separator; array names have none")
        if name in self.headers:
            raise _Refused("a second member of this name")
        if info.flag_bits & ENCRYPTED:
            raise _Refused("encrypted; checkpoints never are")
        if info.compress_type not in EXPANSION:
            raise _Refused(f"compression method {info.compress_type}; only stored (0) and "
                           f"deflated (8) members are read")
        with self.zip.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version not in NPY_HEADER_READERS:
                raise _Refused(f".npy format version {version}; expected one of "
                               f"{sorted(NPY_HEADER_READERS)}")
            with warnings.catch_warnings():    # a Python 2 header is read as numpy.load reads it
                warnings.simplefilter("ignore", UserWarning)
                shape, fortran_order, dtype = NPY_HEADER_READERS[version](member)
            header_bytes = member.tell()
        if dtype.hasobject or dtype.kind not in ALLOWED_KINDS or dtype.itemsize == 0:
            raise _Refused(f"dtype {dtype} is not allowed (numeric and unicode arrays only, "
                           f"never pickled objects)")
        if any(n < 0 for n in shape):
            raise _Refused(f"header claims shape {shape}, with a negative dimension")
        claimed = header_bytes + math.prod(shape) * dtype.itemsize
        limit = _member_limit(info, file_size)
        if claimed > limit:
            raise _Refused(f"header claims shape {shape} of {dtype} ({claimed} bytes with the "
                           f"header) but the member can give at most {limit} bytes from its "
                           f"compressed bytes in the file")
        self.headers[name] = (shape, dtype, fortran_order, header_bytes)
        self.infos[name] = info
        return claimed

    def read(self, name):
        """The array ``name``, streamed: exactly the bytes its header claims, or ValueError."""
        shape, dtype, fortran_order, header_bytes = self.headers[name]
        info = self.infos[name]
        count = math.prod(shape) * dtype.itemsize
        with self.reading(info.filename):
            with self.zip.open(info) as member:
                member.read(header_bytes)
                data = read_at_most(member, count + 1)     # one byte past the claim, never more
            if len(data) != count:
                raise _Refused(f"header claims shape {shape} of {dtype} ({count} data bytes) but "
                               f"the member holds {'more' if len(data) > count else len(data)}")
            if info.file_size != header_bytes + count:
                raise _Refused(f"its directory entry says {info.file_size} bytes but it holds "
                               f"{header_bytes + count}")
            array = np.frombuffer(data, dtype=dtype)
            if dtype.kind == "U" and _invalid_code_points(array):
                raise _Refused(f"holds {_invalid_code_points(array)} invalid unicode code points")
        return array.reshape(shape[::-1]).T if fortran_order else array.reshape(shape)


class _Refused(ValueError):
    """A problem found by the reader itself (its message is the reason, without a type name)."""


def _invalid_code_points(array):
    """How many code points of the unicode ``array`` are no Unicode scalar values (beyond
    U+10FFFF, or surrogates); numpy's ``str()`` of the former raises SystemError."""
    flat = np.ascontiguousarray(array).reshape(-1)
    units = flat.view(flat.dtype.byteorder.replace("|", "=") + "u4")
    return int(((units > 0x10FFFF) | ((units >= 0xD800) & (units <= 0xDFFF))).sum())


def _check_members(path, fn, what="checkpoint"):
    """Check every member's entry and ``.npy`` header against the bytes really in the file,
    before any array is allocated (see :class:`_Npz`); a header claiming 10^12 elements in a
    small file is refused here, not discovered as a ``MemoryError`` (conventions §8.3).

    Returns ``{array name: (shape, dtype)}`` from the headers (the metadata member included).
    """
    with _Npz(path, fn, what) as npz:
        return {name: (shape, dtype) for name, (shape, dtype, _, _) in npz.headers.items()}


def _check_expected(path, headers, metadata, expect, fn):
    """Compare the headers with ``expect(metadata)`` (name -> shape) before reading arrays."""
    expected = expect(metadata)
    headers = {k: shape for k, (shape, *_) in headers.items() if k != METADATA_KEY}
    missing = sorted(k for k in expected if k not in headers)
    unexpected = sorted(k for k in headers if k not in expected)
    wrong = [f"{k}: header claims shape {headers[k]}, expected {tuple(expected[k])}"
             for k in expected if k in headers and headers[k] != tuple(expected[k])]
    if missing or unexpected or wrong:
        raise ValueError(f"{fn}(): checkpoint {path!r} does not hold what its metadata describes: "
                         f"missing arrays {missing[:5]}, unexpected arrays {unexpected[:5]}, "
                         f"{'; '.join(wrong[:3]) or 'no shape mismatch'}")


def _refuse_constant(name):
    raise ValueError(f"{name} is not a JSON number (metadata holds finite numbers only)")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is beyond the range of a float (metadata holds finite numbers only)")
    return value


def _read_metadata(npz, fn):
    """The metadata member of ``npz``, parsed: a JSON object of finite numbers."""
    path = npz.path
    shape, dtype, _, _ = npz.headers.get(METADATA_KEY, (None, None, None, None))
    if shape != () or dtype.kind != "U":
        raise ValueError(
            f"{fn}(): checkpoint {path!r} has no metadata (a 0-d string array {METADATA_KEY!r})"
        )
    text = npz.read(METADATA_KEY)
    with npz.reading(f"{METADATA_KEY}.npy"):
        try:
            metadata = json.loads(str(text), parse_constant=_refuse_constant,
                                  parse_float=_finite_float)
        except JSON_ERRORS as err:
            raise _Refused(f"invalid metadata JSON: {shown(type(err).__name__ + ': ' + str(err))}") \
                from err
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
        Naming the file (and the member): missing or not a regular file, not a zip of
        ``.npy`` arrays, truncated or corrupt (CRC mismatch, a damaged deflate stream),
        encrypted or of another compression method, holding pickles (never unpickled:
        ``allow_pickle=False``), a member holding more or fewer bytes than its header
        claims, or without valid metadata (a JSON object of finite numbers).
    """
    fn = "load_checkpoint"
    path = os.fspath(path)
    if not os.path.lexists(path):
        raise ValueError(f"{fn}(): checkpoint file {path!r} does not exist")
    with _Npz(path, fn, "checkpoint") as npz:
        metadata = _read_metadata(npz, fn)
        if expect is not None:
            _check_expected(path, npz.headers, metadata, expect, fn)
        arrays = {name: npz.read(name) for name in npz.headers if name != METADATA_KEY}
    return arrays, metadata


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
