"""The transform registry: every 2-D grid generator behind one uniform interface.

A layer or a training script picks a transform by name and never branches on it::

    t = get_transform("tps")
    grid = t.grid(theta, size, align_corners)                 # (N, H, W, 2)
    dtheta = t.backward(dgrid, theta, size, align_corners)    # (N, *t.theta_shape)
    bias = t.identity()                                       # theta of the identity warp

Every entry's ``grid`` and ``backward`` follow the protocol of the public generators in
:mod:`stnref.grids`: ``grid(theta, size, align_corners)`` and ``backward(dgrid, theta,
size, align_corners)``, the backward taking the forward's inputs.  Only the projective
backward depends on ``theta``'s values; the others check it.  A new transform is a
:class:`Transform` of two such functions and an identity (``docs/prototyping.md``
builds and checks one); it goes wherever a registry name does.  The affine entry is 2-D
only (3-D affine grids: :func:`stnref.affine_grid`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import _checks, grids

__all__ = ["TRANSFORMS", "Transform", "get_transform", "tps_transform"]


@dataclass(frozen=True)
class Transform:
    """One grid generator, its backward and its identity.

    Attributes
    ----------
    name : str
        ``"affine"``, ``"attention"``, ``"projective"`` or ``"tps"``.
    theta_shape : tuple of int
        Per-sample parameter shape: ``(2, 3)``, ``(3,)``, ``(3, 3)`` or ``(K, 2)``.
    grid : callable
        ``grid(theta (N, *theta_shape), size (N, C, H, W), align_corners) -> (N, H, W, 2)``.
    backward : callable
        ``backward(dgrid (N, H, W, 2), theta, size, align_corners) -> dtheta (N, *theta_shape)``.
    identity : callable
        ``identity() -> ndarray of theta_shape``, float64, a new array on every call
        (the bias a localisation network's last layer starts from).
    """

    name: str
    theta_shape: tuple
    grid: Callable
    backward: Callable
    identity: Callable


def _affine_grid_2d(theta, size, align_corners=False):
    """:func:`stnref.affine_grid` restricted to 2-D: ``size`` must be (N, C, H, W)."""
    _checks.check_size(size, "size", "affine_grid", (4,))
    return grids.affine_grid(theta, size, align_corners)


def _affine_backward(dgrid, theta, size, align_corners=False):
    _checks.check_size(size, "size", "affine_grid_backward", (4,))
    return grids.affine_grid_backward(dgrid, theta, size, align_corners)


def _affine_identity():
    return np.eye(2, 3)


def _attention_identity():
    return np.array([1.0, 0.0, 0.0])


def _projective_identity():
    return np.eye(3)


def tps_transform(control_points):
    """A thin-plate-spline registry entry for custom control points.

    Parameters
    ----------
    control_points : array_like, shape (K, 2)
        Target-space control points: K >= 3, finite, not collinear, no duplicates.
        Copied, so later changes to the caller's array have no effect.

    Returns
    -------
    Transform
        ``name="tps"``, ``theta_shape=(K, 2)``; its identity is the control points.

    Raises
    ------
    TypeError
        Non-float ``control_points``.
    ValueError
        Wrong shape, fewer than 3 points, non-finite, collinear or duplicated points.

    Examples
    --------
    >>> from stnref.grids import tps_control_points
    >>> from stnref.registry import tps_transform
    >>> t = tps_transform(tps_control_points(9))
    >>> t.theta_shape, t.grid(t.identity()[None], (1, 1, 3, 3), True).shape
    ((9, 2), (1, 3, 3, 2))
    """
    points, _ = grids._check_control_points(control_points, "tps_transform")
    points = points.copy()
    points.flags.writeable = False

    def grid(theta, size, align_corners=False):
        return grids.tps_grid(theta, size, points, align_corners)

    def backward(dgrid, theta, size, align_corners=False):
        return grids.tps_grid_backward(dgrid, theta, size, points, align_corners)

    def identity():
        return points.copy()

    return Transform("tps", points.shape, grid, backward, identity)


def _resolve_transform(transform, fn):
    if isinstance(transform, Transform):
        return transform
    if isinstance(transform, str):
        return get_transform(transform)
    raise TypeError(
        f"{fn}(): expected transform to be a registry name or a Transform, "
        f"got {type(transform).__name__}"
    )


TRANSFORMS = {
    "affine": Transform("affine", (2, 3), _affine_grid_2d, _affine_backward, _affine_identity),
    "attention": Transform("attention", (3,), grids.attention_grid, grids.attention_grid_backward,
                           _attention_identity),
    "projective": Transform("projective", (3, 3), grids.projective_grid,
                            grids.projective_grid_backward, _projective_identity),
    "tps": tps_transform(grids.tps_control_points()),
}


def get_transform(name):
    """The registry entry called ``name``.

    Parameters
    ----------
    name : str
        One of ``TRANSFORMS``: ``"affine"``, ``"attention"``, ``"projective"``, ``"tps"``.

    Returns
    -------
    Transform

    Raises
    ------
    ValueError
        Unknown name; the message lists the known ones.

    Examples
    --------
    >>> from stnref.registry import get_transform
    >>> get_transform("projective").identity()
    array([[1., 0., 0.],
           [0., 1., 0.],
           [0., 0., 1.]])
    """
    return TRANSFORMS[_checks.check_choice(name, "name", "get_transform", TRANSFORMS)]
