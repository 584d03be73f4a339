"""GCBS — Global Contrastive Batch Sampling (Sachidananda et al., ICML 2023).

Stages: exact similarity graph (global quantile threshold, or per-row top-k) → symmetrise →
reverse Cuthill–McKee order → cut into consecutive batches. Meant to be re-run each epoch on
the current model's embeddings (see the sampler); a plan is one epoch.
"""

from __future__ import annotations

import math
import time
import warnings
from functools import partial

import numpy as np
import torch
from tqdm.auto import tqdm

from ..batching import cut_order
from ..hardness import HardnessGraph, HardnessSchedule
from ..plans import BatchPlan
from ..similarity import (
    DEFAULT_NEIGHBOURS,
    SearchSettings,
    SimilarityBlocks,
    default_quantile,
    estimate_threshold,
    neighbour_graph,
    search_neighbours,
    symmetrize,
    threshold_graph,
)
from ..similarity._common import METRICS, show_progress
from ..similarity.search import BACKENDS
from ..structure import bandwidth, rcm_order
from ..validation import (
    check_choice,
    check_device,
    check_fraction,
    check_optional_bool,
    check_optional_positive_int,
    check_positive_int,
    n_rows,
)
from .base import Planner, register_method

#: The quantile rule with FAISS keeps at most this many approximate neighbours per row (the
#: exact rule has no per-row bound).
QUANTILE_ROW_CAP = 128

#: Pairs above the sampled threshold that the default rule wants in its sample (the sample
#: grows with N so that the threshold stays estimated from at least this many).
_DEFAULT_PAIRS_ABOVE = 200


def _check_optional_fraction(value, name: str):
    """``None`` (the default rule) or a number in (0, 1)."""
    return None if value is None else check_fraction(value, name)


@register_method
class GCBS(Planner):
    """Batches from a bandwidth-minimising order of the hard-pair graph.

    Parameters
    ----------
    batch_size : int
        Samples per batch.
    quantile : float, optional
        Keep off-diagonal pairs with similarity above this quantile of all N(N-1) pairs
        (the paper's ``q``; 0.999 keeps ~0.1% of pairs, i.e. ~N/1000 per row). The threshold is
        estimated from a seeded sample of ``n_threshold_pairs`` pairs (exact for N <= 1000).
        Default (``None`` with no ``top_k``): derived from N so that a row keeps about
        :data:`DEFAULT_NEIGHBOURS` (16) pairs, ``q = 1 - 16/(N - 1)``
        (:func:`default_quantile`); the value used is ``plan.info["quantile"]``. A fixed ``q``
        keeps ``(1 - q)·N`` pairs per row: too few at small N (isolated samples, near-random
        batches), too many at large N (a blurred order).
    top_k : int, optional
        Use the per-row top-k rule instead of the quantile: every query keeps its ``top_k``
        most similar targets. Degree is bounded, so memory is ``O(N·top_k)`` at any N.
        Give ``quantile`` or ``top_k``, not both.
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
    backend : {"auto", "exact", "faiss"}
        Neighbour search (:mod:`hardbatch.similarity.search`): ``"auto"`` is exact while
        ``N·N·d <= 1e12``, else FAISS IVF. With FAISS the quantile rule becomes approximate:
        every row keeps its ``min(ceil((1 - quantile)·(N - 1)), 128)`` approximate nearest
        targets that lie above the (same, sampled) threshold; a row with more pairs above the
        threshold than that cap keeps only its best (the exact rule has no per-row bound).
        ``top_k`` is searched as is.
    recall_rows : int
        With FAISS: query rows sampled to measure recall@k against the exact search
        (``plan.info["search"]["recall"]``; costs ``recall_rows·N·d``); 0 skips it.
    hardness : "auto", float or HardnessSchedule
        The hardness dial (:class:`~hardbatch.Planner`). ``"auto"`` (default) picks it from
        the data: 1 when few random pairs are teacher-suspect (code search, planted groups),
        down to 0.5 when many are (:mod:`hardbatch.hardness`; the choice is in
        ``plan.info["hardness"]["auto"]``). 1 is the plan above, 0 a
        random plan; between, each batch keeps the first ``round(h·B)`` samples of its run
        of the RCM order and is filled at random. Re-planned epochs use the schedule's value
        of their epoch.
    recall : float in (0, 1] or None
        With FAISS: recall@k target; the probe widens until the sampled recall meets it
        (:class:`~hardbatch.similarity.search.SearchSettings`); ``None``: fixed probe.

    Attributes
    ----------
    plan_ : BatchPlan
    quantile_ : float or None
        Quantile used (the given one, or the default derived from N; ``None`` with ``top_k``).
    threshold_ : float or None
        Similarity threshold used (``None`` with ``top_k``).
    order_ : np.ndarray of shape (N,)
        Reverse Cuthill–McKee order the batches were cut from.
    n_edges_ : int
        Directed edges (query i, target j) kept by the selection rule.
    """

    name = "gcbs"
    replans_each_epoch = True
    param_help = {
        "quantile": "similarity quantile above which pairs become graph edges (paper's q; "
        "default: 1 - 16/(N-1), about 16 pairs per row)",
        "top_k": "use per-row top-k neighbours instead of the quantile threshold",
        "metric": "similarity: cosine (default) or dot",
        "n_threshold_pairs": "pairs sampled to estimate the quantile threshold",
        "max_edges": "refuse thresholds that keep more edges than this (memory guard)",
        "device": "torch device for the matmul (default: cuda if available, else cpu)",
        "block_rows": "query rows per matmul block (default: ~256 MiB per block)",
        "backend": "neighbour search: auto (default), exact or faiss (approximate IVF)",
        "recall_rows": "faiss backend: rows sampled to measure recall vs exact (0 = skip)",
        "hardness": "hardness dial: auto (default: from the teacher-suspect share of random "
        "pairs) or a number in [0, 1]: 1 = the method's batches, 0 = random, between = each "
        "batch keeps that share and is filled at random; decay:E = 1 at epoch 0 down to 0 "
        "(random) at epoch E - 1 (HardnessSchedule.decay)",
        "recall": "faiss backend: recall@k target the probe is widened to (none = fixed probe)",
    }

    param_checks = {
        "quantile": _check_optional_fraction,
        "top_k": check_optional_positive_int,
        "metric": partial(check_choice, choices=METRICS),
        "n_threshold_pairs": check_positive_int,
        "max_edges": check_optional_positive_int,
        "device": check_device,
        "block_rows": check_optional_positive_int,
        "progress": check_optional_bool,
        "backend": partial(check_choice, choices=BACKENDS),
        "recall_rows": partial(check_positive_int, minimum=0),
    }

    def __init__(
        self,
        batch_size: int = 64,
        *,
        quantile: float | None = None,
        top_k: int | None = None,
        seed: int | None = 0,
        drop_last: bool = False,
        metric: str = "cosine",
        n_threshold_pairs: int = 1_000_000,
        max_edges: int | None = 300_000_000,
        device: str | None = None,
        block_rows: int | None = None,
        progress: bool | None = None,
        backend: str = "auto",
        recall_rows: int = 256,
        hardness: float | HardnessSchedule | str = "auto",
        recall: float | None = 0.95,
    ) -> None:
        super().__init__(batch_size, seed=seed, drop_last=drop_last, hardness=hardness)
        self.quantile = quantile
        self.top_k = top_k
        self.metric = metric
        self.n_threshold_pairs = n_threshold_pairs
        self.max_edges = max_edges
        self.device = device
        self.block_rows = block_rows
        self.progress = progress
        self.backend = backend
        self.recall_rows = recall_rows
        self.recall = recall

    def _resolved_quantile(self, n: int) -> float | None:
        """The quantile rule's q for N samples (``None`` under the top-k rule)."""
        if self.top_k is not None:
            return None  # _check_together refused a quantile given with it
        if self.quantile is None:
            return default_quantile(n)
        return check_fraction(self.quantile, "quantile")

    def _check_together(self, n_samples, fit_data) -> None:
        """``top_k`` replaces the quantile rule (a quantile given with it would be ignored),
        and a row has only ``N - 1`` other targets to keep."""
        if self.top_k is not None and self.quantile is not None:
            raise ValueError(
                f"give either top_k={self.top_k} or quantile={self.quantile}, not both: they "
                "are two selection rules (top_k keeps a row's k nearest targets, quantile a "
                "global similarity threshold)"
            )
        if self.top_k is not None and n_samples is not None and self.top_k >= n_samples:
            raise ValueError(
                f"top_k={self.top_k} must be smaller than N={n_samples} (a query has only "
                f"N - 1 = {n_samples - 1} other targets)"
            )

    def _plan(self, queries, targets, *, n, batch_size, seed, norms) -> BatchPlan:
        seconds: dict[str, float] = {}
        tick = time.perf_counter()
        self.quantile_ = self._resolved_quantile(n)
        settings = SearchSettings(
            backend=self.backend,
            metric=self.metric,
            device=self.device,
            block_rows=self.block_rows,
            progress=self.progress,
            recall_rows=self.recall_rows,
            recall=self.recall,
        ).resolved(n, int(queries.shape[1]))
        search = {"backend": settings.backend}
        if settings.backend == "exact" and self.top_k is None:
            graph = self._threshold_graph(queries, targets, seed, norms)
        else:
            graph = self._neighbour_graph(queries, targets, n, seed, norms, settings, search)
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
        if self.n_edges_ == 0:
            warnings.warn(
                "GCBS kept no pair of samples (0 graph edges: e.g. all rows identical, so no "
                "pair is above the quantile threshold): the batches are cut from the input "
                "order, not from hard negatives",
                RuntimeWarning,
                stacklevel=3,
            )
        has_edge = (np.diff(graph.indptr) > 0) | (np.bincount(graph.indices, minlength=n) > 0)
        self.hardness_graph_ = HardnessGraph.from_csr(
            graph, n - int(np.count_nonzero(has_edge)), seed=seed
        )
        info = {
            "quantile": self.quantile_,
            "threshold": self.threshold_,
            "n_edges": self.n_edges_,
            "mean_degree": float(graph.nnz / n),
            "isolated": int(n - np.count_nonzero(has_edge)),
            "search": search,
            **stats,
            "seconds": seconds,
        }
        return self._make_plan(batches, n=n, seed=seed, order=self.order_, info=info)

    def near_random_hint(self, n: int) -> tuple[str, str]:
        """The selection rule and how to keep more pairs: a quantile keeping 4× the pairs per
        row (at least 8), or ``top_k``; and that a weakly clustered graph may gain little."""
        if self.top_k is None:
            used = default_quantile(n) if self.quantile is None else float(self.quantile)
            kept = (1.0 - used) * max(n - 1, 1)
            more = max(4.0 * kept, 8.0)
            lower = max(1.0 - more / max(n - 1, 1), 0.0)
            shown = f"{used:.4g} (the default for N={n})" if self.quantile is None else used
            return (
                f"quantile={shown}, about {kept:.3g} pairs per row",
                f"lower quantile (e.g. {lower:.4g}: {more:.3g} pairs per row) or set top_k "
                f"(e.g. top_k={min(int(round(more)), max(n - 2, 1))}); if neither helps, this "
                "data's neighbour graph is weakly clustered and hard batches gain little on it",
            )
        return f"top_k={self.top_k}", "change top_k (4-16 kept planted groups together best)"

    @classmethod
    def subset_params(cls, params, *, subset_samples):
        """``top_k`` is at most the subset's ``N - 1``: the last re-plan of an epoch may hold
        fewer rows than ``top_k + 1`` (every row then keeps all the others)."""
        params = dict(params)
        if params.get("top_k") is not None:
            params["top_k"] = min(int(params["top_k"]), max(subset_samples - 1, 1))
        return params

    def shard_params(self, params, *, n_samples, shard_samples):
        """The quantile is relative to N (``1 - q`` of the ``N - 1`` pairs of a row are kept):
        a shard keeps the same expected number of pairs per row, ``(1 - q)·(N - 1)``, so its
        quantile is ``1 - (1 - q)·(N - 1)/(N_s - 1)`` (a quantile of a shard's own pairs would
        keep ``N_s/N`` as many). The top-k rule is per row already and passes unchanged."""
        params = dict(params)
        # The default rule (quantile None) keeps 16 pairs per row at any N: nothing to rescale.
        if self.top_k is None and self.quantile is not None:
            kept = (1.0 - float(self.quantile)) * (n_samples - 1)
            quantile = 1.0 - kept / max(shard_samples - 1, 1)
            params["quantile"] = min(max(quantile, 1e-6), 1.0 - 1e-9)
        return params

    def _threshold(self, queries, targets, seed, norms) -> float:
        """The quantile rule's similarity threshold, from the seeded pair sample."""
        n_pairs = check_positive_int(self.n_threshold_pairs, "n_threshold_pairs", minimum=100)
        if self.quantile is None:
            # The default keeps ~16 pairs per row: grow the sample with N so that enough
            # sampled pairs lie above the threshold (1e6 pairs hold only 16 of them at N = 1M).
            n = n_rows(queries)
            n_pairs = max(n_pairs, math.ceil(_DEFAULT_PAIRS_ABOVE * (n - 1) / DEFAULT_NEIGHBOURS))
        return estimate_threshold(
            queries,
            targets,
            self.quantile_,
            n_pairs=n_pairs,
            seed=seed,
            metric=self.metric,
            device=self.device,
            norms=norms,
        )

    def _threshold_graph(self, queries, targets, seed, norms):
        """The exact quantile rule: every pair above the sampled threshold (blocked matmul)."""
        blocks = SimilarityBlocks(
            queries,
            targets,
            metric=self.metric,
            device=self.device,
            block_rows=self.block_rows,
            norms=norms,
        )
        self.threshold_ = self._threshold(queries, targets, seed, norms)
        graph = threshold_graph(
            queries,
            targets,
            self.threshold_,
            values=False,
            max_edges=self.max_edges,
            progress=self.progress,
            blocks=blocks,
        )
        del blocks
        _free_device_cache()
        return graph

    def _neighbour_graph(self, queries, targets, n, seed, norms, settings, search):
        """Per-row neighbours (exact or FAISS), then the top-k rule or the capped quantile
        rule (FAISS only: the exact quantile rule has no per-row bound)."""
        if self.top_k is None:
            self.threshold_ = self._threshold(queries, targets, seed, norms)
            k = min(max(1, math.ceil((1.0 - self.quantile_) * (n - 1))), QUANTILE_ROW_CAP, n - 1)
        else:
            self.threshold_ = None
            k = check_positive_int(self.top_k, "top_k")
        found = search_neighbours(queries, targets, k, settings, seed=seed, norms=norms)
        search.update(found.info)
        if settings.backend == "faiss":
            search["k"] = int(k)
        else:
            _free_device_cache()
        return neighbour_graph(found.ids, found.sims, threshold=self.threshold_, values=False)


def _free_device_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
