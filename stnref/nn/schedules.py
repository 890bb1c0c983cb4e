"""Learning-rate schedules: the factor ``s(t)`` in ``lr_t = lr * s(t)`` at optimiser step ``t``.

A schedule is a pure function of the step ``t = 0, 1, ...`` (the number of
steps before this one), so a run resumed at step ``t`` continues it exactly.
The closed forms are those of PyTorch's schedulers:

- ``Constant()``: ``1`` (no scheduler);
- ``StepDecay(k, g)``: ``g ** (t // k)`` (``StepLR(step_size=k, gamma=g)``);
- ``Cosine(T, f)``: ``f + (1 - f) (1 + cos(pi min(t, T) / T)) / 2``
  (``CosineAnnealingLR(T_max=T, eta_min=f lr)`` up to ``T``; past ``T`` PyTorch's cosine
  rises again, stnref's stays at ``f``);
- ``Warmup(w)``: ``min(1, (t + 1) / w)`` (``LinearLR(start_factor=1/w, total_iters=w-1)``);
- ``a * b``: ``a(t) b(t)`` (``ChainedScheduler``).

Attach one to an optimiser as PyTorch's ``lr_scheduler`` does: ``scheduler =
LambdaLR(optimizer, Cosine(1000))``, then ``optimizer.step(); scheduler.step()`` at
every step.  :func:`parse_schedule` reads the text form of ``stnref train --schedule``
(lengths in epochs); :meth:`Schedule.check_run` refuses a schedule whose rate would leave
the float range within a run.
"""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass

from .._checks import check_int
from .optim import _Optimizer

SCHEDULE_FORMS = ("constant", "step:E[:GAMMA]", "cosine[:E[:FINAL]]", "warmup:E")
STEP_GAMMA = 0.1       # StepLR's default decay


def _check_factor(value, name, fn, upper=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fn}(): expected {name} to be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (upper is not None and value > upper):
        bound = f" and <= {upper}" if upper is not None else ""
        raise ValueError(f"{fn}(): expected finite {name} >= 0{bound}, got {value}")
    return value


class Schedule:
    """Base of the schedules: ``schedule(t)`` is the learning-rate factor at step ``t >= 0``.

    Subclasses define ``factor(t)``; ``a * b`` is the schedule ``a(t) * b(t)``
    (e.g. ``Warmup(500) * Cosine(10_000)``).

    Examples
    --------
    >>> (Warmup(2) * StepDecay(3, 0.5))(0), Cosine(4)(2)
    (0.5, 0.5)
    """

    def __call__(self, t):
        return float(self.factor(check_int(t, "t", "Schedule.__call__", minimum=0)))

    def factor(self, t):
        """The factor at step ``t`` (an int >= 0, already checked)."""
        raise NotImplementedError(f"{type(self).__name__} does not define factor")

    def peak(self, steps):
        """The largest factor over steps ``0 .. steps - 1`` (a bound for products); inf past floats.

        Parameters
        ----------
        steps : int >= 1

        Returns
        -------
        float
        """
        return max(self.factor(0), self.factor(steps - 1))

    def check_run(self, lr, steps):
        """Refuse, in one line, a run whose rate ``lr * factor(t)`` would leave the float range.

        Checked over every step ``t = 0 .. steps`` (the rate after the last step too)
        with :meth:`peak`, before anything trains.

        Parameters
        ----------
        lr : float
            The base learning rate.
        steps : int >= 1
            Steps in the run.

        Raises
        ------
        ValueError
            The schedule, the run's length and the largest rate it reaches.
        """
        fn = "Schedule.check_run"
        steps = check_int(steps, "steps", fn, minimum=1)
        lr = _check_factor(lr, "lr", fn)
        peak = self.peak(steps + 1)
        if not math.isfinite(lr * peak):
            raise ValueError(f"learning rate {lr:g} under the schedule {self!r} leaves the float "
                             f"range within the run's {steps} steps (the factor reaches {peak:g}); "
                             f"give a schedule whose rate stays finite")

    def __mul__(self, other):
        if not isinstance(other, Schedule):
            return NotImplemented
        return _Product(self, other)


@dataclass(frozen=True)
class _Product(Schedule):
    first: Schedule
    second: Schedule

    def factor(self, t):
        return self.first.factor(t) * self.second.factor(t)

    def peak(self, steps):
        return self.first.peak(steps) * self.second.peak(steps)

    def __repr__(self):
        return f"{self.first!r} * {self.second!r}"


@dataclass(frozen=True)
class Constant(Schedule):
    """The factor 1 at every step: the learning rate as given."""

    def factor(self, t):
        return 1.0


@dataclass(frozen=True)
class StepDecay(Schedule):
    """``gamma ** (t // every)``: the rate times ``gamma`` every ``every`` steps (torch StepLR).

    Parameters
    ----------
    every : int >= 1
    gamma : float >= 0, default 0.1
    """

    every: int
    gamma: float = STEP_GAMMA

    def __post_init__(self):
        object.__setattr__(self, "every", check_int(self.every, "every", "StepDecay", minimum=1))
        object.__setattr__(self, "gamma", _check_factor(self.gamma, "gamma", "StepDecay"))

    def factor(self, t):
        try:
            return self.gamma ** (t // self.every)
        except OverflowError:      # gamma > 1 raised beyond the float range
            return math.inf


@dataclass(frozen=True)
class Cosine(Schedule):
    """Half a cosine from 1 at step 0 to ``final`` at step ``total``, then ``final``.

    ``final + (1 - final) (1 + cos(pi min(t, total) / total)) / 2``: torch's
    CosineAnnealingLR with ``T_max = total``, ``eta_min = final * lr`` up to step
    ``total``.  Past it PyTorch's closed form keeps following the cosine (the rate rises
    back to ``lr`` at ``2 total``); this one holds ``final``, so a run longer than
    ``total`` ends at the low rate.

    Parameters
    ----------
    total : int >= 1
    final : float in [0, 1], default 0
    """

    total: int
    final: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "total", check_int(self.total, "total", "Cosine", minimum=1))
        object.__setattr__(self, "final", _check_factor(self.final, "final", "Cosine", upper=1.0))

    def factor(self, t):
        return self.final + (1 - self.final) * (1 + math.cos(math.pi * min(t, self.total) / self.total)) / 2


@dataclass(frozen=True)
class Warmup(Schedule):
    """Linear warm-up: ``(t + 1) / steps`` for the first ``steps`` steps, then 1.

    The first step already moves (at ``1 / steps`` of the rate); combine with
    another schedule by multiplying: ``Warmup(100) * Cosine(5000)``.

    Parameters
    ----------
    steps : int >= 1
    """

    steps: int

    def __post_init__(self):
        object.__setattr__(self, "steps", check_int(self.steps, "steps", "Warmup", minimum=1))

    def factor(self, t):
        return min(1.0, (t + 1) / self.steps)


def _epochs(text, spec, fn):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{fn}(): expected a positive number of epochs in {spec!r}, got {text!r}")
    return value


def _steps(text, spec, per_epoch, fn):
    """``max(1, round(E * per_epoch))`` of the epochs ``E`` written as ``text``."""
    steps = _epochs(text, spec, fn) * per_epoch
    if not math.isfinite(steps):
        raise ValueError(f"{fn}(): {text} epochs in {spec!r} is beyond the float range at "
                         f"{per_epoch} steps per epoch; give at most "
                         f"{sys.float_info.max / per_epoch:.3g}")
    return max(1, round(steps))


def _number(text, spec, fn):
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{fn}(): expected a number in {spec!r}, got {text!r}") from None


def parse_schedule(spec, steps_per_epoch, epochs):
    """The schedule written as text, lengths in epochs (``stnref train --schedule``).

    ``spec`` is one term or several joined by ``+``, which multiply:

    - ``constant``
    - ``step:E[:GAMMA]`` -- ``StepDecay``: times GAMMA (default 0.1) every E epochs;
    - ``cosine[:E[:FINAL]]`` -- ``Cosine`` from 1 to FINAL (default 0) over E epochs
      (default: ``epochs``, the whole run);
    - ``warmup:E`` -- ``Warmup`` over E epochs.

    E may be fractional; it becomes ``max(1, round(E * steps_per_epoch))`` steps.

    Parameters
    ----------
    spec : str
        E.g. ``"cosine"``, ``"step:10:0.5"``, ``"warmup:0.5+cosine"``.
    steps_per_epoch : int >= 1
    epochs : int >= 1
        The run's length, for ``cosine`` without E.

    Returns
    -------
    Schedule

    Examples
    --------
    >>> parse_schedule("warmup:0.5+cosine", steps_per_epoch=10, epochs=3)
    Warmup(steps=5) * Cosine(total=30, final=0.0)
    """
    fn = "parse_schedule"
    if not isinstance(spec, str):
        raise TypeError(f"{fn}(): expected spec to be a str, got {type(spec).__name__} {spec!r}")
    per_epoch = check_int(steps_per_epoch, "steps_per_epoch", fn, minimum=1)
    epochs = check_int(epochs, "epochs", fn, minimum=1)

    def steps(text):
        return _steps(text, spec, per_epoch, fn)

    terms = []
    for term in spec.split("+"):
        name, *args = term.strip().split(":")
        if name == "constant" and not args:
            terms.append(Constant())
        elif name == "step" and 1 <= len(args) <= 2:
            terms.append(StepDecay(steps(args[0]), *(_number(a, spec, fn) for a in args[1:])))
        elif name == "cosine" and len(args) <= 2:
            total = steps(args[0]) if args else epochs * per_epoch
            terms.append(Cosine(total, *(_number(a, spec, fn) for a in args[1:])))
        elif name == "warmup" and len(args) == 1:
            terms.append(Warmup(steps(args[0])))
        else:
            raise ValueError(f"{fn}(): expected terms {', '.join(SCHEDULE_FORMS)} joined by '+' "
                             f"(E in epochs), got {term.strip()!r} in {spec!r}")
    schedule = terms[0]
    for term in terms[1:]:
        schedule = schedule * term
    return schedule


class LambdaLR:
    """Attach a schedule to an optimiser: its rate is ``base_lr * lr_lambda(t)`` (torch ``LambdaLR``).

    Made after the optimiser, it takes the optimiser's ``lr`` as ``base_lr`` and sets the
    rate of step 0 at once; each :meth:`step`, called after ``optimizer.step()`` as in
    PyTorch, sets the rate of the next step.  The rate is a pure function of ``t``, so
    :meth:`state_dict` (``base_lr`` and ``t``) resumes it exactly.

    Parameters
    ----------
    optimizer : SGD or Adam
    lr_lambda : Schedule or callable
        ``t -> factor`` (a :class:`Schedule`, or any function of the step ``t >= 0``).

    Attributes
    ----------
    base_lr : float
    last_epoch : int
        ``t``: the number of :meth:`step` calls so far (PyTorch's name).

    Examples
    --------
    >>> from stnref.nn import SGD, Linear
    >>> opt = SGD(Linear(2, 1), lr=0.1)
    >>> scheduler = LambdaLR(opt, StepDecay(2, 0.5))
    >>> rates = []
    >>> for _ in range(4):
    ...     rates.append(opt.lr)        # opt.step() here, then:
    ...     scheduler.step()
    >>> rates
    [0.1, 0.1, 0.05, 0.05]
    """

    def __init__(self, optimizer, lr_lambda):
        fn = "LambdaLR"
        if not isinstance(optimizer, _Optimizer):
            raise TypeError(f"{fn}(): expected optimizer to be a stnref.nn SGD or Adam, got "
                            f"{type(optimizer).__name__}")
        if not callable(lr_lambda):
            raise TypeError(f"{fn}(): expected lr_lambda to be a Schedule or a function of the "
                            f"step, got {type(lr_lambda).__name__}")
        self.optimizer = optimizer
        self.lr_lambda = lr_lambda
        self.base_lr = optimizer.lr
        self.last_epoch = 0
        self._apply("LambdaLR")

    def _apply(self, fn):
        factor = self.lr_lambda(self.last_epoch)
        rate = self.base_lr * float(factor)
        if not math.isfinite(rate) or rate < 0:
            raise ValueError(f"{fn}(): the rate at step {self.last_epoch} is {self.base_lr:g} x "
                             f"{factor!r} = {rate}; expected a finite rate >= 0")
        self.optimizer.lr = rate

    def step(self):
        """Advance one step and set the optimiser's rate for it."""
        self.last_epoch += 1
        self._apply("LambdaLR.step")

    def get_last_lr(self):
        """``[lr]``: the rate set by the last :meth:`step` (a list, as PyTorch's).

        Returns
        -------
        list of float
        """
        return [self.optimizer.lr]

    def state_dict(self):
        """``{"base_lr": float, "last_epoch": int}``: what a resumed run needs (the lambda is code)."""
        return {"base_lr": self.base_lr, "last_epoch": self.last_epoch}

    def load_state_dict(self, state):
        """Restore :meth:`state_dict` output and set the optimiser's rate for that step."""
        fn = "LambdaLR.load_state_dict"
        if not isinstance(state, dict) or set(state) != {"base_lr", "last_epoch"}:
            raise ValueError(f"{fn}(): expected a dict with keys 'base_lr' and 'last_epoch', got "
                             f"{state!r:.200}")
        self.base_lr = _check_factor(state["base_lr"], "base_lr", fn)
        self.last_epoch = check_int(state["last_epoch"], "last_epoch", fn, minimum=0)
        self._apply(fn)
