"""Slow, obviously-correct reference implementations the fast paths are checked against.

Everything here is dense (N×N float64 numpy) or a plain Python loop: fine for N of a few
hundred, and simple enough to be checked by reading.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import reverse_cuthill_mckee
from scipy.special import logsumexp

PAD = -1

#: Safe distance between a decision boundary (a threshold, the k-th neighbour) and any other
#: similarity. A float32 dot product of unit vectors in d dimensions is off by at most about
#: d·2⁻²⁴ (1e-6 at d=16, 2e-6 at d=32), so a 5e-6 margin keeps float32 and float64 decisions
#: identical; tests assert the margin before comparing exactly.
MARGIN = 5e-6


# --------------------------------------------------------------------------- similarity
def as_float64(a) -> np.ndarray:
    """Any array-like (numpy, memmap, torch) as a float64 numpy array."""
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def dense_similarity(queries, targets, metric: str = "cosine") -> np.ndarray:
    """Full ``S = X·Yᵀ`` in float64, diagonal included (cosine: rows normalised first)."""
    x, y = as_float64(queries), as_float64(targets)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        y = y / np.linalg.norm(y, axis=1, keepdims=True)
    return x @ y.T


def off_diagonal_values(sim: np.ndarray) -> np.ndarray:
    """All ``S[i, j]`` with ``i != j``, as a 1-D array."""
    return sim[~np.eye(len(sim), dtype=bool)]


def threshold_pattern(sim: np.ndarray, threshold: float) -> np.ndarray:
    """Dense boolean graph: ``S[i, j] > threshold`` and ``i != j``."""
    pattern = sim > threshold
    np.fill_diagonal(pattern, False)
    return pattern


def knn_pattern(sim: np.ndarray, k: int) -> np.ndarray:
    """Dense boolean graph: for every row, its ``k`` largest off-diagonal entries."""
    masked = sim.copy()
    np.fill_diagonal(masked, -np.inf)
    pattern = np.zeros(sim.shape, dtype=bool)
    for i, row in enumerate(masked):
        pattern[i, np.argsort(-row, kind="stable")[:k]] = True
    return pattern


def knn_margin(sim: np.ndarray, k: int) -> float:
    """Smallest gap, over rows, between the k-th and (k+1)-th largest off-diagonal entry.

    A float32 fast path and this float64 reference pick the same neighbours when this is well
    above float32 rounding.
    """
    masked = sim.copy()
    np.fill_diagonal(masked, -np.inf)
    ordered = -np.sort(-masked, axis=1)
    return float((ordered[:, k - 1] - ordered[:, k]).min())


def threshold_margin(sim: np.ndarray, threshold: float) -> float:
    """Distance from ``threshold`` to the nearest off-diagonal similarity."""
    return float(np.abs(off_diagonal_values(sim) - threshold).min())


def separated_quantile(sim: np.ndarray, quantile: float, window: int = 50) -> tuple[float, float]:
    """A quantile near ``quantile`` whose value lies midway in a wide gap of the sorted values.

    ``np.quantile`` with linear interpolation at ``q = (k + 0.5) / (M - 1)`` is the midpoint of
    the k-th and (k+1)-th sorted values; ``k`` is the widest gap within ``window`` positions of
    ``quantile``, so float32 rounding cannot put any similarity on the other side of it.

    Returns
    -------
    quantile, threshold : float
    """
    values = np.sort(off_diagonal_values(sim))
    m = len(values)
    centre = int(quantile * (m - 1))
    lo, hi = max(centre - window, 0), min(centre + window, m - 2)
    gaps = values[lo + 1 : hi + 2] - values[lo : hi + 1]
    k = lo + int(np.argmax(gaps))
    q = (k + 0.5) / (m - 1)
    return q, float(np.quantile(values, q))


# --------------------------------------------------------------------------- graphs
def symmetric_pattern(pattern: np.ndarray) -> np.ndarray:
    """Undirected dense graph ``A | Aᵀ``."""
    return pattern | pattern.T


def rcm_of_dense(pattern: np.ndarray) -> np.ndarray:
    """scipy's reverse Cuthill–McKee of a dense boolean graph, made symmetric first."""
    graph = sp.csr_matrix(symmetric_pattern(pattern))
    return reverse_cuthill_mckee(graph, symmetric_mode=True).astype(np.int64)


def bandwidth_loop(pattern: np.ndarray, order: np.ndarray, batch_size: int) -> dict[str, float]:
    """:func:`hardbatch.structure.bandwidth` by a loop over the edges of a dense graph."""
    position = {int(sample): p for p, sample in enumerate(order)}
    distances, same = [], 0
    for i, j in zip(*np.nonzero(pattern), strict=True):
        distances.append(abs(position[int(i)] - position[int(j)]))
        same += position[int(i)] // batch_size == position[int(j)] // batch_size
    if not distances:
        return {"bandwidth": 0.0, "mean_distance": 0.0, "in_batch_edge_fraction": 0.0}
    return {
        "bandwidth": float(max(distances)),
        "mean_distance": sum(distances) / len(distances),
        "in_batch_edge_fraction": same / len(distances),
    }


# --------------------------------------------------------------------------- batching
def batches_of(order, batch_size: int, drop_last: bool) -> list[list[int]]:
    """Consecutive chunks of ``order``; the short last chunk kept unless ``drop_last``."""
    order = [int(i) for i in order]
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if drop_last and chunks and len(chunks[-1]) < batch_size:
        chunks.pop()
    return chunks


def padded(chunks: list[list[int]], batch_size: int) -> np.ndarray:
    """Chunks as a (n_batches, batch_size) array, short rows right-padded with -1."""
    return np.array([c + [PAD] * (batch_size - len(c)) for c in chunks], dtype=np.int64)


# --------------------------------------------------------------------------- losses
def global_losses(queries, targets, temperature: float, metric: str = "cosine"):
    """NT-Xent of every sample against all N pairs, both directions (dense logsumexp)."""
    logits = dense_similarity(queries, targets, metric) / temperature
    diagonal = np.diag(logits)
    return logsumexp(logits, axis=1) - diagonal, logsumexp(logits, axis=0) - diagonal


def train_losses(queries, targets, batches, temperature: float) -> dict[str, np.ndarray]:
    """In-batch NT-Xent and negative similarities, one batch at a time (cosine)."""
    sim = dense_similarity(queries, targets)
    n = len(sim)
    out = {key: np.full(n, np.nan) for key in ("q2t", "t2q", "neg_mean", "neg_min", "neg_max")}
    for row in batches:
        ids = [int(i) for i in row if i != PAD]
        for i in ids:
            others = [j for j in ids if j != i]
            positive = sim[i, i] / temperature
            out["q2t"][i] = logsumexp([sim[i, j] / temperature for j in ids]) - positive
            out["t2q"][i] = logsumexp([sim[j, i] / temperature for j in ids]) - positive
            if others:
                negatives = [sim[i, j] for j in others]
                out["neg_mean"][i] = np.mean(negatives)
                out["neg_min"][i] = min(negatives)
                out["neg_max"][i] = max(negatives)
    return out


# --------------------------------------------------------------------------- duplicate guard
def guard_feasible(codes, sizes, n_dropped: int) -> bool:
    """Whether samples with ids ``codes`` fit batches of ``sizes`` with no id twice in a batch,
    ``n_dropped`` of them left out: a max flow source → id (copies) → batch (1 per id) → sink
    (size) that saturates every batch. Knows nothing of Gale–Ryser."""
    from scipy.sparse.csgraph import maximum_flow

    ids, counts = np.unique(np.asarray(codes), return_counts=True)
    n_ids, n_rows = len(ids), len(sizes)
    if n_rows == 0:
        return True
    source, sink = 0, 1 + n_ids + n_rows
    rows, cols, caps = [], [], []
    for i, c in enumerate(counts):
        rows.append(source), cols.append(1 + i), caps.append(int(c))
        for r in range(n_rows):
            rows.append(1 + i), cols.append(1 + n_ids + r), caps.append(1)
    for r, size in enumerate(sizes):
        rows.append(1 + n_ids + r), cols.append(sink), caps.append(int(size))
    graph = sp.csr_matrix((caps, (rows, cols)), shape=(sink + 1, sink + 1), dtype=np.int32)
    flow = maximum_flow(graph, source, sink).flow_value
    assert int(np.sum(sizes)) + n_dropped == len(codes)
    return flow == int(np.sum(sizes))
