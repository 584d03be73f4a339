"""The duplicate guard's exact feasibility condition and its constructive layout.

:func:`hardbatch.batching.separate_duplicates` first repairs a plan with a few random swaps (fast,
and what every pinned plan was made with); where those fail it falls back to
:func:`construct_layout`, which never fails on a feasible layout.

Feasibility (per group of a grouped plan; the whole plan otherwise). The batches of an epoch
have fixed sizes ``c_1 >= c_2 >= ... >= c_R`` (``N // B`` full batches and, without
``drop_last``, one short batch of ``N % B``), and id ``i`` occurs ``m_i`` times.

* Without ``drop_last`` every sample is placed: a layout with no id twice in a batch is a 0-1
  matrix (ids × batches) with row sums ``m_i`` and column sums ``c_j``, which exists iff
  (Gale–Ryser) ``c_1 + ... + c_k <= sum_i min(m_i, k)`` for every ``k = 1..R``. With equal
  sizes this is just ``m_i <= R``; the short batch adds the conditions for small ``k`` (e.g.
  batches of 3 and 1 cannot hold ids ``A A B B``: the batch of 3 needs 3 distinct ids).
* With ``drop_last`` every batch is full (``c_j = B``) and the ``N % B`` dropped samples may
  be chosen: a layout exists iff ``sum_i min(m_i, R) >= R·B``, i.e. the copies beyond ``R`` of
  every id fit among the dropped samples: ``sum_i max(0, m_i - R) <= N % B``.

Neither condition depends on the epoch's shuffle, so a plan whose epoch 0 is feasible is
feasible in every epoch, and the samples still to serve after some batches of a guarded epoch
(``refresh="steps"``) are feasible again (they are the rest of a valid layout plus the dropped
ones): :func:`duplicate_layout_problem` run once at planning time rules out any failure later.

The construction (Ryser's): ids by decreasing count, each placed in the batches with the most
room left (ties: the batches where the id already is), the single ids last, each kept in its own
batch while it has room. Samples that keep their batch keep their position; the others fill the
positions left free, so a plan is changed only where the layout forces it.
"""

from __future__ import annotations

import numpy as np

#: Padding value of batch arrays (as :data:`hardbatch.batching.PAD`; not imported: no cycle).
_PAD = -1


def row_sizes(n_samples: int, batch_size: int, drop_last: bool) -> np.ndarray:
    """Sizes of the batches an epoch of ``n_samples`` is cut into (largest first)."""
    n_full, rest = divmod(int(n_samples), int(batch_size))
    sizes = [batch_size] * n_full + ([rest] if rest and not drop_last else [])
    return np.asarray(sizes, dtype=np.int64)


def check_duplicate_layout(
    codes: np.ndarray,
    batch_size: int,
    *,
    drop_last: bool,
    groups: np.ndarray | None = None,
) -> None:
    """``ValueError`` when no epoch of ``len(codes)`` samples cut into batches of
    ``batch_size`` can keep equal codes apart (checked before planning; epoch-independent).

    Parameters
    ----------
    codes : np.ndarray of shape (N,), int
        Duplicate-id codes (:func:`hardbatch.batching.sample_codes`).
    batch_size : int
    drop_last : bool
    groups : np.ndarray of shape (N,), int, optional
        Groups planned apart (each cut into its own batches, B3's ``groups``).
    """
    codes = np.asarray(codes, dtype=np.int64)
    if groups is None:
        parts = [codes]
    else:
        order = np.argsort(groups, kind="stable")
        bounds = np.flatnonzero(np.diff(groups[order])) + 1
        parts = np.split(codes[order], bounds)
    for part in parts:
        sizes = row_sizes(part.size, batch_size, drop_last)
        problem = layout_problem(np.bincount(part), sizes, part.size - int(sizes.sum()))
        if problem is not None:
            where = "" if groups is None else " (within one of the groups)"
            raise ValueError(f"duplicate_ids{where}: {problem}")


def layout_problem(counts: np.ndarray, sizes: np.ndarray, n_dropped: int) -> str | None:
    """Why no batch layout separates ids with these ``counts`` (``None``: one exists).

    Parameters
    ----------
    counts : np.ndarray
        Copies of every id (zeros allowed).
    sizes : np.ndarray
        Sizes of the batches (any order).
    n_dropped : int
        Samples left out of the batches (``drop_last``); they may be exchanged with placed ones.
    """
    counts = np.asarray(counts, dtype=np.int64)
    counts = counts[counts > 0]
    sizes = np.sort(np.asarray(sizes, dtype=np.int64))[::-1]
    n_rows = sizes.size
    if n_rows == 0 or counts.size == 0:
        return None
    if n_dropped:
        spare = int(np.maximum(counts - n_rows, 0).sum())
        if spare > n_dropped:
            return (
                f"{spare} samples repeat an id beyond the {n_rows} batches of an epoch but "
                f"drop_last leaves out only {n_dropped}; two samples with one id must share a "
                "batch (use a larger dataset, a smaller batch_size or fewer duplicates)"
            )
        return None
    worst = int(counts.argmax())
    if counts[worst] > n_rows:
        return (
            f"an id occurs {int(counts[worst])} times but there are only {n_rows} batches to "
            "spread it over; two of its samples must share a batch (use a larger dataset, a "
            "smaller batch_size or fewer duplicates)"
        )
    # Gale–Ryser: the k largest batches need sum(sizes[:k]) <= sum_i min(m_i, k) distinct slots.
    at_least = np.bincount(counts, minlength=n_rows + 1)[::-1].cumsum()[::-1][1 : n_rows + 1]
    room = at_least.cumsum()
    need = sizes.cumsum()
    bad = np.flatnonzero(need > room)
    if bad.size:
        k = int(bad[0]) + 1
        return (
            f"the {k} largest batch(es) hold {int(need[k - 1])} samples but the ids can fill "
            f"only {int(room[k - 1])} of those places without a repeat (too few distinct ids "
            "for the batch size)"
        )
    return None


def construct_layout(
    batches: np.ndarray, codes: np.ndarray, rows: np.ndarray, missing: np.ndarray
) -> int:
    """Re-lay the samples of ``batches[rows]`` (in place) so that no row repeats a code.

    Parameters
    ----------
    batches : np.ndarray of shape (n_batches, B), int64, padded with ``-1``
    codes : np.ndarray of shape (N,)
    rows : np.ndarray
        The rows of one group; their sizes are kept.
    missing : np.ndarray
        Samples of the group in no row (``drop_last``); they may replace placed samples.

    Returns
    -------
    int
        Samples that changed batch (dropped samples brought in count once).

    The layout must be feasible (:func:`layout_problem`); a ``RuntimeError`` otherwise.
    """
    sub = batches[rows]
    valid = sub != _PAD
    sizes = valid.sum(axis=1)
    n_rows = rows.size
    r_idx, c_idx = np.nonzero(valid)
    samples = np.concatenate([sub[r_idx, c_idx], np.asarray(missing, dtype=np.int64)])
    origin = np.concatenate([r_idx, np.full(len(missing), -1, dtype=np.int64)])
    _, ids = np.unique(codes[samples], return_inverse=True)
    ids = ids.reshape(-1)
    n_ids = int(ids.max()) + 1
    present = np.bincount(ids[origin >= 0], minlength=n_ids)
    total = np.bincount(ids, minlength=n_ids)

    # How many copies of each id are placed: the present ones up to the row count, then
    # dropped (or surplus) copies where room is left (only with drop_last).
    placed = np.minimum(present, n_rows)
    short = int(sizes.sum() - placed.sum())
    if short:
        extra = np.minimum(total, n_rows) - placed
        take = np.minimum(extra, np.maximum(short - (extra.cumsum() - extra), 0))
        placed += take
    # Samples of each id in preference order: those in a row first (row order), then dropped.
    order = np.lexsort((origin < 0, ids))
    starts = np.concatenate([[0], total.cumsum()[:-1]])

    room = sizes.copy()
    target = np.full(samples.size, -1, dtype=np.int64)  # new local row of every sample
    multi = np.flatnonzero(placed >= 2)
    for i in multi[np.argsort(-placed[multi], kind="stable")].tolist():
        own = order[starts[i] : starts[i] + total[i]]
        p = int(placed[i])
        key = room * 2
        home = origin[own[origin[own] >= 0]]
        key[home] += 1
        chosen = np.argpartition(-key, p - 1)[:p]
        if room[chosen].min() <= 0:
            raise RuntimeError("construct_layout: infeasible layout (check layout_problem)")
        room[chosen] -= 1
        free = set(chosen.tolist())
        movers = []
        for s in own.tolist():
            if origin[s] in free:
                target[s] = origin[s]
                free.discard(int(origin[s]))
            else:
                movers.append(s)
        for s, r in zip(movers, sorted(free), strict=False):
            target[s] = r
    # Ids placed once: keep the present copy in its row while the row has room.
    single = np.flatnonzero(placed == 1)
    first = order[starts[single]]
    stay = first[origin[first] >= 0]
    stay = stay[np.argsort(origin[stay], kind="stable")]
    rank = np.arange(stay.size) - np.searchsorted(origin[stay], origin[stay], side="left")
    keep = rank < room[origin[stay]]
    target[stay[keep]] = origin[stay[keep]]
    room -= np.bincount(origin[stay[keep]], minlength=n_rows)
    homeless = np.concatenate([stay[~keep], first[origin[first] < 0]])
    slots = np.repeat(np.arange(n_rows), room)
    if slots.size != homeless.size:
        raise RuntimeError("construct_layout: infeasible layout (check layout_problem)")
    target[np.sort(homeless)] = slots

    # Samples that keep their row keep their position; the others fill the freed positions.
    leaving = (target[: r_idx.size] != origin[: r_idx.size]) | (target[: r_idx.size] < 0)
    holes = np.zeros_like(valid)
    holes[r_idx[leaving], c_idx[leaving]] = True
    arriving = np.flatnonzero((target >= 0) & (target != origin))
    arriving = arriving[np.argsort(target[arriving], kind="stable")]
    h_r, h_c = np.nonzero(holes)  # row-major: grouped by row like `arriving`
    sub[h_r, h_c] = samples[arriving]
    batches[rows] = sub
    return int(arriving.size)
