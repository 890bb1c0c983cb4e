"""stnref: Spatial Transformer Networks (Jaderberg et al., 2015) in vectorised NumPy.

Every forward has a hand-derived backward; semantics follow PyTorch's
``affine_grid`` / ``grid_sample`` exactly (docs/conventions.md).  Map of the paper:

- eqs. (1)-(7) as plain code, the definition everything else is tested against:
  :mod:`stnref.equations`
- paper §3.1 localisation networks: :mod:`stnref.localisation`
- paper §3.2 grid generators: :func:`affine_grid`, :func:`attention_grid`,
  :func:`projective_grid`, :func:`tps_grid` (:mod:`stnref.grids`); by name:
  :data:`TRANSFORMS` (:mod:`stnref.registry`)
- paper §3.3 sampler: :func:`grid_sample`, :func:`grid_sample_backward` (:mod:`stnref.sampling`);
  forward mode and double backward: :mod:`stnref.second_order`
- paper §3.4 the spatial transformer layer: :class:`SpatialTransformer`, :class:`Parallel`
  (:mod:`stnref.transformer`)
- paper §4.1 the paper's networks: :func:`build_model` (:mod:`stnref.networks`); data:
  :mod:`stnref.data`; layers, losses, optimisers: :mod:`stnref.nn`

Prototyping: :func:`manual_seed` seeds every layer and mini-batch order built without an
``rng``; :func:`fit` trains any classifier built from :mod:`stnref.nn`
(:mod:`stnref.training`), with a schedule, a time budget, per-epoch evaluation and
checkpoints that resume exactly.

Tools: :func:`gradcheck` and :func:`gradcheck_module` (finite differences), :mod:`stnref.reference` (golden vectors
for other implementations), and the ``stnref`` command line with what it runs
(training, checkpoints, experiments, demo, benchmarks) in :mod:`stnref.app`.
"""

import importlib

__version__ = "0.2.0"

# Public name -> the module defining it.  The modules are imported on first use (PEP 562),
# so ``import stnref`` is cheap: the ``stnref`` command starts, and handles Ctrl-C, before
# NumPy and SciPy are loaded.  ``from stnref import *`` and ``stnref.<name>`` work as usual.
_SOURCES = {
    "set_max_elements": "_checks",
    "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "gradcheck": "gradcheck", "gradcheck_module": "gradcheck",
    **dict.fromkeys(("PROJECTIVE_FAR", "affine_grid", "affine_grid_backward", "attention_grid",
                     "attention_grid_backward", "projective_grid", "projective_grid_backward",
                     "tps_control_points", "tps_grid", "tps_grid_backward", "tps_matrix"), "grids"),
    "MODEL_NAMES": "networks", "build_model": "networks",
    **dict.fromkeys(("TRANSFORMS", "Transform", "get_transform", "tps_transform"), "registry"),
    "grid_sample": "sampling", "grid_sample_backward": "sampling",
    **dict.fromkeys(("affine_grid_jvp", "attention_grid_jvp", "grid_sample_double_backward",
                     "grid_sample_jvp", "projective_grid_jvp", "tps_grid_jvp"), "second_order"),
    "Parallel": "transformer", "SpatialTransformer": "transformer",
    "manual_seed": "nn.seeding", "fit": "training",
}
# Subpackages and modules reachable as attributes (``stnref.nn.Linear``) without an import.
_SUBMODULES = ("checkpoint", "data", "equations", "gradcheck", "grids", "localisation", "networks",
               "nn", "reference", "registry", "sampling", "second_order", "training", "transformer")


def __getattr__(name):
    if name in _SOURCES:
        value = getattr(importlib.import_module(f".{_SOURCES[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value      # looked up once
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))


__all__ = [
    "MODEL_NAMES",
    "PROJECTIVE_FAR",
    "Parallel",
    "SpatialTransformer",
    "TRANSFORMS",
    "Transform",
    "affine_grid",
    "affine_grid_backward",
    "affine_grid_jvp",
    "attention_grid",
    "attention_grid_backward",
    "attention_grid_jvp",
    "build_model",
    "fit",
    "get_transform",
    "gradcheck",
    "gradcheck_module",
    "grid_sample",
    "grid_sample_backward",
    "grid_sample_double_backward",
    "grid_sample_jvp",
    "load_checkpoint",
    "manual_seed",
    "projective_grid",
    "projective_grid_backward",
    "projective_grid_jvp",
    "save_checkpoint",
    "set_max_elements",
    "tps_control_points",
    "tps_grid",
    "tps_grid_backward",
    "tps_grid_jvp",
    "tps_matrix",
    "tps_transform",
]
