"""Figures: the similarity matrix in plan vs random order, and the per-sample loss histograms."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import hardbatch
from hardbatch import plots
from hardbatch.synthetic import make_planted_pairs

pytest.importorskip("matplotlib")

N, BATCH = 300, 32
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def planted():
    data = make_planted_pairs(N, 16, group_size=16, seed=0)
    plan = hardbatch.plan("gcbs", data.queries, data.targets, batch_size=BATCH, quantile=0.99)
    random_plan = hardbatch.plan("random", n_samples=N, batch_size=BATCH, seed=0)
    return data, plan, random_plan


def _reference_similarity(x, y, ids):
    """Cosine similarity of the listed rows, the obvious way."""
    out = np.empty((len(ids), len(ids)))
    for a, i in enumerate(ids):
        for b, j in enumerate(ids):
            out[a, b] = x[i] @ y[j] / (np.linalg.norm(x[i]) * np.linalg.norm(y[j]))
    return out


def test_shown_batches_are_whole_batches_up_to_max_samples(planted):
    _, plan, _ = planted
    shown = plots.shown_batches(plan, 100)
    assert len(shown) == 3  # 3 * 32 <= 100 < 4 * 32
    for ids, row in zip(shown, plan.batches[:3], strict=True):
        np.testing.assert_array_equal(ids, row)
    everything = plots.shown_batches(plan, 10_000)
    assert sum(map(len, everything)) == N  # padding removed from the short last batch
    (first,) = plots.shown_batches(plan, 20)  # one batch, cut to max_samples
    np.testing.assert_array_equal(first, plan.batches[0, :20])
    with pytest.raises(ValueError, match="max_samples"):
        plots.shown_batches(plan, 0)


def test_similarity_figure_panels(planted):
    data, plan, random_plan = planted
    fig = plots.similarity_figure(data.queries, data.targets, plan, random_plan, max_samples=64)
    assert len(fig.axes) == 3  # plan panel, baseline panel, colour bar
    left, right, colorbar = fig.axes
    assert left.get_title().startswith("gcbs order: first 64 of 300 samples (2 of 10 batches)")
    assert right.get_title().startswith("random order")
    assert colorbar.get_ylabel() == "cosine similarity"
    # The left image is the similarity matrix of the plan's first two batches.
    ids = plan.batches[:2].ravel()
    image = left.get_images()[0].get_array()
    np.testing.assert_allclose(
        image, _reference_similarity(data.queries, data.targets, ids), atol=1e-5
    )
    # One outline per shown batch.
    (boxes,) = left.collections
    assert len(boxes.get_paths()) == 2


def test_similarity_figure_default_baseline_and_whole_plan(planted):
    data, plan, _ = planted
    fig = plots.similarity_figure(torch.from_numpy(data.queries), data.targets, plan)
    left, right, _ = fig.axes
    assert left.get_title().startswith("gcbs order\n")  # all 300 samples shown: no "first"
    assert right.get_title().startswith("random order\n")
    assert left.get_images()[0].get_array().shape == (N, N)
    assert len(left.collections[0].get_paths()) == 10


def test_similarity_figure_checks_n(planted):
    data, plan, _ = planted
    with pytest.raises(ValueError, match="N=300"):
        plots.similarity_figure(data.queries[:200], data.targets[:200], plan)


def test_plot_similarity_writes_png(planted, tmp_path):
    data, plan, random_plan = planted
    path = plots.plot_similarity(tmp_path / "sim.png", data.queries, data.targets, plan)
    assert path.read_bytes()[:8] == PNG
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plots.plot_similarity(tmp_path / "no" / "sim.png", data.queries, data.targets, plan)


def test_loss_figure(planted, tmp_path):
    data, plan, random_plan = planted
    plans = {"gcbs": plan, "random": random_plan}
    fig = plots.loss_figure(data.queries, data.targets, plans)
    assert len(fig.axes) == 2
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    gap = hardbatch.metrics.loss_gap(data.queries, data.targets, plan)["gap"]
    assert legend[0] == f"gcbs (mean {gap:.4f})"
    path = plots.plot_losses(tmp_path / "loss.png", data.queries, data.targets, plans)
    assert path.read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="at least one plan"):
        plots.loss_figure(data.queries, data.targets, {})


def test_missing_matplotlib_names_the_extra(planted, monkeypatch):
    data, plan, _ = planted
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(plots.MissingDependencyError, match=r"hardbatch\[plot\]"):
        plots.similarity_figure(data.queries, data.targets, plan)


def test_require_matplotlib_checks_before_any_work(monkeypatch):
    assert plots.require_matplotlib() is None  # installed: nothing to say
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(plots.MissingDependencyError, match=r"hardbatch\[plot\]"):
        plots.require_matplotlib()
    # An ImportError, so callers that only want to know (the demo) can catch that.
    assert issubclass(plots.MissingDependencyError, ImportError)
