"""Batch normalisation (PyTorch's ``BatchNorm1d`` / ``BatchNorm2d``): ``y = (x - mean) / sqrt(var + eps) * w + b``
per channel (axis 1).  Derivation: docs/derivations/layers.md, "Batch normalisation"."""

from __future__ import annotations

import numbers

import numpy as np

from .._checks import check_bool, check_int, float_array, quiet_nonfinite
from .module import Module, _check_dtype, _check_grad_shape, _check_input_dtype

BN_EPS = 1e-5        # PyTorch's default eps
BN_MOMENTUM = 0.1    # PyTorch's default momentum of the running statistics


def _channel_vector(v, name, c, fn):
    """``None``, or ``v`` as a float array of shape ``(C,)``."""
    if v is None:
        return None
    v = float_array(v, name, fn)
    if v.shape != (c,):
        raise ValueError(f"{fn}(): expected {name} of shape ({c},), one entry per channel of x, "
                         f"got {v.shape}")
    return v


def _bn_inputs(x, weight, bias, mean, var, eps, fn):
    """Validated operands; vectors reshaped to broadcast along axis 1 of ``x``."""
    x = float_array(x, "x", fn)
    if x.ndim < 2:
        raise ValueError(f"{fn}(): expected x of shape (N, C, ...), got {x.shape}")
    c = x.shape[1]
    if (mean is None) != (var is None):
        raise ValueError(f"{fn}(): expected mean and var both given (fixed statistics) or both "
                         f"None (the batch's), got only {'mean' if var is None else 'var'}")
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, numbers.Real) or not eps > 0 \
            or not np.isfinite(eps):
        raise ValueError(f"{fn}(): expected finite eps > 0, got {eps!r}")
    if mean is None and x.size == 0:
        raise ValueError(f"{fn}(): expected at least one value per channel for the batch's "
                         f"statistics, got x of shape {x.shape}")
    shape = (1, c) + (1,) * (x.ndim - 2)
    vectors = [_channel_vector(v, name, c, fn)
               for v, name in ((weight, "weight"), (bias, "bias"), (mean, "mean"), (var, "var"))]
    vectors = [None if v is None else v.astype(x.dtype, copy=False).reshape(shape) for v in vectors]
    return (x, *vectors)


def _normalised(x, mean, var, eps):
    """``(x_hat, inv_std)`` per channel: the given statistics, or the batch's (biased variance)."""
    axes = (0,) + tuple(range(2, x.ndim))
    if mean is None:
        mean = x.mean(axis=axes, keepdims=True)
        centred = x - mean
        var = (centred * centred).mean(axis=axes, keepdims=True)
    else:
        centred = x - mean
    inv_std = 1 / np.sqrt(var + x.dtype.type(eps))
    return centred * inv_std, inv_std


@quiet_nonfinite
def batch_norm(x, weight=None, bias=None, mean=None, var=None, eps=BN_EPS):
    """Normalise every channel: ``y = (x - mean) / sqrt(var + eps) * weight + bias``.

    torch.nn.functional.batch_norm, without its in-place update of running
    statistics (:class:`BatchNorm2d` does that).

    Parameters
    ----------
    x : ndarray (N, C, ...), float32 or float64
        Channels along axis 1.
    weight, bias : ndarray (C,) or None
        Per-channel scale ``gamma`` and shift ``beta`` (None: 1 and 0).
    mean, var : ndarray (C,) or None
        Fixed statistics (evaluation, from running averages); None: the batch's own,
        over every axis but 1, with the biased variance (training).
    eps : float > 0

    Returns
    -------
    y : ndarray, shape and dtype of ``x``

    Examples
    --------
    >>> batch_norm(np.array([[1.0], [3.0]])).round(4)   # mean 2, variance 1
    array([[-1.],
           [ 1.]])
    """
    x, weight, bias, mean, var = _bn_inputs(x, weight, bias, mean, var, eps, "batch_norm")
    y, _ = _normalised(x, mean, var, eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


# Backward of y = x_hat w + b, x_hat = (x - mu) s, s = 1 / sqrt(var + eps), per channel over the
# m = N * (spatial size) values of the channel   (docs/derivations/layers.md, "Batch normalisation")
#   dw = sum dy x_hat,  db = sum dy,  g = dy w
#   fixed statistics:  dx = g s
#   batch statistics (mu and var depend on x):  dx = s (g - mean(g) - x_hat mean(g x_hat))
@quiet_nonfinite
def batch_norm_backward(dy, x, weight=None, mean=None, var=None, eps=BN_EPS, bias=True):
    """Gradients of :func:`batch_norm`: ``(dx, dweight, dbias)``.

    Takes the forward's inputs.  ``dweight`` is None when ``weight`` is None, ``dbias``
    when ``bias`` is False; ``dx`` has the dtype of ``x``, the others that of ``weight``.
    """
    fn = "batch_norm_backward"
    bias = check_bool(bias, "bias", fn)
    x, w, _, mean_b, var_b = _bn_inputs(x, weight, None, mean, var, eps, fn)
    dy = float_array(dy, "dy", fn)
    _check_grad_shape(dy, x.shape, fn)
    dy = dy.astype(x.dtype, copy=False)
    axes = (0,) + tuple(range(2, x.ndim))
    x_hat, inv_std = _normalised(x, mean_b, var_b, eps)
    g = dy if w is None else dy * w
    if mean is None:
        g = g - g.mean(axis=axes, keepdims=True) - x_hat * (g * x_hat).mean(axis=axes, keepdims=True)
    dx = g * inv_std
    dweight = None if weight is None else (dy * x_hat).sum(axis=axes).astype(np.asarray(weight).dtype)
    dbias = dy.sum(axis=axes).astype(dx.dtype if weight is None else np.asarray(weight).dtype) \
        if bias else None
    return dx, dweight, dbias


class _BatchNorm(Module):
    """Shared body of :class:`BatchNorm1d` and :class:`BatchNorm2d` (they differ in the input's axes)."""

    _layouts = ()  # accepted numbers of axes of x, and how they are named

    def __init__(self, num_features, eps=BN_EPS, momentum=BN_MOMENTUM, affine=True,
                 track_running_stats=True, dtype=np.float64):
        super().__init__()
        fn = type(self).__name__
        self.num_features = check_int(num_features, "num_features", fn, minimum=1)
        if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, numbers.Real) or not eps > 0 \
                or not np.isfinite(eps):
            raise ValueError(f"{fn}(): expected finite eps > 0, got {eps!r}")
        self.eps = float(eps)
        if momentum is not None and (isinstance(momentum, (bool, np.bool_))
                                     or not isinstance(momentum, numbers.Real)
                                     or not 0 <= momentum <= 1):
            raise ValueError(f"{fn}(): expected momentum in [0, 1] or None (a cumulative "
                             f"average), got {momentum!r}")
        self.momentum = None if momentum is None else float(momentum)
        self.affine = check_bool(affine, "affine", fn)
        self.track_running_stats = check_bool(track_running_stats, "track_running_stats", fn)
        dt = _check_dtype(dtype, fn)
        c = self.num_features
        if self.affine:
            self.register_parameter("weight", np.ones(c, dt))
            self.register_parameter("bias", np.zeros(c, dt))
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(c, dt))
            self.register_buffer("running_var", np.ones(c, dt))
            self.register_buffer("num_batches_tracked", np.array(0, np.int64))

    def _check_x(self, x):
        fn = f"{type(self).__name__}.forward"
        ndims, layout = self._layouts
        x = float_array(x, "x", fn)
        if x.ndim not in ndims or x.shape[1] != self.num_features:
            raise ValueError(f"{fn}(): expected x of shape {layout} with C={self.num_features}, "
                             f"got {x.shape}")
        if self.affine:
            return _check_input_dtype(x, self.weight, fn)
        if self.track_running_stats:
            return _check_input_dtype(x, self.running_mean, fn)
        return x

    @quiet_nonfinite
    def _update_running(self, x):
        """PyTorch's update: ``r = (1 - f) r + f s`` with the batch's mean and *unbiased*
        variance, ``f = momentum`` (None: ``1 / batches seen``, a cumulative average)."""
        axes = (0,) + tuple(range(2, x.ndim))
        m = x.size // x.shape[1]
        if m < 2:
            raise ValueError(f"{type(self).__name__}.forward(): expected more than 1 value per "
                             f"channel when training (x of shape {x.shape}), as PyTorch")
        self.num_batches_tracked[...] += 1
        f = 1.0 / int(self.num_batches_tracked) if self.momentum is None else self.momentum
        mean = x.mean(axis=axes)
        unbiased = x.var(axis=axes) * (m / (m - 1))
        for buf, stat in ((self.running_mean, mean), (self.running_var, unbiased)):
            buf *= 1 - f
            buf += (f * stat).astype(buf.dtype, copy=False)

    def forward(self, x):
        """Normalise ``x`` per channel: with the batch's statistics in training (updating the
        running ones), with the running statistics in eval mode."""
        x = self._check_x(x)
        weight = self.weight if self.affine else None
        bias = self.bias if self.affine else None
        if self.training or not self.track_running_stats:
            if self.training and self.track_running_stats:
                self._update_running(x)
            y = batch_norm(x, weight, bias, eps=self.eps)
            return self.save_for_backward(y, x)
        y = batch_norm(x, weight, bias, self.running_mean, self.running_var, self.eps)
        return self.save_for_backward(y, x)

    def backward(self, dy):
        """Add ``dweight``, ``dbias`` to the gradients (affine); return ``dx`` (batch statistics)."""
        dy, (x,) = self.pop_saved(dy)
        dx, dw, db = batch_norm_backward(dy, x, self.weight if self.affine else None,
                                         eps=self.eps, bias=self.affine)
        if self.affine:
            self.add_grad("weight", dw)
            self.add_grad("bias", db)
        return dx


_DOC = """Batch normalisation over {what} (torch.nn.{name}).

    In training, each channel ``c`` of ``x`` is normalised with the batch's mean and
    biased variance over {axes}: ``y = (x - mean) / sqrt(var + eps) * weight + bias``,
    and the running statistics move as PyTorch's, with the *unbiased* variance:
    ``running = (1 - momentum) running + momentum stat``.  In eval mode the running
    statistics normalise instead (and nothing is saved for a backward).

    Parameters
    ----------
    num_features : int
        ``C``.
    eps : float > 0, default 1e-5
    momentum : float in [0, 1] or None, default 0.1
        None: a cumulative average over the batches seen.
    affine : bool, default True
        Learn ``weight`` (ones) and ``bias`` (zeros).
    track_running_stats : bool, default True
        Keep ``running_mean`` (zeros), ``running_var`` (ones) and ``num_batches_tracked``
        as buffers (in ``state_dict()``, PyTorch's names); False: batch statistics in
        eval mode too.
    dtype : float32 or float64
    """


class BatchNorm1d(_BatchNorm):
    _layouts = ((2, 3), "(N, C) or (N, C, L)")
    __doc__ = _DOC.format(what="features", name="BatchNorm1d", axes="N (and L)")


class BatchNorm2d(_BatchNorm):
    _layouts = ((4,), "(N, C, H, W)")
    __doc__ = _DOC.format(what="the channels of images", name="BatchNorm2d", axes="N, H and W")
