"""Stage 2: structure. Orderings, partitions and clusters of the similarity graph."""

from .clusters import check_cluster_size, equalize_parts, internal_degree
from .ordering import bandwidth, rcm_order
from .partition import PARTITIONERS, Partition, edge_cut, partition_graph

__all__ = [
    "PARTITIONERS",
    "Partition",
    "bandwidth",
    "check_cluster_size",
    "edge_cut",
    "equalize_parts",
    "internal_degree",
    "partition_graph",
    "rcm_order",
]
