"""Cutting an order into batches: the leftover rule, padding, and per-epoch random streams."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref

from hardbatch import PAD
from hardbatch.batching import cut_order, epoch_rng, iter_rows


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
