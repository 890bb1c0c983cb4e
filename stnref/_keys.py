"""Keys' cubic convolution kernel as the sampler evaluates it: PyTorch's Horner forms.

The plain statement is :func:`stnref.equations.cubic_kernel`; these are the same
polynomials written as PyTorch's bicubic writes them, so that for ``A = -0.75`` stnref
rounds exactly as PyTorch does (docs/conventions.md §3.7, §4.3, §4.5).  ``k1`` holds on
``|d| <= 1``, ``k2`` on ``1 < |d| < 2``; ``dk*`` and ``ddk*`` are their derivatives.  The
sampler's bicubic and tricubic weights (:func:`stnref.sampling._cubic`) and the diagnosis
(:mod:`stnref.reference`) use this one kernel.
"""

from __future__ import annotations

import numpy as np

from .sampler_settings import CUBIC_A

__all__ = ["keys"]

# Horner steps in place, in the order (and so with the roundings) of PyTorch's bicubic:
# k1(x) = ((A+2) x - (A+3)) x x + 1,  k2(x) = ((A x - 5A) x + 8A) x - 4A, and their
# derivatives written the same way.  ``A`` is a scalar of the dtype of ``x``; the integer
# constants keep that dtype.

def k1(x, A):
    r = x * (A + 2)
    r -= A + 3
    r *= x
    r *= x
    r += 1
    return r


def k2(x, A):
    r = x * A
    r -= 5 * A
    r *= x
    r += 8 * A
    r *= x
    r -= 4 * A
    return r


def dk1(x, A):  # (3 (A+2) x - 2 (A+3)) x
    r = x * (3 * (A + 2))
    r -= 2 * (A + 3)
    r *= x
    return r


def dk2(x, A):  # (3A x - 10A) x + 8A
    r = x * (3 * A)
    r -= 10 * A
    r *= x
    r += 8 * A
    return r


def ddk1(x, A):  # 6 (A+2) x - 2 (A+3)
    r = x * (6 * (A + 2))
    r -= 2 * (A + 3)
    return r


def ddk2(x, A):  # 6A x - 10A
    r = x * (6 * A)
    r -= 10 * A
    return r


def keys(d, a=CUBIC_A):
    """Keys' cubic convolution kernel ``k(d)`` with parameter ``a``, as the sampler evaluates it.

    ``((a+2)|d| - (a+3)) |d|^2 + 1`` for ``|d| <= 1``, ``((a|d| - 5a)|d| + 8a)|d| - 4a`` for
    ``1 < |d| < 2``, else 0: the Horner forms and roundings of PyTorch's bicubic, in the dtype
    of ``d`` (float64 for other input).  The plain statement is
    :func:`stnref.equations.cubic_kernel`.

    Parameters
    ----------
    d : array_like
        Distances from the sample point to the taps.
    a : float, default CUBIC_A

    Returns
    -------
    ndarray
        ``k(d)``, shape and float dtype of ``d``.

    Examples
    --------
    >>> keys(np.array([0.0, 0.5, 1.5, 2.0]))
    array([ 1.     ,  0.59375, -0.09375,  0.     ])
    """
    d = np.asarray(d)
    d = np.abs(d if d.dtype.kind == "f" else d.astype(np.float64))
    A = d.dtype.type(a)
    return np.where(d <= 1, k1(d, A), np.where(d < 2, k2(d, A), d.dtype.type(0)))
