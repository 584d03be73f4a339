"""Images, self-supervised: sklearn's bundled digits (8×8) and two augmented views per image.

The SimCLR-style pair of sample i is two independent random augmentations of image i (X = view
one, Y = view two). Views are redrawn every epoch from ``(seed, epoch)``, so a sampler that
plans from embeddings sees the same views the epoch trains on.

Augmentation (numpy/scipy only, per image): a random affine map (rotation ±15°, scale
0.9–1.1, shift ±1 px, bilinear), Gaussian pixel noise (σ = 1 on the 0–16 scale), then a
random 3×3 erased patch with probability 0.5. Images are scaled to [0, 1].

Split: stratified by class, 25% test, fixed seed 0 (the split is data, not an experiment
seed). ``load_digits`` ships with scikit-learn: nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

TEST_FRACTION = 0.25


@dataclass
class Digits:
    """Clean 8×8 images and labels, split into train and test.

    Attributes
    ----------
    train_images, test_images : np.ndarray of shape (n, 8, 8), float32 in [0, 1]
    train_labels, test_labels : np.ndarray of shape (n,), int64
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train_labels), "test": len(self.test_labels)}


def load(test_fraction: float = TEST_FRACTION) -> Digits:
    """The 1797 bundled digits, stratified train/test split (seed 0)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)
    labels = data.target.astype(np.int64)
    rng = np.random.default_rng(0)
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        test[rng.choice(rows, int(round(test_fraction * len(rows))), replace=False)] = True
    return Digits(images[~test], labels[~test], images[test], labels[test])


def augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random view of every image.

    Parameters
    ----------
    images : np.ndarray of shape (n, 8, 8), float32
    rng : np.random.Generator

    Returns
    -------
    np.ndarray of shape (n, 8, 8), float32
    """
    n = len(images)
    out = np.empty_like(images)
    angle = np.deg2rad(rng.uniform(-15, 15, n))
    scale = rng.uniform(0.9, 1.1, n)
    shift = rng.uniform(-1, 1, (n, 2))
    centre = np.array([3.5, 3.5])
    for i in range(n):
        c, s = np.cos(angle[i]) / scale[i], np.sin(angle[i]) / scale[i]
        matrix = np.array([[c, -s], [s, c]])
        offset = centre - matrix @ (centre + shift[i])
        out[i] = ndimage.affine_transform(images[i], matrix, offset=offset, order=1, cval=0.0)
    out += rng.normal(0, 1 / 16, out.shape).astype(np.float32)
    erase = rng.random(n) < 0.5
    corner = rng.integers(0, 6, (n, 2))
    for i in np.flatnonzero(erase):
        r, c = corner[i]
        out[i, r : r + 3, c : c + 3] = 0.0
    return np.clip(out, 0.0, 1.0)


def views(images: np.ndarray, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The two views of every image for ``(seed, epoch)``, shape (n, 8, 8) each."""
    rng = np.random.default_rng([int(seed), int(epoch), 0xD161])
    return augment(images, rng), augment(images, rng)
