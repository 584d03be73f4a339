"""Trainer hooks that tell a :class:`HardBatchConfig` which dataloader it builds a sampler for.

``SentenceTransformerTrainer.get_batch_sampler`` is called the same way for the training,
evaluation and test dataloaders. The trainer's own dataloader builders
(``get_train_dataloader``, ``get_eval_dataloader``, ``get_test_dataloader``; documented override
points of ``transformers.Trainer``) know which one they build; the mixin records that while the
builder runs and passes it to the config as ``training=``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .masked_loss import masked_share_logs
from .sampler import HardBatchConfig

try:
    from sentence_transformers import SentenceTransformerTrainer
except ImportError as exc:  # pragma: no cover - depends on the installed version
    raise ImportError(
        "hardbatch.sentence_transformers needs sentence-transformers >= 3: "
        "pip install 'hardbatch[sentence-transformers]'"
    ) from exc


class HardBatchTrainerMixin:
    """Mixin for a ``SentenceTransformerTrainer`` (sub)class: hard batches for training only.

    >>> class MyTrainer(HardBatchTrainerMixin, SentenceTransformerTrainer): ...

    With ``args.batch_sampler`` a :class:`HardBatchConfig`, samplers built for the training
    dataloader get ``training=True`` and those for evaluation/test dataloaders
    ``training=False`` (served by the ``random`` method unless ``eval_batches="hard"``). Any
    other ``batch_sampler`` is left to the trainer.
    """

    #: Whether the dataloader being built is the training one; ``None`` outside the builders.
    _hardbatch_training: bool | None = None

    def get_train_dataloader(self, *args: Any, **kwargs: Any) -> Any:
        return self._build_for(True, super().get_train_dataloader, *args, **kwargs)

    def get_eval_dataloader(self, *args: Any, **kwargs: Any) -> Any:
        return self._build_for(False, super().get_eval_dataloader, *args, **kwargs)

    def get_test_dataloader(self, *args: Any, **kwargs: Any) -> Any:
        return self._build_for(False, super().get_test_dataloader, *args, **kwargs)

    def _build_for(self, training: bool, build: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        previous = self._hardbatch_training
        self._hardbatch_training = training
        try:
            return build(*args, **kw)
        finally:
            self._hardbatch_training = previous

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        # Training logs get the share of negatives a FalseNegativeMaskedLoss left out
        # (mean over the steps since the last log), before any reporter sees them.
        if "loss" in logs:
            logs = {**logs, **masked_share_logs(self.loss)}
        return super().log(logs, *args, **kwargs)

    def get_batch_sampler(
        self,
        dataset: Any,
        batch_size: int,
        drop_last: bool,
        valid_label_columns: list[str] | None = None,
        generator: Any = None,
        seed: int = 0,
    ) -> Any:
        config = self.args.batch_sampler
        if isinstance(config, HardBatchConfig):
            return config(
                dataset,
                batch_size=batch_size,
                drop_last=drop_last,
                valid_label_columns=valid_label_columns,
                generator=generator,
                seed=seed,
                training=self._hardbatch_training,
            )
        return super().get_batch_sampler(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
        )


class HardBatchTrainer(HardBatchTrainerMixin, SentenceTransformerTrainer):
    """``SentenceTransformerTrainer`` that serves hard batches to training dataloaders only
    (:class:`HardBatchTrainerMixin`); use it exactly like the trainer it extends."""


__all__ = ["HardBatchTrainer", "HardBatchTrainerMixin"]
