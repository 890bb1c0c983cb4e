"""stnref's ST-CNN / ST-FCN against their PyTorch twins (docs/examples/torch_twin.py), float64."""


import numpy as np
import pytest

torch = pytest.importorskip("torch")

from examples import load_example  # noqa: E402

from stnref.networks import build_model  # noqa: E402
from stnref.nn.losses import cross_entropy  # noqa: E402

# Same float64 arithmetic in a different order: observed differences are ~1e-15.
TWIN_TOL = 1e-10


@pytest.fixture(scope="module")
def twin_module():
    return load_example("torch_twin")


@pytest.mark.parametrize("name, size, transform", [
    ("st-cnn", 28, "affine"),
    ("st-cnn", 42, "attention"),
    ("st-fcn", 60, "affine"),
])
def test_logits_and_every_gradient_match_pytorch(twin_module, name, size, transform):
    rng = np.random.default_rng(11)
    model = build_model(name, transform, input_size=size, rng=rng)
    twin_module.perturb_localisation(model, rng)
    state = model.state_dict()
    twin = twin_module.twin_of(name, state, size, transform=transform)   # strict load
    assert [k for k, _ in twin.named_parameters()] == list(model.params)

    x = rng.standard_normal((3, 1, size, size))
    labels = rng.integers(0, 10, 3)
    logits = model(x)
    loss, dlogits = cross_entropy(logits, labels)
    dx = model.backward(dlogits)

    xt = torch.from_numpy(x).requires_grad_(True)
    logits_t = twin(xt)
    loss_t = torch.nn.functional.cross_entropy(logits_t, torch.from_numpy(labels))
    loss_t.backward()

    np.testing.assert_allclose(logits, logits_t.detach().numpy(), rtol=0, atol=TWIN_TOL)
    assert abs(loss - loss_t.item()) <= TWIN_TOL
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=0, atol=TWIN_TOL)
    grads = model.grads
    for k, p in twin.named_parameters():
        assert np.abs(p.grad.numpy()).max() > 0, k    # the warp reaches every parameter
        np.testing.assert_allclose(grads[k], p.grad.numpy(), rtol=0, atol=TWIN_TOL, err_msg=k)


def test_twin_starts_as_the_identity_warp_too(twin_module):
    model = build_model("st-cnn", "affine")
    twin = twin_module.twin_of("st-cnn", model.state_dict())
    fresh = twin_module.st_cnn(filters=twin[1].out_channels)
    x = np.random.default_rng(12).standard_normal((2, 1, 28, 28))
    with torch.no_grad():
        V = fresh[0](torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(V, x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(model[0](x), x, rtol=0, atol=1e-12)


def test_compare_reports_tiny_differences(twin_module):
    diffs = twin_module.compare("st-fcn", 28, "attention", batch=2, seed=1)
    assert {"logits", "loss", "input", "0.loc.5.weight"} <= set(diffs)
    assert max(diffs.values()) <= TWIN_TOL


def test_training_steps_example_runs_both_steps(capsys):
    # docs/examples/training_steps.py: one round of each network's step, stnref and twin
    module = load_example("training_steps")
    ours, theirs = module.measure("st-fcn", "r", rounds=1, warmup=0)
    assert ours > 0 and theirs > 0
    module.main(["--rounds", "1"])
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| step | stnref ms | torch ms | ratio |"
    assert [row.split(" | ")[0] for row in table[2:]] == [
        "| ST-FCN 28²", "| ST-FCN 42²", "| ST-CNN 28²", "| ST-CNN 42²"]


# ----------------------------------------------------------------------------- any stnref model

def _any_model(rng):
    """Two transformers side by side on one shared trunk, BatchNorm, every layer with a twin."""
    from stnref import Parallel, SpatialTransformer
    from stnref.nn import (AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Flatten, Identity,
                           Linear, MaxPool2d, ReLU, Sequential, Sigmoid, Tanh)

    trunk = Sequential(AvgPool2d(2), Flatten(), Linear(2 * 6 * 6, 16, rng=rng), BatchNorm1d(16), Tanh())
    sts = [SpatialTransformer(Sequential(trunk, Linear(16, size, rng=rng)), transform,
                              out_size=(10, 10), mode=mode)
           for size, transform, mode in ((6, "affine", "bilinear"), (3, "attention", "bicubic"))]
    for st in sts:
        st.loc[-1].weight[...] = 0.05 * rng.standard_normal(st.loc[-1].weight.shape)
    return Sequential(Parallel(*sts), Conv2d(4, 3, 3, padding=1, rng=rng), BatchNorm2d(3), ReLU(),
                      MaxPool2d(2), Identity(), Flatten(), Dropout(0.0), Linear(3 * 5 * 5, 8, rng=rng),
                      Sigmoid(), Linear(8, 5, rng=rng))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_twin_of_module_moves_any_model_with_its_weights(twin_module, dtype):
    rng = np.random.default_rng(21)
    model = _any_model(rng).to(dtype)
    x = rng.standard_normal((4, 2, 12, 12)).astype(dtype)
    model(x)                                   # a training forward: running statistics move
    model.zero_grad()
    twin = twin_module.twin_of_module(model)   # strict load of params and buffers
    assert list(twin.state_dict()) == list(model.state_dict())
    labels = rng.integers(0, 5, 4)
    logits = model(x)
    loss, dlogits = cross_entropy(logits, labels)
    model.backward(dlogits)
    xt = torch.from_numpy(x)
    logits_t = twin(xt)
    torch.nn.functional.cross_entropy(logits_t, torch.from_numpy(labels)).backward()
    tol = TWIN_TOL if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(logits, logits_t.detach().numpy(), rtol=0, atol=tol)
    grads = model.grads
    for k, p in twin.named_parameters():       # a shared module: once, under its first name
        np.testing.assert_allclose(grads[k], p.grad.numpy(), rtol=0, atol=tol * 10, err_msg=k)
    for name in ("2.running_mean", "2.running_var", "0.0.loc.0.3.running_var"):
        np.testing.assert_allclose(model.state_dict()[name], twin.state_dict()[name].numpy(),
                                   rtol=1e-5 if dtype == np.float32 else 1e-12)
    model.eval()
    twin.eval()
    with torch.no_grad():
        np.testing.assert_allclose(model(x), twin(xt).numpy(), rtol=0, atol=tol)


def test_twin_of_module_names_a_layer_it_cannot_twin(twin_module):
    from stnref.nn import Module, Sequential

    class Mine(Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="no PyTorch twin for Mine"):
        twin_module.twin_of_module(Sequential(Mine()))
    with pytest.raises(ValueError, match="torch has no projective or TPS grid"):
        twin_module.twin_of_module(build_model("st-fcn", "tps"))
    from stnref import SpatialTransformer
    from stnref.nn import Flatten, Linear, Sequential
    wrapped = SpatialTransformer(Sequential(Flatten(), Linear(16, 6)), padding_mode="reflection",
                                 mode="bicubic", cubic_a=-0.5)
    with pytest.raises(ValueError, match="PyTorch's grid_sample has no mode='bicubic'"):
        twin_module.twin_of_module(wrapped)
