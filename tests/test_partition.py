"""Graph partitions (METIS, size-capped Leiden) and their edge-cut report."""

from __future__ import annotations

import ctypes
import math
import os
import sys
import threading

import numpy as np
import pytest
import scipy.sparse as sp

from hardbatch.similarity import rank_window_graph
from hardbatch.structure import edge_cut, partition_graph
from hardbatch.structure.partition import _canonical, _cap_sizes, _metis
from hardbatch.synthetic import make_planted_pairs


def cliques(n_cliques: int, size: int, *, isolated: int = 0, seed: int = 0) -> sp.csr_matrix:
    """Disjoint cliques (shuffled ids) plus isolated nodes: the obvious best partition."""
    n = n_cliques * size + isolated
    perm = np.random.default_rng(seed).permutation(n)
    dense = np.zeros((n, n), dtype=bool)
    for c in range(n_cliques):
        ids = perm[c * size : (c + 1) * size]
        dense[np.ix_(ids, ids)] = True
    np.fill_diagonal(dense, False)
    return sp.csr_matrix(dense), perm


def edge_cut_loop(graph: sp.csr_matrix, labels: np.ndarray) -> int:
    """Undirected cut edges by a loop over the upper triangle."""
    coo = sp.triu(graph, k=1).tocoo()
    return sum(int(labels[i] != labels[j]) for i, j in zip(coo.row, coo.col, strict=True))


@pytest.fixture(scope="module")
def window_graph_small(planted_small):
    return rank_window_graph(planted_small.queries, planted_small.targets, 0, 15)


@pytest.mark.parametrize("method", ["metis", "leiden"])
def test_disjoint_cliques_are_recovered(method):
    graph, perm = cliques(12, 16)
    part = partition_graph(graph, 12, method=method, seed=0)
    assert part.edge_cut == 0
    truth = np.empty(len(perm), dtype=np.int64)
    truth[perm] = np.arange(len(perm)) // 16
    # Same partition up to renaming: each clique has one label, labels differ across cliques.
    pairs = set(zip(truth.tolist(), part.labels.tolist(), strict=True))
    assert len(pairs) == 12 == len({b for _, b in pairs})


def test_metis_balance_cut_and_determinism(window_graph_small):
    n = window_graph_small.shape[0]
    part = partition_graph(window_graph_small, 25, seed=0)
    assert part.labels.shape == (n,) and part.labels.dtype == np.int64
    assert part.labels.min() >= 0 and part.labels.max() < 25
    sizes = part.sizes
    assert sizes.sum() == n
    assert sizes.max() <= math.ceil(1.03 * n / 25) + 1  # METIS's default 3% imbalance
    assert part.edge_cut == edge_cut_loop(window_graph_small, part.labels)
    assert part.edge_cut == edge_cut(window_graph_small, part.labels)
    again = partition_graph(window_graph_small, 25, seed=0)
    np.testing.assert_array_equal(again.labels, part.labels)
    summary = part.summary()
    assert summary["edge_cut"] == part.edge_cut
    assert summary["part_size_max"] == sizes.max() and summary["n_parts"] == 25
    assert 0 <= summary["edge_cut_fraction"] <= 1


@pytest.mark.parametrize("method", ["metis", "leiden"])
def test_isolated_nodes_are_placed(method):
    graph, _ = cliques(5, 8, isolated=13)
    part = partition_graph(graph, 6, method=method, seed=1)  # parts of ~9 can hold a clique
    assert part.labels.shape == (53,)
    assert (part.labels >= 0).all() and part.sizes.sum() == 53
    assert part.edge_cut == 0


def test_metis_on_graph_without_edges():
    graph = sp.csr_matrix((40, 40), dtype=bool)
    part = partition_graph(graph, 4, seed=0)
    assert part.sizes.sum() == 40 and part.edge_cut == 0 and part.n_edges == 0


def test_leiden_respects_size_cap_and_seed(window_graph_small):
    part = partition_graph(window_graph_small, 25, method="leiden", seed=0)
    cap = math.ceil(window_graph_small.shape[0] / 25)
    assert part.sizes.max() <= cap
    assert part.n_parts == part.labels.max() + 1 and (part.sizes > 0).all()
    assert part.edge_cut == edge_cut_loop(window_graph_small, part.labels)
    again = partition_graph(window_graph_small, 25, method="leiden", seed=0)
    np.testing.assert_array_equal(again.labels, part.labels)
    tight = partition_graph(window_graph_small, 25, method="leiden", seed=0, max_part_size=5)
    assert tight.sizes.max() <= 5


def test_cap_sizes_cuts_large_communities_into_dense_chunks():
    # One community: a path of 10 nodes; cap 4 -> chunks of 4, 4, 2 along the path order.
    path = sp.diags([np.ones(9), np.ones(9)], [-1, 1], shape=(10, 10)).tocsr()
    labels = _cap_sizes(path, np.zeros(10, dtype=np.int64), 4)
    assert sorted(np.bincount(labels).tolist()) == [2, 4, 4]
    # Consecutive path nodes: only 2 path edges are cut.
    assert edge_cut(path, labels) == 2


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_parts": 0}, "n_parts"),
        ({"n_parts": 1000}, "exceeds"),
        ({"n_parts": 4, "method": "spectral"}, "method must be"),
        ({"n_parts": 4, "method": "leiden", "resolution": -1.0}, "resolution"),
    ],
)
def test_bad_arguments_raise(window_graph_small, kwargs, match):
    with pytest.raises(ValueError, match=match):
        partition_graph(window_graph_small, **kwargs)


def test_bad_graphs_raise():
    directed = sp.csr_matrix(np.triu(np.ones((5, 5), dtype=bool), k=1))
    with pytest.raises(ValueError, match="symmetric"):
        partition_graph(directed, 2)
    with pytest.raises(ValueError, match="square"):
        partition_graph(sp.csr_matrix((4, 5), dtype=bool), 2)
    with pytest.raises(ValueError, match="scipy sparse"):
        partition_graph(np.ones((4, 4)), 2)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(os, "fork"),
    reason="needs glibc's rand() and fork",
)
def test_metis_is_reproducible_beside_a_thread_drawing_from_rand():
    # METIS draws from the C library's process-wide rand(): a thread calling rand() meanwhile
    # (as Ray's worker threads do) changed 16 of 20 partitions of this graph in-process;
    # isolated in a forked child process, none.
    planted = make_planted_pairs(3200, 32, group_size=16, seed=4)
    graph = rank_window_graph(planted.queries, planted.targets, 0, 15)
    reference = _metis(_canonical(graph), 200, 0, isolate=False)
    libc = ctypes.CDLL("libc.so.6")
    stop = threading.Event()

    def draw():
        while not stop.is_set():
            libc.rand()

    thread = threading.Thread(target=draw, daemon=True)
    thread.start()
    try:
        for _ in range(6):
            labels = partition_graph(graph, 200, seed=0).labels
            np.testing.assert_array_equal(labels, reference)
    finally:
        stop.set()
        thread.join()


def test_metis_error_in_the_child_process_is_reported(window_graph_small, monkeypatch):
    from hardbatch.structure import partition

    def failing(pattern, n_parts, seed):
        raise ValueError("boom")

    monkeypatch.setattr(partition, "_metis_labels", failing)
    if hasattr(os, "fork"):
        with pytest.raises(RuntimeError, match="METIS failed: ValueError: boom"):
            partition._metis(window_graph_small, 25, 0, isolate=True)
    with pytest.raises(ValueError, match="boom"):
        partition._metis(window_graph_small, 25, 0, isolate=False)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(os, "fork"), reason="needs fork, /proc"
)
def test_a_stalled_metis_child_is_replaced_then_run_in_process(window_graph_small, monkeypatch):
    """A child that deadlocks (here: sleeps, as one waiting on a lock copied taken) is killed
    and retried; after the last stall METIS runs in-process, with a warning."""
    import time

    from hardbatch.structure import partition

    parent = os.getpid()
    real = partition._metis_labels

    def stalls_in_child(pattern, n_parts, seed):
        if os.getpid() != parent:
            time.sleep(3600)
        return real(pattern, n_parts, seed)

    monkeypatch.setattr(partition, "_metis_labels", stalls_in_child)
    monkeypatch.setattr(partition, "CHILD_STALL_S", 0.3)
    monkeypatch.setattr(partition, "CHILD_ATTEMPTS", 2)
    with pytest.warns(RuntimeWarning, match="stalled 2 times"):
        labels = partition._metis(window_graph_small, 25, 0, isolate=True)
    np.testing.assert_array_equal(labels, real(window_graph_small, 25, 0))
