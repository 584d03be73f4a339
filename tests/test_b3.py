"""B3 end to end: planted groups recovered, epochs, leftovers, hard negatives, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import comb

import hardbatch
from hardbatch import BatchPlan
from hardbatch.batching import PAD
from hardbatch.methods import B3
from hardbatch.negatives import cluster_hard_negatives
from hardbatch.similarity import top_ranks
from hardbatch.synthetic import make_planted_pairs


def adjusted_rand(a, b) -> float:
    """Adjusted Rand index from the contingency table (Hubert & Arabie)."""
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1)
    pairs = comb(table, 2).sum()
    rows, cols = comb(table.sum(1), 2).sum(), comb(table.sum(0), 2).sum()
    expected = rows * cols / comb(len(a), 2)
    return float((pairs - expected) / ((rows + cols) / 2 - expected))


def cluster_labels(clusters: np.ndarray, n: int) -> np.ndarray:
    of = np.full(n, -1, dtype=np.int64)
    for c, row in enumerate(clusters):
        of[row[row != PAD]] = c
    return of


def assert_epoch(batches: np.ndarray, n: int, batch_size: int, drop_last: bool) -> None:
    ids = batches[batches != PAD]
    assert len(np.unique(ids)) == ids.size, "a sample twice in one epoch"
    assert ids.size == (n - n % batch_size if drop_last else n)


@pytest.fixture(scope="module")
def planted():
    """N=1024 in 32 planted groups of 32 at moderate noise (d=32)."""
    return make_planted_pairs(1024, 32, group_size=32, spread=0.6, noise=0.5, seed=2)


@pytest.fixture(scope="module")
def odd():
    """N=1000 (not a multiple of K or B), groups of 20."""
    return make_planted_pairs(1000, 24, group_size=20, seed=5)


# --------------------------------------------------------------------------- recovery
@pytest.mark.parametrize("partitioner", ["metis", "leiden"])
def test_planted_groups_are_recovered(planted, partitioner):
    # p = 0: planted groups have no duplicates to skip, and a window of group_size - 1 ranks
    # covers exactly a sample's own group, so mutual edges join group mates only.
    plan = hardbatch.plan(
        "b3",
        planted.queries,
        planted.targets,
        batch_size=64,
        cluster_size=32,
        p=0,
        m=31,
        partitioner=partitioner,
        seed=0,
    )
    labels = cluster_labels(plan.clusters, 1024)
    assert adjusted_rand(labels, planted.groups) >= 0.9
    assert plan.info["in_cluster_edge_fraction"] > 0.9
    assert plan.info["partitioner"] == partitioner


def test_plan_shape_and_batches_of_whole_clusters(planted):
    plan = hardbatch.plan(
        "b3", planted.queries, planted.targets, batch_size=64, cluster_size=16, p=2, m=20
    )
    assert plan.method == "b3"
    assert plan.clusters.dtype == np.int64 and plan.clusters.shape == (64, 16)
    assert plan.batches.shape == (16, 64)
    of = cluster_labels(plan.clusters, 1024)
    for row in plan.batches:
        # 64 / 16 = 4 whole clusters per batch.
        assert len(np.unique(of[row])) == 4
        assert np.bincount(of[row]).max() == 16
    assert json.dumps(plan.params)  # only JSON settings, no arrays
    assert set(plan.info["seconds"]) >= {"search", "graph", "partition", "clusters", "batches"}


# --------------------------------------------------------------------------- epochs
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_sample_once_per_epoch_and_seeded(odd, drop_last, tmp_path):
    kwargs = dict(batch_size=48, cluster_size=16, p=1, m=30, seed=3, drop_last=drop_last)
    plan = hardbatch.plan("b3", odd.queries, odd.targets, **kwargs)
    epochs = [plan.for_epoch(e) for e in range(4)]
    np.testing.assert_array_equal(epochs[0], plan.batches)
    for batches in epochs:
        assert_epoch(batches, 1000, 48, drop_last)
    assert not np.array_equal(epochs[1], epochs[2])
    again = hardbatch.plan("b3", odd.queries, odd.targets, **kwargs)
    np.testing.assert_array_equal(again.clusters, plan.clusters)
    np.testing.assert_array_equal(again.for_epoch(2), epochs[2])
    other = hardbatch.plan("b3", odd.queries, odd.targets, **{**kwargs, "seed": 4})
    assert not np.array_equal(other.for_epoch(1), epochs[1])
    loaded = BatchPlan.load(plan.save(tmp_path / "b3.npz"), n_samples=1000)
    np.testing.assert_array_equal(loaded.clusters, plan.clusters)
    np.testing.assert_array_equal(loaded.for_epoch(3), epochs[3])


def test_leftover_cluster_uses_members_only(odd):
    plan = hardbatch.plan("b3", odd.queries, odd.targets, batch_size=32, cluster_size=16, p=0, m=19)
    clusters = plan.clusters
    assert clusters.shape == (63, 16)  # 62 full clusters + 1000 mod 16 = 8 leftovers
    members = clusters[clusters != PAD]
    np.testing.assert_array_equal(np.sort(members), np.arange(1000))
    assert (clusters[-1, 8:] == PAD).all() and (clusters[-1, :8] != PAD).all()
    assert (clusters[:-1] != PAD).all()
    # The short cluster ends the epoch's last batch, whose padding is real padding.
    for epoch in range(3):
        last = plan.for_epoch(epoch)[-1]
        assert np.isin(clusters[-1, :8], last).all()
        assert (last == PAD).sum() == 32 - 1000 % 32


# --------------------------------------------------------------------------- hard negatives
def test_hard_negatives_never_self_or_own_cluster(odd):
    plan = hardbatch.plan(
        "b3",
        odd.queries,
        odd.targets,
        batch_size=32,
        cluster_size=16,
        p=3,
        m=30,
        hard_negatives=5,
        seed=0,
    )
    negatives = plan.hard_negatives
    assert negatives.shape == (1000, 5) and negatives.dtype == np.int64
    assert negatives.min() >= 0 and negatives.max() < 1000
    of = cluster_labels(plan.clusters, 1000)
    assert not (negatives == np.arange(1000)[:, None]).any()
    assert not (of[negatives] == of[:, None]).any()
    assert all(len(set(row)) == 5 for row in negatives.tolist())  # distinct per example
    again = hardbatch.plan(
        "b3", odd.queries, odd.targets, batch_size=32, cluster_size=16, p=3, m=30,
        hard_negatives=5, seed=0,
    )  # fmt: skip
    np.testing.assert_array_equal(again.hard_negatives, negatives)


def pooled_scores_loop(members, ranks, p, depth=100, penalty=2) -> dict[int, float]:
    """B3's cluster score of every candidate, by a loop over members and ranks."""
    score: dict[int, float] = {}
    for i in members:
        for r, j in enumerate(ranks[i, : p + depth].tolist()):
            score[j] = score.get(j, 0) + 1 - (penalty if r < p else 0)
    for i in members:
        score.pop(int(i), None)
    return score


def test_hard_negatives_come_from_positive_pooled_scores(odd):
    p = 5
    ranks = top_ranks(odd.queries, odd.targets, p + 100)
    clusters = np.arange(1000).reshape(-1, 8)[np.random.default_rng(0).permutation(125)]
    negatives = cluster_hard_negatives(clusters, ranks, p, 3, rng=np.random.default_rng(0))
    for row in clusters[:40]:
        score = pooled_scores_loop(row, ranks, p)
        positive = {j for j, s in score.items() if s > 0}
        picked = negatives[row].ravel().tolist()
        assert set(picked) <= positive
        if len(positive) >= row.size * 3:
            assert len(set(picked)) == row.size * 3  # pooled draw: all distinct


def test_hard_negatives_fill_with_outsiders_when_candidates_run_out():
    # Two tight groups of 8, p = 0, depth 6 ranks: few candidates, 10 negatives per example.
    rng = np.random.default_rng(0)
    ranks = np.stack([rng.permutation(np.delete(np.arange(40), i))[:6] for i in range(40)])
    clusters = np.arange(40).reshape(5, 8)
    negatives = cluster_hard_negatives(clusters, ranks, 0, 10, rng=rng, depth=6)
    of = np.arange(40) // 8
    assert not (of[negatives] == of[:, None]).any()
    assert all(len(set(row)) == 10 for row in negatives.tolist())


# --------------------------------------------------------------------------- variants
def test_class_label_variant_never_pairs_or_negates_the_own_label(odd):
    labels = odd.groups  # 50 classes of 20 examples
    label_vectors = np.random.default_rng(1).standard_normal((50, 24)).astype(np.float32)
    targets = label_vectors[labels]  # targets are the label embeddings
    kwargs = dict(batch_size=32, cluster_size=16, m=20, labels=labels, hard_negatives=3, seed=0)
    plan = hardbatch.plan("b3", odd.queries, targets, **kwargs)
    assert plan.info["mode"] == "labels" and plan.info["n_labels"] == 50
    assert "labels" not in plan.params
    assert_epoch(plan.batches, 1000, 32, False)
    negatives = plan.hard_negatives
    assert not (labels[negatives] == labels[:, None]).any()
    of = cluster_labels(plan.clusters, 1000)
    assert not (of[negatives] == of[:, None]).any()
    # Same-label examples in one batch are false negatives (same target text): the guard
    # with the labels as duplicate ids keeps them apart in every epoch.
    guarded = hardbatch.plan("b3", odd.queries, targets, duplicate_ids=labels, **kwargs)
    for epoch in range(3):
        for row in guarded.for_epoch(epoch):
            row = row[row != PAD]
            assert len(set(labels[row].tolist())) == row.size


def test_groups_keep_clusters_and_batches_in_one_dataset(odd, tmp_path):
    groups = np.where(np.arange(1000) < 620, "retrieval", "vqa")
    plan = hardbatch.plan(
        "b3",
        odd.queries,
        odd.targets,
        batch_size=32,
        cluster_size=16,
        p=1,
        m=30,
        groups=groups,
        hard_negatives=2,
        seed=0,
    )
    assert plan.info["n_groups"] == 2
    assert plan.cluster_groups.shape == (len(plan.clusters),)
    loaded = BatchPlan.load(plan.save(tmp_path / "grouped.npz"))
    for source in (plan, loaded):
        for epoch in range(3):
            batches = source.for_epoch(epoch)
            assert_epoch(batches, 1000, 32, False)
            for row in batches:
                assert len(set(groups[row[row != PAD]])) == 1
    for row in plan.clusters:
        assert len(set(groups[row[row != PAD]])) == 1
    assert (groups[plan.hard_negatives] == groups[:, None]).all()
    dropped = hardbatch.plan(
        "b3", odd.queries, odd.targets, batch_size=32, cluster_size=16, p=1, m=30,
        groups=groups, drop_last=True,
    )  # fmt: skip
    assert_ids = dropped.batches[dropped.batches != PAD]
    assert assert_ids.size == 620 - 620 % 32 + 380 - 380 % 32


def test_union_graph_has_more_edges_than_mutual(planted):
    kwargs = dict(batch_size=64, cluster_size=32, p=0, m=40)
    mutual = B3(**kwargs).fit(planted.queries, planted.targets)
    union = B3(mutual=False, **kwargs).fit(planted.queries, planted.targets)
    assert union.n_edges_ > mutual.n_edges_
    assert mutual.plan_.params["mutual"] is True and union.plan_.params["mutual"] is False


def test_cli_aliases_and_registration():
    assert "b3" in hardbatch.available_methods()
    assert hardbatch.get_method("b3") is B3
    assert B3.cli_aliases == {"p": ["-p"], "m": ["-m"]}
    assert B3.fit_params == ("labels", "groups")
    assert set(B3.param_help) <= set(B3.param_names())


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"p": 900, "m": 100}, "p \\+ m < N"),
        ({"p": 0, "m": 1000}, "p \\+ m < N"),
        ({"batch_size": 40, "cluster_size": 16}, "multiple of cluster_size"),
        ({"cluster_size": 1, "batch_size": 32}, "at least 2"),
        ({"partitioner": "kmeans"}, "partitioner must be"),
        ({"hard_negatives": -1}, "hard_negatives"),
        ({"p": -3}, "p must"),
        ({"m": 0}, "m must"),
        ({"mutual": "yes"}, "mutual must"),
        ({"labels": np.zeros(5)}, "labels has 5 entries"),
        ({"groups": [0, 1]}, "groups has 2 entries"),
        ({"labels": np.zeros(1000)}, "at least 2 distinct labels"),
        ({"weights": np.ones(1000)}, "unknown parameter"),
    ],
)
def test_bad_input_raises(odd, kwargs, match):
    params = {"batch_size": 32, "cluster_size": 16, "p": 2, "m": 20, **kwargs}
    with pytest.raises(ValueError, match=match):
        hardbatch.plan("b3", odd.queries, odd.targets, **params)


def test_small_group_window_error_names_the_group(odd):
    groups = np.r_[np.zeros(990, dtype=int), np.ones(10, dtype=int)]
    with pytest.raises(ValueError, match="in the group of sample 990"):
        hardbatch.plan(
            "b3", odd.queries, odd.targets, batch_size=32, cluster_size=16, p=2, m=20,
            groups=groups,
        )  # fmt: skip


def test_unknown_fit_argument_raises(odd):
    with pytest.raises(ValueError, match="unknown fit argument"):
        B3(batch_size=32, cluster_size=16).fit(odd.queries, odd.targets, weights=[1])
