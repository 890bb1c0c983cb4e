"""The layer protocol: :class:`Module`, the containers and the helpers every layer shares.

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

import numpy as np

from .._checks import check_bool, check_int, check_ndim, float_array

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


def _check_grad_shape(dy, expected, fn):
    if dy.shape != tuple(expected):
        raise ValueError(
            f"{fn}(): expected dy of shape {tuple(expected)} (the forward's output), got {dy.shape}"
        )




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
