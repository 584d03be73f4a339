"""Rank-window graphs (B3's teacher graph) against slow dense references."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from conftest import gaussian_pair
from reference import dense_similarity

from hardbatch.similarity import (
    check_label_fraction,
    check_window,
    label_embeddings,
    label_ranks,
    label_window_graph,
    rank_window_graph,
    top_ranks,
    window_graph,
)


# --------------------------------------------------------------------------- references
def dense_ranks(queries, targets, k: int) -> np.ndarray:
    """Every row's k most similar targets, best first, self excluded (float64, argsort)."""
    sim = dense_similarity(queries, targets)
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def rank_margin(queries, targets, boundaries) -> float:
    """Smallest gap between ranks r-1 and r over rows, for r in ``boundaries``.

    The windows of the float32 fast path and of the float64 reference are the same sets when
    this is well above float32 rounding.
    """
    sim = dense_similarity(queries, targets)
    np.fill_diagonal(sim, -np.inf)
    ordered = -np.sort(-sim, axis=1)
    return float(min((ordered[:, r - 1] - ordered[:, r]).min() for r in boundaries if r > 0))


def window_pattern_loop(ranks: np.ndarray, p: int, m: int, mutual: bool) -> np.ndarray:
    """Dense undirected window graph by a loop over rows."""
    n = len(ranks)
    directed = np.zeros((n, n), dtype=bool)
    for i in range(n):
        for j in ranks[i, p : p + m]:
            directed[i, j] = True
    return directed & directed.T if mutual else directed | directed.T


def assert_canonical_undirected(graph: sp.csr_matrix) -> None:
    """Symmetric, no diagonal, sorted strictly increasing columns per row, boolean."""
    assert graph.dtype == np.bool_
    assert graph.diagonal().sum() == 0
    assert (graph != graph.T).nnz == 0
    for i in range(graph.shape[0]):
        row = graph.indices[graph.indptr[i] : graph.indptr[i + 1]]
        assert np.all(np.diff(row) > 0), f"row {i} not sorted or has duplicates"
    assert graph.data.all()


#: Gaps between consecutive similarities far above float32 rounding (~1e-7 here).
MARGIN = 1e-6


@pytest.fixture(scope="module")
def wide_gaps():
    """N=150, d=8 random pairs whose rank boundaries are well separated (checked)."""
    return gaussian_pair(150, 8, seed=1)


# --------------------------------------------------------------------------- ranks
def test_top_ranks_match_dense_argsort(wide_gaps):
    q, t = wide_gaps
    k = 40
    assert rank_margin(q, t, range(1, k + 1)) > MARGIN  # no near-ties: ranks well defined
    ranks = top_ranks(q, t, k, block_rows=37)  # several blocks, one short
    np.testing.assert_array_equal(ranks, dense_ranks(q, t, k))


def test_top_ranks_never_self_and_torch_input(small_pair):
    q, t = small_pair
    ranks = top_ranks(torch.from_numpy(q), torch.from_numpy(t), len(q) - 1)
    assert not (ranks == np.arange(len(q))[:, None]).any()
    # k = N - 1: every other target exactly once per row.
    assert (np.sort(ranks, axis=1) == np.sort(dense_ranks(q, t, len(q) - 1), axis=1)).all()


def test_top_ranks_rejects_k_too_large(small_pair):
    q, t = small_pair
    with pytest.raises(ValueError, match="smaller than N"):
        top_ranks(q, t, len(q))


# --------------------------------------------------------------------------- window graph
@pytest.mark.parametrize("mutual", [True, False])
@pytest.mark.parametrize("p,m", [(0, 10), (5, 20), (30, 60)])
def test_rank_window_graph_matches_dense_reference(wide_gaps, p, m, mutual):
    q, t = wide_gaps
    assert rank_margin(q, t, [p, p + m]) > MARGIN
    graph = rank_window_graph(q, t, p, m, mutual=mutual, block_rows=64)
    assert_canonical_undirected(graph)
    expected = window_pattern_loop(dense_ranks(q, t, p + m), p, m, mutual)
    np.testing.assert_array_equal(graph.toarray(), expected)


def test_window_graph_mutual_is_inside_union(planted_small):
    ranks = top_ranks(planted_small.queries, planted_small.targets, 40)
    mutual = window_graph(ranks, 2, 30, mutual=True)
    union = window_graph(ranks, 2, 30, mutual=False)
    assert mutual.nnz < union.nnz
    assert (mutual.multiply(union) != mutual).nnz == 0
    # Every node has at most m mutual neighbours and at least m union neighbours.
    assert np.diff(mutual.indptr).max() <= 30
    assert np.diff(union.indptr).min() >= 30


@pytest.mark.parametrize(
    "p,m,match",
    [(0, 300, "p \\+ m < N"), (250, 50, "p \\+ m < N"), (-1, 10, "p must"), (0, 0, "m must")],
)
def test_bad_window_raises(small_pair, p, m, match):
    q, t = small_pair
    with pytest.raises(ValueError, match=match):
        rank_window_graph(q, t, p, m)


def test_check_window_accepts_largest_window():
    assert check_window(10, 89, 100) == (10, 89)
    with pytest.raises(ValueError):
        check_window(10, 90, 100)


def test_window_graph_rejects_window_beyond_ranks():
    ranks = np.zeros((5, 3), dtype=np.int32)
    with pytest.raises(ValueError, match="exceeds"):
        window_graph(ranks, 1, 3)


# --------------------------------------------------------------------------- class labels
def label_setup(n=240, n_labels=12, d=16, seed=0):
    """Examples whose targets are their label's embedding (plus a little noise)."""
    rng = np.random.default_rng(seed)
    label_vectors = rng.standard_normal((n_labels, d))
    labels = rng.integers(n_labels, size=n)
    labels[:n_labels] = np.arange(n_labels)  # every label used
    queries = label_vectors[labels] + 0.8 * rng.standard_normal((n, d))
    targets = label_vectors[labels] + 1e-3 * rng.standard_normal((n, d))
    return queries.astype(np.float32), targets.astype(np.float32), labels


def dense_label_ranks(queries, targets, labels, k):
    """Mean normalised target per label, then argsort of query·label with own label removed."""
    y = targets / np.linalg.norm(targets, axis=1, keepdims=True)
    n_labels = labels.max() + 1
    means = np.stack([y[labels == b].mean(axis=0) for b in range(n_labels)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    x = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sim = x.astype(np.float64) @ means.T
    sim[np.arange(len(x)), labels] = -np.inf
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def exact_label_graph(top_labels, labels):
    """Dense mutual label graph: label(j) in top(i) and label(i) in top(j)."""
    n = len(labels)
    in_top = np.zeros((n, labels.max() + 1), dtype=bool)
    for i in range(n):
        in_top[i, top_labels[i]] = True
    rank_other = in_top[:, labels]  # [i, j]: label(j) in top(i)
    return rank_other & rank_other.T


def test_label_ranks_match_dense_reference_and_skip_own_label():
    q, t, labels = label_setup()
    k = check_label_fraction(0.3, labels.max() + 1)
    assert k == 4  # ceil(0.3 * 11)
    vectors = label_embeddings(t, labels, labels.max() + 1, device="cpu")
    ranks = label_ranks(q, vectors, labels, k, block_rows=50)
    assert not (ranks == labels[:, None]).any()
    np.testing.assert_array_equal(ranks, dense_label_ranks(q, t, labels, k))


def test_label_window_graph_is_mutual_subgraph_without_same_label_edges():
    q, t, labels = label_setup()
    top = dense_label_ranks(q, t, labels, 4)
    graph = label_window_graph(top, labels, m=8, seed=0)
    assert_canonical_undirected(graph)
    dense = graph.toarray()
    exact = exact_label_graph(top, labels)
    assert dense.any()
    assert not (dense & ~exact).any(), "an edge outside the exact mutual label graph"
    assert not (dense & (labels[:, None] == labels[None, :])).any()
    # Every example with eligible partners got some.
    has_partner = exact.any(axis=1)
    assert (dense.any(axis=1) == has_partner).all()
    # Seeded.
    again = label_window_graph(top, labels, m=8, seed=0)
    assert (again != graph).nnz == 0
    other = label_window_graph(top, labels, m=8, seed=1)
    assert (other != graph).nnz > 0


def test_label_window_graph_is_exact_when_m_is_large():
    q, t, labels = label_setup(n=60, n_labels=5)
    top = dense_label_ranks(q, t, labels, 2)
    graph = label_window_graph(top, labels, m=2000, seed=0)
    np.testing.assert_array_equal(graph.toarray(), exact_label_graph(top, labels))


def test_label_fraction_checks():
    assert check_label_fraction(1.0, 3) == 2
    with pytest.raises(ValueError, match="at least 2 distinct labels"):
        check_label_fraction(0.3, 1)
    with pytest.raises(ValueError, match="label_fraction"):
        check_label_fraction(0.0, 10)
