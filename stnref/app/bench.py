"""Benchmarks of the sampler, measured in one interleaved run (``stnref bench``).

Every case is timed in rounds that alternate stnref and, when it is
importable, PyTorch on the same inputs (one thread), and the medians are
compared.  Times are the process's CPU time (:data:`CLOCK`): everything runs on one
thread, and on a shared machine the time other jobs hold the CPU is not counted.  A memory-bandwidth floor -- the time to stream the bytes of
``U``, ``grid`` and ``V`` once through ``np.copyto`` -- is always reported, so
the numbers mean something on a machine without PyTorch too.  The settings
PyTorch does not have (stnref.sampler_settings) are timed against the nearest
kernel that exists: PyTorch with the same kernel (trilinear for tricubic) and
``scipy.ndimage.map_coordinates`` with the same padding.
"""

from __future__ import annotations

import datetime
import importlib
import platform
import time

import numpy as np
import scipy

from .._io import atomic_write_bytes, read_regular_file
from ..grids import affine_grid, affine_grid_backward
from ..sampler_settings import FILL_PADDINGS, SETTINGS, combinations, is_pytorch
from ..sampling import grid_sample, grid_sample_backward

SHAPES = ((64, 1, 28, 28), (256, 1, 60, 60), (8, 3, 224, 224))
LARGE_SHAPE = (1, 1, 1024, 1024)
MODES = tuple((m, p) for _, m, p in combinations(dims=(2,)))
VOLUME = (2, 1, 32, 32, 32)      # the 3-D shape: trilinear, tricubic
BEYOND_IMAGE = (8, 1, 128, 128)  # the 2-D shape of the settings PyTorch lacks
FILL = 0.5                       # fill_value timed with padding_mode="constant"
# stnref padding -> scipy.ndimage mode with the same extension (docs/conventions.md §7.2)
SCIPY_MODES = {"zeros": "grid-constant", "constant": "grid-constant", "wrap": "grid-wrap",
               "border": "nearest", "reflection": "reflect"}
SCIPY_ORDERS = {"nearest": 0, "bilinear": 1, "bicubic": 3}   # 3: cubic B-spline, same 4^k taps
CLOCK = time.process_time        # CPU seconds of this process (one thread does the work)
SCALING_SIDES = (28, 60, 128, 256, 512, 1024)
PAGE_LIMIT = 16 * 2**20  # bytes: the largest --markdown page read (docs/performance.md is ~10 KB)


def _torch():
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        return None
    torch.set_num_threads(1)
    return torch


def _inputs(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    U = rng.standard_normal(shape).astype(dtype)
    k = len(shape) - 2
    theta = np.eye(k, k + 1) + 0.1 * rng.standard_normal((shape[0], k, k + 1))
    return U, theta.astype(dtype)


def _stnref_cases(U, theta, mode, padding):
    size = U.shape
    kw = {"fill_value": FILL} if padding in FILL_PADDINGS else {}

    def forward():
        return grid_sample(U, affine_grid(theta, size), mode, padding, **kw)

    grid = affine_grid(theta, size)
    dV = np.ones((*U.shape[:2], *size[2:]), dtype=U.dtype)

    def forward_backward():
        g = affine_grid(theta, size)
        grid_sample(U, g, mode, padding, **kw)
        _, dgrid = grid_sample_backward(dV, U, g, mode, padding, **kw)
        affine_grid_backward(dgrid, size)

    def sample_only():
        return grid_sample(U, grid, mode, padding, **kw)

    return {"fwd": forward, "fwd+bwd": forward_backward, "sample": sample_only}


def _torch_cases(torch, U, theta, mode, padding):
    F = torch.nn.functional
    Ut, tht = torch.from_numpy(U), torch.from_numpy(theta)
    size = list(U.shape)
    grid = F.affine_grid(tht, size, align_corners=False)

    def forward():
        with torch.no_grad():
            g = F.affine_grid(tht, size, align_corners=False)
            return F.grid_sample(Ut, g, mode=mode, padding_mode=padding, align_corners=False)

    def forward_backward():
        u = Ut.clone().requires_grad_()
        t = tht.clone().requires_grad_()
        g = F.affine_grid(t, size, align_corners=False)
        V = F.grid_sample(u, g, mode=mode, padding_mode=padding, align_corners=False)
        V.backward(torch.ones_like(V))

    def sample_only():
        with torch.no_grad():
            return F.grid_sample(Ut, grid, mode=mode, padding_mode=padding, align_corners=False)

    return {"fwd": forward, "fwd+bwd": forward_backward, "sample": sample_only}


def _scipy_sample(U, theta, mode, padding):
    """``map_coordinates`` on every (n, c) plane at the grid's pixel coordinates (forward only)."""
    from scipy import ndimage

    k = U.ndim - 2
    grid = affine_grid(theta, U.shape)
    # pixel coordinates (docs/conventions.md §3.1, align_corners=False), array-axis order
    coords = [np.stack([((grid[n, ..., k - 1 - j] + 1) * U.shape[2 + j] - 1) / 2 for j in range(k)])
              for n in range(U.shape[0])]
    order, scipy_mode = SCIPY_ORDERS[mode], SCIPY_MODES[padding]

    def sample_only():
        return [ndimage.map_coordinates(plane, coords[n], order=order, mode=scipy_mode, cval=FILL,
                                        prefilter=False) for n in range(U.shape[0]) for plane in U[n]]

    return sample_only


def _floor_seconds(U, rounds):
    """Time to stream the bytes of U + grid + V once (read and write), by np.copyto."""
    k = U.ndim - 2
    n_bytes = 2 * U.nbytes + U.nbytes // U.shape[1] * k  # U, V (same size), k-vector grid
    src = np.ones(n_bytes // 8)
    dst = np.empty_like(src)
    times = []
    for _ in range(rounds):
        t = CLOCK()
        np.copyto(dst, src)
        times.append(CLOCK() - t)
    return float(np.median(times))


def _interleaved(cases, rounds):
    """Median seconds of each callable, timed in alternating rounds after one warm-up."""
    for f in cases.values():
        f()
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for name, f in cases.items():
            t = CLOCK()
            f()
            times[name].append(CLOCK() - t)
    return {name: float(np.median(ts)) for name, ts in times.items()}


def measure(shape, dtype=np.float32, mode="bilinear", padding="zeros", rounds=7, kinds=None):
    """Time stnref (and PyTorch if importable and it has the setting) on one shape.

    Parameters
    ----------
    shape : tuple of int
        Input ``(N, C, H, W)`` (or 5-D); the output has the same spatial size.
    dtype : dtype
    mode, padding : str
    rounds : int
        Interleaved rounds; the median is reported.
    kinds : sequence of str, optional
        Subset of ``("fwd", "fwd+bwd", "sample")``.

    Returns
    -------
    dict
        ``{kind: {"stnref": s, "torch": s or None, "ratio": r or None, "floor": s}}``.
    """
    U, theta = _inputs(shape, dtype)
    ours = _stnref_cases(U, theta, mode, padding)
    kinds = tuple(kinds or ours)
    cases = {("stnref", k): ours[k] for k in kinds}
    torch = _torch()
    if torch is not None and is_pytorch(mode, padding, len(shape) - 2):
        theirs = _torch_cases(torch, U, theta, mode, padding)
        cases.update({("torch", k): theirs[k] for k in kinds})
    medians = _interleaved(cases, rounds)
    floor = _floor_seconds(U, rounds)
    rows = {}
    for k in kinds:
        t_ours = medians["stnref", k]
        t_theirs = medians.get(("torch", k))
        rows[k] = {"stnref": t_ours, "torch": t_theirs,
                   "ratio": None if t_theirs is None else t_ours / t_theirs,
                   "floor": floor}
    return rows


def nearest_pytorch(mode, padding, k):
    """The PyTorch setting nearest to a stnref one: the same kernel (trilinear for tricubic),
    the same padding where PyTorch has it, else zeros.

    Returns
    -------
    tuple of str
        ``(mode, padding_mode)``.
    """
    if not any(is_pytorch(mode, p, k) for m, p in SETTINGS if m == mode):
        mode = "bilinear"
    return mode, padding if is_pytorch(mode, padding, k) else "zeros"


def measure_beyond(shape, mode, padding, rounds=7, dtype=np.float32):
    """Time a setting against the nearest existing kernels, interleaved in one run.

    Forward and backward (``affine_grid`` included) against PyTorch's :func:`nearest_pytorch`
    setting on the same input; the sampling alone against ``scipy.ndimage.map_coordinates``
    with the same padding and a kernel with as many taps (:data:`SCIPY_ORDERS`).

    Parameters
    ----------
    shape : tuple of int
    mode, padding : str
    rounds : int
    dtype : dtype

    Returns
    -------
    dict
        ``{"torch": (name, stnref s, torch s or None), "scipy": (name, stnref s, scipy s)}``.
    """
    U, theta = _inputs(shape, dtype)
    ours = _stnref_cases(U, theta, mode, padding)
    cases = {"stnref fwd+bwd": ours["fwd+bwd"], "stnref sample": ours["sample"],
             "scipy sample": _scipy_sample(U, theta, mode, padding)}
    k = len(shape) - 2
    t_mode, t_padding = nearest_pytorch(mode, padding, k)
    torch = _torch()
    if torch is not None:
        cases["torch fwd+bwd"] = _torch_cases(torch, U, theta, t_mode, t_padding)["fwd+bwd"]
    medians = _interleaved(cases, rounds)
    kernel = {"nearest": "nearest", "bilinear": "trilinear" if k == 3 else "bilinear"}.get(t_mode)
    return {"torch": (f"PyTorch {kernel or t_mode} {t_padding}", medians["stnref fwd+bwd"],
                      medians.get("torch fwd+bwd")),
            "scipy": (f"map_coordinates order {SCIPY_ORDERS[mode]} '{SCIPY_MODES[padding]}'",
                      medians["stnref sample"], medians["scipy sample"])}


def _fmt(seconds):
    return "-" if seconds is None else f"{seconds * 1e3:9.2f}"


def _ratio(r):
    return "-" if r is None else f"{r:5.2f}x"


def environment():
    """One line describing the machine and library versions.

    Returns
    -------
    str
        Date, processor, Python, NumPy, SciPy and (if installed) PyTorch versions,
        with the instruction set PyTorch's CPU kernels use (its vectorised
        ``grid_sample`` is 5-8x faster than its scalar one: docs/performance.md).
    """
    torch = _torch()
    versions = f"numpy {np.__version__}, scipy {scipy.__version__}"
    if torch is None:
        versions += ", torch not installed"
    else:
        versions += (f", torch {torch.__version__} "
                     f"({torch.backends.cpu.get_cpu_capability()} kernels, 1 thread)")
    return (f"{datetime.date.today().isoformat()}; {platform.machine()} {platform.processor() or ''}"
            f" Python {platform.python_version()}; {versions}")


def run(shapes=SHAPES, dtypes=(np.float32, np.float64), rounds=7, modes=True, scaling=False,
        large=False, print_fn=print, settings=None):
    """Run the benchmark suite and return its markdown report (also printed line by line).

    Parameters
    ----------
    shapes : sequence of tuple
        Input shapes for the bilinear/zeros table.
    dtypes : sequence of dtype
    rounds : int
        Interleaved rounds per case.
    modes : bool
        Also time forward+backward of every mode x padding on the first shape, and the
        settings PyTorch lacks against the nearest existing kernels.
    scaling : bool
        Also report time per output pixel from 28^2 to 1024^2.
    large : bool
        Include the (1, 1, 1024, 1024) shape in the main table.
    print_fn : callable
        Receives each line as it is produced.
    settings : collection of (mode, padding_mode), optional
        Limit the per-mode tables to these (None: every row of stnref.sampler_settings).

    Returns
    -------
    str
        The report as markdown.
    """
    lines = []

    def emit(line=""):
        lines.append(line)
        print_fn(line)

    emit(f"Environment: {environment()}")
    emit()
    emit("θ → affine_grid → grid_sample (bilinear, zeros, align_corners=False); median ms; "
         "ratio = stnref / PyTorch; floor = stnref / memory-bandwidth floor")
    emit()
    emit("| shape | dtype | case | stnref ms | torch ms | ratio | vs floor |")
    emit("|---|---|---|---:|---:|---:|---:|")
    all_shapes = tuple(shapes) + ((LARGE_SHAPE,) if large else ())
    for shape in all_shapes:
        for dtype in dtypes:
            rows = measure(shape, dtype, rounds=rounds)
            for kind, r in rows.items():
                emit(f"| {shape} | {np.dtype(dtype).name} | {kind} | {_fmt(r['stnref'])} | "
                     f"{_fmt(r['torch'])} | {_ratio(r['ratio'])} | {r['stnref'] / r['floor']:6.1f}x |")
    if modes:
        shape = shapes[0]
        emit()
        emit(f"Every mode and padding, forward+backward, {shape}, float32")
        emit()
        emit("| mode | padding | stnref ms | torch ms | ratio |")
        emit("|---|---|---:|---:|---:|")
        for mode, padding in MODES:
            if settings is not None and (mode, padding) not in settings:
                continue
            r = measure(shape, np.float32, mode, padding, rounds=rounds, kinds=("fwd+bwd",))["fwd+bwd"]
            emit(f"| {mode} | {padding} | {_fmt(r['stnref'])} | {_fmt(r['torch'])} | {_ratio(r['ratio'])} |")
        r = measure(VOLUME, np.float32, "bilinear", "zeros", rounds=rounds, kinds=("fwd+bwd",))["fwd+bwd"]
        emit(f"| trilinear {VOLUME} | zeros | {_fmt(r['stnref'])} | {_fmt(r['torch'])} | {_ratio(r['ratio'])} |")
        emit()
        emit("Settings PyTorch lacks, float32, against the nearest existing kernel in the same run: "
             f"forward+backward against PyTorch, sampling alone against scipy; {BEYOND_IMAGE} and "
             f"{VOLUME}; constant with fill_value={FILL}")
        emit()
        emit("| mode | padding | k | stnref fwd+bwd ms | nearest in PyTorch | its ms | ratio "
             "| stnref sample ms | nearest in scipy | its ms | ratio |")
        emit("|---|---|---:|---:|---|---:|---:|---:|---|---:|---:|")
        for k, mode, padding in combinations(pytorch=False):
            if settings is not None and (mode, padding) not in settings:
                continue
            r = measure_beyond(BEYOND_IMAGE if k == 2 else VOLUME, mode, padding, rounds=rounds)
            (tname, ours, theirs), (sname, ours_s, theirs_s) = r["torch"], r["scipy"]
            emit(f"| {mode} | {padding} | {k} | {_fmt(ours)} | {tname} | {_fmt(theirs)} | "
                 f"{_ratio(None if theirs is None else ours / theirs)} | {_fmt(ours_s)} | {sname} | "
                 f"{_fmt(theirs_s)} | {_ratio(ours_s / theirs_s)} |")
    if scaling:
        emit()
        emit("Cost scaling: forward+backward time per output pixel, (1, 1, S, S), float32")
        emit()
        emit("| S | stnref ns/pixel | torch ns/pixel |")
        emit("|---:|---:|---:|")
        for side in SCALING_SIDES:
            r = measure((1, 1, side, side), np.float32, rounds=rounds, kinds=("fwd+bwd",))["fwd+bwd"]
            px = side * side
            theirs = "-" if r["torch"] is None else f"{r['torch'] / px * 1e9:.1f}"
            emit(f"| {side} | {r['stnref'] / px * 1e9:.1f} | {theirs} |")
    return "\n".join(lines) + "\n"


BEGIN_MARK = "<!-- stnref bench: begin -->"
END_MARK = "<!-- stnref bench: end -->"


def _existing_text(path):
    """The text of ``path`` ("" if it does not exist), refusing what write_report must not
    overwrite: not a regular file (a FIFO, a device), over PAGE_LIMIT bytes, not UTF-8, or
    text without one pair of bench markers.  A symlink is followed (and written through)."""
    try:
        text = read_regular_file(path, PAGE_LIMIT, "write_report", "page").decode("utf-8")
    except FileNotFoundError:
        return ""
    except UnicodeDecodeError:
        raise ValueError(f"write_report(): {path!r} is not UTF-8 text; give a new file or a page "
                         f"with the bench markers") from None
    start, end = text.find(BEGIN_MARK), text.find(END_MARK)
    pair = start >= 0 and end > start and text.count(BEGIN_MARK) == text.count(END_MARK) == 1
    if text.strip() and not pair:
        raise ValueError(f"write_report(): {path!r} exists without one pair of the markers "
                         f"{BEGIN_MARK} ... {END_MARK}, between which the tables go; give a new "
                         f"file, or add the markers where the tables belong")
    return text


def check_report_target(path):
    """Refuse, before a benchmark runs, a ``--markdown`` file :func:`write_report` would refuse."""
    _existing_text(path)


def write_report(path, report):
    """Write ``report`` into ``path`` (atomically), between the bench markers.

    A page such as ``docs/performance.md`` keeps its hand-written analysis
    around the markers and gets fresh tables on every run; a new (or empty)
    file receives the report alone.  An existing file without one pair of
    markers, not UTF-8, not a regular file or over ``PAGE_LIMIT`` bytes is refused
    (``ValueError``): it is never overwritten.  A symlink's target is rewritten;
    the link stays.

    Parameters
    ----------
    path : str
    report : str
        Markdown, as returned by :func:`run`.

    Returns
    -------
    None
    """
    block = f"{BEGIN_MARK}\n{report.rstrip()}\n{END_MARK}"
    text = _existing_text(path)
    start, end = text.find(BEGIN_MARK), text.find(END_MARK)
    if start >= 0:
        text = text[:start] + block + text[end + len(END_MARK):]
    else:
        text = f"# stnref benchmarks\n\n{block}\n"
    atomic_write_bytes(path, text.encode())
