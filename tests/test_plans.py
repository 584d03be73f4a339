"""BatchPlan: invariants, epochs, and the .npz file format."""

from __future__ import annotations

import json

import numpy as np
import pytest

import hardbatch
from hardbatch import PAD, BatchPlan
from hardbatch.plans import FORMAT_VERSION


def make_plan(n: int = 10, batch_size: int = 4, drop_last: bool = False, **fields) -> BatchPlan:
    order = np.random.default_rng(0).permutation(n)
    full = n // batch_size * batch_size
    rows = [list(order[i : i + batch_size]) for i in range(0, full, batch_size)]
    if n % batch_size and not drop_last:
        rows.append(list(order[full:]) + [PAD] * (batch_size - n % batch_size))
    return BatchPlan(
        batches=np.array(rows),
        method="test",
        n_samples=n,
        batch_size=batch_size,
        seed=0,
        drop_last=drop_last,
        **fields,
    )


# --------------------------------------------------------------------------- access
def test_access():
    plan = make_plan(10, 4)
    assert plan.batches.dtype == np.int64
    assert plan.n_batches == len(plan) == 3
    batches = list(plan.iter_batches())
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))
    assert "n_batches=3" in repr(plan)


def test_for_epoch():
    plan = make_plan(10, 4)
    assert plan.epoch_rule == "fixed"
    assert plan.for_epoch(0) is plan.batches
    assert plan.for_epoch(3) is plan.batches  # the fixed rule keeps the batches
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        plan.for_epoch(-1)
    with pytest.raises(ValueError, match="epoch must be an integer"):
        plan.for_epoch(1.5)


def test_for_epoch_dispatches_on_the_stored_rule():
    """The rule is data of the plan: the method name plays no part."""
    from hardbatch.batching import regroup_clusters_epoch, reshuffle_epoch

    shuffled = make_plan(10, 4, epoch_rule="reshuffle")
    np.testing.assert_array_equal(
        shuffled.for_epoch(2), reshuffle_epoch(10, 4, seed=0, epoch=2, drop_last=False)
    )
    clusters = np.arange(10).reshape(5, 2)
    grouped = make_plan(10, 4, epoch_rule="regroup_clusters", clusters=clusters)
    np.testing.assert_array_equal(
        grouped.for_epoch(1), regroup_clusters_epoch(clusters, 4, seed=0, epoch=1)
    )
    with pytest.raises(ValueError, match="needs plan.clusters"):
        make_plan(10, 4, epoch_rule="regroup_clusters").for_epoch(1)


def test_unknown_epoch_rule_is_an_error():
    plan = make_plan(10, 4, epoch_rule="spiral")
    for epoch in (0, 1):
        with pytest.raises(ValueError, match="unknown epoch rule 'spiral'; known: fixed"):
            plan.for_epoch(epoch)


def test_register_epoch_rule(monkeypatch):
    from hardbatch import plans

    monkeypatch.setattr(plans, "_EPOCH_RULES", dict(plans._EPOCH_RULES))
    reverse = plans.register_epoch_rule("reverse-test", lambda plan, epoch: plan.batches[::-1])
    assert "reverse-test" in plans.epoch_rules()
    plan = make_plan(12, 4, epoch_rule="reverse-test")
    np.testing.assert_array_equal(plan.for_epoch(1), plan.batches[::-1])
    assert reverse(plan, 1) is not None
    with pytest.raises(ValueError, match="non-empty name"):
        plans.register_epoch_rule("", reverse)
    with pytest.raises(ValueError, match="must be callable"):
        plans.register_epoch_rule("x", "not a function")


# --------------------------------------------------------------------------- validate
@pytest.mark.parametrize(
    ("n", "batch_size", "drop_last"), [(10, 4, False), (10, 4, True), (8, 4, False)]
)
def test_valid_plans_pass(n, batch_size, drop_last):
    plan = make_plan(n, batch_size, drop_last)
    assert plan.validate() is plan


def test_validate_catches_duplicates():
    plan = make_plan(10, 4)
    plan.batches[1, 2] = plan.batches[0, 0]
    with pytest.raises(ValueError, match=f"sample {plan.batches[0, 0]} appears in more than one"):
        plan.validate()


@pytest.mark.parametrize("bad_id", [10, 11, -2])
def test_validate_catches_out_of_range_ids(bad_id):
    plan = make_plan(10, 4)
    plan.batches[0, 1] = bad_id
    with pytest.raises(ValueError, match=r"sample ids must be in \[0, 10\)"):
        plan.validate()


def test_validate_catches_misplaced_padding():
    plan = make_plan(10, 4)  # last row: [a, b, PAD, PAD]
    plan.batches[-1] = [plan.batches[-1, 0], PAD, plan.batches[-1, 1], PAD]
    with pytest.raises(ValueError, match="padding.*at its end"):
        plan.validate()
    plan = make_plan(10, 4)
    plan.batches[0, 3], plan.batches[-1, 3] = PAD, plan.batches[0, 3]
    with pytest.raises(ValueError, match="padding"):
        plan.validate()


def test_validate_catches_missing_samples_and_wrong_shape():
    plan = make_plan(10, 4)
    plan.batches[-1, 1] = PAD  # sample dropped without drop_last
    with pytest.raises(ValueError, match="plan covers 9 samples, expected 10"):
        plan.validate()
    # drop_last must drop exactly the N % batch_size leftovers.
    plan = make_plan(10, 4, drop_last=False)
    plan.drop_last = True
    with pytest.raises(ValueError, match="plan covers 10 samples, expected 8"):
        plan.validate()
    plan = make_plan(10, 4)
    plan.batch_size = 5
    with pytest.raises(ValueError, match=r"batches must have shape \(n_batches, 5\)"):
        plan.validate()


# --------------------------------------------------------------------------- files
def rich_plan() -> BatchPlan:
    plan = make_plan(11, 4, order=np.arange(11)[::-1].copy())
    plan.params = {"quantile": 0.99, "top_k": None, "metric": "cosine", "nested": {"a": [1, 2]}}
    plan.info = {"threshold": np.float32(0.5), "n_edges": np.int64(7), "seconds": {"total": 0.1}}
    plan.hard_negatives = (np.arange(11)[:, None] + [1, 2]) % 11  # never the sample itself
    return plan


@pytest.mark.parametrize("name", ["plan.npz", "plan", "plan.dat"])
def test_save_load_round_trip(tmp_path, name):
    plan = rich_plan()
    path = tmp_path / name
    returned = plan.save(str(path))
    # The path is used exactly as given: no suffix is appended.
    assert returned == path and path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    loaded = BatchPlan.load(path, n_samples=11)
    np.testing.assert_array_equal(loaded.batches, plan.batches)
    assert loaded.batches.dtype == np.int64
    np.testing.assert_array_equal(loaded.order, plan.order)
    np.testing.assert_array_equal(loaded.hard_negatives, plan.hard_negatives)
    assert loaded.clusters is None
    assert (loaded.method, loaded.n_samples, loaded.batch_size) == ("test", 11, 4)
    assert (loaded.seed, loaded.drop_last) == (0, False)
    assert loaded.params == plan.params
    assert loaded.info == {"threshold": 0.5, "n_edges": 7, "seconds": {"total": 0.1}}
    assert BatchPlan.load(path).n_samples == 11  # n_samples is optional


def test_save_load_round_trip_of_real_plans(tmp_path, small_pair):
    x, y = small_pair
    for plan in (
        hardbatch.plan("gcbs", x, y, batch_size=32, quantile=0.99, drop_last=True, seed=3),
        hardbatch.plan("random", n_samples=300, batch_size=7, seed=None),
    ):
        path = plan.save(tmp_path / f"{plan.method}.npz")
        loaded = BatchPlan.load(path, n_samples=300)
        np.testing.assert_array_equal(loaded.batches, plan.batches)
        assert loaded.params == plan.params and loaded.seed == plan.seed
        assert loaded.info == json.loads(json.dumps(plan.info))
        for epoch in (1, 2):
            np.testing.assert_array_equal(loaded.for_epoch(epoch), plan.for_epoch(epoch))


def test_epoch_rule_round_trips(tmp_path):
    plan = make_plan(10, 4, epoch_rule="reshuffle")
    loaded = BatchPlan.load(plan.save(tmp_path / "plan.npz"))
    assert loaded.epoch_rule == "reshuffle"
    np.testing.assert_array_equal(loaded.for_epoch(3), plan.for_epoch(3))


@pytest.mark.parametrize(
    ("method", "rule"),
    [("random", "reshuffle"), ("b3", "regroup_clusters"), ("gcbs", "fixed"), ("other", "fixed")],
)
def test_old_plan_file_without_epoch_rule(tmp_path, method, rule):
    """Files written before the rule was stored get the rule of their method."""
    clusters = np.arange(12).reshape(6, 2)
    plan = make_plan(12, 4, clusters=clusters)
    plan.method, plan.epoch_rule = method, rule
    path = plan.save(tmp_path / "plan.npz")
    with np.load(path) as f:
        contents = {name: f[name] for name in f.files}
    meta = json.loads(str(contents["meta"]))
    del meta["epoch_rule"]
    contents["meta"] = np.array(json.dumps(meta))
    np.savez(path, **contents)
    loaded = BatchPlan.load(path)
    assert loaded.epoch_rule == rule
    np.testing.assert_array_equal(loaded.for_epoch(2), plan.for_epoch(2))


def test_load_plan_for_another_n(tmp_path):
    path = make_plan(10, 4).save(tmp_path / "plan.npz")
    with pytest.raises(ValueError, match="planned for N=10 samples, but the dataset has N=12"):
        BatchPlan.load(path, n_samples=12)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no plan file"):
        BatchPlan.load(tmp_path / "nothing.npz")


def test_load_not_an_npz(tmp_path):
    text = tmp_path / "plan.npz"
    text.write_text("batches,meta\n1,2\n")
    with pytest.raises(ValueError, match="not a hardbatch plan file"):
        BatchPlan.load(text)
    npy = tmp_path / "batches.npy"
    np.save(npy, np.arange(8).reshape(2, 4))
    with pytest.raises(ValueError, match="not a hardbatch plan file"):
        BatchPlan.load(npy)


def test_load_npz_without_batches_or_meta(tmp_path):
    only_batches = tmp_path / "a.npz"
    np.savez(only_batches, batches=np.arange(8).reshape(2, 4))
    with pytest.raises(ValueError, match="lacks 'batches' or 'meta'"):
        BatchPlan.load(only_batches)
    other = tmp_path / "b.npz"
    np.savez(other, embeddings=np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"lacks 'batches' or 'meta'.*embeddings"):
        BatchPlan.load(other)


def rewrite_meta(path, **changes) -> None:
    with np.load(path) as f:
        contents = {name: f[name] for name in f.files}
    meta = json.loads(str(contents["meta"]))
    meta.update(changes)
    contents["meta"] = np.array(json.dumps(meta))
    np.savez(path, **contents)


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 0, None, "1"])
def test_load_unsupported_format_version(tmp_path, version):
    path = make_plan().save(tmp_path / "plan.npz")
    rewrite_meta(path, format_version=version)
    with pytest.raises(ValueError, match="format version .* is not supported"):
        BatchPlan.load(path)


def test_load_bad_meta_json(tmp_path):
    path = tmp_path / "plan.npz"
    np.savez(path, batches=np.arange(8).reshape(2, 4), meta=np.array("{not json"))
    with pytest.raises(ValueError, match="not valid JSON"):
        BatchPlan.load(path)


def test_load_validates_the_batches(tmp_path):
    plan = make_plan(10, 4)
    plan.batches[0, 0] = plan.batches[1, 0]
    path = plan.save(tmp_path / "broken.npz")
    with pytest.raises(ValueError, match="appears in more than one batch"):
        BatchPlan.load(path)


def test_load_rejects_single_npy_array(tmp_path):
    path = tmp_path / "not_a_plan.npy"
    np.save(path, np.arange(6))
    with pytest.raises(ValueError, match="single .npy array"):
        BatchPlan.load(path)
