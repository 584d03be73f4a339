"""The duplicate guard shared by every method: equal ids never share a batch."""

from __future__ import annotations

import numpy as np
import pytest

import hardbatch
from hardbatch import BatchPlan
from hardbatch.batching import PAD, cut_order, sample_codes, separate_duplicates


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
            batches, plan.method, plan.n_samples, plan.batch_size, drop_last=plan.drop_last
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
