"""``stnref experiment``: the paper's Table 1 grid on a stated budget.

Every (distortion, model, transform, seed) cell is one training run in
``OUT/<distortion>/<model>[-<transform>]-seed<seed>``.  Before anything runs, each
cell's config is compared with what its directory already holds: a cell with the same
config is skipped when finished and resumed when not (a larger ``--epochs`` extends it),
and any other difference is refused, naming the cell, the option, what is stored and
what was asked -- so a results table never mixes budgets.  The plan (cells and budget)
is printed first, in about a second, and on request a time estimate from a few
measured steps of each kind of cell; ``dry_run`` stops there.  Cells run in ``jobs``
worker processes, longest first (:func:`run_order`), each with one BLAS thread, so a
cell's results are bit-identical whatever ``jobs`` is and whatever order they run in.
``results.json`` and ``results.md`` hold the mean test error over seeds beside the
paper's numbers.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import io
import json
import math
import multiprocessing
import os
import signal
import time

import numpy as np

from .._io import atomic_write_bytes
from .._text import shown
from ..data import load_dataset
from ..data.dataset import _check_digit_budget
from ..nn import cross_entropy, manual_seed
from .train import (
    CHECKPOINT,
    Progress,
    TrainConfig,
    check_sizes,
    input_size,
    make_model,
    read_run,
    train,
)

# Table 1 of the paper, test error % (R, RTS, P, E), and the TC column.
PAPER_TABLE = {
    ("fcn", None): {"r": 2.1, "rts": 5.2, "p": 3.1, "e": 3.2, "tc": 13.2},
    ("cnn", None): {"r": 1.2, "rts": 0.8, "p": 1.5, "e": 1.4, "tc": 3.5},
    ("st-fcn", "affine"): {"r": 1.2, "rts": 0.8, "p": 1.5, "e": 2.7, "tc": 2.0},
    ("st-fcn", "projective"): {"r": 1.3, "rts": 0.9, "p": 1.4, "e": 2.6},
    ("st-fcn", "tps"): {"r": 1.1, "rts": 0.8, "p": 1.4, "e": 2.4},
    ("st-cnn", "affine"): {"r": 0.7, "rts": 0.5, "p": 0.8, "e": 1.2, "tc": 1.7},
    ("st-cnn", "projective"): {"r": 0.8, "rts": 0.6, "p": 0.8, "e": 1.3},
    ("st-cnn", "tps"): {"r": 0.7, "rts": 0.5, "p": 0.8, "e": 1.1},
}
PAPER_TC_TRANSFORM = "affine"  # the paper reports one ST number per model for TC
TABLE_TRANSFORMS = ("affine", "projective", "tps")  # the ST models' transforms when none are given
MAX_CELLS = 10_000   # cells of one grid; more is refused before any cell is built
# The environment of every worker: one BLAS thread, whatever the number of workers.
BLAS_ONE_THREAD = {name: "1" for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                          "MKL_NUM_THREADS", "BLIS_NUM_THREADS")}
RATE_STEPS = 3       # timed training steps per kind of cell, after one untimed step
# Relative cost of a training sample per input pixel, by model, for starting the longest
# cells first (measured per-epoch times: an ST model about twice its plain model, a
# convolutional one about thirty times the fully connected one).  Only the order the
# workers take the cells in depends on it, never a result.
MODEL_WEIGHT = {"fcn": 1.0, "st-fcn": 2.0, "cnn": 30.0, "st-cnn": 35.0}
EVAL_SHARE = 1 / 3   # an evaluation forward costs about this much of a training step per sample


def cells(models, transforms):
    """Rows of the results table.

    Parameters
    ----------
    models : sequence of str
    transforms : sequence of str

    Returns
    -------
    list of (str, str or None)
        ``(model, transform)``: baselines once with ``None``, ST models per transform.
    """
    rows = []
    for m in models:
        if m.startswith("st-"):
            rows.extend((m, t) for t in transforms)
        else:
            rows.append((m, None))
    return rows


@dataclasses.dataclass
class Cell:
    """One training run of the grid and what its directory holds."""

    distortion: str
    model: str
    transform: str | None
    seed: int
    run_dir: str
    config: TrainConfig                # what this experiment asks for, sizes resolved
    done_epochs: int = 0               # already trained in run_dir
    status: str = "new"                # "new", "resume", "extend" or "done"

    @property
    def name(self):
        return self.model if self.transform is None else f"{self.model}-{self.transform}"


def _differences(stored, asked):
    """``["option: stored X, asked Y", ...]`` for every field but ``epochs`` and
    ``on_nonfinite`` (which a resumed run may change)."""
    out = []
    for field in dataclasses.fields(TrainConfig):
        a, b = getattr(stored, field.name), getattr(asked, field.name)
        if field.name not in ("epochs", "on_nonfinite") and a != b:
            out.append(f"{field.name.replace('_', '-')}: stored {a!r}, asked {b!r}")
    return out


def _grid_rows(models, transforms, distortions, seeds):
    """The ``(model, transform)`` rows of the grid, refusing before any cell is built a value
    given twice, transforms without an ST model, and more than ``MAX_CELLS`` cells."""
    for option, values in (("--models", models), ("--transforms", transforms or ()),
                           ("--distortions", distortions)):
        repeated = [v for i, v in enumerate(values) if v in values[:i]]
        if repeated:
            raise ValueError(f"{option} {' '.join(values)}: {repeated[0]} is given twice; give "
                             f"each once (a cell is one run directory)")
    if transforms is not None and not any(m.startswith("st-") for m in models):
        raise ValueError(f"--transforms {' '.join(transforms)}: no ST model in --models "
                         f"{' '.join(models)} (--transforms is for st-fcn and st-cnn)")
    rows = cells(models, TABLE_TRANSFORMS if transforms is None else transforms)
    per_seed = len(rows) * len(distortions)
    if per_seed * seeds > MAX_CELLS:
        raise ValueError(f"--seeds {seeds}: {per_seed * seeds} cells ({per_seed} per seed), over "
                         f"the limit of {MAX_CELLS}; ask for at most {MAX_CELLS // per_seed} seeds")
    return rows


def _check_data(distortions, n_train, n_test, data, validation=False):
    """Refuse what loading a cell's data would: the element budget of the built-in digits,
    and :func:`~stnref.data.load_dataset`'s own checks on two samples per split.  MNIST
    files, the same for every distortion, are read (whole) for the first one only."""
    for n, distortion in enumerate(distortions):
        if data is None:    # generated on demand, as many as asked: budgeted
            try:
                _check_digit_budget(distortion, n_train, n_test)
            except ValueError as err:
                raise ValueError(f"--train-size {n_train} --test-size {n_test}: {err}") from None
        try:
            load_dataset(distortion, data if n == 0 else None, min(n_train, 2), min(n_test, 2),
                         validation=validation)
        except ValueError as err:
            raise ValueError(f"--distortions {distortion} with --train-size {n_train} "
                             f"--test-size {n_test}: {err}") from None


def plan(models, transforms, distortions, seeds, epochs, train_size, test_size, data, out,
         settings=None, validation=False):
    """The cells of the grid, each compared with what ``out`` already holds.

    Everything a run of the cells would refuse about the grid, the paths and the data is
    refused here, before any cell is built or trained.

    Parameters
    ----------
    models, distortions : sequence of str
        Each value once.
    transforms : sequence of str or None
        Transforms of the ST models, each once; None: ``TABLE_TRANSFORMS``.  Given without
        an ST model in ``models``, they are refused.
    seeds : int
        Seeds ``0 .. seeds - 1`` per cell.
    epochs : int or None
        None: each cell's from ``settings``.
    train_size, test_size : int or None
        None: every sample of the source.
    data : str or None
        MNIST directory; None: the built-in digits.
    out : str
    settings : callable, optional
        ``settings(distortion, model, transform)``: a dict of :class:`TrainConfig` fields
        for that cell (over the grid's own), or None to leave the cell out of the grid.
    validation : bool
        Evaluate every cell on held-out training digits (:class:`TrainConfig`'s
        ``validation``) instead of the test set.

    Returns
    -------
    list of Cell

    Raises
    ------
    ValueError
        A cell directory holding a run of another config (naming the cell, the option,
        the stored and the asked value), or set to more epochs than asked; a cell path that
        is a file; a repeated value, more than ``MAX_CELLS`` cells; sizes beyond the data or
        the element budget, or data a cell could not load.
    """
    rows = _grid_rows(models, transforms, distortions, seeds)
    available = check_sizes(train_size, test_size, data, validation)
    n_train = available[0] if train_size is None else train_size
    n_test = available[1] if test_size is None else test_size
    _check_data(distortions, n_train, n_test, data, validation)
    out_cells, conflicts = [], []
    for distortion in distortions:
        for seed in range(seeds):
            for model, transform in rows:
                fields = dict(model=model, transform=transform, distortion=distortion, data=data,
                              epochs=epochs, seed=seed, train_size=n_train, test_size=n_test,
                              validation=validation)
                if settings is not None:
                    extra = settings(distortion, model, transform)
                    if extra is None:
                        continue
                    fields.update(extra)
                config = TrainConfig(**fields).validated()
                epochs_asked = config.epochs
                name = model if transform is None else f"{model}-{transform}"
                run_dir = os.path.join(out, distortion, f"{name}-seed{seed}")
                cell = Cell(distortion, model, transform, seed, run_dir, config)
                if os.path.exists(run_dir) and not os.path.isdir(run_dir):
                    conflicts.append(f"{run_dir} is a file, not a cell's run directory")
                elif os.path.exists(os.path.join(run_dir, CHECKPOINT)):
                    stored, state, _, _ = read_run(run_dir)
                    cell.done_epochs = state["epoch"]
                    diffs = _differences(stored, config)
                    if stored.epochs > epochs_asked:   # as stnref train --resume: epochs only grow
                        diffs.append(f"epochs: stored {stored.epochs} ({cell.done_epochs} trained), "
                                     f"asked {epochs_asked}")
                    if diffs:
                        conflicts.append(f"{run_dir} holds a run of another config ({'; '.join(diffs)})")
                    elif cell.done_epochs == epochs_asked and stored.epochs == epochs_asked:
                        cell.status = "done"
                    else:
                        cell.status = "extend" if epochs_asked > stored.epochs else "resume"
                out_cells.append(cell)
    if conflicts:
        more = f" (and {len(conflicts) - 1} more cells)" if len(conflicts) > 1 else ""
        raise ValueError(f"{conflicts[0]}{more}; use the same options, or another --out")
    return out_cells


def run_order(todo):
    """The cells ``todo``, longest first by a rough cost, in the order the workers take them.

    Cost: remaining epochs x training samples x input pixels x :data:`MODEL_WEIGHT`.
    With a long cell last, one worker would run it alone at the end; started first, it
    runs beside the short ones (the greedy longest-first schedule).

    Parameters
    ----------
    todo : list of Cell

    Returns
    -------
    list of Cell
        Ties keep the grid's order.
    """
    def cost(cell):
        c = cell.config
        return ((c.epochs - cell.done_epochs) * c.train_size * input_size(c.distortion) ** 2
                * MODEL_WEIGHT[c.model])

    return sorted(todo, key=cost, reverse=True)


def step_seconds(config, steps=RATE_STEPS):
    """Measured seconds of one training step of ``config``'s model on random data.

    Parameters
    ----------
    config : TrainConfig
    steps : int

    Returns
    -------
    float
    """
    model = make_model(config)
    side = input_size(config.distortion)
    x = np.random.default_rng(0).random((config.batch_size, 1, side, side), dtype=np.float32)
    y = np.arange(config.batch_size) % 10
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        model.zero_grad()
        _, dlogits = cross_entropy(model.forward(x), y)
        model.backward(dlogits)
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def estimate_seconds(todo, jobs, progress=None):
    """Estimated wall time of the cells ``todo`` on ``jobs`` processes, from measured step rates.

    Measuring takes :data:`RATE_STEPS` + 1 training steps of each kind of cell (model,
    transform, distortion): seconds to minutes for a large grid.  Each cell goes to the
    first free process, in the order given (:func:`run_order`'s, as the workers take them).

    Parameters
    ----------
    todo : list of Cell
        In the order the workers take them.
    jobs : int
    progress : stnref.app.train.Progress, optional
        Told which kind of cell is being measured, and when measuring is done.

    Returns
    -------
    float
    """
    kinds = list(dict.fromkeys((c.config.model, c.config.transform, c.config.distortion)
                               for c in todo))
    rates, total = {}, []
    for cell in todo:
        c = cell.config
        kind = (c.model, c.transform, c.distortion)
        if kind not in rates:
            if progress is not None:
                name = c.model if c.transform is None else f"{c.model}-{c.transform}"
                progress.update(f"measuring step times: kind {len(rates) + 1} of {len(kinds)} "
                                f"({c.distortion} {name})", force=True)
            rates[kind] = step_seconds(c)
        steps = math.ceil(c.train_size / c.batch_size) + EVAL_SHARE * c.test_size / c.batch_size
        total.append((c.epochs - cell.done_epochs) * steps * rates[kind])
    if progress is not None and rates:
        progress.done(f"measured step times of {len(rates)} kinds of cell")
    load = [0.0] * max(1, min(jobs, len(total)))
    for seconds in total:
        load[load.index(min(load))] += seconds
    return max(load) if total else 0.0


def _describe_seconds(seconds):
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 \
        else f"{seconds / 3600:.1f} h"


@contextlib.contextmanager
def _environment(values):
    """``os.environ`` with ``values`` set, restored afterwards (workers inherit it at start)."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _worker_start():
    """Ctrl-C reaches every process of the terminal: a worker then ends at once and quietly
    (its cell resumes from its last checkpoint), and the parent reports the interruption.
    A Ctrl-C that came while the worker was importing (SIGINT blocked, see
    :func:`_sigint_deferred`) is delivered now, to this handler."""
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(128 + signum))
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@contextlib.contextmanager
def _sigint_deferred():
    """SIGINT blocked in this thread for the block (POSIX): worker processes started in it
    inherit the mask, so a Ctrl-C during their start-up waits for :func:`_worker_start`
    instead of printing a traceback from their imports; here it is delivered at the end."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _run_cell(config, run_dir, resume):
    """Train one cell quietly (in a worker process); its metrics.

    The worker's process-wide generator is seeded with the cell's seed first: whatever ran
    in the process before, nothing a cell draws depends on it."""
    manual_seed(config.seed)
    return train(config, run_dir, resume=resume, progress=Progress(io.StringIO()))


def run_experiment(models, transforms, distortions, seeds, epochs, train_size, test_size, data,
                   out, jobs=None, dry_run=False, print_fn=print, estimate=False, settings=None,
                   validation=False):
    """Run (or plan) the grid of models x transforms x distortions x seeds.

    Parameters
    ----------
    models, distortions : sequence of str
    transforms : sequence of str or None
        None: ``TABLE_TRANSFORMS`` (see :func:`plan`).
    seeds : int
    epochs : int or None
        None: each cell's own, from ``settings``.
    train_size, test_size : int or None
        Samples per split (None: all of the source).
    data : str or None
        MNIST directory (stored absolute); None: the built-in digits.
    out : str
    jobs : int, optional
        Worker processes (default: the machine's cores), each with one BLAS thread.
    dry_run : bool
        Print the plan and stop.
    print_fn : callable
    estimate : bool
        Also print the wall time the cells to train will take, estimated from a few
        measured steps of each kind of cell (:func:`estimate_seconds`; progress on stderr).
    settings, validation
        As :func:`plan`: per-cell fields of the config, and held-out evaluation digits.

    Returns
    -------
    dict or None
        ``{"budget": {...}, "cells": {"<model>|<distortion>": {"errors", "seconds_per_epoch",
        "seconds", "run_dirs"}}}``, also written to ``results.json`` beside ``results.md``;
        None for a dry run.
    """
    jobs = jobs or os.cpu_count() or 1
    grid = plan(models, transforms, distortions, seeds, epochs, train_size, test_size, data, out,
                settings, validation)
    data = None if data is None else os.path.abspath(data)
    todo = run_order([c for c in grid if c.status != "done"])
    counts = {s: sum(c.status == s for c in grid) for s in ("new", "resume", "extend", "done")}
    first = grid[0].config if grid else None
    print_fn(f"plan: {len(grid)} cells in {shown(out)} ({counts['new']} new, {counts['resume']} to resume, "
             f"{counts['extend']} to extend, {counts['done']} done); {_epochs_text(grid)} on "
             f"{first.train_size if first else '-'} training samples, "
             f"{'validated on held-out' if validation else 'tested on'} "
             f"{first.test_size if first else '-'}, {seeds} seed(s), "
             f"{'built-in digits' if data is None else data}")
    if todo and estimate:
        width = min(jobs, len(todo))
        seconds = estimate_seconds(todo, width, progress=Progress())
        print_fn(f"estimated {_describe_seconds(seconds)} on {width} process(es) (from "
                 f"{RATE_STEPS} measured steps of each kind of cell)")
    elif todo and dry_run:
        kinds = len({(c.config.model, c.config.transform, c.config.distortion) for c in todo})
        print_fn(f"time not estimated: --estimate measures {RATE_STEPS + 1} training steps of "
                 f"each of the {kinds} kinds of cell first")
    if dry_run:
        for cell in grid:
            print_fn(f"  {cell.status:7s} {shown(cell.run_dir)}")
        return None
    os.makedirs(out, exist_ok=True)
    results = {}
    finished = {c.run_dir: None for c in grid}
    start = time.perf_counter()
    if todo:
        context = multiprocessing.get_context("spawn")
        with _environment(BLAS_ONE_THREAD), concurrent.futures.ProcessPoolExecutor(
                max_workers=min(jobs, len(todo)), mp_context=context,
                initializer=_worker_start) as pool:
            try:
                with _sigint_deferred():     # the workers start (on submit) with it deferred
                    futures = {pool.submit(_run_cell, c.config, c.run_dir, c.status != "new"): c
                               for c in todo}
                for n, future in enumerate(concurrent.futures.as_completed(futures), 1):
                    cell = futures[future]
                    metrics = future.result()
                    finished[cell.run_dir] = metrics
                    last = metrics["epochs"][-1]
                    print_fn(f"[{n}/{len(todo)}] {cell.distortion} {cell.name} seed {cell.seed}: "
                             f"{'validation' if validation else 'test'} error {last['test_error']:.2f}% "
                             f"({time.perf_counter() - start:.0f} s since start)")
            except KeyboardInterrupt:  # also when only the parent was signalled: end the workers
                for child in multiprocessing.active_children():
                    child.terminate()
                raise
    for cell in grid:
        metrics = finished[cell.run_dir]
        if metrics is None:
            metrics = {"epochs": read_run(cell.run_dir)[2]}
        entry = results.setdefault(f"{cell.name}|{cell.distortion}",
                                   {"errors": [], "seconds_per_epoch": [], "seconds": [], "run_dirs": []})
        entry["errors"].append(metrics["epochs"][-1]["test_error"])
        entry["seconds_per_epoch"].append(float(np.mean([e["seconds"] for e in metrics["epochs"]])))
        entry["seconds"].append(float(sum(e["seconds"] for e in metrics["epochs"])))
        entry["run_dirs"].append(cell.run_dir)
    budget = {"epochs": _epochs_text(grid), "train_size": first.train_size,
              "test_size": first.test_size, "seeds": seeds, "data": data or "built-in digits",
              "evaluated_on": "validation" if validation else "test"}
    payload = {"budget": budget, "cells": results}
    atomic_write_bytes(os.path.join(out, "results.json"),
                       (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())
    rows = list(dict.fromkeys((c.model, c.transform) for c in grid))
    text = markdown(results, rows, distortions, budget)
    atomic_write_bytes(os.path.join(out, "results.md"), text.encode())
    print_fn(text)
    return payload


def _epochs_text(grid):
    """``"N epochs"``, or ``"A-B epochs (per cell)"`` when the cells differ."""
    counts = sorted({cell.config.epochs for cell in grid})
    if len(counts) == 1:
        return f"{counts[0]} epochs"
    return f"{counts[0]}-{counts[-1]} epochs (per cell)" if counts else "no epochs"


def markdown(results, rows, distortions, budget):
    """The results table as markdown, each cell ``ours (paper)`` in test error %.

    Parameters
    ----------
    results : dict
        ``run_experiment``'s ``cells``.
    rows : list
        From :func:`cells`.
    distortions : sequence of str
    budget : dict

    Returns
    -------
    str
    """
    lines = [
        f"{budget['evaluated_on'].capitalize()} error % (mean of {budget['seeds']} seed(s)); "
        f"paper's Table 1 (test error) in parentheses.",
        f"Budget: {budget['epochs']} on {budget['train_size']} training samples "
        f"({budget['data']}), {'tested' if budget['evaluated_on'] == 'test' else 'validated'} on "
        f"{budget['test_size']}; the paper trained 150k iterations "
        f"of batch 256 on 60,000 MNIST digits.",
        "",
        "| model | " + " | ".join(d.upper() for d in distortions) + " | s/epoch |",
        "|---|" + "---:|" * (len(distortions) + 1),
    ]
    for model, transform in rows:
        name = model if transform is None else f"{model}-{transform}"
        paper = PAPER_TABLE.get((model, transform), {})
        cols, secs = [], []
        for d in distortions:
            cell = results.get(f"{name}|{d}")
            theirs = paper.get(d)
            if d == "tc" and transform not in (None, PAPER_TC_TRANSFORM):
                theirs = None
            if cell is None:
                cols.append("-")
                continue
            ours = float(np.mean(cell["errors"]))
            secs.extend(cell["seconds_per_epoch"])
            cols.append(f"{ours:.2f}" + (f" ({theirs})" if theirs is not None else ""))
        label = model.upper() if transform is None else f"{model.upper()} {transform}"
        lines.append(f"| {label} | " + " | ".join(cols) + f" | {np.mean(secs):.1f} |")
    return "\n".join(lines) + "\n"
