"""Planning beyond one machine (optional extra ``hardbatch[ray]``).

>>> from hardbatch.distributed import plan_on_ray
>>> plan = plan_on_ray("gcbs", queries=X, targets=Y, batch_size=64, shard_size=500_000,
...                    address="auto", seed=0, top_k=20)

Ray is imported only when :func:`plan_on_ray` runs, so this package imports without it.
"""

from .ray import border_edge_fraction, coarse_shards, plan_on_ray

__all__ = ["border_edge_fraction", "coarse_shards", "plan_on_ray"]
