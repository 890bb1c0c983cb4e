"""The benchmark harness: measurements are well-formed; reports refresh between markers."""

import numpy as np

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
