"""stnref.nn: a small NumPy layer toolkit with hand-written backwards.

Layers, the softmax cross-entropy and optimisers, all with PyTorch's names,
layouts, initialisation and update rules, so state dicts map one-to-one; and
what a training loop needs around them:

- :mod:`stnref.nn.module` -- the layer protocol (:class:`Module`: pending forwards,
  accumulated gradients, shared modules, buffers, ``to(dtype)``), ``Sequential``,
  ``Flatten``, ``Identity``;
- :mod:`stnref.nn.seeding` -- ``manual_seed``: the process-wide generator every layer
  and ``Batches`` given no ``rng`` draws from;
- :mod:`stnref.nn.linear` -- ``Linear``;
- :mod:`stnref.nn.activation` -- ``ReLU``, ``Tanh``, ``Sigmoid``, ``Dropout``;
- :mod:`stnref.nn.conv` -- ``Conv2d``;
- :mod:`stnref.nn.batchnorm` -- ``BatchNorm1d``, ``BatchNorm2d``;
- :mod:`stnref.nn.pooling` -- ``MaxPool2d``, ``AvgPool2d``;
- :mod:`stnref.nn.losses` -- ``cross_entropy``, ``log_softmax``, ``softmax``;
- :mod:`stnref.nn.optim` -- ``SGD``, ``Adam``, ``clip_grad_norm``;
- :mod:`stnref.nn.schedules` -- learning-rate schedules ``Constant``, ``StepDecay``,
  ``Cosine``, ``Warmup`` (multiplied with ``*``), ``parse_schedule``, and ``LambdaLR``,
  which attaches one to an optimiser;
- :mod:`stnref.nn.batches` -- ``Batches``, seeded mini-batches of aligned arrays.

Every layer is a pair of stateless functions (``conv2d`` / ``conv2d_backward``)
and a class holding parameters on top.  Derivations: ``docs/derivations/layers.md``.
"""

from .activation import (
    Dropout,
    ReLU,
    Sigmoid,
    Tanh,
    relu,
    relu_backward,
    sigmoid,
    sigmoid_backward,
    tanh,
    tanh_backward,
)
from .batches import Batches
from .batchnorm import BatchNorm1d, BatchNorm2d, batch_norm, batch_norm_backward
from .conv import Conv2d, conv2d, conv2d_backward
from .linear import Linear, linear, linear_backward
from .losses import cross_entropy, log_softmax, softmax
from .module import Flatten, Identity, Module, Sequential
from .optim import SGD, Adam, clip_grad_norm
from .pooling import (
    AvgPool2d,
    MaxPool2d,
    avg_pool2d,
    avg_pool2d_backward,
    max_pool2d,
    max_pool2d_backward,
)
from .schedules import Constant, Cosine, LambdaLR, Schedule, StepDecay, Warmup, parse_schedule
from .seeding import default_generator, manual_seed

__all__ = [
    "Adam",
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "Batches",
    "Constant",
    "Conv2d",
    "Cosine",
    "Dropout",
    "Flatten",
    "Identity",
    "LambdaLR",
    "Linear",
    "MaxPool2d",
    "Module",
    "ReLU",
    "SGD",
    "Schedule",
    "Sequential",
    "Sigmoid",
    "StepDecay",
    "Tanh",
    "Warmup",
    "avg_pool2d",
    "avg_pool2d_backward",
    "batch_norm",
    "batch_norm_backward",
    "clip_grad_norm",
    "conv2d",
    "conv2d_backward",
    "cross_entropy",
    "default_generator",
    "linear",
    "linear_backward",
    "log_softmax",
    "manual_seed",
    "max_pool2d",
    "max_pool2d_backward",
    "parse_schedule",
    "relu",
    "relu_backward",
    "sigmoid",
    "sigmoid_backward",
    "softmax",
    "tanh",
    "tanh_backward",
]
