"""Similarity graph stage against the dense float64 reference.

The fast path computes in float32, the reference in float64: they agree up to ~1e-7, so every
exact comparison first checks that no similarity lies within float32 rounding of the decision
boundary (a threshold, or the k-th/(k+1)-th neighbour of a row).
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
import scipy.sparse as sp
import torch

from hardbatch.similarity import (
    SimilarityBlocks,
    estimate_threshold,
    knn_graph,
    symmetrize,
    threshold_graph,
)

MARGIN = ref.MARGIN


def graph_pattern(graph: sp.csr_matrix) -> np.ndarray:
    """Dense boolean pattern of the stored entries."""
    dense = np.zeros(graph.shape, dtype=bool)
    rows = np.repeat(np.arange(graph.shape[0]), np.diff(graph.indptr))
    dense[rows, graph.indices] = True
    return dense


def assert_canonical(graph: sp.csr_matrix, n: int) -> None:
    """N×N CSR, sorted indices, no duplicates, no diagonal."""
    assert isinstance(graph, sp.csr_matrix)
    assert graph.shape == (n, n)
    for i in range(n):
        cols = graph.indices[graph.indptr[i] : graph.indptr[i + 1]]
        assert np.all(np.diff(cols) > 0), f"row {i} not strictly sorted"
        assert i not in cols, f"diagonal entry in row {i}"


@pytest.fixture(params=["random", "planted"])
def pair(request, small_pair, planted_small):
    if request.param == "random":
        return small_pair
    return planted_small.queries, planted_small.targets


# --------------------------------------------------------------------------- SimilarityBlocks
@pytest.mark.parametrize("block_rows", [13, 64, 300])
def test_blocks_reassemble_the_dense_matrix(small_pair, block_rows):
    x, y = small_pair
    expected = ref.dense_similarity(x, y)
    blocks = SimilarityBlocks(x, y, block_rows=block_rows)
    starts = []
    rebuilt = np.empty_like(expected)
    for start, sim in blocks.blocks():
        assert sim.dtype == torch.float32
        starts.append(start)
        rebuilt[start : start + sim.shape[0]] = sim.numpy()
    assert starts == list(range(0, 300, block_rows))
    assert np.all(np.diag(rebuilt) == -np.inf)
    off = ~np.eye(300, dtype=bool)
    np.testing.assert_allclose(rebuilt[off], expected[off], atol=1e-6)
    # Without the mask the diagonal (each query against its own positive) is kept. Blocks
    # share one buffer, so each is copied before the next is asked for.
    diagonal = np.concatenate(
        [sim.numpy().diagonal(start).copy() for start, sim in blocks.blocks(mask_diagonal=False)]
    )
    np.testing.assert_allclose(diagonal, np.diag(expected), atol=1e-6)


def test_blocks_dot_metric(make_pair):
    x, y = make_pair(40, 8)
    blocks = SimilarityBlocks(x, y, metric="dot", block_rows=16)
    rebuilt = np.concatenate([s.numpy().copy() for _, s in blocks.blocks(mask_diagonal=False)])
    np.testing.assert_allclose(rebuilt, ref.dense_similarity(x, y, "dot"), rtol=1e-5, atol=1e-5)


def test_unknown_metric(small_pair):
    with pytest.raises(ValueError, match="metric must be one of"):
        SimilarityBlocks(*small_pair, metric="euclidean")


def test_bad_block_rows(small_pair):
    with pytest.raises(ValueError, match="block_rows must be an integer >= 1"):
        SimilarityBlocks(*small_pair, block_rows=0)


# --------------------------------------------------------------------------- threshold
@pytest.mark.parametrize("quantile", [0.5, 0.9, 0.999])
def test_estimate_threshold_is_exact_for_small_n(pair, quantile):
    x, y = pair
    expected = np.quantile(ref.off_diagonal_values(ref.dense_similarity(x, y)), quantile)
    # float32 similarities against the float64 reference: agreement to float32 rounding.
    assert estimate_threshold(x, y, quantile) == pytest.approx(expected, abs=1e-6)
    # Exact case: every off-diagonal pair is used, so the seed plays no role.
    assert estimate_threshold(x, y, quantile, seed=5) == estimate_threshold(x, y, quantile)


def test_estimate_threshold_exact_up_to_1000_rows(make_pair):
    x, y = make_pair(1000, 8, seed=4)
    expected = np.quantile(ref.off_diagonal_values(ref.dense_similarity(x, y)), 0.99)
    assert estimate_threshold(x, y, 0.99) == pytest.approx(expected, abs=1e-6)
    assert estimate_threshold(x, y, 0.99, seed=1) == estimate_threshold(x, y, 0.99, seed=2)


@pytest.mark.parametrize("quantile", [0.9, 0.99])
def test_estimate_threshold_sampled_keeps_the_requested_fraction(make_pair, quantile):
    """N=1500 with 500×500 sampled pairs: the real fraction of pairs above t is ~1-q."""
    x, y = make_pair(1500, 16, seed=2)
    off = ref.off_diagonal_values(ref.dense_similarity(x, y))
    thresholds = [
        estimate_threshold(x, y, quantile, n_pairs=250_000, seed=seed) for seed in range(3)
    ]
    for t in thresholds:
        above = np.mean(off > t)
        assert abs(above - (1 - quantile)) < 0.15 * (1 - quantile), (t, above)
    # Sampled, so seeded: the same seed repeats, another seed draws another sample.
    assert thresholds[0] == estimate_threshold(x, y, quantile, n_pairs=250_000, seed=0)
    assert len(set(thresholds)) == 3


def test_estimate_threshold_bad_arguments(small_pair):
    x, y = small_pair
    for q in (0, 1, 1.2, -0.5):
        with pytest.raises(ValueError, match="quantile must be in the open interval"):
            estimate_threshold(x, y, q)
    with pytest.raises(ValueError, match="n_pairs"):
        estimate_threshold(x, y, 0.9, n_pairs=10)
    with pytest.raises(ValueError, match="same number of rows"):
        estimate_threshold(x, y[:-1], 0.9)


@pytest.mark.parametrize("quantile", [0.9, 0.99, 0.999])
def test_threshold_graph_equals_dense_pattern(pair, quantile):
    x, y = pair
    sim = ref.dense_similarity(x, y)
    _, t = ref.separated_quantile(sim, quantile)
    assert ref.threshold_margin(sim, t) > MARGIN
    expected = ref.threshold_pattern(sim, t)

    graph = threshold_graph(x, y, t)
    assert_canonical(graph, len(x))
    np.testing.assert_array_equal(graph_pattern(graph), expected)
    # Values are the float32 similarities of the kept pairs.
    assert graph.dtype == np.float32
    rows = np.repeat(np.arange(len(x)), np.diff(graph.indptr))
    np.testing.assert_allclose(graph.data, sim[rows, graph.indices], atol=1e-6)
    # The boolean pattern variant holds the same edges.
    pattern = threshold_graph(x, y, t, values=False)
    assert pattern.dtype == np.bool_ and pattern.data.all()
    np.testing.assert_array_equal(graph_pattern(pattern), expected)


def test_threshold_graph_is_strict_and_never_keeps_the_diagonal():
    # One-hot rows: off-diagonal similarities are exactly 0, the diagonal is exactly 1.
    x = np.eye(6, dtype=np.float32)
    assert threshold_graph(x, x, 0.0).nnz == 0  # 0 > 0 is false
    everything = threshold_graph(x, x, -0.5)
    np.testing.assert_array_equal(graph_pattern(everything), ~np.eye(6, dtype=bool))
    assert threshold_graph(x, x, 0.99).nnz == 0  # the diagonal 1.0 is never an edge


@pytest.mark.parametrize("block_rows", [13, 64, None])
def test_graphs_do_not_depend_on_block_rows(pair, block_rows):
    x, y = pair
    sim = ref.dense_similarity(x, y)
    _, t = ref.separated_quantile(sim, 0.99)
    assert ref.threshold_margin(sim, t) > MARGIN
    reference_graph = threshold_graph(x, y, t, block_rows=len(x))
    graph = threshold_graph(x, y, t, block_rows=block_rows)
    np.testing.assert_array_equal(graph.indptr, reference_graph.indptr)
    np.testing.assert_array_equal(graph.indices, reference_graph.indices)
    assert ref.knn_margin(sim, 5) > MARGIN
    knn_full = knn_graph(x, y, 5, block_rows=len(x))
    knn = knn_graph(x, y, 5, block_rows=block_rows)
    np.testing.assert_array_equal(knn.indices, knn_full.indices)


def test_threshold_graph_reuses_prepared_blocks(small_pair):
    x, y = small_pair
    blocks = SimilarityBlocks(x, y, block_rows=50)
    sim = ref.dense_similarity(x, y)
    _, t = ref.separated_quantile(sim, 0.95)
    graph = threshold_graph(None, None, t, blocks=blocks)
    np.testing.assert_array_equal(graph_pattern(graph), ref.threshold_pattern(sim, t))


def test_threshold_graph_dot_metric(make_pair):
    x, y = make_pair(200, 8, seed=7)
    sim = ref.dense_similarity(x, y, "dot")
    _, t = ref.separated_quantile(sim, 0.95)
    assert ref.threshold_margin(sim, t) > 1e-4  # dot products are larger: float32 error too
    graph = threshold_graph(x, y, t, metric="dot")
    np.testing.assert_array_equal(graph_pattern(graph), ref.threshold_pattern(sim, t))


def test_threshold_graph_max_edges_guard(small_pair):
    x, y = small_pair
    with pytest.raises(ValueError, match="max_edges=100"):
        threshold_graph(x, y, -1.0, max_edges=100)
    assert threshold_graph(x, y, -1.1, max_edges=None).nnz == 300 * 299


# --------------------------------------------------------------------------- top-k
@pytest.mark.parametrize("k", [1, 5, 20])
def test_knn_graph_equals_dense_top_k(pair, k):
    x, y = pair
    sim = ref.dense_similarity(x, y)
    assert ref.knn_margin(sim, k) > MARGIN  # no near-ties at the k-th neighbour
    graph = knn_graph(x, y, k, block_rows=64)
    assert_canonical(graph, len(x))
    assert np.all(np.diff(graph.indptr) == k)
    np.testing.assert_array_equal(graph_pattern(graph), ref.knn_pattern(sim, k))
    rows = np.repeat(np.arange(len(x)), k)
    np.testing.assert_allclose(graph.data, sim[rows, graph.indices], atol=1e-6)
    pattern = knn_graph(x, y, k, values=False)
    assert pattern.dtype == np.bool_
    np.testing.assert_array_equal(pattern.indices, graph.indices)


def test_knn_graph_largest_k():
    x = np.random.default_rng(0).standard_normal((12, 4)).astype(np.float32)
    graph = knn_graph(x, x, 11)
    np.testing.assert_array_equal(graph_pattern(graph), ~np.eye(12, dtype=bool))


def test_knn_graph_bad_k(small_pair):
    x, y = small_pair
    with pytest.raises(ValueError, match="k=300 must be smaller than N=300"):
        knn_graph(x, y, 300)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        knn_graph(x, y, 0)


# --------------------------------------------------------------------------- symmetrize
def test_symmetrize_is_the_union_with_the_transpose(pair):
    x, y = pair
    sim = ref.dense_similarity(x, y)
    for graph in (knn_graph(x, y, 3), knn_graph(x, y, 3, values=False)):
        sym = symmetrize(graph)
        assert_canonical(sym, len(x))
        assert sym.dtype == np.bool_
        np.testing.assert_array_equal(
            graph_pattern(sym), ref.symmetric_pattern(ref.knn_pattern(sim, 3))
        )
        assert (sym != sym.T).nnz == 0


def test_symmetrize_keeps_edges_whose_similarity_is_zero():
    """A stored entry is an edge even when its value is 0.0 (an exactly orthogonal pair)."""
    x = np.eye(4, dtype=np.float32)
    x[0, 1] = 1.0  # rows 0 and 1 now have similarity 1/sqrt(2); all other pairs exactly 0
    graph = threshold_graph(x, x, -0.5)
    assert graph.nnz == 12
    np.testing.assert_array_equal(graph_pattern(symmetrize(graph)), ~np.eye(4, dtype=bool))


def test_symmetrize_accepts_any_sparse_format():
    rng = np.random.default_rng(0)
    dense = rng.random((30, 30)) < 0.1
    np.fill_diagonal(dense, False)
    expected = dense | dense.T
    for graph in (sp.coo_matrix(dense), sp.csc_matrix(dense.astype(np.float64))):
        np.testing.assert_array_equal(symmetrize(graph).toarray(), expected)


# --------------------------------------------------------------------------- input types
def test_inputs_of_every_type_give_the_same_graph(tmp_path):
    """float16-representable values: every input type sees the same float32 numbers."""
    rng = np.random.default_rng(11)
    x16 = rng.standard_normal((250, 16)).astype(np.float16)
    y16 = (x16 + rng.standard_normal((250, 16))).astype(np.float16)
    x32, y32 = x16.astype(np.float32), y16.astype(np.float32)
    np.save(tmp_path / "x.npy", x32)
    np.save(tmp_path / "y.npy", y16.astype(np.float64))
    variants = {
        "float16": (x16, y16),
        "float64": (x16.astype(np.float64), y16.astype(np.float64)),
        "memmap": (np.load(tmp_path / "x.npy", mmap_mode="r"), np.load(tmp_path / "y.npy", "r")),
        "torch": (torch.from_numpy(x32), torch.from_numpy(y16)),
    }
    t = estimate_threshold(x32, y32, 0.99)
    expected = threshold_graph(x32, y32, t)
    expected_knn = knn_graph(x32, y32, 4)
    for name, (x, y) in variants.items():
        assert estimate_threshold(x, y, 0.99) == t, name
        graph = threshold_graph(x, y, t)
        np.testing.assert_array_equal(graph.indices, expected.indices, err_msg=name)
        np.testing.assert_array_equal(graph.indptr, expected.indptr, err_msg=name)
        np.testing.assert_array_equal(graph.data, expected.data, err_msg=name)
        np.testing.assert_array_equal(knn_graph(x, y, 4).indices, expected_knn.indices, name)
    # Fortran order changes the summation order of the row norms (last-bit differences in the
    # values), not the edges.
    graph = threshold_graph(np.asfortranarray(x32), np.asfortranarray(y32), t)
    np.testing.assert_array_equal(graph.indices, expected.indices)
    np.testing.assert_allclose(graph.data, expected.data, atol=1e-6)


def test_inputs_are_not_modified(small_pair):
    x, y = small_pair
    x_copy, y_copy = x.copy(), y.copy()
    xt, yt = torch.from_numpy(x.copy()), torch.from_numpy(y.copy())
    t = estimate_threshold(x, y, 0.99)
    threshold_graph(x, y, t, block_rows=32)
    knn_graph(x, y, 3)
    threshold_graph(xt, yt, t)
    knn_graph(xt, yt, 3, metric="dot")
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(y, y_copy)
    assert torch.equal(xt, torch.from_numpy(x_copy)) and torch.equal(yt, torch.from_numpy(y_copy))


def test_default_block_rows_bounds():
    from hardbatch.similarity.exact import BLOCK_BYTES, default_block_rows

    assert default_block_rows(100) == 100  # a small N is one block
    big = 10**6
    assert default_block_rows(big) == BLOCK_BYTES // (4 * big)
    assert default_block_rows(10**9) == 16
    assert default_block_rows(1) == 16
