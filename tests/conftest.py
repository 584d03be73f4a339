"""Shared fixtures: small paired embeddings (random and with planted hard-negative groups).

Slow reference implementations live in ``reference.py`` next to this file.
"""

from __future__ import annotations

import numpy as np
import pytest

from hardbatch.synthetic import make_planted_pairs


def gaussian_pair(
    n: int, d: int, seed: int = 0, dtype=np.float32, correlation: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Random paired embeddings: targets are noisy copies of the queries (positives)."""
    rng = np.random.default_rng(seed)
    queries = rng.standard_normal((n, d))
    targets = correlation * queries + rng.standard_normal((n, d))
    return queries.astype(dtype), targets.astype(dtype)


@pytest.fixture
def make_pair():
    """Factory ``make_pair(n, d, seed=0, dtype=np.float32)`` of random paired embeddings."""
    return gaussian_pair


@pytest.fixture(scope="session")
def small_pair() -> tuple[np.ndarray, np.ndarray]:
    """N=300, d=16 random float32 pairs."""
    return gaussian_pair(300, 16, seed=1)


@pytest.fixture(scope="session")
def planted_small():
    """N=400, d=32 planted groups of 16: a structured input for the exactness checks."""
    return make_planted_pairs(400, 32, group_size=16, seed=4)


@pytest.fixture(scope="session")
def planted_large():
    """The planted example of the gap test: N=2048, d=32, groups of 32."""
    return make_planted_pairs(2048, 32, group_size=32, seed=0)
