"""Atomic file output: a temporary file in the destination's directory, fsync, rename.

A crash at any moment leaves either the old file or the complete new one,
never a half-written file.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile

FILE_MODE = 0o644


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
    """Yield a binary file that replaces ``path`` only if the block completes."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as err:  # name the destination, not the temporary file nobody asked for
        raise type(err)(err.errno, f"cannot write {path!r}: {err.strerror}") from err
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_directory(directory)


def remove_stale(path):
    """Delete temporary files that a killed writer of ``path`` left behind; returns how many.

    Only files named like :func:`atomic_open`'s (``.NAME.*.tmp`` beside ``path``)
    are touched; call it when no other process is writing ``path``.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    pattern = os.path.join(glob.escape(directory), f".{glob.escape(os.path.basename(path))}.*.tmp")
    stale = glob.glob(pattern)
    for name in stale:
        os.remove(name)
    return len(stale)


def atomic_write_bytes(path, data):
    """Write ``data`` (bytes) to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(data)
