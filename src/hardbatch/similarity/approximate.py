"""Approximate per-row top-k neighbours: an inverted-file (IVF) search with FAISS k-means.

The ``"faiss"`` backend of :func:`hardbatch.similarity.search.search_neighbours` (optional extra
``hardbatch[faiss]``); :func:`ivf_neighbours` does:

1. a seeded PCA to ``pca_dim`` (128) dimensions, fitted on a sample of targets;
2. FAISS k-means (``faiss.Kmeans``, seeded; the result does not depend on the thread
   count, :func:`seeded_kmeans`) of a sample of projected
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
the exact path), the ``(N, k)`` result, ``O(N·pca_dim)`` for the projections, and the probe
order: all lists for every list up to :data:`FULL_PROBE_ORDER_LISTS` lists, above that only
the nearest lists that reach the widest probe; inputs (float16 / ``.npy`` memmaps) are read
in row blocks.

Recall target (:func:`ivf_search`, the default): a fixed probe finds 0.45-0.8 of the true
neighbours depending on the data (the deep ranks of a top-130 are near-ties spread over a
whole topic), so the probe is not fixed. ``recall_rows`` seeded query rows are scored once
against every target (``recall_rows·N·d``, which also gives their exact top-k); each widening
step (×1.5 candidates per list) is then a top-k over a prefix of those scores, and the loop
stops at the first probe whose sampled recall@k meets the target, or at ``max_widen`` times
the base candidates (the scan time grows in proportion; a ``RuntimeWarning`` names the recall
reached). Where even the widest probe misses and ``n_lists`` is the default, the index is
rebuilt with 4× the lists (twice at most; its k-means trains on 32 sampled targets per list
as the first one: with 8, blobs at N = 300k needed a second rebuild, 183 s instead of 68 s)
and the loop runs again: finer lists
follow small clusters that coarse lists cut up (:func:`ivf_search`). (A two-level split of
every list into 4 by a k-means within the list was tried: seconds instead of minutes, but on
blobs at N = 300k it reached recall 0.934 at the widest probe after two splits, where the
rebuilt index meets 0.99 at the base probe: a blob cut by a coarse list boundary stays cut.)
The full scan runs once, at the chosen lists and probe; the recall reported is that of the
returned neighbours on the sample.

:func:`neighbour_recall` measures recall@k of any result against the exact search on a seeded
sample of query rows (exact rows cost ``n_rows·N·d``).
"""

from __future__ import annotations

import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .._torch import normalized_rows, resolve_device
from ..validation import ArrayLike, check_pair, check_positive_int
from ._common import STREAM_ROWS, index_dtype, inv_norms, show_progress, stream_rows
from .exact import exact_rows_top_k


def seeded_kmeans(train: np.ndarray, n_centroids: int, *, niter: int, seed: int) -> np.ndarray:
    """FAISS k-means centroids of ``train`` (shape (m, d)), reproducible for a seed.

    Returns an array of shape (n_centroids, d), float32. The same centroids on any thread
    count: FAISS's nearest-centroid search is per row, and its centroid update gives each
    thread a range of centroids and sums the rows in their order (tested: 1 and 3 threads).
    Sampling and initialisation draw from ``seed``.
    """
    import faiss

    kmeans = faiss.Kmeans(train.shape[1], n_centroids, niter=niter, seed=seed, verbose=False)
    kmeans.cp.min_points_per_centroid = 1  # small samples: no warning spam, same result
    kmeans.train(np.ascontiguousarray(train, dtype=np.float32))
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


#: Candidate growth per widening step of the recall loop (:func:`ivf_search`).
WIDEN_FACTOR = 1.5
#: Growth of the default list count per repartition of the recall loop, the repartitions
#: allowed, and the fewest targets a list keeps on average (:func:`ivf_search`).
REPARTITION_FACTOR = 4
MAX_REPARTITIONS = 2
MIN_LIST_ROWS = 16


@dataclass
class _Index:
    """The built inverted file: targets sorted by list, list of every query, probe orders."""

    dev: torch.device
    t_sorted: torch.Tensor  # (N, d) float32, normalised targets sorted by list
    t_order: torch.Tensor  # position in t_sorted -> target id
    t_bounds: np.ndarray  # (n_lists + 1,) list boundaries in t_sorted
    probe_order: np.ndarray  # (n_lists, P) lists nearest to every list (P <= n_lists)
    q_list: np.ndarray  # (N,) list of every query
    q_inv: np.ndarray | None

    @property
    def n_lists(self) -> int:
        return self.probe_order.shape[0]

    def lists_probed(self, c: int, n_probe: int, min_candidates: int) -> int:
        """Lists list ``c`` probes: ``n_probe``, more until ``min_candidates`` targets."""
        cum = np.cumsum(np.diff(self.t_bounds)[self.probe_order[c]])
        return max(n_probe, int(np.searchsorted(cum, min_candidates)) + 1)

    def scan(
        self, queries: ArrayLike, q_rows: np.ndarray, c: int, k: int, n_lists_probed: int
    ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """Exact top-``k`` of the query rows ``q_rows`` (all in list ``c``) among the targets
        of its first ``n_lists_probed`` probe lists: sorted rows, ids, similarities."""
        dev = self.dev
        probed = self.probe_order[c, :n_lists_probed]
        cand_pos = torch.cat(
            [torch.arange(self.t_bounds[j], self.t_bounds[j + 1], device=dev) for j in probed]
        )
        cand_ids = self.t_order[cand_pos]
        q_sorted = np.sort(q_rows)  # sorted ids read a memmap sequentially
        sim = normalized_rows(queries, q_sorted, self.q_inv, dev) @ self.t_sorted[cand_pos].T
        q_ids = torch.from_numpy(q_sorted).to(dev)
        # k + 1 best, then drop the own positive where it is among them (else the last):
        # cheaper than masking the positive in the full (rows × candidates) block.
        top_vals, top_pos = torch.topk(sim, k + 1, dim=1, largest=True, sorted=True)
        top_ids = cand_ids[top_pos]
        drop = top_ids == q_ids[:, None]
        drop[:, -1] |= ~drop.any(dim=1)
        keep = ~drop
        return q_sorted, top_ids[keep].view(-1, k), top_vals[keep].view(-1, k)


def _build_index(
    queries, targets, *, metric, seed, dev, norms, n_lists, pca_dim, max_candidates, n_probe
) -> _Index:
    """Steps 1-2 of the module docstring: PCA, k-means, lists of targets and queries
    (``max_candidates``: the most targets a list will probe, for a partial probe order)."""
    n, d = int(queries.shape[0]), int(queries.shape[1])
    q_inv, t_inv = inv_norms(norms[0], metric), inv_norms(norms[1], metric)
    rng = np.random.default_rng(seed)
    seed_int = int(rng.integers(2**31 - 1))

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

    probe_order = _probe_order(centroids, np.diff(t_bounds), max_candidates, n_probe)
    return _Index(
        dev, t_sorted, torch.from_numpy(t_order).to(dev), t_bounds, probe_order, q_list, q_inv
    )


#: Up to this many lists the probe order is a full (n_lists, n_lists) argsort; above, only
#: the prefix any list can need (the full order of the 32 000 lists a repartition builds at
#: N = 1M would take 12 GB).
FULL_PROBE_ORDER_LISTS = 8192


def _probe_order(
    centroids: torch.Tensor, sizes: np.ndarray, max_candidates: int, n_probe: int
) -> np.ndarray:
    """Lists nearest to every list's centroid (inner product in the projected space), best
    first: all of them up to :data:`FULL_PROBE_ORDER_LISTS` lists, else the first ``P``
    columns, ``P`` the fewest (doubling) with which every list reaches ``max_candidates``
    targets and ``n_probe`` lists."""
    n_lists = centroids.shape[0]
    if n_lists <= FULL_PROBE_ORDER_LISTS:
        sims = centroids @ centroids.T
        return torch.argsort(sims, dim=1, descending=True, stable=True).cpu().numpy()
    mean_size = max(float(sizes.mean()), 1.0)
    width = min(n_lists, max(n_probe, math.ceil(2 * max_candidates / mean_size) + 1))
    while True:
        order = np.empty((n_lists, width), dtype=np.int64)
        for start in range(0, n_lists, 1024):
            sims = centroids[start : start + 1024] @ centroids.T
            order[start : start + 1024] = torch.topk(sims, width, dim=1).indices.cpu().numpy()
        if width == n_lists or sizes[order].sum(1).min() >= max_candidates:
            return order
        width = min(n_lists, 2 * width)


def _scan_all(index, queries, k, n, n_probe, min_candidates, progress, d):
    """Step 3 for every query: (N, k) ids and similarities, and the mean lists probed."""
    q_order = np.argsort(index.q_list, kind="stable")
    q_bounds = np.searchsorted(index.q_list[q_order], np.arange(index.n_lists + 1))
    ids = np.empty((n, k), dtype=index_dtype(n))
    sims = np.empty((n, k), dtype=np.float32)
    probed = np.zeros(index.n_lists, dtype=np.int64)

    def scan(c: int) -> None:
        q_rows = q_order[q_bounds[c] : q_bounds[c + 1]]
        if q_rows.size == 0:
            return
        probed[c] = index.lists_probed(c, n_probe, min_candidates)
        q_sorted, top_ids, top_vals = index.scan(queries, q_rows, c, k, int(probed[c]))
        ids[q_sorted] = top_ids.cpu().numpy()
        sims[q_sorted] = top_vals.cpu().numpy()

    bar = tqdm(
        total=index.n_lists,
        desc="ivf neighbours",
        unit="list",
        disable=not show_progress(progress, n, d),
        leave=False,
    )
    if index.dev.type == "cuda":
        for c in range(index.n_lists):
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
                for _ in pool.map(scan, range(index.n_lists)):
                    bar.update()
        finally:
            torch.set_num_threads(workers)
    bar.close()
    sizes = np.bincount(index.q_list, minlength=index.n_lists)
    return ids, sims, float((probed * sizes).sum() / max(n, 1))


def _check_ivf(n, d, k, n_lists, n_probe, pca_dim) -> tuple[int, int, int, int]:
    """Checked ``n_lists``, ``n_probe``, ``pca_dim`` and the base candidate count."""
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
    return n_lists, n_probe, pca_dim, min_candidates


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
    """Approximate ``k`` most similar targets of every query with a fixed probe (see the
    module docstring; :func:`ivf_search` widens the probe to a recall target).

    ``k`` (``1 <= k < N``) and ``norms`` are checked by the caller
    (:func:`~hardbatch.similarity.search.search_neighbours`). Returns ``ids`` (int32, int64
    beyond 2³¹ rows) and ``sims`` (float32), each of shape (N, k), best first, own positive
    excluded.
    """
    ids, sims, _ = ivf_search(
        queries, targets, k, metric=metric, seed=seed, device=device, progress=progress,
        norms=norms, n_lists=n_lists, n_probe=n_probe, pca_dim=pca_dim, recall=None,
    )  # fmt: skip
    return ids, sims


def sample_rows(n: int, n_rows: int, seed: int | None) -> np.ndarray:
    """The seeded, sorted sample of query rows recall is measured on (all when ``N <= n_rows``)."""
    if n <= n_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=n_rows, replace=False))


def _hits(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of every row of ``exact`` found in the same row of ``found``."""
    pairs = zip(found.astype(np.int64), exact, strict=True)
    hits = sum(np.intersect1d(a, b, assume_unique=True).size for a, b in pairs)
    return float(hits / max(exact.size, 1))


def ivf_search(
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
    recall: float | None = 0.95,
    recall_rows: int = 256,
    max_widen: float = 8.0,
    repartitions: int = MAX_REPARTITIONS,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """The IVF search, widened until it meets a recall target (see the module docstring).

    With ``recall`` the exact top-``k`` of ``recall_rows`` seeded query rows is computed first
    (``recall_rows·N·d``); the same rows are then searched through the index (they see exactly
    the candidates the full scan gives them) with ``max(16·k, 2048)`` candidates per list,
    ×:data:`WIDEN_FACTOR` per step, until their recall@k reaches ``recall`` or a step would
    pass ``max_widen`` times the base candidates, i.e. about ``max_widen`` times the fixed
    probe's scan time (then a ``RuntimeWarning`` names the recall reached). One full scan
    runs at the chosen probe. The probe depends only on the data and the seed, never on the
    machine's speed, so plans stay reproducible.

    When even the widest probe misses the target and ``n_lists`` is the default, the index is
    rebuilt with :data:`REPARTITION_FACTOR` times the lists (at most ``repartitions`` times,
    lists of at least :data:`MIN_LIST_ROWS` targets on average) and the loop runs again: on
    data of many small clusters a coarse list mixes pieces of many clusters, so a point's
    neighbours are in lists near the point but not near its list's centroid, and widening the
    probe adds mostly the wrong lists; finer lists follow the clusters (blobs of 64 at N =
    300k: recall 0.80 at the widest probe with 1 096 lists, 0.99 at the base probe with 4 700).
    Data that meets the target with the default lists is searched exactly as before.
    ``recall=None``: the
    fixed probe (``n_probe`` lists, ``max(16·k, 2048)`` candidates), recall measured on
    ``recall_rows`` rows when ``recall_rows > 0``.

    Returns ``ids``, ``sims`` (as :func:`ivf_neighbours`) and a JSON-ready ``info``:
    ``recall`` / ``recall_rows`` (when measured: recall@k of the returned ids on the sample),
    ``recall_target``, ``candidates`` (targets a list is widened to), ``lists_probed``
    (mean per query), ``n_lists``, ``widen_steps``, ``repartitions`` (rebuilds with more lists).
    """
    default_lists = n_lists is None
    n, d = int(queries.shape[0]), int(queries.shape[1])
    dev = resolve_device(device)
    n_lists, n_probe, pca_dim, min_candidates = _check_ivf(n, d, k, n_lists, n_probe, pca_dim)
    recall_rows = check_positive_int(recall_rows, "recall_rows", minimum=0)
    if recall is not None:
        check_recall_target(recall, recall_rows, max_widen)
    repartitions = check_positive_int(repartitions, "repartitions", minimum=0)
    rows = sample_rows(n, recall_rows, seed) if recall_rows else None
    base_candidates = min_candidates
    cap = min(n, math.ceil(base_candidates * max_widen)) if recall is not None else min_candidates
    rebuilt = 0
    while True:
        index = _build_index(
            queries, targets, metric=metric, seed=seed, dev=dev, norms=norms, n_lists=n_lists,
            pca_dim=pca_dim, max_candidates=cap, n_probe=n_probe,
        )  # fmt: skip
        if recall is None:
            break
        min_candidates, steps = base_candidates, 0
        scores = _SampleScores(index, queries, rows, k, n_probe, cap)
        exact = scores.exact
        while True:
            reached = _hits(scores.found(min_candidates), exact)
            wider = int(math.ceil(min_candidates * WIDEN_FACTOR))
            if reached >= recall or min_candidates >= n or wider > cap:
                break
            min_candidates, steps = min(wider, n), steps + 1
        finer = min(n_lists * REPARTITION_FACTOR, n // MIN_LIST_ROWS)
        if reached >= recall or not default_lists or rebuilt >= repartitions or finer <= n_lists:
            break
        # Loud: a rebuild costs another k-means and assignment pass over the data (minutes
        # at a million rows), and the user may prefer backend="exact" or a lower target.
        warnings.warn(
            f"approximate search: recall@{k} {reached:.3f} at the widest probe with {n_lists} "
            f"lists is below the target {recall}; rebuilding the index with {finer} lists "
            "(another k-means and assignment pass over the data)",
            RuntimeWarning,
            stacklevel=3,
        )
        n_lists, rebuilt = finer, rebuilt + 1
        del index, scores
    info: dict = {"n_lists": int(n_lists)}
    if recall is not None:
        info.update(recall_target=float(recall), widen_steps=steps, repartitions=rebuilt)
    elif rows is not None:
        exact = exact_rows_top_k(queries, targets, rows, k, metric=metric, device=dev, norms=norms)
    ids, sims, lists_probed = _scan_all(index, queries, k, n, n_probe, min_candidates, progress, d)
    info.update(candidates=int(min_candidates), lists_probed=round(lists_probed, 2))
    if rows is not None:
        info.update(recall=_hits(ids[rows], exact), recall_rows=int(rows.size))
    if recall is not None and info["recall"] < recall:
        warnings.warn(
            f"approximate search: recall@{k} {info['recall']:.3f} on {rows.size} sampled rows "
            f"is below the target {recall} at the widest probe allowed ({min_candidates} "
            f"candidates per list, max_widen={max_widen}, {n_lists} lists after {rebuilt} "
            "repartitions); raise max_widen or n_lists, lower recall, or use backend='exact'",
            RuntimeWarning,
            stacklevel=3,
        )
    return ids, sims, info


def check_recall_target(recall: float, recall_rows: int, max_widen: float) -> None:
    """``recall`` in (0, 1], ``recall_rows > 0`` to measure it, ``max_widen >= 1``."""
    if isinstance(recall, bool) or not isinstance(recall, (int, float)) or not 0 < recall <= 1:
        raise ValueError(f"recall must be a number in (0, 1] or None, got {recall!r}")
    if recall_rows <= 0:
        raise ValueError("a recall target needs recall_rows > 0 rows to measure it on")
    if isinstance(max_widen, bool) or not isinstance(max_widen, (int, float)) or max_widen < 1:
        raise ValueError(f"max_widen must be a number >= 1, got {max_widen!r}")


class _SampleScores:
    """The sampled rows scored once against every candidate the widest probe gives them, so
    that each widening step of the recall loop is only a top-k over a prefix.

    A row's candidates at any probe are a prefix of its list's probe order. The rows are
    scored against all targets in blocks of rows (``rows·N·d``), which also gives their exact
    top-k (``exact``, the reference), and each keeps the scores of its widest candidate
    prefix (at most ``cap`` plus one list): one large matmul instead of thousands of tiny
    ones."""

    def __init__(self, index: _Index, queries, rows, k, n_probe, cap) -> None:
        self.index, self.rows, self.k, self.n_probe = index, rows, k, n_probe
        lists = index.q_list[rows]
        bounds = index.t_bounds
        positions: dict[int, tuple[torch.Tensor, np.ndarray]] = {}
        for c in np.unique(lists).tolist():
            probed = index.probe_order[c, : index.lists_probed(c, n_probe, cap)]
            pos = torch.cat(
                [torch.arange(bounds[j], bounds[j + 1], device=index.dev) for j in probed]
            )
            positions[c] = (pos, np.cumsum(np.diff(bounds)[probed]))
        self.scores: list[tuple[int, torch.Tensor]] = []
        self.exact = np.empty((rows.size, k), dtype=np.int64)
        for start in range(0, rows.size, 32):
            chunk = rows[start : start + 32]
            sims = normalized_rows(queries, chunk, index.q_inv, index.dev) @ index.t_sorted.T
            own = index.t_order[None, :] == torch.from_numpy(chunk).to(index.dev)[:, None]
            top = torch.topk(sims.masked_fill(own, -math.inf), k, dim=1).indices
            self.exact[start : start + chunk.size] = index.t_order[top].cpu().numpy()
            for i, c in enumerate(lists[start : start + 32].tolist()):
                self.scores.append((c, sims[i, positions[c][0]]))
        # Target ids of every list's candidates, shared by the sampled rows of that list.
        self.cands = {c: index.t_order[pos] for c, (pos, _) in positions.items()}
        self.cums = {c: cum for c, (_, cum) in positions.items()}

    def found(self, min_candidates: int) -> np.ndarray:
        """Top-``k`` of every sampled row at the probe of ``min_candidates``, (rows, k)."""
        k = self.k
        out = np.empty((self.rows.size, k), dtype=np.int64)
        widths = {
            c: int(cum[self.index.lists_probed(c, self.n_probe, min_candidates) - 1])
            for c, cum in self.cums.items()
        }
        for r, (c, sims) in enumerate(self.scores):
            top_ids = self.cands[c][torch.topk(sims[: widths[c]], k + 1, sorted=True).indices]
            top_ids = top_ids[top_ids != int(self.rows[r])][:k]  # own positive, else the last
            out[r] = top_ids.cpu().numpy()
        return out


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
    rows = sample_rows(n, n_rows, seed)
    exact = exact_rows_top_k(queries, targets, rows, k, metric=metric, device=device, norms=norms)
    return _hits(ids[rows], exact)
