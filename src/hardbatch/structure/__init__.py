"""Stage 2: structure. Orderings (and, later, clusters) of the similarity graph."""

from .ordering import bandwidth, rcm_order

__all__ = ["bandwidth", "rcm_order"]
