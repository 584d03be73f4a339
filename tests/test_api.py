"""``hardbatch.plan``, the method registry, and the random and GCBS methods.

GCBS is checked end to end against the dense reference: the dense float64 similarity matrix,
thresholded (or top-k), made symmetric, ordered by scipy's reverse Cuthill–McKee and cut into
chunks must give exactly the plan's order and batches.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import reference as ref
import torch

import hardbatch
from hardbatch import PAD, BatchPlan, Planner, available_methods, get_method, register_method
from hardbatch.methods import GCBS, RandomBatches
from hardbatch.methods import base as methods_base

MARGIN = ref.MARGIN


def make_any_plan(method, n, batch_size, drop_last, seed=0, make_pair=None, **params):
    if method == "random":
        return hardbatch.plan(
            "random", n_samples=n, batch_size=batch_size, seed=seed, drop_last=drop_last
        )
    x, y = make_pair(n, 16, seed=n)
    return hardbatch.plan(
        "gcbs",
        x,
        y,
        batch_size=batch_size,
        seed=seed,
        drop_last=drop_last,
        quantile=0.99,
        **params,
    )


def assert_epoch_invariants(batches: np.ndarray, n: int, batch_size: int, drop_last: bool):
    """Each sample exactly once (or all but the N % batch_size leftovers with drop_last)."""
    rest = n % batch_size
    assert batches.dtype == np.int64
    assert batches.shape == (n // batch_size + (rest > 0 and not drop_last), batch_size)
    ids = batches[batches != PAD]
    assert len(np.unique(ids)) == len(ids), "a sample appears twice"
    assert ids.min() >= 0 and ids.max() < n
    if drop_last:
        assert (batches != PAD).all()
        assert len(ids) == n - rest
    else:
        np.testing.assert_array_equal(np.sort(ids), np.arange(n))
    if rest and not drop_last:
        # Leftover rule: only the last row is short, padded at its end.
        assert (batches[:-1] != PAD).all()
        np.testing.assert_array_equal(batches[-1, rest:], PAD)
        assert (batches[-1, :rest] != PAD).all()
    else:
        assert (batches != PAD).all()


# --------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("method", ["random", "gcbs"])
@pytest.mark.parametrize(("n", "batch_size"), [(200, 2), (200, 16), (257, 16), (300, 64), (64, 64)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_each_sample_once_per_epoch(make_pair, method, n, batch_size, drop_last):
    plan = make_any_plan(method, n, batch_size, drop_last, make_pair=make_pair)
    assert (plan.method, plan.n_samples, plan.batch_size) == (method, n, batch_size)
    assert plan.drop_last is drop_last
    for epoch in range(4):
        assert_epoch_invariants(plan.for_epoch(epoch), n, batch_size, drop_last)
    # iter_batches yields the short last batch without its padding.
    sizes = [len(b) for b in plan.iter_batches()]
    expected = [batch_size] * (n // batch_size)
    if n % batch_size and not drop_last:
        expected.append(n % batch_size)
    assert sizes == expected
    got = np.concatenate(list(plan.iter_batches()))
    np.testing.assert_array_equal(got, plan.batches[plan.batches != PAD])


@pytest.mark.parametrize("method", ["random", "gcbs"])
def test_drop_last_drops_exactly_the_leftovers(make_pair, method):
    # The method's own order (hardness=1): the dial would pool the short batch's members too.
    params = {"hardness": 1.0} if method == "gcbs" else {}
    kept = make_any_plan(method, 203, 20, drop_last=False, make_pair=make_pair, **params)
    dropped = make_any_plan(method, 203, 20, drop_last=True, make_pair=make_pair, **params)
    missing = np.setdiff1d(np.arange(203), dropped.batches.ravel())
    assert len(missing) == 203 % 20
    # Same order either way: drop_last removes the last short batch and nothing else.
    np.testing.assert_array_equal(dropped.batches, kept.batches[:-1])
    np.testing.assert_array_equal(np.sort(missing), np.sort(kept.batches[-1, :3]))


# --------------------------------------------------------------------------- determinism
def test_random_plan_is_deterministic_for_a_seed():
    a = hardbatch.plan("random", n_samples=100, batch_size=10, seed=4)
    b = hardbatch.plan("random", n_samples=100, batch_size=10, seed=4)
    np.testing.assert_array_equal(a.batches, b.batches)
    for epoch in (1, 2, 3):
        np.testing.assert_array_equal(a.for_epoch(epoch), b.for_epoch(epoch))
    other = hardbatch.plan("random", n_samples=100, batch_size=10, seed=5)
    assert not np.array_equal(a.batches, other.batches)


def test_random_plan_reshuffles_every_epoch():
    plan = hardbatch.plan("random", n_samples=100, batch_size=10, seed=0)
    epochs = [plan.for_epoch(e) for e in range(4)]
    for e1, e2 in itertools.combinations(range(4), 2):
        assert not np.array_equal(epochs[e1], epochs[e2])
    np.testing.assert_array_equal(epochs[0], plan.batches)


def test_random_seed_none_is_recorded_and_reproducible():
    plan = hardbatch.plan("random", n_samples=50, batch_size=5, seed=None)
    assert isinstance(plan.seed, int) and plan.seed >= 0
    again = hardbatch.plan("random", n_samples=50, batch_size=5, seed=plan.seed)
    np.testing.assert_array_equal(plan.batches, again.batches)
    np.testing.assert_array_equal(plan.for_epoch(2), again.for_epoch(2))


def test_random_from_embeddings_or_n_samples(make_pair):
    x, y = make_pair(60, 4)
    from_n = hardbatch.plan("random", n_samples=60, batch_size=8, seed=1)
    for args in ((x, y), (x, None), (None, y)):
        plan = hardbatch.plan("random", *args, batch_size=8, seed=1)
        np.testing.assert_array_equal(plan.batches, from_n.batches)
    assert hardbatch.plan("random", x, y, n_samples=60, batch_size=8).n_samples == 60


def test_gcbs_plan_is_deterministic_for_a_seed(small_pair):
    x, y = small_pair
    # 10k sampled pairs (100 x 100) for N=300: the threshold depends on the seed.
    kwargs = {"batch_size": 32, "quantile": 0.99, "n_threshold_pairs": 10_000}
    a = hardbatch.plan("gcbs", x, y, seed=0, **kwargs)
    b = hardbatch.plan("gcbs", x, y, seed=0, **kwargs)
    np.testing.assert_array_equal(a.batches, b.batches)
    np.testing.assert_array_equal(a.order, b.order)
    assert a.info["threshold"] == b.info["threshold"]
    c = hardbatch.plan("gcbs", x, y, seed=1, **kwargs)
    assert c.info["threshold"] != a.info["threshold"]
    # GCBS plans once per epoch from the current embeddings: later epochs keep the batches.
    for epoch in (1, 2, 3):
        assert a.for_epoch(epoch) is a.batches


# --------------------------------------------------------------------------- GCBS vs reference
@pytest.fixture(params=["random", "planted"])
def pair(request, small_pair, planted_small):
    if request.param == "random":
        return small_pair
    return planted_small.queries, planted_small.targets


def assert_plan_matches_reference(plan, pattern, sim, batch_size, drop_last):
    order = ref.rcm_of_dense(pattern)
    np.testing.assert_array_equal(plan.order, order)
    expected = ref.padded(ref.batches_of(order, batch_size, drop_last), batch_size)
    np.testing.assert_array_equal(plan.batches, expected)
    n = len(sim)
    info = plan.info
    assert info["n_edges"] == pattern.sum()
    assert info["mean_degree"] == pytest.approx(pattern.sum() / n)
    assert info["isolated"] == np.sum(~(pattern.any(axis=0) | pattern.any(axis=1)))
    for key, value in ref.bandwidth_loop(pattern, order, batch_size).items():
        assert info[key] == pytest.approx(value), key


@pytest.mark.parametrize("quantile", [0.95, 0.99, 0.998])
@pytest.mark.parametrize(("batch_size", "drop_last"), [(32, False), (25, True), (64, False)])
def test_gcbs_quantile_equals_dense_reference(pair, quantile, batch_size, drop_last):
    x, y = pair
    sim = ref.dense_similarity(x, y)
    q, t = ref.separated_quantile(sim, quantile)
    plan = hardbatch.plan(
        "gcbs",
        x,
        y,
        batch_size=batch_size,
        quantile=q,
        drop_last=drop_last,
        block_rows=64,
        hardness=1.0,  # the method's own plan: what the reference builds
    )
    threshold = plan.info["threshold"]
    assert threshold == pytest.approx(t, abs=1e-6)  # exact quantile (N <= 1000)
    assert ref.threshold_margin(sim, threshold) > MARGIN
    assert_plan_matches_reference(
        plan, ref.threshold_pattern(sim, threshold), sim, batch_size, drop_last
    )


@pytest.mark.parametrize("top_k", [1, 4, 16])
def test_gcbs_top_k_equals_dense_reference(pair, top_k):
    x, y = pair
    sim = ref.dense_similarity(x, y)
    assert ref.knn_margin(sim, top_k) > MARGIN
    plan = hardbatch.plan("gcbs", x, y, batch_size=32, top_k=top_k, block_rows=100, hardness=1.0)
    assert plan.info["threshold"] is None
    assert plan.params["top_k"] == top_k
    assert_plan_matches_reference(plan, ref.knn_pattern(sim, top_k), sim, 32, False)


def test_gcbs_dot_metric_equals_dense_reference(make_pair):
    x, y = make_pair(240, 8, seed=9)
    sim = ref.dense_similarity(x, y, "dot")
    q, _ = ref.separated_quantile(sim, 0.98)
    plan = hardbatch.plan("gcbs", x, y, batch_size=16, quantile=q, metric="dot", hardness=1.0)
    assert ref.threshold_margin(sim, plan.info["threshold"]) > 1e-4
    pattern = ref.threshold_pattern(sim, plan.info["threshold"])
    assert_plan_matches_reference(plan, pattern, sim, 16, False)


def test_gcbs_does_not_depend_on_block_rows(planted_small):
    x, y = planted_small.queries, planted_small.targets
    sim = ref.dense_similarity(x, y)
    q, _ = ref.separated_quantile(sim, 0.99)
    plans = [
        hardbatch.plan("gcbs", x, y, batch_size=32, quantile=q, block_rows=rows)
        for rows in (13, 64, len(x), None)
    ]
    assert ref.threshold_margin(sim, plans[0].info["threshold"]) > MARGIN
    for plan in plans[1:]:
        np.testing.assert_array_equal(plan.order, plans[0].order)
        np.testing.assert_array_equal(plan.batches, plans[0].batches)


def test_gcbs_planner_attributes(small_pair):
    x, y = small_pair
    planner = GCBS(batch_size=30, quantile=0.99)
    assert planner.fit(x, y) is planner
    plan = planner.plan_
    assert isinstance(plan, BatchPlan)
    assert planner.threshold_ == plan.info["threshold"]
    np.testing.assert_array_equal(planner.order_, plan.order)
    assert planner.n_edges_ == plan.info["n_edges"] > 0
    assert set(plan.info["seconds"]) >= {"similarity", "ordering", "batching", "total"}
    # Parameters: common ones are plan fields, display-only ones are not recorded.
    assert plan.params["quantile"] == 0.99
    assert not {"batch_size", "seed", "drop_last", "progress"} & set(plan.params)
    assert planner.get_params()["batch_size"] == 30
    assert "GCBS(batch_size=30" in repr(planner)


def test_gcbs_on_planted_data_keeps_most_edges_inside_batches(planted_small):
    x, y = planted_small.queries, planted_small.targets
    gcbs = hardbatch.plan("gcbs", x, y, batch_size=32, quantile=0.99)
    assert gcbs.info["in_batch_edge_fraction"] > 0.7
    # A random order of the same graph keeps about batch_size / N of its edges.
    assert hardbatch.metrics.report(x, y, gcbs)["baseline"]["in_batch_edge_fraction"] < 0.2


# --------------------------------------------------------------------------- input types
def float16_representable_pair(n, d, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float16)
    y = (x + rng.standard_normal((n, d))).astype(np.float16)
    return x, y


@pytest.mark.parametrize(
    "params", [{"quantile": 0.99}, {"top_k": 3}, {"n_threshold_pairs": 10_000}]
)
def test_every_input_type_gives_the_same_plan(tmp_path, params):
    """Values representable in float16: every input type sees the same float32 numbers, so
    the plans must be identical (no tolerance needed)."""
    x16, y16 = float16_representable_pair(260, 16, seed=2)
    x32, y32 = x16.astype(np.float32), y16.astype(np.float32)
    np.save(tmp_path / "x.npy", x32)
    np.save(tmp_path / "y.npy", y16)
    variants = {
        "float16": (x16, y16),
        "float64": (x16.astype(np.float64), y16.astype(np.float64)),
        "memmap": (
            np.load(tmp_path / "x.npy", mmap_mode="r"),
            np.load(tmp_path / "y.npy", mmap_mode="r"),
        ),
        "torch float32": (torch.from_numpy(x32), torch.from_numpy(y32)),
        "torch float16/64": (torch.from_numpy(x16), torch.from_numpy(y16).double()),
        "mixed": (x16, torch.from_numpy(y32)),
    }
    expected = hardbatch.plan("gcbs", x32, y32, batch_size=32, **params)
    for name, (x, y) in variants.items():
        plan = hardbatch.plan("gcbs", x, y, batch_size=32, **params)
        np.testing.assert_array_equal(plan.batches, expected.batches, err_msg=name)
        np.testing.assert_array_equal(plan.order, expected.order, err_msg=name)
        assert plan.info["threshold"] == expected.info["threshold"], name


def test_float64_input_close_to_float32(small_pair):
    """Arbitrary float64 input is rounded to float32 for the matmul: same threshold up to
    float32 rounding, and the same plan when no similarity lies near the threshold."""
    x32, y32 = small_pair
    rng = np.random.default_rng(0)
    x64 = x32.astype(np.float64) + 1e-9 * rng.standard_normal(x32.shape)
    y64 = y32.astype(np.float64)
    sim = ref.dense_similarity(x64, y64)
    q, _ = ref.separated_quantile(sim, 0.99)
    a = hardbatch.plan("gcbs", x32, y32, batch_size=32, quantile=q)
    b = hardbatch.plan("gcbs", x64, y64, batch_size=32, quantile=q)
    assert b.info["threshold"] == pytest.approx(a.info["threshold"], abs=1e-6)
    assert ref.threshold_margin(sim, b.info["threshold"]) > MARGIN
    np.testing.assert_array_equal(a.batches, b.batches)


def test_inputs_are_not_modified(small_pair):
    x, y = small_pair
    x_before, y_before = x.copy(), y.copy()
    xt, yt = torch.from_numpy(x.copy()), torch.from_numpy(y.copy())
    for method, params in (("gcbs", {"quantile": 0.99}), ("gcbs", {"top_k": 3}), ("random", {})):
        hardbatch.plan(method, x, y, batch_size=32, **params)
        hardbatch.plan(method, xt, yt, batch_size=32, **params)
    hardbatch.metrics.report(x, y, hardbatch.plan("gcbs", x, y, batch_size=32))
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(y, y_before)
    assert torch.equal(xt, torch.from_numpy(x_before))
    assert torch.equal(yt, torch.from_numpy(y_before))


# --------------------------------------------------------------------------- bad input
def with_row(a: np.ndarray, row: int, value) -> np.ndarray:
    a = a.copy()
    a[row] = value
    return a


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda x, y: (with_row(x, 5, np.nan), y), r"queries contains NaN or inf"),
        (lambda x, y: (x, with_row(y, 7, np.inf)), r"targets contains NaN or inf.*row 7"),
        (lambda x, y: (with_row(x, 3, 0.0), y), r"queries has 1 all-zero row.*row 3"),
        (lambda x, y: (x[:, 0], y), r"queries must be 2-D"),
        (lambda x, y: (x, y[None]), r"targets must be 2-D"),
        (lambda x, y: (x[:0], y[:0]), r"empty"),
        (lambda x, y: ((x * 100).astype(np.int32), y), r"floating dtype.*int32"),
        (lambda x, y: (x, y[:-1]), r"same number of rows.*100 and 99"),
        (lambda x, y: (x, y[:, :-1]), r"same dimension"),
        (lambda x, y: (x[:10], y[:10]), r"N=10 samples is smaller than batch_size=16"),
        (lambda x, y: (list(x), y), r"queries must be"),
    ],
)
def test_bad_embeddings(make_pair, change, message):
    x, y = change(*make_pair(100, 8))
    with pytest.raises(ValueError, match=message):
        hardbatch.plan("gcbs", x, y, batch_size=16)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 1}, "batch_size must be at least 2"),
        ({"batch_size": 0}, "batch_size must be at least 2"),
        ({"batch_size": 16.0}, "batch_size must be an integer"),
        ({"batch_size": "16"}, "batch_size must be an integer"),
        ({"seed": -1}, "seed must be None or a non-negative integer"),
        ({"seed": 0.5}, "seed must be None or a non-negative integer"),
        ({"drop_last": "yes"}, "drop_last must be True or False"),
        ({"quantile": 1.0}, r"quantile must be in the open interval \(0"),
        ({"quantile": 0.0}, r"quantile must be in the open interval \(0"),
        ({"quantile": -0.5}, r"quantile must be in the open interval \(0"),
        ({"top_k": 100}, "k=100 must be smaller than N=100"),
        ({"top_k": 0}, "top_k must be an integer >= 1"),
        ({"metric": "l2"}, "metric must be one of"),
        ({"n_threshold_pairs": 5}, "n_threshold_pairs must be an integer >= 100"),
        ({"quantile": 0.01, "max_edges": 500}, "max_edges=500"),
        (
            {"quantile_": 0.9},
            r"unknown parameter\(s\) \['quantile_'\]; its parameters are: .*quantile",
        ),
    ],
)
def test_bad_gcbs_arguments(make_pair, kwargs, message):
    x, y = make_pair(100, 8)
    kwargs = {"batch_size": 16, **kwargs}
    with pytest.raises(ValueError, match=message):
        hardbatch.plan("gcbs", x, y, **kwargs)


def test_bad_random_arguments(make_pair):
    x, y = make_pair(100, 8)
    with pytest.raises(ValueError, match="give n_samples"):
        hardbatch.plan("random", batch_size=8)
    with pytest.raises(ValueError, match="n_samples must be an integer"):
        hardbatch.plan("random", n_samples=10.5, batch_size=8)
    with pytest.raises(ValueError, match="n_samples=90 does not match the 100 embedding rows"):
        hardbatch.plan("random", x, y, n_samples=90, batch_size=8)
    with pytest.raises(ValueError, match="same number of rows.*100 and 99"):
        hardbatch.plan("random", x, y[:-1], batch_size=8)
    with pytest.raises(ValueError, match="N=5 samples is smaller than batch_size=8"):
        hardbatch.plan("random", n_samples=5, batch_size=8)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['quantile'\]"):
        hardbatch.plan("random", n_samples=100, batch_size=8, quantile=0.9)


def test_gcbs_needs_embeddings(make_pair):
    x, _ = make_pair(100, 8)
    with pytest.raises(ValueError, match="'gcbs' needs queries and targets"):
        hardbatch.plan("gcbs", x, batch_size=8)
    with pytest.raises(ValueError, match="'gcbs' needs queries and targets"):
        hardbatch.plan("gcbs", n_samples=100, batch_size=8)


def test_planner_constructor_only_stores():
    planner = GCBS(batch_size=-3, quantile=7.0)  # validated at fit time, not here
    assert (planner.batch_size, planner.quantile) == (-3, 7.0)
    with pytest.raises(ValueError, match="batch_size must be at least 2"):
        planner.fit(np.ones((10, 2), np.float32), np.ones((10, 2), np.float32))


# --------------------------------------------------------------------------- registry
def test_registry():
    assert {"gcbs", "random"} <= set(available_methods())
    assert available_methods() == sorted(available_methods())
    assert get_method("gcbs") is GCBS and get_method("random") is RandomBatches
    with pytest.raises(ValueError, match=r"unknown method 'gcbz'; available: .*gcbs"):
        get_method("gcbz")
    with pytest.raises(ValueError, match="unknown method"):
        hardbatch.plan("gcbz", n_samples=10, batch_size=2)
    with pytest.raises(ValueError, match="unknown method"):
        get_method(["gcbs"])
    assert GCBS.param_names()[:3] == ["batch_size", "quantile", "top_k"]
    assert set(GCBS.param_help) <= set(GCBS.param_names())


def test_register_a_new_method(monkeypatch):
    """A method is a small Planner subclass composed from the shared stages."""
    from hardbatch.batching import cut_order

    monkeypatch.setattr(methods_base, "_REGISTRY", dict(methods_base._REGISTRY))

    @register_method
    class Reversed(Planner):
        name = "reversed-test"
        uses_embeddings = False

        def __init__(self, batch_size=64, *, offset=0, seed=0, drop_last=False):
            super().__init__(batch_size, seed=seed, drop_last=drop_last)
            self.offset = offset

        def _plan(self, queries, targets, *, n, batch_size, seed, norms, **data):
            order = np.roll(np.arange(n)[::-1], self.offset)
            batches = cut_order(order, batch_size, drop_last=bool(self.drop_last))
            return self._make_plan(batches, n=n, seed=seed, order=order)

    assert "reversed-test" in available_methods()
    plan = hardbatch.plan("reversed-test", n_samples=7, batch_size=3, offset=1)
    np.testing.assert_array_equal(plan.batches, [[0, 6, 5], [4, 3, 2], [1, PAD, PAD]])
    assert plan.params == {"offset": 1} and plan.method == "reversed-test"
    assert plan.for_epoch(2) is plan.batches  # the default epoch rule keeps the batches
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['shift'\].*offset"):
        hardbatch.plan("reversed-test", n_samples=7, batch_size=3, shift=1)

    class Nameless(Planner):
        pass

    with pytest.raises(ValueError, match="needs a non-empty `name`"):
        register_method(Nameless)


# --------------------------------------------------------------------------- the Planner contract
def test_builtin_methods_declare_their_epoch_rule():
    from hardbatch.methods import B3, GCBS, RandomBatches

    assert (RandomBatches.epoch_rule, GCBS.epoch_rule, B3.epoch_rule) == (
        "reshuffle",
        "fixed",
        "regroup_clusters",
    )
    assert hardbatch.plan("random", n_samples=20, batch_size=4).epoch_rule == "reshuffle"


def test_register_method_rejects_an_unknown_epoch_rule(monkeypatch):
    monkeypatch.setattr(methods_base, "_REGISTRY", dict(methods_base._REGISTRY))

    class Spiral(Planner):
        name = "spiral-test"
        epoch_rule = "spiral"

    with pytest.raises(ValueError, match="unknown epoch rule 'spiral'"):
        register_method(Spiral)
    assert "spiral-test" not in available_methods()


def test_base_plan_admits_fit_data():
    import inspect

    params = inspect.signature(Planner._plan).parameters
    assert params["fit_data"].kind is inspect.Parameter.VAR_KEYWORD


def test_gcbs_shard_params_keep_pairs_per_row():
    from hardbatch.methods import GCBS

    given = {"quantile": 0.99, "metric": "dot"}
    shard = GCBS(quantile=0.99).shard_params(given, n_samples=1001, shard_samples=251)
    # Same expected pairs per row: (1 - q)·(N - 1) = 10 of the shard's 250 other rows.
    assert shard == {"quantile": pytest.approx(1 - 10 / 250), "metric": "dot"}
    assert given == {"quantile": 0.99, "metric": "dot"}  # not modified
    top_k = {"top_k": 5}
    assert GCBS(top_k=5).shard_params(top_k, n_samples=1001, shard_samples=251) == top_k
    # Clipped to a valid quantile when a shard is too small to keep that many pairs.
    tiny = GCBS(quantile=0.5).shard_params({}, n_samples=1001, shard_samples=11)
    assert tiny["quantile"] == pytest.approx(1e-6)


def test_default_shard_hooks():
    from hardbatch.methods import RandomBatches

    planner = RandomBatches(batch_size=3, seed=4)
    assert planner.shard_params({"a": 1}, n_samples=10, shard_samples=5) == {"a": 1}
    shards = [hardbatch.plan("random", n_samples=n, batch_size=3, seed=4) for n in (4, 5)]
    members = [np.array([0, 2, 4, 6]), np.array([1, 3, 5, 7, 8])]
    merged = planner.merge_shards(shards, members, n=9, seed=4).validate()
    assert merged.method == "random" and merged.epoch_rule == "reshuffle"
    # Full shard batches first (global ids), then the pooled leftovers.
    full = [members[s][b] for s in (0, 1) for b in shards[s].batches if (b != PAD).all()]
    np.testing.assert_array_equal(merged.order[:6], np.concatenate(full))
    assert sorted(merged.order.tolist()) == list(range(9))


def test_gcbs_warns_when_no_pair_passes_the_rule():
    rows = np.ones((64, 8), dtype=np.float32)  # all identical: no pair above the threshold
    with pytest.warns(RuntimeWarning, match="GCBS kept no pair"):
        plan = hardbatch.plan("gcbs", rows, rows, batch_size=8, quantile=0.99)
    assert plan.info["n_edges"] == 0
