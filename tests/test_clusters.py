"""Clusters of exactly K (equalize_parts) against a plain-Python reference of the rule."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from hardbatch.batching import PAD
from hardbatch.structure import equalize_parts, internal_degree


def equalize_reference(parts, k, degree=None) -> list[frozenset]:
    """The documented rule with lists, one step at a time."""
    parts = np.asarray(parts)
    n = len(parts)
    degree = np.zeros(n, dtype=np.int64) if degree is None else degree
    labels = sorted(set(parts.tolist()))
    members = {
        b: sorted((i for i in range(n) if parts[i] == b), key=lambda i: (-degree[i], i))
        for b in labels
    }
    clusters, pool, small = [], [], []
    for b in labels:
        ids = members[b]
        if len(ids) >= k:
            whole = len(ids) // k * k
            clusters += [ids[i : i + k] for i in range(0, whole, k)]
            pool += ids[whole:]  # step 1: surplus to the pool
        else:
            small.append(ids)
    small.sort(key=len, reverse=True)  # step 2: largest small parts first (stable)
    leftover = []
    for ids in small:
        if not leftover and k - len(ids) <= len(pool):
            clusters.append(ids + pool[: k - len(ids)])
            pool = pool[k - len(ids) :]
        else:  # once one cannot be filled, the smaller ones cannot either: dissolve
            leftover += ids
    rest = pool + leftover  # step 3: chunks of K, the last one short
    clusters += [rest[i : i + k] for i in range(0, len(rest), k)]
    return [frozenset(c) for c in clusters]


def as_sets(clusters: np.ndarray) -> list[frozenset]:
    return [frozenset(row[row != PAD].tolist()) for row in clusters]


def assert_valid_clusters(clusters: np.ndarray, n: int, k: int) -> None:
    assert clusters.dtype == np.int64 and clusters.shape == (-(-n // k), k)
    members = clusters[clusters != PAD]
    np.testing.assert_array_equal(np.sort(members), np.arange(n))  # every sample once
    assert (clusters[:-1] != PAD).all()  # only the last row may be short
    short = int((clusters[-1] != PAD).sum())
    assert short == (n % k or k)
    assert (clusters[-1, short:] == PAD).all()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [2, 5, 8])
def test_equalize_matches_reference_on_random_parts(seed, k):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 120))
    # Parts of very uneven sizes, including singletons and parts much larger than K.
    parts = rng.integers(0, max(2, n // int(rng.integers(2, 12))), size=n) * 7 - 3
    clusters = equalize_parts(parts, k)
    assert_valid_clusters(clusters, n, k)
    assert sorted(as_sets(clusters), key=sorted) == sorted(equalize_reference(parts, k), key=sorted)


def test_equalize_with_graph_moves_least_connected_members():
    # Part 0: a 5-clique {0..4} plus a loosely attached node 5 (one edge); K = 5.
    n = 10
    dense = np.zeros((n, n), dtype=bool)
    dense[:5, :5] = True
    dense[5, 0] = dense[0, 5] = True
    dense[6:, 6:] = True
    np.fill_diagonal(dense, False)
    graph = sp.csr_matrix(dense)
    parts = np.array([0] * 6 + [1] * 4)
    clusters = equalize_parts(parts, 5, graph=graph)
    assert frozenset(range(5)) in as_sets(clusters)  # the clique stays whole
    assert frozenset([5, 6, 7, 8, 9]) in as_sets(clusters)  # node 5 filled the small part
    degree = internal_degree(graph, parts)
    assert degree[5] == 1 and degree[0] == 5
    assert sorted(as_sets(clusters), key=sorted) == sorted(
        equalize_reference(parts, 5, degree), key=sorted
    )


def test_exact_parts_stay_untouched():
    parts = np.repeat(np.arange(6), 4)[np.random.default_rng(0).permutation(24)]
    clusters = equalize_parts(parts, 4)
    assert_valid_clusters(clusters, 24, 4)
    for row in clusters:
        assert len(set(parts[row].tolist())) == 1


def test_leftover_cluster_holds_only_real_members():
    # N = 37, K = 8: 4 full clusters and a last cluster of 5 real samples, padded with -1.
    parts = np.arange(37) // 8
    clusters = equalize_parts(parts, 8)
    assert_valid_clusters(clusters, 37, 8)
    last = clusters[-1]
    np.testing.assert_array_equal(last[:5], np.arange(32, 37))
    assert (last[5:] == PAD).all()
    # Not the authors' padding with ids 0..K-1 (those are in the first cluster only).
    assert not np.isin(np.arange(8), last).any()


def test_single_part_and_all_singletons():
    assert_valid_clusters(equalize_parts(np.zeros(13, dtype=int), 4), 13, 4)
    singletons = equalize_parts(np.arange(13), 4)
    assert_valid_clusters(singletons, 13, 4)


@pytest.mark.parametrize(
    "parts,k,match",
    [
        (np.zeros(10, dtype=int), 1, "at least 2"),
        (np.zeros(10, dtype=int), 2.0, "integer"),
        (np.zeros(10), 2, "integer labels"),
        (np.zeros((2, 5), dtype=int), 2, "1-D"),
        (np.zeros(0, dtype=int), 2, "non-empty"),
    ],
)
def test_bad_input_raises(parts, k, match):
    with pytest.raises(ValueError, match=match):
        equalize_parts(parts, k)


def test_graph_shape_is_checked():
    with pytest.raises(ValueError, match="graph must have shape"):
        equalize_parts(np.zeros(6, dtype=int), 2, graph=sp.csr_matrix((5, 5)))
