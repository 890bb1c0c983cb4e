"""Finite-difference checks of a hand-written backward against its forward.

For a forward ``y = f(x_1, ..., x_k)`` and a vector-Jacobian product
``vjp(u, x_1, ..., x_k) -> (J_1^T u, ..., J_k^T u)``, the scalar
``L(x) = <u, f(x)>`` has gradient ``J_i^T u`` with respect to ``x_i``.
:func:`gradcheck` draws ``u`` at random and compares the analytic ``<J_i^T u, v>`` along
a unit direction ``v`` -- ``e_j`` for every entry ``j`` of a small argument, random
directions for a large one (the JAX ``check_vjp`` idea) -- with differences of ``f`` along
``v``, output element by output element (``q``), with the step ``h = eps``:

    right_q = u_q (f_q(x + h v) - f_q(x)) / h        left_q = u_q (f_q(x) - f_q(x - h v)) / h

Their mean is the central difference, and ``sum_q (left_q + right_q) / 2`` the numeric
value.  Everything is done in float64.

**Kinks.**  A piecewise-smooth function (ReLU, a clip, bilinear sampling at an integer
pixel coordinate) has points where its left and right derivatives differ; a backward
returns a one-sided derivative there (docs/conventions.md §6.5), and the central
difference, their mean, is neither.  An output whose ``right_q - left_q`` exceeds what
rounding explains, and does not double when the step does (curvature would), is at a
*kink*.  Along an entry or direction with kinks, each kinked output's own analytic
contribution (one more ``vjp`` call, with the cotangent ``u_q`` on that output alone) must
equal its ``left_q`` or its ``right_q``, and the rest of the analytic value the central
differences of the smooth outputs.  At most ``KINK_OUTPUTS`` kinked outputs are checked
one by one (a seeded sample of them beyond that; the others only bound the value between
their smaller and larger sides).  The report names the kinks with both one-sided values,
and a wrong value at a kink fails.

**Non-finite values fail.**  A NaN or infinite analytic gradient, or a forward that gives
NaN or infinity at the point or at a step from it, fails the argument, and the report
names the entry (or direction) and the side.

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
ROUNDING = 16 * np.finfo(np.float64).eps  # relative error allowed in one evaluation of fn
CURVATURE = 0.25     # |jump(2h) - 2 jump(h)| below this share of |jump(h)|: curvature, not a kink
KINK_OUTPUTS = 2048  # kinked outputs checked one by one (one vjp call each), at most
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
        Largest absolute error, and largest error relative to ``max(|numeric|, atol)``
        (``inf`` when a value is not finite).
    index : tuple
        The entry (``"full"``) or direction number (``"directional"``) reported: the worst
        failure; when nothing fails, the first entry at a kink, else the worst entry.
    analytic, numeric : float
        The two values there.  At a kink ``numeric`` is the value the one-sided
        differences give when each kinked output takes the side nearest its analytic
        contribution.
    ok : bool
        Whether every entry passes and every value is finite.
    kinks : int
        Number of entries (or directions) along which some output is at a kink.
    left, right : float or None
        At a reported kink, the numeric value with every kinked output taken from the
        left, and from the right; None elsewhere.
    kinked, checked : int
        At a reported kink, how many outputs are at a kink and how many of those were
        checked one by one.
    problem : str
        Why the reported entry fails when the values alone do not say it: what is not
        finite, or which kinked output takes neither side; "" otherwise.
    """

    name: str
    method: str
    max_abs: float
    max_rel: float
    index: tuple
    analytic: float
    numeric: float
    ok: bool
    kinks: int = 0
    left: float | None = None
    right: float | None = None
    kinked: int = 0
    checked: int = 0
    problem: str = ""

    @property
    def verdict(self):
        """The report's last column: ``ok``, ``ok`` naming the kinks, or ``FAIL`` and why."""
        if self.left is None:
            if self.problem:
                return f"FAIL at {self.index}: {self.problem}"
            if self.ok and not self.kinks:
                return "ok"
        sides = ""
        if self.left is not None:
            outputs = f"{self.kinked} output{'s' * (self.kinked != 1)} at a kink"
            if self.checked < self.kinked:
                outputs += f", {self.checked} checked one by one"
            sides = f"one-sided left {self.left + 0.0:.10g}, right {self.right + 0.0:.10g} ({outputs})"
        if self.ok:
            noun = (("entry" if self.kinks == 1 else "entries") if self.method == "full"
                    else "direction" + "s" * (self.kinks != 1))
            return f"ok; {self.kinks} {noun} at kinks, e.g. {self.index}: analytic {self.analytic + 0.0:.10g}, {sides}"
        if sides:
            why = self.problem or f"the nearest value they allow is {self.numeric:.10g}"
            return f"FAIL at {self.index}, a kink: analytic {self.analytic + 0.0:.10g}, {sides}; {why}"
        return f"FAIL at {self.index}: analytic {self.analytic + 0.0:.10g}, numeric {self.numeric + 0.0:.10g}"


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
            lines.append(f"{a.name:<{width}} {a.method:<12} {a.max_abs:10.3e} {a.max_rel:10.3e}  "
                         f"{a.verdict}")
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


class _Outputs:
    """``fn``'s outputs as one flat float64 vector, and back: the layout of a cotangent."""

    def __init__(self, ys):
        self.shapes = [np.shape(y) for y in ys]
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]

    @staticmethod
    def flat(ys):
        return np.concatenate([np.asarray(y, dtype=np.float64).ravel() for y in ys] + [np.zeros(0)])

    def unflat(self, q_flat):
        """The cotangent of ``fn``'s structure holding the flat vector ``q_flat``."""
        parts = np.split(q_flat, np.cumsum(self.sizes)[:-1])
        arrays = tuple(p.reshape(s) for p, s in zip(parts, self.shapes))
        return arrays if len(arrays) > 1 else arrays[0]

    def name(self, q):
        """``"output k at (..)"`` of the flat position ``q``."""
        for k, (shape, size) in enumerate(zip(self.shapes, self.sizes)):
            if q < size:
                return f"output {k} at {tuple(int(c) for c in np.unravel_index(q, shape))}"
            q -= size
        raise IndexError(q)

    def non_finite(self, y):
        """``"nan in output k at (..)"`` for the first non-finite entry of the flat ``y``, or None."""
        bad = np.flatnonzero(~np.isfinite(y))
        return None if not bad.size else f"{y[bad[0]]} in {self.name(int(bad[0]))}"


def _agrees(value, reference, atol, rtol, rounding=0.0):
    """``|value - reference| <= atol + rtol |reference| + rounding``: the one comparison of every
    check (inclusive: a value exactly at the tolerance passes); False wherever one is NaN."""
    return np.abs(value - reference) <= atol + rtol * np.abs(reference) + rounding


@dataclass
class _Along:
    """Finite differences along one entry or direction, before the kinked outputs are judged."""

    analytic: float
    numeric: float = np.nan          # sum of the central differences of every output
    problem: str = ""                # something not finite: the comparison is a failure
    kinked: np.ndarray = None        # flat indices of the outputs at a kink (None: none)
    left: np.ndarray = None          # their one-sided differences, weighted by u
    right: np.ndarray = None
    rho: np.ndarray = None           # their rounding bounds
    smooth: float = 0.0              # sum of the central differences of the other outputs
    own: dict = field(default_factory=dict)   # kinked output -> its own analytic contribution


def _along(at, v, analytic, y0, u, outputs, eps, atol, rtol, what):
    """``fn`` at ``x +- eps v`` (and ``+- 2 eps v`` where kinks may be) against ``analytic``."""
    yp, ym = at(eps * v), at(-eps * v)
    for sign, y in (("+", yp), ("-", ym)):
        where = outputs.non_finite(y)
        if where is not None:
            return _Along(analytic, problem=f"fn gives {where} at {what(sign)}")
    right = u * (yp - y0) / eps                       # (Q,) one-sided differences per output
    left = u * (y0 - ym) / eps
    central = (left + right) / 2
    numeric = float(np.sum(central))
    # rounding of the four evaluations a jump is made of, per output
    rho = ROUNDING * np.abs(u) * (np.abs(yp) + 2 * np.abs(y0) + np.abs(ym)) / eps
    jump = right - left
    floor = rtol * np.maximum(np.abs(left), np.abs(right)) + rho
    candidate = np.abs(jump) > floor
    smooth_ok = _agrees(analytic, numeric, atol, rtol)
    # a jump that could change the verdict, or a failure that jumps may explain: look at 2h
    if candidate.any() and (not smooth_ok or bool(np.any(np.abs(jump) > atol + floor))):
        ypp, ymm = at(2 * eps * v), at(-2 * eps * v)
        if np.isfinite(ypp).all() and np.isfinite(ymm).all():
            jump2 = u * (ypp - y0) / (2 * eps) - u * (y0 - ymm) / (2 * eps)
            # curvature doubles the jump with the step; a kink keeps it
            kink = candidate & (np.abs(jump2 - 2 * jump) > CURVATURE * np.abs(jump) + 4 * rho)
            if kink.any():
                k = np.flatnonzero(kink)
                return _Along(analytic, numeric, kinked=k, left=left[k], right=right[k], rho=rho[k],
                              smooth=float(np.sum(central[~kink])))
    return _Along(analytic, numeric)


def _own_contributions(alongs, vjp, xs, wrt, u, outputs, rng):
    """Each kinked output's own analytic contribution ``u_q (J_q . v)``: one vjp per output."""
    kinked = sorted({int(q) for per_arg in alongs.values() for a, _ in per_arg
                     if a.kinked is not None for q in a.kinked})
    if len(kinked) > KINK_OUTPUTS:
        kinked = sorted(rng.choice(kinked, KINK_OUTPUTS, replace=False).tolist())
    sets = {id(a): set(a.kinked.tolist()) for per_arg in alongs.values() for a, _ in per_arg
            if a.kinked is not None}
    for q in kinked:
        cotangent = np.zeros_like(u)
        cotangent[q] = u[q]
        grads = _as_tuple(vjp(outputs.unflat(cotangent), *xs))
        for i in wrt:
            g = np.asarray(grads[i], dtype=np.float64)
            for a, v in alongs[i]:
                if q in sets.get(id(a), ()):
                    a.own[q] = float(np.vdot(g, v))


def _judge(a, outputs, atol, rtol):
    """``(err, numeric, ok, left, right, problem)`` of one entry or direction."""
    if a.problem or not np.isfinite(a.analytic):
        return np.inf, a.numeric, False, None, None, a.problem or f"analytic gradient is {a.analytic}"
    if a.kinked is None:
        err = abs(a.analytic - a.numeric)
        return err, a.numeric, _agrees(a.analytic, a.numeric, atol, rtol), None, None, ""
    lo, hi = np.minimum(a.left, a.right), np.maximum(a.left, a.right)
    checked = np.array([q in a.own for q in a.kinked])
    own = np.array([a.own.get(q, np.nan) for q in a.kinked])
    # each output checked one by one takes the side nearest its own contribution ...
    side = np.where(np.abs(own - a.left) <= np.abs(own - a.right), a.left, a.right)
    off = ~_agrees(own, side, atol, rtol, a.rho)
    off |= checked & ~np.isfinite(own)
    # ... and the rest of the analytic value is the smooth outputs' plus the unchecked sides
    rest = a.analytic - float(np.sum(own[checked]))
    low, high = a.smooth + float(lo[~checked].sum()), a.smooth + float(hi[~checked].sum())
    matched = min(max(rest, low), high)
    numeric = matched + float(np.sum(side[checked]))
    err = abs(a.analytic - numeric)
    ok = bool(_agrees(rest, matched, atol, rtol, float(a.rho.sum()))) and not off[checked].any()
    problem = ""
    if (off & checked).any():
        q = int(np.flatnonzero(off & checked)[0])
        problem = (f"{outputs.name(int(a.kinked[q]))} contributes {own[q] + 0.0:.10g}, neither its left "
                   f"{a.left[q] + 0.0:.10g} nor its right {a.right[q] + 0.0:.10g}")
        err = max(err, float(np.abs(own[q] - side[q])))
    return (err, numeric, ok, a.smooth + float(a.left.sum()), a.smooth + float(a.right.sum()), problem)


def _report(name, method, alongs, index_of, outputs, atol, rtol):
    """Judge the entries of one argument and summarise them in its :class:`ArgReport`."""
    if not alongs:
        return ArgReport(name, method, 0.0, 0.0, (), 0.0, 0.0, True)
    judged = [_judge(a, outputs, atol, rtol) for a, _ in alongs]
    err = np.array([j[0] for j in judged])
    rel = err / np.maximum([max(abs(j[1]), atol) if np.isfinite(j[1]) else atol for j in judged],
                           np.finfo(np.float64).tiny)
    failed = [k for k, j in enumerate(judged) if not j[2]]
    kinks = [k for k, j in enumerate(judged) if j[3] is not None]
    shown = max(failed, key=lambda k: err[k]) if failed else kinks[0] if kinks else int(np.argmax(err))
    a, (_, numeric, _, left, right, problem) = alongs[shown][0], judged[shown]
    kinked = 0 if a.kinked is None else len(a.kinked)
    return ArgReport(name, method, float(err.max()), float(rel.max()), index_of(shown), a.analytic,
                     numeric, not failed, len(kinks), left, right, kinked, len(a.own), problem)


def gradcheck(fn, vjp, inputs, *, wrt=None, names=None, eps=FD_EPS, atol=FD_ATOL,
              rtol=FD_RTOL, full_max=FULL_MAX, n_directions=3, seed=0):
    """Check a vector-Jacobian product against finite differences of its forward.

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
        Finite-difference step ``h``.
    atol, rtol : float
        An entry passes if ``|analytic - numeric| <= atol + rtol * |numeric|``; at a
        kink each kinked output's contribution must be within ``atol + rtol |side|``
        (plus rounding) of one of its one-sided values (module docstring).
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
        ``.ok``, a printable table (one line per argument: the errors, then ``ok``, ``ok``
        with the kinks found, or ``FAIL`` with the entry, the values and, at a kink,
        both one-sided values), and ``.raise_if_failed()``.

    Notes
    -----
    A NaN or infinity -- in the analytic gradient, or in ``fn`` at the point or at a
    step from it -- fails the argument.  At a kink a one-sided backward passes and the
    kink is named; to check the smooth pieces alone, move the point off the kinks first
    (docs/tutorial.md §4).  Along a direction that moves one output across several kinks
    at once (a sample at a pixel corner moved diagonally), a backward that is one-sided
    per coordinate need not equal either one-sided difference along that direction:
    such an output fails, named as a kink.

    Examples
    --------
    >>> import numpy as np
    >>> from stnref import gradcheck
    >>> res = gradcheck(lambda x: np.sin(x), lambda u, x: (u * np.cos(x),), [np.linspace(0, 1, 5)])
    >>> res.ok
    True
    >>> relu = gradcheck(lambda x: np.maximum(x, 0), lambda u, x: (u * (x >= 0),), [np.zeros(2)])
    >>> relu.ok, relu.args[0].kinks, relu.args[0].left
    (True, 2, 0.0)
    """
    xs = _check_inputs(fn, vjp, inputs)
    _check_options("gradcheck", eps, atol, rtol, full_max, n_directions, seed)
    rng = np.random.default_rng(seed)
    names = list(names) if names is not None else [f"x{i}" for i in range(len(xs))]
    ys = _as_tuple(fn(*xs))
    outputs = _Outputs(ys)
    us = tuple(rng.standard_normal(np.shape(y)) for y in ys)
    grads = _as_tuple(vjp(us if len(us) > 1 else us[0], *xs))
    if len(grads) != len(xs):
        raise ValueError(f"gradcheck(): vjp returned {len(grads)} gradients for {len(xs)} inputs")
    if wrt is None:
        wrt = [i for i, g in enumerate(grads) if g is not None]
    y0, u = outputs.flat(ys), outputs.flat(us)
    at_point = outputs.non_finite(y0)

    alongs, methods, index_ofs = {}, {}, {}
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
        full = x.size <= full_max
        methods[i] = "full" if full else "directional"
        bad = np.flatnonzero(~np.isfinite(g))
        if bad.size or at_point is not None:   # nothing to compare: name what is not finite
            j = tuple(int(c) for c in np.unravel_index(bad[0], x.shape)) if bad.size else ()
            problem = (f"analytic gradient is {g.flat[bad[0]]}" if bad.size
                       else f"fn gives {at_point} at the point itself")
            alongs[i] = [(_Along(float(g.flat[bad[0]]) if bad.size else np.nan, problem=problem), None)]
            index_ofs[i] = lambda k, j=j: j
            continue

        def at(step, i=i, x=x):
            args = list(xs)
            args[i] = x + step
            return outputs.flat(_as_tuple(fn(*args)))

        alongs[i] = []
        if full:
            for j in range(x.size):
                v = np.zeros(x.shape)
                v.flat[j] = 1.0
                index = [int(c) for c in np.unravel_index(j, x.shape)]
                alongs[i].append((_along(at, v, float(g.flat[j]), y0, u, outputs, eps, atol, rtol,
                                         lambda sign, index=index: f"{names[i]}{index} {sign} eps"), v))
            index_ofs[i] = lambda j, shape=x.shape: tuple(int(k) for k in np.unravel_index(j, shape))
        else:
            for j in range(n_directions):
                v = rng.standard_normal(x.shape)
                v /= np.linalg.norm(v)
                alongs[i].append((_along(at, v, float(np.vdot(g, v)), y0, u, outputs, eps, atol, rtol,
                                         lambda sign, j=j: f"{names[i]} {sign} eps * direction {j}"), v))
            index_ofs[i] = lambda j: (int(j),)
    _own_contributions(alongs, vjp, xs, wrt, u, outputs, rng)
    return GradcheckResult([_report(names[i], methods[i], alongs[i], index_ofs[i], outputs, atol, rtol)
                            for i in wrt])


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
        One :class:`ArgReport` (max abs / rel error, the entry reported, the analytic
        and numeric values there, the kinks found) named ``"input"`` -- left out when
        the module returns no input gradient and says so, like a ``SpatialTransformer``
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

    Notes
    -----
    A NaN or infinity in any gradient, or in the output, fails (:func:`gradcheck`).
    A freshly built :class:`stnref.SpatialTransformer` starts at the identity θ, where
    every sample sits on a pixel centre (or one ulp beside it): a kink of the bilinear
    kernel (docs/conventions.md §6.5).  Its check passes with those kinks named on the
    regression layer's parameters, each entry of which moves one coordinate of every
    sample.  To check the smooth pieces alone, move θ off the pixel centres first, e.g.
    translate by a quarter pixel: add ``0.5 / W`` to the bias entry of ``θ_02`` and
    ``0.5 / H`` to that of ``θ_12`` (docs/tutorial.md §5).

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
