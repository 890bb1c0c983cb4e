"""Seeded mini-batches of aligned arrays (PyTorch's ``DataLoader`` over a ``TensorDataset``).

One :class:`Batches` is one pass over the data (an epoch): its order is drawn
once, when it is made, so the same generator state gives the same batches, and a
pass can be resumed at any batch (``batches[i]``) -- ``stnref train`` does both.
"""

from __future__ import annotations

import math

import numpy as np

from .._checks import check_bool, check_int
from .seeding import resolve_rng


class Batches:
    """Mini-batches of the rows of aligned arrays, in a seeded order: one pass over the data.

    Like ``torch.utils.data.DataLoader(TensorDataset(*arrays), batch_size, shuffle,
    drop_last=drop_last, generator=...)``: batch ``i`` is ``tuple(a[idx] for a in
    arrays)`` with ``idx = order[i * batch_size:(i + 1) * batch_size]``.

    Parameters
    ----------
    *arrays : ndarray, each (n, ...)
        At least one, all with the same length ``n`` along axis 0 (images,
        labels, ...).  Never modified; each batch is a new array.
    batch_size : int >= 1
    shuffle : bool, default True
        Visit the rows in the order ``rng.permutation(n)``, drawn here; False:
        in order ``0, ..., n - 1``.
    rng : numpy.random.Generator or int, optional
        Source of the order.  A Generator is advanced by the one permutation,
        so passing the same one to each epoch's ``Batches`` gives a new order
        every epoch, reproducibly (DataLoader's ``generator``); an int is a
        seed; None: the process-wide generator (:func:`stnref.manual_seed`), so
        each epoch's ``Batches`` visits the data in a new order.  Not used when
        ``shuffle`` is False.
    drop_last : bool, default False
        Leave out the last batch if it has fewer than ``batch_size`` rows;
        by default it is kept, smaller.

    Attributes
    ----------
    order : ndarray (n,), int
        The order in which the rows are visited.
    batch_size : int
    drop_last : bool

    Examples
    --------
    >>> x, y = np.arange(10.0).reshape(5, 2), np.arange(5)
    >>> batches = Batches(x, y, batch_size=2, rng=0)
    >>> len(batches), [len(yb) for _, yb in batches]
    (3, [2, 2, 1])
    >>> len(Batches(x, y, batch_size=2, drop_last=True))
    2
    """

    def __init__(self, *arrays, batch_size, shuffle=True, rng=None, drop_last=False):
        fn = "Batches"
        if not arrays:
            raise ValueError(f"{fn}(): expected at least one array, got none")
        for i, a in enumerate(arrays):
            if not isinstance(a, np.ndarray) or a.ndim == 0:
                got = "a 0-d array" if isinstance(a, np.ndarray) else type(a).__name__
                raise TypeError(f"{fn}(): expected arrays[{i}] to be a numpy array of shape (n, ...), "
                                f"got {got}")
        lengths = [len(a) for a in arrays]
        if len(set(lengths)) != 1:
            raise ValueError(f"{fn}(): expected arrays of one length along axis 0, got lengths {lengths}")
        self.batch_size = check_int(batch_size, "batch_size", fn, minimum=1)
        shuffle = check_bool(shuffle, "shuffle", fn)
        self.drop_last = check_bool(drop_last, "drop_last", fn)
        rng = resolve_rng(rng, fn, seeds=True)
        n = lengths[0]
        self.order = rng.permutation(n) if shuffle else np.arange(n)
        self._arrays = arrays

    def __len__(self):
        n = len(self.order)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __getitem__(self, index):
        """Batch ``index`` (negative counts from the end): a tuple, one array per input array."""
        index = check_int(index, "index", "Batches.__getitem__")
        if not -len(self) <= index < len(self):
            raise IndexError(f"Batches.__getitem__(): index {index} out of range for {len(self)} batches")
        start = (index % len(self)) * self.batch_size
        idx = self.order[start:start + self.batch_size]
        return tuple(a[idx] for a in self._arrays)

    def __iter__(self):
        return (self[i] for i in range(len(self)))
