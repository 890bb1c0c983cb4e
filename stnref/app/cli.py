"""The ``stnref`` command line: train, evaluate, demo, experiment, bench, reference.

User errors (bad arguments, unreadable files, invalid values) print one line
``stnref: error: ...`` and exit with status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys

from .. import __version__
from .._io import atomic_write_bytes

EXIT_USAGE = 2
EXIT_TRAINING = 3
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A problem with what the user asked for: reported in one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"{self.prog}: {message}")


def _number(kind, accept, description):
    """An argparse type: a finite ``kind(text)`` for which ``accept(value)`` holds."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _number(float, lambda v: v > 0, "a positive finite number")


def _add_train_options(p, defaults):
    from ..data import DISTORTIONS
    from ..networks import MODEL_NAMES
    from ..registry import TRANSFORMS
    from .train import ON_NONFINITE, OPTIMIZERS

    p.add_argument("--model", choices=MODEL_NAMES, default=defaults.model,
                   help="network of the paper (default: %(default)s)")
    p.add_argument("--transform", choices=tuple(TRANSFORMS), default=defaults.transform,
                   help="the transformer's transform, for st-* models (default: %(default)s)")
    p.add_argument("--distortion", choices=DISTORTIONS, default=defaults.distortion,
                   help="distortion of the digits, paper §4.1 (default: %(default)s)")
    p.add_argument("--data", metavar="DIR", default=None,
                   help="directory with MNIST-format IDX files (default: built-in digits)")
    p.add_argument("--epochs", type=_positive_int, default=defaults.epochs,
                   help="total epochs, also when resuming (default: %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=defaults.batch_size,
                   help="default: %(default)s")
    p.add_argument("--lr", type=_positive_float, default=defaults.lr,
                   help="base learning rate (default: %(default)s)")
    p.add_argument("--loc-lr-scale", type=_positive_float, default=defaults.loc_lr_scale,
                   help="learning-rate multiplier of the localisation net (default: %(default)s)")
    p.add_argument("--momentum", type=float, default=defaults.momentum,
                   help="SGD momentum (default: %(default)s)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=defaults.optimizer,
                   help="default: %(default)s")
    p.add_argument("--schedule", metavar="SPEC", default=defaults.schedule,
                   help="learning-rate schedule, lengths E in epochs: constant, step:E[:GAMMA], "
                        "cosine[:E[:FINAL]] (E defaults to --epochs), warmup:E, or terms joined "
                        "by + (multiplied), e.g. warmup:1+cosine (default: %(default)s)")
    p.add_argument("--train-size", type=_positive_int, default=defaults.train_size,
                   help="training samples used (default: %(default)s)")
    p.add_argument("--test-size", type=_positive_int, default=defaults.test_size,
                   help="test samples used (default: %(default)s)")
    p.add_argument("--seed", type=_nonnegative_int, default=defaults.seed,
                   help="seeds data, initialisation and order (default: %(default)s)")
    p.add_argument("--checkpoint-every", type=_positive_int, default=defaults.checkpoint_every,
                   metavar="STEPS", help="mid-epoch checkpoint period (default: %(default)s)")
    p.add_argument("--on-nonfinite", choices=ON_NONFINITE, default=defaults.on_nonfinite,
                   help="stop (keeping the last good checkpoint) or skip the step")


def _add_experiment_options(p):
    """Options of ``stnref experiment`` (:func:`stnref.app.experiment.run_experiment`)."""
    p.add_argument("--models", nargs="+", choices=("fcn", "cnn", "st-fcn", "st-cnn"),
                   default=["fcn", "cnn", "st-fcn", "st-cnn"])
    p.add_argument("--transforms", nargs="+", choices=("affine", "projective", "tps"),
                   default=["affine", "projective", "tps"])
    p.add_argument("--distortions", nargs="+", choices=("r", "rts", "p", "e", "tc"),
                   default=["r", "rts", "p", "e"])
    p.add_argument("--seeds", type=_positive_int, default=1, help="seeds per cell (paper: 3)")
    p.add_argument("--epochs", type=_positive_int, default=5)
    p.add_argument("--train-size", type=_positive_int, default=20_000)
    p.add_argument("--test-size", type=_positive_int, default=5_000)
    p.add_argument("--data", metavar="DIR", default=None)
    p.add_argument("--out", required=True, metavar="DIR")


def _write_json(path, payload, option):
    """Write ``payload`` as JSON to ``path`` atomically; a path that cannot be written is a
    :class:`UserError` naming ``option``."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UserError(f"{option}: {path!r} is a directory; give a file name")
    if not os.path.isdir(parent):
        raise UserError(f"{option}: directory {parent!r} does not exist")
    try:
        atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())
    except OSError as err:
        raise UserError(f"{option}: cannot write {path!r}: {err.strerror or err}") from None


def _config_from(args):
    from .train import TrainConfig

    return TrainConfig(
        model=args.model, transform=args.transform, distortion=args.distortion, data=args.data,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, loc_lr_scale=args.loc_lr_scale,
        momentum=args.momentum, optimizer=args.optimizer, schedule=args.schedule,
        train_size=args.train_size,
        test_size=args.test_size, seed=args.seed, checkpoint_every=args.checkpoint_every,
        on_nonfinite=args.on_nonfinite,
    )


def cmd_train(args):
    """Handler of ``stnref train``: train (or ``--resume``) a run in ``--out``; returns 0."""
    import numpy as np

    from .train import train

    config = _config_from(args)
    if args.resume and not os.path.exists(os.path.join(args.out, "checkpoint.npz")):
        raise UserError(f"--resume: no checkpoint in {args.out!r}")
    if not args.resume and os.path.exists(os.path.join(args.out, "checkpoint.npz")):
        raise UserError(f"{args.out!r} already holds a run; use --resume to continue it "
                        f"or choose another --out")
    # Training checks losses, thetas and gradients for non-finite values itself (and stops or
    # skips); numpy's overflow warnings on the way there would only clutter the report.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        result = train(config, args.out, resume=args.resume)
    last = result["epochs"][-1] if result["epochs"] else None
    if last is not None:
        print(f"test error {last['test_error']:.2f}% after {last['epoch']} epochs; "
              f"run in {args.out}")
    return 0


def cmd_evaluate(args):
    """Handler of ``stnref evaluate RUN_DIR [--json FILE]``: print (and save) the test error."""
    from ..data import load_dataset
    from .train import evaluate, load_run

    config, model, _, state, _ = load_run(args.run_dir)
    _, _, x_test, y_test = load_dataset(config.distortion, config.data, 1, config.test_size,
                                        config.seed)
    error, loss = evaluate(model, x_test, y_test)
    print(f"test error {error:.2f}% (loss {loss:.4f}) on {len(x_test)} samples, "
          f"{config.model} {config.transform} {config.distortion}, epoch {state['epoch']}")
    if args.json:
        payload = {"run": os.path.abspath(args.run_dir), "epoch": state["epoch"],
                   "test_error": error, "test_loss": loss, "test_size": len(x_test),
                   "config": dataclasses.asdict(config)}
        _write_json(args.json, payload, "--json")
    return 0


def cmd_demo(args):
    """Handler of ``stnref demo``: FCN vs ST-FCN on built-in RTS digits, with figures."""
    from .demo import run_demo

    run_demo(args.out, seed=args.seed)
    return 0


def cmd_experiment(args):
    """Handler of ``stnref experiment``: the paper's Table 1 grid on a stated budget."""
    from .experiment import run_experiment

    run_experiment(args)
    return 0


def cmd_bench(args):
    """Handler of ``stnref bench``: time the sampler, optionally writing a markdown report."""
    import numpy as np

    from .bench import SHAPES, run, write_report

    dtypes = {"float32": (np.float32,), "float64": (np.float64,),
              "both": (np.float32, np.float64)}[args.dtype]
    report = run(SHAPES, dtypes, rounds=args.rounds, modes=not args.quick, scaling=args.scaling,
                 large=args.large)
    if args.markdown:
        write_report(args.markdown, report)
    return 0


def cmd_reference(args):
    """Handler of ``stnref reference export|check|diagnose``.

    ``check`` returns 1 if any case fails; ``diagnose`` returns 1 unless the sampler matches
    a PyTorch setting on finite inputs.
    """
    from .. import reference

    if args.action == "export":
        reference.export(args.directory)
        print(f"wrote golden cases to {args.directory}")
        return 0
    if args.action == "diagnose":
        from ..reference.diagnosis import load_callable

        try:
            fn = load_callable(args.function)
            backward = load_callable(args.backward) if args.backward else None
        except ValueError as err:
            raise UserError(str(err)) from None
        diagnosis = reference.diagnose(fn, backward)
        print(diagnosis.report())
        if args.json:
            _write_json(args.json, diagnosis.to_json(), "--json")
            print(f"wrote {args.json}")
        return 0 if diagnosis.matches_pytorch else 1
    # sys.stdout looked up now, not at import (check's default), so redirections apply
    return 0 if reference.check(args.directory, args.results, out=sys.stdout) else 1


def build_parser():
    """The ``argparse`` parser of the ``stnref`` command (errors raise :class:`UserError`)."""
    from .train import TrainConfig

    defaults = TrainConfig()
    parser = _Parser(prog="stnref", description="Spatial Transformer Networks in NumPy: "
                     "train and evaluate the paper's networks, benchmark, export golden vectors.")
    parser.add_argument("--version", action="version", version=f"stnref {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a network of the paper on distorted digits")
    _add_train_options(p, defaults)
    p.add_argument("--out", required=True, metavar="RUN_DIR")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="print the test error of a trained run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="FCN vs ST-FCN on built-in RTS digits, with figures (~3 min)")
    p.add_argument("--out", default="stnref-demo", metavar="DIR")
    p.add_argument("--seed", type=_nonnegative_int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("experiment", help="the paper's Table 1 grid on a stated budget")
    _add_experiment_options(p)
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("bench", help="time the sampler (against PyTorch when installed)")
    p.add_argument("--rounds", type=_positive_int, default=7)
    p.add_argument("--dtype", choices=("float32", "float64", "both"), default="both")
    p.add_argument("--quick", action="store_true", help="skip the per-mode table")
    p.add_argument("--scaling", action="store_true", help="add the cost-scaling table")
    p.add_argument("--large", action="store_true", help="add the (1, 1, 1024, 1024) shape")
    p.add_argument("--markdown", metavar="FILE",
                   help="also write the report to FILE (between its bench markers, if it has them)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("reference", help="golden vectors for other implementations")
    rsub = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    r = rsub.add_parser("export", help="write the golden cases to DIR")
    r.add_argument("directory", metavar="DIR")
    r = rsub.add_parser("check", help="compare RESULTS (laid out like DIR) with the golden cases")
    r.add_argument("directory", metavar="DIR")
    r.add_argument("results", metavar="RESULTS")
    r = rsub.add_parser("diagnose", help="probe a sampler and say which conventions it follows "
                        "(exit 0 if it matches a PyTorch setting on finite inputs)")
    r.add_argument("function", metavar="MODULE:FUNCTION",
                   help="fn(U, grid) -> V on NumPy arrays, importable from the current directory")
    r.add_argument("--backward", metavar="MODULE:FUNCTION",
                   help="backward(dV, U, grid) -> (dU, dgrid) (default: forward only)")
    r.add_argument("--json", metavar="FILE", help="also write the diagnosis as JSON")
    p.set_defaults(func=cmd_reference)
    return parser


def main(argv=None):
    """Entry point of the ``stnref`` console script; returns the exit status."""
    from .train import TrainingError

    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UserError as err:
        print(f"stnref: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingError as err:
        print(f"stnref: training stopped: {err}", file=sys.stderr)
        return EXIT_TRAINING
    except (ValueError, TypeError, OSError) as err:
        message = str(err) or type(err).__name__
        print(f"stnref: error: {' '.join(message.split())}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("stnref: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
