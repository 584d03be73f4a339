"""Planning while a model trains: the tools every refresh policy uses.

:func:`embed_pass` embeds samples with the current model (no grad, split across DDP ranks);
:class:`Planning` holds one sampler's settings and plans on rank 0, broadcasting the plan, and
logs each planning run with its seconds (:class:`Stopwatch`). The policies that decide *when*
to plan are in :mod:`hardbatch.refresh`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .api import plan as make_plan
from .batching import PAD
from .distributed import torch_ddp as ddp
from .hardness import as_schedule, check_hardness_param, is_auto
from .leftovers import rotating_leftovers
from .methods import get_method
from .methods.base import Planner
from .plans import BatchPlan
from .recording import to_numpy_rows
from .validation import check_positive_int

#: ``embed_fn(indices) -> (queries, targets)``: embeddings of the given samples, shape (n, d).
EmbedFn = Callable[[np.ndarray], tuple[Any, Any]]


# ---------------------------------------------------------------------------------- embed pass
# ---------------------------------------------------------------------------------- embed pass
def embed_pass(
    embed_fn: EmbedFn,
    indices: np.ndarray,
    *,
    batch_size: int = 256,
    progress: bool | None = None,
    desc: str = "hardbatch: embedding",
) -> tuple[np.ndarray, np.ndarray]:
    """Embed ``indices`` with ``embed_fn`` in batches, without gradients.

    Under ``torch.distributed`` the indices are split across the ranks (contiguous shards),
    each rank embeds its shard and the rows are all-gathered, so every rank returns the same
    full arrays.

    Parameters
    ----------
    embed_fn : callable
        ``embed_fn(idx) -> (queries, targets)``; ``idx`` is an int64 array of sample ids and
        the results are (len(idx), d) arrays or tensors. It should put the model in eval mode
        itself if it wants to (the sampler only disables gradients). Under DDP, call the
        unwrapped model (``ddp_model.module``): the wrapper's forward may run collectives.
    indices : np.ndarray of shape (n,)
        Sample ids to embed, in the order the rows are returned.
    batch_size : int
        At most this many ids per ``embed_fn`` call (the rows are split evenly over the calls).
    progress : bool or None
        Progress bar (rank 0 only); ``None``: only for n >= 10 000.

    Returns
    -------
    queries, targets : np.ndarray of shape (n, d), float32
    """
    indices = np.asarray(indices, dtype=np.int64)
    batch_size = check_positive_int(batch_size, "embed_batch_size")
    world, rank = ddp.world_size(), ddp.rank()
    shards = np.array_split(indices, world)
    local = shards[rank]
    # Every rank makes the same number of embed_fn calls (shards differ by at most one row),
    # so an embed_fn that runs collectives (e.g. a DDP forward syncing buffers) cannot hang.
    n_calls = -(-len(shards[0]) // batch_size)
    chunks = [c for c in np.array_split(local, n_calls) if len(c)] if n_calls else []
    show = (len(indices) >= 10_000 if progress is None else bool(progress)) and rank == 0
    q_parts: list[np.ndarray] = []
    t_parts: list[np.ndarray] = []
    with torch.no_grad(), tqdm(total=len(local), desc=desc, disable=not show, unit="ex") as bar:
        for chunk in chunks:
            q, t = embed_fn(chunk)
            q, t = to_numpy_rows(q, "embed_fn queries"), to_numpy_rows(t, "embed_fn targets")
            if len(q) != len(chunk) or len(t) != len(chunk):
                raise ValueError(
                    f"embed_fn returned {len(q)} query and {len(t)} target rows for "
                    f"{len(chunk)} indices"
                )
            q_parts.append(q)
            t_parts.append(t)
            bar.update(len(chunk))
    queries = np.concatenate(q_parts) if q_parts else None
    targets = np.concatenate(t_parts) if t_parts else None
    if world > 1:
        queries = ddp.all_gather_shards(queries, len(indices))
        targets = ddp.all_gather_shards(targets, len(indices))
    return queries, targets


class Stopwatch:
    """Accumulates named durations (seconds) for the sampler's ``history_``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str) -> _Lap:
        return _Lap(self, name)


class _Lap:
    def __init__(self, watch: Stopwatch, name: str) -> None:
        self.watch, self.name = watch, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self.start
        self.watch.seconds[self.name] = self.watch.seconds.get(self.name, 0.0) + elapsed


# ---------------------------------------------------------------------------------- planning
class Planning:
    """What a refresh policy plans with: one sampler's settings, its latest plan and history.

    Made by :class:`hardbatch.HardBatchSampler` once its arguments are reconciled; the policies
    call it to embed, plan (on rank 0, broadcast to every rank) and log the planning run.

    Attributes
    ----------
    method_cls : type[Planner]
        The registered method; its class attributes (``replans_each_epoch``,
        ``uses_embeddings``, ``fit_params``) are what the policies read.
    plan_ : BatchPlan or None
        The latest plan made or served.
    history_ : list of dict
        One entry per planning run (see :attr:`hardbatch.HardBatchSampler.history_`).
    """

    def __init__(
        self,
        *,
        method: str,
        n_samples: int,
        batch_size: int,
        drop_last: bool,
        seed: int,
        method_params: dict[str, Any] | None = None,
        duplicate_ids: np.ndarray | None = None,
        embeddings: tuple[Any, Any] | None = None,
        embed_fn: EmbedFn | None = None,
        embed_batch_size: int = 256,
        progress: bool | None = None,
        shuffle_batches: bool = False,
        plan: BatchPlan | None = None,
    ) -> None:
        self.method = method
        self.method_cls: type[Planner] = get_method(method)
        self.n_samples = n_samples
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.seed = seed
        self.method_params = dict(method_params or {})
        if "hardness" in self.method_params:  # a bad dial fails now, not at the first epoch
            check_hardness_param(self.method_params["hardness"])
        self.duplicate_ids = duplicate_ids
        self.embeddings = embeddings
        self.embed_fn = embed_fn
        self.embed_batch_size = embed_batch_size
        self.progress = progress
        self.shuffle_batches = shuffle_batches
        self.plan_: BatchPlan | None = plan
        self.history_: list[dict[str, Any]] = []

    def epoch_seed(self, epoch: int, step: int = 0) -> int:
        """The plan seed of ``epoch`` (and of the re-plan at ``step`` within it)."""
        state = np.random.SeedSequence([self.seed, int(epoch), int(step)]).generate_state(1)
        return int(state[0] >> 1)

    def full_batch_count(self) -> int:
        """Batches of an epoch cut from N in order: the full ones plus the leftover rule."""
        n_full, rest = divmod(self.n_samples, self.batch_size)
        return n_full + (1 if rest and not self.drop_last else 0)

    def batch_count(self, method: str | None = None) -> int:
        """Batches of every epoch, from what each rank knows locally (N, batch size,
        ``drop_last``, the method's fit arrays such as B3's ``groups``): the method's
        :meth:`~hardbatch.methods.base.Planner.count_batches`, no planning, no collective."""
        method_cls = self.method_cls if method is None else get_method(method)
        fit_data = {}
        if method is None or method == self.method:
            fit_data = {
                k: self.method_params[k]
                for k in method_cls.fit_params
                if self.method_params.get(k) is not None
            }
        return method_cls.count_batches(
            self.n_samples, self.batch_size, drop_last=self.drop_last, **fit_data
        )

    def left_out(self, epoch: int, groups: np.ndarray | None = None) -> np.ndarray:
        """The samples a re-planned epoch ``epoch >= 1`` leaves out with ``drop_last``: a
        window sliding over one permutation of the sampler's seed
        (:func:`hardbatch.leftovers.rotating_leftovers`), so they differ from epoch to epoch."""
        return rotating_leftovers(
            self.n_samples, self.batch_size, seed=self.seed, epoch=epoch, groups=groups
        )

    def plan(
        self,
        queries: Any,
        targets: Any,
        *,
        seed: int,
        subset: np.ndarray | None = None,
        method: str | None = None,
        epoch: int | None = None,
    ) -> BatchPlan:
        """Plan on rank 0 and broadcast the plan (every rank serves the same batches).

        ``subset``: plan only these samples (their ids become ``0..len(subset)-1``; the
        per-sample arrays follow). ``method``: another method than the sampler's (the random
        first epoch of ``"recorded"``), planned without the sampler's method parameters.
        ``epoch``: the epoch a whole-set plan serves, made with the hardness of the epoch (a
        ``hardness`` schedule becomes ``schedule.at(epoch)`` in the plan's params); from epoch 1
        on, with ``drop_last``, its batches leave out :meth:`left_out` instead of the end of its
        own cut (the plan's ``info["left_out_epoch"]`` says so).
        """
        method = method or self.method
        method_cls = get_method(method)
        plan = None
        if ddp.rank() == 0:
            n = self.n_samples if subset is None else len(subset)
            params = dict(self.method_params) if method == self.method else {}
            if epoch is not None and "hardness" in params and not is_auto(params["hardness"]):
                params["hardness"] = as_schedule(params["hardness"]).at(epoch)
            if self.duplicate_ids is not None:
                params["duplicate_ids"] = self.duplicate_ids
            if subset is not None and method == self.method:
                params = method_cls.subset_params(params, subset_samples=n)
            if subset is not None:  # per-sample arrays follow the subset
                for key in ("duplicate_ids", *method_cls.fit_params):
                    if params.get(key) is not None:
                        params[key] = np.asarray(params[key])[subset]
            uses = method_cls.uses_embeddings
            plan = make_plan(
                method,
                queries if uses else None,
                targets if uses else None,
                batch_size=self.batch_size,
                seed=seed,
                drop_last=self.drop_last,
                n_samples=n,
                **params,
            )
            if epoch is not None and epoch >= 1 and subset is None and plan.rotates_leftovers:
                plan.batches = plan.leaving_out(self.left_out(epoch, plan.sample_groups), epoch)
                plan.info["left_out_epoch"] = int(epoch)
        return ddp.broadcast_object(plan)

    def embed(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``embed_fn`` over ``indices`` (:func:`embed_pass`)."""
        return embed_pass(
            self.embed_fn, indices, batch_size=self.embed_batch_size, progress=self.progress
        )

    def initial_embeddings(self) -> tuple[Any, Any]:
        """The given ``embeddings``, else one ``embed_fn`` pass over every sample."""
        if self.embeddings is not None:
            return self.embeddings
        return self.embed(np.arange(self.n_samples))

    def log(
        self, plan: BatchPlan, *, epoch: int, step: int, policy: str, n: int, watch: Stopwatch
    ) -> None:
        """Keep ``plan`` as the latest and record the planning run in ``history_``."""
        self.plan_ = plan
        seconds = dict(watch.seconds)
        seconds["total"] = sum(seconds.values())
        self.history_.append(
            {"epoch": epoch, "step": step, "policy": policy, "n_samples": n, "seconds": seconds}
        )


def shuffle_full_rows(batches: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Permute the full rows of a batch array among themselves; short (padded) rows keep
    their positions (the short last batch stays last)."""
    full = np.flatnonzero(~(batches == PAD).any(axis=1))
    order = np.arange(len(batches))
    order[full] = full[rng.permutation(len(full))]
    return batches[order]


__all__ = ["EmbedFn", "Planning", "Stopwatch", "embed_pass", "shuffle_full_rows"]
