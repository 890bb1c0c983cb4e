"""Forward oracle for bilinear and nearest: ``scipy.ndimage.map_coordinates`` (docs/conventions.md §7.2).

The grid is unnormalised (docs/conventions.md §3.1) to pixel coordinates and handed to
scipy in array-axis order ``(row, col)`` / ``(depth, row, col)``, i.e. the grid's
``(x, y, z)`` reversed.  The padding modes map one to one:

    ==============  ===============  ==============================  =============================
    stnref          align_corners    scipy mode (cval)               picture (size 4: a b c d)
    ==============  ===============  ==============================  =============================
    zeros           either           'grid-constant', cval=0         0 0 0 0 | a b c d | 0 0 0 0
    border          either           'nearest'                       a a a a | a b c d | d d d d
    reflection      True             'mirror'  (about centres)       d c b | a b c d | c b a
    reflection      False            'reflect' (about edges)         d c b a | a b c d | d c b a
    constant        either           'grid-constant', cval=fill      f f f f | a b c d | f f f f
    wrap            either           'grid-wrap'                     a b c d | a b c d | a b c d
    ==============  ===============  ==============================  =============================

``order=1`` is bilinear / trilinear, ``order=0`` nearest (points kept away
from exact .5 ties, where scipy rounds half up and stnref, like PyTorch, half to
even).  Bicubic has no scipy oracle -- scipy's ``order=3`` is a B-spline, not Keys
convolution -- and is checked against ``tests/loops.py`` and ONNX's records instead.
JAX's ``map_coordinates`` (``mode="constant"``, ``"wrap"``) is checked too where
it is installed.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
from hypothesis import given, settings
from hypothesis import strategies as st

from stnref import grid_sample
from strategies import combo_id, combos, sampler_cases, unnormalize

SCIPY_TOL = 1e-12  # both sum the same <= 8 products; scipy orders them differently
SCIPY_MODE = {
    ("zeros", False): "grid-constant", ("zeros", True): "grid-constant",
    ("border", False): "nearest", ("border", True): "nearest",
    ("reflection", False): "reflect", ("reflection", True): "mirror",
    ("constant", False): "grid-constant", ("constant", True): "grid-constant",
    ("wrap", False): "grid-wrap", ("wrap", True): "grid-wrap",
}
SCIPY_ORDER = {"nearest": 0, "bilinear": 1}
COMBOS = [c for c in combos() if c[1] in SCIPY_ORDER and (c[2], c[3]) in SCIPY_MODE]  # scipy has these


def scipy_grid_sample(U, grid, mode, padding_mode, align_corners, fill_value=0.0, cubic_a=None):
    """``grid_sample`` by ``map_coordinates``, one (n, c) image at a time."""
    N, C = U.shape[:2]
    k = grid.shape[-1]
    spatial = U.shape[2:]
    V = np.empty((N, C, *grid.shape[1:-1]))
    for n in range(N):
        # coordinates in array-axis order: axis j of U reads grid component k - 1 - j
        coords = np.stack([unnormalize(grid[n, ..., k - 1 - j], spatial[j], align_corners)
                           for j in range(k)])
        for c in range(C):
            V[n, c] = scipy.ndimage.map_coordinates(
                U[n, c], coords, order=SCIPY_ORDER[mode],
                mode=SCIPY_MODE[padding_mode, align_corners], cval=fill_value, prefilter=False)
    return V


@pytest.mark.parametrize("combo", COMBOS, ids=[combo_id(c) for c in COMBOS])
@settings(max_examples=20)
@given(data=st.data())
def test_matches_map_coordinates(combo, data):
    k, mode, padding, ac = combo
    # "smooth" grids keep nearest's points away from .5 ties (and every point off kinks)
    case = data.draw(sampler_cases(dims=(k,), modes=(mode,), paddings=(padding,), align=(ac,)))
    V = grid_sample(case.U, case.grid, **case.kwargs)
    np.testing.assert_allclose(V, scipy_grid_sample(case.U, case.grid, **case.kwargs),
                               rtol=0, atol=SCIPY_TOL)


@pytest.mark.parametrize("combo", [c for c in COMBOS if c[1] == "bilinear"],
                         ids=[combo_id(c) for c in COMBOS if c[1] == "bilinear"])
@settings(max_examples=10)
@given(data=st.data())
def test_bilinear_matches_map_coordinates_on_kinks(combo, data):
    # bilinear is continuous, so exact integers, folds and far points must agree too
    k, mode, padding, ac = combo
    case = data.draw(sampler_cases(dims=(k,), modes=(mode,), paddings=(padding,), align=(ac,),
                                   grids="kinky"))
    V = grid_sample(case.U, case.grid, **case.kwargs)
    np.testing.assert_allclose(V, scipy_grid_sample(case.U, case.grid, **case.kwargs),
                               rtol=0, atol=SCIPY_TOL)


def test_scipy_rounds_nearest_ties_up_where_stnref_rounds_half_to_even():
    # the one place the nearest oracle is not used (docs/conventions.md §7.2)
    U = np.arange(5.0).reshape(1, 1, 1, 5)
    i = np.array([0.5, 1.5, 2.5, 3.5])
    grid = np.stack([(2 * i + 1) / 5 - 1, np.zeros(4)], axis=-1)[None, None]
    ours = grid_sample(U, grid, mode="nearest").reshape(-1)
    theirs = scipy_grid_sample(U, grid, "nearest", "zeros", False).reshape(-1)
    assert ours.tolist() == [0.0, 2.0, 2.0, 4.0] and theirs.tolist() == [1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("padding, jax_mode", [("constant", "constant"), ("wrap", "wrap")])
def test_jax_constant_and_wrap_are_stnref_constant_and_wrap(padding, jax_mode):
    jax = pytest.importorskip("jax")
    from jax.scipy.ndimage import map_coordinates
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(31)
    U = rng.standard_normal((1, 1, 5, 6))
    grid = rng.uniform(-2.5, 2.5, (1, 7, 8, 2))
    V = grid_sample(U, grid, padding_mode=padding, fill_value=1.25 if padding == "constant" else 0.0)
    coords = [unnormalize(grid[0, ..., 1], 5, False), unnormalize(grid[0, ..., 0], 6, False)]
    theirs = np.asarray(map_coordinates(U[0, 0], coords, order=1, mode=jax_mode, cval=1.25))
    np.testing.assert_allclose(V[0, 0], theirs, rtol=0, atol=SCIPY_TOL)
