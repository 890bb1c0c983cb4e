"""Record what PyTorch computes, so that stnref's parity with it is checked on every test run.

Usage (needs torch; writes the ``.npz`` files next to this script)::

    python tests/torch_records/make_records.py [FAMILY ...]      (default: every family)

Each family is one ``.npz`` of named arrays plus JSON metadata (written with
``stnref.save_checkpoint``: uncompressed, sorted, byte-reproducible for the same PyTorch).
The metadata states the PyTorch version, its CPU kernel set, NumPy's version and the date,
and lists every case: its id, op, options, the names of its input arrays (stored as
``<case id>.<name>``) and of PyTorch's outputs (``<case id>.torch.<name>``).  Cases PyTorch
cannot answer are listed under ``excluded`` with the reason.  ``tests/test_torch_records.py``
reads the files and compares stnref with them; it needs no PyTorch.

Families:

``golden``
    PyTorch's outputs for every finite case of stnref's golden vectors (``stnref reference
    export``) whose op PyTorch has: ``grid_sample`` (V, dU, dgrid), its JVP, its double
    backward, ``affine_grid`` and its backward, every mode, padding, ``align_corners``,
    2-D and 3-D, float64 and float32, with the edge-case families (integer knots, border
    clips, reflection folds, half-pixel bands, nearest ties, huge coordinates, duplicate
    points, size-1 axes).  The inputs are rebuilt by ``stnref.reference.load_cases``.
``sampler``
    ``grid_sample`` forward and both gradients on grids that hit the kinks on purpose (exact
    integer and half-integer pixel positions) and reach far outside (to 1e3), every mode x
    padding x ``align_corners`` x dimension, float64 and float32.
``second_order``
    The double backward (``torch.autograd.grad`` with ``create_graph``) and the JVP (PyTorch's
    ``autograd.functional.jvp``, the double-VJP trick) on smooth and kinky grids, every
    combination, float64.
``affine_grid``
    ``affine_grid`` and its backward, 2-D and 3-D, both ``align_corners``, size-1 axes included.
``nn``
    Every ``stnref.nn`` layer and loss with a PyTorch twin: conv2d (strides, paddings, the
    spectral route's shapes), max and average pooling (ties, NaN, signed zeros and infinities:
    compared bit for bit), ReLU (NaN, -0.0), tanh, linear, cross-entropy, log-softmax, softmax.
``optim``
    Five steps of SGD (momentum, weight decay) and Adam (betas, eps, weight decay) from the
    same parameters and gradients, with one parameter at a scaled learning rate and the rate
    changed mid-run, and ``clip_grad_norm``.
``batchnorm``
    ``BatchNorm1d`` on ``(N, C)`` and ``(N, C, L)``, ``BatchNorm2d``, float64 and float32,
    ``momentum`` 0.1, 0.3 and None (the cumulative average): three training forwards, the
    gradients of the last (input, weight, bias), the running statistics after them (PyTorch's
    update, with the unbiased variance), and an eval-mode forward.
``networks``
    One state dict written by the PyTorch twin of each paper network (FCN and CNN at 28x28,
    ST-FCN at 42x42 with its average pools, ST-CNN at 28x28 with the attention transform;
    ``docs/examples/torch_twin.py``), initialised by PyTorch with the localisation regression
    layer moved off the identity, a batch, and the twin's logits, loss and input gradient.
"""

from __future__ import annotations

import datetime
import hashlib
import pathlib
import sys
import warnings

import numpy as np
import torch
import torch.nn.functional as F

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "docs" / "examples")]

import torch_twin  # noqa: E402
from strategies import combos, kinky_grid, smooth_grid  # noqa: E402

from stnref import reference, save_checkpoint  # noqa: E402
from stnref.networks import build_model  # noqa: E402

RECORDS_VERSION = 1
FORMAT = "stnref-torch-records"
SAMPLER_OPS = ("grid_sample", "grid_sample_jvp", "grid_sample_double_backward")


def seed_of(case_id):
    return int.from_bytes(hashlib.sha256(f"torch-records/{case_id}".encode()).digest()[:8], "little")


def t(x, grad=False):
    return torch.tensor(np.asarray(x), requires_grad=grad)


# --------------------------------------------------------------------------- torch ops

def torch_sampler(op, options, a):
    kw = dict(mode=options["mode"], padding_mode=options["padding_mode"],
              align_corners=options["align_corners"])
    if op == "grid_sample":
        U, g = t(a["U"], True), t(a["grid"], True)
        V = F.grid_sample(U, g, **kw)
        V.backward(t(a["dV"]))
        return {"V": V.detach().numpy(), "dU": U.grad.numpy(), "dgrid": g.grad.numpy()}
    if op == "grid_sample_jvp":
        _, tV = torch.autograd.functional.jvp(lambda u, g: F.grid_sample(u, g, **kw),
                                              (t(a["U"]), t(a["grid"])), (t(a["tU"]), t(a["tgrid"])))
        return {"tV": tV.numpy()}
    U, g, dV = t(a["U"], True), t(a["grid"], True), t(a["dV"], True)
    V = F.grid_sample(U, g, **kw)
    dU, dgrid = torch.autograd.grad(V, (U, g), dV, create_graph=True)
    L = (dU * t(a["g_dU"])).sum() + (dgrid * t(a["g_dgrid"])).sum()
    out = torch.autograd.grad(L, (dV, U, g), allow_unused=True)
    return {name: (np.zeros_like(a[ref]) if o is None else o.detach().numpy())
            for name, o, ref in zip(("g_dV", "g_U", "g_grid"), out, ("dV", "U", "grid"))}


def torch_affine(options, a):
    theta = t(a["theta"], True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)       # torch's note on size-1 axes
        grid = F.affine_grid(theta, list(options["size"]), align_corners=options["align_corners"])
    grid.backward(t(a["dgrid"]))
    return {"grid": grid.detach().numpy(), "dtheta": theta.grad.numpy()}


def torch_op(op, options, a):
    if op in SAMPLER_OPS:
        return torch_sampler(op, options, a)
    if op == "affine_grid":
        return torch_affine(options, a)
    return TORCH_NN[op](options, a)


# --------------------------------------------------------------------------- families

def golden_family():
    cases, arrays, excluded = [], {}, []
    for case in reference.load_cases():
        a = {**case["inputs"], **case["cotangents"]}
        if case["op"] not in SAMPLER_OPS + ("affine_grid",):
            excluded.append({"id": case["id"], "reason": f"{case['op']}: PyTorch has no such op"})
            continue
        if not case.get("pytorch", True):
            excluded.append({"id": case["id"], "reason": "PyTorch has no such setting "
                             "(stnref.sampler_settings)"})
            continue
        if not all(np.isfinite(x).all() for x in a.values()):
            excluded.append({"id": case["id"], "reason": "non-finite grid coordinates: PyTorch's "
                             "forward is mode-dependent and its CPU backward can crash "
                             "(docs/conventions.md §5.2)"})
            continue
        out = torch_op(case["op"], case["options"], a)
        cases.append({"id": case["id"], "op": case["op"], "family": case["family"],
                      "options": case["options"], "inputs": [], "outputs": sorted(out)})
        arrays.update({f"{case['id']}.torch.{k}": v for k, v in out.items()})
    return cases, arrays, excluded


def sampler_case_arrays(rng, combo, grid_kind, op):
    k, mode, padding, ac = combo
    spatial = (4, 5) if k == 2 else (3, 3, 4)
    out = (4, 5) if k == 2 else (2, 3, 3)
    U = rng.standard_normal((2, 3, *spatial))
    g_shape = (2, *out, k)
    grid = (kinky_grid(rng, g_shape, spatial, ac) if grid_kind == "kinky"
            else smooth_grid(rng, g_shape, spatial, mode, padding, ac))
    dV = rng.standard_normal((2, 3, *out))
    if op == "grid_sample":
        return {"U": U, "grid": grid, "dV": dV}
    if op == "grid_sample_jvp":
        return {"U": U, "grid": grid, "tU": rng.standard_normal(U.shape),
                "tgrid": rng.standard_normal(grid.shape)}
    return {"U": U, "grid": grid, "dV": dV, "g_dU": rng.standard_normal(U.shape),
            "g_dgrid": rng.standard_normal(grid.shape)}


def tag(combo):
    k, mode, padding, ac = combo
    return f"{k}d-{mode}-{padding}-{'ac' if ac else 'noac'}"


def record(cases, arrays, case_id, op, family, options, inputs):
    out = torch_op(op, options, inputs)
    cases.append({"id": case_id, "op": op, "family": family, "options": options,
                  "inputs": sorted(inputs), "outputs": sorted(out)})
    arrays.update({f"{case_id}.{k}": v for k, v in inputs.items()})
    arrays.update({f"{case_id}.torch.{k}": v for k, v in out.items()})


def options_of(combo):
    k, mode, padding, ac = combo
    return {"mode": mode, "padding_mode": padding, "align_corners": ac}


def sampler_family():
    cases, arrays = [], {}
    for combo in combos(pytorch=True):
        for dtype in (np.float64, np.float32):
            for n in range(2):
                case_id = f"grid_sample-kinky-{tag(combo)}-{np.dtype(dtype).name}-{n}"
                a = sampler_case_arrays(np.random.default_rng(seed_of(case_id)), combo, "kinky",
                                        "grid_sample")
                record(cases, arrays, case_id, "grid_sample", "kinky", options_of(combo),
                       {name: x.astype(dtype) for name, x in a.items()})
    return cases, arrays, []


def second_order_family():
    cases, arrays = [], {}
    for combo in combos(pytorch=True):
        for op, kinds in (("grid_sample_double_backward", ("smooth", "kinky")),
                          ("grid_sample_jvp", ("kinky",))):
            for kind in kinds:
                case_id = f"{op}-{kind}-{tag(combo)}"
                a = sampler_case_arrays(np.random.default_rng(seed_of(case_id)), combo, kind, op)
                record(cases, arrays, case_id, op, kind, options_of(combo), a)
    return cases, arrays, []


AFFINE_SIZES = ((2, 1, 1, 1), (2, 3, 1, 5), (1, 1, 4, 1), (3, 2, 5, 6), (2, 1, 4, 7), (2, 3, 5, 7),
                (2, 1, 3, 4, 5), (1, 1, 1, 2, 1), (2, 2, 4, 1, 3), (1, 1, 1, 3, 2))


def affine_family():
    cases, arrays = [], {}
    for size in AFFINE_SIZES:
        k = len(size) - 2
        for ac in (False, True):
            for dtype in (np.float64, np.float32):
                case_id = (f"affine_grid-{'x'.join(map(str, size))}-{'ac' if ac else 'noac'}-"
                           f"{np.dtype(dtype).name}")
                rng = np.random.default_rng(seed_of(case_id))
                a = {"theta": rng.standard_normal((size[0], k, k + 1)),
                     "dgrid": rng.standard_normal((size[0], *size[2:], k))}
                record(cases, arrays, case_id, "affine_grid", "general",
                       {"size": list(size), "align_corners": ac},
                       {name: x.astype(dtype) for name, x in a.items()})
    return cases, arrays, []


# --------------------------------------------------------------------------- nn

def _grads(out, *tensors, dy):
    out.backward(t(dy))
    return [x.grad.numpy() for x in tensors]


def torch_conv2d(o, a):
    x, w, b = t(a["x"], True), t(a["weight"], True), t(a["bias"], True)
    y = F.conv2d(x, w, b, stride=o["stride"], padding=o["padding"])
    dx, dw, db = _grads(y, x, w, b, dy=a["dy"])
    return {"y": y.detach().numpy(), "dx": dx, "dweight": dw, "dbias": db}


def torch_pool(fn):
    def run(o, a):
        x = t(a["x"], True)
        y = fn(x, o["kernel_size"], o["stride"])
        (dx,) = _grads(y, x, dy=a["dy"])
        return {"y": y.detach().numpy(), "dx": dx}
    return run


def torch_elementwise(fn):
    def run(o, a):
        x = t(a["x"], True)
        y = fn(x)
        (dx,) = _grads(y, x, dy=a["dy"])
        return {"y": y.detach().numpy(), "dx": dx}
    return run


def torch_linear(o, a):
    x, w, b = t(a["x"], True), t(a["weight"], True), t(a["bias"], True)
    y = F.linear(x, w, b)
    dx, dw, db = _grads(y, x, w, b, dy=a["dy"])
    return {"y": y.detach().numpy(), "dx": dx, "dweight": dw, "dbias": db}


def torch_cross_entropy(o, a):
    z = t(a["logits"], True)
    loss = F.cross_entropy(z, torch.tensor(a["labels"]))
    loss.backward()
    return {"loss": loss.detach().numpy(), "dlogits": z.grad.numpy()}


def torch_softmaxes(o, a):
    z = t(a["logits"])
    return {"log_softmax": F.log_softmax(z, dim=o["axis"]).numpy(),
            "softmax": F.softmax(z, dim=o["axis"]).numpy()}


TORCH_NN = {
    "conv2d": torch_conv2d,
    "max_pool2d": torch_pool(F.max_pool2d),
    "avg_pool2d": torch_pool(F.avg_pool2d),
    "relu": torch_elementwise(torch.relu),
    "tanh": torch_elementwise(torch.tanh),
    "linear": torch_linear,
    "cross_entropy": torch_cross_entropy,
    "softmax": torch_softmaxes,
}


def pool_input(rng, kind, dtype):
    shape = (2, 3, 9, 8)
    if kind == "ties":
        return rng.integers(0, 3, size=shape).astype(dtype)
    if kind == "nan":
        x = rng.integers(0, 3, size=shape).astype(dtype)
        x[rng.random(shape) < 0.2] = np.nan
        return x
    values = np.array([-0.0, 0.0, 1.0, -1.0, np.nan, -np.inf, np.inf])      # "specials"
    return rng.choice(values, size=shape, p=[.3, .3, .1, .1, .05, .1, .05]).astype(dtype)


def nn_family():
    cases, arrays = [], {}

    def add(case_id, op, options, make, compare="scaled"):
        rng = np.random.default_rng(seed_of(case_id))
        a = make(rng)
        record(cases, arrays, case_id, op, compare, options, a)

    conv = [((2, 3, 9, 8), 4, (3, 3), 1, 0), ((2, 3, 9, 8), 4, (3, 3), 2, 1),
            ((2, 3, 9, 8), 4, (3, 2), (1, 2), (2, 0)), ((2, 3, 9, 8), 4, (4, 4), 3, 2),
            ((2, 3, 9, 8), 4, (3, 3), 1, 1), ((1, 2, 5, 7), 4, (5, 7), 1, 0),
            ((2, 8, 12, 12), 16, (7, 7), 1, 3), ((2, 1, 28, 28), 8, (9, 9), 1, 4)]
    for n, (shape, out, kernel, stride, padding) in enumerate(conv):
        def make(rng, shape=shape, out=out, kernel=kernel, stride=stride, padding=padding):
            x = rng.standard_normal(shape)
            w = rng.standard_normal((out, shape[1], *kernel)) / np.sqrt(shape[1] * np.prod(kernel))
            y = F.conv2d(t(x), t(w), stride=stride, padding=padding)
            return {"x": x, "weight": w, "bias": rng.standard_normal(out),
                    "dy": rng.standard_normal(tuple(y.shape))}
        add(f"conv2d-{n}", "conv2d", {"stride": stride, "padding": padding}, make)

    for pool, fn in (("max_pool2d", F.max_pool2d), ("avg_pool2d", F.avg_pool2d)):
        for kernel, stride in ((2, None), (3, 2), ((2, 3), 1), (3, None), ((2, 3), (2, 3))):
            kinds = ("ties", "nan") + (("specials",) if pool == "max_pool2d" else ())
            for kind in kinds:
                for dtype in ((np.float64, np.float32) if kind == "specials" else (np.float64,)):
                    case_id = (f"{pool}-{kind}-k{kernel}-s{stride}-{np.dtype(dtype).name}"
                               .replace(" ", "").replace("(", "").replace(")", "").replace(",", "x"))

                    def make(rng, kind=kind, dtype=dtype, kernel=kernel, stride=stride, fn=fn):
                        x = pool_input(rng, kind, dtype)
                        y = fn(t(x), kernel, stride)
                        return {"x": x, "dy": rng.standard_normal(tuple(y.shape)).astype(dtype)}
                    exact = kind == "specials"
                    add(case_id, pool, {"kernel_size": kernel, "stride": stride}, make,
                        "exact" if exact else "scaled")

    for dtype in (np.float64, np.float32):
        name = np.dtype(dtype).name

        def special(rng, dtype=dtype):
            x = np.array([np.nan, -0.0, 0.0, -1.5, 2.0, -np.inf, np.inf, 1e-300], dtype=dtype)
            return {"x": x, "dy": rng.standard_normal(x.shape).astype(dtype)}
        add(f"relu-specials-{name}", "relu", {}, special, "exact")
        add(f"relu-{name}", "relu", {},
            lambda rng, dtype=dtype: {"x": rng.standard_normal((4, 5)).astype(dtype),
                                      "dy": rng.standard_normal((4, 5)).astype(dtype)})
    add("tanh", "tanh", {}, lambda rng: {"x": 3 * rng.standard_normal((4, 5)),
                                         "dy": rng.standard_normal((4, 5))})
    add("linear", "linear", {}, lambda rng: {
        "x": rng.standard_normal((6, 5)), "weight": rng.standard_normal((4, 5)),
        "bias": rng.standard_normal(4), "dy": rng.standard_normal((6, 4))})
    for n, scale in enumerate((1.0, 30.0, 1e4)):
        add(f"cross_entropy-{n}", "cross_entropy", {}, lambda rng, scale=scale: {
            "logits": scale * rng.standard_normal((7, 10)), "labels": rng.integers(0, 10, 7)})
        add(f"softmax-{n}", "softmax", {"axis": -1}, lambda rng, scale=scale: {
            "logits": scale * rng.standard_normal((7, 10))})
    return cases, arrays, []


# --------------------------------------------------------------------------- optimisers

OPTIM_STEPS = 5


def optim_family():
    """SGD and Adam over OPTIM_STEPS steps; the ``weight`` group at ``lr_scale`` times the rate
    (stnref's lr_scale, PyTorch's parameter groups) and the base rate changed before one step."""
    cases, arrays = [], {}
    sgd = {"lr": 0.1, "lr_scale": {"weight": 0.1}, "lr_change": [3, 0.05]}
    adam = {"lr": 1e-2, "betas": [0.8, 0.99], "eps": 1e-6, "lr_scale": {"weight": 0.5},
            "lr_change": [2, 3e-3]}
    settings = [("sgd", {**sgd, "momentum": m, "weight_decay": wd})
                for m, wd in ((0.0, 0.0), (0.9, 0.0), (0.9, 1e-2), (0.0, 0.1))]
    settings += [("adam", {**adam, "weight_decay": wd}) for wd in (0.0, 1e-2)]
    settings += [("adam", {"lr": 1e-3})]
    for n, (name, options) in enumerate(settings):
        case_id = f"{name}-{n}"
        rng = np.random.default_rng(seed_of(case_id))
        a = {"weight": rng.standard_normal((3, 4)), "bias": rng.standard_normal(3)}
        for s in range(OPTIM_STEPS):
            a[f"grad{s}.weight"] = rng.standard_normal((3, 4))
            a[f"grad{s}.bias"] = rng.standard_normal(3)
        params = {"weight": t(a["weight"]).requires_grad_(), "bias": t(a["bias"]).requires_grad_()}
        scale = options.get("lr_scale", {})
        groups = [{"params": [params[k]], "lr": options["lr"] * scale.get(k, 1.0),
                   "scale": scale.get(k, 1.0)} for k in ("weight", "bias")]
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()
              if k not in ("lr_scale", "lr_change")}
        opt = (torch.optim.SGD if name == "sgd" else torch.optim.Adam)(groups, **kw)
        change_at, new_lr = options.get("lr_change", (None, None))
        out = {}
        for s in range(OPTIM_STEPS):
            if s == change_at:
                for group in opt.param_groups:
                    group["lr"] = new_lr * group["scale"]
            params["weight"].grad, params["bias"].grad = t(a[f"grad{s}.weight"]), t(a[f"grad{s}.bias"])
            opt.step()
            for k, p in params.items():
                out[f"step{s}.{k}"] = p.detach().numpy().copy()
        cases.append({"id": case_id, "op": name, "family": "steps", "options": options,
                      "inputs": sorted(a), "outputs": sorted(out)})
        arrays.update({f"{case_id}.{k}": v for k, v in a.items()})
        arrays.update({f"{case_id}.torch.{k}": v for k, v in out.items()})
    for n, max_norm in enumerate((0.5, 1e3)):
        case_id = f"clip_grad_norm-{n}"
        rng = np.random.default_rng(seed_of(case_id))
        a = {"grad.weight": rng.standard_normal((3, 4)), "grad.bias": rng.standard_normal(3)}
        params = [torch.zeros(3, 4, dtype=torch.float64, requires_grad=True),
                  torch.zeros(3, dtype=torch.float64, requires_grad=True)]
        params[0].grad, params[1].grad = t(a["grad.weight"]), t(a["grad.bias"])
        total = torch.nn.utils.clip_grad_norm_(params, max_norm)
        out = {"total": total.detach().numpy(), "grad.weight": params[0].grad.numpy(),
               "grad.bias": params[1].grad.numpy()}
        cases.append({"id": case_id, "op": "clip_grad_norm", "family": "clip",
                      "options": {"max_norm": max_norm}, "inputs": sorted(a), "outputs": sorted(out)})
        arrays.update({f"{case_id}.{k}": v for k, v in a.items()})
        arrays.update({f"{case_id}.torch.{k}": v for k, v in out.items()})
    return cases, arrays, []


# --------------------------------------------------------------------------- batch norm

BATCHNORM = (("BatchNorm1d", (6, 3), 0.1), ("BatchNorm1d", (4, 3, 5), None),
             ("BatchNorm2d", (3, 2, 4, 5), 0.1), ("BatchNorm2d", (2, 3, 3, 3), 0.3))


def batchnorm_family():
    cases, arrays = [], {}
    for layer, shape, momentum in BATCHNORM:
        for dtype in (np.float64, np.float32):
            case_id = f"{layer}-{'x'.join(map(str, shape))}-m{momentum}-{np.dtype(dtype).name}"
            rng = np.random.default_rng(seed_of(case_id))
            c = shape[1]
            a = {"weight": rng.uniform(0.5, 2, c), "bias": rng.standard_normal(c),
                 **{f"x{i}": 2 * rng.standard_normal(shape) + rng.standard_normal((1, c) + (1,) * (len(shape) - 2))
                    for i in range(3)},
                 "x_eval": rng.standard_normal(shape), "dy": rng.standard_normal(shape)}
            a = {k: v.astype(dtype) for k, v in a.items()}
            m = getattr(torch.nn, layer)(c, momentum=momentum).to(torch.float64 if dtype == np.float64
                                                                   else torch.float32)
            with torch.no_grad():
                m.weight.copy_(t(a["weight"]))
                m.bias.copy_(t(a["bias"]))
            m.train()
            m(t(a["x0"]))
            m(t(a["x1"]))
            x = t(a["x2"], True)
            y = m(x)
            y.backward(t(a["dy"]))
            out = {"y": y.detach().numpy(), "dx": x.grad.numpy(), "dweight": m.weight.grad.numpy(),
                   "dbias": m.bias.grad.numpy(), "running_mean": m.running_mean.numpy().copy(),
                   "running_var": m.running_var.numpy().copy()}
            m.eval()
            with torch.no_grad():
                out["y_eval"] = m(t(a["x_eval"])).numpy()
            options = {"layer": layer, "momentum": momentum}
            cases.append({"id": case_id, "op": "batchnorm", "family": "batchnorm", "options": options,
                          "inputs": sorted(a), "outputs": sorted(out)})
            arrays.update({f"{case_id}.{k}": v for k, v in a.items()})
            arrays.update({f"{case_id}.torch.{k}": v for k, v in out.items()})
    return cases, arrays, []


# --------------------------------------------------------------------------- networks

NETWORKS = (("fcn", 28, None), ("cnn", 28, None), ("st-fcn", 42, "affine"),
            ("st-cnn", 28, "attention"))


def networks_family():
    cases, arrays = [], {}
    for n, (name, size, transform) in enumerate(NETWORKS):
        case_id = f"{name}-{size}" + (f"-{transform}" if transform else "")
        torch.manual_seed(seed_of(case_id) % 2**31)
        # the widths stnref solves for the parameter budget, read off its state dict
        state = build_model(name, transform, input_size=size).state_dict()
        twin = torch_twin.twin_of(name, state, size, transform=transform or "affine", load=False)
        if name.startswith("st-"):
            with torch.no_grad():
                reg = twin[0].loc[-1]
                reg.weight.normal_(0, 0.05)
                reg.bias.add_(torch.randn_like(reg.bias) * 0.05)
        rng = np.random.default_rng(seed_of(case_id))
        x = rng.standard_normal((3, 1, size, size))
        labels = rng.integers(0, 10, 3)
        xt = t(x, True)
        logits = twin(xt)
        loss = F.cross_entropy(logits, torch.tensor(labels))
        loss.backward()
        a = {"x": x, "labels": labels}
        a.update({f"state.{k}": v.detach().numpy().copy() for k, v in twin.state_dict().items()})
        # the input gradient runs through every layer's backward; the parameter gradients
        # would double the file (the layers' own are recorded in the nn family)
        out = {"logits": logits.detach().numpy(), "loss": loss.detach().numpy(), "dx": xt.grad.numpy()}
        cases.append({"id": case_id, "op": "network", "family": name,
                      "options": {"name": name, "input_size": size, "transform": transform},
                      "inputs": sorted(a), "outputs": sorted(out)})
        arrays.update({f"{case_id}.{k}": v for k, v in a.items()})
        arrays.update({f"{case_id}.torch.{k}": v for k, v in out.items()})
    return cases, arrays, []


FAMILIES = {
    "golden": golden_family, "sampler": sampler_family, "second_order": second_order_family,
    "affine_grid": affine_family, "nn": nn_family, "optim": optim_family,
    "networks": networks_family, "batchnorm": batchnorm_family,
}


def setup():
    """One thread and float64 defaults: the conditions every record is made in."""
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)


def main(argv=None):
    names = sys.argv[1:] if argv is None else list(argv)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise SystemExit(f"make_records.py: unknown families {unknown}; known: {list(FAMILIES)}")
    setup()
    for family, build in FAMILIES.items():
        if names and family not in names:
            continue
        cases, arrays, excluded = build()
        metadata = {
            "format": FORMAT, "records_version": RECORDS_VERSION, "family": family,
            "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "numpy": np.__version__, "date": datetime.date.today().isoformat(),
            "generator": "tests/torch_records/make_records.py",
            "reference_version": reference.REFERENCE_VERSION if family == "golden" else None,
            "cases": cases, "excluded": excluded,
        }
        path = HERE / f"{family}.npz"
        save_checkpoint(path, arrays, metadata)
        print(f"{family:13s} {len(cases):4d} cases, {len(excluded):3d} excluded, "
              f"{path.stat().st_size / 1024:7.1f} KiB")


if __name__ == "__main__":
    main()
