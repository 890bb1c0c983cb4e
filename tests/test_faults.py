"""Faults during training: SIGKILL at random moments, non-finite data, damaged checkpoints.

(a) ``python -m stnref train`` is killed with SIGKILL at seeded random moments and
    while a checkpoint is being written; after every kill ``checkpoint.npz`` (if
    any) must load, and ``--resume`` must end bit-identical (model and optimiser
    arrays, metrics without timings) to an uninterrupted run with the same seed.
(b) NaN in the data stops training with ``TrainingError`` naming epoch and batch and
    keeps the last good checkpoint; ``on_nonfinite="skip"`` skips and records the step.
(c) ``load_run`` rejects checkpoints with unknown, missing or mis-shaped keys, and
    truncated or garbage files, with a ValueError.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from stnref.checkpoint import load_checkpoint, save_checkpoint
from stnref.app.train import (
    CHECKPOINT,
    METRICS,
    Progress,
    TrainConfig,
    TrainingError,
    epoch_order,
    load_run,
    train,
)

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

# The brief's fast configuration: 8 steps per epoch, a checkpoint every 2 steps.
TRAIN_ARGS = ["train", "--model", "st-fcn", "--train-size", "256", "--test-size", "64",
              "--batch-size", "32", "--epochs", "3", "--checkpoint-every", "2", "--seed", "7"]
TIMINGS = ("seconds", "samples_per_s")   # metric fields that legitimately differ between runs
STATE_TIMINGS = ("seconds",)
TMP_CHECKPOINT = re.compile(re.escape(f".{CHECKPOINT}.") + r".*\.tmp$")
POLL_SECONDS = 0.002
RUN_TIMEOUT = 180.0
KILL_SEED = 20151205            # seeds the kill moments
RANDOM_KILLS = 6                # chain A: kills at random moments
SAVE_KILLS = 4                  # chain B: kills while checkpoint.npz is being written
EPOCHS, STEPS_PER_EPOCH, CHECKPOINT_EVERY = 3, 8, 2   # as in TRAIN_ARGS (256 / 32 = 8 steps)
STARTUP_KILL_SHARE = 0.25       # share of random kills aimed at start-up rather than training
STARTUP_SECONDS = 0.3           # start-up kills fall uniformly in the first 0.3 s of a life
SAVES_KEPT_IN_RESERVE = 2       # >= 4 steps and an evaluation remain after the chosen save
INTERRUPTS = 2                  # Ctrl-C, each after the 1st or 2nd checkpoint of a life
EXIT_INTERRUPTED = 130
SLOW_FSYNC_SECONDS = 0.05       # chain B widens the save window so the poll sees the temp file
# Chain B's child: the real CLI with os.fsync slowed down (fault injection, nothing else changes).
SLOW_LAUNCHER = (
    "import os, sys, time\n"
    "_fsync = os.fsync\n"
    f"os.fsync = lambda fd: (time.sleep({SLOW_FSYNC_SECONDS}), _fsync(fd))[1]\n"
    "from stnref.app.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _start(run_dir, resume, slow=False):
    prefix = [sys.executable, "-c", SLOW_LAUNCHER] if slow else [sys.executable, "-m", "stnref"]
    args = [*TRAIN_ARGS, "--out", str(run_dir)] + (["--resume"] if resume else [])
    # A test run started in the background (nohup, `cmd &`, some CI runners) ignores SIGINT, and
    # an ignored SIGINT is inherited: Python would then never raise KeyboardInterrupt.
    return subprocess.Popen(prefix + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _finish(proc):
    _, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == -signal.SIGKILL


def _without(entries, keys):
    return [{k: v for k, v in e.items() if k not in keys} for e in entries]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """An uninterrupted run: its final arrays, metadata and metrics."""
    run_dir = tmp_path_factory.mktemp("baseline") / "run"
    _finish(_start(run_dir, resume=False))
    arrays, metadata = load_checkpoint(run_dir / CHECKPOINT)
    metrics = json.loads((run_dir / METRICS).read_text())
    return arrays, metadata, metrics


def _check_after_kill(run_dir, baseline):
    """Whatever a kill left must be complete and agree with the uninterrupted run so far."""
    _, base_meta, base_metrics = baseline
    expected = _without(base_metrics["epochs"], TIMINGS)
    path = run_dir / CHECKPOINT
    if path.exists():
        arrays, metadata = load_checkpoint(path)  # never a half-written file
        config, model, _, state, metrics = load_run(run_dir)
        assert dataclasses.asdict(config) == base_meta["config"]
        done = _without(metrics, TIMINGS)
        assert done == expected[:len(done)] and state["epoch"] == len(done)
        assert 0 <= state["step"] < STEPS_PER_EPOCH
        for name, value in model.state_dict().items():
            np.testing.assert_array_equal(value, arrays[f"model.{name}"])
    if (run_dir / METRICS).exists():
        done = _without(json.loads((run_dir / METRICS).read_text())["epochs"], TIMINGS)
        assert done == expected[:len(done)]


def _assert_same_as_baseline(run_dir, baseline):
    base_arrays, base_meta, base_metrics = baseline
    arrays, metadata = load_checkpoint(run_dir / CHECKPOINT)
    assert sorted(arrays) == sorted(base_arrays)
    assert any(k.startswith("optim.") for k in arrays)
    for name in base_arrays:  # model and optimiser state, bit for bit
        assert arrays[name].dtype == base_arrays[name].dtype, name
        np.testing.assert_array_equal(arrays[name], base_arrays[name], err_msg=name)
    assert _without([metadata["state"]], STATE_TIMINGS) == _without([base_meta["state"]], STATE_TIMINGS)
    assert _without(metadata["metrics"], TIMINGS) == _without(base_meta["metrics"], TIMINGS)
    metrics = json.loads((run_dir / METRICS).read_text())
    assert metrics["config"] == base_metrics["config"]
    assert _without(metrics["epochs"], TIMINGS) == _without(base_metrics["epochs"], TIMINGS)


def _remaining_saves(run_dir):
    """Checkpoint writes left in the run (one every CHECKPOINT_EVERY steps, epoch ends included)."""
    done = 0
    if (run_dir / CHECKPOINT).exists():
        state = load_checkpoint(run_dir / CHECKPOINT)[1]["state"]
        done = state["epoch"] * STEPS_PER_EPOCH + state["step"]
    return (EPOCHS * STEPS_PER_EPOCH - done) // CHECKPOINT_EVERY


def _checkpoint_id(run_dir):
    try:
        return os.stat(run_dir / CHECKPOINT).st_ino  # os.replace gives a new inode
    except FileNotFoundError:
        return None


def _kill_at_random(proc, run_dir, rng):
    """SIGKILL at a random moment of this life; False if the run finished first.

    The moment is drawn relative to the life's own progress, not the clock alone (the
    machine's speed varies by an order of magnitude): either a random time in the start-up
    (imports, data), or after the k-th checkpoint written by this life plus a random
    fraction of the interval between its (k-1)-th and k-th checkpoints, with k chosen so
    that enough training remains for the kill to land before the end.
    """
    saves = _remaining_saves(run_dir)
    if saves < SAVES_KEPT_IN_RESERVE + 2 or rng.random() < STARTUP_KILL_SHARE:
        target, fraction = 0, None
        deadline = time.monotonic() + rng.uniform(0.0, STARTUP_SECONDS)
    else:
        target, fraction = int(rng.integers(2, saves - SAVES_KEPT_IN_RESERVE + 1)), rng.random()
    seen, last, times = 0, _checkpoint_id(run_dir), []
    while seen < target:
        if proc.poll() is not None:
            return False
        current = _checkpoint_id(run_dir)
        if current != last:
            seen, last = seen + 1, current
            times.append(time.monotonic())
        time.sleep(POLL_SECONDS)
    if target:
        deadline = times[-1] + fraction * (times[-1] - times[-2])  # within the next save interval
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        time.sleep(POLL_SECONDS)
    if proc.poll() is not None:
        return False
    _kill(proc)
    return True


def _kill_during_save(proc, run_dir, rng):
    """SIGKILL while the k-th checkpoint temp file of this life exists (k random in 1..2).

    A kill during the first save loses that save, so the next life restarts from the
    same checkpoint; with k <= 2 every life still has a save left to kill in.
    """
    target, seen = int(rng.integers(1, 3)), 0
    known = set(os.listdir(run_dir)) if run_dir.exists() else set()  # stale temp files of old lives
    while proc.poll() is None:
        names = set(os.listdir(run_dir)) if run_dir.exists() else set()
        fresh = {n for n in names - known if TMP_CHECKPOINT.match(n)}
        if fresh:
            seen += 1
            if seen == target:
                _kill(proc)
                return True
        known |= names
        time.sleep(POLL_SECONDS)
    return False


def _kill_chain(run_dir, baseline, killer, kills_wanted, slow, seed):
    rng = np.random.default_rng([KILL_SEED, seed])
    kills = lives = 0
    while True:
        lives += 1
        assert lives <= kills_wanted + 3, "the run never finished"
        proc = _start(run_dir, resume=(run_dir / CHECKPOINT).exists(), slow=slow)
        if kills < kills_wanted and killer(proc, run_dir, rng):
            kills += 1
            _check_after_kill(run_dir, baseline)
            continue
        _finish(proc)
        break
    _assert_same_as_baseline(run_dir, baseline)
    return kills


def test_sigkill_at_random_moments_then_resume_is_exact(tmp_path, baseline):
    kills = _kill_chain(tmp_path / "run", baseline, _kill_at_random, RANDOM_KILLS, False, 0)
    # A life resumed near the end may finish before its moment, ending the chain early.
    assert kills >= RANDOM_KILLS // 2


def test_sigkill_during_checkpoint_write_then_resume_is_exact(tmp_path, baseline):
    run_dir = tmp_path / "run"
    kills = _kill_chain(run_dir, baseline, _kill_during_save, SAVE_KILLS, True, 1)
    assert kills >= SAVE_KILLS - 1  # on a very loaded machine the poll may miss one save window
    # SIGKILL cannot clean up, so each kill left a temp file (that is what _kill_during_save
    # waited for); the next life resumed from complete files only and removed the leftovers.
    assert not [n for n in os.listdir(run_dir) if TMP_CHECKPOINT.match(n)]


def test_ctrl_c_exits_130_keeps_checkpoint_and_resumes_exactly(tmp_path, baseline):
    """SIGINT (Ctrl-C) mid-training: exit 130 with one line, a loadable checkpoint, exact resume."""
    run_dir = tmp_path / "run"
    rng = np.random.default_rng([KILL_SEED, 2])
    for _ in range(INTERRUPTS):
        # slow saves keep a life running well past the checkpoint it waits for: on an idle
        # machine a whole 3-epoch run can otherwise end between the poll and the signal
        proc = _start(run_dir, resume=(run_dir / CHECKPOINT).exists(), slow=True)
        target, seen, last = int(rng.integers(1, 3)), 0, _checkpoint_id(run_dir)
        while seen < target and proc.poll() is None:
            current = _checkpoint_id(run_dir)
            if current != last:
                seen, last = seen + 1, current
            time.sleep(POLL_SECONDS)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=RUN_TIMEOUT)
        assert proc.returncode == EXIT_INTERRUPTED, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines[-1] == "stnref: interrupted" and "Traceback" not in err
        assert not [n for n in os.listdir(run_dir) if n.endswith(".tmp")]  # cleaned up
        _check_after_kill(run_dir, baseline)
    _finish(_start(run_dir, resume=True))
    _assert_same_as_baseline(run_dir, baseline)


# --------------------------------------------------------------------------- non-finite

N_TRAIN, N_TEST, BATCH, SIDE = 64, 16, 16, 28
POISONED_BATCH = 3  # 1-based batch of epoch 1 holding the NaN sample
FAILING_SAVE = 3    # the disk fills up during the third checkpoint of a run
FSYNCS_PER_SAVE = 2  # the temp file, then the directory after the rename


def _config(**changes):
    base = TrainConfig(model="st-fcn", distortion="none", epochs=1, batch_size=BATCH,
                       train_size=N_TRAIN, test_size=N_TEST, seed=3, checkpoint_every=1)
    return dataclasses.replace(base, **changes)


def _poisoned_data(config):
    rng = np.random.default_rng(0)
    x = rng.random((N_TRAIN, 1, SIDE, SIDE), dtype=np.float32)
    y = rng.integers(0, 10, N_TRAIN)
    xt = rng.random((N_TEST, 1, SIDE, SIDE), dtype=np.float32)
    yt = rng.integers(0, 10, N_TEST)
    bad = int(epoch_order(config.seed, 1, N_TRAIN)[(POISONED_BATCH - 1) * BATCH])
    x[bad, 0, 5, 7] = np.nan
    return (x, y, xt, yt), bad


def _quiet():
    return Progress(stream=io.StringIO())


def test_nan_batch_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = _config()
    data, _ = _poisoned_data(config)
    with pytest.raises(TrainingError, match=f"epoch 1, batch {POISONED_BATCH}\\b"):
        train(config, tmp_path, progress=_quiet(), data=data)
    _, model, _, state, metrics = load_run(tmp_path)
    assert (state["epoch"], state["step"], metrics) == (0, POISONED_BATCH - 1, [])
    assert all(np.isfinite(v).all() for v in model.state_dict().values())
    stopped, _ = load_checkpoint(tmp_path / CHECKPOINT)
    assert all(np.isfinite(v).all() for v in stopped.values() if v.dtype.kind == "f")
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_nan_batch_resume_after_stop_stops_again(tmp_path):
    config = _config()
    data, _ = _poisoned_data(config)
    with pytest.raises(TrainingError):
        train(config, tmp_path, progress=_quiet(), data=data)
    with pytest.raises(TrainingError, match=f"epoch 1, batch {POISONED_BATCH}\\b"):
        train(config, tmp_path, resume=True, progress=_quiet(), data=data)


def test_nan_batch_skipped_and_recorded(tmp_path):
    config = _config(on_nonfinite="skip", epochs=2)
    data, bad = _poisoned_data(config)
    result = train(config, tmp_path, progress=_quiet(), data=data)
    expected = [[e, int(np.argmax(epoch_order(config.seed, e, N_TRAIN) == bad)) // BATCH + 1]
                for e in (1, 2)]
    _, model, _, state, metrics = load_run(tmp_path)
    assert state["skipped"] == expected and expected[0][1] == POISONED_BATCH
    assert [m["epoch"] for m in metrics] == [1, 2] == [m["epoch"] for m in result["epochs"]]
    assert all(np.isfinite(v).all() for v in model.state_dict().values())
    # a skipped step counts no loss: the epoch's mean loss stays finite
    assert all(np.isfinite(m["train_loss"]) for m in metrics)


def test_disk_full_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    """ENOSPC while a checkpoint is written: the error propagates, the previous checkpoint stays
    complete, no temp file is left, and resuming ends bit-identical to an uninterrupted run."""
    import errno

    from stnref import checkpoint

    config = _config(epochs=2)
    data, _ = _poisoned_data(config)
    x, y, xt, yt = data
    data = (np.nan_to_num(x), y, xt, yt)
    reference_dir, run_dir = tmp_path / "reference", tmp_path / "run"
    train(dataclasses.replace(config), reference_dir, progress=_quiet(), data=data)

    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == (FAILING_SAVE - 1) * FSYNCS_PER_SAVE + 1:  # the file fsync of that save
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        real_fsync(fd)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    with pytest.raises(OSError, match="No space left"):
        train(dataclasses.replace(config), run_dir, progress=_quiet(), data=data)
    monkeypatch.undo()
    assert not [n for n in os.listdir(run_dir) if n.endswith(".tmp")]
    _, _, _, state, _ = load_run(run_dir)
    assert (state["epoch"], state["step"]) == (0, FAILING_SAVE - 1)  # checkpoint_every=1
    train(dataclasses.replace(config), run_dir, resume=True, progress=_quiet(), data=data)
    got, meta = load_checkpoint(run_dir / CHECKPOINT)
    want, want_meta = load_checkpoint(reference_dir / CHECKPOINT)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert _without(meta["metrics"], TIMINGS) == _without(want_meta["metrics"], TIMINGS)


# --------------------------------------------------------------------------- damaged checkpoints


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("good") / "run"
    config = _config(checkpoint_every=100)
    data, _ = _poisoned_data(config)
    x, y, xt, yt = data
    train(config, run_dir, progress=_quiet(), data=(np.nan_to_num(x), y, xt, yt))
    return run_dir


OPTIM_SCALARS = ("optim.step", "optim.lr")


def _damaged(tmp_path, good_run, edit):
    arrays, metadata = load_checkpoint(good_run / CHECKPOINT)
    edit(arrays, metadata)
    save_checkpoint(tmp_path / CHECKPOINT, arrays, metadata)
    return tmp_path


def _first(arrays, prefix):
    return next(k for k in sorted(arrays) if k.startswith(prefix))


def _buffer(arrays):
    """The first optimiser buffer (momentum or Adam moment), whatever the default optimiser."""
    return next(k for k in sorted(arrays) if k.startswith("optim.") and k not in OPTIM_SCALARS)


@pytest.mark.parametrize("edit, fragment", [
    (lambda a, m: a.update({"model.extra.weight": np.zeros(3, np.float32)}), "extra.weight"),
    (lambda a, m: a.pop(_first(a, "model.")), "missing"),
    (lambda a, m: a.update({(k := _first(a, "model.")): np.zeros(a[k].shape + (1,), a[k].dtype)}),
     "shape"),
    (lambda a, m: a.update({"optim.exp_avg.bogus": np.zeros(2)}), "bogus"),
    (lambda a, m: a.pop(_buffer(a)), "missing"),
    (lambda a, m: a.update({_buffer(a): np.zeros(7)}), "shape"),
    (lambda a, m: m.update(format=99), "format"),
    (lambda a, m: m["config"].pop("seed"), "config"),
    (lambda a, m: m["config"].update(colour="red"), "config"),
    (lambda a, m: a.update({"junk": np.zeros(3)}), "junk"),          # neither model. nor optim.
    (lambda a, m: m.pop("state"), "state"),
    (lambda a, m: m.pop("metrics"), "metrics"),
    (lambda a, m: m["config"].update(epochs="x"), "epochs"),
    (lambda a, m: m["config"].update(model="resnet"), "model"),
])
def test_load_run_rejects_mismatched_checkpoint(tmp_path, good_run, edit, fragment):
    run_dir = _damaged(tmp_path, good_run, edit)
    with pytest.raises((ValueError, TypeError), match=re.escape(fragment)):
        load_run(run_dir)


@pytest.mark.parametrize("damage", [
    lambda data: data[: len(data) // 2],
    lambda data: data[:-1],
    lambda data: data[:100],
    lambda data: b"",
    lambda data: b"\x00" * len(data),
    lambda data: os.urandom(4096),
    lambda data: data[:200] + bytes(b ^ 0xFF for b in data[200:400]) + data[400:],
])
def test_load_run_rejects_corrupt_file(tmp_path, good_run, damage):
    (tmp_path / CHECKPOINT).write_bytes(damage((good_run / CHECKPOINT).read_bytes()))
    with pytest.raises(ValueError, match=re.escape(CHECKPOINT)):
        load_run(tmp_path)


def test_load_run_missing_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint"):
        load_run(tmp_path)


# --------------------------------------------------------------------------- run directory


def test_resume_of_finished_run_rewrites_metrics(tmp_path, good_run):
    """A kill between the last checkpoint and the last metrics.json write is repaired by --resume."""
    for name in (CHECKPOINT,):
        (tmp_path / name).write_bytes((good_run / name).read_bytes())
    config = _config(checkpoint_every=100)
    data, _ = _poisoned_data(config)
    x, y, xt, yt = data
    result = train(config, tmp_path, resume=True, progress=_quiet(), data=(np.nan_to_num(x), y, xt, yt))
    written = json.loads((tmp_path / METRICS).read_text())
    assert written["epochs"] == result["epochs"] and [e["epoch"] for e in written["epochs"]] == [1]


def test_refused_config_leaves_no_run_directory(tmp_path):
    from stnref.app import cli

    assert cli.main(["train", "--momentum", "nan", "--out", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("damage, name", [
    (lambda x, y: (x, y[:10]), "y_train"),
    (lambda x, y: (x[:0], y[:0]), "x_train"),
    (lambda x, y: (x[:, :, :20, :20], y), "x_train"),
])
def test_train_validates_data(tmp_path, damage, name):
    """Bad ``data`` is a ValueError naming it, not an IndexError, ZeroDivisionError or a
    TrainingError (which on_nonfinite="skip" would turn into silently skipped batches)."""
    config = _config(on_nonfinite="skip")
    (x, y, xt, yt), _ = _poisoned_data(config)
    with pytest.raises(ValueError, match=name):
        train(config, tmp_path / "run", progress=_quiet(), data=(*damage(np.nan_to_num(x), y), xt, yt))
