"""Synthetic paired embeddings with planted groups of hard negatives (the bundled example).

Model: ``n_groups`` group centres ``c_g`` are drawn uniformly on the unit sphere in ``dim``
dimensions. Sample ``i`` of group ``g(i)`` has a latent point ``z_i = c_g + spread·u_i``;
its query and target are two noisy views ``x_i = z_i + noise·e_i``, ``y_i = z_i + noise·e'_i``
(``u, e, e'`` standard normal scaled by ``1/sqrt(dim)``, so the scales are per-vector norms).

Members of one group are each other's hard negatives: their similarity is high (about
``1/(1+spread²)`` before view noise) while samples of different groups are nearly orthogonal.
A random batch of size B holds about ``B·group_size/N`` same-group samples; a good hard-batch
plan puts whole groups together. The ground truth is returned as ``groups``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .validation import check_positive_int


@dataclass
class PlantedPairs:
    """Paired embeddings with their planted groups.

    Attributes
    ----------
    queries : np.ndarray of shape (N, dim), float32
    targets : np.ndarray of shape (N, dim), float32
    groups : np.ndarray of shape (N,), int64
        Group id of every sample (the ground truth hard-negative structure).
    """

    queries: np.ndarray
    targets: np.ndarray
    groups: np.ndarray


def make_planted_pairs(
    n_samples: int = 4096,
    dim: int = 64,
    *,
    group_size: int = 32,
    spread: float = 0.6,
    noise: float = 0.3,
    shuffle: bool = True,
    seed: int | None = 0,
) -> PlantedPairs:
    """Generate paired embeddings with planted groups of mutual hard negatives.

    Parameters
    ----------
    n_samples : int
        N, number of (query, target) pairs.
    dim : int
        Embedding dimension d.
    group_size : int
        Samples per planted group (the last group may be smaller).
    spread : float
        Distance of members from their group centre: larger means looser groups.
    noise : float
        Difference between the two views of a sample: larger means a harder positive.
    shuffle : bool
        Shuffle the rows (so that the identity order is not already grouped).
    seed : int or None

    Returns
    -------
    PlantedPairs
    """
    n = check_positive_int(n_samples, "n_samples", minimum=2)
    d = check_positive_int(dim, "dim", minimum=2)
    g = check_positive_int(group_size, "group_size")
    if spread < 0 or noise < 0:
        raise ValueError(f"spread and noise must be >= 0, got {spread}, {noise}")
    rng = np.random.default_rng(seed)
    n_groups = -(-n // g)
    centres = rng.standard_normal((n_groups, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    groups = np.arange(n) // g
    scale = 1.0 / np.sqrt(d)
    latent = centres[groups] + spread * scale * rng.standard_normal((n, d))
    queries = latent + noise * scale * rng.standard_normal((n, d))
    targets = latent + noise * scale * rng.standard_normal((n, d))
    if shuffle:
        perm = rng.permutation(n)
        queries, targets, groups = queries[perm], targets[perm], groups[perm]
    return PlantedPairs(
        queries=queries.astype(np.float32),
        targets=targets.astype(np.float32),
        groups=groups.astype(np.int64),
    )
