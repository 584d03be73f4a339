"""Planning beyond one machine: coarse shards planned as Ray tasks, merged into one plan.

:func:`plan_on_ray` (optional extra ``hardbatch[ray]``):

1. **Shards.** FAISS k-means (seeded) of a sample of the normalised targets into
   ``ceil(N / shard_size)`` centroids; every sample goes to its nearest centroid that still has
   room (capacity ``shard_size``; rows are placed in order of decreasing similarity to their
   centroid, overflow goes to the next-nearest centroid). A shard smaller than ``batch_size``
   is dissolved into the others. See :func:`coarse_shards`.
2. **Per-shard planning.** Every shard's rows go to the Ray object store once
   (``ray.put``; float16 stays float16) and one Ray task per shard runs
   :func:`hardbatch.plan` with the same method, parameters and seed, ``drop_last=False``.
   The method rescales its parameters for a shard (:meth:`hardbatch.Planner.shard_params`):
   GCBS's ``quantile`` so that a row keeps the same expected number of pairs as in the whole
   data (a quantile of a shard's pairs would keep N_s/N as many: at N = 20k in 4 shards the
   loss gap went from 0.085 (whole) to 0.336 without this).
3. **Merge** into one :class:`~hardbatch.plans.BatchPlan` of the same method by the method's
   :meth:`hardbatch.Planner.merge_shards`, so that every sample appears exactly once per
   epoch (or the ``drop_last`` rule holds globally):

   * cluster methods (B3): the full clusters of all shards (global ids) are kept; the members of
     the shards' short last clusters are pooled (shard order) and cut into clusters of ``K``,
     the last one short. Batches are then made by :func:`hardbatch.batching.group_clusters`
     with ``epoch_rng(seed, 0)``, exactly as B3 does, so ``plan.for_epoch(e)`` regroups the
     merged clusters like any B3 plan;
   * ordering methods (GCBS, random): the full batches of every shard are kept in shard order;
     the members of the shards' short last batches are pooled (shard order) and cut into
     batches with the global ``drop_last`` rule. ``plan.order`` is the sequence the batches
     were cut from; ``for_epoch`` behaves as for the method (GCBS: same batches).

   Only pooled leftovers (fewer than ``n_shards·batch_size`` samples) share a batch across
   shards. ``plan.info["sharded"]`` records the shards (sizes, per-shard seconds and search
   info) and the *border edge fraction*: of the exact top-``border_k`` neighbours of
   ``border_rows`` sampled queries, the fraction that lies in another shard (edges no shard
   can see).

A Ray cluster: start it with ``ray start --head`` (then ``ray start --address=HEAD:6379`` on
each worker) and pass ``address="auto"`` (on a cluster node) or ``"ray://HEAD:10001"``.
Every worker needs the same environment (``pip install 'hardbatch[faiss,ray]'``). A task
holds one shard: about ``shard_size·d·(2 bytes float16 input + 4 bytes float32 search copy)``
plus ``O(shard_size·k)`` graph; ``num_cpus`` per task sets how many tasks share a node.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from .._torch import normalized_rows, resolve_device
from ..api import plan
from ..batching import mix_random_fill, mix_rng
from ..methods import get_method
from ..plans import BatchPlan
from ..similarity._common import inv_norms
from ..similarity.approximate import seeded_kmeans
from ..similarity.exact import exact_rows_top_k
from ..validation import ArrayLike, check_batch_size, check_pair, check_positive_int, check_seed

#: Rows per block when assigning samples to shard centroids.
_ASSIGN_ROWS = 16384


def coarse_shards(
    targets: ArrayLike,
    n_shards: int,
    shard_size: int,
    *,
    min_size: int = 1,
    seed: int | None = 0,
    metric: str = "cosine",
    norms: np.ndarray | None = None,
) -> np.ndarray:
    """Shard of every sample: capacity-bounded nearest FAISS k-means centroid.

    Parameters
    ----------
    targets : array-like of shape (N, d)
    n_shards : int
        Centroids (``>= ceil(N / shard_size)``).
    shard_size : int
        Capacity of a shard.
    min_size : int
        Shards left with fewer samples are dissolved into the others.
    seed : int or None
    metric : {"cosine", "dot"}
    norms : np.ndarray of shape (N,), optional

    Returns
    -------
    np.ndarray of shape (N,), int64
        Shard ids ``0..S-1`` (consecutive, ``S <= n_shards``), every shard ``<= shard_size``
        samples (when capacity allows) and ``>= min_size``.
    """
    n = int(targets.shape[0])
    if norms is None:
        norms = np.linalg.norm(np.asarray(targets, dtype=np.float64), axis=1)
    if n_shards == 1:
        return np.zeros(n, dtype=np.int64)
    dev = resolve_device("cpu")
    inv = inv_norms(norms, metric)
    rng = np.random.default_rng(seed)
    train_rows = np.sort(rng.choice(n, size=min(n, 256 * n_shards), replace=False))
    train = normalized_rows(targets, train_rows, inv, dev).numpy()
    centroids = seeded_kmeans(train, n_shards, niter=20, seed=int(rng.integers(2**31 - 1)))
    # Centroid preference of every sample (best first) and its similarity to the best.
    n_choices = min(n_shards, 8)
    choices = np.empty((n, n_choices), dtype=np.int64)
    best = np.empty(n, dtype=np.float32)
    for start in range(0, n, _ASSIGN_ROWS):
        sl = slice(start, min(start + _ASSIGN_ROWS, n))
        sims = normalized_rows(targets, sl, inv, dev).numpy() @ centroids.T
        order = np.argsort(-sims, axis=1, kind="stable")[:, :n_choices]
        choices[sl] = order
        best[sl] = sims[np.arange(sims.shape[0]), order[:, 0]]
    active = np.ones(n_shards, dtype=bool)
    while True:
        shard_of = _capacity_assign(choices, best, active, shard_size)
        sizes = np.bincount(shard_of, minlength=n_shards)
        small = active & (sizes < min_size)
        if not small.any() or active.sum() == 1:
            break
        active[np.flatnonzero(small)[np.argmin(sizes[small])]] = False  # dissolve the smallest
    _, shard_of = np.unique(shard_of, return_inverse=True)
    return shard_of.astype(np.int64)


def _capacity_assign(
    choices: np.ndarray, best: np.ndarray, active: np.ndarray, shard_size: int
) -> np.ndarray:
    """Rounds of proposals: round r offers every unplaced sample to its r-th active choice;
    a shard accepts the most similar proposers up to its remaining room."""
    n = choices.shape[0]
    capacity = max(shard_size, math.ceil(n / int(active.sum())))
    room = np.where(active, capacity, 0).astype(np.int64)
    shard_of = np.full(n, -1, dtype=np.int64)
    by_similarity = np.argsort(-best, kind="stable")
    for r in range(choices.shape[1]):
        todo = by_similarity[shard_of[by_similarity] < 0]
        if todo.size == 0:
            break
        wanted = choices[todo, r]
        ok = active[wanted]
        todo, wanted = todo[ok], wanted[ok]
        # Rank of every proposer among those proposing the same shard (similarity order).
        order = np.argsort(wanted, kind="stable")
        sorted_wanted = wanted[order]
        first = np.searchsorted(sorted_wanted, sorted_wanted, side="left")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size) - first
        accept = rank < room[wanted]
        shard_of[todo[accept]] = wanted[accept]
        room -= np.bincount(wanted[accept], minlength=room.size)
    rest = np.flatnonzero(shard_of < 0)
    if rest.size:
        # Out of preferences: fill the shards with room, in shard order.
        slots = np.repeat(np.arange(room.size), np.maximum(room, 0))
        shard_of[rest] = slots[: rest.size]
    return shard_of


def border_edge_fraction(
    queries: ArrayLike,
    targets: ArrayLike,
    shard_of: np.ndarray,
    *,
    k: int = 32,
    n_rows: int = 500,
    seed: int | None = 0,
    metric: str = "cosine",
    norms: tuple[np.ndarray, np.ndarray] | None = None,
) -> float:
    """Fraction of the exact top-``k`` neighbour edges of sampled queries that cross shards.

    Those edges are invisible to per-shard planning. Costs ``n_rows·N·d``.
    """
    n = int(queries.shape[0])
    k = min(check_positive_int(k, "k"), n - 1)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, n_rows), replace=False))
    top = exact_rows_top_k(queries, targets, rows, k, metric=metric, device="cpu", norms=norms)
    return float(np.mean(shard_of[top] != shard_of[rows][:, None]))


def _plan_shard(
    method: str, queries, targets, batch_size: int, seed: int, params: dict
) -> BatchPlan:
    """One shard's plan in the shard's local ids (runs as a Ray task)."""
    return plan(
        method, queries, targets, batch_size=batch_size, seed=seed, drop_last=False, **params
    )


def _checked_shard_params(
    planner: Any, params: dict[str, Any], n: int, shard_samples: int, shard_size: int
) -> dict[str, Any]:
    """The parameters of one shard (:meth:`hardbatch.Planner.shard_params`), checked for its
    size before any task starts; the error names the caller's inputs and N."""
    shard = planner.shard_params(params, n_samples=n, shard_samples=shard_samples)
    try:
        type(planner)(
            batch_size=planner.batch_size, seed=planner.seed, drop_last=False, **shard
        ).check_params(shard_samples)
    except ValueError as exc:
        given = ", ".join(f"{k}={v!r}" for k, v in params.items())
        raise ValueError(
            f"plan_on_ray({planner.name!r}, N={n}, batch_size={planner.batch_size}, "
            f"shard_size={shard_size}{', ' + given if given else ''}): a shard holds only "
            f"{shard_samples} of the N={n} samples, too few for these parameters ({exc}); "
            "use a larger shard_size or smaller parameters"
        ) from None
    return shard


def plan_on_ray(
    method: str,
    *,
    queries: ArrayLike,
    targets: ArrayLike,
    batch_size: int = 64,
    shard_size: int = 1_000_000,
    address: str | None = None,
    seed: int | None = 0,
    drop_last: bool = False,
    num_cpus: float = 1,
    border_k: int = 32,
    border_rows: int = 500,
    **method_params: Any,
) -> BatchPlan:
    """Plan batches for paired embeddings on a Ray cluster, one task per coarse shard.

    Parameters
    ----------
    method : str
        A registered method that reads embeddings (``"gcbs"``, ``"b3"``, ...).
    queries, targets : array-like of shape (N, d)
        Paired embeddings (numpy array or memmap; float16/32/64).
    batch_size : int
    shard_size : int
        Most samples per shard (``>= batch_size``); ``ceil(N / shard_size)`` shards.
    address : str, optional
        Ray cluster address (``"auto"``, ``"ray://host:10001"``); ``None`` starts or reuses a
        local Ray. An already initialised Ray is used as is.
    seed : int or None
        Seeds the shards and every shard's plan (the same seed for each shard).
    drop_last : bool
        Applied to the merged plan (see the module docstring).
    num_cpus : float
        CPUs reserved per shard task.
    border_k, border_rows : int
        The border edge fraction is measured on the exact top-``border_k`` of ``border_rows``
        sampled queries (0 rows: skipped).
    **method_params
        Parameters of the method (e.g. ``top_k=20``, ``cluster_size=32``, ``backend="auto"``).

    Returns
    -------
    BatchPlan
        ``method`` is the given method; ``info["sharded"]`` describes the shards.
    """
    import ray

    tick = time.perf_counter()
    cls = get_method(method)
    if not cls.uses_embeddings:
        raise ValueError(f"method {method!r} reads no embeddings: nothing to shard")
    bad = sorted(set(method_params) & set(cls.fit_params))
    if bad:
        raise ValueError(f"plan_on_ray does not support the per-sample fit arrays {bad}")
    # Every parameter is checked here, before the embeddings are read and any task starts:
    # a shard must never run a parameter the caller did not give (or a clamped one).
    planner = cls(batch_size=batch_size, seed=seed, drop_last=drop_last, **method_params)
    planner.check_params()
    norms = check_pair(queries, targets)
    n = int(queries.shape[0])
    batch_size = check_batch_size(batch_size, n)
    shard_size = check_positive_int(shard_size, "shard_size")
    if shard_size < batch_size:
        raise ValueError(
            f"shard_size={shard_size} must be at least batch_size={batch_size} "
            "(every shard holds whole batches)"
        )
    seed = check_seed(seed)
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    if not isinstance(drop_last, (bool, np.bool_)):
        raise ValueError(f"drop_last must be True or False, got {drop_last!r}")
    planner.check_params(n)
    metric = method_params.get("metric", "cosine")

    n_shards = math.ceil(n / shard_size)
    shard_of = coarse_shards(
        targets, n_shards, shard_size, min_size=batch_size, seed=seed, metric=metric,
        norms=norms[1],
    )  # fmt: skip
    members = [np.flatnonzero(shard_of == s) for s in range(int(shard_of.max()) + 1)]
    shard_params = [
        _checked_shard_params(planner, method_params, n, int(idx.size), shard_size)
        for idx in members
    ]
    seconds = {"shards": time.perf_counter() - tick}

    tick = time.perf_counter()
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, include_dashboard=False)
    task = ray.remote(num_cpus=num_cpus)(_plan_shard)
    futures = [
        task.remote(
            method,
            ray.put(np.asarray(queries[idx])),
            ray.put(np.asarray(targets[idx])),
            batch_size,
            seed,
            # Shards plan the method's own batches; the dial is applied to the merged plan.
            {**params, **({"hardness": 1.0} if "hardness" in cls.param_names() else {})},
        )
        for idx, params in zip(members, shard_params, strict=True)
    ]
    results = ray.get(futures)
    seconds["shard_plans"] = time.perf_counter() - tick

    tick = time.perf_counter()
    merged = planner.merge_shards(results, members, n=n, seed=seed)
    dial, auto_record = planner.resolve_hardness(queries, targets, norms, seed)
    if auto_record is not None:  # "auto" judged on the whole data, the merged plan records it
        merged.params["hardness"] = dial
    if dial < 1.0:
        merged.batches = mix_random_fill(
            merged.batches, dial, mix_rng(seed, 0), sample_groups=merged.sample_groups
        )
    seconds["merge"] = time.perf_counter() - tick
    sharded = {
        "n_shards": len(members),
        "shard_size": shard_size,
        "shard_sizes": [int(m.size) for m in members],
        "shards": [
            {"seconds": r.info.get("seconds"), "search": r.info.get("search")} for r in results
        ],
    }
    if border_rows and len(members) > 1:
        tick = time.perf_counter()
        sharded["border_edge_fraction"] = border_edge_fraction(
            queries, targets, shard_of, k=border_k, n_rows=border_rows, seed=seed,
            metric=metric, norms=norms,
        )  # fmt: skip
        sharded["border_k"] = int(border_k)
        seconds["border"] = time.perf_counter() - tick
    merged.info = {"sharded": sharded, "seconds": seconds}
    if auto_record is not None:
        merged.info["hardness"] = {"dial": dial, "auto": auto_record}
    return merged.validate()
