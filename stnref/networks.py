"""The paper's distorted-MNIST networks (paper §4.1 and its appendix): FCN, CNN, ST-FCN, ST-CNN.

:func:`build_model` builds each network with the same parameter budget as the
baseline CNN (:func:`target_parameters`), so the spatial-transformer models get
smaller classifiers, as in the paper.  The transformer layer itself is
:class:`stnref.transformer.SpatialTransformer`; the localisation networks are in
:mod:`stnref.localisation`.  Derivations and the parameter-count table:
``docs/derivations/transformer.md``.
"""

from __future__ import annotations

import math

import numpy as np

from . import _checks
from .localisation import LOCALISATION_DOWNSAMPLE, conv_localisation, fc_localisation
from .nn import AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, Module, ReLU, Sequential
from .nn.seeding import resolve_rng
from .registry import _resolve_transform
from .transformer import SpatialTransformer

__all__ = ["MODEL_NAMES", "build_model", "count_parameters", "target_parameters"]

MODEL_NAMES = ("fcn", "cnn", "st-fcn", "st-cnn")

# Paper appendix (paper §4.1): every CNN classifier is conv 9x9 -> max-pool 2 -> conv 7x7 ->
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


def count_parameters(module):
    """Total number of scalar parameters of ``module``: ``module.num_parameters()``."""
    if not isinstance(module, Module):
        raise TypeError(f"count_parameters(): expected a Module, got {type(module).__name__}")
    return module.num_parameters()


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


def build_model(name, transform=None, input_size=28, n_classes=10, rng=None,
                dtype=np.float64, *, in_channels=1):
    """Build a distorted-MNIST network of paper §4.1 and its appendix.

    Parameters
    ----------
    name : {"fcn", "cnn", "st-fcn", "st-cnn"}
    transform : str or Transform, optional
        The spatial transformer's transform, for ``st-fcn`` and ``st-cnn`` (None:
        "affine").  ``fcn`` and ``cnn`` have no transformer: a transform given for
        them is a ``ValueError``.
    input_size : int, default 28
        Side of the square input (28: R, P, E; 42: RTS; 60: TC).  ``st-cnn`` needs
        at least 28 (its localisation convolutions are unpadded, as in the paper).
    n_classes : int, default 10
    rng : numpy.random.Generator, optional
        Initial weights, drawn layer by layer from the input side (``None``: the
        process-wide generator, :func:`stnref.manual_seed`).  The same seed gives
        bit-identical models.
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
    if not name.startswith("st-") and transform is not None:
        raise ValueError(f"{fn}(): model {name!r} has no spatial transformer, so transform must be "
                         f"None, got {transform!r}")
    transform = _resolve_transform("affine" if transform is None else transform, fn)
    input_size = _checks.check_int(input_size, "input_size", fn, minimum=CNN_POOL * CNN_POOL)
    n_classes = _checks.check_int(n_classes, "n_classes", fn, minimum=1)
    in_channels = _checks.check_int(in_channels, "in_channels", fn, minimum=1)
    rng = resolve_rng(rng, fn)
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
        target -= loc.num_parameters()
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
