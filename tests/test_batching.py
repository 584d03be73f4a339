"""Cutting an order into batches: the leftover rule, padding, and per-epoch random streams."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference as ref

from hardbatch import PAD
from hardbatch.batching import (
    cut_order,
    epoch_rng,
    group_clusters,
    iter_rows,
    mix_random_fill,
    mix_rng,
)


@pytest.mark.parametrize("n", [10, 12, 13, 23])
@pytest.mark.parametrize("batch_size", [2, 4, 5, 10])
@pytest.mark.parametrize("drop_last", [False, True])
def test_cut_order_equals_reference_chunks(n, batch_size, drop_last):
    order = np.random.default_rng(n).permutation(n)
    batches = cut_order(order, batch_size, drop_last=drop_last)
    chunks = ref.batches_of(order, batch_size, drop_last)
    assert batches.dtype == np.int64
    assert batches.shape == (len(chunks), batch_size)
    np.testing.assert_array_equal(batches, ref.padded(chunks, batch_size))
    assert [row.tolist() for row in iter_rows(batches)] == chunks


def test_leftover_rule():
    order = np.arange(10)[::-1]
    kept = cut_order(order, 4)
    # The short last batch holds the 10 % 4 = 2 leftovers, right-padded with PAD.
    np.testing.assert_array_equal(kept, [[9, 8, 7, 6], [5, 4, 3, 2], [1, 0, PAD, PAD]])
    dropped = cut_order(order, 4, drop_last=True)
    np.testing.assert_array_equal(dropped, [[9, 8, 7, 6], [5, 4, 3, 2]])
    assert PAD == -1


def test_cut_order_returns_a_new_array():
    order = np.arange(8, dtype=np.int64)
    batches = cut_order(order, 4)
    batches[0, 0] = 99
    assert order[0] == 0


def test_iter_rows_only_strips_padding():
    batches = np.array([[3, 1], [0, 2], [4, PAD]])
    rows = list(iter_rows(batches))
    assert [r.tolist() for r in rows] == [[3, 1], [0, 2], [4]]
    assert all(r.dtype == batches.dtype for r in rows)


def test_epoch_rng_is_deterministic_and_distinct_per_seed_and_epoch():
    draw = {(s, e): epoch_rng(s, e).permutation(50) for s in range(3) for e in range(3)}
    np.testing.assert_array_equal(epoch_rng(1, 2).permutation(50), draw[1, 2])
    as_tuples = {tuple(p) for p in draw.values()}
    assert len(as_tuples) == len(draw)
    # Seeded with the pair, not with seed + epoch.
    assert not np.array_equal(draw[0, 1], draw[1, 0])


# --------------------------------------------------------------------------- epoch rules
@pytest.mark.parametrize("drop_last", [False, True])
def test_reshuffle_epoch_is_a_seeded_permutation_cut(drop_last):
    from hardbatch.batching import reshuffle_epoch

    for epoch in (0, 1, 5):
        got = reshuffle_epoch(23, 5, seed=3, epoch=epoch, drop_last=drop_last)
        order = np.random.default_rng([3, epoch]).permutation(23)
        np.testing.assert_array_equal(got, ref.padded(ref.batches_of(order, 5, drop_last), 5))
    assert not np.array_equal(
        reshuffle_epoch(23, 5, seed=3, epoch=1), reshuffle_epoch(23, 5, seed=3, epoch=2)
    )


def test_regroup_clusters_epoch_is_group_clusters_with_the_epoch_stream():
    from hardbatch.batching import group_clusters, regroup_clusters_epoch

    clusters = np.arange(22).reshape(11, 2)
    clusters = np.vstack([clusters, [[22, PAD]]])
    for epoch in (0, 2):
        got = regroup_clusters_epoch(clusters, 6, seed=1, epoch=epoch)
        expected = group_clusters(clusters, 6, rng=epoch_rng(1, epoch))
        np.testing.assert_array_equal(got, expected)


# --------------------------------------------------------------------------- shard merges
def test_merge_shard_orders_keeps_full_batches_and_pools_leftovers():
    from hardbatch.batching import merge_shard_orders

    members = [np.array([10, 11, 12, 13, 14]), np.array([0, 1, 2, 3, 4, 5, 6])]
    shard_batches = [cut_order(np.array([4, 3, 2, 1, 0]), 2), cut_order(np.arange(7)[::-1], 2)]
    order, batches = merge_shard_orders(shard_batches, members, 2)
    # Full batches in shard order (global ids), then the two pooled leftovers (14's 0, 1's 0).
    np.testing.assert_array_equal(order, [14, 13, 12, 11, 6, 5, 4, 3, 2, 1, 10, 0])
    np.testing.assert_array_equal(batches, cut_order(order, 2))
    _, dropped = merge_shard_orders(shard_batches, members, 5, drop_last=True)
    assert dropped.shape == (2, 5)


def test_merge_shard_clusters_pools_short_clusters():
    from hardbatch.batching import merge_shard_clusters, regroup_clusters_epoch

    members = [np.arange(100, 105), np.arange(200, 207)]
    shard_clusters = [
        np.array([[0, 1], [2, 3], [4, PAD]]),
        np.array([[6, 5], [4, 3], [2, 1], [0, PAD]]),
    ]
    clusters, batches = merge_shard_clusters(shard_clusters, members, 4, seed=2)
    expected = [[100, 101], [102, 103], [206, 205], [204, 203], [202, 201], [104, 200]]
    np.testing.assert_array_equal(clusters, expected)
    np.testing.assert_array_equal(
        batches, regroup_clusters_epoch(clusters, 4, seed=2, epoch=0, drop_last=False)
    )


# --------------------------------------------------------------------------- hardness dial
def slow_mix(batches, hardness, rng, sample_groups=None):
    """The dial by loops: per batch keep the first floor(h·b + 1/2) members, pool the rest
    batch by batch (per group, groups in sorted order), shuffle, deal into the free slots."""
    out = batches.copy()
    row_group = [0 if sample_groups is None else int(sample_groups[r[0]]) for r in batches]
    for g in sorted(set(row_group)):
        slots, pool = [], []
        for r, row in enumerate(batches):
            if row_group[r] != g:
                continue
            size = sum(1 for x in row if x != PAD)
            for c in range(math.floor(hardness * size + 0.5), size):
                slots.append((r, c))
                pool.append(row[c])
        perm = rng.permutation(len(pool))
        for (r, c), i in zip(slots, perm, strict=True):
            out[r, c] = pool[i]
    return out


@pytest.mark.parametrize("hardness", [0.0, 0.3, 0.5, 0.97])
@pytest.mark.parametrize("grouped", [False, True])
def test_mix_random_fill_matches_the_slow_reference(hardness, grouped):
    n, b = 103, 8
    if grouped:
        groups = np.repeat([0, 1, 2], [40, 35, 28])
        batches = group_clusters(
            np.arange(n).reshape(-1, 1), b, rng=np.random.default_rng(0),
            cluster_groups=groups,
        )  # fmt: skip
    else:
        groups = None
        batches = cut_order(np.random.default_rng(0).permutation(n), b)
    mixed = mix_random_fill(batches, hardness, mix_rng(5, 2), sample_groups=groups)
    np.testing.assert_array_equal(mixed, slow_mix(batches, hardness, mix_rng(5, 2), groups))
    np.testing.assert_array_equal(mixed == PAD, batches == PAD)  # same layout
    assert sorted(mixed[mixed != PAD]) == list(range(n))
    if grouped:  # a batch never mixes groups
        for row in mixed:
            assert len(set(groups[row[row != PAD]].tolist())) == 1


def test_mix_random_fill_at_one_is_the_input():
    batches = cut_order(np.arange(10), 4)
    assert mix_random_fill(batches, 1.0, mix_rng(0, 0)) is batches
