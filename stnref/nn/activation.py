"""Element-wise layers: ReLU, Tanh, Sigmoid and Dropout.  Derivations: docs/derivations/layers.md."""

from __future__ import annotations

import numbers

import numpy as np
import scipy.special

from .._checks import float_array, quiet_nonfinite
from .module import Module, _check_grad_shape
from .seeding import resolve_rng


def relu(x):
    """``max(x, 0)`` elementwise, dtype of ``x``; NaN and ``-0.0`` pass through, as PyTorch."""
    x = float_array(x, "x", "relu")
    return np.where(x < 0, x.dtype.type(0), x)


# Backward of y = max(x, 0): dx = 0 where x <= 0, else dy -- 0 at x == 0 and dy at NaN,
# as PyTorch's threshold_backward.
@quiet_nonfinite
def relu_backward(dy, x):
    """Gradient of :func:`relu` with respect to ``x``."""
    x = float_array(x, "x", "relu_backward")
    dy = float_array(dy, "dy", "relu_backward")
    _check_grad_shape(dy, x.shape, "relu_backward")
    return np.where(x <= 0, 0, dy).astype(x.dtype, copy=False)


@quiet_nonfinite
def tanh(x):
    """Hyperbolic tangent elementwise, dtype of ``x``."""
    return np.tanh(float_array(x, "x", "tanh"))


# Backward of y = tanh(x): dx = dy (1 - tanh(x)^2).
@quiet_nonfinite
def tanh_backward(dy, x):
    """Gradient of :func:`tanh` with respect to ``x``."""
    x = float_array(x, "x", "tanh_backward")
    dy = float_array(dy, "dy", "tanh_backward")
    _check_grad_shape(dy, x.shape, "tanh_backward")
    y = np.tanh(x)
    return (dy * (1 - y * y)).astype(x.dtype, copy=False)


@quiet_nonfinite
def sigmoid(x):
    """Logistic function ``1 / (1 + exp(-x))`` elementwise, dtype of ``x``, without overflow.

    Examples
    --------
    >>> sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    array([0. , 0.5, 1. ])
    """
    return scipy.special.expit(float_array(x, "x", "sigmoid"))


# Backward of y = 1 / (1 + exp(-x)): dy/dx = y (1 - y).
@quiet_nonfinite
def sigmoid_backward(dy, x):
    """Gradient of :func:`sigmoid` with respect to ``x``."""
    x = float_array(x, "x", "sigmoid_backward")
    dy = float_array(dy, "dy", "sigmoid_backward")
    _check_grad_shape(dy, x.shape, "sigmoid_backward")
    y = scipy.special.expit(x)
    return (dy * (y * (1 - y))).astype(x.dtype, copy=False)


class _Elementwise(Module):
    """A parameter-free layer ``y = f(x)`` applied entry by entry; any shape."""

    def forward(self, x):
        return self.save_for_backward(self._forward(x), x)

    def backward(self, dy):
        dy, (x,) = self.pop_saved(dy)
        return self._backward(dy, x)


class ReLU(_Elementwise):
    """Rectified linear unit (torch.nn.ReLU); any shape; gradient 0 at 0."""

    _forward = staticmethod(relu)
    _backward = staticmethod(relu_backward)


class Tanh(_Elementwise):
    """Hyperbolic tangent (torch.nn.Tanh); any shape."""

    _forward = staticmethod(tanh)
    _backward = staticmethod(tanh_backward)


class Sigmoid(_Elementwise):
    """Logistic sigmoid (torch.nn.Sigmoid); any shape."""

    _forward = staticmethod(sigmoid)
    _backward = staticmethod(sigmoid_backward)


class Dropout(Module):
    """Inverted dropout (torch.nn.Dropout): zero each entry with probability ``p``.

    In training, ``y = x * mask / (1 - p)`` with ``mask ~ Bernoulli(1 - p)``
    drawn from ``rng``; in evaluation the identity.  ``p = 1`` gives zeros.

    Parameters
    ----------
    p : float in [0, 1]
    rng : numpy.random.Generator, optional
        Source of the masks; ``None``: the process-wide generator
        (:func:`stnref.manual_seed`), drawn at each forward.  The same seed gives the same masks.
    """

    def __init__(self, p=0.5, rng=None):
        super().__init__()
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real):
            raise TypeError(f"Dropout(): expected p to be a float, got {type(p).__name__} {p!r}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout(): expected 0 <= p <= 1, got {p}")
        self.p = float(p)
        self.rng = resolve_rng(rng, "Dropout")

    @quiet_nonfinite
    def forward(self, x):
        x = float_array(x, "x", "Dropout.forward")
        if not self.training or self.p == 0.0:
            return self.save_for_backward(x, None)
        keep = self.rng.random(x.shape) >= self.p
        scale = 0.0 if self.p == 1.0 else 1.0 / (1.0 - self.p)
        scale_mask = np.where(keep, scale, 0.0).astype(x.dtype)
        return self.save_for_backward(x * scale_mask, scale_mask)

    # Backward of y = x * m / (1 - p): dx = dy * m / (1 - p) (the forward's mask).
    @quiet_nonfinite
    def backward(self, dy):
        dy, (scale_mask,) = self.pop_saved(dy)
        return dy if scale_mask is None else dy * scale_mask
