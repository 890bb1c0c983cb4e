"""The spatial transformer layer and the paper's networks (paper §3.4, §4.1).

:class:`SpatialTransformer` chains the three parts of Fig. 2 -- a localisation
network ``theta = f_loc(U)`` (§3.1), a grid generator ``T_theta`` from the
transform registry (§3.2) and the sampler (§3.3) -- and back-propagates through
all three.  :class:`Parallel` runs several modules on one input and stacks their
outputs along channels (the paper's multi-transformer models, e.g. 2xST-FCN).
:func:`build_model` builds the distorted-MNIST networks FCN, CNN, ST-FCN and
ST-CNN.  Derivations and the parameter-count table: ``docs/derivations/transformer.md``.
"""

from __future__ import annotations

import math

import numpy as np

from . import _checks
from .localisation import (
    LOCALISATION_DOWNSAMPLE,
    check_rng,
    conv_localisation,
    fc_localisation,
)
from .nn.layers import (
    AvgPool2d,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    Module,
    ReLU,
    Sequential,
)
from .sampling import _sample, _sample_backward
from .transforms import Transform, get_transform

__all__ = [
    "MODEL_NAMES", "Parallel", "SpatialTransformer", "build_model", "count_parameters",
    "localisation_prefixes", "target_parameters",
]

MODES = ("bilinear", "nearest", "bicubic")
PADDING_MODES = ("zeros", "border", "reflection")

MODEL_NAMES = ("fcn", "cnn", "st-fcn", "st-cnn")

# Paper appendix (§4.1): every CNN classifier is conv 9x9 -> max-pool 2 -> conv 7x7 ->
# max-pool 2 -> softmax layer; the baseline CNN has 32 then 64 filters (the paper's range is
# 32-64), and an ST-CNN's classifier keeps the 1:2 ratio with fewer filters.  Convolutions
# use 'same' padding (k // 2), so any classifier input from 4x4 up works (21x21 and 30x30
# after the pool of RTS / TC included).
CNN_KERNELS = (9, 7)
CNN_POOL = 2
CNN_BASE_FILTERS = 32
CNN_FILTER_RATIO = 2
# Inputs at least this large (RTS 42x42, TC 60x60) are average-pooled by this factor before
# the classifier: after the transformer in ST models, at the input of FCN / CNN, so every
# model of one input size classifies the same resolution.
POOL_INPUT_FROM = 42
INPUT_POOL = 2
# Widths are solved so every model of one input size has the CNN baseline's parameter
# count; the search range of the free width (FCN hidden units, CNN first-layer filters).
MAX_FCN_HIDDEN = 4096
MAX_CNN_FILTERS = 512


def _resolve_transform(transform, fn):
    if isinstance(transform, Transform):
        return transform
    if isinstance(transform, str):
        return get_transform(transform)
    raise TypeError(
        f"{fn}(): expected transform to be a registry name or a Transform, "
        f"got {type(transform).__name__}"
    )


def _regression_layer(loc, fn):
    """The last ``Linear`` of ``loc`` (descending into trailing ``Sequential`` containers)."""
    layer = loc
    while isinstance(layer, Sequential) and len(layer) > 0:
        layer = layer[-1]
    if not isinstance(layer, Linear) or not layer.has_bias:
        raise TypeError(
            f"{fn}(): expected loc to end in a Linear regression layer with a bias, "
            f"got {type(layer).__name__}"
        )
    return layer


class SpatialTransformer(Module):
    """Spatial transformer layer, paper §3: ``V = sample(U, T_theta(G))``, ``theta = f_loc(U)``.

    Parameters
    ----------
    loc : Module
        Localisation network mapping ``U (N, C, H, W)`` to ``(N, prod(theta_shape))``;
        it must end in a :class:`~stnref.nn.Linear` with a bias.  On construction
        that regression layer is set to zero weight and the identity ``theta`` as
        bias (paper §4.1), so the layer starts as the identity warp.
    transform : str or Transform, default "affine"
        A registry name (``"affine"``, ``"attention"``, ``"projective"``, ``"tps"``)
        or a :class:`~stnref.transforms.Transform` (e.g. a custom TPS).
    out_size : tuple (H_out, W_out), optional
        Output size; ``None`` keeps the input's ``(H, W)``.
    mode, padding_mode, align_corners
        As in :func:`stnref.grid_sample` (2-D: bicubic allowed).
    input_grad : bool, default True
        Whether :meth:`backward` returns ``dU``.  Set False when the layer sits on
        the data: the sampler's scatter is skipped and ``backward`` returns None.

    Attributes
    ----------
    loc : Module
        The localisation network; its parameters are named ``loc.<name>``.
    transform : Transform
    last_theta : ndarray, shape (N, *theta_shape) or None
        A copy of the last forward's ``theta``.

    Notes
    -----
    Composes ``stnref.grid_sample`` with the registry's grid generator, so it
    matches ``F.grid_sample(U, F.affine_grid(theta, ...))`` for the affine
    transform.

    Examples
    --------
    >>> import numpy as np
    >>> from stnref.nn.layers import Flatten, Linear, Sequential
    >>> st = SpatialTransformer(Sequential(Flatten(), Linear(16, 6)))
    >>> U = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> bool(np.array_equal(st(U), U))
    True
    """

    def __init__(self, loc, transform="affine", out_size=None, mode="bilinear",
                 padding_mode="zeros", align_corners=False, input_grad=True):
        super().__init__()
        fn = "SpatialTransformer"
        if not isinstance(loc, Module):
            raise TypeError(f"{fn}(): expected loc to be a Module, got {type(loc).__name__}")
        self.transform = _resolve_transform(transform, fn)
        self.theta_shape = tuple(self.transform.theta_shape)
        self.theta_size = math.prod(self.theta_shape)
        self.out_size = None if out_size is None else _checks.check_size(out_size, "out_size", fn, (2,))
        self.mode = _checks.check_choice(mode, "mode", fn, MODES)
        self.padding_mode = _checks.check_choice(padding_mode, "padding_mode", fn, PADDING_MODES)
        self.align_corners = _checks.check_bool(align_corners, "align_corners", fn)
        self.input_grad = _checks.check_bool(input_grad, "input_grad", fn)
        regression = _regression_layer(loc, fn)
        if regression.out_features != self.theta_size:
            raise ValueError(
                f"{fn}(): expected the regression layer of loc to have out_features "
                f"{self.theta_size} (theta of shape {self.theta_shape} for transform "
                f"{self.transform.name!r}), got {regression.out_features}"
            )
        # Paper §4.1: zero weights and the identity transform as bias.
        np.copyto(regression.weight, 0)
        np.copyto(regression.bias, np.asarray(self.transform.identity(), dtype=np.float64).reshape(-1),
                  casting="same_kind")
        self.loc = loc
        self.last_theta = None
        self._x = None
        self._theta = None
        self._grid = None
        self._taps = None

    def _size(self, U):
        N, C, H, W = U.shape
        return (N, C) + (self.out_size if self.out_size is not None else (H, W))

    def forward(self, U):
        """Warp ``U (N, C, H, W)`` to ``V (N, C, H_out, W_out)`` (dtype of ``U``)."""
        fn = "SpatialTransformer.forward"
        U = _checks.float_array(U, "U", fn)
        _checks.check_ndim(U, "U", fn, (4,), "(N, C, H, W)")
        N = U.shape[0]
        out = self.loc.forward(U)
        if np.shape(out) != (N, self.theta_size):
            raise ValueError(
                f"{fn}(): expected the localisation network to return shape "
                f"({N}, {self.theta_size}), got {np.shape(out)}"
            )
        theta = out.astype(U.dtype, copy=False).reshape(N, *self.theta_shape)
        size = self._size(U)
        grid = self.transform.grid(theta, size, self.align_corners)    # (N, H_out, W_out, 2)
        # in training, the sampler's taps are kept for the backward, which then skips
        # recomputing them (about 32 bytes per output point for bilinear float32)
        V, self._taps = _sample(U, grid, self.mode, self.padding_mode, self.align_corners,
                                keep=self.training)
        self._x, self._theta, self._grid = U, theta, grid
        self.last_theta = theta.copy()
        return V

    # Backward of V = S(U, G(theta)), theta = f_loc(U)   (docs/derivations/transformer.md)
    #   dU     = dS/dU^T dV  +  df_loc/dU^T dtheta     U feeds the sampler and the loc net
    #   dgrid  = dS/dgrid^T dV                         sampler backward (paper eqs. 6-7)
    #   dtheta = dG/dtheta^T dgrid                     generator backward (registry)
    #   the loc net's parameter gradients come from loc.backward(dtheta).
    def backward(self, dV):
        """Fill ``loc``'s gradients and return ``dU`` (None when ``input_grad`` is False)."""
        fn = "SpatialTransformer.backward"
        U = self._saved(fn)
        theta, grid = self._theta, self._grid
        dV = _checks.float_array(dV, "dV", fn)
        dU_sampler, dgrid = _sample_backward(
            dV, U, grid, self.mode, self.padding_mode, self.align_corners, self.input_grad,
            self._taps,
        )
        dtheta = self.transform.backward(dgrid, theta, self._size(U), self.align_corners)
        dU_loc = self.loc.backward(dtheta.reshape(U.shape[0], self.theta_size))
        if not self.input_grad:
            return None
        return dU_sampler + dU_loc


class Parallel(Module):
    """Run modules on the same input and concatenate their outputs along channels (axis 1).

    The paper's multi-transformer networks: e.g. two spatial transformers side by
    side (2xST-FCN, MNIST addition) or 2/4 attention transformers (CUB-200).
    Children are named ``"0"``, ``"1"``, ...

    Parameters
    ----------
    *modules : Module
        At least one.  Their outputs must agree in every axis except 1.

    Examples
    --------
    >>> import numpy as np
    >>> from stnref.nn.layers import ReLU
    >>> Parallel(ReLU(), ReLU())(np.ones((2, 3, 4, 4))).shape
    (2, 6, 4, 4)
    """

    def __init__(self, *modules):
        super().__init__()
        if not modules:
            raise ValueError("Parallel(): expected at least one module, got none")
        for i, m in enumerate(modules):
            self.add_module(str(i), m)
        self._channels = None
        self._x = None

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, index):
        mods = list(self._modules.values())
        index = _checks.check_int(index, "index", "Parallel.__getitem__")
        if not -len(mods) <= index < len(mods):
            raise IndexError(f"Parallel.__getitem__(): index {index} out of range for length {len(mods)}")
        return mods[index]

    def forward(self, x):
        """``x -> concatenate([m(x) for m in modules], axis=1)``."""
        fn = "Parallel.forward"
        outs = [m.forward(x) for m in self._modules.values()]
        rest = {(o.ndim, o.shape[:1] + o.shape[2:]) for o in outs}
        if len(rest) != 1 or outs[0].ndim < 2:
            raise ValueError(
                f"{fn}(): expected outputs that differ only in axis 1, got shapes "
                f"{[o.shape for o in outs]}"
            )
        self._channels = [o.shape[1] for o in outs]
        self._x = x
        return np.concatenate(outs, axis=1)

    # Backward of y = [f_1(x), ..., f_k(x)] stacked along channels:
    #   dy splits into the children's slices dy_i;  dx = sum_i df_i/dx^T dy_i.
    # A child returning None declares x to be data (no gradient wanted): the sum is None.
    def backward(self, dy):
        """Split ``dy`` along channels, back-propagate each part, sum the input gradients."""
        fn = "Parallel.backward"
        self._saved(fn)
        dy = _checks.float_array(dy, "dy", fn)
        total = sum(self._channels)
        if dy.ndim < 2 or dy.shape[1] != total:
            raise ValueError(f"{fn}(): expected dy with {total} channels in axis 1, got shape {dy.shape}")
        parts = np.split(dy, np.cumsum(self._channels)[:-1], axis=1)
        dxs = [m.backward(p) for m, p in zip(self._modules.values(), parts)]
        if any(dx is None for dx in dxs):
            return None
        dx = dxs[0]
        for d in dxs[1:]:
            dx = dx + d
        return dx


def count_parameters(module):
    """Total number of scalar parameters of ``module`` (sum of ``p.size`` over ``params``)."""
    if not isinstance(module, Module):
        raise TypeError(f"count_parameters(): expected a Module, got {type(module).__name__}")
    return int(sum(p.size for p in module.params.values()))


def localisation_prefixes(module):
    """Dotted name prefixes (``"0.loc."``) of every localisation network inside ``module``.

    For an optimiser's ``lr_scale`` (the paper's smaller localisation learning rate):
    ``SGD(model, lr, lr_scale={p: 0.1 for p in localisation_prefixes(model)})``.
    """
    if not isinstance(module, Module):
        raise TypeError(f"localisation_prefixes(): expected a Module, got {type(module).__name__}")
    found = []

    def walk(m, prefix):
        if isinstance(m, SpatialTransformer):
            found.append(f"{prefix}loc.")
        for name, child in m.children():
            walk(child, f"{prefix}{name}.")

    walk(module, "")
    return found


# ----------------------------------------------------------------------------- classifiers
# Parameter counts in closed form, so widths can be solved before anything is built.

def _fcn_count(n_in, hidden, n_classes):
    """Linear(n_in, h) -> Linear(h, h) -> Linear(h, K), all with biases."""
    return n_in * hidden + hidden + hidden * hidden + hidden + hidden * n_classes + n_classes


def _cnn_side(side):
    """Spatial side after the two 'same' convolutions and two 2x2 max-pools."""
    return (side // CNN_POOL) // CNN_POOL


def _cnn_count(channels, side, filters, n_classes):
    """Conv(C, c1, 9) -> Conv(c1, c2, 7) -> Linear(c2 s^2, K) with c2 = 2 c1."""
    k1, k2 = CNN_KERNELS
    c2 = CNN_FILTER_RATIO * filters
    s = _cnn_side(side)
    return (channels * filters * k1 * k1 + filters + filters * c2 * k2 * k2 + c2
            + c2 * s * s * n_classes + n_classes)


def _closest(count_of, target, upper):
    """The width ``w`` in ``1..upper`` whose parameter count is closest to ``target``."""
    widths = np.arange(1, upper + 1, dtype=np.int64)
    counts = count_of(widths)
    return int(widths[np.argmin(np.abs(counts - target))])


def _fcn_layers(n_in, hidden, n_classes, rng, dtype):
    return [Flatten(),
            Linear(n_in, hidden, rng=rng, dtype=dtype), ReLU(),
            Linear(hidden, hidden, rng=rng, dtype=dtype), ReLU(),
            Linear(hidden, n_classes, rng=rng, dtype=dtype)]


def _cnn_layers(channels, side, filters, n_classes, rng, dtype):
    k1, k2 = CNN_KERNELS
    c2 = CNN_FILTER_RATIO * filters
    s = _cnn_side(side)
    return [Conv2d(channels, filters, k1, padding=k1 // 2, rng=rng, dtype=dtype), ReLU(),
            MaxPool2d(CNN_POOL),
            Conv2d(filters, c2, k2, padding=k2 // 2, rng=rng, dtype=dtype), ReLU(),
            MaxPool2d(CNN_POOL),
            Flatten(),
            Linear(c2 * s * s, n_classes, rng=rng, dtype=dtype)]


def target_parameters(input_size=28, n_classes=10, in_channels=1):
    """Parameter budget shared by all models of one input size: the baseline CNN's count."""
    fn = "target_parameters"
    input_size = _checks.check_int(input_size, "input_size", fn, minimum=1)
    side = input_size // INPUT_POOL if input_size >= POOL_INPUT_FROM else input_size
    return _cnn_count(in_channels, side, CNN_BASE_FILTERS, n_classes)


def build_model(name, transform="affine", input_size=28, n_classes=10, rng=None,
                dtype=np.float64, *, in_channels=1):
    """Build a distorted-MNIST network of the paper (§4.1 and its appendix).

    Parameters
    ----------
    name : {"fcn", "cnn", "st-fcn", "st-cnn"}
    transform : str or Transform, default "affine"
        The spatial transformer's transform (ignored by ``fcn`` and ``cnn``).
    input_size : int, default 28
        Side of the square input (28: R, P, E; 42: RTS; 60: TC).  ``st-cnn`` needs
        at least 28 (its localisation convolutions are unpadded, as in the paper).
    n_classes : int, default 10
    rng : numpy.random.Generator, optional
        Initial weights, drawn layer by layer from the input side (``None``:
        ``default_rng(0)``).  The same seed gives bit-identical models.
    dtype : float32 or float64
    in_channels : int, default 1
        Input channels (2 for the MNIST-addition pairs).

    Returns
    -------
    Sequential
        Input ``(N, in_channels, input_size, input_size)``, output logits ``(N, n_classes)``.
        ST models: child ``"0"`` is the :class:`SpatialTransformer` (parameters
        ``0.loc.*``, see :func:`localisation_prefixes`).

    Notes
    -----
    ReLU everywhere and three weight layers in every classifier:

    - ``fcn``: FC h -> FC h -> FC K.  ``cnn``: conv 9x9 (c) -> max-pool 2 -> conv 7x7 (2c)
      -> max-pool 2 -> FC K, 'same' padding, c = 32.
    - ``st-fcn``: transformer with :func:`~stnref.localisation.fc_localisation` (32-unit
      FC layers), then an FCN classifier.  ``st-cnn``: transformer with
      :func:`~stnref.localisation.conv_localisation`, then a CNN classifier.
    - For ``input_size >= 42`` a 2x average pool follows the transformer (42 -> 21,
      60 -> 30), and sits at the input of ``fcn`` / ``cnn`` too, so every model of one
      input size classifies the same resolution (a fair comparison); the ST-FCN's
      localisation network then also sees the 2x-pooled input (the ST-CNN's always does).
    - Widths are solved so every model has the baseline CNN's parameter count
      (:func:`target_parameters`), to within a few per cent (table in
      ``docs/derivations/transformer.md``): ST models get smaller classifiers.

    Examples
    --------
    >>> model = build_model("st-cnn", "affine", input_size=28)
    >>> model(np.zeros((2, 1, 28, 28))).shape
    (2, 10)
    """
    fn = "build_model"
    name = _checks.check_choice(name, "name", fn, MODEL_NAMES)
    transform = _resolve_transform(transform, fn)
    input_size = _checks.check_int(input_size, "input_size", fn, minimum=CNN_POOL * CNN_POOL)
    n_classes = _checks.check_int(n_classes, "n_classes", fn, minimum=1)
    in_channels = _checks.check_int(in_channels, "in_channels", fn, minimum=1)
    rng = check_rng(rng, fn)
    pooled = input_size >= POOL_INPUT_FROM
    side = input_size // INPUT_POOL if pooled else input_size
    target = target_parameters(input_size, n_classes, in_channels)
    in_shape = (in_channels, input_size, input_size)
    theta_size = math.prod(transform.theta_shape)

    layers = []
    if name.startswith("st-"):
        if name == "st-fcn":
            downsample = LOCALISATION_DOWNSAMPLE if pooled else 1
            loc = fc_localisation(in_shape, theta_size, downsample=downsample, rng=rng, dtype=dtype)
        else:
            loc = conv_localisation(in_shape, theta_size, rng=rng, dtype=dtype)
        layers.append(SpatialTransformer(loc, transform))
        target -= count_parameters(loc)
    if pooled:
        layers.append(AvgPool2d(INPUT_POOL))

    if name.endswith("fcn"):
        n_in = in_channels * side * side
        hidden = _closest(lambda h: _fcn_count(n_in, h, n_classes), target, MAX_FCN_HIDDEN)
        layers += _fcn_layers(n_in, hidden, n_classes, rng, dtype)
    else:
        filters = (CNN_BASE_FILTERS if name == "cnn" else _closest(
            lambda c: _cnn_count(in_channels, side, c, n_classes), target, MAX_CNN_FILTERS))
        layers += _cnn_layers(in_channels, side, filters, n_classes, rng, dtype)
    return Sequential(*layers)
