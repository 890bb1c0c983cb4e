"""``stnref demo``: the paper's central effect in under a minute on a laptop CPU.

Trains an FCN and an ST-FCN (affine) with the same budget on built-in RTS
digits (rotated ±45°, scaled 0.7-1.2, placed at random on a 42x42 canvas),
prints their test errors side by side, and draws what the transformer learned
and both training curves (33 s of wall time on the idle 2-core machine of
``docs/results.md``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time

from ..data import load_dataset
from ..networks import count_parameters
from .plotting import PLOT_HINT, save_curves, save_pairs
from .train import CHECKPOINT, METRICS, TrainConfig, load_run, read_run, train, transformers

DEMO_DIR = os.path.join("runs", "demo")   # a directory the project's .gitignore leaves out
DEMO_TRAIN = 20_000     # training digits
DEMO_TEST = 2_000       # test digits
DEMO_EPOCHS = 10
DEMO_SCHEDULE = "cosine"  # a decaying rate settles the last epochs (docs/results.md measures it)
DEMO_MODELS = ("fcn", "st-fcn")
FIGURE_SAMPLES = 16


def _clear_previous_demo(out_dir, configs):
    """Remove the runs a previous demo left in ``out_dir``; refuse, before removing anything,
    if any of them is another run (naming what differs)."""
    held = [name for name in configs if os.path.exists(os.path.join(out_dir, name, CHECKPOINT))]
    for name in held:
        stored = dataclasses.asdict(read_run(os.path.join(out_dir, name))[0])
        differ = [f"{k} {v!r}" for k, v in stored.items() if v != getattr(configs[name], k)]
        if differ:
            raise ValueError(f"--out: {os.path.join(out_dir, name)} holds a run that is not this "
                             f"demo's ({', '.join(differ)}); give another --out")
    for name in held:
        for file in (CHECKPOINT, METRICS):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(out_dir, name, file))


def run_demo(out_dir, seed=0, print_fn=print):
    """Train FCN and ST-FCN on built-in RTS digits; returns ``{model: metrics}``.

    Parameters
    ----------
    out_dir : str
        Receives one run directory per model, ``st-fcn_transform.png`` (inputs and what
        the transformer makes of them) and ``test_error.png`` (both training curves).
    seed : int
    print_fn : callable

    Returns
    -------
    dict
        ``{model name: list of per-epoch metrics}``.
    """
    start = time.perf_counter()
    configs = {name: TrainConfig(model=name, distortion="rts", epochs=DEMO_EPOCHS,
                                 schedule=DEMO_SCHEDULE, train_size=DEMO_TRAIN,
                                 test_size=DEMO_TEST, seed=seed).validated()
               for name in DEMO_MODELS}
    _clear_previous_demo(out_dir, configs)
    os.makedirs(out_dir, exist_ok=True)
    print_fn(f"stnref demo: FCN vs ST-FCN (affine) on built-in RTS digits "
             f"({DEMO_TRAIN} train / {DEMO_TEST} test, {DEMO_EPOCHS} epochs each; "
             f"under a minute on 2 idle cores)")
    data = load_dataset("rts", None, DEMO_TRAIN, DEMO_TEST, seed)
    results = {}
    for name, config in configs.items():
        print_fn(f"training {name} ...")
        results[name] = train(config, os.path.join(out_dir, name), data=data)["epochs"]

    print_fn("")
    print_fn(f"{'model':<8} {'params':>8} {'test error':>11} {'s/epoch':>8} {'samples/s':>10}")
    models = {name: load_run(os.path.join(out_dir, name))[1] for name in DEMO_MODELS}
    for name, model in models.items():
        last = results[name][-1]
        seconds = sum(e["seconds"] for e in results[name]) / len(results[name])
        print_fn(f"{name:<8} {count_parameters(model):>8} {last['test_error']:>10.2f}% "
                 f"{seconds:>8.1f} {last['samples_per_s']:>10.0f}")

    model = models["st-fcn"]
    x = data[2][:FIGURE_SAMPLES]
    model.eval()
    V = transformers(model)[0].forward(x)
    pairs = os.path.join(out_dir, "st-fcn_transform.png")
    curves = os.path.join(out_dir, "test_error.png")
    print_fn("")
    print_fn(f"runs (checkpoints and metrics.json): "
             f"{', '.join(os.path.join(out_dir, name) for name in DEMO_MODELS)}")
    drawn = save_pairs(pairs, x[:, 0], V[:, 0]) and save_curves(
        curves, {name: [e["test_error"] for e in results[name]] for name in DEMO_MODELS})
    if drawn:
        print_fn(f"what the transformer learned: {pairs}")
        print_fn(f"test error per epoch: {curves}")
    else:
        print_fn(f"figures skipped: {PLOT_HINT}")
    print_fn(f"done in {time.perf_counter() - start:.0f} s")
    return results
