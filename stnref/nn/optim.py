"""SGD and Adam in PyTorch's formulation, and gradient-norm clipping.

Update rules (docs/derivations/layers.md, "Optimisers"), for each parameter
``p`` with gradient ``g`` and effective rate ``lr * lr_scale(name)``:

* SGD:  ``d = g + wd p``;  ``buf = mu buf + d`` (``buf = d`` at step 1, the
  same thing since ``buf`` starts at 0);  ``p -= lr (buf if mu else d)``.
* Adam: ``g = g + wd p``;  ``m = b1 m + (1 - b1) g``;  ``v = b2 v + (1 - b2) g^2``;
  ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.

Parameters are updated in place, so the arrays in ``module.params`` stay
the live ones; a shared array is listed there once, so it takes one step per
``step()``, with the gradient summed over its uses.  A learning-rate schedule
attached with :class:`stnref.nn.LambdaLR` sets ``lr`` for each step.  After
``module.to(dtype)`` the buffers follow their parameters' new dtype.  State dicts are flat ``{str: ndarray}`` (storable in an
``.npz``): ``"step"``, ``"lr"`` and one buffer per parameter, e.g.
``"momentum_buffer.0.weight"`` or ``"exp_avg.loc.0.bias"``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import numpy as np

from .._checks import float_array
from .module import Module, _check_state_keys

# PyTorch's clip_grad_norm_ adds this to the total norm before dividing.
CLIP_EPS = 1e-6


def _check_real(value, name, fn, minimum=0.0, maximum=None, open_max=False):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fn}(): expected {name} to be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not np.isfinite(value) or value < minimum or (
        maximum is not None and (value >= maximum if open_max else value > maximum)
    ):
        upper = "" if maximum is None else (f" and < {maximum}" if open_max else f" and <= {maximum}")
        raise ValueError(f"{fn}(): expected finite {name} >= {minimum}{upper}, got {value}")
    return value


class _Optimizer:
    """Shared bookkeeping: parameter names, lr scales, state dict of named buffers."""

    _buffers = ()  # names of per-parameter buffers, set by subclasses

    def __init__(self, module, lr, lr_scale, fn):
        if not isinstance(module, Module):
            raise TypeError(f"{fn}(): expected module to be a stnref.nn.Module, got {type(module).__name__}")
        self.module = module
        self.lr = _check_real(lr, "lr", fn)
        if lr_scale is not None and not isinstance(lr_scale, Mapping):
            raise TypeError(f"{fn}(): expected lr_scale to be a dict of name prefix -> scale or None, "
                            f"got {type(lr_scale).__name__} {lr_scale!r}")
        lr_scale = {} if lr_scale is None else dict(lr_scale)
        for prefix, scale in lr_scale.items():
            if not isinstance(prefix, str):
                raise TypeError(f"{fn}(): expected lr_scale keys to be str prefixes, got {prefix!r}")
            _check_real(scale, f"lr_scale[{prefix!r}]", fn)
        params = module.params
        for prefix in lr_scale:
            if not any(name.startswith(prefix) for name in params):
                shown = ", ".join(list(params)[:6]) + (", ..." if len(params) > 6 else "")
                raise ValueError(f"{fn}(): lr_scale prefix {prefix!r} matches no parameter of the "
                                 f"module (its parameters: {shown or 'none'})")
        self.lr_scale = lr_scale
        self.step_count = 0
        self._state = {
            buf: {k: np.zeros_like(p) for k, p in params.items()} for buf in self._buffers
        }

    @property
    def lr(self):
        """Base learning rate (settable, e.g. by a schedule); validated on assignment."""
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = _check_real(value, "lr", f"{type(self).__name__}.lr")

    def scale_for(self, name):
        """Learning-rate multiplier of parameter ``name``: the longest matching prefix, else 1."""
        matches = [p for p in self.lr_scale if name.startswith(p)]
        return float(self.lr_scale[max(matches, key=len)]) if matches else 1.0

    def _follow_dtypes(self):
        """Convert buffers to their parameters' dtype (they differ after ``module.to(dtype)``)."""
        params = self.module.params
        for arrays in self._state.values():
            for k, a in arrays.items():
                if a.dtype != params[k].dtype:
                    arrays[k] = a.astype(params[k].dtype)

    def step(self):
        """Update every parameter of the module once from ``module.grads`` (shared ones once too)."""
        self._follow_dtypes()
        self.step_count += 1
        grads = self.module.grads
        for name, p in self.module.params.items():
            g = np.asarray(grads[name], dtype=p.dtype)
            self._update(name, p, g, self.lr * self.scale_for(name))

    def state_dict(self):
        """Flat dict of copies: ``"step"``, ``"lr"`` and ``"<buffer>.<param name>"``."""
        self._follow_dtypes()
        out = {"step": np.array(self.step_count, dtype=np.int64), "lr": np.array(self.lr)}
        for buf, arrays in self._state.items():
            for k, a in arrays.items():
                out[f"{buf}.{k}"] = a.copy()
        return out

    def load_state_dict(self, state):
        """Restore :meth:`state_dict` output exactly (strict on keys and shapes)."""
        fn = f"{type(self).__name__}.load_state_dict"
        expected = self.state_dict()            # (buffers now in their parameters' dtypes)
        _check_state_keys(expected, state, fn, "optimiser")
        for k, ref in expected.items():
            if np.shape(state[k]) != ref.shape:
                raise ValueError(f"{fn}(): expected {k} of shape {ref.shape}, got {np.shape(state[k])}")
        step = np.asarray(state["step"])
        if step.dtype.kind not in "iu" or int(step) < 0:
            raise ValueError(f"{fn}(): expected step to be a non-negative integer, got {step!r}")
        buffers = {k: float_array(np.asarray(state[k]), k, fn) for k in expected if k not in ("step", "lr")}
        self.lr = float(np.asarray(state["lr"]))
        self.step_count = int(step)
        for buf, arrays in self._state.items():
            for k in arrays:
                arrays[k] = buffers[f"{buf}.{k}"].astype(arrays[k].dtype, copy=True)


class SGD(_Optimizer):
    """Stochastic gradient descent with momentum and L2 weight decay (torch.optim.SGD).

    Parameters
    ----------
    module : stnref.nn.Module
    lr : float
        Learning rate (settable: ``opt.lr = ...``).
    momentum : float in [0, 1)
    weight_decay : float >= 0
        Added to the gradient as ``wd * p`` (before momentum), as PyTorch.
    lr_scale : dict[str, float], optional
        Name prefix -> learning-rate multiplier, e.g. ``{"loc.": 0.1}``; the longest
        matching prefix applies, and a prefix that matches no parameter is a ``ValueError``.
    """

    _buffers = ("momentum_buffer",)

    def __init__(self, module, lr, momentum=0.0, weight_decay=0.0, lr_scale=None):
        fn = "SGD"
        self.momentum = _check_real(momentum, "momentum", fn, maximum=1.0, open_max=True)
        self.weight_decay = _check_real(weight_decay, "weight_decay", fn)
        if self.momentum == 0.0:
            self._buffers = ()
        super().__init__(module, lr, lr_scale, fn)

    def _update(self, name, p, g, lr):
        d = g + self.weight_decay * p if self.weight_decay else g
        if self.momentum:
            buf = self._state["momentum_buffer"][name]
            buf *= self.momentum  # buf = momentum * buf + d, in place
            buf += d
            d = buf
        p -= lr * d


class Adam(_Optimizer):
    """Adam with bias correction and L2 weight decay (torch.optim.Adam, amsgrad=False).

    Parameters
    ----------
    module : stnref.nn.Module
    lr : float
    betas : (float, float) in [0, 1)
    eps : float > 0
    weight_decay : float >= 0
        Added to the gradient (coupled L2, not AdamW), as PyTorch's Adam.
    lr_scale : dict[str, float], optional
        Name prefix -> learning-rate multiplier, as in :class:`SGD`.
    """

    _buffers = ("exp_avg", "exp_avg_sq")

    def __init__(self, module, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, lr_scale=None):
        fn = "Adam"
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{fn}(): expected betas to be a pair of floats, got {betas!r}")
        self.betas = tuple(
            _check_real(b, f"betas[{i}]", fn, maximum=1.0, open_max=True) for i, b in enumerate(betas)
        )
        self.eps = _check_real(eps, "eps", fn)
        if self.eps == 0.0:  # a parameter whose gradient is still 0 would become 0 / 0
            raise ValueError(f"{fn}(): expected finite eps > 0, got 0.0")
        self.weight_decay = _check_real(weight_decay, "weight_decay", fn)
        super().__init__(module, lr, lr_scale, fn)

    def _update(self, name, p, g, lr):
        b1, b2 = self.betas
        t = self.step_count
        if self.weight_decay:
            g = g + self.weight_decay * p
        m = self._state["exp_avg"][name]
        v = self._state["exp_avg_sq"][name]
        # m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g g;
        # p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
        # in place, with the roundings of those expressions evaluated left to right
        tmp = (1 - b1) * g
        m *= b1
        m += tmp
        np.multiply(g, 1 - b2, out=tmp)
        tmp *= g
        v *= b2
        v += tmp
        step_size = lr / (1 - b1**t)
        denom = np.sqrt(v, out=tmp)
        denom /= math.sqrt(1 - b2**t)
        denom += self.eps
        np.divide(m, denom, out=denom)
        denom *= step_size
        p -= denom


def _total_norm(grads):
    """``sqrt(sum_i ||g_i||^2)`` over the gradient arrays ``grads`` (a dict's values)."""
    return float(np.sqrt(sum(float(np.vdot(g, g)) for g in grads)))


def clip_grad_norm(module, max_norm):
    """Rescale every gradient so the global L2 norm is at most ``max_norm`` (in place).

    As ``torch.nn.utils.clip_grad_norm_``: with ``total = sqrt(sum_i ||g_i||^2)``,
    each gradient is multiplied by ``min(1, max_norm / (total + 1e-6))`` -- so also,
    slightly, when ``total`` equals ``max_norm`` -- and a NaN ``total`` makes every
    gradient NaN, as in PyTorch.

    Parameters
    ----------
    module : stnref.nn.Module
    max_norm : float >= 0

    Returns
    -------
    float
        The total norm before clipping.
    """
    fn = "clip_grad_norm"
    if not isinstance(module, Module):
        raise TypeError(f"{fn}(): expected module to be a stnref.nn.Module, got {type(module).__name__}")
    max_norm = _check_real(max_norm, "max_norm", fn)
    grads = module.grads
    total = _total_norm(grads.values())
    coef = max_norm / (total + CLIP_EPS)
    if not coef >= 1.0:             # PyTorch's clamp(coef, max=1): NaN multiplies too
        for g in grads.values():
            g *= g.dtype.type(coef)
    return total
