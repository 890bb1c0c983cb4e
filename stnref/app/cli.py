"""The ``stnref`` command line: train, evaluate, demo, experiment, bench, reference.

User errors (bad arguments, unreadable files, invalid values) print one line
``stnref: error: ...`` and exit with status 2; never a traceback.  Ctrl-C at any
moment of :func:`main` prints ``stnref: interrupted`` and exits with status 130.
This module imports only what parsing the first arguments needs, so the command
starts (and handles Ctrl-C) before NumPy is loaded.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys

from .. import __version__
from .._text import shown

EXIT_USAGE = 2
EXIT_TRAINING = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141   # 128 + SIGPIPE, as a shell reports a command its pipe's reader left
MESSAGE_CHARS = 10_000   # the longest message printed: a user's text in it never floods the terminal


class UserError(Exception):
    """A problem with what the user asked for: reported in one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"{self.prog}: {message}")


def _integer(minimum, description):
    """An argparse type: an integer from ``minimum`` to ``2**53``, compared as an integer.

    The range is checked before any float arithmetic (:data:`stnref._checks.MAX_INT`), so
    a 400-digit ``--seed`` is one line, not an ``OverflowError``.
    """

    def parse(text):
        from .._checks import MAX_INT, check_int

        try:
            value = int(text)
        except ValueError:  # not an integer, or more digits than Python converts
            raise argparse.ArgumentTypeError(f"expected {description}, got {_quoted(text)}") \
                from None
        try:
            return check_int(value, "value", "parse", minimum=minimum, maximum=MAX_INT)
        except ValueError:
            limit = f" of at most 2**53 = {MAX_INT}" if value > MAX_INT else ""
            raise argparse.ArgumentTypeError(f"expected {description}{limit}, got "
                                             f"{_quoted(text)}") from None

    return parse


def _real(accept, description):
    """An argparse type: a finite float for which ``accept(value)`` holds."""

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {description}, got {_quoted(text)}")
        return value

    return parse


def _quoted(text):
    """User ``text`` quoted for a message: escaped, and cut if long (:func:`stnref._text.shown`)."""
    return shown(repr(text))


_positive_int = _integer(1, "a positive integer")
_nonnegative_int = _integer(0, "an integer >= 0")
_positive_float = _real(lambda v: v > 0, "a positive finite number")
_momentum = _real(lambda v: 0 <= v < 1, "a number in [0, 1)")
ALL = "all"


def _path(text):
    """An argparse type: a non-empty path (an empty one would silently mean '.')."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a path, got {_quoted(text)}")
    return text


def _or_word(parse, word, value):
    """An argparse type: ``parse(text)``, or ``value`` for the literal ``word``."""

    def either(text):
        return value if text == word else parse(text)

    return either


_size = _or_word(_positive_int, ALL, ALL)                 # samples per split, or every one
_clip = _or_word(_positive_float, "none", None)           # gradient-norm clip, or none

# TrainConfig field -> the flag that sets it (and how its value is printed)
FLAGS = {"model": "--model", "transform": "--transform", "distortion": "--distortion",
         "data": "--data", "epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr",
         "loc_lr_scale": "--loc-lr-scale", "momentum": "--momentum", "optimizer": "--optimizer",
         "schedule": "--schedule", "train_size": "--train-size", "test_size": "--test-size",
         "redistort": "--redistort", "validation": "--validation",
         "seed": "--seed", "clip_norm": "--clip-norm", "checkpoint_every": "--checkpoint-every",
         "on_nonfinite": "--on-nonfinite"}


def _add_train_options(p, defaults):
    """Options of ``stnref train``.  None has a parser default: what the user gave is in the
    parsed namespace and the rest comes from :class:`TrainConfig`, so a resumed run can tell
    an option that was given from one that was not."""
    from ..data import DISTORTIONS
    from ..networks import MODEL_NAMES
    from ..registry import TRANSFORMS
    from .train import ON_NONFINITE, OPTIMIZERS

    d = defaults
    p.add_argument("--model", choices=MODEL_NAMES,
                   help=f"network of the paper (default: {d.model})")
    p.add_argument("--transform", choices=tuple(TRANSFORMS),
                   help="the transformer's transform; st-fcn and st-cnn only (default: affine)")
    p.add_argument("--distortion", choices=DISTORTIONS,
                   help=f"distortion of the digits, paper §4.1 (default: {d.distortion})")
    p.add_argument("--data", type=_path, metavar="DIR",
                   help="directory with the four MNIST-format IDX files, plain or .gz "
                        "(default: built-in digits)")
    p.add_argument("--epochs", type=_positive_int,
                   help=f"total epochs; with --resume, at least the run's own, to extend it "
                        f"(default: {d.epochs})")
    p.add_argument("--batch-size", type=_positive_int,
                   help=f"samples per step; the last batch of an epoch holds the rest "
                        f"(default: {d.batch_size})")
    p.add_argument("--lr", type=_positive_float, help=f"base learning rate (default: {d.lr})")
    p.add_argument("--loc-lr-scale", type=_positive_float,
                   help="learning-rate multiplier of the localisation net; st-fcn and st-cnn "
                        "only (default: 1)")
    p.add_argument("--momentum", type=_momentum,
                   help="momentum; --optimizer sgd only (default: 0.9)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=f"default: {d.optimizer}")
    p.add_argument("--schedule", metavar="SPEC",
                   help="learning-rate schedule, lengths E in epochs: constant, step:E[:GAMMA], "
                        "cosine[:E[:FINAL]] (E: --epochs, stored as a number), warmup:E, or terms joined "
                        f"by + (multiplied), e.g. warmup:1+cosine (default: {d.schedule})")
    p.add_argument("--train-size", type=_size, metavar="N|all",
                   help=f"training samples used (default: {d.train_size})")
    p.add_argument("--test-size", type=_size, metavar="N|all",
                   help=f"test samples used (default: {d.test_size})")
    p.add_argument("--redistort", action="store_const", const=True,
                   help="draw the training images' distortions anew every epoch (default: one "
                        "fixed draw)")
    p.add_argument("--validation", action="store_const", const=True,
                   help="evaluate on the --test-size training digits after the first --train-size "
                        "instead of the test set, to choose settings (default: the test set)")
    p.add_argument("--seed", type=_nonnegative_int,
                   help=f"seeds data, initialisation and order (default: {d.seed})")
    p.add_argument("--clip-norm", type=_clip, metavar="X|none",
                   help=f"gradient-norm clipping threshold (default: {d.clip_norm})")
    p.add_argument("--checkpoint-every", type=_positive_int, metavar="STEPS",
                   help=f"mid-epoch checkpoint period (default: {d.checkpoint_every})")
    p.add_argument("--on-nonfinite", choices=ON_NONFINITE,
                   help="on a non-finite loss, theta or gradient: stop (keeping the last "
                        f"checkpoint) or skip the step (default: {d.on_nonfinite})")


# stnref experiment's defaults without --preset (options given replace a preset's values)
EXPERIMENT_DEFAULTS = {"models": ["fcn", "cnn", "st-fcn", "st-cnn"], "transforms": None,
                       "distortions": ["r", "rts", "p", "e"], "seeds": 1, "epochs": 5,
                       "train_size": 20_000, "test_size": 5_000, "data": None,
                       "jobs": os.cpu_count() or 1, "dry_run": False, "estimate": False,
                       "validation": False}


def _add_experiment_options(p):
    """Options of ``stnref experiment`` (:func:`stnref.app.experiment.run_experiment`); the
    parser keeps only the options given (``argument_default=SUPPRESS``), so a preset can tell
    them from its own settings."""
    from .table1 import PRESETS

    d = EXPERIMENT_DEFAULTS
    p.add_argument("--preset", choices=PRESETS,
                   help="table1: the paper's Table 1 (R, RTS, P, E, TC) with settings chosen per "
                        "cell; the options below replace its values (default: none)")
    p.add_argument("--models", nargs="+", choices=("fcn", "cnn", "st-fcn", "st-cnn"),
                   help=f"default: {d['models']}")
    p.add_argument("--transforms", nargs="+", choices=("affine", "projective", "tps"),
                   help="transforms of the ST models; st-fcn and st-cnn only "
                        "(default: ['affine', 'projective', 'tps'])")
    p.add_argument("--distortions", nargs="+", choices=("r", "rts", "p", "e", "tc"),
                   help=f"default: {d['distortions']}; table1: also tc")
    p.add_argument("--seeds", type=_positive_int,
                   help=f"seeds per cell (the paper: 3; default: {d['seeds']})")
    p.add_argument("--epochs", type=_positive_int,
                   help=f"epochs of every cell (default: {d['epochs']}; table1: per cell)")
    p.add_argument("--train-size", type=_size, metavar="N|all",
                   help=f"training samples per cell (default: {d['train_size']}; table1: all)")
    p.add_argument("--test-size", type=_size, metavar="N|all",
                   help=f"test samples per cell (default: {d['test_size']}; table1: all)")
    p.add_argument("--validation", action="store_const", const=True,
                   help="evaluate every cell on the --test-size training digits after the first "
                        "--train-size instead of the test set, to choose settings "
                        "(default: the test set)")
    p.add_argument("--data", type=_path, metavar="DIR",
                   help="directory with MNIST-format IDX files (default: built-in digits)")
    p.add_argument("--out", type=_path, required=True, metavar="DIR",
                   help="results and one run directory per cell; re-running resumes matching cells")
    p.add_argument("--jobs", type=_positive_int,
                   help="cells trained at once, in worker processes with one BLAS thread each; "
                        f"results do not depend on it (default: this machine's cores, {d['jobs']})")
    p.add_argument("--dry-run", action="store_const", const=True,
                   help="print the plan, train nothing")
    p.add_argument("--estimate", action="store_const", const=True,
                   help="also estimate the wall time, from a few training steps of each kind of "
                        "cell measured first (seconds to minutes, with progress on stderr)")


def _check_output_file(path, option):
    """Refuse, before any work, an output file ``path`` whose directory is missing or that is
    a directory: a :class:`UserError` naming ``option``."""
    if path is None:
        return
    parent = os.path.dirname(os.path.realpath(path))
    if os.path.isdir(path):
        raise UserError(f"{option}: {path!r} is a directory; give a file name")
    if os.path.exists(path) and not os.path.isfile(path):
        raise UserError(f"{option}: {path!r} is not a regular file (a FIFO, a device, ...); give a "
                        f"file name")
    if not os.path.isdir(parent):
        raise UserError(f"{option}: directory {parent!r} does not exist")


def _check_output_dir(path, option):
    """Refuse, before any work, an output directory ``path`` that is a file."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{option} {path}: a file, not a directory; give a directory")


def _write_file(path, data, option):
    """Write the bytes ``data`` to ``path`` atomically; a path that cannot be written is a
    :class:`UserError` naming ``option``."""
    from .._io import atomic_write_bytes

    _check_output_file(path, option)
    try:
        atomic_write_bytes(path, data)
    except OSError as err:
        raise UserError(f"{option}: cannot write {path!r}: {err.strerror or err}") from None


def _write_json(path, payload, option):
    """Write ``payload`` as JSON to ``path`` atomically (:func:`_write_file`)."""
    import json

    _write_file(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode(), option)


def _check_data_option(data):
    """``--data DIR`` as an absolute directory; a file or a missing path is one clear line."""
    if data is None:
        return None
    path = os.path.abspath(data)
    if os.path.isfile(path):
        raise UserError(f"--data {data}: a file; give the directory holding the four MNIST IDX "
                        f"files (train-images-idx3-ubyte[.gz], ...)")
    if not os.path.isdir(path):
        raise UserError(f"--data {data}: no such directory")
    return path


def _given(args):
    """The train options the user gave, as TrainConfig fields (``all`` sizes: None)."""
    given = {field: getattr(args, field) for field in FLAGS if hasattr(args, field)}
    for field in ("train_size", "test_size"):
        if given.get(field) == ALL:
            given[field] = None
    if "data" in given:
        given["data"] = _check_data_option(given["data"])
    return given


def _new_config(given):
    """The config of a new run: the options given over TrainConfig's defaults, checked with
    the flags' names; meaningless options are refused, not ignored."""
    from .train import TrainConfig, check_sizes

    config = TrainConfig(**given)
    if not config.model.startswith("st-"):
        for field in ("transform", "loc_lr_scale"):
            if field in given:
                raise UserError(f"{FLAGS[field]} {given[field]}: model {config.model} has no "
                                f"spatial transformer ({FLAGS[field]} is for st-fcn and st-cnn)")
    if config.optimizer != "sgd" and "momentum" in given:
        raise UserError(f"--momentum {given['momentum']}: optimizer {config.optimizer} has no "
                        f"momentum (--momentum is for --optimizer sgd)")
    try:
        check_sizes(config.train_size, config.test_size, config.data, config.validation)
        return config.validated()
    except (TypeError, ValueError) as err:
        raise UserError(str(err)) from None


def _same_schedule(spec, stored):
    """Whether ``spec`` is ``stored.schedule`` written another way ("cosine" for "cosine:10",
    "cosine:2.0" for "cosine:2", spaces): the same schedule over the run's steps."""
    from ..nn import parse_schedule

    steps = math.ceil(stored.train_size / stored.batch_size)
    try:
        mine = parse_schedule(spec, steps, stored.epochs)
    except (TypeError, ValueError):
        return False
    return mine == parse_schedule(stored.schedule, steps, stored.epochs)


def _resumed_config(given, run_dir):
    """The stored config of ``run_dir``, with ``--epochs`` raised if given; every other option
    given must be what the run was trained with (one line naming it otherwise)."""
    import dataclasses

    from ..data import split_sizes
    from .train import read_run

    stored, state, _, _ = read_run(run_dir)
    epochs = given.pop("epochs", stored.epochs)
    # what happens on a non-finite step may change: until one occurs, stop and skip are the same
    on_nonfinite = given.pop("on_nonfinite", stored.on_nonfinite)
    for field, asked in given.items():
        have = getattr(stored, field)
        if field in ("train_size", "test_size") and asked is None:      # 'all'
            asked = split_sizes(stored.data)[field == "test_size"]
        if field == "schedule" and _same_schedule(asked, stored):
            continue
        if asked != have:
            raise UserError(f"{FLAGS[field]} {_shown(field, given[field])}: the run in {run_dir} "
                            f"was trained with {field.replace('_', '-')} {_shown(field, have)}; a "
                            f"resumed run keeps its options (only --epochs may grow, and "
                            f"--on-nonfinite may change)")
    if epochs < stored.epochs:
        raise UserError(f"--epochs {epochs}: the run in {run_dir} is set to {stored.epochs} epochs "
                        f"({state['epoch']} trained); --epochs can only grow on --resume")
    if epochs > stored.epochs:
        from ..nn import parse_schedule

        print(f"extending {shown(run_dir)} from {stored.epochs} to {epochs} epochs "
              f"({state['epoch']} trained)")
        steps = math.ceil(stored.train_size / stored.batch_size)     # as train() counts them
        rate = parse_schedule(stored.schedule, steps, epochs)(stored.epochs * steps)
        if rate != 1:
            print(f"note: under the run's schedule {stored.schedule}, the added epochs start "
                  f"at {rate:.3g} x the base rate")
    return dataclasses.replace(stored, epochs=epochs, on_nonfinite=on_nonfinite)


def _shown(field, value):
    """A config value as the command line spells it (None: the option's word for it)."""
    if value is not None:
        return value
    return {"train_size": "all", "test_size": "all", "clip_norm": "none", "data": "none (built-in digits)",
            }.get(field, "none (does not apply)")


def cmd_train(args):
    """Handler of ``stnref train``: train (or ``--resume``) a run in ``--out``; returns 0."""
    import numpy as np

    from .train import CHECKPOINT, train

    _check_output_dir(args.out, "--out")
    if os.path.isdir(os.path.join(args.out, CHECKPOINT)):
        raise UserError(f"--out {args.out}: its {CHECKPOINT} is a directory, not a checkpoint")
    exists = os.path.exists(os.path.join(args.out, CHECKPOINT))
    if args.resume and not exists:
        raise UserError(f"--resume: no checkpoint in {args.out!r}")
    if not args.resume and exists:
        raise UserError(f"{args.out!r} already holds a run; use --resume to continue it "
                        f"or choose another --out")
    given = _given(args)
    config = _resumed_config(given, args.out) if args.resume else _new_config(given)
    # Training checks losses, thetas and gradients for non-finite values itself (and stops or
    # skips); numpy's overflow warnings on the way there would only clutter the report.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        result = train(config, args.out, resume=args.resume, on_nonfinite=config.on_nonfinite)
    last = result["epochs"][-1] if result["epochs"] else None
    if last is not None:
        print(f"{'validation' if config.validation else 'test'} error {last['test_error']:.2f}% "
              f"after {last['epoch']} epochs; run in {shown(args.out)}")
    return 0


def cmd_evaluate(args):
    """Handler of ``stnref evaluate RUN_DIR [--json FILE]``: print (and save) the test error."""
    import dataclasses

    from ..data import load_dataset
    from .train import CHECKPOINT, LOCK, METRICS, evaluate, load_run

    _check_output_file(args.json, "--json")
    if args.json and os.path.realpath(args.json) in {
            os.path.realpath(os.path.join(args.run_dir, name)) for name in (CHECKPOINT, METRICS, LOCK)}:
        raise UserError(f"--json {args.json}: a file of the run itself; give another file name")
    config, model, _, state, _ = load_run(args.run_dir)
    _, _, x_test, y_test = load_dataset(config.distortion, config.data, 1, config.test_size,
                                        config.seed)
    import numpy as np

    with np.errstate(all="ignore"):    # non-finite weights are reported below, not warned about
        error, loss = evaluate(model, x_test, y_test)
    model_name = config.model if config.transform is None else f"{config.model} {config.transform}"
    partial = f" and {state['step']} steps of epoch {state['epoch'] + 1}" if state["step"] else ""
    print(f"test error {error:.2f}% (loss {loss:.4f}) on {len(x_test)} samples, "
          f"{model_name} {config.distortion}, epoch {state['epoch']}{partial}")
    bad = [k for k, p in model.params.items() if not np.isfinite(p).all()]
    if bad:
        print(f"note: {len(bad)} of {len(model.params)} parameter arrays of the run hold non-finite "
              f"values ({bad[0]}, ...): the test error is that of a broken model")
    elif not math.isfinite(loss):
        print(f"note: the model's outputs are not finite on the test set (loss {loss}): the test "
              f"error is that of a broken model")
    if args.json:
        payload = {"run": os.path.abspath(args.run_dir), "epoch": state["epoch"], "step": state["step"],
                   "test_error": error, "test_loss": loss if math.isfinite(loss) else None,
                   "test_size": len(x_test), "config": dataclasses.asdict(config)}
        _write_json(args.json, payload, "--json")
    return 0


def cmd_demo(args):
    """Handler of ``stnref demo``: FCN vs ST-FCN on built-in RTS digits, with figures."""
    from .demo import run_demo

    _check_output_dir(args.out, "--out")
    run_demo(args.out, seed=args.seed)
    return 0


def cmd_experiment(args):
    """Handler of ``stnref experiment``: the paper's Table 1 grid on a stated budget."""
    _check_output_dir(args.out, "--out")
    given = {k: v for k, v in vars(args).items() if k in EXPERIMENT_DEFAULTS}
    for size in ("train_size", "test_size"):
        if given.get(size) == ALL:
            given[size] = None
    if "data" in given:
        given["data"] = _check_data_option(given["data"])
    if getattr(args, "preset", None) == "table1":
        from .table1 import run_table1

        run_table1(args.out, **given)
        return 0
    from .experiment import run_experiment

    o = {**EXPERIMENT_DEFAULTS, **given}
    run_experiment(o["models"], o["transforms"], o["distortions"], o["seeds"], o["epochs"],
                   o["train_size"], o["test_size"], o["data"], args.out, jobs=o["jobs"],
                   dry_run=o["dry_run"], estimate=o["estimate"], validation=o["validation"])
    return 0


def cmd_bench(args):
    """Handler of ``stnref bench``: time the sampler, optionally writing a markdown report."""
    import numpy as np

    from .bench import SHAPES, check_report_target, run, write_report

    _check_output_file(args.markdown, "--markdown")
    try:
        if args.markdown:
            check_report_target(args.markdown)
    except ValueError as err:
        raise UserError(f"--markdown: {err}") from None
    dtypes = {"float32": (np.float32,), "float64": (np.float64,),
              "both": (np.float32, np.float64)}[args.dtype]
    chosen = None
    if args.mode or args.padding_mode:
        from ..sampler_settings import SETTINGS
        chosen = {(m, p) for m, p in SETTINGS if m in (args.mode or (m,))
                  and p in (args.padding_mode or (p,))}
    report = run(SHAPES, dtypes, rounds=args.rounds, modes=not args.quick, scaling=args.scaling,
                 large=args.large, settings=chosen)
    if args.markdown:
        try:
            write_report(args.markdown, report)
        except OSError as err:
            raise UserError(f"--markdown: cannot write {args.markdown!r}: {err.strerror or err}") from None
    return 0


def cmd_reference(args):
    """Handler of ``stnref reference export|check|diagnose``.

    ``check`` returns 1 if any case fails; ``diagnose`` returns 1 unless the sampler matches
    a PyTorch setting on finite inputs.
    """
    from .. import reference

    if args.action == "export":
        _check_output_dir(args.directory, "DIR")
        reference.export(args.directory)
        print(f"wrote golden cases to {shown(args.directory)}")
        return 0
    if args.action == "diagnose":
        from ..reference.diagnosis import load_callable

        _check_output_file(args.json, "--json")
        try:
            fn = load_callable(args.function)
            backward = load_callable(args.backward) if args.backward else None
        except ValueError as err:
            raise UserError(str(err)) from None
        diagnosis = reference.diagnose(fn, backward)
        print(diagnosis.report())
        if args.json:
            _write_json(args.json, diagnosis.to_json(), "--json")
            print(f"wrote {shown(args.json)}")
        return 0 if diagnosis.matches_pytorch else 1
    return _reference_check(args)


def _report_path(path, option, golden, results):
    """Refuse, before any work, a report file that would overwrite golden or result files."""
    if path is None:
        return
    _check_output_file(path, option)
    where = os.path.dirname(os.path.realpath(path))
    if where == os.path.realpath(golden) or (
            where == os.path.realpath(results) and path.endswith((".npz", ".npy"))):
        raise UserError(f"{option} {shown(path)}: a file among the golden cases or the results; "
                        f"give a file elsewhere")


def _reference_check(args):
    """``stnref reference check``: the table on stdout, and the JSON and JUnit reports if
    asked; 1 if a selected case fails."""
    from ..reference import golden

    for option, path in (("--json", args.json), ("--junit", args.junit)):
        _report_path(path, option, args.directory, args.results)
    if args.json and args.junit and os.path.realpath(args.json) == os.path.realpath(args.junit):
        raise UserError(f"--junit {shown(args.junit)}: the same file as --json; give two files")
    outputs = None if args.outputs is None else [n for names in args.outputs for n in names]
    report = golden.run_check(args.directory, args.results, outputs=outputs, only=args.only or (),
                              exclude=args.exclude or (), dtype=args.dtype)
    print(report.table())
    for option, path, data in (("--json", args.json, report.json_bytes),
                               ("--junit", args.junit, report.junit_bytes)):
        if path:
            _write_file(path, data(), option)
            print(f"wrote {path}")
    return 0 if report.ok else 1


def _pattern(text):
    """An argparse type: a non-empty shell pattern on case ids."""
    if not text:
        raise argparse.ArgumentTypeError("expected a pattern such as 'grid_sample-*', got ''")
    return text


def _output_names(text):
    """An argparse type: output names separated by commas (``V`` or ``V,dU,dgrid``)."""
    names = [n.strip() for n in text.split(",")]
    if not all(n.isidentifier() for n in names):
        raise argparse.ArgumentTypeError(f"expected output names separated by commas, e.g. "
                                         f"V,dU,dgrid, got {text!r}")
    return names


def build_parser():
    """The ``argparse`` parser of the ``stnref`` command (errors raise :class:`UserError`)."""
    from ..sampler_settings import MODES, PADDING_MODES
    from .demo import DEMO_DIR
    from .train import TrainConfig

    defaults = TrainConfig()
    parser = _Parser(prog="stnref", description="Spatial Transformer Networks in NumPy: "
                     "train and evaluate the paper's networks, benchmark, check other "
                     "implementations.")
    parser.add_argument("--version", action="version", version=f"stnref {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser,
                                metavar="COMMAND")

    p = sub.add_parser("train", help="train a network of the paper on distorted digits",
                       argument_default=argparse.SUPPRESS)
    _add_train_options(p, defaults)
    p.add_argument("--out", type=_path, required=True, metavar="RUN_DIR",
                   help="the run's directory: checkpoint.npz and metrics.json")
    p.add_argument("--resume", action="store_true", default=False,
                   help="continue the run in --out with its own options (--epochs may grow)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="print the test error of a trained run")
    p.add_argument("run_dir", type=_path, metavar="RUN_DIR")
    p.add_argument("--json", type=_path, metavar="FILE", help="also write the result as JSON (default: none)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="FCN vs ST-FCN on built-in RTS digits, with figures "
                       "(under a minute on 2 idle cores)")
    p.add_argument("--out", type=_path, default=DEMO_DIR, metavar="DIR",
                   help="where the two runs and the figures go, replacing an earlier demo's "
                        "(default: %(default)s)")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="default: %(default)s")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("experiment", help="the paper's Table 1 grid on a stated budget",
                       argument_default=argparse.SUPPRESS)
    _add_experiment_options(p)
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("bench", help="time the sampler (against PyTorch when installed)")
    p.add_argument("--rounds", type=_positive_int, default=7,
                   help="interleaved rounds per case (default: %(default)s)")
    p.add_argument("--dtype", choices=("float32", "float64", "both"), default="both",
                   help="default: %(default)s")
    p.add_argument("--quick", action="store_true", help="skip the per-mode tables")
    p.add_argument("--mode", nargs="+", choices=MODES, metavar="MODE",
                   help=f"per-mode tables: only these modes ({', '.join(MODES)}; default: all)")
    p.add_argument("--padding-mode", nargs="+", choices=PADDING_MODES, metavar="PADDING",
                   help=f"per-mode tables: only these paddings ({', '.join(PADDING_MODES)}; "
                        f"default: all)")
    p.add_argument("--scaling", action="store_true", help="add the cost-scaling table")
    p.add_argument("--large", action="store_true", help="add the (1, 1, 1024, 1024) shape")
    p.add_argument("--markdown", type=_path, metavar="FILE",
                   help="also write the report to FILE, between its bench markers if it has "
                        "them (default: none)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("reference", help="golden vectors and a diagnosis for other implementations")
    rsub = p.add_subparsers(dest="action", required=True, parser_class=_Parser, metavar="ACTION")
    r = rsub.add_parser("export", help="write the golden cases to DIR")
    r.add_argument("directory", type=_path, metavar="DIR")
    r = rsub.add_parser("check", help="compare RESULTS (laid out like DIR) with the golden cases "
                        "(exit 0 only if no selected case fails)")
    r.add_argument("directory", type=_path, metavar="DIR",
                   help="the golden cases, written by stnref reference export")
    r.add_argument("results", type=_path, metavar="RESULTS",
                   help="per case <case id>.npz, or a directory <case id>/ of <name>.npy files")
    r.add_argument("--outputs", type=_output_names, action="append", metavar="V[,dU,dgrid,...]",
                   help="judge only these outputs (a forward-only kernel: --outputs V); cases "
                        "with none of them are skipped (default: every output)")
    r.add_argument("--only", type=_pattern, action="append", metavar="PATTERN",
                   help="check only case ids matching this shell pattern, e.g. 'grid_sample-*'; "
                        "repeatable (default: every case)")
    r.add_argument("--exclude", type=_pattern, action="append", metavar="PATTERN",
                   help="skip case ids matching this shell pattern; repeatable (default: none)")
    r.add_argument("--dtype", choices=("float32",),
                   help="judge every case against its float32 answers with float32 tolerances, "
                        "for a kernel that computes in float32 (default: each case's own dtype)")
    r.add_argument("--json", type=_path, metavar="FILE",
                   help="also write the verdicts as JSON, one entry per case (default: none)")
    r.add_argument("--junit", type=_path, metavar="FILE",
                   help="also write the verdicts as JUnit XML for CI, one testcase per case "
                        "(default: none)")
    r = rsub.add_parser("diagnose", help="probe a sampler and say which conventions it follows "
                        "(exit 0 if it matches a PyTorch setting on finite inputs)",
                        description="Probe a 2-D sampler fn(U, grid) -> V with designed inputs and say "
                        "which of PyTorch's grid_sample conventions it follows, with the evidence "
                        "(docs/kernel_authors.md).",
                        epilog="exit status: 0 if the sampler (and its backward, if given) matches a "
                        "PyTorch grid_sample setting on finite inputs; 1 if it differs, with each "
                        f"difference in the report; {EXIT_USAGE} if MODULE:FUNCTION cannot be loaded "
                        f"or an option is wrong; {EXIT_INTERRUPTED} if interrupted.")
    r.add_argument("function", metavar="MODULE:FUNCTION",
                   help="fn(U, grid) -> V on NumPy arrays, importable from the current directory")
    r.add_argument("--backward", metavar="MODULE:FUNCTION",
                   help="backward(dV, U, grid) -> (dU, dgrid) (default: forward only)")
    r.add_argument("--json", type=_path, metavar="FILE", help="also write the diagnosis as JSON (default: none)")
    p.set_defaults(func=cmd_reference)
    return parser


def main(argv=None):
    """Entry point of the ``stnref`` console script; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        The arguments; None: ``sys.argv[1:]``, as the console script and
        ``python -m stnref`` call it, ending the process right after.

    Returns
    -------
    int
        0 on success, 1 for a failed check or diagnosis, 2 for a user error, 3 for
        training stopped on a non-finite value, 130 when interrupted, 141 when the
        reader of stdout went away.

    Notes
    -----
    Ctrl-C at any moment of the call ends it with ``stnref: interrupted`` and 130: the
    first SIGINT interrupts the command (a ``KeyboardInterrupt``, so files being written
    are cleaned up) and later ones are ignored while it winds down.  The previous SIGINT
    handler is restored on return, except when ``argv`` is None: the process then ends
    with that status whatever Ctrl-C follows.
    """
    previous = None
    try:
        previous = _interrupt_once()
        return _run(sys.argv[1:] if argv is None else list(argv))
    except KeyboardInterrupt:
        _say("stnref: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:     # the reader of stdout left (stnref ... | head): end quietly
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN if argv is None else previous)


def _interrupt_once():
    """Install :func:`_on_interrupt` for SIGINT; returns the previous handler (None where
    handlers cannot be set: outside the main thread)."""
    try:
        return signal.signal(signal.SIGINT, _on_interrupt)
    except ValueError:
        return None


def _on_interrupt(signum, frame):
    """The first Ctrl-C interrupts the command; later ones are ignored while it winds down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _silence_stdout():
    """Point stdout at the null device, so flushing it at exit does not fail again."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):   # no stdout file descriptor: nothing to flush
        pass


def _say(message):
    """Print ``message`` to stderr on one line (:func:`stnref._text.shown`)."""
    print(shown(message, MESSAGE_CHARS), file=sys.stderr)


def _run(argv):
    """:func:`main` without the interrupt handling."""
    from .train import TrainingError

    parser = build_parser()
    if not argv:  # no command: the usage and the list of commands, as a user error
        print(parser.format_help(), file=sys.stderr, end="")
        return EXIT_USAGE
    try:
        args = parser.parse_args(argv)
        return args.func(args)
    except UserError as err:
        _say(f"stnref: error: {err}")
        return EXIT_USAGE
    except TrainingError as err:
        _say(f"stnref: training stopped: {err.problem}; {err.on_disk}; --on-nonfinite skip skips "
             f"such steps")
        return EXIT_TRAINING
    except BrokenPipeError:
        raise
    except (ValueError, TypeError, OSError) as err:
        _say(f"stnref: error: {str(err) or type(err).__name__}")
        return EXIT_USAGE
