"""Public entry point of the sentence-transformers integration.

>>> from hardbatch.sentence_transformers import HardBatchSampler
>>> args = SentenceTransformerTrainingArguments(
...     ..., batch_sampler=HardBatchSampler.configure(method="gcbs", model=model))

See :mod:`hardbatch.integrations.sentence_transformers` for the details.
"""

from .integrations.sentence_transformers import HardBatchConfig, HardBatchSampler, RecordingLoss

__all__ = ["HardBatchConfig", "HardBatchSampler", "RecordingLoss"]
