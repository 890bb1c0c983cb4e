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
