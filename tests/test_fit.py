"""The public training loop (``stnref.fit``), schedules attached to optimisers (``LambdaLR``),
schedules checked over a whole run, gradient clipping at its threshold, transformer health."""

import io
import math
import os

import numpy as np
import pytest

import stnref
from stnref import Parallel, SpatialTransformer, fit
from stnref.app import cli
from stnref.app.train import TrainConfig, train
from stnref.localisation import fc_localisation
from stnref.nn import (
    SGD,
    Adam,
    Constant,
    Cosine,
    Flatten,
    LambdaLR,
    Linear,
    ReLU,
    Sequential,
    StepDecay,
    Warmup,
    clip_grad_norm,
    parse_schedule,
)
from stnref.training import Progress, TrainingError
from test_train import StopAfter

STEPS = 4          # 64 samples in batches of 16


def quiet():
    return Progress(io.StringIO())


def blobs(n=64, seed=0, side=6):
    """Two classes of images: a bright left or right half, with noise; float64."""
    r = np.random.default_rng(seed)
    y = r.integers(0, 2, n)
    x = 0.3 * r.standard_normal((n, 1, side, side))
    x[y == 0, :, :, : side // 2] += 1.0
    x[y == 1, :, :, side // 2:] += 1.0
    return x, y


def small_model(seed=0, side=6):
    r = np.random.default_rng(seed)
    return Sequential(Flatten(), Linear(side * side, 8, rng=r), ReLU(), Linear(8, 2, rng=r))


# ----------------------------------------------------------------------------- LambdaLR

def test_lambda_lr_sets_the_rate_of_each_step_as_pytorch():
    opt = SGD(small_model(), lr=0.4)
    scheduler = LambdaLR(opt, Warmup(2) * StepDecay(3, 0.5))
    rates = []
    for _ in range(7):
        rates.append(opt.lr)
        scheduler.step()
    assert rates == [0.4 * (Warmup(2) * StepDecay(3, 0.5))(t) for t in range(7)]
    assert scheduler.get_last_lr() == [opt.lr] and scheduler.last_epoch == 7
    again = LambdaLR(SGD(small_model(), lr=0.4), Warmup(2) * StepDecay(3, 0.5))
    again.load_state_dict(scheduler.state_dict())
    assert again.optimizer.lr == opt.lr
    assert LambdaLR(SGD(small_model(), lr=1.0), lambda t: 0.5 ** t).optimizer.lr == 1.0


def test_lambda_lr_refuses_what_it_cannot_use():
    opt = SGD(small_model(), lr=0.1)
    with pytest.raises(TypeError, match="SGD or Adam"):
        LambdaLR(small_model(), Constant())
    with pytest.raises(TypeError, match="Schedule or a function"):
        LambdaLR(opt, 3)
    scheduler = LambdaLR(opt, lambda t: [1.0, math.inf][t])
    with pytest.raises(ValueError, match=r"rate at step 1 is 0.1 x inf"):
        scheduler.step()
    with pytest.raises(ValueError, match="keys 'base_lr' and 'last_epoch'"):
        scheduler.load_state_dict({"last_epoch": 2})


def test_lambda_lr_matches_pytorch_lambdalr():
    torch = pytest.importorskip("torch")
    schedule = Warmup(3) * Cosine(10, 0.1)
    p = torch.nn.Parameter(torch.zeros(2))
    opt_t = torch.optim.SGD([p], lr=0.3)
    sched_t = torch.optim.lr_scheduler.LambdaLR(opt_t, schedule)
    opt = SGD(small_model(), lr=0.3)
    scheduler = LambdaLR(opt, schedule)
    for _ in range(14):
        assert opt.lr == pytest.approx(opt_t.param_groups[0]["lr"], rel=1e-15)
        opt_t.step()
        sched_t.step()
        scheduler.step()


# ----------------------------------------------------------------------------- PyTorch's closed forms

def test_cosine_holds_final_past_its_end_where_pytorch_rises_again():
    """docs/derivations/layers.md states the difference: PyTorch's closed form
    f + (1 - f)(1 + cos(pi t / T)) / 2 is periodic, stnref's stays at f after T."""
    cosine, total, final = Cosine(10, 0.1), 10, 0.1
    for t in range(total + 1):
        torch_closed_form = final + (1 - final) * (1 + math.cos(math.pi * t / total)) / 2
        assert cosine(t) == pytest.approx(torch_closed_form, rel=1e-15)
    assert cosine(2 * total) == final
    assert final + (1 - final) * (1 + math.cos(math.pi * 2)) / 2 == pytest.approx(1.0)


def test_cosine_against_pytorch_scheduler_up_to_its_end_and_after():
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8, eta_min=0.1)
    rates = []
    for _ in range(17):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = [Cosine(8, 0.1)(t) for t in range(17)]
    np.testing.assert_allclose(ours[:9], rates[:9], rtol=1e-12)
    assert rates[16] == pytest.approx(1.0) and ours[16] == 0.1


def test_clip_grad_norm_scales_at_the_threshold_as_pytorch():
    model = Sequential(Linear(2, 2, rng=np.random.default_rng(0)))
    for name, g in (("weight", np.array([[3.0, 0.0], [0.0, 4.0]])), ("bias", np.zeros(2))):
        model[0].set_grad(name, g)
    total = clip_grad_norm(model, 5.0)                     # total == max_norm
    assert total == 5.0
    np.testing.assert_allclose(model.grads["0.weight"], np.diag([3.0, 4.0]) * 5 / (5 + 1e-6),
                               rtol=1e-15)
    assert clip_grad_norm(model, 10.0) < 5.0              # below: unchanged
    np.testing.assert_allclose(model.grads["0.weight"], np.diag([3.0, 4.0]) * 5 / (5 + 1e-6),
                               rtol=1e-15)
    model[0].set_grad("bias", np.array([np.nan, 0.0]))
    assert math.isnan(clip_grad_norm(model, 1.0))
    assert np.isnan(model.grads["0.weight"]).all()        # torch's clamp(nan) multiplies too


def test_clip_grad_norm_against_pytorch_at_the_threshold():
    torch = pytest.importorskip("torch")
    g = np.random.default_rng(1).standard_normal((3, 4))
    for max_norm in (np.linalg.norm(g), np.linalg.norm(g) * (1 + 1e-9), np.linalg.norm(g) / 2):
        p = torch.nn.Parameter(torch.zeros(3, 4, dtype=torch.float64))
        p.grad = torch.tensor(g)
        torch.nn.utils.clip_grad_norm_([p], max_norm)
        model = Sequential(Linear(4, 3, bias=False))
        model[0].set_grad("weight", g)
        clip_grad_norm(model, max_norm)
        np.testing.assert_allclose(model.grads["0.weight"], p.grad.numpy(), rtol=1e-15)


# ----------------------------------------------------------------------------- whole-run checks

def test_check_run_refuses_rates_beyond_floats():
    StepDecay(1, 1e300).check_run(1e-300, 1)               # 1e-300 * 1e300 ** 1: fine
    with pytest.raises(ValueError, match="leaves the float range within the run's 3 steps"):
        StepDecay(1, 1e300).check_run(1e-300, 3)
    with pytest.raises(ValueError, match="float range"):
        (Warmup(2) * StepDecay(2, 1e200)).check_run(1.0, 10)
    Cosine(5).check_run(1e308, 1000)
    assert StepDecay(1, 1e300).factor(5) == math.inf        # no OverflowError


def test_parse_schedule_refuses_lengths_beyond_floats():
    assert parse_schedule("step:1e308", 1, 1) == StepDecay(int(1e308))
    with pytest.raises(ValueError, match="1e308 epochs in 'step:1e308' is beyond the float range"):
        parse_schedule("step:1e308", 2, 1)


@pytest.mark.parametrize("args, message", [
    (["--schedule", "step:1e308"], "beyond the float range at 8 steps per epoch"),
    (["--lr", "1e-300", "--schedule", "step:0.25:1e300"], "leaves the float range"),
])
def test_cli_refuses_a_schedule_that_cannot_drive_the_run_before_creating_anything(
        tmp_path, capsys, args, message):
    out = tmp_path / "run"
    code = cli.main(["train", "--model", "fcn", "--distortion", "none", "--train-size", "256",
                     "--test-size", "64", "--batch-size", "32", "--epochs", "2", "--out", str(out),
                     *args])
    err = capsys.readouterr().err
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_train_checks_the_schedule_once_the_data_size_is_known(tmp_path):
    x = np.zeros((64, 1, 28, 28), np.float32)
    y = np.zeros(64, np.int64)
    config = TrainConfig(model="fcn", distortion="none", epochs=1, batch_size=8, lr=1e-300,
                         schedule="step:0.125:1e300", train_size=None, test_size=None)
    with pytest.raises(ValueError, match="leaves the float range"):
        train(config, str(tmp_path / "run"), data=(x, y, x, y), progress=quiet())
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- fit

def test_fit_learns_evaluates_and_reports():
    x, y = blobs()
    xt, yt = blobs(32, seed=1)
    model = small_model()
    out = io.StringIO()
    result = fit(model, Adam(model, lr=0.02), (x, y), (xt, yt), epochs=4, batch_size=16, seed=0,
                 progress=Progress(out))
    assert [m["epoch"] for m in result["epochs"]] == [1, 2, 3, 4]
    assert result["epochs"][-1]["test_error"] < 10 and result["stopped"] is None
    assert result["epochs"][-1]["train_loss"] < result["epochs"][0]["train_loss"]
    assert "epoch 4/4: train loss" in out.getvalue() and result["seed"] == 0


def test_fit_is_bit_identical_to_a_loop_written_out():
    """fit's step is zero_grad, forward, cross_entropy, backward, clip, step, scheduler.step."""
    x, y = blobs()
    model, twin = small_model(), small_model()
    opt, opt2 = SGD(model, lr=0.1, momentum=0.9), SGD(twin, lr=0.1, momentum=0.9)
    fit(model, opt, (x, y), epochs=2, batch_size=16, seed=3, clip_norm=1.0,
        scheduler=LambdaLR(opt, Cosine(2 * STEPS)), progress=quiet())
    scheduler = LambdaLR(opt2, Cosine(2 * STEPS))
    for epoch in (1, 2):
        for xb, yb in stnref.nn.Batches(x, y, batch_size=16, rng=np.random.default_rng([3, 1, epoch])):
            twin.zero_grad()
            _, d = stnref.nn.cross_entropy(twin(xb), yb)
            twin.backward(d)
            clip_grad_norm(twin, 1.0)
            opt2.step()
            scheduler.step()
    for k in model.params:
        np.testing.assert_array_equal(model.params[k], twin.params[k])


@pytest.mark.parametrize("stop_after", [1, 5, 7])
def test_fit_resumes_bit_identically(tmp_path, stop_after):
    x, y = blobs()

    def run(path, interrupt=None):
        model = small_model()
        opt = Adam(model, lr=0.01)
        scheduler = LambdaLR(opt, Warmup(3) * Cosine(3 * STEPS))
        progress = quiet() if interrupt is None else StopAfter(interrupt)
        kw = dict(epochs=3, batch_size=16, seed=1, checkpoint=path, checkpoint_every=1)
        try:
            fit(model, opt, (x, y), (x, y), scheduler=scheduler, progress=progress, **kw)
        except KeyboardInterrupt:
            saved = os.path.exists(path)       # (interrupted before the first save: start again)
            model = small_model(seed=9 if saved else 0)     # a new process: weights from the file
            opt = Adam(model, lr=0.01)
            scheduler = LambdaLR(opt, Warmup(3) * Cosine(3 * STEPS))
            fit(model, opt, (x, y), (x, y), scheduler=scheduler, resume=saved, progress=quiet(),
                **kw)
        return model, opt

    a, opt_a = run(str(tmp_path / "a.npz"))
    b, opt_b = run(str(tmp_path / "b.npz"), stop_after)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    assert opt_a.state_dict()["lr"] == opt_b.state_dict()["lr"]


def test_fit_with_a_time_budget_stops_saves_and_resumes(tmp_path):
    x, y = blobs(256)
    model = small_model()
    opt = Adam(model, lr=0.01)
    path = str(tmp_path / "run.npz")
    result = fit(model, opt, (x, y), (x, y), seconds=1e-9, batch_size=16, seed=2, checkpoint=path,
                 progress=quiet())
    stopped = result["stopped"]
    assert stopped["reason"] == "seconds" and (stopped["epoch"], stopped["step"]) == (0, 1)
    assert result["epochs"] == [] and stopped["test_error"] is not None
    again = fit(model, opt, (x, y), (x, y), epochs=1, batch_size=16, resume=True, checkpoint=path,
                progress=quiet())
    assert len(again["epochs"]) == 1 and again["seed"] == 2


def test_fit_refuses_what_it_cannot_honour(tmp_path):
    x, y = blobs()
    model = small_model()
    opt = Adam(model, lr=0.01)
    with pytest.raises(ValueError, match="epochs, seconds or both"):
        fit(model, opt, (x, y))
    with pytest.raises(TypeError, match="optimizer to be a stnref.nn SGD or Adam over model"):
        fit(model, Adam(small_model(), lr=0.01), (x, y), epochs=1)
    with pytest.raises(ValueError, match="integer labels"):
        fit(model, opt, (x, y.astype(float)), epochs=1)
    with pytest.raises(ValueError, match="checkpoint_every=2 needs a checkpoint path"):
        fit(model, opt, (x, y), epochs=1, checkpoint_every=2)
    with pytest.raises(ValueError, match="no checkpoint"):
        fit(model, opt, (x, y), epochs=1, checkpoint=str(tmp_path / "none.npz"), resume=True)
    tiny = SGD(model, lr=1e-300)
    with pytest.raises(ValueError, match="leaves the float range"):
        fit(model, tiny, (x, y), epochs=9, batch_size=16, scheduler=LambdaLR(tiny, StepDecay(1, 1e300)))
    path = str(tmp_path / "run.npz")
    fit(model, opt, (x, y), epochs=1, batch_size=16, seed=0, checkpoint=path, progress=quiet())
    with pytest.raises(ValueError, match="exists; resume=True continues it"):
        fit(model, opt, (x, y), epochs=1, checkpoint=path)
    with pytest.raises(ValueError, match=r"batch_size 16 \(asked 32\)"):
        fit(model, opt, (x, y), epochs=2, batch_size=32, checkpoint=path, resume=True)
    with pytest.raises(ValueError, match="scheduler is at step 3 but the run at step 0"):
        scheduler = LambdaLR(opt, Constant())
        for _ in range(3):
            scheduler.step()
        fit(model, opt, (x, y), epochs=1, scheduler=scheduler, progress=quiet())


def test_fit_stops_on_a_non_finite_step_and_says_so():
    x, y = blobs()
    model = small_model()
    model[1].weight[0, 0] = np.nan
    with pytest.raises(TrainingError, match="non-finite logits at epoch 1, batch 1.*no checkpoint"):
        fit(model, SGD(model, lr=0.1), (x, y), epochs=1, progress=quiet())
    result = fit(model, SGD(model, lr=0.1), (x, y), epochs=1, batch_size=16, on_nonfinite="skip",
                 progress=quiet())
    assert result["epochs"][0]["train_loss"] is None


# ----------------------------------------------------------------------------- health

def transformer_pair(seed=0, side=12):
    r = np.random.default_rng(seed)
    sts = [SpatialTransformer(fc_localisation((1, side, side), 6, hidden=(8,), rng=r)) for _ in range(2)]
    return Sequential(Parallel(*sts), Flatten(), Linear(2 * side * side, 2, rng=r)), sts


def test_the_transformer_reports_its_health():
    model, (st, _) = transformer_pair()
    x = np.random.default_rng(1).standard_normal((5, 1, 12, 12))
    model(x)
    assert st.last_outside == 0.0 and st.last_theta_spread == 0.0   # the identity, for all
    st.loc[-1].bias[...] = [1, 0, 3, 0, 1, 0]                       # shifted off to the right
    st.loc[-1].weight[...] = 0.01
    model(x)
    assert st.last_outside > 0.9 and st.last_theta_spread > 0


def test_fit_warns_once_about_a_transformer_off_the_image_or_collapsed():
    x, y = blobs(64, side=12)
    model, (drifted, frozen) = transformer_pair()
    drifted.loc[-1].bias[...] = [0.2, 0, 3, 0, 0.2, 0]               # samples outside the image
    opt = SGD(model, lr=0.01, lr_scale={"0.1.loc.": 0.0})           # the second never moves
    out = io.StringIO()
    result = fit(model, opt, (x, y), epochs=2, batch_size=16, seed=0, progress=Progress(out))
    warnings = result["warnings"]
    assert any("spatial transformer 0.0 sampled 100% of its points outside the input in epoch 1"
               in w for w in warnings), warnings
    assert any("spatial transformer 0.1 gave one theta for every input in epoch 1" in w
               for w in warnings), warnings
    assert not any("in epoch 2" in w for w in warnings)       # once each, not every epoch
    assert out.getvalue().count("warning:") == len(warnings)


def test_a_healthy_transformer_is_not_warned_about():
    x, y = blobs(64, side=12)
    model, _ = transformer_pair()
    result = fit(model, Adam(model, lr=0.003), (x, y), epochs=2, batch_size=16, seed=0,
                 progress=quiet())
    assert result["warnings"] == []


def test_experiment_workers_seed_the_process_wide_generator(tmp_path):
    from stnref.app import experiment
    from stnref.nn import default_generator

    config = TrainConfig(model="fcn", distortion="none", epochs=1, batch_size=32, train_size=64,
                         test_size=32, seed=4).validated()
    stnref.manual_seed(77)
    experiment._run_cell(config, str(tmp_path / "cell"), False)
    after = default_generator().bit_generator.state
    stnref.manual_seed(4)
    assert after == default_generator().bit_generator.state   # train draws nothing from it
    stnref.manual_seed(0)


def test_fit_takes_fresh_data_every_epoch_and_resumes_exactly(tmp_path):
    """train_data as a function of the epoch: augmentation drawn afresh, seeded by the epoch."""
    base_x, base_y = blobs(64)
    calls = []

    def data(epoch):
        calls.append(epoch)
        noise = np.random.default_rng([5, epoch]).standard_normal(base_x.shape)
        return base_x + 0.1 * noise, base_y

    def run(path=None, interrupt=None):
        model = small_model()
        opt = Adam(model, lr=0.01)
        kw = dict(epochs=3, batch_size=16, seed=1, checkpoint=path,
                  checkpoint_every=1 if path else None)
        try:
            fit(model, opt, data, progress=quiet() if interrupt is None else StopAfter(interrupt),
                **kw)
        except KeyboardInterrupt:
            model = small_model(seed=9)
            opt = Adam(model, lr=0.01)
            fit(model, opt, data, resume=True, progress=quiet(), **kw)
        return model

    a = run()
    assert calls == [1, 2, 3]                                 # once per epoch
    b = run(str(tmp_path / "b.npz"), interrupt=6)             # stopped in epoch 2
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    with pytest.raises(ValueError, match=r"train_data\(2\) has 32 samples, the run 64 per epoch"):
        model = small_model()
        fit(model, Adam(model, lr=0.01), lambda e: blobs(64 if e == 1 else 32), epochs=2,
            batch_size=16, progress=quiet())
