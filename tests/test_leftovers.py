"""Leftover rotation: with drop_last the samples left out change from epoch to epoch (seeded),
so over E epochs none is left out of more than its share; epoch 0 stays the plan's own cut."""

from __future__ import annotations

import math

import numpy as np
import pytest

import hardbatch
from hardbatch import HardBatchSampler
from hardbatch.batching import PAD
from hardbatch.leftovers import leave_out_of_clusters, leave_out_of_order, rotating_leftovers
from hardbatch.synthetic import make_planted_pairs


def left_out_counts(epochs_batches, n):
    """How many epochs each sample is in no batch (slow, obvious)."""
    counts = np.zeros(n, dtype=int)
    for batches in epochs_batches:
        present = set(int(i) for i in np.ravel(batches) if i != PAD)
        for i in range(n):
            counts[i] += i not in present
    return counts


@pytest.mark.parametrize("n, b", [(300, 32), (300, 16), (53, 8), (40, 8)])
def test_windows_leave_each_sample_out_its_share(n, b):
    r = n % b
    epoch0 = np.arange(n - r, n)  # as if the plan's own cut left out its tail
    windows = [epoch0] + [
        rotating_leftovers(n, b, seed=3, epoch=e, last=epoch0) for e in range(1, 12)
    ]
    assert all(len(w) == r and len(set(w.tolist())) == r for w in windows)
    for epochs in range(1, 13):
        counts = np.zeros(n, dtype=int)
        for w in windows[:epochs]:
            counts[w] += 1
        assert counts.max() <= math.ceil(epochs * r / n)
    if r:  # seeded: the same seed gives the same windows, another seed others
        again = rotating_leftovers(n, b, seed=3, epoch=2, last=epoch0)
        np.testing.assert_array_equal(again, windows[2])
        assert not np.array_equal(rotating_leftovers(n, b, seed=4, epoch=2, last=epoch0), again)


def test_windows_per_group_and_bad_epoch():
    groups = np.repeat([0, 1], [50, 37])
    left = rotating_leftovers(87, 8, seed=0, epoch=1, groups=groups)
    assert (groups[left] == 0).sum() == 50 % 8 and (groups[left] == 1).sum() == 37 % 8
    with pytest.raises(ValueError, match="epoch 1"):
        rotating_leftovers(87, 8, seed=0, epoch=0)


def test_leave_out_of_order_keeps_the_order():
    order = np.random.default_rng(0).permutation(23)
    left = np.array([order[3], order[10], order[22]])
    batches = leave_out_of_order(order, left, 5)
    np.testing.assert_array_equal(batches.ravel(), [i for i in order if i not in left])
    with pytest.raises(ValueError, match="multiple of batch_size"):
        leave_out_of_order(order, left[:2], 5)


@pytest.mark.parametrize("grouped", [False, True])
def test_leave_out_of_clusters_keeps_whole_clusters(grouped):
    rng = np.random.default_rng(1)
    k, b = 4, 8
    n_groups = [27, 21] if grouped else [45]
    clusters, cluster_groups, start = [], [], 0
    for g, n_g in enumerate(n_groups):
        ids = rng.permutation(np.arange(start, start + n_g))
        start += n_g
        for c in range(0, n_g, k):
            row = np.full(k, PAD)
            row[: len(ids[c : c + k])] = ids[c : c + k]
            clusters.append(row)
            cluster_groups.append(g)
    clusters = np.array(clusters)
    groups_arr = np.array(cluster_groups) if grouped else None
    sample_group = np.zeros(start, dtype=int)
    for row, g in zip(clusters, cluster_groups, strict=True):
        sample_group[row[row != PAD]] = g
    left = rotating_leftovers(start, b, seed=0, epoch=2, groups=sample_group if grouped else None)
    batches = leave_out_of_clusters(
        clusters, left, b, rng=np.random.default_rng(5), cluster_groups=groups_arr
    )
    assert (batches != PAD).all()  # full batches only
    served = np.sort(batches.ravel())
    np.testing.assert_array_equal(served, np.setdiff1d(np.arange(start), left))
    # Each batch is b/k slices of k; a slice is a cluster, or a cluster whose left-out members
    # were replaced: its members of the original cluster stay together.
    original = {int(i): r for r, row in enumerate(clusters) for i in row if i != PAD}
    for batch in batches:
        for piece in batch.reshape(-1, k):
            kept = [
                original[int(i)]
                for i in piece
                if not np.isin(clusters[original[int(i)]], left).any()
            ]
            assert len(set(kept)) <= 1  # untouched members come from one cluster
        assert len({sample_group[i] for i in batch}) == 1  # groups stay apart


def test_for_epoch_rotates_gcbs_and_b3_leftovers():
    pairs = make_planted_pairs(300, 16, group_size=10, seed=0)
    q, t = pairs.queries, pairs.targets
    for plan in (
        hardbatch.plan("gcbs", q, t, batch_size=16, seed=0, quantile=0.95, drop_last=True),
        hardbatch.plan(
            "b3", q, t, batch_size=32, seed=0, cluster_size=16, p=2, m=10, drop_last=True
        ),
    ):
        epochs = [plan.for_epoch(e) for e in range(6)]
        assert epochs[0] is plan.batches
        counts = left_out_counts(epochs, 300)
        r = 300 % plan.batch_size
        assert counts.max() <= math.ceil(6 * r / 300) and counts.sum() == 6 * r
        for batches in epochs:
            assert batches.shape == (300 // plan.batch_size, plan.batch_size)
    # drop_last=False: nothing to rotate, the plan's epochs are what they were
    keep = hardbatch.plan("gcbs", q, t, batch_size=16, seed=0, quantile=0.95)
    assert keep.for_epoch(3) is keep.batches


@pytest.mark.parametrize(
    "method, batch_size, kwargs",
    [
        ("gcbs", 16, {"quantile": 0.95}),
        ("gcbs", 16, {"quantile": 0.95, "refresh": "never"}),
        ("gcbs", 16, {"top_k": 5, "refresh": "steps", "refresh_every": 4}),
        ("b3", 32, {"cluster_size": 16, "p": 2, "m": 10}),
        ("random", 32, {}),
    ],
)
def test_six_epochs_with_drop_last_train_every_sample(method, batch_size, kwargs):
    """The issue's case: N = 300, drop_last, 6 epochs -> every sample trained at least once."""
    pairs = make_planted_pairs(300, 16, group_size=10, seed=0)
    step = [0]

    def embed(idx):  # a model that keeps moving: each pass sees other embeddings
        step[0] += 1
        return pairs.queries[idx] + 0.01 * step[0], pairs.targets[idx]

    sampler = HardBatchSampler(
        n_samples=300,
        batch_size=batch_size,
        method=method,
        seed=0,
        drop_last=True,
        embed_fn=embed if method != "random" else None,
        **kwargs,
    )
    seen = np.zeros(300, dtype=int)
    for epoch in range(6):
        sampler.set_epoch(epoch)
        ids = np.concatenate([np.asarray(b) for b in sampler])
        assert len(ids) == len(set(ids.tolist())) == 300 - 300 % batch_size
        seen[ids] += 1
    assert seen.min() >= 1, f"never trained: {np.flatnonzero(seen == 0)}"
    if method != "random":  # random leaves out by chance; the others by turn
        r = 300 % batch_size
        assert (6 - seen).max() <= math.ceil(6 * r / 300) + 1
