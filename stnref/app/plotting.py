"""Figures (optional: needs matplotlib, the ``plot`` extra).

Functions return False instead of failing when matplotlib is missing, so
callers can tell the user how to get the figures.
"""

from __future__ import annotations

import os

import numpy as np

from .._io import atomic_open

PLOT_HINT = "install matplotlib for figures: pip install 'stnref[plot]'"


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_pairs(path, inputs, outputs, titles=("input", "transformed"), columns=4):
    """Save an ``input | transformed`` sheet of image pairs as a PNG.

    Parameters
    ----------
    path : str
        Destination PNG (written atomically).
    inputs : ndarray, shape (n, H, W)
    outputs : ndarray, shape (n, h, w)
    titles : pair of str
    columns : int
        Pairs per row.

    Returns
    -------
    bool
        False when matplotlib is not installed (nothing is written).
    """
    plt = _pyplot()
    if plt is None:
        return False
    n = len(inputs)
    rows = int(np.ceil(n / columns))
    fig, axes = plt.subplots(rows, 2 * columns, figsize=(2 * columns * 1.1, rows * 1.2), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, columns)
        for j, img in enumerate((inputs[i], outputs[i])):
            ax = axes[r, 2 * c + j]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            if r == 0:
                ax.set_title(titles[j], fontsize=8)
    _save(plt, fig, path)
    return True


def save_curves(path, curves, ylabel="test error (%)"):
    """Save per-epoch curves, one line per run, as a PNG.

    Parameters
    ----------
    path : str
        Destination PNG (written atomically).
    curves : dict of str to sequence of float
        Run name -> one value per epoch (epoch 1 first).
    ylabel : str

    Returns
    -------
    bool
        False when matplotlib is not installed (nothing is written).
    """
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(4.5, 3.0))
    for name, values in curves.items():
        ax.plot(np.arange(1, len(values) + 1), values, marker="o", markersize=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(plt, fig, path)
    return True


def _save(plt, fig, path):
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_open(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
