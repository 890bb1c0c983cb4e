"""PyTorch twins of stnref models: same layers, same parameter names, same numbers.

Usage::

    python docs/examples/torch_twin.py

As a module (``sys.path.insert(0, "docs/examples")``, or a copy next to a script), it moves
a prototype to PyTorch with its weights: ``twin_of_module(model)`` builds the PyTorch twin of
any model made of stnref's layers -- ``Sequential``, ``stnref.Parallel``,
``stnref.SpatialTransformer`` (affine or attention; torch has no projective or TPS grid),
``Linear``, ``Conv2d``, ``MaxPool2d``, ``AvgPool2d``, ``BatchNorm1d/2d``, ``ReLU``, ``Tanh``,
``Sigmoid``, ``Flatten``, ``Identity``, ``Dropout`` -- and loads ``model.state_dict()`` into it
with ``strict=True``.  It imports without torch; its functions need it.

Run as a script, it checks the paper's networks against twins written by hand:

builds ``stnref.networks.build_model("st-cnn" / "st-fcn", "affine")`` for the
input sizes 28, 42 and 60, moves the localisation network's regression layer off
its identity initialisation (so the warp depends on the input), writes the same
architecture in plain PyTorch (written out from the paper's description below, not
converted from stnref's objects), loads stnref's ``state_dict`` into it with
``strict=True`` -- so every parameter name and shape must agree -- and prints the
largest differences of the logits, the cross-entropy loss and every parameter
gradient (float64; expect ~1e-15).

The architecture (paper §4.1 appendix, see ``stnref.networks.build_model``)::

    ST-CNN  0: transformer, loc = avg-pool 2 -> conv 20 5x5 -> ReLU -> max-pool 2
                                  -> conv 20 5x5 -> ReLU -> flatten -> FC 20 -> ReLU -> FC 6
           [1: avg-pool 2 if input >= 42]
            conv c 9x9 pad 4 -> ReLU -> max-pool 2 -> conv 2c 7x7 pad 3 -> ReLU -> max-pool 2
            -> flatten -> FC n_classes
    ST-FCN  0: transformer, loc = [avg-pool 2 if input >= 42] -> flatten -> FC 32 -> ReLU
                                  -> FC 32 -> ReLU -> FC 6
           [1: avg-pool 2 if input >= 42]
            flatten -> FC h -> ReLU -> FC h -> ReLU -> FC n_classes

The widths ``c`` and ``h`` that stnref solved for the parameter budget are read
from the state dict's shapes.  Requires torch (for this example only; stnref itself
needs numpy and scipy).
"""

from __future__ import annotations

import numpy as np

import stnref
from stnref import nn as snn
from stnref.networks import build_model
from stnref.nn.losses import cross_entropy
from stnref.sampler_settings import is_pytorch

try:
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError:       # importable without torch: the functions below say what they need
    torch = None

DTYPE = None if torch is None else torch.float64
_TorchModule = object if torch is None else nn.Module
POOL_INPUT_FROM = 42          # inputs this large are 2x average-pooled before the classifier
LOC_FILTERS, LOC_KERNEL, LOC_HIDDEN, LOC_FC = 20, 5, 20, 32
CNN_KERNELS = (9, 7)
THETA_SIZES = {"affine": 6, "attention": 3}   # the transforms torch's affine_grid can express


def _need_torch(fn):
    if torch is None:
        raise ImportError(f"torch_twin.{fn}() needs PyTorch (pip install torch)")


class TorchSpatialTransformer(_TorchModule):
    """``V = grid_sample(U, affine_grid(theta))`` with ``theta = loc(U)`` (affine or attention).

    Like :class:`stnref.transformer.SpatialTransformer`, the regression layer (the last
    module of ``loc``) starts at zero weight and the identity bias (unless
    ``identity_init`` is False: weights about to be loaded).  ``out_size`` (H_out, W_out):
    None keeps the input's.
    """

    def __init__(self, loc, transform="affine", mode="bilinear", padding_mode="zeros",
                 align_corners=False, out_size=None, identity_init=True):
        _need_torch("TorchSpatialTransformer")
        super().__init__()
        if transform not in THETA_SIZES:
            raise ValueError(f"TorchSpatialTransformer(): transform must be one of {sorted(THETA_SIZES)}, "
                             f"got {transform!r} (torch has no projective or TPS grid)")
        self.loc = loc
        self.transform = transform
        self.mode, self.padding_mode, self.align_corners = mode, padding_mode, align_corners
        self.out_size = out_size
        if identity_init:
            identity = {"affine": [1.0, 0, 0, 0, 1, 0], "attention": [1.0, 0, 0]}[transform]
            with torch.no_grad():
                loc[-1].weight.zero_()
                loc[-1].bias.copy_(torch.tensor(identity, dtype=loc[-1].bias.dtype))

    def forward(self, U):
        out = self.loc(U)
        if self.transform == "affine":
            theta = out.view(-1, 2, 3)
        else:                               # (s, t_x, t_y) -> [[s, 0, t_x], [0, s, t_y]]
            s, tx, ty = out.unbind(1)
            zero = torch.zeros_like(s)
            theta = torch.stack([torch.stack([s, zero, tx], 1), torch.stack([zero, s, ty], 1)], 1)
        size = list(U.shape[:2]) + list(self.out_size or U.shape[2:])
        grid = F.affine_grid(theta, size, align_corners=self.align_corners)
        return F.grid_sample(U, grid, mode=self.mode, padding_mode=self.padding_mode,
                             align_corners=self.align_corners)


class TorchParallel(_TorchModule):
    """:class:`stnref.Parallel`: the children's outputs concatenated along channels (dim 1)."""

    def __init__(self, *modules):
        _need_torch("TorchParallel")
        super().__init__()
        for i, m in enumerate(modules):
            self.add_module(str(i), m)

    def forward(self, x):
        return torch.cat([m(x) for m in self._modules.values()], dim=1)


def _pooling(m, cls):
    return cls(m.kernel_size, m.stride)


def _batchnorm(m, cls):
    return cls(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
               track_running_stats=m.track_running_stats)


def _transformer(m, twin):
    """The twin of a SpatialTransformer whose sampler setting PyTorch has (its defaults only)."""
    if not is_pytorch(m.mode, m.padding_mode, 2, m.fill_value, m.cubic_a):
        raise ValueError(f"twin_of_module(): PyTorch's grid_sample has no mode={m.mode!r}, "
                         f"padding_mode={m.padding_mode!r} with fill_value={m.fill_value}, "
                         f"cubic_a={m.cubic_a} (stnref.sampler_settings lists what it has)")
    return TorchSpatialTransformer(twin(m.loc), m.transform.name, m.mode, m.padding_mode,
                                   m.align_corners, m.out_size, identity_init=False)


def _twin_table():
    """stnref layer class -> ``make(layer, twin_of_child)`` of its PyTorch twin."""
    return {
        snn.Sequential: lambda m, twin: nn.Sequential(*[twin(c) for c in m]),
        stnref.Parallel: lambda m, twin: TorchParallel(*[twin(c) for c in m]),
        stnref.SpatialTransformer: lambda m, twin: _transformer(m, twin),
        snn.Linear: lambda m, twin: nn.Linear(m.in_features, m.out_features, bias=m.has_bias),
        snn.Conv2d: lambda m, twin: nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size,
                                              stride=m.stride, padding=m.padding, bias=m.has_bias),
        snn.MaxPool2d: lambda m, twin: _pooling(m, nn.MaxPool2d),
        snn.AvgPool2d: lambda m, twin: _pooling(m, nn.AvgPool2d),
        snn.BatchNorm1d: lambda m, twin: _batchnorm(m, nn.BatchNorm1d),
        snn.BatchNorm2d: lambda m, twin: _batchnorm(m, nn.BatchNorm2d),
        snn.ReLU: lambda m, twin: nn.ReLU(),
        snn.Tanh: lambda m, twin: nn.Tanh(),
        snn.Sigmoid: lambda m, twin: nn.Sigmoid(),
        snn.Flatten: lambda m, twin: nn.Flatten(),
        snn.Identity: lambda m, twin: nn.Identity(),
        snn.Dropout: lambda m, twin: nn.Dropout(m.p),
    }


def twin_of_module(model, load=True):
    """The PyTorch twin of an stnref ``model``, holding its weights (``strict=True``).

    Same structure, parameter and buffer names, dtype (float32 or float64, the model's) and
    training mode; a module used twice in ``model`` (a shared trunk) is one module used
    twice in the twin.  A layer without a twin here (a class of one's own) is a
    ``TypeError`` naming it: add an entry to ``_twin_table``.

    Examples: ``twin = twin_of_module(model)``; ``twin(torch.from_numpy(x))`` gives
    ``model(x)``'s logits, and training goes on in PyTorch from the same weights.
    """
    _need_torch("twin_of_module")
    table = _twin_table()
    memo = {}

    def twin(m):
        if id(m) not in memo:
            make = table.get(type(m))
            if make is None:
                raise TypeError(f"twin_of_module(): no PyTorch twin for {type(m).__name__}; the "
                                f"layers with one: {', '.join(sorted(c.__name__ for c in table))}")
            memo[id(m)] = make(m, twin)
        return memo[id(m)]

    dtypes = {p.dtype for p in model.params.values()}
    result = twin(model).to(torch.float32 if dtypes == {np.dtype(np.float32)} else torch.float64)
    result.train(model.training)
    if load:
        result.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()},
                               strict=True)
    return result


def _conv_loc_side(side):
    side = side // 2 - (LOC_KERNEL - 1)
    return side // 2 - (LOC_KERNEL - 1)


def _cnn_classifier(in_channels, side, filters, n_classes):
    """conv 9x9 (c) -> ReLU -> max-pool 2 -> conv 7x7 (2c) -> ReLU -> max-pool 2 -> FC."""
    k1, k2 = CNN_KERNELS
    out = (side // 2) // 2
    return [
        nn.Conv2d(in_channels, filters, k1, padding=k1 // 2, dtype=DTYPE), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(filters, 2 * filters, k2, padding=k2 // 2, dtype=DTYPE), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * filters * out * out, n_classes, dtype=DTYPE),
    ]


def _fcn_classifier(n_in, hidden, n_classes):
    """flatten -> FC h -> ReLU -> FC h -> ReLU -> FC."""
    return [
        nn.Flatten(),
        nn.Linear(n_in, hidden, dtype=DTYPE), nn.ReLU(),
        nn.Linear(hidden, hidden, dtype=DTYPE), nn.ReLU(),
        nn.Linear(hidden, n_classes, dtype=DTYPE),
    ]


def _input_pool(input_size):
    """``([avg-pool 2], side)``: inputs of 42 and more are pooled before the classifier."""
    if input_size >= POOL_INPUT_FROM:
        return [nn.AvgPool2d(2)], input_size // 2
    return [], input_size


def st_cnn(input_size=28, filters=32, n_classes=10, in_channels=1, transform="affine"):
    """The ST-CNN in PyTorch (float64), classifier widths ``filters`` and ``2 * filters``."""
    _need_torch("st_cnn")
    s = _conv_loc_side(input_size)
    loc = nn.Sequential(
        nn.AvgPool2d(2),
        nn.Conv2d(in_channels, LOC_FILTERS, LOC_KERNEL, dtype=DTYPE), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(LOC_FILTERS, LOC_FILTERS, LOC_KERNEL, dtype=DTYPE), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(LOC_FILTERS * s * s, LOC_HIDDEN, dtype=DTYPE), nn.ReLU(),
        nn.Linear(LOC_HIDDEN, THETA_SIZES[transform], dtype=DTYPE),
    )
    pool, side = _input_pool(input_size)
    return nn.Sequential(TorchSpatialTransformer(loc, transform), *pool,
                         *_cnn_classifier(in_channels, side, filters, n_classes))


def st_fcn(input_size=28, hidden=128, n_classes=10, in_channels=1, transform="affine"):
    """The ST-FCN in PyTorch (float64), classifier hidden width ``hidden``."""
    _need_torch("st_fcn")
    pool, side = _input_pool(input_size)
    n_in = in_channels * side * side
    loc = nn.Sequential(*_input_pool(input_size)[0], *_fcn_classifier(n_in, LOC_FC, THETA_SIZES[transform]))
    return nn.Sequential(TorchSpatialTransformer(loc, transform), *pool,
                         *_fcn_classifier(n_in, hidden, n_classes))


def cnn(input_size=28, filters=32, n_classes=10, in_channels=1):
    """The baseline CNN in PyTorch (float64)."""
    _need_torch("cnn")
    pool, side = _input_pool(input_size)
    return nn.Sequential(*pool, *_cnn_classifier(in_channels, side, filters, n_classes))


def fcn(input_size=28, hidden=128, n_classes=10, in_channels=1):
    """The baseline FCN in PyTorch (float64)."""
    _need_torch("fcn")
    pool, side = _input_pool(input_size)
    return nn.Sequential(*pool, *_fcn_classifier(in_channels * side * side, hidden, n_classes))


def twin_of(name, state, input_size=28, n_classes=10, in_channels=1, transform="affine", load=True):
    """Build the PyTorch twin of stnref's ``name`` model and load its ``state`` (strict).

    The classifier widths are read from ``state``: the first classifier layer
    follows the transformer (and the average pool, for inputs >= 42).  With
    ``load=False`` the twin keeps PyTorch's own initialisation instead.
    """
    pooled = int(input_size >= POOL_INPUT_FROM)
    first = pooled + (1 if name.startswith("st-") else 0)        # index of the classifier
    if name == "st-cnn":
        model = st_cnn(input_size, state[f"{first}.weight"].shape[0], n_classes, in_channels, transform)
    elif name == "st-fcn":
        model = st_fcn(input_size, state[f"{first + 1}.weight"].shape[0], n_classes, in_channels,
                       transform)
    elif name == "cnn":
        model = cnn(input_size, state[f"{first}.weight"].shape[0], n_classes, in_channels)
    elif name == "fcn":
        model = fcn(input_size, state[f"{first + 1}.weight"].shape[0], n_classes, in_channels)
    else:
        raise ValueError(f"twin_of(): expected 'fcn', 'cnn', 'st-fcn' or 'st-cnn', got {name!r}")
    if load:
        model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()},
                              strict=True)
    return model


def perturb_localisation(model, rng, scale=0.05):
    """Move an stnref model's regression layer off zero / the identity, so theta varies."""
    reg = model[0].loc[-1]
    reg.weight[...] = scale * rng.standard_normal(reg.weight.shape)
    reg.bias[...] = reg.bias + scale * rng.standard_normal(reg.bias.shape)


def compare(name, input_size=28, transform="affine", batch=4, seed=0):
    """Max |difference| between stnref and its PyTorch twin.

    Returns
    -------
    dict
        ``"logits"``, ``"loss"``, ``"input"`` (gradient of the loss w.r.t. the input)
        and one entry per parameter name (its gradient).
    """
    rng = np.random.default_rng(seed)
    model = build_model(name, transform, input_size=input_size, rng=rng)
    perturb_localisation(model, rng)
    twin = twin_of(name, model.state_dict(), input_size, transform=transform)
    x = rng.standard_normal((batch, 1, input_size, input_size))
    labels = rng.integers(0, 10, batch)

    logits = model(x)
    loss, dlogits = cross_entropy(logits, labels)
    dx = model.backward(dlogits)

    xt = torch.from_numpy(x).requires_grad_(True)
    logits_t = twin(xt)
    loss_t = F.cross_entropy(logits_t, torch.from_numpy(labels))
    loss_t.backward()

    diffs = {
        "logits": float(np.abs(logits - logits_t.detach().numpy()).max()),
        "loss": abs(loss - loss_t.item()),
        "input": float(np.abs(dx - xt.grad.numpy()).max()),
    }
    grads = model.grads
    for k, p in twin.named_parameters():
        diffs[k] = float(np.abs(grads[k] - p.grad.numpy()).max())
    return diffs


def main():
    for name in ("st-cnn", "st-fcn"):
        for size in (28, 42, 60):
            for transform in ("affine", "attention"):
                diffs = compare(name, size, transform)
                worst = max(diffs, key=diffs.get)
                print(f"{name:7s} {transform:9s} input {size}: logits {diffs['logits']:.1e}, "
                      f"loss {diffs['loss']:.1e}, d input {diffs['input']:.1e}, "
                      f"worst of {len(diffs)} {diffs[worst]:.1e} ({worst})")


if __name__ == "__main__":
    main()
