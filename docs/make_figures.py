"""Regenerate every PNG in docs/figures/ from stnref itself (needs matplotlib: the ``plot`` extra).

    python docs/make_figures.py                  # the convention figures
    python docs/make_figures.py --run RUN_DIR    # plus the trained-network figures of a run
                                                 # written by `stnref train` (an ST model)
    python docs/make_figures.py --table1 OUT     # plus per-epoch curves of cells of an
                                                 # `stnref experiment --preset table1` run

Deterministic: fixed seeds, no timestamps in the PNGs, so re-running it on the same versions
of stnref and matplotlib rewrites identical files.  The pictures are explained in
docs/pictures.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
except ImportError:
    sys.exit("make_figures.py needs matplotlib: pip install 'stnref[plot]'")

import stnref
from stnref.data import distort, load_dataset, synthetic_digits
from stnref.app.plotting import save_pairs

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "figures")
DPI = 90
SUPTITLE_RECT = (0, 0, 1, 0.92)     # leave room for a figure title above the panels
SEED = 0
SIDE = 56                       # illustration digits: twice MNIST's side, for visible pixels
GRID_LINES = 11                 # sampling-grid lines drawn per axis (a coarse output grid)
DIGIT_LABEL = 7                 # an asymmetric digit: its orientation and mirror images show
MISTAKES_SIDE = 28              # mistakes at MNIST's size: one-pixel errors stay visible
CHECKER = 4                     # checkerboard square (pixels) behind the mistakes' digit
CHECKER_LEVEL = 0.35
MISTAKES_TPS_NOISE = 0.2        # control-point displacement (normalised units)
ERROR_TICKS = (0.5, 1, 2, 5, 10, 20, 50, 100)   # error-% ticks of the training curve
OVERSHOOT_SHOWN = 0.02          # bicubic values this far outside [0, 1] are coloured
FILL_SHOWN = 0.5                # the fill value drawn: grey, between the background and the ink
RED, BLUE, GREY = "#d62728", "#1f77b4", "#7f7f7f"
PNG_METADATA = {"Software": None}   # no version string: the file depends on the pixels only


# ---------------------------------------------------------------------------- helpers

def save(fig, name):
    path = os.path.join(OUT, name)
    fig.savefig(path, dpi=DPI, metadata=PNG_METADATA)
    plt.close(fig)
    print(f"wrote {os.path.relpath(path)} ({os.path.getsize(path) // 1024} KB)")


def digit(side=SIDE, label=DIGIT_LABEL):
    """One built-in digit ``label`` as ``U (1, 1, side, side)`` float64."""
    images, labels = synthetic_digits(20, seed=SEED, size=side)
    return images[np.flatnonzero(labels == label)[0]][None, None].astype(np.float64)


def to_pixels(grid, size, align_corners=False):
    """Normalised ``(x, y)`` to pixel ``(column, row)``: docs/conventions.md §3.1's unnormalisation."""
    H, W = size
    scale = np.array([W, H], dtype=float)
    if align_corners:
        return (grid + 1) / 2 * (scale - 1)
    return ((grid + 1) * scale - 1) / 2


def show(ax, image, title=None, vmin=0.0, vmax=1.0, cmap="gray"):
    ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def draw_grid(ax, grid, size, color=RED, align_corners=False):
    """Draw the lines of a sampling grid ``(h, w, 2)`` over an image of ``size`` (H, W)."""
    px = to_pixels(grid, size, align_corners)
    for row in px:
        ax.plot(row[:, 0], row[:, 1], color=color, lw=0.8)
    for col in px.transpose(1, 0, 2):
        ax.plot(col[:, 0], col[:, 1], color=color, lw=0.8)
    H, W = size
    ax.set_xlim(-0.5 - W / 4, W - 0.5 + W / 4)
    ax.set_ylim(H - 0.5 + H / 4, -0.5 - H / 4)


def rotation(deg, scale=1.0, tx=0.0, ty=0.0):
    c, s = np.cos(np.deg2rad(deg)) * scale, np.sin(np.deg2rad(deg)) * scale
    return np.array([[[c, -s, tx], [s, c, ty]]])


def example_thetas():
    """One θ per transform of paper §3.2, each a visible but moderate warp."""
    rng = np.random.default_rng(SEED)
    points = stnref.tps_control_points(16)
    return {
        "affine": ("affine, eq. (1)", rotation(20, 0.85, 0.1, -0.05) + [[[0, 0.15, 0], [0, 0, 0]]]),
        "attention": ("attention, eq. (2)", np.array([[0.55, 0.15, -0.1]])),
        "projective": ("projective (8 params)",
                       np.array([[[0.9, 0.05, 0.0], [-0.05, 0.9, 0.0], [0.35, 0.25, 1.0]]])),
        "tps": ("thin-plate spline (16 pts)", (points + 0.12 * rng.standard_normal(points.shape))[None]),
    }


# ---------------------------------------------------------------------------- figures

def fig_grids():
    U = digit()
    size = U.shape
    fig, axes = plt.subplots(2, 4, figsize=(10, 5.2))
    for j, (name, (title, theta)) in enumerate(example_thetas().items()):
        t = stnref.get_transform(name)
        coarse = t.grid(theta, (1, 1, GRID_LINES, GRID_LINES), False)[0]
        V = stnref.grid_sample(U, t.grid(theta, size, False))
        show(axes[0, j], U[0, 0], title)
        draw_grid(axes[0, j], coarse, size[2:])
        show(axes[1, j], V[0, 0], "output V")
    axes[0, 0].set_ylabel("input U + sampling grid", fontsize=9)
    fig.suptitle("The grid generator T_θ maps each output pixel to the input point it reads (§3.2)",
                 fontsize=10)
    fig.tight_layout(rect=SUPTITLE_RECT)
    save(fig, "grids.png")


def fig_align_corners():
    n_in, n_out = 4, 8
    U = np.arange(n_in * n_in, dtype=float).reshape(1, 1, n_in, n_in) / (n_in * n_in - 1)
    identity = np.eye(2, 3)[None]
    fig, axes = plt.subplots(2, 2, figsize=(7.5, 7.2))
    for j, align in enumerate((False, True)):
        grid = stnref.affine_grid(identity, (1, 1, n_out, n_out), align_corners=align)[0]
        px = to_pixels(grid, (n_in, n_in), align)
        ax = axes[0, j]
        show(ax, U[0, 0], f"align_corners={align}: 8x8 grid on a 4x4 input", cmap="viridis")
        ax.scatter(px[..., 0].ravel(), px[..., 1].ravel(), s=14, color=RED, zorder=3)
        for k in range(n_in + 1):
            ax.axhline(k - 0.5, color="white", lw=0.6)
            ax.axvline(k - 0.5, color="white", lw=0.6)
        lo, hi = to_pixels(np.array([-1.0, 1.0]), (n_in, n_in), align)
        for edge in (lo, hi):
            ax.axvline(edge, color=RED, ls="--", lw=1)
        ax.text(lo, -0.75, "x=-1", color=RED, ha="center", fontsize=8)
        ax.text(hi, -0.75, "x=+1", color=RED, ha="center", fontsize=8)
        ax.set_xlim(-0.9, n_in - 0.1)
        ax.set_ylim(n_in - 0.1, -0.9)
        V = stnref.grid_sample(U, grid[None], align_corners=align)
        show(axes[1, j], V[0, 0], "output (bilinear, zeros)", cmap="viridis")
    fig.suptitle("align_corners: False puts ±1 on the outer pixel edges, True on the corner pixel "
                 "centres", fontsize=10)
    fig.tight_layout(rect=SUPTITLE_RECT)
    save(fig, "align_corners.png")


def fig_padding():
    U = digit()
    theta = rotation(10, 2.2, 0.15, 0.1)                      # zoom far out: most points outside
    grid = stnref.affine_grid(theta, U.shape)
    fig, axes = plt.subplots(1, 4, figsize=(10, 2.9))
    show(axes[0], U[0, 0], "input U")
    for ax, padding in zip(axes[1:], ("zeros", "border", "reflection")):
        V = stnref.grid_sample(U, grid, padding_mode=padding)
        show(ax, V[0, 0], f'padding_mode="{padding}"')
    fig.suptitle("Zoomed out 2.2x: what each padding mode reads outside the input", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.88))
    save(fig, "padding.png")


def fig_reflection_band():
    values = np.array([0.2, 0.9, 0.5, 0.7, 0.1])
    W = len(values)
    U = values.reshape(1, 1, 1, W)
    x = np.linspace(-1.9, 1.9, 1521)
    grid = np.stack([x, np.zeros_like(x)], axis=-1).reshape(1, 1, -1, 2)
    fig, axes = plt.subplots(2, 2, figsize=(10, 5.4), sharex="col")
    for j, align in enumerate((False, True)):
        V = stnref.grid_sample(U, grid, padding_mode="reflection", align_corners=align)
        _, dgrid = stnref.grid_sample_backward(np.ones_like(V), U, grid,
                                               padding_mode="reflection", align_corners=align)
        ix = to_pixels(grid[0, 0], (1, W), align)[:, 0]
        axes[0, j].plot(ix, V.ravel(), color=BLUE)
        axes[0, j].plot(np.arange(W), values, "o", color="black", ms=4, label="pixel values")
        axes[1, j].plot(ix, dgrid[0, 0, :, 0], color=RED, lw=1)
        span = (-0.5, W - 0.5) if not align else (0, W - 1)
        for ax in axes[:, j]:
            for edge in span:
                ax.axvline(edge, color=GREY, ls="--", lw=0.8)
            if not align:
                ax.axvspan(-0.5, 0, color="orange", alpha=0.3)
                ax.axvspan(W - 1, W - 0.5, color="orange", alpha=0.3)
        mirror = "pixel edges (-0.5, W-0.5)" if not align else "pixel centres (0, W-1)"
        axes[0, j].set_title(f"reflection, align_corners={align}: mirrors about {mirror}",
                             fontsize=9)
        axes[1, j].set_xlabel("source pixel coordinate ix")
    axes[0, 0].set_ylabel("V")
    axes[1, 0].set_ylabel("dV / dx (grid gradient)")
    axes[0, 0].legend(fontsize=8, loc="upper right")
    axes[0, 0].text(-0.25, 0.02, "half-pixel\nbands", fontsize=8, ha="center", color="darkorange")
    fig.tight_layout()
    save(fig, "reflection_band.png")


def fig_bicubic():
    values = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=float)
    W = len(values)
    U = values.reshape(1, 1, 1, W)
    x = np.linspace(-1, 1, 801)
    grid = np.stack([x, np.zeros_like(x)], axis=-1).reshape(1, 1, -1, 2)
    ix = to_pixels(grid[0, 0], (1, W))[:, 0]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [1.6, 1]})
    ax = axes[0]
    for mode, color in (("nearest", GREY), ("bilinear", BLUE), ("bicubic", RED)):
        V = stnref.grid_sample(U, grid, mode=mode, padding_mode="border").ravel()
        ax.plot(ix, V, color=color, label=f'{mode} (min {V.min():.3f}, max {V.max():.3f})')
    ax.plot(np.arange(W), values, "o", color="black", ms=4)
    ax.axhline(0, color="black", lw=0.5)
    ax.axhline(1, color="black", lw=0.5)
    ax.set_xlabel("source pixel coordinate ix")
    ax.set_title("A step edge: bicubic (Keys, A = -0.75) overshoots; bilinear never does",
                 fontsize=9)
    ax.legend(fontsize=8, loc="center right")
    small = digit(side=14)
    big = stnref.affine_grid(np.eye(2, 3)[None], (1, 1, 56, 56))
    V = stnref.grid_sample(small, big, mode="bicubic", padding_mode="border")[0, 0]
    over = np.ma.masked_inside(V, -OVERSHOOT_SHOWN, 1.0 + OVERSHOOT_SHOWN)
    show(axes[1], np.clip(V, 0, 1), f"bicubic 4x upsampling: range [{V.min():.2f}, {V.max():.2f}]")
    axes[1].imshow(over, cmap="coolwarm", vmin=-0.3, vmax=1.3, interpolation="nearest")
    axes[1].set_xlabel(f"red > {1 + OVERSHOOT_SHOWN:g}, blue < {-OVERSHOOT_SHOWN:g}", fontsize=8)
    fig.tight_layout()
    save(fig, "bicubic.png")


def fig_inverse_warp():
    U = digit()
    theta = rotation(30)
    coarse = stnref.affine_grid(theta, (1, 1, GRID_LINES, GRID_LINES))[0]
    V = stnref.grid_sample(U, stnref.affine_grid(theta, U.shape))
    fig, axes = plt.subplots(1, 3, figsize=(9.5, 4.0))
    show(axes[0], U[0, 0], "input U")
    show(axes[1], U[0, 0], "θ = rotation +30°: sampling points\nturn clockwise on screen")
    draw_grid(axes[1], coarse, U.shape[2:])
    corner = to_pixels(coarse[0, 0], U.shape[2:])
    axes[1].plot(*corner, "o", color=RED, ms=5)
    axes[1].annotate("output pixel (0, 0)\nreads here", corner, (-13, 4), color=RED, fontsize=8,
                     arrowprops={"arrowstyle": "->", "color": RED},
                     bbox={"fc": "white", "ec": "none", "alpha": 0.85})
    show(axes[2], V[0, 0], "output V: the digit turned\n30° counter-clockwise")
    fig.suptitle("θ maps output to input (an inverse warp): +30° in θ turns the picture by -30°",
                 fontsize=10)
    fig.tight_layout(rect=SUPTITLE_RECT)
    save(fig, "inverse_warp.png")


def mistakes_input(side=MISTAKES_SIDE):
    """A digit over a faint checkerboard that fills the frame, so edge and zoom errors show."""
    U = digit(side=side)
    rows, cols = np.indices((side, side)) // CHECKER
    board = CHECKER_LEVEL * ((rows + cols) % 2)
    return np.maximum(U, board[None, None])


def _mistakes():
    """``(title, input, wrong, right)`` rows: known implementation mistakes, reproduced."""
    U = mistakes_input()
    size = U.shape
    H, W = size[2:]
    identity = np.eye(2, 3)[None]
    rows = []

    # 1. Unnormalising an align_corners=True grid with size instead of size - 1,
    #    ix = (x + 1) / 2 * W: expressed as the normalised point stnref then reads.
    grid = stnref.affine_grid(identity, size, align_corners=True)
    wrong_grid = 2 * ((grid + 1) / 2 * np.array([W, H])) / np.array([W - 1, H - 1]) - 1
    rows.append(("unnormalised with W instead of W-1:\nthe image shrinks towards the top left,\n"
                 "the last row and column read padding (0)",
                 U, stnref.grid_sample(U, wrong_grid, align_corners=True),
                 stnref.grid_sample(U, grid, align_corners=True)))

    # 2. Grid built with align_corners=True, sampled with False: the identity zooms.
    wrong = stnref.grid_sample(U, stnref.affine_grid(identity, size, align_corners=True),
                               align_corners=False)
    rows.append(("identity θ whose grid and sampler\ndisagree on align_corners:\n"
                 "it shrinks by (W-1)/W and blurs",
                 U, wrong, stnref.grid_sample(U, stnref.affine_grid(identity, size))))

    # 3. Grid's last axis in (row, col) = (y, x) order: the warp is transposed.
    grid = stnref.affine_grid(rotation(20, 0.9), size)
    rows.append(("grid stored as (y, x) instead of (x, y):\nthe warp is mirrored in the diagonal",
                 U, stnref.grid_sample(U, grid[..., ::-1]), stnref.grid_sample(U, grid)))

    # 4. TPS reduced to its affine part (radial basis dropped): the least-squares affine fit
    #    of the control points, so every bend in between is lost.
    points = stnref.tps_control_points(16)
    rng = np.random.default_rng(SEED + 1)
    theta = points + MISTAKES_TPS_NOISE * rng.standard_normal(points.shape)
    design = np.hstack([points, np.ones((len(points), 1))])            # (K, 3)
    affine = np.linalg.lstsq(design, theta, rcond=None)[0].T[None]      # (1, 2, 3)
    rows.append(("TPS silently degraded to affine\n(radial basis dropped):\nthe local bends are lost",
                 U, stnref.grid_sample(U, stnref.affine_grid(affine, size)),
                 stnref.grid_sample(U, stnref.tps_grid(theta[None], size))))
    return rows


def fig_mistakes():
    rows = _mistakes()
    fig, axes = plt.subplots(len(rows), 5, figsize=(11, 2.2 * len(rows)),
                             gridspec_kw={"width_ratios": [1.7, 1, 1, 1, 1]})
    for i, (title, U, wrong, right) in enumerate(rows):
        axes[i, 0].axis("off")
        axes[i, 0].text(0, 0.5, title, fontsize=9, va="center", transform=axes[i, 0].transAxes)
        heading = i == 0
        diff = np.abs(wrong - right)[0, 0]
        show(axes[i, 1], U[0, 0], "input" if heading else None)
        show(axes[i, 2], wrong[0, 0], "the mistake" if heading else None)
        show(axes[i, 3], right[0, 0], "stnref" if heading else None)
        show(axes[i, 4], diff, None, vmax=1.0, cmap="magma")
        axes[i, 4].set_title(("|mistake - stnref|\n" if heading else "") + f"max {diff.max():.2f}",
                             fontsize=9)
        axes[i, 2].spines[:].set_color(RED)
        axes[i, 2].spines[:].set_linewidth(2)
    fig.tight_layout()
    save(fig, "mistakes.png")


def fig_distortions(n=6):
    images, _ = synthetic_digits(n, seed=SEED)
    kinds = ("r", "rts", "p", "e", "tc")
    fig, axes = plt.subplots(len(kinds) + 1, n, figsize=(1.5 * n, 1.55 * (len(kinds) + 1)))
    for j in range(n):
        show(axes[0, j], images[j])
    axes[0, 0].set_ylabel("digits", fontsize=9)
    for i, kind in enumerate(kinds, start=1):
        out, _ = distort(images, kind, seed=SEED)
        for j in range(n):
            show(axes[i, j], out[j])
        axes[i, 0].set_ylabel(f"{kind} ({out.shape[1]}x{out.shape[2]})", fontsize=9)
    fig.suptitle("stnref.data: built-in digits and the §4.1 distortions", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    save(fig, "distortions.png")


def figs_trained(run_dir, n=12):
    """What a trained ST model's transformer does to test digits, and its training curve."""
    from stnref.app.train import load_run, transformers

    config, model, _, state, _ = load_run(run_dir)
    layers = transformers(model)
    if not layers:
        sys.exit(f"{run_dir}: model {config.model!r} has no spatial transformer")
    _, _, x, _ = load_dataset(config.distortion, config.data, 1, n, config.seed)
    model.eval()
    V = layers[0].forward(x)                                # the transformer is the first layer
    path = os.path.join(OUT, "trained_st.png")
    save_pairs(path, x[:, 0], V[:, 0], titles=("input", "transformed"), columns=4)
    print(f"wrote {os.path.relpath(path)} ({os.path.getsize(path) // 1024} KB)")

    with open(os.path.join(run_dir, "metrics.json")) as f:
        epochs = json.load(f)["epochs"]
    e = [r["epoch"] for r in epochs]
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax_loss.plot(e, [r["train_loss"] for r in epochs], "o-", color=BLUE)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("train loss (cross-entropy)")
    ax_err.plot(e, [r["train_error"] for r in epochs], "o-", color=BLUE, label="train")
    ax_err.plot(e, [r["test_error"] for r in epochs], "o-", color=RED, label="test")
    ax_err.set_xlabel("epoch")
    ax_err.set_ylabel("error % (log scale)")
    ax_err.set_yscale("log")
    ax_err.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(ERROR_TICKS))
    ax_err.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax_err.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_err.legend(fontsize=8)
    for ax in (ax_loss, ax_err):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.suptitle(f"{config.model} {config.transform} on {config.distortion}: "
                 f"{config.train_size} training digits, {config.optimizer} lr {config.lr} "
                 f"(localisation x{config.loc_lr_scale}), epoch {state['epoch']}, "
                 f"test error {epochs[-1]['test_error']:.2f}%", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    save(fig, "training_curve.png")


# one colour per transform (the baselines: none); the convolutional cells dashed
CURVE_COLOURS = {"none": "tab:gray", "affine": "tab:blue", "projective": "tab:orange",
                 "tps": "tab:green"}


def fig_table1_curves(out_dir):
    """Per-epoch evaluation error of the cells of a ``--preset table1`` run (the cells of its
    ``results.json``), one panel per distortion; every seed of a cell in the cell's colour."""
    from stnref.app.table1 import DISTORTIONS, MODELS, TRANSFORMS, save_table1_figure, table_rows

    path = os.path.join(out_dir, "results.json")
    if not os.path.exists(path):
        sys.exit(f"{out_dir}: no results.json (not a run of stnref experiment --preset table1)")
    with open(path) as f:
        payload = json.load(f)
    panels = [d for d in DISTORTIONS if any(key.endswith(f"|{d}") for key in payload["cells"])]
    rows = table_rows(payload, panels, MODELS, TRANSFORMS)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0), squeeze=False)
    for ax, d in zip(axes[0], panels):
        cells = {row["model"] if row["transform"] is None else f"{row['model']}-{row['transform']}":
                 row for row in rows if row["distortion"] == d}
        for name, row in sorted(cells.items()):
            for seed, run in enumerate(payload["cells"][f"{name}|{d}"]["run_dirs"]):
                with open(os.path.join(out_dir, run, "metrics.json")) as f:
                    epochs = json.load(f)["epochs"]
                ax.plot([r["epoch"] for r in epochs], [r["test_error"] for r in epochs],
                        label=name if seed == 0 else None, lw=1.2,
                        color=CURVE_COLOURS[row["transform"] or "none"],
                        ls="--" if row["model"].endswith("cnn") else "-")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(ERROR_TICKS))
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(d.upper(), fontsize=10)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=6)
    axes[0, 0].set_ylabel("error % after each epoch (log scale)")
    fig.tight_layout()
    save(fig, "table1_curves.png")
    # the run's own picture of ours against the paper
    path = os.path.join(OUT, "table1.png")
    save_table1_figure(path, rows, panels)
    print(f"wrote {os.path.relpath(path)} ({os.path.getsize(path) // 1024} KB)")


def fig_fill_wrap():
    U = digit()
    grid = stnref.affine_grid(rotation(10, 2.2, 0.15, 0.1), U.shape)    # as fig_padding
    fig = plt.figure(figsize=(10, 5.6))
    top = fig.add_gridspec(2, 3, height_ratios=[1.2, 1], hspace=0.35)
    show(fig.add_subplot(top[0, 0]), U[0, 0], "input U")
    V = stnref.grid_sample(U, grid, padding_mode="constant", fill_value=FILL_SHOWN)
    show(fig.add_subplot(top[0, 1]), V[0, 0], f'padding_mode="constant", fill_value={FILL_SHOWN}')
    V = stnref.grid_sample(U, grid, padding_mode="wrap")
    show(fig.add_subplot(top[0, 2]), V[0, 0], 'padding_mode="wrap"')
    ax = fig.add_subplot(top[1, :])
    values = np.array([0.2, 0.9, 0.5, 0.7, 0.1])
    W = len(values)
    x = np.linspace(-2.2, 2.2, 1761)
    line = np.stack([x, np.zeros_like(x)], axis=-1).reshape(1, 1, -1, 2)
    ix = to_pixels(line[0, 0], (1, W))[:, 0]
    row = values.reshape(1, 1, 1, W)
    for label, kw, color in (("zeros", {}, GREY),
                             (f"constant, fill {FILL_SHOWN}",
                              {"padding_mode": "constant", "fill_value": FILL_SHOWN}, BLUE),
                             ("wrap", {"padding_mode": "wrap"}, RED),
                             ("wrap, bicubic", {"padding_mode": "wrap", "mode": "bicubic"}, "#2ca02c")):
        ax.plot(ix, stnref.grid_sample(row, line, **kw).ravel(), color=color, lw=1.2, label=label)
    ax.plot(np.arange(W), values, "o", color="black", ms=4)
    for edge in (-0.5, W - 0.5):
        ax.axvline(edge, color=GREY, ls="--", lw=0.8)
    ax.set_xlabel("source pixel coordinate ix (one row of 5 pixels, bilinear unless named)")
    ax.set_ylabel("V")
    ax.legend(fontsize=8, loc="upper right", ncol=4)
    fig.suptitle("Beyond PyTorch: a constant fill value (every tap outside reads it) and wrap "
                 "(taps modulo the size)", fontsize=10)
    save(fig, "fill_wrap.png")


def fig_tricubic():
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.3), gridspec_kw={"width_ratios": [1.5, 1, 1]})
    values = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=float)
    W = len(values)
    x = np.linspace(-1, 1, 801)
    line = np.stack([x, np.zeros_like(x)], axis=-1).reshape(1, 1, -1, 2)
    ix = to_pixels(line[0, 0], (1, W))[:, 0]
    for a, color in ((-0.75, RED), (-0.5, BLUE)):
        V = stnref.grid_sample(values.reshape(1, 1, 1, W), line, mode="bicubic",
                               padding_mode="border", cubic_a=a).ravel()
        axes[0].plot(ix, V, color=color, label=f"cubic_a={a} (max {V.max():.3f})")
    axes[0].plot(np.arange(W), values, "o", color="black", ms=4)
    axes[0].set_title("A step edge: Keys' A sets the overshoot", fontsize=9)
    axes[0].set_xlabel("source pixel coordinate ix")
    axes[0].legend(fontsize=8, loc="center right")
    # a 6^3 ball upsampled to 48^3: the middle slice, trilinear and tricubic
    n, big = 6, 48
    c = np.arange(n) - (n - 1) / 2
    ball = (np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2) < 2.2)
    U = ball.astype(float)[None, None]
    grid = stnref.affine_grid(np.eye(3, 4)[None], (1, 1, big, big, big))
    for ax, mode, name in ((axes[1], "bilinear", "trilinear"), (axes[2], "bicubic", "tricubic")):
        V = stnref.grid_sample(U, grid, mode=mode, padding_mode="border")[0, 0, big // 2]
        show(ax, np.clip(V, 0, 1), f"{name} 8x, middle slice")
        ax.set_xlabel(f"range [{V.min():.2f}, {V.max():.2f}]", fontsize=8)
    fig.tight_layout()
    save(fig, "tricubic.png")


BILINEAR_CELL_U = np.array([[1.0, 3.0], [4.0, 8.0]])   # the worked example of derivations/sampling.md
BILINEAR_CELL_POINT = (-0.25, 0.0)                       # normalised: pixel (0.25, 0.5)
BILINEAR_CELL_DV = 2.0


def bilinear_cell():
    """The worked example's numbers, from stnref: ``(i_x, i_y), V, dU, dgrid``."""
    U = BILINEAR_CELL_U[None, None]
    grid = np.array(BILINEAR_CELL_POINT).reshape(1, 1, 1, 2)
    V = stnref.grid_sample(U, grid)[0, 0, 0, 0]
    dU, dgrid = stnref.grid_sample_backward(np.full((1, 1, 1, 1), BILINEAR_CELL_DV), U, grid)
    pixel = tuple(to_pixels(grid[0, 0], (2, 2))[0])
    return pixel, V, dU[0, 0], dgrid[0, 0, 0]


def fig_bilinear_cell():
    (ix, iy), V, dU, dgrid = bilinear_cell()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    corners = [(0, 0), (1, 0), (0, 1), (1, 1)]                 # (column, row)
    for m, n in corners:
        # the weight of pixel (n, m) is the area of the rectangle opposite it
        x0, x1 = sorted((ix, 1 - m))
        y0, y1 = sorted((iy, 1 - n))
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, color=BLUE, alpha=0.12 + 0.1 * (m + n)))
        ax.text((x0 + x1) / 2, (y0 + y1) / 2, f"w = {(1 - abs(ix - m)) * (1 - abs(iy - n)):g}",
                ha="center", va="center", fontsize=8)
        ax.plot(m, n, "o", color="black", ms=6)
        ax.text(m + (0.06 if m else -0.06), n + (0.08 if n else -0.08),
                f"U[{n}, {m}] = {BILINEAR_CELL_U[n, m]:g}\ndU = {dU[n, m]:g}",
                ha="left" if m else "right", va="bottom" if n else "top", fontsize=8)
    ax.plot(ix, iy, "o", color=RED, ms=7)
    ax.annotate("", xy=(ix + 0.05 * dgrid[0], iy), xytext=(ix, iy),
                arrowprops={"arrowstyle": "->", "color": RED})
    ax.annotate("", xy=(ix, iy + 0.05 * dgrid[1]), xytext=(ix, iy),
                arrowprops={"arrowstyle": "->", "color": RED})
    ax.text(ix + 0.05 * dgrid[0] + 0.02, iy, f"dgrid_x = {dgrid[0]:g}", color=RED, va="center", fontsize=8)
    ax.text(ix + 0.02, iy + 0.05 * dgrid[1] + 0.02, f"dgrid_y = {dgrid[1]:g}", color=RED, va="top", fontsize=8)
    ax.text(ix - 0.03, iy - 0.03, f"V = {V:g}", color=RED, ha="right", va="bottom", fontsize=8)
    ax.set_xlim(-0.45, 1.45)
    ax.set_ylim(1.35, -0.35)                                     # rows down, as in an image
    ax.set_aspect("equal")
    ax.set_xlabel("column (pixel coordinate i_x)")
    ax.set_ylabel("row (pixel coordinate i_y)")
    ax.set_title(f"One bilinear cell: point ({ix:g}, {iy:g}), dV = {BILINEAR_CELL_DV:g}", fontsize=9)
    fig.tight_layout()
    save(fig, "bilinear_cell.png")


FIGURES = (fig_grids, fig_align_corners, fig_padding, fig_reflection_band, fig_bicubic,
           fig_inverse_warp, fig_mistakes, fig_distortions, fig_fill_wrap, fig_tricubic,
           fig_bilinear_cell)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", metavar="RUN_DIR",
                        help="a run of `stnref train` with an ST model: adds trained_st.png "
                             "and training_curve.png")
    parser.add_argument("--table1", metavar="OUT",
                        help="a run of `stnref experiment --preset table1`: adds table1_curves.png")
    args = parser.parse_args(argv)
    os.makedirs(OUT, exist_ok=True)
    plt.rcParams.update({"font.size": 9, "figure.dpi": DPI})
    for make in FIGURES:
        make()
    if args.run:
        figs_trained(args.run)
    if args.table1:
        fig_table1_curves(args.table1)


if __name__ == "__main__":
    main()
