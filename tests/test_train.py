"""Training loop, exact resume, experiment grid and demo, through the Python API."""

import io
import json
import os

import numpy as np
import pytest

from stnref.app import cli, demo, experiment
from stnref.checkpoint import load_checkpoint, save_checkpoint
from stnref.data import load_dataset
from stnref.nn import Batches
from stnref.app.train import (
    CHECKPOINT,
    METRICS,
    Progress,
    TrainConfig,
    epoch_order,
    evaluate,
    load_run,
    read_run,
    train,
)

TINY = dict(train_size=256, test_size=128, batch_size=32)


def quiet():
    return Progress(io.StringIO())


class StopAfter(Progress):
    """Progress that interrupts training after ``n`` steps (a crash at a known moment)."""

    def __init__(self, n):
        super().__init__(io.StringIO())
        self.n = n

    def update(self, text, force=False):
        self.n -= 1
        if self.n == 0:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def easy_data():
    return load_dataset("none", None, 1024, 256, seed=3)


@pytest.fixture(scope="module")
def tiny_data(easy_data):
    """The first TINY samples of easy_data: a config states the sizes of the data it runs on."""
    x, y, xt, yt = easy_data
    return x[:TINY["train_size"]], y[:TINY["train_size"]], xt[:TINY["test_size"]], yt[:TINY["test_size"]]


def test_error_falls_on_undistorted_digits(tmp_path, easy_data):
    config = TrainConfig(model="fcn", distortion="none", epochs=3, train_size=1024,
                         test_size=256, seed=3)
    metrics = train(config, str(tmp_path), data=easy_data, progress=quiet())["epochs"]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    assert metrics[-1]["test_error"] < 30.0  # chance is 90 %


def test_metrics_and_checkpoint_are_written(tmp_path, tiny_data):
    config = TrainConfig(model="st-fcn", distortion="none", epochs=1, seed=1, **TINY)
    train(config, str(tmp_path), data=tiny_data, progress=quiet())
    with open(tmp_path / METRICS, encoding="utf-8") as f:
        metrics = json.load(f)
    assert metrics["config"]["model"] == "st-fcn"
    (epoch,) = metrics["epochs"]
    assert set(epoch) == {"epoch", "train_loss", "train_error", "test_error", "seconds",
                          "samples_per_s"}
    arrays, meta = load_checkpoint(tmp_path / CHECKPOINT)
    assert meta["state"]["epoch"] == 1 and any(k.startswith("optim.") for k in arrays)
    _, model, _, _, _ = load_run(str(tmp_path))
    error, _ = evaluate(model, tiny_data[2], tiny_data[3])  # the data given to train()
    assert error == pytest.approx(epoch["test_error"])


@pytest.mark.parametrize("stop_after", [3, 8, 13])
def test_resume_from_any_interruption_is_bit_identical(tmp_path, tiny_data, stop_after):
    # 8 steps per epoch, checkpoints every 2 steps: interrupt mid-epoch, between
    # checkpoints and in the second epoch, then resume to the end.
    config = dict(model="st-fcn", distortion="none", epochs=2, seed=5, checkpoint_every=2, **TINY)
    whole = tmp_path / "whole"
    train(TrainConfig(**config), str(whole), data=tiny_data, progress=quiet())
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**config), str(part), data=tiny_data, progress=StopAfter(stop_after))
    train(TrainConfig(**config), str(part), resume=True, data=tiny_data, progress=quiet())
    a, meta_a = load_checkpoint(whole / CHECKPOINT)
    b, meta_b = load_checkpoint(part / CHECKPOINT)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    strip = lambda ms: [{k: v for k, v in m.items() if k not in ("seconds", "samples_per_s")}
                        for m in ms]
    assert strip(meta_a["metrics"]) == strip(meta_b["metrics"])


def test_resume_extends_to_the_new_total(tmp_path, tiny_data):
    config = TrainConfig(model="fcn", distortion="none", epochs=1, seed=2, **TINY)
    train(config, str(tmp_path), data=tiny_data, progress=quiet())
    config.epochs = 3
    metrics = train(config, str(tmp_path), resume=True, data=tiny_data, progress=quiet())
    assert [m["epoch"] for m in metrics["epochs"]] == [1, 2, 3]


def test_same_seed_same_weights_other_seed_different(tmp_path, tiny_data):
    def weights(seed, name):
        config = TrainConfig(model="fcn", distortion="none", epochs=1, seed=seed, **TINY)
        train(config, str(tmp_path / name), data=tiny_data, progress=quiet())
        return load_checkpoint(tmp_path / name / CHECKPOINT)[0]

    a, b, c = weights(0, "a"), weights(0, "b"), weights(1, "c")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_epoch_order_depends_only_on_seed_and_epoch():
    np.testing.assert_array_equal(epoch_order(4, 2, 100), epoch_order(4, 2, 100))
    assert not np.array_equal(epoch_order(4, 2, 100), epoch_order(4, 3, 100))
    assert sorted(epoch_order(4, 2, 100)) == list(range(100))
    # the order of the epoch's Batches, whose generator is seeded with (seed, 1, epoch)
    batches = Batches(np.zeros((100, 1)), batch_size=7, rng=np.random.default_rng([4, 1, 2]))
    np.testing.assert_array_equal(batches.order, epoch_order(4, 2, 100))


SCHEDULED = "warmup:0.5+cosine"


def test_resume_with_a_schedule_is_bit_identical(tmp_path, tiny_data):
    # 8 steps per epoch, a checkpoint every 3: interrupted at step 4 of epoch 2, resumed from
    # its step 3, after the warm-up and mid-cosine
    config = dict(model="st-fcn", distortion="none", epochs=2, seed=6, checkpoint_every=3,
                  schedule=SCHEDULED, **TINY)
    whole, part = tmp_path / "whole", tmp_path / "part"
    data = tiny_data
    train(TrainConfig(**config), str(whole), data=data, progress=quiet())
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**config), str(part), data=data, progress=StopAfter(12))
    # the schedule comes from the run's checkpoint, whatever the config given to the resume
    state = load_run(str(part))[3]
    assert (state["epoch"], state["step"]) == (1, 3)
    other = TrainConfig(**{**config, "schedule": "constant"})
    train(other, str(part), resume=True, data=data, progress=quiet())
    a, _ = load_checkpoint(whole / CHECKPOINT)
    b, meta_b = load_checkpoint(part / CHECKPOINT)
    assert meta_b["config"]["schedule"] == SCHEDULED + ":2"           # the span pinned
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_the_schedule_sets_each_steps_rate(tmp_path, tiny_data):
    def run(schedule):
        config = TrainConfig(model="fcn", distortion="none", epochs=2, seed=2, schedule=schedule,
                             **TINY)
        train(config, str(tmp_path / schedule.replace(":", "_")), data=tiny_data, progress=quiet())
        return load_run(str(tmp_path / schedule.replace(":", "_")))

    config, constant, optimizer, _, _ = run("constant")
    assert optimizer.lr == config.lr
    config, halved, optimizer, _, _ = run("step:1:0.5")
    # after the last step (15 of 0-15, in epoch 2) the scheduler set the rate of step 16,
    # the first of an epoch 3: PyTorch's order, optimizer.step() then scheduler.step()
    assert optimizer.lr == config.lr * 0.25
    assert config.schedule == "step:1:0.5"
    assert not all(np.array_equal(constant.params[k], halved.params[k]) for k in halved.params)


def test_a_run_from_before_schedules_resumes_at_a_constant_rate(tmp_path, tiny_data):
    config = TrainConfig(model="fcn", distortion="none", epochs=1, seed=2, **TINY)
    train(config, str(tmp_path), data=tiny_data, progress=quiet())
    arrays, metadata = load_checkpoint(tmp_path / CHECKPOINT)
    del metadata["config"]["schedule"]              # the checkpoint layout of stnref 0.1.0
    metadata["format"] = 1
    save_checkpoint(tmp_path / CHECKPOINT, arrays, metadata)
    loaded, _, _, _, _ = load_run(str(tmp_path))
    assert loaded.schedule == "constant"
    metadata["config"].pop("seed")                  # any other missing key is still refused
    save_checkpoint(tmp_path / CHECKPOINT, arrays, metadata)
    with pytest.raises(ValueError, match="config keys"):
        load_run(str(tmp_path))


def test_cli_schedule_option(tmp_path, capsys):
    args = ["train", "--model", "fcn", "--distortion", "none", "--train-size", "64",
            "--test-size", "32", "--epochs", "1", "--batch-size", "32"]
    assert cli.main([*args, "--schedule", "warmup:1+cosine", "--out", str(tmp_path / "a")]) == 0
    with open(tmp_path / "a" / METRICS, encoding="utf-8") as f:
        assert json.load(f)["config"]["schedule"] == "warmup:1+cosine:1"   # the span pinned
    assert cli.main([*args, "--out", str(tmp_path / "b")]) == 0
    with open(tmp_path / "b" / METRICS, encoding="utf-8") as f:
        assert json.load(f)["config"]["schedule"] == "constant"      # the default
    capsys.readouterr()
    assert cli.main([*args, "--schedule", "linear", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stnref: error: TrainConfig: invalid schedule 'linear'") and "\n" not in err.strip()
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("field, value, match", [
    ("model", "resnet", "model"),
    ("transform", "spline", "transform"),
    ("distortion", "x", "distortion"),
    ("epochs", 0, "epochs"),
    ("batch_size", 1.5, "batch_size"),
    ("lr", 0.0, "lr"),
    ("lr", float("nan"), "lr"),
    ("loc_lr_scale", -1.0, "loc_lr_scale"),
    ("optimizer", "rmsprop", "optimizer"),
    ("on_nonfinite", "ignore", "on_nonfinite"),
    ("schedule", "cosine:0", "schedule"),
    ("schedule", None, "schedule"),
    ("data", "/no/such/dir", "data"),
])
def test_config_rejects_bad_values(field, value, match):
    config = TrainConfig(**{field: value})
    with pytest.raises((ValueError, TypeError), match=match):
        config.validated()


def test_load_run_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint"):
        load_run(str(tmp_path))


def test_progress_lines_when_not_a_terminal():
    stream = io.StringIO()
    progress = Progress(stream, period=0.0)
    progress.update("step 1")
    progress.update("step 2")
    progress.done("finished")
    assert stream.getvalue().splitlines() == ["step 1", "step 2", "finished"]


def test_experiment_grid_runs_and_skips_finished_cells(tmp_path):
    grid = dict(models=["fcn", "st-fcn"], transforms=["affine", "tps"], distortions=["r"],
                seeds=1, epochs=1, train_size=64, test_size=32, data=None, out=str(tmp_path))
    lines = []
    payload = experiment.run_experiment(**grid, jobs=2, print_fn=lines.append)
    assert set(payload["cells"]) == {"fcn|r", "st-fcn-affine|r", "st-fcn-tps|r"}
    table = (tmp_path / "results.md").read_text()
    assert "| ST-FCN tps |" in table and "(2.1)" in table  # the paper's FCN number on R
    assert lines[0].startswith("plan: 3 cells") and "3 new" in lines[0]
    stamp = os.path.getmtime(tmp_path / "r" / "fcn-seed0" / CHECKPOINT)
    lines.clear()
    experiment.run_experiment(**grid, jobs=1, print_fn=lines.append)
    assert os.path.getmtime(tmp_path / "r" / "fcn-seed0" / CHECKPOINT) == stamp
    assert "3 done" in lines[0]


def test_experiment_rows():
    assert experiment.cells(["fcn", "st-cnn"], ["affine", "tps"]) == [
        ("fcn", None), ("st-cnn", "affine"), ("st-cnn", "tps")]


def test_demo_trains_both_models_and_reports(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "DEMO_TRAIN", 128)
    monkeypatch.setattr(demo, "DEMO_TEST", 64)
    monkeypatch.setattr(demo, "DEMO_EPOCHS", 1)
    monkeypatch.setattr(demo, "train", lambda *a, **k: _quiet_train(*a, **k))
    lines = []
    results = demo.run_demo(str(tmp_path), print_fn=lines.append)
    assert set(results) == {"fcn", "st-fcn"}
    text = "\n".join(lines)
    assert "fcn" in text and "st-fcn" in text
    assert ("st-fcn_transform.png" in text) or ("pip install" in text)


def _quiet_train(*args, **kwargs):
    kwargs["progress"] = quiet()
    return train(*args, **kwargs)


def test_skipped_steps_are_left_out_of_the_epoch_means(tmp_path, tiny_data):
    x, y, xt, yt = tiny_data
    x = x[:256].copy()
    x[5] = np.nan  # one poisoned sample: its batch is skipped
    config = TrainConfig(model="fcn", distortion="none", epochs=1, on_nonfinite="skip", seed=4,
                         **TINY)
    (epoch,) = train(config, str(tmp_path), data=(x, y[:256], xt, yt), progress=quiet())["epochs"]
    _, meta = load_checkpoint(tmp_path / CHECKPOINT)
    assert len(meta["state"]["skipped"]) == 1
    assert np.isfinite(epoch["train_loss"]) and 0 < epoch["train_loss"] < 3
    assert 0 <= epoch["train_error"] <= 100


def test_an_epoch_whose_every_step_was_skipped_reports_no_training_loss(tmp_path, tiny_data):
    """Not a loss of 0 and an error of 0 %: nothing trained, and the run says so."""
    x, y, xt, yt = tiny_data
    x = np.full_like(x[:64], np.nan)                           # every batch is poisoned
    config = TrainConfig(model="fcn", distortion="none", epochs=2, on_nonfinite="skip", seed=4,
                         **{**TINY, "train_size": 64})
    stream = io.StringIO()
    epochs = train(config, str(tmp_path), data=(x, y[:64], xt, yt), progress=Progress(stream))["epochs"]
    assert [(e["train_loss"], e["train_error"]) for e in epochs] == [(None, None)] * 2
    steps = -(-64 // config.batch_size)
    assert "no step trained, test error" in stream.getvalue()
    assert f"{steps} of {steps} steps skipped (non-finite)" in stream.getvalue()
    assert read_run(str(tmp_path))[2] == epochs                # a valid run, read back as written
