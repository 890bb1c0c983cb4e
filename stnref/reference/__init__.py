"""Tools for other implementations of the sampler: golden vectors and a checker.

:mod:`stnref.reference.golden` writes a versioned, byte-reproducible set of reference
cases (:func:`export`) and compares someone else's results against them, case by case
(:func:`check`), naming the convention (docs/conventions.md) each failing edge case pins.
Guide: ``docs/kernel_authors.md``.
"""

from .golden import (
    MANIFEST_NAME,
    MODES,
    PADDINGS,
    REFERENCE_VERSION,
    RULES,
    SAMPLER_OPS,
    check,
    compute_outputs,
    export,
    load_cases,
)

__all__ = ["MANIFEST_NAME", "REFERENCE_VERSION", "check", "compute_outputs", "export", "load_cases"]
