"""The fully connected layer: ``y = x W^T + b`` (PyTorch's ``Linear``).  Derivation:
docs/derivations/layers.md."""

from __future__ import annotations

import numpy as np

from .._checks import check_bool, check_budget, check_int, check_ndim, float_array, quiet_nonfinite
from .module import (
    Module,
    _check_bias,
    _check_dtype,
    _check_grad_shape,
    _check_input_dtype,
    _check_weight,
    _init_bound,
    _uniform,
)
from .seeding import resolve_rng


def _check_matrix_input(x, weight, fn):
    """``x`` as a float array ``(N, in_features)`` matching ``weight (out, in_features)``."""
    x = float_array(x, "x", fn)
    check_ndim(x, "x", fn, (2,), "(N, in_features)")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"{fn}(): expected x of shape (N, {weight.shape[1]}) to match weight {weight.shape}, "
            f"got {x.shape}"
        )
    return x



@quiet_nonfinite
def linear(x, weight, bias=None):
    """Affine map ``y = x W^T + b`` (torch.nn.functional.linear).

    Parameters
    ----------
    x : ndarray (N, in_features), float32 or float64
    weight : ndarray (out_features, in_features)
    bias : ndarray (out_features,) or None

    Returns
    -------
    y : ndarray (N, out_features), dtype of ``x``

    Examples
    --------
    >>> linear(np.ones((1, 2)), np.array([[1.0, 2.0]]), np.array([0.5]))
    array([[3.5]])
    """
    fn = "linear"
    weight = _check_weight(weight, fn, ("out_features", "in_features"))
    x = _check_matrix_input(x, weight, fn)
    bias = _check_bias(bias, weight.shape[0], fn)
    check_budget((x.shape[0], weight.shape[0]), fn, "y")
    y = x @ weight.T.astype(x.dtype, copy=False)                 # (N, out)
    if bias is not None:
        y = y + bias.astype(x.dtype, copy=False)
    return y


# Backward of y = x W^T + b   (docs/derivations/layers.md, "Linear")
#   dx = dy W          (N, in)
#   dW = dy^T x        (out, in)
#   db = sum_n dy      (out,)
@quiet_nonfinite
def linear_backward(dy, x, weight, bias=True):
    """Gradients of :func:`linear`: ``(dx, dweight, dbias)`` (``dbias`` None if not ``bias``).

    ``dx`` has the dtype of ``x``; ``dweight``/``dbias`` that of ``weight``.
    """
    fn = "linear_backward"
    weight = _check_weight(weight, fn, ("out_features", "in_features"))
    x = _check_matrix_input(x, weight, fn)
    bias = check_bool(bias, "bias", fn)
    dy = float_array(dy, "dy", fn)
    _check_grad_shape(dy, (x.shape[0], weight.shape[0]), fn)
    dx = (dy @ weight.astype(dy.dtype, copy=False)).astype(x.dtype, copy=False)
    dW = (dy.T @ x).astype(weight.dtype, copy=False)
    db = dy.sum(axis=0).astype(weight.dtype, copy=False) if bias else None
    return dx, dW, db


class Linear(Module):
    """Fully connected layer, ``y = x W^T + b`` (torch.nn.Linear).

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
    rng : numpy.random.Generator, optional
        Source of the initial weights; ``None``: the process-wide generator
        (:func:`stnref.manual_seed`), so every layer starts from its own weights.
    dtype : float32 or float64
        dtype of the parameters (and of the inputs it accepts; see :meth:`Module.to`).

    Notes
    -----
    ``weight (out_features, in_features)`` and ``bias (out_features,)`` are
    drawn from ``U(-1/sqrt(in_features), 1/sqrt(in_features))`` (PyTorch's
    default), weight first.
    """

    def __init__(self, in_features, out_features, bias=True, rng=None, dtype=np.float64):
        super().__init__()
        fn = "Linear"
        self.in_features = check_int(in_features, "in_features", fn, minimum=1)
        self.out_features = check_int(out_features, "out_features", fn, minimum=1)
        self.has_bias = check_bool(bias, "bias", fn)
        rng = resolve_rng(rng, fn)
        dt = _check_dtype(dtype, fn)
        check_budget((self.out_features, self.in_features), fn, "weight")
        bound = _init_bound(self.in_features)
        self.register_parameter("weight", _uniform(rng, bound, (self.out_features, self.in_features), dt))
        if self.has_bias:
            self.register_parameter("bias", _uniform(rng, bound, (self.out_features,), dt))

    def forward(self, x):
        """``(N, in_features) -> (N, out_features)``, ``x`` of the parameters' dtype."""
        x = _check_input_dtype(x, self.weight, "Linear.forward")
        y = linear(x, self.weight, self.bias if self.has_bias else None)
        return self.save_for_backward(y, x)

    def backward(self, dy):
        """Add ``dW``, ``db`` to the gradients; return ``dx (N, in_features)``."""
        dy, (x,) = self.pop_saved(dy)
        dx, dW, db = linear_backward(dy, x, self.weight, self.has_bias)
        self.add_grad("weight", dW)
        if self.has_bias:
            self.add_grad("bias", db)
        return dx
