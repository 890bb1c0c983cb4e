"""Atomic file output (``stnref._io``): the old file or the complete new one, never a mix;
a symlink is written through, a FIFO, device, directory or socket never replaced.  Bounded
input: only a regular file of bounded size is read.

IDX reading and its rejection of bad files are tested in tests/test_data.py.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
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
    with pytest.raises(ValueError, match=r"atomic_open\(\): destination '.*/d': .*, got a directory$"):
        _io.atomic_write_bytes(tmp_path / "d", NEW)
    assert (tmp_path / "d" / "keep").read_bytes() == OLD
    assert _leftovers(tmp_path) == []


def test_a_symlink_is_written_through(tmp_path):
    """The link's target is replaced atomically (its temp file beside the target); the link stays."""
    (tmp_path / "pages").mkdir()
    target = tmp_path / "pages" / "page.md"
    target.write_bytes(OLD)
    link = tmp_path / "link.md"
    link.symlink_to(target)
    _io.atomic_write_bytes(link, NEW)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == NEW
    dangling = tmp_path / "dangling.md"
    dangling.symlink_to(tmp_path / "pages" / "new.md")
    _io.atomic_write_bytes(dangling, OLD)                       # creates the link's target
    assert dangling.is_symlink() and (tmp_path / "pages" / "new.md").read_bytes() == OLD
    assert _leftovers(tmp_path) == _leftovers(tmp_path / "pages") == []


def test_remove_stale_looks_beside_a_symlinks_target(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / ".c.npz.abc123.tmp").write_bytes(b"half")
    (tmp_path / "link.npz").symlink_to(tmp_path / "real" / "c.npz")
    assert _io.remove_stale(tmp_path / "link.npz") == 1
    assert os.listdir(tmp_path / "real") == []


def _fifo(path):
    os.mkfifo(path)


def _socket(path):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))


def _device(path):  # a character device like /dev/null, made here: never the real one
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except (PermissionError, AttributeError):
        pytest.skip("creating a device node needs root (and POSIX)")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX special files")
@pytest.mark.parametrize("make, kind", [(_fifo, "a FIFO"), (_socket, "a socket"),
                                        (_device, "a character device")])
@pytest.mark.parametrize("via_link", [False, True], ids=["direct", "symlink"])
def test_a_special_file_is_never_replaced(tmp_path, make, kind, via_link):
    """Replacing a FIFO or a device (``--json /dev/full`` as root) by a regular file is refused,
    naming the path and what it is, before anything is written."""
    special = tmp_path / "special"
    make(special)
    mode = os.lstat(special).st_mode
    path = tmp_path / "link" if via_link else special
    if via_link:
        path.symlink_to(special)
    with pytest.raises(ValueError, match=rf"atomic_open\(\): destination '{re.escape(str(path))}'.*: expected a "
                                         rf"regular file or a new file name, got {kind}$"):
        _io.atomic_write_bytes(path, NEW)
    assert os.lstat(special).st_mode == mode and path.is_symlink() == via_link
    assert _leftovers(tmp_path) == []


def test_read_regular_file(tmp_path):
    path = tmp_path / "f.json"
    path.write_bytes(NEW)
    assert _io.read_regular_file(path, len(NEW), "f", "thing") == NEW
    with pytest.raises(ValueError, match=rf"f\(\): thing '{re.escape(str(path))}': expected at most {len(NEW) - 1} "
                                         rf"bytes, got {len(NEW)} bytes"):
        _io.read_regular_file(path, len(NEW) - 1, "f", "thing")
    with pytest.raises(FileNotFoundError):
        _io.read_regular_file(tmp_path / "missing", 10, "f", "thing")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX special files")
def test_read_regular_file_refuses_fifos_and_devices_without_reading(tmp_path):
    """A FIFO is never opened (that would block); /dev/zero is never read (that never ends)."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "zero").symlink_to("/dev/zero")
    for name, kind in (("fifo", "a FIFO"), ("zero", "a character device")):
        with pytest.raises(ValueError, match=rf"f\(\): thing '.*{name}': expected a regular file, "
                                             rf"got {kind}$"):
            _io.read_regular_file(tmp_path / name, 10, "f", "thing")


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
