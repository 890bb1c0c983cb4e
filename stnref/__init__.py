"""stnref: Spatial Transformer Networks (Jaderberg et al., 2015) in vectorised NumPy.

Every forward has a hand-derived backward; semantics follow PyTorch's
``affine_grid`` / ``grid_sample`` exactly.
"""

from ._checks import set_max_elements
from .gradcheck import gradcheck
from .grids import (
    affine_grid,
    affine_grid_backward,
    attention_grid,
    attention_grid_backward,
)
from .sampling import grid_sample, grid_sample_backward

__version__ = "0.1.0"

__all__ = [
    "affine_grid",
    "affine_grid_backward",
    "attention_grid",
    "attention_grid_backward",
    "grid_sample",
    "grid_sample_backward",
    "gradcheck",
    "set_max_elements",
]
