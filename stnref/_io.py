"""Atomic file output and bounded file input.

Output: a temporary file in the destination's directory, fsync, rename.  A
crash at any moment leaves either the old file or the complete new one, never
a half-written file.  A symlink is written through (its target is replaced, the
link stays); a FIFO, device, directory or socket is never replaced.

Input: :func:`open_regular_file` opens only a regular file, so a symlink to
``/dev/zero`` or a FIFO is refused instead of read forever (or waited on), and
:func:`read_regular_file` reads at most a given number of bytes of one.
"""

from __future__ import annotations

import contextlib
import glob
import os
import stat
import tempfile

FILE_MODE = 0o644
READ_CHUNK = 1 << 20   # bytes per read of a file whose size is not known in advance
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _kind(mode):
    """What a file of ``st_mode`` ``mode`` is, for a message: "a FIFO", "a directory", ..."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _destination(path):
    """The file that writing ``path`` replaces: ``path`` with symlinks resolved.

    Raises
    ------
    ValueError
        The destination exists and is not a regular file (a FIFO, a device, a
        directory, a socket): replacing it by a regular file would destroy it.
    """
    target = os.path.realpath(path)
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target
    if not stat.S_ISREG(mode):
        shown = repr(path) if target == os.path.abspath(path) else f"{path!r} (-> {target!r})"
        raise ValueError(f"atomic_open(): destination {shown}: expected a regular file or a new "
                         f"file name, got {_kind(mode)}")
    return target


def fsync_directory(directory):
    """Make a rename in ``directory`` durable (POSIX; Windows cannot open directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path):
    """Yield a binary file that replaces ``path`` only if the block completes.

    A symlink ``path`` is written through: its target is replaced atomically and
    the link stays.  A destination that exists and is not a regular file is a
    ``ValueError`` (see :func:`_destination`), raised before anything is written.
    """
    path = os.fspath(path)
    target = _destination(path)
    directory = os.path.dirname(target)
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(target)}.", suffix=".tmp")
    except OSError as err:  # name the destination, not the temporary file nobody asked for
        raise type(err)(err.errno, f"cannot write {path!r}: {err.strerror}") from err
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_directory(directory)


def remove_stale(path):
    """Delete temporary files that a killed writer of ``path`` left behind; returns how many.

    Only files named like :func:`atomic_open`'s (``.NAME.*.tmp`` beside ``path``,
    or beside its target if ``path`` is a symlink) are touched; call it when no
    other process is writing ``path``.
    """
    target = os.path.realpath(path)
    directory = os.path.dirname(target)
    pattern = os.path.join(glob.escape(directory), f".{glob.escape(os.path.basename(target))}.*.tmp")
    stale = glob.glob(pattern)
    for name in stale:
        os.remove(name)
    return len(stale)


def atomic_write_bytes(path, data):
    """Write ``data`` (bytes) to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(data)


def open_regular_file(path, fn, what):
    """``path`` opened for binary reading, if it is a regular file (a symlink is followed).

    The file is checked with ``os.stat`` before it is opened, so a FIFO is never opened
    (which would block until a writer comes) and a device such as ``/dev/zero`` is never
    read; the open file is checked again (``os.fstat``), so a file swapped for a FIFO in
    between is refused too, without blocking (it is opened non-blocking).

    Parameters
    ----------
    path : str or os.PathLike
    fn : str
        The public function reading the file, named in the error.
    what : str
        What the file is, named in the error (e.g. ``"checkpoint"``).

    Returns
    -------
    io.BufferedReader

    Raises
    ------
    ValueError
        ``path`` is not a regular file.
    OSError
        ``path`` cannot be opened (``FileNotFoundError`` if it does not exist).
    """
    path = os.fspath(path)
    _check_regular(os.stat(path).st_mode, path, fn, what)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        _check_regular(os.fstat(fd).st_mode, path, fn, what)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_regular(mode, path, fn, what):
    if not stat.S_ISREG(mode):
        raise ValueError(f"{fn}(): {what} {path!r}: expected a regular file, got {_kind(mode)}")


def read_regular_file(path, limit, fn, what):
    """The bytes of ``path``, which must be a regular file of at most ``limit`` bytes.

    The file is opened with :func:`open_regular_file`, so a FIFO or a device is
    refused without being read, and no more than ``limit`` bytes are read: a file
    that grows meanwhile past ``limit`` is refused too.

    Parameters
    ----------
    path : str or os.PathLike
    limit : int
        The largest size accepted, in bytes.
    fn : str
        The public function reading the file, named in the error.
    what : str
        What the file is, named in the error (e.g. ``"golden manifest"``).

    Returns
    -------
    bytes

    Raises
    ------
    ValueError
        ``path`` is not a regular file or is larger than ``limit`` bytes.
    OSError
        ``path`` cannot be read (``FileNotFoundError`` if it does not exist).
    """
    path = os.fspath(path)
    with open_regular_file(path, fn, what) as f:
        data = read_at_most(f, limit + 1)      # one byte past the limit tells a larger file
        if len(data) > limit:
            size = max(os.fstat(f.fileno()).st_size, len(data))
            raise ValueError(f"{fn}(): {what} {path!r}: expected at most {limit} bytes, got "
                             f"{size} bytes")
    return bytes(data)


def read_at_most(f, count):
    """Up to ``count`` bytes of the binary file ``f``, as a ``bytearray``.

    Read in chunks of :data:`READ_CHUNK`, so the memory used follows the bytes really
    read: asking for the size a header claims costs nothing when the data is not there.
    """
    data = bytearray()
    while len(data) < count:
        piece = f.read(min(READ_CHUNK, count - len(data)))
        if not piece:
            break
        data += piece
    return data
