"""The ``stnref`` command line: ``python -m stnref`` in a subprocess, and ``cli.main`` in-process.

Contract (``stnref/app/cli.py``): ``--help`` works for every subcommand; a user error
prints exactly one line ``stnref: error: ...`` on stderr and exits 2, never a
traceback; a smoke training run writes ``metrics.json`` (documented schema) and a
loadable ``checkpoint.npz``; ``evaluate --json`` writes JSON; ``reference
export`` / ``check`` round-trip; ``bench`` runs (in-process on a tiny shape, to
stay cheap).  Each contract is checked once through a real subprocess (exit
status and raw stderr of the interpreter); the long tables of bad arguments go
through ``cli.main`` in-process, which is the same code without ~1 s of start-up.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from stnref.app import cli
from stnref.checkpoint import load_checkpoint
from stnref.app.train import CHECKPOINT, METRICS, load_run

EXIT_USAGE = 2
EXIT_TRAINING = 3
SUBPROCESS_TIMEOUT = 120  # seconds; generous because the test machine is shared
# The smoke run of the brief: small enough to train in a few seconds.
TINY = ["--train-size", "128", "--test-size", "64", "--epochs", "2", "--batch-size", "64"]
EPOCH_KEYS = {"epoch", "train_loss", "train_error", "test_error", "seconds", "samples_per_s"}
CONFIG_KEYS = {"model", "transform", "distortion", "data", "epochs", "batch_size", "lr",
               "loc_lr_scale", "momentum", "optimizer", "train_size", "test_size", "seed",
               "clip_norm", "checkpoint_every", "on_nonfinite", "schedule", "redistort", "validation"}


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "stnref", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)


def run_main(capsys, *args):
    """``cli.main`` in-process: a CompletedProcess-like result (``--help`` exits via SystemExit)."""
    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def assert_user_error(proc, *fragments):
    """Exit 2, exactly one stderr line ``stnref: error: ...``, no traceback."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == EXIT_USAGE, (proc.returncode, proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("stnref: error:"), lines[0]
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One tiny training run shared by the tests that need a finished run."""
    root = tmp_path_factory.mktemp("cli")
    run_dir = root / "run"
    proc = run_cli("train", *TINY, "--out", run_dir, cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return run_dir, proc


# --------------------------------------------------------------------------- --help


def test_help_subprocess(tmp_path):
    proc = run_cli("train", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: stnref train"), proc.stdout[:200]
    assert "--checkpoint-every" in proc.stdout and proc.stderr == ""


@pytest.mark.parametrize("command", [[], ["train"], ["evaluate"], ["demo"], ["experiment"],
                                     ["bench"], ["reference"], ["reference", "export"],
                                     ["reference", "check"]])
def test_help_works(capsys, command):
    proc = run_main(capsys, *command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(" ".join(["usage: stnref", *command])), proc.stdout[:200]
    assert proc.stderr == ""


def test_version(capsys):
    from stnref import __version__

    proc = run_main(capsys, "--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"stnref {__version__}"


# --------------------------------------------------------------------------- user errors


@pytest.mark.parametrize("args, fragment", [
    (["nonsense"], "invalid choice"),
    (["train", "--model", "resnet", "--out", "x"], "--model"),
    (["train", "--epochs", "-1", "--out", "x"], "--epochs"),
    (["train", "--epochs", "0", "--out", "x"], "--epochs"),
    (["train", "--epochs", "two", "--out", "x"], "--epochs"),
    (["train", "--batch-size", "0", "--out", "x"], "--batch-size"),
    (["train", "--lr", "nan", "--out", "x"], "--lr"),
    (["train", "--lr", "-0.1", "--out", "x"], "--lr"),
    (["train", "--seed", "-3", "--out", "x"], "--seed"),
    (["train", "--transform", "spiral", "--out", "x"], "--transform"),
    (["train", "--distortion", "blur", "--out", "x"], "--distortion"),
    (["train", "--on-nonfinite", "ignore", "--out", "x"], "--on-nonfinite"),
    (["train"], "--out"),
    (["train", "--out", "x", "--unknown-flag"], "--unknown-flag"),
    (["evaluate"], "RUN_DIR"),
    (["bench", "--rounds", "0"], "--rounds"),
    (["bench", "--dtype", "float16"], "--dtype"),
    (["demo", "--seed", "x"], "--seed"),
    (["experiment", "--models", "vgg", "--out", "x"], "--models"),
    (["experiment"], "--out"),
    (["reference"], "required"),
    (["reference", "check", "only-one"], "RESULTS"),
])
def test_bad_arguments(tmp_path, monkeypatch, capsys, args, fragment):
    monkeypatch.chdir(tmp_path)
    assert_user_error(run_main(capsys, *args), fragment)
    assert not (tmp_path / "x").exists()  # nothing created for a refused command


def test_bad_argument_subprocess(tmp_path):
    assert_user_error(run_cli("train", "--model", "resnet", "--out", "x", cwd=tmp_path), "--model")


def test_resume_without_checkpoint(tmp_path):
    proc = run_cli("train", *TINY, "--out", tmp_path / "empty", "--resume", cwd=tmp_path)
    assert_user_error(proc, "--resume", "no checkpoint")


def test_existing_run_without_resume(tmp_path, capsys, trained_run):
    run_dir, _ = trained_run
    before = (run_dir / CHECKPOINT).read_bytes()
    proc = run_main(capsys, "train", *TINY, "--out", run_dir)
    assert_user_error(proc, "--resume")
    assert (run_dir / CHECKPOINT).read_bytes() == before  # the run is left alone


def test_data_dir_missing(tmp_path, capsys):
    proc = run_main(capsys, "train", *TINY, "--data", tmp_path / "nowhere", "--out", tmp_path / "r")
    assert_user_error(proc, "nowhere")


def test_data_dir_without_files(tmp_path, capsys):
    (tmp_path / "mnist").mkdir()
    proc = run_main(capsys, "train", *TINY, "--data", tmp_path / "mnist", "--out", tmp_path / "r")
    assert_user_error(proc, "train-images-idx3-ubyte")


def test_data_dir_with_corrupt_file(tmp_path, capsys):
    from stnref.data import write_idx

    mnist = tmp_path / "mnist"
    mnist.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 16), ("t10k", 8)):
        write_idx(mnist / f"{prefix}-images-idx3-ubyte",
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(mnist / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))
    path = mnist / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])  # truncated payload
    proc = run_main(capsys, "train", "--train-size", "all", "--test-size", "all", "--data", mnist,
                    "--out", tmp_path / "r")
    assert_user_error(proc, "truncated")


def test_evaluate_missing_run(tmp_path, capsys):
    assert_user_error(run_main(capsys, "evaluate", tmp_path / "nothing"), "no checkpoint")


@pytest.mark.parametrize("content", [b"", b"garbage, not a zip", b"PK\x03\x04" + b"\0" * 40])
def test_evaluate_corrupt_checkpoint(tmp_path, capsys, content):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / CHECKPOINT).write_bytes(content)
    assert_user_error(run_main(capsys, "evaluate", run_dir), CHECKPOINT)


def test_evaluate_corrupt_checkpoint_subprocess(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / CHECKPOINT).write_bytes(b"garbage")
    assert_user_error(run_cli("evaluate", run_dir, cwd=tmp_path), CHECKPOINT)


def test_evaluate_truncated_checkpoint(tmp_path, capsys, trained_run):
    src, _ = trained_run
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    data = (src / CHECKPOINT).read_bytes()
    (run_dir / CHECKPOINT).write_bytes(data[: len(data) // 2])
    assert_user_error(run_main(capsys, "evaluate", run_dir), CHECKPOINT)


def test_reference_check_without_manifest(tmp_path, capsys):
    pytest.importorskip("stnref.reference")
    assert_user_error(run_main(capsys, "reference", "check", tmp_path, tmp_path), "manifest")


# --------------------------------------------------------------------------- smoke runs


def test_train_smoke(trained_run):
    run_dir, proc = trained_run
    assert "after 2 epochs" in proc.stdout
    metrics = json.loads((run_dir / METRICS).read_text())
    assert set(metrics) == {"config", "epochs"}
    assert set(metrics["config"]) == CONFIG_KEYS
    assert metrics["config"]["epochs"] == 2 and metrics["config"]["train_size"] == 128
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    for entry in metrics["epochs"]:
        assert set(entry) == EPOCH_KEYS
        assert all(isinstance(entry[k], (int, float)) and math.isfinite(entry[k]) for k in entry)
        assert 0 <= entry["train_error"] <= 100 and 0 <= entry["test_error"] <= 100
        assert entry["train_loss"] > 0 and entry["seconds"] > 0
    arrays, metadata = load_checkpoint(run_dir / CHECKPOINT)
    assert metadata["state"]["epoch"] == 2 and metadata["metrics"] == metrics["epochs"]
    assert any(k.startswith("model.") for k in arrays) and any(k.startswith("optim.") for k in arrays)
    config, model, _, state, _ = load_run(run_dir)
    assert config.epochs == 2 and state["epoch"] == 2
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, arrays[f"model.{name}"])
    assert not [p for p in os.listdir(run_dir) if p.endswith(".tmp")]


def test_diverging_training_exits_3(tmp_path):
    """A non-finite loss stops training: exit 3, one report line, the last good checkpoint kept."""
    run_dir = tmp_path / "run"
    proc = run_cli("train", "--model", "st-fcn", "--distortion", "none", "--train-size", "64",
                   "--test-size", "16", "--batch-size", "16", "--epochs", "2", "--lr", "1e30",
                   "--optimizer", "sgd", "--checkpoint-every", "1", "--out", run_dir, cwd=tmp_path)
    assert proc.returncode == EXIT_TRAINING, proc.stderr
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert re.match(r"stnref: training stopped: non-finite \w+ at epoch \d+, batch \d+", last), last
    _, model, _, state, _ = load_run(run_dir)
    assert all(np.isfinite(v).all() for v in model.state_dict().values())
    assert state["step"] >= 1


def test_evaluate_json(tmp_path, trained_run):
    run_dir, _ = trained_run
    out = tmp_path / "eval.json"
    proc = run_cli("evaluate", run_dir, "--json", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(out.read_text())
    assert payload["epoch"] == 2 and payload["test_size"] == 64
    assert payload["config"]["model"] == "st-fcn"
    # evaluate reproduces the last epoch's test error exactly (same data, same weights)
    last = json.loads((run_dir / METRICS).read_text())["epochs"][-1]
    assert payload["test_error"] == last["test_error"]
    assert f"test error {payload['test_error']:.2f}%" in proc.stdout


def test_resume_to_more_epochs(tmp_path, capsys, trained_run):
    src, _ = trained_run
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in (CHECKPOINT, METRICS):
        (run_dir / name).write_bytes((src / name).read_bytes())
    proc = run_main(capsys, "train", *TINY[:-4], "--epochs", "3", "--out", run_dir, "--resume")
    assert proc.returncode == 0, proc.stderr
    epochs = json.loads((run_dir / METRICS).read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]


def test_reference_export_and_check(tmp_path, capsys):
    pytest.importorskip("stnref.reference")
    golden = tmp_path / "golden"
    proc = run_cli("reference", "export", golden, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (golden / "manifest.json").is_file()
    copy = tmp_path / "copy"                 # the golden files as results: every case passes
    shutil.copytree(golden, copy)
    proc = run_cli("reference", "check", golden, copy, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert "cases passed" in proc.stdout.splitlines()[-1]
    results = tmp_path / "results"
    results.mkdir()  # no result files at all: every case fails, exit 1
    proc = run_main(capsys, "reference", "check", golden, results)
    assert proc.returncode == 1, proc.stderr
    assert "FAIL" in proc.stdout and proc.stderr == ""


def test_reference_diagnose(tmp_path, capsys):
    """stnref's own sampler matches (exit 0, JSON written); a half-up nearest does not (exit 1)."""
    out = tmp_path / "d.json"
    proc = run_main(capsys, "reference", "diagnose", "stnref:grid_sample", "--json", out)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert "verdict: matches PyTorch `grid_sample(mode='bilinear', padding_mode='zeros', " \
           "align_corners=False)`" in proc.stdout
    found = json.loads(out.read_text())
    assert found["matches_pytorch"] is True and found["differences"] == []
    assert found["kernel"] == "bilinear" and found["axis_order"] == "xy"
    (tmp_path / "halfup.py").write_text(
        "import numpy as np\n"
        "import stnref\n"
        "def fn(U, grid):\n"
        "    W, H = U.shape[3], U.shape[2]\n"
        "    ix = np.floor(((grid[..., 0] + 1) * W - 1) / 2 + 0.5)\n"
        "    iy = np.floor(((grid[..., 1] + 1) * H - 1) / 2 + 0.5)\n"
        "    g = np.stack([(2 * ix + 1) / W - 1, (2 * iy + 1) / H - 1], axis=-1)\n"
        "    return stnref.grid_sample(U, g, mode='nearest')\n")
    proc = run_cli("reference", "diagnose", "halfup:fn", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr
    assert "half up" in proc.stdout and "docs/conventions.md §4.2" in proc.stdout


@pytest.mark.parametrize("spec, fragment", [
    ("no_such_module_xyz:fn", "no_such_module_xyz"),
    ("stnref:no_such_function", "no_such_function"),
    ("stnref", "MODULE:FUNCTION"),
])
def test_reference_diagnose_bad_spec_is_one_line(tmp_path, capsys, spec, fragment):
    assert_user_error(run_main(capsys, "reference", "diagnose", spec), fragment)


def test_json_to_a_directory_is_one_line(tmp_path, capsys):
    proc = run_main(capsys, "reference", "diagnose", "stnref:grid_sample", "--json", tmp_path)
    assert_user_error(proc, "--json", "is a directory")


def test_bench_quick(tmp_path, monkeypatch, capsys):
    """``bench --quick --rounds 1 --dtype float32`` through ``cli.main`` on one tiny shape."""
    from stnref.app import bench

    monkeypatch.setattr(bench, "SHAPES", ((2, 1, 8, 8),))
    out = tmp_path / "bench.md"
    assert cli.main(["bench", "--quick", "--rounds", "1", "--dtype", "float32",
                     "--markdown", str(out)]) == 0
    report = out.read_text()
    assert report.startswith("# stnref benchmarks")
    assert "(2, 1, 8, 8)" in report and "float32" in report and "float64" not in report
    assert "(2, 1, 8, 8)" in capsys.readouterr().out
