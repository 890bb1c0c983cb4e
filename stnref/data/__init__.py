"""Digits for the distorted-MNIST experiments (paper §4.1): built-in or MNIST files.

* :mod:`stnref.data.digits` -- :func:`synthetic_digits`, procedural handwritten
  digits in an MNIST-like 28x28 frame.  No download.
* :mod:`stnref.data.distortions` -- :func:`distort`, the paper's distortions (R, RTS,
  P, E, TC) with stnref's own grid generators and sampler.
* :mod:`stnref.data.idx` -- :func:`read_idx`, :func:`write_idx`, :func:`load_mnist`
  for the IDX files MNIST is distributed in.
* :mod:`stnref.data.dataset` -- :func:`load_dataset` puts them together.

The same seed gives bit-identical data, and the first ``k`` samples of a set of
``n`` equal a set of ``k``.  Details and measurements: ``docs/data.md``.
"""

from .dataset import distort_epoch, load_dataset, load_digits, split_sizes
from .digits import synthetic_digits
from .distortions import DISTORTIONS, distort
from .idx import load_mnist, read_idx, write_idx

__all__ = [
    "DISTORTIONS", "distort", "distort_epoch", "load_dataset", "load_digits", "load_mnist",
    "read_idx", "split_sizes", "synthetic_digits", "write_idx",
]
