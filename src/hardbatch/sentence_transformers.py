"""Public entry point of the sentence-transformers integration.

>>> from hardbatch.sentence_transformers import HardBatchSampler, HardBatchTrainer
>>> args = SentenceTransformerTrainingArguments(
...     ..., batch_sampler=HardBatchSampler.configure(method="gcbs", model=model))
>>> trainer = HardBatchTrainer(model=model, args=args, train_dataset=ds, loss=loss)

``HardBatchSampler`` here is the sentence-transformers sampler,
:class:`~hardbatch.integrations.sentence_transformers.SentenceTransformersHardBatchSampler`,
kept under its first name for existing code; ``hardbatch.HardBatchSampler`` is the core
PyTorch sampler it wraps. See :mod:`hardbatch.integrations.sentence_transformers` for the
details.
"""

from .integrations.sentence_transformers import (
    FalseNegativeMaskedLoss,
    HardBatchConfig,
    HardBatchTrainer,
    HardBatchTrainerMixin,
    RecordingLoss,
    SentenceTransformersHardBatchSampler,
)

#: Backwards-compatible name of :class:`SentenceTransformersHardBatchSampler` in this module.
HardBatchSampler = SentenceTransformersHardBatchSampler

__all__ = [
    "FalseNegativeMaskedLoss",
    "HardBatchConfig",
    "HardBatchSampler",
    "HardBatchTrainer",
    "HardBatchTrainerMixin",
    "RecordingLoss",
    "SentenceTransformersHardBatchSampler",
]
