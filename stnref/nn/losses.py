"""Softmax cross-entropy with its gradient (docs/derivations/layers.md, "Softmax cross-entropy")."""

from __future__ import annotations

import numpy as np

from .._checks import check_int, check_ndim, float_array, quiet_nonfinite


def _log_softmax(logits, axis, fn):
    z = float_array(logits, "logits", fn)
    if z.ndim == 0:
        raise ValueError(f"{fn}(): expected logits with at least one axis, got shape {z.shape}")
    axis = check_int(axis, "axis", fn)
    if not -z.ndim <= axis < z.ndim:
        raise ValueError(f"{fn}(): expected axis in [{-z.ndim}, {z.ndim}) for logits of shape "
                         f"{z.shape}, got {axis}")
    if z.shape[axis] == 0:
        raise ValueError(f"{fn}(): expected logits with a non-empty axis {axis}, got shape {z.shape}")
    shifted = z - z.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


@quiet_nonfinite
def log_softmax(logits, axis=-1):
    """Stable ``log softmax``: ``z - max(z) - log sum exp(z - max(z))``.

    Parameters
    ----------
    logits : ndarray, float32 or float64
        At least one axis; the ``axis`` one must be non-empty.
    axis : int
        In ``[-logits.ndim, logits.ndim)``.

    Returns
    -------
    ndarray, same shape and dtype as ``logits``.

    Examples
    --------
    >>> np.exp(log_softmax(np.array([0.0, 0.0])))
    array([0.5, 0.5])
    """
    return _log_softmax(logits, axis, "log_softmax")


@quiet_nonfinite
def softmax(logits, axis=-1):
    """``exp(log_softmax(logits))``; slices along ``axis`` sum to 1 (arguments as :func:`log_softmax`)."""
    return np.exp(_log_softmax(logits, axis, "softmax"))


def _check_labels(labels, n, k, fn):
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu":
        got = f"array of dtype {labels.dtype}" if isinstance(labels, np.ndarray) else type(labels).__name__
        raise TypeError(f"{fn}(): expected labels to be an integer array, got {got}")
    if labels.shape != (n,):
        raise ValueError(f"{fn}(): expected labels of shape ({n},) to match logits, got {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= k):
        bad = labels[(labels < 0) | (labels >= k)][0]
        raise ValueError(f"{fn}(): expected labels in [0, {k}), got {int(bad)}")


@quiet_nonfinite
def cross_entropy(logits, labels):
    """Mean softmax cross-entropy and its gradient (torch.nn.functional.cross_entropy).

    ``loss = -(1/N) sum_n log softmax(logits_n)[labels_n]``.

    Parameters
    ----------
    logits : ndarray (N, K), float32 or float64
        Unnormalised class scores, ``N >= 1``.
    labels : ndarray (N,), integer
        Class indices in ``[0, K)``.

    Returns
    -------
    loss : float
    dlogits : ndarray (N, K), dtype of ``logits``
        ``(softmax(logits) - onehot(labels)) / N``.

    Examples
    --------
    >>> loss, d = cross_entropy(np.zeros((2, 4)), np.array([0, 3]))
    >>> round(loss, 6)              # log 4
    1.386294
    >>> d[0]
    array([-0.375,  0.125,  0.125,  0.125])
    """
    fn = "cross_entropy"
    z = float_array(logits, "logits", fn)
    check_ndim(z, "logits", fn, (2,), "(N, K)")
    n, k = z.shape
    if n == 0 or k == 0:
        raise ValueError(f"{fn}(): expected logits of shape (N, K) with N, K >= 1, got {z.shape}")
    _check_labels(labels, n, k, fn)
    logp = log_softmax(z, axis=1)                                   # (N, K)
    picked = np.take_along_axis(logp, labels[:, None].astype(np.intp), axis=1)[:, 0]
    loss = -float(picked.mean(dtype=np.float64))
    # d loss / d z_nk = (softmax_nk - [k == labels_n]) / N
    onehot = np.arange(k) == labels[:, None]                        # (N, K) bool
    dlogits = (np.exp(logp) - onehot) / z.dtype.type(n)
    return loss, dlogits.astype(z.dtype, copy=False)
