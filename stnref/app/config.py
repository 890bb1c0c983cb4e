"""What determines a training run of ``stnref train``: :class:`TrainConfig`, and the model and
optimiser it builds (:func:`make_model`, :func:`make_optimizer`)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from .. import _checks
from ..data import DISTORTIONS, split_sizes
from ..networks import MODEL_NAMES, build_model
from ..nn import SGD, Adam, parse_schedule
from ..registry import TRANSFORMS
from ..training import ON_NONFINITE
from ..transformer import localisation_prefixes, transformers

OPTIMIZERS = ("sgd", "adam")


@dataclasses.dataclass
class TrainConfig:
    """Everything that determines a training run (stored in its checkpoint and metrics).

    :meth:`validated` checks every field and resolves the ones left to their
    defaults, so the stored config states exactly what ran: a field that means
    nothing for the model or optimiser is ``None`` (``transform`` and
    ``loc_lr_scale`` for FCN and CNN, ``momentum`` for Adam), and giving it a
    value there is an error rather than being ignored.

    Attributes
    ----------
    model : {"fcn", "cnn", "st-fcn", "st-cnn"}
    transform : str or None
        ST models: a registry name (``stnref.registry.TRANSFORMS``; None: "affine").
        FCN and CNN have no transformer: None.
    distortion : {"none", "r", "rts", "p", "e", "tc"}
    data : str or None
        Directory with MNIST-format IDX files, stored as an absolute path; None uses
        the built-in digits.
    epochs : int
        Total number of epochs (also when resuming).
    batch_size : int
        Samples per step, as PyTorch's ``DataLoader``: the last batch of an epoch holds
        the rest (every sample, in one step, when ``batch_size`` exceeds the training set).
    lr : float
        Base learning rate.  The default (Adam, 2e-3) was chosen by measurement:
        see ``docs/results.md``.
    loc_lr_scale : float or None
        ST models: learning-rate multiplier of the localisation networks (None: 1).
        With Adam the update size does not scale with the gradient, and a smaller
        rate only slows the transformer down (measured in ``docs/results.md``); with
        SGD a scale of 0.1 is the usual choice (the paper used 1/10 on SVHN).
        FCN and CNN: None.
    momentum : float or None
        SGD momentum (None: 0.9).  Adam: None.
    optimizer : {"sgd", "adam"}
    schedule : str
        Learning-rate schedule, :func:`stnref.nn.parse_schedule`'s text form
        with lengths in epochs: ``"constant"`` (the default), ``"step:E[:GAMMA]"``,
        ``"cosine[:E[:FINAL]]"``, ``"warmup:E"``, or terms joined by ``+``
        (multiplied), e.g. ``"warmup:1+cosine"``.  The rate of a step is
        ``lr`` times the schedule at the step's position in the run.  A ``cosine``
        without E spans the run's ``epochs``; :meth:`validated` writes that length
        in (``"cosine"`` with 10 epochs is stored as ``"cosine:10"``), so a resume
        that raises ``epochs`` keeps the schedule the run started with.
    train_size, test_size : int or None
        Use the first this many samples of each split (None: all).  :func:`train`
        stores the number it used.  Once ``train_size`` is known, the schedule is
        checked over every step of the run: a rate beyond the float range is refused
        (:func:`check_schedule`).
    redistort : bool
        Every epoch draws its own distortions of the training digits (epoch 1: the fixed set).
    validation : bool
        Evaluate on the ``test_size`` training digits after the first ``train_size``, not
        the test set (:func:`stnref.data.load_dataset`), to choose settings.
    seed : int
    clip_norm : float or None
        Gradient-norm clipping threshold.
    checkpoint_every : int
        Steps between mid-epoch checkpoints.
    on_nonfinite : {"stop", "skip"}
        A non-finite loss or theta stops training, or skips that step.
    """

    model: str = "st-fcn"
    transform: str | None = None
    distortion: str = "rts"
    data: str | None = None
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.002
    loc_lr_scale: float | None = None
    momentum: float | None = None
    optimizer: str = "adam"
    schedule: str = "constant"
    train_size: int | None = 20_000
    test_size: int | None = 5_000
    redistort: bool = False
    validation: bool = False
    seed: int = 0
    clip_norm: float | None = 10.0
    checkpoint_every: int = 500
    on_nonfinite: str = "stop"

    def validated(self):
        """A checked copy with every default resolved (ValueError/TypeError naming a field).

        Returns
        -------
        TrainConfig
            ``transform`` "affine", ``loc_lr_scale`` 1 and ``momentum`` 0.9 where they
            apply and were left None; ``data`` absolute.
        """
        fn = "TrainConfig"
        _checks.check_choice(self.model, "model", fn, MODEL_NAMES)
        _checks.check_choice(self.distortion, "distortion", fn, DISTORTIONS)
        _checks.check_choice(self.optimizer, "optimizer", fn, OPTIMIZERS)
        _checks.check_choice(self.on_nonfinite, "on_nonfinite", fn, ON_NONFINITE)
        for name in ("epochs", "batch_size", "checkpoint_every"):
            _checks.check_int(getattr(self, name), name, fn, minimum=1, maximum=_checks.MAX_INT)
        _checks.check_int(self.seed, "seed", fn, minimum=0, maximum=_checks.MAX_INT)
        for name in ("redistort", "validation"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{fn}: expected {name} to be True or False, got {getattr(self, name)!r}")
        for name in ("train_size", "test_size"):
            if getattr(self, name) is not None:
                _checks.check_int(getattr(self, name), name, fn, minimum=1, maximum=_checks.MAX_INT)
        resolved = {}
        transformer = self.model.startswith("st-")
        for name, applies, default, why in (
                ("transform", transformer, "affine", f"model {self.model!r} has no transformer"),
                ("loc_lr_scale", transformer, 1.0, f"model {self.model!r} has no localisation network"),
                ("momentum", self.optimizer == "sgd", 0.9, f"optimizer {self.optimizer!r} has no momentum")):
            value = getattr(self, name)
            if not applies and value is not None:
                raise ValueError(f"{fn}: {name}={value!r} means nothing here: {why}")
            resolved[name] = default if applies and value is None else value
        if transformer:
            _checks.check_choice(resolved["transform"], "transform", fn, TRANSFORMS)
        for name in ("lr", "loc_lr_scale", "momentum", "clip_norm"):
            value = resolved.get(name, getattr(self, name))
            if value is None:
                continue
            if not _checks.is_finite_number(value) or value < 0:
                raise ValueError(f"{fn}: expected {name} to be a finite number >= 0, got {value!r}")
        if self.lr == 0:
            raise ValueError(f"{fn}: expected lr > 0, got {self.lr!r}")
        if self.data is not None:
            if not isinstance(self.data, (str, os.PathLike)):
                raise TypeError(f"{fn}: expected data to be a directory path or None, got {self.data!r}")
            data = os.path.abspath(os.fspath(self.data))
            if os.path.isfile(data):
                raise ValueError(f"{fn}: data {data!r} is a file; expected the directory holding the "
                                 f"four MNIST IDX files (plain or .gz)")
            if not os.path.isdir(data):
                raise ValueError(f"{fn}: data directory {data!r} does not exist")
            resolved["data"] = data
        try:
            parse_schedule(self.schedule, 1, self.epochs)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{fn}: invalid schedule {self.schedule!r}: {err}") from err
        resolved["schedule"] = "+".join(f"cosine:{self.epochs}" if term.strip() == "cosine"
                                        else term.strip() for term in self.schedule.split("+"))
        if self.train_size is not None:
            try:
                check_schedule(resolved["schedule"], self.lr, steps_per_epoch(self), self.epochs)
            except ValueError as err:
                raise ValueError(f"{fn}: {err}") from None
        return dataclasses.replace(self, **resolved)


def input_size(distortion):
    """Side of the square images of a distortion.

    Parameters
    ----------
    distortion : str
        One of ``stnref.data.DISTORTIONS``.

    Returns
    -------
    int
        42 for ``rts``, 60 for ``tc``, 28 otherwise.
    """
    return {"rts": 42, "tc": 60}.get(distortion, 28)


def make_model(config):
    """The network of ``config``, initialised from its seed, in float32.

    Parameters
    ----------
    config : TrainConfig

    Returns
    -------
    stnref.nn.Module
        ``build_model(config.model, config.transform, ...)`` with every spatial
        transformer's ``input_grad`` off (it sits on the data).
    """
    config = config.validated()
    model = build_model(config.model, config.transform, input_size(config.distortion),
                        rng=np.random.default_rng([config.seed, 0]), dtype=np.float32)
    for st in transformers(model):
        st.input_grad = False  # the transformer sits on data: no gradient to the images
    return model


def make_optimizer(config, model):
    """The optimiser of ``config`` over ``model``'s parameters.

    Parameters
    ----------
    config : TrainConfig
    model : stnref.nn.Module

    Returns
    -------
    stnref.nn.SGD or stnref.nn.Adam
        With ``lr_scale`` = ``config.loc_lr_scale`` on every localisation network.
    """
    config = config.validated()
    scales = {p: config.loc_lr_scale for p in localisation_prefixes(model)}
    if config.optimizer == "adam":
        return Adam(model, lr=config.lr, lr_scale=scales)
    return SGD(model, lr=config.lr, momentum=config.momentum, lr_scale=scales)


def check_sizes(train_size, test_size, data, validation=False):
    """Refuse more samples than the MNIST files in ``data`` hold, naming the flag and the count.

    Parameters
    ----------
    train_size, test_size : int or None
        None: every sample.
    data : str or None
        MNIST directory; None (the built-in digits, generated on demand) accepts any size.
    validation : bool
        The evaluation samples are ``test_size`` (None: 10,000) held-out training digits.

    Returns
    -------
    (int, int)
        The samples available in each split (:func:`stnref.data.split_sizes`), or not held out and held out.

    Raises
    ------
    ValueError
        ``--train-size N: DIR holds M training images (ask for at most M, or 'all')``.
    """
    available = split_sizes(data)
    if validation:
        held_out = split_sizes(None)[1] if test_size is None else test_size
        if data is not None and (train_size or 1) + held_out > available[0]:
            raise ValueError(f"--validation holds out --test-size {held_out} of the {available[0]} "
                             f"training images in {data}: at most {available[0] - held_out} "
                             f"remain to train on, asked {train_size or 'all'}")
        return available[0] - held_out, held_out
    if data is not None:
        for flag, asked, have, what in (("--train-size", train_size, available[0], "training"),
                                        ("--test-size", test_size, available[1], "test")):
            if asked is not None and asked > have:
                raise ValueError(f"{flag} {asked}: {data} holds {have} {what} images "
                                 f"(ask for at most {have}, or 'all')")
    return available


def steps_per_epoch(config):
    """Steps in one epoch of ``config``: ``ceil(train_size / batch_size)`` (train_size known)."""
    return -(-config.train_size // config.batch_size)


def check_schedule(spec, lr, steps, epochs):
    """Refuse, in one line, a schedule that cannot drive the run: lengths or rates beyond floats.

    Parameters
    ----------
    spec : str
        :func:`stnref.nn.parse_schedule`'s text form.
    lr : float
    steps, epochs : int
        Steps per epoch and epochs of the run.

    Returns
    -------
    stnref.nn.Schedule
        The schedule of the run, checked over all its ``steps * epochs`` steps.

    Raises
    ------
    ValueError
        Naming the schedule, the rate and what goes wrong.
    """
    try:
        schedule = parse_schedule(spec, steps, epochs)
        schedule.check_run(lr, steps * epochs)
    except ValueError as err:
        raise ValueError(f"schedule {spec!r} with lr {lr:g}: {err}") from None
    return schedule
