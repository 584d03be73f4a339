"""The bundled synthetic data: paired embeddings with planted groups of hard negatives."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref

from hardbatch.synthetic import PlantedPairs, make_planted_pairs


def test_shapes_and_dtypes():
    data = make_planted_pairs(100, 12, group_size=32, seed=0)
    assert isinstance(data, PlantedPairs)
    assert data.queries.shape == data.targets.shape == (100, 12)
    assert data.queries.dtype == data.targets.dtype == np.float32
    assert data.groups.shape == (100,) and data.groups.dtype == np.int64
    assert np.isfinite(data.queries).all() and np.isfinite(data.targets).all()


def test_group_sizes():
    data = make_planted_pairs(100, 8, group_size=32, seed=0)
    # ceil(100 / 32) = 4 groups; the last one holds the remaining 4 samples.
    assert np.bincount(data.groups).tolist() == [32, 32, 32, 4]
    unshuffled = make_planted_pairs(100, 8, group_size=32, shuffle=False, seed=0)
    np.testing.assert_array_equal(unshuffled.groups, np.arange(100) // 32)


def test_shuffle_mixes_the_rows():
    data = make_planted_pairs(256, 8, group_size=16, seed=0)
    assert not np.array_equal(data.groups, np.sort(data.groups))
    assert np.bincount(data.groups).tolist() == [16] * 16


def test_deterministic_for_a_seed():
    a = make_planted_pairs(64, 8, group_size=8, seed=5)
    b = make_planted_pairs(64, 8, group_size=8, seed=5)
    c = make_planted_pairs(64, 8, group_size=8, seed=6)
    for field in ("queries", "targets", "groups"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.queries, c.queries)


def test_group_members_are_hard_negatives():
    """Positives > same-group negatives > other-group negatives (about 0.94, 0.7, 0)."""
    data = make_planted_pairs(512, 32, group_size=16, seed=1)
    sim = ref.dense_similarity(data.queries, data.targets)
    same_group = data.groups[:, None] == data.groups[None, :]
    off_diagonal = ~np.eye(512, dtype=bool)
    positives = np.diag(sim).mean()
    members = sim[same_group & off_diagonal].mean()
    others = sim[~same_group].mean()
    assert positives > members + 0.1
    assert members > others + 0.4
    assert abs(others) < 0.05
    # Per query: the nearest non-positive target is nearly always a group member.
    masked = np.where(off_diagonal, sim, -np.inf)
    nearest = masked.argmax(axis=1)
    assert np.mean(data.groups[nearest] == data.groups) > 0.95


def test_spread_and_noise_control_the_difficulty():
    tight = make_planted_pairs(256, 16, group_size=16, spread=0.2, seed=0)
    loose = make_planted_pairs(256, 16, group_size=16, spread=1.5, seed=0)

    def member_similarity(data):
        sim = ref.dense_similarity(data.queries, data.targets)
        same = (data.groups[:, None] == data.groups[None, :]) & ~np.eye(256, dtype=bool)
        return sim[same].mean()

    assert member_similarity(tight) > member_similarity(loose) + 0.3
    noiseless = make_planted_pairs(64, 8, noise=0.0, seed=0)
    np.testing.assert_array_equal(noiseless.queries, noiseless.targets)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_samples": 1}, "n_samples must be an integer >= 2"),
        ({"dim": 1}, "dim must be an integer >= 2"),
        ({"group_size": 0}, "group_size must be an integer >= 1"),
        ({"spread": -0.1}, "spread and noise must be >= 0"),
        ({"noise": -1.0}, "spread and noise must be >= 0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_planted_pairs(**{"n_samples": 64, "dim": 8, **kwargs})
