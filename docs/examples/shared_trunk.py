"""Prototyping a new warp: a 3-parameter transform and two transformers sharing one trunk.

Usage::

    python docs/examples/shared_trunk.py [--epochs 3] [--train-size 2048] [--seed 0]

What a researcher trying an idea on a laptop does with stnref, in one script:

1. a new grid generator -- rotation, isotropic scale and a radial (barrel / pincushion)
   term, three parameters -- made a ``stnref.registry.Transform``, its hand-written
   backward checked by ``stnref.gradcheck``;
2. a model with two spatial transformers side by side (``stnref.Parallel``, the paper's
   multi-transformer design), the new transform and the paper's attention (eq. 2), whose
   localisation networks share one trunk: the same ``Sequential`` object in both, so its
   parameters appear once in ``model.params`` and their gradient sums over both uses;
3. converted to float32 (``model.to(np.float32)``, the dtype of the data) and trained a few
   epochs on built-in rotated digits (``stnref.data.load_dataset("r")``) with
   ``stnref.nn.Batches``, a warm-up + cosine schedule attached to the optimiser
   (``stnref.nn.LambdaLR``), and gradients accumulated over two half-batches per step
   (``backward`` adds to the gradients until ``zero_grad``) -- a loop of one's own, where
   :func:`stnref.fit` would do for plain steps;
4. every module of the trained model checked by ``stnref.gradcheck_module``, each on the
   input it sees in the model's forward.

``tests/test_shared_trunk.py`` runs it with small sizes.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from stnref import Parallel, SpatialTransformer, gradcheck, gradcheck_module
from stnref.data import load_dataset
from stnref.grids import base_coordinates
from stnref.nn import (
    Adam,
    AvgPool2d,
    Batches,
    Cosine,
    Flatten,
    LambdaLR,
    Linear,
    ReLU,
    Sequential,
    Tanh,
    Warmup,
    cross_entropy,
)
from stnref.registry import Transform

CHECK_BATCH = 2     # samples per gradient check: small, and every module sees the model's data

# ----------------------------------------------------------------------------- 1. the transform
# theta = (angle, log_scale, radial); every target point p_t = (x_t, y_t) goes to
#   p_s = m R(angle) p_t,   m = exp(log_scale) (1 + radial |p_t|^2)
# a rotation and an isotropic scale that grows (radial > 0) or shrinks with the distance to the
# centre -- not an affine map.  theta = (0, 0, 0) is the identity.


def _targets(size, align_corners, dtype):
    """Target coordinates ``x (1, W)``, ``y (H, 1)`` and ``|p_t|^2 (H, W)``."""
    height, width = size[2:]
    x = base_coordinates(width, align_corners, dtype)[None, :]
    y = base_coordinates(height, align_corners, dtype)[:, None]
    return x, y, x * x + y * y


def rotation_scale_grid(theta, size, align_corners=False):
    """``theta (N, 3)`` -> sampling grid ``(N, H, W, 2)`` for ``size (N, C, H, W)``."""
    x, y, r2 = _targets(size, align_corners, theta.dtype)
    angle, log_scale, radial = (theta[:, i, None, None] for i in range(3))   # (N, 1, 1) each
    c, s = np.cos(angle), np.sin(angle)
    m = np.exp(log_scale) * (1 + radial * r2)                                 # (N, H, W)
    return np.stack([m * (c * x - s * y), m * (s * x + c * y)], axis=-1)


# Backward, with q = R(angle) p_t (so p_s = m q) and dq/dangle = (-q_y, q_x):
#   dangle     = sum over points of m (dgrid . (-q_y, q_x))
#   dlog_scale = sum dgrid . p_s                    (dp_s / dlog_scale = p_s)
#   dradial    = sum exp(log_scale) |p_t|^2 (dgrid . q)
def rotation_scale_backward(dgrid, theta, size, align_corners=False):
    """``dgrid (N, H, W, 2)`` -> ``dtheta (N, 3)``."""
    x, y, r2 = _targets(size, align_corners, theta.dtype)
    angle, log_scale, radial = (theta[:, i, None, None] for i in range(3))
    c, s = np.cos(angle), np.sin(angle)
    qx, qy = c * x - s * y, s * x + c * y                                      # (N, H, W) each
    scale = np.exp(log_scale)
    m = scale * (1 + radial * r2)
    gx, gy = dgrid[..., 0], dgrid[..., 1]
    along_q = gx * qx + gy * qy
    dangle = (m * (gy * qx - gx * qy)).sum(axis=(1, 2))
    dlog_scale = (m * along_q).sum(axis=(1, 2))
    dradial = (scale * r2 * along_q).sum(axis=(1, 2))
    return np.stack([dangle, dlog_scale, dradial], axis=1)


def _identity():
    return np.zeros(3)


ROTATION_SCALE = Transform("rotation-scale", (3,), rotation_scale_grid, rotation_scale_backward,
                           _identity)


def check_transform(seed=0, size=(2, 1, 5, 7)):
    """The grid's backward against central differences (both ``align_corners``)."""
    theta = np.random.default_rng(seed).normal(0.0, 0.3, (size[0], 3))
    results = []
    for align in (False, True):
        results.append(gradcheck(
            lambda theta, align=align: rotation_scale_grid(theta, size, align),
            lambda dgrid, theta, align=align: (rotation_scale_backward(dgrid, theta, size, align),),
            [theta], names=[f"theta (align_corners={align})"]))
    return results


# ----------------------------------------------------------------------------- 2. the model


def build_model(rng, side=28, hidden=32, glimpse=14, width=64, classes=10):
    """Two transformers on one shared localisation trunk, then a small classifier.

    Returns ``(model, trunk)``; both transformers output ``glimpse x glimpse``.
    """
    trunk = Sequential(AvgPool2d(2), Flatten(), Linear((side // 2) ** 2, hidden, rng=rng), Tanh())
    rotate = SpatialTransformer(Sequential(trunk, Linear(hidden, 3, rng=rng)), ROTATION_SCALE,
                                out_size=(glimpse, glimpse))
    attend = SpatialTransformer(Sequential(trunk, Linear(hidden, 3, rng=rng)), "attention",
                                out_size=(glimpse, glimpse))
    classifier = Sequential(Flatten(), Linear(2 * glimpse * glimpse, width, rng=rng), ReLU(),
                            Linear(width, classes, rng=rng))
    return Sequential(Parallel(rotate, attend), classifier), trunk


# ----------------------------------------------------------------------------- 3. training


def train(model, x, y, epochs, batch_size, lr, rng):
    """Adam with a half-epoch warm-up and a cosine decay; each step accumulates two half-batches.

    Returns the mean training loss of each epoch.
    """
    steps = len(Batches(x, batch_size=batch_size, drop_last=True))
    optimizer = Adam(model, lr=lr)
    scheduler = LambdaLR(optimizer, Warmup(max(1, steps // 2)) * Cosine(epochs * steps))
    losses = []
    for _ in range(epochs):
        total = 0.0
        for xb, yb in Batches(x, y, batch_size=batch_size, rng=rng, drop_last=True):
            model.zero_grad()
            half = len(yb) // 2
            for part in (slice(0, half), slice(half, None)):
                loss, dlogits = cross_entropy(model(xb[part]), yb[part])
                share = len(yb[part]) / len(yb)      # the batch mean = sum of share * half means
                model.backward(dlogits * share)      # adds to the gradients
                total += loss * share
            optimizer.step()
            scheduler.step()
        losses.append(total / steps)
    return losses


def test_error(model, x, y, batch_size=500):
    """Misclassified test samples, in %, in eval mode (forwards save nothing)."""
    model.eval()
    wrong = sum(int((model(xb).argmax(axis=1) != yb).sum())
                for xb, yb in Batches(x, y, batch_size=batch_size, shuffle=False))
    model.train()
    return 100.0 * wrong / len(x)


# ----------------------------------------------------------------------------- 4. every module


def modules_with_inputs(model, x):
    """``(name, module, input)`` for every module of ``model``, with the input it sees there.

    Names are PyTorch's ``named_modules()`` (``""`` is the model); a shared module is listed
    once, at its first use.  The forwards run in eval mode, so nothing is left pending.
    """
    found, seen = [], set()

    def walk(module, x, name):
        if id(module) not in seen:
            seen.add(id(module))
            found.append((name, module, x))
        prefix = f"{name}." if name else ""
        if isinstance(module, Sequential):
            for child_name, child in module.children():
                x = walk(child, x, prefix + child_name)
            return x
        for child_name, child in module.children():   # Parallel's branches, a transformer's loc
            walk(child, x, prefix + child_name)
        return module(x)

    model.eval()
    walk(model, x, "")
    model.train()
    return found


def check_every_module(model, x):
    """``{name: GradcheckResult}`` of :func:`stnref.gradcheck_module` on every module."""
    return {name or "(model)": gradcheck_module(module, inputs)
            for name, module, inputs in modules_with_inputs(model, x)}


# ----------------------------------------------------------------------------- the script


def run(epochs=3, train_size=2048, test_size=512, batch_size=64, lr=2e-3, seed=0, print_fn=print):
    """Steps 1-4; returns a dict of what they found (used by tests/test_shared_trunk.py)."""
    transform_checks = check_transform(seed)
    for result in transform_checks:
        print_fn(result)

    rng = np.random.default_rng(seed)
    model, trunk = build_model(rng)
    model.to(np.float32)                             # the digits are float32
    print_fn(f"{len(model.params)} parameter arrays, {len(model.state_dict())} names: the trunk's "
             f"{len(trunk.params)} appear once in model.params, under "
             f"{[k for k in model.params if k.startswith('0.0.loc.0.')]}")

    x_train, y_train, x_test, y_test = load_dataset("r", None, train_size, test_size, seed)
    losses = train(model, x_train, y_train, epochs, batch_size, lr, rng)
    error = test_error(model, x_test, y_test)
    for epoch, loss in enumerate(losses, 1):
        print_fn(f"epoch {epoch}: train loss {loss:.4f}")
    print_fn(f"test error {error:.1f}% on {len(x_test)} rotated digits (chance: 90%)")

    module_checks = check_every_module(model, x_test[:CHECK_BATCH])
    width = max(map(len, module_checks))
    for name, result in module_checks.items():
        worst = max(result.args, key=lambda a: a.max_rel)
        print_fn(f"{name:<{width}}  {'ok' if result.ok else 'FAIL'}  {len(result.args)} tensors, "
                 f"worst max rel {worst.max_rel:.1e} ({worst.name})")
    return {"transform_checks": transform_checks, "model": model, "trunk": trunk,
            "losses": losses, "test_error": error, "module_checks": module_checks}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=2048)
    parser.add_argument("--test-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    found = run(args.epochs, args.train_size, args.test_size, seed=args.seed)
    bad = [name for name, r in found["module_checks"].items() if not r.ok]
    bad += [r.args[0].name for r in found["transform_checks"] if not r.ok]
    return 1 if bad or math.isnan(found["losses"][-1]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
