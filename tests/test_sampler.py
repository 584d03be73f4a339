"""HardBatchSampler: exact length, each sample once per epoch, determinism, static and
refreshed plans, DDP shares, and a tiny model trained through a real DataLoader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import hardbatch
from hardbatch import HardBatchSampler
from hardbatch.batching import PAD
from hardbatch.synthetic import make_planted_pairs

N, D = 300, 16


@pytest.fixture(scope="module")
def pairs():
    return make_planted_pairs(N, D, group_size=10, seed=0)


def fixed_embed_fn(pairs, calls=None):
    def embed(idx):
        if calls is not None:
            calls.append(np.array(idx))
        return pairs.queries[idx], pairs.targets[idx]

    return embed


def served(sampler, epoch):
    sampler.set_epoch(epoch)
    return [list(b) for b in sampler]


def assert_once_per_epoch(batches, n, batch_size, drop_last):
    ids = np.concatenate([np.asarray(b) for b in batches])
    assert len(np.unique(ids)) == len(ids), "a sample appears twice in one epoch"
    expected = n - n % batch_size if drop_last else n
    assert len(ids) == expected
    assert all(len(b) == batch_size for b in batches[:-1])
    assert all(i >= 0 for i in ids), "padding reached the DataLoader"


def make_sampler(pairs, refresh, *, n=N, batch_size=32, drop_last=False, **kwargs):
    embed = fixed_embed_fn(pairs)
    if refresh == "never":
        kwargs.setdefault("embeddings", (pairs.queries[:n], pairs.targets[:n]))
    elif refresh in ("epoch", "steps"):
        kwargs["embed_fn"] = embed
    if refresh == "steps":
        kwargs.setdefault("refresh_every", 3)
    return HardBatchSampler(
        n_samples=n,
        batch_size=batch_size,
        method="gcbs",
        seed=0,
        drop_last=drop_last,
        refresh=refresh,
        **({"quantile": 0.95} if "top_k" not in kwargs else {}),  # one selection rule
        **kwargs,
    )


@pytest.mark.parametrize("refresh", ["never", "epoch", "recorded", "steps"])
@pytest.mark.parametrize("drop_last", [False, True])
def test_each_sample_once_and_exact_len(pairs, refresh, drop_last):
    sampler = make_sampler(pairs, refresh, drop_last=drop_last)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        expected_len = len(sampler)
        batches = [list(b) for b in sampler]
        assert len(batches) == expected_len == len(sampler)
        assert_once_per_epoch(batches, N, 32, drop_last)
        if refresh == "recorded":
            for b in batches:
                sampler.record(pairs.queries[b], pairs.targets[b])


def test_served_batches_are_the_plan_rows_without_padding(pairs):
    """Reference: a refreshed epoch serves exactly hardbatch.plan on the fresh embeddings."""
    sampler = make_sampler(pairs, "epoch")
    for epoch in range(2):
        batches = served(sampler, epoch)
        reference = hardbatch.plan(
            "gcbs",
            pairs.queries,
            pairs.targets,
            batch_size=32,
            seed=sampler.planning.epoch_seed(epoch),
            quantile=0.95,
        )
        assert batches == [list(row[row != PAD]) for row in reference.batches]


def test_static_plan_uses_for_epoch():
    plan = hardbatch.plan("random", n_samples=100, batch_size=16, seed=3)
    sampler = HardBatchSampler(plan=plan)
    assert sampler.batch_size == 16 and sampler.n_samples == 100 and sampler.refresh == "never"
    for epoch in range(3):
        rows = plan.for_epoch(epoch)
        assert served(sampler, epoch) == [list(r[r != PAD]) for r in rows]
    assert served(sampler, 1) != served(sampler, 2)


def test_random_method_needs_only_n_samples():
    sampler = HardBatchSampler(n_samples=50, batch_size=8, method="random", seed=1)
    assert len(sampler) == 7
    assert_once_per_epoch(served(sampler, 0), 50, 8, False)


def test_deterministic_per_seed_and_epoch(pairs):
    a = make_sampler(pairs, "epoch", shuffle_batches=True)
    b = make_sampler(pairs, "epoch", shuffle_batches=True)
    assert served(a, 0) == served(b, 0)
    assert served(a, 1) == served(b, 1)
    c = HardBatchSampler(n_samples=N, batch_size=32, method="random", seed=0)
    d = HardBatchSampler(n_samples=N, batch_size=32, method="random", seed=1)
    assert served(c, 0) != served(d, 0)
    assert served(c, 0) != served(c, 1)


def test_shuffle_batches_keeps_batches_and_short_last(pairs):
    plain = served(make_sampler(pairs, "epoch"), 0)
    shuffled = served(make_sampler(pairs, "epoch", shuffle_batches=True), 0)
    assert shuffled != plain
    assert sorted(map(tuple, shuffled)) == sorted(map(tuple, plain))
    assert shuffled[-1] == plain[-1]  # N % 32 = 12: the short batch stays last


def test_steps_refresh_replans_the_remaining_samples(pairs):
    calls = []
    sampler = HardBatchSampler(
        n_samples=N,
        batch_size=32,
        seed=0,
        embed_fn=fixed_embed_fn(pairs, calls),
        embed_batch_size=1000,
        refresh="steps",
        refresh_every=3,
        quantile=0.95,
    )
    batches = served(sampler, 0)
    assert len(batches) == len(sampler) == 10
    assert_once_per_epoch(batches, N, 32, False)
    # Re-plans after batches 3 and 6 embed only what is left; the 12 left after batch 9 are
    # fewer than a batch: served as the short last batch without a plan.
    assert [len(c) for c in calls] == [300, 204, 108]
    assert [h["step"] for h in sampler.history_] == [0, 3, 6]
    served_before = np.concatenate([np.asarray(b) for b in batches[:3]])
    assert not np.isin(calls[1], served_before).any()


def test_steps_refresh_with_drop_last(pairs):
    sampler = make_sampler(pairs, "steps", drop_last=True, refresh_every=4)
    batches = served(sampler, 0)
    assert len(batches) == len(sampler) == N // 32
    assert_once_per_epoch(batches, N, 32, True)


# ------------------------------------------------------------------------------- DDP shares
def test_rank_shares_partition_each_global_batch():
    plan = hardbatch.plan("random", n_samples=100, batch_size=32, seed=0)
    shares = [served(HardBatchSampler(plan=plan, num_replicas=4, rank=r), 0) for r in range(4)]
    assert len({len(s) for s in shares}) == 1
    for step, row in enumerate(plan.batches):
        glued = np.concatenate([shares[r][step] for r in range(4)])
        assert list(glued) == list(row[row != PAD])  # contiguous slices in rank order
    assert [len(shares[r][0]) for r in range(4)] == [8, 8, 8, 8]
    assert [len(shares[r][-1]) for r in range(4)] == [1, 1, 1, 1]  # 100 % 32 = 4 leftovers


def test_short_batch_smaller_than_world_repeats_a_sample():
    plan = hardbatch.plan("random", n_samples=65, batch_size=32, seed=0)
    last = [served(HardBatchSampler(plan=plan, num_replicas=4, rank=r), 0)[-1] for r in range(4)]
    assert all(len(b) == 1 for b in last)
    assert {b[0] for b in last} == {int(plan.batches[-1][0])}


def test_global_batch_must_divide_over_ranks():
    sampler = HardBatchSampler(n_samples=100, batch_size=30, method="random", num_replicas=4)
    with pytest.raises(ValueError, match="multiple of the 4 ranks"):
        next(iter(sampler))


def test_shard_false_yields_whole_batches():
    sampler = HardBatchSampler(
        n_samples=100, batch_size=32, method="random", num_replicas=4, rank=2, shard=False
    )
    assert [len(b) for b in served(sampler, 0)] == [32, 32, 32, 4]


# ------------------------------------------------------------------------------- training
class PairEncoder(nn.Module):
    """A tiny two-tower linear encoder of fixed random features."""

    def __init__(self, dim_in: int, dim_out: int = 8) -> None:
        super().__init__()
        self.query = nn.Linear(dim_in, dim_out)
        self.target = nn.Linear(dim_in, dim_out)

    def forward(self, xq, xt):
        return (
            nn.functional.normalize(self.query(xq), dim=-1),
            nn.functional.normalize(self.target(xt), dim=-1),
        )


def info_nce(q, t, temperature=0.1):
    logits = q @ t.T / temperature
    labels = torch.arange(len(q))
    return nn.functional.cross_entropy(logits, labels)


def test_training_in_a_dataloader_replans_after_refresh(pairs):
    torch.manual_seed(0)
    xq, xt = torch.tensor(pairs.queries), torch.tensor(pairs.targets)
    dataset = TensorDataset(torch.arange(N), xq, xt)
    model = PairEncoder(D)
    optim = torch.optim.SGD(model.parameters(), lr=0.5)

    def embed(idx):
        model.eval()
        q, t = model(xq[idx], xt[idx])
        model.train()
        return q, t

    sampler = HardBatchSampler(
        n_samples=N, batch_size=32, method="gcbs", seed=0, embed_fn=embed, quantile=0.95
    )
    assert sampler.refresh == "epoch"
    loader = DataLoader(dataset, batch_sampler=sampler)
    plans = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        seen = []
        for idx, bq, bt in loader:
            loss = info_nce(*model(bq, bt))
            optim.zero_grad()
            loss.backward()
            optim.step()
            seen.append(idx.numpy())
        assert_once_per_epoch(seen, N, 32, False)
        plans.append(sampler.plan_.batches.copy())
    assert len(sampler.history_) == 3
    assert not np.array_equal(plans[0], plans[1]), "the plan did not change after training"
    assert sampler.planning_seconds(2) > 0


def test_embed_fn_runs_without_grad(pairs):
    grad_flags = []

    def embed(idx):
        grad_flags.append(torch.is_grad_enabled())
        return pairs.queries[idx], pairs.targets[idx]

    sampler = HardBatchSampler(n_samples=N, batch_size=32, embed_fn=embed, quantile=0.95)
    served(sampler, 0)
    assert grad_flags and not any(grad_flags)


def test_iterating_an_epoch_twice_warns(pairs):
    sampler = make_sampler(pairs, "epoch")
    served(sampler, 0)
    with pytest.warns(RuntimeWarning, match="set_epoch"):
        list(sampler)


def test_method_params_pass_through(pairs):
    sampler = make_sampler(pairs, "epoch", top_k=3)
    served(sampler, 0)
    assert sampler.plan_.params["top_k"] == 3


def test_duplicate_ids_keep_copies_apart(pairs):
    dup = np.arange(N) % 150  # sample i and i + 150 are "the same text"
    sampler = make_sampler(pairs, "epoch", duplicate_ids=dup)
    for batch in served(sampler, 0):
        assert len(set(dup[batch])) == len(batch)


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "nope"}, "unknown method"),
        ({"embed_fn": lambda i: None, "quantile": 0.9, "foo": 1}, "unknown parameter"),
        ({"refresh": "epoch"}, "needs embed_fn"),
        ({"refresh": "sometimes"}, "refresh must be one of"),
        ({}, "give embed_fn"),
        ({"embed_fn": lambda i: None, "refresh_every": 5}, "only used with refresh='steps'"),
        ({"embed_fn": lambda i: None, "refresh": "steps"}, "refresh_every"),
        ({"batch_size": 500, "method": "random"}, "smaller than batch_size"),
        ({"method": "random", "refresh": "recorded"}, "reads no embeddings"),
        ({"method": "random", "duplicate_ids": [1, 2]}, "duplicate_ids must have N"),
        (
            {"method": "random", "refresh": "steps", "refresh_every": 2, "embed_fn": print},
            "own per-epoch rule",
        ),
    ],
)
def test_bad_input(kwargs, match):
    kwargs = {"n_samples": 100, "batch_size": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        HardBatchSampler(**kwargs)


def test_bad_input_with_plan(pairs):
    plan = hardbatch.plan("random", n_samples=100, batch_size=10)
    with pytest.raises(ValueError, match="does not match"):
        HardBatchSampler(n_samples=99, plan=plan)
    with pytest.raises(ValueError, match="static"):
        HardBatchSampler(plan=plan, refresh="epoch", embed_fn=lambda i: None)
    with pytest.raises(ValueError, match="batch_size=20 but the plan"):
        HardBatchSampler(plan=plan, batch_size=20)
    with pytest.raises(ValueError, match="epoch must be"):
        HardBatchSampler(plan=plan).set_epoch(-1)
    with pytest.raises(ValueError, match="does not match embeddings rows"):
        HardBatchSampler(n_samples=10, embeddings=(pairs.queries, pairs.targets))
    with pytest.raises(ValueError, match="targets have 100 rows, expected N=300"):
        HardBatchSampler(embeddings=(pairs.queries, pairs.targets[:100]))


LEN_CASES = [
    ("random", {}),
    ("gcbs", {"refresh": "epoch", "quantile": 0.95}),
    ("gcbs", {"refresh": "never", "quantile": 0.95}),
    ("gcbs", {"refresh": "recorded", "quantile": 0.95}),
    ("gcbs", {"refresh": "steps", "refresh_every": 3, "top_k": 5}),
    ("b3", {"cluster_size": 8, "p": 2, "m": 10}),
    ("b3", {"cluster_size": 8, "p": 2, "m": 10, "refresh": "epoch"}),
]
LEN_CASES = [(m, kw, False) for m, kw in LEN_CASES] + [
    (m, kw, True)
    for m, kw in LEN_CASES
    if m == "b3"  # groups: a B3 fit argument
]


@pytest.mark.parametrize("method, kwargs, grouped", LEN_CASES)
@pytest.mark.parametrize("drop_last", [False, True])
def test_len_before_planning_is_the_count_served(pairs, method, kwargs, drop_last, grouped):
    """len() is counted locally (no plan, hence no collective) and equals what is served."""
    n = 283  # N % 32 = 27 and N % 8 = 3: a short cluster and leftover clusters
    extra = {"groups": np.arange(n) % 3 < 1} if grouped else {}
    sampler = HardBatchSampler(
        n_samples=n,
        batch_size=32,
        method=method,
        seed=1,
        drop_last=drop_last,
        embed_fn=None if method == "random" else fixed_embed_fn(make_planted_pairs(n, D, seed=2)),
        **kwargs,
        **extra,
    )
    for epoch in range(3):
        sampler.set_epoch(epoch)
        counted = len(sampler)
        if epoch == 0:
            assert sampler.history_ == [] and sampler.plan_ is None  # nothing was planned
        batches = list(sampler)
        assert counted == len(batches) == len(sampler)
        if kwargs.get("refresh") == "recorded":
            for b in batches:
                sampler.record(torch.randn(len(b), D), torch.randn(len(b), D), b)


def test_drop_last_differing_from_the_plans_is_refused():
    plan = hardbatch.plan("random", n_samples=50, batch_size=8, seed=0)
    with pytest.raises(
        ValueError, match="drop_last=True but the plan was made with drop_last=False"
    ):
        HardBatchSampler(plan=plan, drop_last=True)
    assert HardBatchSampler(plan=plan, drop_last=False).drop_last is False
    dropping = hardbatch.plan("random", n_samples=50, batch_size=8, seed=0, drop_last=True)
    assert HardBatchSampler(plan=dropping).drop_last is True  # default: the plan's rule
