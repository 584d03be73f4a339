"""hardbatch.hardness: plan statistics, the near-random warning, the dial and its schedule."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import hardbatch
from hardbatch import PAD, BatchPlan, HardnessSchedule, NearRandomPlanWarning
from hardbatch.hardness import (
    AUTO_SUSPECT_FULL,
    SUSPECT_MARGIN,
    HardnessGraph,
    as_schedule,
    auto_dial,
    edge_share,
    hardness_from_text,
    negative_similarity,
    random_edge_share,
    reset_near_random_warnings,
    suspect_share,
)
from hardbatch.losses import false_negative_mask
from hardbatch.metrics import batch_purity
from hardbatch.synthetic import make_planted_pairs

METHODS = {
    "gcbs": {"top_k": 8},
    "b3": {"cluster_size": 16, "p": 0, "m": 20},
}


@pytest.fixture(autouse=True)
def fresh_warnings():
    reset_near_random_warnings()
    yield
    reset_near_random_warnings()


@pytest.fixture(scope="module")
def planted():
    return make_planted_pairs(1024, 32, group_size=32, seed=0)


def plan(method, data, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NearRandomPlanWarning)
        return hardbatch.plan(
            method, data.queries, data.targets, batch_size=64, seed=0, **METHODS[method], **kwargs
        )


# ----------------------------------------------------------------------------- schedule
def test_schedule_values_and_json_round_trip():
    ramp = HardnessSchedule.linear(start=0.5, end=1.0, epochs=5)
    assert [ramp.at(e) for e in range(7)] == [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.0]
    assert not ramp.is_constant and HardnessSchedule.constant(0.3).is_constant
    assert HardnessSchedule.constant(0.3).at(9) == 0.3
    for schedule in (ramp, HardnessSchedule.constant(0.25)):
        assert as_schedule(schedule.to_json()) == schedule
    assert as_schedule(0.5) == HardnessSchedule.constant(0.5)


def test_decay_ends_random_at_the_last_epoch_and_warns_past_it():
    decay = HardnessSchedule.decay(5)
    assert decay == HardnessSchedule.linear(1.0, 0.0, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning within the run's epochs
        assert [decay.at(e) for e in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
        assert HardnessSchedule.decay(3, start=0.5).at(1) == 0.25
        assert HardnessSchedule.linear(1.0, 0.5, 2).at(7) == 0.5  # ends above 0: no warning
    with pytest.warns(NearRandomPlanWarning, match="epoch 5 is past it"):
        assert decay.at(5) == 0.0
    for bad in (1, 0, 2.0, True, "5"):
        with pytest.raises(ValueError, match="n_epochs"):
            HardnessSchedule.decay(bad)
    with pytest.raises(ValueError, match="start"):
        HardnessSchedule.decay(4, start=1.5)


def test_decay_plan_is_the_method_first_and_random_fill_last(planted):
    """A whole-set plan (B3) with a decay: epoch 0 is the method's plan bit for bit, the
    last epoch keeps no hard member (its batches share the graph's edges at the random
    rate); an epoch past the schedule warns."""
    p = plan("b3", planted, hardness=HardnessSchedule.decay(3))
    np.testing.assert_array_equal(p.for_epoch(0), plan("b3", planted, hardness=1.0).batches)

    def purity(batches):  # share of in-batch pairs from the same planted group
        same = total = 0
        for row in batches:
            g = planted.groups[row[row != PAD]]
            same += int((g[:, None] == g[None, :]).sum()) - len(g)
            total += len(g) * (len(g) - 1)
        return same / total

    purities = [purity(p.for_epoch(e)) for e in range(3)]
    random_purity = purity(hardbatch.plan("random", n_samples=len(planted.groups), batch_size=64,
                                          seed=0).batches)  # fmt: skip
    assert purities[0] > purities[1] > purities[2]
    assert purities[2] < 2 * random_purity + 0.01
    with pytest.warns(NearRandomPlanWarning, match="epoch 3 is past it"):
        p.for_epoch(3)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5", None, True, [0.5]])
def test_invalid_hardness_is_a_value_error_naming_it(planted, bad):
    with pytest.raises(ValueError, match="hardness"):
        plan("gcbs", planted, hardness=bad)
    with pytest.raises(ValueError, match="hardness"):
        hardbatch.HardBatchSampler(
            n_samples=64, batch_size=8, method="b3", embeddings=(planted.queries[:64],) * 2,
            hardness=bad,
        )  # fmt: skip


@pytest.mark.parametrize(
    "make",
    [
        lambda: HardnessSchedule.linear(0.5, 1.5, 3),
        lambda: HardnessSchedule.linear(0.5, 1.0, 0),
        lambda: HardnessSchedule.linear(float("nan"), 1.0, 2),
        lambda: as_schedule({"schedule": "cosine", "start": 0.1}),
    ],
)
def test_invalid_schedules(make):
    with pytest.raises(ValueError, match="hardness|start|end|epochs"):
        make()


def test_random_takes_no_hardness():
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['hardness'\]"):
        hardbatch.plan("random", n_samples=10, batch_size=2, hardness=0.5)


# ----------------------------------------------------------------------------- statistics
def slow_stats(batches, rows, cols, queries, targets, n):
    """Loops over batches and pairs (the definitions of the module docstring)."""
    where = {int(i): b for b, row in enumerate(batches) for i in row if i != PAD}
    kept = sum(
        1 for i, j in zip(rows, cols, strict=True) if i in where and where.get(j) == where[i]
    )
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    t = targets / np.linalg.norm(targets, axis=1, keepdims=True)
    sims = q.astype(np.float64) @ t.T.astype(np.float64)
    inside = [
        sims[i, j] for row in batches for i in row for j in row if PAD not in (i, j) and i != j
    ]
    pairs_random = [sims[i, j] for i in range(n) for j in range(n) if i != j]
    same = sum(
        1 for i in range(n) for j in range(n) if i != j and i in where and where.get(j) == where[i]
    )
    return kept / len(rows), np.mean(inside), np.mean(pairs_random), same / (n * (n - 1))


@pytest.mark.parametrize("drop_last", [False, True])
def test_statistics_match_slow_loops(drop_last):
    rng = np.random.default_rng(1)
    n = 37
    queries, targets = rng.standard_normal((n, 5)), rng.standard_normal((n, 5))
    graph = sp.random(n, n, density=0.1, random_state=2, format="csr")
    g = HardnessGraph.from_csr(graph, 0, seed=0)
    assert (g.rows != g.cols).all() and g.n_edges == g.rows.size
    p = hardbatch.plan("random", n_samples=n, batch_size=8, seed=3, drop_last=drop_last)
    norms = (np.linalg.norm(queries, axis=1), np.linalg.norm(targets, axis=1))
    share, inside, random, random_share = slow_stats(p.batches, g.rows, g.cols, queries, targets, n)
    assert edge_share(p.batches, g, n) == pytest.approx(share)
    got_inside, got_random = negative_similarity(p.batches, queries, targets, norms)
    assert got_inside == pytest.approx(inside) and got_random == pytest.approx(random)
    assert random_edge_share(p.batches, n) == pytest.approx(random_share)


def test_edge_sample_above_the_limit_estimates_the_share():
    n = 2000
    graph = sp.random(n, n, density=0.01, random_state=0, format="csr")
    exact = HardnessGraph.from_csr(graph, 0, seed=0)
    sampled = HardnessGraph.from_csr(graph, 0, seed=0, limit=5000)
    assert sampled.sampled and not exact.sampled and sampled.rows.size <= 5000
    batches = hardbatch.plan("random", n_samples=n, batch_size=500, seed=0).batches
    assert edge_share(batches, sampled, n) == pytest.approx(edge_share(batches, exact, n), abs=0.03)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_plan_records_its_hardness(planted, method):
    info = plan(method, planted).info
    stats = info["hardness"]
    assert stats["dial"] == 1.0 and stats["near_random"] == []
    assert stats["edge_share"] > 5 * stats["edge_share_random"]
    assert stats["edge_share_random"] == pytest.approx(63 / 1023)
    assert stats["neg_similarity"] > stats["neg_similarity_random"] + 0.1
    assert stats["isolated_share"] == info["isolated"] / 1024
    assert "hardness" in info["seconds"]


# ----------------------------------------------------------------------------- warning
def test_near_random_plan_warns_once_naming_the_parameter():
    data = make_planted_pairs(500, 32, seed=0)
    with pytest.warns(
        NearRandomPlanWarning,
        match=r"quantile=0\.999, about 0\.499 pairs per row \(N=500\).*lower quantile \(e\.g\.",
    ):
        p = hardbatch.plan("gcbs", data.queries, data.targets, batch_size=32, quantile=0.999)
    assert "isolated" in p.info["hardness"]["near_random"]
    assert p.info["hardness"]["isolated_share"] > 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error", NearRandomPlanWarning)  # once per process: no repeat
        hardbatch.plan("gcbs", data.queries, data.targets, batch_size=32, quantile=0.999, seed=1)


def test_a_good_plan_does_not_warn():
    data = make_planted_pairs(500, 32, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NearRandomPlanWarning)
        p = hardbatch.plan("gcbs", data.queries, data.targets, batch_size=32, quantile=0.98)
        # The dial's randomness is asked for, not a symptom.
        hardbatch.plan("gcbs", data.queries, data.targets, batch_size=32, top_k=8, hardness=0.0)
    assert p.info["hardness"]["near_random"] == []


def test_sampler_refreshing_every_epoch_warns_once():
    data = make_planted_pairs(300, 16, seed=0)
    sampler = hardbatch.HardBatchSampler(
        n_samples=300, batch_size=30, method="gcbs", quantile=0.999, refresh="epoch",
        embed_fn=lambda idx: (data.queries[idx], data.targets[idx]),
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch in range(3):
            sampler.set_epoch(epoch)
            list(sampler)
    assert sum(issubclass(w.category, NearRandomPlanWarning) for w in caught) == 1


# ----------------------------------------------------------------------------- the dial
@pytest.mark.parametrize("method", sorted(METHODS))
def test_dial_zero_has_random_statistics(planted, method):
    p = plan(method, planted, hardness=0.0)
    stats = p.info["hardness"]
    assert stats["edge_share"] == pytest.approx(stats["edge_share_random"], abs=0.01)
    assert stats["neg_similarity"] == pytest.approx(stats["neg_similarity_random"], abs=0.01)
    randoms = [
        batch_purity(
            hardbatch.plan("random", n_samples=1024, batch_size=64, seed=s), planted.groups
        )
        for s in range(10)
    ]
    assert abs(batch_purity(p, planted.groups) - np.mean(randoms)) < 4 * np.std(randoms) + 0.005


@pytest.mark.parametrize("method", sorted(METHODS))
def test_dial_half_is_in_between(planted, method):
    hard = plan(method, planted).info["hardness"]
    half = plan(method, planted, hardness=0.5).info["hardness"]
    assert half["edge_share_undialled"] == hard["edge_share"]
    mid = (hard["edge_share"] + hard["edge_share_random"]) / 2
    assert half["edge_share"] == pytest.approx(mid, abs=0.1)
    assert hard["neg_similarity"] > half["neg_similarity"] > half["neg_similarity_random"] + 0.03


def test_dial_half_keeps_whole_b3_clusters(planted):
    p = plan("b3", planted, hardness=0.5)
    hard = plan("b3", planted).batches
    np.testing.assert_array_equal(p.batches[:, :32], hard[:, :32])  # 0.5·64 = 2 clusters of 16
    cluster_of = {int(i): c for c, row in enumerate(p.clusters) for i in row if i != PAD}
    for row in p.batches[:, :32]:
        assert len({cluster_of[int(i)] for i in row}) == 2


def covered(batches):
    ids = batches[batches != PAD]
    return np.sort(ids)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("guard", [False, True])
def test_each_sample_once_per_epoch_with_the_dial(method, drop_last, guard):
    data = make_planted_pairs(500, 16, group_size=16, seed=2)
    dup = np.arange(500) % 150 if guard else None
    schedule = HardnessSchedule.linear(0.0, 1.0, epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NearRandomPlanWarning)
        p = hardbatch.plan(
            method, data.queries, data.targets, batch_size=32, seed=0, drop_last=drop_last,
            duplicate_ids=dup, hardness=schedule, **METHODS[method],
        )  # fmt: skip
    for epoch in range(3):
        batches = p.for_epoch(epoch)
        BatchPlan(
            batches, method, 500, 32, seed=0, drop_last=drop_last, epoch_rule="fixed"
        ).validate()
        if guard:
            for row in batches:
                ids = dup[row[row != PAD]]
                assert len(set(ids.tolist())) == len(ids)
    assert p.params["hardness"] == schedule.to_json()


def test_dial_one_is_the_plan_bit_for_bit(planted):
    for method in METHODS:
        one = plan(method, planted, hardness=1.0)
        default = plan(method, planted)
        np.testing.assert_array_equal(one.batches, default.batches)
        for epoch in (1, 2):
            np.testing.assert_array_equal(one.for_epoch(epoch), default.for_epoch(epoch))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_schedule_survives_save_and_load(planted, method, tmp_path):
    schedule = HardnessSchedule.linear(0.2, 1.0, epochs=2)
    p = plan(method, planted, hardness=schedule)
    loaded = BatchPlan.load(p.save(tmp_path / "plan.npz"))
    assert loaded.params["hardness"] == schedule.to_json() and loaded.hardness == schedule
    hard = plan(method, planted)
    for epoch in range(4):
        np.testing.assert_array_equal(loaded.for_epoch(epoch), p.for_epoch(epoch))
    # From epoch 2 on the ramp is at 1: the method's own batches of that epoch.
    np.testing.assert_array_equal(p.for_epoch(3), hard.for_epoch(3))
    assert not np.array_equal(p.for_epoch(0), hard.for_epoch(0))


def test_fixed_plan_without_order_cannot_follow_a_schedule():
    p = BatchPlan(
        np.arange(8).reshape(2, 4), "custom", 8, 4, seed=0,
        params={"hardness": HardnessSchedule.linear(0.0, 1.0, 2).to_json()},
    )  # fmt: skip
    with pytest.raises(ValueError, match="plan.order"):
        p.for_epoch(1)


# ----------------------------------------------------------------------------- auto
def slow_suspect_share(queries, targets, rows, cols, margin=0.95):
    """Reference: loop over the sampled pairs with the rule written out."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    t = targets / np.linalg.norm(targets, axis=1, keepdims=True)
    suspect = pairs = 0
    for i in rows:
        positive = float(q[i] @ t[i])
        for j in cols:
            if i == j:
                continue
            pairs += 1
            suspect += positive > 0 and float(q[i] @ t[j]) > margin * positive
    return suspect / pairs, pairs


def near_duplicate_pairs(n_groups=40, per=8, d=24, noise=0.15, seed=0):
    """Targets of a group are near copies of each other: many random pairs are suspect."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_groups, d))
    groups = np.repeat(np.arange(n_groups), per)
    queries = centres[groups] + noise * rng.standard_normal((groups.size, d))
    targets = centres[groups] + noise * rng.standard_normal((groups.size, d))
    return queries.astype(np.float32), targets.astype(np.float32)


@pytest.mark.parametrize("rows, cols", [(2048, 4096), (50, 70)])
def test_suspect_share_matches_the_slow_loop(rows, cols):
    queries, targets = near_duplicate_pairs()
    norms = (np.linalg.norm(queries, axis=1), np.linalg.norm(targets, axis=1))
    share, pairs = suspect_share(queries, targets, norms, seed=3, rows=rows, cols=cols)
    rng = np.random.default_rng([3, 4])  # the function's documented stream
    n = len(queries)
    row_ids = np.sort(rng.choice(n, size=min(rows, n), replace=False))
    col_ids = np.sort(rng.choice(n, size=min(cols, n), replace=False))
    want, want_pairs = slow_suspect_share(queries, targets, row_ids, col_ids)
    assert pairs == want_pairs
    assert share == pytest.approx(want, abs=1e-12)
    assert 0.01 < share < 0.2  # group mates: 7 of 319 targets per row, most of them suspect


@pytest.mark.parametrize(
    "share, dial", [(0.0, 1.0), (0.02, 1.0), (0.04, 0.75), (0.06, 0.5), (0.3, 0.5)]
)
def test_auto_dial_interpolates_between_full_and_half(share, dial):
    assert auto_dial(share) == dial


@pytest.mark.parametrize("method", ["gcbs", "b3"])
def test_auto_keeps_planted_groups_at_full_hardness_bit_for_bit(planted, method):
    params = {"cluster_size": 16} if method == "b3" else {}
    auto = hardbatch.plan(method, planted.queries, planted.targets, batch_size=64, **params)
    one = hardbatch.plan(
        method, planted.queries, planted.targets, batch_size=64, hardness=1.0, **params
    )
    assert np.array_equal(auto.batches, one.batches)
    record = auto.info["hardness"]["auto"]
    assert record["hardness"] == 1.0 and record["suspect_share"] < AUTO_SUSPECT_FULL
    assert auto.params["hardness"] == 1.0 and auto.info["hardness"]["dial"] == 1.0


@pytest.mark.parametrize("method", ["gcbs", "b3"])
def test_auto_mixes_when_many_pairs_are_suspect(method):
    queries, targets = near_duplicate_pairs(n_groups=16, per=24)
    params = {"cluster_size": 8} if method == "b3" else {}
    auto = hardbatch.plan(method, queries, targets, batch_size=32, seed=5, **params)
    record = auto.info["hardness"]["auto"]
    dial = record["hardness"]
    assert record["suspect_share"] > AUTO_SUSPECT_FULL and dial < 1.0
    assert dial == auto_dial(record["suspect_share"]) == auto.params["hardness"]
    same = hardbatch.plan(method, queries, targets, batch_size=32, seed=5, hardness=dial, **params)
    assert np.array_equal(auto.batches, same.batches)  # "auto" is that dial, nothing else
    # The plan file keeps the resolved dial: later epochs follow it.
    assert np.array_equal(auto.for_epoch(1), same.for_epoch(1))


def test_auto_with_one_embedding_set_is_full_hardness():
    queries, _ = near_duplicate_pairs()
    plan = hardbatch.plan("gcbs", queries, queries, batch_size=32)
    assert plan.params["hardness"] == 1.0
    assert "note" in plan.info["hardness"]["auto"]


@pytest.mark.parametrize("bad", ["high", "", "AUTO "])
def test_hardness_text_other_than_auto_is_refused(planted, bad):
    with pytest.raises(ValueError, match="hardness must be 'auto'"):
        hardbatch.plan("gcbs", planted.queries, planted.targets, batch_size=64, hardness=bad)


def test_hardness_from_command_line_text():
    assert hardness_from_text("auto") == "auto" and hardness_from_text(" AUTO") == "auto"
    assert hardness_from_text("0.5") == 0.5
    assert hardness_from_text("decay:4") == HardnessSchedule.decay(4)
    for bad in ("decay:1", "decay:x", "decay"):
        with pytest.raises(ValueError, match="decay:E"):
            hardness_from_text(bad)
    with pytest.raises(ValueError, match="'auto', a number"):
        hardness_from_text("hard")
    assert SUSPECT_MARGIN == inspect.signature(false_negative_mask).parameters["margin"].default
