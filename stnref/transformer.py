"""The spatial transformer layer (paper §3, Fig. 2, and §3.4).

:class:`SpatialTransformer` chains the three parts of Fig. 2 -- a localisation
network ``theta = f_loc(U)`` (paper §3.1, :mod:`stnref.localisation`), a grid generator
``T_theta`` from the transform registry (paper §3.2, :mod:`stnref.registry`) and the
sampler (paper §3.3, :mod:`stnref.sampling`) -- and back-propagates through all three.
:class:`Parallel` runs several modules on one input and stacks their outputs
along channels (the paper's multi-transformer models, e.g. 2xST-FCN); its
children may share modules (one localisation trunk under two transformers).
The paper's networks built from these layers are in :mod:`stnref.networks`.
Derivations: ``docs/derivations/transformer.md``.
"""

from __future__ import annotations

import math

import numpy as np

from . import _checks
from . import sampler_settings as settings
from .nn import Linear, Module, Sequential
from .nn.module import _Container
from .registry import _resolve_transform
from .sampling import _sample, _sample_backward

__all__ = ["Parallel", "SpatialTransformer", "localisation_prefixes", "transformers"]


def _regression_layer(loc, fn):
    """The last ``Linear`` of ``loc`` (descending into trailing ``Sequential`` containers)."""
    layer = loc
    while isinstance(layer, Sequential) and len(layer) > 0:
        layer = layer[-1]
    if not isinstance(layer, Linear) or not layer.has_bias:
        raise TypeError(
            f"{fn}(): expected loc to end in a Linear regression layer with a bias, "
            f"got {type(layer).__name__}"
        )
    return layer


class SpatialTransformer(Module):
    """Spatial transformer layer, paper §3: ``V = sample(U, T_theta(G))``, ``theta = f_loc(U)``.

    Parameters
    ----------
    loc : Module
        Localisation network mapping ``U (N, C, H, W)`` to ``(N, prod(theta_shape))``;
        it must end in a :class:`~stnref.nn.Linear` with a bias.  On construction
        that regression layer is set to zero weight and the identity ``theta`` as
        bias (paper §4.1), so the layer starts as the identity warp.
    transform : str or Transform, default "affine"
        A registry name (``"affine"``, ``"attention"``, ``"projective"``, ``"tps"``)
        or a :class:`~stnref.registry.Transform` (e.g. a custom TPS).
    out_size : tuple (H_out, W_out), optional
        Output size; ``None`` keeps the input's ``(H, W)``.
    mode, padding_mode, align_corners
        As in :func:`stnref.grid_sample`, for 4-D input.
    input_grad : bool, default True
        Whether :meth:`backward` returns ``dU``.  Set False when the layer sits on
        the data: the sampler's scatter is skipped and ``backward`` returns None.
    fill_value, cubic_a : float, keyword-only
        As in :func:`stnref.grid_sample` (``fill_value`` with ``padding_mode="constant"``,
        ``cubic_a`` with ``mode="bicubic"``); fixed, not learned.

    Attributes
    ----------
    loc : Module
        The localisation network; its parameters are named ``loc.<name>``.
    transform : Transform
    last_theta : ndarray, shape (N, *theta_shape) or None
        A copy of the last forward's ``theta``.
    last_outside : float or None
        Health of the last forward: the fraction of its sampling points outside the
        input, ``max(|x_s|, |y_s|) > 1`` (they read padding: zeros by default).  A
        transformer that has drifted off the image samples mostly outside.
    last_theta_spread : float or None
        Health of the last forward: the largest standard deviation of an entry of
        ``theta`` over the batch (0 for one sample).  0 means one ``theta`` for every
        input -- as at the identity start, and in a transformer that has collapsed.

    Notes
    -----
    Composes ``stnref.grid_sample`` with the registry's grid generator, so it
    matches ``F.grid_sample(U, F.affine_grid(theta, ...))`` for the affine
    transform.

    Examples
    --------
    >>> import numpy as np
    >>> from stnref.nn import Flatten, Linear, Sequential
    >>> st = SpatialTransformer(Sequential(Flatten(), Linear(16, 6)))
    >>> U = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> bool(np.array_equal(st(U), U))
    True
    """

    def __init__(self, loc, transform="affine", out_size=None, mode="bilinear",
                 padding_mode="zeros", align_corners=False, input_grad=True, *,
                 fill_value=settings.FILL_VALUE, cubic_a=settings.CUBIC_A):
        super().__init__()
        fn = "SpatialTransformer"
        if not isinstance(loc, Module):
            raise TypeError(f"{fn}(): expected loc to be a Module, got {type(loc).__name__}")
        self.transform = _resolve_transform(transform, fn)
        self.theta_shape = tuple(self.transform.theta_shape)
        self.theta_size = math.prod(self.theta_shape)
        self.out_size = None if out_size is None else _checks.check_size(out_size, "out_size", fn, (2,))
        # the layer samples 4-D input
        self.fill_value, self.cubic_a = settings.check(mode, padding_mode, fn, k=2,
                                                       fill_value=fill_value, cubic_a=cubic_a)
        self.mode, self.padding_mode = mode, padding_mode
        self.align_corners = _checks.check_bool(align_corners, "align_corners", fn)
        self.input_grad = _checks.check_bool(input_grad, "input_grad", fn)
        regression = _regression_layer(loc, fn)
        if regression.out_features != self.theta_size:
            raise ValueError(
                f"{fn}(): expected the regression layer of loc to have out_features "
                f"{self.theta_size} (theta of shape {self.theta_shape} for transform "
                f"{self.transform.name!r}), got {regression.out_features}"
            )
        # Paper §4.1: zero weights and the identity transform as bias.
        np.copyto(regression.weight, 0)
        np.copyto(regression.bias, np.asarray(self.transform.identity(), dtype=np.float64).reshape(-1),
                  casting="same_kind")
        self.loc = loc
        self.last_theta = None
        self.last_outside = None
        self.last_theta_spread = None

    def _size(self, U):
        N, C, H, W = U.shape
        return (N, C) + (self.out_size if self.out_size is not None else (H, W))

    def forward(self, U):
        """Warp ``U (N, C, H, W)`` to ``V (N, C, H_out, W_out)`` (dtype of ``U``)."""
        fn = "SpatialTransformer.forward"
        U = _checks.float_array(U, "U", fn)
        _checks.check_ndim(U, "U", fn, (4,), "(N, C, H, W)")
        N = U.shape[0]
        with self._undone_on_error():
            out = self.loc.forward(U)
            if np.shape(out) != (N, self.theta_size):
                raise ValueError(
                    f"{fn}(): expected the localisation network to return shape "
                    f"({N}, {self.theta_size}), got {np.shape(out)}"
                )
            theta = out.astype(U.dtype, copy=False).reshape(N, *self.theta_shape)
            size = self._size(U)
            grid = self.transform.grid(theta, size, self.align_corners)    # (N, H_out, W_out, 2)
            # in training, the sampler's taps are kept for the backward, which then skips
            # recomputing them (about 32 bytes per output point for bilinear float32)
            V, taps = _sample(U, grid, self.mode, self.padding_mode, self.align_corners,
                              keep=self.training, fill_value=self.fill_value, cubic_a=self.cubic_a)
        self.last_theta = theta.copy()
        # health, one pass over the grid and theta: what fell outside, how much theta varies
        outside = (np.abs(grid[..., 0]) > 1) | (np.abs(grid[..., 1]) > 1)    # (N, H_out, W_out)
        self.last_outside = np.count_nonzero(outside) / outside.size if outside.size else 0.0
        self.last_theta_spread = float(theta.reshape(N, -1).std(axis=0).max()) if N else 0.0
        return self.save_for_backward(V, U, theta, grid, taps)

    # Backward of V = S(U, G(theta)), theta = f_loc(U)   (docs/derivations/transformer.md)
    #   dU     = dS/dU^T dV  +  df_loc/dU^T dtheta     U feeds the sampler and the loc net
    #   dgrid  = dS/dgrid^T dV                         sampler backward (paper eqs. 6-7)
    #   dtheta = dG/dtheta^T dgrid                     generator backward (registry)
    #   the loc net's parameter gradients come from loc.backward(dtheta), after the sampler's
    #   backward: the reverse of the forward's order, as the layer protocol requires.
    def backward(self, dV):
        """Add to ``loc``'s gradients and return ``dU`` (None when ``input_grad`` is False)."""
        dV, (U, theta, grid, taps) = self.pop_saved(dV, "dV")
        dU_sampler, dgrid = _sample_backward(
            dV, U, grid, self.mode, self.padding_mode, self.align_corners, self.input_grad, taps,
            self.fill_value, self.cubic_a,
        )
        dtheta = self.transform.backward(dgrid, theta, self._size(U), self.align_corners)
        dU_loc = self.loc.backward(dtheta.reshape(U.shape[0], self.theta_size))
        if not self.input_grad:
            return None
        return dU_sampler + dU_loc


class Parallel(_Container):
    """Run modules on the same input and concatenate their outputs along channels (axis 1).

    The paper's multi-transformer networks: e.g. two spatial transformers side by
    side (2xST-FCN, MNIST addition) or 2/4 attention transformers (CUB-200).
    Children are named ``"0"``, ``"1"``, ...; they may share modules (two
    transformers whose localisation networks start with one trunk), whose
    gradients then sum over every use.

    Parameters
    ----------
    *modules : Module
        At least one.  Their outputs must agree in every axis except 1.

    Examples
    --------
    >>> import numpy as np
    >>> from stnref.nn import ReLU
    >>> Parallel(ReLU(), ReLU())(np.ones((2, 3, 4, 4))).shape
    (2, 6, 4, 4)
    """

    def __init__(self, *modules):
        if not modules:
            raise ValueError("Parallel(): expected at least one module, got none")
        super().__init__(*modules)

    def forward(self, x):
        """``x -> concatenate([m(x) for m in modules], axis=1)``."""
        fn = "Parallel.forward"
        with self._undone_on_error():
            outs = [m.forward(x) for m in self._modules.values()]
            rest = {(o.ndim, o.shape[:1] + o.shape[2:]) for o in outs}
            if len(rest) != 1 or outs[0].ndim < 2:
                raise ValueError(
                    f"{fn}(): expected outputs that differ only in axis 1, got shapes "
                    f"{[o.shape for o in outs]}"
                )
        return self.save_for_backward(np.concatenate(outs, axis=1), [o.shape[1] for o in outs])

    # Backward of y = [f_1(x), ..., f_k(x)] stacked along channels:
    #   dy splits into the children's slices dy_i;  dx = sum_i df_i/dx^T dy_i.
    # The children go back in the reverse order of their forwards (a module shared by two
    # children goes back through its uses last in, first out); the sum runs in child order.
    # A child returning None declares x to be data (no gradient wanted): the sum is None.
    def backward(self, dy):
        """Split ``dy`` along channels, back-propagate each part, sum the input gradients."""
        dy, (channels,) = self.pop_saved(dy)
        parts = np.split(dy, np.cumsum(channels)[:-1], axis=1)
        mods = list(self._modules.values())
        dxs = [None] * len(mods)
        for i in reversed(range(len(mods))):
            dxs[i] = mods[i].backward(parts[i])
        if any(dx is None for dx in dxs):
            return None
        dx = dxs[0]
        for d in dxs[1:]:
            dx = dx + d
        return dx


def _named_transformers(module, prefix=""):
    """``(dotted prefix, transformer)`` of every SpatialTransformer in ``module``, depth first
    (the prefix of its parameters: ``"0."``; ``""`` for ``module`` itself)."""
    if isinstance(module, SpatialTransformer):
        yield prefix, module
    for name, child in module.children():
        yield from _named_transformers(child, f"{prefix}{name}.")


def transformers(module):
    """Every :class:`SpatialTransformer` inside ``module`` (itself included), depth first.

    Parameters
    ----------
    module : stnref.nn.Module

    Returns
    -------
    list of SpatialTransformer
        In the order their forwards run in a ``Sequential`` / ``Parallel``; a transformer
        registered twice is listed at each place.
    """
    if not isinstance(module, Module):
        raise TypeError(f"transformers(): expected a Module, got {type(module).__name__}")
    return [st for _, st in _named_transformers(module)]


def localisation_prefixes(module):
    """Dotted name prefixes (``"0.loc."``) of every localisation network inside ``module``.

    For an optimiser's ``lr_scale`` (the paper's smaller localisation learning rate):
    ``SGD(model, lr, lr_scale={p: 0.1 for p in localisation_prefixes(model)})``.
    """
    if not isinstance(module, Module):
        raise TypeError(f"localisation_prefixes(): expected a Module, got {type(module).__name__}")
    return [f"{prefix}loc." for prefix, _ in _named_transformers(module)]
