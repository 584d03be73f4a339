"""Rank-window graphs: B3's teacher graph (Thirukovalluru et al., NeurIPS 2025).

Every query ranks all targets by similarity (itself excluded). Only the first ``p + m`` ranks
are ever used, so an exact blocked top-``(p + m)`` search suffices (:func:`top_ranks`, the
:class:`~hardbatch.similarity.exact.SimilarityBlocks` of the core: torch, GPU when there).
Row ``i`` keeps the targets ranked in the *window* ``[p, p + m)``: the top ``p`` are skipped
because they are likely false negatives (paraphrases or duplicates of the positive). An
undirected edge ``i–j`` joins two samples that are in each other's window (``mutual=True``,
B3's rule) or in either window (``mutual=False``, the union; an option the authors did not
have). The result is a canonical symmetric boolean CSR: sorted indices, no duplicate entries
(the authors' code hands METIS every mutual edge twice), no self loops.

Class-label targets (B3's classification variant) rank *labels* instead of targets:
:func:`label_ranks` gives every query its most similar labels (own label excluded) and
:func:`label_window_graph` joins examples of different labels that are among the top labels
of each other, with a bounded number of sampled partners per example (see there why).

Cost of the retrieval graph: one ``N×N×d`` blocked matmul plus a top-k per row,
``O(N·(p+m))`` memory for the ranks, and one sparse transpose/multiply for the mutual edges.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from .._torch import normalized_rows, resolve_device
from ..validation import ArrayLike, check_embeddings, check_positive_int
from ._common import PROGRESS_WORK, index_dtype, inv_norms
from .exact import SimilarityBlocks, default_block_rows
from .search import SearchSettings, search_neighbours
from .sparse import symmetrize


def check_window(p: int, m: int, n_samples: int) -> tuple[int, int]:
    """Check a rank window ``[p, p + m)`` for ``n_samples`` rows; return ``(p, m)``.

    A row has ``N - 1`` other targets, so the window must end by rank ``N - 1``:
    ``p + m <= N - 1``, i.e. ``p + m < N``.
    """
    p = check_positive_int(p, "p", minimum=0)
    m = check_positive_int(m, "m")
    if p + m >= n_samples:
        raise ValueError(
            f"the rank window [p, p + m) = [{p}, {p + m}) needs p + m < N, got p + m = {p + m} "
            f"with N = {n_samples} (a query has only N - 1 = {n_samples - 1} other targets)"
        )
    return p, m


def top_ranks(
    queries: ArrayLike,
    targets: ArrayLike,
    k: int,
    *,
    metric: str = "cosine",
    device: str | torch.device | None = None,
    block_rows: int | None = None,
    progress: bool | None = None,
    blocks: SimilarityBlocks | None = None,
    backend: str = "exact",
) -> np.ndarray:
    """The ``k`` most similar targets of every query, best first, itself excluded.

    The ids of :func:`~hardbatch.similarity.search.search_neighbours`. Exact: blocked ``X·Yᵀ``
    with the diagonal masked, then ``torch.topk`` per block, so memory is one similarity block
    plus the ``N×k`` result.

    Parameters
    ----------
    queries, targets : array-like of shape (N, d)
        Paired embeddings (teacher embeddings for B3).
    k : int
        Ranks per row, ``1 <= k < N``.
    metric : {"cosine", "dot"}
    device, block_rows : see :class:`~hardbatch.similarity.exact.SimilarityBlocks`.
    progress : bool or None
        Progress bar; ``None`` shows it when the work takes seconds.
    blocks : SimilarityBlocks, optional
        Reuse prepared targets (exact search only).
    backend : {"exact", "faiss", "auto"}
        Neighbour search (:mod:`hardbatch.similarity.search`).

    Returns
    -------
    ranks : np.ndarray of shape (N, k), int32 (int64 beyond 2³¹ samples)
        ``ranks[i, r]`` is the target of rank ``r`` for query ``i`` (rank 0 = most similar);
        never ``i`` itself. Ties are broken by ``torch.topk``.
    """
    settings = SearchSettings(
        backend=backend, metric=metric, device=device, block_rows=block_rows, progress=progress
    )
    return search_neighbours(queries, targets, k, settings, blocks=blocks).ids


def window_graph(ranks: np.ndarray, p: int, m: int, *, mutual: bool = True) -> sp.csr_matrix:
    """Undirected graph of the rank windows ``[p, p + m)`` of a rank matrix.

    Parameters
    ----------
    ranks : np.ndarray of shape (N, k), k >= p + m
        Output of :func:`top_ranks` (each row distinct ids, never the row itself).
    p, m : int
        Window start and width.
    mutual : bool
        ``True`` (B3): edge ``i–j`` when ``j`` is in ``i``'s window *and* ``i`` in ``j``'s.
        ``False``: when either holds (union).

    Returns
    -------
    scipy.sparse.csr_matrix of shape (N, N), bool
        Symmetric, sorted indices, no duplicates, no diagonal.
    """
    ranks = np.asarray(ranks)
    if ranks.ndim != 2:
        raise ValueError(f"ranks must be 2-D (N, k), got shape {ranks.shape}")
    n, k = ranks.shape
    p = check_positive_int(p, "p", minimum=0)
    m = check_positive_int(m, "m")
    if p + m > k:
        raise ValueError(f"the window [p, p + m) = [{p}, {p + m}) exceeds the {k} ranks given")
    dtype = index_dtype(n)
    # CSR wants sorted columns within a row; every row has exactly m distinct entries.
    cols = np.sort(ranks[:, p : p + m], axis=1).astype(dtype, copy=False).ravel()
    indptr = np.arange(0, n * m + 1, m, dtype=dtype if n * m < 2**31 else np.int64)
    directed = sp.csr_matrix((np.ones(n * m, dtype=np.bool_), cols, indptr), shape=(n, n))
    directed.has_sorted_indices = True
    if not mutual:
        return symmetrize(directed)
    # Elementwise product with the transpose keeps exactly the mutual pairs (linear merge).
    graph = directed.multiply(directed.T.tocsr()).tocsr().astype(np.bool_)
    graph.eliminate_zeros()
    graph.sum_duplicates()
    graph.sort_indices()
    return graph


def rank_window_graph(
    queries: ArrayLike,
    targets: ArrayLike,
    p: int,
    m: int,
    *,
    mutual: bool = True,
    metric: str = "cosine",
    device: str | torch.device | None = None,
    block_rows: int | None = None,
    progress: bool | None = None,
    blocks: SimilarityBlocks | None = None,
) -> sp.csr_matrix:
    """B3's teacher graph: rank windows ``[p, p + m)`` joined mutually (or by union).

    Exact top-``(p + m)`` search of the targets for every query (:func:`top_ranks`), then
    :func:`window_graph`.

    Parameters
    ----------
    queries, targets : array-like of shape (N, d)
    p : int
        Ranks skipped at the top (likely false negatives); the authors use 30 for retrieval
        data and 70 for VQA.
    m : int
        Window width (the authors use 100).
    mutual : bool
        Mutual edges (B3, default) or the union of both directions.
    metric, device, block_rows, progress, blocks : see :func:`top_ranks`.

    Returns
    -------
    scipy.sparse.csr_matrix of shape (N, N), bool
        Symmetric, canonical, no self loops.
    """
    n = int(blocks.n_samples if blocks is not None else queries.shape[0])
    p, m = check_window(p, m, n)
    ranks = top_ranks(
        queries,
        targets,
        p + m,
        metric=metric,
        device=device,
        block_rows=block_rows,
        progress=progress,
        blocks=blocks,
    )
    return window_graph(ranks, p, m, mutual=mutual)


# --------------------------------------------------------------------------- class labels
def label_embeddings(
    targets: ArrayLike,
    labels: np.ndarray,
    n_labels: int,
    *,
    metric: str = "cosine",
    device: str | torch.device | None = None,
    norms: np.ndarray | None = None,
) -> torch.Tensor:
    """One embedding per label: the normalised mean of its (normalised) target rows.

    For class-label data every target row of label ``b`` embeds the same label text, so the
    mean is that embedding; averaging only guards against small differences.

    Returns
    -------
    torch.Tensor of shape (n_labels, d), float32 on ``device``
    """
    dev = resolve_device(device)
    n, d = int(targets.shape[0]), int(targets.shape[1])
    if norms is None:
        norms = np.linalg.norm(np.asarray(targets, dtype=np.float64), axis=1)
    inv = inv_norms(norms, metric)
    sums = torch.zeros((n_labels, d), dtype=torch.float32, device=dev)
    codes = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(dev)
    step = default_block_rows(n)
    for start in range(0, n, step):
        sl = slice(start, min(start + step, n))
        sums.index_add_(0, codes[sl], normalized_rows(targets, sl, inv, dev))
    counts = torch.bincount(codes, minlength=n_labels).to(torch.float32).clamp_min(1)
    means = sums / counts[:, None]
    if metric == "cosine":
        means = torch.nn.functional.normalize(means, dim=1)
    return means


def label_ranks(
    queries: ArrayLike,
    label_vectors: torch.Tensor,
    labels: np.ndarray,
    k: int,
    *,
    metric: str = "cosine",
    block_rows: int | None = None,
    progress: bool | None = None,
    norms: np.ndarray | None = None,
) -> np.ndarray:
    """The ``k`` labels most similar to every query, best first, its own label excluded.

    Parameters
    ----------
    queries : array-like of shape (N, d)
    label_vectors : torch.Tensor of shape (L, d)
        From :func:`label_embeddings` (already on the device the matmul runs on).
    labels : np.ndarray of shape (N,), int
        Label code in ``[0, L)`` of every example.
    k : int
        ``1 <= k <= L - 1``.

    Returns
    -------
    np.ndarray of shape (N, k), int32 label codes
    """
    n_labels = int(label_vectors.shape[0])
    k = check_positive_int(k, "k")
    if k > n_labels - 1:
        raise ValueError(f"k={k} labels requested but only {n_labels - 1} other labels exist")
    n, dim = int(queries.shape[0]), int(queries.shape[1])
    if norms is None:
        norms = check_embeddings(queries, "queries")
    inv = inv_norms(norms, metric)
    dev = label_vectors.device
    rows = (
        max(16, min(n, (256 * 2**20) // (4 * max(n_labels, 1))))
        if block_rows is None
        else check_positive_int(block_rows, "block_rows")
    )
    codes = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    out = np.empty((n, k), dtype=np.int32)
    starts = range(0, n, rows)
    show = float(n) * n_labels * dim > PROGRESS_WORK if progress is None else bool(progress)
    for start in tqdm(starts, desc="label ranks", unit="block", disable=not show, leave=False):
        stop = min(start + rows, n)
        sim = normalized_rows(queries, slice(start, stop), inv, dev) @ label_vectors.T
        # The own label is the positive: never one of the "other" labels.
        own = codes[start:stop].to(dev)[:, None]
        sim.scatter_(1, own, -math.inf)
        out[start:stop] = torch.topk(sim, k, dim=1, sorted=True)[1].cpu().numpy()
    return out


def label_window_graph(
    top_labels: np.ndarray,
    labels: np.ndarray,
    m: int,
    *,
    seed: int | None = 0,
) -> sp.csr_matrix:
    """B3's classification graph: examples of different labels that rank each other's label.

    Example ``i`` (label ``a``) and ``j`` (label ``b != a``) are *eligible* partners when ``b``
    is among ``i``'s top labels and ``a`` among ``j``'s (the mutual rule, with the own label
    excluded instead of the top ``p``). Exactly, this graph has ``Θ(N²·f²)`` edges for a top
    fraction ``f`` of the labels (every example of one label joins every eligible example of
    another): 0.09·N² at f = 0.3. The authors bound it by running on subsets of 10k examples.
    Here every example instead draws ``m`` partners uniformly from its eligible ones (with
    replacement, duplicates merged), so the graph is a seeded random subgraph of the exact one
    with at most ``2·m`` edges per example on average, any N.

    Sampling is vectorised: eligible partners of ``i`` are grouped in buckets
    ``(b, a) = {j : label(j) = b, a ∈ top(j)}`` for ``b ∈ top(i)``; a bucket is drawn with
    probability proportional to its size, then a member uniformly.

    Parameters
    ----------
    top_labels : np.ndarray of shape (N, t), int
        Every example's top ``t`` labels, own excluded (:func:`label_ranks`).
    labels : np.ndarray of shape (N,), int
        Label code of every example, in ``[0, L)``.
    m : int
        Partners drawn per example.
    seed : int or None

    Returns
    -------
    scipy.sparse.csr_matrix of shape (N, N), bool
        Symmetric, canonical, no self loops; every edge joins two different labels.
    """
    top_labels = np.asarray(top_labels, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    n, t = top_labels.shape
    m = check_positive_int(m, "m")
    n_labels = int(max(labels.max(), top_labels.max())) + 1
    # Buckets: every (example j, label a in top(j)) pair under key (label(j), a).
    keys = (labels[:, None] * n_labels + top_labels).ravel()
    members = np.repeat(np.arange(n, dtype=np.int64), t)
    order = np.argsort(keys, kind="stable")
    keys, members = keys[order], members[order]
    bucket_keys, bucket_starts, bucket_sizes = np.unique(
        keys, return_index=True, return_counts=True
    )
    # For example i (label a), its bucket for b in top(i) has key (b, a).
    wanted = top_labels * n_labels + labels[:, None]  # (N, t)
    pos = np.searchsorted(bucket_keys, wanted)
    pos_clipped = np.minimum(pos, len(bucket_keys) - 1)
    found = bucket_keys[pos_clipped] == wanted
    sizes = np.where(found, bucket_sizes[pos_clipped], 0)  # (N, t)
    starts = np.where(found, bucket_starts[pos_clipped], 0)
    totals = sizes.sum(axis=1)
    has = np.flatnonzero(totals > 0)
    if has.size == 0:
        return sp.csr_matrix((n, n), dtype=np.bool_)
    sizes, starts, totals = sizes[has], starts[has], totals[has]
    rng = np.random.default_rng(seed)
    # Row-wise inverse CDF on one flat cumulative array: row r's buckets occupy the interval
    # [offset_r, offset_r + total_r) of the global cumulative sizes.
    flat_cum = np.cumsum(sizes.ravel())
    offsets = flat_cum[np.arange(len(has)) * t + t - 1] - totals
    draws = np.floor(rng.random((len(has), m)) * totals[:, None]).astype(np.int64)
    draws = np.minimum(draws, totals[:, None] - 1) + offsets[:, None]
    bucket = np.searchsorted(flat_cum, draws, side="right")  # flat (row, col) of the bucket
    before = flat_cum[bucket] - sizes.ravel()[bucket]
    partners = members[starts.ravel()[bucket] + (draws - before)]
    rows = np.repeat(has, m)
    directed = sp.csr_matrix(
        (np.ones(rows.size, dtype=np.bool_), (rows, partners.ravel())), shape=(n, n)
    )
    return symmetrize(directed)


def check_label_fraction(fraction: float, n_labels: int) -> int:
    """Top labels per example for a fraction of the other labels (at least one)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)):
        raise ValueError(f"label_fraction must be a number in (0, 1], got {fraction!r}")
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction}")
    if n_labels < 2:
        raise ValueError(f"class-label targets need at least 2 distinct labels, got {n_labels}")
    return max(1, math.ceil(fraction * (n_labels - 1) - 1e-9))
