"""Stage 1: similarity graph. From paired embeddings to a sparse graph of hard pairs."""

from .exact import SimilarityBlocks, estimate_threshold, knn_graph, threshold_graph
from .sparse import symmetrize
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
    "SimilarityBlocks",
    "check_label_fraction",
    "check_window",
    "estimate_threshold",
    "knn_graph",
    "label_embeddings",
    "label_ranks",
    "label_window_graph",
    "rank_window_graph",
    "symmetrize",
    "threshold_graph",
    "top_ranks",
    "window_graph",
]
