"""2-D convolution (cross-correlation, PyTorch's ``Conv2d``): im2col or, where it pays,
products of spectra.  Derivation: docs/derivations/layers.md."""

from __future__ import annotations

import math

import numpy as np
import scipy.fft

from .._checks import check_bool, check_budget, check_int, float_array, quiet_nonfinite
from ._windows import (
    _check_input4,
    _col2im,
    _im2col,
    _out_size,
    _pad_channels_first,
    _pair,
)
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


def _conv_geometry(x, weight, stride, padding, fn):
    """Validated ``(x, weight, stride, padding, (H_out, W_out))`` for a convolution.

    The padded input and the im2col matrix (the largest temporaries of the
    forward and the backward) are checked against the element budget here,
    before anything is allocated.
    """
    weight = _check_weight(weight, fn, ("C_out", "C_in", "kh", "kw"))
    if 0 in weight.shape:
        raise ValueError(
            f"{fn}(): expected weight of shape (C_out, C_in, kh, kw) with every entry >= 1, "
            f"got {weight.shape}"
        )
    x = _check_input4(x, "x", fn, channels=weight.shape[1])
    stride = _pair(stride, "stride", fn, 1)
    padding = _pair(padding, "padding", fn, 0)
    n, c = x.shape[:2]
    kh, kw = weight.shape[2:]
    padded = (n, c, x.shape[2] + 2 * padding[0], x.shape[3] + 2 * padding[1])
    check_budget(padded, fn, "padded x")
    h_out = _out_size(padded[2], kh, stride[0], fn, "height", "the padded input x")
    w_out = _out_size(padded[3], kw, stride[1], fn, "width", "the padded input x")
    check_budget((n * h_out * w_out, c * kh * kw), fn, "im2col matrix")
    return x, weight, stride, padding, (h_out, w_out)


# A stride-1 convolution is also a product of 2-D spectra (the convolution
# theorem; the three products are spelled out in conv2d and above
# conv2d_backward): per frequency one (C_out, C_in) @ (C_in, N)
# complex product instead of kh*kw real ones, plus one FFT per plane.  Costs in
# units of one im2col multiply-add, least-squares fits to fwd+bwd timings of 11
# layer shapes (1-64 channels, 3x3-9x9 kernels, 8x8-36x36 planes; scipy.fft and
# OpenBLAS, 1 thread, float32).  From the estimated gain _SPECTRAL_MIN_GAIN on,
# every measured shape ran at least 1.05x faster by FFT in float32, 1.18x in float64.
_FFT_COST = 8.5                # per plane element and log2(plane size)
_SPECTRAL_PRODUCT_COST = 5.0   # per complex multiply-add of the channel contraction
_SPECTRAL_MIN_GAIN = 1.25


def _spectral_gain(x_shape, weight_shape, padding):
    """Estimated im2col cost over FFT cost of a stride-1 convolution (per sample)."""
    _, c_in, h, w = x_shape
    c_out, _, kh, kw = weight_shape
    hp, wp = h + 2 * padding[0], w + 2 * padding[1]
    window_products = (hp - kh + 1) * (wp - kw + 1) * c_in * c_out * kh * kw
    transforms = _FFT_COST * (c_in + c_out) * hp * wp * math.log2(hp * wp)
    products = _SPECTRAL_PRODUCT_COST * hp * (wp // 2 + 1) * c_in * c_out
    return window_products / (transforms + products)


def _spectral_pays(stride, padding, x, weight, *others):
    """Whether conv2d(_backward) should take the FFT route for these operands.

    Only for stride 1 and when :func:`_spectral_gain` reaches
    ``_SPECTRAL_MIN_GAIN``.  A spectrum sums a whole plane, so it could
    overflow, or spread one NaN/inf over the plane, where the sum over one
    window does not: the route is refused unless a bound on every spectral
    product sum is finite, so non-finite and huge inputs give exactly the
    window-local results of the im2col route.
    """
    arrays = (x, weight) + others
    if stride != (1, 1) or min(a.size for a in arrays) == 0:
        return False
    if _spectral_gain(x.shape, weight.shape, padding) < _SPECTRAL_MIN_GAIN:
        return False
    # Every spectrum is at most (Hp Wp) max|a| in magnitude, and each product sum
    # (and inverse FFT) adds at most max(N, C_in, C_out) such products.
    n, c_in, h, w = x.shape
    plane = (h + 2 * padding[0]) * (w + 2 * padding[1])
    largest = float(np.max([np.abs(a).max() for a in arrays]))          # NaN if any is NaN
    spectrum_bound = plane * largest
    bound = spectrum_bound * spectrum_bound * max(n, c_in, weight.shape[0])   # inf past the range
    return bound < np.finfo(x.dtype).max


def _spectrum(a, hw):
    """2-D real FFT of the planes of ``a (A, B, h, w)`` zero-padded at the end to ``hw``.

    Returns ``(F, A, B)``, ``F = hw[0] * (hw[1] // 2 + 1)`` frequencies first,
    so that the channel contractions are batched matrix products.  complex64
    for float32 ``a``, complex128 for float64.
    """
    planes = scipy.fft.rfft2(a, s=hw)                                    # (A, B, Hp, Wp//2+1)
    return planes.reshape(a.shape[:2] + (-1,)).transpose(2, 0, 1)


def _planes(spectra, hw):
    """Inverse of :func:`_spectrum`: ``(F, A, B) -> (A, B, hw[0], hw[1])``, real."""
    _, a, b = spectra.shape
    half = spectra.transpose(1, 2, 0).reshape(a, b, hw[0], hw[1] // 2 + 1)
    return scipy.fft.irfft2(half, s=hw)


@quiet_nonfinite
def conv2d(x, weight, bias=None, stride=1, padding=0):
    """2-D cross-correlation (torch.nn.functional.conv2d, groups=1, dilation=1).

    ``y[n, o, p, q] = b[o] + sum_{c,i,j} W[o, c, i, j] x_pad[n, c, p s_h + i, q s_w + j]``,
    computed as one matrix product of the flattened kernel with the im2col
    matrix (kernel offset and channel down the rows, output positions along),
    or, for stride 1 where the estimate says it is cheaper (many channel
    pairs, large kernels), per frequency from the 2-D FFTs of the planes.
    Non-finite or huge inputs always take the im2col route (see
    ``_spectral_pays``), so a bad pixel only affects the windows reading it.

    Parameters
    ----------
    x : ndarray (N, C_in, H, W), float32 or float64
    weight : ndarray (C_out, C_in, kh, kw)
    bias : ndarray (C_out,) or None
    stride, padding : int or (int, int)
        Zero padding on both sides of each spatial axis.

    Returns
    -------
    y : ndarray (N, C_out, H_out, W_out), dtype of ``x``, with
        ``H_out = floor((H + 2 p_h - kh) / s_h) + 1`` (likewise ``W_out``).

    Examples
    --------
    >>> conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2))).shape
    (1, 1, 2, 2)
    """
    fn = "conv2d"
    x, weight, stride, padding, out_hw = _conv_geometry(x, weight, stride, padding, fn)
    bias = _check_bias(bias, weight.shape[0], fn)
    n, c_out = x.shape[0], weight.shape[0]
    check_budget((n, c_out) + out_hw, fn, "y")
    weight = weight.astype(x.dtype, copy=False)
    xt = _pad_channels_first(x, padding)                                       # (C_in, N, Hp, Wp)
    if _spectral_pays(stride, padding, x, weight):
        # y = irfft(conj(W^) x^), cropped to the windows that fit (no wrap-around)
        spectra = _spectrum(weight, xt.shape[2:]).conj() @ _spectrum(xt, xt.shape[2:])
        y = _planes(spectra, xt.shape[2:])[:, :, :out_hw[0], :out_hw[1]]     # (C_out, N, Ho, Wo)
    else:
        cols = _im2col(xt, weight.shape[2:], stride)                           # (kh*kw*C_in, N*Ho*Wo)
        w_rows = weight.transpose(0, 2, 3, 1).reshape(c_out, cols.shape[0])    # (C_out, kh*kw*C_in)
        y = (w_rows @ cols).reshape((c_out, n) + out_hw)                       # (C_out, N, Ho, Wo)
    if bias is not None:
        y += bias.astype(x.dtype, copy=False)[:, None, None, None]
    return np.ascontiguousarray(y.transpose(1, 0, 2, 3))


# Backward of y = b + sum_{c,i,j} W[o,c,i,j] x_pad[n, c, p s + i, q s + j]
#   (docs/derivations/layers.md, "Convolution")
#   dW[o,c,i,j] = sum_{n,p,q} dy[n,o,p,q] x_pad[n,c,p s+i,q s+j]   one product with the im2col matrix
#   db[o]       = sum_{n,p,q} dy[n,o,p,q]
#   dx_pad      = col2im(dcols), dcols[i,j,c,n,p,q] = sum_o W[o,c,i,j] dy[n,o,p,q]
#                 (strided-slice adds per kernel offset, see _col2im), then crop the padding.
#   FFT route (stride 1; dy zero-padded to the padded input's Hp x Wp, ^ = rfft2 there):
#   dW = irfft(sum_n conj(dy^) x_pad^) cropped to kh x kw (a correlation),
#   dx_pad = irfft(sum_o W^ dy^) (a full convolution); neither wraps around the period.
@quiet_nonfinite
def conv2d_backward(dy, x, weight, stride=1, padding=0, bias=True):
    """Gradients of :func:`conv2d`: ``(dx, dweight, dbias)`` (``dbias`` None if not ``bias``).

    Takes the forward's inputs.  ``dx`` has the dtype of ``x``;
    ``dweight``/``dbias`` that of ``weight``.
    """
    fn = "conv2d_backward"
    x, weight, stride, padding, out_hw = _conv_geometry(x, weight, stride, padding, fn)
    bias = check_bool(bias, "bias", fn)
    dy = float_array(dy, "dy", fn)
    _check_grad_shape(dy, (x.shape[0], weight.shape[0]) + out_hw, fn)
    dy = dy.astype(x.dtype, copy=False)
    n, c_in = x.shape[:2]
    c_out, _, kh, kw = weight.shape
    db = dy.sum(axis=(0, 2, 3)).astype(weight.dtype, copy=False) if bias else None
    w_x = weight.astype(x.dtype, copy=False)
    xt = _pad_channels_first(x, padding)                                 # (C_in, N, Hp, Wp)
    if _spectral_pays(stride, padding, x, w_x, dy):
        # dW = irfft(conj(dy^) x^) (a correlation), dx_pad = irfft(W^ dy^) (a full convolution);
        # dy zero-padded to (Hp, Wp) and both fit in one period, so nothing wraps around.
        hw = xt.shape[2:]
        dy_s = _spectrum(dy.transpose(1, 0, 2, 3), hw)                   # (F, C_out, N)
        x_s = _spectrum(xt, hw)                                          # (F, C_in, N)
        dW = _planes(dy_s.conj() @ x_s.transpose(0, 2, 1), hw)[:, :, :kh, :kw]
        dxp = _planes(_spectrum(w_x, hw).transpose(0, 2, 1) @ dy_s, hw)  # (C_in, N, Hp, Wp)
    else:
        cols = _im2col(xt, (kh, kw), stride)                             # (kh*kw*C_in, N*Ho*Wo)
        dy_rows = np.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(c_out, cols.shape[1])
        dW = (dy_rows @ cols.T).reshape(c_out, kh, kw, c_in).transpose(0, 3, 1, 2)
        w_cols = w_x.transpose(2, 3, 1, 0).reshape(cols.shape[0], c_out)
        dcols = (w_cols @ dy_rows).reshape((kh, kw, c_in, n) + out_hw)  # (kh, kw, C_in, N, Ho, Wo)
        dxp = _col2im(dcols, xt.shape[2:], stride)                       # (C_in, N, Hp, Wp)
    ph, pw = padding
    dx = dxp[:, :, ph:dxp.shape[2] - ph, pw:dxp.shape[3] - pw].transpose(1, 0, 2, 3)
    return np.ascontiguousarray(dx), np.ascontiguousarray(dW, dtype=weight.dtype), db


class Conv2d(Module):
    """2-D convolution layer (torch.nn.Conv2d, cross-correlation, groups=1).

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int or (int, int)
    stride : int or (int, int)
    padding : int or (int, int)
        Zero padding on both sides.
    bias : bool
    rng : numpy.random.Generator, optional
        Source of the initial weights; ``None``: the process-wide generator
        (:func:`stnref.manual_seed`).
    dtype : float32 or float64
        dtype of the parameters (and of the inputs it accepts; see :meth:`Module.to`).

    Notes
    -----
    ``weight (out_channels, in_channels, kh, kw)`` and ``bias (out_channels,)``
    are drawn from ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``,
    ``fan_in = in_channels kh kw`` (PyTorch's default), weight first.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 rng=None, dtype=np.float64):
        super().__init__()
        fn = "Conv2d"
        self.in_channels = check_int(in_channels, "in_channels", fn, minimum=1)
        self.out_channels = check_int(out_channels, "out_channels", fn, minimum=1)
        self.kernel_size = _pair(kernel_size, "kernel_size", fn, 1)
        self.stride = _pair(stride, "stride", fn, 1)
        self.padding = _pair(padding, "padding", fn, 0)
        self.has_bias = check_bool(bias, "bias", fn)
        rng = resolve_rng(rng, fn)
        dt = _check_dtype(dtype, fn)
        bound = _init_bound(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
        shape = (self.out_channels, self.in_channels) + self.kernel_size
        check_budget(shape, fn, "weight")
        self.register_parameter("weight", _uniform(rng, bound, shape, dt))
        if self.has_bias:
            self.register_parameter("bias", _uniform(rng, bound, (self.out_channels,), dt))

    def forward(self, x):
        """``(N, C_in, H, W) -> (N, C_out, H_out, W_out)``, ``x`` of the parameters' dtype."""
        x = _check_input_dtype(x, self.weight, "Conv2d.forward")
        y = conv2d(x, self.weight, self.bias if self.has_bias else None, self.stride, self.padding)
        return self.save_for_backward(y, x)

    def backward(self, dy):
        """Add ``dW``, ``db`` to the gradients; return ``dx (N, C_in, H, W)``."""
        dy, (x,) = self.pop_saved(dy)
        dx, dW, db = conv2d_backward(dy, x, self.weight, self.stride, self.padding, self.has_bias)
        self.add_grad("weight", dW)
        if self.has_bias:
            self.add_grad("bias", db)
        return dx
