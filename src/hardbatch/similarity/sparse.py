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
    pattern = sp.csr_matrix(graph, dtype=np.bool_, copy=False)
    sym = (pattern + pattern.T).tocsr()
    sym.sum_duplicates()
    sym.sort_indices()
    return sym
