"""stnref.nn: a small NumPy layer toolkit with hand-written backwards.

Layers (:mod:`stnref.nn.layers`), the softmax cross-entropy
(:mod:`stnref.nn.losses`) and optimisers (:mod:`stnref.nn.optim`), all with
PyTorch's names, layouts, initialisation and update rules, so state dicts
map one-to-one.  The layer protocol is described in :mod:`stnref.nn.layers`.
"""

from .layers import (
    AvgPool2d,
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    MaxPool2d,
    Module,
    ReLU,
    Sequential,
    Tanh,
)
from .losses import cross_entropy, log_softmax, softmax
from .optim import SGD, Adam, clip_grad_norm

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
    "clip_grad_norm",
    "cross_entropy",
    "log_softmax",
    "softmax",
]
