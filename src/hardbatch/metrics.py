"""Diagnostics: what a plan does to the contrastive loss.

For paired, normalised embeddings ``X`` (queries) and ``Y`` (targets) and temperature ``τ``
(NT-Xent / InfoNCE, both directions, as in GCBS §3):

* ``L_global``: each query against all N targets (and each target against all N queries);
* ``L_train``: each query only against the targets of its own batch (what training sees);
* ``gap = L_global − L_train >= 0``. Harder batches bring ``L_train`` up to ``L_global``:
  the GCBS paper saw the gap cut by 40% (§7.2).

Also: in-batch negative similarity (mean, and the per-query hardest/easiest negative), the
bandwidth of the thresholded graph in plan order, and the fraction of its edges a plan keeps
inside batches. Everything is computed in row blocks: memory never holds N×N.

For data with known groups of mutual hard negatives (the planted groups of
:func:`hardbatch.synthetic.make_planted_pairs`, topics, sources): :func:`batch_purity` and
:func:`group_cohesion` say how much a plan keeps each group together.

With ``drop_last`` the dropped samples are left out of both losses, so the gap compares the
same samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._torch import normalized_rows, resolve_device
from .batching import PAD
from .plans import BatchPlan
from .similarity import SimilarityBlocks, default_quantile, estimate_threshold, threshold_graph
from .structure import bandwidth
from .validation import ArrayLike, check_pair

#: Batches multiplied at once by :func:`train_losses` (one bmm call).
_BATCH_GROUP = 128


def _check_temperature(temperature: float) -> float:
    temperature = float(temperature)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return temperature


def _check_plan(plan: BatchPlan, n: int) -> None:
    if not isinstance(plan, BatchPlan):
        raise ValueError(f"plan must be a hardbatch.BatchPlan, got {type(plan).__name__}")
    if plan.n_samples != n:
        raise ValueError(f"plan was made for N={plan.n_samples}, embeddings have N={n}")


def global_losses(
    queries: ArrayLike,
    targets: ArrayLike,
    *,
    temperature: float = 0.05,
    metric: str = "cosine",
    device: str | None = None,
    block_rows: int | None = None,
    progress: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample NT-Xent over all N² pairs, both directions.

    Returns
    -------
    q2t, t2q : np.ndarray of shape (N,), float64
        ``q2t[i] = logsumexp_j(S[i, j]/τ) − S[i, i]/τ`` and ``t2q[i]`` the same down column i.
    """
    temperature = _check_temperature(temperature)
    blocks = SimilarityBlocks(queries, targets, metric=metric, device=device, block_rows=block_rows)
    n = blocks.n_samples
    q2t = np.empty(n, dtype=np.float64)
    diag = np.empty(n, dtype=np.float64)
    col_lse = torch.full((n,), -float("inf"), dtype=torch.float64, device=blocks.device)
    for start, sim in blocks.blocks(progress=progress, desc="global loss", mask_diagonal=False):
        logits = sim.double().div_(temperature)
        stop = start + logits.shape[0]
        d = logits.diagonal(offset=start).cpu().numpy()
        diag[start:stop] = d
        q2t[start:stop] = torch.logsumexp(logits, dim=1).cpu().numpy() - d
        col_lse = torch.logaddexp(col_lse, torch.logsumexp(logits, dim=0))
    t2q = col_lse.cpu().numpy() - diag
    return q2t, t2q


def train_losses(
    queries: ArrayLike,
    targets: ArrayLike,
    plan: BatchPlan,
    *,
    temperature: float = 0.05,
    metric: str = "cosine",
    device: str | None = None,
    epoch: int = 0,
) -> dict[str, np.ndarray]:
    """Per-sample in-batch NT-Xent under a plan, both directions, and negative similarities.

    Returns
    -------
    dict of np.ndarray of shape (N,)
        ``q2t``, ``t2q`` (losses), ``neg_mean``, ``neg_min``, ``neg_max`` (similarity of each
        query to the other targets of its batch) and ``covered`` (bool: in a batch). Entries of
        uncovered samples are NaN.
    """
    temperature = _check_temperature(temperature)
    norms = check_pair(queries, targets)
    n = int(queries.shape[0])
    _check_plan(plan, n)
    dev = resolve_device(device)
    q_inv = 1.0 / norms[0] if metric == "cosine" else None
    t_inv = 1.0 / norms[1] if metric == "cosine" else None
    out = {key: np.full(n, np.nan) for key in ("q2t", "t2q", "neg_mean", "neg_min", "neg_max")}
    batches = plan.for_epoch(epoch)
    # Full batches go through bmm in groups; a padded last batch is handled on its own.
    groups: list[np.ndarray] = []
    full = batches[(batches != PAD).all(axis=1)]
    groups += [full[i : i + _BATCH_GROUP] for i in range(0, len(full), _BATCH_GROUP)]
    partial = batches[(batches == PAD).any(axis=1)]
    groups += [row[row != PAD][None, :] for row in partial if (row != PAD).sum() > 0]
    for group in groups:
        ids = group.ravel()
        order = np.argsort(ids)  # sorted reads for memmaps
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        xq = normalized_rows(queries, ids[order], q_inv, dev)[inverse].view(*group.shape, -1)
        yt = normalized_rows(targets, ids[order], t_inv, dev)[inverse].view(*group.shape, -1)
        sim = torch.bmm(xq, yt.transpose(1, 2)).double()  # (g, b, b)
        logits = sim / temperature
        diag = torch.diagonal(logits, dim1=1, dim2=2)
        q2t = torch.logsumexp(logits, dim=2) - diag
        t2q = torch.logsumexp(logits, dim=1) - diag
        b = group.shape[1]
        out["q2t"][ids] = q2t.cpu().numpy().ravel()
        out["t2q"][ids] = t2q.cpu().numpy().ravel()
        if b > 1:
            eye = torch.eye(b, dtype=torch.bool, device=dev)
            neg = sim.masked_fill(eye, float("nan"))
            out["neg_mean"][ids] = torch.nanmean(neg, dim=2).cpu().numpy().ravel()
            out["neg_min"][ids] = sim.masked_fill(eye, float("inf")).amin(2).cpu().numpy().ravel()
            out["neg_max"][ids] = sim.masked_fill(eye, -float("inf")).amax(2).cpu().numpy().ravel()
    out["covered"] = ~np.isnan(out["q2t"])
    return out


def _gap(global_q2t, global_t2q, train: dict[str, np.ndarray]) -> dict[str, float]:
    covered = train["covered"]
    g_q, g_t = float(global_q2t[covered].mean()), float(global_t2q[covered].mean())
    t_q, t_t = float(train["q2t"][covered].mean()), float(train["t2q"][covered].mean())
    return {
        "global": (g_q + g_t) / 2,
        "train": (t_q + t_t) / 2,
        "gap": (g_q + g_t - t_q - t_t) / 2,
        "global_q2t": g_q,
        "global_t2q": g_t,
        "train_q2t": t_q,
        "train_t2q": t_t,
        "gap_q2t": g_q - t_q,
        "gap_t2q": g_t - t_t,
    }


def loss_gap(
    queries: ArrayLike,
    targets: ArrayLike,
    plan: BatchPlan,
    *,
    temperature: float = 0.05,
    metric: str = "cosine",
    device: str | None = None,
    epoch: int = 0,
) -> dict[str, float]:
    """``L_global``, expected ``L_train`` under ``plan`` and their gap.

    Parameters
    ----------
    queries, targets : array-like of shape (N, d)
    plan : BatchPlan for the same N.
    temperature : float
        NT-Xent temperature τ (default 0.05).
    metric : {"cosine", "dot"}
    device : optional torch device.
    epoch : int
        Which epoch of the plan (:meth:`BatchPlan.for_epoch`).

    Returns
    -------
    dict
        ``global``, ``train``, ``gap`` (mean of both directions) and per direction
        ``global_q2t``, ``train_q2t``, ``gap_q2t``, ``global_t2q``, ``train_t2q``, ``gap_t2q``.
    """
    g_q, g_t = global_losses(
        queries, targets, temperature=temperature, metric=metric, device=device
    )
    train = train_losses(
        queries, targets, plan, temperature=temperature, metric=metric, device=device, epoch=epoch
    )
    return _gap(g_q, g_t, train)


def negative_similarity(
    queries: ArrayLike, targets: ArrayLike, plan: BatchPlan, *, metric: str = "cosine"
) -> dict[str, float]:
    """Similarity of each query to its in-batch negatives, averaged over queries.

    Returns ``mean`` (all in-batch negatives), ``hardest`` (mean over queries of the most
    similar negative) and ``easiest`` (mean of the least similar one — the ``min`` of GCBS's
    Theorem 3.6, which the method pushes up).
    """
    train = train_losses(queries, targets, plan, metric=metric)
    c = train["covered"]
    return {
        "mean": float(np.nanmean(train["neg_mean"][c])),
        "hardest": float(np.nanmean(train["neg_max"][c])),
        "easiest": float(np.nanmean(train["neg_min"][c])),
    }


def plan_order(plan: BatchPlan) -> np.ndarray:
    """The sample order a plan induces: its ``order`` if stored, else the batches read row by
    row, followed by any samples the plan left out (``drop_last``)."""
    if plan.order is not None:
        return np.asarray(plan.order)
    ids = plan.batches[plan.batches != PAD]
    missing = np.setdiff1d(np.arange(plan.n_samples), ids)
    return np.concatenate([ids, missing])


def _group_codes(plan: BatchPlan, groups: ArrayLike) -> np.ndarray:
    """``groups`` as codes ``0..G-1`` (one per distinct label), checked against the plan."""
    if not isinstance(plan, BatchPlan):
        raise ValueError(f"plan must be a hardbatch.BatchPlan, got {type(plan).__name__}")
    labels = np.asarray(groups)
    if labels.ndim != 1:
        raise ValueError(f"groups must be 1-D with one label per sample, got shape {labels.shape}")
    if len(labels) != plan.n_samples:
        raise ValueError(
            f"groups has {len(labels)} labels, the plan was made for N={plan.n_samples}"
        )
    # Sorted distinct labels: dense integer labels 0..G-1 map to themselves.
    return np.unique(labels, return_inverse=True)[1].reshape(-1)


def batch_purity(plan: BatchPlan, groups: ArrayLike) -> float:
    """Mean over batches of the share of a batch taken by its largest group.

    Parameters
    ----------
    plan : BatchPlan
        The plan; padding (``-1``) is not counted, so a short last batch counts its real
        samples only.
    groups : array-like of shape (N,)
        A group label per sample (any hashable, sortable labels: ints, strings).

    Returns
    -------
    float
        In ``(0, 1]``; 1 when every batch holds one group. At most
        ``min(group_size, batch_size) / batch_size`` for groups of equal size.

    Raises
    ------
    ValueError
        ``plan`` is not a BatchPlan, or ``groups`` is not one label per sample.
    """
    codes = _group_codes(plan, groups)
    shares = [np.bincount(codes[ids]).max() / len(ids) for ids in plan.iter_batches()]
    return float(np.mean(shares))


def pair_purity(plan: BatchPlan, groups: ArrayLike) -> float:
    """Share of in-batch pairs whose two samples belong to the same group.

    Counts the unordered pairs ``(i, j)``, ``i != j``, that share a batch, over all batches
    (padding excluded). A random plan scores about ``(group_size - 1)/(N - 1)``; for groups of
    size ``G`` and batches of size ``B >= G`` the best plan scores ``(G - 1)/(B - 1)`` (0.49
    for groups of 32 in batches of 64). Unlike :func:`batch_purity` it credits every same-group
    pair, not only the largest group of each batch.

    Parameters
    ----------
    plan : BatchPlan
    groups : array-like of shape (N,)
        A group label per sample (any hashable, sortable labels: ints, strings).

    Returns
    -------
    float
        In ``[0, 1]``.

    Raises
    ------
    ValueError
        ``plan`` is not a BatchPlan, or ``groups`` is not one label per sample.
    """
    codes = _group_codes(plan, groups)
    same = total = 0
    for ids in plan.iter_batches():
        counts = np.bincount(codes[ids])
        same += int((counts * (counts - 1)).sum()) // 2
        total += len(ids) * (len(ids) - 1) // 2
    return same / total if total else 0.0


def group_cohesion(plan: BatchPlan, groups: ArrayLike) -> float:
    """Mean over groups of the share of a group found in its most common batch.

    Parameters
    ----------
    plan : BatchPlan
        The plan; samples it leaves out (``drop_last``) count as outside every batch.
    groups : array-like of shape (N,)
        A group label per sample (any hashable, sortable labels: ints, strings).

    Returns
    -------
    float
        In ``[0, 1]``; 1 when every group lies whole inside one batch.

    Raises
    ------
    ValueError
        ``plan`` is not a BatchPlan, or ``groups`` is not one label per sample.
    """
    codes = _group_codes(plan, groups)
    batch_of = np.full(len(codes), -1, dtype=np.int64)
    for b, ids in enumerate(plan.iter_batches()):
        batch_of[ids] = b
    kept = batch_of >= 0
    # Count each (group, batch) pair once, then keep the largest count per group.
    pairs = np.unique(np.stack([codes[kept], batch_of[kept]]), axis=1, return_counts=True)
    (group_ids, _), counts = pairs
    largest = np.zeros(codes.max() + 1)
    np.maximum.at(largest, group_ids, counts)
    return float(np.mean(largest / np.bincount(codes)))


def report(
    queries: ArrayLike,
    targets: ArrayLike,
    plan: BatchPlan,
    *,
    baseline: BatchPlan | None = None,
    temperature: float = 0.05,
    quantile: float | None = None,
    metric: str = "cosine",
    device: str | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> dict[str, dict[str, Any]]:
    """All diagnostics for ``plan`` next to a baseline (default: a random plan, same seed).

    Parameters
    ----------
    queries, targets : array-like of shape (N, d)
    plan : BatchPlan
    baseline : BatchPlan, optional
        Default: ``hardbatch.plan("random", ...)`` with the plan's batch size and seed.
    temperature : float
    quantile : float, optional
        Threshold quantile of the graph used for bandwidth and in-batch edge fraction;
        default: the quantile the plan used (``plan.info["quantile"]``), else GCBS's default
        rule for N (:func:`hardbatch.similarity.default_quantile`, about 16 pairs per row).
    metric, device, seed : see :func:`loss_gap`.
    progress : bool or None
        Progress bars over the two N² passes (global loss, graph); ``None``: only when the
        work takes seconds.

    Returns
    -------
    dict
        ``{"plan": row, "baseline": row, "graph": {...}}``; a row has the :func:`loss_gap`
        keys, ``neg_mean``/``neg_hardest``/``neg_easiest``, ``bandwidth``,
        ``mean_distance``, ``in_batch_edge_fraction``; ``plan`` also has
        ``gap_reduction`` (1 − gap/baseline gap).
    """
    from .api import plan as make_plan

    norms = check_pair(queries, targets)
    n = int(queries.shape[0])
    _check_plan(plan, n)
    if baseline is None:
        baseline = make_plan(
            "random",
            n_samples=n,
            batch_size=plan.batch_size,
            seed=plan.seed if plan.seed is not None else seed,
            drop_last=plan.drop_last,
        )
    _check_plan(baseline, n)
    if quantile is None:
        # The quantile the plan used (GCBS records it), else GCBS's default rule for N.
        quantile = float(
            plan.info.get("quantile") or plan.params.get("quantile") or default_quantile(n)
        )
    g_q, g_t = global_losses(
        queries, targets, temperature=temperature, metric=metric, device=device, progress=progress
    )
    threshold = estimate_threshold(
        queries, targets, quantile, seed=seed, metric=metric, device=device, norms=norms
    )
    graph = threshold_graph(
        queries,
        targets,
        threshold,
        metric=metric,
        values=False,
        device=device,
        max_edges=None,
        progress=progress,
    )
    rows: dict[str, dict[str, Any]] = {}
    for name, p in (("plan", plan), ("baseline", baseline)):
        train = train_losses(
            queries, targets, p, temperature=temperature, metric=metric, device=device
        )
        c = train["covered"]
        row: dict[str, Any] = {"method": p.method, **_gap(g_q, g_t, train)}
        row["neg_mean"] = float(np.nanmean(train["neg_mean"][c]))
        row["neg_hardest"] = float(np.nanmean(train["neg_max"][c]))
        row["neg_easiest"] = float(np.nanmean(train["neg_min"][c]))
        row.update(bandwidth(graph, plan_order(p), p.batch_size))
        rows[name] = row
    base_gap = rows["baseline"]["gap"]
    rows["plan"]["gap_reduction"] = 1 - rows["plan"]["gap"] / base_gap if base_gap else 0.0
    rows["graph"] = {
        "quantile": quantile,
        "threshold": threshold,
        "n_edges": int(graph.nnz),
        "temperature": temperature,
    }
    return rows


_TABLE_ROWS = (
    ("L_global", "global", "{:.4f}"),
    ("L_train (expected)", "train", "{:.4f}"),
    ("gap L_global - L_train", "gap", "{:.4f}"),
    ("  gap query->target", "gap_q2t", "{:.4f}"),
    ("  gap target->query", "gap_t2q", "{:.4f}"),
    ("in-batch neg. sim. (mean)", "neg_mean", "{:.4f}"),
    ("hardest neg. sim. (mean over queries)", "neg_hardest", "{:.4f}"),
    ("easiest neg. sim. (mean over queries)", "neg_easiest", "{:.4f}"),
    ("graph edges inside a batch", "in_batch_edge_fraction", "{:.1%}"),
    ("bandwidth of thresholded matrix", "bandwidth", "{:.0f}"),
    ("mean |pos(i)-pos(j)| over edges", "mean_distance", "{:.1f}"),
)


def format_report(rows: dict[str, dict[str, Any]]) -> str:
    """Render :func:`report` output as a plain-text table."""
    plan, base, graph = rows["plan"], rows["baseline"], rows["graph"]
    width = max(len(label) for label, _, _ in _TABLE_ROWS)
    head_plan, head_base = plan["method"], base["method"]
    lines = [f"{'':<{width}}  {head_plan:>12}  {head_base:>12}"]
    for label, key, fmt in _TABLE_ROWS:
        lines.append(f"{label:<{width}}  {fmt.format(plan[key]):>12}  {fmt.format(base[key]):>12}")
    lines.append("")
    lines.append(
        f"gap reduction vs {head_base}: {plan['gap_reduction']:.1%}   "
        f"(τ={graph['temperature']}, graph: quantile {graph['quantile']}, "
        f"threshold {graph['threshold']:.4f}, {graph['n_edges']} edges)"
    )
    return "\n".join(lines)
