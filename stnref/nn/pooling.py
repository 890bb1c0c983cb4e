"""Max and average pooling (PyTorch's ``MaxPool2d`` / ``AvgPool2d``, no padding).
Derivations: docs/derivations/layers.md."""

from __future__ import annotations

import numpy as np

from .._checks import float_array, quiet_nonfinite
from ._windows import _check_input4, _col2im, _out_size, _pair, _window_views
from .module import Module, _check_grad_shape


def _pool_geometry(x, kernel_size, stride, fn):
    x = _check_input4(x, "x", fn)
    kernel = _pair(kernel_size, "kernel_size", fn, 1)
    stride = kernel if stride is None else _pair(stride, "stride", fn, 1)
    out_hw = (_out_size(x.shape[2], kernel[0], stride[0], fn, "height", "x"),
              _out_size(x.shape[3], kernel[1], stride[1], fn, "width", "x"))
    return x, kernel, stride, out_hw


# PyTorch's CPU kernel scans a window in row-major order and takes a value if
# ``val > max or isnan(val)``: the first of tied maxima, but the *last* NaN.  Here
# every window is handled at once, one strided view of ``x`` per kernel offset.

def _max_values(x, parts):
    """Window maxima from the views ``parts`` of ``x`` (row-major kernel offsets).

    ``np.maximum`` gives the scan's value (NaN wins; tied values are equal)
    except for the sign of a zero maximum, which it may take from any of the
    tied ``-0.0`` and ``+0.0``: if ``x`` holds a ``-0.0``, windows whose
    maximum is zero take their first zero, as the scan.
    """
    y = parts[0].copy()
    for part in parts[1:]:
        np.maximum(part, y, out=y)
    bits = np.dtype(f"u{y.itemsize}")
    zero = y == 0
    if zero.any() and (x.view(bits) == np.array(-0.0, dtype=y.dtype).view(bits)).any():
        y[zero] = np.select([p[zero] == 0 for p in parts], [p[zero] for p in parts])
    return y


def _max_routes(parts, y):
    """Per kernel offset, the windows whose gradient goes to that entry (masks like ``y``).

    The first entry equal to the maximum ``y``; in a window holding NaN, its last NaN.
    """
    routes, taken = [], np.zeros(y.shape, dtype=bool)
    for part in parts:
        hit = part == y              # never true in a NaN window
        np.greater(hit, taken, out=hit)  # and not taken by an earlier offset
        taken |= hit
        routes.append(hit)
    if np.isnan(y).any():
        taken[...] = False
        for k in reversed(range(len(parts))):
            hit = np.greater(np.isnan(parts[k]), taken)
            taken |= hit
            routes[k] |= hit
    return routes


@quiet_nonfinite
def max_pool2d(x, kernel_size, stride=None):
    """Max over each window (torch.nn.functional.max_pool2d, no padding, floor mode).

    Parameters
    ----------
    x : ndarray (N, C, H, W), float32 or float64
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Default ``kernel_size``.

    Returns
    -------
    y : ndarray (N, C, H_out, W_out), dtype of ``x``;
        ``H_out = floor((H - kh) / s_h) + 1``.  Trailing rows/columns that do
        not fill a window are dropped, as PyTorch.

    Examples
    --------
    >>> max_pool2d(np.arange(16.0).reshape(1, 1, 4, 4), 2)[0, 0]
    array([[ 5.,  7.],
           [13., 15.]])
    """
    x, kernel, stride, out_hw = _pool_geometry(x, kernel_size, stride, "max_pool2d")
    return _max_values(x, [x[v] for v in _window_views(kernel, stride, out_hw)])


# Backward of y = x[argmax of window]   (docs/derivations/layers.md, "Max pooling")
#   dx[pixel of the window's first maximum] += dy.  Disjoint windows: one strided-view
#   write per kernel offset, of dy where that offset won.  Overlapping windows (stride <
#   kernel) may pick the same pixel: a scatter-add in window order by np.bincount.
@quiet_nonfinite
def max_pool2d_backward(dy, x, kernel_size, stride=None):
    """Gradient of :func:`max_pool2d` with respect to ``x``.

    Ties go to the first maximum in row-major order; in a window holding NaN,
    to its last NaN (both as PyTorch's CPU kernel).
    """
    fn = "max_pool2d_backward"
    x, kernel, stride, out_hw = _pool_geometry(x, kernel_size, stride, fn)
    dy = float_array(dy, "dy", fn)
    _check_grad_shape(dy, x.shape[:2] + out_hw, fn)
    views = _window_views(kernel, stride, out_hw)
    parts = [x[v] for v in views]
    routes = _max_routes(parts, _max_values(x, parts))                 # per offset (N, C, Ho, Wo)
    if stride[0] < kernel[0] or stride[1] < kernel[1]:
        n, c, h, w = x.shape
        arg = sum(k * r for k, r in enumerate(routes))    # kernel offset of each window's pick
        rows = np.arange(out_hw[0])[:, None] * stride[0] + arg // kernel[1]
        cols = np.arange(out_hw[1]) * stride[1] + arg % kernel[1]
        flat = np.arange(n * c).reshape(n, c, 1, 1) * (h * w) + rows * w + cols
        dx = np.bincount(flat.ravel(), weights=dy.ravel(), minlength=n * c * h * w)
        return dx.reshape(x.shape).astype(x.dtype, copy=False)
    dx = np.zeros(x.shape, dtype=x.dtype)
    zero = dy.dtype.type(0)
    for view, route in zip(views, routes):
        dx[view] = np.where(route, dy, zero)
    return dx


@quiet_nonfinite
def avg_pool2d(x, kernel_size, stride=None):
    """Mean over each window (torch.nn.functional.avg_pool2d, no padding, floor mode).

    Parameters
    ----------
    x : ndarray (N, C, H, W), float32 or float64
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Default ``kernel_size``.

    Returns
    -------
    y : ndarray (N, C, H_out, W_out), dtype of ``x``.
    """
    x, kernel, stride, (h_out, w_out) = _pool_geometry(x, kernel_size, stride, "avg_pool2d")
    # Sum the window entries as strided slices, one per kernel offset (a reduction over
    # the two short window axes is ~10x slower), in PyTorch's order, then divide.
    total = None
    for view in _window_views(kernel, stride, (h_out, w_out)):
        part = x[view]
        total = part.copy() if total is None else np.add(total, part, out=total)
    return total / x.dtype.type(kernel[0] * kernel[1])


# Backward of y = (1 / (kh kw)) sum_{i,j} x[p s + i, q s + j]
#   (docs/derivations/layers.md, "Average pooling")
#   every pixel of a window receives dy / (kh kw): col2im of a broadcast, no copy of the windows.
@quiet_nonfinite
def avg_pool2d_backward(dy, x, kernel_size, stride=None):
    """Gradient of :func:`avg_pool2d` with respect to ``x``."""
    fn = "avg_pool2d_backward"
    x, kernel, stride, out_hw = _pool_geometry(x, kernel_size, stride, fn)
    dy = float_array(dy, "dy", fn)
    _check_grad_shape(dy, x.shape[:2] + out_hw, fn)
    share = (dy / (kernel[0] * kernel[1])).astype(x.dtype, copy=False)  # (N, C, Ho, Wo)
    cols = np.broadcast_to(share, kernel + share.shape)                 # (kh, kw, N, C, Ho, Wo)
    return _col2im(cols, x.shape[2:], stride)


class _Pool(Module):
    """A parameter-free window reduction; subclasses name the pure functions."""

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        fn = type(self).__name__
        self.kernel_size = _pair(kernel_size, "kernel_size", fn, 1)
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride", fn, 1)

    def forward(self, x):
        """``(N, C, H, W) -> (N, C, H_out, W_out)``."""
        y = self._forward(x, self.kernel_size, self.stride)
        return self.save_for_backward(y, x)

    def backward(self, dy):
        """``dx (N, C, H, W)`` of the last pending forward."""
        dy, (x,) = self.pop_saved(dy)
        return self._backward(dy, x, self.kernel_size, self.stride)


class MaxPool2d(_Pool):
    """Max pooling (torch.nn.MaxPool2d, padding 0, floor mode); gradient to the first maximum.

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Default ``kernel_size``.
    """

    _forward = staticmethod(max_pool2d)
    _backward = staticmethod(max_pool2d_backward)


class AvgPool2d(_Pool):
    """Average pooling (torch.nn.AvgPool2d, padding 0, floor mode).

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Default ``kernel_size``.
    """

    _forward = staticmethod(avg_pool2d)
    _backward = staticmethod(avg_pool2d_backward)
