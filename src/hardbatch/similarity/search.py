"""Per-row top-k neighbours, exact or approximate, behind one entry point.

Every method that searches neighbours (GCBS's top-k / quantile rows, B3's rank windows) asks
:func:`search_neighbours` for the ``k`` most similar targets of every query (its own positive
excluded), best first, with one :class:`SearchSettings`. ``settings.backend`` picks how:

* ``"exact"`` — the blocked ``X·Yᵀ`` matmul of :class:`~hardbatch.similarity.SimilarityBlocks`
  plus ``torch.topk`` (:func:`~hardbatch.similarity.exact.exact_neighbours`): ``N·N·d``
  multiply-adds (1.5e15 at N = 1M, d = 768: hours on a CPU).
* ``"faiss"`` — the inverted-file search of :mod:`hardbatch.similarity.approximate` (optional
  extra ``hardbatch[faiss]``), about 2e12 at N = 1M; its recall@k against the exact search is
  measured on a seeded sample of ``recall_rows`` rows and its probe widened until it meets
  ``settings.recall`` (0.95 by default).
* ``"auto"`` — ``"exact"`` while the exact work ``N·N·d`` is at most :data:`AUTO_EXACT_WORK`
  (1e12 multiply-adds, about 30-60 s on a 2-core CPU; ×100 with CUDA), else ``"faiss"`` when
  FAISS is importable, else ``"exact"`` with a warning.

:func:`knn_graph` is the search as a directed sparse graph.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from .._torch import resolve_device
from ..validation import ArrayLike, check_pair, check_positive_int
from ._common import METRICS
from .approximate import check_recall_target, ivf_search
from .exact import SimilarityBlocks, exact_neighbours
from .sparse import neighbour_graph

BACKENDS = ("exact", "faiss", "auto")

#: ``"auto"`` uses the exact search while ``N·N·d`` stays below this many multiply-adds
#: (CPU; ×100 on CUDA, where the exact matmul runs at tens of TFLOP/s).
AUTO_EXACT_WORK = 1e12


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


@dataclass(frozen=True)
class SearchSettings:
    """How :func:`search_neighbours` searches (the same for every call of one plan).

    Parameters
    ----------
    backend : {"auto", "exact", "faiss"}
        See the module docstring.
    metric : {"cosine", "dot"}
    device : str or torch.device, optional
        Where the matmuls run (default CUDA when available).
    block_rows : int, optional
        Query rows per exact matmul block (default ~256 MiB blocks).
    progress : bool or None
        Progress bars; ``None`` shows them when the work takes seconds.
    n_lists, n_probe, pca_dim : faiss backend
        Inverted lists (default ``ceil(2·sqrt(N))``), lists probed per list, PCA dimension.
    recall : float in (0, 1] or None
        With FAISS: the recall@k target. The search measures recall on ``recall_rows`` sampled
        query rows against their exact top-k and widens its probe (more candidates per
        list, ×1.5 a step) until the target holds or ``max_widen`` is reached (then a
        ``RuntimeWarning`` names the recall reached); see
        :func:`~hardbatch.similarity.approximate.ivf_search`. ``None``: the fixed probe
        (``n_probe`` lists, ``max(16·k, 2048)`` candidates). Default 0.95 (README "Recall").
    recall_rows : int
        With FAISS: query rows sampled to measure recall@k against the exact search (costs
        ``recall_rows·N·d``); 0 skips it (only with ``recall=None``).
    max_widen : float >= 1
        With FAISS and a recall target: the widest probe, as a multiple of the base
        candidates ``max(16·k, 2048)``; the scan time grows in proportion, so this is the time
        cap, counted in work rather than seconds so that plans do not depend on the machine.
    """

    backend: str = "auto"
    metric: str = "cosine"
    device: str | torch.device | None = None
    block_rows: int | None = None
    progress: bool | None = None
    n_lists: int | None = None
    n_probe: int = 4
    pca_dim: int = 128
    recall: float | None = 0.95
    recall_rows: int = 256
    max_widen: float = 8.0

    def __post_init__(self) -> None:
        check_backend(self.backend)
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        check_positive_int(self.recall_rows, "recall_rows", minimum=0)
        if self.recall is not None:
            check_recall_target(self.recall, self.recall_rows, self.max_widen)

    def resolved(self, n_samples: int, dim: int) -> SearchSettings:
        """These settings with the concrete backend for ``N×N×d`` (see
        :func:`resolve_backend`); resolving again does not warn again."""
        backend = resolve_backend(self.backend, n_samples, dim, self.device)
        return dataclasses.replace(self, backend=backend)


@dataclass
class Neighbours:
    """Result of :func:`search_neighbours`.

    Attributes
    ----------
    ids : np.ndarray of shape (N, k), int32 (int64 beyond 2³¹ rows)
        ``ids[i, r]`` is the target of rank ``r`` for query ``i``; never ``i``.
    sims : np.ndarray of shape (N, k), float32
        Their similarities, non-increasing along a row.
    info : dict
        ``{"backend": "exact" | "faiss"}``; with FAISS also the probe (``"candidates"`` per
        list, mean ``"lists_probed"`` per query, ``"n_lists"``), with a recall target
        ``"recall_target"`` and ``"widen_steps"``, and with ``recall_rows`` ``"recall"``
        (recall@k of the result on the sample) and ``"recall_rows"``. JSON-ready (a plan's
        ``info``).
    """

    ids: np.ndarray
    sims: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def search_neighbours(
    queries: ArrayLike,
    targets: ArrayLike,
    k: int,
    settings: SearchSettings | None = None,
    *,
    seed: int | None = 0,
    norms: tuple[np.ndarray, np.ndarray] | None = None,
    blocks: SimilarityBlocks | None = None,
) -> Neighbours:
    """The ``k`` most similar targets of every query, best first, its own positive excluded.

    Parameters
    ----------
    queries, targets : array-like of shape (N, d)
        Paired embeddings (numpy, memmap or torch; float16/32/64). Row ``i`` of the targets is
        the positive of query ``i`` and never one of its neighbours.
    k : int
        Neighbours per row, ``1 <= k < N``.
    settings : SearchSettings, optional
        Backend and its knobs (default ``SearchSettings()``: ``"auto"``, cosine).
    seed : int or None
        Seeds the faiss backend (PCA sample, k-means) and its recall sample; the exact
        backend is deterministic.
    norms : tuple of arrays, optional
        Precomputed row norms of queries and targets.
    blocks : SimilarityBlocks, optional
        Prepared targets for the exact backend (their metric, device and block rows apply).

    Returns
    -------
    Neighbours
        ``ids``, ``sims`` and the search ``info``.
    """
    settings = SearchSettings() if settings is None else settings
    if norms is None and blocks is None:
        norms = check_pair(queries, targets)
    if blocks is not None:
        n, d = blocks.n_samples, blocks.dim
    else:
        n, d = int(queries.shape[0]), int(queries.shape[1])
    k = check_positive_int(k, "k")
    if k >= n:
        raise ValueError(f"k={k} must be smaller than N={n} (a row has N-1 other targets)")
    backend = resolve_backend(settings.backend, n, d, settings.device)
    info: dict[str, Any] = {"backend": backend}
    if backend == "exact":
        ids, sims = exact_neighbours(
            queries, targets, k, metric=settings.metric, device=settings.device,
            block_rows=settings.block_rows, progress=settings.progress, norms=norms,
            blocks=blocks,
        )  # fmt: skip
        return Neighbours(ids, sims, info)
    if norms is None:  # prepared blocks, but the approximate search reads the inputs
        norms = check_pair(queries, targets)
    ids, sims, found = ivf_search(
        queries, targets, k, metric=settings.metric, seed=seed, device=settings.device,
        progress=settings.progress, norms=norms, n_lists=settings.n_lists,
        n_probe=settings.n_probe, pca_dim=settings.pca_dim, recall=settings.recall,
        recall_rows=settings.recall_rows, max_widen=settings.max_widen,
    )  # fmt: skip
    info.update(found)
    return Neighbours(ids, sims, info)


def knn_graph(
    queries: ArrayLike,
    targets: ArrayLike,
    k: int,
    *,
    metric: str = "cosine",
    values: bool = True,
    device: str | torch.device | None = None,
    block_rows: int | None = None,
    progress: bool | None = None,
    blocks: SimilarityBlocks | None = None,
    backend: str = "exact",
) -> sp.csr_matrix:
    """Directed graph of the ``k`` most similar targets of every query (itself excluded).

    Parameters
    ----------
    queries, targets : array-like of shape (N, d)
    k : int
        Neighbours per row, ``1 <= k < N``.
    metric, values, device, block_rows, progress, blocks : see
        :func:`~hardbatch.similarity.exact.threshold_graph`.
    backend : {"exact", "faiss", "auto"}
        Neighbour search (:func:`search_neighbours`); ``blocks`` is only used by the exact
        search.

    Returns
    -------
    scipy.sparse.csr_matrix of shape (N, N)
        Exactly ``k`` entries per row, sorted by column index, no diagonal.
    """
    settings = SearchSettings(
        backend=backend, metric=metric, device=device, block_rows=block_rows, progress=progress
    )
    found = search_neighbours(queries, targets, k, settings, blocks=blocks)
    return neighbour_graph(found.ids, found.sims, values=values)
