"""Training and evaluation of the paper's networks (paper §4.1), with exact resume.

:func:`train` runs seeded mini-batch training and writes, in ``RUN_DIR``:

- ``checkpoint.npz`` -- model, optimiser and progress, written atomically every
  ``checkpoint_every`` steps and at the end of each epoch;
- ``metrics.json`` -- ``{"config": {...}, "epochs": [{"epoch", "train_loss",
  "train_error", "test_error", "seconds", "samples_per_s"}, ...]}`` (errors in %;
  the training loss and error are over the steps that trained, null for an epoch whose
  every step was skipped by ``on_nonfinite="skip"``).

Every random choice derives from ``config.seed``: the model's initialisation,
the data, and the order of epoch ``e`` (:class:`stnref.nn.Batches` with a
generator seeded with ``(seed, e)``); the learning rate of each step is a pure
function of its position in the run (``config.schedule``).  So a run resumed
from any checkpoint ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None

import numpy as np

from .. import _checks
from .._io import atomic_write_bytes, remove_stale
from ..data import DISTORTIONS, split_sizes
from ..data.dataset import distort_epoch, load_dataset, load_digits
from ..networks import MODEL_NAMES, build_model
from ..nn import SGD, Adam, Batches, clip_grad_norm, cross_entropy, parse_schedule
from ..registry import TRANSFORMS
from ..transformer import SpatialTransformer, localisation_prefixes
from ..checkpoint import load_checkpoint, save_checkpoint

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.json"
LOCK = ".lock"  # held (flock) by the process training in a run directory
RUN_FORMAT = 2           # version of the checkpoint layout (1: before resolved configs)
EVAL_BATCH = 500         # test-set forward passes, samples per batch
PROGRESS_SECONDS = 10.0  # period of plain progress lines when not on a terminal
OPTIMIZERS = ("sgd", "adam")
ON_NONFINITE = ("stop", "skip")


class TrainingError(RuntimeError):
    """Training stopped (non-finite loss, theta or gradient); the last good checkpoint is kept.

    Attributes
    ----------
    problem : str
        What was non-finite, and where (epoch, batch).
    on_disk : str
        What the run directory holds now: the last checkpoint's progress, or that none
        was written.
    """

    def __init__(self, problem, on_disk):
        super().__init__(f"{problem}; {on_disk}; on_nonfinite='skip' skips such steps")
        self.problem = problem
        self.on_disk = on_disk


@dataclasses.dataclass
class TrainConfig:
    """Everything that determines a training run (stored in its checkpoint and metrics).

    :meth:`validated` checks every field and resolves the ones left to their
    defaults, so the stored config states exactly what ran: a field that means
    nothing for the model or optimiser is ``None`` (``transform`` and
    ``loc_lr_scale`` for FCN and CNN, ``momentum`` for Adam), and giving it a
    value there is an error rather than being ignored.

    Attributes
    ----------
    model : {"fcn", "cnn", "st-fcn", "st-cnn"}
    transform : str or None
        ST models: a registry name (``stnref.registry.TRANSFORMS``; None: "affine").
        FCN and CNN have no transformer: None.
    distortion : {"none", "r", "rts", "p", "e", "tc"}
    data : str or None
        Directory with MNIST-format IDX files, stored as an absolute path; None uses
        the built-in digits.
    epochs : int
        Total number of epochs (also when resuming).
    batch_size : int
        Samples per step, as PyTorch's ``DataLoader``: the last batch of an epoch holds
        the rest (every sample, in one step, when ``batch_size`` exceeds the training set).
    lr : float
        Base learning rate.  The default (Adam, 2e-3) was chosen by measurement:
        see ``docs/results.md``.
    loc_lr_scale : float or None
        ST models: learning-rate multiplier of the localisation networks (None: 1).
        With Adam the update size does not scale with the gradient, and a smaller
        rate only slows the transformer down (measured in ``docs/results.md``); with
        SGD a scale of 0.1 is the usual choice (the paper used 1/10 on SVHN).
        FCN and CNN: None.
    momentum : float or None
        SGD momentum (None: 0.9).  Adam: None.
    optimizer : {"sgd", "adam"}
    schedule : str
        Learning-rate schedule, :func:`stnref.nn.parse_schedule`'s text form
        with lengths in epochs: ``"constant"`` (the default), ``"step:E[:GAMMA]"``,
        ``"cosine[:E[:FINAL]]"``, ``"warmup:E"``, or terms joined by ``+``
        (multiplied), e.g. ``"warmup:1+cosine"``.  The rate of a step is
        ``lr`` times the schedule at the step's position in the run.  A ``cosine``
        without E spans the run's ``epochs``; :meth:`validated` writes that length
        in (``"cosine"`` with 10 epochs is stored as ``"cosine:10"``), so a resume
        that raises ``epochs`` keeps the schedule the run started with.
    train_size, test_size : int or None
        Use the first this many samples of each split (None: all).  :func:`train`
        stores the number it used.
    redistort : bool
        Every epoch draws its own distortions of the training digits (epoch 1: the fixed set).
    validation : bool
        Evaluate on the ``test_size`` training digits after the first ``train_size``, not
        the test set (:func:`stnref.data.load_dataset`), to choose settings.
    seed : int
    clip_norm : float or None
        Gradient-norm clipping threshold.
    checkpoint_every : int
        Steps between mid-epoch checkpoints.
    on_nonfinite : {"stop", "skip"}
        A non-finite loss or theta stops training, or skips that step.
    """

    model: str = "st-fcn"
    transform: str | None = None
    distortion: str = "rts"
    data: str | None = None
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.002
    loc_lr_scale: float | None = None
    momentum: float | None = None
    optimizer: str = "adam"
    schedule: str = "constant"
    train_size: int | None = 20_000
    test_size: int | None = 5_000
    redistort: bool = False
    validation: bool = False
    seed: int = 0
    clip_norm: float | None = 10.0
    checkpoint_every: int = 500
    on_nonfinite: str = "stop"

    def validated(self):
        """A checked copy with every default resolved (ValueError/TypeError naming a field).

        Returns
        -------
        TrainConfig
            ``transform`` "affine", ``loc_lr_scale`` 1 and ``momentum`` 0.9 where they
            apply and were left None; ``data`` absolute.
        """
        fn = "TrainConfig"
        _checks.check_choice(self.model, "model", fn, MODEL_NAMES)
        _checks.check_choice(self.distortion, "distortion", fn, DISTORTIONS)
        _checks.check_choice(self.optimizer, "optimizer", fn, OPTIMIZERS)
        _checks.check_choice(self.on_nonfinite, "on_nonfinite", fn, ON_NONFINITE)
        for name in ("epochs", "batch_size", "checkpoint_every"):
            _checks.check_int(getattr(self, name), name, fn, minimum=1, maximum=_checks.MAX_INT)
        _checks.check_int(self.seed, "seed", fn, minimum=0, maximum=_checks.MAX_INT)
        for name in ("redistort", "validation"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{fn}: expected {name} to be True or False, got {getattr(self, name)!r}")
        for name in ("train_size", "test_size"):
            if getattr(self, name) is not None:
                _checks.check_int(getattr(self, name), name, fn, minimum=1, maximum=_checks.MAX_INT)
        resolved = {}
        transformer = self.model.startswith("st-")
        for name, applies, default, why in (
                ("transform", transformer, "affine", f"model {self.model!r} has no transformer"),
                ("loc_lr_scale", transformer, 1.0, f"model {self.model!r} has no localisation network"),
                ("momentum", self.optimizer == "sgd", 0.9, f"optimizer {self.optimizer!r} has no momentum")):
            value = getattr(self, name)
            if not applies and value is not None:
                raise ValueError(f"{fn}: {name}={value!r} means nothing here: {why}")
            resolved[name] = default if applies and value is None else value
        if transformer:
            _checks.check_choice(resolved["transform"], "transform", fn, TRANSFORMS)
        for name in ("lr", "loc_lr_scale", "momentum", "clip_norm"):
            value = resolved.get(name, getattr(self, name))
            if value is None:
                continue
            if not _checks.is_finite_number(value) or value < 0:
                raise ValueError(f"{fn}: expected {name} to be a finite number >= 0, got {value!r}")
        if self.lr == 0:
            raise ValueError(f"{fn}: expected lr > 0, got {self.lr!r}")
        if self.data is not None:
            if not isinstance(self.data, (str, os.PathLike)):
                raise TypeError(f"{fn}: expected data to be a directory path or None, got {self.data!r}")
            data = os.path.abspath(os.fspath(self.data))
            if os.path.isfile(data):
                raise ValueError(f"{fn}: data {data!r} is a file; expected the directory holding the "
                                 f"four MNIST IDX files (plain or .gz)")
            if not os.path.isdir(data):
                raise ValueError(f"{fn}: data directory {data!r} does not exist")
            resolved["data"] = data
        try:
            parse_schedule(self.schedule, 1, self.epochs)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{fn}: invalid schedule {self.schedule!r}: {err}") from err
        resolved["schedule"] = "+".join(f"cosine:{self.epochs}" if term.strip() == "cosine"
                                        else term.strip() for term in self.schedule.split("+"))
        return dataclasses.replace(self, **resolved)


def input_size(distortion):
    """Side of the square images of a distortion.

    Parameters
    ----------
    distortion : str
        One of ``stnref.data.DISTORTIONS``.

    Returns
    -------
    int
        42 for ``rts``, 60 for ``tc``, 28 otherwise.
    """
    return {"rts": 42, "tc": 60}.get(distortion, 28)


def make_model(config):
    """The network of ``config``, initialised from its seed, in float32.

    Parameters
    ----------
    config : TrainConfig

    Returns
    -------
    stnref.nn.Module
        ``build_model(config.model, config.transform, ...)`` with every spatial
        transformer's ``input_grad`` off (it sits on the data).
    """
    config = config.validated()
    model = build_model(config.model, config.transform, input_size(config.distortion),
                        rng=np.random.default_rng([config.seed, 0]), dtype=np.float32)
    for st in transformers(model):
        st.input_grad = False  # the transformer sits on data: no gradient to the images
    return model


def transformers(model):
    """Every SpatialTransformer inside ``model``, depth first.

    Parameters
    ----------
    model : stnref.nn.Module

    Returns
    -------
    list of SpatialTransformer
    """
    found = []

    def walk(m):
        if isinstance(m, SpatialTransformer):
            found.append(m)
        for _, child in m.children():
            walk(child)

    walk(model)
    return found


def make_optimizer(config, model):
    """The optimiser of ``config`` over ``model``'s parameters.

    Parameters
    ----------
    config : TrainConfig
    model : stnref.nn.Module

    Returns
    -------
    stnref.nn.SGD or stnref.nn.Adam
        With ``lr_scale`` = ``config.loc_lr_scale`` on every localisation network.
    """
    config = config.validated()
    scales = {p: config.loc_lr_scale for p in localisation_prefixes(model)}
    if config.optimizer == "adam":
        return Adam(model, lr=config.lr, lr_scale=scales)
    return SGD(model, lr=config.lr, momentum=config.momentum, lr_scale=scales)


def evaluate(model, x, y, batch_size=EVAL_BATCH):
    """Test error and mean loss of ``model`` in eval mode.

    Parameters
    ----------
    model : stnref.nn.Module
    x : ndarray, shape (n, C, H, W)
    y : ndarray, shape (n,), int
    batch_size : int

    Returns
    -------
    error : float
        Misclassified samples, in %.
    loss : float
        Mean cross-entropy.
    """
    model.eval()
    wrong, loss_sum = 0, 0.0
    for images, labels in Batches(x, y, batch_size=batch_size, shuffle=False):
        logits = model.forward(images)
        loss, _ = cross_entropy(logits, labels)
        loss_sum += float(loss) * len(labels)
        wrong += int((logits.argmax(axis=1) != labels).sum())
    model.train()
    return 100.0 * wrong / len(x), loss_sum / len(x)


def _epoch_rng(seed, epoch):
    """The generator of the order of ``epoch`` (stream 1 of ``seed``; stream 0 initialises)."""
    return np.random.default_rng([seed, 1, epoch])


def epoch_order(seed, epoch, n):
    """The order in which ``epoch`` visits the training samples.

    Parameters
    ----------
    seed, epoch, n : int

    Returns
    -------
    ndarray, shape (n,)
        The order of the epoch's :class:`stnref.nn.Batches`: a permutation that
        depends only on ``(seed, epoch)``, so a resumed run replays an
        interrupted epoch exactly.
    """
    return Batches(np.arange(n), batch_size=1, rng=_epoch_rng(seed, epoch)).order


class Progress:
    """A live status line on a terminal, plain periodic lines otherwise."""

    def __init__(self, stream=None, period=PROGRESS_SECONDS):
        self.stream = stream if stream is not None else sys.stderr
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.period = period
        self._last = -math.inf
        self._width = 0

    def update(self, text, force=False):
        now = time.monotonic()
        if self.live:
            self.stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
            self.stream.flush()
        elif force or now - self._last >= self.period:
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last = now

    def done(self, text):
        if self.live:
            self.stream.write("\r" + text.ljust(self._width) + "\n")
            self._width = 0
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _save(run_dir, model, optimizer, config, state, metrics):
    arrays = {f"model.{k}": v for k, v in model.state_dict().items()}
    arrays.update({f"optim.{k}": v for k, v in optimizer.state_dict().items()})
    metadata = {"format": RUN_FORMAT, "config": dataclasses.asdict(config), "state": state,
                "metrics": metrics}
    save_checkpoint(os.path.join(run_dir, CHECKPOINT), arrays, metadata)


def _write_metrics(run_dir, config, metrics):
    text = json.dumps({"config": dataclasses.asdict(config), "epochs": metrics}, indent=2) + "\n"
    atomic_write_bytes(os.path.join(run_dir, METRICS), text.encode())


def read_run(run_dir):
    """What ``RUN_DIR/checkpoint.npz`` says about a run: config, progress, metrics, arrays.

    The arrays' headers are checked against the model and optimiser the stored config
    builds before any array is read (:func:`stnref.load_checkpoint`'s ``expect``).

    Parameters
    ----------
    run_dir : str

    Returns
    -------
    config : TrainConfig
        Validated; a run of the first checkpoint layout is read as it ran.
    state : dict
        Progress: ``epoch`` (completed), ``step`` within the next epoch, running sums.
    metrics : list of dict
        One entry per completed epoch.
    arrays : dict of str to ndarray
        ``model.<name>`` and ``optim.<name>`` state.

    Raises
    ------
    ValueError
        No checkpoint, an unreadable or lying file, a checkpoint of another format, an
        invalid config or inconsistent progress: one message naming the file.
    """
    return _read_run(run_dir)[:4]


def _read_run(run_dir):
    """:func:`read_run`, and the model and optimiser its config built to check the headers
    (fresh: the arrays are not loaded into them)."""
    path = os.path.join(run_dir, CHECKPOINT)
    if not os.path.exists(path):
        raise ValueError(f"no checkpoint in {run_dir!r} (expected {path})")
    built = {}

    def shapes(metadata):
        # the arrays the stored config implies, checked against the headers before reading
        built["config"] = config = _stored_config(metadata, path)
        built["model"] = model = make_model(config)
        built["optimizer"] = optimizer = make_optimizer(config, model)
        return {**{f"model.{k}": v.shape for k, v in model.state_dict().items()},
                **{f"optim.{k}": v.shape for k, v in optimizer.state_dict().items()}}

    arrays, metadata = load_checkpoint(path, expect=shapes)
    missing = [k for k in ("state", "metrics") if k not in metadata]
    if missing:
        raise ValueError(f"{path} lacks metadata {missing}")
    _check_progress(metadata["state"], metadata["metrics"], built["config"], path)
    return (built["config"], metadata["state"], metadata["metrics"], arrays, built["model"],
            built["optimizer"])


def _stored_config(metadata, path):
    """The validated config of a checkpoint's metadata (a first-format one read as it ran)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = metadata.get("config")
    if metadata.get("format") == 1 and isinstance(saved, dict):
        saved = _from_format_1(saved)
    elif metadata.get("format") != RUN_FORMAT:
        raise ValueError(f"{path} has format {metadata.get('format')!r}, expected {RUN_FORMAT}")
    if isinstance(saved, dict):   # runs from before these options trained without them
        saved = {"redistort": False, "validation": False, **saved}
    if not isinstance(saved, dict) or set(saved) != fields:
        keys = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
        raise ValueError(f"{path} has config keys {keys}, expected {sorted(fields)}")
    data = saved.get("data")
    if isinstance(data, str) and not os.path.isdir(data):
        raise ValueError(f"{path}: the run was trained on the MNIST files in {data!r}, which is not "
                         f"a directory any more; put them back there to evaluate or resume it")
    try:
        config = TrainConfig(**saved).validated()
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path} holds an invalid config: {err}") from None
    if config.train_size is None or config.test_size is None:
        raise ValueError(f"{path} holds an invalid config: train_size {config.train_size!r} and "
                         f"test_size {config.test_size!r}; a run stores the sizes it used")
    return config


def load_run(run_dir):
    """Restore a run from ``RUN_DIR/checkpoint.npz``.

    Parameters
    ----------
    run_dir : str

    Returns
    -------
    config : TrainConfig
    model : stnref.nn.Module
    optimizer : stnref.nn.SGD or stnref.nn.Adam
    state : dict
        Progress: ``epoch`` (completed), ``step`` within the next epoch, running sums.
    metrics : list of dict
        One entry per completed epoch.

    Raises
    ------
    ValueError
        As :func:`read_run`, or arrays that do not fit the model its config describes.
    """
    config, state, metrics, arrays, model, optimizer = _read_run(run_dir)
    model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model.")})
    optimizer.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("optim.")})
    return config, model, optimizer, state, metrics


def _from_format_1(saved):
    """A config of the first run format: no schedule (constant), and every field stored, even
    those that meant nothing for the model or optimiser (now None)."""
    saved = {"schedule": "constant", **saved}
    if not str(saved.get("model", "")).startswith("st-"):
        saved.update(transform=None, loc_lr_scale=None)
    if saved.get("optimizer") == "adam":
        saved["momentum"] = None
    return saved


STATE_COUNTS = ("epoch", "step", "wrong", "counted")
METRIC_KEYS = ("epoch", "train_loss", "train_error", "test_error", "seconds", "samples_per_s")


def _is_number(v):
    return isinstance(v, (int, float)) and _checks.is_finite_number(v)


def _check_progress(state, metrics, config, path):
    """The stored progress is what :func:`train` writes: counts in range, one metrics entry per
    completed epoch (a damaged or hand-edited checkpoint is one ValueError, not a crash later)."""
    problem = None
    if not isinstance(state, dict) or not isinstance(metrics, list):
        problem = "state is not an object or metrics not a list"
    elif any(not isinstance(state.get(k), int) or isinstance(state.get(k), bool) or state[k] < 0
             for k in STATE_COUNTS):
        problem = f"state counts {[state.get(k) for k in STATE_COUNTS]} are not integers >= 0"
    elif not all(_is_number(state.get(k)) for k in ("loss_sum", "seconds")):
        problem = "state sums are not finite numbers"
    elif not isinstance(state.get("skipped"), list) or not all(
            isinstance(e, list) and len(e) == 2 and all(type(v) is int and v >= 1 for v in e)
            and e[0] <= state["epoch"] + 1 for e in state["skipped"]):
        problem = "state has no list of skipped steps [epoch, batch]"
    elif state["epoch"] > config.epochs or len(metrics) != state["epoch"]:
        problem = (f"{state['epoch']} completed epochs of {config.epochs}, with "
                   f"{len(metrics)} metrics entries")
    elif state["step"] >= (steps := math.ceil(config.train_size / config.batch_size)) or (
            state["step"] and state["epoch"] == config.epochs):
        problem = (f"step {state['step']} of epoch {state['epoch'] + 1}, which has {steps} steps "
                   f"(the run has {config.epochs} epochs)")
    elif state["counted"] > state["step"] * config.batch_size or state["wrong"] > state["counted"]:
        problem = (f"{state['wrong']} wrong of {state['counted']} counted samples after "
                   f"{state['step']} steps of {config.batch_size}")
    elif not all(isinstance(m, dict) and m.get("epoch") == e + 1 for e, m in enumerate(metrics)):
        problem = "metrics entries are not one per epoch, in order"
    elif not all(sorted(m) == sorted(METRIC_KEYS) and all(
            _is_number(m[k]) or (m[k] is None and k in ("train_loss", "train_error"))
            for k in METRIC_KEYS) for m in metrics):
        problem = f"metrics entries are not objects of the numbers {list(METRIC_KEYS)}"
    if problem:
        raise ValueError(f"load_run(): {path} holds inconsistent progress: {problem}")


def _check_data(data, config):
    """``(x_train, y_train, x_test, y_test)``: float images of the config's size, int labels."""
    fn = "train"
    if not isinstance(data, (tuple, list)) or len(data) != 4:
        raise TypeError(f"{fn}(): expected data = (x_train, y_train, x_test, y_test), got {type(data).__name__}")
    side = input_size(config.distortion)
    out = []
    for x_name, y_name, x, y in (("x_train", "y_train", *data[:2]), ("x_test", "y_test", *data[2:])):
        x = _checks.float_array(x, x_name, fn)
        y = np.asarray(y)
        if x.ndim != 4 or x.shape[0] < 1 or x.shape[2:] != (side, side):
            raise ValueError(f"{fn}(): expected {x_name} of shape (n >= 1, C, {side}, {side}) for "
                             f"distortion {config.distortion!r}, got {x.shape}")
        if y.dtype.kind not in "iu" or y.shape != (x.shape[0],):
            raise ValueError(f"{fn}(): expected {y_name} of integer labels, shape ({x.shape[0]},), "
                             f"got {y.dtype} {y.shape}")
        out += [x, y]
    return out


def check_sizes(train_size, test_size, data, validation=False):
    """Refuse more samples than the MNIST files in ``data`` hold, naming the flag and the count.

    Parameters
    ----------
    train_size, test_size : int or None
        None: every sample.
    data : str or None
        MNIST directory; None (the built-in digits, generated on demand) accepts any size.
    validation : bool
        The evaluation samples are ``test_size`` (None: 10,000) held-out training digits.

    Returns
    -------
    (int, int)
        The samples available in each split (:func:`stnref.data.split_sizes`), or not held out and held out.

    Raises
    ------
    ValueError
        ``--train-size N: DIR holds M training images (ask for at most M, or 'all')``.
    """
    available = split_sizes(data)
    if validation:
        held_out = split_sizes(None)[1] if test_size is None else test_size
        if data is not None and (train_size or 1) + held_out > available[0]:
            raise ValueError(f"--validation holds out --test-size {held_out} of the {available[0]} "
                             f"training images in {data}: at most {available[0] - held_out} "
                             f"remain to train on, asked {train_size or 'all'}")
        return available[0] - held_out, held_out
    if data is not None:
        for flag, asked, have, what in (("--train-size", train_size, available[0], "training"),
                                        ("--test-size", test_size, available[1], "test")):
            if asked is not None and asked > have:
                raise ValueError(f"{flag} {asked}: {data} holds {have} {what} images "
                                 f"(ask for at most {have}, or 'all')")
    return available


def _with_sizes(config, n_train, n_test):
    """``config`` with the numbers of samples the run uses (a given size must be that number)."""
    for name, n in (("train_size", n_train), ("test_size", n_test)):
        asked = getattr(config, name)
        if asked is not None and asked != n:
            raise ValueError(f"train(): config.{name}={asked}, but the data has {n} samples")
    return dataclasses.replace(config, train_size=n_train, test_size=n_test)


def _nonfinite_forward(model, x, err):
    """Whether a forward's ValueError comes from non-finite numbers (input, weights or theta)."""
    return (not np.isfinite(x).all()
            or not all(np.isfinite(p).all() for p in model.params.values())
            or "finite theta" in str(err))


def _forward(model, sts, x, y, epoch, step):
    """``(logits, loss, dlogits, problem)``; ``problem`` names the batch if anything is non-finite.

    ``sts`` are the model's spatial transformers, whose theta is checked.
    """
    where = f"epoch {epoch}, batch {step}"
    try:
        logits = model.forward(x)
    except ValueError as err:  # e.g. a grid generator refusing a non-finite theta
        if not _nonfinite_forward(model, x, err):
            raise
        return None, math.nan, None, f"non-finite forward at {where}: {err}"
    for st in sts:
        if not np.isfinite(st.last_theta).all():
            return logits, math.nan, None, f"non-finite theta at {where}"
    if not np.isfinite(logits).all():
        return logits, math.nan, None, f"non-finite logits at {where}"
    loss, dlogits = cross_entropy(logits, y)
    loss = float(loss)
    if not math.isfinite(loss):
        return logits, loss, None, f"non-finite loss {loss} at {where}"
    return logits, loss, dlogits, None


def _grad_norm(model, clip_norm):
    """Total gradient norm (clipping to ``clip_norm`` when given)."""
    if clip_norm is not None:
        return float(clip_grad_norm(model, clip_norm))
    return math.sqrt(sum(float(np.vdot(g, g)) for g in model.grads.values()))


def _lock(run_dir):
    """Take the ``flock`` of ``RUN_DIR/.lock`` for this process, or refuse: two processes
    training into one directory would overwrite each other's checkpoints.  The file stays
    (deleting it would let a process waiting on the old one and a new one both lock).
    Returns the descriptor, or None where files cannot be locked (no ``fcntl``, or a file
    system without locks)."""
    if fcntl is None:
        return None
    fd = os.open(os.path.join(run_dir, LOCK), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ValueError(f"train(): another process is training in {run_dir!r}; wait for it to "
                         f"finish or choose another directory") from None
    except OSError:  # ENOLCK, EOPNOTSUPP: this file system has no locks
        os.close(fd)
        return None
    return fd


def _remove_new_run_dir(run_dir, lock):
    """Remove the run directory this process created and wrote nothing to but its lock."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(run_dir, LOCK))
    if lock is not None:
        os.close(lock)
    os.rmdir(run_dir)


def train(config, run_dir, resume=False, progress=None, data=None, on_nonfinite=None):
    """Train ``config`` into ``run_dir`` (or continue it with ``resume``).

    Parameters
    ----------
    config : TrainConfig
        When resuming only ``epochs`` is read: the new total, at least the epochs already
        trained (more extends the run); everything else is the run's own.
    run_dir : str
        Output directory (created if missing).  A new run refuses a directory that holds
        a run (``checkpoint.npz`` or ``metrics.json``), and any run refuses a directory
        another process is training in.
    resume : bool
        Continue from ``run_dir/checkpoint.npz``.
    progress : Progress, optional
        Where to report progress (default: stderr).
    data : tuple, optional
        ``(x_train, y_train, x_test, y_test)`` to use instead of loading them
        (callers that train several models on one dataset).
    on_nonfinite : {"stop", "skip"}, optional
        What a non-finite step does from now on (None: ``config``'s, or the run's own when
        resuming).  Until a step is non-finite the two train alike, so a resumed run may
        change it and its stored config stays true.

    Returns
    -------
    dict
        The metrics, as written to ``metrics.json``.

    Raises
    ------
    TrainingError
        A non-finite loss or theta with ``on_nonfinite="stop"``.
    """
    progress = progress or Progress()
    checkpoint = os.path.join(run_dir, CHECKPOINT)
    if resume:
        epochs = _checks.check_int(config.epochs, "epochs", "train", minimum=1)
        config, model, optimizer, state, metrics = load_run(run_dir)
        on_nonfinite = config.on_nonfinite if on_nonfinite is None else _checks.check_choice(
            on_nonfinite, "on_nonfinite", "train", ON_NONFINITE)
        if epochs < state["epoch"]:
            raise ValueError(f"train(): epochs={epochs}, but the run in {run_dir!r} has already "
                             f"trained {state['epoch']} epochs")
        config = dataclasses.replace(config, epochs=epochs, on_nonfinite=on_nonfinite).validated()
        saved = (state["epoch"], state["step"])
    else:
        if on_nonfinite is not None:
            config = dataclasses.replace(config, on_nonfinite=on_nonfinite)
        config = config.validated()
        model = make_model(config)
        optimizer = make_optimizer(config, model)
        state = {"epoch": 0, "step": 0, "loss_sum": 0.0, "wrong": 0, "counted": 0, "seconds": 0.0,
                 "skipped": []}
        metrics = []
        saved = None
    digits = None   # the undistorted training digits, when each epoch draws its own distortions
    if data is None:
        data = load_dataset(config.distortion, config.data, config.train_size, config.test_size,
                            config.seed, config.validation)
        digits = load_digits(config.data, config.train_size, config.test_size, config.seed,
                             config.validation)[0] if config.redistort else None
    elif config.redistort:
        raise ValueError("train(): redistort draws each epoch's distortions itself; it cannot use data=")
    x_train, y_train, x_test, y_test = _check_data(data, config)
    config = _with_sizes(config, len(x_train), len(x_test))
    created = not os.path.exists(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    lock = _lock(run_dir)
    try:
        if not resume and any(os.path.exists(os.path.join(run_dir, f)) for f in (CHECKPOINT, METRICS)):
            raise ValueError(f"train(): {run_dir!r} already holds a run ({CHECKPOINT} or {METRICS}); "
                             f"resume it or choose another directory")
        for name in (CHECKPOINT, METRICS):  # left by a process killed while writing
            remove_stale(os.path.join(run_dir, name))
        n = len(x_train)
        steps = math.ceil(n / config.batch_size)
        schedule = parse_schedule(config.schedule, steps, config.epochs)
        model.train()
        sts = transformers(model)
        wrote = False
        while state["epoch"] < config.epochs:
            epoch = state["epoch"] + 1
            if digits is not None and epoch > 1:
                x_train = distort_epoch(digits, config.distortion, config.seed, epoch)
            batches = Batches(x_train, y_train, batch_size=config.batch_size,
                              rng=_epoch_rng(config.seed, epoch))
            t0 = time.perf_counter() - state["seconds"]
            seen = state["step"] * config.batch_size
            for step in range(state["step"], steps):
                x, y = batches[step]
                model.zero_grad()    # backward adds to the gradients; also drops a skipped step's forward
                logits, loss, dlogits, problem = _forward(model, sts, x, y, epoch, step + 1)
                if problem is None:
                    model.backward(dlogits)
                    norm = _grad_norm(model, config.clip_norm)
                    if not math.isfinite(norm):
                        problem = f"non-finite gradient at epoch {epoch}, batch {step + 1}"
                if problem is None:
                    optimizer.lr = config.lr * schedule((epoch - 1) * steps + step)
                    optimizer.step()
                    state["loss_sum"] += loss * len(y)
                    state["wrong"] += int((logits.argmax(axis=1) != y).sum())
                    state["counted"] += len(y)
                elif config.on_nonfinite == "skip":
                    state["skipped"].append([epoch, step + 1])
                else:
                    progress.done(f"stopped: {problem}")
                    on_disk = (f"{checkpoint} holds the run after epoch {saved[0]}, batch {saved[1]}"
                               if saved else "no checkpoint was written")
                    if created and set(os.listdir(run_dir)) <= {LOCK}:
                        _remove_new_run_dir(run_dir, lock)   # nothing was written
                        lock = None
                    raise TrainingError(problem, on_disk)
                seen += len(y)
                state["step"] = step + 1
                elapsed = time.perf_counter() - t0
                rate = seen / elapsed if elapsed > 0 else 0.0
                eta = (n - seen) / rate if rate > 0 else 0.0
                progress.update(
                    f"epoch {epoch}/{config.epochs} step {step + 1}/{steps} "
                    f"loss {state['loss_sum'] / max(state['counted'], 1):.4f} "
                    f"err {100.0 * state['wrong'] / max(state['counted'], 1):5.2f}% "
                    f"{rate:7.0f} samples/s ETA {eta:5.0f}s")
                if state["step"] % config.checkpoint_every == 0 and state["step"] < steps:
                    state["seconds"] = time.perf_counter() - t0
                    _save(run_dir, model, optimizer, config, state, metrics)
                    saved = (state["epoch"], state["step"])
            seconds = time.perf_counter() - t0
            test_error, _ = evaluate(model, x_test, y_test)
            counted, skipped = state["counted"], sum(e == epoch for e, _ in state["skipped"])
            metrics.append({
                "epoch": epoch,
                # over the steps that trained: None (null) when every step was skipped
                "train_loss": state["loss_sum"] / counted if counted else None,
                "train_error": 100.0 * state["wrong"] / counted if counted else None,
                "test_error": test_error,
                "seconds": seconds,
                "samples_per_s": n / seconds if seconds > 0 else 0.0,
            })
            trained = (f"train loss {metrics[-1]['train_loss']:.4f}, train error "
                       f"{metrics[-1]['train_error']:.2f}%" if counted else "no step trained")
            progress.done(
                f"epoch {epoch}/{config.epochs}: {trained}, "
                f"{'validation' if config.validation else 'test'} error {test_error:.2f}%, "
                f"{seconds:.1f}s ({metrics[-1]['samples_per_s']:.0f} samples/s)"
                + (f", {skipped} of {steps} steps skipped (non-finite)" if skipped else ""))
            state.update(epoch=epoch, step=0, loss_sum=0.0, wrong=0, counted=0, seconds=0.0)
            _save(run_dir, model, optimizer, config, state, metrics)
            saved = (epoch, 0)
            _write_metrics(run_dir, config, metrics)
            wrote = True
        if not wrote:  # nothing left to train: repair a metrics.json lost to a crash after the
            _save(run_dir, model, optimizer, config, state, metrics)    # save; both as stored now
            _write_metrics(run_dir, config, metrics)
        return {"config": dataclasses.asdict(config), "epochs": metrics}
    finally:
        if lock is not None:
            os.close(lock)  # releases the flock
