"""Figures of what a plan does (needs the optional extra ``hardbatch[plot]``: matplotlib).

* :func:`similarity_figure` — the GCBS paper's Figure 1: the similarity matrix ``X·Yᵀ`` with
  rows and columns in plan order next to random order, every batch outlined on the diagonal.
  A hard-batch plan shows bright blocks on the diagonal; a random one shows none.
* :func:`loss_figure` — per-sample losses: ``L_global`` against the in-batch ``L_train`` of
  each plan, and their per-sample gap.

Figures are built with matplotlib's object API on the Agg canvas (no ``pyplot``, no global
backend change), so they work headless and in notebooks alike; ``plot_*`` write a file.
:func:`require_matplotlib` checks up front that figures can be drawn.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._torch import rows_to_tensor
from .batching import PAD
from .plans import BatchPlan
from .validation import ArrayLike, check_pair

if TYPE_CHECKING:  # matplotlib is optional: imported only when a figure is drawn
    from matplotlib.figure import Figure

#: Samples shown per panel by default: a 1024×1024 image still shows single samples.
DEFAULT_MAX_SAMPLES = 1024


class MissingDependencyError(ImportError):
    """An optional dependency (matplotlib) is not installed."""


def require_matplotlib() -> None:
    """Check that figures can be drawn, before any work that ends in one.

    Imports what every figure of this module needs (matplotlib's ``Figure`` and its Agg
    canvas, which draws without a display).

    Raises
    ------
    MissingDependencyError
        matplotlib is not installed (or cannot be imported); the message names the extra to
        install, ``pip install 'hardbatch[plot]'``.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "plots need matplotlib, which is not installed: pip install 'hardbatch[plot]'"
        ) from None


def _figure(**kwargs: Any) -> Figure:
    """A new matplotlib figure on the Agg canvas."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _random_baseline(plan: BatchPlan) -> BatchPlan:
    """The random plan :func:`hardbatch.metrics.report` compares against."""
    from .api import plan as make_plan

    return make_plan(
        "random",
        n_samples=plan.n_samples,
        batch_size=plan.batch_size,
        seed=plan.seed if plan.seed is not None else 0,
        drop_last=plan.drop_last,
    )


def shown_batches(plan: BatchPlan, max_samples: int) -> list[np.ndarray]:
    """The first whole batches of ``plan`` holding at most ``max_samples`` samples.

    Parameters
    ----------
    plan : BatchPlan
    max_samples : int

    Returns
    -------
    list of np.ndarray
        Sample ids of each shown batch (padding removed), in plan order. At least one batch;
        if even the first batch is larger than ``max_samples`` it is cut to that size.
    """
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    shown: list[np.ndarray] = []
    total = 0
    for ids in plan.iter_batches():
        if total + len(ids) > max_samples:
            break
        shown.append(ids)
        total += len(ids)
    if not shown:
        shown.append(plan.batches[0][plan.batches[0] != PAD][:max_samples])
    return shown


def _similarity(queries: ArrayLike, targets: ArrayLike, ids: np.ndarray, metric: str) -> np.ndarray:
    """``S[a, b] = sim(x_ids[a], y_ids[b])``, shape (len(ids), len(ids)), float32."""
    if metric not in ("cosine", "dot"):
        raise ValueError(f"metric must be 'cosine' or 'dot', got {metric!r}")
    cpu = torch.device("cpu")
    x = rows_to_tensor(queries, ids, cpu)
    y = rows_to_tensor(targets, ids, cpu)
    if metric == "cosine":  # new tensors: never normalise the caller's rows in place
        x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True)
        y = y / torch.linalg.vector_norm(y, dim=1, keepdim=True)
    return (x @ y.T).numpy()


def _in_batch_negative_mean(sim: np.ndarray, sizes: list[int]) -> float:
    """Mean similarity of the off-diagonal entries inside the diagonal batch blocks."""
    total, count, start = 0.0, 0, 0
    for size in sizes:
        block = sim[start : start + size, start : start + size]
        total += float(block.sum() - np.trace(block))
        count += size * (size - 1)
        start += size
    return total / count if count else float("nan")


def similarity_figure(
    queries: ArrayLike,
    targets: ArrayLike,
    plan: BatchPlan,
    baseline: BatchPlan | None = None,
    *,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    metric: str = "cosine",
    cmap: str = "viridis",
) -> Figure:
    """The similarity matrix in plan order next to baseline order (GCBS paper, Figure 1).

    Parameters
    ----------
    queries, targets : array-like of shape (N, d)
        Paired embeddings (numpy, memmap or torch); only the shown rows are read.
    plan : BatchPlan
        Plan for the same N (left panel).
    baseline : BatchPlan, optional
        Right panel; default the random plan :func:`hardbatch.metrics.report` uses (same
        batch size and seed).
    max_samples : int
        Each panel shows the samples of the first whole batches of its plan, at most this
        many (the title says when that is fewer than N).
    metric : {"cosine", "dot"}
    cmap : str
        Matplotlib colour map.

    Returns
    -------
    matplotlib.figure.Figure
        Three axes: the plan panel, the baseline panel and the shared colour bar.
    """
    check_pair(queries, targets)
    n = int(queries.shape[0])
    baseline = _random_baseline(plan) if baseline is None else baseline
    for p in (plan, baseline):
        if not isinstance(p, BatchPlan):
            raise ValueError(f"plans must be hardbatch.BatchPlan objects, got {type(p).__name__}")
        if p.n_samples != n:
            raise ValueError(f"plan was made for N={p.n_samples}, embeddings have N={n}")

    panels = []
    for p in (plan, baseline):
        batches = shown_batches(p, max_samples)
        sizes = [len(ids) for ids in batches]
        sim = _similarity(queries, targets, np.concatenate(batches), metric)
        panels.append((p, sizes, sim))
    # One colour scale for both panels, robust to the bright diagonal of positives.
    off_diagonal = np.concatenate([sim[~np.eye(len(sim), dtype=bool)] for _, _, sim in panels])
    vmin, vmax = np.percentile(off_diagonal, [1.0, 99.9]) if off_diagonal.size else (0, 1)
    if vmax <= vmin:
        vmax = vmin + 1e-6

    fig = _figure(figsize=(13, 6.4), layout="constrained")
    axes = fig.subplots(1, 2)
    image = None
    for ax, (p, sizes, sim) in zip(axes, panels, strict=True):
        image = ax.imshow(sim, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        _outline_batches(ax, sizes)
        shown = sum(sizes)
        n_batches = sum(1 for _ in p.iter_batches())
        what = f"{p.method} order"
        if shown < p.n_samples:
            what += (
                f": first {shown} of {p.n_samples} samples ({len(sizes)} of {n_batches} batches)"
            )
        neg = _in_batch_negative_mean(sim, sizes)
        ax.set_title(f"{what}\nmean in-batch negative similarity {neg:.3f}", fontsize=10)
        ax.set_xlabel("target (position in plan)")
        ax.set_ylabel("query (position in plan)")
    label = "cosine similarity" if metric == "cosine" else "dot product"
    fig.colorbar(image, ax=list(axes), shrink=0.85, extend="both", label=label)
    fig.suptitle(
        f"{label} X·Yᵀ, rows and columns in batch order; boxes = batches of {plan.batch_size}",
        fontsize=12,
    )
    return fig


def _outline_batches(ax: Any, sizes: list[int]) -> None:
    """Draw one box per batch along the diagonal."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    boxes = [Rectangle((s - 0.5, s - 0.5), k, k) for s, k in zip(starts, sizes, strict=True)]
    width = 1.2 if len(sizes) <= 32 else 0.8 if len(sizes) <= 128 else 0.4
    ax.add_collection(
        PatchCollection(boxes, facecolor="none", edgecolor="#ff3030", linewidth=width)
    )


def plot_similarity(
    path: str | os.PathLike,
    queries: ArrayLike,
    targets: ArrayLike,
    plan: BatchPlan,
    baseline: BatchPlan | None = None,
    *,
    dpi: int = 120,
    **kwargs: Any,
) -> Path:
    """Draw :func:`similarity_figure` and write it to ``path`` (format from the suffix).

    Returns
    -------
    Path
        The written file.
    """
    fig = similarity_figure(queries, targets, plan, baseline, **kwargs)
    return _save(fig, path, dpi)


def loss_figure(
    queries: ArrayLike,
    targets: ArrayLike,
    plans: Mapping[str, BatchPlan],
    *,
    temperature: float = 0.05,
    metric: str = "cosine",
    device: str | None = None,
    bins: int = 60,
) -> Figure:
    """Per-sample losses under several plans.

    Parameters
    ----------
    queries, targets : array-like of shape (N, d)
    plans : mapping of label -> BatchPlan
        E.g. ``{"gcbs": plan, "random": random_plan}``.
    temperature, metric, device : see :func:`hardbatch.metrics.loss_gap`.
    bins : int
        Histogram bins.

    Returns
    -------
    matplotlib.figure.Figure
        Two axes: histograms of the per-sample ``L_global`` and each plan's ``L_train``
        (mean of both directions), and of each plan's per-sample gap.
    """
    from .metrics import global_losses, train_losses

    if not plans:
        raise ValueError("give at least one plan to plot")
    g_q, g_t = global_losses(
        queries, targets, temperature=temperature, metric=metric, device=device
    )
    global_loss = (g_q + g_t) / 2
    train = {}
    for label, p in plans.items():
        out = train_losses(
            queries, targets, p, temperature=temperature, metric=metric, device=device
        )
        covered = out["covered"]
        train[label] = ((out["q2t"] + out["t2q"])[covered] / 2, global_loss[covered])

    fig = _figure(figsize=(12, 4.6), layout="constrained")
    ax_loss, ax_gap = fig.subplots(1, 2)
    values = [global_loss, *(loss for loss, _ in train.values())]
    edges = np.histogram_bin_edges(np.concatenate(values), bins=bins)
    ax_loss.hist(
        global_loss,
        bins=edges,
        histtype="stepfilled",
        alpha=0.3,
        color="0.4",
        label=f"L_global (mean {global_loss.mean():.3f})",
    )
    for label, (loss, _) in train.items():
        ax_loss.hist(
            loss,
            bins=edges,
            histtype="step",
            linewidth=1.5,
            label=f"L_train, {label} (mean {loss.mean():.3f})",
        )
    ax_loss.set_xlabel(f"per-sample NT-Xent loss (τ={temperature})")
    ax_loss.set_ylabel("samples")
    ax_loss.set_title("what training sees vs the loss over all pairs", fontsize=10)
    ax_loss.legend(fontsize=8)
    gaps = {label: glob - loss for label, (loss, glob) in train.items()}
    edges = np.histogram_bin_edges(np.concatenate(list(gaps.values())), bins=bins)
    for label, gap in gaps.items():
        ax_gap.hist(
            gap,
            bins=edges,
            histtype="step",
            linewidth=1.5,
            label=f"{label} (mean {gap.mean():.4f})",
        )
    ax_gap.set_xlabel("per-sample gap L_global − L_train")
    ax_gap.set_ylabel("samples")
    ax_gap.set_title("gap per sample (smaller: harder batches)", fontsize=10)
    ax_gap.legend(fontsize=8)
    return fig


def plot_losses(
    path: str | os.PathLike,
    queries: ArrayLike,
    targets: ArrayLike,
    plans: Mapping[str, BatchPlan],
    *,
    dpi: int = 120,
    **kwargs: Any,
) -> Path:
    """Draw :func:`loss_figure` and write it to ``path``; returns the path."""
    return _save(loss_figure(queries, targets, plans, **kwargs), path, dpi)


def _save(fig: Figure, path: str | os.PathLike, dpi: int) -> Path:
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise FileNotFoundError(f"folder {path.parent} does not exist (writing {path})")
    fig.savefig(path, dpi=dpi)
    return path
