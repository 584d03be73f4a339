"""Batching methods: each a short composition of the shared stages, in one registry.

A new method is one small module: subclass :class:`Planner`, implement ``_plan`` from the
stages, decorate with :func:`register_method`, import it here.
"""

from . import b3, gcbs, random  # noqa: F401  (registers the methods)
from .b3 import B3
from .base import Planner, available_methods, get_method, register_method
from .gcbs import GCBS
from .random import RandomBatches

__all__ = [
    "B3",
    "GCBS",
    "Planner",
    "RandomBatches",
    "available_methods",
    "get_method",
    "register_method",
]
