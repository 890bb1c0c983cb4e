"""Hostile files: what every reader does with archives, headers and numbers built to break it.

Each reader catches every exception its format library raises (zipfile, zlib, numpy's
``.npy`` header parser, json, gzip) and reports one ``ValueError`` naming the file and,
in an archive, the member; sizes are bounded by the bytes really in the file, never by
what a header or a directory entry claims, even when both agree; every limit is pinned
at its boundary, both ways.  The archives are built byte by byte (:func:`raw_zip`), as
an attacker would, so each lie is told exactly where intended.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import stat
import struct
import tracemalloc
import warnings
import zipfile
import zlib

import numpy as np
import pytest

import stnref
from stnref import _io, checkpoint
from stnref.checkpoint import METADATA_KEY, load_checkpoint, save_checkpoint
from stnref.data import idx
from stnref.data.idx import read_idx, write_idx

ZIP64 = 0xFFFFFFFF          # a 32-bit size field that says "see the zip64 extra field"
DEFLATE_RATIO = 1100        # conventions §8.3: a deflated member gives at most 1100 bytes per byte
PEAK_BYTES = 32 << 20       # memory a refused file may cost, far below what it claims
DEFLATE = zipfile.ZIP_DEFLATED


# --------------------------------------------------------------------------- building files


def npy(shape, descr="<f8", data=b"", version=(1, 0), header=None):
    """An ``.npy`` member: magic, version, header (given text, or the dict numpy writes), data."""
    if header is None:
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                                   "shape": shape})
        raw = buf.getvalue()
        return raw[:6] + bytes(version) + raw[8:] + data
    text = header.encode("latin1")
    return b"\x93NUMPY" + bytes(version) + struct.pack("<H", len(text)) + text + data


def metadata_npy(text="{}"):
    """The metadata member holding ``text`` (a 0-d unicode array, as save_checkpoint writes)."""
    return npy((), f"<U{max(len(text), 1)}", text.encode("utf-32-le").ljust(4, b"\0"))


def member(name, data, method=zipfile.ZIP_STORED, size=None, csize=None, flags=0, crc=None):
    """One member of :func:`raw_zip`: ``data`` is its uncompressed bytes; ``size`` and ``csize``
    are what the directory claims (default: the truth)."""
    stored = data if method != DEFLATE else _deflate(data)
    return {"name": name, "stored": stored, "method": method, "flags": flags,
            "size": len(data) if size is None else size,
            "csize": len(stored) if csize is None else csize,
            "crc": zlib.crc32(data) if crc is None else crc}


def _deflate(data):
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def raw_zip(members):
    """A zip archive written by hand: local headers, data, central directory, end record.

    Sizes of 2**32 - 1 or more go in zip64 extra fields of the central directory, which is
    where ``zipfile`` reads them; the local headers say the same.
    """
    out, central = bytearray(), bytearray()
    for m in members:
        name = m["name"].encode("utf-8")
        big = m["size"] >= ZIP64 or m["csize"] >= ZIP64
        extra = struct.pack("<HHQQ", 1, 16, m["size"], m["csize"]) if big else b""
        size, csize = (ZIP64, ZIP64) if big else (m["size"], m["csize"])
        offset = len(out)
        out += struct.pack("<4s5H3I2H", b"PK\x03\x04", 45, m["flags"], m["method"], 0, 0x21,
                           m["crc"], csize, size, len(name), len(extra)) + name + extra + m["stored"]
        central += struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 45, 45, m["flags"], m["method"], 0,
                               0x21, m["crc"], csize, size, len(name), len(extra), 0, 0, 0, 0,
                               offset) + name + extra
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central),
                      len(out), 0)
    return bytes(out + central + end)


def write(tmp_path, members, name="c.npz"):
    path = tmp_path / name
    path.write_bytes(raw_zip(members))
    return path


def refused(path, *fragments, expect=None):
    """load_checkpoint(path) is one ValueError naming the file and every fragment."""
    with pytest.raises(ValueError) as info:
        load_checkpoint(path, expect=expect)
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def good_members(**arrays):
    return [member(f"{k}.npy", npy(v.shape, v.dtype.str, v.tobytes())) for k, v in arrays.items()] \
        + [member(f"{METADATA_KEY}.npy", metadata_npy())]


def test_the_hand_built_archive_is_read(tmp_path):
    """The builder itself: an honest archive it writes is read back exactly, writable."""
    w = np.arange(6.0).reshape(2, 3)
    arrays, meta = load_checkpoint(write(tmp_path, good_members(w=w)))
    np.testing.assert_array_equal(arrays["w"], w)
    assert meta == {} and arrays["w"].flags.writeable


# --------------------------------------------------------------------------- every library error


def test_deeply_nested_metadata_json_is_one_error(tmp_path):
    """100,000 nested '[' in the metadata: json raises RecursionError."""
    path = write(tmp_path, [member(f"{METADATA_KEY}.npy", metadata_npy("[" * 100_000))])
    refused(path, f"member '{METADATA_KEY}.npy'", "invalid metadata JSON", "RecursionError")


@pytest.mark.parametrize("text, fragment", [
    ('{"a": NaN}', "NaN is not a JSON number"),
    ('{"a": -Infinity}', "-Infinity is not a JSON number"),
    ('{"a": 1e400}', "1e400 is beyond the range of a float"),
    ('{"a": [1, 2', "invalid metadata JSON"),
    ('{"a": ' + "1" * 5000 + "}", "invalid metadata JSON"),          # beyond int(str) limits
    ("[1, 2]", "metadata is not a JSON object"),
])
def test_metadata_holds_a_json_object_of_finite_numbers(tmp_path, text, fragment):
    """save_checkpoint writes no NaN or inf (allow_nan=False); reading refuses them too, and
    1e400, which json would turn into inf."""
    path = write(tmp_path, [member(f"{METADATA_KEY}.npy", metadata_npy(text))])
    refused(path, fragment)


def test_an_encrypted_member_is_refused(tmp_path, monkeypatch):
    path = write(tmp_path, good_members(w=np.zeros(2))[:1] + [
        member(f"{METADATA_KEY}.npy", metadata_npy(), flags=checkpoint.ENCRYPTED)])
    refused(path, f"member '{METADATA_KEY}.npy'", "encrypted; checkpoints never are")
    monkeypatch.setattr(checkpoint, "ENCRYPTED", 0)    # zipfile's own RuntimeError, mapped too
    refused(path, f"member '{METADATA_KEY}.npy'", "RuntimeError", "password")


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA, 99])
def test_other_compression_methods_are_refused(tmp_path, monkeypatch, method):
    """bzip2 and lzma expand far more than deflate can; 99 is no method zipfile knows."""
    data = npy((2,), data=bytes(16))
    path = write(tmp_path, [{**member("w.npy", data), "method": method}])
    refused(path, "member 'w.npy'", f"compression method {method}")
    if method == 99:   # zipfile's NotImplementedError, mapped too
        monkeypatch.setitem(checkpoint.EXPANSION, 99, 1)
        refused(path, "member 'w.npy'", "NotImplementedError")


def test_a_damaged_deflate_stream_is_one_error(tmp_path):
    path = tmp_path / "c.npz"
    np.savez_compressed(path, w=np.arange(4096.0), **{METADATA_KEY: np.array("{}")})
    raw = bytearray(path.read_bytes())
    raw[raw.find(b"w.npy") + 200] ^= 0xFF        # inside the deflate stream of w
    path.write_bytes(bytes(raw))
    message = refused(path, "member 'w.npy'")
    assert "error" in message or "CRC" in message


NPY_HEADERS = {
    "unbalanced (tokenize.TokenError)": "{'descr': '<f8', 'fortran_order': False, 'shape': (2,, }",
    "bad indentation (IndentationError)": "{'descr': 1L}\n  x\n y",
    "deep unary minus (MemoryError)": "-" * 9000 + "1",
    "deep attributes (RecursionError)": "a" + ".a" * 4900,
    "deep sum (RecursionError)": "1+" * 4999 + "1",
    "too long": "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }" + " " * 10_000,
    "not a dict": "[1, 2]",
    "not a dtype": "{'descr': 'x' * 10, 'fortran_order': False, 'shape': (3,), }",
    "zero itemsize": "{'descr': '<U0', 'fortran_order': False, 'shape': (3,), }",
    "negative dimensions": "{'descr': '<f8', 'fortran_order': False, 'shape': (-1, -8), }",
    "object dtype": "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
    "structured dtype": "{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (1,), }",
}


@pytest.mark.parametrize("header", sorted(NPY_HEADERS))
@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, DEFLATE])
def test_every_npy_header_failure_is_one_error(tmp_path, header, method):
    """numpy's header parser raises ValueError, but also TokenError, IndentationError,
    MemoryError and RecursionError from its fallbacks; each is one error naming the member."""
    data = npy(None, header=NPY_HEADERS[header], data=bytes(64))
    path = write(tmp_path, [member("w.npy", data, method), member(f"{METADATA_KEY}.npy", metadata_npy())])
    refused(path, "member 'w.npy'")
    with pytest.raises(ValueError, match="member 'w.npy'"):
        checkpoint._check_members(path, "check", "file")


@pytest.mark.parametrize("version", [(3, 0), (9, 9), (0, 0)])
def test_npy_versions_other_than_1_and_2_are_refused(tmp_path, version):
    path = write(tmp_path, [member("w.npy", npy((2,), data=bytes(16), version=version))])
    refused(path, "member 'w.npy'", f"format version {version}")


def test_a_python_2_header_is_read_without_a_warning(tmp_path):
    """numpy reads a header with '2L' after a UserWarning; the reader stays quiet."""
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2L,), }"
    path = write(tmp_path, [member("w.npy", npy(None, header=header, data=np.ones(2).tobytes())),
                            member(f"{METADATA_KEY}.npy", metadata_npy())])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        arrays, _ = load_checkpoint(path)
    np.testing.assert_array_equal(arrays["w"], np.ones(2))


@pytest.mark.parametrize("where", ["array", "metadata"])
def test_unicode_that_is_not_unicode_is_refused(tmp_path, where):
    """UTF-32 units beyond U+10FFFF (numpy's str() raised SystemError) or lone surrogates."""
    for bad in (b"\xff\xff\xff\xff", b"\x00\xd8\x00\x00"):
        if where == "array":
            members = [member("s.npy", npy((1,), "<U1", bad)), member(f"{METADATA_KEY}.npy", metadata_npy())]
            fragment = "member 's.npy'"
        else:
            members = [member(f"{METADATA_KEY}.npy", npy((), "<U1", bad))]
            fragment = f"member '{METADATA_KEY}.npy'"
        refused(write(tmp_path, members), fragment, "invalid unicode")
    with pytest.raises(ValueError, match="array 's' holds lone surrogates"):
        save_checkpoint(tmp_path / "new.npz", {"s": np.array(["a\ud800"])}, {})
    assert not (tmp_path / "new.npz").exists()


@pytest.mark.parametrize("name, fragment", [
    ("a\\b.npy", "path separator"), ("a/b.npy", "path separator"), (".npy", "not an .npy array"),
    ("w.npz", "not an .npy array"), ("w.npy\n", "not an .npy array"),
])
def test_member_names_are_array_names(tmp_path, name, fragment):
    path = write(tmp_path, [member(name, npy((1,), data=bytes(8))),
                            member(f"{METADATA_KEY}.npy", metadata_npy())])
    message = refused(path, fragment)
    assert repr(name) in message


def test_a_name_given_twice_is_refused(tmp_path):
    """Two members of one name: which one numpy would read depends on the zip library."""
    w = member("w.npy", npy((1,), data=bytes(8)))
    refused(write(tmp_path, [w, w, member(f"{METADATA_KEY}.npy", metadata_npy())]),
            "member 'w.npy'", "a second member")


# --------------------------------------------------------------------------- sizes actually read


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, DEFLATE])
def test_a_size_lie_told_twice_is_refused_without_allocating(tmp_path, method):
    """The .npy header claims 10^15 float64 and the zip64 directory claims the matching size:
    the bytes in the file bound the member, so nothing is allocated (was a 7.11 PiB
    MemoryError traceback)."""
    head = npy((10**15,))
    claimed = len(head) + 8 * 10**15
    path = write(tmp_path, [member("w.npy", head, method, size=claimed, csize=claimed),
                            member(f"{METADATA_KEY}.npy", metadata_npy())])
    tracemalloc.start()
    try:
        message = refused(path, "member 'w.npy'", "header claims shape (1000000000000000,)",
                          "can give at most")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BYTES, peak
    assert str(claimed) in message
    with pytest.raises(ValueError, match="can give at most"):
        checkpoint._check_members(path, "check", "file")     # the golden checker's first step


def test_a_member_with_trailing_bytes_is_refused(tmp_path):
    """The header claims 4 float64, the member (and its directory entry) holds one byte more:
    the streaming read stops one byte past the claim and says so."""
    path = write(tmp_path, [member("w.npy", npy((4,), data=bytes(33))),
                            member(f"{METADATA_KEY}.npy", metadata_npy())])
    refused(path, "member 'w.npy'", "(32 data bytes) but the member holds more")


def test_a_member_is_read_to_one_byte_past_its_claim(tmp_path, monkeypatch):
    """The streaming read asks for exactly the claimed bytes plus one, whatever the directory
    says, and arrays of zero elements (no byte at all) are read back."""
    asked = []
    real = checkpoint.read_at_most
    monkeypatch.setattr(checkpoint, "read_at_most", lambda f, n: asked.append(n) or real(f, n))
    arrays = {"w": np.arange(4.0), "empty": np.zeros((2, 0)), "none": np.zeros((0,), np.int8)}
    save_checkpoint(tmp_path / "c.npz", arrays, {})
    got, _ = load_checkpoint(tmp_path / "c.npz")
    assert asked == [8 + 1, 0 + 1, 0 + 1, 32 + 1]   # '{}' in UTF-32 first, then in file order
    for name, value in arrays.items():
        assert got[name].shape == value.shape and got[name].dtype == value.dtype
        np.testing.assert_array_equal(got[name], value)


def test_fortran_ordered_members_are_read_as_numpy_writes_them(tmp_path):
    """numpy.savez keeps a Fortran-ordered array's order (fortran_order True in its header)."""
    arrays = {"a": np.asfortranarray(np.arange(24.0).reshape(2, 3, 4)),
              "b": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(3, 2))}
    np.savez(tmp_path / "f.npz", **arrays, **{METADATA_KEY: np.array("{}")})
    got, _ = load_checkpoint(tmp_path / "f.npz")
    for name, value in arrays.items():
        assert got[name].shape == value.shape
        np.testing.assert_array_equal(got[name], value)


@pytest.mark.parametrize("code_point, valid", [
    (0xD7FF, True), (0xD800, False), (0xDFFF, False), (0xE000, True), (0x10FFFF, True),
    (0x110000, False)])
def test_unicode_code_points_at_their_boundaries(tmp_path, code_point, valid):
    data = code_point.to_bytes(4, "little")
    path = write(tmp_path, [member("s.npy", npy((1,), "<U1", data)), member(f"{METADATA_KEY}.npy", metadata_npy())])
    if valid:
        assert load_checkpoint(path)[0]["s"][0] == chr(code_point)
    else:
        refused(path, "member 's.npy'", "1 invalid unicode code points")


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, DEFLATE])
def test_a_directory_entry_claiming_another_size_is_refused(tmp_path, method):
    """Larger: the data read is what the header claims, and the entry is found to lie;
    smaller: zipfile stops early (a CRC error or too few bytes)."""
    data = npy((4,), data=bytes(32))
    for size in (2**31, len(data) + 1):
        path = write(tmp_path, [member("w.npy", data, method, size=size),
                                member(f"{METADATA_KEY}.npy", metadata_npy())])
        refused(path, "member 'w.npy'", f"directory entry says {size} bytes but it holds {len(data)}")
    path = write(tmp_path, [member("w.npy", data, method, size=len(data) - 1),
                            member(f"{METADATA_KEY}.npy", metadata_npy())])
    refused(path, "member 'w.npy'")


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, DEFLATE])
def test_fewer_bytes_than_the_header_claims_are_refused(tmp_path, method):
    path = write(tmp_path, [member("w.npy", npy((4,), data=bytes(31)), method),
                            member(f"{METADATA_KEY}.npy", metadata_npy())])
    message = refused(path, "member 'w.npy'")
    assert "holds 31" in message or "can give at most" in message


def test_the_stored_limit_at_its_boundary(tmp_path):
    """A stored member gives at most its compressed bytes present in the file: a header claim
    equal to them is read, one byte more is refused before reading."""
    data = bytes(range(40))
    honest = write(tmp_path, [member("b.npy", npy((40,), "|u1", data)),
                              member(f"{METADATA_KEY}.npy", metadata_npy())], "honest.npz")
    assert load_checkpoint(honest)[0]["b"].tobytes() == data
    lying = write(tmp_path, [member("b.npy", npy((41,), "|u1", data)),
                             member(f"{METADATA_KEY}.npy", metadata_npy())], "lying.npz")
    refused(lying, "member 'b.npy'", "header claims shape (41,)", "can give at most")


def test_the_file_end_bounds_a_member_whose_directory_lies(tmp_path):
    """A stored member whose directory claims 2^40 compressed bytes gives at most what lies
    between its offset and the end of the file: a header claiming exactly that passes the
    header check, one byte more is refused by it."""
    first = member("a.npy", npy((3,), "|u1", b"abc"))          # b starts after a
    offset = len(raw_zip([first])) - len(raw_zip([]))
    offset -= len(first["name"]) + 46                             # minus a's directory entry

    def build(n):
        return raw_zip([first, member("b.npy", npy((n,), "|u1", bytes(8)), size=2**40, csize=2**40)])

    size = len(build(100))
    assert len(build(size)) == size          # the header's length does not depend on n
    at_limit = size - offset - len(npy((size,), "|u1"))
    path = tmp_path / "c.npz"
    path.write_bytes(build(at_limit))
    assert checkpoint._check_members(path, "check", "file")["b"][0] == (at_limit,)
    path.write_bytes(build(at_limit + 1))
    with pytest.raises(ValueError, match=f"member 'b.npy': header claims .* can give at most "
                                         f"{size - offset} bytes"):
        checkpoint._check_members(path, "check", "file")


def _deflated_at_ratio(extra):
    """A deflated member whose header claims exactly DEFLATE_RATIO x its compressed bytes,
    plus ``extra``; the data is a few zeros (the claim is a lie that only reading can tell)."""
    n = 1000
    for _ in range(20):
        stored = _deflate(npy((n,), "|u1", bytes(16)))
        target = DEFLATE_RATIO * len(stored) - len(npy((n,), "|u1"))
        if target == n:
            break
        n = target
    assert target == n, "no fixed point"
    data = npy((n + extra,), "|u1", bytes(16))
    m = member("b.npy", data, DEFLATE, size=len(data))
    assert len(m["stored"]) == len(stored)
    return m


def test_the_deflate_limit_at_its_boundary(tmp_path):
    """A claim of exactly DEFLATE_RATIO x the compressed bytes passes the header check (and
    fails when read: the data is not there); one byte more is refused before reading."""
    path = write(tmp_path, [_deflated_at_ratio(0), member(f"{METADATA_KEY}.npy", metadata_npy())])
    message = refused(path, "member 'b.npy'")
    assert "can give at most" not in message and "holds 16" in message, message
    path = write(tmp_path, [_deflated_at_ratio(1), member(f"{METADATA_KEY}.npy", metadata_npy())])
    refused(path, "member 'b.npy'", "can give at most")


def test_members_cannot_share_the_bytes_of_the_file(tmp_path):
    """Two members each within their own limit, claiming together more than the file holds
    (their directory entries overlap): refused before reading, at the boundary both ways."""
    def build(n_a):
        return raw_zip([member("a.npy", npy((n_a,), "|u1", bytes(8)), size=2**40, csize=2**40),
                        member("b.npy", npy((1,), "|u1", b"\1"))])

    size = len(build(100))
    claim_b = len(npy((1,), "|u1")) + 1
    head_a = len(npy((size,), "|u1"))
    path = tmp_path / "c.npz"
    path.write_bytes(build(size - claim_b - head_a))           # together exactly the file
    message = refused(path)
    assert "members claim more" not in message, message
    path.write_bytes(build(size - claim_b - head_a + 1))       # one byte more
    refused(path, "member 'b.npy'", f"the members claim more bytes than the {size} bytes")


def test_expect_is_compared_with_the_headers_before_any_array_is_read(tmp_path, monkeypatch):
    """A missing, an unexpected and a mis-shaped array are named together, and no array is
    read (the metadata alone is)."""
    path = write(tmp_path, good_members(w=np.zeros((2, 3)), extra=np.zeros(1)))
    read = []
    real_read = checkpoint._Npz.read
    monkeypatch.setattr(checkpoint._Npz, "read", lambda self, name: read.append(name) or real_read(self, name))
    message = refused(path, "does not hold what its metadata describes", "missing arrays ['b']",
                      "unexpected arrays ['extra']", "w: header claims shape (2, 3), expected (3, 2)",
                      expect=lambda meta: {"w": (3, 2), "b": (4,)})
    assert read == [METADATA_KEY], message
    arrays, _ = load_checkpoint(path, expect=lambda meta: {"w": (2, 3), "extra": (1,)})
    assert sorted(arrays) == ["extra", "w"]
    six = {f"m{i}": (1,) for i in range(6)}                   # each kind alone is refused too
    refused(path, "missing arrays ['m0', 'm1', 'm2', 'm3', 'm4'],", "no shape mismatch",
            expect=lambda meta: {"w": (2, 3), "extra": (1,), **six})
    refused(path, "unexpected arrays ['extra']", expect=lambda meta: {"w": (2, 3)})
    many = {"w": (9,), "extra": (9,)}
    message = refused(path, "missing arrays []", "w: header claims shape (2, 3), expected (9,)",
                      expect=lambda meta: many)
    assert message.count("header claims shape") == 2


# --------------------------------------------------------------------------- the file itself


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX special files")
def test_a_fifo_is_never_waited_on(tmp_path, monkeypatch):
    """Refused by os.stat before opening; and if it became a FIFO after that check, the open
    does not block (O_NONBLOCK) and os.fstat refuses it."""
    fifo = tmp_path / "c.npz"
    os.mkfifo(fifo)
    refused(fifo, "expected a regular file, got a FIFO")
    with pytest.raises(ValueError, match="expected a regular file, got a FIFO"):
        read_idx(fifo)
    real_stat = os.stat

    def regular_then_fifo(path, *args, **kwargs):
        info = real_stat(path, *args, **kwargs)
        mode = stat.S_IFREG | stat.S_IMODE(info.st_mode)
        return os.stat_result((mode,) + tuple(info)[1:])

    monkeypatch.setattr(_io.os, "stat", regular_then_fifo)
    with pytest.raises(ValueError, match="got a FIFO"):
        _io.open_regular_file(fifo, "f", "thing")


def test_a_directory_or_missing_file(tmp_path):
    refused(tmp_path, "expected a regular file, got a directory")
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.npz")
    (tmp_path / "dangling.npz").symlink_to(tmp_path / "nowhere")
    refused(tmp_path / "dangling.npz", "No such file or directory")


def test_read_regular_file_reads_at_most_the_limit_plus_one(tmp_path, monkeypatch):
    """The memory used follows the bytes there: a 64 MB limit costs nothing for a small file."""
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    tracemalloc.start()
    try:
        assert _io.read_regular_file(path, 64 << 20, "f", "thing") == b"x" * 10
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * _io.READ_CHUNK, peak
    assert _io.read_regular_file(path, 10, "f", "thing") == b"x" * 10
    with pytest.raises(ValueError, match="at most 9 bytes, got 10 bytes"):
        _io.read_regular_file(path, 9, "f", "thing")
    assert _io.read_at_most(io.BytesIO(b"abc"), 2) == b"ab"
    assert _io.read_at_most(io.BytesIO(b"abc"), 5) == b"abc"
    monkeypatch.setattr(_io, "READ_CHUNK", 2)                 # several chunks, same bytes
    assert _io.read_at_most(io.BytesIO(b"abcde"), 4) == b"abcd"
    assert _io.read_at_most(io.BytesIO(b"abcde"), 3) == b"abc"    # the last chunk is cut
    asked = []
    monkeypatch.setattr(_io, "read_at_most", lambda f, n: asked.append(n) or b"x" * 10)
    _io.read_regular_file(path, 64, "f", "thing")
    assert asked == [65]                                        # exactly one byte past the limit


# --------------------------------------------------------------------------- IDX files


def _idx_file(tmp_path, name, array):
    path = tmp_path / name
    write_idx(path, array)
    return path


@pytest.mark.parametrize("name", ["x.idx", "x.idx.gz"])
def test_idx_budget_at_its_boundary(tmp_path, name):
    """A file of exactly the element budget is read; a budget one element smaller refuses it."""
    path = _idx_file(tmp_path, name, np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    previous = stnref.set_max_elements(24)
    try:
        assert read_idx(path).shape == (2, 3, 4)
        stnref.set_max_elements(23)
        with pytest.raises(ValueError, match="budget"):
            read_idx(path)
    finally:
        stnref.set_max_elements(previous)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_payload_at_its_boundary(tmp_path, gz):
    """Exactly the bytes the header claims are read; one fewer or one more is refused."""
    images = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 8, 3]) + np.array([2, 3, 4], ">i4").tobytes() + images.tobytes()
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    for body, fragment in ((raw, None), (raw[:-1], "truncated"), (raw + b"\0", "oversized")):
        path.write_bytes(gzip.compress(body, mtime=0) if gz else body)
        if fragment is None:
            np.testing.assert_array_equal(read_idx(path), images)
        else:
            with pytest.raises(ValueError, match=fragment):
                read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_payload_read_in_small_chunks(tmp_path, monkeypatch, gz):
    """Chunks of 5 bytes: the kept records are exactly the first ones, and one byte after the
    claimed payload is still found, whatever the chunk boundaries."""
    monkeypatch.setattr(idx, "IDX_READ_CHUNK", 5)
    images = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = _idx_file(tmp_path, "x.idx.gz" if gz else "x.idx", images)
    for limit in (None, 1, 2, 3):
        shape, data = idx._read_idx(path, limit)
        assert shape == (2, 3, 4)
        np.testing.assert_array_equal(data, images[:limit])
    raw = bytes([0, 0, 8, 3]) + np.array([2, 3, 4], ">i4").tobytes() + images.tobytes() + b"\0"
    path.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    with pytest.raises(ValueError, match="oversized: 1 bytes after the 24 data bytes"):
        read_idx(path)
    path.write_bytes(gzip.compress(raw + bytes(9), mtime=0) if gz else raw + bytes(9))
    with pytest.raises(ValueError, match="oversized: (at least 5|10) bytes after"):
        read_idx(path)


def test_idx_plain_size_is_checked_before_reading(tmp_path, monkeypatch):
    """A plain file's size is known: a truncated or oversized one is refused before its
    payload is read (conventions §9.1)."""
    path = _idx_file(tmp_path, "x.idx", np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    raw = path.read_bytes()

    def unread(*args):
        raise AssertionError("the payload was read")

    monkeypatch.setattr(idx, "_read_payload", unread)
    for body, fragment in ((raw[:-1], "truncated: header claims 24 data bytes, file has 23"),
                           (raw + b"\0\0", "oversized: 2 bytes after the 24 data bytes")):
        path.write_bytes(body)
        with pytest.raises(ValueError, match=fragment):
            read_idx(path)


@pytest.mark.parametrize("damage", ["garbage after the stream", "header flags", "cut", "crc"])
def test_idx_gzip_failures_are_one_error(tmp_path, damage):
    path = _idx_file(tmp_path, "x.idx.gz", np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    raw = bytearray(path.read_bytes())
    if damage == "garbage after the stream":
        raw += b"not gzip"
    elif damage == "header flags":
        raw[3] = 0xFF                               # reserved flag bits: BadGzipFile
    elif damage == "cut":
        raw = raw[:-5]                              # EOFError
    else:
        raw[-8] ^= 0xFF                             # CRC mismatch
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="x.idx.gz") as info:
        read_idx(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("magic", [b"\x01\x00\x08\x03", b"\x00\x01\x08\x03", b"\x00\x00\x08\x02"])
def test_idx_magic_bytes_each_checked(tmp_path, magic):
    path = tmp_path / "x.idx"
    path.write_bytes(magic + np.array([1, 2, 2], ">i4").tobytes() + bytes(4))
    with pytest.raises(ValueError, match="magic"):
        read_idx(path)


def test_idx_out_of_memory_is_one_error(tmp_path, monkeypatch):
    """MemoryError while reading the kept records names the file, as any other failure."""
    path = _idx_file(tmp_path, "x.idx", np.arange(24, dtype=np.uint8).reshape(2, 3, 4))

    def no_memory(*args):
        raise MemoryError

    monkeypatch.setattr(idx, "_read_payload", no_memory)
    with pytest.raises(ValueError, match=r"x\.idx.*MemoryError"):
        read_idx(path)


def test_idx_a_missing_file_stays_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope.idx")
    with pytest.raises(ValueError, match="got a directory"):
        read_idx(tmp_path)


# --------------------------------------------------------------------------- numbers in runs


def _run_with(tmp_path, edit):
    """A finished tiny run whose checkpoint metadata ``edit`` changes; its directory."""
    from stnref.app.train import CHECKPOINT, TrainConfig, train

    run_dir = tmp_path / "run"
    config = TrainConfig(model="fcn", distortion="none", epochs=1, batch_size=16, train_size=32,
                         test_size=16, seed=1)
    train(config, str(run_dir), progress=_quiet())
    arrays, meta = load_checkpoint(run_dir / CHECKPOINT)
    edit(meta)
    text = json.dumps(meta, sort_keys=True)         # as save_checkpoint, but numbers unchecked
    members = [member(f"{k}.npy", npy(v.shape, v.dtype.str, v.tobytes())) for k, v in sorted(arrays.items())]
    (run_dir / CHECKPOINT).write_bytes(raw_zip(members + [member(f"{METADATA_KEY}.npy", metadata_npy(text))]))
    return run_dir


def _quiet():
    from stnref.app.train import Progress

    return Progress(io.StringIO())


@pytest.mark.parametrize("field, value, fragment", [
    (("config", "train_size"), 10**400, "train_size <= 9007199254740992"),
    (("config", "batch_size"), 2**53 + 1, "batch_size <= 9007199254740992"),
    (("config", "seed"), 10**40, "seed <= 9007199254740992"),
    (("config", "lr"), 10**400, "expected lr to be a finite number"),
    (("state", "loss_sum"), 10**400, "inconsistent progress"),
    (("state", "seconds"), -(10**400), "inconsistent progress"),
    (("state", "epoch"), 10**400, "inconsistent progress"),
    (("metrics", 0, "seconds"), 10**400, "inconsistent progress"),
])
def test_stored_numbers_are_range_checked_as_integers(tmp_path, field, value, fragment):
    """A stored number of 400 digits is refused by its value, never an OverflowError from
    float arithmetic (math.ceil(train_size / batch_size), math.isfinite)."""
    from stnref.app.train import load_run

    def edit(meta):
        target = meta
        for key in field[:-1]:
            target = target[key]
        target[field[-1]] = value

    run_dir = _run_with(tmp_path, edit)
    with pytest.raises(ValueError, match="checkpoint.npz") as info:
        load_run(str(run_dir))
    assert fragment in str(info.value) and len(str(info.value)) < 2000, str(info.value)


def test_stored_integers_at_the_limit_are_read(tmp_path):
    """2**53 is the largest count or seed stored or given: it is read back."""
    from stnref.app.train import TrainConfig, load_run

    run_dir = _run_with(tmp_path, lambda meta: meta["config"].update(seed=2**53))
    assert load_run(str(run_dir))[0].seed == 2**53
    with pytest.raises(ValueError, match="seed <= 9007199254740992"):
        TrainConfig(seed=2**53 + 1).validated()
