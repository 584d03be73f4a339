"""Stage 1: similarity graph. From paired embeddings to a sparse graph of hard pairs."""

from .exact import SimilarityBlocks, estimate_threshold, knn_graph, threshold_graph
from .sparse import symmetrize

__all__ = ["SimilarityBlocks", "estimate_threshold", "knn_graph", "symmetrize", "threshold_graph"]
