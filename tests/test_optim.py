"""Tests of stnref.nn.optim: lr scales, exact state dicts, clipping (PyTorch parity of every
optimiser step: tests/test_torch_records.py)."""

import functools
import io

import numpy as np
import pytest

from stnref.nn import SGD, Adam, Conv2d, Linear, ReLU, Sequential, clip_grad_norm
from stnref.nn import Module



class _Net(Module):
    """A ``loc`` child (lr-scaled in the tests) and a ``head``."""

    def __init__(self, rng=None):
        super().__init__()
        rng = np.random.default_rng(0) if rng is None else rng
        self.loc = Sequential(Conv2d(1, 2, 2, rng=rng), ReLU())
        self.head = Linear(3, 2, rng=rng)




def _submodule(net, dotted):
    return functools.reduce(getattr, dotted.split(".")[:-1], net)


def _set_grads(net, grads):
    for k, g in grads.items():
        _submodule(net, k).set_grad(k.rsplit(".", 1)[1], g)


def _random_grads(net, step):
    rng = np.random.default_rng(100 + step)
    return {k: rng.standard_normal(p.shape) for k, p in net.params.items()}








def test_sgd_exact_first_steps():
    net = Sequential(Linear(1, 1, bias=False))
    net.load_state_dict({"0.weight": np.array([[1.0]])})
    opt = SGD(net, lr=0.5, momentum=0.5, weight_decay=1.0)
    net[0].set_grad("weight", np.array([[1.0]]))
    opt.step()                       # d = 1 + 1 = 2, buf = 2, w = 1 - 1 = 0
    assert net[0].weight[0, 0] == 0.0
    opt.step()                       # d = 1 + 0 = 1, buf = 1 + 1 = 2, w = 0 - 1 = -1
    assert net[0].weight[0, 0] == -1.0


def test_lr_scale_longest_prefix():
    opt = SGD(_Net(), lr=1.0, lr_scale={"loc.": 0.1, "loc.0.bias": 0.01})
    assert opt.scale_for("loc.0.weight") == 0.1
    assert opt.scale_for("loc.0.bias") == 0.01
    assert opt.scale_for("head.weight") == 1.0


def _train(net, opt, steps):
    for step in steps:
        _set_grads(net, _random_grads(net, step))
        opt.step()


@pytest.mark.parametrize("make", [
    lambda n: SGD(n, lr=0.1, momentum=0.9, weight_decay=1e-3),
    lambda n: Adam(n, lr=1e-2, weight_decay=1e-3),
], ids=["sgd", "adam"])
def test_state_dict_exact_resume_through_npz(make):
    net = _Net()
    opt = make(net)
    _train(net, opt, range(3))
    buf = io.BytesIO()
    np.savez(buf, **{f"model/{k}": v for k, v in net.state_dict().items()},
             **{f"optim/{k}": v for k, v in opt.state_dict().items()})
    _train(net, opt, range(3, 6))

    buf.seek(0)
    with np.load(buf, allow_pickle=False) as f:
        saved = {k: f[k] for k in f.files}
    net2 = _Net(rng=np.random.default_rng(99))
    opt2 = make(net2)
    opt2.lr = 123.0                                   # restored from the state dict
    net2.load_state_dict({k[6:]: v for k, v in saved.items() if k.startswith("model/")})
    opt2.load_state_dict({k[6:]: v for k, v in saved.items() if k.startswith("optim/")})
    assert opt2.step_count == 3 and opt2.lr == opt.lr
    _train(net2, opt2, range(3, 6))
    for k in net.params:
        np.testing.assert_array_equal(net.params[k], net2.params[k])


def test_state_dict_names():
    net = _Net()
    assert set(SGD(net, lr=0.1).state_dict()) == {"step", "lr"}
    names = set(Adam(net).state_dict())
    assert "exp_avg.loc.0.weight" in names and "exp_avg_sq.head.bias" in names
    assert "momentum_buffer.head.weight" in SGD(net, lr=0.1, momentum=0.5).state_dict()


@pytest.mark.parametrize("change,key", [
    (lambda d: d.pop("exp_avg.head.bias"), "exp_avg.head.bias"),
    (lambda d: d.pop("step"), "step"),
    (lambda d: d.update({"exp_avg.head.gamma": np.zeros(2)}), "exp_avg.head.gamma"),
    (lambda d: d.update({"exp_avg_sq.loc.0.bias": np.zeros(3)}), "exp_avg_sq.loc.0.bias"),
    (lambda d: d.update({"step": np.array(1.5)}), "step"),
])
def test_optimizer_load_state_dict_strict(change, key):
    opt = Adam(_Net())
    sd = opt.state_dict()
    change(sd)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        opt.load_state_dict(sd)


def test_clip_grad_norm_does_not_touch_caller_arrays():
    net = _Net()
    g = np.ones(net.head.weight.shape)
    net.head.set_grad("weight", g)
    clip_grad_norm(net, 1e-3)
    np.testing.assert_array_equal(g, 1.0)


def test_float32_parameters_stay_float32():
    net = Sequential(Linear(3, 2, dtype=np.float32))
    for opt in (SGD(net, lr=0.1, momentum=0.9, weight_decay=0.1), Adam(net, weight_decay=0.1)):
        net[0].set_grad("weight", np.ones((2, 3)))
        opt.step()
        assert all(p.dtype == np.float32 for p in net.params.values())
        assert all(v.dtype == np.float32 for k, v in opt.state_dict().items() if "." in k)


def test_step_updates_live_arrays_in_place():
    net = _Net()
    live = net.head.weight
    before = live.copy()
    net.head.set_grad("weight", np.ones(live.shape))
    SGD(net, lr=0.1).step()
    assert net.head.weight is live
    np.testing.assert_allclose(live, before - 0.1)


@pytest.mark.parametrize("make,exc", [
    (lambda n: SGD(n, lr=-1.0), ValueError),
    (lambda n: SGD(n, lr=0.1, momentum=1.0), ValueError),
    (lambda n: SGD(n, lr=0.1, weight_decay=-1e-3), ValueError),
    (lambda n: SGD(n, lr="fast"), TypeError),
    (lambda n: SGD(n.params, lr=0.1), TypeError),
    (lambda n: SGD(n, lr=0.1, lr_scale={1: 0.1}), TypeError),
    (lambda n: Adam(n, betas=(0.9, 1.0)), ValueError),
    (lambda n: Adam(n, betas=0.9), TypeError),
    (lambda n: Adam(n, eps=float("nan")), ValueError),
    (lambda n: Adam(n, eps=0.0), ValueError),
    (lambda n: clip_grad_norm(n, -1.0), ValueError),
])
def test_bad_arguments(make, exc):
    with pytest.raises(exc):
        make(_Net())


@pytest.mark.parametrize("opt", [SGD, Adam])
def test_an_lr_scale_prefix_that_matches_nothing_is_refused(opt):
    """A typo (or a model nested one level deeper: '0.loc.') would otherwise leave the rate as is."""
    with pytest.raises(ValueError, match=r"lr_scale prefix 'lock\.' matches no parameter.*loc\.0\.weight"):
        opt(_Net(), lr=0.1, lr_scale={"loc.": 0.1, "lock.": 0.1})


def test_lr_setter_validates():
    opt = Adam(_Net())
    opt.lr = 0.5
    assert opt.lr == 0.5
    with pytest.raises(ValueError, match=r"Adam\.lr\(\)"):
        opt.lr = -0.1


@pytest.mark.parametrize("make", [
    lambda n: SGD(n, lr=0.1, lr_scale=3),
    lambda n: SGD(n, lr=0.1, lr_scale="loc."),
    lambda n: Adam(n, lr=0.01, lr_scale=[("loc.", 0.1)]),
])
def test_lr_scale_must_be_a_mapping(make):
    """Fuzzer regression: a non-dict lr_scale gave "'int' object is not iterable"."""
    with pytest.raises(TypeError, match=r"(SGD|Adam)\(\): expected lr_scale to be a dict"):
        make(_Net())
