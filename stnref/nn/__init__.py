"""stnref.nn: a small NumPy layer toolkit with hand-written backwards.

Layers, the softmax cross-entropy and optimisers, all with PyTorch's names,
layouts, initialisation and update rules, so state dicts map one-to-one:

- :mod:`stnref.nn.module` -- the layer protocol (:class:`Module`), ``Sequential``, ``Flatten``;
- :mod:`stnref.nn.linear` -- ``Linear``;
- :mod:`stnref.nn.activation` -- ``ReLU``, ``Tanh``, ``Dropout``;
- :mod:`stnref.nn.conv` -- ``Conv2d``;
- :mod:`stnref.nn.pooling` -- ``MaxPool2d``, ``AvgPool2d``;
- :mod:`stnref.nn.losses` -- ``cross_entropy``, ``log_softmax``, ``softmax``;
- :mod:`stnref.nn.optim` -- ``SGD``, ``Adam``, ``clip_grad_norm``.

Every layer is a pair of stateless functions (``conv2d`` / ``conv2d_backward``)
and a class holding parameters on top.  Derivations: ``docs/derivations/layers.md``.
"""

from .activation import Dropout, ReLU, Tanh, relu, relu_backward, tanh, tanh_backward
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

__all__ = [
    "Adam",
    "AvgPool2d",
    "Conv2d",
    "Dropout",
    "Flatten",
    "Linear",
    "MaxPool2d",
    "Module",
    "ReLU",
    "SGD",
    "Sequential",
    "Tanh",
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
    "relu",
    "relu_backward",
    "softmax",
    "tanh",
    "tanh_backward",
]
