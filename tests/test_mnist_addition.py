"""docs/examples/mnist_addition.py runs: the paper's addition task, two parallel transformers
against an FCN of the same size (a short version: the full run is the example's own)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from examples import load_example

import stnref
from stnref import SpatialTransformer


@pytest.fixture(scope="module")
def example():
    return load_example("mnist_addition")


@pytest.fixture(scope="module")
def found(example):
    lines = []
    result = example.run(minutes=1.0, train_size=256, test_size=64, epochs=2, batch_size=32,
                         print_fn=lines.append, progress=stnref.training.Progress(io.StringIO()))
    result["lines"] = lines
    yield result
    stnref.manual_seed(0)


def test_the_data_are_pairs_of_digits_labelled_with_their_sum(example):
    train, (xt, yt) = example.addition_data(40, 12, seed=3)
    x, y = train(1)
    assert x.shape == (40, 2, 42, 42) and x.dtype == np.float32 and xt.shape == (12, 2, 42, 42)
    assert y.dtype.kind == "i" and y.min() >= 0 and y.max() <= 18 and yt.max() <= 18
    assert not np.array_equal(x[:, 0], x[:, 1])                 # two different digits
    again, _ = example.addition_data(40, 12, seed=3)
    np.testing.assert_array_equal(again(1)[0], x)                 # seeded by the epoch
    assert not np.array_equal(train(2)[0], x)                     # paired afresh each epoch
    images, labels, _, _ = example.digits(40, 12, seed=3)
    sums = {int(a) + int(b) for a in labels for b in labels}
    assert set(y.tolist()) <= sums


def test_the_models_have_the_same_size_and_two_different_transformers(example):
    stnref.manual_seed(0)
    st = example.st_model()
    fcn = example.fcn_model(st.num_parameters())
    assert abs(fcn.num_parameters() - st.num_parameters()) < 0.001 * st.num_parameters()
    sts = stnref.transformer.transformers(st)
    assert len(sts) == 2 and all(isinstance(s, SpatialTransformer) for s in sts)
    assert not np.array_equal(sts[0].loc[2].weight, sts[1].loc[2].weight)   # symmetry broken
    assert st(np.zeros((1, 2, 42, 42), np.float64)).shape == (1, example.CLASSES)


def test_a_short_run_trains_both_and_reports(found):
    assert set(found) == {"2xST-FCN", "FCN", "lines"}
    for name in ("2xST-FCN", "FCN"):
        f = found[name]
        epochs = f["result"]["epochs"]
        assert len(epochs) == 2 and np.isfinite(epochs[-1]["train_loss"])
        assert 0 <= f["test_error"] <= 100
        assert next(iter(f["model"].params.values())).dtype == np.float32
    assert any(line.startswith("2xST-FCN") and "test error" in line for line in found["lines"])
    assert found["lines"][-1].startswith("chance:")


def test_torch_twin_imports_without_torch_and_says_what_it_needs():
    twin = load_example("torch_twin")
    if twin.torch is not None:
        pytest.skip("torch is installed: tests/test_torch_twin.py uses it")
    with pytest.raises(ImportError, match=r"twin_of_module\(\) needs PyTorch"):
        twin.twin_of_module(stnref.nn.Linear(2, 2))


def test_the_trained_prototype_moves_to_pytorch(found):
    torch = pytest.importorskip("torch")
    twin_module = load_example("torch_twin")
    model = found["2xST-FCN"]["model"].eval()
    twin = twin_module.twin_of_module(model).eval()
    x = np.random.default_rng(0).random((3, 2, 42, 42), dtype=np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(model(x), twin(torch.from_numpy(x)).numpy(), rtol=0, atol=1e-4)
    model.train()
