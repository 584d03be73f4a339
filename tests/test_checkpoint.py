"""Sampler checkpoints: a run resumed mid-epoch from ``state_dict`` (written to a file and read
back) serves exactly the batches the uninterrupted run served, for every refresh policy."""

from __future__ import annotations

import numpy as np
import pytest

import hardbatch
from hardbatch import HardBatchSampler
from hardbatch.checkpoint import load_state, plan_from_state, plan_to_state, save_state
from hardbatch.synthetic import make_planted_pairs

N, D = 150, 16


class Model:
    """Embeddings that move with every training step (so a re-plan after the checkpoint would
    differ from the plan the interrupted run made)."""

    def __init__(self, pairs, step=0):
        self.pairs, self.step = pairs, step
        self.shift = np.random.default_rng(9).standard_normal((N, D)).astype("f4")
        self.calls = 0

    def embed(self, idx):
        self.calls += 1
        return self.pairs.queries[idx] + 0.2 * self.step * self.shift[idx], self.pairs.targets[idx]


@pytest.fixture(scope="module")
def pairs():
    return make_planted_pairs(N, D, group_size=10, seed=0)


CASES = {
    "gcbs_epoch": dict(method="gcbs", refresh="epoch", quantile=0.95),
    "gcbs_epoch_drop_last": dict(method="gcbs", refresh="epoch", quantile=0.95, drop_last=True),
    "gcbs_recorded": dict(method="gcbs", refresh="recorded", quantile=0.95),
    "gcbs_steps": dict(method="gcbs", refresh="steps", refresh_every=2, top_k=5),
    "b3_teacher": dict(method="b3", cluster_size=8, p=2, m=10, drop_last=True),
    "b3_epoch": dict(method="b3", refresh="epoch", cluster_size=8, p=2, m=10),
    "random_shuffled": dict(method="random", shuffle_batches=True),
}


def make(model, case):
    kwargs = dict(CASES[case])
    embed = None if kwargs["method"] == "random" else model.embed
    return HardBatchSampler(n_samples=N, batch_size=16, seed=4, embed_fn=embed, **kwargs)


def train(sampler, model, epochs, served, *, stop=None, path=None):
    """Train ``epochs``; with ``stop=(epoch, k)`` save the state after k batches of it."""
    for epoch in epochs:
        sampler.set_epoch(epoch)
        for k, batch in enumerate(sampler, start=1):
            served.append((epoch, batch))
            if sampler.recorder is not None:
                sampler.record(*model.embed(np.asarray(batch)), batch)
            model.step += 1
            if stop == (epoch, k):
                save_state(path, sampler.state_dict())
                return model.step
    return model.step


@pytest.mark.parametrize("case", sorted(CASES))
def test_resume_mid_epoch_serves_the_uninterrupted_batches(pairs, case, tmp_path):
    path = tmp_path / "sampler.pt"
    full, model = [], Model(pairs)
    train(make(model, case), model, range(3), full)
    # Interrupted after 4 batches of epoch 1 (the uninterrupted run's model is replayed).
    model, cut = Model(pairs), []
    sampler = make(model, case)
    step = train(sampler, model, range(3), cut, stop=(1, 4), path=path)
    assert cut == full[: len(cut)]
    # A new process: a fresh sampler, the model at the checkpoint's step.
    model = Model(pairs, step=step)
    resumed = make(model, case)
    resumed.load_state_dict(load_state(path))
    assert resumed.epoch == 1 and len(resumed) == len(full) // 3 - 4
    rest = []
    train(resumed, model, range(1, 3), rest)
    assert [b for _, b in rest] == [b for _, b in full[len(cut) :]]
    assert [e for e, _ in rest] == [e for e, _ in full[len(cut) :]]


def test_resumed_epoch_is_not_planned_again(pairs, tmp_path):
    model = Model(pairs)
    sampler = make(model, "gcbs_epoch")
    train(sampler, model, range(2), [], stop=(1, 2), path=tmp_path / "s.pt")
    state = load_state(tmp_path / "s.pt")
    fresh = Model(pairs, step=model.step)
    resumed = make(fresh, "gcbs_epoch")
    resumed.load_state_dict(state)
    list(resumed)
    assert fresh.calls == 0 and resumed.history_ == []  # epoch 1's plan came from the state


def test_replay_serves_the_epoch_from_its_first_batch(pairs):
    model = Model(pairs)
    sampler = make(model, "gcbs_epoch")
    sampler.set_epoch(1)
    first = list(sampler)
    state = sampler.state_dict(batches_done=3)
    assert state["served"] == 3 and state["epoch"] == 1
    again = make(Model(pairs, step=50), "gcbs_epoch")
    again.load_state_dict(state, replay=True)
    assert len(again) == len(first) and list(again) == first
    skip = make(Model(pairs, step=50), "gcbs_epoch")
    skip.load_state_dict(state)
    assert list(skip) == first[3:]
    skip.set_epoch(2)  # the resume point is for epoch 1 only
    assert len(skip) == len(first)


def test_state_checks(pairs):
    sampler = make(Model(pairs), "gcbs_epoch")
    state = sampler.state_dict()
    other = HardBatchSampler(n_samples=N, batch_size=10, method="random")
    with pytest.raises(ValueError, match="method='gcbs'"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="version"):
        sampler.load_state_dict({"epoch": 1})
    with pytest.raises(ValueError, match="batches_done"):
        sampler.state_dict(batches_done=1)  # nothing was served yet
    # The state's seed wins: an unseeded sampler resumes the same sequence.
    seeded = HardBatchSampler(n_samples=N, batch_size=10, method="random", seed=None)
    state = HardBatchSampler(n_samples=N, batch_size=10, method="random", seed=7).state_dict()
    seeded.load_state_dict(state)
    assert seeded.seed == 7


def test_plan_state_round_trip(pairs, tmp_path):
    plan = hardbatch.plan(
        "b3", pairs.queries, pairs.targets, batch_size=16, cluster_size=8, p=2, m=10, seed=3
    )
    save_state(tmp_path / "p.pt", {"plan": plan_to_state(plan)})
    back = plan_from_state(load_state(tmp_path / "p.pt")["plan"])
    for e in (0, 1):
        np.testing.assert_array_equal(back.for_epoch(e), plan.for_epoch(e))
    assert back.params == plan.params and back.epoch_rule == plan.epoch_rule
    with pytest.raises(FileNotFoundError):
        load_state(tmp_path / "missing.pt")
