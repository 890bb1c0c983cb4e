"""The sampler's settings in one table: every mode and padding, and which of them PyTorch has.

One row per ``(mode, padding_mode)`` pair of :func:`stnref.grid_sample`:

* ``dims`` -- the spatial dimensionalities stnref samples it in (2: 4-D ``U``, 3: 5-D ``U``);
* ``pads`` -- where the padding acts (docs/conventions.md §3): on the continuous coordinate
  before the kernel (``"coordinate"``, PyTorch's nearest and bilinear) or on each integer
  tap of the kernel (``"taps"``, PyTorch's bicubic).  It is a property of the pair, not of
  the kernel: wrap pads taps under every kernel.  For zeros and constant the two readings
  coincide (the coordinate is left alone, every tap outside the image reads the fill);
  the column follows PyTorch's description of zeros;
* ``pytorch_dims`` -- the dimensionalities in which ``torch.nn.functional.grid_sample``
  has the same setting (empty: PyTorch does not have it).

The defaults of the two numeric options are here too: ``fill_value`` (:data:`FILL_VALUE`)
and the Keys parameter ``cubic_a`` (:data:`CUBIC_A`).  PyTorch has only the defaults.

Everything that lists settings reads this module: the sampler's validation and its error
messages (:func:`check`), :class:`stnref.SpatialTransformer`, ``stnref bench``, the golden
set, the diagnosis, the test strategies and the table of docs/conventions.md
(:func:`markdown`).  A new setting is a row here plus its functions in
:mod:`stnref.sampling`.

Examples
--------
>>> SETTINGS["bicubic", "border"].pads
'taps'
>>> is_pytorch("bilinear", "reflection", 3)
True
"""

from __future__ import annotations

from typing import NamedTuple

from . import _checks

__all__ = [
    "COORDINATE", "CUBIC_A", "CUBIC_MODES", "FILL_PADDINGS", "FILL_VALUE", "MODES", "PADDING_MODES",
    "PYTORCH_MODES", "PYTORCH_PADDING_MODES", "SETTINGS", "TAPS", "Setting", "check",
    "combinations", "is_pytorch", "markdown",
]

CUBIC_A = -0.75     # Keys cubic convolution parameter: PyTorch's (and OpenCV's) value
FILL_VALUE = 0.0    # value read by a tap outside the image with padding_mode="constant"
COORDINATE, TAPS = "coordinate", "taps"


class Setting(NamedTuple):
    """One row of :data:`SETTINGS`."""

    mode: str
    padding_mode: str
    dims: tuple           # spatial dimensionalities stnref supports: 2 (4-D U), 3 (5-D U)
    pads: str             # COORDINATE or TAPS: where the padding acts
    pytorch_dims: tuple   # dimensionalities in which PyTorch's grid_sample has it; () none


_ROWS = (
    # mode        padding       dims    pads         PyTorch has it in
    ("bilinear", "zeros",      (2, 3), COORDINATE, (2, 3)),
    ("bilinear", "border",     (2, 3), COORDINATE, (2, 3)),
    ("bilinear", "reflection", (2, 3), COORDINATE, (2, 3)),
    ("bilinear", "constant",   (2, 3), COORDINATE, ()),
    ("bilinear", "wrap",       (2, 3), TAPS,       ()),
    ("nearest",  "zeros",      (2, 3), COORDINATE, (2, 3)),
    ("nearest",  "border",     (2, 3), COORDINATE, (2, 3)),
    ("nearest",  "reflection", (2, 3), COORDINATE, (2, 3)),
    ("nearest",  "constant",   (2, 3), COORDINATE, ()),
    ("nearest",  "wrap",       (2, 3), TAPS,       ()),
    ("bicubic",  "zeros",      (2, 3), TAPS,       (2,)),
    ("bicubic",  "border",     (2, 3), TAPS,       (2,)),
    ("bicubic",  "reflection", (2, 3), TAPS,       (2,)),
    ("bicubic",  "constant",   (2, 3), TAPS,       ()),
    ("bicubic",  "wrap",       (2, 3), TAPS,       ()),
)
SETTINGS = {(row[0], row[1]): Setting(*row) for row in _ROWS}
MODES = tuple(dict.fromkeys(m for m, _ in SETTINGS))
PADDING_MODES = tuple(dict.fromkeys(p for _, p in SETTINGS))
PYTORCH_MODES = tuple(dict.fromkeys(s.mode for s in SETTINGS.values() if s.pytorch_dims))
PYTORCH_PADDING_MODES = tuple(dict.fromkeys(s.padding_mode for s in SETTINGS.values()
                                            if s.pytorch_dims))
CUBIC_MODES = ("bicubic",)     # the modes with a Keys parameter cubic_a
FILL_PADDINGS = ("constant",)  # the paddings that read fill_value


def combinations(dims=(2, 3), pytorch=None):
    """Every supported ``(k, mode, padding_mode)``, dimension first, then the table's order.

    Parameters
    ----------
    dims : tuple of int, default (2, 3)
        Spatial dimensionalities to list.
    pytorch : bool or None, default None
        True: only PyTorch's settings; False: only the others; None: all.

    Returns
    -------
    list of tuple
        ``(k, mode, padding_mode)``.

    Examples
    --------
    >>> combinations(dims=(3,), pytorch=True)[:2]
    [(3, 'bilinear', 'zeros'), (3, 'bilinear', 'border')]
    """
    return [(k, s.mode, s.padding_mode) for k in dims for s in SETTINGS.values()
            if k in s.dims and (pytorch is None or (k in s.pytorch_dims) == pytorch)]


def is_pytorch(mode, padding_mode, k, fill_value=FILL_VALUE, cubic_a=CUBIC_A):
    """Whether ``torch.nn.functional.grid_sample`` has this setting, in ``k`` spatial dimensions.

    Parameters
    ----------
    mode, padding_mode : str
    k : int
        Spatial dimensionality: 2 (4-D input) or 3 (5-D input).
    fill_value, cubic_a : float
        PyTorch has only the defaults, :data:`FILL_VALUE` and :data:`CUBIC_A`.

    Returns
    -------
    bool
    """
    row = SETTINGS.get((mode, padding_mode))
    return (row is not None and k in row.pytorch_dims and fill_value == FILL_VALUE
            and cubic_a == CUBIC_A)


def _choice(value, name, fn, choices):
    if not isinstance(value, str) or value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{fn}(): expected {name} to be one of {allowed}, got {value!r}")


def _layout(k):
    return f"{k + 2}-D U ({k} spatial dimensions)"


def check(mode, padding_mode, fn, *, k=None, fill_value=FILL_VALUE, cubic_a=CUBIC_A,
          fill_arguments=()):
    """Validate a sampler setting against the table; return ``(fill_value, cubic_a)`` as floats.

    Parameters
    ----------
    mode, padding_mode : str
        A row of :data:`SETTINGS`.
    fn : str
        The calling function, named in the messages.
    k : int, optional
        Spatial dimensionality of the input; None skips the dimension check.
    fill_value : real, default FILL_VALUE
        Finite; another value than the default only with a padding of :data:`FILL_PADDINGS`.
    cubic_a : real, default CUBIC_A
        Finite; another value than the default only with a mode of :data:`CUBIC_MODES`.
    fill_arguments : sequence of str, default ()
        Arguments given about the fill value (its tangent, cotangent or gradient), as the
        caller names them (``"need_dfill_value=True"``); refused without a fill padding.

    Returns
    -------
    tuple of float

    Raises
    ------
    ValueError
        Unknown mode or padding, a setting not supported in ``k`` dimensions, a non-finite
        value, or a value for an option the setting does not have.
    TypeError
        ``fill_value`` or ``cubic_a`` not a real number (bools are refused).

    Examples
    --------
    >>> check("bilinear", "zeros", "grid_sample", cubic_a=-0.5)
    Traceback (most recent call last):
    ...
    ValueError: grid_sample(): cubic_a=-0.5 applies only with mode='bicubic', got mode='bilinear'
    """
    _choice(mode, "mode", fn, MODES)
    _choice(padding_mode, "padding_mode", fn, PADDING_MODES)
    fill_value = _checks.check_finite_real(fill_value, "fill_value", fn)
    cubic_a = _checks.check_finite_real(cubic_a, "cubic_a", fn)
    row = SETTINGS[mode, padding_mode]
    if k is not None and k not in row.dims:
        supported = " or ".join(_layout(d) for d in row.dims)
        raise ValueError(f"{fn}(): mode={mode!r} with padding_mode={padding_mode!r} supports "
                         f"{supported} only, got {_layout(k)}")
    given = ([f"fill_value={fill_value!r}"] if fill_value != FILL_VALUE else []) + list(fill_arguments)
    if given and padding_mode not in FILL_PADDINGS:
        paddings = " or ".join(f"padding_mode={p!r}" for p in FILL_PADDINGS)
        raise ValueError(f"{fn}(): {given[0]} applies only with {paddings}, "
                         f"got padding_mode={padding_mode!r}")
    if cubic_a != CUBIC_A and mode not in CUBIC_MODES:
        modes = " or ".join(f"mode={m!r}" for m in CUBIC_MODES)
        raise ValueError(f"{fn}(): cubic_a={cubic_a!r} applies only with {modes}, got mode={mode!r}")
    return fill_value, cubic_a


def markdown():
    """The table as markdown, as docs/conventions.md shows it.

    Returns
    -------
    str
        One line per setting: mode, padding, where it pads, stnref's and PyTorch's input ranks.
    """
    def ranks(dims):
        return ", ".join(f"{k + 2}-D" for k in dims) or "no"

    lines = ["| mode | padding_mode | pads | stnref | PyTorch |", "|---|---|---|---|---|"]
    lines += [f"| {s.mode} | {s.padding_mode} | {s.pads} | {ranks(s.dims)} | {ranks(s.pytorch_dims)} |"
              for s in SETTINGS.values()]
    return "\n".join(lines)
