"""Diagnostics: losses against dense references, the gap, and the report table."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
import torch

import hardbatch
from hardbatch import PAD, BatchPlan, metrics

TAU = 0.05


def plans_for(x, y, batch_size: int = 32) -> dict[str, BatchPlan]:
    """A few plans of different kinds for the same data."""
    n = len(x)
    return {
        "random": hardbatch.plan("random", n_samples=n, batch_size=batch_size, seed=1),
        "random drop_last": hardbatch.plan(
            "random", n_samples=n, batch_size=batch_size, seed=2, drop_last=True
        ),
        "gcbs": hardbatch.plan("gcbs", x, y, batch_size=batch_size, quantile=0.99),
        "gcbs top_k": hardbatch.plan("gcbs", x, y, batch_size=batch_size, top_k=3),
        "one batch": hardbatch.plan("random", n_samples=n, batch_size=n, seed=0),
        "pairs": hardbatch.plan("random", n_samples=n, batch_size=2, seed=0),
    }


# --------------------------------------------------------------------------- global losses
@pytest.mark.parametrize("temperature", [0.05, 1.0])
@pytest.mark.parametrize("block_rows", [37, None])
def test_global_losses_equal_dense_logsumexp(planted_small, temperature, block_rows):
    x, y = planted_small.queries, planted_small.targets
    q2t, t2q = metrics.global_losses(x, y, temperature=temperature, block_rows=block_rows)
    ref_q2t, ref_t2q = ref.global_losses(x, y, temperature)
    assert q2t.shape == t2q.shape == (len(x),) and q2t.dtype == np.float64
    # float32 similarities / τ: errors of ~1e-7 / τ.
    np.testing.assert_allclose(q2t, ref_q2t, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(t2q, ref_t2q, rtol=1e-5, atol=1e-5)
    assert not np.allclose(q2t, t2q)  # the two directions are different sums


def test_global_losses_dot_metric_and_torch_input(make_pair):
    x, y = make_pair(120, 8, seed=3)
    x, y = x / 4, y / 4  # keep raw dot products / τ moderate
    ref_q2t, ref_t2q = ref.global_losses(x, y, 0.5, metric="dot")
    q2t, t2q = metrics.global_losses(
        torch.from_numpy(x), torch.from_numpy(y), temperature=0.5, metric="dot"
    )
    np.testing.assert_allclose(q2t, ref_q2t, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(t2q, ref_t2q, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- train losses
@pytest.mark.parametrize(
    "kind", ["random", "random drop_last", "gcbs", "gcbs top_k", "one batch", "pairs"]
)
def test_train_losses_equal_a_per_batch_loop(small_pair, kind):
    x, y = small_pair[0][:130], small_pair[1][:130]  # 130 % 32 != 0: a short last batch
    plan = plans_for(x, y)[kind]
    out = metrics.train_losses(x, y, plan, temperature=TAU)
    expected = ref.train_losses(x, y, plan.batches, TAU)
    covered = np.isin(np.arange(130), plan.batches[plan.batches != PAD])
    np.testing.assert_array_equal(out["covered"], covered)
    for key in ("q2t", "t2q", "neg_mean", "neg_min", "neg_max"):
        assert out[key].shape == (130,)
        assert np.isnan(out[key][~covered]).all(), key
        np.testing.assert_allclose(out[key], expected[key], rtol=1e-5, atol=2e-5, err_msg=key)


def test_train_losses_of_a_later_epoch(small_pair):
    x, y = small_pair
    plan = hardbatch.plan("random", n_samples=300, batch_size=16, seed=0)
    out = metrics.train_losses(x, y, plan, temperature=TAU, epoch=2)
    expected = ref.train_losses(x, y, plan.for_epoch(2), TAU)
    np.testing.assert_allclose(out["q2t"], expected["q2t"], rtol=1e-5, atol=2e-5)
    first = metrics.train_losses(x, y, plan, temperature=TAU)
    assert not np.allclose(out["q2t"], first["q2t"])


def test_train_losses_with_a_batch_of_one():
    """A last batch holding a single leftover sample: its loss is 0, it has no negatives."""
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    plan = BatchPlan(
        batches=np.array([[0, 1], [2, 3], [4, PAD]]), method="test", n_samples=5, batch_size=2
    )
    out = metrics.train_losses(x, x, plan)
    assert out["covered"].all()
    assert out["q2t"][4] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(out["neg_mean"][4])


# --------------------------------------------------------------------------- gap
def test_gap_is_never_negative(small_pair):
    """Each in-batch sum is part of the global sum: per sample L_global >= L_train."""
    x, y = small_pair
    g_q2t, g_t2q = metrics.global_losses(x, y, temperature=TAU)
    for kind, plan in plans_for(x, y).items():
        train = metrics.train_losses(x, y, plan, temperature=TAU)
        c = train["covered"]
        assert (g_q2t[c] - train["q2t"][c] >= -1e-6).all(), kind
        assert (g_t2q[c] - train["t2q"][c] >= -1e-6).all(), kind
        gap = metrics.loss_gap(x, y, plan, temperature=TAU)
        assert gap["gap"] >= -1e-9, kind
        assert gap["gap_q2t"] >= -1e-9 and gap["gap_t2q"] >= -1e-9, kind


def test_loss_gap_values(small_pair):
    x, y = small_pair
    plan = hardbatch.plan("random", n_samples=300, batch_size=20, seed=3, drop_last=False)
    gap = metrics.loss_gap(x, y, plan, temperature=TAU)
    g_q2t, g_t2q = ref.global_losses(x, y, TAU)
    train = ref.train_losses(x, y, plan.batches, TAU)
    expected = {
        "global_q2t": g_q2t.mean(),
        "global_t2q": g_t2q.mean(),
        "train_q2t": train["q2t"].mean(),
        "train_t2q": train["t2q"].mean(),
    }
    expected["global"] = (expected["global_q2t"] + expected["global_t2q"]) / 2
    expected["train"] = (expected["train_q2t"] + expected["train_t2q"]) / 2
    expected["gap"] = expected["global"] - expected["train"]
    expected["gap_q2t"] = expected["global_q2t"] - expected["train_q2t"]
    expected["gap_t2q"] = expected["global_t2q"] - expected["train_t2q"]
    assert set(gap) == set(expected)
    for key, value in expected.items():
        assert gap[key] == pytest.approx(value, rel=1e-5, abs=1e-5), key


def test_gap_compares_the_same_samples_under_drop_last(small_pair):
    """With drop_last the dropped samples are left out of both losses."""
    x, y = small_pair
    plan = hardbatch.plan("random", n_samples=300, batch_size=64, seed=0, drop_last=True)
    gap = metrics.loss_gap(x, y, plan, temperature=TAU)
    kept = np.sort(plan.batches.ravel())
    g_q2t, _ = ref.global_losses(x, y, TAU)
    assert gap["global_q2t"] == pytest.approx(g_q2t[kept].mean(), rel=1e-6)


def test_one_batch_of_everything_has_no_gap(small_pair):
    x, y = small_pair
    plan = hardbatch.plan("random", n_samples=300, batch_size=300, seed=0)
    gap = metrics.loss_gap(x, y, plan, temperature=TAU)
    assert abs(gap["gap"]) < 1e-5
    assert gap["global"] == pytest.approx(gap["train"], abs=1e-5)


# --------------------------------------------------------------------------- planted data
@pytest.fixture(scope="module")
def planted_plans(planted_large):
    x, y = planted_large.queries, planted_large.targets
    return {
        "gcbs": hardbatch.plan("gcbs", x, y, batch_size=64, seed=0, quantile=0.995),
        "random": hardbatch.plan("random", x, y, batch_size=64, seed=0),
    }


def test_gcbs_shrinks_the_gap_on_planted_data(planted_large, planted_plans):
    """Measured: GCBS gap 0.035, random 0.42 (ratio 0.08); asserted with a wide margin."""
    x, y = planted_large.queries, planted_large.targets
    gcbs = metrics.loss_gap(x, y, planted_plans["gcbs"])
    rand = metrics.loss_gap(x, y, planted_plans["random"])
    assert gcbs["global"] == pytest.approx(rand["global"])  # the same L_global
    assert 0 <= gcbs["gap"] < 0.5 * rand["gap"]
    assert gcbs["gap_q2t"] < 0.5 * rand["gap_q2t"] and gcbs["gap_t2q"] < 0.5 * rand["gap_t2q"]


def test_gcbs_batches_hold_harder_negatives(planted_large, planted_plans):
    x, y = planted_large.queries, planted_large.targets
    gcbs = metrics.negative_similarity(x, y, planted_plans["gcbs"])
    rand = metrics.negative_similarity(x, y, planted_plans["random"])
    assert set(gcbs) == {"mean", "hardest", "easiest"}
    assert gcbs["mean"] > rand["mean"] + 0.1  # measured 0.29 vs 0.01
    assert gcbs["hardest"] > rand["hardest"]
    assert gcbs["easiest"] <= gcbs["mean"] <= gcbs["hardest"]
    # GCBS puts planted groups together: most batch-mates share a group.
    groups = planted_large.groups
    same = [
        np.mean(groups[b][:, None] == groups[b][None, :]) for b in planted_plans["gcbs"].batches
    ]
    rand_same = [
        np.mean(groups[b][:, None] == groups[b][None, :]) for b in planted_plans["random"].batches
    ]
    assert np.mean(same) > 4 * np.mean(rand_same)


# --------------------------------------------------------------------------- report
@pytest.fixture(scope="module")
def small_report(planted_small):
    x, y = planted_small.queries, planted_small.targets
    plan = hardbatch.plan("gcbs", x, y, batch_size=32, quantile=0.99, seed=0)
    return plan, metrics.report(x, y, plan, temperature=TAU)


def test_report_rows(planted_small, small_report):
    x, y = planted_small.queries, planted_small.targets
    plan, rows = small_report
    assert set(rows) == {"plan", "baseline", "graph"}
    gap_keys = set(metrics.loss_gap(x, y, plan, temperature=TAU))
    row_keys = gap_keys | {
        "method",
        "neg_mean",
        "neg_hardest",
        "neg_easiest",
        "bandwidth",
        "mean_distance",
        "in_batch_edge_fraction",
    }
    assert set(rows["baseline"]) == row_keys
    assert set(rows["plan"]) == row_keys | {"gap_reduction"}
    assert rows["plan"]["method"] == "gcbs" and rows["baseline"]["method"] == "random"
    reduction = 1 - rows["plan"]["gap"] / rows["baseline"]["gap"]
    assert rows["plan"]["gap_reduction"] == pytest.approx(reduction)
    assert rows["plan"]["gap_reduction"] > 0.5
    # The default baseline is the random plan with the plan's batch size and seed.
    baseline = hardbatch.plan("random", n_samples=400, batch_size=32, seed=0)
    expected = metrics.loss_gap(x, y, baseline, temperature=TAU)
    assert rows["baseline"]["gap"] == pytest.approx(expected["gap"])
    # The graph row: the plan's quantile, its exact threshold and edge count.
    graph = rows["graph"]
    assert graph["quantile"] == 0.99 and graph["temperature"] == TAU
    assert graph["threshold"] == pytest.approx(plan.info["threshold"])
    assert graph["n_edges"] == plan.info["n_edges"]
    assert rows["plan"]["bandwidth"] == plan.info["bandwidth"]
    assert rows["plan"]["in_batch_edge_fraction"] == pytest.approx(
        plan.info["in_batch_edge_fraction"]
    )


def test_report_with_a_given_baseline(planted_small):
    x, y = planted_small.queries, planted_small.targets
    plan = hardbatch.plan("random", n_samples=400, batch_size=40, seed=1)
    baseline = hardbatch.plan("random", n_samples=400, batch_size=400, seed=1)
    rows = metrics.report(x, y, plan, baseline=baseline, quantile=0.95)
    assert abs(rows["baseline"]["gap"]) < 1e-5
    assert rows["graph"]["quantile"] == 0.95
    assert rows["baseline"]["in_batch_edge_fraction"] == 1.0  # one batch holds every edge


def test_format_report(small_report):
    _, rows = small_report
    table = metrics.format_report(rows)
    assert isinstance(table, str)
    lines = table.splitlines()
    assert "gcbs" in lines[0] and "random" in lines[0]
    assert any(line.startswith("gap L_global - L_train") for line in lines)
    assert f"{rows['plan']['gap_reduction']:.1%}" in table
    assert f"{rows['plan']['gap']:.4f}" in table and f"{rows['baseline']['gap']:.4f}" in table


def test_plan_order():
    plan = BatchPlan(batches=np.array([[3, 1], [0, 4]]), method="t", n_samples=6, batch_size=2)
    plan.drop_last = True
    np.testing.assert_array_equal(metrics.plan_order(plan), [3, 1, 0, 4, 2, 5])
    plan.order = np.array([5, 4, 3, 2, 1, 0])
    np.testing.assert_array_equal(metrics.plan_order(plan), plan.order)


# --------------------------------------------------------------------------- bad input
def test_metrics_reject_a_plan_for_another_n(small_pair):
    x, y = small_pair
    plan = hardbatch.plan("random", n_samples=200, batch_size=10)
    for call in (
        metrics.train_losses,
        metrics.loss_gap,
        metrics.negative_similarity,
        metrics.report,
    ):
        with pytest.raises(ValueError, match="plan was made for N=200, embeddings have N=300"):
            call(x, y, plan)
    good = hardbatch.plan("random", n_samples=300, batch_size=10)
    with pytest.raises(ValueError, match="plan was made for N=200"):
        metrics.report(x, y, good, baseline=plan)
    with pytest.raises(ValueError, match="plan must be a hardbatch.BatchPlan"):
        metrics.train_losses(x, y, good.batches)


@pytest.mark.parametrize("temperature", [0, -0.1, float("nan")])
def test_metrics_reject_bad_temperature(small_pair, temperature):
    x, y = small_pair
    plan = hardbatch.plan("random", n_samples=300, batch_size=10)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        metrics.global_losses(x, y, temperature=temperature)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        metrics.train_losses(x, y, plan, temperature=temperature)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        metrics.loss_gap(x, y, plan, temperature=temperature)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        metrics.report(x, y, plan, temperature=temperature)


def test_metrics_reject_bad_embeddings(small_pair):
    x, y = small_pair
    plan = hardbatch.plan("random", n_samples=300, batch_size=10)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="queries contains NaN"):
        metrics.loss_gap(bad, y, plan)
    with pytest.raises(ValueError, match="same number of rows"):
        metrics.global_losses(x, y[:-1])


# --------------------------------------------------------------------------- planted groups
def _reference_purity(plan, groups):
    """Per batch, count each label with a dict; the largest count over the batch's samples."""
    shares = []
    for ids in plan.iter_batches():
        counts = {}
        for i in ids:
            counts[groups[i]] = counts.get(groups[i], 0) + 1
        shares.append(max(counts.values()) / len(ids))
    return sum(shares) / len(shares)


def _reference_cohesion(plan, groups):
    """Per group, the most members any one batch holds, over the group's size."""
    batches = [set(ids.tolist()) for ids in plan.iter_batches()]
    shares = []
    for g in sorted(set(groups.tolist())):
        members = [i for i in range(len(groups)) if groups[i] == g]
        best = max(sum(i in batch for i in members) for batch in batches)
        shares.append(best / len(members))
    return sum(shares) / len(shares)


@pytest.mark.parametrize("drop_last", [False, True])
def test_purity_and_cohesion_match_references(drop_last):
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 7, size=103)
    plan = hardbatch.plan("random", n_samples=103, batch_size=10, seed=1, drop_last=drop_last)
    assert metrics.batch_purity(plan, groups) == pytest.approx(_reference_purity(plan, groups))
    assert metrics.group_cohesion(plan, groups) == pytest.approx(_reference_cohesion(plan, groups))


def test_purity_and_cohesion_take_any_labels():
    """Sparse integer labels and strings give what the dense labels 0..G-1 give."""
    rng = np.random.default_rng(1)
    dense = rng.integers(0, 5, size=60)
    plan = hardbatch.plan("random", n_samples=60, batch_size=8, seed=0)
    for labels in (dense * 10 + 3, np.array([f"g{g}" for g in dense])):
        assert metrics.batch_purity(plan, labels) == metrics.batch_purity(plan, dense)
        assert metrics.group_cohesion(plan, labels) == metrics.group_cohesion(plan, dense)
        assert metrics.group_cohesion(plan, labels) == pytest.approx(
            _reference_cohesion(plan, labels)
        )


def test_purity_and_cohesion_of_a_perfect_plan():
    """Batches that are exactly the groups: both measures are 1."""
    groups = np.random.default_rng(2).permutation(np.repeat(np.arange(6), 8))
    batches = np.argsort(groups, kind="stable").reshape(6, 8)  # batch b = the members of b
    plan = BatchPlan(batches=batches, method="test", n_samples=48, batch_size=8)
    assert metrics.batch_purity(plan, groups) == 1.0
    assert metrics.group_cohesion(plan, groups) == 1.0


def test_purity_and_cohesion_check_their_input():
    plan = hardbatch.plan("random", n_samples=20, batch_size=5, seed=0)
    for measure in (metrics.batch_purity, metrics.group_cohesion):
        with pytest.raises(ValueError, match="N=20"):
            measure(plan, np.zeros(19, dtype=int))
        with pytest.raises(ValueError, match="1-D"):
            measure(plan, np.zeros((20, 2), dtype=int))
        with pytest.raises(ValueError, match="BatchPlan"):
            measure(plan.batches, np.zeros(20, dtype=int))


def _reference_pair_purity(plan, groups):
    """Every unordered pair of every batch, compared one by one."""
    same = total = 0
    for ids in plan.iter_batches():
        ids = list(ids)
        for a in range(len(ids)):
            for b in range(a + 1, len(ids)):
                total += 1
                same += groups[ids[a]] == groups[ids[b]]
    return same / total


@pytest.mark.parametrize("drop_last", [False, True])
def test_pair_purity_matches_reference(drop_last):
    rng = np.random.default_rng(3)
    groups = rng.integers(0, 7, size=103)
    plan = hardbatch.plan("random", n_samples=103, batch_size=10, seed=2, drop_last=drop_last)
    assert metrics.pair_purity(plan, groups) == pytest.approx(_reference_pair_purity(plan, groups))


def test_pair_purity_bounds():
    groups = np.repeat(np.arange(4), 8)  # 4 groups of 8
    perfect = hardbatch.BatchPlan(
        batches=np.arange(32).reshape(2, 16), method="gcbs", n_samples=32, batch_size=16
    )
    # Two whole groups per batch: (8 - 1) / (16 - 1) of the pairs are same-group pairs.
    assert metrics.pair_purity(perfect, groups) == pytest.approx(7 / 15)
    with pytest.raises(ValueError):
        metrics.pair_purity(perfect, groups[:10])
