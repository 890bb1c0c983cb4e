"""Produce a RESULTS directory for ``stnref.reference.check`` from your own implementation.

Usage::

    stnref reference export GOLDEN         # or: python -m stnref reference export GOLDEN
    python docs/examples/reference_adapter.py GOLDEN RESULTS [--backend torch|stnref]
    stnref reference check GOLDEN RESULTS  # exit status 0 only if every case passes

For every case in ``GOLDEN/manifest.json`` this reads the golden file's input and
cotangent arrays (the manifest says which are which), runs *your* implementation,
and writes the outputs under the same array names to ``RESULTS/<case file>``.
Replace the functions of ``TorchBackend`` with calls into your kernel.

The example backend wraps PyTorch (``affine_grid``/``grid_sample`` with autograd for
the vector-Jacobian products, the double-VJP trick for the JVP, ``create_graph``
for the double backward).  PyTorch has no attention, projective or thin-plate-spline
generator nor the settings beyond its own (constant and wrap padding, tricubic, another
Keys parameter), and the non-finite-coordinate cases pin stnref's own rule (PyTorch
returns other values there and its CPU backward can crash the process), so those
cases fall back to stnref itself -- a real adapter would run its own code on them.
Without torch installed the whole run uses stnref (and trivially passes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import numpy as np

from stnref.reference import compute_outputs


class StnrefBackend:
    """The reference itself: ``compute_outputs(op, options, arrays) -> {name: array}``."""

    name = "stnref"

    def supports(self, case):
        return True

    def run(self, case, arrays):
        return compute_outputs(case["op"], case["options"], arrays)


class TorchBackend:
    """torch.nn.functional.affine_grid / grid_sample, gradients by autograd."""

    name = "torch"
    OPS = ("affine_grid", "grid_sample", "grid_sample_jvp", "grid_sample_double_backward")

    def __init__(self, torch):
        self.torch = torch
        self.F = torch.nn.functional

    def supports(self, case):   # "pytorch": the manifest's word for PyTorch's settings (version 3)
        return case["op"] in self.OPS and case["finite"] and case.get("pytorch", True)

    def run(self, case, arrays):
        t = {name: self.torch.tensor(x) for name, x in arrays.items()}
        op, opt = case["op"], case["options"]
        grad = self.torch.autograd.grad
        if op == "affine_grid":
            theta = t["theta"].requires_grad_()
            with warnings.catch_warnings():  # torch warns about size-1 axes with align_corners
                warnings.simplefilter("ignore", UserWarning)
                grid = self.F.affine_grid(theta, list(opt["size"]), align_corners=opt["align_corners"])
            (dtheta,) = grad(grid, theta, t["dgrid"])
            return {"grid": grid, "dtheta": dtheta}
        kw = {k: opt[k] for k in ("mode", "padding_mode", "align_corners")}

        def sample(U, grid):
            return self.F.grid_sample(U, grid, **kw)

        if op == "grid_sample_jvp":
            _, tV = self.torch.autograd.functional.jvp(sample, (t["U"], t["grid"]), (t["tU"], t["tgrid"]))
            return {"tV": tV}
        U, grid = t["U"].requires_grad_(), t["grid"].requires_grad_()
        V = sample(U, grid)
        if op == "grid_sample":
            dU, dgrid = grad(V, (U, grid), t["dV"])
            return {"V": V, "dU": dU, "dgrid": dgrid}
        dV = t["dV"].requires_grad_()
        dU, dgrid = grad(V, (U, grid), dV, create_graph=True)
        loss = (dU * t["g_dU"]).sum() + (dgrid * t["g_dgrid"]).sum()
        g = grad(loss, (dV, U, grid), allow_unused=True)   # nearest: U and grid unused -> None
        zeros = [self.torch.zeros_like(x) for x in (dV, U, grid)]
        g_dV, g_U, g_grid = (z if gi is None else gi for gi, z in zip(g, zeros))
        return {"g_dV": g_dV, "g_U": g_U, "g_grid": g_grid}


def _as_numpy(x):
    return x.detach().numpy() if hasattr(x, "detach") else np.asarray(x)


def run(golden, results, backend_name="torch", log=sys.stdout):
    """Write RESULTS for every case of GOLDEN; returns the number of cases per backend used."""
    with open(os.path.join(golden, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    fallback = StnrefBackend()
    primary = fallback
    if backend_name == "torch":
        try:
            import torch
        except ImportError:
            print("torch not installed: using stnref for every case", file=log)
        else:
            primary = TorchBackend(torch)
    os.makedirs(results, exist_ok=True)
    used = {}
    for case in manifest["cases"]:
        with np.load(os.path.join(golden, case["file"]), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in (*case["inputs"], *case["cotangents"])}
        backend = primary if primary.supports(case) else fallback
        outputs = {name: _as_numpy(x) for name, x in backend.run(case, arrays).items()}
        np.savez(os.path.join(results, case["file"]), **outputs)
        used[backend.name] = used.get(backend.name, 0) + 1
    print(", ".join(f"{n} cases by {name}" for name, n in sorted(used.items())), file=log)
    return used


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("golden", help="directory written by stnref.reference.export")
    parser.add_argument("results", help="directory to write the outputs to")
    parser.add_argument("--backend", choices=("torch", "stnref"), default="torch")
    args = parser.parse_args(argv)
    run(args.golden, args.results, args.backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
