"""Stage 3, leftovers: which samples ``drop_last`` leaves out, rotating from epoch to epoch.

A plan's own cut leaves out the same ``N % batch_size`` samples every time it is cut the same
way: the end of a GCBS order, or B3's short cluster (``N mod K`` samples, always grouped into the
dropped batch). From epoch 1 on, :func:`rotating_leftovers` chooses the samples to leave out
instead (a window sliding over a seeded permutation, so each sample takes its turn), and
:func:`leave_out_of_order` / :func:`leave_out_of_clusters` cut the epoch's full batches without
them. Epoch 0 and every ``drop_last=False`` plan are unchanged.
"""

from __future__ import annotations

import numpy as np

from .batching import PAD, cut_order, group_clusters

#: Stream of the leftover rotation within a seed (independent of the shuffles and the guard).
_LEFTOVER_STREAM = 3


def rotating_leftovers(
    n_samples: int,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    groups: np.ndarray | None = None,
    last: np.ndarray | None = None,
) -> np.ndarray:
    """The samples ``drop_last`` leaves out in epoch ``epoch >= 1``, rotating over the epochs.

    Per group of ``N_g`` samples (all N when ``groups`` is None), ``r = N_g % batch_size``
    samples are left out: positions ``[(epoch - 1)·r, epoch·r)`` (cyclic) of a permutation of
    the group drawn once from ``seed``, with ``last`` (epoch 0's leftovers, if known) moved to
    its end. Epoch 0 then reads as the window just before epoch 1's, so the windows of epochs
    ``0..E-1`` are ``E·r`` consecutive positions and no sample is left out more than
    ``ceil(E·r / N_g)`` times in ``E`` epochs — its share (one more at most when ``last`` is
    not given: epoch 0's leftovers were chosen by another rule).

    Parameters
    ----------
    n_samples, batch_size : int
    seed : int
        The same for every epoch (the windows slide over one permutation).
    epoch : int
        ``>= 1`` (epoch 0 leaves out what the plan's own cut leaves out).
    groups : np.ndarray of shape (N,), optional
        Group of every sample when each group is cut on its own (B3 per dataset).
    last : np.ndarray, optional
        Sample ids placed at the end of their group's permutation.

    Returns
    -------
    left_out : np.ndarray of int64, sorted
    """
    if epoch < 1:
        raise ValueError(f"the leftover rotation starts at epoch 1, got epoch={epoch}")
    if groups is None:
        members_of = [np.arange(n_samples, dtype=np.int64)]
    else:
        groups = np.asarray(groups)
        members_of = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    is_last = np.zeros(n_samples, dtype=bool)
    if last is not None:
        is_last[np.asarray(last, dtype=np.int64)] = True
    out = []
    for g, members in enumerate(members_of):
        r = len(members) % batch_size
        if r == 0:
            continue
        rng = np.random.default_rng([int(seed), _LEFTOVER_STREAM, g])
        first, tail = members[~is_last[members]], members[is_last[members]]
        perm = np.concatenate([rng.permutation(first), rng.permutation(tail)])
        start = ((int(epoch) - 1) * r) % len(perm)
        out.append(np.take(perm, np.arange(start, start + r), mode="wrap"))
    return np.sort(np.concatenate(out)) if out else np.empty(0, dtype=np.int64)


def leave_out_of_order(order: np.ndarray, left_out: np.ndarray, batch_size: int) -> np.ndarray:
    """Full batches cut from ``order`` without the samples ``left_out``.

    Each batch is still a run of consecutive samples of the order (a GCBS window), with the
    left-out ones skipped. ``len(order) - len(left_out)`` must be a multiple of ``batch_size``.
    """
    order = np.asarray(order, dtype=np.int64)
    keep = order[~np.isin(order, left_out)]
    if len(keep) % batch_size:
        raise ValueError(
            f"{len(keep)} samples remain after leaving {len(order) - len(keep)} out: not a "
            f"multiple of batch_size={batch_size}"
        )
    return cut_order(keep, batch_size, drop_last=True)


def leave_out_of_clusters(
    clusters: np.ndarray,
    left_out: np.ndarray,
    batch_size: int,
    *,
    rng: np.random.Generator,
    cluster_groups: np.ndarray | None = None,
) -> np.ndarray:
    """Batches of whole clusters that leave out exactly ``left_out`` (B3 with ``drop_last``).

    Per group, the ``m = (N_g - left out) / K`` full clusters with the fewest left-out members
    are kept (ties broken with ``rng``); the other clusters (and the short one) are dissolved
    and their remaining members fill the kept clusters' holes, in ``rng`` order, so the kept
    samples form ``m`` clusters of exactly ``K``. These are grouped into batches with
    :func:`group_clusters` and ``rng``: every batch is full. Only the few filled holes change a
    cluster, so the batches stay those of the static clusters, while the short cluster's
    samples (``N mod K``, which :func:`group_clusters` always puts in the dropped batch) take
    their turn in full batches.

    Parameters
    ----------
    clusters : np.ndarray of shape (n_clusters, K)
    left_out : np.ndarray of sample ids
        Usually :func:`rotating_leftovers`; per group, ``N_g - len(left out)`` must be a
        multiple of ``batch_size``.
    batch_size : int
    rng : np.random.Generator
    cluster_groups : np.ndarray of shape (n_clusters,), optional

    Returns
    -------
    batches : np.ndarray of shape (n_batches, batch_size), int64, no padding
    """
    clusters = np.asarray(clusters, dtype=np.int64)
    k = clusters.shape[1]
    member = clusters != PAD
    full = member[:, -1]
    out = np.isin(clusters, left_out) & member
    row_groups = (
        np.zeros(len(clusters), dtype=np.int64)
        if cluster_groups is None
        else np.asarray(cluster_groups, dtype=np.int64)
    )
    kept_clusters, kept_groups = [], []
    for group in np.unique(row_groups):
        rows = np.flatnonzero(row_groups == group)
        n_keep = int(member[rows].sum() - out[rows].sum())
        full_rows = rows[full[rows]]
        m = n_keep // k
        if n_keep % batch_size or m > len(full_rows):
            raise ValueError(
                f"{n_keep} samples of a group remain after leaving some out: not a multiple of "
                f"batch_size={batch_size} that whole clusters can hold"
            )
        holes = out[full_rows].sum(axis=1)
        rank = np.lexsort((rng.random(len(full_rows)), holes))
        keep_rows, dissolved = full_rows[rank[:m]], np.setdiff1d(rows, full_rows[rank[:m]])
        pool = clusters[dissolved][member[dissolved] & ~out[dissolved]]
        kept = clusters[keep_rows].copy()
        gaps = np.flatnonzero(out[keep_rows].ravel())
        if len(pool) != len(gaps):  # cannot happen when the counts above hold
            raise ValueError("leave_out_of_clusters: pool and holes differ")
        kept.ravel()[gaps] = rng.permutation(pool)
        kept_clusters.append(kept)
        kept_groups.append(np.full(m, group, dtype=np.int64))
    new = np.concatenate(kept_clusters)
    groups = None if cluster_groups is None else np.concatenate(kept_groups)
    if len(new) == 0:
        return np.empty((0, batch_size), dtype=np.int64)
    return group_clusters(new, batch_size, rng=rng, cluster_groups=groups, drop_last=True)


__all__ = ["leave_out_of_clusters", "leave_out_of_order", "rotating_leftovers"]
