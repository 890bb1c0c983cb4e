"""Central-difference checks of a hand-written backward against its forward.

For a forward ``y = f(x_1, ..., x_k)`` and a vector-Jacobian product
``vjp(u, x_1, ..., x_k) -> (J_1^T u, ..., J_k^T u)``, the scalar
``L(x) = <u, f(x)>`` has gradient ``J_i^T u`` with respect to ``x_i``.
:func:`gradcheck` draws ``u`` at random and compares that gradient with

    dL/dx_i[j] ~ (L(x_i + eps e_j) - L(x_i - eps e_j)) / (2 eps)

element by element for small arguments, and along random directions ``v``
(``<J_i^T u, v>`` against the difference quotient along ``v``, the JAX
``check_vjp`` idea) for large ones.  Everything is done in float64.

:func:`gradcheck_module` does the same for a whole :class:`stnref.nn.Module`:
its input and every parameter, in one report.
"""

from __future__ import annotations

import copy
import numbers
from dataclasses import dataclass, field

import numpy as np

from ._checks import check_int, float_array
from .nn.module import Module

FD_EPS = 1e-6        # central-difference step; truncation ~eps^2, rounding ~1e-16/eps
FD_ATOL = 1e-6       # absolute tolerance on one gradient entry
FD_RTOL = 1e-5       # relative tolerance on one gradient entry
FULL_MAX = 400       # arguments up to this size get every entry checked
_REAL_KINDS = "fiub"  # dtype kinds accepted in inputs (only float ones can be differentiated)


class GradcheckError(AssertionError):
    """Raised by :meth:`GradcheckResult.raise_if_failed` when a gradient disagrees."""


@dataclass
class ArgReport:
    """Agreement of one argument's analytic gradient with finite differences.

    Attributes
    ----------
    name : str
        Argument name.
    method : str
        ``"full"`` (every entry) or ``"directional"`` (random directions).
    max_abs, max_rel : float
        Largest absolute error, and largest error relative to
        ``max(|numeric|, atol)``.
    index : tuple
        Worst entry (``"full"``) or direction number (``"directional"``).
    analytic, numeric : float
        The two values at the worst entry.
    ok : bool
        Whether every entry is within ``atol + rtol * |numeric|``.
    """

    name: str
    method: str
    max_abs: float
    max_rel: float
    index: tuple
    analytic: float
    numeric: float
    ok: bool


@dataclass
class GradcheckResult:
    """Per-argument reports of :func:`gradcheck`; ``ok`` is their conjunction."""

    args: list = field(default_factory=list)

    @property
    def ok(self):
        return all(a.ok for a in self.args)

    def __str__(self):
        width = max([12] + [len(a.name) for a in self.args])
        lines = [f"{'argument':<{width}} {'method':<12} {'max abs':>10} {'max rel':>10}  result"]
        for a in self.args:
            verdict = "ok" if a.ok else (
                f"FAIL at {a.index}: analytic {a.analytic:.10g}, numeric {a.numeric:.10g}"
            )
            lines.append(f"{a.name:<{width}} {a.method:<12} {a.max_abs:10.3e} {a.max_rel:10.3e}  "
                         f"{verdict}")
        return "\n".join(lines)

    def raise_if_failed(self):
        """Raise :class:`GradcheckError` with the report if any argument failed."""
        if not self.ok:
            raise GradcheckError("gradient check failed\n" + str(self))
        return self


def _as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _check_inputs(fn, vjp, inputs):
    """Validate the callables and return the inputs, float arrays copied to float64.

    Float inputs become float64 copies; integer and bool arrays pass through
    unchanged (non-differentiated inputs such as labels); anything else
    (complex, object, string data, None) is a ``TypeError`` naming ``inputs[i]``.
    """
    for name, f in (("fn", fn), ("vjp", vjp)):
        if not callable(f):
            raise TypeError(f"gradcheck(): expected {name} to be callable, got {type(f).__name__} {f!r}")
    if not isinstance(inputs, (list, tuple)):
        raise TypeError(f"gradcheck(): expected inputs to be a list or tuple of arrays, "
                        f"got {type(inputs).__name__}")
    xs = []
    for i, x in enumerate(inputs):
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError) as err:
            raise TypeError(f"gradcheck(): expected inputs[{i}] to be a real array, "
                            f"got {type(x).__name__}") from err
        if arr.dtype.kind not in _REAL_KINDS:
            raise TypeError(f"gradcheck(): expected inputs[{i}] to be a real (float, int or bool) "
                            f"array, got dtype {arr.dtype}")
        xs.append(np.array(arr, dtype=np.float64) if arr.dtype.kind == "f" else x)
    return xs


def _check_options(fn, eps, atol, rtol, full_max, n_directions, seed):
    """Validate the tolerances and sampling options shared by both checks."""
    for name, value, positive in (("eps", eps, True), ("atol", atol, False), ("rtol", rtol, False)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"{fn}(): expected {name} to be a real number, got {type(value).__name__} "
                            f"{value!r}")
        if not np.isfinite(value) or value < 0 or (positive and value == 0):
            raise ValueError(f"{fn}(): expected finite {name} {'>' if positive else '>='} 0, got {value}")
    check_int(full_max, "full_max", fn, minimum=0)
    check_int(n_directions, "n_directions", fn, minimum=1)
    check_int(seed, "seed", fn, minimum=0)


def _inner(us, ys):
    return sum(float(np.vdot(u, np.asarray(y, dtype=np.float64))) for u, y in zip(us, ys))


def gradcheck(fn, vjp, inputs, *, wrt=None, names=None, eps=FD_EPS, atol=FD_ATOL,
              rtol=FD_RTOL, full_max=FULL_MAX, n_directions=3, seed=0):
    """Check a vector-Jacobian product against central differences of its forward.

    Parameters
    ----------
    fn : callable
        ``fn(*inputs)`` returns an array or a tuple of arrays.
    vjp : callable
        ``vjp(cotangent, *inputs)`` returns one gradient per input (``None`` for
        inputs it does not differentiate); ``cotangent`` has the structure of
        ``fn``'s output (an array, or a tuple of arrays).
    inputs : list or tuple of array_like
        Point of evaluation.  Float arguments are copied to float64; integer
        and bool ones are passed through (they cannot be differentiated);
        complex, object or string data is a ``TypeError``.  The caller's
        arrays are never modified.
    wrt : sequence of int, optional
        Which inputs to check; default every input with a non-``None`` gradient.
    names : sequence of str, optional
        Names for the report; default ``x0, x1, ...``.
    eps : float
        Finite-difference step.
    atol, rtol : float
        Entry ``j`` passes if ``|analytic - numeric| <= atol + rtol * |numeric|``.
    full_max : int
        Arguments with at most this many entries are checked entry by entry;
        larger ones along ``n_directions`` random unit directions.
    n_directions : int
        Directions per large argument.
    seed : int
        Seed of the random cotangent and directions.

    Returns
    -------
    GradcheckResult
        ``.ok``, a printable table, and ``.raise_if_failed()``.

    Examples
    --------
    >>> import numpy as np
    >>> from stnref import gradcheck
    >>> res = gradcheck(lambda x: np.sin(x), lambda u, x: (u * np.cos(x),), [np.linspace(0, 1, 5)])
    >>> res.ok
    True
    """
    xs = _check_inputs(fn, vjp, inputs)
    _check_options("gradcheck", eps, atol, rtol, full_max, n_directions, seed)
    rng = np.random.default_rng(seed)
    names = list(names) if names is not None else [f"x{i}" for i in range(len(xs))]
    ys = _as_tuple(fn(*xs))
    us = tuple(rng.standard_normal(np.shape(y)) for y in ys)
    grads = _as_tuple(vjp(us if len(us) > 1 else us[0], *xs))
    if len(grads) != len(xs):
        raise ValueError(f"gradcheck(): vjp returned {len(grads)} gradients for {len(xs)} inputs")
    if wrt is None:
        wrt = [i for i, g in enumerate(grads) if g is not None]

    def loss(i, x_i):
        args = list(xs)
        args[i] = x_i
        return _inner(us, _as_tuple(fn(*args)))

    result = GradcheckResult()
    for i in wrt:
        x = xs[i]
        if np.asarray(x).dtype.kind != "f":
            raise TypeError(f"gradcheck(): inputs[{i}] ({names[i]}) has dtype {np.asarray(x).dtype}; "
                            f"only float inputs can be differentiated")
        g = np.asarray(grads[i], dtype=np.float64)
        if g.shape != x.shape:
            raise ValueError(
                f"gradcheck(): gradient of {names[i]} has shape {g.shape}, expected {x.shape}"
            )
        if x.size <= full_max:
            method = "full"
            numeric = np.empty(x.size)
            flat = x.reshape(-1)
            for j in range(x.size):
                step = np.zeros(x.size)
                step[j] = eps
                numeric[j] = (loss(i, (flat + step).reshape(x.shape))
                              - loss(i, (flat - step).reshape(x.shape))) / (2 * eps)
            analytic = g.reshape(-1)
            index_of = lambda j: tuple(int(k) for k in np.unravel_index(j, x.shape))  # noqa: E731
        else:
            method = "directional"
            numeric = np.empty(n_directions)
            analytic = np.empty(n_directions)
            for j in range(n_directions):
                v = rng.standard_normal(x.shape)
                v /= np.linalg.norm(v)
                numeric[j] = (loss(i, x + eps * v) - loss(i, x - eps * v)) / (2 * eps)
                analytic[j] = float(np.vdot(g, v))
            index_of = lambda j: (int(j),)  # noqa: E731
        err = np.abs(analytic - numeric)
        # relative to max(|numeric|, atol): a zero gradient does not blow the ratio up
        rel = err / np.maximum(np.abs(numeric), max(atol, np.finfo(np.float64).tiny))
        bad = err > atol + rtol * np.abs(numeric)
        worst = int(np.argmax(np.where(bad, err, -1.0))) if bad.any() else int(np.argmax(err)) if err.size else 0
        result.args.append(ArgReport(
            name=names[i], method=method,
            max_abs=float(err.max()) if err.size else 0.0,
            max_rel=float(rel.max()) if rel.size else 0.0,
            index=index_of(worst) if err.size else (),
            analytic=float(analytic[worst]) if err.size else 0.0,
            numeric=float(numeric[worst]) if err.size else 0.0,
            ok=not bool(bad.any()),
        ))
    return result


def gradcheck_module(module, x, *, eps=FD_EPS, atol=FD_ATOL, rtol=FD_RTOL, full_max=FULL_MAX,
                     n_directions=3, seed=0):
    """Check a module's ``backward`` -- input gradient and every parameter gradient -- in one call.

    :func:`gradcheck` with the module's input and its parameters as the
    arguments: ``forward`` gives the function, one ``forward`` then
    ``backward`` the vector-Jacobian product (``dx`` and ``grads``).  Works for
    every layer and container of :mod:`stnref.nn`, :class:`stnref.SpatialTransformer`,
    :class:`stnref.Parallel` and any user subclass of :class:`stnref.nn.Module`,
    shared modules included (``Sequential(f, f)``, one trunk under two transformers).

    Parameters
    ----------
    module : stnref.nn.Module
        In training mode (in eval mode a forward saves nothing to go back
        through).  Never modified: the check runs on float64 copies, a fresh
        copy of the module as given for every evaluation, so a random layer
        (``Dropout`` and its ``rng``) draws the same mask in each, and the
        module's parameters, gradients, pending forwards and random state stay
        as they were.  The copies hold random gradients before their backward,
        and what the backward adds is checked: one that overwrites them
        (``set_grad`` instead of ``add_grad``) fails, as it would when the
        module is shared or gradients are accumulated.
    x : ndarray (N, ...), float32 or float64
        The input, of the shape ``module.forward`` takes; checked in float64.
    eps, atol, rtol, full_max, n_directions, seed
        As in :func:`gradcheck`: step, tolerances (entry ``j`` passes if
        ``|analytic - numeric| <= atol + rtol |numeric|``), the size up to which
        a tensor is checked entry by entry (larger ones along ``n_directions``
        random directions), and the seed of the cotangent and directions.

    Returns
    -------
    GradcheckResult
        One :class:`ArgReport` (max abs / rel error, worst index, the analytic
        and numeric values there) named ``"input"`` -- left out when the module
        returns no input gradient and says so, like a ``SpatialTransformer``
        with ``input_grad=False`` -- then one per entry of ``module.params`` (a
        shared array once), in that order.

    Raises
    ------
    TypeError
        ``module`` not a Module, ``x`` not a float array, an option of the wrong type.
    ValueError
        ``module`` in eval mode, an option out of range, or a ``backward`` that
        returns None (no module in it has ``input_grad=False``) or a gradient of the
        wrong shape.

    Examples
    --------
    >>> import numpy as np
    >>> from stnref import gradcheck_module
    >>> from stnref.nn import Linear, Sequential, Tanh
    >>> f = Sequential(Linear(3, 3), Tanh())
    >>> gradcheck_module(Sequential(f, f), np.ones((2, 3))).ok     # f used twice
    True
    """
    fn = "gradcheck_module"
    if not isinstance(module, Module):
        raise TypeError(f"{fn}(): expected module to be a stnref.nn.Module, got {type(module).__name__}")
    if not module.training:
        raise ValueError(f"{fn}(): expected module in training mode (in eval mode a forward saves "
                         f"nothing for backward), got one in eval mode; call module.train()")
    x = float_array(x, "x", fn)
    _check_options(fn, eps, atol, rtol, full_max, n_directions, seed)
    base = copy.deepcopy(module)
    base._to_float64()
    base.zero_grad()
    names = list(base.params)

    def fresh(values):
        # a copy of the module as given, holding these parameter values
        twin = copy.deepcopy(base)
        for live, value in zip(twin.params.values(), values):
            np.copyto(live, value)
        return twin

    def forward(x, *values):
        return fresh(values).forward(x)

    # gradients already held: a backward must add to them, so what it overwrites shows
    rng = np.random.default_rng((seed, 1))    # a stream apart from gradcheck's cotangents
    held = [rng.standard_normal(p.shape) for p in base.params.values()]
    # only a module that says so (input_grad False, here or below) may return no input gradient
    input_grad = all(getattr(m, "input_grad", True) is not False for m in base.modules())

    def vjp(u, x, *values):
        twin = fresh(values)
        twin.forward(x)
        for g, h in zip(twin.grads.values(), held):
            g[...] = h
        dx = twin.backward(u)
        if dx is None and input_grad:
            raise ValueError(f"{fn}(): {type(module).__name__}.backward returned None, expected the "
                             f"input gradient of shape {x.shape} (only a module with input_grad=False "
                             f"returns None)")
        return (dx, *(twin.grads[k] - h for k, h in zip(names, held)))

    inputs = [x, *base.params.values()]
    return gradcheck(forward, vjp, inputs, names=["input", *names], eps=eps, atol=atol, rtol=rtol,
                     full_max=full_max, n_directions=n_directions, seed=seed)
