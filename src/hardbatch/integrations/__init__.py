"""Adapters to training frameworks; each module imports its framework only when used.

* :mod:`hardbatch.integrations.sentence_transformers` — a ``batch_sampler`` for
  ``SentenceTransformerTrainingArguments`` (also ``hardbatch.sentence_transformers``), extra
  ``hardbatch[sentence-transformers]``.
* :mod:`hardbatch.integrations.huggingface` — Hugging Face ``datasets`` columns as
  embeddings, text embedding functions and duplicate ids; a ``transformers.Trainer`` recipe.
* :mod:`hardbatch.integrations.lightning` — a PyTorch Lightning recipe and callback (no
  Lightning import unless you ask for the callback).
"""
