"""Stage 1: similarity graph. From paired embeddings to a sparse graph of hard pairs.

Modules: ``exact`` (blocked torch matmul: threshold graph, exact top-k), ``approximate`` (FAISS
IVF top-k), ``search`` (the one neighbour-search entry point over both, with
:class:`SearchSettings`), ``windows`` (B3's rank-window graphs), ``sparse`` (graph helpers),
``_common`` (helpers they share).
"""

from .exact import (
    DEFAULT_NEIGHBOURS,
    SimilarityBlocks,
    default_quantile,
    estimate_threshold,
    threshold_graph,
)
from .search import Neighbours, SearchSettings, knn_graph, search_neighbours
from .sparse import neighbour_graph, symmetrize
from .windows import (
    check_label_fraction,
    check_window,
    label_embeddings,
    label_ranks,
    label_window_graph,
    rank_window_graph,
    top_ranks,
    window_graph,
)

__all__ = [
    "Neighbours",
    "SearchSettings",
    "SimilarityBlocks",
    "check_label_fraction",
    "check_window",
    "DEFAULT_NEIGHBOURS",
    "default_quantile",
    "estimate_threshold",
    "knn_graph",
    "label_embeddings",
    "label_ranks",
    "label_window_graph",
    "neighbour_graph",
    "rank_window_graph",
    "search_neighbours",
    "symmetrize",
    "threshold_graph",
    "top_ranks",
    "window_graph",
]
