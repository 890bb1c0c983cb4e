"""Localisation networks (paper §3.1): ``theta = f_loc(U)``, any network ending in a regression layer.

The two builders follow the paper's distorted-MNIST appendix: fully connected
32-unit layers for ST-FCN, and for ST-CNN two unpadded 5x5 convolutions with 20
filters on a 2x-downsampled input.  Both end in a ``Linear`` regression layer with
``theta_size`` outputs; :class:`stnref.transformer.SpatialTransformer` sets it to
zero weight and the identity bias.
"""

from __future__ import annotations

import numpy as np

from . import _checks
from .nn import AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential
from .nn.seeding import resolve_rng

__all__ = ["LOCALISATION_DOWNSAMPLE", "conv_localisation", "fc_localisation"]

# Paper appendix: ST-FCN localisation layers have 32 units; ST-CNN's localisation network
# downsamples its input 2x (average pool), then conv 20 5x5 -> max-pool 2 -> conv 20 5x5 ->
# FC 20, all unpadded with stride 1.
FC_HIDDEN = (32, 32)
LOCALISATION_DOWNSAMPLE = 2
CONV_FILTERS = 20
CONV_KERNEL = 5
CONV_POOL = 2
CONV_HIDDEN = 20


def _check_in_shape(in_shape, fn):
    return _checks.check_size(in_shape, "in_shape", fn, (3,))


def fc_localisation(in_shape, theta_size, hidden=FC_HIDDEN, downsample=1, rng=None,
                    dtype=np.float64):
    """ST-FCN localisation network: [avg-pool] -> flatten -> (FC -> ReLU) x len(hidden) -> FC.

    Parameters
    ----------
    in_shape : tuple (C, H, W)
        Shape of one input ``U``.
    theta_size : int
        Outputs of the regression layer (``prod(theta_shape)``: 6 affine,
        3 attention, 9 projective, 2K TPS).
    hidden : tuple of int, default (32, 32)
        Hidden layer widths.
    downsample : int, default 1
        If > 1, an ``AvgPool2d(downsample)`` first (the networks of
        :func:`stnref.networks.build_model` use 2 for inputs >= 42).
    rng : numpy.random.Generator, optional
        Initial weights, drawn layer by layer from the input side (``None``: the
        process-wide generator, :func:`stnref.manual_seed`).
    dtype : float32 or float64

    Returns
    -------
    Sequential
        ``(N, C, H, W) -> (N, theta_size)``.

    Examples
    --------
    >>> loc = fc_localisation((1, 28, 28), 6)
    >>> loc(np.zeros((2, 1, 28, 28))).shape
    (2, 6)
    """
    fn = "fc_localisation"
    C, H, W = _check_in_shape(in_shape, fn)
    theta_size = _checks.check_int(theta_size, "theta_size", fn, minimum=1)
    hidden = tuple(_checks.check_int(h, "hidden", fn, minimum=1) for h in hidden)
    downsample = _checks.check_int(downsample, "downsample", fn, minimum=1)
    if H < downsample or W < downsample:
        raise ValueError(f"{fn}(): input {in_shape} is smaller than downsample {downsample}")
    rng = resolve_rng(rng, fn)
    layers = [AvgPool2d(downsample)] if downsample > 1 else []
    n = C * (H // downsample) * (W // downsample)
    layers.append(Flatten())
    for h in hidden:
        layers += [Linear(n, h, rng=rng, dtype=dtype), ReLU()]
        n = h
    layers.append(Linear(n, theta_size, rng=rng, dtype=dtype))
    return Sequential(*layers)


def _conv_side(side):
    """Side after the 2x downsample, conv 5, max-pool 2, conv 5 (all unpadded)."""
    side = side // LOCALISATION_DOWNSAMPLE - (CONV_KERNEL - 1)
    return side // CONV_POOL - (CONV_KERNEL - 1)


def conv_localisation(in_shape, theta_size, rng=None, dtype=np.float64):
    """ST-CNN localisation network (paper appendix).

    ``avg-pool 2 -> conv 20 5x5 -> ReLU -> max-pool 2 -> conv 20 5x5 -> ReLU ->
    flatten -> FC 20 -> ReLU -> FC theta_size``, convolutions unpadded.

    Parameters
    ----------
    in_shape : tuple (C, H, W)
        Shape of one input; ``H`` and ``W`` must be at least 28 (the smallest
        side for which the two unpadded convolutions leave one pixel).
    theta_size : int
    rng : numpy.random.Generator, optional
        As :func:`fc_localisation`.
    dtype : float32 or float64

    Returns
    -------
    Sequential
        ``(N, C, H, W) -> (N, theta_size)``.

    Examples
    --------
    >>> loc = conv_localisation((1, 42, 42), 6)
    >>> loc(np.zeros((1, 1, 42, 42))).shape
    (1, 6)
    """
    fn = "conv_localisation"
    C, H, W = _check_in_shape(in_shape, fn)
    theta_size = _checks.check_int(theta_size, "theta_size", fn, minimum=1)
    h, w = _conv_side(H), _conv_side(W)
    if h < 1 or w < 1:
        raise ValueError(
            f"{fn}(): expected an input of at least 28x28 (two unpadded 5x5 convolutions on "
            f"the 2x-downsampled input), got in_shape {tuple(in_shape)}"
        )
    rng = resolve_rng(rng, fn)
    return Sequential(
        AvgPool2d(LOCALISATION_DOWNSAMPLE),
        Conv2d(C, CONV_FILTERS, CONV_KERNEL, rng=rng, dtype=dtype), ReLU(),
        MaxPool2d(CONV_POOL),
        Conv2d(CONV_FILTERS, CONV_FILTERS, CONV_KERNEL, rng=rng, dtype=dtype), ReLU(),
        Flatten(),
        Linear(CONV_FILTERS * h * w, CONV_HIDDEN, rng=rng, dtype=dtype), ReLU(),
        Linear(CONV_HIDDEN, theta_size, rng=rng, dtype=dtype),
    )
