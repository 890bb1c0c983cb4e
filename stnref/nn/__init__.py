"""stnref.nn: a small NumPy layer toolkit with hand-written backwards.

Layers, the softmax cross-entropy and optimisers, all with PyTorch's names,
layouts, initialisation and update rules, so state dicts map one-to-one; and
what a training loop needs around them:

- :mod:`stnref.nn.module` -- the layer protocol (:class:`Module`: pending forwards,
  accumulated gradients, shared modules), ``Sequential``, ``Flatten``;
- :mod:`stnref.nn.linear` -- ``Linear``;
- :mod:`stnref.nn.activation` -- ``ReLU``, ``Tanh``, ``Dropout``;
- :mod:`stnref.nn.conv` -- ``Conv2d``;
- :mod:`stnref.nn.pooling` -- ``MaxPool2d``, ``AvgPool2d``;
- :mod:`stnref.nn.losses` -- ``cross_entropy``, ``log_softmax``, ``softmax``;
- :mod:`stnref.nn.optim` -- ``SGD``, ``Adam``, ``clip_grad_norm``;
- :mod:`stnref.nn.schedules` -- learning-rate schedules ``Constant``, ``StepDecay``,
  ``Cosine``, ``Warmup`` (multiplied with ``*``), ``parse_schedule``;
- :mod:`stnref.nn.batches` -- ``Batches``, seeded mini-batches of aligned arrays.

Every layer is a pair of stateless functions (``conv2d`` / ``conv2d_backward``)
and a class holding parameters on top.  Derivations: ``docs/derivations/layers.md``.
"""

from .activation import Dropout, ReLU, Tanh, relu, relu_backward, tanh, tanh_backward
from .batches import Batches
from .conv import Conv2d, conv2d, conv2d_backward
from .linear import Linear, linear, linear_backward
from .losses import cross_entropy, log_softmax, softmax
from .module import Flatten, Module, Sequential
from .optim import SGD, Adam, clip_grad_norm
from .pooling import (
    AvgPool2d,
    MaxPool2d,
    avg_pool2d,
    avg_pool2d_backward,
    max_pool2d,
    max_pool2d_backward,
)
from .schedules import Constant, Cosine, Schedule, StepDecay, Warmup, parse_schedule

__all__ = [
    "Adam",
    "AvgPool2d",
    "Batches",
    "Constant",
    "Conv2d",
    "Cosine",
    "Dropout",
    "Flatten",
    "Linear",
    "MaxPool2d",
    "Module",
    "ReLU",
    "SGD",
    "Schedule",
    "Sequential",
    "StepDecay",
    "Tanh",
    "Warmup",
    "avg_pool2d",
    "avg_pool2d_backward",
    "clip_grad_norm",
    "conv2d",
    "conv2d_backward",
    "cross_entropy",
    "linear",
    "linear_backward",
    "log_softmax",
    "max_pool2d",
    "max_pool2d_backward",
    "parse_schedule",
    "relu",
    "relu_backward",
    "softmax",
    "tanh",
    "tanh_backward",
]
