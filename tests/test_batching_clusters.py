"""Batches made of whole clusters, per epoch and per dataset (batching.group_clusters)."""

from __future__ import annotations

import numpy as np
import pytest

from hardbatch.batching import PAD, epoch_rng, group_clusters
from hardbatch.structure import equalize_parts


def clusters_of(n: int, k: int, seed: int = 0) -> np.ndarray:
    parts = np.random.default_rng(seed).integers(0, max(1, n // k), size=n)
    return equalize_parts(parts, k)


def rows(batches: np.ndarray) -> list[np.ndarray]:
    return [row[row != PAD] for row in batches]


def cluster_index(clusters: np.ndarray, n: int) -> np.ndarray:
    of = np.empty(n, dtype=np.int64)
    for c, row in enumerate(clusters):
        of[row[row != PAD]] = c
    return of


@pytest.mark.parametrize("n,k,per_batch", [(100, 4, 3), (96, 8, 2), (37, 5, 1), (64, 4, 4)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_sample_once_and_batches_are_whole_clusters(n, k, per_batch, drop_last):
    clusters = clusters_of(n, k)
    b = k * per_batch
    batches = group_clusters(clusters, b, rng=epoch_rng(0, 3), drop_last=drop_last)
    assert batches.shape[1] == b
    ids = batches[batches != PAD]
    assert len(np.unique(ids)) == ids.size
    assert ids.size == (n - n % b if drop_last else n)
    # Padding only at the end of the last row.
    assert (batches[:-1] != PAD).all()
    of = cluster_index(clusters, n)
    for row in rows(batches):
        # A batch is a union of whole clusters.
        for c in np.unique(of[row]):
            members = clusters[c][clusters[c] != PAD]
            assert np.isin(members, row).all()


def test_short_cluster_is_last_and_full_batches_hold_full_clusters():
    clusters = clusters_of(50, 4)  # 12 full clusters + a short one of 2
    batches = group_clusters(clusters, 8, rng=epoch_rng(1, 0))
    short = clusters[-1][clusters[-1] != PAD]
    assert np.isin(short, batches[-1]).all()
    assert (batches[-1] == PAD).sum() == 6


def test_epochs_reshuffle_and_are_seeded():
    clusters = clusters_of(200, 5)
    a = group_clusters(clusters, 20, rng=epoch_rng(0, 1))
    again = group_clusters(clusters, 20, rng=epoch_rng(0, 1))
    other_epoch = group_clusters(clusters, 20, rng=epoch_rng(0, 2))
    np.testing.assert_array_equal(a, again)
    assert not np.array_equal(a, other_epoch)


def test_groups_keep_batches_inside_one_dataset():
    # Three datasets of 40, 33 and 27 samples, K = 4, B = 8.
    sizes = [40, 33, 27]
    blocks, groups_of_clusters, offset = [], [], 0
    for g, size in enumerate(sizes):
        local = clusters_of(size, 4, seed=g)
        blocks.append(np.where(local == PAD, PAD, local + offset))
        groups_of_clusters.append(np.full(len(local), g))
        offset += size
    clusters = np.concatenate(blocks)
    cluster_groups = np.concatenate(groups_of_clusters)
    sample_group = np.repeat(np.arange(3), sizes)
    for drop_last in (False, True):
        batches = group_clusters(
            clusters, 8, rng=epoch_rng(0, 0), cluster_groups=cluster_groups, drop_last=drop_last
        )
        for row in rows(batches):
            assert len(np.unique(sample_group[row])) == 1
        ids = batches[batches != PAD]
        assert len(np.unique(ids)) == ids.size
        expected = sum(s - s % 8 for s in sizes) if drop_last else sum(sizes)
        assert ids.size == expected
        short = (batches == PAD).any(axis=1)
        # Short batches (one per dataset with leftovers) come after all full ones.
        assert short.sum() == (0 if drop_last else sum(s % 8 > 0 for s in sizes))
        assert not short[: (~short).sum()].any()


def test_batch_size_must_be_a_multiple_of_cluster_size():
    with pytest.raises(ValueError, match="multiple of the cluster size"):
        group_clusters(clusters_of(40, 4), 10, rng=epoch_rng(0, 0))


def test_cluster_groups_shape_is_checked():
    clusters = clusters_of(40, 4)
    with pytest.raises(ValueError, match="cluster_groups must have shape"):
        group_clusters(clusters, 8, rng=epoch_rng(0, 0), cluster_groups=np.zeros(3))
