"""The FAISS IVF search (hardbatch.similarity.approximate), called directly."""

from __future__ import annotations

import numpy as np
import pytest
from reference import dense_similarity

from hardbatch.similarity.approximate import ivf_neighbours, neighbour_recall, seeded_kmeans
from hardbatch.synthetic import make_planted_pairs
from hardbatch.validation import check_pair

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def pair():
    p = make_planted_pairs(600, 16, group_size=8, seed=11)
    return p.queries, p.targets


def test_probing_every_list_is_the_exact_search(pair):
    """With all lists probed every target is a candidate: the result is the dense top-k."""
    q, t = pair
    ids, sims = ivf_neighbours(q, t, 5, norms=check_pair(q, t), n_lists=4, n_probe=4, seed=0)
    sim = dense_similarity(q, t)
    np.fill_diagonal(sim, -np.inf)
    expected = np.argsort(-sim, axis=1, kind="stable")[:, :5]
    assert [set(r) for r in ids.tolist()] == [set(r) for r in expected.tolist()]
    np.testing.assert_allclose(sims, np.take_along_axis(sim, ids.astype(int), 1), atol=1e-5)


def test_ivf_is_seeded(pair):
    q, t = pair
    norms = check_pair(q, t)
    a = ivf_neighbours(q, t, 6, norms=norms, seed=3)
    b = ivf_neighbours(q, t, 6, norms=norms, seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_neighbour_recall_counts_hits(pair):
    q, t = pair
    sim = dense_similarity(q, t)
    np.fill_diagonal(sim, -np.inf)
    exact = np.argsort(-sim, axis=1, kind="stable")[:, :4]
    half = exact.copy()
    half[:, 2:] = np.argsort(sim, axis=1)[:, :2]  # itself and the farthest target
    assert neighbour_recall(q, t, exact, n_rows=600) == 1.0
    assert neighbour_recall(q, t, half, n_rows=600) == pytest.approx(0.5)


def test_seeded_kmeans_is_reproducible():
    x = np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32)
    a = seeded_kmeans(x, 5, niter=5, seed=1)
    assert a.shape == (5, 8) and a.dtype == np.float32
    np.testing.assert_array_equal(a, seeded_kmeans(x, 5, niter=5, seed=1))
