"""Loss side: false-negative masks and a masked InfoNCE, with no extra forward pass.

Hard batches put near-duplicates of a query's positive into its batch; InfoNCE then pushes them
away as negatives. :func:`false_negative_mask` marks such *suspect* negatives from embeddings the
training already has, and :func:`info_nce` leaves the marked pairs out of the softmax:

>>> mask = false_negative_mask(teacher_q, teacher_t)  # (B, B') bool, True = leave out
>>> loss = info_nce(student_q, student_t, mask=mask)

Where the mask embeddings come from (none costs a forward pass):

* a B3 plan's teacher embeddings (the ``queries``/``targets`` it was planned from), indexed by
  the batch's sample ids;
* a GCBS plan's recorded embeddings (:attr:`hardbatch.EmbeddingRecorder.queries_` /
  ``targets_``), indexed likewise: the student's embeddings from its last visit of each sample;
* the student's own outputs of this step, detached (:class:`MaskedInfoNCELoss`'s default).

Whether to mask with a teacher at all: :func:`teacher_mask_advice` compares the student's and
the teacher's retrieval MRR on validation pairs (a student that passes its teacher is held back
by the teacher's marks).

Column layout: row ``i`` of ``queries`` is the positive pair of row ``i`` of ``targets``; the
``B'`` ≥ ``B`` targets are the ``B`` in-batch targets followed by any extra targets (mined hard
negatives), which have no positive row. The positive ``(i, i)`` is never masked.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "RULES",
    "TEACHER_MASK_MAX_RATIO",
    "MaskedInfoNCELoss",
    "TeacherMaskAdvice",
    "false_negative_mask",
    "info_nce",
    "retrieval_mrr",
    "teacher_mask_advice",
]

#: Rules of :func:`false_negative_mask`.
RULES = ("relative", "absolute", "none")


# ---------------------------------------------------------------------------- checks
def _check_rule(rule: Any, margin: Any) -> tuple[str, float]:
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    try:
        value = float(margin)
    except (TypeError, ValueError):
        raise ValueError(f"margin must be a number, got {margin!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"margin must be finite, got {margin!r}")
    if rule == "relative" and value <= 0:
        raise ValueError(
            "margin must be > 0 for rule='relative' (a negative j is left out when "
            f"s(i, j) > margin · s(i, i)), got {margin!r}"
        )
    return rule, value


def _check_positive(value: Any, name: str) -> float:
    """A finite number > 0 (``ValueError`` naming ``name`` otherwise)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return number


def _check_temperature(temperature: Any) -> float:
    return _check_positive(temperature, "temperature")


def _as_matrix(a: Any, name: str, device: torch.device | None = None) -> torch.Tensor:
    """A 2-D floating tensor with finite entries (array-likes converted, tensors kept)."""
    if not isinstance(a, torch.Tensor):
        a = torch.as_tensor(np.asarray(a))
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {tuple(a.shape)}")
    if not a.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {a.dtype}")
    if a.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if device is not None:
        a = a.to(device)
    if not bool(torch.isfinite(a).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def _check_pair(
    queries: Any, targets: Any, names: tuple[str, str] = ("queries", "targets")
) -> tuple[torch.Tensor, torch.Tensor]:
    q = _as_matrix(queries, names[0])
    t = _as_matrix(targets, names[1], device=q.device)
    if q.shape[1] != t.shape[1]:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same dimension, got "
            f"{q.shape[1]} and {t.shape[1]}"
        )
    if t.shape[0] < q.shape[0]:
        raise ValueError(
            f"{names[1]} must have at least as many rows as {names[0]} (row i of each is a "
            f"positive pair), got {t.shape[0]} < {q.shape[0]}"
        )
    return q, t


def _cosine(queries: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.normalize(queries, dim=1) @ F.normalize(targets, dim=1).T


def _ids_tensor(ids: Any, device: torch.device) -> torch.Tensor:
    if isinstance(ids, torch.Tensor):
        if ids.is_floating_point() or ids.is_complex():
            raise ValueError(f"duplicate_ids must be integers, got {ids.dtype}")
        return ids.to(device=device, dtype=torch.int64)
    arr = np.asarray(ids)
    if arr.dtype.kind not in "iub":
        raise ValueError(f"duplicate_ids must be integers, got dtype {arr.dtype}")
    # int64 conversion wraps large uint64 codes, which keeps equal codes equal.
    return torch.as_tensor(arr.astype(np.int64), device=device)


def _split_ids(ids: Any, b: int, b_all: int, device: torch.device) -> tuple:
    """(query ids (B,), target ids (B' or B,)) from ids of length B or B'."""
    t = _ids_tensor(ids, device)
    if t.ndim != 1 or len(t) not in (b, b_all):
        want = f"{b}" if b == b_all else f"{b} (in-batch pairs) or {b_all} (all targets)"
        raise ValueError(f"duplicate_ids must be 1-D of length {want}, got shape {tuple(t.shape)}")
    return t[:b], t


# ---------------------------------------------------------------------------- mask
def false_negative_mask(
    queries: Any = None,
    targets: Any = None,
    *,
    rule: str = "relative",
    margin: float = 0.95,
    duplicate_ids: Any = None,
    scores: Any = None,
) -> torch.Tensor:
    """Which in-batch (and extra) negatives to leave out of the loss as likely false negatives.

    With ``s(i, j)`` the cosine similarity of query ``i`` and target ``j`` (computed under
    ``no_grad`` on detached inputs) and ``s(i, i)`` that of query ``i``'s own positive:

    * ``rule="relative"`` (NV-Retriever's "TopK-PercPos"): leave out ``j`` when
      ``s(i, j) > margin · s(i, i)``; ``margin`` is the share of the positive's score above which
      a negative is suspect (0.95: within 5 % of the positive). Applied only to rows with
      ``s(i, i) > 0``: for a positive scored ≤ 0 the scorer does not recognise the pair, and
      ``margin · s(i, i)`` would mark every negative above a non-positive number (about half
      the batch or more), so such a row leaves out nothing (but its duplicate ids).
    * ``rule="absolute"``: leave out ``j`` when ``s(i, j) > s(i, i) − margin``; ``margin`` is how
      far below the positive a negative may score and still be left out. Qwen3-Embedding's
      mask (a negative above the positive + 0.1) is ``margin=-0.1``.
    * ``rule="none"``: only the duplicate ids below (``margin`` unused).

    Targets sharing a duplicate id with query ``i``'s pair are always left out. The positive
    ``(i, i)`` never is.

    Parameters
    ----------
    queries : Tensor or array of shape (B, d)
        Embeddings to score with (teacher, recorded or the student's own; any scale, they
        are normalised here).
    targets : Tensor or array of shape (B', d), B' ≥ B
        The B in-batch targets (row i is query i's positive), then any extra targets (mined
        hard negatives): columns ≥ B have no positive row.
    rule : {"relative", "absolute", "none"}
    margin : float
        See the rules; finite, and > 0 for ``"relative"``.
    duplicate_ids : integer array of length B or B', optional
        Per-pair ids (e.g. ``plan.duplicate_ids[batch]``): target ``j`` is left out for query
        ``i`` when their ids are equal. Length B covers the in-batch targets only; length B'
        also gives the extra targets' ids (the first B are the pairs').
    scores : Tensor or array of shape (B, B'), optional
        Precomputed similarities to use instead of cosine similarities of ``queries`` and
        ``targets`` (then pass neither).

    Returns
    -------
    mask : torch.BoolTensor of shape (B, B')
        True = a negative to leave out; on the device of ``queries`` (or ``scores``).

    Raises
    ------
    ValueError
        Unknown rule, bad margin, wrong shapes, non-finite embeddings or scores, ids that are
        not integers or of the wrong length.
    """
    rule, margin = _check_rule(rule, margin)
    with torch.no_grad():
        if scores is not None:
            if queries is not None or targets is not None:
                raise ValueError("pass either queries and targets or scores, not both")
            s = _as_matrix(scores, "scores").detach()
            if s.shape[1] < s.shape[0]:
                raise ValueError(
                    f"scores must be (B, B') with B' ≥ B (column i is row i's positive), got "
                    f"shape {tuple(s.shape)}"
                )
        else:
            if queries is None or targets is None:
                raise ValueError("queries and targets are required (or pass scores)")
            q, t = _check_pair(queries, targets)
            q, t = q.detach(), t.detach()
            if q.dtype in (torch.float16, torch.bfloat16):
                # Half precision scores would flip the comparisons near the margin.
                q, t = q.float(), t.float()
            s = _cosine(q, t)
        b, b_all = s.shape
        if rule == "none":
            mask = torch.zeros(b, b_all, dtype=torch.bool, device=s.device)
        else:
            positive = s.diagonal()[:, None]  # s(i, i): the first B columns are the pairs
            if rule == "relative":
                mask = (s > margin * positive) & (positive > 0)
            else:
                mask = s > positive - margin
        if duplicate_ids is not None:
            query_ids, target_ids = _split_ids(duplicate_ids, b, b_all, s.device)
            mask[:, : len(target_ids)] |= query_ids[:, None] == target_ids[None, :]
        rows = torch.arange(b, device=s.device)
        mask[rows, rows] = False
    return mask


# ---------------------------------------------------------------------------- loss
def _check_mask(mask: Any, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        mask = torch.as_tensor(np.asarray(mask))
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (True = leave out), got {mask.dtype}")
    if tuple(mask.shape) != shape:
        raise ValueError(
            f"mask must have shape (B, B') = {shape} (queries × targets), got {tuple(mask.shape)}"
        )
    mask = mask.to(device)
    if bool(mask.diagonal().any()):
        raise ValueError("mask leaves out a positive pair (i, i): its diagonal must be False")
    return mask


def info_nce(
    queries: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 0.05,
    mask: torch.Tensor | None = None,
    symmetric: bool = True,
) -> torch.Tensor:
    """Mean InfoNCE over the batch on cosine similarity / temperature, masked pairs left out.

    Query ``i``'s candidates are the ``B'`` targets; its positive is target ``i``. A masked
    pair ``(i, j)`` gets logit ``-inf``: it is in neither the softmax nor the gradient. With
    ``symmetric=True`` the result is the mean of the query → target loss and the target →
    query loss, in which target ``j < B`` contrasts its positive query with the other B
    queries, leaving out the same pairs (the mask transposed). Extra targets (columns ≥ B) have
    no positive query, so only the square B × B block takes part in the target → query loss.

    Parameters
    ----------
    queries : Tensor of shape (B, d)
    targets : Tensor of shape (B', d), B' ≥ B
        Any scale: both are normalised here. Gradients flow through both.
    temperature : float
        > 0; the logits are cosine / temperature (0.05 = sentence-transformers' scale 20).
    mask : bool Tensor of shape (B, B'), optional
        True = leave the pair out (e.g. :func:`false_negative_mask`); diagonal must be False.
    symmetric : bool

    Returns
    -------
    loss : scalar Tensor

    Raises
    ------
    ValueError
        Bad temperature, shapes, non-finite embeddings, or a mask that is not bool, of the
        wrong shape, or leaves out a positive.
    """
    temperature = _check_temperature(temperature)
    q, t = _check_pair(queries, targets)
    b = q.shape[0]
    logits = _cosine(q, t) / temperature
    if mask is not None:
        mask = _check_mask(mask, tuple(logits.shape), logits.device)
        logits = logits.masked_fill(mask, float("-inf"))
    labels = torch.arange(b, device=logits.device)
    loss = F.cross_entropy(logits, labels)
    if symmetric:
        loss = (loss + F.cross_entropy(logits[:, :b].T, labels)) / 2
    return loss


class MaskedInfoNCELoss(nn.Module):
    """:func:`info_nce` with a :func:`false_negative_mask` built in each call.

    Parameters
    ----------
    temperature : float
    rule, margin : see :func:`false_negative_mask`
    mask_from : {"self", "given"}
        ``"self"`` (default): the mask is scored from the student's own outputs of this call,
        detached (no extra forward pass, no teacher). ``"given"``: from ``mask_queries`` /
        ``mask_targets`` passed to :meth:`forward` — a B3 plan's teacher embeddings or a GCBS
        plan's recorded embeddings (:class:`hardbatch.EmbeddingRecorder`) of the batch's rows.
    symmetric : bool
        See :func:`info_nce`.

    Attributes
    ----------
    last_masked_share_ : float or None
        Share of the off-diagonal pairs (of ``B·B' − B``) the last call left out, for logging;
        ``None`` before the first call.
    """

    def __init__(
        self,
        temperature: float = 0.05,
        rule: str = "relative",
        margin: float = 0.95,
        mask_from: str = "self",
        symmetric: bool = True,
    ) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)
        self.rule, self.margin = _check_rule(rule, margin)
        if mask_from not in ("self", "given"):
            raise ValueError(f"mask_from must be 'self' or 'given', got {mask_from!r}")
        self.mask_from = mask_from
        self.symmetric = bool(symmetric)
        self.last_masked_share_: float | None = None

    def forward(
        self,
        queries: torch.Tensor,
        targets: torch.Tensor,
        mask_queries: Any = None,
        mask_targets: Any = None,
        duplicate_ids: Any = None,
    ) -> torch.Tensor:
        """Masked InfoNCE of (B, d) ``queries`` against (B', d) ``targets``.

        ``mask_queries`` (B, d') and ``mask_targets`` (B', d') are required with
        ``mask_from="given"`` and refused with ``"self"``; ``duplicate_ids`` as in
        :func:`false_negative_mask`.
        """
        given = mask_queries is not None or mask_targets is not None
        if self.mask_from == "self":
            if given:
                raise ValueError("mask_queries / mask_targets are used only with mask_from='given'")
            mq, mt = queries.detach(), targets.detach()
        else:
            if mask_queries is None or mask_targets is None:
                raise ValueError("mask_from='given' needs both mask_queries and mask_targets")
            mq, mt = _check_pair(mask_queries, mask_targets, ("mask_queries", "mask_targets"))
            if (mq.shape[0], mt.shape[0]) != (len(queries), len(targets)):
                raise ValueError(
                    f"mask_queries / mask_targets must have the rows of queries / targets "
                    f"({len(queries)}, {len(targets)}), got ({mq.shape[0]}, {mt.shape[0]})"
                )
            mq, mt = mq.to(queries.device), mt.to(queries.device)
        mask = false_negative_mask(
            mq, mt, rule=self.rule, margin=self.margin, duplicate_ids=duplicate_ids
        )
        loss = info_nce(
            queries, targets, temperature=self.temperature, mask=mask, symmetric=self.symmetric
        )
        b, b_all = mask.shape
        off_diagonal = b * b_all - b
        self.last_masked_share_ = float(mask.sum()) / off_diagonal if off_diagonal else 0.0
        return loss

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, rule={self.rule!r}, margin={self.margin}, "
            f"mask_from={self.mask_from!r}, symmetric={self.symmetric}"
        )


# ---------------------------------------------------------------------------- mask advice
#: :func:`teacher_mask_advice`'s bound on the student's validation MRR over the teacher's.
#: From README's recipe runs: the teacher mask helped (or was neutral) wherever the student
#: trained on random batches stayed at most 2 % above its teacher (or below it), and cost
#: 0.5-1.1 MRR where it passed it by 12 % or more (a frozen student on WordNet, fine-tuned
#: encoders); 1.05 lies between.
TEACHER_MASK_MAX_RATIO = 1.05
#: Rows :func:`retrieval_mrr` scores at most (a seeded sample of the pairs beyond it).
MRR_MAX_ROWS = 10_000
#: Mean cosine of a student's and a teacher's embeddings of the same texts above which they
#: are taken for one model (:func:`teacher_mask_advice`: scored before training; the
#: sentence-transformers ``FalseNegativeMaskedLoss``: a fine-tune masked by its start).
SAME_MODEL_COSINE = 0.99


def retrieval_mrr(
    queries: Any, targets: Any, *, max_rows: int = MRR_MAX_ROWS, seed: int = 0
) -> float:
    """Mean reciprocal rank of target ``i`` for query ``i`` among the targets (cosine), over
    the pairs or, above ``max_rows`` pairs, a seeded sample of ``max_rows`` of them (ranked
    among the sampled targets). Ties count against the positive."""
    q, t = _check_pair(queries, targets)
    if t.shape[0] != q.shape[0]:
        raise ValueError(
            f"queries and targets must be pairs (row i of each), got {q.shape[0]} and "
            f"{t.shape[0]} rows"
        )
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 2:
        raise ValueError(f"max_rows must be an integer >= 2, got {max_rows!r}")
    n = q.shape[0]
    if n > max_rows:
        rows = np.sort(np.random.default_rng([int(seed), 7]).choice(n, max_rows, replace=False))
        index = torch.as_tensor(rows, device=q.device)
        q, t = q[index], t[index]
    q, t = F.normalize(q.double(), dim=1), F.normalize(t.double(), dim=1)
    reciprocal = []
    for start in range(0, q.shape[0], 1024):
        scores = q[start : start + 1024] @ t.T
        own = torch.arange(start, start + len(scores), device=q.device)
        positive = scores[torch.arange(len(scores), device=q.device), own]
        rank = (scores >= positive[:, None]).sum(dim=1)  # the positive itself counts once
        reciprocal.append(1.0 / rank.double())
    return float(torch.cat(reciprocal).mean())


def _warn_if_same_model(student: tuple[Any, Any], teacher: tuple[Any, Any]) -> None:
    """Warn when the student's embeddings are the teacher's (mean cosine over the query and
    target rows > :data:`SAME_MODEL_COSINE`): a model scored before training (a fine-tune's
    start is its teacher), so the ratio says nothing about the trained student."""
    rows = slice(0, MRR_MAX_ROWS)
    cosines = []
    for s_side, t_side, name in zip(student, teacher, ("queries", "targets"), strict=True):
        s = _as_matrix(s_side, f"student {name}")[rows].double()
        t = _as_matrix(t_side, f"teacher {name}", device=s.device)[rows].double()
        if s.shape != t.shape:
            return
        cosines.append(F.cosine_similarity(s, t, dim=1))
    mean = float(torch.cat(cosines).mean())
    if mean > SAME_MODEL_COSINE:
        warnings.warn(
            f"teacher_mask_advice: the student embeddings are the teacher's (mean cosine "
            f"{mean:.3f}); score the student after training (a fine-tuned encoder starts as its "
            "teacher and passes it: no mask)",
            UserWarning,
            stacklevel=3,
        )


@dataclass(frozen=True)
class TeacherMaskAdvice:
    """What :func:`teacher_mask_advice` found.

    Attributes
    ----------
    use_mask : bool
        Whether to leave the teacher's suspected false negatives out of the loss.
    student_mrr, teacher_mrr : float
        Retrieval MRR of the validation pairs under each model's embeddings.
    ratio : float
        ``student_mrr / teacher_mrr``.
    reason : str
        One sentence a log can show.
    """

    use_mask: bool
    student_mrr: float
    teacher_mrr: float
    ratio: float
    reason: str


def teacher_mask_advice(
    student: tuple[Any, Any],
    teacher: tuple[Any, Any],
    *,
    max_ratio: float = TEACHER_MASK_MAX_RATIO,
    max_rows: int = MRR_MAX_ROWS,
    seed: int = 0,
) -> TeacherMaskAdvice:
    """Whether the teacher's false-negative mask is worth it for this student.

    The mask trusts the teacher to tell a false negative from a hard true one. A student that
    retrieves better than its teacher has learnt to separate pairs the teacher confuses, and
    the mask then holds back exactly those (README's recipe: the mask cost 0.5-1.1 MRR where
    the random-batch student passed its teacher by 12 % or more, and helped where it did not).

    Parameters
    ----------
    student, teacher : (queries, targets)
        Embeddings of the same validation pairs (row ``i`` of each is a pair) by the student
        *after training* (e.g. a run with random batches, or your current model; a fine-tuned
        encoder starts as its teacher, so score it after training) and by the teacher.
    max_ratio : float
        Mask when ``student MRR <= max_ratio × teacher MRR``.
    max_rows, seed : see :func:`retrieval_mrr`

    Returns
    -------
    TeacherMaskAdvice
    """
    bound = _check_positive(max_ratio, "max_ratio")
    pairs = {}
    for name, pair in (("student", student), ("teacher", teacher)):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"{name} must be a (queries, targets) pair of embeddings")
        pairs[name] = pair
    n_student, n_teacher = len(pairs["student"][0]), len(pairs["teacher"][0])
    if n_student != n_teacher:
        raise ValueError(
            f"student and teacher must embed the same validation pairs, got {n_student} and "
            f"{n_teacher} rows"
        )
    s_mrr = retrieval_mrr(*pairs["student"], max_rows=max_rows, seed=seed)
    t_mrr = retrieval_mrr(*pairs["teacher"], max_rows=max_rows, seed=seed)
    _warn_if_same_model(pairs["student"], pairs["teacher"])
    ratio = s_mrr / t_mrr if t_mrr > 0 else math.inf
    use = ratio <= bound
    verdict = "use the teacher mask" if use else "train without the teacher mask"
    reason = (
        f"student MRR {s_mrr:.3f} vs teacher {t_mrr:.3f} (ratio {ratio:.2f}, bound {bound:.2f}): "
        f"{verdict}"
    )
    return TeacherMaskAdvice(use, s_mrr, t_mrr, ratio, reason)
