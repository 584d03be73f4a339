"""False-negative control for sentence-transformers' in-batch losses, with no extra forward pass.

:class:`FalseNegativeMaskedLoss` wraps a ``MultipleNegativesRankingLoss`` (also its symmetric
form, ``directions=("query_to_doc", "doc_to_query")``) or a
``CachedMultipleNegativesRankingLoss`` and leaves the in-batch negatives that
:func:`hardbatch.losses.false_negative_mask` flags out of the softmax (logit ``-inf``). The
scores are the wrapped loss's own: its ``scale``, ``similarity_fct``, directions, partition
mode and ``gather_across_devices`` (candidates gathered across ranks with gradient, the mask
over the gathered batch). The cached variant keeps its GradCache: the mini-batch embedding,
caching and gradient replay are sentence-transformers' own (:class:`CachedLossMixin`); only the
score step is replaced.

Why reimplement the score step rather than call the wrapped loss: the mask has to enter
between the similarity matrix and the ``logsumexp``, and neither loss has a hook there. The
computation below is the wrapped loss's, term for term, for the options it supports; with
``rule="none"`` it gives the same value and gradients (tested).

Where the mask embeddings come from (``mask_from``):

* ``"self"``: the student's own embeddings of this forward pass, detached (zero extra cost);
* ``"teacher"``: fixed (N, d) teacher embeddings ``(Tq, Tt)`` (a B3 plan's), indexed by the
  batch's dataset indices;
* ``"recorded"``: the GCBS recorder's embeddings (:class:`hardbatch.EmbeddingRecorder`, with
  ``refresh="recorded"``): each sample's student embedding from its previous visit.

The batch's dataset indices come from the config's :class:`hardbatch.recording.BatchTracker`
(the samplers push every training batch they hand out, the loss pops one per training call),
the mechanism :class:`RecordingLoss` uses; no dataset column is added. Under
``refresh="recorded"`` the loss also records the batch's embeddings (so it replaces
:class:`RecordingLoss`, never wrap both).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from ...losses import SAME_MODEL_COSINE, _check_rule, false_negative_mask
from ...recording import BatchTracker, EmbeddingRecorder
from .loss import _batch_len

try:  # sentence-transformers >= 6 layout
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )
except ImportError:  # pragma: no cover - 3.x - 5.x
    from sentence_transformers.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )
from sentence_transformers.util import all_gather, all_gather_with_grad, get_rank

try:  # GradCache machinery and merged column forwards: sentence-transformers >= 6
    from sentence_transformers.base.losses.gradcache import CachedLossMixin
    from sentence_transformers.base.losses.merged_forward import embed_columns
except ImportError:  # pragma: no cover - depends on the installed version
    CachedLossMixin = None
    embed_columns = None

# The base of the GradCache run; without the mixin (sentence-transformers < 6) the cached loss
# is refused in FalseNegativeMaskedLoss.__init__ and the run is never made.
_GradCacheBase: type = CachedLossMixin if CachedLossMixin is not None else object

#: Values of ``mask_from``.
MASK_SOURCES = ("self", "teacher", "recorded")

#: Directions of the wrapped loss that the mask supports (the positive-pair directions).
SUPPORTED_DIRECTIONS = ("query_to_doc", "doc_to_query")


class MaskTarget(Protocol):
    """What :class:`FalseNegativeMaskedLoss` needs from its config (a ``HardBatchConfig``)."""

    #: The model being trained (set from the loss when the config has none).
    model: Any
    #: Fixed embeddings the config plans from (``(Tq, Tt)``, a callable, or ``None``).
    embeddings: Any
    #: The batches handed to this process, or ``None`` before any sampler was made.
    tracker_: BatchTracker | None
    #: Whether training samplers push their batches even when no refresh policy records.
    track_batches: bool


class FalseNegativeMaskedLoss(nn.Module):
    """A sentence-transformers MNRL / CachedMNRL that leaves suspected false negatives out.

    Parameters
    ----------
    loss : MultipleNegativesRankingLoss or CachedMultipleNegativesRankingLoss
        The loss to mask (its subclasses too, e.g. the symmetric variant). Supported options:
        directions ``query_to_doc`` and ``doc_to_query``, both partition modes,
        ``gather_across_devices``, any ``scale`` / ``similarity_fct``; no ``hardness_mode``.
    rule, margin : see :func:`hardbatch.losses.false_negative_mask`
        Defaults: NV-Retriever's relative rule at 0.95 × the positive's score. The mask is
        scored with cosine similarity of the mask embeddings, whatever ``similarity_fct``.
    mask_from : {"self", "teacher", "recorded"}
        Where the mask embeddings come from (module docstring).
    embeddings : (Tq, Tt), optional
        ``mask_from="teacher"``: (N, d) query and target teacher embeddings of the training
        dataset (arrays or tensors). Default: the config's ``embeddings`` when it is a pair.
    config : HardBatchConfig, optional
        The ``batch_sampler`` config (any :class:`MaskTarget`): tells the batch's dataset
        indices. Required for ``"teacher"`` / ``"recorded"``; with ``"self"`` it is used only
        to record embeddings under ``refresh="recorded"``.

    Attributes
    ----------
    last_masked_share_ : float or None
        Share of the negative pairs (query → candidate, positives excluded) the last call
        left out; ``None`` before the first call.
    last_mask_ : bool Tensor of shape (B, C) or None
        The last call's mask of this process's queries against all C candidate columns
        (gathered positives, then hard-negative columns); True = left out.
    history_ : list of float
        ``last_masked_share_`` of every training call (one per step and accumulation step).

    Notes
    -----
    Hard-negative columns (a third, fourth ... dataset column) are masked with
    ``mask_from="self"`` only: the teacher and recorder hold embeddings of the query and
    target columns, not of mined negatives. Calls without known dataset indices (evaluation,
    or a batch the config's samplers did not hand out) are left unmasked with ``"teacher"`` /
    ``"recorded"``. Rows the recorder has never seen are not masked. With several training
    datasets (a ``DatasetDict``) ``"teacher"`` embeddings must index every dataset the same
    way; use ``"self"`` or ``"recorded"`` there (each batch carries its own recorder).
    """

    def __init__(
        self,
        loss: nn.Module,
        *,
        rule: str = "relative",
        margin: float = 0.95,
        mask_from: str = "self",
        embeddings: Any = None,
        config: MaskTarget | None = None,
    ) -> None:
        super().__init__()
        if isinstance(loss, CachedMultipleNegativesRankingLoss):
            if CachedLossMixin is None:  # pragma: no cover - depends on the installed version
                raise ValueError("masking the cached loss needs sentence-transformers >= 6")
            self.cached = True
        elif isinstance(loss, MultipleNegativesRankingLoss):
            self.cached = False
        else:
            raise ValueError(
                "FalseNegativeMaskedLoss wraps MultipleNegativesRankingLoss or "
                f"CachedMultipleNegativesRankingLoss, got {type(loss).__name__}"
            )
        unsupported = sorted(set(loss.directions) - set(SUPPORTED_DIRECTIONS))
        if unsupported:
            raise ValueError(
                f"FalseNegativeMaskedLoss supports directions {SUPPORTED_DIRECTIONS}, the loss "
                f"also has {unsupported}"
            )
        if loss.hardness_mode is not None and loss.hardness_strength > 0:
            raise ValueError(
                "FalseNegativeMaskedLoss does not support hardness_mode (hardness weighting "
                "would re-weight the negatives the mask leaves out); set hardness_mode=None"
            )
        self.rule, self.margin = _check_rule(rule, margin)
        if mask_from not in MASK_SOURCES:
            raise ValueError(f"mask_from must be one of {MASK_SOURCES}, got {mask_from!r}")
        if mask_from != "self" and config is None:
            raise ValueError(
                f"mask_from={mask_from!r} needs config= (the HardBatchConfig whose samplers "
                "tell the batch's dataset indices)"
            )
        self.mask_from = mask_from
        self.loss = loss
        # `model` is what the trainer swaps for the DDP-wrapped model (it walks the loss's
        # children named `model`); the forward passes below go through it.
        self.model = loss.model
        object.__setattr__(self, "_config", config)
        self._teacher = self._teacher_rows(embeddings, config) if mask_from == "teacher" else None
        if config is not None:
            if config.model is None:
                config.model = loss.model
            if mask_from != "self":
                config.track_batches = True  # batches must be queued even without recording
        self.last_masked_share_: float | None = None
        self.last_mask_: torch.Tensor | None = None
        self.history_: list[float] = []
        self._unlogged: list[float] = []
        self._warned = False
        self._teacher_checked = False

    @staticmethod
    def _teacher_rows(embeddings: Any, config: MaskTarget | None) -> tuple[torch.Tensor, ...]:
        if embeddings is None and config is not None:
            embeddings = config.embeddings
        if not isinstance(embeddings, (tuple, list)) or len(embeddings) != 2:
            raise ValueError(
                "mask_from='teacher' needs embeddings=(Tq, Tt): the (N, d) teacher embeddings "
                "of the training dataset's query and target columns"
            )
        rows = []
        for a, name in zip(embeddings, ("queries", "targets"), strict=True):
            t = a.detach().cpu() if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))
            if t.ndim != 2 or not t.is_floating_point():
                raise ValueError(
                    f"teacher {name} must be a float (N, d) array, got {tuple(t.shape)}"
                )
            rows.append(t.float())
        if rows[0].shape != rows[1].shape:
            raise ValueError(
                f"teacher queries and targets must have the same shape, got "
                f"{tuple(rows[0].shape)} and {tuple(rows[1].shape)}"
            )
        return rows[0], rows[1]

    # ------------------------------------------------------------------ forward
    def forward(self, sentence_features: Iterable[dict[str, Any]], labels: Any = None) -> Any:
        features = list(sentence_features)
        if len(features) < 2:
            raise ValueError(f"expected at least 2 input columns, got {len(features)}")
        training = torch.is_grad_enabled() and self.model.training
        batch = self._pop_batch(_batch_len(features[0])) if training else None
        if self.cached:
            return _MaskedGradCache(self, batch, training).forward_cached(features, labels)
        if embed_columns is not None:
            embeddings = embed_columns(self.model, features)
        else:  # pragma: no cover - sentence-transformers < 6: one call per column
            embeddings = [self.model(f)["sentence_embedding"] for f in features]
        return self.masked_loss(embeddings[0], embeddings[1:], batch, training=training)

    def _pop_batch(self, size: int) -> tuple[EmbeddingRecorder | None, np.ndarray] | None:
        """This training batch's (recorder, dataset indices) from the config's tracker."""
        config = self._config
        tracker = None if config is None else config.tracker_
        if tracker is None or not tracker:
            if self.mask_from != "self" and not self._warned:
                self._warned = True
                warnings.warn(
                    f"hardbatch FalseNegativeMaskedLoss(mask_from={self.mask_from!r}): no batch "
                    "indices from the config's samplers (is this config the trainer's "
                    "batch_sampler?); the batch is not masked",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return None
        return tracker.pop(size)

    # ------------------------------------------------------------------ mask embeddings
    def _given_rows(
        self, batch: tuple[EmbeddingRecorder | None, np.ndarray] | None, size: int, device: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher / recorded (query rows, target rows, known flags) of the batch's indices;
        all unknown when the indices are not known."""
        q = t = None
        known = torch.zeros(size, dtype=torch.bool)
        if batch is not None:
            recorder, ids = batch
            if self._teacher is not None:
                if ids.max(initial=0) >= len(self._teacher[0]):
                    raise ValueError(
                        f"batch index {int(ids.max())} is out of the teacher embeddings' "
                        f"{len(self._teacher[0])} rows"
                    )
                index = torch.as_tensor(ids)
                q, t = self._teacher[0][index], self._teacher[1][index]
                known[:] = True
            elif recorder is not None and recorder.queries_ is not None:
                q = torch.from_numpy(recorder.queries_[ids])
                t = torch.from_numpy(recorder.targets_[ids])
                known = torch.from_numpy(recorder.stamps_[ids] >= 0)
        if q is None:  # nothing known: placeholder rows, masked out by `known`
            dim = 1 if self._teacher is None else self._teacher[0].shape[1]
            q = t = torch.zeros(size, dim)
        return q.to(device), t.to(device), known.to(device)

    def _world_mask(
        self,
        queries: torch.Tensor,
        docs_all: torch.Tensor,
        given: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        """(WB, C) mask over the (gathered) queries × all candidate columns."""
        if given is None:  # mask_from="self"
            return false_negative_mask(
                queries.detach(), docs_all.detach(), rule=self.rule, margin=self.margin
            )
        mq, mt, known = given
        wb = len(queries)
        mask = torch.zeros(wb, len(docs_all), dtype=torch.bool, device=queries.device)
        if bool(known.any()) and self.rule != "none":
            pairs = false_negative_mask(mq, mt, rule=self.rule, margin=self.margin)
            mask[:, :wb] = pairs & known[:, None] & known[None, :]
        return mask

    # ------------------------------------------------------------------ the loss
    def masked_loss(
        self,
        queries: torch.Tensor,
        docs: list[torch.Tensor],
        batch: tuple[EmbeddingRecorder | None, np.ndarray] | None = None,
        *,
        training: bool = False,
        block: int | None = None,
        with_backward: bool = False,
    ) -> torch.Tensor:
        """The wrapped loss's value on this process's embeddings, masked pairs left out.

        Parameters
        ----------
        queries : Tensor (B, d)
        docs : list of Tensor (B, d)
            The positive column, then any hard-negative columns.
        batch : (recorder, dataset indices), optional
            This batch's entry of the config's tracker.
        training : bool
            Count the call in :attr:`history_` and the logs.
        block, with_backward
            GradCache: rows per score block, and whether to back-propagate each block into
            the cached embeddings (the cached loss's ``calculate_loss`` contract).
        """
        loss = self.loss
        b = len(queries)
        given = None
        if self.mask_from != "self":
            given = self._given_rows(batch, b, queries.device)
        local_q, local_t = queries.detach(), docs[0].detach()
        if (
            training
            and self.mask_from == "teacher"
            and given is not None
            and not self._teacher_checked
        ):
            self._check_teacher_is_not_student(local_q, given)
        offset = 0
        if loss.gather_across_devices:
            # Same collectives as the wrapped loss, plus a no-grad gather of the mask rows.
            queries = all_gather_with_grad(queries)
            docs = [all_gather_with_grad(d) for d in docs]
            if given is not None:
                mq, mt, known = given
                given = (all_gather(mq), all_gather(mt), all_gather(known.float()).bool())
            offset = get_rank() * b
        wb = len(queries)
        docs_all = torch.cat(docs, dim=0)
        docs_pos = docs[0]
        local = torch.arange(offset, offset + b, device=queries.device)
        with torch.no_grad():
            world = self._world_mask(queries, docs_all, given)
            mask_qd = world[local]  # (B, C): query i against every candidate
            mask_dq = world[:, :wb][:, local].T  # (B, WB): doc i against every query, same pairs
        symmetric = "doc_to_query" in loss.directions
        step = b if block is None else block
        parts = []
        for begin in range(0, b, step):
            end = min(begin + step, b)
            rows = local[begin:end]
            r = torch.arange(end - begin, device=queries.device)
            scores = [
                (loss.similarity_fct(queries[rows], docs_all) * loss.scale).masked_fill(
                    mask_qd[begin:end], float("-inf")
                )
            ]
            if symmetric:
                dq = loss.similarity_fct(queries, docs_pos[rows]).T * loss.scale
                scores.append(dq.masked_fill(mask_dq[begin:end], float("-inf")))
            positive = scores[0][r, rows]
            if loss.partition_mode == "joint":
                log_z = torch.logsumexp(torch.cat(scores, dim=1), dim=1)
            else:
                log_z = sum(torch.logsumexp(s, dim=1) for s in scores) / len(scores)
            part = -(positive - log_z).mean()
            if block is not None:
                part = part * (end - begin) / b
            if with_backward:
                part.backward()
                part = part.detach()
            parts.append(part)
        value = parts[0] if len(parts) == 1 else sum(parts)
        self._note_share(mask_qd, training)
        if batch is not None and batch[0] is not None:
            # Recorded after the mask: a "recorded" mask compares with the previous visit.
            batch[0].record(batch[1], local_q, local_t)
        return value

    def _check_teacher_is_not_student(
        self, student_q: torch.Tensor, given: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> None:
        """Warn once, at the first training batch the teacher rows are known for, when they
        are the trained model's own embeddings (mean cosine > :data:`SAME_MODEL_COSINE`): a
        fine-tuned encoder masked by its starting point. README's recipe: the teacher mask cost
        every fine-tuned model 0.7-1.1 MRR (it holds back the pairs the model learns to
        separate past its teacher)."""
        mq, _, known = given
        if not bool(known.any()) or mq.shape[1] != student_q.shape[1]:
            return
        self._teacher_checked = True
        mean = float(
            torch.nn.functional.cosine_similarity(
                mq[known].float(), student_q[known].float(), dim=1
            ).mean()
        )
        if mean > SAME_MODEL_COSINE:
            warnings.warn(
                "hardbatch FalseNegativeMaskedLoss(mask_from='teacher'): the teacher "
                f"embeddings are the trained model's own (mean cosine {mean:.3f} "
                "on the first batch): fine-tuning an encoder with a mask scored by its starting "
                "point cost 0.7-1.1 MRR in README's recipe runs; drop the mask (wrap_loss(loss)) "
                "or check with hardbatch.losses.teacher_mask_advice after a run",
                UserWarning,
                stacklevel=4,
            )

    def _note_share(self, mask_qd: torch.Tensor, training: bool) -> None:
        b, c = mask_qd.shape
        negatives = b * c - b
        share = float(mask_qd.sum()) / negatives if negatives else 0.0
        self.last_masked_share_ = share
        self.last_mask_ = mask_qd
        if training:
            self.history_.append(share)
            self._unlogged.append(share)

    def pop_masked_share(self) -> float | None:
        """Mean masked share of the training calls since the last pop (for the trainer's
        logs); ``None`` when there was none."""
        if not self._unlogged:
            return None
        value = float(np.mean(self._unlogged))
        self._unlogged.clear()
        return value

    # ------------------------------------------------------------------ reporting
    def get_config_dict(self) -> dict[str, Any]:
        return {
            **self.loss.get_config_dict(),
            "false_negatives": {
                "rule": self.rule,
                "margin": self.margin,
                "mask_from": self.mask_from,
            },
        }

    @property
    def citation(self) -> str:
        return self.loss.citation

    def extra_repr(self) -> str:
        return f"rule={self.rule!r}, margin={self.margin}, mask_from={self.mask_from!r}"


class _MaskedGradCache(_GradCacheBase):
    """One GradCache run of a wrapped cached loss with the masked score step.

    sentence-transformers' :class:`CachedLossMixin` embeds the columns in no-grad mini-batches,
    calls :meth:`calculate_loss` on the cached embeddings, and replays the mini-batches with
    gradient in the backward hook; only :meth:`calculate_loss` is ours. Made per call, it reads
    the model and mini-batch settings from the wrapper at that moment (the trainer may have
    swapped in the DDP-wrapped model).
    """

    def __init__(self, owner: FalseNegativeMaskedLoss, batch: Any, training: bool) -> None:
        self.model = owner.model
        self.mini_batch_size = owner.loss.mini_batch_size
        self.mini_batch_num_tokens = owner.loss.mini_batch_num_tokens
        self.show_progress_bar = owner.loss.show_progress_bar
        self._owner, self._batch, self._training = owner, batch, training

    def calculate_loss(
        self, reps: list[list[torch.Tensor]], labels: Any = None, *, with_backward: bool = False
    ) -> torch.Tensor:
        return self._owner.masked_loss(
            torch.cat(reps[0]),
            [torch.cat(r) for r in reps[1:]],
            self._batch,
            training=self._training,
            block=self.mini_batch_size,
            with_backward=with_backward,
        )


def masked_share_logs(loss: Any) -> dict[str, float]:
    """``{"masked_share": mean since the last log}`` for a :class:`FalseNegativeMaskedLoss`
    (``"<name>_masked_share"`` per masked loss of a dict of losses); ``{}`` otherwise."""
    losses = loss if isinstance(loss, dict) else {None: loss}
    logs = {}
    for name, item in losses.items():
        if isinstance(item, FalseNegativeMaskedLoss):
            share = item.pop_masked_share()
            if share is not None:
                logs["masked_share" if name is None else f"{name}_masked_share"] = round(share, 4)
    return logs


__all__ = [
    "MASK_SOURCES",
    "SUPPORTED_DIRECTIONS",
    "FalseNegativeMaskedLoss",
    "MaskTarget",
    "masked_share_logs",
]
