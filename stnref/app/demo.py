"""``stnref demo``: the paper's central effect in a few minutes on a laptop CPU.

Trains an FCN and an ST-FCN (affine) with the same budget on built-in RTS
digits (rotated ±45°, scaled 0.7-1.2, placed at random on a 42x42 canvas),
prints their test errors side by side, and draws what the transformer learned.
"""

from __future__ import annotations

import os

from ..data import load_dataset
from ..networks import count_parameters
from .plotting import PLOT_HINT, save_pairs
from .train import TrainConfig, load_run, train, transformers

DEMO_TRAIN = 20_000     # training digits
DEMO_TEST = 2_000       # test digits
DEMO_EPOCHS = 10
DEMO_MODELS = ("fcn", "st-fcn")
FIGURE_SAMPLES = 16


def run_demo(out_dir, seed=0, print_fn=print):
    """Train FCN and ST-FCN on built-in RTS digits; returns ``{model: metrics}``.

    Parameters
    ----------
    out_dir : str
        Receives one run directory per model and ``st-fcn_transform.png``.
    seed : int
    print_fn : callable

    Returns
    -------
    dict
        ``{model name: list of per-epoch metrics}``.
    """
    os.makedirs(out_dir, exist_ok=True)
    print_fn(f"stnref demo: FCN vs ST-FCN (affine) on built-in RTS digits "
             f"({DEMO_TRAIN} train / {DEMO_TEST} test, {DEMO_EPOCHS} epochs each)")
    data = load_dataset("rts", None, DEMO_TRAIN, DEMO_TEST, seed)
    results = {}
    for name in DEMO_MODELS:
        config = TrainConfig(model=name, transform="affine", distortion="rts", epochs=DEMO_EPOCHS,
                             train_size=DEMO_TRAIN, test_size=DEMO_TEST, seed=seed)
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
    path = os.path.join(out_dir, "st-fcn_transform.png")
    if save_pairs(path, x[:, 0], V[:, 0]):
        print_fn(f"what the transformer learned: {path}")
    else:
        print_fn(f"figures skipped: {PLOT_HINT}")
    return results
