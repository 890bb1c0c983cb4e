"""The command line never ignores what the user asked for.

Every option is honoured exactly, refused with one line and exit 2 naming the option, the
stored or available value and what was asked, or -- ``--epochs`` on ``--resume`` -- done and
reported.  A stored config is what ran: re-running it gives the same run, bit for bit.  A fuzz
test drives random option combinations and resumes and checks all of that on each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli import assert_user_error, run_cli, run_main

from stnref.app import cli
from stnref.app.train import CHECKPOINT, METRICS, Progress, read_run, train
from stnref.data import write_idx

TINY = ["--train-size", "48", "--test-size", "16", "--batch-size", "16"]
N_TRAIN, N_TEST = 48, 16        # images in the tiny MNIST directory


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    """A directory of the four MNIST files with 48 training and 16 test images."""
    root = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        write_idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, np.uint8))
    return root


def stored(run_dir):
    return read_run(str(run_dir))[0]


def quiet_train(config, run_dir, resume=False):
    import io
    return train(config, str(run_dir), resume=resume, progress=Progress(io.StringIO()))


# ----------------------------------------------------------------------------- train, new runs

@pytest.mark.parametrize("args, fragments", [
    (["--model", "fcn", "--transform", "tps"], ["--transform tps", "model fcn has no spatial transformer"]),
    (["--model", "cnn", "--loc-lr-scale", "0.1"], ["--loc-lr-scale 0.1", "st-fcn and st-cnn"]),
    (["--optimizer", "adam", "--momentum", "0.5"], ["--momentum 0.5", "--optimizer sgd"]),
    (["--momentum", "0.5"], ["--momentum 0.5", "optimizer adam"]),          # adam is the default
    (["--schedule", "cosine:x"], ["invalid schedule 'cosine:x'"]),
])
def test_options_meaningless_for_the_run_are_refused(tmp_path, capsys, args, fragments):
    out = tmp_path / "run"
    assert_user_error(run_main(capsys, "train", *TINY, *args, "--out", out), *fragments)
    assert not out.exists()


def test_sizes_beyond_the_files_are_refused_with_the_count(tmp_path, capsys, mnist):
    out = tmp_path / "run"
    proc = run_main(capsys, "train", "--data", mnist, "--train-size", "1000", "--test-size", "16",
                    "--out", out)
    assert_user_error(proc, "--train-size 1000", f"holds {N_TRAIN} training images", "'all'")
    proc = run_main(capsys, "train", "--data", mnist, "--train-size", "48", "--test-size", "20000",
                    "--out", out)
    assert_user_error(proc, "--test-size 20000", f"holds {N_TEST} test images")
    assert not out.exists()


def test_all_uses_every_sample_and_stores_the_count(tmp_path, capsys, mnist):
    out = tmp_path / "run"
    proc = run_main(capsys, "train", "--model", "fcn", "--data", mnist, "--train-size", "all",
                    "--test-size", "all", "--batch-size", "16", "--epochs", "1", "--out", out)
    assert proc.returncode == 0, proc.stderr
    config = stored(out)
    assert (config.train_size, config.test_size) == (N_TRAIN, N_TEST)
    assert json.loads((out / METRICS).read_text())["config"]["train_size"] == N_TRAIN


def test_data_is_stored_absolute_and_evaluate_works_from_elsewhere(tmp_path, mnist):
    work = tmp_path / "work"
    work.mkdir()
    (work / "mnist").symlink_to(mnist)
    proc = run_cli("train", "--model", "fcn", "--data", "mnist", *TINY, "--epochs", "1",
                   "--out", "run", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert stored(work / "run").data == str(work / "mnist")
    proc = run_cli("evaluate", work / "run", cwd=tmp_path)             # another directory
    assert proc.returncode == 0, proc.stderr
    assert "fcn rts" in proc.stdout and "affine" not in proc.stdout  # no transform for an FCN


@pytest.mark.parametrize("make, fragment", [
    (lambda d: d / "mnist.gz", "a file; give the directory"),
    (lambda d: d / "nowhere", "no such directory"),
])
def test_data_that_is_not_a_directory(tmp_path, capsys, make, fragment):
    path = make(tmp_path)
    if path.suffix == ".gz":
        path.write_bytes(b"\x1f\x8b")
    assert_user_error(run_main(capsys, "train", "--data", path, "--out", tmp_path / "r"), fragment)


def test_a_diverging_run_says_what_is_on_disk(tmp_path, capsys):
    out = tmp_path / "run"
    proc = run_main(capsys, "train", "--model", "fcn", "--lr", "1e30", *TINY, "--out", out)
    assert proc.returncode == cli.EXIT_TRAINING, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "no checkpoint was written" in line and "--on-nonfinite skip" in line
    assert "on_nonfinite=" not in line and not out.exists()   # no empty run left behind


def test_a_run_whose_data_moved_says_so(tmp_path, capsys, mnist):
    data = tmp_path / "mnist"
    shutil.copytree(mnist, data)
    out = tmp_path / "run"
    assert run_main(capsys, "train", "--model", "fcn", "--distortion", "none", *TINY, "--epochs", "1",
                    "--data", data, "--out", out).returncode == 0
    data.rename(tmp_path / "elsewhere")
    for argv in (["evaluate", out], ["train", "--resume", "--out", out, "--epochs", "2"]):
        assert_user_error(run_main(capsys, *argv), f"trained on the MNIST files in '{data}'",
                          "not a directory any more")


def test_a_run_with_non_finite_weights_is_evaluated_with_a_note(tmp_path, capsys):
    out = tmp_path / "run"
    proc = run_main(capsys, "train", "--model", "fcn", *TINY, "--epochs", "2", "--lr", "1e300",
                    "--on-nonfinite", "skip", "--out", out)
    assert proc.returncode == 0 and "no step trained" in proc.stderr + proc.stdout
    proc = run_main(capsys, "evaluate", out, "--json", out / "e.json")
    assert proc.returncode == 0 and not proc.stderr            # no numpy warning either
    assert "parameter arrays of the run hold non-finite values" in proc.stdout
    assert json.loads((out / "e.json").read_text())["test_loss"] is None   # valid JSON, no NaN


def test_a_run_that_diverges_after_a_checkpoint_names_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_main(capsys, "train", "--model", "fcn", *TINY, "--epochs", "1", "--out", out).returncode == 0
    arrays, meta = __import__("stnref").load_checkpoint(out / CHECKPOINT)
    meta["config"]["epochs"] = 2
    arrays = {k: (np.full_like(v, 1e30) if k.startswith("model.") else v) for k, v in arrays.items()}
    __import__("stnref").save_checkpoint(out / CHECKPOINT, arrays, meta)
    proc = run_main(capsys, "train", "--resume", "--out", out)
    assert proc.returncode == cli.EXIT_TRAINING
    assert f"{out / CHECKPOINT} holds the run after epoch 1, batch 0" in proc.stderr


# ----------------------------------------------------------------------------- train --resume

@pytest.fixture
def fcn_run(tmp_path, capsys):
    out = tmp_path / "run"
    proc = run_main(capsys, "train", "--model", "fcn", *TINY, "--epochs", "2", "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("args, fragments", [
    (["--model", "st-fcn"], ["--model st-fcn", "trained with model fcn"]),
    (["--lr", "0.01"], ["--lr 0.01", "trained with lr 0.002"]),
    (["--train-size", "32"], ["--train-size 32", "trained with train-size 48"]),
    (["--schedule", "cosine"], ["--schedule cosine", "trained with schedule constant"]),
    (["--epochs", "1"], ["--epochs 1", "is set to 2 epochs (2 trained)", "can only grow"]),
    (["--transform", "tps"], ["--transform tps", "trained with transform none (does not apply)"]),
    (["--data", "{tmp}"], ["--data {tmp}", "trained with data none (built-in digits)"]),
    (["--clip-norm", "none"], ["--clip-norm none", "trained with clip-norm 10.0"]),
])
def test_resume_refuses_a_different_option(fcn_run, capsys, args, fragments):
    before = (fcn_run / CHECKPOINT).read_bytes()
    tmp = fcn_run.parent
    assert_user_error(run_main(capsys, "train", "--resume", "--out", fcn_run,
                               *[a.format(tmp=tmp) for a in args]),
                      *[f.format(tmp=tmp) for f in fragments])
    assert (fcn_run / CHECKPOINT).read_bytes() == before


def test_resume_may_change_what_a_non_finite_step_does(fcn_run, capsys):
    """The remedy a stop names: until a step is non-finite, stop and skip train the same."""
    proc = run_main(capsys, "train", "--resume", "--out", fcn_run, "--on-nonfinite", "skip",
                    "--epochs", "3")
    assert proc.returncode == 0, proc.stderr
    assert stored(fcn_run).on_nonfinite == "skip"
    quiet_train(dataclasses.replace(stored(fcn_run), epochs=4), fcn_run, resume=True)
    assert stored(fcn_run).on_nonfinite == "skip"          # the library keeps the run's own


def test_a_resume_that_trains_nothing_keeps_checkpoint_and_metrics_agreeing(fcn_run, capsys):
    assert run_main(capsys, "train", "--resume", "--out", fcn_run, "--on-nonfinite",
                    "skip").returncode == 0
    on_disk = json.loads((fcn_run / METRICS).read_text())["config"]
    assert on_disk == dataclasses.asdict(stored(fcn_run)) and on_disk["on_nonfinite"] == "skip"


@pytest.mark.parametrize("name", [CHECKPOINT, METRICS])
def test_evaluate_never_writes_its_json_over_the_run(fcn_run, capsys, name):
    before = (fcn_run / name).read_bytes()
    assert_user_error(run_main(capsys, "evaluate", fcn_run, "--json", fcn_run / name),
                      "a file of the run itself")
    assert (fcn_run / name).read_bytes() == before


def test_the_demo_replaces_its_own_runs_only(tmp_path, capsys, monkeypatch):
    from stnref.app import demo
    out = tmp_path / "demo"
    assert run_main(capsys, "train", "--model", "fcn", *TINY, "--out", out / "fcn").returncode == 0
    before = (out / "fcn" / CHECKPOINT).read_bytes()
    assert_user_error(run_main(capsys, "demo", "--out", out), "holds a run that is not this demo's")
    assert (out / "fcn" / CHECKPOINT).read_bytes() == before
    config = demo.TrainConfig(model="fcn", distortion="rts", epochs=1, train_size=64,
                              test_size=16).validated()
    old = tmp_path / "old_demo"
    for name in ("fcn", "st-fcn"):
        quiet_train(dataclasses.replace(config, model=name).validated(), old / name)
    configs = {name: dataclasses.replace(config, model=name).validated() for name in ("fcn", "st-fcn")}
    foreign = dict(configs, **{"st-fcn": dataclasses.replace(configs["st-fcn"], seed=7)})
    with pytest.raises(ValueError, match=r"st-fcn holds a run that is not this demo's \(seed 0\)"):
        demo._clear_previous_demo(str(old), foreign)     # nothing is removed before refusing
    assert (old / "fcn" / CHECKPOINT).exists() and (old / "st-fcn" / CHECKPOINT).exists()
    demo._clear_previous_demo(str(old), configs)
    assert not any((old / n / f).exists() for n in configs for f in (CHECKPOINT, METRICS))


def test_a_directory_another_process_trains_in_is_refused(fcn_run, capsys):
    """The lock is an flock: held by the process that trains, released when it ends or dies."""
    from stnref.app import runs as train_module
    if train_module.fcntl is None:
        pytest.skip("no fcntl: runs are not locked on this platform")
    fd = train_module._lock(str(fcn_run))                 # as another process training there
    try:
        before = (fcn_run / CHECKPOINT).read_bytes()
        assert_user_error(run_main(capsys, "train", "--resume", "--out", fcn_run, "--epochs", "3"),
                          "another process is training in")
        assert (fcn_run / CHECKPOINT).read_bytes() == before
    finally:
        os.close(fd)                                     # the other process ends
    assert run_main(capsys, "train", "--resume", "--out", fcn_run, "--epochs", "3").returncode == 0
    fd = train_module._lock(str(fcn_run))     # the file stays: a later process locks the same one
    os.close(fd)


def test_a_new_run_never_replaces_another(tmp_path, capsys):
    """A directory holding metrics.json (or a run) is refused by train() itself, which
    stnref experiment and stnref demo also use."""
    out = tmp_path / "run"
    out.mkdir()
    (out / METRICS).write_text('{"mine": 1}')
    assert_user_error(run_main(capsys, "train", "--model", "fcn", *TINY, "--out", out),
                      "already holds a run")
    assert (out / METRICS).read_text() == '{"mine": 1}'


def test_resume_accepts_the_run_s_schedule_written_another_way(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_main(capsys, "train", "--model", "fcn", *TINY, "--epochs", "1", "--schedule",
                    "cosine+warmup:1", "--out", out).returncode == 0
    assert stored(out).schedule == "cosine:1+warmup:1"
    for spec in ("cosine+warmup:1", " cosine:1.0 + warmup:1 "):
        proc = run_main(capsys, "train", "--resume", "--out", out, "--schedule", spec)
        assert proc.returncode == 0, proc.stderr
    assert_user_error(run_main(capsys, "train", "--resume", "--out", out, "--schedule", "cosine:2"),
                      "--schedule cosine:2", "trained with schedule cosine:1+warmup:1")


def test_resume_accepts_the_same_options_and_extends_epochs(fcn_run, capsys):
    proc = run_main(capsys, "train", "--resume", "--out", fcn_run, "--model", "fcn", "--lr", "0.002",
                    "--epochs", "3", *TINY)
    assert proc.returncode == 0, proc.stderr
    assert f"extending {fcn_run} from 2 to 3 epochs (2 trained)" in proc.stdout
    assert "after 3 epochs" in proc.stdout
    assert stored(fcn_run).epochs == 3
    assert len(json.loads((fcn_run / METRICS).read_text())["epochs"]) == 3


def test_extending_a_finished_schedule_says_at_what_rate(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_main(capsys, "train", "--model", "fcn", *TINY, "--epochs", "1", "--schedule",
                    "cosine", "--out", out).returncode == 0
    assert stored(out).schedule == "cosine:1"
    proc = run_main(capsys, "train", "--resume", "--out", out, "--epochs", "2")
    assert proc.returncode == 0, proc.stderr
    assert "under the run's schedule cosine:1, the added epochs start at 0 x the base rate" in proc.stdout


def test_the_rate_of_added_epochs_counts_the_run_s_steps(tmp_path, capsys):
    """48 samples in batches of 16: 3 steps an epoch; step:1.5 decays every round(4.5) = 4
    steps, so step 9, where a fourth epoch starts, runs at 0.1^2."""
    out = tmp_path / "run"
    assert run_main(capsys, "train", "--model", "fcn", *TINY, "--epochs", "3", "--schedule",
                    "step:1.5", "--out", out).returncode == 0
    proc = run_main(capsys, "train", "--resume", "--out", out, "--epochs", "4")
    assert "the added epochs start at 0.01 x the base rate" in proc.stdout, proc.stdout


# ----------------------------------------------------------------------------- files on disk

def _lying_member(path):
    """Rewrite the first weight's .npy header to claim 10^12 elements (the data stays small)."""
    with zipfile.ZipFile(path) as zf:
        members = {info.filename: zf.read(info) for info in zf.infolist()}
    name = next(m for m in members if m.startswith("model.") and m.endswith(".weight.npy"))[:-4]
    data = members[f"{name}.npy"]
    head_len = data.index(b"\n") + 1
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1))
    header["shape"] = (10**6, 10**6)
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    members[f"{name}.npy"] = buf.getvalue() + data[head_len:]
    with zipfile.ZipFile(path, "w") as zf:
        for member, payload in members.items():
            zf.writestr(member, payload)


def _swap_member(path, shape):
    """Replace the first weight by a consistent member of another shape (honest header)."""
    import io
    with zipfile.ZipFile(path) as zf:
        members = {info.filename: zf.read(info) for info in zf.infolist()}
    name = next(m for m in members if m.startswith("model.") and m.endswith(".weight.npy"))
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.zeros(shape))
    members[name] = buf.getvalue()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, payload in members.items():
            zf.writestr(member, payload)
    return name[:-4]


@pytest.mark.parametrize("command", [["evaluate", "{run}"], ["train", "--resume", "--out", "{run}"]])
def test_a_member_of_another_shape_is_refused_by_its_header(fcn_run, capsys, monkeypatch, command):
    """Checked against the model the config describes before any array is read (a deflated
    member of zeros can declare gigabytes in a small file)."""
    name = _swap_member(fcn_run / CHECKPOINT, (250_000,))
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__",
                        lambda *a: pytest.fail("an array was read before the headers were checked"))
    proc = run_main(capsys, *[c.format(run=fcn_run) for c in command])
    assert_user_error(proc, "does not hold what its metadata describes",
                      f"{name}: header claims shape (250000,), expected")


def test_random_bytes_are_not_an_npz_archive(fcn_run, capsys):
    (fcn_run / CHECKPOINT).write_bytes(np.random.default_rng(0).bytes(5000))
    assert_user_error(run_main(capsys, "evaluate", fcn_run), "not an .npz archive")


@pytest.mark.parametrize("argv, fragment", [
    (["train", "--data", "", "--out", "{tmp}/r"], "--data: expected a path, got ''"),
    (["train", "--out", ""], "--out: expected a path, got ''"),
    (["evaluate", ""], "RUN_DIR: expected a path, got ''"),
    (["evaluate", "{tmp}", "--json", " "], "--json: expected a path, got ' '"),
    (["bench", "--quick", "--markdown", ""], "--markdown: expected a path, got ''"),
    (["reference", "export", ""], "DIR: expected a path, got ''"),
    (["train", "--optimizer", "sgd", "--momentum", "1.5", "--out", "{tmp}/r"],
     "--momentum: expected a number in [0, 1), got '1.5'"),
    (["train", "--out", "{tmp}/afile"], "--out {tmp}/afile: a file, not a directory"),
    (["demo", "--out", "{tmp}/afile"], "--out {tmp}/afile: a file, not a directory"),
    (["reference", "export", "{tmp}/afile"], "DIR {tmp}/afile: a file, not a directory"),
])
def test_empty_paths_files_for_directories_and_out_of_range_values_are_refused(tmp_path, capsys, argv, fragment):
    (tmp_path / "afile").write_text("not a directory")
    assert_user_error(run_main(capsys, *[a.format(tmp=tmp_path) for a in argv]),
                      fragment.format(tmp=tmp_path))


@pytest.mark.parametrize("command", [["evaluate", "{run}"], ["train", "--resume", "--out", "{run}"]])
def test_a_lying_checkpoint_is_one_line(fcn_run, capsys, command):
    _lying_member(fcn_run / CHECKPOINT)
    proc = run_main(capsys, *[c.format(run=fcn_run) for c in command])
    assert_user_error(proc, "header claims shape (1000000, 1000000)")


@pytest.mark.parametrize("edit, fragment", [
    (lambda m: m["config"].update(lr="fast"), "invalid config"),
    (lambda m: m["state"].update(epoch=99), "inconsistent progress"),
    (lambda m: m.update(metrics="none"), "inconsistent progress"),
    (lambda m: m["config"].pop("seed"), "config keys"),
    (lambda m: m["config"].update(train_size=None), "a run stores the sizes it used"),
    (lambda m: m["state"].update(step=10**6), "step 1000000 of epoch 3, which has 3 steps"),
    (lambda m: m["state"].update(counted=10**6), "inconsistent progress"),
    (lambda m: m["state"].update(skipped=[7]), "no list of skipped steps"),
    (lambda m: m["state"].update(skipped=[[9, 1]]), "no list of skipped steps"),
    (lambda m: m["metrics"][0].pop("test_error"), "metrics entries are not objects of the numbers"),
    (lambda m: m["metrics"][1].update(train_loss="x"), "metrics entries are not objects of the numbers"),
])
def test_damaged_run_metadata_is_one_line(fcn_run, capsys, edit, fragment):
    import stnref
    arrays, meta = stnref.load_checkpoint(fcn_run / CHECKPOINT)
    edit(meta)
    stnref.save_checkpoint(fcn_run / CHECKPOINT, arrays, meta)
    assert_user_error(run_main(capsys, "evaluate", fcn_run), fragment)


@pytest.mark.parametrize("argv, option", [
    (["reference", "diagnose", "no_such_module:fn", "--json", "{missing}/d.json"], "--json"),
    (["reference", "diagnose", "stnref:grid_sample", "--json", "{tmp}"], "--json"),
    (["bench", "--quick", "--markdown", "{missing}/b.md"], "--markdown"),
    (["evaluate", "{missing}", "--json", "{missing}/e.json"], "--json"),
    (["reference", "diagnose", "stnref:grid_sample", "--json", "{fifo}"], "is not a regular file"),
    (["bench", "--quick", "--markdown", "/dev/null"], "is not a regular file"),
])
def test_an_output_file_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys, monkeypatch,
                                                                          argv, option):
    from stnref.app import bench
    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("the bench ran"))
    os.mkfifo(tmp_path / "fifo")
    argv = [a.format(missing=tmp_path / "missing", tmp=tmp_path, fifo=tmp_path / "fifo") for a in argv]
    assert_user_error(run_main(capsys, *argv), option)


def test_check_against_a_missing_results_directory_is_one_line(tmp_path, capsys):
    assert run_main(capsys, "reference", "export", tmp_path / "golden").returncode == 0
    assert_user_error(run_main(capsys, "reference", "check", tmp_path / "golden", tmp_path / "none"),
                      "results directory", "does not exist")


# ----------------------------------------------------------------------------- help and messages

def test_bare_stnref_prints_usage_and_the_commands(capsys):
    proc = run_main(capsys)
    assert proc.returncode == cli.EXIT_USAGE
    assert proc.stderr.startswith("usage: stnref")
    for command in ("train", "evaluate", "demo", "experiment", "bench", "reference"):
        assert f"\n    {command}" in proc.stderr, command


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subparsers(sub))


def test_every_option_states_its_default():
    """Each optional argument with a value says what it is when not given."""
    undocumented = []
    for name, sub in _subparsers(cli.build_parser()):
        for action in sub._actions:
            if not action.option_strings or action.nargs == 0 or action.required:
                continue                     # positional, flags (--quick), --out, --help
            if "default" not in (action.help or ""):
                undocumented.append(f"{name} {action.option_strings[0]}")
    assert not undocumented, undocumented


def test_the_demo_writes_where_git_ignores_it():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, ".gitignore"), encoding="utf-8") as f:
        ignored = f.read().split()
    demo = cli.build_parser().parse_args(["demo"]).out
    assert demo == os.path.join("runs", "demo") and "/runs/" in ignored


# ----------------------------------------------------------------------------- experiment

GRID = ["--models", "fcn", "st-fcn", "--transforms", "affine", "--distortions", "r",
        "--epochs", "1", "--train-size", "32", "--test-size", "16"]


def test_experiment_dry_run_prints_the_plan_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "exp"
    proc = run_main(capsys, "experiment", *GRID, "--out", out, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("plan: 2 cells") and "time not estimated" in proc.stdout
    assert "new" in proc.stdout and not out.exists()


def test_experiment_refuses_a_cell_of_another_config(tmp_path, capsys):
    out = tmp_path / "exp"
    assert run_main(capsys, "experiment", *GRID, "--out", out, "--jobs", "1").returncode == 0
    changed = [a if a != "32" else "24" for a in GRID]                     # --train-size 24
    proc = run_main(capsys, "experiment", *changed, "--out", out)
    assert_user_error(proc, "holds a run of another config", "train-size: stored 32, asked 24",
                      "and 1 more cells")
    proc = run_main(capsys, "experiment", *[a if a != "1" else "2" for a in GRID], "--out", out,
                    "--jobs", "1")                                       # --epochs 2: extend
    assert proc.returncode == 0, proc.stderr
    assert "2 to extend" in proc.stdout
    assert stored(out / "r" / "fcn-seed0").epochs == 2


def test_experiment_cells_do_not_depend_on_jobs(tmp_path, capsys):
    import stnref
    runs = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}"
        assert run_main(capsys, "experiment", *GRID, "--out", out, "--jobs", jobs).returncode == 0
        runs[jobs] = out
    for cell in ("r/fcn-seed0", "r/st-fcn-affine-seed0"):
        a, meta_a = stnref.load_checkpoint(runs["1"] / cell / CHECKPOINT)
        b, meta_b = stnref.load_checkpoint(runs["2"] / cell / CHECKPOINT)
        assert all(a[k].tobytes() == b[k].tobytes() for k in a), cell
        strip = [{k: v for k, v in e.items() if k not in ("seconds", "samples_per_s")}
                 for e in meta_a["metrics"]]
        assert strip == [{k: v for k, v in e.items() if k not in ("seconds", "samples_per_s")}
                         for e in meta_b["metrics"]]


# ----------------------------------------------------------------------------- fuzz

OPTIONAL = {
    "--transform": st.sampled_from(["affine", "attention", "projective", "tps"]),
    "--loc-lr-scale": st.sampled_from(["0.5", "1"]),
    "--momentum": st.sampled_from(["0", "0.8"]),
    "--lr": st.sampled_from(["0.001", "0.003"]),
    "--schedule": st.sampled_from(["constant", "cosine", "step:1:0.5", "warmup:1+cosine"]),
    "--clip-norm": st.sampled_from(["none", "1.5"]),
    "--seed": st.sampled_from(["0", "3"]),
    "--batch-size": st.sampled_from(["16", "24"]),
    "--distortion": st.sampled_from(["none", "r"]),
}


@st.composite
def option_sets(draw):
    args = ["--model", draw(st.sampled_from(["fcn", "st-fcn"])),
            "--optimizer", draw(st.sampled_from(["adam", "sgd"])),
            "--epochs", draw(st.sampled_from(["1", "2"]))]
    for flag, values in OPTIONAL.items():
        if draw(st.booleans()):
            args += [flag, draw(values)]
    sizes = draw(st.sampled_from([("all", "all"), ("32", "16"), ("48", "8")]))
    return args + ["--train-size", sizes[0], "--test-size", sizes[1]]


def expected_refusal(args):
    """Why these options must be refused, or None."""
    opts = dict(zip(args[::2], args[1::2]))
    if opts["--model"] == "fcn" and ("--transform" in opts or "--loc-lr-scale" in opts):
        return "no spatial transformer"
    if opts["--optimizer"] == "adam" and "--momentum" in opts:
        return "has no momentum"
    return None


def check_stored_is_what_was_asked(config, args, mnist):
    opts = dict(zip(args[::2], args[1::2]))
    assert config.model == opts["--model"] and config.optimizer == opts["--optimizer"]
    assert config.data == str(mnist)
    assert config.train_size == (N_TRAIN if opts["--train-size"] == "all" else int(opts["--train-size"]))
    assert config.test_size == (N_TEST if opts["--test-size"] == "all" else int(opts["--test-size"]))
    assert config.transform == (opts.get("--transform", "affine") if config.model == "st-fcn" else None)
    assert config.momentum == (float(opts.get("--momentum", 0.9)) if config.optimizer == "sgd" else None)
    if "--schedule" in opts:
        asked = opts["--schedule"].replace("cosine", f"cosine:{opts['--epochs']}")   # span pinned
        assert config.schedule == asked
    for flag, field, parse in (("--lr", "lr", float),
                               ("--seed", "seed", int), ("--batch-size", "batch_size", int),
                               ("--distortion", "distortion", str), ("--loc-lr-scale", "loc_lr_scale", float)):
        if flag in opts:
            assert getattr(config, field) == parse(opts[flag]), flag
    if "--clip-norm" in opts:
        assert config.clip_norm == (None if opts["--clip-norm"] == "none" else float(opts["--clip-norm"]))


@settings(max_examples=12)
@given(args=option_sets(), more=st.sampled_from([None, "same", "grow", "other"]))
def test_fuzz_every_stored_config_is_what_ran(tmp_path_factory, mnist, args, more):
    import stnref
    root = tmp_path_factory.mktemp("fuzz")
    out = root / "run"
    argv = ["train", *args, "--data", mnist, "--out", out]
    proc = _main(argv)
    refusal = expected_refusal(args)
    if refusal:
        assert proc[0] == cli.EXIT_USAGE and refusal in proc[2], proc
        assert not out.exists()
        return
    assert proc[0] == 0, proc
    config = stored(out)
    check_stored_is_what_was_asked(config, args, mnist)
    if more is not None:
        opts = dict(zip(args[::2], args[1::2]))
        extra = {"same": ["--lr", str(config.lr)], "grow": ["--epochs", str(config.epochs + 1)],
                 "other": ["--seed", str(config.seed + 1)]}[more]
        code, _, err = _main(["train", "--resume", "--out", out, *extra])
        if more == "other":
            assert code == cli.EXIT_USAGE and "--seed" in err
        else:
            assert code == 0, err
            config = stored(out)
            assert config.epochs == int(opts["--epochs"]) + (more == "grow")
    # the stored config, run again from scratch by the library, is the same run to the bit
    again = root / "again"
    quiet_train(dataclasses.replace(config), again)
    a, meta_a = stnref.load_checkpoint(out / CHECKPOINT)
    b, meta_b = stnref.load_checkpoint(again / CHECKPOINT)
    assert meta_a["config"] == meta_b["config"]
    assert sorted(a) == sorted(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)


def _main(argv):
    """``cli.main`` in-process, with stdout and stderr captured: ``(code, out, err)``."""
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()
