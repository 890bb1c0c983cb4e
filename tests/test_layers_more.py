"""Identity, Sigmoid, BatchNorm1d/2d, buffers, ``Module.to(dtype)`` and ``num_parameters``."""

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stnref
from stnref import gradcheck, gradcheck_module
from stnref.networks import build_model, count_parameters
from stnref.nn import (
    SGD,
    Adam,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Flatten,
    Identity,
    Linear,
    ReLU,
    Sequential,
    Sigmoid,
    batch_norm,
    batch_norm_backward,
    sigmoid,
    sigmoid_backward,
)

F32_TOL = 1e-5       # float32 against float64 on O(1) values


def rng(seed):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- Identity, Sigmoid

def test_identity_passes_values_and_gradients_through():
    layer = Identity()
    x = rng(0).standard_normal((3, 2, 4))
    np.testing.assert_array_equal(layer(x), x)
    dy = rng(1).standard_normal(x.shape)
    np.testing.assert_array_equal(layer.backward(dy), dy)
    with pytest.raises(ValueError, match="expected dy of shape"):
        layer(x)
        layer.backward(dy[:1])


def test_sigmoid_is_stable_and_its_backward_checks():
    x = np.array([-1e4, -50.0, 0.0, 50.0, 1e4, np.nan])
    y = sigmoid(x)
    assert y[0] == 0 and y[2] == 0.5 and y[4] == 1 and np.isnan(y[5])
    assert sigmoid(x.astype(np.float32)).dtype == np.float32
    x = rng(2).standard_normal((3, 4)) * 3
    gradcheck(lambda x: sigmoid(x), lambda dy, x: (sigmoid_backward(dy, x),), [x]).raise_if_failed()
    gradcheck_module(Sigmoid(), x).raise_if_failed()


# ----------------------------------------------------------------------------- BatchNorm

def bn_case(seed, shape):
    r = rng(seed)
    x = r.standard_normal(shape) * r.uniform(0.5, 3) + r.uniform(-2, 2)
    c = shape[1]
    return x, r.uniform(0.5, 2, c), r.standard_normal(c)


@settings(max_examples=20)
@given(seed=st.integers(0, 2**31), shape=st.sampled_from([(5, 3), (4, 2, 6), (3, 2, 4, 5), (2, 1, 3, 3)]),
       fixed=st.booleans())
def test_batch_norm_backward_against_finite_differences(seed, shape, fixed):
    x, w, b = bn_case(seed, shape)
    stats = (rng(seed + 1).standard_normal(shape[1]), rng(seed + 2).uniform(0.5, 2, shape[1])) \
        if fixed else (None, None)

    def forward(x, w, b):
        return batch_norm(x, w, b, *stats)

    def vjp(dy, x, w, b):
        return batch_norm_backward(dy, x, w, *stats)

    gradcheck(forward, vjp, [x, w, b], names=["x", "weight", "bias"]).raise_if_failed()


def test_batch_norm_normalises_each_channel():
    x, _, _ = bn_case(3, (6, 3, 4, 4))
    y = batch_norm(x, eps=1e-12)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, atol=1e-9)
    y = batch_norm(x, mean=np.zeros(3), var=np.ones(3), eps=0.5)
    np.testing.assert_allclose(y, x / np.sqrt(1.5), rtol=1e-15)


@pytest.mark.parametrize("layer, shape", [(lambda: BatchNorm1d(3), (5, 3)),
                                          (lambda: BatchNorm1d(3), (4, 3, 7)),
                                          (lambda: BatchNorm2d(2), (3, 2, 4, 5))])
def test_batchnorm_module_gradcheck_and_running_statistics(layer, shape):
    bn = layer()
    x, w, b = bn_case(4, shape)
    np.copyto(bn.weight, w)
    np.copyto(bn.bias, b)
    gradcheck_module(bn, x).raise_if_failed()
    bn = layer()
    axes = (0,) + tuple(range(2, len(shape)))
    m = np.prod([shape[a] for a in axes])
    mean, var = np.zeros(shape[1]), np.ones(shape[1])
    for seed in range(3):                                # PyTorch's update, unbiased variance
        x, _, _ = bn_case(10 + seed, shape)
        bn(x)
        mean = 0.9 * mean + 0.1 * x.mean(axis=axes)
        var = 0.9 * var + 0.1 * x.var(axis=axes) * m / (m - 1)
    np.testing.assert_allclose(bn.running_mean, mean, rtol=1e-14)
    np.testing.assert_allclose(bn.running_var, var, rtol=1e-14)
    assert int(bn.num_batches_tracked) == 3
    bn.zero_grad()                                       # drops the three pending forwards
    bn.eval()
    x, _, _ = bn_case(20, shape)
    expect = (x - mean.reshape((1, -1) + (1,) * (len(shape) - 2))) / np.sqrt(
        var.reshape((1, -1) + (1,) * (len(shape) - 2)) + 1e-5)
    np.testing.assert_allclose(bn(x), expect, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="no pending forward"):
        bn.backward(np.ones(shape))                       # eval mode saves nothing


def test_batchnorm_cumulative_average_and_options():
    bn = BatchNorm1d(2, momentum=None)
    xs = [bn_case(s, (4, 2))[0] for s in range(3)]
    for x in xs:
        bn(x)
    np.testing.assert_allclose(bn.running_mean, np.mean([x.mean(0) for x in xs], axis=0), rtol=1e-13)
    plain = BatchNorm2d(2, affine=False, track_running_stats=False)
    assert plain.params == {} and plain.state_dict() == {}
    x, _, _ = bn_case(5, (3, 2, 2, 2))
    np.testing.assert_allclose(plain.eval()(x), batch_norm(x), rtol=0)   # batch statistics in eval
    gradcheck_module(plain.train(), x).raise_if_failed()


def test_batchnorm_state_dict_is_pytorchs():
    model = Sequential(Linear(3, 4, rng=rng(0)), BatchNorm1d(4), ReLU())
    assert list(model.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias",
                                        "1.running_mean", "1.running_var", "1.num_batches_tracked"]
    assert list(model.params) == ["0.weight", "0.bias", "1.weight", "1.bias"]   # buffers: no grads
    model(rng(1).standard_normal((5, 3)))
    state = model.state_dict()
    assert state["1.num_batches_tracked"].dtype == np.int64 and int(state["1.num_batches_tracked"]) == 1
    fresh = Sequential(Linear(3, 4, rng=rng(2)), BatchNorm1d(4), ReLU())
    fresh.load_state_dict(state)
    for k, v in state.items():
        np.testing.assert_array_equal(fresh.state_dict()[k], v)
    bad = {**state, "1.num_batches_tracked": np.array(1.5)}
    with pytest.raises(TypeError, match="num_batches_tracked to be an integer"):
        fresh.load_state_dict(bad)


@pytest.mark.parametrize("make, shape, match", [
    (lambda: BatchNorm2d(3), (2, 2, 4, 4), r"expected x of shape \(N, C, H, W\) with C=3"),
    (lambda: BatchNorm1d(3), (2, 3, 4, 5), r"\(N, C\) or \(N, C, L\)"),
    (lambda: BatchNorm1d(3), (1, 3), "more than 1 value per channel"),
])
def test_batchnorm_refuses_wrong_inputs(make, shape, match):
    with pytest.raises(ValueError, match=match):
        make()(np.ones(shape))


@pytest.mark.parametrize("kwargs, match", [({"eps": 0}, "eps > 0"), ({"momentum": 2}, "momentum"),
                                           ({"num_features": 0}, "num_features")])
def test_batchnorm_refuses_wrong_options(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        BatchNorm2d(**{"num_features": 2, **kwargs})


def test_batchnorm_float32():
    x, w, b = bn_case(6, (4, 3, 5, 5))
    bn64, bn32 = BatchNorm2d(3), BatchNorm2d(3, dtype=np.float32)
    y64, y32 = bn64(x), bn32(x.astype(np.float32))
    assert y32.dtype == np.float32 and bn32.running_var.dtype == np.float32
    np.testing.assert_allclose(y32, y64, atol=F32_TOL)
    dy = rng(7).standard_normal(x.shape)
    np.testing.assert_allclose(bn32.backward(dy.astype(np.float32)), bn64.backward(dy), atol=1e-4)


# ----------------------------------------------------------------------------- to(dtype)

def test_to_converts_parameters_gradients_buffers_and_returns_the_module():
    model = Sequential(Conv2d(1, 2, 3, rng=rng(0)), BatchNorm2d(2), ReLU(), Flatten(),
                       Linear(2 * 4 * 4, 3, rng=rng(1)))
    x = rng(2).standard_normal((3, 1, 6, 6))
    y64 = model(x)
    model.backward(np.ones_like(y64))
    grads64 = {k: g.copy() for k, g in model.grads.items()}
    assert model.to("float32") is model
    assert all(p.dtype == np.float32 for p in model.params.values())
    assert all(g.dtype == np.float32 for g in model.grads.values())
    assert model[1].running_mean.dtype == np.float32 and model[1].num_batches_tracked.dtype == np.int64
    for k, g in model.grads.items():
        np.testing.assert_allclose(g, grads64[k], rtol=1e-6)
    with pytest.raises(ValueError, match="no pending forward"):     # pending forwards dropped
        model.backward(np.ones_like(y64))
    with pytest.raises(TypeError, match="expected x of dtype float32"):
        model(x)
    assert model(x.astype(np.float32)).dtype == np.float32
    with pytest.raises(TypeError, match="float32 or float64"):
        model.to(np.int32)


@pytest.mark.parametrize("optimizer", [lambda m: SGD(m, lr=0.1, momentum=0.9),
                                       lambda m: Adam(m, lr=0.01)])
def test_to_carries_the_optimiser_state_along(optimizer):
    def steps(model, opt, x, n):
        for _ in range(n):
            model.zero_grad()
            y = model(x)
            model.backward(y)
            opt.step()

    x = rng(3).standard_normal((4, 5))
    a = Sequential(Linear(5, 4, rng=rng(4)), ReLU(), Linear(4, 2, rng=rng(5)))
    b = copy.deepcopy(a)
    opt_a, opt_b = optimizer(a), optimizer(b)
    steps(a, opt_a, x, 3)
    steps(b, opt_b, x, 2)
    b.to(np.float32)
    steps(b, opt_b, x.astype(np.float32), 1)                 # the optimiser follows
    state = opt_b.state_dict()
    assert all(v.dtype == np.float32 for k, v in state.items() if k not in ("step", "lr"))
    for k in a.params:
        np.testing.assert_allclose(b.params[k], a.params[k], rtol=1e-5, atol=1e-6)
    opt_b.load_state_dict(opt_a.state_dict())                # float64 state into float32 buffers
    assert all(v.dtype == np.float32 for k, v in opt_b.state_dict().items() if k not in ("step", "lr"))


def test_num_parameters_counts_shared_arrays_once():
    shared = Linear(3, 3, rng=rng(0))
    model = Sequential(shared, ReLU(), shared, BatchNorm1d(3))
    assert model.num_parameters() == 12 + 6
    built = build_model("st-cnn", "affine", rng=rng(1))
    assert built.num_parameters() == count_parameters(built) == sum(p.size for p in built.params.values())


def test_layers_built_after_a_seed_are_reproducible_in_float32():
    stnref.manual_seed(9)
    a = Linear(4, 2, dtype=np.float32)
    stnref.manual_seed(9)
    b = Linear(4, 2).to(np.float32)
    np.testing.assert_array_equal(a.weight, b.weight)
    stnref.manual_seed(0)
