"""stnref against PyTorch's recorded results: parity checked on every test run, no PyTorch needed.

``tests/torch_records/*.npz`` hold what PyTorch computed on fixed inputs (written by
``tests/torch_records/make_records.py``, which states the PyTorch version, its CPU kernel set and
the date in each file).  Every recorded case is recomputed here with stnref and compared at the
tolerances of docs/conventions.md §6.3: ``max |stnref - torch| <= 1e-10 * max(1, max |torch|)``
per array in float64 (``1e-5`` in float32), NaN exactly where PyTorch has NaN; the pooling and ReLU
cases with signed zeros, NaN and infinities bit for bit.  The golden vectors of
``stnref reference export`` are compared with PyTorch's records by the kernel authors' own
comparison, so the suite they download is PyTorch-validated.  A perturbed record must fail.
Where PyTorch is installed, the records are also checked to be what it computes today.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest

import stnref
from stnref import nn, reference
from stnref.networks import build_model
from stnref.reference.golden import _compare, _tolerance

RECORDS = Path(__file__).resolve().parent / "torch_records"
FAMILIES = ("golden", "sampler", "second_order", "affine_grid", "nn", "optim", "networks",
            "batchnorm")
TOL = {"float64": 1e-10, "float32": 1e-5}   # docs/conventions.md §6.3, relative to the scale
FORMAT = "stnref-torch-records"


@functools.lru_cache(maxsize=None)
def load(family):
    arrays, meta = stnref.load_checkpoint(RECORDS / f"{family}.npz")
    assert meta["format"] == FORMAT and meta["family"] == family
    return arrays, meta


def case_arrays(arrays, case, kind):
    prefix = f"{case['id']}." if kind == "inputs" else f"{case['id']}.torch."
    return {name: arrays[prefix + name] for name in case[kind]}


# ----------------------------------------------------------------------------- stnref side

def stnref_nn(op, options, a):
    """stnref's functional layers on the recorded inputs, named like the records."""
    if op == "conv2d":
        y = nn.conv2d(a["x"], a["weight"], a["bias"], options["stride"], options["padding"])
        dx, dw, db = nn.conv2d_backward(a["dy"], a["x"], a["weight"], options["stride"],
                                        options["padding"])
        return {"y": y, "dx": dx, "dweight": dw, "dbias": db}
    if op in ("max_pool2d", "avg_pool2d"):
        forward, backward = getattr(nn, op), getattr(nn, op + "_backward")
        k, s = options["kernel_size"], options["stride"]
        return {"y": forward(a["x"], k, s), "dx": backward(a["dy"], a["x"], k, s)}
    if op in ("relu", "tanh"):
        return {"y": getattr(nn, op)(a["x"]), "dx": getattr(nn, op + "_backward")(a["dy"], a["x"])}
    if op == "linear":
        dx, dw, db = nn.linear_backward(a["dy"], a["x"], a["weight"])
        return {"y": nn.linear(a["x"], a["weight"], a["bias"]), "dx": dx, "dweight": dw, "dbias": db}
    if op == "cross_entropy":
        loss, dz = nn.cross_entropy(a["logits"], a["labels"])
        return {"loss": np.asarray(loss), "dlogits": dz}
    return {"log_softmax": nn.log_softmax(a["logits"], options["axis"]),      # op == "softmax"
            "softmax": nn.softmax(a["logits"], options["axis"])}


class _Params(nn.Module):
    """A module holding the recorded parameters, for the optimisers."""

    def __init__(self, weight, bias):
        super().__init__()
        self.register_parameter("weight", weight)
        self.register_parameter("bias", bias)


def stnref_optim(op, options, a):
    module = _Params(a.get("weight", np.zeros((3, 4))), a.get("bias", np.zeros(3)))
    if op == "clip_grad_norm":
        module.set_grad("weight", a["grad.weight"])
        module.set_grad("bias", a["grad.bias"])
        total = nn.clip_grad_norm(module, options["max_norm"])
        return {"total": np.asarray(total), "grad.weight": module.grads["weight"],
                "grad.bias": module.grads["bias"]}
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items() if k != "lr_change"}
    opt = (nn.SGD if op == "sgd" else nn.Adam)(module, **kw)
    change_at, new_lr = options.get("lr_change", (None, None))
    out = {}
    steps = sorted({int(name[4:].split(".")[0]) for name in a if name.startswith("grad")})
    for s in steps:
        if s == change_at:
            opt.lr = new_lr
        module.set_grad("weight", a[f"grad{s}.weight"])
        module.set_grad("bias", a[f"grad{s}.bias"])
        opt.step()
        out[f"step{s}.weight"] = module.params["weight"].copy()
        out[f"step{s}.bias"] = module.params["bias"].copy()
    return out


def stnref_network(options, a):
    model = build_model(options["name"], options["transform"], input_size=options["input_size"])
    model.load_state_dict({k[len("state."):]: v for k, v in a.items() if k.startswith("state.")})
    logits = model(a["x"])
    loss, dlogits = nn.cross_entropy(logits, a["labels"])
    return {"logits": logits, "loss": np.asarray(loss), "dx": model.backward(dlogits)}


def stnref_batchnorm(options, a):
    """Three training forwards, the backward of the last, then one in eval mode."""
    layer = getattr(nn, options["layer"])(len(a["weight"]), momentum=options["momentum"],
                                          dtype=a["x0"].dtype)
    layer.weight[...] = a["weight"]
    layer.bias[...] = a["bias"]
    layer(a["x0"])
    layer(a["x1"])
    y = layer(a["x2"])
    out = {"y": y, "dx": layer.backward(a["dy"]), "dweight": layer.grads["weight"],
           "dbias": layer.grads["bias"], "running_mean": layer.running_mean,
           "running_var": layer.running_var}
    out["y_eval"] = layer.eval()(a["x_eval"])
    return out


def stnref_outputs(case, a):
    op, options = case["op"], case["options"]
    if op in ("grid_sample", "grid_sample_jvp", "grid_sample_double_backward", "affine_grid"):
        return reference.compute_outputs(op, options, a)
    if op in ("sgd", "adam", "clip_grad_norm"):
        return stnref_optim(op, options, a)
    if op == "network":
        return stnref_network(options, a)
    if op == "batchnorm":
        return stnref_batchnorm(options, a)
    return stnref_nn(op, options, a)


# ----------------------------------------------------------------------------- comparison

def scaled_error(actual, expected):
    """``max |actual - expected| / max(1, max |expected|)`` over finite entries; inf if NaNs differ."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape or (np.isnan(actual) != np.isnan(expected)).any():
        return math.inf
    finite = np.isfinite(expected)
    infinite = np.isinf(expected)
    if (actual[infinite] != expected[infinite]).any():               # the same infinities
        return math.inf
    scale = max(1.0, float(np.abs(expected[finite]).max(initial=0.0)))
    return float(np.abs(actual[finite] - expected[finite]).max(initial=0.0)) / scale


def exact(case, name, expected):
    """Whether the record must be matched bit for bit (signed zeros, NaN, inf)."""
    if case["family"] != "exact":
        return False
    # overlapping max-pool windows in float32: PyTorch adds the routed gradients in float32,
    # stnref in float64 and rounds once, so dx is compared at the float32 tolerance
    stride = case["options"].get("stride")
    kernel = case["options"].get("kernel_size")
    overlap = stride is not None and np.any(np.less(stride, kernel))
    return not (name == "dx" and overlap and expected.dtype == np.float32)


def mismatches(case, mine, recorded):
    """Names of the recorded outputs stnref does not reproduce, with the error."""
    bad = []
    for name, expected in recorded.items():
        got = np.asarray(mine[name])
        if exact(case, name, expected):
            if got.dtype != expected.dtype or got.tobytes() != expected.tobytes():
                bad.append(f"{name}: not bit-identical")
            continue
        err = scaled_error(got, expected)
        if err > TOL[expected.dtype.name]:
            bad.append(f"{name}: scaled error {err:.3e}")
    return bad


def family_cases(family):
    return [(family, c["id"]) for c in load(family)[1]["cases"]]


def find(family, case_id):
    arrays, meta = load(family)
    return arrays, next(c for c in meta["cases"] if c["id"] == case_id)


NON_GOLDEN = [fc for family in FAMILIES[1:] for fc in family_cases(family)]


@pytest.mark.parametrize("family, case_id", NON_GOLDEN, ids=[f"{f}/{c}" for f, c in NON_GOLDEN])
def test_stnref_reproduces_pytorch(family, case_id):
    arrays, case = find(family, case_id)
    recorded = case_arrays(arrays, case, "outputs")
    mine = stnref_outputs(case, case_arrays(arrays, case, "inputs"))
    assert not mismatches(case, mine, recorded), mismatches(case, mine, recorded)


CONV_CASES = [c for _, c in family_cases("nn") if c.startswith("conv2d-")]


@pytest.mark.parametrize("route", ["im2col", "fft"])
@pytest.mark.parametrize("case_id", CONV_CASES)
def test_both_convolution_routes_reproduce_pytorch(monkeypatch, route, case_id):
    """conv2d picks im2col or products of spectra by an estimated gain; force each (strided
    convolutions always take im2col)."""
    from stnref.nn import conv
    monkeypatch.setattr(conv, "_SPECTRAL_MIN_GAIN", 0.0 if route == "fft" else np.inf)
    arrays, case = find("nn", case_id)
    mine = stnref_outputs(case, case_arrays(arrays, case, "inputs"))
    assert not mismatches(case, mine, case_arrays(arrays, case, "outputs"))


# ----------------------------------------------------------------------------- golden vectors

@functools.lru_cache(maxsize=None)
def golden_cases():
    return {c["id"]: c for c in reference.load_cases()}


def test_golden_records_are_for_this_reference_version():
    assert load("golden")[1]["reference_version"] == reference.REFERENCE_VERSION


def test_every_golden_case_pytorch_has_is_recorded():
    """A new golden case PyTorch can compute must be recorded (re-run make_records.py)."""
    _, meta = load("golden")
    recorded = {c["id"] for c in meta["cases"]}
    excluded = {e["id"]: e["reason"] for e in meta["excluded"]}
    assert recorded | set(excluded) == set(golden_cases())
    for case_id, reason in excluded.items():
        case = golden_cases()[case_id]
        finite = all(np.isfinite(x).all() for x in {**case["inputs"], **case["cotangents"]}.values())
        assert (not finite and "non-finite" in reason) or case["op"] in (
            "attention_grid", "projective_grid", "tps_grid") or (
            not case["pytorch"] and "no such setting" in reason), (case_id, reason)


@pytest.mark.parametrize("case_id", [c for _, c in family_cases("golden")])
def test_golden_vectors_agree_with_pytorch(case_id):
    """PyTorch's outputs pass the comparison `stnref reference check` applies to a kernel."""
    arrays, case = find("golden", case_id)
    golden = golden_cases()[case_id]["outputs"]
    tol = _tolerance(golden)
    for name, theirs in case_arrays(arrays, case, "outputs").items():
        ok, max_abs, max_rel, problem = _compare(golden[name], theirs, tol[name])
        assert ok, f"{case_id} {name}: {problem}"


# ----------------------------------------------------------------------------- the check can fail

PERTURBED = [("golden", 0), ("sampler", 0), ("sampler", 1), ("second_order", 0), ("affine_grid", 0),
             ("nn", 0), ("optim", 0), ("networks", 0), ("batchnorm", 0), ("batchnorm", 1)]


@pytest.mark.parametrize("family, index", PERTURBED)
def test_a_perturbed_record_fails(family, index):
    """Moving one recorded value by 100 tolerances (or one bit, for exact cases) is caught."""
    arrays, meta = load(family)
    case = meta["cases"][index]
    recorded = {k: v.copy() for k, v in case_arrays(arrays, case, "outputs").items()}
    name = max(recorded, key=lambda k: recorded[k].size)
    target = recorded[name].reshape(-1)
    i = int(np.flatnonzero(np.isfinite(target))[0])
    scale = max(1.0, float(np.abs(target[np.isfinite(target)]).max()))
    target[i] += 100 * TOL[target.dtype.name] * scale
    if family == "golden":
        golden = golden_cases()[case["id"]]["outputs"]
        assert not _compare(golden[name], recorded[name], _tolerance(golden)[name])[0]
    else:
        mine = stnref_outputs(case, case_arrays(arrays, case, "inputs"))
        assert name in " ".join(mismatches(case, mine, recorded))


def test_an_exact_record_fails_on_one_bit():
    arrays, meta = load("nn")
    case = next(c for c in meta["cases"] if c["family"] == "exact" and c["op"] == "relu")
    recorded = {k: v.copy() for k, v in case_arrays(arrays, case, "outputs").items()}
    y = recorded["y"]
    y[y == 0] = -y[y == 0]                                   # +0.0 <-> -0.0: equal, not identical
    mine = stnref_outputs(case, case_arrays(arrays, case, "inputs"))
    assert "y: not bit-identical" in mismatches(case, mine, recorded)


def test_records_state_where_they_come_from():
    for family in FAMILIES:
        meta = load(family)[1]
        assert meta["torch"] and meta["cpu_capability"] and meta["date"], family
        assert meta["cases"], family


# ----------------------------------------------------------------------------- live PyTorch

@pytest.mark.parametrize("family", FAMILIES)
def test_records_are_what_pytorch_computes_today(family):
    """Where PyTorch is installed, its results on the recorded inputs are the records, to the
    same tolerance (another CPU kernel set may round the last bits differently)."""
    torch = pytest.importorskip("torch")
    import sys
    sys.path.insert(0, str(RECORDS))
    try:
        import make_records
    finally:
        sys.path.remove(str(RECORDS))
    arrays, meta = load(family)
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    make_records.setup()
    try:
        _, fresh, _ = make_records.FAMILIES[family]()
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
    assert sorted(fresh) == sorted(k for k in arrays if k.startswith(tuple(
        c["id"] + "." for c in meta["cases"])))
    drift = [k for k, v in fresh.items() if ".torch." in k
             and scaled_error(v, arrays[k]) > TOL[arrays[k].dtype.name]]
    assert not drift, f"records differ from PyTorch {torch.__version__} ({meta['torch']} " \
                      f"recorded): {drift[:5]}"


def test_kernel_authors_page_states_the_recorded_pytorch():
    """docs/kernel_authors.md tells kernel authors which PyTorch validated the golden suite."""
    meta = load("golden")[1]
    page = (Path(__file__).resolve().parent.parent / "docs" / "kernel_authors.md").read_text(
        encoding="utf-8")
    version = meta["torch"].split("+")[0]
    total = len(meta["cases"]) + len(meta["excluded"])
    assert f"PyTorch {version}" in page
    assert f"{len(meta['cases'])} of the {total} cases" in page
    assert f"The other {len(meta['excluded'])} cases" in page
