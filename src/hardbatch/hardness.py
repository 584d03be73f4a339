"""How hard a plan is, the hardness dial and its schedule over epochs, and the near-random warning.

Every plan of a graph method (GCBS, B3) records in ``plan.info["hardness"]``:

``dial``
    The hardness the plan's epoch 0 was made with (see below; 1 = the method's own batches).
``isolated_share``
    Share of samples with no edge in the method's graph (GCBS: no pair above the threshold /
    in the top-k, either direction; B3: no mutual rank-window partner). An isolated sample
    can only land in a batch by chance. From the method's graph, exact.
``edge_share`` / ``edge_share_random``
    Share of the graph's directed edges ``(i, j)``, ``i != j``, whose two samples share a
    batch of the plan, and the same share expected for a uniformly random plan with the same
    batch layout: ``sum_b n_b (n_b - 1) / (N (N - 1))`` (``≈ (B - 1)/(N - 1)``). Exact on
    every edge up to :data:`EDGE_SAMPLE` edges, above that on a seeded uniform sample of
    :data:`EDGE_SAMPLE` edges (``edges_sampled`` true; standard error ``< 0.0005``). With a
    dial below 1, ``edge_share_undialled`` is the share of the method's batches before the dial.
``neg_similarity`` / ``neg_similarity_random``
    Mean cosine similarity of a query to its in-batch negative targets (all ordered pairs
    ``i != j`` of every batch, pooled), and its expectation for a random plan: the mean over
    all ``N (N - 1)`` pairs. Both exact over all batches, from the given embeddings (cosine
    whatever the method's metric): ``sum_{i != j} q_i·t_j = (sum q)·(sum t) - sum q_i·t_i``
    per batch, so the cost is one pass over the rows, ``O(N·d)``.

A plan is **close to random** when ``isolated_share > 0.5`` (most samples have no neighbour
to be batched with) or when the method's own batches keep fewer than twice the random share
of the graph's edges (``edge_share_undialled < 2 · edge_share_random``, judged only while
``2 · edge_share_random < 1``). The dial is not judged: hardness below 1 is asked-for
randomness. Such a plan warns once per ``(method, reason)`` per process with a
:class:`NearRandomPlanWarning`, naming the parameter to change (``warnings.filterwarnings(
"ignore", category=hardbatch.NearRandomPlanWarning)`` silences it).

The dial (``hardness=`` of every hard method, :class:`HardnessSchedule` over epochs): each
batch keeps its first ``round(h·b)`` members, and the released members of all batches are
shuffled together into the free slots (:func:`hardbatch.batching.mix_random_fill`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from .batching import PAD

#: Most graph edges the edge share is counted on exactly; above, a seeded sample of this many.
EDGE_SAMPLE = 1_000_000

#: ``isolated_share`` above this makes a plan close to random.
MAX_ISOLATED_SHARE = 0.5

#: A plan whose batches keep fewer than this many times the random share of edges is close
#: to random.
MIN_EDGE_SHARE_RATIO = 2.0

#: Rows gathered at a time for the similarity statistics.
_CHUNK_ROWS = 16384


# ----------------------------------------------------------------------------- schedule
@dataclass(frozen=True)
class HardnessSchedule:
    """The hardness dial over epochs: constant, or a linear ramp.

    Make one with :meth:`constant` or :meth:`linear`; pass it as ``hardness=`` to a hard
    method (``hardbatch.plan``, ``HardBatchSampler``). It is stored in ``plan.params`` as its
    JSON form (:meth:`to_json`), so a saved plan keeps its schedule and
    ``BatchPlan.for_epoch(e)`` applies ``at(e)``.

    Attributes
    ----------
    start, end : float
        Hardness at epoch 0 and from epoch ``epochs`` on (equal for a constant schedule).
    epochs : int
        The epoch at which the ramp reaches ``end`` (0 for a constant schedule).
    """

    start: float
    end: float
    epochs: int = 0

    def __post_init__(self) -> None:
        check_hardness(self.start, "hardness schedule start")
        check_hardness(self.end, "hardness schedule end")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, (int, np.integer)):
            raise ValueError(f"hardness schedule epochs must be an integer, got {self.epochs!r}")
        if self.epochs < 0 or (self.epochs == 0 and self.start != self.end):
            raise ValueError(f"a linear hardness schedule needs epochs >= 1, got {self.epochs}")

    @classmethod
    def constant(cls, hardness: float) -> HardnessSchedule:
        """The same hardness every epoch."""
        h = check_hardness(hardness)
        return cls(h, h, 0)

    @classmethod
    def linear(cls, start: float, end: float, epochs: int) -> HardnessSchedule:
        """From ``start`` at epoch 0 linearly to ``end`` at epoch ``epochs``, then ``end``."""
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise ValueError(f"hardness schedule epochs must be an integer >= 1, got {epochs!r}")
        return cls(check_hardness(start, "start"), check_hardness(end, "end"), int(epochs))

    @property
    def is_constant(self) -> bool:
        """Whether every epoch has the same hardness."""
        return self.start == self.end

    def at(self, epoch: int) -> float:
        """Hardness of epoch ``epoch`` (>= 0)."""
        if self.is_constant or epoch >= self.epochs:
            return float(self.end)
        return float(self.start + (self.end - self.start) * (int(epoch) / self.epochs))

    def to_json(self) -> dict[str, Any]:
        """The JSON form stored in ``plan.params["hardness"]``."""
        if self.is_constant:
            return {"schedule": "constant", "hardness": float(self.end)}
        return {
            "schedule": "linear",
            "start": float(self.start),
            "end": float(self.end),
            "epochs": int(self.epochs),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HardnessSchedule:
        """The schedule of a :meth:`to_json` dict (``ValueError`` for anything else)."""
        kind = data.get("schedule")
        try:
            if kind == "constant" and set(data) == {"schedule", "hardness"}:
                return cls.constant(data["hardness"])
            if kind == "linear" and set(data) == {"schedule", "start", "end", "epochs"}:
                return cls.linear(data["start"], data["end"], data["epochs"])
        except ValueError as exc:
            raise ValueError(f"hardness: {exc}") from None
        raise ValueError(
            "hardness must be a float in [0, 1], a HardnessSchedule or its JSON form "
            f"({{'schedule': 'constant' | 'linear', ...}}), got {data!r}"
        )


def check_hardness(value: Any, name: str = "hardness") -> float:
    """A hardness value: a real number in [0, 1] (``ValueError`` naming ``name`` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a float in [0, 1], got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also false for NaN
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value


def as_schedule(value: Any) -> HardnessSchedule:
    """``hardness=`` as a schedule: a float (constant), a :class:`HardnessSchedule`, or the
    JSON form stored in a plan's params. ``ValueError`` naming ``hardness`` otherwise."""
    if isinstance(value, HardnessSchedule):
        return value
    if isinstance(value, dict):
        return HardnessSchedule.from_json(value)
    return HardnessSchedule.constant(check_hardness(value))


def hardness_param(value: Any) -> Any:
    """``hardness=`` as recorded in ``plan.params``: a float stays a float, a schedule becomes
    its JSON form (plan files hold JSON)."""
    schedule = as_schedule(value)
    if isinstance(value, (HardnessSchedule, dict)):
        return schedule.to_json()
    return schedule.end


# ----------------------------------------------------------------------------- statistics
@dataclass
class HardnessGraph:
    """The edges of a method's graph that the hardness statistics count.

    Attributes
    ----------
    rows, cols : np.ndarray of shape (m,), int64
        Edges ``(i, j)`` in sample ids, no diagonal: all of them, or a seeded uniform sample.
    n_edges : int
        Edges of the graph (directed entries, diagonal excluded).
    n_isolated : int
        Samples with no edge.
    sampled : bool
        Whether ``rows, cols`` is a sample.
    """

    rows: np.ndarray
    cols: np.ndarray
    n_edges: int
    n_isolated: int
    sampled: bool = False

    @classmethod
    def from_csr(
        cls,
        graph: sp.csr_matrix,
        n_isolated: int,
        *,
        seed: int,
        ids: np.ndarray | None = None,
        limit: int = EDGE_SAMPLE,
    ) -> HardnessGraph:
        """The edges of a CSR graph (``ids`` maps its local rows to sample ids); a seeded
        sample of ``limit`` (with replacement: ``O(limit)`` memory at any size) above it."""
        indptr = np.asarray(graph.indptr, dtype=np.int64)
        nnz = int(indptr[-1])
        if nnz <= limit:
            rows = np.repeat(np.arange(graph.shape[0], dtype=np.int64), np.diff(indptr))
            cols = np.asarray(graph.indices, dtype=np.int64)
        else:
            pos = np.random.default_rng([int(seed), 0, 4]).integers(0, nnz, size=limit)
            rows = np.searchsorted(indptr, pos, side="right") - 1
            cols = np.asarray(graph.indices[pos], dtype=np.int64)
        off = rows != cols
        rows, cols = rows[off], cols[off]
        n_diag = int(np.count_nonzero(graph.diagonal())) if nnz > limit else int((~off).sum())
        if ids is not None:
            rows, cols = ids[rows], ids[cols]
        return cls(rows, cols, nnz - n_diag, int(n_isolated), nnz > limit)

    @classmethod
    def concat(cls, parts: list[HardnessGraph], *, seed: int) -> HardnessGraph:
        """One graph of several (B3's groups), capped at :data:`EDGE_SAMPLE` sampled edges."""
        rows = np.concatenate([p.rows for p in parts])
        cols = np.concatenate([p.cols for p in parts])
        sampled = any(p.sampled for p in parts)
        if rows.size > EDGE_SAMPLE:
            keep = np.random.default_rng([int(seed), 0, 4]).choice(rows.size, EDGE_SAMPLE, False)
            rows, cols, sampled = rows[keep], cols[keep], True
        return cls(
            rows,
            cols,
            sum(p.n_edges for p in parts),
            sum(p.n_isolated for p in parts),
            sampled,
        )


def _batch_of(batches: np.ndarray, n: int) -> np.ndarray:
    """Batch row of every sample (-1: in no batch, e.g. dropped by ``drop_last``)."""
    batch_of = np.full(n, -1, dtype=np.int64)
    valid = batches != PAD
    batch_of[batches[valid]] = np.broadcast_to(np.arange(len(batches))[:, None], batches.shape)[
        valid
    ]
    return batch_of


def edge_share(batches: np.ndarray, graph: HardnessGraph, n: int) -> float:
    """Share of ``graph``'s edges whose two samples share a batch of ``batches``."""
    if graph.rows.size == 0:
        return 0.0
    batch_of = _batch_of(np.asarray(batches), n)
    a, b = batch_of[graph.rows], batch_of[graph.cols]
    return float(np.count_nonzero((a == b) & (a >= 0)) / graph.rows.size)


def random_edge_share(batches: np.ndarray, n: int) -> float:
    """Probability that two given distinct samples share a batch of a random plan with the
    layout of ``batches``: ``sum_b n_b (n_b - 1) / (N (N - 1))``."""
    sizes = (np.asarray(batches) != PAD).sum(axis=1).astype(np.float64)
    return float((sizes * (sizes - 1)).sum() / (n * (n - 1))) if n > 1 else 0.0


def _unit_rows(a: Any, idx: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of an (N, d) array or tensor, float64, scaled to unit length."""
    if isinstance(a, torch.Tensor):
        rows = a[torch.as_tensor(idx, device=a.device)].double().cpu().numpy()
    else:
        rows = np.asarray(a[idx], dtype=np.float64)
    return rows / np.maximum(norms[idx], 1e-12)[:, None]


def negative_similarity(
    batches: np.ndarray, queries: Any, targets: Any, norms: tuple[np.ndarray, np.ndarray]
) -> tuple[float, float]:
    """``(in-batch, random)`` mean cosine of a query to its negative targets (module docstring).

    ``norms``: the row norms of queries and targets (from
    :func:`hardbatch.validation.check_pair`).
    """
    batches = np.asarray(batches)
    n = len(norms[0])
    total_q = total_t = 0.0
    diag_all = 0.0
    for start in range(0, n, _CHUNK_ROWS):
        idx = np.arange(start, min(start + _CHUNK_ROWS, n))
        q, t = _unit_rows(queries, idx, norms[0]), _unit_rows(targets, idx, norms[1])
        total_q = total_q + q.sum(axis=0)
        total_t = total_t + t.sum(axis=0)
        diag_all += float(np.einsum("ij,ij->", q, t))
    random = (float(np.dot(total_q, total_t)) - diag_all) / (n * (n - 1))

    width = batches.shape[1]
    per = max(1, _CHUNK_ROWS // width)
    inside = pairs = 0.0
    for start in range(0, len(batches), per):
        chunk = batches[start : start + per]
        valid = chunk != PAD
        ids = chunk[valid]
        qs, ts = _unit_rows(queries, ids, norms[0]), _unit_rows(targets, ids, norms[1])
        d = qs.shape[1]
        q_grid = np.zeros((*chunk.shape, d))
        t_grid = np.zeros((*chunk.shape, d))
        q_grid[valid], t_grid[valid] = qs, ts
        sums = np.einsum("bd,bd->", q_grid.sum(axis=1), t_grid.sum(axis=1))
        inside += float(sums) - float(np.einsum("ij,ij->", qs, ts))
        sizes = valid.sum(axis=1).astype(np.float64)
        pairs += float((sizes * (sizes - 1)).sum())
    return (inside / pairs if pairs else float("nan")), random


def plan_hardness(
    batches: np.ndarray,
    *,
    n: int,
    graph: HardnessGraph,
    dial: float,
    undialled: np.ndarray | None = None,
    embeddings: tuple[Any, Any, tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """The ``plan.info["hardness"]`` statistics of ``batches`` (see the module docstring).

    Parameters
    ----------
    batches : np.ndarray of shape (n_batches, B)
        The plan's (epoch 0) batches, padded with ``PAD``.
    n : int
    graph : HardnessGraph
        The method's graph.
    dial : float
        The hardness the batches were made with.
    undialled : np.ndarray, optional
        The method's batches before the dial (when ``dial < 1``).
    embeddings : (queries, targets, norms), optional
        For the negative similarities.
    """
    stats: dict[str, Any] = {
        "dial": float(dial),
        "isolated_share": graph.n_isolated / n,
        "n_edges": int(graph.n_edges),
        "edges_counted": int(graph.rows.size),
        "edges_sampled": bool(graph.sampled),
        "edge_share": edge_share(batches, graph, n),
        "edge_share_random": random_edge_share(batches, n),
    }
    if undialled is not None:
        stats["edge_share_undialled"] = edge_share(undialled, graph, n)
    if embeddings is not None:
        inside, random = negative_similarity(batches, *embeddings)
        stats["neg_similarity"], stats["neg_similarity_random"] = inside, random
    stats["near_random"] = near_random_reasons(stats)
    return stats


# ----------------------------------------------------------------------------- warning
class NearRandomPlanWarning(UserWarning):
    """A hard method made a plan that is close to random (see :mod:`hardbatch.hardness`)."""


#: ``(method, reason)`` pairs already warned about in this process.
_WARNED: set[tuple[str, str]] = set()


def near_random_reasons(stats: dict[str, Any]) -> list[str]:
    """Why a plan is close to random: ``"isolated"`` and/or ``"edges"`` (empty: it is not)."""
    reasons = []
    if stats["isolated_share"] > MAX_ISOLATED_SHARE:
        reasons.append("isolated")
    share = stats.get("edge_share_undialled", stats["edge_share"])
    bound = MIN_EDGE_SHARE_RATIO * stats["edge_share_random"]
    if stats["n_edges"] and bound < 1.0 and share < bound:
        reasons.append("edges")
    return reasons


def warn_near_random(method: str, stats: dict[str, Any], *, n: int, rule: str, advice: str) -> None:
    """Warn (once per ``(method, reason)`` per process) for each reason in
    ``stats["near_random"]``; ``rule`` names the parameters that made the graph, ``advice``
    what to change."""
    for reason in stats["near_random"]:
        if (method, reason) in _WARNED:
            continue
        _WARNED.add((method, reason))
        if reason == "isolated":
            what = (
                f"{math.floor(100 * stats['isolated_share'])}% of samples have no neighbour "
                f"at {rule} (N={n})"
            )
        else:
            share = stats.get("edge_share_undialled", stats["edge_share"])
            what = (
                f"its batches keep {share:.1%} of the graph's edges at {rule} (N={n}), "
                f"a random plan {stats['edge_share_random']:.1%}"
            )
        warnings.warn(
            f"{method.upper()} plan is close to random: {what}; {advice}",
            NearRandomPlanWarning,
            stacklevel=4,
        )


def reset_near_random_warnings() -> None:
    """Forget which near-random warnings were given (they are given once per process)."""
    _WARNED.clear()


__all__ = [
    "EDGE_SAMPLE",
    "HardnessGraph",
    "HardnessSchedule",
    "NearRandomPlanWarning",
    "as_schedule",
    "check_hardness",
    "edge_share",
    "hardness_param",
    "negative_similarity",
    "plan_hardness",
    "random_edge_share",
    "reset_near_random_warnings",
    "warn_near_random",
]
