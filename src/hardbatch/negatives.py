"""Per-example hard negatives mined from teacher ranks and clusters (B3's optional extras).

For n-tuple losses every example gets ``n`` extra negatives on top of its in-batch ones.
B3 scores candidates per *cluster* (pooled over its members) and samples from that score:

* **Retrieval targets** (:func:`cluster_hard_negatives`): a candidate target scores one point
  for every member that ranks it in ``[0, p + depth)`` and loses ``penalty`` points for every
  member that ranks it in the top ``p`` (likely false negatives of that member); the members
  themselves score zero. ``depth = 100`` and ``penalty = 2`` are the authors' values. The
  cluster's ``K·n`` negatives are drawn together with probability proportional to the
  positive scores, without replacement (so members get different negatives), then dealt out
  at random. When a cluster has fewer than ``K·n`` positive candidates, each member draws its
  ``n`` separately from all of them; if even that is short, the rest are uniform random
  non-members.
* **Class-label targets** (:func:`label_hard_negatives`): candidates are labels; a label
  scores one point for every member that has it among its top labels (own label excluded).
  Each member draws ``n`` labels with probability proportional to the score, never its own
  label (the authors' code can hand an example its own label). A label is returned as a
  representative example of that label outside the cluster.

In both, a returned negative is never the example itself nor a member of its cluster.
"""

from __future__ import annotations

import numpy as np

from .batching import PAD
from .validation import check_positive_int

#: Ranks ``[0, p + HARD_NEGATIVE_DEPTH)`` of every member are scored (authors' value).
HARD_NEGATIVE_DEPTH = 100
#: Points lost per top-``p`` appearance (authors' value).
TOP_P_PENALTY = 2


def _weighted_top(weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Row-wise weighted sampling without replacement (Efraimidis–Spirakis keys).

    Returns the column indices of the ``n`` largest keys ``log(u) / w`` per row (zero weights
    get ``-inf`` and come last), shape ``(rows, n)``.
    """
    if n <= 0:
        return np.zeros((weights.shape[0], 0), dtype=np.int64)
    u = rng.random(weights.shape)
    with np.errstate(divide="ignore"):
        keys = np.where(weights > 0, np.log(u) / np.where(weights > 0, weights, 1), -np.inf)
    if n >= weights.shape[1]:
        return np.argsort(-keys, axis=1, kind="stable")
    top = np.argpartition(-keys, n - 1, axis=1)[:, :n]
    return top


def cluster_hard_negatives(
    clusters: np.ndarray,
    ranks: np.ndarray,
    p: int,
    n: int,
    *,
    rng: np.random.Generator,
    depth: int = HARD_NEGATIVE_DEPTH,
    penalty: float = TOP_P_PENALTY,
) -> np.ndarray:
    """B3's pooled per-cluster hard negatives for retrieval data (module docstring).

    Parameters
    ----------
    clusters : np.ndarray of shape (n_clusters, K), int, padded with ``PAD``
        Every sample ``0..N-1`` exactly once.
    ranks : np.ndarray of shape (N, k), ``k >= p + depth``
        Teacher ranks, best first, self excluded (:func:`hardbatch.similarity.top_ranks`).
    p : int
        Top ranks that count as likely false negatives.
    n : int
        Negatives per example.
    rng : np.random.Generator
    depth, penalty : see module constants.

    Returns
    -------
    np.ndarray of shape (N, n), int64
        Row ``i``: the hard negatives of example ``i``.
    """
    n = check_positive_int(n, "hard_negatives")
    n_samples, k = ranks.shape
    width = p + depth
    if width > k:
        raise ValueError(f"scoring ranks [0, {width}) needs {width} ranks, got {k}")
    out = np.empty((n_samples, n), dtype=np.int64)
    for row in np.asarray(clusters):
        members = row[row != PAD]
        pool = ranks[members, :width].ravel()
        cand, score = np.unique(pool, return_counts=True)
        score = score.astype(np.float64)
        top_cand, top_count = np.unique(ranks[members, :p].ravel(), return_counts=True)
        score[np.searchsorted(cand, top_cand)] -= penalty * top_count
        score[np.isin(cand, members)] = 0.0
        positive = score > 0
        need = members.size * n
        if positive.sum() >= need:
            # Pooled draw: all K·n distinct, dealt to members in random order.
            picked = _weighted_top(score[None, :], need, rng)[0]
            out[members] = cand[rng.permutation(picked)].reshape(members.size, n)
            continue
        # Per member: n distinct positive candidates, or all of them plus random outsiders.
        take = min(n, int(positive.sum()))
        weights = np.broadcast_to(score, (members.size, cand.size))
        chosen = cand[_weighted_top(weights, take, rng)]
        if take < n:
            extra = _random_outsiders(n_samples, members, chosen, n - take, rng)
            chosen = np.concatenate([chosen, extra], axis=1)
        out[members] = chosen
    return out


def _random_outsiders(
    n_samples: int, members: np.ndarray, taken: np.ndarray, count: int, rng: np.random.Generator
) -> np.ndarray:
    """Per member, ``count`` distinct uniform ids that are neither members nor ``taken``."""
    rows = np.empty((members.size, count), dtype=np.int64)
    for r in range(members.size):
        banned = set(members.tolist()) | set(taken[r].tolist())
        if n_samples - len(banned) < count:
            raise ValueError(
                f"cannot draw {count} more hard negatives outside a cluster of {members.size} "
                f"among N={n_samples} samples; lower hard_negatives"
            )
        got: list[int] = []
        while len(got) < count:
            for x in rng.integers(n_samples, size=2 * count).tolist():
                if x not in banned:
                    banned.add(x)
                    got.append(x)
                    if len(got) == count:
                        break
        rows[r] = got
    return rows


def label_hard_negatives(
    clusters: np.ndarray,
    top_labels: np.ndarray,
    labels: np.ndarray,
    n: int,
    *,
    rng: np.random.Generator,
) -> np.ndarray:
    """B3's per-cluster hard negatives for class-label targets (module docstring).

    Parameters
    ----------
    clusters : np.ndarray of shape (n_clusters, K), int, padded with ``PAD``
    top_labels : np.ndarray of shape (N, t), int
        Every example's top labels, own excluded
        (:func:`hardbatch.similarity.label_ranks`).
    labels : np.ndarray of shape (N,), int
        Label code of every example.
    n : int
        Negatives per example.
    rng : np.random.Generator

    Returns
    -------
    np.ndarray of shape (N, n), int64
        Example ids standing for the negative labels: the lowest id of that label outside
        the cluster. Never the example's own label, itself, or a member of its cluster.
        A member with fewer than ``n`` eligible labels gets repeats.
    """
    n = check_positive_int(n, "hard_negatives")
    labels = np.asarray(labels, dtype=np.int64)
    n_samples = labels.size
    n_labels = int(labels.max()) + 1
    by_label = np.argsort(labels, kind="stable")  # ids grouped by label, ascending within
    label_start = np.r_[0, np.cumsum(np.bincount(labels, minlength=n_labels))]
    out = np.empty((n_samples, n), dtype=np.int64)
    for row in np.asarray(clusters):
        members = row[row != PAD]
        cand, score = np.unique(top_labels[members].ravel(), return_counts=True)
        reps = _representatives(cand, members, by_label, label_start)
        weights = np.where(reps >= 0, score, 0).astype(np.float64)
        weights = np.broadcast_to(weights, (members.size, cand.size)).copy()
        weights[cand[None, :] == labels[members][:, None]] = 0.0  # never the own label
        fallback = ~(weights > 0).any(axis=1)
        if fallback.any():
            # No scored label left: any other label represented outside the cluster.
            everything = np.arange(n_labels)
            all_reps = _representatives(everything, members, by_label, label_start)
            for r in np.flatnonzero(fallback):
                ok = (all_reps >= 0) & (everything != labels[members[r]])
                if not ok.any():
                    raise ValueError(
                        "no label other than the example's own has an example outside its "
                        "cluster; hard negatives are impossible for this data"
                    )
                out[members[r]] = rng.choice(all_reps[ok], size=n, replace=ok.sum() < n)
        rows = np.flatnonzero(~fallback)
        if rows.size == 0:
            continue
        w = weights[rows]
        order = _weighted_top(w, min(n, cand.size), rng)
        picked = np.take_along_axis(w, order, axis=1) > 0
        for i, r in enumerate(rows.tolist()):
            got = reps[order[i][picked[i]]]
            if got.size < n:  # too few eligible labels: repeat them
                got = np.resize(rng.permutation(got), n)
            out[members[r]] = got[:n]
    return out


def _representatives(
    cand: np.ndarray, members: np.ndarray, by_label: np.ndarray, label_start: np.ndarray
) -> np.ndarray:
    """Lowest id of every label in ``cand`` that is not a member (-1 if there is none)."""
    reps = by_label[label_start[cand]]
    # Only the few labels whose lowest id is a member need a longer look.
    for i in np.flatnonzero(np.isin(reps, members)).tolist():
        b = int(cand[i])
        # At most |members| ids of a label are members: one more is enough to look at.
        stop = min(label_start[b + 1], label_start[b] + members.size + 1)
        ids = by_label[label_start[b] : stop]
        outside = ids[~np.isin(ids, members)]
        reps[i] = outside[0] if outside.size else -1
    return reps
