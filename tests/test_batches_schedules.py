"""stnref.nn.Batches (seeded mini-batches) and the learning-rate schedules of stnref.nn.schedules."""

import math

import numpy as np
import pytest

from stnref.nn import (
    Batches,
    Constant,
    Cosine,
    Schedule,
    StepDecay,
    Warmup,
    manual_seed,
    parse_schedule,
)

# ----------------------------------------------------------------------------- Batches


def _data(n=10):
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    return x, np.arange(n) % 4


@pytest.mark.parametrize("n, size, drop_last, sizes", [
    (10, 4, False, [4, 4, 2]), (10, 4, True, [4, 4]), (8, 4, False, [4, 4]), (8, 4, True, [4, 4]),
    (3, 5, False, [3]), (3, 5, True, []), (0, 2, False, []),
])
def test_batches_cover_every_row_once_and_keep_or_drop_the_last(n, size, drop_last, sizes):
    x, y = _data(n)
    batches = Batches(x, y, batch_size=size, rng=1, drop_last=drop_last)
    assert len(batches) == len(sizes)
    got = list(batches)
    assert [len(yb) for _, yb in got] == sizes
    rows = np.concatenate([xb for xb, _ in got]) if got else np.empty((0, 3), np.float32)
    np.testing.assert_array_equal(rows, x[batches.order[:len(rows)]])
    if not drop_last:
        assert sorted(batches.order) == list(range(n))
    for xb, yb in got:
        assert xb.dtype == np.float32 and np.array_equal(yb, (xb[:, 0] // 3).astype(int) % 4)


def test_batches_are_seeded_and_a_generator_advances_per_epoch():
    x, y = _data(50)
    same = [Batches(x, y, batch_size=8, rng=7).order for _ in range(2)]
    np.testing.assert_array_equal(*same)
    np.testing.assert_array_equal(Batches(x, batch_size=8, rng=np.random.default_rng(7)).order, same[0])
    rng = np.random.default_rng(3)
    first, second = (Batches(x, y, batch_size=8, rng=rng).order for _ in range(2))
    assert not np.array_equal(first, second)              # a new order each epoch ...
    rng = np.random.default_rng(3)
    np.testing.assert_array_equal(Batches(x, batch_size=8, rng=rng).order, first)
    np.testing.assert_array_equal(Batches(x, batch_size=8, rng=rng).order, second)   # ... reproducibly
    manual_seed(0)                    # None: the process-wide generator stnref.manual_seed seeds
    np.testing.assert_array_equal(Batches(x, batch_size=8).order, Batches(x, batch_size=8, rng=0).order)
    manual_seed(0)
    np.testing.assert_array_equal(Batches(x, batch_size=8, shuffle=False).order, np.arange(50))


def test_batches_index_like_a_sequence_and_never_touch_the_inputs():
    x, y = _data(10)
    x0, y0 = x.copy(), y.copy()
    batches = Batches(x, y, batch_size=3, rng=2)
    for i in range(len(batches)):
        for a, b in zip(batches[i], batches[i - len(batches)]):
            np.testing.assert_array_equal(a, b)
    xb, _ = batches[0]
    xb[...] = -1.0                                        # a batch is a new array
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)
    with pytest.raises(IndexError, match=r"Batches\.__getitem__\(\): index 4 out of range for 4"):
        batches[4]


@pytest.mark.parametrize("call, exc, match", [
    (lambda: Batches(batch_size=2), ValueError, r"Batches\(\): expected at least one array"),
    (lambda: Batches([1.0, 2.0], batch_size=2), TypeError, r"expected arrays\[0\] to be a numpy array"),
    (lambda: Batches(np.zeros(3), np.array(1.0), batch_size=2), TypeError, r"arrays\[1\].*0-d"),
    (lambda: Batches(np.zeros(3), np.zeros(4), batch_size=2), ValueError, r"lengths \[3, 4\]"),
    (lambda: Batches(np.zeros(3), batch_size=0), ValueError, r"expected batch_size >= 1"),
    (lambda: Batches(np.zeros(3), batch_size=2.0), TypeError, r"expected batch_size to be an int"),
    (lambda: Batches(np.zeros(3), batch_size=2, shuffle=1), TypeError, r"expected shuffle to be a bool"),
    (lambda: Batches(np.zeros(3), batch_size=2, drop_last=None), TypeError, r"drop_last"),
    (lambda: Batches(np.zeros(3), batch_size=2, rng=-1), ValueError, r"expected rng >= 0"),
    (lambda: Batches(np.zeros(3), batch_size=2, rng="0"), TypeError,
     r"expected rng to be a numpy.random.Generator, an int seed or None, got str"),
    (lambda: Batches(np.zeros(3), batch_size=2)["0"], TypeError, r"expected index to be an int"),
])
def test_batches_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ----------------------------------------------------------------------------- schedules


def test_schedules_closed_forms():
    assert [Constant()(t) for t in (0, 10**9)] == [1.0, 1.0]
    assert [StepDecay(3, 0.5)(t) for t in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    assert StepDecay(2)(2) == 0.1
    assert [Warmup(4)(t) for t in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cosine = Cosine(10, final=0.2)
    assert cosine(0) == 1.0 and cosine(10) == pytest.approx(0.2, abs=1e-15) and cosine(99) == cosine(10)
    assert cosine(5) == pytest.approx(0.6, abs=1e-15)
    assert all(cosine(t) > cosine(t + 1) for t in range(10))
    product = Warmup(2) * Cosine(4)
    assert isinstance(product, Schedule)
    assert [product(t) for t in range(3)] == [0.5 * Cosine(4)(0), Cosine(4)(1), Cosine(4)(2)]
    assert repr(product) == "Warmup(steps=2) * Cosine(total=4, final=0.0)"
    assert Cosine(4) == Cosine(4) and isinstance(Constant()(3), float)


def test_schedules_match_torch():
    torch = pytest.importorskip("torch")
    param = torch.nn.Parameter(torch.zeros(1))

    def torch_factors(make, steps, lr=0.5):
        opt = torch.optim.SGD([param], lr=lr)
        sched = make(opt)
        out = []
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"] / lr)
            opt.step()
            sched.step()
        return out

    lr = torch.optim.lr_scheduler
    cases = [
        (StepDecay(3, 0.5), lambda o: lr.StepLR(o, 3, 0.5)),
        (Cosine(7, 0.1), lambda o: lr.CosineAnnealingLR(o, 7, eta_min=0.05)),
        (Warmup(4), lambda o: lr.LinearLR(o, start_factor=0.25, total_iters=3)),
    ]
    for ours, make in cases:
        np.testing.assert_allclose([ours(t) for t in range(7)], torch_factors(make, 7), rtol=1e-12,
                                   err_msg=repr(ours))


@pytest.mark.parametrize("spec, expected", [
    ("constant", Constant()),
    ("step:2", StepDecay(20)),
    ("step:0.5:0.3", StepDecay(5, 0.3)),
    ("cosine", Cosine(30)),
    ("cosine:2:0.1", Cosine(20, 0.1)),
    ("warmup:0.05", Warmup(1)),                       # at least one step
    ("warmup:1 + cosine", Warmup(10) * Cosine(30)),
    ("warmup:1+step:1:0.5+constant", Warmup(10) * StepDecay(10, 0.5) * Constant()),
])
def test_parse_schedule(spec, expected):
    assert parse_schedule(spec, steps_per_epoch=10, epochs=3) == expected


@pytest.mark.parametrize("call, exc, match", [
    (lambda: parse_schedule(3, 1, 1), TypeError, r"parse_schedule\(\): expected spec to be a str"),
    (lambda: parse_schedule("linear", 1, 1), ValueError,
     r"expected terms constant, step:E\[:GAMMA\], cosine\[:E\[:FINAL\]\], warmup:E joined by '\+'"),
    (lambda: parse_schedule("step", 1, 1), ValueError, r"got 'step' in 'step'"),
    (lambda: parse_schedule("warmup:0", 1, 1), ValueError, r"a positive number of epochs in 'warmup:0'"),
    (lambda: parse_schedule("cosine:x", 1, 1), ValueError, r"epochs in 'cosine:x', got 'x'"),
    (lambda: parse_schedule("cosine:1:2", 1, 1), ValueError, r"Cosine\(\): expected finite final >= 0 and <= 1"),
    (lambda: parse_schedule("step:1:-1", 1, 1), ValueError, r"StepDecay\(\): expected finite gamma >= 0"),
    (lambda: parse_schedule("constant+", 1, 1), ValueError, r"got '' in 'constant\+'"),
    (lambda: parse_schedule("constant", 0, 1), ValueError, r"expected steps_per_epoch >= 1"),
    (lambda: parse_schedule("constant", 1, 1.0), TypeError, r"expected epochs to be an int"),
    (lambda: Cosine(0), ValueError, r"Cosine\(\): expected total >= 1"),
    (lambda: Warmup(2.5), TypeError, r"Warmup\(\): expected steps to be an int"),
    (lambda: StepDecay(1, "0.1"), TypeError, r"StepDecay\(\): expected gamma to be a real number"),
    (lambda: Constant()(-1), ValueError, r"Schedule.__call__\(\): expected t >= 0"),
    (lambda: Constant() * 2, TypeError, "unsupported operand"),
])
def test_schedule_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_cosine_without_length_spans_the_run():
    schedule = parse_schedule("cosine", steps_per_epoch=4, epochs=5)
    assert schedule(0) == 1.0 and schedule(20) == pytest.approx(0.0, abs=1e-15)
    assert schedule(10) == pytest.approx(0.5, abs=1e-15) and not math.isnan(schedule(10**6))
