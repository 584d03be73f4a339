"""Clusters of exactly K samples from a partition (B3's equal-size step).

A partitioner returns parts of *about* K members; batches of ``B = c·K`` samples need
clusters of *exactly* K. :func:`equalize_parts` repairs the sizes with as few moves as the
pool rule allows:

1. Every part of size ``s >= K`` keeps ``floor(s / K)`` whole clusters; its ``s mod K``
   surplus members go to a pool. With a ``graph``, the surplus are the members with the fewest
   edges inside their part (they belong there least); without one, the highest ids.
2. Parts smaller than K are filled from the pool, the largest first (they need the fewest
   foreign members). A small part the pool cannot fill is dissolved into the pool, whole.
3. The pool is cut into chunks of K in order (surplus first, then the dissolved parts, each
   kept contiguous so a chunk often holds whole small parts).

**Leftover rule.** ``N mod K`` samples remain after the full clusters. They form one short
*last cluster* holding only real samples (the last chunk of the pool), stored as the last row
of the cluster array right-padded with :data:`hardbatch.batching.PAD` (-1), exactly like the
short last batch of :mod:`hardbatch.batching`. No sample is repeated to fill it: the authors'
code pads it with the ids ``0..K-1`` (samples of some other cluster, seen twice per epoch).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..batching import PAD


def check_cluster_size(cluster_size: int) -> int:
    """K >= 2: a cluster of one sample has no in-cluster negative."""
    if isinstance(cluster_size, bool) or not isinstance(cluster_size, (int, np.integer)):
        raise ValueError(f"cluster_size must be an integer, got {cluster_size!r}")
    if cluster_size < 2:
        raise ValueError(
            f"cluster_size must be at least 2 (a cluster needs in-cluster negatives), "
            f"got {cluster_size}"
        )
    return int(cluster_size)


def internal_degree(graph: sp.spmatrix, labels: np.ndarray) -> np.ndarray:
    """Edges of every node that stay inside its part, shape ``(N,)``."""
    graph = sp.csr_matrix(graph)
    rows = np.repeat(np.arange(graph.shape[0]), np.diff(graph.indptr))
    inside = labels[rows] == labels[graph.indices]
    return np.bincount(rows[inside], minlength=graph.shape[0])


def equalize_parts(
    parts: np.ndarray,
    cluster_size: int,
    *,
    graph: sp.spmatrix | None = None,
) -> np.ndarray:
    """Clusters of exactly ``cluster_size`` samples from a partition (see module docstring).

    Parameters
    ----------
    parts : np.ndarray of shape (N,), int
        Part label of every sample (any integers; e.g. :attr:`Partition.labels`).
    cluster_size : int
        K >= 2.
    graph : scipy sparse matrix of shape (N, N), optional
        The partitioned graph; picks the least-connected members as a part's surplus.

    Returns
    -------
    clusters : np.ndarray of shape (ceil(N / K), K), int64
        Every sample exactly once. All rows full except, when ``N mod K != 0``, the last one:
        ``N mod K`` real samples, right-padded with ``PAD`` (-1).
    """
    k = check_cluster_size(cluster_size)
    parts = np.asarray(parts)
    if parts.ndim != 1 or parts.size == 0:
        raise ValueError(f"parts must be a non-empty 1-D array, got shape {parts.shape}")
    if not np.issubdtype(parts.dtype, np.integer):
        raise ValueError(f"parts must hold integer labels, got dtype {parts.dtype}")
    n = parts.size
    _, labels = np.unique(parts, return_inverse=True)
    labels = labels.astype(np.int64)
    # Members of each part, best connected first: surplus members are then the last ones.
    if graph is not None:
        if graph.shape != (n, n):
            raise ValueError(f"graph must have shape ({n}, {n}), got {graph.shape}")
        priority = -internal_degree(graph, labels)
    else:
        priority = np.zeros(n, dtype=np.int64)
    order = np.lexsort((np.arange(n), priority, labels))
    sorted_labels = labels[order]
    sizes = np.bincount(labels)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    rank = np.arange(n) - starts[sorted_labels]
    n_whole = sizes // k  # whole clusters each part keeps
    in_whole = rank < (n_whole * k)[sorted_labels]
    whole = order[in_whole]  # consecutive chunks of K are the kept clusters

    rest = ~in_whole
    big_rest = rest & (sizes[sorted_labels] >= k)
    pool = order[big_rest]  # surplus of big parts
    small_ids = np.flatnonzero(sizes < k)
    # Fill the largest small parts first while the pool lasts (greedy prefix on their needs).
    small_ids = small_ids[np.argsort(-sizes[small_ids], kind="stable")]
    need = k - sizes[small_ids]
    filled = np.cumsum(need) <= pool.size
    filled_ids = small_ids[filled]  # the rest are dissolved into the pool

    # Members of the small parts, grouped by part in fill order.
    small_rank = np.full(sizes.size, -1, dtype=np.int64)
    small_rank[small_ids] = np.arange(small_ids.size)
    small_members = order[rest & ~big_rest]
    small_members = small_members[np.argsort(small_rank[labels[small_members]], kind="stable")]
    member_part = labels[small_members]
    is_filled = np.zeros(sizes.size, dtype=bool)
    is_filled[filled_ids] = True

    # Filled part j takes the next need[j] pool members: build its K-row directly.
    n_fill = filled_ids.size
    fill_rows = np.empty((n_fill, k), dtype=np.int64)
    if n_fill:
        own = small_members[is_filled[member_part]]
        own_counts = sizes[filled_ids]
        pos_own = np.arange(own.size) - np.repeat(np.cumsum(own_counts) - own_counts, own_counts)
        fill_rows[np.repeat(np.arange(n_fill), own_counts), pos_own] = own
        used = int(need[filled].sum())
        given = pool[:used]
        give_counts = need[filled]
        pos_given = np.arange(used) - np.repeat(np.cumsum(give_counts) - give_counts, give_counts)
        fill_rows[
            np.repeat(np.arange(n_fill), give_counts), own_counts.repeat(give_counts) + pos_given
        ] = given
        pool = pool[used:]
    leftover = np.concatenate([pool, small_members[~is_filled[member_part]]])

    n_chunks, rest_count = divmod(leftover.size, k)
    blocks = [
        whole.reshape(-1, k),
        fill_rows,
        leftover[: n_chunks * k].reshape(-1, k),
    ]
    if rest_count:
        last = np.full((1, k), PAD, dtype=np.int64)
        last[0, :rest_count] = leftover[n_chunks * k :]
        blocks.append(last)
    clusters = np.concatenate(blocks).astype(np.int64, copy=False)
    assert clusters.shape[0] == -(-n // k)  # every sample placed, one short row at most
    return clusters
