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
:meth:`HardnessSchedule.decay` (1 at epoch 0 down to 0 at the last epoch) is README's recipe
for heads over frozen features and static tables (a fine-tuned encoder: constant hardness).

``hardness="auto"`` (the default of GCBS and B3) picks the dial from the data: the share of
**teacher-suspect pairs in random batches** — pairs ``(i, j)``, ``j != i``, whose cosine
``s(q_i, t_j)`` exceeds ``0.95 · s(q_i, t_i)`` (the default rule and margin of
:func:`hardbatch.losses.false_negative_mask`) — estimated on a seeded sample of
:data:`AUTO_SAMPLE_ROWS` × :data:`AUTO_SAMPLE_COLS` pairs of the embeddings given to the plan.
Up to :data:`AUTO_SUSPECT_FULL` the method's own batches are kept (``h = 1``); from
:data:`AUTO_SUSPECT_HALF` on half of each batch is random fill (``h = AUTO_MIN_HARDNESS``);
linear between. Why this signal: it is the density of near-positives that a hard batch
concentrates (a false negative the mask may miss, or one it must mask, costing the batch a
negative), and it separated the tasks where full hardness trained better from those where half
did (README "Recipe"; ``benchmarks/evidence.py --parts recipe``): code search 1.1–1.9 % (full
hardness + mask ahead of half in the issue's held-out run, +1.0 vs +0.5 MRR), WordNet
definitions 6.9–7.4 % and a held-out text task 8 % (half hardness + mask ahead). Planted groups
(the demo) have 0 %: their plans stay the method's own. One embedding set for both sides
(``targets`` the same as ``queries``) has no suspect pairs, so ``h = 1``. The choice is in
``plan.info["hardness"]["auto"]`` and the resolved value in ``plan.params["hardness"]``.
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

    @classmethod
    def decay(cls, n_epochs: int, start: float = 1.0) -> HardnessSchedule:
        """Hard batches first, random ones last: ``start`` (1: the method's own batches) at
        epoch 0, linearly down to 0 (random) at the run's last epoch, ``n_epochs - 1`` (>= 1).

        Why: in README's recipe it trained frozen heads and static tables better than constant
        hardness on every whole corpus (frozen code + mask +1.3 MRR vs +0.6, static +0.6 vs
        -1.2) and a ramp up; not a fine-tuned encoder (+0.4 vs +2.1). A later epoch is random
        too and warns (:meth:`at`).
        """
        if isinstance(n_epochs, bool) or not isinstance(n_epochs, (int, np.integer)):
            raise ValueError(f"n_epochs must be an integer >= 2, got {n_epochs!r}")
        if n_epochs < 2:
            raise ValueError(
                f"a decay needs n_epochs >= 2 (the run's epoch count), got {n_epochs}; "
                "for one epoch use a constant hardness"
            )
        return cls.linear(start, 0.0, int(n_epochs) - 1)

    @property
    def is_constant(self) -> bool:
        """Whether every epoch has the same hardness."""
        return self.start == self.end

    def at(self, epoch: int) -> float:
        """Hardness of epoch ``epoch`` (>= 0).

        An epoch past a schedule that came down to 0 warns (:class:`NearRandomPlanWarning`):
        the run trains longer than it was made for (e.g. :meth:`decay` given too few epochs)."""
        if self.is_constant or epoch >= self.epochs:
            if not self.is_constant and self.end == 0.0 and epoch > self.epochs:
                warnings.warn(
                    f"hardness schedule came down to 0 (random batches) at epoch "
                    f"{self.epochs}; epoch {int(epoch)} is past it and gets random batches "
                    "too; give it the run's epoch count (HardnessSchedule.decay(n_epochs)).",
                    NearRandomPlanWarning,
                    stacklevel=2,
                )
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
    its JSON form (plan files hold JSON); ``"auto"`` stays ``"auto"`` (a fitted plan records
    the dial it resolved to)."""
    if is_auto(value):
        return AUTO
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


# ----------------------------------------------------------------------------- auto
#: ``hardness="auto"``: choose the dial from the data (module docstring).
AUTO = "auto"
#: Teacher-suspect share of random pairs up to which ``"auto"`` keeps the method's batches.
AUTO_SUSPECT_FULL = 0.02
#: Share from which ``"auto"`` uses :data:`AUTO_MIN_HARDNESS`.
AUTO_SUSPECT_HALF = 0.06
#: The lowest dial ``"auto"`` picks.
AUTO_MIN_HARDNESS = 0.5
#: Relative margin of the suspect rule (``false_negative_mask``'s default margin).
SUSPECT_MARGIN = 0.95
#: Sampled query rows and target columns of the suspect-share estimate (8.4 M pairs at most:
#: a share of 1 % is known to about ±0.05 %; rows and columns are sampled, not all N²).
AUTO_SAMPLE_ROWS = 2048
AUTO_SAMPLE_COLS = 4096


def is_auto(value: Any) -> bool:
    """Whether ``hardness=`` asks for the data-driven dial (``"auto"``)."""
    return isinstance(value, str) and value == AUTO


def check_hardness_param(value: Any) -> Any:
    """A ``hardness=`` parameter: ``"auto"`` or anything :func:`as_schedule` takes
    (``ValueError`` naming ``hardness`` otherwise). Returns the value."""
    if isinstance(value, str) and not is_auto(value):
        raise ValueError(
            f"hardness must be 'auto', a float in [0, 1] or a HardnessSchedule, got {value!r}"
        )
    if not is_auto(value):
        as_schedule(value)
    return value


def hardness_from_text(text: str) -> str | float | HardnessSchedule:
    """``--hardness`` of the CLI: ``auto``, a number or ``decay:E`` (``HardnessSchedule.decay``)."""
    text, (kind, _, epochs) = text.strip(), text.strip().partition(":")
    if text.lower() == AUTO:
        return AUTO
    try:
        return HardnessSchedule.decay(int(epochs)) if kind.lower() == "decay" else float(text)
    except ValueError:
        raise ValueError(
            f"hardness must be 'auto', a number in [0, 1] or decay:E, got {text!r}"
        ) from None


def suspect_share(
    queries: Any,
    targets: Any,
    norms: tuple[np.ndarray, np.ndarray],
    *,
    seed: int,
    margin: float = SUSPECT_MARGIN,
    rows: int = AUTO_SAMPLE_ROWS,
    cols: int = AUTO_SAMPLE_COLS,
) -> tuple[float, int]:
    """Share of random pairs ``(i, j)``, ``j != i``, with ``s(q_i, t_j) > margin · s(q_i, t_i)``
    and ``s(q_i, t_i) > 0`` (cosine; the loss's relative rule), on a seeded sample of
    ``rows`` queries × ``cols`` targets (all when N is smaller); and the number of pairs it
    counted."""
    n = len(norms[0])
    if n < 2:
        return 0.0, 0
    rng = np.random.default_rng([int(seed), 4])
    row_ids = np.sort(rng.choice(n, size=min(rows, n), replace=False))
    col_ids = np.sort(rng.choice(n, size=min(cols, n), replace=False))
    q = _unit_rows(queries, row_ids, norms[0])
    t = _unit_rows(targets, col_ids, norms[1])
    positive = np.einsum("ij,ij->i", q, _unit_rows(targets, row_ids, norms[1]))
    scores = q @ t.T
    # As the loss's mask: only rows whose positive scores above 0 mark anything.
    suspect = (scores > margin * positive[:, None]) & (positive > 0)[:, None]
    same = row_ids[:, None] == col_ids[None, :]
    pairs = int(suspect.size - same.sum())
    share = float((suspect & ~same).sum() / pairs) if pairs else 0.0
    return share, pairs


def auto_dial(share: float) -> float:
    """The dial ``"auto"`` picks for a suspect share (1 up to :data:`AUTO_SUSPECT_FULL`,
    :data:`AUTO_MIN_HARDNESS` from :data:`AUTO_SUSPECT_HALF`, linear between; rounded to
    0.01 so that a tiny change of the estimate does not move the plan)."""
    span = (share - AUTO_SUSPECT_FULL) / (AUTO_SUSPECT_HALF - AUTO_SUSPECT_FULL)
    fraction = min(max(span, 0.0), 1.0)
    return round(1.0 - fraction * (1.0 - AUTO_MIN_HARDNESS), 2)


def resolve_auto(
    queries: Any, targets: Any, norms: tuple[np.ndarray, np.ndarray], *, seed: int
) -> tuple[float, dict[str, Any]]:
    """``hardness="auto"`` for these embeddings: ``(dial, record)``; ``record`` goes to
    ``plan.info["hardness"]["auto"]``."""
    same = targets is queries
    share, pairs = (0.0, 0) if same else suspect_share(queries, targets, norms, seed=seed)
    dial = auto_dial(share)
    record = {
        "hardness": dial,
        "suspect_share": share,
        "pairs_sampled": pairs,
        "rule": f"s(q_i, t_j) > {SUSPECT_MARGIN} * s(q_i, t_i)",
        "full_up_to": AUTO_SUSPECT_FULL,
        "half_from": AUTO_SUSPECT_HALF,
    }
    if same:
        record["note"] = "queries are the targets: no suspect pairs, the method's own batches"
    return dial, record


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
    "AUTO",
    "AUTO_MIN_HARDNESS",
    "AUTO_SUSPECT_FULL",
    "AUTO_SUSPECT_HALF",
    "EDGE_SAMPLE",
    "SUSPECT_MARGIN",
    "auto_dial",
    "check_hardness_param",
    "hardness_from_text",
    "is_auto",
    "resolve_auto",
    "suspect_share",
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
