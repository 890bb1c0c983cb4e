"""Checkpoints: round trip, reproducible bytes, atomic replacement, rejection of bad files."""

import os
import pickle
import zipfile

import numpy as np
import pytest

from stnref import checkpoint
from stnref.checkpoint import METADATA_KEY, load_checkpoint, load_into, save_checkpoint
from stnref.nn import Linear, ReLU, Sequential


def small_net(seed=0):
    rng = np.random.default_rng(seed)
    return Sequential(Linear(3, 4, rng=rng), ReLU(), Linear(4, 2, rng=rng))


def sample_arrays():
    rng = np.random.default_rng(1)
    return {
        "0.weight": rng.standard_normal((4, 3)),
        "0.bias": rng.standard_normal(4).astype(np.float32),
        "step": np.array(7, dtype=np.int64),
        "fortran": np.asfortranarray(rng.standard_normal((3, 2))),
        "name": np.array("st-cnn"),
    }


def test_round_trip_preserves_names_values_dtypes_and_metadata(tmp_path):
    path = tmp_path / "ckpt.npz"
    arrays = sample_arrays()
    meta = {"model": "st-cnn", "transform": "affine", "seed": 3, "history": [1.5, 0.25]}
    save_checkpoint(path, arrays, meta)
    loaded, loaded_meta = load_checkpoint(path)
    assert loaded_meta == meta
    assert sorted(loaded) == sorted(arrays)
    for k, v in arrays.items():
        assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape
        np.testing.assert_array_equal(loaded[k], v)
    # A plain numpy reader sees the same arrays.
    with np.load(path, allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["0.weight"], arrays["0.weight"])


def test_same_state_gives_byte_identical_files(tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    arrays = sample_arrays()
    save_checkpoint(a, arrays, {"x": 1, "y": [2, 3]})
    # Different insertion order and memory layout, same state.
    reordered = {k: np.array(arrays[k], order="C") for k in reversed(list(arrays))}
    save_checkpoint(b, reordered, {"y": [2, 3], "x": 1})
    assert a.read_bytes() == b.read_bytes()
    with zipfile.ZipFile(a) as zf:
        assert {info.date_time for info in zf.infolist()} == {checkpoint.ZIP_EPOCH}


def test_module_state_round_trip_through_load_into(tmp_path):
    net, other = small_net(0), small_net(1)
    path = tmp_path / "net.npz"
    save_checkpoint(path, net.state_dict(), {})
    arrays, _ = load_checkpoint(path)
    load_into(other, arrays)
    x = np.random.default_rng(2).standard_normal((5, 3))
    np.testing.assert_array_equal(other(x), net(x))


def test_crash_before_rename_leaves_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {"w": np.zeros(3)}, {"version": 1})
    old_bytes = path.read_bytes()

    def crash(src, dst):
        raise OSError("simulated crash between write and rename")

    monkeypatch.setattr(checkpoint.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, {"w": np.ones(3)}, {"version": 2})
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    arrays, meta = load_checkpoint(path)
    assert meta == {"version": 1}
    np.testing.assert_array_equal(arrays["w"], np.zeros(3))
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]


def test_crash_during_write_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {"w": np.zeros(3)}, {"version": 1})
    old_bytes = path.read_bytes()

    def crash(fd):
        raise OSError("simulated crash in fsync")

    monkeypatch.setattr(checkpoint.os, "fsync", crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, {"w": np.ones(3)}, {"version": 2})
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]


def _expect_rejected(path, match):
    with pytest.raises(ValueError, match=match) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    _expect_rejected(tmp_path / "nope.npz", "does not exist")


def test_truncated_file(tmp_path):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, sample_arrays(), {"a": 1})
    data = path.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        _expect_rejected(path, "cannot read checkpoint")


def test_corrupt_payload_fails_crc(tmp_path):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {"w": np.full(64, 1.0)}, {})
    data = bytearray(path.read_bytes())
    data[data.find(np.float64(1.0).tobytes()) + 3] ^= 0xFF
    path.write_bytes(bytes(data))
    _expect_rejected(path, "CRC")


def test_pickles_and_object_arrays_are_never_loaded(tmp_path):
    pickled = tmp_path / "pickled.npz"
    pickled.write_bytes(pickle.dumps({"w": np.zeros(2)}))
    _expect_rejected(pickled, "pickle")
    objects = tmp_path / "objects.npz"
    np.savez(objects, w=np.array([{"a": 1}], dtype=object), **{METADATA_KEY: np.array("{}")})
    _expect_rejected(objects, "[Oo]bject")


def _write_zip(path, members, compress=zipfile.ZIP_STORED):
    """A zip of raw member bytes (name -> bytes), as a hostile file would be built."""
    with zipfile.ZipFile(path, "w", compression=compress) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _npy_header(shape, descr="<f8"):
    buf = __import__("io").BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue()


def _metadata_member(text="{}"):
    meta = np.lib.format.header_data_from_array_1_0(np.array(text))
    return {f"{METADATA_KEY}.npy": _npy_header((), meta["descr"]) + text.encode("utf-32-le")}


@pytest.mark.parametrize("compress", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_lying_array_header_is_refused_before_allocating(tmp_path, compress):
    """A member whose header claims 10^12 elements is refused by name, never a MemoryError."""
    path = tmp_path / "lying.npz"
    meta = np.lib.format.header_data_from_array_1_0(np.array("{}"))
    _write_zip(path, {"w.npy": _npy_header((10**6, 10**6)) + b"\0" * 64,
                      f"{METADATA_KEY}.npy": _npy_header((), meta["descr"]) + "{}".encode("utf-32-le")},
               compress)
    _expect_rejected(path, r"member 'w.npy': header claims shape \(1000000, 1000000\)")


def test_member_whose_directory_entry_lies_is_refused(tmp_path):
    """A deflated member whose directory entry declares 2^31 bytes from a few compressed ones:
    its data is read (what the header claims, no more) and the entry found to lie."""
    path = tmp_path / "bomb.npz"
    _write_zip(path, {"w.npy": _npy_header((4,)) + b"\0" * 32, **_metadata_member()},
               zipfile.ZIP_DEFLATED)
    raw = bytearray(path.read_bytes())
    size_at = raw.find(b"PK\x01\x02") + 24                  # uncompressed size, central directory
    raw[size_at:size_at + 4] = (2**31).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    _expect_rejected(path, "member 'w.npy': its directory entry says 2147483648 bytes but it "
                           "holds 160")


def test_unexpected_member_is_refused(tmp_path):
    path = tmp_path / "extra.npz"
    _write_zip(path, {"notes.txt": b"hello"})
    _expect_rejected(path, "member 'notes.txt': not an .npy array")


def test_missing_or_bad_metadata(tmp_path):
    plain = tmp_path / "plain.npz"
    np.savez(plain, w=np.zeros(2))
    _expect_rejected(plain, "no metadata")
    bad_json = tmp_path / "bad.npz"
    np.savez(bad_json, w=np.zeros(2), **{METADATA_KEY: np.array("{not json")})
    _expect_rejected(bad_json, "invalid metadata")
    bare = tmp_path / "bare.npy"
    np.save(bare, np.zeros(2))
    _expect_rejected(bare, "not an .npz")


def test_save_rejects_bad_arguments(tmp_path):
    path = tmp_path / "x.npz"
    with pytest.raises(TypeError, match="object"):
        save_checkpoint(path, {"w": np.array([None])}, {})
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(path, {METADATA_KEY: np.zeros(1)}, {})
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(path, {}, {"x": object()})
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(path, {}, {"x": float("nan")})
    with pytest.raises(TypeError, match="metadata"):
        save_checkpoint(path, {}, [1])
    assert not path.exists() and os.listdir(tmp_path) == []


def test_load_into_names_every_mismatch_and_changes_nothing():
    net = small_net(0)
    before = net.state_dict()
    good = small_net(1).state_dict()
    bad = dict(good)
    del bad["0.bias"]
    bad["extra.weight"] = np.zeros(1)
    bad["2.weight"] = np.zeros((3, 4))
    with pytest.raises(ValueError) as info:
        load_into(net, bad)
    msg = str(info.value)
    assert "0.bias" in msg and "extra.weight" in msg and "2.weight" in msg and "(2, 4)" in msg
    for k, v in before.items():
        np.testing.assert_array_equal(net.params[k], v)
    with pytest.raises(TypeError):
        load_into(object(), good)


def test_paper_model_resumes_from_its_checkpoint(tmp_path):
    from stnref.networks import build_model

    model = build_model("st-cnn", "tps", input_size=42, rng=np.random.default_rng(3))
    reg = model[0].loc[-1]
    np.copyto(reg.weight, 0.01 * np.random.default_rng(4).standard_normal(reg.weight.shape))
    path = tmp_path / "st-cnn.npz"
    save_checkpoint(path, model.state_dict(), {"name": "st-cnn", "transform": "tps", "input_size": 42})
    arrays, meta = load_checkpoint(path)
    fresh = build_model(meta["name"], meta["transform"], input_size=meta["input_size"],
                        rng=np.random.default_rng(5))
    load_into(fresh, arrays)
    x = np.random.default_rng(6).standard_normal((2, 1, 42, 42))
    np.testing.assert_array_equal(fresh(x), model(x))
    np.testing.assert_array_equal(fresh[0].last_theta, model[0].last_theta)
