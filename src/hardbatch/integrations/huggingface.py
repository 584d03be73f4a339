"""Hugging Face ``datasets`` as sampler input (extra ``hardbatch[huggingface]``).

Embedding columns (teacher embeddings stored next to the text)::

    X, Y = columns_to_embeddings(ds, "query_emb", "target_emb")
    sampler = HardBatchSampler(batch_size=64, method="b3", embeddings=(X, Y), cluster_size=32)

Text columns embedded by the model being trained (refresh every epoch)::

    embed = text_embed_fn(ds, model.encode, "query", "answer")   # encode(list[str]) -> (n, d)
    sampler = HardBatchSampler(n_samples=len(ds), batch_size=64, embed_fn=embed,
                               duplicate_ids=text_duplicate_ids(ds, "answer"))

``transformers.Trainer`` recipe: the Trainer builds its own sampler, so override its
``get_train_dataloader``; accelerate then shards the batch stream across processes itself, so
give the sampler ``shard=False`` and the *per-device* batch size::

    class HardBatchTrainer(transformers.Trainer):
        def __init__(self, *args, hard_batch_sampler, **kwargs):
            super().__init__(*args, **kwargs)
            self.hard_batch_sampler = hard_batch_sampler

        def get_train_dataloader(self):
            loader = DataLoader(self.train_dataset, batch_sampler=self.hard_batch_sampler,
                                collate_fn=self.data_collator)
            return self.accelerator.prepare(loader)

The Trainer calls ``set_epoch`` on the batch sampler at every epoch start. README's recipe for
fine-tuning a transformer is the sampler's defaults (constant hardness, no false-negative
mask); for a head over frozen features or a static embedding table it decays the hardness over
the run: ``HardBatchSampler(..., hardness=HardnessSchedule.decay(
math.ceil(args.num_train_epochs)))``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..recording import to_numpy_rows

#: Columns the sentence-transformers collator treats as labels, never as text.
LABEL_COLUMNS = ("label", "labels", "score", "scores")


def columns_to_embeddings(
    dataset: Any, query_column: str, target_column: str
) -> tuple[np.ndarray, np.ndarray]:
    """Two embedding columns of a ``datasets.Dataset`` as (N, d) float32 arrays.

    Parameters
    ----------
    dataset : datasets.Dataset (or any mapping ``column -> sequence of vectors``)
    query_column, target_column : str
        Columns holding one fixed-length vector per row.

    Returns
    -------
    queries, targets : np.ndarray of shape (N, d), float32
    """
    out = []
    for column in (query_column, target_column):
        names = getattr(dataset, "column_names", None)
        if names is not None and column not in names:
            raise ValueError(f"dataset has no column {column!r}; columns: {names}")
        source = dataset.with_format("numpy") if hasattr(dataset, "with_format") else dataset
        values = source[column]
        try:
            array = np.asarray(values, dtype=np.float32)
        except (TypeError, ValueError):
            array = np.stack([np.asarray(v, dtype=np.float32) for v in values])
        out.append(to_numpy_rows(array, f"column {column!r}"))
    return out[0], out[1]


def text_columns(dataset: Any, label_columns: Sequence[str] | None = None) -> list[str]:
    """The dataset's input columns in order: all but labels and ``dataset_name``."""
    skip = set(LABEL_COLUMNS if label_columns is None else label_columns) | {"dataset_name"}
    return [c for c in dataset.column_names if c not in skip]


def text_embed_fn(
    dataset: Any,
    encode: Callable[[list[str]], Any],
    query_column: str,
    target_column: str,
    *,
    encode_target: Callable[[list[str]], Any] | None = None,
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """An ``embed_fn`` for :class:`hardbatch.HardBatchSampler` from two text columns.

    Parameters
    ----------
    dataset : datasets.Dataset (or a sequence of row dicts)
    encode : callable
        ``encode(texts) -> (len(texts), d)`` array or tensor, e.g. ``model.encode``.
    query_column, target_column : str
    encode_target : callable, optional
        Separate encoder for the target column (asymmetric models); default ``encode``.

    Returns
    -------
    embed_fn : callable ``(indices) -> (queries, targets)``
    """
    encode_target = encode_target or encode

    def embed(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = select_rows(dataset, indices)
        q = to_numpy_rows(encode(list(rows[query_column])), "encoded queries")
        t = to_numpy_rows(encode_target(list(rows[target_column])), "encoded targets")
        return q, t

    return embed


def select_rows(dataset: Any, indices: np.ndarray) -> dict[str, list]:
    """Rows ``indices`` of a dataset as ``{column: list}``."""
    ids = np.asarray(indices, dtype=np.int64).tolist()
    if hasattr(dataset, "column_names"):  # datasets.Dataset: one columnar read
        return dataset[ids]
    # A sequence of row dicts (e.g. a torch Dataset returning dicts).
    rows = [dataset[i] for i in ids]
    return {key: [row[key] for row in rows] for key in rows[0]} if rows else {}


def text_duplicate_ids(dataset: Any, column: str | Sequence[str]) -> np.ndarray:
    """64-bit hashes of a text column (or of several columns joined), for ``duplicate_ids=``.

    Two samples with the same text get the same id, so the duplicate guard keeps them out of
    one batch (in-batch-negative losses would otherwise treat a copy of the positive as a
    negative).
    """
    columns = [column] if isinstance(column, str) else list(column)
    values = [list(dataset[c]) for c in columns]
    n = len(values[0])
    ids = np.empty(n, dtype=np.int64)
    for i in range(n):
        text = "\x1f".join(str(v[i]) for v in values)
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
        ids[i] = int.from_bytes(digest, "little", signed=True)
    return ids
