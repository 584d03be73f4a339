"""The FAISS IVF search (hardbatch.similarity.approximate), called directly."""

from __future__ import annotations

import numpy as np
import pytest
from reference import dense_similarity

from hardbatch.similarity.approximate import (
    WIDEN_FACTOR,
    ivf_neighbours,
    ivf_search,
    neighbour_recall,
    sample_rows,
    seeded_kmeans,
)
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


def test_seeded_kmeans_does_not_depend_on_the_thread_count():
    """Plans are the same on any machine's core count: FAISS k-means is run on all threads
    because its centroids are bit for bit those of one thread (slow reference)."""
    import faiss

    x = np.random.default_rng(1).standard_normal((20_000, 32)).astype(np.float32)
    threads = faiss.omp_get_max_threads()
    try:
        faiss.omp_set_num_threads(1)
        one = seeded_kmeans(x, 300, niter=5, seed=7)
        faiss.omp_set_num_threads(3)
        three = seeded_kmeans(x, 300, niter=5, seed=7)
    finally:
        faiss.omp_set_num_threads(threads)
    np.testing.assert_array_equal(one, three)


# ---------------------------------------------------------------- the recall target loop
@pytest.fixture(scope="module")
def unstructured():
    """Isotropic noise: no clusters, so the base probe (2048 of 8000) misses neighbours."""
    rng = np.random.default_rng(4)
    q = rng.standard_normal((8000, 24)).astype(np.float32)
    t = q + 0.5 * rng.standard_normal((8000, 24)).astype(np.float32)
    return q, t


def slow_recall(q, t, ids, rows):
    """Recall@k of ``ids`` on ``rows`` by a dense loop over every target (the reference)."""
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    k, hits = ids.shape[1], 0
    for i in rows:
        sim = tn @ qn[i]
        sim[i] = -np.inf
        hits += len(set(np.argsort(-sim, kind="stable")[:k]) & set(ids[i].tolist()))
    return hits / (len(rows) * k)


def test_recall_loop_widens_until_the_target(unstructured):
    q, t = unstructured
    norms = check_pair(q, t)
    fixed, _, base = ivf_search(q, t, 5, norms=norms, recall=None, recall_rows=200, seed=1)
    assert base["candidates"] == 2048 and base["recall"] < 0.95  # the base probe misses some
    ids, sims, info = ivf_search(
        q, t, 5, norms=norms, recall=0.95, recall_rows=200, max_widen=4.0, seed=1
    )
    rows = sample_rows(8000, 200, 1)
    assert info["recall"] == pytest.approx(slow_recall(q, t, ids, rows))
    assert info["recall"] >= 0.95 and info["widen_steps"] >= 1
    assert info["candidates"] > base["candidates"] and info["recall_target"] == 0.95
    # One step narrower would have missed the target on the same sample (the loop stops
    # at the first probe that meets it).
    narrower = int(np.ceil(info["candidates"] / WIDEN_FACTOR))
    narrower = 2048 if info["widen_steps"] == 1 else narrower
    assert narrower < info["candidates"]
    # The sims are the exact similarities of the ids found, best first.
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    expect = np.einsum("nd,nkd->nk", qn, tn[ids.astype(int)])
    np.testing.assert_allclose(sims, expect, atol=1e-5)
    assert (np.diff(sims, axis=1) <= 1e-6).all()


def test_recall_loop_reproducible_and_narrower_probe_misses(unstructured):
    q, t = unstructured
    norms = check_pair(q, t)
    a = ivf_search(q, t, 5, norms=norms, recall=0.95, recall_rows=200, max_widen=4.0, seed=1)
    b = ivf_search(q, t, 5, norms=norms, recall=0.95, recall_rows=200, max_widen=4.0, seed=1)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[2] == b[2]
    # Capped one step below the chosen probe (and no repartition), the same search falls short
    # and warns.
    below = (a[2]["candidates"] - 1) / 2048
    with pytest.warns(RuntimeWarning, match=r"recall@5 0\.\d+ .* below the target 0\.95"):
        _, _, capped = ivf_search(
            q, t, 5, norms=norms, recall=0.95, recall_rows=200, max_widen=below, seed=1,
            repartitions=0,
        )  # fmt: skip
    assert capped["recall"] < 0.95 and capped["candidates"] < a[2]["candidates"]


def test_recall_cap_warns_with_the_recall_reached(unstructured):
    q, t = unstructured
    with pytest.warns(RuntimeWarning, match="is below the target 1.0"):
        _, _, info = ivf_search(
            q, t, 5, norms=check_pair(q, t), recall=1.0, recall_rows=100, max_widen=1.2
        )
    assert info["recall"] < 1.0 and info["candidates"] <= 1.2 * 2048


def test_exhaustive_probe_is_exact(pair):
    """Small N: the base probe already holds every target, recall 1 without widening."""
    q, t = pair
    _, _, info = ivf_search(q, t, 5, norms=check_pair(q, t), recall=0.99, recall_rows=50)
    assert info["recall"] == 1.0 and info["widen_steps"] == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"recall": 0.0}, "recall must be"),
        ({"recall": 1.5}, "recall must be"),
        ({"recall": True}, "recall must be"),
        ({"recall": "high"}, "recall must be"),
        ({"recall": 0.9, "recall_rows": 0}, "recall_rows > 0"),
        ({"max_widen": 0.5}, "max_widen must be"),
        ({"max_widen": "8"}, "max_widen must be"),
    ],
)
def test_recall_settings_are_checked(pair, kwargs, match):
    q, t = pair
    with pytest.raises(ValueError, match=match):
        ivf_search(q, t, 5, norms=check_pair(q, t), **kwargs)


@pytest.fixture(scope="module")
def small_clusters():
    """Blobs of 16 around 1 250 centres in 128-d: with a lossy projection (pca_dim=16) a coarse
    list mixes pieces of many blobs, and widening its probe adds mostly the wrong lists."""
    rng = np.random.default_rng(0)
    n, d = 20_000, 128
    centres = rng.standard_normal((n // 16, d)).astype(np.float32)
    latent = centres[rng.permutation(n) % len(centres)]
    latent += 0.8 * rng.standard_normal((n, d)).astype(np.float32)
    q = latent + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    t = latent + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    return q, t


def test_recall_loop_repartitions_into_finer_lists(small_clusters):
    q, t = small_clusters
    norms = check_pair(q, t)
    kw = dict(norms=norms, recall=0.95, recall_rows=200, max_widen=1.0, seed=1, pca_dim=16)
    with pytest.warns(RuntimeWarning, match="283 lists after 0 repartitions"):
        _, _, coarse = ivf_search(q, t, 5, repartitions=0, **kw)
    with pytest.warns(RuntimeWarning) as caught:
        ids, _, fine = ivf_search(q, t, 5, **kw)
    messages = [str(w.message) for w in caught]
    # Each rebuild is announced (it costs another pass over the data), then the final miss.
    assert sum("rebuilding the index with 1132 lists" in m for m in messages) == 1
    assert sum("rebuilding the index with 1250 lists" in m for m in messages) == 1
    assert any("1250 lists after 2 repartitions" in m for m in messages)
    # 283 default lists -> 1 132 -> capped at N / 16 = 1 250; each rebuild is a fresh index.
    assert (coarse["n_lists"], coarse["repartitions"]) == (283, 0)
    assert (fine["n_lists"], fine["repartitions"]) == (1250, 2)
    assert fine["recall"] > coarse["recall"] + 0.1
    assert fine["recall"] == pytest.approx(slow_recall(q, t, ids, sample_rows(20_000, 200, 1)))
    # An explicit n_lists is the user's: never repartitioned.
    with pytest.warns(RuntimeWarning, match="283 lists after 0 repartitions"):
        _, _, explicit = ivf_search(q, t, 5, n_lists=283, **kw)
    assert explicit["repartitions"] == 0 and explicit["recall"] == coarse["recall"]
    # A target met by the default lists is searched as before (no rebuild).
    _, _, met = ivf_search(q, t, 5, **{**kw, "recall": 0.3})
    assert (met["n_lists"], met["repartitions"]) == (283, 0)


def test_probe_order_beyond_full_keeps_the_prefix_that_covers_the_candidates(monkeypatch):
    """Above FULL_PROBE_ORDER_LISTS lists only a prefix of every list's probe order is kept:
    it is the full order's prefix (slow reference: a dense argsort) and reaches the most
    candidates a list can ask for; a search with it equals the one with the full order."""
    import torch

    import hardbatch.similarity.approximate as approx

    rng = np.random.default_rng(3)
    centroids = torch.from_numpy(rng.standard_normal((300, 8)).astype(np.float32))
    sizes = rng.integers(0, 40, size=300)
    full = approx._probe_order(centroids, sizes, 2000, 4)
    assert full.shape == (300, 300)
    expected = np.argsort(-(centroids @ centroids.T).numpy(), axis=1, kind="stable")
    np.testing.assert_array_equal(full, expected)
    monkeypatch.setattr(approx, "FULL_PROBE_ORDER_LISTS", 100)
    part = approx._probe_order(centroids, sizes, 2000, 4)
    assert 4 <= part.shape[1] < 300
    np.testing.assert_array_equal(part, expected[:, : part.shape[1]])
    assert sizes[part].sum(1).min() >= 2000
    # Not enough targets anywhere: the whole order.
    assert approx._probe_order(centroids, sizes, int(sizes.sum()) + 1, 4).shape == (300, 300)

    p = make_planted_pairs(20_000, 16, group_size=8, seed=5)
    norms = check_pair(p.queries, p.targets)
    widths = []
    real = approx._probe_order

    def recorded(*args):
        order = real(*args)
        widths.append(order.shape[1])
        return order

    monkeypatch.setattr(approx, "_probe_order", recorded)
    for extra in ({"recall": None}, {"recall": 0.85, "max_widen": 2.0}):
        kw = dict(norms=norms, n_lists=1000, seed=0, **extra)
        monkeypatch.setattr(approx, "FULL_PROBE_ORDER_LISTS", 8192)
        ids_full, _, info_full = ivf_search(p.queries, p.targets, 5, **kw)
        monkeypatch.setattr(approx, "FULL_PROBE_ORDER_LISTS", 50)
        ids_part, _, info_part = ivf_search(p.queries, p.targets, 5, **kw)
        assert widths[-2:][0] == 1000 > widths[-1]  # the second search ran on a partial order
        np.testing.assert_array_equal(ids_part, ids_full)
        assert info_part == info_full
