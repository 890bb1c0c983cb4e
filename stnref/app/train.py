"""``stnref train``: the paper's networks (paper §4.1) trained into a run directory, with exact resume.

:func:`train` builds the network and optimiser of a :class:`TrainConfig`
(:mod:`stnref.app.config`), runs the training loop every stnref model shares
(:func:`stnref.training.run_epochs`, behind :func:`stnref.fit`) and writes, in ``RUN_DIR``
(:mod:`stnref.app.runs`):

- ``checkpoint.npz`` -- model, optimiser and progress, written atomically every
  ``checkpoint_every`` steps and at the end of each epoch;
- ``metrics.json`` -- ``{"config": {...}, "epochs": [{"epoch", "train_loss",
  "train_error", "test_error", "seconds", "samples_per_s"}, ...]}`` (errors in %;
  the training loss and error are over the steps that trained, null for an epoch whose
  every step was skipped by ``on_nonfinite="skip"``).

Every random choice derives from ``config.seed``: the model's initialisation,
the data, and the order of epoch ``e`` (:class:`stnref.nn.Batches` with a
generator seeded with ``(seed, e)``); the learning rate of each step is a pure
function of its position in the run (``config.schedule``, attached to the optimiser
with :class:`stnref.nn.LambdaLR`).  So a run resumed from any checkpoint ends
bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from .. import _checks
from .._io import remove_stale
from ..data.dataset import _dataset, distort_epoch
from ..nn import LambdaLR
from ..training import (
    ON_NONFINITE,
    Progress,
    TrainingError,
    _EpochData,
    epoch_order,
    evaluate,
    new_state,
    run_epochs,
)
from ..transformer import transformers
from .config import (
    OPTIMIZERS,
    TrainConfig,
    check_schedule,
    check_sizes,
    input_size,
    make_model,
    make_optimizer,
    steps_per_epoch,
)
from .runs import (
    CHECKPOINT,
    LOCK,
    METRICS,
    _lock,
    _remove_new_run_dir,
    load_run,
    read_run,
    save_run,
    write_metrics,
)

__all__ = [
    "Progress", "TrainConfig", "TrainingError", "check_sizes", "epoch_order", "evaluate",
    "input_size", "load_run", "make_model", "make_optimizer", "read_run", "train", "transformers",
]


def _check_data(data, config):
    """``(x_train, y_train, x_test, y_test)``: float images of the config's size, int labels."""
    fn = "train"
    if not isinstance(data, (tuple, list)) or len(data) != 4:
        raise TypeError(f"{fn}(): expected data = (x_train, y_train, x_test, y_test), got {type(data).__name__}")
    side = input_size(config.distortion)
    out = []
    for x_name, y_name, x, y in (("x_train", "y_train", *data[:2]), ("x_test", "y_test", *data[2:])):
        x = _checks.float_array(x, x_name, fn).astype(np.float32, copy=False)   # the model's dtype
        y = np.asarray(y)
        if x.ndim != 4 or x.shape[0] < 1 or x.shape[2:] != (side, side):
            raise ValueError(f"{fn}(): expected {x_name} of shape (n >= 1, C, {side}, {side}) for "
                             f"distortion {config.distortion!r}, got {x.shape}")
        if y.dtype.kind not in "iu" or y.shape != (x.shape[0],):
            raise ValueError(f"{fn}(): expected {y_name} of integer labels, shape ({x.shape[0]},), "
                             f"got {y.dtype} {y.shape}")
        out += [x, y]
    return out


def _with_sizes(config, n_train, n_test):
    """``config`` with the numbers of samples the run uses (a given size must be that number)."""
    for name, n in (("train_size", n_train), ("test_size", n_test)):
        asked = getattr(config, name)
        if asked is not None and asked != n:
            raise ValueError(f"train(): config.{name}={asked}, but the data has {n} samples")
    return dataclasses.replace(config, train_size=n_train, test_size=n_test)


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
        (callers that train several models on one dataset); images are taken in
        float32, the model's dtype.
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
    ValueError
        An invalid config, or a schedule whose rate would leave the float range within
        the run (before anything is created).
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
    else:
        if on_nonfinite is not None:
            config = dataclasses.replace(config, on_nonfinite=on_nonfinite)
        config = config.validated()
        model = make_model(config)
        optimizer = make_optimizer(config, model)
        state, metrics = new_state(), []
    digits = None   # the undistorted training digits, when each epoch draws its own distortions
    if data is None:
        data, digits = _dataset(config.distortion, config.data, config.train_size,
                                config.test_size, config.seed, config.validation)
        digits = digits if config.redistort else None
    elif config.redistort:
        raise ValueError("train(): redistort draws each epoch's distortions itself; it cannot use data=")
    x_train, y_train, x_test, y_test = _check_data(data, config)
    config = _with_sizes(config, len(x_train), len(x_test))
    train_data = (x_train, y_train)
    if digits is not None:
        drawn = None       # the last epoch drawn: done with when the next is asked for

        def draw(epoch):   # epoch 1 is the fixed set; a function of the epoch alone
            nonlocal drawn
            if epoch == 1:
                return x_train, y_train
            drawn = distort_epoch(digits, config.distortion, config.seed, epoch, out=drawn)
            return drawn, y_train
        train_data = _EpochData(draw, "train")   # as fit: checked, each epoch drawn once
    # the schedule, checked over the whole run before any directory exists; its rate is a pure
    # function of the position in the run, so a resumed run's scheduler is placed there
    steps = steps_per_epoch(config)
    scheduler = LambdaLR(optimizer, check_schedule(config.schedule, config.lr, steps, config.epochs))
    scheduler.load_state_dict({"base_lr": config.lr,
                               "last_epoch": state["epoch"] * steps + state["step"]})
    created = not os.path.exists(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    lock = _lock(run_dir)
    try:
        if not resume and any(os.path.exists(os.path.join(run_dir, f)) for f in (CHECKPOINT, METRICS)):
            raise ValueError(f"train(): {run_dir!r} already holds a run ({CHECKPOINT} or {METRICS}); "
                             f"resume it or choose another directory")
        for name in (CHECKPOINT, METRICS):  # left by a process killed while writing
            remove_stale(os.path.join(run_dir, name))

        def save(state, metrics, epoch_end):
            save_run(run_dir, model, optimizer, config, state, metrics)
            if epoch_end:
                write_metrics(run_dir, config, metrics)

        try:
            result = run_epochs(
                model, optimizer, scheduler, train_data, (x_test, y_test),
                epochs=config.epochs, batch_size=config.batch_size, seed=config.seed,
                clip_norm=config.clip_norm, on_nonfinite=config.on_nonfinite,
                checkpoint_every=config.checkpoint_every, state=state, metrics=metrics, save=save,
                checkpoint=checkpoint, progress=progress,
                evaluated_on="validation" if config.validation else "test")
        except TrainingError:
            if created and set(os.listdir(run_dir)) <= {LOCK}:
                _remove_new_run_dir(run_dir, lock)   # nothing was written
                lock = None
            raise
        if not result["trained"]:  # nothing left to train: repair a metrics.json lost to a crash
            save(state, metrics, True)                  # after the save; both as stored now
        return {"config": dataclasses.asdict(config), "epochs": metrics}
    finally:
        if lock is not None:
            os.close(lock)  # releases the flock
