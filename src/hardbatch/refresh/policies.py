"""The refresh policies, one class each (see :mod:`hardbatch.refresh`)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np

from ..batching import PAD, epoch_rng
from ..checkpoint import pack_rows, plan_from_state, plan_to_state, unpack_rows
from ..methods.base import Planner
from ..planning import Planning, Stopwatch, shuffle_full_rows
from ..plans import BatchPlan
from ..recording import EmbeddingRecorder
from ..validation import check_positive_int

#: ``batches_for(epoch)``: the sampler's (cached, possibly shuffled) global batches of an epoch.
BatchesFor = Callable[[int], np.ndarray]


# ---------------------------------------------------------------------------------- policies
class RefreshPolicy:
    """Base of the refresh policies: when a sampler re-plans and from which embeddings.

    A policy declares its contract as class attributes, checked by :meth:`check` when it is
    made (:func:`make_refresh_policy`), and produces an epoch's batches through
    :meth:`epoch_batches` (or yields them through :meth:`epoch_rows`). The sampler never tests
    a policy's name: it asks these hooks, and keeps the caching, the batch shuffle and the DDP
    split to itself.

    Parameters
    ----------
    planning : Planning
        The sampler's planning settings.
    """

    #: The ``refresh=`` value naming the policy.
    name: ClassVar[str] = ""
    #: Whether each epoch is planned afresh (so a plan given up front cannot be served, and an
    #: epoch iterated twice without ``set_epoch`` serves a stale plan).
    replans: ClassVar[bool] = True
    #: Whether the policy calls ``embed_fn`` while training (not only for a first plan).
    needs_embed_fn: ClassVar[bool] = False
    #: Whether the training step records embeddings for it (an ``EmbeddingRecorder``); the
    #: sampler then tracks the batches it hands out (``hardbatch.recording.BatchTracker``).
    records: ClassVar[bool] = False

    def __init__(self, planning: Planning) -> None:
        self.planning = planning
        #: Where recorded embeddings are kept (policies that record).
        self.recorder: EmbeddingRecorder | None = None

    @classmethod
    def check(
        cls,
        *,
        method_cls: type[Planner],
        plan_given: bool,
        embed_fn_given: bool,
        embeddings_given: bool,
    ) -> None:
        """Raise ``ValueError`` when this policy cannot serve the given combination: the
        checks every policy shares, then the policy's own (:meth:`_check_own`)."""
        if plan_given and cls.replans:
            raise ValueError(f"a given plan is static: refresh={cls.name!r} needs plan=None")
        if cls.needs_embed_fn and not embed_fn_given:
            raise ValueError(f"refresh={cls.name!r} needs embed_fn=")
        cls._check_own(
            method_cls=method_cls,
            plan_given=plan_given,
            embed_fn_given=embed_fn_given,
            embeddings_given=embeddings_given,
        )

    @classmethod
    def _check_own(
        cls,
        *,
        method_cls: type[Planner],
        plan_given: bool,
        embed_fn_given: bool,
        embeddings_given: bool,
    ) -> None:
        """The policy's own checks, after the shared ones (hook; default: none)."""

    @classmethod
    def build(
        cls,
        planning: Planning,
        *,
        plan: BatchPlan | None = None,
        refresh_every: int | None = None,
        initial: str = "auto",
        recorder: EmbeddingRecorder | None = None,
    ) -> RefreshPolicy:
        """Make the policy from the sampler's options, refusing the ones it does not use."""
        _refuse_unused(refresh_every=refresh_every, recorder=recorder)
        return cls(planning)

    def epoch_batches(self, epoch: int) -> np.ndarray:
        """The global batches of ``epoch`` (rows right-padded with ``PAD``), planned now."""
        raise NotImplementedError(f"refresh={self.name!r} plans inside the epoch (epoch_rows)")

    def epoch_rows(
        self, epoch: int, batches_for: BatchesFor, start: int = 0
    ) -> Iterator[np.ndarray]:
        """The global batches of ``epoch`` in serving order, padding removed, from batch
        ``start`` on (a resumed epoch).

        ``batches_for`` is the sampler's cached (and, with ``shuffle_batches``, shuffled)
        :meth:`epoch_batches`.
        """
        for row in batches_for(epoch)[start:]:
            yield row[row != PAD]

    def state_dict(self, epoch: int, served: int) -> dict[str, Any]:
        """What the policy needs, besides the sampler's cached batches of ``epoch``, to serve
        the rest of ``epoch`` after ``served`` batches and the epochs after it exactly as it
        would have (plain data; see :meth:`hardbatch.HardBatchSampler.state_dict`)."""
        return {}

    def load_state_dict(self, state: dict[str, Any], epoch: int) -> None:
        """Restore what :meth:`state_dict` returned (``epoch``: the epoch it was taken in)."""

    def n_batches(self, epoch: int) -> int:
        """Exact number of global batches of ``epoch``, counted without planning.

        Every rank counts locally (``Planning.batch_count``: N, batch size, ``drop_last`` and
        the method's count rule), so ``len()`` never runs a collective and may be called on
        one rank only.
        """
        return self.planning.batch_count()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NeverRefresh(RefreshPolicy):
    """``refresh="never"``: one plan, given or made once, varied per epoch by the method's rule.

    Parameters
    ----------
    planning : Planning
    plan : BatchPlan, optional
        A given plan; otherwise one is made at the first use, from ``embeddings`` or one
        ``embed_fn`` pass (or from N alone for methods that read no embeddings), seeded with
        the sampler's seed (not per epoch).
    """

    name = "never"
    replans = False

    def __init__(self, planning: Planning, plan: BatchPlan | None = None) -> None:
        super().__init__(planning)
        self.plan_: BatchPlan | None = plan
        self.given = plan is not None

    def state_dict(self, epoch: int, served: int) -> dict[str, Any]:
        # A plan made here travels (re-making it costs an embedding pass); a given one is
        # given again.
        if self.plan_ is None or self.given:
            return {}
        return {"plan": plan_to_state(self.plan_)}

    def load_state_dict(self, state: dict[str, Any], epoch: int) -> None:
        if "plan" in state:
            self.plan_ = self.planning.plan_ = plan_from_state(state["plan"])

    @classmethod
    def _check_own(cls, *, method_cls, plan_given, embed_fn_given, embeddings_given) -> None:
        if not plan_given and method_cls.uses_embeddings:
            if not (embeddings_given or embed_fn_given):
                raise ValueError(
                    f"method {method_cls.name!r} needs embeddings=, embed_fn= or plan= to plan once"
                )

    @classmethod
    def build(cls, planning, *, plan=None, refresh_every=None, initial="auto", recorder=None):
        _refuse_unused(refresh_every=refresh_every, recorder=recorder)
        return cls(planning, plan)

    def static_plan(self, epoch: int) -> BatchPlan:
        """The one plan (made now if needed; ``epoch`` only labels the history entry)."""
        if self.plan_ is None:
            planning = self.planning
            watch = Stopwatch()
            queries = targets = None
            if planning.method_cls.uses_embeddings:
                with watch("embed"):
                    queries, targets = planning.initial_embeddings()
            with watch("plan"):
                self.plan_ = planning.plan(queries, targets, seed=planning.seed)
            planning.log(
                self.plan_, epoch=epoch, step=0, policy=self.name, n=planning.n_samples, watch=watch
            )
        return self.plan_

    def epoch_batches(self, epoch: int) -> np.ndarray:
        return self.static_plan(epoch).for_epoch(epoch)

    def n_batches(self, epoch: int) -> int:
        if self.given:  # a plan built elsewhere counts its own rows (local data)
            return len(self.plan_.for_epoch(epoch))
        return self.planning.batch_count()


class EpochRefresh(RefreshPolicy):
    """``refresh="epoch"``: an ``embed_fn`` pass over every sample, then a plan, each epoch."""

    name = "epoch"
    needs_embed_fn = True

    def epoch_batches(self, epoch: int) -> np.ndarray:
        planning = self.planning
        watch = Stopwatch()
        with watch("embed"):
            queries, targets = planning.embed(np.arange(planning.n_samples))
        with watch("plan"):
            plan = planning.plan(queries, targets, seed=planning.epoch_seed(epoch), epoch=epoch)
        planning.log(plan, epoch=epoch, step=0, policy=self.name, n=planning.n_samples, watch=watch)
        return plan.batches


class RecordedRefresh(RefreshPolicy):
    """``refresh="recorded"``: plan each epoch from the embeddings the training step recorded.

    Parameters
    ----------
    planning : Planning
    recorder : EmbeddingRecorder
        Where the training step's embeddings are kept (merged across ranks before planning).
    initial_pass : bool
        How the first epoch is planned while nothing is recorded: from the given embeddings or
        one ``embed_fn`` pass (True), or with the ``random`` method (False).
    """

    name = "recorded"
    records = True

    def __init__(self, planning: Planning, recorder: EmbeddingRecorder, initial_pass: bool) -> None:
        super().__init__(planning)
        self.recorder = recorder
        self.initial_pass = bool(initial_pass)
        #: Newest recording stamp when the last epoch was planned (None: nothing planned yet).
        self._planned_stamp: int | None = None

    @classmethod
    def _check_own(cls, *, method_cls, plan_given, embed_fn_given, embeddings_given) -> None:
        if not method_cls.uses_embeddings:
            raise ValueError(f"method {method_cls.name!r} reads no embeddings: nothing to record")

    @classmethod
    def build(cls, planning, *, plan=None, refresh_every=None, initial="auto", recorder=None):
        _refuse_unused(refresh_every=refresh_every)
        if recorder is None:
            recorder = EmbeddingRecorder(planning.n_samples)
        elif recorder.n_samples != planning.n_samples:
            raise ValueError(
                f"recorder holds N={recorder.n_samples} samples, dataset has N={planning.n_samples}"
            )
        can_embed = planning.embed_fn is not None or planning.embeddings is not None
        return cls(planning, recorder, initial == "embed" or (initial == "auto" and can_embed))

    def state_dict(self, epoch: int, served: int) -> dict[str, Any]:
        # This rank's recordings (not merged: a collective), which the next epochs plan from.
        return {"recorder": self.recorder.state_dict()}

    def load_state_dict(self, state: dict[str, Any], epoch: int) -> None:
        self.recorder.load_state_dict(state["recorder"])

    def n_batches(self, epoch: int) -> int:
        # initial="random" before anything was recorded: the random method's count.
        if not self.initial_pass and self.recorder.n_known == 0:
            return self.planning.batch_count("random")
        return self.planning.batch_count()

    def epoch_batches(self, epoch: int) -> np.ndarray:
        planning, recorder = self.planning, self.recorder
        watch = Stopwatch()
        seed = planning.epoch_seed(epoch)
        method = planning.method
        with watch("sync"):
            recorder.synchronize()
        newest = int(recorder.stamps_.max(initial=-1))
        if self._planned_stamp is not None and newest <= self._planned_stamp:
            # Said when it happens: otherwise every epoch is silently random (or stale).
            source = (
                "with the random method"
                if recorder.n_known == 0
                else "from the same embeddings as the last one"
            )
            warnings.warn(
                f"refresh='recorded': nothing was recorded since the last plan, so epoch "
                f"{epoch} is planned {source}; call sampler.record(...) in the training step "
                "or wrap the loss (the sentence-transformers adapter's wrap_loss)",
                RuntimeWarning,
                stacklevel=4,
            )
        queries = targets = None
        if recorder.n_known == 0:
            if self.initial_pass:
                with watch("embed"):
                    recorder.set_all(*planning.initial_embeddings())
            else:
                method = "random"  # initial="random": nothing to plan from yet
        self._planned_stamp = int(recorder.stamps_.max(initial=-1))
        if method != "random":
            queries, targets = recorder.embeddings(seed=seed)
        with watch("plan"):
            plan = planning.plan(queries, targets, seed=seed, method=method, epoch=epoch)
        planning.log(plan, epoch=epoch, step=0, policy=self.name, n=planning.n_samples, watch=watch)
        return plan.batches


class StepsRefresh(RefreshPolicy):
    """``refresh="steps"``: re-plan the samples not yet served every ``refresh_every`` batches,
    so each sample still appears once per epoch.

    Parameters
    ----------
    planning : Planning
    refresh_every : int
        Batches served between re-plans.
    """

    name = "steps"
    needs_embed_fn = True

    def __init__(self, planning: Planning, refresh_every: int) -> None:
        super().__init__(planning)
        self.refresh_every = check_positive_int(refresh_every, "refresh_every")
        # (epoch, [(first batch index, rows of one re-plan)]): what this epoch served or
        # planned so far, for state_dict.
        self._log: tuple[int, list[tuple[int, list[np.ndarray]]]] | None = None
        # (epoch, rows served, rows planned but not served) from load_state_dict.
        self._resume: tuple[int, list[np.ndarray], list[np.ndarray]] | None = None

    @classmethod
    def _check_own(cls, *, method_cls, plan_given, embed_fn_given, embeddings_given) -> None:
        if not method_cls.replans_each_epoch:
            raise ValueError(
                f"refresh='steps' re-plans the rest of an epoch; method {method_cls.name!r} keeps "
                "its own per-epoch rule (use refresh='never' or 'epoch')"
            )

    @classmethod
    def build(cls, planning, *, plan=None, refresh_every=None, initial="auto", recorder=None):
        _refuse_unused(recorder=recorder)
        return cls(planning, refresh_every)

    def epoch_rows(
        self, epoch: int, batches_for: BatchesFor, start: int = 0
    ) -> Iterator[np.ndarray]:
        planning = self.planning
        remaining = np.arange(planning.n_samples, dtype=np.int64)
        if epoch >= 1 and planning.drop_last:
            # The leftovers take turns: this epoch's are set aside first (the rest is a
            # multiple of batch_size), instead of whatever the last re-plan leaves over.
            remaining = np.setdiff1d(remaining, planning.left_out(epoch))
        restored: list[np.ndarray] = []
        if self._resume is not None and self._resume[0] == epoch:
            # Resumed: the rows served and planned before the checkpoint come back as they
            # were (re-planning them now would use later weights); planning goes on after.
            restored = self._resume[1] + self._resume[2]
        elif start:
            raise ValueError(
                "refresh='steps' resumes an epoch mid-way only from its state "
                "(HardBatchSampler.load_state_dict)"
            )
        self._resume = None
        segments: list[tuple[int, list[np.ndarray]]] = [(0, restored)] if restored else []
        self._log = (epoch, segments)
        if restored:
            remaining = np.setdiff1d(remaining, np.concatenate(restored))
        yield from restored[start:]
        step = len(restored)
        while len(remaining):
            if len(remaining) < planning.batch_size:  # too few to plan: the leftover batch
                if not planning.drop_last:
                    segments.append((step, [remaining]))
                    yield remaining
                return
            watch = Stopwatch()
            with watch("embed"):
                queries, targets = planning.embed(remaining)
            with watch("plan"):
                sub = planning.plan(
                    queries,
                    targets,
                    seed=planning.epoch_seed(epoch, step),
                    subset=remaining,
                    epoch=epoch,
                )
            planning.log(
                sub, epoch=epoch, step=step, policy=self.name, n=len(remaining), watch=watch
            )
            batches = sub.batches
            if planning.shuffle_batches:
                batches = shuffle_full_rows(batches, epoch_rng(planning.epoch_seed(epoch, step), 0))
            # Served until the next re-plan: refresh_every rows, or all if that exhausts it.
            rows = [remaining[row[row != PAD]] for row in batches[: self.refresh_every]]
            segments.append((step, rows))
            for row in rows:
                yield row
                step += 1
            if len(batches) <= self.refresh_every:
                return  # plan exhausted: the epoch is complete
            served = np.zeros(planning.n_samples, dtype=bool)
            served[np.concatenate(rows)] = True
            remaining = remaining[~served[remaining]]

    def state_dict(self, epoch: int, served: int) -> dict[str, Any]:
        """The rows served before batch ``served`` and the rest of the re-plan serving it."""
        if self._log is None or self._log[0] != epoch:
            if served:
                raise ValueError(f"refresh='steps' has no record of epoch {epoch}")
            return {}
        done: list[np.ndarray] = []
        pending: list[np.ndarray] = []
        for first, rows in self._log[1]:
            done.extend(rows[: max(0, served - first)])
            if first <= served < first + len(rows):
                pending = rows[served - first :]
        if len(done) != served:
            raise ValueError(f"refresh='steps' served {len(done)} batches of epoch {epoch}")
        return {"done": pack_rows(done), "pending": pack_rows(pending)}

    def load_state_dict(self, state: dict[str, Any], epoch: int) -> None:
        if state:
            self._resume = (epoch, unpack_rows(state["done"]), unpack_rows(state["pending"]))

    def __repr__(self) -> str:
        return f"StepsRefresh(refresh_every={self.refresh_every})"


def _refuse_unused(*, refresh_every: int | None = None, recorder: Any = None) -> None:
    """Options only some policies use must not be given to the others."""
    if refresh_every is not None:
        raise ValueError("refresh_every is only used with refresh='steps'")
    if recorder is not None:
        raise ValueError("recorder= is only used with refresh='recorded'")
