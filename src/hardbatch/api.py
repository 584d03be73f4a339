"""``hardbatch.plan``: one call for every method."""

from __future__ import annotations

from typing import Any

from .methods import get_method
from .methods.base import COMMON_PARAMS
from .plans import BatchPlan
from .validation import ArrayLike


def plan(
    method: str,
    queries: ArrayLike | None = None,
    targets: ArrayLike | None = None,
    *,
    batch_size: int = 64,
    seed: int | None = 0,
    drop_last: bool = False,
    n_samples: int | None = None,
    duplicate_ids: Any = None,
    **params: Any,
) -> BatchPlan:
    """Plan one epoch of batches with a registered method.

    Parameters
    ----------
    method : str
        ``"gcbs"``, ``"random"``, ... (see :func:`hardbatch.available_methods`).
    queries, targets : array-like of shape (N, d)
        Paired embeddings (numpy array, memmap or torch tensor; float16/32/64); row i of
        ``queries`` is the positive of row i of ``targets``.
    batch_size : int
        Samples per batch (2 <= batch_size <= N).
    seed : int or None
        Makes the plan deterministic; recorded in the plan.
    drop_last : bool
        Leftover rule when ``N % batch_size != 0`` (see :mod:`hardbatch.batching`).
    n_samples : int, optional
        N, for methods that need no embeddings (``random``).
    duplicate_ids : sequence of N hashable ids, optional
        Samples with equal ids never share a batch (every method; see
        :meth:`hardbatch.Planner.fit`).
    **params
        Method parameters, e.g. ``quantile=0.999`` or ``top_k=20`` for GCBS, and the
        method's per-sample fit arrays (its ``fit_params``, e.g. B3's ``labels=`` and
        ``groups=``), which go to :meth:`~hardbatch.Planner.fit` instead of the constructor.

    Returns
    -------
    BatchPlan

    Examples
    --------
    >>> plan = hardbatch.plan("gcbs", queries=X, targets=Y, batch_size=64, quantile=0.999)
    >>> plan.batches.shape
    (157, 64)
    """
    cls = get_method(method)
    allowed = [p for p in cls.param_names() if p not in COMMON_PARAMS]
    fit_data = {k: params.pop(k) for k in cls.fit_params if k in params}
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"method {method!r} got unknown parameter(s) {unknown}; "
            f"its parameters are: {', '.join([*allowed, *cls.fit_params]) or '(none)'}"
        )
    planner = cls(batch_size=batch_size, seed=seed, drop_last=drop_last, **params)
    return planner.fit(
        queries, targets, n_samples=n_samples, duplicate_ids=duplicate_ids, **fit_data
    ).plan_
