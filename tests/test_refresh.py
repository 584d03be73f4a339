"""Refresh policies: one class each behind one factory, and the policies at work in the
sampler ("epoch" pays a pass per epoch, "recorded" none)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import hardbatch
from hardbatch import EmbeddingRecorder, HardBatchSampler
from hardbatch.methods import get_method
from hardbatch.planning import Planning
from hardbatch.refresh import (
    POLICY_CLASSES,
    REFRESH_POLICIES,
    EpochRefresh,
    NeverRefresh,
    RecordedRefresh,
    RefreshPolicy,
    StepsRefresh,
    make_refresh_policy,
    resolve_refresh,
)
from hardbatch.synthetic import make_planted_pairs

N, D, B = 200, 12, 20


@pytest.fixture(scope="module")
def pairs():
    return make_planted_pairs(N, D, group_size=10, seed=1)


# ------------------------------------------------------------------------------- "recorded"
class CountingEncoder(nn.Module):
    """Identity-plus-linear encoder that counts its forward calls."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(D, D)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(D))
            self.proj.bias.zero_()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.proj(x)


def train_epochs(sampler, model, pairs, epochs, *, record=True):
    xq, xt = torch.tensor(pairs.queries), torch.tensor(pairs.targets)
    optim = torch.optim.SGD(model.parameters(), lr=0.05)
    steps = 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in sampler:
            q, t = model(xq[batch]), model(xt[batch])
            logits = nn.functional.normalize(q, dim=1) @ nn.functional.normalize(t, dim=1).T
            loss = nn.functional.cross_entropy(logits / 0.1, torch.arange(len(batch)))
            optim.zero_grad()
            loss.backward()
            optim.step()
            if record:
                sampler.record(q, t)  # indices: the batch the sampler handed out
            steps += 1
    return steps


def test_recorded_refresh_makes_no_extra_forward_pass(pairs):
    model = CountingEncoder()
    sampler = HardBatchSampler(n_samples=N, batch_size=B, refresh="recorded", quantile=0.95)
    steps = train_epochs(sampler, model, pairs, 3)
    assert model.calls == 2 * steps  # the training passes only: no embedding pass
    assert [h["policy"] for h in sampler.history_] == ["recorded"] * 3
    assert sampler.recorder.n_known == N


def test_epoch_refresh_pays_one_pass_per_epoch(pairs):
    model = CountingEncoder()
    xq, xt = torch.tensor(pairs.queries), torch.tensor(pairs.targets)
    sampler = HardBatchSampler(
        n_samples=N,
        batch_size=B,
        embed_fn=lambda idx: (model(xq[idx]), model(xt[idx])),
        embed_batch_size=N,
        quantile=0.95,
    )
    steps = train_epochs(sampler, model, pairs, 3, record=False)
    assert model.calls == 2 * steps + 3 * 2  # plus one (query, target) pass per epoch


def test_recorded_first_epoch_random_then_planned_from_records(pairs):
    model = CountingEncoder()
    sampler = HardBatchSampler(n_samples=N, batch_size=B, refresh="recorded", quantile=0.95)
    train_epochs(sampler, model, pairs, 1)
    assert sampler.plan_.method == "random"
    recorded_q, recorded_t = sampler.recorder.queries_.copy(), sampler.recorder.targets_.copy()
    assert (sampler.recorder.stamps_ > 0).all()
    sampler.set_epoch(1)
    served = [list(b) for b in sampler]
    # Reference: the plan GCBS makes from exactly the recorded embeddings.
    reference = hardbatch.plan(
        "gcbs",
        recorded_q,
        recorded_t,
        batch_size=B,
        seed=sampler.planning.epoch_seed(1),
        quantile=0.95,
    )
    assert served == [list(r) for r in reference.iter_batches()]


def test_recorded_embeddings_are_the_training_embeddings(pairs):
    """With a frozen model the recorder must hold each sample's own embedding (alignment)."""
    model = CountingEncoder()
    for p in model.parameters():
        p.requires_grad_(False)
    sampler = HardBatchSampler(n_samples=N, batch_size=B, refresh="recorded", quantile=0.95)
    sampler.set_epoch(0)
    xq, xt = torch.tensor(pairs.queries), torch.tensor(pairs.targets)
    for batch in sampler:
        sampler.record(model(xq[batch]) * 2, model(xt[batch]) * 3)
    np.testing.assert_allclose(sampler.recorder.queries_, 2 * pairs.queries, rtol=1e-6)
    np.testing.assert_allclose(sampler.recorder.targets_, 3 * pairs.targets, rtol=1e-6)


def test_recorded_initial_pass_and_fallback_to_last_known(pairs):
    calls = []

    def embed(idx):
        calls.append(len(idx))
        return pairs.queries[idx], pairs.targets[idx]

    sampler = HardBatchSampler(
        n_samples=N, batch_size=B, embed_fn=embed, refresh="recorded", quantile=0.95
    )
    assert sampler.initial == "auto"
    sampler.set_epoch(0)
    batches = [list(b) for b in sampler]
    assert sum(calls) == N and sampler.plan_.method == "gcbs"  # one initial pass
    # Record only the first half of the epoch; the rest keep their initial embeddings.
    for batch in batches[: len(batches) // 2]:
        sampler.record(pairs.queries[batch] + 1, pairs.targets[batch] + 1)
    sampler.set_epoch(1)
    list(sampler)
    assert sum(calls) == N  # no pass after the first epoch
    seen = np.concatenate(batches[: len(batches) // 2])
    unseen = np.setdiff1d(np.arange(N), seen)
    np.testing.assert_allclose(sampler.recorder.queries_[seen], pairs.queries[seen] + 1)
    np.testing.assert_allclose(sampler.recorder.queries_[unseen], pairs.queries[unseen])


def test_recorded_initial_random_skips_the_pass(pairs):
    sampler = HardBatchSampler(
        n_samples=N,
        batch_size=B,
        embed_fn=lambda idx: pytest.fail("embed_fn called"),
        refresh="recorded",
        initial="random",
    )
    sampler.set_epoch(0)
    list(sampler)
    assert sampler.plan_.method == "random"


def test_record_needs_recorded_policy(pairs):
    sampler = HardBatchSampler(n_samples=N, batch_size=B, method="random")
    with pytest.raises(ValueError, match="refresh='recorded'"):
        sampler.record(pairs.queries[:B], pairs.targets[:B])


# ------------------------------------------------------------------------------- policy classes
def planning_for(pairs, method="gcbs", **kwargs):
    params = {"quantile": 0.95} if method == "gcbs" else {}
    return Planning(
        method=method,
        n_samples=N,
        batch_size=B,
        drop_last=False,
        seed=3,
        method_params=params,
        **kwargs,
    )


def never_planned(epoch):
    pytest.fail("the policy planned an epoch to count it")


def test_policy_classes_declare_their_contract():
    assert REFRESH_POLICIES == ("auto", "never", "epoch", "recorded", "steps")
    contract = {
        name: (cls.replans, cls.needs_embed_fn, cls.records) for name, cls in POLICY_CLASSES.items()
    }
    assert contract == {
        "never": (False, False, False),
        "epoch": (True, True, False),
        "recorded": (True, False, True),
        "steps": (True, True, False),
    }
    assert all(issubclass(cls, RefreshPolicy) for cls in POLICY_CLASSES.values())


@pytest.mark.parametrize(
    "method, given, follows, expected",
    [
        ("gcbs", {"embed_fn_given": True}, True, "epoch"),
        ("gcbs", {"embed_fn_given": True, "embeddings_given": True}, True, "epoch"),
        ("gcbs", {"embed_fn_given": True}, False, "never"),  # a fixed teacher's embed_fn
        ("gcbs", {"embeddings_given": True}, True, "never"),
        ("gcbs", {"plan_given": True, "embed_fn_given": True}, True, "never"),
        ("b3", {"embed_fn_given": True}, True, "never"),  # its own per-epoch rule
        ("random", {}, True, "never"),
    ],
)
def test_auto_resolution(method, given, follows, expected):
    name = resolve_refresh(
        "auto", method_cls=get_method(method), embed_fn_follows_model=follows, **given
    )
    assert name == expected
    assert resolve_refresh(None, method_cls=get_method(method)) == "never"


def test_never_refresh_plans_once_and_serves_the_method_rule(pairs):
    planning = planning_for(pairs, embeddings=(pairs.queries, pairs.targets))
    policy = make_refresh_policy("never", planning)
    assert isinstance(policy, NeverRefresh) and not policy.records and policy.recorder is None
    reference = hardbatch.plan(
        "gcbs", pairs.queries, pairs.targets, batch_size=B, seed=3, quantile=0.95
    )
    for epoch in (0, 1, 2):
        np.testing.assert_array_equal(policy.epoch_batches(epoch), reference.for_epoch(epoch))
    assert policy.n_batches(4) == len(reference.batches)
    assert len(planning.history_) == 1 and planning.history_[0]["policy"] == "never"
    # A given plan is served as is, with its own epoch rule (random reshuffles).
    given = hardbatch.plan("random", n_samples=N, batch_size=B, seed=9)
    policy = make_refresh_policy("auto", planning_for(pairs, "random"), plan=given)
    assert isinstance(policy, NeverRefresh)
    np.testing.assert_array_equal(policy.epoch_batches(1), given.for_epoch(1))
    assert policy.planning.history_ == []


def test_epoch_refresh_embeds_and_plans_every_epoch(pairs):
    calls = []

    def embed(idx):
        calls.append(len(idx))
        return pairs.queries[idx] * (1 + len(calls)), pairs.targets[idx]

    planning = planning_for(pairs, embed_fn=embed, embed_batch_size=N)
    policy = make_refresh_policy("auto", planning)
    assert isinstance(policy, EpochRefresh)
    for epoch in (0, 1):
        batches = policy.epoch_batches(epoch)
        reference = hardbatch.plan(
            "gcbs",
            pairs.queries * (1 + len(calls)),
            pairs.targets,
            batch_size=B,
            seed=planning.epoch_seed(epoch),
            quantile=0.95,
        )
        np.testing.assert_array_equal(batches, reference.batches)
    assert calls == [N, N]
    # Counted without planning (no embedding pass, no collective): the method's count rule.
    assert policy.n_batches(5) == N // B and calls == [N, N]
    b3 = make_refresh_policy("epoch", planning_for(pairs, "b3", embed_fn=embed))
    assert b3.n_batches(0) == N // B and calls == [N, N]


def test_recorded_refresh_plans_from_the_recorder(pairs):
    recorder = EmbeddingRecorder(N)
    recorder.set_all(pairs.queries, pairs.targets)
    planning = planning_for(pairs)
    policy = make_refresh_policy("recorded", planning, recorder=recorder)
    assert isinstance(policy, RecordedRefresh) and policy.records
    assert policy.recorder is recorder and not policy.initial_pass
    reference = hardbatch.plan(
        "gcbs",
        pairs.queries,
        pairs.targets,
        batch_size=B,
        seed=planning.epoch_seed(1),
        quantile=0.95,
    )
    np.testing.assert_array_equal(policy.epoch_batches(1), reference.batches)
    # Nothing recorded and nothing to embed with: the first epoch is random, said so.
    empty = make_refresh_policy("recorded", planning_for(pairs))
    empty.epoch_batches(0)
    assert empty.planning.plan_.method == "random"
    assert make_refresh_policy(
        "recorded", planning_for(pairs, embeddings=(pairs.queries, pairs.targets))
    ).initial_pass


def test_steps_refresh_replans_the_rest_of_the_epoch(pairs):
    planning = planning_for(pairs, embed_fn=lambda idx: (pairs.queries[idx], pairs.targets[idx]))
    policy = make_refresh_policy("steps", planning, refresh_every=3)
    assert isinstance(policy, StepsRefresh) and policy.refresh_every == 3
    rows = list(policy.epoch_rows(0, never_planned))
    assert sorted(np.concatenate(rows)) == list(range(N)) and len(rows) == N // B
    assert [h["step"] for h in planning.history_] == [0, 3, 6, 9]
    # The first rows are those of a plan of every sample with the step-0 seed.
    first = hardbatch.plan(
        "gcbs",
        pairs.queries,
        pairs.targets,
        batch_size=B,
        seed=planning.epoch_seed(0, 0),
        quantile=0.95,
    )
    for row, ref in zip(rows[:3], first.batches[:3], strict=True):
        np.testing.assert_array_equal(row, ref)
    with pytest.raises(NotImplementedError):
        policy.epoch_batches(0)


def embed_both(idx):
    return np.zeros((len(idx), 2)), np.zeros((len(idx), 2))


@pytest.mark.parametrize(
    "refresh, method, options, planning_kwargs, match",
    [
        ("sometimes", "gcbs", {}, {"embed_fn": embed_both}, "refresh must be one of"),
        ("auto", "gcbs", {}, {}, "plans from embeddings"),
        ("never", "gcbs", {}, {}, "needs embeddings=, embed_fn= or plan="),
        ("epoch", "gcbs", {}, {}, "refresh='epoch' needs embed_fn="),
        ("steps", "gcbs", {"refresh_every": 2}, {}, "refresh='steps' needs embed_fn="),
        ("steps", "gcbs", {}, {"embed_fn": embed_both}, "refresh_every"),
        ("steps", "b3", {"refresh_every": 2}, {"embed_fn": embed_both}, "own per-epoch rule"),
        ("recorded", "random", {}, {}, "reads no embeddings"),
        ("epoch", "gcbs", {"plan": "given"}, {"embed_fn": embed_both}, "a given plan is static"),
        ("never", "random", {"refresh_every": 2}, {}, "only used with refresh='steps'"),
        ("epoch", "gcbs", {"recorder": "N"}, {"embed_fn": embed_both}, "only used with"),
        ("recorded", "gcbs", {"recorder": "N+1"}, {}, "recorder holds N="),
        ("recorded", "gcbs", {"initial": "later"}, {}, "initial must be"),
        ("recorded", "gcbs", {"initial": "embed"}, {}, "initial='embed' needs"),
    ],
)
def test_factory_refuses_what_cannot_work(pairs, refresh, method, options, planning_kwargs, match):
    options = dict(options)
    if options.get("plan") == "given":
        options["plan"] = hardbatch.plan("random", n_samples=N, batch_size=B)
    if "recorder" in options:
        options["recorder"] = EmbeddingRecorder(N if options["recorder"] == "N" else N + 1)
    with pytest.raises(ValueError, match=match):
        make_refresh_policy(refresh, planning_for(pairs, method, **planning_kwargs), **options)


# --------------------------------------------------------------------------- hardness schedule
def test_epoch_refresh_plans_each_epoch_with_its_hardness():
    data = make_planted_pairs(256, 16, group_size=16, seed=0)
    schedule = hardbatch.HardnessSchedule.linear(0.0, 1.0, epochs=2)
    sampler = HardBatchSampler(
        n_samples=256, batch_size=32, method="gcbs", top_k=8, refresh="epoch", seed=0,
        embed_fn=lambda idx: (data.queries[idx], data.targets[idx]), hardness=schedule,
    )  # fmt: skip
    plans = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(np.concatenate(batches).tolist()) == list(range(256))
        plans.append(sampler.plan_)
    assert [p.params["hardness"] for p in plans] == [0.0, 0.5, 1.0]
    assert [p.info["hardness"]["dial"] for p in plans] == [0.0, 0.5, 1.0]
    # Epoch 2 is the method's own plan of that epoch (hardness 1, bit for bit).
    same = hardbatch.plan(
        "gcbs", data.queries, data.targets, batch_size=32, top_k=8,
        seed=sampler.planning.epoch_seed(2),
    )  # fmt: skip
    np.testing.assert_array_equal(plans[2].batches, same.batches)


def test_static_b3_sampler_serves_the_schedule_of_each_epoch():
    data = make_planted_pairs(256, 16, group_size=16, seed=0)
    schedule = hardbatch.HardnessSchedule.linear(0.5, 1.0, epochs=2)
    params = {"cluster_size": 8, "p": 0, "m": 10}
    sampler = HardBatchSampler(
        batch_size=32, method="b3", embeddings=(data.queries, data.targets), seed=0,
        hardness=schedule, duplicate_ids=np.arange(256) % 100, **params,
    )  # fmt: skip
    hard = hardbatch.plan(
        "b3", data.queries, data.targets, batch_size=32, seed=0,
        duplicate_ids=np.arange(256) % 100, **params,
    )  # fmt: skip
    for epoch in range(3):
        sampler.set_epoch(epoch)
        served = np.concatenate(list(sampler))
        plan = sampler.plan_
        expected = plan.for_epoch(epoch)
        np.testing.assert_array_equal(served, expected[expected != hardbatch.PAD])
    assert sampler.plan_.params["hardness"] == schedule.to_json()
    np.testing.assert_array_equal(sampler.plan_.for_epoch(2), hard.for_epoch(2))
    assert not np.array_equal(sampler.plan_.for_epoch(0), hard.for_epoch(0))


@pytest.mark.parametrize("initial", ["random", "embed"])
def test_recorded_without_recordings_warns_at_the_next_epoch(initial):
    x = np.random.default_rng(0).normal(size=(120, 8)).astype(np.float32)
    extra = {"embeddings": (x, x)} if initial == "embed" else {}
    sampler = HardBatchSampler(
        n_samples=120, batch_size=12, method="gcbs", refresh="recorded", initial=initial,
        top_k=4, **extra,
    )  # fmt: skip
    sampler.set_epoch(0)
    list(sampler)  # no record() calls
    sampler.set_epoch(1)
    with pytest.warns(RuntimeWarning, match="nothing was recorded since the last plan"):
        list(sampler)
    # Recording silences it (from the epoch after the one that records).
    sampler.set_epoch(2)
    with pytest.warns(RuntimeWarning, match="nothing was recorded"):
        for batch in sampler:
            sampler.record(x[batch], x[batch], batch)
    sampler.set_epoch(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(sampler)
