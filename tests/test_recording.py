"""The recorder (``refresh="recorded"``: no extra forward pass) and the batch tracker that
lines loss-side recordings up with sample ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hardbatch import EmbeddingRecorder
from hardbatch.recording import BatchTracker


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
