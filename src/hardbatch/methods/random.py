"""The random baseline: a seeded shuffle cut into batches, reshuffled every epoch."""

from __future__ import annotations

import numpy as np

from ..batching import cut_order, epoch_rng
from ..plans import BatchPlan
from .base import Planner, register_method


@register_method
class RandomBatches(Planner):
    """Uniformly random batches (what a shuffling DataLoader gives).

    Epoch ``e`` is a fresh permutation drawn from ``(seed, e)``. Needs no embeddings:
    ``hardbatch.plan("random", n_samples=N, batch_size=64)`` works.
    """

    name = "random"
    uses_embeddings = False

    def _plan(self, queries, targets, *, n, batch_size, seed, norms) -> BatchPlan:
        batches = _shuffled(n, batch_size, seed, 0, bool(self.drop_last))
        return self._make_plan(batches, n=n, seed=seed)

    @classmethod
    def epoch_batches(cls, plan: BatchPlan, epoch: int) -> np.ndarray:
        return _shuffled(
            plan.n_samples, plan.batch_size, int(plan.seed or 0), epoch, plan.drop_last
        )


def _shuffled(n: int, batch_size: int, seed: int, epoch: int, drop_last: bool) -> np.ndarray:
    return cut_order(epoch_rng(seed, epoch).permutation(n), batch_size, drop_last=drop_last)
