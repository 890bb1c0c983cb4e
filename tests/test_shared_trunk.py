"""docs/examples/shared_trunk.py runs: a new transform, a shared localisation trunk, training, checks."""

from __future__ import annotations

import numpy as np
import pytest
from examples import load_example

from stnref import TRANSFORMS, affine_grid

GRID_TOL = 1e-15        # the new grid against affine_grid on the maps both can express


@pytest.fixture(scope="module")
def example():
    return load_example("shared_trunk")


@pytest.fixture(scope="module")
def found(example):
    lines = []
    result = example.run(epochs=2, train_size=512, test_size=128, print_fn=lines.append)
    result["lines"] = lines
    return result


def test_the_new_transform_is_right(example):
    size = (2, 1, 5, 7)
    angle = 0.3
    theta = np.array([[0.0, 0.0, 0.0], [angle, np.log(0.8), 0.0]])
    c, s = np.cos(angle), np.sin(angle)
    affine = np.array([np.eye(2, 3), [[0.8 * c, -0.8 * s, 0.0], [0.8 * s, 0.8 * c, 0.0]]])
    for align_corners in (False, True):      # identity, and a rotation with a scale (radial = 0)
        np.testing.assert_allclose(example.rotation_scale_grid(theta, size, align_corners),
                                   affine_grid(affine, size, align_corners), rtol=0, atol=GRID_TOL)
    assert all(r.ok for r in example.check_transform(seed=1))
    assert "rotation-scale" not in TRANSFORMS                 # a Transform, not a registry edit


def test_the_example_trains_and_every_module_passes_its_check(found):
    assert all(r.ok for r in found["transform_checks"])
    losses = found["losses"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert found["test_error"] < 90.0
    checks = found["module_checks"]
    assert all(r.ok for r in checks.values()), [n for n, r in checks.items() if not r.ok]
    # every distinct module: model, Parallel, 2 transformers, 2 loc nets, the trunk and its
    # 4 layers, 2 regression heads, the classifier and its 4 layers
    assert len(checks) == 18
    assert {"(model)", "0", "0.0", "0.1", "0.0.loc.0", "1.3"} <= set(checks)
    assert "0.1.loc.0" not in checks                          # the trunk, checked at its first use


def test_the_trunk_is_one_set_of_parameters(found):
    model, trunk = found["model"], found["trunk"]
    rotate, attend = model[0][0], model[0][1]
    assert rotate.loc[0] is trunk and attend.loc[0] is trunk
    names = list(model.params)
    assert [n for n in names if ".loc.0." in n] == ["0.0.loc.0.2.weight", "0.0.loc.0.2.bias"]
    assert {"0.1.loc.0.2.weight", "0.1.loc.0.2.bias"} <= set(model.state_dict())
    assert len(model.state_dict()) == len(names) + 2
    assert trunk[2].weight.any()                               # it was trained


def test_the_script_entry_point(example):
    assert example.main(["--epochs", "1", "--train-size", "128", "--test-size", "64"]) == 0
