"""B3 — Breaking the Batch Barrier (Thirukovalluru et al., NeurIPS 2025).

Stages (teacher embeddings in, static clusters out, batches regrouped every epoch):

1. top-``(p + m)`` teacher ranks (:func:`hardbatch.similarity.search_neighbours`, exact or
   FAISS);
2. rank-window graph, windows ``[p, p + m)`` joined mutually
   (:func:`hardbatch.similarity.window_graph`);
3. METIS (or Leiden) partition into ``ceil(N / K)`` parts
   (:func:`hardbatch.structure.partition_graph`);
4. clusters of exactly ``K`` (:func:`hardbatch.structure.equalize_parts`; the leftover rule
   keeps ``N mod K`` real samples in one short last cluster);
5. per epoch ``e``: clusters shuffled with ``(seed, e)`` and grouped ``batch_size / K`` per
   batch (:func:`hardbatch.batching.group_clusters`), per dataset when ``groups`` is given;
6. optional per-example hard negatives (:mod:`hardbatch.negatives`).

Fixed relative to the authors' code: each edge reaches METIS once per direction (not twice),
the last cluster is never padded with the ids ``0..K-1``, every shuffle is seeded, and an
example is never handed its own label (or itself, or its cluster) as a hard negative.
"""

from __future__ import annotations

import math
import time
from functools import partial
from typing import Any

import numpy as np
import torch

from ..batching import PAD, merge_shard_clusters, regroup_clusters_epoch, sample_codes
from ..hardness import HardnessGraph, HardnessSchedule
from ..negatives import HARD_NEGATIVE_DEPTH, cluster_hard_negatives, label_hard_negatives
from ..plans import BatchPlan
from ..similarity import (
    SearchSettings,
    check_label_fraction,
    check_window,
    label_embeddings,
    label_ranks,
    label_window_graph,
    search_neighbours,
    window_graph,
)
from ..similarity._common import METRICS
from ..similarity.search import BACKENDS
from ..structure import PARTITIONERS, check_cluster_size, equalize_parts, partition_graph
from ..validation import (
    check_bool,
    check_choice,
    check_device,
    check_optional_bool,
    check_optional_positive_int,
    check_positive_int,
)
from .base import Planner, register_method

#: ``partitioner="auto"`` uses METIS up to this many samples per group, Leiden above.
AUTO_METIS_NODES = 200_000

#: Stream of the hard-negative sampler within ``(seed, 0, ...)`` (independent of the shuffle).
_NEGATIVES_STREAM = 2


#: Corpus size at which the default window skips the authors' p = 30 top ranks.
_P_REFERENCE_N = 500_000


def default_window(n_samples: int, cluster_size: int) -> tuple[int, int]:
    """B3's default rank window ``(p, m)`` for N samples and clusters of K.

    ``p = min(K // 10, round(30·N / 500 000))``: the authors' p = 30 scaled to the corpus size
    (0 below N ≈ 8 000), and never more than a tenth of a cluster — skipping the top ranks
    skips the group a sample belongs to. ``m = clip(50 000 // N, 20, 50)``: a window of about a
    cluster's size. The authors' fixed (30, 100) was the worst setting measured by
    ``benchmarks/gcbs_defaults.py`` on planted groups of 32, blobs and digits (batch purity
    0.04-0.15 against 0.21-0.49 for p = 0, m = 20-50); the rank skip's protection against
    false negatives is better had from :mod:`hardbatch.losses`' mask.
    """
    p = min(int(cluster_size) // 10, round(30 * int(n_samples) / _P_REFERENCE_N))
    m = min(max(50_000 // max(int(n_samples), 1), 20), 50)
    return p, m


@register_method
class B3(Planner):
    """Batches of whole clusters of mutual teacher neighbours (B3).

    Parameters
    ----------
    batch_size : int
        Samples per batch; a multiple of ``cluster_size``.
    cluster_size : int
        K, samples per cluster (>= 2; the authors use 32).
    p : int, optional
        Top teacher ranks skipped as likely false negatives (authors: 30 retrieval, 70 VQA).
        ``p = 0`` keeps the nearest neighbours, right when the data has no duplicates.
        Default: scaled to N (:func:`default_window`; 0 below N ≈ 8 000).
    m : int, optional
        Width of the rank window ``[p, p + m)`` (authors: 100). With ``labels``: partners
        sampled per example (see :func:`hardbatch.similarity.label_window_graph`).
        Default: scaled to N (:func:`default_window`; 20-50). The window used is
        ``plan.info["window"]``.
    mutual : bool
        Mutual window edges (B3) or their union. Ignored with ``labels`` (always mutual).
    partitioner : {"auto", "metis", "leiden"}
        See :mod:`hardbatch.structure.partition`. ``"auto"`` (default) is METIS (B3's choice)
        up to :data:`AUTO_METIS_NODES` samples per group and Leiden above: on the 100k-pair
        benchmark graph (1.1M edges, 3125 parts) METIS took 9.0 s for an edge cut of 0.90,
        Leiden 4.7 s for 0.87 (``benchmarks/scale.py``), and Leiden is near-linear in edges.
    hard_negatives : int
        Extra negatives per example (0: none; the authors add 5), in ``plan.hard_negatives``.
    label_fraction : float
        With ``labels``: the top fraction of the other labels that count as hard (0.3).
    seed : int or None
        Seeds METIS/Leiden, the hard negatives and every epoch's shuffle (with the epoch).
    drop_last : bool
        ``False``: the epoch's last batch holds the leftover clusters and the short cluster.
        ``True``: those are dropped (see :mod:`hardbatch.structure.clusters`).
    metric : {"cosine", "dot"}
    device : str, optional
        Where the teacher matmul runs (default CUDA when available).
    block_rows : int, optional
        Query rows per matmul block.
    progress : bool or None
        Progress bars (``None``: only when the work takes seconds).
    backend : {"auto", "exact", "faiss"}
        Teacher rank search (:mod:`hardbatch.similarity.search`): ``"auto"`` is exact
        while ``N·N·d <= 1e12``, else FAISS IVF (approximate top-``(p + m)`` ranks).
    recall_rows : int
        With FAISS: query rows sampled to measure recall@(p+m) against the exact search
        (``plan.info["search"]``); 0 skips it.
    hardness : "auto", float or HardnessSchedule
        The hardness dial (:class:`~hardbatch.Planner`). ``"auto"`` (default) picks it from
        the data: 1 when few random pairs are teacher-suspect (code search, planted groups),
        down to 0.5 when many are (:mod:`hardbatch.hardness`; the choice is in
        ``plan.info["hardness"]["auto"]``). 1 is B3's batches, 0 a
        random plan; between, each batch keeps its first ``round(h·B)`` members (whole
        clusters when ``h·B`` is a multiple of K) and is filled at random. A schedule gives
        every epoch's regrouped batches (``plan.for_epoch(e)``) the hardness of epoch ``e``.
    recall : float in (0, 1] or None
        With FAISS: recall@k target; the probe widens until the sampled recall meets it
        (:class:`~hardbatch.similarity.search.SearchSettings`); ``None``: fixed probe.

    Fit data (keyword arguments of :meth:`fit` / :func:`hardbatch.plan`, not parameters):

    labels : array of N hashable class labels, optional
        Classification variant: targets are label embeddings; edges join examples of
        different labels that are among each other's top ``label_fraction`` labels.
    groups : array of N hashable dataset ids, optional
        Clusters and batches stay inside one dataset; ranks are computed per dataset.

    Attributes
    ----------
    plan_ : BatchPlan
        ``clusters`` (static), ``batches`` (epoch 0), ``hard_negatives``, ``cluster_groups``.
    clusters_ : np.ndarray of shape (ceil(N / K) per group, K)
    n_edges_ : int
        Undirected edges of the teacher graph(s).
    """

    name = "b3"
    epoch_rule = "regroup_clusters"
    fit_params = ("labels", "groups")
    cli_aliases = {"p": ["-p"], "m": ["-m"]}
    param_help = {
        "cluster_size": "samples per static cluster K (batch_size must be a multiple)",
        "p": "top teacher ranks skipped as likely false negatives (window start)",
        "m": "width of the teacher rank window [p, p+m)",
        "mutual": "keep only mutual window edges (B3); false keeps the union",
        "partitioner": "graph partitioner: auto (default; metis up to 200k samples), metis, leiden",
        "hard_negatives": "extra mined negatives per example (0 = none)",
        "label_fraction": "with labels: top fraction of other labels that count as hard",
        "metric": "similarity: cosine (default) or dot",
        "device": "torch device for the matmul (default: cuda if available, else cpu)",
        "block_rows": "query rows per matmul block (default: ~256 MiB per block)",
        "backend": "teacher rank search: auto (default), exact or faiss (approximate IVF)",
        "recall_rows": "faiss backend: rows sampled to measure recall vs exact (0 = skip)",
        "hardness": "hardness dial: auto (default: from the teacher-suspect share of random "
        "pairs) or a number in [0, 1]: 1 = the method's batches, 0 = random, between = each "
        "batch keeps that share and is filled at random; decay:E = 1 at epoch 0 down to 0 "
        "(random) at epoch E - 1 (HardnessSchedule.decay)",
        "recall": "faiss backend: recall@k target the probe is widened to (none = fixed probe)",
    }

    group_param = "groups"
    param_checks = {
        "cluster_size": lambda value, name: check_cluster_size(value),
        "p": partial(check_optional_positive_int, minimum=0),
        "m": check_optional_positive_int,
        "mutual": check_bool,
        "partitioner": partial(check_choice, choices=("auto", *PARTITIONERS)),
        "hard_negatives": partial(check_positive_int, minimum=0),
        "label_fraction": lambda value, name: _check_label_fraction(value),
        "metric": partial(check_choice, choices=METRICS),
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
        cluster_size: int = 32,
        p: int | None = None,
        m: int | None = None,
        mutual: bool = True,
        partitioner: str = "auto",
        hard_negatives: int = 0,
        label_fraction: float = 0.3,
        seed: int | None = 0,
        drop_last: bool = False,
        metric: str = "cosine",
        device: str | None = None,
        block_rows: int | None = None,
        progress: bool | None = None,
        backend: str = "auto",
        recall_rows: int = 256,
        hardness: float | HardnessSchedule | str = "auto",
        recall: float | None = 0.95,
    ) -> None:
        super().__init__(batch_size, seed=seed, drop_last=drop_last, hardness=hardness)
        self.cluster_size = cluster_size
        self.p = p
        self.m = m
        self.mutual = mutual
        self.partitioner = partitioner
        self.hard_negatives = hard_negatives
        self.label_fraction = label_fraction
        self.metric = metric
        self.device = device
        self.block_rows = block_rows
        self.progress = progress
        self.backend = backend
        self.recall_rows = recall_rows
        self.recall = recall

    @classmethod
    def count_batches(
        cls, n_samples: int, batch_size: int, *, drop_last: bool, **fit_data: Any
    ) -> int:
        """Batches per epoch: N cut in order, or with ``groups`` each dataset's ``N_g`` cut on
        its own (every group may end with its own short batch, or drop its leftovers)."""
        groups = fit_data.get("groups")
        if groups is None:
            return super().count_batches(n_samples, batch_size, drop_last=drop_last)
        sizes = np.bincount(sample_codes(groups, n_samples, "groups"))
        return sum(
            super(B3, cls).count_batches(int(n_g), batch_size, drop_last=drop_last)
            for n_g in sizes
            if n_g
        )

    # ------------------------------------------------------------------ checks
    def _check_together(self, n_samples, fit_data) -> None:
        """A batch holds whole clusters; without labels or groups the rank window must fit N
        (with groups it is checked per group, with labels it is not a rank window)."""
        if self.batch_size is not None and int(self.batch_size) % int(self.cluster_size):
            raise ValueError(
                f"batch_size={self.batch_size} must be a multiple of cluster_size="
                f"{self.cluster_size} (a batch holds whole clusters)"
            )
        if n_samples is not None and fit_data.get("labels") is None:
            if fit_data.get("groups") is None:
                check_window(*self.window(n_samples), n_samples)

    def _check_params(self, batch_size: int) -> tuple[int, SearchSettings]:
        """Cluster size K and the teacher search settings (every parameter was checked by
        :meth:`check_params`, which :meth:`fit` runs before planning)."""
        settings = SearchSettings(
            backend=self.backend,
            metric=self.metric,
            device=self.device,
            block_rows=self.block_rows,
            progress=self.progress,
            recall_rows=self.recall_rows,
            recall=self.recall,
        )
        return check_cluster_size(self.cluster_size), settings

    # ------------------------------------------------------------------ planning
    def _plan(
        self, queries, targets, *, n, batch_size, seed, norms, labels=None, groups=None
    ) -> BatchPlan:
        """Ranks → graph → partition → clusters per group, then epoch-0 batches."""
        k, settings = self._check_params(batch_size)
        label_codes = None if labels is None else sample_codes(labels, n, "labels")
        group_codes = None if groups is None else sample_codes(groups, n, "groups")
        subsets = (
            [None]
            if group_codes is None
            else [np.flatnonzero(group_codes == g) for g in range(int(group_codes.max()) + 1)]
        )
        neg_rng = np.random.default_rng([seed, 0, _NEGATIVES_STREAM])
        hard_negatives = (
            np.empty((n, self.hard_negatives), dtype=np.int64) if self.hard_negatives else None
        )
        seconds = dict.fromkeys(("search", "graph", "partition", "clusters"), 0.0)
        if hard_negatives is not None:
            seconds["hard_negatives"] = 0.0
        all_clusters, cluster_groups, parts, stats, graphs = [], [], [], [], []
        for g, idx in enumerate(subsets):
            clusters, negatives, part, stat, graph = self._one_group(
                queries, targets, idx, n, k, seed, norms, settings, label_codes, neg_rng, seconds
            )
            graphs.append(graph)
            all_clusters.append(clusters)
            cluster_groups.append(np.full(len(clusters), g, dtype=np.int64))
            parts.append(part)
            stats.append(stat)
            if hard_negatives is not None:
                rows = np.arange(n) if idx is None else idx
                hard_negatives[rows] = negatives
        clusters = np.concatenate(all_clusters)
        groups_of_clusters = None if group_codes is None else np.concatenate(cluster_groups)
        if groups_of_clusters is not None:
            # Full clusters first, short ones last: the array reads like a batch array.
            short_last = np.argsort(clusters[:, -1] == PAD, kind="stable")
            clusters, groups_of_clusters = clusters[short_last], groups_of_clusters[short_last]

        tick = time.perf_counter()
        batches = regroup_clusters_epoch(
            clusters,
            batch_size,
            seed=seed,
            epoch=0,
            cluster_groups=groups_of_clusters,
            drop_last=bool(self.drop_last),
        )
        seconds["batches"] = time.perf_counter() - tick

        self.clusters_ = clusters
        self.hardness_graph_ = HardnessGraph.concat(graphs, seed=seed)
        self.hard_negatives_ = hard_negatives
        self.n_edges_ = int(sum(s["n_edges"] for s in stats))
        info = _summarise(parts, stats, clusters, n, k)
        info.update(
            mode="labels" if label_codes is not None else "retrieval",
            n_labels=None if label_codes is None else int(label_codes.max()) + 1,
            n_groups=len(subsets),
            seconds=seconds,
        )
        return self._make_plan(
            batches,
            n=n,
            seed=seed,
            clusters=clusters,
            hard_negatives=hard_negatives,
            cluster_groups=groups_of_clusters,
            info=info,
        )

    def _one_group(
        self, queries, targets, idx, n, k, seed, norms, settings, label_codes, neg_rng, seconds
    ):
        """Ranks → graph → partition → clusters (→ hard negatives) of one dataset."""
        n_g = n if idx is None else idx.size
        where = "" if idx is None else f" (in the group of sample {int(idx[0])})"
        q = queries if idx is None else _take_rows(queries, idx)
        t = targets if idx is None else _take_rows(targets, idx)
        q_norms = norms[0] if idx is None else norms[0][idx]
        t_norms = norms[1] if idx is None else norms[1][idx]

        tick = time.perf_counter()
        if label_codes is None:
            try:
                p, m = check_window(*self.window(n_g), n_g)
            except ValueError as exc:
                raise ValueError(f"{exc}{where}") from None
            depth = 0 if not self.hard_negatives else p + HARD_NEGATIVE_DEPTH
            width = min(max(p + m, depth), n_g - 1)
            found = search_neighbours(q, t, width, settings, seed=seed, norms=(q_norms, t_norms))
            ranks, search = found.ids, found.info
            del found
            _free_device_cache()
            seconds["search"] += time.perf_counter() - tick
            tick = time.perf_counter()
            graph = window_graph(ranks, p, m, mutual=bool(self.mutual))
        else:
            codes = label_codes if idx is None else label_codes[idx]
            _, codes = np.unique(codes, return_inverse=True)
            n_labels = int(codes.max()) + 1
            try:
                top = check_label_fraction(self.label_fraction, n_labels)
            except ValueError as exc:
                raise ValueError(f"{exc}{where}") from None
            vectors = label_embeddings(
                t, codes, n_labels, metric=self.metric, device=self.device, norms=t_norms
            )
            ranks = label_ranks(
                q,
                vectors,
                codes,
                top,
                metric=self.metric,
                block_rows=self.block_rows,
                progress=self.progress,
                norms=q_norms,
            )
            del vectors
            _free_device_cache()
            seconds["search"] += time.perf_counter() - tick
            tick = time.perf_counter()
            m = check_positive_int(self.window(n_g)[1], "m")
            graph = label_window_graph(ranks, codes, m, seed=seed)
            search = {"backend": "exact"}
        seconds["graph"] += time.perf_counter() - tick

        tick = time.perf_counter()
        partitioner = self.partitioner
        if partitioner == "auto":
            partitioner = "metis" if n_g <= AUTO_METIS_NODES else "leiden"
        part = partition_graph(graph, math.ceil(n_g / k), method=partitioner, seed=seed)
        seconds["partition"] += time.perf_counter() - tick

        tick = time.perf_counter()
        local = equalize_parts(part.labels, k, graph=graph)
        seconds["clusters"] += time.perf_counter() - tick
        stat = {
            "n_edges": int(graph.nnz // 2),
            "isolated": int(np.count_nonzero(np.diff(graph.indptr) == 0)),
            "in_cluster_edges": _in_cluster_edges(graph, local),
            "window": list(self.window(n_g)),
            "search": search,
        }

        negatives = None
        if self.hard_negatives:
            tick = time.perf_counter()
            if label_codes is None:
                negatives = cluster_hard_negatives(
                    local, ranks, p, self.hard_negatives, rng=neg_rng, depth=width - p
                )
            else:
                negatives = label_hard_negatives(
                    local, ranks, codes, self.hard_negatives, rng=neg_rng
                )
            if idx is not None:
                negatives = idx[negatives]
            seconds["hard_negatives"] += time.perf_counter() - tick
        clusters = local if idx is None else np.where(local == PAD, PAD, idx[local])
        edges = HardnessGraph.from_csr(graph, stat["isolated"], seed=seed, ids=idx)
        return clusters, negatives, part, stat, edges

    def near_random_hint(self, n: int) -> tuple[str, str]:
        """The rank window and how to widen it."""
        p, m = self.window(n)
        return (
            f"p={p}, m={m}",
            "lower p (p=0 when the data has no near-duplicates) or raise m",
        )

    def window(self, n_samples: int) -> tuple[int, int]:
        """``(p, m)`` for a dataset (group) of ``n_samples``: the given values, or the defaults
        scaled to N (:func:`default_window`)."""
        p_default, m_default = default_window(n_samples, int(self.cluster_size))
        return (
            p_default if self.p is None else self.p,
            m_default if self.m is None else self.m,
        )

    # ------------------------------------------------------------------ shards
    def shard_params(self, params, *, n_samples, shard_samples):
        """A defaulted window is resolved from the whole data's N, so that every shard uses
        the window a single-process plan would."""
        params = dict(params)
        params["p"], params["m"] = self.window(n_samples)
        return params

    def merge_shards(self, shard_plans, members, *, n, seed) -> BatchPlan:
        """Full clusters of every shard, the shards' short clusters pooled and re-cut
        (:func:`hardbatch.batching.merge_shard_clusters`), hard negatives mapped to global
        ids; ``for_epoch`` then regroups the merged clusters like any B3 plan."""
        clusters, batches = merge_shard_clusters(
            [p.clusters for p in shard_plans],
            list(members),
            int(self.batch_size),
            seed=seed,
            drop_last=bool(self.drop_last),
        )
        negatives = None
        if shard_plans[0].hard_negatives is not None:
            negatives = np.empty((n, shard_plans[0].hard_negatives.shape[1]), dtype=np.int64)
            for shard, idx in zip(shard_plans, members, strict=True):
                negatives[idx] = idx[shard.hard_negatives]
        return self._make_plan(batches, n=n, seed=seed, clusters=clusters, hard_negatives=negatives)


def _check_label_fraction(value: Any) -> float:
    """``label_fraction`` in ``(0, 1]`` (the number of labels is checked when known)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"label_fraction must be a number in (0, 1], got {value!r}")
    if not 0.0 < float(value) <= 1.0:
        raise ValueError(f"label_fraction must be in (0, 1], got {value}")
    return float(value)


def _take_rows(a: Any, idx: np.ndarray) -> Any:
    """Rows ``a[idx]`` of a numpy array, memmap or torch tensor (a copy)."""
    if isinstance(a, torch.Tensor):
        return a[torch.as_tensor(idx, device=a.device)]
    return np.asarray(a[idx])


def _free_device_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _in_cluster_edges(graph, clusters: np.ndarray) -> int:
    """Undirected graph edges whose two ends share a cluster."""
    n = graph.shape[0]
    of = np.empty(n, dtype=np.int64)
    member = clusters != PAD
    of[clusters[member]] = np.broadcast_to(np.arange(len(clusters))[:, None], clusters.shape)[
        member
    ]
    rows = np.repeat(np.arange(n), np.diff(graph.indptr))
    return int(np.count_nonzero(of[rows] == of[graph.indices])) // 2


def _summarise(parts, stats, clusters: np.ndarray, n: int, k: int) -> dict:
    """Graph, partition and cluster diagnostics over all groups, JSON-ready."""
    n_edges = sum(s["n_edges"] for s in stats)
    cut = sum(part.edge_cut for part in parts)
    sizes = np.concatenate([part.sizes for part in parts])
    inside = sum(s["in_cluster_edges"] for s in stats)
    return {
        "n_edges": n_edges,
        "mean_degree": 2.0 * n_edges / n,
        "isolated": sum(s["isolated"] for s in stats),
        "partitioner": parts[0].method,
        "n_parts": int(sizes.size),
        "edge_cut": int(cut),
        "edge_cut_fraction": cut / n_edges if n_edges else 0.0,
        "part_size_min": int(sizes.min()),
        "part_size_max": int(sizes.max()),
        "part_size_mean": float(sizes.mean()),
        "part_size_std": float(sizes.std()),
        "n_clusters": int(len(clusters)),
        "short_clusters": int(np.count_nonzero(clusters[:, -1] == PAD)),
        "in_cluster_edge_fraction": inside / n_edges if n_edges else 0.0,
        # Per group: the rank window [p, p + m) used, as [p, m].
        "window": stats[0]["window"] if len(stats) == 1 else [s["window"] for s in stats],
        # Per group: backend and (FAISS) sampled recall of the teacher ranks.
        "search": stats[0]["search"] if len(stats) == 1 else [s["search"] for s in stats],
    }
