"""Tests of stnref.nn: layers and losses.

Oracles: central differences (``stnref.gradcheck_module``, float64) for every
layer with respect to its input and every parameter; PyTorch (optional) for
forward and backward values with the same weights; exact known values.
Weight sharing, gradient accumulation and the pending-forward protocol:
``tests/test_sharing.py``.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stnref
from stnref import gradcheck, gradcheck_module
from stnref.nn import (
    AvgPool2d,
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    MaxPool2d,
    Module,
    ReLU,
    Sequential,
    Tanh,
    cross_entropy,
    log_softmax,
    softmax,
)

PARITY_TOL = 1e-12      # float64 agreement with PyTorch (same algorithm up to summation order)
F32_TOL = 1e-4          # float32 vs float64 result of the same layer


def _distinct(rng, shape, gap=0.1):
    """Values with pairwise gaps ``gap``, none within ``gap / 2`` of 0 (no ties, no kinks)."""
    size = int(np.prod(shape))
    return ((rng.permutation(size) - size // 2 + 0.5) * gap).reshape(shape)


# ----------------------------------------------------------------------------- gradchecks


@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradcheck(bias):
    rng = np.random.default_rng(0)
    layer = Linear(4, 3, bias=bias, rng=rng)
    gradcheck_module(layer, rng.standard_normal((5, 4))).raise_if_failed()


@settings(max_examples=25)
@given(
    n=st.integers(1, 2), c_in=st.integers(1, 2), c_out=st.integers(1, 2),
    kh=st.integers(1, 3), kw=st.integers(1, 3), stride=st.integers(1, 3),
    padding=st.integers(0, 2), extra_h=st.integers(0, 3), extra_w=st.integers(0, 3),
    bias=st.booleans(),
)
def test_conv2d_gradcheck(n, c_in, c_out, kh, kw, stride, padding, extra_h, extra_w, bias):
    rng = np.random.default_rng(1)
    layer = Conv2d(c_in, c_out, (kh, kw), stride=stride, padding=padding, bias=bias, rng=rng)
    x = rng.standard_normal((n, c_in, kh + extra_h, kw + extra_w))
    gradcheck_module(layer, x).raise_if_failed()


@settings(max_examples=12)
@given(kh=st.integers(1, 3), kw=st.integers(1, 3), stride=st.one_of(st.none(), st.integers(1, 3)),
       h=st.integers(3, 7), w=st.integers(3, 7), pool=st.sampled_from([MaxPool2d, AvgPool2d]))
def test_pool_gradcheck(kh, kw, stride, h, w, pool):
    rng = np.random.default_rng(2)
    x = _distinct(rng, (2, 2, h, w))
    gradcheck_module(pool((kh, kw), stride), x).raise_if_failed()


@pytest.mark.parametrize("layer", [ReLU(), Tanh(), Flatten()], ids=["relu", "tanh", "flatten"])
def test_elementwise_gradcheck(layer):
    x = _distinct(np.random.default_rng(3), (2, 3, 4), gap=0.05)   # no entry within FD eps of 0
    gradcheck_module(layer, x).raise_if_failed()


def test_dropout_gradcheck_fixed_mask():
    # gradcheck_module runs every evaluation on a fresh copy: the same rng state, the same mask
    layer = Dropout(0.4, rng=np.random.default_rng(7))
    x = np.random.default_rng(4).standard_normal((3, 5))
    state = layer.rng.bit_generator.state
    result = gradcheck_module(layer, x)
    result.raise_if_failed()
    assert [a.name for a in result.args] == ["input"]
    assert layer.rng.bit_generator.state == state          # the layer's own rng is untouched


def test_sequential_gradcheck_nested():
    rng = np.random.default_rng(5)
    net = Sequential(
        Conv2d(1, 2, 3, padding=1, rng=rng), Tanh(), MaxPool2d(2), Flatten(),
        Linear(8, 3, rng=rng),
    )
    x = _distinct(rng, (2, 1, 4, 4))
    gradcheck_module(net, x).raise_if_failed()


def test_cross_entropy_gradcheck():
    rng = np.random.default_rng(6)
    z = rng.standard_normal((4, 5))
    labels = np.array([0, 4, 2, 2])
    gradcheck(lambda z: np.array(cross_entropy(z, labels)[0]),
              lambda u, z: (u * cross_entropy(z, labels)[1],), [z]).raise_if_failed()


# ----------------------------------------------------------------------------- exact values


def test_maxpool_ties_go_to_first_maximum_and_floor():
    x = np.array([[1.0, 3.0, 3.0, 0.0, 9.0],
                  [3.0, 2.0, 1.0, 3.0, 9.0],
                  [9.0, 9.0, 9.0, 9.0, 9.0]])[None, None]
    layer = MaxPool2d(2)
    np.testing.assert_array_equal(layer(x)[0, 0], [[3.0, 3.0]])
    dx = layer.backward(np.array([[[[10.0, 20.0]]]]))
    expected = np.zeros((3, 5))
    expected[0, 1] = 10.0           # first 3 in row-major order of the window
    expected[0, 2] = 20.0
    np.testing.assert_array_equal(dx[0, 0], expected)


def test_maxpool_nan_propagates_and_routes_like_torch():
    x = np.array([[1.0, np.nan, 7.0], [5.0, np.nan, 2.0]])[None, None]
    layer = MaxPool2d(2, stride=1)
    y = layer(x)
    assert np.isnan(y).all()
    dx = layer.backward(np.array([[[[1.0, 10.0]]]]))
    # PyTorch's CPU kernel keeps the last NaN of each window: (1, 1) for both windows.
    np.testing.assert_array_equal(dx[0, 0], [[0.0, 0.0, 0.0], [0.0, 11.0, 0.0]])


def test_maxpool_overlapping_windows_accumulate():
    x = np.array([[0.0, 5.0, 0.0, 0.0]])[None, None]
    dx = MaxPool2d((1, 2), stride=1)
    dx(x)
    np.testing.assert_array_equal(dx.backward(np.array([[[[1.0, 2.0, 4.0]]]]))[0, 0], [[0.0, 3.0, 4.0, 0.0]])


def test_relu_gradient_zero_at_zero():
    layer = ReLU()
    layer(np.array([-1.0, 0.0, 2.0]))
    np.testing.assert_array_equal(layer.backward(np.ones(3)), [0.0, 0.0, 1.0])


def test_conv2d_known_value():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    layer = Conv2d(1, 1, 2, stride=2, bias=False)
    layer.load_state_dict({"weight": np.array([[[[1.0, 0.0], [0.0, -1.0]]]])})
    np.testing.assert_array_equal(layer(x)[0, 0], np.full((2, 2), -5.0))


def test_cross_entropy_stable_and_softmax():
    z = np.array([[1e4, 0.0, -1e4], [0.0, 0.0, 0.0]])
    loss, d = cross_entropy(z, np.array([0, 1]))
    assert loss == pytest.approx(np.log(3) / 2, rel=1e-14)
    np.testing.assert_allclose(d[0], [0.0, 0.0, 0.0], atol=1e-300)
    np.testing.assert_allclose(d[1], [1 / 6, -1 / 3, 1 / 6], rtol=1e-14)
    np.testing.assert_allclose(softmax(z).sum(axis=1), 1.0, rtol=1e-15)
    assert log_softmax(z)[0, 2] == -2e4


# PyTorch parity of every layer and loss (value and gradients, bit for bit on signed zeros,
# NaN and infinities where PyTorch is): tests/test_torch_records.py, on every run.


# ----------------------------------------------------------------------------- protocol


class _Net(Module):
    def __init__(self):
        super().__init__()
        self.loc = Sequential(Linear(3, 2), ReLU())
        self.register_parameter("scale", np.ones(2))
        self.head = Linear(2, 1)

    def forward(self, x):
        h = self.loc(x)                             # (N, 2)
        return self.save_for_backward(self.head(h * self.scale), h)

    # y = head(h * scale): dscale = sum_n dh_n * h_n, dh = d(h * scale) * scale;
    # the children go back in the reverse order of their forwards
    def backward(self, dy):
        dy, (h,) = self.pop_saved(dy)
        dhs = self.head.backward(dy)
        self.add_grad("scale", (dhs * h).sum(axis=0))
        return self.loc.backward(dhs * self.scale)


def test_nested_names_and_attribute_registration():
    net = _Net()
    assert list(net.params) == ["scale", "loc.0.weight", "loc.0.bias", "head.weight", "head.bias"]
    assert list(net.grads) == list(net.params)
    assert net.params["loc.0.weight"] is net.loc[0].weight
    assert len(net.loc) == 2 and isinstance(net.loc[1], ReLU)
    assert [name for name, _ in net.children()] == ["loc", "head"]
    gradcheck_module(net, np.random.default_rng(11).standard_normal((4, 3)) + 0.05).raise_if_failed()


def test_state_dict_round_trip_and_copies():
    a, b = _Net(), _Net()
    b.load_state_dict({k: v + 1.0 for k, v in a.state_dict().items()})
    live = b.params["head.weight"]
    sd = a.state_dict()
    sd["head.weight"][...] = 42.0                  # a copy: the module is unaffected
    assert not np.any(a.head.weight == 42.0)
    b.load_state_dict(a.state_dict())
    assert b.params["head.weight"] is live         # loaded in place, references stay valid
    x = np.random.default_rng(12).standard_normal((2, 3))
    np.testing.assert_array_equal(a(x), b(x))


@pytest.mark.parametrize("change,key", [
    (lambda d: d.pop("head.bias"), "head.bias"),
    (lambda d: d.update({"head.extra": np.zeros(1)}), "head.extra"),
    (lambda d: d.update({"loc.0.weight": np.zeros((3, 2))}), "loc.0.weight"),
])
def test_load_state_dict_strict(change, key):
    net = _Net()
    before = net.state_dict()
    sd = net.state_dict()
    sd["scale"] = sd["scale"] + 5.0
    change(sd)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        net.load_state_dict(sd)
    for k, v in before.items():                    # a failed load changes nothing
        np.testing.assert_array_equal(net.params[k], v)


def test_train_eval_recursive_and_dropout():
    drop = Dropout(0.25, rng=np.random.default_rng(13))
    net = Sequential(Linear(4, 4), Sequential(drop))
    assert net.eval() is net and not drop.training
    x = np.ones((200, 50))
    assert drop(x) is x
    with pytest.raises(ValueError, match=r"Dropout\.backward\(\): no pending forward.*eval mode"):
        drop.backward(x)                           # eval mode saves nothing to go back through
    assert net.train() is net and drop.training
    y = drop(x)
    kept = y != 0
    np.testing.assert_array_equal(y[kept], 1 / 0.75)
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_array_equal(drop.backward(np.full(x.shape, 2.0)), np.where(kept, 2 / 0.75, 0.0))
    np.testing.assert_array_equal(Dropout(1.0)(x), 0.0)


def test_dropout_same_seed_same_masks():
    x = np.ones((8, 8))
    a, b = Dropout(0.5, rng=np.random.default_rng(3)), Dropout(0.5, rng=np.random.default_rng(3))
    for _ in range(3):
        np.testing.assert_array_equal(a(x), b(x))


def test_init_seeded_and_pytorch_bounds():
    a = Conv2d(3, 16, 5, rng=np.random.default_rng(1))
    b = Conv2d(3, 16, 5, rng=np.random.default_rng(1))
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    stnref.manual_seed(0)       # no rng: the process-wide generator, which manual_seed reseeds
    np.testing.assert_array_equal(Linear(7, 2).weight, Linear(7, 2, rng=np.random.default_rng(0)).weight)
    for layer, fan_in in [(a, 75), (Linear(300, 400), 300)]:
        bound = 1 / np.sqrt(fan_in)
        for p in layer.params.values():
            assert np.abs(p).max() <= bound
        assert np.abs(layer.weight).max() > 0.95 * bound
        assert abs(layer.weight.mean()) < 0.05 * bound


def _all_layers(dtype):
    rng = np.random.default_rng(14)
    return [
        (Linear(6, 3, rng=rng, dtype=dtype), (4, 6)),
        (Conv2d(2, 3, 3, stride=2, padding=1, rng=rng, dtype=dtype), (2, 2, 6, 5)),
        (MaxPool2d(2), (2, 2, 5, 5)), (AvgPool2d(3, 1), (2, 2, 5, 5)),
        (ReLU(), (3, 4)), (Tanh(), (3, 4)), (Flatten(), (2, 3, 4)),
        (Dropout(0.5, rng=rng), (3, 4)),
    ]


@pytest.mark.parametrize("index", range(8))
def test_float32_preserved_and_close_to_float64(index):
    layer32, shape = _all_layers(np.float32)[index]
    layer64, _ = _all_layers(np.float64)[index]
    x = np.random.default_rng(15).standard_normal(shape)
    y32 = layer32(x.astype(np.float32))
    y64 = layer64(x)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, atol=F32_TOL)
    dy = np.random.default_rng(16).standard_normal(y64.shape)
    dx32 = layer32.backward(dy.astype(np.float32))
    assert dx32.dtype == np.float32
    np.testing.assert_allclose(dx32, layer64.backward(dy), atol=F32_TOL)
    for k, g in layer32.grads.items():
        assert g.dtype == np.float32 and layer32.params[k].dtype == np.float32
        np.testing.assert_allclose(g, layer64.grads[k], atol=F32_TOL)


@pytest.mark.parametrize("layer, shape", [(lambda: Conv2d(1, 2, 3), (1, 1, 4, 4)),
                                          (lambda: Linear(3, 2), (2, 3))])
def test_an_input_of_another_dtype_than_the_parameters_is_refused(layer, shape):
    """PyTorch refuses the mix; the message says how to make them agree."""
    with pytest.raises(TypeError, match=r"expected x of dtype float64.*got float32.*model.to"):
        layer()(np.ones(shape, dtype=np.float32))
    with pytest.raises(TypeError, match=r"expected x of dtype float32.*got float64"):
        layer().to(np.float32)(np.ones(shape))
    y = layer().to(np.float32)(np.ones(shape, dtype=np.float32))
    assert y.dtype == np.float32


@pytest.mark.parametrize("index", range(8))
def test_inputs_never_modified(index):
    layer, shape = _all_layers(np.float64)[index]
    x = np.random.default_rng(17).standard_normal(shape)
    x0 = x.copy()
    y = layer(x)
    dy = np.random.default_rng(18).standard_normal(y.shape)
    dy0 = dy.copy()
    layer.backward(dy)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dy, dy0)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("make,x,exc,match", [
    (lambda: Linear(3, 2), np.ones((2, 4)), ValueError, r"linear\(\): expected x of shape \(N, 3\)"),
    (lambda: Linear(3, 2), np.ones((2, 3, 1)), ValueError, r"linear\(\).*\(N, in_features\)"),
    (lambda: Linear(3, 2), np.ones((2, 3), dtype=int), TypeError, "float32 or float64"),
    (lambda: Conv2d(3, 2, 3), np.ones((1, 2, 5, 5)), ValueError, r"conv2d\(\).*C=3"),
    (lambda: Conv2d(3, 2, 3), np.ones((3, 5, 5)), ValueError, r"conv2d\(\).*\(N, C, H, W\)"),
    (lambda: Conv2d(1, 2, 5), np.ones((1, 1, 4, 9)), ValueError, "larger than the"),
    (lambda: MaxPool2d(3), np.ones((1, 1, 2, 5)), ValueError, "larger than the"),
    (lambda: AvgPool2d(2), np.ones((4, 4)), ValueError, r"avg_pool2d\(\)"),
    (lambda: Flatten(), np.ones(4), ValueError, r"Flatten\.forward\(\)"),
])
def test_bad_inputs(make, x, exc, match):
    with pytest.raises(exc, match=match):
        make()(x)


def test_bad_backward_calls():
    layer = Conv2d(1, 1, 2)
    with pytest.raises(ValueError, match=r"Conv2d\.backward\(\): no pending forward"):
        layer.backward(np.ones((1, 1, 2, 2)))
    layer(np.ones((1, 1, 3, 3)))
    with pytest.raises(ValueError, match=r"Conv2d\.backward\(\): expected dy of shape \(1, 1, 2, 2\)"):
        layer.backward(np.ones((1, 1, 3, 3)))
    layer.backward(np.ones((1, 1, 2, 2)))          # a refused dy leaves the forward pending


@pytest.mark.parametrize("make,exc", [
    (lambda: Conv2d(1, 1, 0), ValueError), (lambda: Conv2d(1, 1, 2, stride=0), ValueError),
    (lambda: Conv2d(1, 1, 2, padding=-1), ValueError), (lambda: Linear(2.0, 3), TypeError),
    (lambda: Linear(2, 3, rng=0), TypeError), (lambda: Linear(2, 3, dtype=np.int32), TypeError),
    (lambda: Dropout(1.5), ValueError), (lambda: MaxPool2d((2, 2, 2)), TypeError),
])
def test_bad_constructor_arguments(make, exc):
    with pytest.raises(exc):
        make()


@pytest.mark.parametrize("labels,exc,match", [
    (np.array([0.0, 1.0]), TypeError, "integer array"),
    ([0, 1], TypeError, "integer array"),
    (np.array([0, 3]), ValueError, r"in \[0, 3\), got 3"),
    (np.array([-1, 0]), ValueError, "got -1"),
    (np.array([[0, 1]]), ValueError, r"shape \(2,\)"),
])
def test_cross_entropy_bad_labels(labels, exc, match):
    with pytest.raises(exc, match=match):
        cross_entropy(np.zeros((2, 3)), labels)


def test_cross_entropy_float32():
    loss, d = cross_entropy(np.zeros((2, 3), dtype=np.float32), np.array([0, 2], dtype=np.uint8))
    assert d.dtype == np.float32 and isinstance(loss, float)


def test_conv2d_functions_without_bias():
    from stnref.nn import conv2d, conv2d_backward
    x = np.random.default_rng(19).standard_normal((1, 2, 5, 5))
    w = np.random.default_rng(20).standard_normal((3, 2, 3, 3))
    y = conv2d(x, w, stride=2, padding=1)
    dx, dw, db = conv2d_backward(np.ones_like(y), x, w, stride=2, padding=1, bias=False)
    assert db is None and dx.shape == x.shape and dw.shape == w.shape


def test_register_parameter_copies_and_reassignment_registers():
    source = np.ones(3)
    m = Module()
    m.register_parameter("gain", source)
    m.gain[...] = 2.0
    np.testing.assert_array_equal(source, 1.0)
    m.gain = np.zeros(4)
    assert m.params["gain"].shape == (4,) and m.grads["gain"].shape == (4,)
    m.add_grad("gain", np.ones(4))
    m.add_grad("gain", np.ones(4))
    np.testing.assert_array_equal(m.grads["gain"], 2.0)            # add_grad accumulates ...
    live = m.grads["gain"]
    m.set_grad("gain", np.full(4, 0.5))
    np.testing.assert_array_equal(m.grads["gain"], 0.5)            # ... set_grad replaces, in place
    assert m.grads["gain"] is live
    with pytest.raises(ValueError, match=r"Module\.set_grad\(\): expected gradient of gain"):
        m.set_grad("gain", np.ones((4, 1)))
    with pytest.raises(ValueError, match=r"Module\.add_grad\(\): expected gradient of gain with shape \(4,\)"):
        m.add_grad("gain", np.ones(3))
    with pytest.raises(ValueError, match=r"add_grad\(\): expected one of the parameters \['gain'\], got 'bias'"):
        m.add_grad("bias", np.ones(4))
    with pytest.raises(ValueError, match="without '.'"):
        m.register_parameter("a.b", source)
    with pytest.raises(NotImplementedError):
        m(source)


def test_deepcopy_is_independent():
    import copy
    net = Sequential(Linear(2, 2), ReLU())
    clone = copy.deepcopy(net)
    clone[0].weight[...] = 0.0
    assert list(clone.params) == list(net.params)
    assert np.abs(net[0].weight).max() > 0


# ----------------------------------------------------------------------------- fuzzer regressions
# Found by tests/test_fuzz.py.  Budget tests lower the element budget instead of asking for
# 10^10 elements, so a regression fails as an unraised ValueError, never by exhausting memory.

SMALL_BUDGET = 1000


@pytest.fixture
def small_budget():
    import stnref

    previous = stnref.set_max_elements(SMALL_BUDGET)
    yield SMALL_BUDGET
    stnref.set_max_elements(previous)


@pytest.mark.parametrize("call, what", [
    (lambda: Linear(40, 30), r"Linear\(\): weight of shape \(30, 40\)"),
    (lambda: Conv2d(8, 8, 5), r"Conv2d\(\): weight of shape \(8, 8, 5, 5\)"),
    (lambda: _functional("conv2d")(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 3, 3)), padding=20),
     r"conv2d\(\): padded x of shape \(1, 1, 44, 44\)"),
    (lambda: _functional("conv2d")(np.zeros((1, 2, 10, 10)), np.zeros((1, 2, 5, 5)), padding=2),
     r"conv2d\(\): im2col matrix of shape \(100, 50\)"),
    (lambda: _functional("conv2d_backward")(np.zeros((1, 1, 10, 10)), np.zeros((1, 2, 10, 10)),
                                            np.zeros((1, 2, 5, 5)), padding=2),
     r"conv2d_backward\(\): im2col matrix"),
    (lambda: _functional("conv2d")(np.zeros((1, 1, 4, 4)), np.zeros((500, 1, 3, 3))),
     r"conv2d\(\): y of shape \(1, 500, 2, 2\)"),
    (lambda: _functional("linear")(np.zeros((100, 1)), np.zeros((100, 1))),
     r"linear\(\): y of shape \(100, 100\)"),
])
def test_sizes_over_the_budget_refused_before_allocating(small_budget, call, what):
    with pytest.raises(ValueError, match=what + r".*over the budget of 1000 \(raise it with"):
        call()


def _functional(name):
    from stnref import nn
    return getattr(nn, name)


@pytest.mark.parametrize("make, shape, out_shape", [
    (lambda: MaxPool2d(2), (0, 2, 4, 4), (0, 2, 2, 2)),
    (lambda: AvgPool2d(2, 1), (0, 2, 4, 5), (0, 2, 3, 4)),
    (lambda: Flatten(), (0, 2, 3), (0, 6)),
    (lambda: Linear(4, 3), (0, 4), (0, 3)),
    (lambda: Conv2d(2, 3, 3, padding=1), (0, 2, 5, 5), (0, 3, 5, 5)),
    (lambda: ReLU(), (0, 5), (0, 5)),
    (lambda: Tanh(), (0, 5), (0, 5)),
    (lambda: Dropout(0.3), (0, 5), (0, 5)),
    (lambda: Sequential(Flatten(), Linear(6, 2), Tanh()), (0, 2, 3), (0, 2)),
])
def test_empty_batch_forward_and_backward(make, shape, out_shape):
    layer = make()
    y = layer.forward(np.zeros(shape))
    assert y.shape == out_shape
    dx = layer.backward(np.zeros(out_shape))
    assert dx.shape == shape
    for name, p in layer.params.items():                 # an empty batch contributes nothing
        np.testing.assert_array_equal(layer.grads[name], np.zeros_like(p))


@pytest.mark.parametrize("call, exc, match", [
    (lambda: _functional("linear")(np.zeros((2, 3)), None), TypeError, r"linear\(\).*weight"),
    (lambda: _functional("linear")(np.zeros((4, 3)), np.zeros(3)), ValueError,
     r"linear\(\): expected weight of shape \(out_features, in_features\)"),
    (lambda: _functional("linear")(np.zeros((4, 3)), np.zeros((2, 3)), np.zeros(5)), ValueError,
     r"linear\(\): expected bias of shape \(2,\)"),
    (lambda: _functional("linear")(np.zeros((4, 3)), np.zeros((2, 3)), "b"), TypeError,
     r"linear\(\).*bias"),
    (lambda: _functional("linear")(np.zeros((4, 3)), np.zeros((2, 3), int)), TypeError,
     r"linear\(\).*weight of dtype"),
    (lambda: _functional("linear")(np.zeros((4, 5)), np.zeros((2, 3))), ValueError,
     r"linear\(\): expected x of shape \(N, 3\)"),
    (lambda: _functional("linear_backward")(np.zeros((4, 2)), np.zeros(()), np.zeros((2, 3))),
     ValueError, r"linear_backward\(\).*x of shape \(N, in_features\)"),
    (lambda: _functional("linear_backward")(np.zeros((4, 2)), np.zeros((4, 3)), np.zeros((2, 3)),
                                            bias="yes"), TypeError, r"linear_backward\(\).*bias"),
    (lambda: _functional("conv2d")(np.zeros((1, 1, 4, 4)), "w"), TypeError, r"conv2d\(\).*weight"),
    (lambda: _functional("conv2d")(np.zeros((1, 1, 4, 4)), np.zeros((2, 1, 3))), ValueError,
     r"conv2d\(\): expected weight of shape \(C_out, C_in, kh, kw\)"),
    (lambda: _functional("conv2d")(np.zeros((1, 1, 4, 4)), np.zeros((2, 1, 0, 3))), ValueError,
     r"conv2d\(\).*weight.*every entry >= 1"),
    (lambda: _functional("conv2d")(np.zeros((1, 1, 4, 4)), np.zeros((2, 1, 3, 3)), np.zeros(3)),
     ValueError, r"conv2d\(\): expected bias of shape \(2,\)"),
    (lambda: _functional("conv2d_backward")(np.zeros((1, 2, 2, 2)), np.zeros((1, 1, 4, 4)),
                                            np.zeros((2, 1, 3, 3)), bias=None),
     TypeError, r"conv2d_backward\(\).*bias"),
    (lambda: _functional("max_pool2d")(np.zeros((1, 1, 0, 4)), 2), ValueError,
     r"max_pool2d\(\): kernel_size 2 is larger than the height 0 of x"),
])
def test_functional_layers_validate_every_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_functional_layers_accept_lists_of_floats():
    linear, conv2d = _functional("linear"), _functional("conv2d")
    rng = np.random.default_rng(21)
    x, w, b = rng.standard_normal((3, 4)), rng.standard_normal((2, 4)), rng.standard_normal(2)
    np.testing.assert_array_equal(linear(x.tolist(), w.tolist(), b.tolist()), linear(x, w, b))
    xc, wc = rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((3, 2, 3, 3))
    np.testing.assert_array_equal(conv2d(xc.tolist(), wc.tolist(), b.tolist() + [0.5], padding=1),
                                  conv2d(xc, wc, np.append(b, 0.5), padding=1))


@pytest.mark.parametrize("call, exc, match", [
    (lambda: log_softmax(np.zeros((2, 3)), axis="0"), TypeError, r"log_softmax\(\).*axis"),
    (lambda: softmax(np.zeros((2, 3)), axis=0.5), TypeError, r"softmax\(\).*axis"),
    (lambda: softmax(np.zeros((2, 3)), axis=2), ValueError, r"softmax\(\): expected axis in \[-2, 2\)"),
    (lambda: log_softmax(np.zeros((2, 3)), axis=True), TypeError, "axis"),
    (lambda: softmax(np.zeros((2, 0))), ValueError, r"softmax\(\): expected logits with a non-empty axis"),
    (lambda: log_softmax(np.array(1.0)), ValueError, r"log_softmax\(\): expected logits with at least"),
    (lambda: Linear(2, 3, dtype=3), TypeError, r"Linear\(\): expected dtype float32 or float64, got 3"),
    (lambda: Conv2d(1, 2, 3, dtype="bogus"), TypeError, r"Conv2d\(\): expected dtype"),
])
def test_errors_name_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_softmax_axis_as_numpy_int_and_negative():
    z = np.random.default_rng(22).standard_normal((3, 4))
    np.testing.assert_array_equal(softmax(z, axis=np.int64(0)), softmax(z, axis=-2))
    np.testing.assert_allclose(softmax(z, axis=0).sum(axis=0), 1.0, rtol=1e-15)


# ----------------------------------------------------------------------------- conv2d routes
# conv2d takes an FFT route for stride-1 layers with many channel pairs per pixel (the paper's
# second CNN layer) and im2col otherwise; these tests force each route with the gain threshold.


def _force_route(monkeypatch, route):
    from stnref.nn import conv
    monkeypatch.setattr(conv, "_SPECTRAL_MIN_GAIN", 0.0 if route == "fft" else np.inf)


def _conv_all(x, w, b, dy, stride, padding):
    conv2d, conv2d_backward = _functional("conv2d"), _functional("conv2d_backward")
    return (conv2d(x, w, b, stride, padding),) + conv2d_backward(dy, x, w, stride, padding)


def test_conv2d_fft_route_gradcheck(monkeypatch):
    _force_route(monkeypatch, "fft")
    rng = np.random.default_rng(31)
    layer = Conv2d(2, 3, (3, 2), padding=(1, 2), rng=rng)
    gradcheck_module(layer, rng.standard_normal((2, 2, 5, 4))).raise_if_failed()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_routes_agree_on_paper_layer(monkeypatch, dtype):
    """The paper's 7x7 layer (on fewer samples): both routes, float32 stays float32."""
    rng = np.random.default_rng(32)
    x = rng.standard_normal((4, 32, 14, 14)).astype(dtype)
    w = (rng.standard_normal((64, 32, 7, 7)) / 40).astype(dtype)
    b = rng.standard_normal(64).astype(dtype)
    dy = rng.standard_normal((4, 64, 14, 14)).astype(dtype)
    results = {}
    for route in ("fft", "im2col"):
        _force_route(monkeypatch, route)
        results[route] = _conv_all(x, w, b, dy, 1, 3)
    tol = F32_TOL if dtype == np.float32 else PARITY_TOL
    for a, c in zip(results["fft"], results["im2col"]):
        assert a.dtype == dtype and a.flags.c_contiguous
        np.testing.assert_allclose(a, c, atol=tol * max(1.0, np.abs(c).max()))


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e300])
def test_conv2d_fft_route_keeps_nonfinite_and_huge_values_local(monkeypatch, bad):
    """A spectrum would spread one bad pixel over its plane: such inputs take im2col."""
    rng = np.random.default_rng(33)
    x = rng.standard_normal((2, 2, 8, 8))
    w = rng.standard_normal((3, 2, 3, 3))
    dy = rng.standard_normal((2, 3, 8, 8))
    x_bad, dy_bad = x.copy(), dy.copy()
    x_bad[0, 1, 2, 3] = bad
    dy_bad[1, 0, 5, 5] = bad
    results = {}
    for route in ("fft", "im2col"):
        _force_route(monkeypatch, route)
        results[route] = (_conv_all(x_bad, w, None, dy, 1, 1)[:3]
                          + _conv_all(x, w, None, dy_bad, 1, 1)[1:3])
    for a, c in zip(results["fft"], results["im2col"]):
        np.testing.assert_array_equal(a, c)
    y = results["fft"][0]
    outside = np.ones(y.shape, dtype=bool)
    outside[0, :, 1:4, 2:5] = False                 # the windows that read x_bad[0, 1, 2, 3]
    assert np.isfinite(y[outside]).all()
