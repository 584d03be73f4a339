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
