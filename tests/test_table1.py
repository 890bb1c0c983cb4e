"""``stnref experiment --preset table1`` and what it rests on: each epoch's own draw of the
distortions (``redistort``) and held-out training digits for choosing settings (``validation``)."""

from __future__ import annotations

import importlib.util
import io
import json
import re

import numpy as np
import pytest
from test_cli import assert_user_error, run_main
from test_experiment_plan import write_mnist
from test_train import StopAfter

from stnref.app import table1
from stnref.app.experiment import PAPER_TABLE
from stnref.app.train import CHECKPOINT, Progress, TrainConfig, read_run, train
from stnref.checkpoint import load_checkpoint, save_checkpoint
from stnref.data import load_dataset
from stnref.data.dataset import _dataset, distort_epoch, load_digits
from stnref.data.digits import _digits

SMALL = dict(train_size=96, test_size=32, batch_size=32)


# ----------------------------------------------------------------------------- data


def test_held_out_digits_follow_the_training_digits_and_leave_them_unchanged():
    x, y, xv, yv = load_digits(None, 40, 24, seed=3, validation=True)
    whole, labels = _digits(64, (3, 1, 1), 28)            # the training stream of seed 3
    np.testing.assert_array_equal(np.concatenate([x, xv]), whole)
    np.testing.assert_array_equal(np.concatenate([y, yv]), labels)
    # the training images are those of a run without validation; the evaluation set is not the test set
    a = load_dataset("rts", None, 40, 24, seed=3, validation=True)
    b = load_dataset("rts", None, 40, 24, seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[2].shape == b[2].shape and not np.array_equal(a[2], b[2])


def test_validation_defaults_hold_out_ten_thousand_of_the_training_digits(tmp_path):
    mnist = write_mnist(tmp_path / "m", 30, 5)
    x, _, xv, _ = load_digits(mnist, None, 12, validation=True)
    assert (len(x), len(xv)) == (18, 12)
    with pytest.raises(ValueError, match=r"train_size \+ test_size=31 is more than the 30 training"):
        load_digits(mnist, 20, 11, validation=True)
    with pytest.raises(ValueError, match="leaves none to train on"):
        load_digits(mnist, None, 30, validation=True)


def test_each_epoch_draws_its_own_distortions_of_the_same_digits():
    digits = _digits(40, (0, 1, 1), 28)[0]
    first = distort_epoch(digits, "p", seed=0, epoch=1)
    np.testing.assert_array_equal(first, load_dataset("p", None, 40, 2, seed=0)[0])
    second = distort_epoch(digits, "p", seed=0, epoch=2)
    assert second.shape == first.shape and not np.array_equal(first, second)
    np.testing.assert_array_equal(second, distort_epoch(digits, "p", seed=0, epoch=2))


@pytest.mark.parametrize("distortion", ["r", "tc"])
def test_an_epoch_drawn_into_a_given_array_is_the_epoch(distortion):
    digits = _digits(40, (0, 1, 1), 28)[0]
    want = distort_epoch(digits, distortion, seed=0, epoch=3)
    out = distort_epoch(digits, distortion, seed=0, epoch=2)       # the previous epoch's
    got = distort_epoch(digits, distortion, seed=0, epoch=3, out=out)
    assert got is out
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("out, error, message", [
    (np.zeros((40, 1, 28, 28)), TypeError, "got float64 array"),
    ([[0.0]], TypeError, "got list"),
    (np.zeros((40, 1, 42, 42), np.float32), ValueError, "got shape (40, 1, 42, 42)"),
    (np.zeros((40, 1, 28, 56), np.float32)[..., ::2], ValueError, "not C-contiguous"),
])
def test_an_array_an_epoch_cannot_be_drawn_into_is_refused(out, error, message):
    digits = _digits(40, (0, 1, 1), 28)[0]
    with pytest.raises(error, match=r"distort_epoch\(\): expected out .*shape \(40, 1, 28, 28\)"
                                    rf".*{re.escape(message)}"):
        distort_epoch(digits, "r", epoch=2, out=out)
    frozen = np.zeros((40, 1, 28, 28), np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        distort_epoch(digits, "r", epoch=2, out=frozen)
    with pytest.raises(ValueError, match="out shares memory with images"):
        distort_epoch(digits.reshape(40, 1, 28, 28)[:, 0], "r", epoch=2,
                      out=digits.reshape(40, 1, 28, 28))


@pytest.mark.parametrize("validation", [False, True])
def test_the_data_of_a_run_come_with_the_digits_later_epochs_are_drawn_from(validation):
    """``train`` takes both from one ``_dataset`` call (the digits are generated once)."""
    data, digits = _dataset("rts", None, 40, 8, 3, validation)
    for got, want in zip(data, load_dataset("rts", None, 40, 8, seed=3, validation=validation)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(digits, load_digits(None, 40, 8, 3, validation)[0])
    np.testing.assert_array_equal(data[0], distort_epoch(digits, "rts", seed=3, epoch=1))


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("stop_after", [2, 5])
def test_a_redistorted_run_resumes_bit_identical(tmp_path, stop_after):
    config = dict(model="fcn", distortion="r", epochs=2, seed=1, checkpoint_every=1,
                  redistort=True, **SMALL)
    whole = train(TrainConfig(**config), str(tmp_path / "whole"), progress=Progress(io.StringIO()))
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**config), str(tmp_path / "part"), progress=StopAfter(stop_after))
    train(TrainConfig(**config), str(tmp_path / "part"), resume=True, progress=Progress(io.StringIO()))
    a, b = (load_checkpoint(tmp_path / d / CHECKPOINT)[0] for d in ("whole", "part"))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # the second epoch trained on other images than a run without redistort
    fixed = train(TrainConfig(**{**config, "redistort": False}), str(tmp_path / "fixed"),
                  progress=Progress(io.StringIO()))
    assert whole["epochs"][0]["train_loss"] == fixed["epochs"][0]["train_loss"]
    assert whole["epochs"][1]["train_loss"] != fixed["epochs"][1]["train_loss"]


def test_redistort_refuses_given_data(tmp_path):
    data = load_dataset("r", None, 96, 32)
    with pytest.raises(ValueError, match="redistort draws each epoch.s distortions itself"):
        train(TrainConfig(model="fcn", distortion="r", epochs=1, redistort=True, **SMALL),
              str(tmp_path), data=data, progress=Progress(io.StringIO()))


@pytest.mark.parametrize("field", ["redistort", "validation"])
def test_the_new_fields_are_booleans(field):
    with pytest.raises(TypeError, match=f"expected {field} to be True or False, got 1"):
        TrainConfig(**{field: 1}).validated()


def test_a_run_stored_before_the_new_fields_reads_as_trained_without_them(tmp_path):
    train(TrainConfig(model="fcn", distortion="r", epochs=1, **SMALL), str(tmp_path),
          progress=Progress(io.StringIO()))
    path = tmp_path / CHECKPOINT
    arrays, meta = load_checkpoint(path)
    for key in ("redistort", "validation"):
        del meta["config"][key]
    save_checkpoint(path, arrays, meta)
    config = read_run(str(tmp_path))[0]
    assert (config.redistort, config.validation) == (False, False)


def test_cli_validation_run_says_validation_and_resume_keeps_the_options(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--model", "fcn", "--distortion", "e", "--train-size", "64", "--test-size", "32"]
    proc = run_main(capsys, "train", *common, "--epochs", "1", "--redistort", "--validation",
                    "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "validation error" in proc.stdout and "test error" not in proc.stdout
    stored = json.loads((out / "metrics.json").read_text())["config"]
    assert stored["redistort"] is True and stored["validation"] is True
    proc = run_main(capsys, "train", "--epochs", "2", "--resume", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert read_run(str(out))[0].redistort is True


# ----------------------------------------------------------------------------- the preset


def test_the_preset_is_the_paper_s_grid():
    out = []
    for d in table1.DISTORTIONS:
        for model in table1.MODELS:
            for t in (table1.TRANSFORMS if model.startswith("st-") else (None,)):
                if table1.in_table(d, model, t):
                    out.append((d, model, t))
    assert len(out) == 4 * 8 + 4
    # every cell of the grid has a paper number, and the paper has no other cell
    assert {(m, t, d) for d, m, t in out} == {(m, t, d) for (m, t), row in PAPER_TABLE.items()
                                              for d in row}


def test_options_given_replace_the_preset_in_every_cell():
    settings = table1.cell_settings({"epochs": 2})
    assert settings("tc", "st-fcn", "tps") is None
    cell = settings("r", "cnn", None)
    assert cell["epochs"] == 2 and cell["redistort"] is True and cell["schedule"] == "cosine"
    assert table1.cell_settings({})("r", "fcn", None)["epochs"] == table1.EPOCHS["fcn"]["r"]


def test_preset_dry_run_plans_every_cell_with_its_epochs(tmp_path, capsys):
    out = tmp_path / "t1"
    proc = run_main(capsys, "experiment", "--preset", "table1", "--out", out, "--dry-run",
                    "--jobs", "1", "--train-size", "64", "--test-size", "32")
    assert proc.returncode == 0, proc.stderr
    lines = [line.split() for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert len(lines) == 36 and not out.exists()
    assert sum(line[1].endswith(("tc/fcn-seed0", "tc/cnn-seed0", "tc/st-fcn-affine-seed0",
                                 "tc/st-cnn-affine-seed0")) for line in lines) == 4
    epochs = sorted({e for row in table1.EPOCHS.values() for e in row.values()})
    assert f"{epochs[0]}-{epochs[-1]} epochs (per cell)" in proc.stdout


def test_preset_writes_the_side_by_side_table_and_resumes(tmp_path, capsys):
    out = tmp_path / "t1"
    args = ["experiment", "--preset", "table1", "--models", "fcn", "st-fcn", "--transforms",
            "affine", "--distortions", "r", "--seeds", "2", "--epochs", "1", "--train-size", "64",
            "--test-size", "32", "--jobs", "1", "--out", out]
    proc = run_main(capsys, *args)
    assert proc.returncode == 0, proc.stderr
    text = (out / "table1.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| FCN") or line.startswith("| ST-FCN")]
    assert len(rows) == 2
    cells = json.loads((out / "results.json").read_text())["cells"]
    errors = cells["fcn|r"]["errors"]
    mean, sd = np.mean(errors), np.std(errors, ddof=1)
    assert rows[0] == f"| FCN | R | {mean:.2f} ± {sd:.2f} | 2.1 | {mean / 2.1:.2f} | " \
                      f"{np.mean(cells['fcn|r']['seconds']) / 60:.1f} |"
    if importlib.util.find_spec("matplotlib") is None:
        assert "figure skipped" in proc.stdout and not (out / "table1.png").exists()
    else:
        assert (out / "table1.png").stat().st_size > 0
    stored = read_run(str(out / "r" / "st-fcn-affine-seed1"))[0]
    assert (stored.epochs, stored.redistort, stored.schedule, stored.seed) == (1, True, "cosine:1", 1)
    # run again: every cell is done, nothing trains, the table is rewritten alike
    proc = run_main(capsys, *args)
    assert proc.returncode == 0 and "4 done" in proc.stdout
    assert (out / "table1.md").read_text() == text


def test_preset_refuses_a_cell_of_another_config(tmp_path, capsys):
    out = tmp_path / "t1"
    small = ["--models", "fcn", "--distortions", "r", "--train-size", "64", "--test-size", "32",
             "--jobs", "1", "--out", out]
    assert run_main(capsys, "experiment", "--epochs", "1", *small).returncode == 0
    proc = run_main(capsys, "experiment", "--preset", "table1", "--epochs", "1", *small)
    assert_user_error(proc, "r/fcn-seed0 holds a run of another config", "redistort: stored False")


def test_preset_validation_evaluates_on_held_out_digits(tmp_path, capsys):
    out = tmp_path / "t1"
    proc = run_main(capsys, "experiment", "--preset", "table1", "--models", "fcn", "--distortions",
                    "p", "--epochs", "1", "--train-size", "64", "--test-size", "32",
                    "--validation", "--jobs", "1", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "Validation error on held-out training digits" in (out / "table1.md").read_text()
    assert "p fcn seed 0: validation error" in proc.stdout and ": test error" not in proc.stdout
    assert read_run(str(out / "p" / "fcn-seed0"))[0].validation is True
