"""Training and planning beyond one process.

* :mod:`hardbatch.distributed.torch_ddp` — ``torch.distributed`` helpers the sampler uses under
  DDP (collectives that are no-ops in a single process).
* :mod:`hardbatch.distributed.ray` — sharded planning on a Ray cluster (optional extra
  ``hardbatch[ray]``):

>>> from hardbatch.distributed import plan_on_ray
>>> plan = plan_on_ray("gcbs", queries=X, targets=Y, batch_size=64, shard_size=500_000,
...                    address="auto", seed=0, top_k=20)

This package imports neither: ``import hardbatch.distributed.torch_ddp`` loads no Ray code, and
the Ray planner's names below are loaded on first access (the ``ray`` library itself only when
:func:`plan_on_ray` runs).
"""

from __future__ import annotations

from typing import Any

#: Names re-exported from :mod:`hardbatch.distributed.ray`, loaded on first access.
_RAY_NAMES = ("border_edge_fraction", "coarse_shards", "plan_on_ray")


def __getattr__(name: str) -> Any:
    # PEP 562 lazy export: the sampler imports torch_ddp through this package and must not pay
    # for (or depend on) the Ray planner's imports.
    if name in _RAY_NAMES:
        from . import ray

        return vars(ray)[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_RAY_NAMES)
