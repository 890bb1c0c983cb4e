"""Input validation shared by every public function.

Each check names the calling function, the argument, what was expected and
what was received, and raises ``TypeError`` (wrong kind of object or dtype)
or ``ValueError`` (wrong shape, size, value or mode).  Never ``assert``:
assertions vanish under ``python -O``.
"""

from __future__ import annotations

import functools
import math
import numbers
import operator

import numpy as np

from ._text import int_shown, shown

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Outputs larger than this many elements are refused before allocation
# (a 10^5 x 10^5 grid would otherwise take the machine down).  Change it with
# ``stnref.set_max_elements``; it is a plain module setting, not an env var.
_MAX_ELEMENTS = [2**31]
# The largest integer a count, size or seed read from the command line or a stored file may
# be: float64 holds every integer up to 2**53 exactly, so such a number is checked as an
# integer, and once accepted any float arithmetic on it is exact and finite.
MAX_INT = 2**53


def quiet_nonfinite(fn):
    """Run ``fn`` with NumPy's overflow and invalid-value warnings off.

    NaN and inf in an input go through the arithmetic by the documented rules
    (docs/conventions.md §5: a non-finite grid point gives NaN there; elsewhere
    NaN and inf propagate as in PyTorch, which never warns); a ``RuntimeWarning``
    about them would only be noise.  A fresh error state per call, so the
    decorated function is safe to call from several threads.
    """

    @functools.wraps(fn)
    def quiet(*args, **kwargs):
        with np.errstate(over="ignore", invalid="ignore"):
            return fn(*args, **kwargs)

    return quiet


def set_max_elements(n):
    """Set the largest number of elements one output array may have.

    Parameters
    ----------
    n : int
        New budget, at least 1.  The default is ``2**31`` elements (16 GiB
        of float64), so a mistyped size fails fast instead of exhausting memory.

    Returns
    -------
    int
        The previous budget, so a caller can restore it.
    """
    n = check_int(n, "n", "set_max_elements", minimum=1)
    previous = _MAX_ELEMENTS[0]
    _MAX_ELEMENTS[0] = n
    return previous


def check_budget(shape, fn, what):
    """Refuse an output of ``shape`` larger than the element budget."""
    count = 1
    for s in shape:
        count *= int(s)
    if count > _MAX_ELEMENTS[0]:
        raise ValueError(
            f"{fn}(): {what} of shape {tuple(int(s) for s in shape)} would have "
            f"{count} elements, over the budget of {_MAX_ELEMENTS[0]} "
            f"(raise it with stnref.set_max_elements)"
        )


def _describe(x):
    if isinstance(x, np.ndarray):
        return f"array of dtype {x.dtype}"
    return f"{type(x).__name__}"


def float_array(x, name, fn):
    """Return ``x`` as a float32/float64 ndarray (never a copy of an ndarray).

    Lists of Python floats are accepted and become float64.  Integer, bool,
    complex, object and string data are a ``TypeError``.
    """
    if isinstance(x, np.ndarray):
        arr = x
    else:
        if isinstance(x, (str, bytes)) or x is None:
            raise TypeError(f"{fn}(): expected {name} to be a float array, got {_describe(x)}")
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{fn}(): expected {name} to be a float array, got {_describe(x)}") from err
        if arr.dtype.kind == "f" and arr.dtype not in FLOAT_DTYPES:
            arr = arr.astype(np.float64)
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{fn}(): expected {name} of dtype float32 or float64, got {arr.dtype}"
        )
    return arr


def check_ndim(arr, name, fn, ndims, layout):
    """Require ``arr.ndim`` in ``ndims``; ``layout`` describes the expected shape."""
    if arr.ndim not in ndims:
        raise ValueError(
            f"{fn}(): expected {name} of shape {layout}, got shape {arr.shape}"
        )


def check_same_dtype(a, a_name, b, b_name, fn):
    if a.dtype != b.dtype:
        raise TypeError(
            f"{fn}(): expected {a_name} and {b_name} to have the same dtype, "
            f"got {a.dtype} and {b.dtype}"
        )


def check_finite(arr, name, fn):
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(
            f"{fn}(): expected finite {name}, got {arr[tuple(bad)]} at index {tuple(int(i) for i in bad)}"
        )


def check_finite_real(value, name, fn):
    """``value`` as a finite Python float: a real number (not a bool), neither NaN nor inf."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fn}(): expected {name} to be a real number, got {_describe(value)} {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{fn}(): expected a finite {name}, got {value}")
    return value


def check_representable(value, name, dtype, fn):
    """Refuse a finite float that overflows ``dtype`` (1e300 in float32)."""
    limit = float(np.finfo(dtype).max)
    if abs(value) > limit:
        raise ValueError(f"{fn}(): expected {name} finite in {np.dtype(dtype).name} "
                         f"(|{name}| <= {limit:.4g}), got {value!r}")


def check_choice(value, name, fn, choices):
    """Require ``value`` to be one of ``choices`` (a mapping or a sequence of str)."""
    if not isinstance(value, str) or value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{fn}(): expected {name} to be one of {allowed}, got {value!r}")
    return value


def check_bool(value, name, fn):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{fn}(): expected {name} to be a bool, got {_describe(value)} {value!r}")
    return bool(value)


def check_int(value, name, fn, minimum=None, maximum=None):
    """``value`` as a Python int in ``[minimum, maximum]`` (either bound optional).

    Integers are compared as integers, never converted to float, so a count of 400
    digits is refused by its value instead of overflowing later; such a value is
    shown by its number of digits, not printed whole.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{fn}(): expected {name} to be an int, got {_describe(value)} "
                        f"{shown(repr(value))}")
    value = operator.index(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        expected = (f"{minimum} <= {name} <= {maximum}" if minimum is not None and maximum is not None
                    else f"{name} >= {minimum}" if minimum is not None else f"{name} <= {maximum}")
        raise ValueError(f"{fn}(): expected {expected}, got {int_shown(value)}")
    return value


def is_finite_number(value):
    """Whether ``value`` is a real number (not a bool) that float64 holds finitely.

    An int is compared with :data:`MAX_INT` as an integer, never converted (``10**400``
    would overflow); a float must be finite.  For numbers read from files and stored
    configs, where a JSON number may be either.
    """
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, numbers.Integral):
        return -MAX_INT <= value <= MAX_INT
    return isinstance(value, numbers.Real) and math.isfinite(value)


def check_size(size, name, fn, lengths):
    """Validate a PyTorch-style ``size`` tuple such as ``(N, C, H, W)``.

    Returns a tuple of Python ints.  Every entry must be a positive integer.
    """
    if isinstance(size, (str, bytes)) or not hasattr(size, "__len__"):
        raise TypeError(f"{fn}(): expected {name} to be a tuple of ints, got {_describe(size)}")
    if len(size) not in lengths:
        want = " or ".join(str(n) for n in lengths)
        raise ValueError(f"{fn}(): expected {name} with {want} entries, got {tuple(size)}")
    out = []
    for i, s in enumerate(size):
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, numbers.Integral):
            raise TypeError(f"{fn}(): expected {name}[{i}] to be an int, got {s!r} in {tuple(size)}")
        if s < 1:
            raise ValueError(f"{fn}(): expected {name} entries >= 1, got {tuple(size)}")
        out.append(int(s))
    return tuple(out)


def check_U_grid(U, grid, fn, ndims):
    """``U`` and its sampling ``grid`` as float arrays of matching rank, batch and dtype.

    ``U`` is ``(N, C, H, W)`` (or ``(N, C, D, H, W)`` if 5 is in ``ndims``) with
    non-empty spatial axes; ``grid`` is ``(N, H_out, W_out, 2)`` (``(N, D_out,
    H_out, W_out, 3)``).
    """
    U = float_array(U, "U", fn)
    grid = float_array(grid, "grid", fn)
    layouts = {4: "(N, C, H_in, W_in)", 5: "(N, C, D_in, H_in, W_in)"}
    check_ndim(U, "U", fn, ndims, " or ".join(layouts[n] for n in ndims))
    k = U.ndim - 2
    layout = "(N, H_out, W_out, 2)" if k == 2 else "(N, D_out, H_out, W_out, 3)"
    if grid.ndim != U.ndim or grid.shape[-1] != k:
        raise ValueError(
            f"{fn}(): expected grid of shape {layout} for {U.ndim}-D U, got {grid.shape}"
        )
    if grid.shape[0] != U.shape[0]:
        raise ValueError(
            f"{fn}(): expected grid with batch N={U.shape[0]} like U, got {grid.shape[0]} "
            f"(grid {grid.shape}, U {U.shape})"
        )
    if min(U.shape[2:]) < 1:
        raise ValueError(f"{fn}(): expected U with non-empty spatial dimensions, got {U.shape}")
    check_same_dtype(U, "U", grid, "grid", fn)
    return U, grid


def check_dV(dV, U, grid, fn):
    """``dV`` with the sampler output's shape ``(N, C, *grid spatial)`` and ``U``'s dtype."""
    dV = float_array(dV, "dV", fn)
    expected = (U.shape[0], U.shape[1], *grid.shape[1:-1])
    if dV.shape != expected:
        raise ValueError(f"{fn}(): expected dV of shape {expected}, got {dV.shape}")
    check_same_dtype(dV, "dV", U, "U", fn)
    return dV
