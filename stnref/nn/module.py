"""The layer protocol: :class:`Module`, the containers and the helpers every layer shares.

Every operation is a pair of stateless functions with PyTorch names
(``conv2d`` / ``conv2d_backward``, ...); the backward takes the forward's
inputs, not an opaque cache.  The classes on top (``Linear``, ``Conv2d``,
...) hold parameters, keep the inputs of their forwards until the matching
backward, call those functions and add parameter gradients to ``grads``.
Derivations: docs/derivations/layers.md ("The layer protocol").

Layer protocol (shared with :mod:`stnref.transformer`)
------------------------------------------------------
* ``Module.params`` / ``Module.grads``: dicts from dotted names (``"0.weight"``,
  ``"loc.0.bias"``) to the live arrays, one entry per distinct array: a module
  registered twice (weight sharing) appears once, under its first name, as
  PyTorch's ``named_parameters()``; ``state_dict()`` keeps every name.
  Optimisers update ``params`` in place, each array once per step.
* ``forward(x)`` in training mode pushes what its backward needs on the
  module's stack of pending forwards (:meth:`Module.save_for_backward`);
  ``backward(dy)`` pops it (:meth:`Module.pop_saved`), after checking ``dy``
  against that forward's output shape.  Last in, first out, like an autograd
  tape: the backwards run in the reverse order of the forwards, so a module
  used several times in one forward goes back through every use.  Containers
  call their children's backwards in the reverse order of their forwards.
  In eval mode a forward saves nothing, and a backward is a ``ValueError``.
  A forward that raises leaves nothing pending, in the module or below it
  (:meth:`Module.__call__` and the containers undo what it saved), so a later
  backward cannot go back through a failed forward's inputs.
* ``backward(dy)`` adds the parameter gradients to ``grads``
  (:meth:`Module.add_grad`, PyTorch's accumulation) and returns ``dx``;
  :meth:`Module.zero_grad` resets them and drops pending forwards.
* Parameters are registered with :meth:`Module.register_parameter`; child
  modules with :meth:`Module.add_module` or plain attribute assignment
  (``self.loc = Sequential(...)``).  A registered parameter is readable as
  an attribute (``layer.weight``).  :meth:`Module.set_grad` replaces a
  gradient (PyTorch's ``p.grad = g``), for gradients computed elsewhere.
* dtype: outputs follow the input's dtype (float32 in, float32 out).  A layer
  with parameters refuses an input of another float dtype than theirs (a
  ``TypeError``, as PyTorch); :meth:`Module.to` converts a whole model.
* Buffers (:meth:`Module.register_buffer`): state that is not a parameter
  (BatchNorm's running statistics), in ``state_dict()`` after each module's
  parameters, as PyTorch's.
"""

from __future__ import annotations

import collections
import contextlib
import math
from collections.abc import Mapping

import numpy as np

from .._checks import check_bool, check_int, check_ndim, float_array

# Forwards a module keeps for their backwards, at most: a module used more often in one
# forward than this (deeper than the paper's designs, which use one at most four times) has
# its oldest uses dropped, and their backwards are a ValueError; a loop of training-mode
# forwards without backwards (looking at outputs) holds at most this many inputs per layer.
MAX_PENDING = 32

# PyTorch's default init: kaiming_uniform_(a=sqrt(5)) gives the bound
# gain * sqrt(3 / fan_in) with gain = sqrt(2 / (1 + a^2)) = sqrt(1/3), i.e.
# 1 / sqrt(fan_in); the bias uses the same bound.
_KAIMING_A = math.sqrt(5.0)


def _init_bound(fan_in):
    gain = math.sqrt(2.0 / (1.0 + _KAIMING_A**2))
    return gain * math.sqrt(3.0 / fan_in)


def _check_dtype(dtype, fn):
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{fn}(): expected dtype float32 or float64, got {dtype!r}") from err
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"{fn}(): expected dtype float32 or float64, got {dt}")
    return dt


def _check_input_dtype(x, param, fn):
    """``x`` as a float array of ``param``'s dtype; another float dtype is a ``TypeError``
    (PyTorch refuses the mix too), naming both ways to make them agree."""
    x = float_array(x, "x", fn)
    if x.dtype != param.dtype:
        raise TypeError(f"{fn}(): expected x of dtype {param.dtype}, the dtype of the layer's "
                        f"parameters, got {x.dtype}; convert the input (x.astype(np.{param.dtype})) "
                        f"or the model (model.to(np.{x.dtype}))")
    return x


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

    Subclasses register parameters and children in ``__init__``, and write
    ``forward`` (ending in :meth:`save_for_backward`) and ``backward``
    (starting with :meth:`pop_saved`, adding gradients with :meth:`add_grad`,
    calling children's backwards in the reverse order of their forwards).

    Attributes
    ----------
    training : bool
        Set recursively by :meth:`train` / :meth:`eval`.  Forwards in training
        mode save what their backward needs; forwards in eval mode save nothing.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_grads", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_pending", collections.deque(maxlen=MAX_PENDING))
        object.__setattr__(self, "_dropped", 0)
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

    def register_buffer(self, name, array):
        """Register a copy of ``array`` as buffer ``name``: state that is not a parameter.

        PyTorch's buffers (BatchNorm's running statistics): in :meth:`state_dict`
        after this module's parameters, converted by :meth:`to` when floating,
        never seen by optimisers.  Readable as an attribute; assigning to that
        attribute registers a new value.
        """
        fn = f"{type(self).__name__}.register_buffer"
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"{fn}(): expected a non-empty name without '.', got {name!r}")
        if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
            got = f"array of dtype {array.dtype}" if isinstance(array, np.ndarray) else type(array).__name__
            raise TypeError(f"{fn}(): expected {name} to be a float or integer array, got {got}")
        self._buffers[name] = np.array(array)

    def add_module(self, name, module):
        """Register ``module`` as child ``name`` (names of its params get ``name.``).

        The same module may be registered several times (weight sharing), but
        never inside itself.
        """
        fn = f"{type(self).__name__}.add_module"
        if not isinstance(module, Module):
            raise TypeError(f"{fn}(): expected a Module, got {type(module).__name__}")
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"{fn}(): expected a non-empty name without '.', got {name!r}")
        if module is self or module._contains(self):
            raise ValueError(f"{fn}(): cannot register {type(module).__name__} {name!r} inside itself")
        self._modules[name] = module

    def _contains(self, other):
        return any(child is other or child._contains(other) for child in self._modules.values())

    def __setattr__(self, name, value):
        if isinstance(value, Module):
            self.add_module(name, value)
        elif name in self.__dict__.get("_parameters", {}):
            self.register_parameter(name, value)
        elif name in self.__dict__.get("_buffers", {}):
            self.register_buffer(name, value)
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # Only called when normal lookup fails: parameters and children.
        d = self.__dict__
        if name in d.get("_parameters", {}):
            return d["_parameters"][name]
        if name in d.get("_buffers", {}):
            return d["_buffers"][name]
        if name in d.get("_modules", {}):
            return d["_modules"][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def add_grad(self, name, grad):
        """Add ``grad`` to the gradient of this module's own parameter ``name``, in place.

        What a ``backward`` calls: gradients accumulate over backwards until
        :meth:`zero_grad`, as PyTorch's; the sum keeps the parameter's dtype.
        """
        g = self._checked_grad(name, grad, "add_grad")
        self._grads[name] += g

    def set_grad(self, name, grad):
        """Replace the gradient of this module's own parameter ``name`` by ``grad``'s values.

        PyTorch's ``p.grad = g``: for gradients computed elsewhere (tests,
        optimiser experiments).  A ``backward`` uses :meth:`add_grad` instead, so
        that a module used twice gets the gradient of both uses.
        """
        g = self._checked_grad(name, grad, "set_grad")
        self._grads[name][...] = g

    def _checked_grad(self, name, grad, method):
        fn = f"{type(self).__name__}.{method}"
        if name not in self._parameters:
            raise ValueError(f"{fn}(): expected one of the parameters {list(self._parameters)}, "
                             f"got {name!r}")
        g = float_array(grad, "grad", fn)
        if g.shape != self._parameters[name].shape:
            raise ValueError(f"{fn}(): expected gradient of {name} with shape "
                             f"{self._parameters[name].shape}, got {g.shape}")
        return g

    def children(self):
        """``(name, module)`` pairs of the direct children, in registration order."""
        return list(self._modules.items())

    def modules(self):
        """This module and every module below it, each once, parents first (a list)."""
        found = {}
        stack = [self]
        while stack:
            m = stack.pop()
            if id(m) not in found:
                found[id(m)] = m
                stack.extend(reversed(m._modules.values()))
        return list(found.values())

    # -- views --------------------------------------------------------------
    def _registrations(self, prefix="", buffers=False):
        """``(dotted name, owner, own name)`` of every parameter along every path to it
        (with ``buffers``, each module's buffers follow its parameters: a state dict's order).

        A module registered twice yields its parameters twice (own first, then children).
        """
        for name in self._parameters:
            yield prefix + name, self, name
        if buffers:
            for name in self._buffers:
                yield prefix + name, self, name
        for cname, child in self._modules.items():
            yield from child._registrations(f"{prefix}{cname}.", buffers)

    def _distinct(self):
        """:meth:`_registrations` without repeats of an array: the first name of each."""
        seen = set()
        for dotted, owner, name in self._registrations():
            if id(owner._parameters[name]) not in seen:
                seen.add(id(owner._parameters[name]))
                yield dotted, owner, name

    @property
    def params(self):
        """dict[str, ndarray]: dotted names -> live parameter arrays, each array once.

        Own parameters first, then the children's; a shared array is listed
        under its first name (PyTorch's ``named_parameters()``).
        """
        return {dotted: owner._parameters[name] for dotted, owner, name in self._distinct()}

    @property
    def grads(self):
        """dict[str, ndarray]: same keys as :attr:`params`; live arrays that every
        ``backward`` adds to, until :meth:`zero_grad`."""
        return {dotted: owner._grads[name] for dotted, owner, name in self._distinct()}

    def zero_grad(self):
        """Set every gradient to zero and drop the forwards still waiting for a backward (recursively)."""
        for g in self._grads.values():
            g.fill(0)
        self._pending.clear()
        self._dropped = 0
        for child in self._modules.values():
            child.zero_grad()

    # -- state --------------------------------------------------------------
    def num_parameters(self):
        """Number of scalar parameters, each shared array counted once (``sum(p.size)`` over :attr:`params`).

        Returns
        -------
        int
        """
        return int(sum(p.size for p in self.params.values()))

    @staticmethod
    def _state(owner, name):
        return owner._parameters[name] if name in owner._parameters else owner._buffers[name]

    def state_dict(self):
        """Copies of every parameter and buffer under PyTorch-style dotted names (a shared one under each).

        Each module's parameters, then its buffers, then its children's: PyTorch's order.
        """
        return {dotted: self._state(owner, name).copy()
                for dotted, owner, name in self._registrations(buffers=True)}

    def load_state_dict(self, state):
        """Copy ``state`` into the parameters, in place (optimisers keep their references).

        Strict: a missing key, an unexpected key or a shape mismatch is a
        ``ValueError`` naming the key, and so are two different values for
        the names of one shared parameter.  Values are cast to each
        parameter's dtype.
        """
        fn = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state, Mapping):
            raise TypeError(f"{fn}(): expected state to be a dict of arrays, got {type(state).__name__}")
        names = {dotted: self._state(owner, name)
                 for dotted, owner, name in self._registrations(buffers=True)}
        _check_state_keys(names, state, fn, "module")
        values, first = {}, {}
        for k, p in names.items():
            v = np.asarray(state[k])
            if p.dtype.kind == "f":
                v = float_array(v, k, fn)
            elif v.dtype.kind not in "iu":
                raise TypeError(f"{fn}(): expected {k} to be an integer array, got dtype {v.dtype}")
            if v.shape != p.shape:
                raise ValueError(f"{fn}(): expected {k} of shape {p.shape}, got {v.shape}")
            other = first.setdefault(id(p), k)
            if other != k and not np.array_equal(v, values[other], equal_nan=True):
                raise ValueError(f"{fn}(): {other} and {k} name one shared parameter but have "
                                 f"different values")
            values[k] = v
        # Validate everything before writing anything: a failed load changes nothing.
        for k, p in names.items():
            np.copyto(p, values[k], casting="same_kind" if p.dtype.kind == "f" else "unsafe")

    def to(self, dtype):
        """Convert every parameter, gradient and floating buffer to ``dtype``, recursively; returns self.

        PyTorch's ``module.to(dtype)``.  The arrays are replaced (``module.params`` then
        holds the new ones); an optimiser over the module converts its own state to
        its parameters' dtype before its next use, so training continues in ``dtype``.
        Forwards still waiting for a backward are dropped (their inputs have the old dtype).

        Parameters
        ----------
        dtype : float32 or float64

        Returns
        -------
        Module
            ``self``.

        Examples
        --------
        >>> from stnref.nn import Linear
        >>> Linear(3, 2).to(np.float32).weight.dtype
        dtype('float32')
        """
        dt = _check_dtype(dtype, f"{type(self).__name__}.to")
        for m in self.modules():
            for name, p in m._parameters.items():
                m._parameters[name] = p.astype(dt)
                m._grads[name] = m._grads[name].astype(dt)
            for name, b in m._buffers.items():
                if b.dtype.kind == "f":
                    m._buffers[name] = b.astype(dt)
            m._pending.clear()
            m._dropped = 0
        return self

    def _to_float64(self):
        """:meth:`to` float64 (what :func:`stnref.gradcheck_module` checks in)."""
        self.to(np.float64)

    # -- modes --------------------------------------------------------------
    def train(self, mode=True):
        """Set training mode recursively; returns self."""
        mode = check_bool(mode, "mode", f"{type(self).__name__}.train")
        object.__setattr__(self, "training", mode)
        for child in self._modules.values():
            child.train(mode)
        return self

    def eval(self):
        """Set evaluation mode recursively (forwards then save nothing); returns self."""
        return self.train(False)

    # -- computation --------------------------------------------------------
    def forward(self, x):
        """Compute the output; in training mode, save what :meth:`backward` needs."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, dy):
        """Add the parameter gradients and return ``d loss / d x``, for the last pending forward."""
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def __call__(self, x):
        with self._undone_on_error():
            return self.forward(x)

    @contextlib.contextmanager
    def _undone_on_error(self):
        """If the block raises, restore the pending forwards, here and below, as they were.

        Each module's stack (at most ``MAX_PENDING`` references) and dropped count are
        kept, so a forward evicted by a save of the failed block comes back too.
        """
        marks = [(m, tuple(m._pending), m._dropped) for m in self.modules()]
        try:
            yield
        except BaseException:
            for m, pending, dropped in marks:
                m._pending.clear()
                m._pending.extend(pending)
                m._dropped = dropped
            raise

    def save_for_backward(self, y, *values):
        """Keep ``values`` for the backward of the forward whose output is ``y``; return ``y``.

        Call it at the end of ``forward``.  In training mode ``y``'s shape and
        ``values`` are pushed on this module's stack of pending forwards (at
        most ``MAX_PENDING``: beyond, the oldest is dropped); in eval mode
        nothing is kept.
        """
        if self.training:
            if len(self._pending) == self._pending.maxlen:
                self._dropped += 1
            self._pending.append((np.shape(y), values))
        return y

    def pop_saved(self, dy, name="dy"):
        """``(dy, values)`` for the backward of the last pending forward, which it removes.

        ``dy`` comes back as a float array, checked to have the shape of that
        forward's output; ``values`` is the tuple given to :meth:`save_for_backward`.
        A ``ValueError`` naming the module if nothing is pending (no forward, a
        forward in eval mode, or every forward already gone back through) or
        if the shapes differ.
        """
        fn = f"{type(self).__name__}.backward"
        if not self._pending:
            why = (f"{self._dropped} earlier forwards were dropped, more than {MAX_PENDING} having "
                   f"waited for a backward" if self._dropped else
                   "each backward needs its own forward in training mode (eval mode saves nothing)")
            raise ValueError(f"{fn}(): no pending forward to go back through: {why}")
        shape, values = self._pending[-1]
        dy = float_array(dy, name, fn)
        if dy.shape != shape:
            raise ValueError(f"{fn}(): expected {name} of shape {shape}, the output of the last "
                             f"pending forward, got {dy.shape}")
        self._pending.pop()
        return dy, values


class Flatten(Module):
    """``(N, d1, d2, ...) -> (N, d1*d2*...)`` (torch.nn.Flatten with start_dim=1)."""

    def forward(self, x):
        x = float_array(x, "x", "Flatten.forward")
        if x.ndim < 2:
            raise ValueError(
                f"Flatten.forward(): expected x of shape (N, ...) with at least 2 axes, got shape {x.shape}"
            )
        y = x.reshape(x.shape[0], math.prod(x.shape[1:]))   # explicit: N may be 0
        return self.save_for_backward(y, x.shape)

    # Backward of a reshape is the inverse reshape.
    def backward(self, dy):
        dy, (shape,) = self.pop_saved(dy)
        return dy.reshape(shape)


class Identity(Module):
    """``y = x``, any shape (torch.nn.Identity): a placeholder where a layer is optional."""

    def forward(self, x):
        x = float_array(x, "x", "Identity.forward")
        return self.save_for_backward(x)

    # Backward of the identity: dx = dy.
    def backward(self, dy):
        dy, _ = self.pop_saved(dy)
        return dy


class _Container(Module):
    """Children named ``"0", "1", ...`` in order: indexable, ``len``, iterable."""

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            self.add_module(str(i), m)

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, index):
        mods = list(self._modules.values())
        fn = f"{type(self).__name__}.__getitem__"
        index = check_int(index, "index", fn)
        if not -len(mods) <= index < len(mods):
            raise IndexError(f"{fn}(): index {index} out of range for length {len(mods)}")
        return mods[index]

    def __iter__(self):
        return iter(self._modules.values())


class Sequential(_Container):
    """Chain of modules named ``"0", "1", ...`` (torch.nn.Sequential).

    Indexable (``seq[0]``, ``seq[-1]``), ``len(seq)``, iterable.  A module may
    appear more than once (``Sequential(f, f)`` applies ``f`` twice, with one
    set of parameters whose gradients sum over both uses).
    """

    def forward(self, x):
        with self._undone_on_error():
            for m in self._modules.values():
                x = m.forward(x)
        return self.save_for_backward(x)

    # Chain rule: back through the children in reverse order.
    def backward(self, dy):
        dy, _ = self.pop_saved(dy)
        for m in reversed(list(self._modules.values())):
            dy = m.backward(dy)
        return dy
