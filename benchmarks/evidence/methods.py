"""The batching methods compared, as batch sources for the training loop.

Every source serves, per epoch, the batches (sample ids) and optionally per-query extra
negative ids; the student, steps and seeds are the same for all. Names:

``random``
    Uniform random batches (``hardbatch.plan("random")``, reshuffled each epoch).
``nodup``
    Random batches in which no two samples share a ``duplicate_key`` (near-duplicate queries:
    in-batch false negatives), via ``duplicate_ids=``.
``hn1``
    "Hard Negative (1)" of the GCBS paper: random batches plus one mined negative target per
    query, which doubles the target side of every batch. Mined once from the teacher: each
    epoch, query i draws one target uniformly from the teacher's ranks
    ``[hn_skip, hn_skip + hn_depth)`` of its row (the top ``hn_skip`` are skipped as likely
    false negatives). The paper re-mines with the current model every epoch; here the teacher
    is static, which makes ``hn1`` cheaper than the paper's, not dearer.
``tas``
    TAS-style topic-aware batches (Hofstätter et al., 2021): k-means of the teacher query
    embeddings into ``N / (tas_batches_per_cluster · batch_size)`` clusters; each epoch the
    members of every cluster are shuffled, the clusters are visited in a random order and the
    sequence is cut into batches, so most batches come from one cluster. Registered here as
    the planner ``"tas_kmeans"``.
``gcbs``
    GCBS with the paper's refresh: at each epoch start a no-grad pass embeds the whole train
    set with the current student and the epoch is planned from it
    (``HardBatchSampler(refresh="epoch")``); the pass is the "extra forward" time.
``gcbs_rec``
    GCBS with the zero-extra-forward refresh: the embeddings computed in the training step are
    recorded (``HardBatchSampler(refresh="recorded")``, ``sampler.record``) and the next epoch
    is planned from them. Epoch 0 is planned from the teacher embeddings when they have the
    student's width (free: they are the student's input or initial model), else from one
    initial pass, counted as extra forward.
``b3``
    B3 with the teacher: ``hardbatch.plan("b3", teacher_q, teacher_t, cluster_size=K, p, m)``,
    static clusters regrouped every epoch. ``p`` and ``m`` are scaled to N from the authors'
    p = 30, m = 100: ``p = max(1, round(30 N / N_REF))``, ``m = max(K, round(100 N / N_REF))``
    with ``N_REF = 50_000`` (an assumption: a typical single-dataset size of the authors'
    training mix), so the window covers the same fraction of the corpus.
``b3_hn``
    B3 plus its per-example hard negatives (``hard_negatives=b3_negatives``, default 1 so that
    the extra cost equals ``hn1``'s; the authors use 5).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import hardbatch
from hardbatch.batching import PAD, cut_order, epoch_rng
from hardbatch.methods.base import Planner, register_method
from hardbatch.plans import BatchPlan, register_epoch_rule

METHODS = ("random", "nodup", "hn1", "tas", "gcbs", "gcbs_rec", "b3", "b3_hn")
N_REF = 50_000
#: Knob value meaning "pass nothing: whatever the library's default is" (the new defaults).
LIBRARY = "library"
#: The hardbatch planner behind each benchmark method (whose parameters a knob may name).
LIBRARY_METHOD = {
    "random": "random",
    "nodup": "random",
    "hn1": "random",
    "tas": "tas_kmeans",
    "gcbs": "gcbs",
    "gcbs_rec": "gcbs",
    "b3": "b3",
    "b3_hn": "b3",
}

#: Default knobs (the sweep varies them).
DEFAULTS: dict[str, Any] = {
    "quantile": 0.999,
    "hn_skip": 3,
    "hn_depth": 30,
    "tas_batches_per_cluster": 2,
    "cluster_size": 32,
    "p": None,  # None: scaled to N
    "m": None,
    "b3_negatives": 1,
}
#: GCBS / B3 without a ``hardness`` knob: the method's own batches (as the evidence run had
#: them); ``hardness=LIBRARY`` passes nothing (the library's default, ``"auto"``).
DEFAULT_HARDNESS = 1.0


def passthrough_knobs(method: str, knobs: dict | None) -> dict[str, Any]:
    """Knobs that are not benchmark knobs (:data:`DEFAULTS`): passed verbatim to the library.

    E.g. ``{"hardness": 0.5}`` reaches ``HardBatchSampler(method="gcbs", hardness=0.5)`` or
    ``hardbatch.plan("b3", ..., hardness=0.5)``. Only the GCBS and B3 methods take them.
    """
    extra = {k: v for k, v in (knobs or {}).items() if k not in DEFAULTS}
    if extra and LIBRARY_METHOD.get(method) not in ("gcbs", "b3"):
        raise ValueError(
            f"method {method!r} takes no library knobs; got {sorted(extra)} (only the GCBS and "
            "B3 methods pass knobs through to hardbatch)"
        )
    return extra


def check_knobs(method: str, knobs: dict | None) -> None:
    """Fail fast: every pass-through knob must be a parameter of the library's planner.

    Raises
    ------
    ValueError
        Unknown method, or a knob the installed hardbatch does not know (e.g. ``hardness``
        before the dial exists), named with the planner's parameters.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    extra = passthrough_knobs(method, knobs)
    if not extra:
        return
    lib = LIBRARY_METHOD[method]
    known = hardbatch.get_method(lib).param_names()
    unknown = sorted(set(extra) - set(known))
    if unknown:
        raise ValueError(
            f"knob(s) {unknown} of method {method!r} are not parameters of the installed "
            f"hardbatch's {lib!r} planner (it takes: {', '.join(known)}); this hardbatch does "
            "not support them yet"
        )


def b3_window(n: int, cluster_size: int) -> tuple[int, int]:
    """``(p, m)`` scaled to N from the authors' (30, 100) at :data:`N_REF`."""
    p = max(1, round(30 * n / N_REF))
    m = max(cluster_size, round(100 * n / N_REF))
    return p, m


def tas_epoch(plan: BatchPlan, epoch: int) -> np.ndarray:
    """TAS epoch ``epoch``: clusters visited in a random order, members shuffled, then cut."""
    rng = epoch_rng(int(plan.seed or 0), epoch)
    rows = [r[r != PAD] for r in plan.clusters]
    order = np.concatenate([rng.permutation(rows[c]) for c in rng.permutation(len(rows))])
    return cut_order(order, plan.batch_size, drop_last=plan.drop_last)


register_epoch_rule("tas_clusters", tas_epoch)


@register_method
class TASKMeans(Planner):
    """Topic-aware batches: k-means clusters of the query embeddings, visited one by one.

    Parameters
    ----------
    batch_size : int
    batches_per_cluster : int
        Mean cluster size in batches (``n_clusters = N // (batches_per_cluster·batch_size)``).
    seed : int or None
    drop_last : bool
    """

    name = "tas_kmeans"
    epoch_rule = "tas_clusters"
    param_help = {"batches_per_cluster": "mean k-means cluster size, in batches"}

    def __init__(self, batch_size=64, *, batches_per_cluster=2, seed=0, drop_last=False):
        super().__init__(batch_size, seed=seed, drop_last=drop_last)
        self.batches_per_cluster = batches_per_cluster

    def _plan(self, queries, targets, *, n, batch_size, seed, norms) -> BatchPlan:
        from sklearn.cluster import KMeans

        x = np.asarray(queries, dtype=np.float32) / norms[0][:, None].astype(np.float32)
        k = max(2, n // (int(self.batches_per_cluster) * batch_size))
        labels = KMeans(k, n_init=1, random_state=seed % 2**31).fit_predict(x)
        # Clusters as padded rows: the plan's ``clusters`` (epochs regroup them).
        sizes = np.bincount(labels, minlength=k)
        clusters = np.full((k, int(sizes.max())), PAD, dtype=np.int64)
        for c in range(k):
            members = np.flatnonzero(labels == c)
            clusters[c, : len(members)] = members
        plan = self._make_plan(
            np.zeros((0, batch_size), dtype=np.int64),
            n=n,
            seed=seed,
            info={"n_clusters": int(k), "cluster_size_max": int(sizes.max())},
        )
        plan.clusters = clusters
        plan.batches = tas_epoch(plan, 0)
        return plan


def teacher_ranks(queries: np.ndarray, targets: np.ndarray, depth: int) -> np.ndarray:
    """Top-``depth`` teacher targets of every query, best first, itself excluded, (N, depth)."""
    from hardbatch.similarity import top_ranks

    return top_ranks(queries, targets, depth, device="cpu")


@dataclass
class EpochBatches:
    """What a source serves for one epoch."""

    batches: list[np.ndarray]
    negatives: list[np.ndarray | None]
    extra_forward_s: float = 0.0
    planning_s: float = 0.0
    #: The hardness the epoch's plan was made with (its ``params["hardness"]``; GCBS / B3).
    dial: Any = None
    #: The epoch's hardness (``plan.hardness.at(epoch)``; 0 for random batches).
    hardness: float = 0.0


@dataclass
class BatchSource:
    """Batches of one method for one training run.

    Attributes
    ----------
    name : str
    sampler : hardbatch.HardBatchSampler
    negatives_of : callable (epoch, batch ids) -> (b, h) ids, or None
    setup_s : float
        One-off planning before training (teacher mining, clustering).
    records : bool
        The training loop must call ``sampler.record`` after each step.
    """

    name: str
    sampler: Any
    negatives_of: Any = None
    setup_s: float = 0.0
    records: bool = False
    info: dict = field(default_factory=dict)

    def epoch(self, epoch: int) -> EpochBatches:
        """Plan (if the sampler re-plans) and list the batches of ``epoch``."""
        n_hist = len(self.sampler.history_)
        tick = time.perf_counter()
        self.sampler.set_epoch(epoch)
        batches = [np.asarray(b, dtype=np.int64) for b in self.sampler]
        total = time.perf_counter() - tick
        new = self.sampler.history_[n_hist:]
        embed = sum(h["seconds"].get("embed", 0.0) for h in new)
        negatives = [None] * len(batches)
        neg_s = 0.0
        if self.negatives_of is not None:
            t0 = time.perf_counter()
            negatives = [self.negatives_of(epoch, b) for b in batches]
            neg_s = time.perf_counter() - t0
        # Planning = everything the sampler did that was not the embedding pass.
        plan = getattr(self.sampler, "plan_", None)  # random sources have no plan
        dial = None if plan is None else plan.params.get("hardness")
        hardness = 0.0 if plan is None else plan.hardness.at(epoch)
        planning = max(total - embed, 0.0) + neg_s
        return EpochBatches(batches, negatives, embed, planning, dial, hardness)


def make_source(
    name: str,
    *,
    n: int,
    batch_size: int,
    seed: int,
    teacher: tuple[np.ndarray, np.ndarray],
    duplicate_ids: np.ndarray | None,
    embed_fn,
    student_dim: int,
    knobs: dict | None = None,
) -> BatchSource:
    """Build the batch source of method ``name`` for one run.

    Parameters
    ----------
    name : one of :data:`METHODS`
    n : int
        Training samples N.
    batch_size, seed : int
    teacher : (Tq, Tt)
        Teacher embeddings of the training pairs, (N, d_teacher) each.
    duplicate_ids : np.ndarray of shape (N,), optional
        For ``nodup``.
    embed_fn : callable ids -> (Q, T)
        The student's no-grad embedding of training samples (GCBS refresh).
    student_dim : int
        Width of the student's embeddings (decides how ``gcbs_rec`` seeds epoch 0).
    knobs : dict
        Overrides of :data:`DEFAULTS`.
    """
    k = {**DEFAULTS, **(knobs or {})}
    extra = passthrough_knobs(name, knobs)
    tq, tt = teacher
    common = dict(n_samples=n, batch_size=batch_size, seed=seed)
    tick = time.perf_counter()
    if name == "random":
        sampler = hardbatch.HardBatchSampler(method="random", **common)
        return BatchSource(name, sampler)
    if name == "nodup":
        sampler = hardbatch.HardBatchSampler(method="random", duplicate_ids=duplicate_ids, **common)
        return BatchSource(name, sampler)
    if name == "hn1":
        skip, depth = int(k["hn_skip"]), int(k["hn_depth"])
        ranks = teacher_ranks(tq, tt, min(skip + depth, n - 1))[:, skip:]
        sampler = hardbatch.HardBatchSampler(method="random", **common)

        def negatives_of(epoch: int, ids: np.ndarray) -> np.ndarray:
            rng = np.random.default_rng([seed, epoch, int(ids[0]), 0x4E])
            pick = rng.integers(0, ranks.shape[1], len(ids))
            return ranks[ids, pick][:, None]

        return BatchSource(
            name,
            sampler,
            negatives_of,
            setup_s=time.perf_counter() - tick,
            info={"hn_skip": skip, "hn_depth": ranks.shape[1]},
        )
    if name == "tas":
        plan = hardbatch.plan(
            "tas_kmeans",
            tq,
            tt,
            batch_size=batch_size,
            seed=seed,
            batches_per_cluster=int(k["tas_batches_per_cluster"]),
        )
        sampler = hardbatch.HardBatchSampler(plan=plan, seed=seed)
        return BatchSource(name, sampler, setup_s=time.perf_counter() - tick, info=plan.info)
    # GCBS: quantile=LIBRARY passes no selection knob (the library's default rule).
    hardness = extra.pop("hardness", DEFAULT_HARDNESS)
    dial = {} if hardness == LIBRARY else {"hardness": hardness}
    gcbs_params = {} if k["quantile"] == LIBRARY else {"quantile": k["quantile"]}
    gcbs_params.update(dial, **extra)
    gcbs_info = {"quantile": k["quantile"], "hardness": hardness, **extra}
    if name == "gcbs":
        sampler = hardbatch.HardBatchSampler(
            method="gcbs", embed_fn=embed_fn, refresh="epoch", **gcbs_params, **common
        )
        return BatchSource(name, sampler, info=gcbs_info)
    if name == "gcbs_rec":
        if tq.shape[1] == student_dim:
            sampler = hardbatch.HardBatchSampler(
                method="gcbs",
                refresh="recorded",
                embeddings=(tq, tt),
                **gcbs_params,
                **common,
            )
            initial = "teacher"
        else:
            sampler = hardbatch.HardBatchSampler(
                method="gcbs",
                refresh="recorded",
                embed_fn=embed_fn,
                initial="embed",
                **gcbs_params,
                **common,
            )
            initial = "embed pass"
        return BatchSource(name, sampler, records=True, info={**gcbs_info, "initial": initial})
    if name in ("b3", "b3_hn"):
        # LIBRARY: pass nothing (the library's default); None (p, m): scaled to N.
        params: dict[str, Any] = {}
        if k["cluster_size"] != LIBRARY:
            params["cluster_size"] = int(k["cluster_size"])
        scaled = b3_window(n, params.get("cluster_size", 32))
        for key, value in zip(("p", "m"), scaled, strict=True):
            if k[key] != LIBRARY:
                params[key] = value if k[key] is None else int(k[key])
        h = int(k["b3_negatives"]) if name == "b3_hn" else 0
        plan = hardbatch.plan(
            "b3",
            tq,
            tt,
            batch_size=batch_size,
            seed=seed,
            hard_negatives=h,
            device="cpu",
            **params,
            **dial,
            **extra,
        )
        cluster_size, p, m = (plan.params.get(key) for key in ("cluster_size", "p", "m"))
        sampler = hardbatch.HardBatchSampler(plan=plan, seed=seed)
        negatives_of = None
        if h:
            hard = plan.hard_negatives

            def negatives_of(epoch: int, ids: np.ndarray) -> np.ndarray:
                return hard[ids]

        info = {"cluster_size": cluster_size, "p": p, "m": m, "hard_negatives": h, **extra}
        info.update(
            {key: plan.info.get(key) for key in ("mean_degree", "in_cluster_edge_fraction")}
        )
        return BatchSource(
            name, sampler, negatives_of, setup_s=time.perf_counter() - tick, info=info
        )
    raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")


def epoch_plan(batches: list[np.ndarray], n: int, batch_size: int) -> BatchPlan:
    """The served batches of one epoch as a BatchPlan (for ``hardbatch.metrics.loss_gap``)."""
    width = max(batch_size, max(len(b) for b in batches))
    rows = np.full((len(batches), width), PAD, dtype=np.int64)
    for r, b in enumerate(batches):
        rows[r, : len(b)] = b
    return BatchPlan(batches=rows, method="served", n_samples=n, batch_size=width)


def to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
