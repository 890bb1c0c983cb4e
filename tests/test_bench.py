"""The benchmark harness: measurements are well-formed; reports refresh between markers."""

import os
import re

import numpy as np
import pytest

from stnref.app import bench


def test_measure_reports_every_kind_and_a_floor():
    rows = bench.measure((2, 1, 6, 6), np.float64, "bicubic", "reflection", rounds=1)
    assert set(rows) == {"fwd", "fwd+bwd", "sample"}
    for r in rows.values():
        assert r["stnref"] > 0 and r["floor"] > 0
        assert (r["torch"] is None) == (r["ratio"] is None)


def test_measure_volumes():
    rows = bench.measure((1, 1, 4, 4, 4), np.float32, rounds=1, kinds=("fwd+bwd",))
    assert set(rows) == {"fwd+bwd"}


def test_write_report_keeps_the_page_around_the_markers(tmp_path):
    path = tmp_path / "performance.md"
    path.write_text(f"analysis\n{bench.BEGIN_MARK}\nold tables\n{bench.END_MARK}\nmore analysis\n")
    bench.write_report(str(path), "new tables\n")
    assert path.read_text() == (f"analysis\n{bench.BEGIN_MARK}\nnew tables\n{bench.END_MARK}\n"
                                "more analysis\n")


@pytest.mark.parametrize("content, fragment", [
    ("My notes\n", "exists without one pair of the markers"),
    (f"notes\n{bench.BEGIN_MARK}\nold\n", "exists without one pair of the markers"),
    (f"{bench.END_MARK}\n{bench.BEGIN_MARK}\n", "exists without one pair of the markers"),
    (b"\xff\xfe notes", "is not UTF-8 text"),
])
def test_bench_never_overwrites_a_page_without_markers(tmp_path, capsys, monkeypatch, content, fragment):
    """Refused before the benchmark runs; the file is left as it was."""
    from test_cli import assert_user_error, run_main
    path = tmp_path / "notes.md"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = path.read_bytes()
    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("the bench ran"))
    assert_user_error(run_main(capsys, "bench", "--quick", "--markdown", path), "--markdown", fragment)
    with pytest.raises(ValueError, match=fragment):
        bench.write_report(str(path), "tables")
    assert path.read_bytes() == before


def _sparse_page(path):
    with open(path, "wb") as f:
        f.truncate(bench.PAGE_LIMIT + 1)


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
@pytest.mark.parametrize("make, fragment", [
    (lambda path: path.symlink_to("/dev/null"), "expected a regular file, got a character device"),
    (_sparse_page, f"expected at most {bench.PAGE_LIMIT} bytes, got {bench.PAGE_LIMIT + 1} bytes"),
], ids=["device", "too-large"])
def test_bench_refuses_a_page_that_is_not_a_regular_file_or_too_large(tmp_path, capsys, monkeypatch,
                                                                      make, fragment):
    """A symlink to /dev/zero was read whole (MemoryError): refused from a stat, before the run."""
    from test_cli import assert_user_error, run_main
    path = tmp_path / "page.md"
    make(path)
    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("the bench ran"))
    assert_user_error(run_main(capsys, "bench", "--quick", "--markdown", path), "--markdown")
    with pytest.raises(ValueError, match=re.escape(f"write_report(): page '{path}': {fragment}")):
        bench.write_report(str(path), "tables")


def test_write_report_writes_through_a_symlink(tmp_path):
    target = tmp_path / "docs" / "performance.md"
    target.parent.mkdir()
    target.write_text(f"analysis\n{bench.BEGIN_MARK}\nold\n{bench.END_MARK}\n")
    link = tmp_path / "page.md"
    link.symlink_to(target)
    bench.write_report(str(link), "new tables")
    assert link.is_symlink()
    assert target.read_text() == f"analysis\n{bench.BEGIN_MARK}\nnew tables\n{bench.END_MARK}\n"


def test_write_report_creates_a_page(tmp_path):
    path = tmp_path / "new.md"
    bench.write_report(str(path), "tables")
    text = path.read_text()
    assert text.startswith("# stnref benchmarks") and "tables" in text


def test_environment_names_versions_and_torch_kernels():
    line = bench.environment()
    assert f"numpy {np.__version__}" in line
    torch = bench._torch()
    if torch is None:
        assert line.endswith("torch not installed")
    else:   # the ratios depend on which of PyTorch's CPU kernels runs
        capability = torch.backends.cpu.get_cpu_capability()
        assert f"torch {torch.__version__} ({capability} kernels, 1 thread)" in line


def test_nearest_pytorch_kernel_of_each_setting():
    from stnref.sampler_settings import combinations, is_pytorch
    for k, mode, padding in combinations():
        t_mode, t_padding = bench.nearest_pytorch(mode, padding, k)
        assert is_pytorch(t_mode, t_padding, k)
        if is_pytorch(mode, padding, k):
            assert (t_mode, t_padding) == (mode, padding)
    assert bench.nearest_pytorch("bicubic", "wrap", 3) == ("bilinear", "zeros")   # trilinear
    assert bench.nearest_pytorch("bicubic", "wrap", 2) == ("bicubic", "zeros")


def test_measure_beyond_names_the_kernels_it_compares(monkeypatch):
    monkeypatch.setattr(bench, "_torch", lambda: None)
    r = bench.measure_beyond((1, 1, 4, 4, 4), "bicubic", "constant", rounds=1)
    name, ours, theirs = r["torch"]
    assert name == "PyTorch trilinear zeros" and ours > 0 and theirs is None
    name, ours, theirs = r["scipy"]
    assert name == "map_coordinates order 3 'grid-constant'" and ours > 0 and theirs > 0


def test_the_per_mode_tables_cover_the_chosen_settings(monkeypatch, tmp_path):
    from stnref.app import cli
    monkeypatch.setattr(bench, "_torch", lambda: None)
    monkeypatch.setattr(bench, "SHAPES", ((2, 1, 6, 6),))
    monkeypatch.setattr(bench, "VOLUME", (1, 1, 4, 4, 4))
    monkeypatch.setattr(bench, "BEYOND_IMAGE", (1, 1, 6, 6))
    out = tmp_path / "bench.md"
    assert cli.main(["bench", "--rounds", "1", "--dtype", "float32", "--mode", "bicubic",
                     "--padding-mode", "wrap", "zeros", "--markdown", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| bicubic |")]
    # per mode (2-D): zeros, wrap; PyTorch lacks: 2-D wrap, 3-D (tricubic) zeros and wrap
    assert [r.split(" | ")[1] for r in rows] == ["zeros", "wrap", "wrap", "zeros", "wrap"]
    assert "| bilinear |" not in out.read_text()
