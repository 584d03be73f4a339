"""The neighbour-search entry point (hardbatch.similarity.search) and its use by GCBS / B3."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from reference import dense_similarity, knn_margin

import hardbatch
from hardbatch.metrics import loss_gap
from hardbatch.similarity import (
    SearchSettings,
    SimilarityBlocks,
    knn_graph,
    neighbour_graph,
    search,
    search_neighbours,
    top_ranks,
)
from hardbatch.similarity.approximate import neighbour_recall
from hardbatch.similarity.search import resolve_backend
from hardbatch.synthetic import make_planted_pairs


def neighbours(q, t, k, *, backend, seed=0, **settings):
    found = search_neighbours(q, t, k, SearchSettings(backend=backend, **settings), seed=seed)
    return found.ids, found.sims


def top_k_loop(sim: np.ndarray, k: int) -> list[set[int]]:
    """Reference: for every row, the k largest off-diagonal entries (a plain loop)."""
    out = []
    for i, row in enumerate(sim):
        others = [(row[j], j) for j in range(len(row)) if j != i]
        others.sort(reverse=True)
        out.append({j for _, j in others[:k]})
    return out


@pytest.fixture(scope="module")
def planted():
    return make_planted_pairs(2000, 32, group_size=16, seed=3)


def test_exact_backend_matches_reference(planted_small):
    q, t = planted_small.queries, planted_small.targets
    sim = dense_similarity(q, t)
    assert knn_margin(sim, 5) > 5e-6
    ids, sims = neighbours(q, t, 5, backend="exact")
    assert [set(r) for r in ids.tolist()] == top_k_loop(sim, 5)
    assert np.all(np.diff(sims, axis=1) <= 0)
    np.testing.assert_allclose(sims, np.take_along_axis(sim, ids.astype(int), 1), atol=1e-5)


def test_prepared_blocks_give_the_same_search(planted_small):
    q, t = planted_small.queries, planted_small.targets
    blocks = SimilarityBlocks(q, t, metric="dot", block_rows=37)
    settings = SearchSettings(backend="exact", metric="dot", block_rows=37)
    with_blocks = search_neighbours(q, t, 4, settings, blocks=blocks)
    without = search_neighbours(q, t, 4, settings)
    np.testing.assert_array_equal(with_blocks.ids, without.ids)
    np.testing.assert_array_equal(with_blocks.sims, without.sims)
    assert (knn_graph(q, t, 4, blocks=blocks) != knn_graph(q, t, 4, metric="dot")).nnz == 0


def test_default_settings_are_auto_cosine(planted_small):
    q, t = planted_small.queries, planted_small.targets
    found = search_neighbours(q, t, 3)
    assert found.info == {"backend": "exact"}
    np.testing.assert_array_equal(found.ids, top_ranks(q, t, 3))


pytest.importorskip("faiss")


def test_search_info_and_recall(planted):
    q, t = planted.queries, planted.targets
    exact = search_neighbours(q, t, 6, SearchSettings(backend="exact", recall_rows=100))
    assert exact.info == {"backend": "exact"}  # nothing to measure: it is the reference
    settings = SearchSettings(backend="faiss", recall_rows=100)
    found = search_neighbours(q, t, 6, settings, seed=2)
    assert found.info["backend"] == "faiss" and found.info["recall_rows"] == 100
    assert found.info["recall"] == neighbour_recall(q, t, found.ids, n_rows=100, seed=2)
    assert found.info["recall_target"] == 0.95 and found.info["candidates"] >= 2000
    fixed = SearchSettings(backend="faiss", recall=None, recall_rows=0)
    quiet = search_neighbours(q, t, 6, fixed, seed=2)
    assert quiet.info["backend"] == "faiss" and "recall" not in quiet.info
    np.testing.assert_array_equal(quiet.ids, found.ids)


def test_resolved_settings(planted):
    settings = SearchSettings(metric="dot", n_probe=8).resolved(1000, 64)
    assert settings == SearchSettings(backend="exact", metric="dot", n_probe=8)
    assert SearchSettings(backend="auto").resolved(10**6, 768).backend == "faiss"


def test_faiss_recall_on_clustered_data(planted):
    q, t = planted.queries, planted.targets
    ids, sims = neighbours(q, t, 10, backend="faiss", seed=0)
    assert ids.shape == (2000, 10) and ids.dtype == np.int32
    assert not (ids == np.arange(2000)[:, None]).any()  # own positive never a neighbour
    assert all(len(set(r)) == 10 for r in ids.tolist())
    assert np.all(np.diff(sims, axis=1) <= 0)
    # Similarities reported are the true ones of the ids returned.
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    true = np.einsum("id,ikd->ik", qn, tn[ids])
    np.testing.assert_allclose(sims, true, atol=1e-5)
    assert neighbour_recall(q, t, ids, n_rows=500) >= 0.9


def test_recall_of_exact_is_one_and_of_random_is_low(planted):
    q, t = planted.queries, planted.targets
    exact_ids, _ = neighbours(q, t, 10, backend="exact")
    assert neighbour_recall(q, t, exact_ids, n_rows=300) == 1.0
    rng = np.random.default_rng(0)
    random_ids = rng.integers(0, 2000, size=(2000, 10))
    assert neighbour_recall(q, t, random_ids, n_rows=300) < 0.05


def test_faiss_deterministic_and_seeded(planted):
    q, t = planted.queries, planted.targets
    a = neighbours(q, t, 8, backend="faiss", seed=1)[0]
    b = neighbours(q, t, 8, backend="faiss", seed=1)[0]
    np.testing.assert_array_equal(a, b)


def test_memmap_float16_streaming(planted, tmp_path):
    q16 = planted.queries.astype(np.float16)
    t16 = planted.targets.astype(np.float16)
    np.save(tmp_path / "q.npy", q16)
    np.save(tmp_path / "t.npy", t16)
    qm = np.load(tmp_path / "q.npy", mmap_mode="r")
    tm = np.load(tmp_path / "t.npy", mmap_mode="r")
    for backend in ("exact", "faiss"):
        from_mmap = neighbours(qm, tm, 6, backend=backend, seed=0)[0]
        from_memory = neighbours(q16.astype(np.float32), t16.astype(np.float32), 6,
                                 backend=backend, seed=0)[0]  # fmt: skip
        np.testing.assert_array_equal(from_mmap, from_memory)


def test_neighbour_graph_matches_lists():
    rng = np.random.default_rng(0)
    n, k = 50, 4
    ids = np.stack([rng.choice(np.delete(np.arange(n), i), k, replace=False) for i in range(n)])
    sims = -np.sort(-rng.random((n, k)), axis=1).astype(np.float32)
    graph = neighbour_graph(ids, sims)
    assert graph.indices.dtype == np.int32
    for i in range(n):
        row = graph.indices[graph.indptr[i] : graph.indptr[i + 1]]
        assert list(row) == sorted(ids[i])
        assert dict(zip(row, graph.data[graph.indptr[i] : graph.indptr[i + 1]], strict=True)) == {
            j: s for j, s in zip(ids[i], sims[i], strict=True)
        }
    cut = neighbour_graph(ids, sims, threshold=0.5, values=False)
    for i in range(n):
        row = cut.indices[cut.indptr[i] : cut.indptr[i + 1]]
        assert set(row) == {j for j, s in zip(ids[i], sims[i], strict=True) if s > 0.5}


def test_knn_graph_and_top_ranks_dispatch(planted):
    q, t = planted.queries, planted.targets
    g = knn_graph(q, t, 5, backend="faiss", values=False)
    assert g.shape == (2000, 2000) and np.all(np.diff(g.indptr) == 5)
    r = top_ranks(q, t, 7, backend="faiss")
    assert r.shape == (2000, 7)
    exact = top_ranks(q, t, 7)
    assert np.mean([len(set(a) & set(b)) / 7 for a, b in zip(r, exact, strict=True)]) > 0.9


def test_auto_dispatch(monkeypatch):
    assert resolve_backend("auto", 1000, 64) == "exact"
    assert resolve_backend("exact", 10**7, 768) == "exact"
    assert resolve_backend("auto", 10**6, 768, device="cpu") == "faiss"
    monkeypatch.setattr(search, "faiss_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="faiss is not installed"):
        assert resolve_backend("auto", 10**6, 768, device="cpu") == "exact"
    with pytest.raises(ValueError, match="needs the faiss package"):
        resolve_backend("faiss", 100, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_backend("auto", 100, 8) == "exact"  # small: no warning


def test_bad_input(planted):
    q, t = planted.queries, planted.targets
    with pytest.raises(ValueError, match="backend must be one of"):
        neighbours(q, t, 5, backend="annoy")
    with pytest.raises(ValueError, match="metric must be one of"):
        SearchSettings(metric="l2")
    with pytest.raises(ValueError, match="recall_rows must be"):
        SearchSettings(recall_rows=-1)
    with pytest.raises(ValueError, match="backend must be one of"):
        hardbatch.plan("gcbs", q, t, batch_size=64, backend="hnsw")
    with pytest.raises(ValueError, match="backend must be one of"):
        hardbatch.plan("b3", q, t, batch_size=64, backend="hnsw")
    with pytest.raises(ValueError, match="smaller than N"):
        neighbours(q[:10], t[:10], 10, backend="faiss")
    with pytest.raises(ValueError, match="ids must have shape"):
        neighbour_recall(q, t, np.zeros((5, 3), dtype=np.int64))


@pytest.mark.parametrize(
    "method, params",
    [
        ("gcbs", {"top_k": 10}),
        ("gcbs", {"quantile": 0.995}),
        ("b3", {"cluster_size": 16, "p": 2, "m": 20}),
    ],
)
def test_plans_with_faiss_backend(planted, method, params):
    q, t = planted.queries, planted.targets
    plan = hardbatch.plan(method, q, t, batch_size=64, seed=0, backend="faiss", **params)
    plan.validate()
    again = hardbatch.plan(method, q, t, batch_size=64, seed=0, backend="faiss", **params)
    np.testing.assert_array_equal(plan.batches, again.batches)
    search = plan.info["search"]
    assert search["backend"] == "faiss" and search["recall"] >= 0.8
    exact = hardbatch.plan(method, q, t, batch_size=64, seed=0, backend="exact", **params)
    assert exact.info["search"]["backend"] == "exact"
    random = hardbatch.plan("random", n_samples=2000, batch_size=64, seed=0)
    gap = {name: loss_gap(q, t, p)["gap"] for name, p in
           (("faiss", plan), ("exact", exact), ("random", random))}  # fmt: skip
    # The approximate plan keeps most of the exact plan's advantage over random batches
    # (B3 at N=3000 measured 14% of the exact-to-random distance: gaps 0.040 / 0.006 / 0.245).
    assert gap["faiss"] <= gap["exact"] + 0.25 * (gap["random"] - gap["exact"])


def test_quantile_rule_with_faiss_is_capped_threshold(planted):
    q, t = planted.queries, planted.targets
    planner = hardbatch.get_method("gcbs")(batch_size=64, quantile=0.995, backend="faiss")
    planner.fit(q, t)
    search = planner.plan_.info["search"]
    assert search["k"] == int(np.ceil(0.005 * 1999))
    assert planner.plan_.info["n_edges"] <= 2000 * search["k"]


def test_b3_auto_partitioner_switches_to_leiden(planted, monkeypatch):
    from hardbatch.methods import b3

    q, t = planted.queries, planted.targets
    params = dict(batch_size=64, cluster_size=16, p=0, m=16, backend="exact")
    assert hardbatch.plan("b3", q, t, **params).info["partitioner"] == "metis"
    monkeypatch.setattr(b3, "AUTO_METIS_NODES", 1000)
    assert hardbatch.plan("b3", q, t, **params).info["partitioner"] == "leiden"


@pytest.mark.parametrize("recall", [0, -0.1, 1.01, True, "0.9"])
def test_recall_target_is_checked(recall):
    with pytest.raises(ValueError, match="recall must be a number in"):
        SearchSettings(recall=recall)


def test_recall_target_needs_sample_rows():
    with pytest.raises(ValueError, match="recall_rows > 0"):
        SearchSettings(recall=0.9, recall_rows=0)
    assert SearchSettings(recall=None, recall_rows=0).recall is None  # fixed probe, unmeasured
    assert SearchSettings(recall=1).recall == 1
    with pytest.raises(ValueError, match="max_widen must be"):
        SearchSettings(max_widen=0.9)
