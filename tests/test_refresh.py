"""Refresh policies: the embedding pass, the recorder ("recorded": no extra forward pass) and
the batch tracker that lines loss-side recordings up with sample ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import hardbatch
from hardbatch import EmbeddingRecorder, HardBatchSampler
from hardbatch.planning import embed_pass
from hardbatch.recording import BatchTracker
from hardbatch.synthetic import make_planted_pairs

N, D, B = 200, 12, 20


@pytest.fixture(scope="module")
def pairs():
    return make_planted_pairs(N, D, group_size=10, seed=1)


# ------------------------------------------------------------------------------- embed pass
def test_embed_pass_batches_in_order_without_grad(pairs):
    seen = []

    def embed(idx):
        seen.append((len(idx), torch.is_grad_enabled()))
        return torch.tensor(pairs.queries[idx]), pairs.targets[idx]

    order = np.arange(N)[::-1].copy()
    q, t = embed_pass(embed, order, batch_size=64)
    assert [s for s, _ in seen] == [50, 50, 50, 50]  # <= 64 per call, split evenly
    assert not any(g for _, g in seen)
    np.testing.assert_array_equal(q, pairs.queries[order])
    np.testing.assert_array_equal(t, pairs.targets[order])
    assert q.dtype == np.float32


def test_embed_pass_checks_row_counts(pairs):
    with pytest.raises(ValueError, match="returned 1 query"):
        embed_pass(lambda idx: (pairs.queries[:1], pairs.targets[idx]), np.arange(5))
    with pytest.raises(ValueError, match="shape"):
        embed_pass(lambda idx: (np.zeros(len(idx)), pairs.targets[idx]), np.arange(5))


# ------------------------------------------------------------------------------- recorder
def test_recorder_keeps_the_latest_rows():
    rec = EmbeddingRecorder(5)
    assert rec.n_known == 0
    with pytest.raises(ValueError, match="no embeddings yet"):
        rec.embeddings()
    rec.record([0, 2], torch.ones(2, 3), torch.zeros(2, 3) + 2)
    rec.record(torch.tensor([2]), torch.full((1, 3), 7.0, requires_grad=True), torch.ones(1, 3))
    assert rec.known.tolist() == [True, False, True, False, False]
    assert rec.queries_[2].tolist() == [7, 7, 7]
    assert rec.stamps_[2] > rec.stamps_[0] > -1
    q, t = rec.embeddings(seed=0)
    assert np.isfinite(q).all() and np.abs(q[[1, 3, 4]]).sum() > 0  # random stand-ins
    q2, _ = rec.embeddings(seed=0)
    np.testing.assert_array_equal(q, q2)
    np.testing.assert_array_equal(rec.queries_[1], 0)  # stand-ins are not stored


@pytest.mark.parametrize(
    "args, match",
    [
        (([0, 1], np.ones((3, 2)), np.ones((2, 2))), "2 indices but 3 query"),
        (([0, 9], np.ones((2, 2)), np.ones((2, 2))), r"in \[0, 5\)"),
        (([0], np.ones((1, 2)), np.ones((1, 3))), "differ in dimension"),
    ],
)
def test_recorder_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        EmbeddingRecorder(5).record(*args)


def test_recorder_dimension_cannot_change():
    rec = EmbeddingRecorder(5)
    rec.record([0], np.ones((1, 2)), np.ones((1, 2)))
    with pytest.raises(ValueError, match="dimension changed"):
        rec.record([1], np.ones((1, 3)), np.ones((1, 3)))


# ------------------------------------------------------------------------------- tracker
def test_tracker_fifo_and_rank_filter():
    rec = EmbeddingRecorder(10)
    tracker = BatchTracker(num_replicas=2, rank=1)
    for batch in ([0, 1], [2, 3], [4, 5], [6, 7]):
        tracker.push(rec, batch)
    assert len(tracker) == 2  # batches 1 and 3 go to rank 1
    assert tracker.pop(2)[1].tolist() == [2, 3]
    assert tracker.pop(2)[1].tolist() == [6, 7]
    assert tracker.pop(2) is None


def test_tracker_size_mismatch_pauses_recording():
    rec = EmbeddingRecorder(10)
    tracker = BatchTracker()
    tracker.push(rec, [0, 1, 2])
    tracker.push(rec, [3, 4, 5])
    with pytest.warns(RuntimeWarning, match="paused"):
        assert tracker.pop(2) is None
    assert len(tracker) == 0 and tracker.mismatches_ == 1


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
