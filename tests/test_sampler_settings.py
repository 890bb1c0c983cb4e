"""The table of sampler settings (stnref.sampler_settings): consistent, read everywhere, covered.

Every supported ``(k, mode, padding_mode)`` must be checked by at least one property test
(finite differences, transpose identities, hypothesis over the mode product) and by at least
one parity test against an independent implementation (PyTorch's records, scipy, the ONNX
reference's records, the direct loops).  :data:`COVERAGE_SOURCES` says where each kind of
coverage comes from; every source reads the parametrisation its tests actually run, so a new
row of the table fails here until some test checks it.  Further kinds (the golden set) are
added to :data:`COVERAGE_SOURCES` by the test modules that provide them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import stnref
from stnref import grid_sample, sampler_settings, sampling
from stnref.reference import _models as _identify  # the hypothesis tables and their model
from stnref.sampler_settings import COORDINATE, SETTINGS, combinations, is_pytorch

import test_oracle_scipy
import test_sampling
import test_second_order

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "tests" / "torch_records"


# --------------------------------------------------------------------------- coverage

def _settings_of(combos):
    """``{(k, mode, padding_mode)}`` of a list of ``(k, mode, padding_mode, align_corners)``."""
    return {c[:3] for c in combos}


def _recorded(path, families=None):
    """``{(k, mode, padding_mode)}`` of the sampler cases recorded in ``path`` (an .npz record),
    of the given families (None: all)."""
    arrays, meta = stnref.load_checkpoint(path)
    return {(arrays[f"{case['id']}.grid"].shape[-1], case["options"]["mode"],
             case["options"]["padding_mode"]) for case in meta["cases"]
            if families is None or case["family"] in families}


# kind -> [(source, callable returning the settings it checks)].  The hook of the coverage
# rule: a test module providing another kind of coverage registers it here.
COVERAGE_SOURCES = {
    "property": [
        ("finite differences, tests/test_sampling.py", lambda: _settings_of(test_sampling.ALL)),
        ("JVP / double backward, tests/test_second_order.py",
         lambda: _settings_of(test_second_order.COMBOS)),
    ],
    "parity": [
        ("PyTorch records, tests/torch_records/sampler.npz", lambda: _recorded(RECORDS / "sampler.npz")),
        ("scipy.ndimage.map_coordinates, tests/test_oracle_scipy.py",
         lambda: _settings_of(test_oracle_scipy.COMBOS)),
        ("direct loops, tests/loops.py", lambda: _settings_of(test_sampling.LOOP_COMBOS)),
        ("ONNX reference records (agreeing family), tests/onnx_records/cubic.npz",
         lambda: _recorded(ROOT / "tests" / "onnx_records" / "cubic.npz", ("zeros",))),
    ],
}


@pytest.mark.parametrize("kind", sorted(COVERAGE_SOURCES))
def test_every_supported_setting_is_covered(kind):
    covered = set().union(*(source() for _, source in COVERAGE_SOURCES[kind]))
    missing = [s for s in combinations() if s not in covered]
    assert not missing, f"settings without {kind} coverage: {missing}"


def test_pytorch_settings_have_pytorch_parity():
    recorded = _recorded(RECORDS / "sampler.npz")
    assert set(combinations(pytorch=True)) <= recorded
    assert not recorded - set(combinations(pytorch=True)), "a record of a setting PyTorch lacks"


# --------------------------------------------------------------------------- the table itself

def test_rows_are_consistent_with_the_engine():
    for (mode, padding), row in SETTINGS.items():
        assert (row.mode, row.padding_mode) == (mode, padding)
        assert mode in sampling._KERNELS and padding in sampling._PADDINGS
        assert set(row.pytorch_dims) <= set(row.dims) <= {2, 3}
        assert row.pads in (COORDINATE, sampler_settings.TAPS)
        maps = sampling._PADDINGS[padding]
        # a coordinate padding needs a coordinate map; a tap padding a taps map, or a ring that
        # holds what outside taps read: the image wrapped, or the fill (zeros, constant, whose
        # coordinate map is the identity)
        if row.pads == COORDINATE:
            assert maps.coord is not None, (mode, padding)
        else:
            assert (maps.taps is not None or maps.wraps
                    or maps.coord is sampling._pad_identity), (mode, padding)
    assert sampler_settings.MODES == tuple(dict.fromkeys(m for m, _ in SETTINGS))
    assert sampler_settings.PADDING_MODES == tuple(dict.fromkeys(p for _, p in SETTINGS))
    assert sampling.CUBIC_A == sampler_settings.CUBIC_A == -0.75
    assert sampler_settings.FILL_VALUE == 0.0


def test_combinations_and_is_pytorch_agree():
    everything = combinations()
    ours, theirs = set(combinations(pytorch=False)), set(combinations(pytorch=True))
    assert set(everything) == ours | theirs and not ours & theirs
    for k, mode, padding in everything:
        assert is_pytorch(mode, padding, k) == ((k, mode, padding) in combinations(pytorch=True))
    assert not is_pytorch("bicubic", "zeros", 2, cubic_a=-0.5)
    assert not is_pytorch("bilinear", "zeros", 2, fill_value=1.0)
    assert not is_pytorch("spline", "zeros", 2)


def test_the_conventions_page_shows_the_table():
    page = (ROOT / "docs" / "conventions.md").read_text(encoding="utf-8")
    assert sampler_settings.markdown() in page


# --------------------------------------------------------------------------- read everywhere

def test_consumers_read_the_table():
    from stnref.app import bench
    from stnref.reference import diagnosis, golden
    assert bench.MODES == tuple((m, p) for _, m, p in combinations(dims=(2,)))
    assert set(golden.MODES) | set(diagnosis.MODES) <= set(sampler_settings.PYTORCH_MODES)
    specs = golden._sampler_specs()
    assert {(s[3], s[4], s[5]) for s in specs} <= set(combinations(pytorch=True))


def test_messages_are_built_from_the_table(monkeypatch):
    U, grid = np.zeros((1, 1, 2, 2, 2)), np.zeros((1, 1, 1, 1, 3))
    allowed = ", ".join(repr(m) for m in sampler_settings.MODES)
    with pytest.raises(ValueError, match=rf"grid_sample\(\): expected mode to be one of {allowed}, got 'x'"):
        grid_sample(U, grid, mode="x")
    # a row for 4-D input only: the message names what the row supports
    row = SETTINGS["bilinear", "border"]
    monkeypatch.setitem(SETTINGS, ("bilinear", "border"), row._replace(dims=(2,)))
    with pytest.raises(ValueError, match=r"grid_sample\(\): mode='bilinear' with padding_mode='border' "
                                         r"supports 4-D U \(2 spatial dimensions\) only, got 5-D U"):
        grid_sample(U, grid, padding_mode="border")


@pytest.mark.parametrize("bad, exc, match", [
    ({"cubic_a": -0.5}, ValueError, r"cubic_a=-0.5 applies only with mode='bicubic', got mode='bilinear'"),
    ({"cubic_a": float("nan")}, ValueError, r"expected a finite cubic_a, got nan"),
    ({"cubic_a": "a"}, TypeError, r"expected cubic_a to be a real number, got str 'a'"),
    ({"cubic_a": True}, TypeError, r"expected cubic_a to be a real number, got bool True"),
    ({"fill_value": np.inf}, ValueError, r"expected a finite fill_value, got inf"),
    ({"fill_value": None}, TypeError, r"expected fill_value to be a real number, got NoneType None"),
])
def test_check_refuses_with_one_clear_line(bad, exc, match):
    with pytest.raises(exc, match=r"^f\(\): " + match + "$"):
        sampler_settings.check("bilinear", "zeros", "f", **bad)


def test_pytorch_sample_refuses_a_setting_pytorch_lacks(monkeypatch):
    U = np.zeros((1, 1, 3, 3))
    ix = iy = np.zeros((1, 2))
    _identify.pytorch_sample(U, ix, iy, ("bicubic", "zeros", False))
    monkeypatch.setitem(SETTINGS, ("bicubic", "zeros"), SETTINGS["bicubic", "zeros"]._replace(pytorch_dims=()))
    with pytest.raises(ValueError, match=r"pytorch_sample\(\): expected a setting PyTorch has"):
        _identify.pytorch_sample(U, ix, iy, ("bicubic", "zeros", False))
    assert _identify.Behaviour("bicubic").pytorch() is None


def test_one_keys_kernel():
    from stnref.equations import cubic_kernel
    d = np.linspace(-2.5, 2.5, 1001)
    for a in (-0.75, -0.5, -1.0):
        np.testing.assert_allclose(sampling.keys(d, a), cubic_kernel(d, a), rtol=0, atol=1e-14)
        np.testing.assert_array_equal(_identify.KERNELS["bicubic"].weight(d, a), sampling.keys(d, a))
    assert _identify.keys is sampling.keys
    # the sampler's weights are the kernel at the tap distances, bit for bit
    t = np.random.default_rng(0).random(64)
    w = sampling._cubic(t.copy(), 0, -0.75).w
    for o, wo in zip((-1, 0, 1, 2), w):
        np.testing.assert_array_equal(wo, sampling.keys(np.abs(t - o) if o > 0 else t - o))
