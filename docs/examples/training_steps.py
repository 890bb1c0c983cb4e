"""Time one training step of stnref's ST-FCN / ST-CNN against its PyTorch twin.

Usage::

    OPENBLAS_NUM_THREADS=1 python docs/examples/training_steps.py [--rounds 15]

For each network and input size the step is what ``stnref train`` runs per batch:
zero_grad, forward, cross-entropy, backward, Adam update, on a batch of 64 float32 images, with the
transformer on the data (no gradient to the images). The PyTorch twin
(``torch_twin.py``, the same architecture with stnref's weights loaded) runs the same
step on one thread. The two alternate round by round; the table gives the medians of
CPU time (``time.thread_time``) after ``warmup`` rounds, and stnref / PyTorch.
Requires torch (for this example only).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from torch_twin import perturb_localisation, twin_of  # noqa: E402

from stnref.nn.losses import cross_entropy  # noqa: E402
from stnref.app.train import TrainConfig, make_model, make_optimizer  # noqa: E402

CASES = (("st-fcn", "r"), ("st-fcn", "rts"), ("st-cnn", "r"), ("st-cnn", "rts"))  # 28^2, 42^2
BATCH = 64


def steps(name, distortion, seed=0):
    """``(stnref_step, torch_step)``: closures running one training step each."""
    rng = np.random.default_rng(seed)
    config = TrainConfig(model=name, distortion=distortion, batch_size=BATCH)
    model = make_model(config)
    perturb_localisation(model, rng)
    optimizer = make_optimizer(config, model)
    side = 42 if distortion == "rts" else 28
    state = {k: np.asarray(v, dtype=np.float64) for k, v in model.state_dict().items()}
    twin = twin_of(name, state, side).float()
    twin_optimizer = torch.optim.Adam(twin.parameters(), lr=config.lr)
    x = rng.standard_normal((BATCH, 1, side, side)).astype(np.float32)
    y = rng.integers(0, 10, BATCH)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def stnref_step():
        model.zero_grad()                        # backward adds to the gradients, as in torch
        _, dlogits = cross_entropy(model.forward(x), y)
        model.backward(dlogits)
        optimizer.step()

    def torch_step():
        twin_optimizer.zero_grad()
        torch.nn.functional.cross_entropy(twin(xt), yt).backward()
        twin_optimizer.step()

    return stnref_step, torch_step


def measure(name, distortion, rounds=15, warmup=3):
    """Median seconds per step, ``(stnref, torch)``, over interleaved rounds."""
    stnref_step, torch_step = steps(name, distortion)
    times = ([], [])
    for _ in range(warmup + rounds):
        for out, step in zip(times, (stnref_step, torch_step)):
            start = time.thread_time()
            step()
            out.append(time.thread_time() - start)
    return tuple(float(np.median(t[warmup:])) for t in times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("| step | stnref ms | torch ms | ratio |")
    print("|---|---:|---:|---:|")
    for name, distortion in CASES:
        ours, theirs = measure(name, distortion, args.rounds)
        side = 42 if distortion == "rts" else 28
        print(f"| {name.upper()} {side}² | {ours * 1e3:.2f} | {theirs * 1e3:.2f} | "
              f"{ours / theirs:.2f}x |")


if __name__ == "__main__":
    main()
