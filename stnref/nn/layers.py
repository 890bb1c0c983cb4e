"""Layers with hand-written backwards: the pieces of the paper's classifiers.

Every operation is a pair of stateless functions with PyTorch names
(``conv2d`` / ``conv2d_backward``, ...); the backward takes the forward's
inputs, not an opaque cache.  The classes on top (``Linear``, ``Conv2d``,
...) hold parameters and the last forward's input, call those functions and
put parameter gradients in ``grads``.  Derivations: docs/derivations/layers.md.

Layer protocol (shared with :mod:`stnref.transformer`)
------------------------------------------------------
* ``Module.params`` / ``Module.grads``: dicts from dotted names (``"0.weight"``,
  ``"loc.0.bias"``) to the live arrays.  Optimisers update ``params`` in place.
* ``forward(x)`` stores what ``backward`` needs (the last call only);
  ``backward(dy)`` overwrites the gradients and returns ``dx``.
* Parameters are registered with :meth:`Module.register_parameter`; child
  modules with :meth:`Module.add_module` or plain attribute assignment
  (``self.loc = Sequential(...)``).  A registered parameter is readable as
  an attribute (``layer.weight``).  Subclasses store gradients with
  :meth:`Module.set_grad`.
* dtype: outputs follow the input's dtype (float32 in, float32 out);
  parameters keep the dtype they were created with, and so do their grads.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import scipy.fft

from .._checks import check_bool, check_budget, check_int, check_ndim, float_array

# PyTorch's default init: kaiming_uniform_(a=sqrt(5)) gives the bound
# gain * sqrt(3 / fan_in) with gain = sqrt(2 / (1 + a^2)) = sqrt(1/3), i.e.
# 1 / sqrt(fan_in); the bias uses the same bound.
_KAIMING_A = math.sqrt(5.0)


def _init_bound(fan_in):
    gain = math.sqrt(2.0 / (1.0 + _KAIMING_A**2))
    return gain * math.sqrt(3.0 / fan_in)


def _check_rng(rng, fn):
    if rng is None:
        return np.random.default_rng(0)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"{fn}(): expected rng to be a numpy.random.Generator or None, "
            f"got {type(rng).__name__}"
        )
    return rng


def _check_dtype(dtype, fn):
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{fn}(): expected dtype float32 or float64, got {dtype!r}") from err
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"{fn}(): expected dtype float32 or float64, got {dt}")
    return dt


def _pair(value, name, fn, minimum):
    """An int or a pair of ints -> a tuple of two Python ints >= minimum."""
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        v = check_int(value, name, fn, minimum=minimum)
        return (v, v)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return tuple(check_int(v, name, fn, minimum=minimum) for v in value)
    raise TypeError(f"{fn}(): expected {name} to be an int or a pair of ints, got {value!r}")


def _uniform(rng, bound, shape, dtype):
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def _check_weight(weight, fn, layout):
    """``weight`` as a float array with ``len(layout)`` axes (``layout`` names them)."""
    weight = float_array(weight, "weight", fn)
    check_ndim(weight, "weight", fn, (len(layout),), f"({', '.join(layout)})")
    return weight


def _check_bias(bias, out, fn):
    """``None``, or ``bias`` as a float array of shape ``(out,)`` (out = the weight's first axis)."""
    if bias is None:
        return None
    bias = float_array(bias, "bias", fn)
    if bias.shape != (out,):
        raise ValueError(f"{fn}(): expected bias of shape ({out},) to match weight, got {bias.shape}")
    return bias


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


def _check_grad_shape(dy, expected, fn):
    if dy.shape != tuple(expected):
        raise ValueError(
            f"{fn}(): expected dy of shape {tuple(expected)} (the forward's output), got {dy.shape}"
        )


# --------------------------------------------------------------------------
# Module protocol
# --------------------------------------------------------------------------


def _check_state_keys(expected, state, fn, owner):
    """Strict key match of a state dict: ValueError listing missing and unexpected keys."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(
            f"{fn}(): state dict does not match the {owner}: missing keys {missing}, "
            f"unexpected keys {unexpected}"
        )


class Module:
    """Base of every layer and container.

    Attributes
    ----------
    training : bool
        Set recursively by :meth:`train` / :meth:`eval`.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_grads", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    # -- registration -------------------------------------------------------
    def register_parameter(self, name, array):
        """Register a copy of ``array`` (float32/float64) as parameter ``name``.

        The copy is the live array that optimisers update in place (the
        caller's array is never touched).  Its gradient starts at zeros.
        Registering an existing name replaces that parameter.
        """
        arr = np.array(float_array(array, name, f"{type(self).__name__}.register_parameter"))
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(
                f"{type(self).__name__}.register_parameter(): expected a non-empty name "
                f"without '.', got {name!r}"
            )
        self._parameters[name] = arr
        self._grads[name] = np.zeros_like(arr)

    def add_module(self, name, module):
        """Register ``module`` as child ``name`` (names of its params get ``name.``)."""
        if not isinstance(module, Module):
            raise TypeError(
                f"{type(self).__name__}.add_module(): expected a Module, got {type(module).__name__}"
            )
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(
                f"{type(self).__name__}.add_module(): expected a non-empty name without '.', got {name!r}"
            )
        self._modules[name] = module

    def __setattr__(self, name, value):
        if isinstance(value, Module):
            self.add_module(name, value)
        elif name in self.__dict__.get("_parameters", {}):
            self.register_parameter(name, value)
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # Only called when normal lookup fails: parameters and children.
        d = self.__dict__
        if name in d.get("_parameters", {}):
            return d["_parameters"][name]
        if name in d.get("_modules", {}):
            return d["_modules"][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def set_grad(self, name, grad):
        """Store a copy of the gradient of this module's own parameter ``name``, in its dtype."""
        p = self._parameters[name]
        g = np.asarray(grad)
        if g.shape != p.shape:
            raise ValueError(
                f"{type(self).__name__}.set_grad(): expected gradient of {name} with shape "
                f"{p.shape}, got {g.shape}"
            )
        # A copy: clip_grad_norm rescales gradients in place.
        self._grads[name] = np.array(g, dtype=p.dtype)

    def children(self):
        """``(name, module)`` pairs of the direct children, in registration order."""
        return list(self._modules.items())

    # -- views --------------------------------------------------------------
    def _named(self, attr):
        out = dict(getattr(self, attr))
        for cname, child in self._modules.items():
            for k, v in child._named(attr).items():
                out[f"{cname}.{k}"] = v
        return out

    @property
    def params(self):
        """dict[str, ndarray]: dotted names -> live parameter arrays (own first, then children)."""
        return self._named("_parameters")

    @property
    def grads(self):
        """dict[str, ndarray]: same keys as :attr:`params`; overwritten by each ``backward``."""
        return self._named("_grads")

    def zero_grad(self):
        """Set every gradient to zeros (recursively)."""
        for name, p in self._parameters.items():
            self._grads[name] = np.zeros_like(p)
        for child in self._modules.values():
            child.zero_grad()

    # -- state --------------------------------------------------------------
    def state_dict(self):
        """Copies of every parameter under PyTorch-style dotted names."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state):
        """Copy ``state`` into the parameters, in place (optimisers keep their references).

        Strict: a missing key, an unexpected key or a shape mismatch is a
        ``ValueError`` naming the key.  Values are cast to each parameter's dtype.
        """
        fn = f"{type(self).__name__}.load_state_dict"
        params = self.params
        _check_state_keys(params, state, fn, "module")
        values = {}
        for k, p in params.items():
            v = float_array(np.asarray(state[k]), k, fn)
            if v.shape != p.shape:
                raise ValueError(
                    f"{fn}(): expected {k} of shape {p.shape}, got {v.shape}"
                )
            values[k] = v
        # Validate everything before writing anything: a failed load changes nothing.
        for k, p in params.items():
            np.copyto(p, values[k], casting="same_kind")

    # -- modes --------------------------------------------------------------
    def train(self, mode=True):
        """Set training mode recursively; returns self."""
        mode = check_bool(mode, "mode", f"{type(self).__name__}.train")
        object.__setattr__(self, "training", mode)
        for child in self._modules.values():
            child.train(mode)
        return self

    def eval(self):
        """Set evaluation mode recursively; returns self."""
        return self.train(False)

    # -- computation --------------------------------------------------------
    def forward(self, x):
        """Compute the output and store what :meth:`backward` needs (last call only)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, dy):
        """Overwrite the parameter gradients and return ``d loss / d x`` for the last forward."""
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def __call__(self, x):
        return self.forward(x)

    def _saved(self, fn):
        x = self.__dict__.get("_x")
        if x is None:
            raise RuntimeError(f"{fn}(): backward called before forward")
        return x


# --------------------------------------------------------------------------
# Linear
# --------------------------------------------------------------------------


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
        Source of the initial weights; ``None`` means ``default_rng(0)``.
    dtype : float32 or float64
        dtype of the parameters.

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
        rng = _check_rng(rng, fn)
        dt = _check_dtype(dtype, fn)
        check_budget((self.out_features, self.in_features), fn, "weight")
        bound = _init_bound(self.in_features)
        self.register_parameter("weight", _uniform(rng, bound, (self.out_features, self.in_features), dt))
        if self.has_bias:
            self.register_parameter("bias", _uniform(rng, bound, (self.out_features,), dt))
        self._x = None

    def forward(self, x):
        """``(N, in_features) -> (N, out_features)``."""
        y = linear(x, self.weight, self.bias if self.has_bias else None)
        self._x = x
        return y

    def backward(self, dy):
        dx, dW, db = linear_backward(dy, self._saved("Linear.backward"), self.weight, self.has_bias)
        self.set_grad("weight", dW)
        if self.has_bias:
            self.set_grad("bias", db)
        return dx


# --------------------------------------------------------------------------
# Elementwise: ReLU, Tanh
# --------------------------------------------------------------------------


def relu(x):
    """``max(x, 0)`` elementwise, dtype of ``x``; NaN and ``-0.0`` pass through, as PyTorch."""
    x = float_array(x, "x", "relu")
    return np.where(x < 0, x.dtype.type(0), x)


# Backward of y = max(x, 0): dx = 0 where x <= 0, else dy -- 0 at x == 0 and dy at NaN,
# as PyTorch's threshold_backward.
def relu_backward(dy, x):
    """Gradient of :func:`relu` with respect to ``x``."""
    x = float_array(x, "x", "relu_backward")
    dy = float_array(dy, "dy", "relu_backward")
    _check_grad_shape(dy, x.shape, "relu_backward")
    return np.where(x <= 0, 0, dy).astype(x.dtype, copy=False)


def tanh(x):
    """Hyperbolic tangent elementwise, dtype of ``x``."""
    return np.tanh(float_array(x, "x", "tanh"))


# Backward of y = tanh(x): dx = dy (1 - tanh(x)^2).
def tanh_backward(dy, x):
    """Gradient of :func:`tanh` with respect to ``x``."""
    x = float_array(x, "x", "tanh_backward")
    dy = float_array(dy, "dy", "tanh_backward")
    _check_grad_shape(dy, x.shape, "tanh_backward")
    y = np.tanh(x)
    return (dy * (1 - y * y)).astype(x.dtype, copy=False)


class _Elementwise(Module):
    """A parameter-free layer ``y = f(x)`` applied entry by entry; any shape."""

    def __init__(self):
        super().__init__()
        self._x = None

    def forward(self, x):
        y = self._forward(x)
        self._x = x
        return y

    def backward(self, dy):
        return self._backward(dy, self._saved(f"{type(self).__name__}.backward"))


class ReLU(_Elementwise):
    """Rectified linear unit (torch.nn.ReLU); any shape; gradient 0 at 0."""

    _forward = staticmethod(relu)
    _backward = staticmethod(relu_backward)


class Tanh(_Elementwise):
    """Hyperbolic tangent (torch.nn.Tanh); any shape."""

    _forward = staticmethod(tanh)
    _backward = staticmethod(tanh_backward)


# --------------------------------------------------------------------------
# Flatten, Dropout, Sequential
# --------------------------------------------------------------------------


class Flatten(Module):
    """``(N, d1, d2, ...) -> (N, d1*d2*...)`` (torch.nn.Flatten with start_dim=1)."""

    def __init__(self):
        super().__init__()
        self._x = None

    def forward(self, x):
        x = float_array(x, "x", "Flatten.forward")
        if x.ndim < 2:
            raise ValueError(
                f"Flatten.forward(): expected x of shape (N, ...) with at least 2 axes, got shape {x.shape}"
            )
        self._x = x
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))   # explicit: N may be 0

    # Backward of a reshape is the inverse reshape.
    def backward(self, dy):
        x = self._saved("Flatten.backward")
        dy = float_array(dy, "dy", "Flatten.backward")
        _check_grad_shape(dy, (x.shape[0], math.prod(x.shape[1:])), "Flatten.backward")
        return dy.reshape(x.shape)


class Dropout(Module):
    """Inverted dropout (torch.nn.Dropout): zero each entry with probability ``p``.

    In training, ``y = x * mask / (1 - p)`` with ``mask ~ Bernoulli(1 - p)``
    drawn from ``rng``; in evaluation the identity.  ``p = 1`` gives zeros.

    Parameters
    ----------
    p : float in [0, 1]
    rng : numpy.random.Generator, optional
        ``None`` means ``default_rng(0)``; the same seed gives the same masks.
    """

    def __init__(self, p=0.5, rng=None):
        super().__init__()
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real):
            raise TypeError(f"Dropout(): expected p to be a float, got {type(p).__name__} {p!r}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout(): expected 0 <= p <= 1, got {p}")
        self.p = float(p)
        self.rng = _check_rng(rng, "Dropout")
        self._scale_mask = None
        self._x = None

    def forward(self, x):
        x = float_array(x, "x", "Dropout.forward")
        self._x = x
        if not self.training or self.p == 0.0:
            self._scale_mask = None
            return x
        keep = self.rng.random(x.shape) >= self.p
        scale = 0.0 if self.p == 1.0 else 1.0 / (1.0 - self.p)
        self._scale_mask = np.where(keep, scale, 0.0).astype(x.dtype)
        return x * self._scale_mask

    # Backward of y = x * m / (1 - p): dx = dy * m / (1 - p) (same mask).
    def backward(self, dy):
        x = self._saved("Dropout.backward")
        dy = float_array(dy, "dy", "Dropout.backward")
        _check_grad_shape(dy, x.shape, "Dropout.backward")
        if self._scale_mask is None:
            return dy
        return dy * self._scale_mask


class Sequential(Module):
    """Chain of modules named ``"0", "1", ...`` (torch.nn.Sequential).

    Indexable (``seq[0]``, ``seq[-1]``), ``len(seq)``, iterable.
    """

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            self.add_module(str(i), m)

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, index):
        mods = list(self._modules.values())
        index = check_int(index, "index", "Sequential.__getitem__")
        if not -len(mods) <= index < len(mods):
            raise IndexError(f"Sequential.__getitem__(): index {index} out of range for length {len(mods)}")
        return mods[index]

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        for m in self._modules.values():
            x = m.forward(x)
        return x

    # Chain rule: back through the children in reverse order.
    def backward(self, dy):
        for m in reversed(list(self._modules.values())):
            dy = m.backward(dy)
        return dy


# --------------------------------------------------------------------------
# Convolution and pooling: shared window helpers
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# Conv2d
# --------------------------------------------------------------------------


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
        ``None`` means ``default_rng(0)``.
    dtype : float32 or float64
        dtype of the parameters.

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
        rng = _check_rng(rng, fn)
        dt = _check_dtype(dtype, fn)
        bound = _init_bound(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
        shape = (self.out_channels, self.in_channels) + self.kernel_size
        check_budget(shape, fn, "weight")
        self.register_parameter("weight", _uniform(rng, bound, shape, dt))
        if self.has_bias:
            self.register_parameter("bias", _uniform(rng, bound, (self.out_channels,), dt))
        self._x = None

    def forward(self, x):
        """``(N, C_in, H, W) -> (N, C_out, H_out, W_out)``."""
        y = conv2d(x, self.weight, self.bias if self.has_bias else None, self.stride, self.padding)
        self._x = x
        return y

    def backward(self, dy):
        dx, dW, db = conv2d_backward(dy, self._saved("Conv2d.backward"), self.weight,
                                     self.stride, self.padding, self.has_bias)
        self.set_grad("weight", dW)
        if self.has_bias:
            self.set_grad("bias", db)
        return dx


# --------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------


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
        self._x = None

    def forward(self, x):
        """``(N, C, H, W) -> (N, C, H_out, W_out)``."""
        y = self._forward(x, self.kernel_size, self.stride)
        self._x = x
        return y

    def backward(self, dy):
        x = self._saved(f"{type(self).__name__}.backward")
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
