"""Per-row top-k neighbours, exact or approximate, behind one dispatch: :func:`neighbours`.

Every method that searches neighbours (GCBS's top-k / quantile rows, B3's rank windows) asks
:func:`neighbours` for the ``k`` most similar targets of every query (its own positive
excluded), best first. ``backend`` picks how:

* ``"exact"`` — the blocked ``X·Yᵀ`` matmul of :class:`~hardbatch.similarity.SimilarityBlocks`
  plus ``torch.topk``: ``N·N·d`` multiply-adds (1.5e15 at N = 1M, d = 768: hours on a CPU).
* ``"faiss"`` — an inverted-file (IVF) search with *list-level probing* (optional extra
  ``hardbatch[faiss]``):

  1. a seeded PCA to ``pca_dim`` (128) dimensions, fitted on a sample of targets;
  2. FAISS k-means (``faiss.Kmeans``, seeded, on one thread so the result does not depend
     on the thread count) of a sample of projected
     targets into ``n_lists`` lists (default ``2·sqrt(N)``); every target and every query is
     assigned to its nearest centroid in the projected space (blocked matmul);
  3. for each list ``c``: its queries are scored *exactly* (full dimension, float32) against the
     targets of the ``n_probe`` lists whose centroids are nearest to centroid ``c`` (more lists
     are added until there are ``max(16·k, 2048)`` candidates: near-ties at deep ranks need
     them), one BLAS matmul per list, then
     ``torch.topk``.

  Cost ``N·(2·n_lists·pca_dim + n_probe·N/n_lists·d)``, about 2e12 at N = 1M (a few minutes
  on 2 cores) instead of 1.5e15. Why not ``faiss.IndexIVFFlat``: its per-query scan ran at
  ~2e9 multiply-adds/s on this 2-core machine (1500 s for 1M queries at the same recall), the
  per-list matmul at ~2e10. Probing per list (the probe set is shared by all queries of a list)
  instead of per query loses a little recall at list borders; ``n_probe`` buys it back.
  Memory: one float32 copy of the normalised targets sorted by list (``4·N·d`` bytes, as the
  exact path), the ``(N, k)`` result, and ``O(N·pca_dim)`` for the projections; inputs
  (float16 / ``.npy`` memmaps) are read in row blocks.
* ``"auto"`` — ``"exact"`` while the exact work ``N·N·d`` is at most :data:`AUTO_EXACT_WORK`
  (1e12 multiply-adds, about 30-60 s on a 2-core CPU; ×100 with CUDA), else ``"faiss"`` when
  FAISS is importable, else ``"exact"`` with a warning.

:func:`neighbour_recall` measures recall@k of any result against the exact search on a seeded
sample of query rows (exact rows cost ``n_rows·N·d``).
"""

from __future__ import annotations

import math
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm.auto import tqdm

from .._torch import normalized_rows, resolve_device
from ..validation import ArrayLike, check_pair, check_positive_int
from .exact import _inv_norms, exact_neighbours, show_progress
from .sparse import neighbour_graph  # noqa: F401  (re-exported: its historical home)

BACKENDS = ("exact", "faiss", "auto")

#: ``"auto"`` uses the exact search while ``N·N·d`` stays below this many multiply-adds
#: (CPU; ×100 on CUDA, where the exact matmul runs at tens of TFLOP/s).
AUTO_EXACT_WORK = 1e12

#: GCBS's quantile rule with FAISS keeps at most this many approximate neighbours per row
#: (the exact rule has no per-row bound; see :class:`hardbatch.methods.gcbs.GCBS`).
QUANTILE_ROW_CAP = 128

#: Rows per block when reading / projecting / assigning inputs.
_STREAM_ROWS = 16384


def faiss_available() -> bool:
    """Whether the optional FAISS dependency can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def check_backend(backend: str) -> str:
    """``backend`` must be one of :data:`BACKENDS`."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def resolve_backend(
    backend: str, n_samples: int, dim: int, device: str | torch.device | None = None
) -> str:
    """The concrete backend (``"exact"`` or ``"faiss"``) for a search of ``N×N×d``.

    ``"faiss"`` without FAISS installed is a ``ValueError``; ``"auto"`` falls back to exact
    with a ``RuntimeWarning`` (see the module docstring for the rule).
    """
    check_backend(backend)
    if backend == "exact":
        return "exact"
    if backend == "faiss":
        if not faiss_available():
            raise ValueError(
                "backend='faiss' needs the faiss package: pip install 'hardbatch[faiss]'"
            )
        return "faiss"
    budget = AUTO_EXACT_WORK * (100.0 if resolve_device(device).type == "cuda" else 1.0)
    if float(n_samples) * n_samples * dim <= budget:
        return "exact"
    if faiss_available():
        return "faiss"
    warnings.warn(
        f"backend='auto': the exact search of N={n_samples}, d={dim} is large "
        f"({float(n_samples) ** 2 * dim:.2g} multiply-adds) and faiss is not installed; "
        "running exact (pip install 'hardbatch[faiss]' for the approximate search)",
        RuntimeWarning,
        stacklevel=2,
    )
    return "exact"


def neighbours(
    queries: ArrayLike,
    targets: ArrayLike,
    k: int,
    *,
    backend: str = "auto",
    metric: str = "cosine",
    seed: int | None = 0,
    device: str | torch.device | None = None,
    block_rows: int | None = None,
    progress: bool | None = None,
    norms: tuple[np.ndarray, np.ndarray] | None = None,
    n_lists: int | None = None,
    n_probe: int = 4,
    pca_dim: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar targets of every query, best first, its own positive excluded.

    Parameters
    ----------
    queries, targets : array-like of shape (N, d)
        Paired embeddings (numpy, memmap or torch; float16/32/64). Row ``i`` of the targets is
        the positive of query ``i`` and never one of its neighbours.
    k : int
        Neighbours per row, ``1 <= k < N``.
    backend : {"auto", "exact", "faiss"}
        See the module docstring.
    metric : {"cosine", "dot"}
    seed : int or None
        Seeds the PCA sample and k-means (faiss backend); the exact backend is deterministic.
    device, block_rows : see :class:`~hardbatch.similarity.SimilarityBlocks` (exact backend and
        the matmuls of the faiss backend).
    progress : bool or None
        Progress bar; ``None`` shows it when the work takes seconds.
    norms : tuple of arrays, optional
        Precomputed row norms of queries and targets.
    n_lists, n_probe, pca_dim : faiss backend
        Inverted lists (default ``ceil(2·sqrt(N))``), lists probed per list, PCA dimension.

    Returns
    -------
    ids : np.ndarray of shape (N, k), int32 (int64 beyond 2³¹ rows)
        ``ids[i, r]`` is the target of rank ``r`` for query ``i``; never ``i``.
    sims : np.ndarray of shape (N, k), float32
        Their similarities, non-increasing along a row.
    """
    if norms is None:
        norms = check_pair(queries, targets)
    n, d = int(queries.shape[0]), int(queries.shape[1])
    k = check_positive_int(k, "k")
    if k >= n:
        raise ValueError(f"k={k} must be smaller than N={n} (a row has N-1 other targets)")
    if resolve_backend(backend, n, d, device) == "exact":
        return exact_neighbours(
            queries, targets, k, metric=metric, device=device, block_rows=block_rows,
            progress=progress, norms=norms,
        )  # fmt: skip
    return _ivf_neighbours(
        queries, targets, k, metric=metric, seed=seed, device=device, progress=progress,
        norms=norms, n_lists=n_lists, n_probe=n_probe, pca_dim=pca_dim,
    )  # fmt: skip


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


def _index_dtype(n: int) -> type:
    return np.int32 if n < 2**31 else np.int64


def _stream(a: ArrayLike, inv: np.ndarray | None, dev: torch.device, n: int):
    """Yield ``(slice, normalised float32 rows)`` blocks of an input array."""
    for start in range(0, n, _STREAM_ROWS):
        sl = slice(start, min(start + _STREAM_ROWS, n))
        yield sl, normalized_rows(a, sl, inv, dev)


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
    for sl, rows in _stream(a, inv, dev, n):
        proj = (rows - mean) @ basis
        # argmax of 2·x·c - |c|² is the nearest centroid in Euclidean distance.
        out[sl] = torch.argmax(proj @ centroids_t[0] - centroids_t[1], dim=1).cpu().numpy()
    return out


def _ivf_neighbours(
    queries, targets, k, *, metric, seed, device, progress, norms, n_lists, n_probe, pca_dim
):  # fmt: skip
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
    q_inv, t_inv = _inv_norms(norms[0], metric), _inv_norms(norms[1], metric)
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
    for start in range(0, n, _STREAM_ROWS):
        chunk = t_order[start : start + _STREAM_ROWS]
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
    ids = np.empty((n, k), dtype=_index_dtype(n))
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
        Neighbour ids to score (e.g. from :func:`neighbours` with ``backend="faiss"``).
    n_rows : int
        Sampled query rows (all when ``N <= n_rows``); costs ``n_rows·N·d``.
    seed, metric, device, norms : as for :func:`neighbours`.

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
    q = normalized_rows(queries, rows, _inv_norms(norms[0], metric), dev)
    t_inv = _inv_norms(norms[1], metric)
    best_vals = torch.full((rows.size, k), -math.inf, device=dev)
    best_ids = torch.zeros((rows.size, k), dtype=torch.int64, device=dev)
    rows_t = torch.from_numpy(rows).to(dev)
    for sl, t in _stream(targets, t_inv, dev, n):
        sim = q @ t.T
        cols = torch.arange(sl.start, sl.stop, device=dev)
        sim.masked_fill_(rows_t[:, None] == cols[None, :], -math.inf)
        vals = torch.cat([best_vals, sim], dim=1)
        cand = torch.cat([best_ids, cols.expand(rows.size, -1)], dim=1)
        best_vals, pos = torch.topk(vals, k, dim=1)
        best_ids = torch.gather(cand, 1, pos)
    return best_ids.cpu().numpy()
