"""Sliding-window helpers shared by convolution and pooling: geometry, zero padding,
im2col and its adjoint col2im."""

from __future__ import annotations

import numbers

import numpy as np

from .._checks import check_int, check_ndim, float_array


def _pair(value, name, fn, minimum):
    """An int or a pair of ints -> a tuple of two Python ints >= minimum."""
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        v = check_int(value, name, fn, minimum=minimum)
        return (v, v)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return tuple(check_int(v, name, fn, minimum=minimum) for v in value)
    raise TypeError(f"{fn}(): expected {name} to be an int or a pair of ints, got {value!r}")



def _out_size(size, k, s, fn, axis, what):
    if size < k:
        raise ValueError(f"{fn}(): kernel_size {k} is larger than the {axis} {size} of {what}")
    return (size - k) // s + 1          # floor, as PyTorch (ceil_mode=False)


def _pad_channels_first(x, padding):
    """``x (N, C, H, W)`` zero-padded into a new contiguous ``(C, N, H + 2 p_h, W + 2 p_w)``.

    Channels first, so that one channel of the whole batch is a contiguous
    block: the layout of the im2col rows below.
    """
    n, c, h, w = x.shape
    ph, pw = padding
    xt = np.zeros((c, n, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    xt[:, :, ph:ph + h, pw:pw + w] = x.transpose(1, 0, 2, 3)
    return xt


def _im2col(xt, kernel, stride):
    """The im2col matrix ``(kh*kw*C, N*H_out*W_out)`` of a padded ``xt (C, N, Hp, Wp)``.

    Row ``(i, j, c)`` holds ``xt[c, n, p s_h + i, q s_w + j]`` over all output
    positions ``(n, p, q)`` (the Caffe layout, with the kernel offset outermost),
    so the convolution is one ``(C_out, kh*kw*C) @ (kh*kw*C, N*H_out*W_out)``
    product.  The copy is done in two passes so that most of it moves long
    contiguous runs: first the column shift ``j`` (runs of ``W_out``) into a
    ``(C, N, Hp, W_out)`` buffer, then per row shift ``i`` whole planes
    (runs of ``H_out*W_out`` for stride 1).
    """
    c, n, hp, wp = xt.shape
    (kh, kw), (sh, sw) = kernel, stride
    h_out, w_out = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    cols = np.empty((kh, kw, c, n, h_out, w_out), dtype=xt.dtype)
    shifted = np.empty((c, n, hp, w_out), dtype=xt.dtype)
    for j in range(kw):
        np.copyto(shifted, xt[:, :, :, j:j + sw * (w_out - 1) + 1:sw])
        for i in range(kh):
            cols[i, j] = shifted[:, :, i:i + sh * (h_out - 1) + 1:sh]
    return cols.reshape(kh * kw * c, n * h_out * w_out)


def _window_views(kernel, stride, out_hw):
    """One index per kernel offset ``(i, j)``, row-major: ``x[index]`` is the strided
    view ``x[..., p s_h + i, q s_w + j]`` over the output positions ``(p, q)``."""
    (kh, kw), (sh, sw), (h_out, w_out) = kernel, stride, out_hw
    return [(Ellipsis, slice(i, i + sh * (h_out - 1) + 1, sh),
             slice(j, j + sw * (w_out - 1) + 1, sw)) for i in range(kh) for j in range(kw)]


def _col2im(cols, out_hw, stride):
    """Sum window entries back onto the pixels they were read from.

    ``cols (kh, kw, A, B, H_out, W_out) -> (A, B, H, W)``: entry
    ``[i, j, a, b, p, q]`` lands on pixel ``(p s_h + i, q s_w + j)``.  One
    strided-slice add per kernel offset (kh*kw of them); within one offset the
    target pixels are distinct, so the add never drops duplicates.
    """
    kh, kw, a, b, h_out, w_out = cols.shape
    out = np.zeros((a, b) + tuple(out_hw), dtype=cols.dtype)
    entries = (cols[i, j] for i in range(kh) for j in range(kw))   # row-major, as the views
    for view, entry in zip(_window_views((kh, kw), stride, (h_out, w_out)), entries):
        out[view] += entry
    return out


def _check_input4(x, name, fn, channels=None):
    x = float_array(x, name, fn)
    check_ndim(x, name, fn, (4,), "(N, C, H, W)")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{fn}(): expected {name} of shape (N, C={channels}, H, W), got {x.shape}"
        )
    return x
