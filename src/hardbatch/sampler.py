"""Stage 5: :class:`HardBatchSampler`, a PyTorch batch sampler that serves hard-batch plans.

>>> sampler = HardBatchSampler(n_samples=len(ds), batch_size=64, method="gcbs", seed=0,
...                            embed_fn=embed, refresh="epoch")
>>> loader = DataLoader(ds, batch_sampler=sampler)
>>> for epoch in range(n_epochs):
...     sampler.set_epoch(epoch)          # re-plans from fresh embeddings at the epoch start
...     for batch in loader: ...

Where the plan comes from
-------------------------
* ``plan=BatchPlan`` — a static plan (e.g. B3 from teacher embeddings, or a saved ``.npz``):
  epoch ``e`` uses ``plan.for_epoch(e)`` (B3 reshuffles its clusters, random reshuffles, GCBS
  keeps its batches).
* ``embeddings=(X, Y)`` — plan once from given (teacher) embeddings, then as above.
* ``embed_fn=`` with ``refresh="epoch" | "steps"`` — re-plan from the current model
  (see :mod:`hardbatch.refresh` for the policies — one class each — and their staleness).
* ``refresh="recorded"`` — re-plan each epoch from the embeddings the training step computed
  (:meth:`HardBatchSampler.record`), with no extra forward pass.
* methods that need no embeddings (``"random"``) — just ``n_samples``.

Guarantees: ``len(sampler)`` is the exact number of batches of the current epoch; each epoch
every sample appears exactly once (the ``drop_last`` rule of :mod:`hardbatch.batching` aside);
batches are deterministic for ``(seed, epoch)`` and the embeddings they were planned from;
under ``torch.distributed`` every rank serves the same plan (planned on rank 0 and broadcast)
and, with ``shard=True``, its own contiguous ``batch_size / world_size`` slice of every global
batch (see :mod:`hardbatch.distributed.torch_ddp`). Padding (``-1``) never reaches the DataLoader.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from .batching import epoch_rng
from .checkpoint import STATE_VERSION
from .distributed import torch_ddp as ddp
from .methods import get_method
from .methods.base import COMMON_PARAMS, check_planning
from .planning import EmbedFn, Planning, shuffle_full_rows
from .plans import BatchPlan
from .recording import BatchTracker, EmbeddingRecorder, to_numpy_rows
from .refresh import RefreshPolicy, make_refresh_policy
from .validation import (
    ArrayLike,
    check_batch_size,
    check_optional_bool,
    check_positive_int,
    check_seed,
)

#: Default ``batch_size`` when neither it nor a plan is given.
DEFAULT_BATCH_SIZE = 64


def is_static_method(method: str) -> bool:
    """Whether a method's plan is made once and varied per epoch by its own rule.

    Reads the method's declared ``Planner.replans_each_epoch``: true for methods that read no
    embeddings (``random``) and for methods with their own per-epoch rule (``b3`` reshuffles
    static clusters); false for methods meant to be re-planned from fresh embeddings (``gcbs``).
    """
    return not get_method(method).replans_each_epoch


class HardBatchSampler(Sampler[list[int]]):
    """Batches of hard negatives for a ``DataLoader(batch_sampler=...)``.

    Parameters
    ----------
    n_samples : int, optional
        N, the dataset length. Taken from ``plan`` or ``embeddings`` when omitted.
    batch_size : int, optional
        Samples per **global** batch (default 64, or the plan's). Under DDP with ``shard=True``
        each of the W ranks gets ``batch_size / W`` of them per step (must divide evenly).
    method : str
        Registered method (``"gcbs"`` default, ``"b3"``, ``"random"``, ...); with ``plan=``,
        the plan's method.
    seed : int or None
        Seeds every plan; epoch ``e`` (and the step of a ``"steps"`` re-plan) derive their own
        seeds from it, so batches are deterministic per ``(seed, epoch)``.
    drop_last : bool, optional
        Leftover rule (:mod:`hardbatch.batching`); default ``False``, or the plan's. A value
        that differs from the given plan's is a ``ValueError``.
    plan : BatchPlan, optional
        A static plan; epoch ``e`` uses ``plan.for_epoch(e)``.
    embeddings : (queries, targets), optional
        (N, d) arrays or tensors (e.g. teacher embeddings, HF dataset columns via
        :func:`hardbatch.integrations.huggingface.columns_to_embeddings`): plan once from
        them; with ``refresh="recorded"`` they are the first epoch's embeddings.
    embed_fn : callable, optional
        ``embed_fn(indices) -> (queries, targets)``: embeddings of the samples ``indices``
        (int64 array) with the current model, shape (len(indices), d). Called in batches of
        ``embed_batch_size`` under ``torch.no_grad()``; switch the model to eval mode inside
        it if you want (and back). Under DDP the ids are split across ranks and gathered.
    refresh : {"auto", "never", "epoch", "recorded", "steps"}
        When the plan is re-made (:mod:`hardbatch.refresh`). ``"auto"``: ``"never"`` for a
        given plan or a static method (``b3``, ``random``), ``"epoch"`` when ``embed_fn`` is
        given, else ``"never"`` (plan once from ``embeddings``).
    refresh_every : int, optional
        With ``refresh="steps"``: batches between re-plans of the remaining samples.
    initial : {"auto", "embed", "random"}
        With ``refresh="recorded"``, how the first epoch is planned before anything was
        recorded: ``"embed"`` one pass of ``embed_fn`` (or the given ``embeddings``),
        ``"random"`` random batches. ``"auto"``: ``"embed"`` when possible, else ``"random"``.
    recorder : EmbeddingRecorder, optional
        Where ``refresh="recorded"`` keeps embeddings (default: a new one, ``sampler.recorder``).
    shuffle_batches : bool
        Visit the full batches of an epoch in a seeded random order (the short last batch
        stays last). GCBS batches are cut from one ordering, so neighbouring batches are alike;
        the paper visits them in order (the default).
    embed_batch_size : int
        At most this many samples per ``embed_fn`` call.
    shard : bool
        Under DDP, give each rank its slice of every global batch (default). ``False``: yield
        whole batches on every rank, for frameworks that shard the batch stream themselves
        (accelerate, the sentence-transformers trainer).
    num_replicas, rank : int, optional
        World size and rank for ``shard`` (default: from ``torch.distributed``).
    duplicate_ids : array-like of shape (N,), optional
        False-negative guard: samples with equal ids never share a batch (passed to
        ``hardbatch.plan``; needs a method that supports it).
    progress : bool or None
        Progress bar for the embedding pass (``None``: only for N >= 10 000).
    **method_params
        Passed to ``hardbatch.plan`` (e.g. ``quantile=0.999``, ``top_k=20``,
        ``cluster_size=32``).

    Attributes
    ----------
    epoch : int
        Set by :meth:`set_epoch`.
    policy : RefreshPolicy
        The refresh policy serving the epochs (:func:`hardbatch.refresh.make_refresh_policy`);
        ``refresh`` is its name.
    planning : Planning
        The settings the policy plans with (``planning.epoch_seed(e)`` is epoch ``e``'s seed).
    plan_ : BatchPlan or None
        The latest plan made or served.
    recorder : EmbeddingRecorder or None
        With ``refresh="recorded"``.
    history_ : list of dict
        One entry per planning run: ``epoch``, ``step``, ``policy``, ``n_samples`` and
        ``seconds`` (``embed``, ``plan``, ``sync``, ``total``) — the refresh overhead.

    Notes
    -----
    Staleness. A plan is made from embeddings that age while the model trains. ``"epoch"``:
    fresh at the epoch start, one epoch old at its end, at the price of a no-grad pass over
    the data (24–38% of an epoch in the GCBS paper). ``"recorded"``: no extra pass, but each
    sample's embedding dates from the step that trained on it in the previous epoch (train
    mode, before that step's update) — about one epoch old on average, and samples recorded
    at different moments are compared with each other. ``"steps"``: at most
    ``refresh_every`` steps old for the samples still to come, at the price of re-embedding
    them at every re-plan. See :mod:`hardbatch.refresh`.

    Collectives. Under ``torch.distributed`` the embedding pass, the merge of recordings and
    the plan broadcast are collectives; they run only when an epoch starts to be iterated, so
    every rank must iterate the sampler at the same points, as DataLoaders in DDP do.
    ``len()``, ``set_epoch``, ``state_dict`` and ``load_state_dict`` are local: any rank may
    call them alone (``len()`` comes from the method's count rule, never from a plan).

    Checkpoints. :meth:`state_dict` / :meth:`load_state_dict` resume mid-epoch with exactly
    the batches the uninterrupted run would have served.

    Leftovers. With ``drop_last`` the samples left out change every epoch (from epoch 1 on,
    seeded; :func:`hardbatch.leftovers.rotating_leftovers`), so none is left out of more than
    its share of epochs.
    """

    def __init__(
        self,
        n_samples: int | None = None,
        batch_size: int | None = None,
        method: str | None = None,
        *,
        seed: int | None = 0,
        drop_last: bool | None = None,
        plan: BatchPlan | None = None,
        embeddings: tuple[ArrayLike, ArrayLike] | None = None,
        embed_fn: EmbedFn | None = None,
        refresh: str = "auto",
        refresh_every: int | None = None,
        initial: str = "auto",
        recorder: EmbeddingRecorder | None = None,
        shuffle_batches: bool = False,
        embed_batch_size: int = 256,
        shard: bool = True,
        num_replicas: int | None = None,
        rank: int | None = None,
        duplicate_ids: ArrayLike | None = None,
        progress: bool | None = None,
        **method_params: Any,
    ) -> None:
        self.plan = plan
        self.embeddings = embeddings
        self.embed_fn = embed_fn
        self.refresh_every = refresh_every
        self.shuffle_batches = bool(shuffle_batches)
        self.embed_batch_size = check_positive_int(embed_batch_size, "embed_batch_size")
        self.shard = bool(shard)
        self.num_replicas = num_replicas
        self.rank = rank
        self.progress = check_optional_bool(progress, "progress")
        self.method_params = dict(method_params)
        self.epoch = 0

        if plan is not None and not isinstance(plan, BatchPlan):
            raise ValueError(f"plan must be a hardbatch.BatchPlan, got {type(plan).__name__}")
        if plan is not None and method is not None and method != plan.method:
            raise ValueError(f"method={method!r} but the plan was made with {plan.method!r}")
        self.method = plan.method if plan is not None else (method or "gcbs")
        if plan is None:
            get_method(self.method)  # unknown method -> ValueError listing the known ones
            self._check_method_params()
        elif method_params:
            raise ValueError(
                f"method parameters {sorted(method_params)} have no effect with a given plan"
            )

        self.n_samples = self._resolve_n_samples(n_samples)
        if plan is not None:
            if batch_size is not None and int(batch_size) != plan.batch_size:
                raise ValueError(
                    f"batch_size={batch_size} but the plan has batch_size={plan.batch_size}"
                )
            batch_size = plan.batch_size
            if drop_last is not None and drop_last != plan.drop_last:
                raise ValueError(
                    f"drop_last={drop_last} but the plan was made with drop_last="
                    f"{plan.drop_last} (a plan serves its own leftover rule; re-plan to change it)"
                )
            drop_last = plan.drop_last
        drop_last = False if drop_last is None else drop_last
        self.batch_size = check_batch_size(
            DEFAULT_BATCH_SIZE if batch_size is None else batch_size, self.n_samples
        )
        if not isinstance(drop_last, (bool, np.bool_)):
            raise ValueError(f"drop_last must be True or False, got {drop_last!r}")
        self.drop_last = bool(drop_last)
        seed = check_seed(seed)
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0] >> 1)
            seed = int(ddp.broadcast_object(seed))  # one seed for every rank
        self.seed = seed
        self.duplicate_ids = None if duplicate_ids is None else np.asarray(duplicate_ids)
        if self.duplicate_ids is not None and len(self.duplicate_ids) != self.n_samples:
            raise ValueError(
                f"duplicate_ids must have N={self.n_samples} entries, got {len(self.duplicate_ids)}"
            )
        if self.embeddings is not None:
            self.embeddings = self._check_embeddings(embeddings)
        if plan is None:
            # The method's own checks, now rather than at the first epoch.
            check_planning(
                self.method,
                self.method_params,
                n_samples=self.n_samples,
                batch_size=self.batch_size,
                drop_last=self.drop_last,
                seed=self.seed,
                duplicate_ids=self.duplicate_ids,
            )

        self.initial = initial
        self.planning = Planning(
            method=self.method,
            n_samples=self.n_samples,
            batch_size=self.batch_size,
            drop_last=self.drop_last,
            seed=self.seed,
            method_params=self.method_params,
            duplicate_ids=self.duplicate_ids,
            embeddings=self.embeddings,
            embed_fn=embed_fn,
            embed_batch_size=self.embed_batch_size,
            progress=progress,
            shuffle_batches=self.shuffle_batches,
            plan=plan,
        )
        self.policy: RefreshPolicy = make_refresh_policy(
            refresh,
            self.planning,
            plan=plan,
            refresh_every=refresh_every,
            initial=initial,
            recorder=recorder,
        )
        self.recorder: EmbeddingRecorder | None = self.policy.recorder
        self.tracker: BatchTracker | None = BatchTracker() if self.policy.records else None
        self._cache: tuple[int, np.ndarray] | None = None
        self._last_iter_epoch: int | None = None
        self._served: tuple[int, int] = (0, 0)  # (epoch, batches handed out of it)
        self._resume: tuple[int, int] | None = None  # (epoch, first batch) after a load

    # ------------------------------------------------------------------ setup checks
    def _check_method_params(self) -> None:
        cls = get_method(self.method)
        allowed = [p for p in cls.param_names() if p not in COMMON_PARAMS]
        allowed += list(cls.fit_params)
        unknown = sorted(set(self.method_params) - set(allowed))
        if unknown:
            raise ValueError(
                f"method {self.method!r} got unknown parameter(s) {unknown}; "
                f"its parameters are: {', '.join(allowed) or '(none)'}"
            )

    def _resolve_n_samples(self, n_samples: int | None) -> int:
        candidates = []
        if n_samples is not None:
            candidates.append(("n_samples", check_positive_int(n_samples, "n_samples")))
        if self.plan is not None:
            candidates.append(("plan.n_samples", self.plan.n_samples))
        if self.embeddings is not None:
            if not isinstance(self.embeddings, (tuple, list)) or len(self.embeddings) != 2:
                raise ValueError("embeddings must be a pair (queries, targets) of (N, d) arrays")
            candidates.append(("embeddings rows", int(self.embeddings[0].shape[0])))
        if not candidates:
            raise ValueError("give n_samples (the dataset length), a plan or embeddings")
        name0, n0 = candidates[0]
        for name, n in candidates[1:]:
            if n != n0:
                raise ValueError(f"{name0}={n0} does not match {name}={n}")
        return n0

    def _check_embeddings(self, embeddings: Any) -> tuple[Any, Any]:
        queries, targets = embeddings
        for a, name in ((queries, "queries"), (targets, "targets")):
            if len(getattr(a, "shape", ())) != 2:
                raise ValueError(f"embeddings {name} must have shape (N, d)")
            if int(a.shape[0]) != self.n_samples:
                raise ValueError(
                    f"embeddings {name} have {a.shape[0]} rows, expected N={self.n_samples}"
                )
        return queries, targets

    # ------------------------------------------------------------------ policy views
    @property
    def refresh(self) -> str:
        """Name of the refresh policy (``"auto"`` resolved)."""
        return self.policy.name

    @property
    def plan_(self) -> BatchPlan | None:
        """The latest plan made or served."""
        return self.planning.plan_

    @property
    def history_(self) -> list[dict[str, Any]]:
        """One entry per planning run (see the class docstring)."""
        return self.planning.history_

    # ------------------------------------------------------------------ sampler protocol
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next iteration serves (call before each epoch)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Exact number of batches this epoch (per rank: one slice per global batch).

        Counted locally, never by planning: no collective, so one rank alone may call it.
        After :meth:`load_state_dict` (without ``replay``), the batches still to serve.
        """
        if self._cache is not None and self._cache[0] == self.epoch:
            n = len(self._cache[1])
        else:
            n = self.policy.n_batches(self.epoch)
        if self._resume is not None and self._resume[0] == self.epoch:
            n -= self._resume[1]
        return n

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        world, rank = self._replicas()
        start = 0
        if self._resume is not None:
            if self._resume[0] == epoch:
                start = self._resume[1]
                self._last_iter_epoch = None  # a resumed epoch is not iterated twice
            self._resume = None
        if self.policy.replans and self._last_iter_epoch == epoch:
            warnings.warn(
                f"HardBatchSampler: epoch {epoch} is iterated again with the same plan; call "
                "sampler.set_epoch(epoch) before each epoch so that it re-plans",
                RuntimeWarning,
                stacklevel=2,
            )
        self._last_iter_epoch = epoch
        if self.tracker is not None:
            self.tracker.reset()
        self._served = (epoch, start)
        for row in self.policy.epoch_rows(epoch, self._batches_for, start):
            batch = self._share(row, world, rank)
            if self.tracker is not None:
                self.tracker.push(self.recorder, batch)
            self._served = (epoch, self._served[1] + 1)
            yield batch.tolist()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, batches_done: int | None = None) -> dict[str, Any]:
        """The sampler's position and what it needs to go on exactly, as plain data.

        Save it with the model's checkpoint (:func:`hardbatch.checkpoint.save_state` writes
        it); :meth:`load_state_dict` on a sampler made with the same arguments continues where
        this one was. It holds the epoch, how many of its batches were served, the epoch's
        batches if they were planned (a resumed ``refresh="epoch"`` epoch is never re-planned
        from the checkpoint's later weights), and the policy's state: a plan made once
        (``"never"``; a given plan is not stored), this rank's recordings (``"recorded"``),
        the rows served and planned in this epoch (``"steps"``). No collective.

        Parameters
        ----------
        batches_done : int, optional
            Batches of the current epoch already trained on (default: those handed out; a
            DataLoader with workers prefetches, so pass the steps taken then).
        """
        epoch, served = self._served
        served = served if epoch == self.epoch else 0
        if batches_done is not None:
            if isinstance(batches_done, bool) or not 0 <= int(batches_done) <= served:
                raise ValueError(f"batches_done must be in [0, {served}], got {batches_done!r}")
            served = int(batches_done)
        cached = self._cache is not None and self._cache[0] == self.epoch
        return {
            "version": STATE_VERSION,
            "method": self.method,
            "n_samples": self.n_samples,
            "batch_size": self.batch_size,
            "drop_last": self.drop_last,
            "refresh": self.refresh,
            "seed": self.seed,
            "epoch": self.epoch,
            "served": served,
            "batches": self._cache[1] if cached else None,
            "policy": self.policy.state_dict(self.epoch, served),
        }

    def load_state_dict(self, state: dict[str, Any], *, replay: bool = False) -> None:
        """Continue from :meth:`state_dict`: the next iteration serves the rest of its epoch.

        The state's seed and epoch replace the sampler's. ``replay=True`` serves the epoch
        from its first batch again (the same batches): for wrappers that skip the batches
        already trained themselves (accelerate's ``skip_first_batches``, which the
        transformers trainer uses when it resumes). No collective.

        Raises
        ------
        ValueError
            A state of another format, or of a sampler with another method, N, batch size,
            ``drop_last`` or refresh policy.
        """
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"not a hardbatch sampler state of version {STATE_VERSION}")
        for key in ("method", "n_samples", "batch_size", "drop_last", "refresh"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"the state was saved by a sampler with {key}={state[key]!r}, this one has "
                    f"{key}={getattr(self, key)!r}"
                )
        self.seed = self.planning.seed = int(state["seed"])
        self.set_epoch(int(state["epoch"]))
        batches = state["batches"]
        self._cache = None if batches is None else (self.epoch, np.asarray(batches, np.int64))
        self.policy.load_state_dict(state["policy"], self.epoch)
        served = 0 if replay else int(state["served"])
        self._resume = (self.epoch, served)
        self._served = (self.epoch, served)

    # ------------------------------------------------------------------ DDP share
    def _replicas(self) -> tuple[int, int]:
        if not self.shard:
            return 1, 0
        world = self.num_replicas if self.num_replicas is not None else ddp.world_size()
        rank = self.rank if self.rank is not None else ddp.rank()
        world = check_positive_int(world, "num_replicas")
        if not 0 <= int(rank) < world:
            raise ValueError(f"rank must be in [0, {world}), got {rank}")
        if self.batch_size % world:
            raise ValueError(
                f"batch_size={self.batch_size} is the global batch: it must be a multiple of the "
                f"{world} ranks (each gets batch_size / world_size per step)"
            )
        return world, int(rank)

    def _share(self, batch: np.ndarray, world: int, rank: int) -> np.ndarray:
        """This rank's contiguous slice of a global batch.

        A short last batch is split as evenly as possible; when it has fewer samples than
        ranks, the ranks left without one repeat a sample of it (so no rank gets an empty
        batch and every rank takes the same number of steps).
        """
        if world == 1:
            return batch
        if len(batch) == self.batch_size:
            per = self.batch_size // world
            return batch[rank * per : (rank + 1) * per]
        part = np.array_split(batch, world)[rank]
        return part if len(part) else batch[[rank % len(batch)]]

    # ------------------------------------------------------------------ caching
    def _batches_for(self, epoch: int) -> np.ndarray:
        """The global batches of ``epoch`` (with padding), planned at most once per epoch."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        batches = self.policy.epoch_batches(epoch)
        if self.shuffle_batches:
            batches = shuffle_full_rows(batches, epoch_rng(self.seed, epoch))
        self._cache = (epoch, batches)
        return batches

    # ------------------------------------------------------------------ recording
    def record(self, query_embeddings: Any, target_embeddings: Any, indices: Any = None) -> None:
        """Record the training step's embeddings (``refresh="recorded"``).

        Parameters
        ----------
        query_embeddings, target_embeddings : tensor of shape (b, d)
            This step's embeddings (detached and copied to the host; gradients untouched).
        indices : array-like of shape (b,), optional
            Their sample ids. Default: the next batch this sampler handed out on this rank
            (batches are consumed in order; with DataLoader prefetching that still holds).
        """
        if self.recorder is None:
            raise ValueError("record() needs refresh='recorded'")
        if indices is None:
            popped = self.tracker.pop(len(to_numpy_rows(query_embeddings, "query_embeddings")))
            if popped is None:
                return
            _, indices = popped
        self.recorder.record(indices, query_embeddings, target_embeddings)

    # ------------------------------------------------------------------ reporting
    def planning_seconds(self, epoch: int | None = None) -> float:
        """Refresh overhead (embedding pass + planning + sync) of ``epoch`` (default: last)."""
        if not self.history_:
            return 0.0
        if epoch is None:
            epoch = self.history_[-1]["epoch"]
        return float(sum(h["seconds"]["total"] for h in self.history_ if h["epoch"] == epoch))

    def __repr__(self) -> str:
        return (
            f"HardBatchSampler(method={self.method!r}, n_samples={self.n_samples}, "
            f"batch_size={self.batch_size}, refresh={self.refresh!r}, seed={self.seed}, "
            f"epoch={self.epoch})"
        )


__all__ = ["HardBatchSampler", "is_static_method"]
