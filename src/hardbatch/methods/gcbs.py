"""GCBS — Global Contrastive Batch Sampling (Sachidananda et al., ICML 2023).

Stages: exact similarity graph (global quantile threshold, or per-row top-k) → symmetrise →
reverse Cuthill–McKee order → cut into consecutive batches. Meant to be re-run each epoch on
the current model's embeddings (see the sampler); a plan is one epoch.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from ..batching import cut_order
from ..plan import BatchPlan
from ..similarity import (
    SimilarityBlocks,
    estimate_threshold,
    knn_graph,
    symmetrize,
    threshold_graph,
)
from ..similarity.exact import show_progress
from ..structure import bandwidth, rcm_order
from ..validation import check_fraction, check_positive_int
from .base import Planner, register_method


@register_method
class GCBS(Planner):
    """Batches from a bandwidth-minimising order of the hard-pair graph.

    Parameters
    ----------
    batch_size : int
        Samples per batch.
    quantile : float
        Keep off-diagonal pairs with similarity above this quantile of all N(N-1) pairs
        (the paper's ``q``; 0.999 keeps ~0.1% of pairs, i.e. ~N/1000 per row). The threshold is
        estimated from a seeded sample of ``n_threshold_pairs`` pairs (exact for N <= 1000).
    top_k : int, optional
        Use the per-row top-k rule instead of the quantile: every query keeps its ``top_k``
        most similar targets. Degree is bounded, so memory is ``O(N·top_k)`` at any N.
    seed : int or None
        Seeds the threshold sample (the rest is deterministic).
    drop_last : bool
        Leftover rule, see :mod:`hardbatch.batching`.
    metric : {"cosine", "dot"}
    n_threshold_pairs : int
        Pairs sampled to estimate the threshold.
    max_edges : int or None
        Refuse a threshold that keeps more edges than this (memory guard).
    device : str, optional
        Where the matmul runs (default CUDA when available).
    block_rows : int, optional
        Query rows per matmul block (default: ~256 MiB blocks).
    progress : bool or None
        Progress bars (``None``: only when the work takes seconds).

    Attributes
    ----------
    plan_ : BatchPlan
    threshold_ : float or None
        Similarity threshold used (``None`` with ``top_k``).
    order_ : np.ndarray of shape (N,)
        Reverse Cuthill–McKee order the batches were cut from.
    n_edges_ : int
        Directed edges (query i, target j) kept by the selection rule.
    """

    name = "gcbs"
    param_help = {
        "quantile": "similarity quantile above which pairs become graph edges (paper's q)",
        "top_k": "use per-row top-k neighbours instead of the quantile threshold",
        "metric": "similarity: cosine (default) or dot",
        "n_threshold_pairs": "pairs sampled to estimate the quantile threshold",
        "max_edges": "refuse thresholds that keep more edges than this (memory guard)",
        "device": "torch device for the matmul (default: cuda if available, else cpu)",
        "block_rows": "query rows per matmul block (default: ~256 MiB per block)",
    }

    def __init__(
        self,
        batch_size: int = 64,
        *,
        quantile: float = 0.999,
        top_k: int | None = None,
        seed: int | None = 0,
        drop_last: bool = False,
        metric: str = "cosine",
        n_threshold_pairs: int = 1_000_000,
        max_edges: int | None = 300_000_000,
        device: str | None = None,
        block_rows: int | None = None,
        progress: bool | None = None,
    ) -> None:
        super().__init__(batch_size, seed=seed, drop_last=drop_last)
        self.quantile = quantile
        self.top_k = top_k
        self.metric = metric
        self.n_threshold_pairs = n_threshold_pairs
        self.max_edges = max_edges
        self.device = device
        self.block_rows = block_rows
        self.progress = progress

    def method_params(self) -> dict:
        params = super().method_params()
        params.pop("progress")  # display only; never changes the plan
        return params

    def _plan(self, queries, targets, *, n, batch_size, seed, norms) -> BatchPlan:
        seconds: dict[str, float] = {}
        tick = time.perf_counter()
        blocks = SimilarityBlocks(
            queries,
            targets,
            metric=self.metric,
            device=self.device,
            block_rows=self.block_rows,
            norms=norms,
        )
        if self.top_k is None:
            check_fraction(self.quantile, "quantile")
            self.threshold_ = estimate_threshold(
                queries,
                targets,
                self.quantile,
                n_pairs=self.n_threshold_pairs,
                seed=seed,
                metric=self.metric,
                device=blocks.device,
                norms=norms,
            )
            graph = threshold_graph(
                queries,
                targets,
                self.threshold_,
                values=False,
                max_edges=self.max_edges,
                progress=self.progress,
                blocks=blocks,
            )
        else:
            self.threshold_ = None
            k = check_positive_int(self.top_k, "top_k")
            graph = knn_graph(
                queries, targets, k, values=False, progress=self.progress, blocks=blocks
            )
        del blocks
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        seconds["similarity"] = time.perf_counter() - tick

        tick = time.perf_counter()
        # One bar for the sparse stages: at 1e8 edges they take seconds, with no inner loop.
        show = show_progress(self.progress, n, int(queries.shape[1]))
        bar = tqdm(total=2, desc="gcbs ordering", unit="stage", disable=not show, leave=False)
        with bar:
            bar.set_postfix_str("symmetrize")
            symmetric = symmetrize(graph)
            bar.update()
            bar.set_postfix_str("reverse Cuthill-McKee")
            self.order_ = rcm_order(symmetric)
            del symmetric
            bar.update()
        seconds["ordering"] = time.perf_counter() - tick

        tick = time.perf_counter()
        batches = cut_order(self.order_, batch_size, drop_last=bool(self.drop_last))
        # Statistics over the directed pairs (query i, target j) that passed the rule.
        stats = bandwidth(graph, self.order_, batch_size)
        seconds["batching"] = time.perf_counter() - tick

        self.n_edges_ = int(graph.nnz)
        has_edge = (np.diff(graph.indptr) > 0) | (np.bincount(graph.indices, minlength=n) > 0)
        info = {
            "threshold": self.threshold_,
            "n_edges": self.n_edges_,
            "mean_degree": float(graph.nnz / n),
            "isolated": int(n - np.count_nonzero(has_edge)),
            **stats,
            "seconds": seconds,
        }
        return self._make_plan(batches, n=n, seed=seed, order=self.order_, info=info)
