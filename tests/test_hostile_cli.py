"""Hostile use of the ``stnref`` command: numbers, text, signals, user modules, pipes, warnings.

- every integer option is compared as an integer with 2**53 before any float use, so a
  400-digit ``--seed`` is one line, not an ``OverflowError``;
- user text (paths, specs, arguments argparse did not know) is escaped: one line stays one
  line, and an undecodable file name never breaks printing;
- Ctrl-C at any moment of ``main`` (its imports included) exits 130 with one line, and
  ``import stnref`` loads nothing heavy, so the command handles Ctrl-C before NumPy loads;
- a user's module whose import or attribute lookup raises anything is one line;
- ``experiment --dry-run`` measures nothing unless ``--estimate`` asks;
- a closed stdout ends the command quietly;
- the library emits no warning for the documented non-finite rules, and the suite fails on
  any warning it does emit.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from test_cli import SUBPROCESS_TIMEOUT, assert_user_error, run_main

import stnref
from stnref.app import cli, experiment
from stnref.reference.diagnosis import load_callable

EXIT_INTERRUPTED = 130
BIG = "1" + "0" * 400            # 10**400
HUGE = "9" * 5000                # beyond Python's int(str) digit limit
LIMIT = str(2**53)
OVER = str(2**53 + 1)
TRAIN = ["train", "--model", "fcn", "--distortion", "none", "--train-size", "64",
         "--test-size", "16", "--batch-size", "16"]
GRID = ["experiment", "--models", "fcn", "st-fcn", "--transforms", "affine", "--distortions", "r",
        "--epochs", "1", "--train-size", "32", "--test-size", "16"]


def python(*args, **kwargs):
    return subprocess.run([sys.executable, *args], capture_output=True, timeout=SUBPROCESS_TIMEOUT,
                          **kwargs)


# --------------------------------------------------------------------------- numbers


INTEGER_OPTIONS = [
    (TRAIN, "--seed"), (TRAIN, "--epochs"), (TRAIN, "--batch-size"), (TRAIN, "--train-size"),
    (TRAIN, "--checkpoint-every"), (GRID, "--seeds"), (GRID, "--epochs"), (GRID, "--jobs"),
    (GRID, "--test-size"), (["bench"], "--rounds"), (["demo"], "--seed"),
]


@pytest.mark.parametrize("command, option", INTEGER_OPTIONS,
                         ids=[f"{c[0]} {o}" for c, o in INTEGER_OPTIONS])
@pytest.mark.parametrize("value", [BIG, "-" + BIG, HUGE, OVER], ids=["10^400", "-10^400", "5000 digits", "2^53+1"])
def test_integer_options_are_range_checked_as_integers(tmp_path, capsys, command, option, value):
    proc = run_main(capsys, *command, option, value, "--out", tmp_path / "out")
    assert_user_error(proc, option)
    assert len(proc.stderr) < 600, proc.stderr       # the text is shown cut, not whole
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option", ["--seed", "--epochs", "--batch-size"])
def test_integer_options_at_the_limit(option):
    """2**53 parses; 2**53 + 1 does not (the boundary, both ways)."""
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--out", "x", option, LIMIT])
    assert getattr(args, option[2:].replace("-", "_")) == 2**53
    with pytest.raises(cli.UserError, match="at most 2\\*\\*53"):
        parser.parse_args(["train", "--out", "x", option, OVER])


@pytest.mark.parametrize("value", ["1e400", BIG, "nan", "-inf", "0x10"])
def test_float_options_are_finite(tmp_path, capsys, value):
    assert_user_error(run_main(capsys, *TRAIN, "--lr", value, "--out", tmp_path / "r"), "--lr")


def test_a_resumed_run_with_a_huge_stored_number_is_one_line(tmp_path, capsys):
    """stnref evaluate on a checkpoint storing train_size 10**400 (an OverflowError before)."""
    from test_hostile_files import _run_with

    run_dir = _run_with(tmp_path, lambda meta: meta["config"].update(train_size=10**400))
    assert_user_error(run_main(capsys, "evaluate", run_dir), "train_size", "401 digits")
    assert_user_error(run_main(capsys, *TRAIN, "--out", run_dir, "--resume"), "train_size")


# --------------------------------------------------------------------------- one line


@pytest.mark.parametrize("args, shown", [
    (["train", "--data", "a\nb", "--out", "{tmp}/r"], "a\\nb"),
    (["train", "--out", "{tmp}/r\x1b[2J", "--epochs", "x\ny"], "x\\ny"),
    (["train", "--out", "{tmp}/r", "--bogus\nflag"], "--bogus\\nflag"),
    (["evaluate", "{tmp}/no\nrun"], "no\\nrun"),
    (["evaluate", "{tmp}/r\u2028x"], "r\\u2028x"),
    (["reference", "diagnose", "m\nx:fn"], "m\\nx"),
    (["reference", "check", "{tmp}/g\ng", "{tmp}/r"], "g\\ng"),
    (["experiment", "--out", "{tmp}/e", "--models", "fcn\nx"], "fcn\\nx"),
])
def test_user_text_is_escaped_in_messages(tmp_path, capsys, args, shown):
    proc = run_main(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert_user_error(proc, shown)
    assert "\x1b" not in proc.stderr and "\u2028" not in proc.stderr


def test_a_very_long_argument_is_cut_in_the_message(tmp_path, capsys):
    proc = run_main(capsys, *TRAIN, "--out", tmp_path / "r", "--seed", "x" * 100_000)
    assert_user_error(proc, "--seed", "(100002 characters)")
    assert len(proc.stderr) < 1000


def test_undecodable_file_names_print(tmp_path):
    """A path of bytes that are not UTF-8 reaches Python as lone surrogates, which no UTF-8
    stream can print: the message escapes them (it was a UnicodeEncodeError traceback)."""
    bad = os.fsencode(str(tmp_path)) + b"/run\xff\xfe\nx"
    proc = python("-m", "stnref", "evaluate", bad, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    err = proc.stderr.decode("utf-8")
    assert proc.returncode == cli.EXIT_USAGE, err
    assert err.count("\n") == 1 and "\\udcff\\udcfe\\nx" in err and "Traceback" not in err


def test_stdout_lines_escape_user_paths(tmp_path, capsys):
    out = tmp_path / "e\nx"
    proc = run_main(capsys, *GRID, "--out", out, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith(f"plan: 2 cells in {tmp_path}/e\\nx (")
    assert all(line.startswith(("plan:", "time not", "  new")) for line in proc.stdout.splitlines())


# --------------------------------------------------------------------------- start-up and Ctrl-C


def test_the_command_starts_without_numpy():
    """``import stnref`` and the CLI module load no NumPy or SciPy (they are imported inside
    main, after its SIGINT handling is in place); the package's names still resolve."""
    code = ("import sys; import stnref.app.cli; heavy = [m for m in ('numpy', 'scipy') "
            "if m in sys.modules]; print(heavy); import stnref; stnref.grid_sample; "
            "print('numpy' in sys.modules)")
    proc = python("-c", code, text=True)
    assert proc.stdout.split("\n")[:2] == ["[]", "True"], proc.stderr


def test_the_lazy_package_keeps_its_names():
    namespace = {}
    exec("from stnref import *", namespace)
    assert sorted(k for k in namespace if not k.startswith("__")) == sorted(stnref.__all__)
    for name in stnref.__all__:
        module = importlib.import_module(f"stnref.{stnref._SOURCES[name]}")
        assert getattr(stnref, name) is getattr(module, name), name
    assert set(stnref.__all__) <= set(dir(stnref)) and "nn" in dir(stnref)
    assert stnref.nn.Linear is importlib.import_module("stnref.nn").Linear
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        stnref.no_such_name  # noqa: B018


CHILD_INTERRUPTED_AT_IMPORT = """
import builtins, sys
from stnref.app import cli
k, count, real = int(sys.argv[1]), 0, builtins.__import__

def counting(*args, **kwargs):
    global count
    count += 1
    if count == k:
        raise KeyboardInterrupt      # Ctrl-C arriving during the k-th import
    return real(*args, **kwargs)

builtins.__import__ = counting
status = cli.main(sys.argv[2:])
print(count)
sys.exit(status)
"""


def test_ctrl_c_during_any_import_of_main_exits_130_quietly(tmp_path):
    """Every import main makes -- argparse's, NumPy's, SciPy's, the commands' -- interrupted in
    turn (a sample of them): status 130 and the one line, never a traceback."""
    args = ["evaluate", str(tmp_path / "no-run")]
    first = python("-c", CHILD_INTERRUPTED_AT_IMPORT, str(10**9), *args, text=True)
    total = int(first.stdout.split()[-1])
    assert first.returncode == cli.EXIT_USAGE and total > 100, (total, first.stderr)
    # the last few imports vary from run to run (caches): sample up to 95 % of them
    for k in sorted({1, 2, 3, 10, total // 7, total // 3, total // 2, total * 19 // 20}):
        proc = python("-c", CHILD_INTERRUPTED_AT_IMPORT, str(k), *args, text=True)
        assert proc.returncode == EXIT_INTERRUPTED, (k, proc.stderr)
        assert proc.stderr == "stnref: interrupted\n", (k, proc.stderr)


def test_ctrl_c_twice_at_random_moments_exits_130_quietly(tmp_path):
    """Real SIGINTs, a second one soon after the first, from the imports to training: one line,
    status 130, no traceback (the second is ignored while the command winds down)."""
    code = ("import sys; print('ready', flush=True); from stnref.app.cli import main; "
            "sys.exit(main())")   # as the console script calls it
    rng = np.random.default_rng(22)
    for n, delay in enumerate([0.15, 0.3, 0.6, *rng.uniform(0.15, 2.0, 3)]):
        run_dir = tmp_path / f"run{n}"
        proc = subprocess.Popen([sys.executable, "-c", code, *TRAIN, "--epochs", "1000", "--out",
                                 str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "ready\n"
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
        assert proc.returncode == EXIT_INTERRUPTED, (delay, err)
        assert err.splitlines()[-1] == "stnref: interrupted" and "Traceback" not in err, (delay, err)


def test_ctrl_c_while_experiment_workers_start_is_quiet(tmp_path):
    """Ctrl-C reaches the whole process group, workers included: one that is still importing
    (SIGINT deferred until its handler is in place) ends as quietly as one training."""
    code = "import sys; from stnref.app.cli import main; sys.exit(main())"
    for n, delay in enumerate([0.0, 0.1, 0.3, 0.6]):
        args = ["experiment", "--models", "fcn", "st-fcn", "--transforms", "affine", "--distortions",
                "r", "rts", "--epochs", "3", "--train-size", "256", "--test-size", "16", "--jobs", "2",
                "--out", str(tmp_path / f"e{n}")]
        proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        assert proc.stdout.readline().startswith("plan:")      # the workers start after the plan
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
        assert proc.returncode == EXIT_INTERRUPTED, (delay, err)
        assert err == "stnref: interrupted\n", (delay, err)


def test_main_restores_the_sigint_handler(tmp_path, capsys):
    before = signal.getsignal(signal.SIGINT)
    run_main(capsys, "evaluate", tmp_path / "none")
    assert signal.getsignal(signal.SIGINT) is before


def test_the_first_interrupt_raises_and_later_ones_are_ignored():
    before = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(KeyboardInterrupt):
            cli._on_interrupt(signal.SIGINT, None)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


# --------------------------------------------------------------------------- a user's module


HOSTILE_MODULES = {
    "getattr_import_error": "def __getattr__(name):\n    raise ImportError('no ' + name)\n",
    "getattr_system_exit": "def __getattr__(name):\n    raise SystemExit(0)\n",
    "getattr_bad_str": ("class E(Exception):\n    def __str__(self):\n        raise RuntimeError\n"
                        "def __getattr__(name):\n    raise E()\n"),
    "import_bad_str": "class E(Exception):\n    def __str__(self):\n        raise RuntimeError\nraise E()\n",
    "removes_cwd": "import os, sys\nsys.path.remove(os.getcwd())\ndef fn(U, grid):\n    return U\n",
    "nested_raises": ("class C:\n    @property\n    def fn(self):\n        raise OSError('disk')\n"
                      "c = C()\n"),
}


@pytest.mark.parametrize("module", sorted(HOSTILE_MODULES))
def test_a_user_module_raising_anything_is_one_error(tmp_path, monkeypatch, capsys, module):
    (tmp_path / f"{module}.py").write_text(HOSTILE_MODULES[module])
    monkeypatch.chdir(tmp_path)
    spec = f"{module}:c.fn" if module == "nested_raises" else f"{module}:fn"
    path_before = list(sys.path)
    try:
        if module == "removes_cwd":
            assert callable(load_callable(spec))
        else:
            with pytest.raises(ValueError, match=f"load_callable\\(\\): .*{module}"):
                load_callable(spec)
            assert_user_error(run_main(capsys, "reference", "diagnose", spec), module)
    finally:
        sys.modules.pop(module, None)
    assert sys.path == path_before


# --------------------------------------------------------------------------- dry run


def test_a_dry_run_measures_nothing(tmp_path, capsys, monkeypatch):
    def measuring(*args, **kwargs):
        raise AssertionError("a dry run measured steps")

    monkeypatch.setattr(experiment, "step_seconds", measuring)
    proc = run_main(capsys, *GRID, "--out", tmp_path / "e", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "time not estimated: --estimate measures 4 training steps of each of the 2 kinds" \
        in proc.stdout


def test_an_estimate_says_it_is_measuring(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(experiment, "step_seconds", lambda config: 0.01)
    proc = run_main(capsys, *GRID, "--out", tmp_path / "e", "--dry-run", "--estimate")
    assert proc.returncode == 0, proc.stderr
    # in the order the cells run, longest first
    assert "measuring step times: kind 1 of 2 (r st-fcn-affine)" in proc.stderr
    assert "measuring step times: kind 2 of 2 (r fcn)" in proc.stderr
    assert "measured step times of 2 kinds of cell" in proc.stderr
    assert "estimated 0 s on" in proc.stdout and not (tmp_path / "e").exists()


# --------------------------------------------------------------------------- pipes


def test_a_closed_stdout_ends_the_command_quietly(tmp_path):
    """``stnref ... | head -1``: the reader goes away; no error line, no traceback, 141."""
    with subprocess.Popen([sys.executable, "-m", "stnref", *GRID, "--out", str(tmp_path / "e"),
                           "--dry-run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        proc.stdout.close()                   # before the plan is printed (imports come first)
        err = proc.stderr.read()
        assert proc.wait(timeout=SUBPROCESS_TIMEOUT) == cli.EXIT_BROKEN_PIPE, err
    assert err == b""


# --------------------------------------------------------------------------- warnings


def test_the_suite_fails_on_a_warning_of_the_library():
    """pyproject's filterwarnings makes a warning attributed to a stnref module an error."""
    with pytest.raises(RuntimeWarning):
        warnings.warn_explicit("invalid value", RuntimeWarning, "sampling.py", 1,
                               module="stnref.sampling")
    with warnings.catch_warnings(record=True) as seen:          # another module's: not ours
        warnings.warn_explicit("elsewhere", UserWarning, "x.py", 1, module="other")
    assert len(seen) == 1


NONFINITE = [np.nan, np.inf, -np.inf, 1e300]


@pytest.mark.parametrize("bad", NONFINITE)
def test_the_documented_non_finite_rules_are_quiet(bad):
    """conventions §5: non-finite and huge values go through the sampler, the grids, their
    second order and the layers without a RuntimeWarning, and leave NumPy's error state as
    it was."""
    from stnref import nn, second_order

    rng = np.random.default_rng(0)
    U, grid = rng.random((2, 3, 5, 4)), rng.uniform(-1, 1, (2, 3, 4, 2))
    grid[0, 1, 2, 0] = bad
    U[1, 0, 2, 3] = bad
    dV = np.ones((2, 3, 3, 4))
    before = np.geterr()
    with warnings.catch_warnings(), np.errstate(divide="warn", over="warn", invalid="warn"):
        warnings.simplefilter("error")
        for mode in ("bilinear", "nearest", "bicubic"):
            for padding in ("zeros", "border", "reflection"):
                kw = {"mode": mode, "padding_mode": padding}
                stnref.grid_sample(U, grid, **kw)
                stnref.grid_sample_backward(dV, U, grid, **kw)
                second_order.grid_sample_jvp(U, grid, U, grid, **kw)
                second_order.grid_sample_double_backward(U, grid, dV, U, grid, **kw)
        stnref.affine_grid_backward(grid, (2, 1, 3, 4))
        stnref.projective_grid_backward(grid, np.eye(3)[None].repeat(2, 0), (2, 1, 3, 4))
        x = np.full((2, 3), bad)
        layer = nn.Linear(3, 2)
        layer.backward(np.ones_like(layer(x)))
        nn.tanh_backward(np.full((2, 3), bad), np.full((2, 3), np.inf))
        nn.cross_entropy(np.array([[bad, 0.0]]), np.array([0]))
        conv = nn.Conv2d(3, 2, 3, padding=1)
        conv.backward(np.ones_like(conv(U)))
    assert np.geterr() == before
