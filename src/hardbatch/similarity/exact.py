"""Exact similarity graphs by blocked matrix multiplication.

The N×N cross-similarity ``S = X·Yᵀ`` (row i: query i against every target) is never held in
memory: queries are streamed in row blocks of ``block_rows`` rows, each block is multiplied by
all targets with torch (GPU when available, otherwise multi-threaded CPU), and only the selected
entries survive into a scipy CSR matrix. Memory is ``O(N·k + block_rows·N)`` plus one float32
copy of the normalised targets.

Two selection rules:

* :func:`threshold_graph` — every off-diagonal ``S[i, j] > threshold`` (GCBS's quantile rule;
  :func:`estimate_threshold` turns a quantile into a threshold from a seeded sample of pairs);
* :func:`exact_neighbours` — the ``k`` largest off-diagonal entries of each row (the exact
  backend of :func:`hardbatch.similarity.search.search_neighbours`).

:func:`exact_rows_top_k` is the exact top-k of a few sampled rows (recall checks, Ray's border
edges).

The diagonal (a query against its own positive) is never an edge.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from .._torch import normalized_rows, resolve_device
from ..validation import (
    ArrayLike,
    check_fraction,
    check_pair,
    check_positive_int,
)
from ._common import index_dtype, inv_norms, show_progress, stream_rows

#: Bytes of similarity block kept at once (float32), sets the default ``block_rows``.
BLOCK_BYTES = 256 * 2**20


def default_block_rows(n_targets: int) -> int:
    """Query rows per block so one float32 block of similarities is about ``BLOCK_BYTES``."""
    return int(max(16, min(n_targets, BLOCK_BYTES // (4 * max(n_targets, 1)))))


class SimilarityBlocks:
    """Row blocks of the (normalised) cross-similarity matrix ``S = X·Yᵀ``.

    Parameters
    ----------
    queries, targets : array-like of shape (N, d)
        Paired embeddings (numpy, memmap or torch; float16/32/64).
    metric : {"cosine", "dot"}
        Cosine normalises every row first; dot uses the raw inner product.
    device : str or torch.device, optional
        Where the matmul runs; default CUDA when available, else CPU.
    block_rows : int, optional
        Query rows per block; default keeps a block near 256 MiB.
    norms : tuple of arrays, optional
        Row norms of queries and targets if already computed by validation.

    Attributes
    ----------
    n_samples : int
    targets_t : torch.Tensor of shape (d, N)
        Normalised float32 targets, transposed, on ``device``.
    """

    def __init__(
        self,
        queries: ArrayLike,
        targets: ArrayLike,
        *,
        metric: str = "cosine",
        device: str | torch.device | None = None,
        block_rows: int | None = None,
        norms: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        if norms is None:
            norms = check_pair(queries, targets)
        self.queries = queries
        self.n_samples = int(queries.shape[0])
        self.dim = int(queries.shape[1])
        self.device = resolve_device(device)
        self.q_inv = inv_norms(norms[0], metric)
        t_inv = inv_norms(norms[1], metric)
        self.block_rows = (
            default_block_rows(self.n_samples)
            if block_rows is None
            else check_positive_int(block_rows, "block_rows")
        )
        # One float32 copy of the targets, filled block by block (memmaps are streamed).
        targets_t = torch.empty((self.dim, self.n_samples), dtype=torch.float32, device=self.device)
        step = max(self.block_rows, 4096)
        for start in range(0, self.n_samples, step):
            sl = slice(start, min(start + step, self.n_samples))
            targets_t[:, sl] = normalized_rows(targets, sl, t_inv, self.device).T
        self.targets_t = targets_t

    def query_rows(self, index: slice | np.ndarray) -> torch.Tensor:
        """Normalised float32 query rows on the device."""
        return normalized_rows(self.queries, index, self.q_inv, self.device)

    def blocks(
        self,
        *,
        progress: bool | None = None,
        desc: str = "similarity",
        mask_diagonal: bool = True,
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(start, S[start:start + b])``, float32 on the device.

        With ``mask_diagonal`` (default) the entries ``S[i, i]`` (a query against its own
        positive) are set to ``-inf`` so no selection rule can pick them. Consume each block
        before asking for the next.
        """
        n = self.n_samples
        starts = range(0, n, self.block_rows)
        bar = tqdm(
            starts,
            desc=desc,
            unit="block",
            disable=not show_progress(progress, n, self.dim),
            leave=False,
        )
        # One output buffer for all blocks: a fresh 256 MiB tensor per block costs page faults
        # that are a sizeable fraction of the matmul itself.
        buffer = torch.empty((min(self.block_rows, n), n), dtype=torch.float32, device=self.device)
        for start in bar:
            stop = min(start + self.block_rows, n)
            block = torch.matmul(
                self.query_rows(slice(start, stop)), self.targets_t, out=buffer[: stop - start]
            )
            if mask_diagonal:
                # Entry (r, start + r) is query r against its own positive: never a negative.
                block.diagonal(offset=start).fill_(-math.inf)
            yield start, block


#: Neighbours per row that the default rule keeps (``quantile = 1 - 16/(N - 1)``). Chosen by
#: ``benchmarks/gcbs_defaults.py`` (``benchmarks/results/gcbs_defaults.md``): on planted groups
#: of 32, batch 64, it gives batch purity 0.41-0.49 at every N from 500 to 100k (the old fixed
#: ``quantile=0.999`` gave 0.04-0.49 and left 57-73% of samples isolated at N = 500), keeps
#: 0.83-0.98 of the best packing for batch sizes 32-256, and beats a per-row top-k on groups
#: of unequal size.
DEFAULT_NEIGHBOURS = 16


def default_quantile(n_samples: int) -> float:
    """The quantile of the default rule: each row keeps about :data:`DEFAULT_NEIGHBOURS`
    pairs, ``1 - 16/(N - 1)``, whatever N (at least 0.5: below N = 33 a row keeps half of
    the others)."""
    others = max(int(n_samples) - 1, 1)
    return max(1.0 - DEFAULT_NEIGHBOURS / others, 0.5)


def estimate_threshold(
    queries: ArrayLike,
    targets: ArrayLike,
    quantile: float,
    *,
    n_pairs: int = 1_000_000,
    seed: int | None = 0,
    metric: str = "cosine",
    device: str | torch.device | None = None,
    norms: tuple[np.ndarray, np.ndarray] | None = None,
) -> float:
    """Similarity value at ``quantile`` of the off-diagonal entries of ``S = X·Yᵀ``.

    Instead of the paper's per-chunk quantiles (and their median), the quantile is taken over a
    seeded random sample: ``r = ceil(sqrt(n_pairs))`` random queries against ``r`` random targets,
    all ``r²`` pairs minus coinciding indices. The cost is one ``r×r×d`` matmul. When
    ``N <= r`` every off-diagonal pair is used and the value is exact.

    Parameters
    ----------
    queries, targets : array-like of shape (N, d)
    quantile : float in (0, 1)
        E.g. 0.999 keeps about 0.1% of all pairs, i.e. ~0.001·N edges per row.
    n_pairs : int
        Approximate sample size (default one million).
    seed : int or None
        Seeds the sample.
    metric : {"cosine", "dot"}
    device : optional
    norms : optional precomputed row norms.

    Returns
    -------
    float
        Threshold ``t``; the graph keeps entries ``S[i, j] > t``.
    """
    quantile = check_fraction(quantile, "quantile")
    n_pairs = check_positive_int(n_pairs, "n_pairs", minimum=100)
    if norms is None:
        norms = check_pair(queries, targets)
    n = int(queries.shape[0])
    dev = resolve_device(device)
    r = math.isqrt(n_pairs - 1) + 1
    if r >= n:
        rows = cols = np.arange(n)
    else:
        rng = np.random.default_rng(seed)
        # Sorted indices read a memmap sequentially.
        rows = np.sort(rng.choice(n, size=r, replace=False))
        cols = np.sort(rng.choice(n, size=r, replace=False))
    q = normalized_rows(queries, rows, inv_norms(norms[0], metric), dev)
    t = normalized_rows(targets, cols, inv_norms(norms[1], metric), dev)
    sims = (q @ t.T).cpu().numpy()
    off_diagonal = rows[:, None] != cols[None, :]
    return float(np.quantile(sims[off_diagonal].astype(np.float64), quantile))


def _csr(
    n: int, counts: list[np.ndarray], cols: list[np.ndarray], vals: list[np.ndarray] | None
) -> sp.csr_matrix:
    """Assemble a CSR matrix from per-block row counts and row-major sorted column ids."""
    indptr = np.zeros(n + 1, dtype=np.int64)
    if counts:
        np.cumsum(np.concatenate(counts), out=indptr[1:])
    nnz = int(indptr[-1])
    index_dtype = np.int32 if nnz < 2**31 and n < 2**31 else np.int64
    indices = (
        np.concatenate(cols).astype(index_dtype, copy=False) if cols else np.zeros(0, np.int32)
    )
    if vals is None:
        data = np.ones(nnz, dtype=np.bool_)
    else:
        data = np.concatenate(vals) if vals else np.zeros(0, np.float32)
    graph = sp.csr_matrix((data, indices, indptr.astype(index_dtype)), shape=(n, n))
    graph.has_sorted_indices = True
    return graph


def threshold_graph(
    queries: ArrayLike,
    targets: ArrayLike,
    threshold: float,
    *,
    metric: str = "cosine",
    values: bool = True,
    device: str | torch.device | None = None,
    block_rows: int | None = None,
    max_edges: int | None = 300_000_000,
    progress: bool | None = None,
    blocks: SimilarityBlocks | None = None,
) -> sp.csr_matrix:
    """Directed graph of every off-diagonal pair with similarity above ``threshold``.

    Parameters
    ----------
    queries, targets : array-like of shape (N, d)
    threshold : float
        Keep ``S[i, j] > threshold`` (strict, as in the paper), ``i != j``.
    metric : {"cosine", "dot"}
    values : bool
        Store the similarities as float32 data (default); ``False`` stores a boolean pattern,
        a quarter of the memory.
    device, block_rows : see :class:`SimilarityBlocks`.
    max_edges : int or None
        Abort with ``ValueError`` when more edges than this are found (a too-low quantile would
        otherwise exhaust memory). ``None`` disables the guard.
    progress : bool or None
        Progress bar; ``None`` shows it when the work takes seconds.
    blocks : SimilarityBlocks, optional
        Reuse prepared targets instead of building them from ``queries``/``targets``.

    Returns
    -------
    scipy.sparse.csr_matrix of shape (N, N)
        Row i holds the targets j with ``S[i, j] > threshold``; sorted indices, no diagonal.
    """
    blocks = blocks or SimilarityBlocks(
        queries, targets, metric=metric, device=device, block_rows=block_rows
    )
    n = blocks.n_samples
    counts, cols, vals = [], [], []
    total = 0
    on_cpu = blocks.device.type == "cpu"
    mask_buffer = torch.empty(
        (min(blocks.block_rows, n), n), dtype=torch.bool, device=blocks.device
    )
    for _, sim in blocks.blocks(progress=progress, desc="threshold graph"):
        rows = sim.shape[0]
        if on_cpu:
            # numpy's compare + flatnonzero is about twice as fast as torch's nonzero on CPU,
            # and this extraction is the only work besides the matmul that touches N² entries.
            sim_np = sim.numpy()
            mask = np.greater(sim_np, threshold, out=mask_buffer[:rows].numpy())
            flat = np.flatnonzero(mask)  # row-major: sorted by (row, col)
        else:
            mask = torch.gt(sim, threshold, out=mask_buffer[:rows])
            flat = mask.view(-1).nonzero().view(-1).cpu().numpy()
        total += int(flat.size)
        if max_edges is not None and total > max_edges:
            raise ValueError(
                f"the threshold {threshold:.4g} keeps more than max_edges={max_edges} edges "
                f"(N={n}); raise the quantile, use a per-row top-k rule, or raise max_edges"
            )
        counts.append(np.bincount(flat // n, minlength=rows))
        cols.append((flat % n).astype(np.int32))
        if values:
            flat_t = torch.from_numpy(flat).to(sim.device)
            vals.append(sim.reshape(-1)[flat_t].cpu().numpy())
    return _csr(n, counts, cols, vals if values else None)


def exact_neighbours(
    queries: ArrayLike,
    targets: ArrayLike,
    k: int,
    *,
    metric: str = "cosine",
    device: str | torch.device | None = None,
    block_rows: int | None = None,
    progress: bool | None = None,
    norms: tuple[np.ndarray, np.ndarray] | None = None,
    blocks: SimilarityBlocks | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` most similar targets of every query, best first, its own positive excluded.

    The one exact top-k of the package (GCBS's ``top_k`` rule, B3's rank windows): blocked
    ``X·Yᵀ`` with the diagonal masked, then ``torch.topk`` per block, so memory is one
    similarity block plus the ``(N, k)`` result.

    Parameters
    ----------
    queries, targets : array-like of shape (N, d)
    k : int
        Neighbours per row, ``1 <= k < N``.
    metric, device, block_rows, progress : see :func:`threshold_graph`.
    norms : tuple of arrays, optional
        Precomputed row norms.
    blocks : SimilarityBlocks, optional
        Reuse prepared targets.

    Returns
    -------
    ids : np.ndarray of shape (N, k), int32 (int64 beyond 2³¹ rows)
        ``ids[i, r]`` is the target of rank ``r`` for query ``i``; never ``i``. Ties are
        broken by ``torch.topk``.
    sims : np.ndarray of shape (N, k), float32
        Their similarities, non-increasing along a row.
    """
    blocks = blocks or SimilarityBlocks(
        queries, targets, metric=metric, device=device, block_rows=block_rows, norms=norms
    )
    n = blocks.n_samples
    k = check_positive_int(k, "k")
    if k >= n:
        raise ValueError(f"k={k} must be smaller than N={n} (a row has N-1 other targets)")
    ids = np.empty((n, k), dtype=index_dtype(n))
    sims = np.empty((n, k), dtype=np.float32)
    for start, sim in blocks.blocks(progress=progress, desc="exact neighbours"):
        # sorted=True: column r is rank r. The diagonal is -inf, so with k < N the query's own
        # positive is never selected.
        top_vals, top_ids = torch.topk(sim, k, dim=1, largest=True, sorted=True)
        ids[start : start + sim.shape[0]] = top_ids.cpu().numpy()
        sims[start : start + sim.shape[0]] = top_vals.cpu().numpy()
    return ids, sims


def exact_rows_top_k(
    queries: ArrayLike,
    targets: ArrayLike,
    rows: np.ndarray,
    k: int,
    *,
    metric: str = "cosine",
    device: str | torch.device | None = None,
    norms: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Exact top-``k`` targets (own positive excluded) of some query rows, shape (len(rows), k).

    Streams the targets in blocks and keeps a running top-k: ``len(rows)·N·d`` work,
    ``O(len(rows)·k)`` memory beyond one block.
    """
    if norms is None:
        norms = check_pair(queries, targets)
    n = int(queries.shape[0])
    rows = np.asarray(rows, dtype=np.int64)
    dev = resolve_device(device)
    q = normalized_rows(queries, rows, inv_norms(norms[0], metric), dev)
    t_inv = inv_norms(norms[1], metric)
    best_vals = torch.full((rows.size, k), -math.inf, device=dev)
    best_ids = torch.zeros((rows.size, k), dtype=torch.int64, device=dev)
    rows_t = torch.from_numpy(rows).to(dev)
    for sl, t in stream_rows(targets, t_inv, dev, n):
        sim = q @ t.T
        cols = torch.arange(sl.start, sl.stop, device=dev)
        sim.masked_fill_(rows_t[:, None] == cols[None, :], -math.inf)
        vals = torch.cat([best_vals, sim], dim=1)
        cand = torch.cat([best_ids, cols.expand(rows.size, -1)], dim=1)
        best_vals, pos = torch.topk(vals, k, dim=1)
        best_ids = torch.gather(cand, 1, pos)
    return best_ids.cpu().numpy()
