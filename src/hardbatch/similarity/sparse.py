"""Operations on sparse similarity graphs."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def symmetrize(graph: sp.spmatrix) -> sp.csr_matrix:
    """Undirected boolean pattern ``G | Gᵀ`` of a directed graph.

    Query i being close to target j and query j to target i are the same fact for batching:
    both put i and j in one batch. Returns a canonical CSR (sorted indices, no duplicates).
    The graph stage never stores a diagonal, so none is removed here.
    """
    graph = sp.csr_matrix(graph)
    # The pattern of the stored entries: an edge whose similarity is exactly 0.0 is still an
    # edge (casting the values to bool would turn it into an explicit False and drop it).
    pattern = sp.csr_matrix(
        (np.ones(graph.nnz, dtype=np.bool_), graph.indices, graph.indptr), shape=graph.shape
    )
    sym = (pattern + pattern.T).tocsr()
    sym.sum_duplicates()
    sym.sort_indices()
    return sym


#: Rows of neighbour lists converted at a time (bounds the int64 temporaries).
_LIST_ROWS = 65536


def neighbour_graph(
    ids: np.ndarray,
    sims: np.ndarray | None = None,
    *,
    threshold: float | None = None,
    values: bool = True,
) -> sp.csr_matrix:
    """Directed CSR graph ``i → ids[i, r]`` of neighbour lists (int32 indices).

    Parameters
    ----------
    ids : np.ndarray of shape (N, k)
        Neighbour ids, best first (from :func:`neighbours`).
    sims : np.ndarray of shape (N, k), optional
        Their similarities; needed for ``threshold`` and ``values``.
    threshold : float, optional
        Keep only ``sims > threshold`` (a prefix of every row, since rows are sorted).
    values : bool
        Store the similarities as float32 data; ``False`` stores a boolean pattern.

    Returns
    -------
    scipy.sparse.csr_matrix of shape (N, N)
        Sorted indices, no diagonal (the lists never hold the row itself).
    """
    ids = np.asarray(ids)
    n, k = ids.shape
    if (threshold is not None or values) and sims is None:
        raise ValueError("sims are needed for a threshold or for values")
    counts = np.empty(n, dtype=np.int64)
    cols_parts, data_parts = [], []
    # Row blocks bound the int64 temporaries to O(block·k) (N·k at 1M·128 would be GBs).
    for start in range(0, n, _LIST_ROWS):
        sl = slice(start, min(start + _LIST_ROWS, n))
        block = ids[sl].astype(np.int64)
        keep = np.ones(block.shape, np.bool_) if threshold is None else sims[sl] > threshold
        counts[sl] = keep.sum(axis=1)
        # Sort every row by column id; dropped entries (set to n) sort last and are cut off.
        block = np.where(keep, block, n)
        order = np.argsort(block, axis=1, kind="stable")
        block = np.take_along_axis(block, order, axis=1)
        kept = block < n
        cols_parts.append(block[kept].astype(np.int32 if n < 2**31 else np.int64))
        if values:
            vals = np.take_along_axis(np.asarray(sims[sl], np.float32), order, axis=1)
            data_parts.append(vals[kept])
    nnz = int(counts.sum())
    index_dtype = np.int32 if max(n, nnz) < 2**31 else np.int64
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    indices = np.concatenate(cols_parts).astype(index_dtype, copy=False)
    data = np.concatenate(data_parts) if values else np.ones(nnz, dtype=np.bool_)
    graph = sp.csr_matrix((data, indices, indptr.astype(index_dtype)), shape=(n, n))
    graph.has_sorted_indices = True
    return graph
