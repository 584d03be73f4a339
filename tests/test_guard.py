"""The duplicate guard shared by every method: equal ids never share a batch."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from reference import guard_feasible

import hardbatch
from hardbatch import BatchPlan
from hardbatch.batching import PAD, cut_order, sample_codes, separate_duplicates
from hardbatch.guard import layout_problem, row_sizes


def collisions(batches: np.ndarray, codes: np.ndarray) -> int:
    """Samples that repeat a code already in their batch (plain loop)."""
    total = 0
    for row in batches:
        seen = set()
        for i in row.tolist():
            if i == PAD:
                continue
            total += codes[i] in seen
            seen.add(codes[i])
    return total


def random_batches(n: int, b: int, seed: int, drop_last: bool = False) -> np.ndarray:
    return cut_order(np.random.default_rng(seed).permutation(n), b, drop_last=drop_last)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("drop_last", [False, True])
def test_guard_separates_duplicates_with_few_swaps(seed, drop_last):
    n, b = 203, 16
    codes = np.random.default_rng(seed + 10).integers(0, 60, size=n)  # ~3.4 copies per id
    batches = random_batches(n, b, seed, drop_last)
    before = collisions(batches, codes)
    assert before > 0
    fixed, swaps = separate_duplicates(batches, codes, rng=np.random.default_rng(seed))
    assert collisions(fixed, codes) == 0
    assert 0 < swaps <= before
    # Same samples, same shape and padding; only swapped positions changed.
    np.testing.assert_array_equal(np.sort(fixed, axis=None), np.sort(batches, axis=None))
    np.testing.assert_array_equal(fixed == PAD, batches == PAD)
    assert (fixed != batches).sum() <= 2 * swaps


def test_guard_is_a_no_op_without_duplicates():
    batches = random_batches(100, 10, 0)
    fixed, swaps = separate_duplicates(batches, np.arange(100), rng=np.random.default_rng(0))
    assert swaps == 0 and fixed is batches


def test_guard_raises_when_an_id_outnumbers_the_batches():
    batches = random_batches(40, 10, 0)  # 4 batches
    codes = np.arange(40)
    codes[:5] = 100  # five samples with one id, only four batches
    with pytest.raises(ValueError, match="occurs 5 times but there are only 4 batches"):
        separate_duplicates(batches, codes, rng=np.random.default_rng(0))


def test_guard_keeps_swaps_inside_groups():
    n = 120
    groups = np.repeat([0, 1], 60)
    # Batches of 10, each inside one group.
    batches = np.concatenate([random_batches(60, 10, 1), random_batches(60, 10, 2) + 60])
    codes = np.random.default_rng(3).integers(0, 40, size=n)
    codes[60:] += 100  # ids never shared across groups
    assert collisions(batches, codes) > 0
    fixed, _ = separate_duplicates(
        batches, codes, rng=np.random.default_rng(0), sample_groups=groups
    )
    assert collisions(fixed, codes) == 0
    for row in fixed:
        assert len(set(groups[row].tolist())) == 1


def test_sample_codes_accepts_any_hashable_ids():
    np.testing.assert_array_equal(sample_codes(["b", "a", "b"], 3), [0, 1, 0])
    np.testing.assert_array_equal(sample_codes(np.array(["b", "a", "b"]), 3), [1, 0, 1])
    np.testing.assert_array_equal(sample_codes([(1, 2), (3,), (1, 2)], 3), [0, 1, 0])
    np.testing.assert_array_equal(sample_codes(np.array([5, 5, 9]), 3), [0, 0, 1])
    np.testing.assert_array_equal(sample_codes([b"x", 3, "x"], 3), [0, 1, 2])
    with pytest.raises(ValueError, match="has 2 entries, expected one per sample"):
        sample_codes([1, 2], 3)
    with pytest.raises(ValueError, match="hashable"):
        sample_codes([[1], [2], [3]], 3, name="duplicate_ids")


# --------------------------------------------------------------------------- every method
def assert_guarded(plan: BatchPlan, ids: np.ndarray, epochs=range(4)) -> None:
    codes = sample_codes(ids, len(ids))
    for epoch in epochs:
        batches = plan.for_epoch(epoch)
        assert collisions(batches, codes) == 0, f"epoch {epoch}"
        BatchPlan(
            batches,
            plan.method,
            plan.n_samples,
            plan.batch_size,
            drop_last=plan.drop_last,
            epoch_rule="fixed",  # one epoch's batches, without the plan's clusters
        ).validate()


def test_random_method_is_guarded_in_every_epoch(tmp_path):
    ids = np.arange(300) // 3  # triples of duplicates
    plan = hardbatch.plan("random", n_samples=300, batch_size=20, seed=4, duplicate_ids=ids)
    assert plan.info["duplicate_guard"]["swaps"] > 0
    assert plan.info["duplicate_guard"]["distinct_ids"] == 100
    assert_guarded(plan, ids)
    loaded = BatchPlan.load(plan.save(tmp_path / "plan.npz"))
    np.testing.assert_array_equal(loaded.duplicate_ids, plan.duplicate_ids)
    for epoch in range(3):
        np.testing.assert_array_equal(loaded.for_epoch(epoch), plan.for_epoch(epoch))


def test_guard_without_duplicates_changes_nothing(planted_small):
    kwargs = dict(batch_size=32, seed=0, cluster_size=16, p=0, m=15)
    plain = hardbatch.plan("b3", planted_small.queries, planted_small.targets, **kwargs)
    guarded = hardbatch.plan(
        "b3",
        planted_small.queries,
        planted_small.targets,
        duplicate_ids=[f"text {i}" for i in range(400)],
        **kwargs,
    )
    assert guarded.info["duplicate_guard"]["swaps"] == 0
    for epoch in range(3):
        np.testing.assert_array_equal(guarded.for_epoch(epoch), plain.for_epoch(epoch))


@pytest.mark.parametrize("method", ["gcbs", "b3"])
def test_embedding_methods_are_guarded(planted_small, method):
    ids = np.arange(400) % 150  # most samples have a duplicate somewhere
    params = {"gcbs": {"top_k": 10}, "b3": {"cluster_size": 16, "p": 0, "m": 15}}[method]
    plan = hardbatch.plan(
        method,
        planted_small.queries,
        planted_small.targets,
        batch_size=32,
        seed=1,
        duplicate_ids=ids,
        **params,
    )
    assert_guarded(plan, ids)


def test_impossible_guard_raises_through_the_api():
    with pytest.raises(ValueError, match="batches to spread it over"):
        hardbatch.plan("random", n_samples=40, batch_size=10, duplicate_ids=[0] * 40)


# --------------------------------------------------------------------------- feasible layouts


@st.composite
def layouts(draw):
    """A random plan (N, batch size, drop_last, a shuffle) and random duplicate ids."""
    n = draw(st.integers(2, 60))
    b = draw(st.integers(2, n))
    drop_last = draw(st.booleans())
    n_ids = draw(st.integers(1, n))
    codes = np.asarray(draw(st.lists(st.integers(0, n_ids - 1), min_size=n, max_size=n)))
    seed = draw(st.integers(0, 2**16))
    return n, b, drop_last, codes, seed


@settings(max_examples=100, deadline=None)
@given(layouts())
def test_feasibility_condition_matches_a_max_flow(layout):
    n, b, drop_last, codes, seed = layout
    sizes = row_sizes(n, b, drop_last)
    dropped = n - int(sizes.sum())
    assert (layout_problem(np.bincount(codes), sizes, dropped) is None) == guard_feasible(
        codes, sizes, dropped
    )


@settings(max_examples=100, deadline=None)
@given(layouts())
def test_guard_succeeds_on_every_feasible_layout(layout):
    n, b, drop_last, codes, seed = layout
    batches = random_batches(n, b, seed, drop_last)
    sizes = row_sizes(n, b, drop_last)
    feasible = guard_feasible(codes, sizes, n - int(sizes.sum()))
    if not feasible:
        with pytest.raises(ValueError, match="duplicate_ids"):
            separate_duplicates(batches, codes, rng=np.random.default_rng(seed))
        return
    fixed, _ = separate_duplicates(batches, codes, rng=np.random.default_rng(seed))
    assert collisions(fixed, codes) == 0
    np.testing.assert_array_equal(fixed == PAD, batches == PAD)  # same batch sizes
    placed = fixed[fixed != PAD]
    assert len(np.unique(placed)) == placed.size  # every sample at most once
    if not drop_last:
        np.testing.assert_array_equal(np.sort(placed), np.arange(n))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**16), st.integers(2, 4), st.booleans())
def test_guard_builds_tight_layouts_inside_groups(seed, n_groups, drop_last):
    rng = np.random.default_rng(seed)
    b = 5
    sizes = rng.integers(b, 4 * b, size=n_groups)
    groups = np.repeat(np.arange(n_groups), sizes)
    # As few distinct ids per group as can fill its batches: nearly every id in every batch.
    codes = np.concatenate(
        [
            1000 * g + np.arange(s) % max(b, -(-s // len(row_sizes(s, b, False))))
            for g, s in enumerate(sizes.tolist())
        ]
    )
    assume(
        all(
            guard_feasible(codes[groups == g], row_sizes(s, b, drop_last), s % b * drop_last)
            for g, s in enumerate(sizes.tolist())
        )
    )
    start = np.concatenate([[0], sizes.cumsum()[:-1]])
    rows = [random_batches(s, b, seed + g, drop_last) for g, s in enumerate(sizes.tolist())]
    batches = np.concatenate(
        [r + np.where(r == PAD, 0, o) for r, o in zip(rows, start, strict=True)]
    )
    fixed, _ = separate_duplicates(
        batches, codes, rng=np.random.default_rng(seed), sample_groups=groups
    )
    assert collisions(fixed, codes) == 0
    for row in fixed:
        assert len(set(groups[row[row != PAD]].tolist())) == 1


@pytest.mark.parametrize("method", ["random", "gcbs", "b3"])
def test_one_of_each_id_per_batch_is_found_for_every_seed(method):
    """N=100, batch_size=10, ids arange(100) % 10: the one valid layout type (each batch
    holds one of every id) is found for 10 seeds out of 10 (the swaps alone found it for 3)."""
    ids = np.arange(100) % 10
    params = {"random": {"n_samples": 100}, "gcbs": {"top_k": 5}, "b3": {"cluster_size": 5}}
    for seed in range(10):
        x = np.random.default_rng(seed).normal(size=(100, 8)).astype(np.float32)
        data = () if method == "random" else (x, x + 0.1)
        extra = {"p": 0, "m": 10} if method == "b3" else {}
        plan = hardbatch.plan(
            method, *data, batch_size=10, seed=seed, duplicate_ids=ids, **params[method], **extra
        )
        for epoch in range(3):
            batches = plan.for_epoch(epoch)
            assert all(sorted(ids[row].tolist()) == list(range(10)) for row in batches)


def test_short_last_batch_needs_distinct_ids():
    # Batches of 3 and 1 cannot hold A A B B although no id outnumbers the 2 batches.
    batches = np.array([[0, 1, 2], [3, PAD, PAD]])
    with pytest.raises(ValueError, match="too few distinct ids"):
        separate_duplicates(batches, np.array([0, 0, 1, 1]), rng=np.random.default_rng(0))


def test_drop_last_guard_may_exchange_dropped_samples():
    # 11 samples, batches of 5, one dropped; id 100 three times for two batches: the dropped
    # slot must take one copy.
    codes = np.arange(11)
    codes[[0, 1, 2]] = 100
    batches = np.array([[0, 1, 3, 4, 5], [2, 6, 8, 9, 10]])  # sample 7 dropped
    fixed, _ = separate_duplicates(batches, codes, rng=np.random.default_rng(0))
    assert collisions(fixed, codes) == 0
    assert 7 in fixed and len(set(fixed.ravel().tolist())) == 10
