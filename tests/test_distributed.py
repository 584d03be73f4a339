"""Sharded planning on a local Ray cluster (hardbatch.distributed)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss")
ray = pytest.importorskip("ray")

from hardbatch.distributed import border_edge_fraction, coarse_shards, plan_on_ray  # noqa: E402
from hardbatch.synthetic import make_planted_pairs  # noqa: E402

N = 2000


@pytest.fixture(scope="module")
def planted():
    return make_planted_pairs(N, 32, group_size=16, seed=5)


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def counts(batches: np.ndarray) -> np.ndarray:
    ids = batches[batches >= 0]
    return np.bincount(ids, minlength=N)


def test_coarse_shards_capacity_and_minimum(planted):
    shard_of = coarse_shards(planted.targets, 4, 600, min_size=64, seed=0)
    sizes = np.bincount(shard_of)
    assert sizes.sum() == N and sizes.max() <= 600 and sizes.min() >= 64
    np.testing.assert_array_equal(
        shard_of, coarse_shards(planted.targets, 4, 600, min_size=64, seed=0)
    )
    # Tight capacity (no slack) still places everyone within capacity.
    tight = np.bincount(coarse_shards(planted.targets, 4, 500, seed=1))
    assert tight.sum() == N and tight.max() <= 500


def test_border_edge_fraction_matches_brute_force(planted):
    q, t = planted.queries, planted.targets
    shard_of = np.arange(N) % 3
    got = border_edge_fraction(q, t, shard_of, k=5, n_rows=N)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    sim = qn @ tn.T
    np.fill_diagonal(sim, -np.inf)
    top = np.argsort(-sim, axis=1)[:, :5]
    assert got == pytest.approx(np.mean(shard_of[top] != shard_of[:, None]))
    assert border_edge_fraction(q, t, np.zeros(N, dtype=int), k=5) == 0.0


@pytest.mark.parametrize("drop_last", [False, True])
def test_gcbs_merged_plan(planted, local_ray, drop_last):
    kwargs = dict(queries=planted.queries, targets=planted.targets, batch_size=60,
                  shard_size=800, seed=0, drop_last=drop_last, top_k=8)  # fmt: skip
    plan = plan_on_ray("gcbs", **kwargs)
    assert plan.method == "gcbs" and plan.params["top_k"] == 8
    c = counts(plan.batches)
    assert c.max() == 1 and c.sum() == (N - N % 60 if drop_last else N)
    sharded = plan.info["sharded"]
    assert sharded["n_shards"] == 3 and max(sharded["shard_sizes"]) <= 800
    assert 0.0 <= sharded["border_edge_fraction"] < 0.5
    if drop_last:  # the same order, other samples left out (the leftover rotation)
        left = plan.rotating_leftovers(3)
        assert len(left) == N % 60 and not np.array_equal(left, plan.leftovers())
        kept = plan.order[~np.isin(plan.order, left)]
        np.testing.assert_array_equal(plan.for_epoch(3).ravel(), kept)
    else:
        np.testing.assert_array_equal(plan.for_epoch(3), plan.batches)
    np.testing.assert_array_equal(plan_on_ray("gcbs", **kwargs).batches, plan.batches)
    # Batches are cut from the recorded order.
    np.testing.assert_array_equal(plan.batches[plan.batches >= 0], plan.order[: c.sum()])


def test_b3_merged_plan(planted, local_ray):
    kwargs = dict(queries=planted.queries, targets=planted.targets, batch_size=64,
                  shard_size=800, seed=0, cluster_size=16, p=0, m=16)  # fmt: skip
    plan = plan_on_ray("b3", **kwargs)
    assert plan.method == "b3"
    members = plan.clusters[plan.clusters >= 0]
    np.testing.assert_array_equal(np.sort(members), np.arange(N))
    assert (plan.clusters[:-1] >= 0).all()  # only the last cluster is short
    for epoch in (0, 1, 2):
        assert (counts(plan.for_epoch(epoch)) == 1).all()
    assert not np.array_equal(plan.for_epoch(1), plan.for_epoch(0))
    again = plan_on_ray("b3", **kwargs)
    np.testing.assert_array_equal(again.clusters, plan.clusters)
    np.testing.assert_array_equal(again.batches, plan.batches)


def test_bad_input(planted, local_ray):
    q, t = planted.queries, planted.targets
    with pytest.raises(ValueError, match="shard_size=32 must be at least batch_size=64"):
        plan_on_ray("gcbs", queries=q, targets=t, batch_size=64, shard_size=32)
    with pytest.raises(ValueError, match="unknown method"):
        plan_on_ray("nope", queries=q, targets=t, batch_size=64, shard_size=800)
    with pytest.raises(ValueError, match="reads no embeddings"):
        plan_on_ray("random", queries=q, targets=t, batch_size=64, shard_size=800)
    with pytest.raises(ValueError, match="backend must be one of"):
        plan_on_ray("gcbs", queries=q, targets=t, batch_size=64, shard_size=800, backend="x")
    with pytest.raises(ValueError, match="queries and targets"):
        plan_on_ray("gcbs", queries=q, targets=t[:-1], batch_size=64, shard_size=800)


def test_cli_ray_address(planted, local_ray, tmp_path):
    from hardbatch.cli import main
    from hardbatch.plans import BatchPlan

    np.save(tmp_path / "q.npy", planted.queries)
    np.save(tmp_path / "t.npy", planted.targets)
    out = tmp_path / "plan.npz"
    argv = ["plan", "--method", "gcbs", "--queries", str(tmp_path / "q.npy"), "--targets",
            str(tmp_path / "t.npy"), "--top-k", "8", "--batch-size", "60", "--ray-address",
            "local", "--shard-size", "800", "--output", str(out)]  # fmt: skip
    assert main(argv) == 0
    plan = BatchPlan.load(out, n_samples=N)
    assert plan.info["sharded"]["n_shards"] == 3
    assert (counts(plan.batches) == 1).all()


def test_gcbs_quantile_is_rescaled_per_shard():
    from hardbatch.methods import get_method

    gcbs = get_method("gcbs")(batch_size=64, quantile=0.999)
    params = gcbs.shard_params({"quantile": 0.999}, n_samples=20_001, shard_samples=5_001)
    # Same expected pairs per row: 0.001 · 20000 = 20 = (1 - q_s) · 5000.
    assert params["quantile"] == pytest.approx(1 - 20 / 5000)
    top_k = get_method("gcbs")(batch_size=64, top_k=5)
    assert top_k.shard_params({"top_k": 5}, n_samples=20_001, shard_samples=5_001) == {"top_k": 5}


def _no_ray(*args, **kwargs):
    raise AssertionError("a Ray task or cluster was started before the parameters were checked")


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"quantile": 1.0}, "quantile must be in the open interval"),
        ({"quantile": 1.5}, "quantile must be in the open interval"),
        ({"quantile": 0.0}, "quantile must be in the open interval"),
        ({"quantile": -1.0}, "quantile must be in the open interval"),
        ({"quantile": float("nan")}, "quantile must be in the open interval"),
        ({"top_k": 0}, "top_k must be an integer >= 1"),
        ({"top_k": 5, "quantile": 0.9}, "either top_k=5 or quantile=0.9"),
        ({"device": "bogus"}, "device='bogus'"),
        ({"top_k": 2000}, "top_k=2000 must be smaller than N=2000"),
    ],
)
def test_parameters_are_checked_before_any_task_starts(planted, monkeypatch, params, match):
    monkeypatch.setattr(ray, "remote", _no_ray)
    monkeypatch.setattr(ray, "init", _no_ray)
    with pytest.raises(ValueError, match=match):
        plan_on_ray(
            "gcbs", queries=planted.queries, targets=planted.targets, batch_size=64,
            shard_size=800, **params,
        )  # fmt: skip


def test_top_k_larger_than_a_shard_names_the_callers_inputs(planted, monkeypatch):
    monkeypatch.setattr(ray, "remote", _no_ray)
    monkeypatch.setattr(ray, "init", _no_ray)
    with pytest.raises(ValueError) as info:
        plan_on_ray(
            "gcbs", queries=planted.queries, targets=planted.targets, batch_size=64,
            shard_size=800, top_k=900,
        )  # fmt: skip
    text = str(info.value)
    assert "N=2000" in text and "top_k=900" in text and "shard_size=800" in text
