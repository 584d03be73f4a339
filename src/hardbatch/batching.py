"""Stage 3: batches. Cut an ordering into fixed-size batches.

Leftover rule (every method follows it): when ``N % batch_size != 0``

* ``drop_last=False`` (default): the last batch holds only the ``N % batch_size`` leftover
  samples; its row in the ``(n_batches, batch_size)`` array is right-padded with :data:`PAD`
  (-1). Iterate :meth:`hardbatch.BatchPlan.iter_batches` to get it without the padding.
* ``drop_last=True``: the leftovers are not in any batch this epoch (the usual DataLoader rule).
"""

from __future__ import annotations

import numpy as np

#: Padding value in the last row of ``BatchPlan.batches`` when it is not full.
PAD = -1


def cut_order(order: np.ndarray, batch_size: int, *, drop_last: bool = False) -> np.ndarray:
    """Consecutive chunks of ``order`` as the rows of a batch array.

    Parameters
    ----------
    order : np.ndarray of shape (N,)
        Sample ids in plan order (a permutation, or any sequence of distinct ids).
    batch_size : int
    drop_last : bool
        See the module docstring.

    Returns
    -------
    batches : np.ndarray of shape (n_batches, batch_size), int64
        ``n_batches = N // batch_size`` with ``drop_last``, else ``ceil(N / batch_size)``; the
        last row is padded with :data:`PAD` when it is short.
    """
    order = np.asarray(order, dtype=np.int64)
    n_full, rest = divmod(len(order), batch_size)
    full = order[: n_full * batch_size].reshape(n_full, batch_size)
    if rest == 0 or drop_last:
        return full.copy()
    last = np.full((1, batch_size), PAD, dtype=np.int64)
    last[0, :rest] = order[n_full * batch_size :]
    return np.concatenate([full, last])


def iter_rows(batches: np.ndarray):
    """Yield each row of a batch array without its padding."""
    for row in batches:
        yield row[row != PAD] if row[-1] == PAD else row


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """Random generator for ``(seed, epoch)``.

    Seeded with the pair, not ``seed + epoch``, so that seed 0 at epoch 1 and seed 1 at epoch 0
    are different streams.
    """
    return np.random.default_rng([int(seed), int(epoch)])
