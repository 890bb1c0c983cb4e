"""A training loop for any classifier built from :mod:`stnref.nn`: :func:`fit`.

``fit(model, optimizer, (x, y), (x_test, y_test), epochs=10)`` trains with softmax
cross-entropy on seeded mini-batches, evaluates after every epoch, prints a progress
line, and -- given a ``checkpoint`` path -- saves model, optimiser, schedule and
progress atomically so that ``resume=True`` continues bit-identically from any
interruption.  It stops after ``epochs``, or at the first step past a time budget
``seconds``.  ``stnref train`` runs the same loop on the paper's networks
(:mod:`stnref.app.train`).

The order of epoch ``e`` is a pure function of ``(seed, e)`` (:func:`epoch_order`) and
the learning rate of a step is its scheduler's at the step's position in the run, so
what a run computes does not depend on where it was interrupted.  The loop also watches
every spatial transformer (:attr:`~stnref.SpatialTransformer.last_outside`,
:attr:`~stnref.SpatialTransformer.last_theta_spread`) and warns once when one samples
mostly outside its input or gives one theta for every input.
"""

from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

from . import _checks
from .checkpoint import load_checkpoint, save_checkpoint
from .nn import Batches, LambdaLR, Module, clip_grad_norm, cross_entropy
from .nn.optim import _Optimizer, _total_norm
from .nn.seeding import default_generator
from .transformer import _named_transformers

__all__ = ["Progress", "TrainingError", "epoch_order", "evaluate", "fit"]

EVAL_BATCH = 500         # test-set forward passes, samples per batch
PROGRESS_SECONDS = 10.0  # period of plain progress lines when not on a terminal
ON_NONFINITE = ("stop", "skip")
FIT_FORMAT = "stnref-fit"
# Transformer health, judged over an epoch: more than this fraction of sampling points
# outside the input, or theta varying by less than this (any entry, standard deviation
# over a batch) in every batch of two or more samples.
HEALTH_OUTSIDE = 0.5
HEALTH_SPREAD = 1e-6


class TrainingError(RuntimeError):
    """Training stopped (non-finite loss, theta or gradient); the last good checkpoint is kept.

    Attributes
    ----------
    problem : str
        What was non-finite, and where (epoch, batch).
    on_disk : str
        What the checkpoint holds now: the last save's progress, or that none was written.
    """

    def __init__(self, problem, on_disk):
        super().__init__(f"{problem}; {on_disk}; on_nonfinite='skip' skips such steps")
        self.problem = problem
        self.on_disk = on_disk


class Progress:
    """A live status line on a terminal, plain periodic lines otherwise.

    Parameters
    ----------
    stream : file-like, optional
        Default: ``sys.stderr``.
    period : float
        Seconds between plain lines when ``stream`` is not a terminal.
    """

    def __init__(self, stream=None, period=PROGRESS_SECONDS):
        self.stream = stream if stream is not None else sys.stderr
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.period = period
        self._last = -math.inf
        self._width = 0

    def update(self, text, force=False):
        """Show ``text`` as the current status (on a terminal: in place)."""
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
        """Write ``text`` as a line of its own (an epoch's summary, a warning)."""
        if self.live:
            self.stream.write("\r" + text.ljust(self._width) + "\n")
            self._width = 0
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def evaluate(model, x, y, batch_size=EVAL_BATCH):
    """Test error and mean loss of ``model`` in eval mode.

    Parameters
    ----------
    model : stnref.nn.Module
        Maps ``x`` to logits ``(n, K)``; left in training mode afterwards.
    x : ndarray, shape (n, ...)
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
    try:
        for images, labels in Batches(x, y, batch_size=batch_size, shuffle=False):
            logits = model.forward(images)
            loss, _ = cross_entropy(logits, labels)
            loss_sum += float(loss) * len(labels)
            wrong += int((logits.argmax(axis=1) != labels).sum())
    finally:
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


def new_state():
    """The progress of a run that has not started: completed epochs, step within the next
    epoch, the epoch's running sums, and the skipped steps ``[epoch, batch]``."""
    return {"epoch": 0, "step": 0, "loss_sum": 0.0, "wrong": 0, "counted": 0, "seconds": 0.0,
            "skipped": []}


# ----------------------------------------------------------------------------- one step

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
    for _, st in sts:
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
    return _total_norm(model.grads.values())


class _Health:
    """Each transformer's sampling points outside the input and theta spread, over one epoch;
    a warning the first time one samples mostly outside or gives one theta for all inputs."""

    def __init__(self, sts):
        self.sts = sts
        self.warned = set()
        self.reset()

    def reset(self):
        self.outside = [0.0] * len(self.sts)
        self.spread = [-math.inf] * len(self.sts)     # over batches of >= 2 samples
        self.batches = 0

    def record(self, n):
        self.batches += 1
        for i, (_, st) in enumerate(self.sts):
            self.outside[i] += st.last_outside
            if n >= 2:
                self.spread[i] = max(self.spread[i], st.last_theta_spread)

    def warnings(self, epoch):
        found = []
        for i, (prefix, _) in enumerate(self.sts):
            name = f"spatial transformer {prefix.rstrip('.') or '(the model)'}"
            outside = self.outside[i] / max(self.batches, 1)
            if outside > HEALTH_OUTSIDE and (i, "outside") not in self.warned:
                self.warned.add((i, "outside"))
                found.append(f"warning: {name} sampled {100 * outside:.0f}% of its points outside "
                             f"the input in epoch {epoch}: its theta has drifted off the image (a "
                             f"smaller localisation learning rate or gradient clipping keeps it on)")
            if 0 <= self.spread[i] < HEALTH_SPREAD and (i, "collapsed") not in self.warned:
                self.warned.add((i, "collapsed"))
                found.append(f"warning: {name} gave one theta for every input in epoch {epoch} "
                             f"(largest spread over a batch {self.spread[i]:.1e}): it no longer "
                             f"looks at its input")
        self.reset()
        return found


# ----------------------------------------------------------------------------- the loop

def run_epochs(model, optimizer, scheduler, train_data, test_data, *, epochs, batch_size, seed,
               clip_norm, on_nonfinite, checkpoint_every, state, metrics, save, checkpoint,
               progress, seconds=None, evaluated_on="test"):
    """The loop :func:`fit` and ``stnref train`` share; trains from ``state`` up to ``epochs``.

    ``train_data`` is ``(x, y)``, or a function ``epoch -> (x, y)`` (checked, the same
    number of samples every epoch).  ``save(state, metrics, epoch_end)`` (or None) writes a
    checkpoint every ``checkpoint_every`` steps within an epoch and at every epoch's end;
    ``checkpoint`` names it in messages.  ``state`` and ``metrics`` are updated in place.
    ``evaluated_on`` names ``test_data`` in the progress lines ("test", or "validation").

    Returns
    -------
    dict
        ``{"trained": steps trained, "stopped": None or what the time budget stopped,
        "warnings": [...]}``.

    Raises
    ------
    TrainingError
        A non-finite step with ``on_nonfinite="stop"``.
    """
    n = len(_epoch_data(train_data, state["epoch"] + 1))
    steps = math.ceil(n / batch_size)
    position = state["epoch"] * steps + state["step"]
    if scheduler is not None and scheduler.last_epoch != position:
        raise ValueError(f"the scheduler is at step {scheduler.last_epoch} but the run at step "
                         f"{position}; attach a fresh scheduler (a resumed run restores its own)")
    model.train()
    sts = list(_named_transformers(model))
    health = _Health(list({id(st): (p, st) for p, st in sts}.values()))
    saved = (state["epoch"], state["step"]) if state["epoch"] or state["step"] else None
    start = time.perf_counter()
    result = {"trained": 0, "stopped": None, "warnings": []}
    of = "" if epochs == math.inf else f"/{epochs}"          # "epoch 3/10", or "epoch 3"
    while state["epoch"] < epochs:
        epoch = state["epoch"] + 1
        x_train, y_train = _epoch_data(train_data, epoch, n)
        batches = Batches(x_train, y_train, batch_size=batch_size, rng=_epoch_rng(seed, epoch))
        t0 = time.perf_counter() - state["seconds"]
        seen = state["step"] * batch_size
        for step in range(state["step"], steps):
            x, y = batches[step]
            model.zero_grad()    # backward adds to the gradients; also drops a skipped step's forward
            logits, loss, dlogits, problem = _forward(model, sts, x, y, epoch, step + 1)
            if problem is None:
                health.record(len(y))
                model.backward(dlogits)
                norm = _grad_norm(model, clip_norm)
                if not math.isfinite(norm):
                    problem = f"non-finite gradient at epoch {epoch}, batch {step + 1}"
            if problem is None:
                optimizer.step()
                state["loss_sum"] += loss * len(y)
                state["wrong"] += int((logits.argmax(axis=1) != y).sum())
                state["counted"] += len(y)
            elif on_nonfinite == "skip":
                state["skipped"].append([epoch, step + 1])
            else:
                progress.done(f"stopped: {problem}")
                on_disk = (f"{checkpoint} holds the run after epoch {saved[0]}, batch {saved[1]}"
                           if saved and checkpoint else
                           "no checkpoint was written" if checkpoint else
                           "the model holds the weights of the last good step (no checkpoint)")
                raise TrainingError(problem, on_disk)
            if scheduler is not None:
                scheduler.step()   # the rate of the next position, whether this step trained or not
            result["trained"] += 1
            seen += len(y)
            state["step"] = step + 1
            elapsed = time.perf_counter() - t0
            rate = seen / elapsed if elapsed > 0 else 0.0
            eta = (n - seen) / rate if rate > 0 else 0.0
            progress.update(
                f"epoch {epoch}{of} step {step + 1}/{steps} "
                f"loss {state['loss_sum'] / max(state['counted'], 1):.4f} "
                f"err {100.0 * state['wrong'] / max(state['counted'], 1):5.2f}% "
                f"{rate:7.0f} samples/s ETA {eta:5.0f}s")
            out_of_time = seconds is not None and time.perf_counter() - start >= seconds
            if state["step"] < steps and (out_of_time or (
                    save is not None and state["step"] % checkpoint_every == 0)):
                state["seconds"] = time.perf_counter() - t0
                if save is not None:
                    save(state, metrics, False)
                    saved = (state["epoch"], state["step"])
            if out_of_time and state["step"] < steps:
                result["stopped"] = _stop_report(model, test_data, state, epoch, steps, seconds,
                                                 progress)
                return result
        seconds_epoch = time.perf_counter() - t0
        test_error = evaluate(model, *test_data)[0] if test_data is not None else None
        counted, skipped = state["counted"], sum(e == epoch for e, _ in state["skipped"])
        metrics.append({
            "epoch": epoch,
            # over the steps that trained: None (null) when every step was skipped
            "train_loss": state["loss_sum"] / counted if counted else None,
            "train_error": 100.0 * state["wrong"] / counted if counted else None,
            "test_error": test_error,
            "seconds": seconds_epoch,
            "samples_per_s": n / seconds_epoch if seconds_epoch > 0 else 0.0,
        })
        trained = (f"train loss {metrics[-1]['train_loss']:.4f}, train error "
                   f"{metrics[-1]['train_error']:.2f}%" if counted else "no step trained")
        tested = f", {evaluated_on} error {test_error:.2f}%" if test_error is not None else ""
        progress.done(
            f"epoch {epoch}{of}: {trained}{tested}, "
            f"{seconds_epoch:.1f}s ({metrics[-1]['samples_per_s']:.0f} samples/s)"
            + (f", {skipped} of {steps} steps skipped (non-finite)" if skipped else ""))
        for line in health.warnings(epoch):
            progress.done(line)
            result["warnings"].append(line)
        state.update(epoch=epoch, step=0, loss_sum=0.0, wrong=0, counted=0, seconds=0.0)
        if save is not None:
            save(state, metrics, True)
            saved = (epoch, 0)
        if seconds is not None and time.perf_counter() - start >= seconds and epoch < epochs:
            result["stopped"] = {"reason": "seconds", "seconds": seconds, "epoch": epoch, "step": 0}
            progress.done(f"stopped after {seconds:g} s (the time budget) at the end of epoch "
                          f"{epoch}{of}")
            return result
    return result


def _stop_report(model, test_data, state, epoch, steps, seconds, progress):
    """What a time budget stopped in the middle of an epoch: where, and the test error then."""
    test_error = evaluate(model, *test_data)[0] if test_data is not None else None
    counted = state["counted"]
    report = {"reason": "seconds", "seconds": seconds, "epoch": state["epoch"],
              "step": state["step"],
              "train_loss": state["loss_sum"] / counted if counted else None,
              "test_error": test_error}
    progress.done(f"stopped after {seconds:g} s (the time budget) at epoch {epoch}, step "
                  f"{state['step']}/{steps}" + (f": test error {test_error:.2f}%"
                                                if test_error is not None else ""))
    return report


# ----------------------------------------------------------------------------- fit

def _check_split(data, name, fn):
    """``(x, y)``: a float array of samples and their integer labels, one per sample."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"{fn}(): expected {name} = (x, y), got {type(data).__name__}")
    x = _checks.float_array(data[0], f"{name}[0]", fn)
    y = np.asarray(data[1])
    if x.ndim < 2 or len(x) < 1:
        raise ValueError(f"{fn}(): expected {name}[0] of shape (n >= 1, ...), got {x.shape}")
    if y.dtype.kind not in "iu" or y.shape != (len(x),):
        raise ValueError(f"{fn}(): expected {name}[1] of integer labels, shape ({len(x)},), "
                         f"got {y.dtype} {y.shape}")
    return x, y


class _EpochData:
    """``train_data`` given as a function of the epoch: each epoch's ``(x, y)``, checked; the
    last one kept, so asking for an epoch twice in a row calls the function once."""

    def __init__(self, make, fn):
        self.make, self.fn, self.last = make, fn, (None, None)

    def __call__(self, epoch):
        if self.last[0] != epoch:
            self.last = (epoch, _check_split(self.make(epoch), f"train_data({epoch})", self.fn))
        return self.last[1]


def _epoch_data(train_data, epoch, n=None):
    """The ``(x, y)`` of ``epoch`` (``train_data`` itself, or what it gives for the epoch)."""
    if not callable(train_data):
        return train_data if n is not None else train_data[0]
    x, y = train_data(epoch)
    if n is None:
        return x
    if len(x) != n:
        raise ValueError(f"fit(): train_data({epoch}) has {len(x)} samples, the run {n} per epoch; "
                         f"give the same number every epoch")
    return x, y


def _save_fit(path, model, optimizer, scheduler, run, state, metrics):
    arrays = {f"model.{k}": v for k, v in model.state_dict().items()}
    arrays.update({f"optim.{k}": v for k, v in optimizer.state_dict().items()})
    metadata = {"format": FIT_FORMAT, **run, "state": state, "metrics": metrics,
                "scheduler": None if scheduler is None else scheduler.state_dict()}
    save_checkpoint(path, arrays, metadata)


def _resume_fit(path, model, optimizer, scheduler, run, fn):
    """Load ``path`` into the model, optimiser and scheduler; ``(run, state, metrics)`` stored.

    ``run`` is what this call asks for (``seed`` None: the stored one); every other
    difference from what the checkpoint was trained with is refused.
    """
    expected = {**{f"model.{k}": v.shape for k, v in model.state_dict().items()},
                **{f"optim.{k}": v.shape for k, v in optimizer.state_dict().items()}}
    arrays, meta = load_checkpoint(path, expect=lambda metadata: expected)
    if meta.get("format") != FIT_FORMAT or not all(k in meta for k in
                                                   ("seed", "batch_size", "n_train", "state",
                                                    "metrics", "scheduler")):
        raise ValueError(f"{fn}(): {path} is not a checkpoint written by fit()")
    asked = {**run, "seed": meta["seed"] if run["seed"] is None else run["seed"]}
    differ = [f"{k} {meta[k]!r} (asked {asked[k]!r})" for k in ("seed", "batch_size", "n_train")
              if meta[k] != asked[k]]
    if (meta["scheduler"] is None) != (scheduler is None):
        differ.append("a scheduler" if scheduler is None else "no scheduler")
    if differ:
        raise ValueError(f"{fn}(): {path} was trained with {', '.join(differ)}; resume with "
                         f"what it was trained with")
    state, metrics = meta["state"], meta["metrics"]
    _check_state(state, metrics, math.ceil(run["n_train"] / run["batch_size"]), path, fn)
    model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model.")})
    optimizer.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("optim.")})
    if scheduler is not None:
        scheduler.load_state_dict(meta["scheduler"])
    return asked, state, metrics


def _check_state(state, metrics, steps, path, fn):
    """A fit checkpoint's progress is what the loop writes (counts in range, one entry per epoch)."""
    counts_ok = isinstance(state, dict) and isinstance(metrics, list) and all(
        type(state.get(k)) is int and state[k] >= 0 for k in ("epoch", "step", "wrong", "counted"))
    if not counts_ok or state["step"] >= steps or len(metrics) != state["epoch"] or not all(
            isinstance(m, dict) and m.get("epoch") == e + 1 for e, m in enumerate(metrics)) \
            or not isinstance(state.get("skipped"), list) \
            or not all(isinstance(state.get(k), float) and math.isfinite(state[k])
                       for k in ("loss_sum", "seconds")):
        raise ValueError(f"{fn}(): {path} holds inconsistent progress "
                         f"(state {str(state)[:200]}, {len(metrics) if isinstance(metrics, list) else '?'} "
                         f"epochs of metrics)")


def fit(model, optimizer, train_data, test_data=None, *, epochs=None, seconds=None,
        batch_size=64, scheduler=None, seed=None, clip_norm=None, on_nonfinite="stop",
        checkpoint=None, checkpoint_every=None, resume=False, progress=None):
    """Train a classifier with softmax cross-entropy: epochs or a time budget, evaluated per epoch.

    Each step: ``model.zero_grad()``, forward a mini-batch, :func:`~stnref.nn.cross_entropy`,
    backward, optional gradient clipping, ``optimizer.step()``, ``scheduler.step()``.  A step
    with a non-finite loss, theta or gradient stops the run (a :class:`TrainingError`) or,
    with ``on_nonfinite="skip"``, is skipped.

    Parameters
    ----------
    model : stnref.nn.Module
        ``x (n, ...) -> logits (n, K)``.
    optimizer : stnref.nn.SGD or stnref.nn.Adam
        Over ``model``.
    train_data : (x, y), or a function ``epoch -> (x, y)``
        Samples (float, of the model's dtype) and integer labels.  A function is called
        at the start of every epoch (1, 2, ...) for that epoch's data -- augmentation drawn
        afresh each epoch, like a PyTorch ``Dataset`` that transforms at random -- and must
        give the same number of samples every time, and the same data for the same epoch
        (seed it with the epoch), for a resumed run to be exact.
    test_data : (x, y), optional
        Evaluated (test error, %) after every epoch.
    epochs : int, optional
        Total epochs (when resuming, counting those already trained).
    seconds : float, optional
        Time budget of this call: training stops at the first step after it (the
        checkpoint, if any, is saved there, and the partial epoch is evaluated).  At
        least one of ``epochs`` and ``seconds``; with only ``seconds``, epochs go on.
    batch_size : int, default 64
        The last batch of an epoch holds the rest (PyTorch's ``DataLoader``).
    scheduler : stnref.nn.LambdaLR, optional
        Attached to ``optimizer`` before the run; stepped after every step.  With
        ``epochs``, its rates over the whole run are checked first
        (:meth:`~stnref.nn.Schedule.check_run`).
    seed : int, optional
        Seeds the order of every epoch (``epoch_order(seed, e, n)``); None draws one from
        the process-wide generator (:func:`stnref.manual_seed`).  Stored in the checkpoint.
    clip_norm : float, optional
        Gradient-norm clipping threshold (:func:`~stnref.nn.clip_grad_norm`).
    on_nonfinite : {"stop", "skip"}
    checkpoint : str or os.PathLike, optional
        File written atomically at the end of every epoch (and every ``checkpoint_every``
        steps, and when the time budget stops the run): model, optimiser, scheduler,
        progress, metrics.  A new run refuses an existing file.
    checkpoint_every : int, optional
        Steps between mid-epoch checkpoints (None: epoch ends only).
    resume : bool
        Continue from ``checkpoint``: model, optimiser, scheduler and progress are
        restored; ``seed``, ``batch_size``, the number of training samples and whether
        a scheduler is attached must be the run's own.  The result is bit-identical to
        an uninterrupted run.
    progress : Progress, optional
        Where progress lines go (default: stderr).

    Returns
    -------
    dict
        ``"epochs"``: one ``{"epoch", "train_loss", "train_error", "test_error",
        "seconds", "samples_per_s"}`` per completed epoch (errors in %, ``test_error``
        None without ``test_data``); ``"stopped"``: None, or where the time budget
        stopped the run (``epoch`` completed, ``step`` within the next, and the
        ``test_error`` then); ``"warnings"``: the transformer-health warnings printed;
        ``"seed"``.

    Raises
    ------
    TrainingError
        A non-finite step with ``on_nonfinite="stop"``.

    Examples
    --------
    >>> import io
    >>> from stnref.nn import Adam, Flatten, Linear, Sequential
    >>> x = np.random.default_rng(0).standard_normal((64, 1, 4, 4)); y = (x.sum((1, 2, 3)) > 0) * 1
    >>> model = Sequential(Flatten(), Linear(16, 2, rng=np.random.default_rng(0)))
    >>> result = fit(model, Adam(model, lr=0.05), (x, y), (x, y), epochs=5, batch_size=16,
    ...              seed=0, progress=Progress(io.StringIO()))
    >>> result["epochs"][-1]["test_error"] < 10
    True
    """
    fn = "fit"
    if not isinstance(model, Module):
        raise TypeError(f"{fn}(): expected model to be a stnref.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, _Optimizer) or optimizer.module is not model:
        raise TypeError(f"{fn}(): expected optimizer to be a stnref.nn SGD or Adam over model")
    if scheduler is not None and (not isinstance(scheduler, LambdaLR) or
                                  scheduler.optimizer is not optimizer):
        raise TypeError(f"{fn}(): expected scheduler to be a stnref.nn.LambdaLR attached to optimizer")
    train_data = _EpochData(train_data, fn) if callable(train_data) else \
        _check_split(train_data, "train_data", fn)
    test_data = None if test_data is None else _check_split(test_data, "test_data", fn)
    if epochs is None and seconds is None:
        raise ValueError(f"{fn}(): expected epochs, seconds or both, got neither")
    epochs = math.inf if epochs is None else _checks.check_int(epochs, "epochs", fn, minimum=1)
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                or not math.isfinite(seconds) or seconds <= 0):
        raise ValueError(f"{fn}(): expected seconds to be a finite number > 0, got {seconds!r}")
    batch_size = _checks.check_int(batch_size, "batch_size", fn, minimum=1)
    if seed is not None:
        seed = _checks.check_int(seed, "seed", fn, minimum=0)
    if clip_norm is not None and (isinstance(clip_norm, bool) or not isinstance(clip_norm, (int, float))
                                  or not math.isfinite(clip_norm) or clip_norm < 0):
        raise ValueError(f"{fn}(): expected clip_norm to be a finite number >= 0 or None, "
                         f"got {clip_norm!r}")
    on_nonfinite = _checks.check_choice(on_nonfinite, "on_nonfinite", fn, ON_NONFINITE)
    if checkpoint_every is not None:
        checkpoint_every = _checks.check_int(checkpoint_every, "checkpoint_every", fn, minimum=1)
        if checkpoint is None:
            raise ValueError(f"{fn}(): checkpoint_every={checkpoint_every} needs a checkpoint path")
    resume = _checks.check_bool(resume, "resume", fn)
    if checkpoint is not None:
        checkpoint = os.fspath(checkpoint)
        if resume and not os.path.isfile(checkpoint):
            raise ValueError(f"{fn}(): resume=True but there is no checkpoint {checkpoint!r}")
        if not resume and os.path.exists(checkpoint):
            raise ValueError(f"{fn}(): {checkpoint!r} exists; resume=True continues it, or give "
                             f"another path")
    elif resume:
        raise ValueError(f"{fn}(): resume=True needs the checkpoint path")
    n_train = len(_epoch_data(train_data, 1))
    steps = math.ceil(n_train / batch_size)
    run = {"seed": seed, "batch_size": batch_size, "n_train": n_train}
    if resume:
        run, state, metrics = _resume_fit(checkpoint, model, optimizer, scheduler, run, fn)
        if epochs < state["epoch"]:
            raise ValueError(f"{fn}(): epochs={epochs}, but {checkpoint!r} has already trained "
                             f"{state['epoch']} epochs")
    else:
        if run["seed"] is None:
            run["seed"] = int(default_generator().integers(2**63))
        state, metrics = new_state(), []
    if scheduler is not None and epochs != math.inf and hasattr(scheduler.lr_lambda, "check_run"):
        scheduler.lr_lambda.check_run(scheduler.base_lr, epochs * steps)

    def save(state, metrics, epoch_end):
        _save_fit(checkpoint, model, optimizer, scheduler, run, state, metrics)

    result = run_epochs(
        model, optimizer, scheduler, train_data, test_data, epochs=epochs, batch_size=batch_size,
        seed=run["seed"], clip_norm=clip_norm, on_nonfinite=on_nonfinite,
        checkpoint_every=checkpoint_every or math.inf, state=state, metrics=metrics,
        save=None if checkpoint is None else save, checkpoint=checkpoint,
        progress=progress or Progress(), seconds=seconds)
    return {"epochs": metrics, "stopped": result["stopped"], "warnings": result["warnings"],
            "seed": run["seed"]}
