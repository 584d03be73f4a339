"""The planning tools of the refresh policies: the embedding pass and :class:`Planning`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hardbatch
from hardbatch.planning import Planning, Stopwatch, embed_pass, shuffle_full_rows
from hardbatch.synthetic import make_planted_pairs

N, D, B = 200, 12, 20


@pytest.fixture(scope="module")
def pairs():
    return make_planted_pairs(N, D, group_size=10, seed=1)


# ------------------------------------------------------------------------------- embed pass
def test_embed_pass_batches_in_order_without_grad(pairs):
    seen = []

    def embed(idx):
        seen.append((len(idx), torch.is_grad_enabled()))
        return torch.tensor(pairs.queries[idx]), pairs.targets[idx]

    order = np.arange(N)[::-1].copy()
    q, t = embed_pass(embed, order, batch_size=64)
    assert [s for s, _ in seen] == [50, 50, 50, 50]  # <= 64 per call, split evenly
    assert not any(g for _, g in seen)
    np.testing.assert_array_equal(q, pairs.queries[order])
    np.testing.assert_array_equal(t, pairs.targets[order])
    assert q.dtype == np.float32


def test_embed_pass_checks_row_counts(pairs):
    with pytest.raises(ValueError, match="returned 1 query"):
        embed_pass(lambda idx: (pairs.queries[:1], pairs.targets[idx]), np.arange(5))
    with pytest.raises(ValueError, match="shape"):
        embed_pass(lambda idx: (np.zeros(len(idx)), pairs.targets[idx]), np.arange(5))


# ------------------------------------------------------------------------------- Planning
def make_planning(pairs, **kwargs):
    settings = dict(method="gcbs", n_samples=N, batch_size=B, drop_last=False, seed=3)
    settings.update(kwargs)
    return Planning(**settings)


def test_planning_plans_like_hardbatch_plan(pairs):
    planning = make_planning(pairs, method_params={"quantile": 0.95})
    plan = planning.plan(pairs.queries, pairs.targets, seed=11)
    reference = hardbatch.plan(
        "gcbs", pairs.queries, pairs.targets, batch_size=B, seed=11, quantile=0.95
    )
    np.testing.assert_array_equal(plan.batches, reference.batches)
    # Another method is planned without the sampler's method parameters.
    other = planning.plan(None, None, seed=11, method="random")
    np.testing.assert_array_equal(
        other.batches, hardbatch.plan("random", n_samples=N, batch_size=B, seed=11).batches
    )


def test_planning_subset_carries_the_per_sample_arrays(pairs):
    dup = np.arange(N) % 50
    planning = make_planning(pairs, duplicate_ids=dup, method_params={"quantile": 0.95})
    subset = np.arange(0, N, 2)
    plan = planning.plan(pairs.queries[subset], pairs.targets[subset], seed=5, subset=subset)
    reference = hardbatch.plan(
        "gcbs",
        pairs.queries[subset],
        pairs.targets[subset],
        batch_size=B,
        seed=5,
        quantile=0.95,
        duplicate_ids=dup[subset],
    )
    np.testing.assert_array_equal(plan.batches, reference.batches)


def test_planning_seeds_counts_and_log(pairs):
    planning = make_planning(pairs, n_samples=205, drop_last=False)
    reference = np.random.SeedSequence([3, 2, 1]).generate_state(1)[0] >> 1
    assert planning.epoch_seed(2, 1) == reference and planning.epoch_seed(0) != reference
    assert planning.full_batch_count() == 11
    assert make_planning(pairs, n_samples=205, drop_last=True).full_batch_count() == 10
    watch = Stopwatch()
    with watch("plan"):
        plan = planning.plan(None, None, seed=1, method="random")
    planning.log(plan, epoch=2, step=0, policy="never", n=205, watch=watch)
    assert planning.plan_ is plan
    (entry,) = planning.history_
    assert entry["epoch"] == 2 and entry["seconds"]["total"] == entry["seconds"]["plan"]


def test_planning_initial_embeddings_prefers_given_ones(pairs):
    given = (pairs.queries, pairs.targets)
    planning = make_planning(pairs, embeddings=given, embed_fn=lambda i: pytest.fail("called"))
    assert planning.initial_embeddings() is given
    planning = make_planning(pairs, embed_fn=lambda i: (pairs.queries[i], pairs.targets[i]))
    q, _ = planning.initial_embeddings()
    np.testing.assert_array_equal(q, pairs.queries)


def test_shuffle_full_rows_keeps_the_short_row_last():
    batches = np.arange(12).reshape(4, 3)
    batches[-1, 1:] = hardbatch.PAD
    out = shuffle_full_rows(batches, np.random.default_rng(0))
    np.testing.assert_array_equal(out[-1], batches[-1])
    assert sorted(map(tuple, out[:-1])) == sorted(map(tuple, batches[:-1]))
