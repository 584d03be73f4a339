"""Hugging Face ``datasets`` columns as sampler input."""

from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import DataLoader

from hardbatch import HardBatchSampler
from hardbatch.integrations.huggingface import (
    columns_to_embeddings,
    select_rows,
    text_columns,
    text_duplicate_ids,
    text_embed_fn,
)
from hardbatch.synthetic import make_planted_pairs

datasets = pytest.importorskip("datasets")

N, D = 120, 8


@pytest.fixture(scope="module")
def pairs():
    return make_planted_pairs(N, D, group_size=6, seed=2)


@pytest.fixture(scope="module")
def dataset(pairs):
    texts = [f"text {i % 100}" for i in range(N)]  # 20 duplicated texts
    return datasets.Dataset.from_dict(
        {
            "query": [f"query {i}" for i in range(N)],
            "answer": texts,
            "q_emb": pairs.queries.tolist(),
            "t_emb": pairs.targets.tolist(),
            "label": [1.0] * N,
        }
    )


def test_columns_to_embeddings(dataset, pairs):
    q, t = columns_to_embeddings(dataset, "q_emb", "t_emb")
    assert q.shape == (N, D) and q.dtype == np.float32
    np.testing.assert_allclose(q, pairs.queries, rtol=1e-6)
    np.testing.assert_allclose(t, pairs.targets, rtol=1e-6)
    with pytest.raises(ValueError, match="no column 'nope'"):
        columns_to_embeddings(dataset, "nope", "t_emb")


def test_text_columns_skip_labels(dataset):
    assert text_columns(dataset) == ["query", "answer", "q_emb", "t_emb"]


def test_text_embed_fn_encodes_the_rows_asked_for(dataset):
    def encode(texts):
        return np.array([[float(s.split()[-1]), 1.0] for s in texts])

    embed = text_embed_fn(dataset, encode, "query", "answer")
    q, t = embed(np.array([5, 110]))
    np.testing.assert_array_equal(q[:, 0], [5, 110])
    np.testing.assert_array_equal(t[:, 0], [5, 10])  # answer of 110 is "text 10"


def test_select_rows_from_a_list_of_dicts():
    rows = [{"a": i, "b": -i} for i in range(5)]
    assert select_rows(rows, np.array([3, 1])) == {"a": [3, 1], "b": [-3, -1]}


def test_text_duplicate_ids(dataset):
    ids = text_duplicate_ids(dataset, "answer")
    assert ids.dtype == np.int64 and len(ids) == N
    assert ids[3] == ids[103] and ids[3] != ids[4]
    both = text_duplicate_ids(dataset, ["query", "answer"])
    assert len(np.unique(both)) == N


def test_sampler_over_a_dataset_with_embedding_columns(dataset):
    sampler = HardBatchSampler(
        batch_size=16,
        method="gcbs",
        embeddings=columns_to_embeddings(dataset, "q_emb", "t_emb"),
        duplicate_ids=text_duplicate_ids(dataset, "answer"),
        quantile=0.95,
    )
    assert sampler.n_samples == N and sampler.refresh == "never"
    loader = DataLoader(dataset.select_columns(["query", "answer"]), batch_sampler=sampler)
    seen = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for batch in loader:
            assert len(set(batch["answer"])) == len(batch["answer"])  # duplicate guard
            seen.extend(int(q.split()[1]) for q in batch["query"])
    assert sorted(seen) == sorted(list(range(N)) * 2)
