"""Approximate per-row top-k neighbours: an inverted-file (IVF) search with FAISS k-means.

The ``"faiss"`` backend of :func:`hardbatch.similarity.search.search_neighbours` (optional extra
``hardbatch[faiss]``); :func:`ivf_neighbours` does:

1. a seeded PCA to ``pca_dim`` (128) dimensions, fitted on a sample of targets;
2. FAISS k-means (``faiss.Kmeans``, seeded, on one thread so the result does not depend
   on the thread count; :func:`seeded_kmeans`) of a sample of projected
   targets into ``n_lists`` lists (default ``2·sqrt(N)``); every target and every query is
   assigned to its nearest centroid in the projected space (blocked matmul);
3. for each list ``c``: its queries are scored *exactly* (full dimension, float32) against the
   targets of the ``n_probe`` lists whose centroids are nearest to centroid ``c`` (more lists
   are added until there are ``max(16·k, 2048)`` candidates: near-ties at deep ranks need
   them), one BLAS matmul per list, then
   ``torch.topk``.

Cost ``N·(2·n_lists·pca_dim + n_probe·N/n_lists·d)``, about 2e12 at N = 1M (a few minutes
on 2 cores) instead of the exact ``N·N·d`` = 1.5e15. Why not ``faiss.IndexIVFFlat``: its
per-query scan ran at ~2e9 multiply-adds/s on this 2-core machine (1500 s for 1M queries at the
same recall), the per-list matmul at ~2e10. Probing per list (the probe set is shared by all
queries of a list) instead of per query loses a little recall at list borders; ``n_probe`` buys
it back. Memory: one float32 copy of the normalised targets sorted by list (``4·N·d`` bytes, as
the exact path), the ``(N, k)`` result, and ``O(N·pca_dim)`` for the projections; inputs
(float16 / ``.npy`` memmaps) are read in row blocks.

:func:`neighbour_recall` measures recall@k of any result against the exact search on a seeded
sample of query rows (exact rows cost ``n_rows·N·d``).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm.auto import tqdm

from .._torch import normalized_rows, resolve_device
from ..validation import ArrayLike, check_pair, check_positive_int
from ._common import STREAM_ROWS, index_dtype, inv_norms, show_progress, stream_rows
from .exact import exact_rows_top_k


def seeded_kmeans(train: np.ndarray, n_centroids: int, *, niter: int, seed: int) -> np.ndarray:
    """FAISS k-means centroids of ``train`` (shape (m, d)), reproducible for a seed.

    Returns an array of shape (n_centroids, d), float32. Trained on one OpenMP thread: FAISS
    k-means sums per thread, so its centroids (and every plan built on them) would otherwise
    depend on the thread count.
    """
    import faiss

    kmeans = faiss.Kmeans(train.shape[1], n_centroids, niter=niter, seed=seed, verbose=False)
    kmeans.cp.min_points_per_centroid = 1  # small samples: no warning spam, same result
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        kmeans.train(np.ascontiguousarray(train, dtype=np.float32))
    finally:
        faiss.omp_set_num_threads(threads)
    return kmeans.centroids.copy()


def _pca_basis(targets, inv, dev, n, d, dim, rng) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (d,) and top-``dim`` principal directions (d, dim) of a sample of targets."""
    rows = np.sort(rng.choice(n, size=min(n, 20_000), replace=False))
    sample = normalized_rows(targets, rows, inv, dev).cpu().numpy().astype(np.float64)
    mean = sample.mean(0)
    sample -= mean
    # Eigenvectors of the d×d covariance (LAPACK; torch's CPU eigh was 40x slower here),
    # signs fixed so the basis is deterministic.
    _, vecs = np.linalg.eigh(sample.T @ sample)
    basis = vecs[:, ::-1][:, :dim]
    basis = basis * np.sign(basis[np.abs(basis).argmax(0), np.arange(dim)])
    mean, basis = torch.from_numpy(mean).to(dev), torch.from_numpy(basis.copy()).to(dev)
    return mean.float(), basis.float()


def _assign(a, inv, dev, n, mean, basis, centroids_t) -> np.ndarray:
    """Nearest centroid (inner product in the projected space) of every row."""
    out = np.empty(n, dtype=np.int64)
    for sl, rows in stream_rows(a, inv, dev, n):
        proj = (rows - mean) @ basis
        # argmax of 2·x·c - |c|² is the nearest centroid in Euclidean distance.
        out[sl] = torch.argmax(proj @ centroids_t[0] - centroids_t[1], dim=1).cpu().numpy()
    return out


def ivf_neighbours(
    queries: ArrayLike,
    targets: ArrayLike,
    k: int,
    *,
    metric: str = "cosine",
    seed: int | None = 0,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    norms: tuple[np.ndarray, np.ndarray],
    n_lists: int | None = None,
    n_probe: int = 4,
    pca_dim: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate ``k`` most similar targets of every query (see the module docstring).

    ``k`` (``1 <= k < N``) and ``norms`` are checked by the caller
    (:func:`~hardbatch.similarity.search.search_neighbours`). Returns ``ids`` (int32, int64
    beyond 2³¹ rows) and ``sims`` (float32), each of shape (N, k), best first, own positive
    excluded.
    """
    n, d = int(queries.shape[0]), int(queries.shape[1])
    dev = resolve_device(device)
    n_probe = check_positive_int(n_probe, "n_probe")
    pca_dim = min(check_positive_int(pca_dim, "pca_dim"), d)
    n_lists = (
        math.ceil(2 * math.sqrt(n)) if n_lists is None else check_positive_int(n_lists, "n_lists")
    )
    n_lists = max(1, min(n_lists, n // 4))
    # Enough candidates that near-ties at rank k are still found (recall at deep ranks).
    min_candidates = min(n, max(16 * k, 2048))
    if k + 1 > min_candidates:
        min_candidates = n
    q_inv, t_inv = inv_norms(norms[0], metric), inv_norms(norms[1], metric)
    rng = np.random.default_rng(seed)
    seed_int = int(rng.integers(2**31 - 1))

    # 1-2. PCA basis and k-means centroids from a seeded sample of targets.
    mean, basis = _pca_basis(targets, t_inv, dev, n, d, pca_dim, rng)
    train_rows = np.sort(rng.choice(n, size=min(n, 32 * n_lists), replace=False))
    train = ((normalized_rows(targets, train_rows, t_inv, dev) - mean) @ basis).cpu().numpy()
    centroids = seeded_kmeans(train, n_lists, niter=10, seed=seed_int)
    del train
    centroids = torch.from_numpy(centroids).to(dev)
    centroids_t = (2.0 * centroids.T, (centroids * centroids).sum(1))
    t_list = _assign(targets, t_inv, dev, n, mean, basis, centroids_t)
    q_list = _assign(queries, q_inv, dev, n, mean, basis, centroids_t)

    # Targets sorted by list in one float32 copy, so a list's candidates are slices.
    t_order = np.argsort(t_list, kind="stable")
    t_bounds = np.searchsorted(t_list[t_order], np.arange(n_lists + 1))
    t_sorted = torch.empty((n, d), dtype=torch.float32, device=dev)
    for start in range(0, n, STREAM_ROWS):
        chunk = t_order[start : start + STREAM_ROWS]
        perm = np.argsort(chunk)  # read rows in increasing id order (memmaps)
        block = normalized_rows(targets, chunk[perm], t_inv, dev)
        t_sorted[torch.from_numpy(start + perm).to(dev)] = block
    t_order_t = torch.from_numpy(t_order).to(dev)

    # Lists nearest to every list's centroid (itself first), in the projected space.
    centroid_sims = centroids @ centroids.T
    probe_order = torch.argsort(centroid_sims, dim=1, descending=True, stable=True).cpu().numpy()
    t_sizes = np.diff(t_bounds)

    q_order = np.argsort(q_list, kind="stable")
    q_bounds = np.searchsorted(q_list[q_order], np.arange(n_lists + 1))
    ids = np.empty((n, k), dtype=index_dtype(n))
    sims = np.empty((n, k), dtype=np.float32)

    def scan(c: int) -> None:
        q_rows = q_order[q_bounds[c] : q_bounds[c + 1]]
        if q_rows.size == 0:
            return
        # Probe n_probe lists, more until there are min_candidates (>= k + 1: the positive).
        cum = np.cumsum(t_sizes[probe_order[c]])
        n_lists_probed = max(n_probe, int(np.searchsorted(cum, min_candidates)) + 1)
        probed = probe_order[c, :n_lists_probed]
        cand_pos = torch.cat(
            [torch.arange(t_bounds[j], t_bounds[j + 1], device=dev) for j in probed]
        )
        cand_ids = t_order_t[cand_pos]
        q_sorted = np.sort(q_rows)  # sorted ids read a memmap sequentially
        sim = normalized_rows(queries, q_sorted, q_inv, dev) @ t_sorted[cand_pos].T
        q_ids = torch.from_numpy(q_sorted).to(dev)
        # k + 1 best, then drop the own positive where it is among them (else the last):
        # cheaper than masking the positive in the full (rows × candidates) block.
        top_vals, top_pos = torch.topk(sim, k + 1, dim=1, largest=True, sorted=True)
        top_ids = cand_ids[top_pos]
        drop = top_ids == q_ids[:, None]
        drop[:, -1] |= ~drop.any(dim=1)
        keep = ~drop
        top_vals, top_ids = top_vals[keep].view(-1, k), top_ids[keep].view(-1, k)
        ids[q_sorted] = top_ids.cpu().numpy()
        sims[q_sorted] = top_vals.cpu().numpy()

    bar = tqdm(
        total=n_lists,
        desc="ivf neighbours",
        unit="list",
        disable=not show_progress(progress, n, d),
        leave=False,
    )
    if dev.type == "cuda":
        for c in range(n_lists):
            scan(c)
            bar.update()
    else:
        # A list's ops are small (hundreds of rows): torch's intra-op threads spent more time
        # synchronising than computing (54 s vs 12 s single-threaded at N = 100k). Instead one
        # single-threaded torch per worker thread, lists spread over the threads (torch
        # releases the GIL); every list writes its own rows, so the result is deterministic.
        workers = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for _ in pool.map(scan, range(n_lists)):
                    bar.update()
        finally:
            torch.set_num_threads(workers)
    bar.close()
    return ids, sims


def neighbour_recall(
    queries: ArrayLike,
    targets: ArrayLike,
    ids: np.ndarray,
    *,
    n_rows: int = 1000,
    seed: int | None = 0,
    metric: str = "cosine",
    device: str | torch.device | None = None,
    norms: tuple[np.ndarray, np.ndarray] | None = None,
) -> float:
    """Recall@k of neighbour lists against the exact search, on a seeded sample of rows.

    Parameters
    ----------
    queries, targets : array-like of shape (N, d)
    ids : np.ndarray of shape (N, k)
        Neighbour ids to score (e.g. from :func:`ivf_neighbours`).
    n_rows : int
        Sampled query rows (all when ``N <= n_rows``); costs ``n_rows·N·d``.
    seed, metric, device, norms : as for :func:`ivf_neighbours`.

    Returns
    -------
    float
        Mean over the sampled rows of ``|ids[i] ∩ exact_top_k(i)| / k``.
    """
    ids = np.asarray(ids)
    if norms is None:
        norms = check_pair(queries, targets)
    n = int(queries.shape[0])
    if ids.ndim != 2 or ids.shape[0] != n:
        raise ValueError(f"ids must have shape (N={n}, k), got {ids.shape}")
    k = ids.shape[1]
    n_rows = check_positive_int(n_rows, "n_rows")
    rows = (
        np.arange(n)
        if n <= n_rows
        else np.sort(np.random.default_rng(seed).choice(n, size=n_rows, replace=False))
    )
    exact = exact_rows_top_k(queries, targets, rows, k, metric=metric, device=device, norms=norms)
    found = ids[rows].astype(np.int64)
    pairs = zip(found, exact, strict=True)
    hits = sum(np.intersect1d(a, b, assume_unique=True).size for a, b in pairs)
    return float(hits / (rows.size * k))
