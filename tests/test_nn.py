"""Tests of stnref.nn.layers and stnref.nn.losses: gradchecks, PyTorch parity, protocol."""

import numpy as np
import pytest

from stnref import gradcheck
from stnref.nn import Linear, ReLU, Sequential, Flatten, cross_entropy


def _module_check(module, x):
    """Gradcheck ``module`` w.r.t. its input and every parameter (float64)."""
    names = list(module.params)

    def load(params):
        module.load_state_dict(dict(zip(names, params)))

    def fn(x, *params):
        load(params)
        return module.forward(x)

    def vjp(u, x, *params):
        load(params)
        module.forward(x)
        dx = module.backward(u)
        grads = module.grads
        return (dx,) + tuple(grads[k] for k in names)

    inputs = [x] + [module.params[k].copy() for k in names]
    return gradcheck(fn, vjp, inputs, names=["x"] + names)


def test_mlp_gradcheck():
    rng = np.random.default_rng(0)
    net = Sequential(Flatten(), Linear(6, 5, rng=rng), ReLU(), Linear(5, 3, rng=rng))
    _module_check(net, rng.standard_normal((4, 2, 3))).raise_if_failed()


def test_cross_entropy_value():
    loss, d = cross_entropy(np.zeros((2, 4)), np.array([0, 3]))
    assert loss == pytest.approx(np.log(4), abs=1e-15)
