"""Stage 3: batches. Cut an ordering into fixed-size batches.

Also: group whole clusters into batches per epoch (:func:`group_clusters`, B3); the hardness
dial (:func:`mix_random_fill`); the epoch
rules a plan names in ``BatchPlan.epoch_rule`` (:func:`reshuffle_epoch`,
:func:`regroup_clusters_epoch`); the merge of per-shard plans (:func:`merge_shard_orders`,
:func:`merge_shard_clusters`, used by Ray planning); and the duplicate guard every method shares
(:func:`separate_duplicates`).

Leftover rule (every method follows it): when ``N % batch_size != 0``

* ``drop_last=False`` (default): the last batch holds only the ``N % batch_size`` leftover
  samples; its row in the ``(n_batches, batch_size)`` array is right-padded with :data:`PAD`
  (-1). Iterate :meth:`hardbatch.BatchPlan.iter_batches` to get it without the padding.
* ``drop_last=True``: the leftovers are not in any batch this epoch (the usual DataLoader rule).
"""

from __future__ import annotations

import numpy as np

from .guard import construct_layout, layout_problem

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


# --------------------------------------------------------------------------- clusters → batches
def group_clusters(
    clusters: np.ndarray,
    batch_size: int,
    *,
    rng: np.random.Generator,
    cluster_groups: np.ndarray | None = None,
    drop_last: bool = False,
) -> np.ndarray:
    """One epoch of batches made of whole clusters (B3's batching).

    The full clusters are shuffled with ``rng`` and concatenated, the short last cluster (see
    :mod:`hardbatch.structure.clusters`) after them, and the sequence is cut with
    :func:`cut_order`: a batch is ``batch_size / K`` whole clusters, and the epoch's last,
    short batch holds the leftover full clusters plus the short cluster (or is dropped with
    ``drop_last``).

    With ``cluster_groups`` (dataset id of every cluster) this is done per group, so no batch
    mixes datasets; the full batches of all groups are then shuffled together with ``rng``
    and each group's short batch (if any, and not dropped) comes after them, in group order.

    Parameters
    ----------
    clusters : np.ndarray of shape (n_clusters, K), int
        Rows of sample ids; a row that is not full is right-padded with :data:`PAD`.
    batch_size : int
        A multiple of K.
    rng : np.random.Generator
        Usually :func:`epoch_rng` ``(seed, epoch)``.
    cluster_groups : np.ndarray of shape (n_clusters,), int, optional
    drop_last : bool

    Returns
    -------
    batches : np.ndarray of shape (n_batches, batch_size), int64
        Without groups, the layout of :func:`cut_order` (only the last row may be padded);
        with groups, one padded row per group at most, all after the full rows.
    """
    clusters = np.asarray(clusters, dtype=np.int64)
    if clusters.ndim != 2 or clusters.shape[0] == 0:
        raise ValueError(f"clusters must be a non-empty 2-D array, got shape {clusters.shape}")
    k = clusters.shape[1]
    if batch_size % k:
        raise ValueError(
            f"batch_size={batch_size} must be a multiple of the cluster size {k} "
            "(a batch holds whole clusters)"
        )
    full = clusters[:, -1] != PAD
    if cluster_groups is None:
        return _group_one(clusters, full, np.arange(len(clusters)), batch_size, rng, drop_last)
    cluster_groups = np.asarray(cluster_groups)
    if cluster_groups.shape != (len(clusters),):
        raise ValueError(
            f"cluster_groups must have shape ({len(clusters)},), got {cluster_groups.shape}"
        )
    whole, partial = [], []
    for group in np.unique(cluster_groups):
        rows = np.flatnonzero(cluster_groups == group)
        batches = _group_one(clusters, full, rows, batch_size, rng, drop_last)
        short = batches[:, -1] == PAD
        whole.append(batches[~short])
        partial.append(batches[short])
    whole_rows = np.concatenate(whole)
    return np.concatenate([whole_rows[rng.permutation(len(whole_rows))], *partial])


def _group_one(
    clusters: np.ndarray,
    full: np.ndarray,
    rows: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    drop_last: bool,
) -> np.ndarray:
    full_rows = rows[full[rows]]
    short = clusters[rows[~full[rows]]]
    order = np.concatenate([clusters[rng.permutation(full_rows)].ravel(), short[short != PAD]])
    return cut_order(order, batch_size, drop_last=drop_last)


# --------------------------------------------------------------------------- epoch rules
def reshuffle_epoch(
    n_samples: int, batch_size: int, *, seed: int, epoch: int, drop_last: bool = False
) -> np.ndarray:
    """Epoch ``epoch`` of the random baseline: a permutation drawn from ``(seed, epoch)``, cut
    into batches (epoch rule ``"reshuffle"``)."""
    order = epoch_rng(seed, epoch).permutation(n_samples)
    return cut_order(order, batch_size, drop_last=drop_last)


def regroup_clusters_epoch(
    clusters: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    cluster_groups: np.ndarray | None = None,
    drop_last: bool = False,
) -> np.ndarray:
    """Epoch ``epoch`` of a cluster plan (B3): the static clusters grouped into batches with
    ``(seed, epoch)`` by :func:`group_clusters` (epoch rule ``"regroup_clusters"``)."""
    return group_clusters(
        clusters,
        batch_size,
        rng=epoch_rng(seed, epoch),
        cluster_groups=cluster_groups,
        drop_last=drop_last,
    )


# --------------------------------------------------------------------------- hardness dial
def mix_random_fill(
    batches: np.ndarray,
    hardness: float,
    rng: np.random.Generator,
    *,
    sample_groups: np.ndarray | None = None,
) -> np.ndarray:
    """The hardness dial: every batch keeps its first ``round(h·b)`` members, the rest are
    pooled over all batches, shuffled with ``rng`` and dealt back into the free slots.

    ``b`` is the batch's real size (a short last batch counts its members), and ``round``
    rounds halves up. Why a contiguous block: GCBS cuts batches from a reverse Cuthill–McKee
    order, so a block of a batch is a run of graph neighbours; B3 lays out a batch as whole
    clusters, so a block keeps whole clusters when ``h·B`` is a multiple of K. Every batch
    keeps its size, so the layout (padding, the ``drop_last`` rule, the set of samples) is
    unchanged: each sample is still in exactly one batch. ``h = 1`` returns ``batches``
    itself; ``h = 0`` deals every sample at random, i.e. a uniformly random plan with the
    same layout.

    Parameters
    ----------
    batches : np.ndarray of shape (n_batches, B), int64, padded with :data:`PAD`
    hardness : float
        ``h`` in [0, 1].
    rng : np.random.Generator
        Usually :func:`mix_rng` ``(seed, epoch)``.
    sample_groups : np.ndarray of shape (N,), optional
        Pool per group (B3's multi-dataset plans stay one group per batch).

    Returns
    -------
    np.ndarray
        A new array unless ``h = 1``.
    """
    batches = np.asarray(batches, dtype=np.int64)
    if hardness >= 1.0:
        return batches
    valid = batches != PAD
    sizes = valid.sum(axis=1)
    keep = np.floor(hardness * sizes + 0.5).astype(np.int64)
    # Padding sits at the end of a row, so the real members are a prefix of it.
    free = valid & (np.arange(batches.shape[1])[None, :] >= keep[:, None])
    mixed = batches.copy()
    if sample_groups is None:
        pools = [free]
    else:
        row_group = np.asarray(sample_groups, dtype=np.int64)[batches[:, 0]]
        pools = [free & (row_group == g)[:, None] for g in np.unique(row_group)]
    for slots in pools:
        pool = mixed[slots]  # row-major: batch by batch
        mixed[slots] = pool[rng.permutation(pool.size)]
    return mixed


def mix_rng(seed: int, epoch: int) -> np.random.Generator:
    """Random generator of the hardness dial for ``(seed, epoch)`` (a stream of its own, so
    that the dial changes neither the epoch's shuffle nor the duplicate guard's swaps)."""
    return np.random.default_rng([int(seed), int(epoch), 3])


# --------------------------------------------------------------------------- shards → one plan
def merge_shard_orders(
    shard_batches: list[np.ndarray],
    members: list[np.ndarray],
    batch_size: int,
    *,
    drop_last: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """One ordering from per-shard batch arrays (local ids), cut into batches.

    The full batches of every shard are kept in shard order; the members of the shards' short
    last batches are pooled (shard order) after them and cut with the global ``drop_last`` rule.

    Parameters
    ----------
    shard_batches : list of np.ndarray of shape (n_batches_s, batch_size)
        Each shard's batches in the shard's local ids ``0..N_s-1``, padded with :data:`PAD`.
    members : list of np.ndarray of shape (N_s,)
        Global id of every local id of each shard.
    batch_size : int
    drop_last : bool

    Returns
    -------
    order : np.ndarray of shape (N,), int64
        The global sequence the batches are cut from.
    batches : np.ndarray
        :func:`cut_order` of ``order``.
    """
    full, pool = [], []
    for b, idx in zip(shard_batches, members, strict=True):
        is_full = (b != PAD).all(axis=1)
        full.append(idx[b[is_full]].ravel())
        rest = b[~is_full]
        pool.append(idx[rest[rest != PAD]])
    order = np.concatenate([*full, *pool])
    return order, cut_order(order, batch_size, drop_last=drop_last)


def merge_shard_clusters(
    shard_clusters: list[np.ndarray],
    members: list[np.ndarray],
    batch_size: int,
    *,
    seed: int,
    drop_last: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """One cluster array from per-shard clusters (local ids), and its epoch-0 batches.

    The full clusters of all shards are kept (global ids); the members of the shards' short
    last clusters are pooled (shard order) and cut into clusters of ``K``, the last one short.
    Batches are :func:`regroup_clusters_epoch` at epoch 0, as a cluster method makes them.

    Returns
    -------
    clusters : np.ndarray of shape (n_clusters, K), int64
    batches : np.ndarray of shape (n_batches, batch_size), int64
    """
    full, pool = [], []
    for clusters, idx in zip(shard_clusters, members, strict=True):
        is_full = (clusters != PAD).all(axis=1)
        full.append(idx[clusters[is_full]])
        short = clusters[~is_full]
        pool.append(idx[short[short != PAD]])
    k = full[0].shape[1] if full else shard_clusters[0].shape[1]
    if any(p.size for p in pool):
        pooled = cut_order(np.concatenate(pool), k, drop_last=False)
    else:
        pooled = np.empty((0, k), dtype=np.int64)
    clusters = np.vstack([*full, pooled])
    batches = regroup_clusters_epoch(clusters, batch_size, seed=seed, epoch=0, drop_last=drop_last)
    return clusters, batches


# --------------------------------------------------------------------------- duplicate guard
def sample_codes(values, n_samples: int, name: str = "duplicate_ids") -> np.ndarray:
    """Integer codes of a per-sample id array: equal codes for equal ids.

    Used for ``duplicate_ids`` (e.g. a hash of every sample's positive text) and for B3's
    ``labels`` and ``groups``.

    Parameters
    ----------
    values : sequence of N hashable ids (ints, strings, bytes, tuples, ...)
    n_samples : int
    name : str
        For error messages.

    Returns
    -------
    codes : np.ndarray of shape (N,), int64, in ``[0, n_distinct)``
        Sorted order of the ids for numpy arrays of numbers or strings, else order of first
        appearance.
    """
    try:
        size = len(values)
    except TypeError:
        raise ValueError(
            f"{name} must be a sequence of {n_samples} ids, got {type(values).__name__}"
        ) from None
    if size != n_samples:
        raise ValueError(f"{name} has {size} entries, expected one per sample ({n_samples})")
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind in "biufUS":
        if values.dtype.kind == "f" and np.isnan(values).any():
            _refuse_nan(name, int(np.flatnonzero(np.isnan(values))[0]))
        return np.unique(values, return_inverse=True)[1].astype(np.int64).reshape(-1)
    # NaN never equals itself: every NaN would be an id of its own (or all one, as numpy
    # sorts them), so a missing value would silently become a class.
    for i, x in enumerate(values):
        if isinstance(x, (float, np.floating)) and x != x:
            _refuse_nan(name, i)
    # Lists and object arrays (mixed or composite ids, which numpy would coerce or reject):
    # a dict assigns codes in order of first appearance.
    table: dict = {}
    try:
        return np.fromiter(
            (table.setdefault(x, len(table)) for x in values), dtype=np.int64, count=size
        )
    except TypeError as exc:
        raise ValueError(f"{name} must hold hashable ids: {exc}") from None


def _refuse_nan(name: str, index: int) -> None:
    raise ValueError(
        f"{name} holds NaN (first at sample {index}); give every sample a real id (a missing "
        "value is not an id)"
    )


def separate_duplicates(
    batches: np.ndarray,
    codes: np.ndarray,
    *,
    rng: np.random.Generator,
    sample_groups: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Swap samples between batches until no batch holds two samples with the same code.

    The false-negative guard of every method (sentence-transformers' ``NoDuplicatesBatchSampler``
    gives the same guarantee by construction; here it repairs a finished plan). Each sample
    that repeats a code already in its batch (an *excess* sample) is swapped with a sample of
    another batch chosen so that the swap creates no new collision: the other batch lacks the
    code, and the incoming sample's code is not in the first batch. Partners that are
    themselves excess in their batch are preferred (one swap then fixes two). So the number of
    swaps is at most the number ``E`` of excess samples (at least ``ceil(E / 2)`` are needed),
    and the rest of the plan is untouched.

    Where those swaps find no partner (tight layouts: an id in nearly every batch, or more
    copies in a ``drop_last`` epoch than batches), the layout is built instead
    (:func:`hardbatch.guard.construct_layout`): it succeeds on every feasible layout, and
    with ``drop_last`` it may exchange placed samples for dropped ones. The exact feasibility
    condition is in :mod:`hardbatch.guard`; it does not depend on the epoch, so a plan whose
    first epoch is guarded is guarded in every epoch.

    Cost: one vectorised pass over the plan to find collisions (``O(N log B)``); then per
    excess sample a few random candidate batches, ``O(B)`` each, so ``O(E·B)`` expected while
    duplicates are rare. A plan without collisions is returned as is.

    Parameters
    ----------
    batches : np.ndarray of shape (n_batches, B), int64, padded with :data:`PAD`
    codes : np.ndarray of shape (N,), int
        From :func:`sample_codes`.
    rng : np.random.Generator
        Picks the swap partners (deterministic for a seed).
    sample_groups : np.ndarray of shape (N,), optional
        Swaps only between batches of the same group (keeps multi-dataset batches pure).

    Returns
    -------
    batches : np.ndarray
        The repaired batches (a new array if any swap was made, else the input).
    n_swaps : int
        Swaps made (for a built layout: half the samples that changed batch, rounded up).

    Raises
    ------
    ValueError
        No layout separates the ids (:func:`hardbatch.guard.layout_problem` says why, e.g. an
        id occurs more often within one group than there are batches to spread it over).
    """
    batches = np.asarray(batches, dtype=np.int64)
    codes = np.asarray(codes, dtype=np.int64)
    valid = batches != PAD
    grid = np.where(valid, codes[np.where(valid, batches, 0)], -1)
    ordered = np.sort(grid, axis=1)
    clash = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    dup_rows = np.flatnonzero(clash.any(axis=1))
    if dup_rows.size == 0:
        return batches, 0

    groups = (
        np.zeros(codes.size, dtype=np.int64)
        if sample_groups is None
        else np.asarray(sample_groups, dtype=np.int64)
    )
    row_group = groups[batches[:, 0]]
    # Samples in no batch (drop_last): the constructive layout may exchange them.
    placed = np.zeros(codes.size, dtype=bool)
    placed[batches[valid]] = True
    missing = np.flatnonzero(~placed)
    for g in np.unique(row_group[dup_rows]).tolist():
        rows = np.flatnonzero(row_group == g)
        dropped = missing[groups[missing] == g]
        pool = np.concatenate([batches[rows][valid[rows]], dropped])
        counts = np.bincount(codes[pool])
        problem = layout_problem(counts, valid[rows].sum(axis=1), dropped.size)
        if problem is not None:
            sample = int(pool[codes[pool] == int(counts.argmax())][0])
            raise ValueError(f"duplicate_ids (id of sample {sample}): {problem}")
    try:
        _check_spreadable(grid, valid, row_group, batches)
        return _swap_duplicates(batches, codes, grid, dup_rows, row_group, rng)
    except _SwapsFailed:
        pass
    # The random swaps found no way (a tight or drop_last layout): build one.
    batches = batches.copy()
    moved = 0
    for g in np.unique(row_group[dup_rows]).tolist():
        rows = np.flatnonzero(row_group == g)
        moved += construct_layout(batches, codes, rows, missing[groups[missing] == g])
    return batches, -(-moved // 2)


class _SwapsFailed(Exception):
    """The random swaps of :func:`_swap_duplicates` found no collision-free partner."""


def _swap_duplicates(batches, codes, grid, dup_rows, row_group, rng) -> tuple[np.ndarray, int]:
    """The guard's first try: swap every excess sample with a partner of another batch."""
    batches = batches.copy()
    counts: dict[int, dict[int, int]] = {}

    def row_counts(r: int) -> dict[int, int]:
        if r not in counts:
            values, numbers = np.unique(grid[r][grid[r] >= 0], return_counts=True)
            counts[r] = dict(zip(values.tolist(), numbers.tolist(), strict=True))
        return counts[r]

    # Excess positions: every occurrence of a code after its first in the row.
    excess = []
    for r in dup_rows.tolist():
        seen: set[int] = set()
        for col, c in enumerate(grid[r].tolist()):
            if c >= 0:
                if c in seen:
                    excess.append((r, col))
                seen.add(c)
    group_rows = {g: np.flatnonzero(row_group == g) for g in np.unique(row_group[dup_rows])}

    n_swaps = 0
    for r, col in excess:
        c = int(grid[r, col])
        here = row_counts(r)
        if here.get(c, 0) <= 1:
            continue  # already fixed by an earlier swap that took the partner from here
        candidates = group_rows[int(row_group[r])]
        partner = _find_partner(grid, candidates, r, c, here, row_counts, rng)
        if partner is None:
            raise _SwapsFailed
        r2, col2 = partner
        c2 = int(grid[r2, col2])
        there = row_counts(r2)
        batches[r, col], batches[r2, col2] = batches[r2, col2], batches[r, col]
        grid[r, col], grid[r2, col2] = c2, c
        here[c] -= 1
        here[c2] = here.get(c2, 0) + 1
        there[c2] -= 1
        if there[c2] == 0:
            del there[c2]
        there[c] = 1
        n_swaps += 1
    return batches, n_swaps


def _check_spreadable(
    grid: np.ndarray, valid: np.ndarray, row_group: np.ndarray, batches: np.ndarray
) -> None:
    """The swaps can separate an id only if it occurs at most once per batch of its group."""
    groups = np.broadcast_to(row_group[:, None], grid.shape)[valid]
    ids = grid[valid]
    n_codes = int(ids.max()) + 1
    keys, occurrences = np.unique(groups * n_codes + ids, return_counts=True)
    rows_per_group = np.bincount(row_group)
    limit = rows_per_group[keys // n_codes]
    bad = np.flatnonzero(occurrences > limit)
    if bad.size:
        # More copies in the batches than batches: only exchanging dropped samples helps.
        raise _SwapsFailed


def _find_partner(grid, candidates, r, c, here, row_counts, rng, tries: int = 32):
    """A (row, col) outside row ``r`` whose swap with a ``c`` in row ``r`` is collision free."""
    present = np.fromiter(here.keys(), dtype=np.int64, count=len(here))

    def try_row(r2: int):
        if r2 == r:
            return None
        there = row_counts(r2)
        if c in there:
            return None
        row = grid[r2]
        ok = np.flatnonzero((row >= 0) & ~np.isin(row, present))
        if ok.size == 0:
            return None
        # Prefer a partner that is itself excess in its row: the swap fixes both.
        dup = ok[[there[int(row[j])] > 1 for j in ok]]
        pick = dup if dup.size else ok
        return r2, int(pick[rng.integers(pick.size)])

    for r2 in rng.choice(candidates, size=min(tries, candidates.size), replace=False).tolist():
        found = try_row(r2)
        if found is not None:
            return found
    for r2 in rng.permutation(candidates).tolist():
        found = try_row(r2)
        if found is not None:
            return found
    return None


def guard_rng(seed: int, epoch: int) -> np.random.Generator:
    """Random generator of the duplicate guard for ``(seed, epoch)``.

    A stream of its own, so that enabling the guard does not change the epoch's shuffle.
    """
    return np.random.default_rng([int(seed), int(epoch), 1])
