"""Loss-side recording for ``refresh="recorded"``: the training forward pass's embeddings,
kept by sample id without an extra forward pass."""

from __future__ import annotations

import warnings
from typing import Any, Protocol

import torch
from torch import nn

from ...recording import BatchTracker


class RecordingTarget(Protocol):
    """What :class:`RecordingLoss` needs from its config (a :class:`HardBatchConfig`)."""

    #: The model being trained (set from the loss when the config has none).
    model: Any
    #: The batches handed to this process, or ``None`` before any sampler was made.
    tracker_: BatchTracker | None


class RecordingLoss(nn.Module):
    """Wraps a sentence-transformers loss so its forward pass records the batch's embeddings.

    During training (grad enabled, model in train mode) a forward hook on the model collects
    the ``sentence_embedding`` of every model call the loss makes. Both
    ``MultipleNegativesRankingLoss`` (one call per column, or merged candidate columns) and
    ``CachedMultipleNegativesRankingLoss`` (no-grad mini-batches per column) embed the columns
    in order, so the collected rows are ``[queries; targets; ...]``; the first two blocks are
    recorded for the batch's sample ids (the next batch the samplers handed this process,
    :class:`hardbatch.refresh.BatchTracker`). No extra forward pass; the loss value and its
    gradients are untouched. Evaluation calls are not recorded.

    Parameters
    ----------
    loss : nn.Module
        A loss holding the model as ``loss.model``.
    config : HardBatchConfig
        (any :class:`RecordingTarget`)
        The ``batch_sampler`` config whose samplers plan from the recordings.
    """

    def __init__(self, loss: nn.Module, config: RecordingTarget) -> None:
        super().__init__()
        model = getattr(loss, "model", None)
        if model is None:
            raise ValueError("RecordingLoss needs a loss that holds its model as `loss.model`")
        self.loss = loss
        # `model` is what the trainer swaps for the DDP-wrapped model; the hook goes on the
        # unwrapped module, whose forward runs inside the wrapper's.
        self.model = model
        object.__setattr__(self, "_embedder", model)
        object.__setattr__(self, "_config", config)
        object.__setattr__(self, "_warned", False)
        if config.model is None:
            config.model = model

    def forward(self, sentence_features: Any, labels: torch.Tensor | None = None) -> Any:
        features = list(sentence_features)
        embedder = self._embedder
        tracker = self._config.tracker_
        if not (torch.is_grad_enabled() and embedder.training) or tracker is None or not tracker:
            return self.loss(features, labels)
        captured: list[torch.Tensor] = []

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, dict) and "sentence_embedding" in output:
                captured.append(output["sentence_embedding"].detach())

        handle = embedder.register_forward_hook(hook)
        try:
            value = self.loss(features, labels)
        finally:
            handle.remove()
        self._record(features, captured, tracker)
        return value

    def _record(
        self, features: list[dict], captured: list[torch.Tensor], tracker: BatchTracker
    ) -> None:
        size = _batch_len(features[0])
        popped = tracker.pop(size)  # always pop: keeps the queue aligned with the batches
        if popped is None or popped[0] is None or not captured:
            return  # no recorder: the batch was queued for a mask, not for recording
        recorder, indices = popped
        rows = torch.cat(captured)
        if len(features) < 2 or rows.shape[0] != len(features) * size:
            if not self._warned:
                object.__setattr__(self, "_warned", True)
                warnings.warn(
                    f"hardbatch RecordingLoss: {type(self.loss).__name__} made model calls "
                    f"with {rows.shape[0]} rows for {len(features)} columns of {size}; "
                    "cannot tell queries from targets, nothing recorded",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return
        recorder.record(indices, rows[:size], rows[size : 2 * size])

    def get_config_dict(self) -> dict[str, Any]:
        inner = getattr(self.loss, "get_config_dict", None)
        return inner() if callable(inner) else {}

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name == "loss":
                raise
            return getattr(self._modules["loss"], name)


def _batch_len(feature: dict[str, Any]) -> int:
    for value in feature.values():
        if isinstance(value, torch.Tensor) and value.ndim >= 1:
            return int(value.shape[0])
        if isinstance(value, (list, tuple)):
            return len(value)
    raise ValueError("cannot tell the batch size of the features")


__all__ = ["RecordingLoss", "RecordingTarget"]
