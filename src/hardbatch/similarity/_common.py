"""Helpers shared by the similarity modules (and Ray's coarse shards): one home, no cycles.

Every similarity module imports from here; this module imports no similarity module.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .._torch import normalized_rows
from ..validation import ArrayLike

METRICS = ("cosine", "dot")

#: Work (N·N·d multiply-adds) above which progress bars are shown by default (~2 s on a CPU).
PROGRESS_WORK = 2e11

#: Rows per block when streaming an input array (reading / projecting / assigning).
STREAM_ROWS = 16384


def inv_norms(norms: np.ndarray, metric: str) -> np.ndarray | None:
    """Row scale of ``metric``: ``1 / norms`` for cosine, ``None`` (no scaling) for dot."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return 1.0 / norms if metric == "cosine" else None


def show_progress(progress: bool | None, n: int, d: int) -> bool:
    """Resolve ``progress=None`` (auto): show bars only when the work takes seconds."""
    if progress is None:
        return float(n) * n * d > PROGRESS_WORK
    return bool(progress)


def index_dtype(n: int) -> type:
    """Integer dtype for ids below ``n``: int32 while it fits, else int64."""
    return np.int32 if n < 2**31 else np.int64


def stream_rows(
    a: ArrayLike, inv: np.ndarray | None, device: torch.device, n: int
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(slice, normalised float32 rows)`` blocks of :data:`STREAM_ROWS` rows."""
    for start in range(0, n, STREAM_ROWS):
        sl = slice(start, min(start + STREAM_ROWS, n))
        yield sl, normalized_rows(a, sl, inv, device)
