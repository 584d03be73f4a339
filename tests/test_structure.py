"""Orderings of the similarity graph: reverse Cuthill–McKee and bandwidth statistics."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
import scipy.sparse as sp

from hardbatch.structure import bandwidth, rcm_order
from hardbatch.structure import ordering as ordering_module


def random_directed_graph(n: int, density: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dense = rng.random((n, n)) < density
    np.fill_diagonal(dense, False)
    return dense


def shuffled_path(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Undirected path graph on a random relabelling of 0..n-1 (bandwidth 1 when unshuffled)."""
    labels = np.random.default_rng(seed).permutation(n)
    dense = np.zeros((n, n), dtype=bool)
    dense[labels[:-1], labels[1:]] = True
    return dense | dense.T, labels


# --------------------------------------------------------------------------- rcm_order
@pytest.mark.parametrize("density", [0.0, 0.005, 0.05])
def test_rcm_order_is_a_permutation_equal_to_scipy(density):
    dense = random_directed_graph(150, density, seed=1)
    order = rcm_order(sp.csr_matrix(ref.symmetric_pattern(dense)))
    assert order.dtype == np.int64
    np.testing.assert_array_equal(np.sort(order), np.arange(150))
    np.testing.assert_array_equal(order, ref.rcm_of_dense(dense))


def test_rcm_order_places_isolated_nodes():
    dense = np.zeros((10, 10), dtype=bool)
    # The path 2-5-7; the other 7 nodes are isolated.
    dense[2, 5] = dense[5, 2] = dense[5, 7] = dense[7, 5] = True
    order = rcm_order(sp.csr_matrix(dense))
    np.testing.assert_array_equal(np.sort(order), np.arange(10))
    # The connected component occupies consecutive positions, 5 in its middle.
    position = np.argsort(order)
    assert sorted(position[[2, 5, 7]] - position[[2, 5, 7]].min()) == [0, 1, 2]
    assert position[5] == position[[2, 5, 7]].min() + 1
    # A graph without any edge is all isolated nodes.
    np.testing.assert_array_equal(np.sort(rcm_order(sp.csr_matrix((6, 6)))), np.arange(6))


def test_rcm_recovers_a_hidden_band():
    dense, _ = shuffled_path(200, seed=4)
    graph = sp.csr_matrix(dense)
    identity = bandwidth(graph, np.arange(200))["bandwidth"]
    assert identity > 50  # the shuffle hides the path
    assert bandwidth(graph, rcm_order(graph))["bandwidth"] == 1.0


def test_rcm_order_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        rcm_order(sp.csr_matrix((3, 4)))


# --------------------------------------------------------------------------- bandwidth
@pytest.mark.parametrize("batch_size", [1, 7, 32])
@pytest.mark.parametrize("seed", [0, 1])
def test_bandwidth_equals_a_loop_over_edges(batch_size, seed):
    dense = random_directed_graph(120, 0.03, seed=seed)
    order = np.random.default_rng(seed + 10).permutation(120)
    stats = bandwidth(sp.csr_matrix(dense), order, batch_size)
    expected = ref.bandwidth_loop(dense, order, batch_size)
    assert stats.keys() == expected.keys()
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value, rel=1e-12), key


def test_bandwidth_in_edge_chunks(monkeypatch):
    """Edges are processed in chunks of whole rows: any chunk size gives the same answer."""
    dense = random_directed_graph(90, 0.08, seed=5)
    dense[3] = False  # an empty row at a chunk boundary
    order = np.random.default_rng(0).permutation(90)
    graph = sp.csr_matrix(dense)
    expected = ref.bandwidth_loop(dense, order, 8)
    for chunk in (1, 7, 64):
        monkeypatch.setattr(ordering_module, "_EDGE_CHUNK", chunk)
        stats = bandwidth(graph, order, 8)
        for key, value in expected.items():
            assert stats[key] == pytest.approx(value, rel=1e-12), (chunk, key)


def test_bandwidth_without_batch_size_and_without_edges():
    dense = random_directed_graph(40, 0.1, seed=2)
    stats = bandwidth(sp.csr_matrix(dense), np.arange(40))
    assert set(stats) == {"bandwidth", "mean_distance"}
    empty = bandwidth(sp.csr_matrix((5, 5)), np.arange(5), 2)
    assert empty == {"bandwidth": 0.0, "mean_distance": 0.0, "in_batch_edge_fraction": 0.0}


def test_bandwidth_of_a_known_graph():
    dense = np.zeros((6, 6), dtype=bool)
    dense[0, 5] = dense[1, 2] = True
    stats = bandwidth(sp.csr_matrix(dense), np.arange(6), batch_size=3)
    assert stats == {"bandwidth": 5.0, "mean_distance": 3.0, "in_batch_edge_fraction": 0.5}


def test_bandwidth_rejects_a_wrong_order():
    with pytest.raises(ValueError, match=r"order must have shape \(5,\)"):
        bandwidth(sp.csr_matrix((5, 5)), np.arange(4))
