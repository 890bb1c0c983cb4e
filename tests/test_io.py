"""Atomic file output (``stnref._io``): the old file or the complete new one, never a mix.

IDX reading and its rejection of bad files are tested in tests/test_data.py.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import threading

import pytest

from stnref import _io

OLD = b"old contents\n" * 100
NEW = b"new contents!\n" * 300
READER_ROUNDS = 200


def _leftovers(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


def test_atomic_write_bytes(tmp_path):
    path = tmp_path / "f.bin"
    _io.atomic_write_bytes(path, NEW)
    assert path.read_bytes() == NEW
    assert stat.S_IMODE(os.stat(path).st_mode) == _io.FILE_MODE
    _io.atomic_write_bytes(str(path), OLD)  # str or PathLike, replacing an existing file
    assert path.read_bytes() == OLD
    assert _leftovers(tmp_path) == []


def test_atomic_open_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with _io.atomic_open("rel.bin") as f:
        f.write(NEW)
    assert (tmp_path / "rel.bin").read_bytes() == NEW


class Boom(Exception):
    pass


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt, SystemExit])
def test_exception_in_block_keeps_old_file(tmp_path, exc):
    path = tmp_path / "f.bin"
    path.write_bytes(OLD)
    with pytest.raises(exc):
        with _io.atomic_open(path) as f:
            f.write(NEW[: len(NEW) // 2])
            f.flush()
            assert _leftovers(tmp_path)  # the new data go to a temp file, not to path
            raise exc()
    assert path.read_bytes() == OLD
    assert _leftovers(tmp_path) == []


def test_exception_without_old_file_creates_nothing(tmp_path):
    with pytest.raises(Boom):
        with _io.atomic_open(tmp_path / "new.bin") as f:
            f.write(NEW)
            raise Boom()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("failing", ["fsync", "replace", "chmod"])
def test_os_failure_keeps_old_file(tmp_path, monkeypatch, failing):
    path = tmp_path / "f.bin"
    path.write_bytes(OLD)

    def fail(*args, **kwargs):
        raise OSError(f"injected {failing} failure")

    monkeypatch.setattr(_io.os, failing, fail)
    with pytest.raises(OSError, match="injected"):
        _io.atomic_write_bytes(path, NEW)
    monkeypatch.undo()
    assert path.read_bytes() == OLD
    assert _leftovers(tmp_path) == []


def test_write_error_keeps_old_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(OLD)
    with pytest.raises(TypeError):
        _io.atomic_write_bytes(path, "text, not bytes")
    assert path.read_bytes() == OLD
    assert _leftovers(tmp_path) == []


def test_missing_directory(tmp_path):
    path = tmp_path / "no" / "such" / "f.bin"
    with pytest.raises(FileNotFoundError) as info:
        _io.atomic_write_bytes(path, NEW)
    assert str(path) in str(info.value) and ".tmp" not in str(info.value)  # names the destination
    assert info.value.errno == errno.ENOENT
    assert os.listdir(tmp_path) == []


def test_destination_is_a_directory(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep").write_bytes(OLD)
    with pytest.raises(OSError):
        _io.atomic_write_bytes(tmp_path / "d", NEW)
    assert (tmp_path / "d" / "keep").read_bytes() == OLD
    assert _leftovers(tmp_path) == []


def test_fsync_directory_tolerates_missing_directory(tmp_path):
    _io.fsync_directory(tmp_path)
    _io.fsync_directory(tmp_path / "missing")  # no error: best effort


def test_readers_never_see_a_partial_file(tmp_path):
    """A reader polling the file while it is rewritten sees only complete versions."""
    path = tmp_path / "f.bin"
    path.write_bytes(OLD)
    seen, stop = set(), threading.Event()

    def reader():
        while not stop.is_set():
            seen.add(path.read_bytes())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(READER_ROUNDS):
            _io.atomic_write_bytes(path, NEW if i % 2 else OLD)
    finally:
        stop.set()
        thread.join()
    assert seen <= {OLD, NEW}
    assert _leftovers(tmp_path) == []


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_sigkill_inside_block_keeps_old_file(tmp_path):
    """A process killed mid-write leaves the old file; only a stale temp file remains."""
    path = tmp_path / "f.bin"
    path.write_bytes(OLD)
    script = (
        "import os, signal, sys\n"
        "from stnref import _io\n"
        "with _io.atomic_open(sys.argv[1]) as f:\n"
        f"    f.write({NEW!r}[:100])\n"
        "    f.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert path.read_bytes() == OLD
    stale = _leftovers(tmp_path)
    assert len(stale) == 1 and stale[0].startswith(".f.bin.")
    assert (tmp_path / stale[0]).read_bytes() == NEW[:100]


def test_remove_stale_deletes_only_leftovers_of_that_file(tmp_path):
    from stnref._io import remove_stale

    target = tmp_path / "checkpoint.npz"
    (tmp_path / ".checkpoint.npz.abc123.tmp").write_bytes(b"half")
    (tmp_path / ".other.npz.abc123.tmp").write_bytes(b"keep")
    (tmp_path / "checkpoint.npz").write_bytes(b"real")
    assert remove_stale(target) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.npz.abc123.tmp", "checkpoint.npz"]
    assert remove_stale(target) == 0
