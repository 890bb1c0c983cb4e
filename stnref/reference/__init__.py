"""Tools for other implementations of the sampler: golden vectors, a checker and a diagnosis.

:mod:`stnref.reference.golden` writes a versioned, byte-reproducible set of reference
cases (:func:`export`) and compares someone else's results against them, case by case
(:func:`check`, :func:`run_check`), naming what fails, where, the rule that explains it and
the convention (docs/conventions.md) each failing edge case pins.
:func:`diagnose` (:mod:`stnref.reference.diagnosis`) probes a black-box sampler and says
which conventions it follows and where it departs from PyTorch.
Guide: ``docs/kernel_authors.md``.
"""

from .diagnosis import Diagnosis, diagnose
from .golden import MANIFEST_NAME, REFERENCE_VERSION, Report, check, compute_outputs, export, load_cases, run_check

__all__ = ["MANIFEST_NAME", "REFERENCE_VERSION", "Diagnosis", "Report", "check", "compute_outputs",
           "diagnose", "export", "load_cases", "run_check"]
