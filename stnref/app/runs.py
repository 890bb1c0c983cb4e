"""The files of a run directory of ``stnref train``: the checkpoint, the metrics, the lock.

``RUN_DIR/checkpoint.npz`` holds the model, the optimiser, the config (validated: what
ran) and the progress; ``RUN_DIR/metrics.json`` one record per epoch; ``RUN_DIR/.lock``
is held (``flock``) by the process training there.  :func:`read_run` and
:func:`load_run` check everything they read before trusting it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None

from .. import _checks
from .._io import atomic_write_bytes
from ..checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig, make_model, make_optimizer

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.json"
LOCK = ".lock"  # held (flock) by the process training in a run directory
RUN_FORMAT = 2           # version of the checkpoint layout (1: before resolved configs)


def save_run(run_dir, model, optimizer, config, state, metrics):
    """Write ``RUN_DIR/checkpoint.npz`` atomically: model, optimiser, config, progress, metrics."""
    arrays = {f"model.{k}": v for k, v in model.state_dict().items()}
    arrays.update({f"optim.{k}": v for k, v in optimizer.state_dict().items()})
    metadata = {"format": RUN_FORMAT, "config": dataclasses.asdict(config), "state": state,
                "metrics": metrics}
    save_checkpoint(os.path.join(run_dir, CHECKPOINT), arrays, metadata)


def write_metrics(run_dir, config, metrics):
    """Write ``RUN_DIR/metrics.json`` atomically: the config and one record per epoch."""
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
