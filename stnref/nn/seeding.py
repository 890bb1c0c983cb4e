"""One process-wide random generator, seeded like ``torch.manual_seed``, and the one rng resolver.

Every layer, localisation network and :class:`~stnref.nn.Batches` given no ``rng`` draws from
the generator :func:`manual_seed` seeds, so two layers built one after the other get different
weights, and one seed at the top of a script reproduces all of them.  An explicit
``numpy.random.Generator`` is used as given and leaves the process-wide one alone.  Like
PyTorch's default generator, it starts from a fixed seed (0) when stnref is imported, so a
script that never seeds is reproducible too.
"""

from __future__ import annotations

import numpy as np

from .._checks import check_int

__all__ = ["default_generator", "manual_seed"]

DEFAULT_SEED = 0
_GENERATOR = np.random.default_rng(DEFAULT_SEED)


def manual_seed(seed):
    """Seed the process-wide generator that everything given no ``rng`` draws from.

    After ``manual_seed(s)`` the generator draws exactly what ``np.random.default_rng(s)``
    would; the generator object stays the same (references to it follow the new seed).

    Parameters
    ----------
    seed : int >= 0

    Returns
    -------
    numpy.random.Generator
        The process-wide generator (:func:`default_generator`).

    Examples
    --------
    >>> from stnref.nn import Linear
    >>> _ = manual_seed(3); a, b = Linear(4, 3), Linear(4, 3)
    >>> _ = manual_seed(3); c = Linear(4, 3)
    >>> bool((a.weight == c.weight).all()), bool((a.weight == b.weight).all())
    (True, False)
    """
    seed = check_int(seed, "seed", "manual_seed", minimum=0)
    _GENERATOR.bit_generator.state = np.random.PCG64(seed).state
    return _GENERATOR


def default_generator():
    """The process-wide ``numpy.random.Generator`` (PyTorch's ``torch.default_generator``).

    Returns
    -------
    numpy.random.Generator
    """
    return _GENERATOR


def resolve_rng(rng, fn, seeds=False):
    """``rng`` as a Generator: a Generator as given, None as the process-wide one.

    With ``seeds`` an int is also accepted, as the seed of a new generator
    (``np.random.default_rng(rng)``).  Anything else is a ``TypeError`` naming ``fn``.
    """
    if rng is None:
        return _GENERATOR
    if isinstance(rng, np.random.Generator):
        return rng
    if seeds and isinstance(rng, (int, np.integer)) and not isinstance(rng, (bool, np.bool_)):
        return np.random.default_rng(check_int(rng, "rng", fn, minimum=0))
    kinds = "a numpy.random.Generator, an int seed or None" if seeds else \
        "a numpy.random.Generator or None"
    raise TypeError(f"{fn}(): expected rng to be {kinds}, got {type(rng).__name__} {rng!r}")
