"""The layer protocol: shared modules, accumulated gradients, pending forwards, gradcheck_module.

A module used twice in one forward (``Sequential(st, st)``, one localisation trunk under two
transformers) must get the gradient of every use; ``backward`` adds to ``grads`` until
``zero_grad``; a backward pairs with the last pending forward or fails with a ValueError
naming the module.  ``gradcheck_module`` checks the input and every parameter gradient and
catches a wrong one of either.
"""

import copy
import math

import numpy as np
import pytest

from stnref import Parallel, SpatialTransformer, gradcheck_module
from stnref.gradcheck import GradcheckError
from stnref.nn import (
    SGD,
    Adam,
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    MaxPool2d,
    Module,
    ReLU,
    Sequential,
    Tanh,
    clip_grad_norm,
)
from stnref.nn.module import MAX_PENDING

# Two half-batches against the whole batch, float64, sum-reduced loss: the same terms summed in
# another order (the matrix products' inner sums over the batch are blocked differently by BLAS,
# and (sum over A) + (sum over B) is not the pairwise sum over A and B), so equal up to a few
# ulps of the largest gradient entry (measured: at most 3e-16 of it), not bit for bit.
ACCUMULATION_RTOL = 1e-14
# Scale of the random regression weights that move theta off the identity (off the kinks).
PERTURB = 0.1


def _perturb(st, rng):
    reg = st.loc[-1]
    np.copyto(reg.weight, PERTURB * rng.standard_normal(reg.weight.shape))


def _st(in_shape=(2, 5, 6), transform="affine", trunk=None, seed=0, out_size=None):
    """A small transformer; with ``trunk``, its localisation net is ``Sequential(trunk, head)``."""
    rng = np.random.default_rng(seed)
    theta = {"affine": 6, "attention": 3, "projective": 9}[transform]
    if trunk is None:
        trunk = Sequential(Flatten(), Linear(math.prod(in_shape), 8, rng=rng), Tanh())
    st = SpatialTransformer(Sequential(trunk, Linear(8, theta, rng=rng)), transform, out_size=out_size)
    _perturb(st, rng)
    return st


def _shared_trunk_pair(seed=0):
    rng = np.random.default_rng(seed)
    trunk = Sequential(Flatten(), Linear(60, 8, rng=rng), Tanh())
    a = _st(transform="affine", trunk=trunk, seed=seed + 1)
    b = _st(transform="attention", trunk=trunk, seed=seed + 2)
    return Parallel(a, b), trunk


# ----------------------------------------------------------------------------- weight sharing


def test_sequential_st_st_gradients_are_right():
    """The issue's case: Sequential(st, st) built silently and its input gradient was 17x off."""
    st = _st()
    twice = Sequential(st, st)
    assert len(twice.params) == 4 and len(twice.state_dict()) == 8
    assert list(twice.params) == ["0.loc.0.1.weight", "0.loc.0.1.bias", "0.loc.1.weight", "0.loc.1.bias"]
    x = np.random.default_rng(1).standard_normal((2, 2, 5, 6))
    result = gradcheck_module(twice, x)
    assert [a.name for a in result.args] == ["input", *twice.params]
    result.raise_if_failed()


def test_shared_trunk_under_two_transformers():
    par, trunk = _shared_trunk_pair()
    names = list(par.params)
    assert names == ["0.loc.0.1.weight", "0.loc.0.1.bias", "0.loc.1.weight", "0.loc.1.bias",
                     "1.loc.1.weight", "1.loc.1.bias"]         # the trunk once, under its first name
    assert par.params["0.loc.0.1.weight"] is trunk[1].weight
    x = np.random.default_rng(3).standard_normal((2, 2, 5, 6))
    gradcheck_module(par, x).raise_if_failed()


def test_shared_trunk_gradient_is_the_sum_over_both_uses():
    par, trunk = _shared_trunk_pair()
    a, b = par[0], par[1]
    x = np.random.default_rng(4).standard_normal((2, 2, 5, 6))
    dV = np.random.default_rng(5).standard_normal((2, 4, 5, 6))
    par(x)
    dx = par.backward(dV)
    together = {k: v.copy() for k, v in trunk.grads.items()}
    par.zero_grad()
    a(x)
    dx_a = a.backward(dV[:, :2])
    alone_a = {k: v.copy() for k, v in trunk.grads.items()}
    par.zero_grad()
    b(x)
    dx_b = b.backward(dV[:, 2:])
    for k, g in trunk.grads.items():
        np.testing.assert_array_equal(together[k], alone_a[k] + g)   # + is commutative in IEEE
        assert np.abs(g).max() > 0 and np.abs(alone_a[k]).max() > 0
    np.testing.assert_array_equal(dx, dx_a + dx_b)


def test_optimisers_update_a_shared_array_once_per_step():
    st = _st()
    twice = Sequential(st, st)
    x = np.random.default_rng(6).standard_normal((2, 2, 5, 6))
    assert set(Adam(twice).state_dict()) == {"step", "lr"} | {
        f"{buf}.{k}" for buf in ("exp_avg", "exp_avg_sq") for k in twice.params}
    for make in (lambda m: SGD(m, lr=0.1), lambda m: Adam(m, lr=0.1)):
        opt = make(twice)
        twice.zero_grad()
        twice(x)
        twice.backward(np.ones((2, 2, 5, 6)))
        before = {k: v.copy() for k, v in twice.params.items()}
        grads = {k: v.copy() for k, v in twice.grads.items()}
        opt.step()
        for k, p in twice.params.items():
            if isinstance(opt, SGD):       # one step of lr * grad, not two
                np.testing.assert_array_equal(p, before[k] - 0.1 * grads[k])
            else:                          # Adam's first step moves each entry by lr at most
                assert np.abs(p - before[k]).max() <= 0.1 * (1 + 1e-12)


def test_clip_grad_norm_counts_a_shared_gradient_once():
    st = _st()
    twice = Sequential(st, st)
    twice(np.random.default_rng(7).standard_normal((1, 2, 5, 6)))
    twice.backward(np.ones((1, 2, 5, 6)))
    expected = math.sqrt(sum(float((g * g).sum()) for g in st.grads.values()))
    assert clip_grad_norm(twice, 1e9) == pytest.approx(expected, rel=1e-15)


def test_state_dict_keeps_every_name_and_loads_them_consistently():
    f = Linear(2, 2, rng=np.random.default_rng(8))
    twice = Sequential(f, ReLU(), f)
    sd = twice.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    other = Sequential(Linear(2, 2), ReLU(), Linear(2, 2))
    other.load_state_dict(sd)                                    # unshared target: fine
    np.testing.assert_array_equal(other[2].weight, f.weight)
    sd["2.weight"] = sd["2.weight"] + 1.0
    with pytest.raises(ValueError, match=r"0\.weight and 2\.weight name one shared parameter"):
        twice.load_state_dict(sd)
    sd["0.weight"] = sd["2.weight"]
    twice.load_state_dict(sd)
    np.testing.assert_array_equal(f.weight, sd["0.weight"])


def test_a_module_cannot_contain_itself():
    inner = Sequential(ReLU())
    outer = Sequential(inner)
    with pytest.raises(ValueError, match=r"add_module\(\): cannot register Sequential '1' inside itself"):
        inner.add_module("1", outer)
    with pytest.raises(ValueError, match="inside itself"):
        outer.add_module("self", outer)


# ----------------------------------------------------------------------------- accumulation


def test_backward_adds_to_the_gradients_until_zero_grad():
    """Fails on the old overwrite semantics: a second backward must double the gradients."""
    st = _st()
    x = np.random.default_rng(10).standard_normal((2, 2, 5, 6))
    dV = np.random.default_rng(11).standard_normal((2, 2, 5, 6))
    st(x)
    st.backward(dV)
    once = {k: v.copy() for k, v in st.grads.items()}
    st(x)
    st.backward(dV)
    for k, g in st.grads.items():
        np.testing.assert_array_equal(g, 2 * once[k])
    live = st.grads["loc.1.weight"]
    st.zero_grad()
    assert all(not g.any() for g in st.grads.values())
    assert st.grads["loc.1.weight"] is live                    # zeroed in place


def _classifier(seed=12):
    rng = np.random.default_rng(seed)
    st = _st(in_shape=(1, 8, 8), seed=seed)
    return Sequential(st, Conv2d(1, 3, 3, padding=1, rng=rng), ReLU(), MaxPool2d(2), Flatten(),
                      Linear(48, 5, rng=rng))


def test_two_half_batches_accumulate_to_the_full_batch():
    model = _classifier()
    rng = np.random.default_rng(13)
    x = rng.standard_normal((8, 1, 8, 8))
    dlogits = rng.standard_normal((8, 5))        # a sum-reduced loss: no 1/N per (half) batch
    model(x)
    dx = model.backward(dlogits)
    full = {k: v.copy() for k, v in model.grads.items()}
    model.zero_grad()
    halves = []
    for part in (slice(0, 4), slice(4, 8)):
        model(x[part])
        halves.append(model.backward(dlogits[part]))
    for k, g in model.grads.items():
        scale = np.abs(full[k]).max()
        assert scale > 0, k
        np.testing.assert_allclose(g, full[k], rtol=0, atol=ACCUMULATION_RTOL * scale, err_msg=k)
    np.testing.assert_allclose(np.concatenate(halves), dx, rtol=0,
                               atol=ACCUMULATION_RTOL * np.abs(dx).max())


# ----------------------------------------------------------------------------- pending forwards


def test_backward_pairs_with_the_last_pending_forward():
    f = Linear(3, 2, rng=np.random.default_rng(14))
    x1, x2 = np.ones((1, 3)), np.arange(6.0).reshape(2, 3)
    f(x1)
    f(x2)
    f.backward(np.ones((2, 2)))                  # x2's
    np.testing.assert_array_equal(f.grads["weight"], np.ones((2, 2)).T @ x2)
    with pytest.raises(ValueError, match=r"Linear\.backward\(\): expected dy of shape \(1, 2\), the "
                                         r"output of the last pending forward, got \(2, 2\)"):
        f.backward(np.ones((2, 2)))
    f.backward(np.ones((1, 2)))                  # x1's: the refused dy left it pending
    with pytest.raises(ValueError, match=r"Linear\.backward\(\): no pending forward"):
        f.backward(np.ones((1, 2)))              # every forward already gone back through


def test_eval_mode_saves_nothing():
    model = _classifier().eval()
    x = np.zeros((2, 1, 8, 8))
    for _ in range(MAX_PENDING + 5):
        model(x)
    assert all(len(m._pending) == 0 for m in _modules(model))
    with pytest.raises(ValueError, match=r"Sequential\.backward\(\): no pending forward.*eval mode"):
        model.backward(np.zeros((2, 5)))


def _modules(m):
    yield m
    for _, child in m.children():
        yield from _modules(child)


def test_pending_forwards_are_bounded_and_dropping_is_an_error_never_a_wrong_gradient():
    f = Tanh()
    x = np.linspace(-1, 1, 4)[None]
    for _ in range(MAX_PENDING + 3):
        f(x)
    assert len(f._pending) == MAX_PENDING
    for _ in range(MAX_PENDING):
        f.backward(np.ones((1, 4)))
    with pytest.raises(ValueError, match=rf"Tanh\.backward\(\): no pending forward.*3 earlier "
                                         rf"forwards were dropped, more than {MAX_PENDING}"):
        f.backward(np.ones((1, 4)))
    f.zero_grad()
    with pytest.raises(ValueError, match="each backward needs its own forward"):
        f.backward(np.ones((1, 4)))


def test_zero_grad_drops_pending_forwards_everywhere():
    par, trunk = _shared_trunk_pair()
    par(np.zeros((1, 2, 5, 6)))
    assert len(trunk[1]._pending) == 2                          # one per use
    par.zero_grad()
    assert all(len(m._pending) == 0 for m in _modules(par))


def test_deepcopy_copies_pending_forwards_independently():
    f = Linear(2, 2)
    f(np.ones((1, 2)))
    g = copy.deepcopy(f)
    g.backward(np.ones((1, 2)))
    f.backward(np.ones((1, 2)))
    np.testing.assert_array_equal(f.grads["weight"], g.grads["weight"])


# ----------------------------------------------------------------------------- gradcheck_module


class _WrongWeightGradient(Linear):
    def backward(self, dy):
        dx = super().backward(dy)
        self.add_grad("weight", 0.01 * self.grads["weight"])    # 1 % too large
        return dx


class _WrongInputGradient(Tanh):
    def backward(self, dy):
        return super().backward(dy) * 1.01


def test_gradcheck_module_catches_a_wrong_parameter_gradient():
    net = Sequential(_WrongWeightGradient(3, 4, rng=np.random.default_rng(15)), Tanh())
    result = gradcheck_module(net, np.random.default_rng(16).standard_normal((5, 3)))
    assert {a.name: a.ok for a in result.args} == {"input": True, "0.weight": False, "0.bias": True}
    with pytest.raises(GradcheckError, match=r"(?s)0\.weight +full .*FAIL at \(\d, \d\): analytic"):
        result.raise_if_failed()


def test_gradcheck_module_catches_a_wrong_input_gradient():
    net = Sequential(Linear(3, 4, rng=np.random.default_rng(17)), _WrongInputGradient())
    result = gradcheck_module(net, np.random.default_rng(18).standard_normal((5, 3)))
    # the wrong dx of the last layer spoils everything behind it
    assert [a.ok for a in result.args] == [False, False, False]
    assert str(result).splitlines()[1].startswith("input ")


class _OverwritingGradient(Linear):
    """Right on its own, wrong when shared or accumulated: replaces the gradient it should add to."""

    def backward(self, dy):
        held = {k: g.copy() for k, g in self.grads.items()}
        dx = super().backward(dy)
        for k, g in self.grads.items():
            self.set_grad(k, g - held[k])
        return dx


class _ForgetsTheInputGradient(Linear):
    def backward(self, dy):
        super().backward(dy)


def test_gradcheck_module_catches_a_backward_that_overwrites_the_gradients():
    layer = _OverwritingGradient(3, 2, rng=np.random.default_rng(24))
    result = gradcheck_module(layer, np.random.default_rng(25).standard_normal((4, 3)))
    assert {a.name: a.ok for a in result.args} == {"input": True, "weight": False, "bias": False}


def test_gradcheck_module_refuses_a_backward_that_returns_no_input_gradient():
    with pytest.raises(ValueError, match=r"gradcheck_module\(\): _ForgetsTheInputGradient\.backward "
                                         r"returned None, expected the input gradient of shape \(4, 3\)"):
        gradcheck_module(_ForgetsTheInputGradient(3, 2), np.ones((4, 3)))


class _Picky(Module):
    """Refuses inputs with a negative first entry, after its predecessor has saved its forward."""

    def forward(self, x):
        if x.flat[0] < 0:
            raise ValueError("_Picky.forward(): negative")
        return self.save_for_backward(x)

    def backward(self, dy):
        return self.pop_saved(dy)[0]


@pytest.mark.parametrize("call", ["call", "forward"])
def test_a_forward_that_raises_leaves_nothing_pending(call):
    """Sequential(lin, picky): after lin(xb) and a failed lin(xa), the backward is xb's."""
    lin = Linear(2, 2, rng=np.random.default_rng(26))
    lin.weight[...] = np.eye(2)
    model = Sequential(lin, _Picky())
    run = model if call == "call" else model.forward
    xb, xa = np.array([[1.0, 2.0]]), np.array([[-5.0, 7.0]])
    run(xb)
    with pytest.raises(ValueError, match="negative"):
        run(xa)
    assert [len(m._pending) for m in model.modules()] == [1, 1, 1]
    model.backward(np.ones((1, 2)))
    np.testing.assert_array_equal(lin.grads["weight"], np.ones((2, 1)) * xb)


def test_a_failed_forward_at_the_pending_limit_restores_the_evicted_forward():
    """A full stack of pending forwards: the failed forward's save pushed the oldest out; the
    undo puts it back, so no forward counts as dropped and every backward still pairs."""
    lin = Linear(2, 2, rng=np.random.default_rng(28))
    lin.weight[...], lin.bias[...] = np.eye(2), 0.0             # a negative input reaches _Picky
    xs = np.random.default_rng(29).uniform(1.0, 2.0, (MAX_PENDING, 1, 2))
    for x in xs:
        lin(x)
    with pytest.raises(ValueError, match="negative"):
        Sequential(lin, _Picky())(np.array([[-5.0, 7.0]]))
    assert (len(lin._pending), lin._dropped) == (MAX_PENDING, 0)
    for _ in range(MAX_PENDING):
        lin.backward(np.ones((1, 2)))
    np.testing.assert_allclose(lin.grads["weight"], np.ones((2, 1)) * xs.sum(axis=0), rtol=1e-14)


def test_a_transformer_whose_sampler_fails_leaves_its_localisation_net_clean(monkeypatch):
    import stnref.transformer
    st = _st()
    U = np.random.default_rng(27).standard_normal((2, 2, 5, 6))
    st(U)

    def out_of_memory(*args, **kwargs):
        raise MemoryError("the sampler's taps")

    monkeypatch.setattr(stnref.transformer, "_sample", out_of_memory)
    with pytest.raises(MemoryError):
        st.forward(U)                            # the loc net has run and saved its forward
    assert all(len(m._pending) == 1 for m in st.modules())


def test_gradcheck_module_leaves_the_module_as_it_was():
    drop = Dropout(0.5, rng=np.random.default_rng(19))
    net = Sequential(Linear(4, 4, dtype=np.float32, rng=np.random.default_rng(20)), drop)
    x = np.random.default_rng(21).standard_normal((3, 4)).astype(np.float32)
    net(x)
    net.backward(np.ones((3, 4), np.float32))
    params = {k: v.copy() for k, v in net.params.items()}
    grads = {k: v.copy() for k, v in net.grads.items()}
    net(x)                                                     # left pending
    state = drop.rng.bit_generator.state
    x0 = x.copy()
    result = gradcheck_module(net, x)
    result.raise_if_failed()                                   # float32 module, checked in float64
    for k, v in net.params.items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, params[k])
        np.testing.assert_array_equal(net.grads[k], grads[k])
    assert drop.rng.bit_generator.state == state
    assert all(len(m._pending) == 1 for m in _modules(net))
    np.testing.assert_array_equal(x, x0)


def test_gradcheck_module_reports_no_input_for_a_transformer_on_the_data():
    st = _st()
    st.input_grad = False
    result = gradcheck_module(st, np.random.default_rng(22).standard_normal((2, 2, 5, 6)))
    assert [a.name for a in result.args] == list(st.params)
    result.raise_if_failed()


class _Scale(Module):
    """A user subclass written to the protocol: ``y = x * gain``."""

    def __init__(self):
        super().__init__()
        self.register_parameter("gain", np.array([1.5, -0.5]))

    def forward(self, x):
        return self.save_for_backward(x * self.gain, x)

    def backward(self, dy):
        dy, (x,) = self.pop_saved(dy)
        self.add_grad("gain", (dy * x).sum(axis=0))
        return dy * self.gain


def test_gradcheck_module_on_a_user_subclass_used_twice():
    s = _Scale()
    result = gradcheck_module(Sequential(s, Tanh(), s), np.random.default_rng(23).standard_normal((4, 2)))
    assert [a.name for a in result.args] == ["input", "0.gain"]
    result.raise_if_failed()


@pytest.mark.parametrize("call, exc, match", [
    (lambda: gradcheck_module("net", np.ones((1, 2))), TypeError,
     r"gradcheck_module\(\): expected module to be a stnref.nn.Module, got str"),
    (lambda: gradcheck_module(Linear(2, 2).eval(), np.ones((1, 2))), ValueError,
     r"gradcheck_module\(\): expected module in training mode"),
    (lambda: gradcheck_module(Linear(2, 2), np.ones((1, 2), int)), TypeError,
     r"gradcheck_module\(\): expected x of dtype float32 or float64"),
    (lambda: gradcheck_module(Linear(2, 2), np.ones((1, 2)), eps=0.0), ValueError,
     r"gradcheck_module\(\): expected finite eps > 0, got 0.0"),
    (lambda: gradcheck_module(Linear(2, 2), np.ones((1, 2)), atol="1"), TypeError,
     r"gradcheck_module\(\): expected atol to be a real number"),
    (lambda: gradcheck_module(Linear(2, 2), np.ones((1, 2)), n_directions=0), ValueError,
     r"gradcheck_module\(\): expected n_directions >= 1"),
    (lambda: gradcheck_module(Linear(2, 2), np.ones((1, 2)), seed=1.5), TypeError,
     r"gradcheck_module\(\): expected seed to be an int"),
    (lambda: gradcheck_module(Linear(2, 2), np.ones((1, 3))), ValueError, r"linear\(\): expected x"),
])
def test_gradcheck_module_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
