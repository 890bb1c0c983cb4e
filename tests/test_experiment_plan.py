"""``stnref experiment``'s plan refuses, before anything runs, what its cells would refuse.

A dry run and a real run are refused alike, in one line naming the option: a value given
twice, transforms without an ST model, a grid over the cell limit, sizes over the element
budget or under a distortion's minimum, data the cells could not load, an ``--out`` that is
a file.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os

import numpy as np
import pytest
from test_cli import assert_user_error, run_main

from stnref.app import experiment
from stnref.app.train import Progress, train
from stnref.checkpoint import load_checkpoint, save_checkpoint
from stnref.data import write_idx

SMALL = ["--epochs", "1", "--train-size", "48", "--test-size", "16", "--jobs", "1"]


def write_mnist(root, n_train, n_test, side=28):
    """The four MNIST files in ``root`` with ``n_train`` and ``n_test`` images of ``side``."""
    root.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, side, side), np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n, np.uint8))
    return root


@pytest.mark.parametrize("dry_run", [True, False])
@pytest.mark.parametrize("grid, refusal", [
    (["--models", "fcn", "fcn", "--distortions", "r"], ("--models fcn fcn", "fcn is given twice")),
    (["--models", "st-fcn", "--transforms", "affine", "affine", "--distortions", "r"],
     ("--transforms affine affine", "affine is given twice")),
    (["--models", "fcn", "--distortions", "r", "r"], ("--distortions r r", "r is given twice")),
])
def test_a_value_given_twice_is_refused(tmp_path, capsys, grid, refusal, dry_run):
    out = tmp_path / "exp"
    proc = run_main(capsys, "experiment", *grid, *SMALL, "--out", out, *["--dry-run"] * dry_run)
    assert_user_error(proc, *refusal)
    assert not out.exists()


def test_distinct_values_each_train_one_cell(tmp_path, capsys):
    out = tmp_path / "exp"
    proc = run_main(capsys, "experiment", "--models", "fcn", "cnn", "--distortions", "r",
                    *SMALL, "--out", out)
    assert proc.returncode == 0, proc.stderr
    cells = json.loads((out / "results.json").read_text())["cells"]
    assert {k: len(v["errors"]) for k, v in cells.items()} == {"fcn|r": 1, "cnn|r": 1}


def test_transforms_without_an_st_model_are_refused(tmp_path, capsys):
    proc = run_main(capsys, "experiment", "--models", "fcn", "cnn", "--transforms", "tps",
                    "--distortions", "r", *SMALL, "--out", tmp_path / "exp", "--dry-run")
    assert_user_error(proc, "--transforms tps", "no ST model in --models fcn cnn")


def test_default_transforms_are_the_tables_and_need_no_st_model(tmp_path, capsys):
    proc = run_main(capsys, "experiment", "--models", "fcn", "--distortions", "r", *SMALL,
                    "--out", tmp_path / "a", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    proc = run_main(capsys, "experiment", "--models", "st-fcn", "--distortions", "r", *SMALL,
                    "--out", tmp_path / "b", "--dry-run")
    assert proc.stdout.startswith("plan: 3 cells"), proc.stdout
    for transform in experiment.TABLE_TRANSFORMS:
        assert f"st-fcn-{transform}-seed0" in proc.stdout


@pytest.mark.parametrize("dry_run", [True, False])
@pytest.mark.parametrize("sizes, refusal", [
    (["--distortions", "tc", "--train-size", "1", "--test-size", "1"],
     ("--distortions tc", "'tc' needs at least 2 samples per split")),
    (["--distortions", "r", "--train-size", "1000000000", "--test-size", "16"],
     ("--train-size 1000000000", "over the budget")),
    (["--distortions", "rts", "--train-size", "48", "--test-size", "2000000"],
     ("--test-size 2000000", "over the budget")),
])
def test_the_plan_refuses_the_sizes_a_cell_would(tmp_path, capsys, sizes, refusal, dry_run):
    out = tmp_path / "exp"
    proc = run_main(capsys, "experiment", "--models", "fcn", "--epochs", "1", "--jobs", "1",
                    *sizes, "--out", out, *["--dry-run"] * dry_run)
    assert_user_error(proc, *refusal)
    assert proc.stdout == "" and not out.exists()


def test_the_plan_refuses_data_a_cell_could_not_load(tmp_path, capsys):
    small = write_mnist(tmp_path / "small", 48, 1)       # 'all' test images: one, under tc's two
    proc = run_main(capsys, "experiment", "--models", "fcn", "--distortions", "tc", "--epochs", "1",
                    "--train-size", "all", "--test-size", "all", "--data", small,
                    "--out", tmp_path / "a", "--dry-run")
    assert_user_error(proc, "--test-size 1", "'tc' needs at least 2 samples per split")
    odd = write_mnist(tmp_path / "odd", 48, 16, side=20)   # labels fine, images not 28x28
    proc = run_main(capsys, "experiment", "--models", "fcn", "--distortions", "r", *SMALL,
                    "--data", odd, "--out", tmp_path / "b", "--dry-run")
    assert_user_error(proc, "--distortions r", "expected 28x28 images")


def test_a_grid_over_the_cell_limit_is_refused_without_building_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(experiment, "Cell", lambda *a: pytest.fail("a cell was built"))
    proc = run_main(capsys, "experiment", "--models", "fcn", "st-fcn", "--distortions", "r", "e",
                    *SMALL, "--seeds", "1000000000", "--out", tmp_path / "exp", "--dry-run")
    assert_user_error(proc, "--seeds 1000000000", "8000000000 cells", f"limit of {experiment.MAX_CELLS}",
                      f"at most {experiment.MAX_CELLS // 8} seeds")


def test_an_out_that_is_a_file_is_refused_before_planning(tmp_path, capsys):
    path = tmp_path / "results"
    path.write_text("not a directory")
    proc = run_main(capsys, "experiment", "--models", "fcn", "--distortions", "r", *SMALL,
                    "--out", path)
    assert_user_error(proc, f"--out {path}: a file, not a directory")
    assert proc.stdout == ""


@pytest.mark.parametrize("option", ["--out", "--data"])
def test_an_empty_path_is_refused(tmp_path, capsys, monkeypatch, option):
    monkeypatch.chdir(tmp_path)
    given = {"--out": "exp", "--data": None, option: ""}
    paths = [a for flag, value in given.items() if value is not None for a in (flag, value)]
    proc = run_main(capsys, "experiment", "--models", "fcn", "--distortions", "r", *SMALL, *paths,
                    "--dry-run")
    assert_user_error(proc, option, "''")
    assert proc.stdout == ""


def test_a_cell_path_that_is_a_file_is_refused_in_the_plan(tmp_path, capsys):
    out = tmp_path / "exp"
    (out / "r").mkdir(parents=True)
    (out / "r" / "fcn-seed0").write_text("not a run")
    proc = run_main(capsys, "experiment", "--models", "fcn", "--distortions", "r", *SMALL,
                    "--out", out, "--dry-run")
    assert_user_error(proc, "fcn-seed0 is a file, not a cell's run directory")


def test_a_cell_set_to_more_epochs_is_never_shortened(tmp_path, capsys):
    """As stnref train --resume: a cell stored with 3 epochs, 1 trained, is not re-set to 2."""
    out = tmp_path / "exp"
    (cell,) = experiment.plan(["fcn"], None, ["r"], 1, 3, 48, 16, None, str(out))
    train(dataclasses.replace(cell.config, epochs=1), cell.run_dir, progress=Progress(io.StringIO()))
    path = os.path.join(cell.run_dir, "checkpoint.npz")
    arrays, meta = load_checkpoint(path)
    meta["config"]["epochs"] = 3                     # as a 3-epoch run interrupted after epoch 1
    save_checkpoint(path, arrays, meta)
    proc = run_main(capsys, "experiment", "--models", "fcn", "--distortions", "r", "--epochs", "2",
                    *SMALL[2:], "--out", out)
    assert_user_error(proc, "epochs: stored 3 (1 trained), asked 2")


def test_a_cell_resumed_with_another_on_nonfinite_still_counts_as_the_cell(tmp_path, capsys):
    """stnref experiment has no --on-nonfinite: a cell whose run changed it is not another config."""
    out = tmp_path / "exp"
    assert run_main(capsys, "experiment", "--models", "fcn", "--distortions", "r", *SMALL,
                    "--out", out).returncode == 0
    cell = out / "r" / "fcn-seed0"
    assert run_main(capsys, "train", "--resume", "--out", cell, "--on-nonfinite", "skip",
                    "--epochs", "2").returncode == 0
    proc = run_main(capsys, "experiment", "--models", "fcn", "--distortions", "r", "--epochs", "2",
                    *SMALL[2:], "--out", out)
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- the order cells run in


def _planned(tmp_path, models, distortions, epochs=None, transforms=None):
    settings = None if epochs is None else (lambda d, m, t: {"epochs": epochs[m, d]})
    return experiment.plan(models, transforms, distortions, 1, 2, 64, 32, None, str(tmp_path / "e"),
                           settings)


def test_the_longest_cells_run_first(tmp_path):
    epochs = {("fcn", "r"): 48, ("fcn", "tc"): 4, ("st-fcn", "r"): 8, ("st-fcn", "tc"): 2}
    grid = _planned(tmp_path, ("fcn", "st-fcn"), ("r", "tc"), epochs, ("affine",))
    order = [(c.distortion, c.name) for c in experiment.run_order(grid)]
    # cost: epochs x pixels (784 or 3600) x weight (1, ST 2): 37632, 14400, 12544, 14400
    assert order == [("r", "fcn"), ("tc", "fcn"), ("tc", "st-fcn-affine"), ("r", "st-fcn-affine")]
    assert [c.name for c in grid] == ["fcn", "st-fcn-affine"] * 2   # the grid itself unchanged


def test_the_order_counts_only_the_epochs_left(tmp_path):
    grid = _planned(tmp_path, ("fcn",), ("r", "p"))
    assert [c.distortion for c in experiment.run_order(grid)] == ["r", "p"]   # a tie: grid order
    grid[0].done_epochs = 1
    assert [c.distortion for c in experiment.run_order(grid)] == ["p", "r"]


def test_the_estimate_places_the_cells_in_the_order_given(tmp_path, monkeypatch):
    rates = {"r": 1.0, "p": 2.0, "e": 3.0}
    monkeypatch.setattr(experiment, "step_seconds", lambda config: rates[config.distortion])
    grid = _planned(tmp_path, ("fcn",), ("r", "p", "e"))   # 64 samples of 64: 1 step + 1/6 eval
    per_cell = {c.distortion: 2 * (1 + experiment.EVAL_SHARE * 32 / 64) * rates[c.distortion]
                for c in grid}
    # two processes: r and p start; r ends first and e follows it
    assert experiment.estimate_seconds(grid, 2) == pytest.approx(per_cell["r"] + per_cell["e"])
    # longest first: e and p start, r follows p
    order = sorted(grid, key=lambda c: -rates[c.distortion])
    assert experiment.estimate_seconds(order, 2) == pytest.approx(max(per_cell["e"], per_cell["p"] + per_cell["r"]))
