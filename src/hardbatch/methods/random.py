"""The random baseline: a seeded shuffle cut into batches, reshuffled every epoch."""

from __future__ import annotations

from ..batching import reshuffle_epoch
from ..plans import BatchPlan
from .base import Planner, register_method


@register_method
class RandomBatches(Planner):
    """Uniformly random batches (what a shuffling DataLoader gives).

    Epoch ``e`` is a fresh permutation drawn from ``(seed, e)`` (epoch rule ``"reshuffle"``).
    Needs no embeddings: ``hardbatch.plan("random", n_samples=N, batch_size=64)`` works.
    """

    name = "random"
    uses_embeddings = False
    epoch_rule = "reshuffle"

    # Its own signature, without ``hardness``: the random plan is the dial's 0 already.
    def __init__(self, batch_size: int = 64, *, seed: int | None = 0, drop_last: bool = False):
        super().__init__(batch_size, seed=seed, drop_last=drop_last)

    def _plan(self, queries, targets, *, n, batch_size, seed, norms) -> BatchPlan:
        batches = reshuffle_epoch(n, batch_size, seed=seed, epoch=0, drop_last=bool(self.drop_last))
        return self._make_plan(batches, n=n, seed=seed)
