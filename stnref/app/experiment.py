"""``stnref experiment``: the paper's Table 1 grid on a stated budget.

Runs every (distortion, model, transform, seed) cell with the same training
budget, writes ``results.json`` and ``results.md`` (mean test error over
seeds, beside the paper's numbers), and skips cells already finished in the
output directory, so an interrupted experiment continues where it stopped.
"""

from __future__ import annotations

import json
import os

import numpy as np

from .._io import atomic_write_bytes
from ..data import load_dataset
from .train import METRICS, TrainConfig, train

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


def _finished(run_dir, epochs):
    path = os.path.join(run_dir, METRICS)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        metrics = json.load(f)
    return metrics if len(metrics.get("epochs", [])) >= epochs else None


def run_experiment(args, print_fn=print):
    """Run the grid of models x transforms x distortions x seeds described by ``args``.

    Parameters
    ----------
    args : argparse.Namespace
        As parsed with :func:`add_arguments`.
    print_fn : callable

    Returns
    -------
    dict
        ``{"budget": {...}, "cells": {"<model>|<distortion>": {"errors", "seconds_per_epoch"}}}``,
        also written to ``results.json`` beside ``results.md``.
    """
    os.makedirs(args.out, exist_ok=True)
    rows = cells(args.models, args.transforms)
    results = {}
    for distortion in args.distortions:
        for seed in range(args.seeds):
            data = None
            for model, transform in rows:
                name = model if transform is None else f"{model}-{transform}"
                run_dir = os.path.join(args.out, distortion, f"{name}-seed{seed}")
                metrics = _finished(run_dir, args.epochs)
                if metrics is None:
                    if data is None:
                        data = load_dataset(distortion, args.data, args.train_size, args.test_size, seed)
                    print_fn(f"[{distortion}] {name} seed {seed}")
                    config = TrainConfig(model=model, transform=transform or "affine",
                                         distortion=distortion, data=args.data, epochs=args.epochs,
                                         train_size=args.train_size, test_size=args.test_size,
                                         seed=seed)
                    if os.path.exists(os.path.join(run_dir, "checkpoint.npz")):
                        metrics = train(config, run_dir, resume=True, data=data)
                    else:
                        metrics = train(config, run_dir, data=data)
                last = metrics["epochs"][-1]
                cell = results.setdefault(f"{name}|{distortion}", {"errors": [], "seconds_per_epoch": []})
                cell["errors"].append(last["test_error"])
                cell["seconds_per_epoch"].append(
                    float(np.mean([e["seconds"] for e in metrics["epochs"]])))
    budget = {"epochs": args.epochs, "train_size": args.train_size, "test_size": args.test_size,
              "seeds": args.seeds, "data": args.data or "built-in digits"}
    payload = {"budget": budget, "cells": results}
    atomic_write_bytes(os.path.join(args.out, "results.json"),
                       (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())
    text = markdown(results, rows, args.distortions, budget)
    atomic_write_bytes(os.path.join(args.out, "results.md"), text.encode())
    print_fn(text)
    return payload


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
        f"Test error % (mean of {budget['seeds']} seed(s)); paper's Table 1 in parentheses.",
        f"Budget: {budget['epochs']} epochs on {budget['train_size']} training samples "
        f"({budget['data']}), tested on {budget['test_size']}; the paper trained 150k iterations "
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
