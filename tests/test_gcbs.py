"""GCBS's default selection rule (issue 11): hardness from N, not a constant quantile."""

from __future__ import annotations

import numpy as np
import pytest

import hardbatch
from hardbatch import metrics
from hardbatch.similarity import DEFAULT_NEIGHBOURS, default_quantile
from hardbatch.synthetic import make_planted_pairs


def test_default_quantile_keeps_sixteen_pairs_per_row():
    for n in (100, 1_000, 100_000, 10**7):
        assert (1 - default_quantile(n)) * (n - 1) == pytest.approx(DEFAULT_NEIGHBOURS)
    assert default_quantile(10) == 0.5  # tiny N: half of the others, never q <= 0


@pytest.mark.parametrize("n", [500, 1024, 4096])
def test_default_plan_is_hard_on_planted_groups(n):
    """No parameter given: batch purity (same-group share of in-batch pairs) >= 0.3 on planted
    groups of 32, batch 64 (max 31/63 = 0.49; random ~ 31/(N-1)). The old default,
    quantile=0.999, scored 0.11 at N = 500. benchmarks/gcbs_defaults.py covers up to 100k."""
    data = make_planted_pairs(n, 32, group_size=32, seed=1)
    plan = hardbatch.plan("gcbs", data.queries, data.targets, batch_size=64, seed=0)
    assert plan.params["quantile"] is None
    assert plan.info["quantile"] == pytest.approx(default_quantile(n))
    assert metrics.pair_purity(plan, data.groups) >= 0.3
    old = hardbatch.plan("gcbs", data.queries, data.targets, batch_size=64, seed=0, quantile=0.999)
    if n == 500:
        assert metrics.pair_purity(old, data.groups) < 0.2


def test_default_plan_on_blobs_of_unequal_size():
    """Data not made by the planted generator: Gaussian blobs of random sizes (8-64)."""
    rng = np.random.default_rng(5)
    sizes = rng.integers(8, 65, size=60)
    centres = rng.standard_normal((len(sizes), 48))
    groups = np.repeat(np.arange(len(sizes)), sizes)
    latent = centres[groups] + 0.35 * rng.standard_normal((len(groups), 48))
    queries = latent + 0.1 * rng.standard_normal(latent.shape)
    targets = latent + 0.1 * rng.standard_normal(latent.shape)
    plan = hardbatch.plan("gcbs", queries, targets, batch_size=64, seed=0)
    random_plan = hardbatch.plan("random", n_samples=len(groups), batch_size=64, seed=0)
    hard = metrics.pair_purity(plan, groups)
    assert hard >= 0.3
    assert hard > 10 * metrics.pair_purity(random_plan, groups)


def test_quantile_and_top_k_together_is_an_error():
    data = make_planted_pairs(200, 16, group_size=8, seed=0)
    with pytest.raises(ValueError, match="not both"):
        hardbatch.plan("gcbs", data.queries, data.targets, quantile=0.99, top_k=5)


def test_default_rule_on_a_ray_shard_keeps_its_rule():
    """The default keeps 16 pairs per row at any N, so a shard's parameters stay None."""
    from hardbatch.methods import GCBS

    params = GCBS(batch_size=64).shard_params(
        {"quantile": None}, n_samples=10_000, shard_samples=2_500
    )
    assert params["quantile"] is None
