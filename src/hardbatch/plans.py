"""Stage 4: :class:`BatchPlan`, the result of every method, and its ``.npz`` file format."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._json import to_jsonable
from .batching import (
    PAD,
    cut_order,
    epoch_rng,
    guard_rng,
    iter_rows,
    mix_random_fill,
    mix_rng,
    regroup_clusters_epoch,
    reshuffle_epoch,
    separate_duplicates,
)
from .hardness import HardnessSchedule, as_schedule
from .leftovers import leave_out_of_clusters, leave_out_of_order, rotating_leftovers
from .planfile import ARRAY_FIELDS, FORMAT_VERSION, read_plan_file

# FORMAT_VERSION: version of the ``.npz`` plan format written by :meth:`BatchPlan.save`
# (:mod:`hardbatch.planfile`). Files of version 1 written before ``epoch_rule`` was stored are
# read with the rule of their method (:data:`LEGACY_EPOCH_RULES`).

#: A rule for epoch ``e >= 1`` of a plan: ``rule(plan, e) -> batches``, made only from the
#: plan's own data (seed, clusters, ...). Epoch 0 is always ``plan.batches``.
EpochRule = Callable[["BatchPlan", int], np.ndarray]


def _fixed(plan: BatchPlan, epoch: int) -> np.ndarray:
    if plan.order is not None and plan.rotates_leftovers:
        # The same order, but the samples drop_last leaves out take turns (see
        # BatchPlan.rotating_leftovers); drop_last=False plans keep their batches.
        return _leave_out(plan, plan.rotating_leftovers(epoch), epoch)
    return plan.batches


def _reshuffle(plan: BatchPlan, epoch: int) -> np.ndarray:
    return reshuffle_epoch(
        plan.n_samples,
        plan.batch_size,
        seed=int(plan.seed or 0),
        epoch=epoch,
        drop_last=plan.drop_last,
    )


def _regroup_clusters(plan: BatchPlan, epoch: int) -> np.ndarray:
    if plan.clusters is None:
        raise ValueError("epoch rule 'regroup_clusters' needs plan.clusters, which is None")
    if plan.rotates_leftovers:
        # Without this the short cluster (N mod K) would be in the dropped batch every epoch.
        return _leave_out(plan, plan.rotating_leftovers(epoch), epoch)
    return regroup_clusters_epoch(
        plan.clusters,
        plan.batch_size,
        seed=int(plan.seed or 0),
        epoch=epoch,
        cluster_groups=plan.cluster_groups,
        drop_last=plan.drop_last,
    )


def _leave_out(plan: BatchPlan, left_out: np.ndarray, epoch: int) -> np.ndarray:
    """Epoch ``epoch`` of ``plan`` leaving out exactly ``left_out`` (before the guard): cluster
    plans regroup repaired clusters, others cut their order (or their rows in order, then
    their leftovers) without them."""
    if plan.clusters is not None:
        return leave_out_of_clusters(
            plan.clusters,
            left_out,
            plan.batch_size,
            rng=epoch_rng(int(plan.seed or 0), epoch),
            cluster_groups=plan.cluster_groups,
        )
    order = plan.order
    if order is None:
        rows = plan.batches[plan.batches != PAD]
        order = np.concatenate([rows, plan.leftovers()])
    return leave_out_of_order(order, left_out, plan.batch_size)


_EPOCH_RULES: dict[str, EpochRule] = {
    # Re-planned from fresh embeddings each epoch (GCBS), or a plan that never changes.
    "fixed": _fixed,
    # A fresh seeded permutation per epoch (random).
    "reshuffle": _reshuffle,
    # Static clusters regrouped per epoch (B3).
    "regroup_clusters": _regroup_clusters,
}

#: Epoch rule of a plan file that does not store one, by method name. Any other method's old
#: file keeps its batches in every epoch, as the versions that wrote it did for a method they
#: did not know.
LEGACY_EPOCH_RULES = {"random": "reshuffle", "b3": "regroup_clusters", "gcbs": "fixed"}


def register_epoch_rule(name: str, rule: EpochRule) -> EpochRule:
    """Make ``rule`` available as ``BatchPlan.epoch_rule = name`` (for a new method whose
    epochs follow none of the built-in rules). Returns ``rule``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"an epoch rule needs a non-empty name, got {name!r}")
    if not callable(rule):
        raise ValueError(f"epoch rule {name!r} must be callable(plan, epoch)")
    _EPOCH_RULES[name] = rule
    return rule


def epoch_rules() -> list[str]:
    """Names of the known epoch rules."""
    return sorted(_EPOCH_RULES)


def check_epoch_rule(name: str) -> str:
    """``name`` must be a known epoch rule (``ValueError`` naming the known ones)."""
    if not isinstance(name, str) or name not in _EPOCH_RULES:
        raise ValueError(f"unknown epoch rule {name!r}; known: {', '.join(epoch_rules())}")
    return name


#: Optional per-plan arrays that travel with the plan file.
_ARRAY_FIELDS = tuple(ARRAY_FIELDS)


@dataclass
class BatchPlan:
    """Batches for one epoch of contrastive training, with how they were made.

    Attributes
    ----------
    batches : np.ndarray of shape (n_batches, batch_size), int64
        Row ``b`` = sample indices of batch ``b``. When ``N % batch_size != 0`` and
        ``drop_last`` is false, the last row holds the leftovers and is right-padded with ``-1``
        (:data:`hardbatch.batching.PAD`); :meth:`iter_batches` skips the padding.
    method : str
        Registry name of the method that made the plan (``"gcbs"``, ``"random"``, ...).
    n_samples : int
        N, the number of paired samples the plan indexes.
    batch_size : int
    seed : int or None
        Seed the plan was made with (``None``: not seeded).
    drop_last : bool
        Leftover rule (see :mod:`hardbatch.batching`).
    params : dict
        Method parameters (JSON-serialisable).
    info : dict
        What the method measured while planning (threshold, edges, bandwidth, stage seconds).
    order : np.ndarray of shape (N,), optional
        The sample ordering the batches were cut from (ordering methods).
    clusters : np.ndarray of shape (n_clusters, cluster_size), optional
        Static clusters (cluster methods).
    hard_negatives : np.ndarray of shape (N, n), optional
        Per-example mined negatives.
    cluster_groups : np.ndarray of shape (n_clusters,), optional
        Group (dataset) of every row of :attr:`clusters` when batches are made per group
        (B3's multi-dataset mode): every batch then holds samples of one group only, each group
        may end with its own short batch, and ``drop_last`` drops every group's leftovers.
    duplicate_ids : np.ndarray of shape (N,), optional
        Integer codes of the duplicate guard (:func:`hardbatch.batching.separate_duplicates`):
        no batch of any epoch holds two samples with the same code.
    epoch_rule : str, optional
        How :meth:`for_epoch` makes epoch ``e >= 1`` from the plan's data: ``"fixed"`` (the
        same batches; GCBS, re-planned from fresh embeddings instead), ``"reshuffle"`` (a
        permutation from ``(seed, e)``; random), ``"regroup_clusters"`` (:attr:`clusters`
        regrouped with ``(seed, e)``; B3), or one added by :func:`register_epoch_rule`.
        Stored in the plan file.
    """

    batches: np.ndarray
    method: str
    n_samples: int
    batch_size: int
    seed: int | None = None
    drop_last: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    order: np.ndarray | None = None
    clusters: np.ndarray | None = None
    hard_negatives: np.ndarray | None = None
    cluster_groups: np.ndarray | None = None
    duplicate_ids: np.ndarray | None = None
    epoch_rule: str | None = None

    def __post_init__(self) -> None:
        self.batches = np.asarray(self.batches, dtype=np.int64)
        if self.epoch_rule is None:
            # A plan built by hand keeps the epoch behaviour of its built-in method.
            self.epoch_rule = LEGACY_EPOCH_RULES.get(self.method, "fixed")

    # ------------------------------------------------------------------ access
    @property
    def n_batches(self) -> int:
        """Number of batches (rows of :attr:`batches`)."""
        return int(self.batches.shape[0])

    def __len__(self) -> int:
        return self.n_batches

    @property
    def hardness(self) -> HardnessSchedule:
        """The plan's hardness dial over epochs, from ``params["hardness"]`` (1 when absent)."""
        return as_schedule(self.params.get("hardness", 1.0))

    @property
    def sample_groups(self) -> np.ndarray | None:
        """Group of every sample, shape ``(N,)``, from :attr:`clusters` and
        :attr:`cluster_groups`; ``None`` when the plan is not grouped."""
        if self.cluster_groups is None or self.clusters is None:
            return None
        clusters = np.asarray(self.clusters)
        groups = np.full(self.n_samples, -1, dtype=np.int64)
        member = clusters != PAD
        groups[clusters[member]] = np.broadcast_to(
            np.asarray(self.cluster_groups, dtype=np.int64)[:, None], clusters.shape
        )[member]
        return groups

    def iter_batches(self) -> Iterator[np.ndarray]:
        """Yield each batch as an int64 array of sample ids, without padding."""
        return iter_rows(self.batches)

    def for_epoch(self, epoch: int) -> np.ndarray:
        """Batches of epoch ``epoch`` under the plan's :attr:`epoch_rule`.

        Epoch 0 is always :attr:`batches`. The rule's batches are mixed to the epoch's
        :attr:`hardness` (:func:`hardbatch.batching.mix_random_fill` with
        :func:`~hardbatch.batching.mix_rng` ``(seed, e)``); a rule that keeps the plan's
        batches (``"fixed"``) serves them as they are while the hardness is that of epoch 0,
        and recuts the method's batches from :attr:`order` when a schedule changes it. With
        :attr:`duplicate_ids` the guard is applied, after the mixing, to every epoch the rule
        changes. An unknown rule is a ``ValueError``. With ``drop_last`` the built-in rules
        leave out other samples each epoch (:meth:`rotating_leftovers`; ``"reshuffle"`` by its
        fresh permutation).
        """
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)):
            raise ValueError(f"epoch must be an integer, got {epoch!r}")
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        rule = _EPOCH_RULES[check_epoch_rule(self.epoch_rule)]
        if epoch == 0:
            return self.batches
        return self._guarded(rule(self, int(epoch)), int(epoch))

    # ------------------------------------------------------------------ leftovers
    def leftovers(self) -> np.ndarray:
        """Sample ids in no row of :attr:`batches` (what ``drop_last`` left out of epoch 0)."""
        present = np.zeros(self.n_samples, dtype=bool)
        present[self.batches[self.batches != PAD]] = True
        return np.flatnonzero(~present)

    @property
    def rotates_leftovers(self) -> bool:
        """Whether ``drop_last`` leaves samples out of this plan's epochs (so they rotate)."""
        return bool(self.drop_last) and len(self.leftovers()) > 0

    def rotating_leftovers(self, epoch: int) -> np.ndarray:
        """The samples epoch ``epoch >= 1`` leaves out with ``drop_last``.

        :func:`hardbatch.leftovers.rotating_leftovers` with the plan's seed and groups and epoch
        0's leftovers last: over ``E`` epochs no sample is left out more than
        ``ceil(E·r / N)`` times (``r = N % batch_size``, per group when grouped).
        """
        return rotating_leftovers(
            self.n_samples,
            self.batch_size,
            seed=int(self.seed or 0),
            epoch=int(epoch),
            groups=self.sample_groups,
            last=self.leftovers(),
        )

    def leaving_out(self, left_out: np.ndarray, epoch: int) -> np.ndarray:
        """Batches of epoch ``epoch >= 1`` that leave out exactly ``left_out`` (full batches
        only; the duplicate guard applied).

        A re-planning sampler uses it to rotate the leftovers of plans it makes each epoch
        (their own cut always leaves out the end of the order). Cluster plans keep whole
        clusters (:func:`hardbatch.leftovers.leave_out_of_clusters`); other plans cut their
        :attr:`order` (or their rows in order) without ``left_out``.
        """
        return self._guarded(_leave_out(self, np.asarray(left_out, dtype=np.int64), epoch), epoch)

    def _guarded(self, batches: np.ndarray, epoch: int) -> np.ndarray:
        """An epoch's method batches, mixed to the epoch's hardness, then guarded."""
        schedule = self.hardness
        dial = schedule.at(int(epoch))
        if batches is self.batches and dial != schedule.at(0):
            batches = self._undialled_batches()
        if dial < 1.0 and batches is not self.batches:
            batches = mix_random_fill(
                batches, dial, mix_rng(int(self.seed or 0), epoch), sample_groups=self.sample_groups
            )
        if self.duplicate_ids is not None and batches is not self.batches:
            # The guard holds in every epoch, not only in the planned one.
            batches, _ = separate_duplicates(
                batches,
                self.duplicate_ids,
                rng=guard_rng(int(self.seed or 0), epoch),
                sample_groups=self.sample_groups,
            )
        return batches

    def _undialled_batches(self) -> np.ndarray:
        """The method's own batches of a plan that keeps them every epoch: :attr:`order` cut
        again (the dial and the guard changed :attr:`batches`)."""
        if self.order is None:
            raise ValueError(
                f"a hardness schedule on a plan with epoch rule {self.epoch_rule!r} needs "
                "plan.order to recut the method's batches, which is None"
            )
        return cut_order(self.order, self.batch_size, drop_last=self.drop_last)

    # ------------------------------------------------------------------ checks
    def validate(self) -> BatchPlan:
        """Check the invariants; raise ``ValueError`` naming the first one broken.

        Every sample appears at most once, every id is in ``[0, N)``, padding only at the end
        of the last row, and every sample appears exactly once unless ``drop_last`` (then the
        ``N % batch_size`` leftovers are missing).

        A grouped plan (:attr:`cluster_groups` set) is checked per group instead: every batch
        holds one group only, any row may be short (right-padded), and with ``drop_last`` each
        group of ``N_g`` samples misses its ``N_g % batch_size`` leftovers.
        """
        self._check_fields()
        b = self.batches
        n, k = self.n_samples, self.batch_size
        if b.ndim != 2 or b.shape[1] != k:
            raise ValueError(f"batches must have shape (n_batches, {k}), got {b.shape}")
        groups = self._checked_groups()
        pad = b == PAD
        if pad.any():
            if groups is None:
                if pad[:-1].any():
                    raise ValueError("padding (-1) found outside the last batch")
                last = pad[-1]
                first_pad = int(np.argmax(last))
                if not last[first_pad:].all():
                    raise ValueError("padding (-1) in the last batch must be at its end")
            elif (pad[:, :-1] & ~pad[:, 1:]).any():
                raise ValueError("padding (-1) in a batch must be at its end")
        ids = b[~pad]
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise ValueError(f"sample ids must be in [0, {n}), found {ids.min()}..{ids.max()}")
        counts = np.bincount(ids, minlength=n)
        if (counts > 1).any():
            raise ValueError(f"sample {int(np.argmax(counts > 1))} appears in more than one batch")
        if groups is None:
            expected = n - n % k if self.drop_last else n
        else:
            row_group = np.where(pad, -1, groups[np.where(pad, 0, b)])
            first = row_group[:, :1]
            if ((row_group != first) & ~pad).any():
                raise ValueError("a batch of a grouped plan mixes samples of different groups")
            sizes = np.bincount(groups)
            expected = int((sizes - sizes % k).sum()) if self.drop_last else n
        if ids.size != expected:
            raise ValueError(
                f"plan covers {ids.size} samples, expected {expected} "
                f"(N={n}, batch_size={k}, drop_last={self.drop_last})"
            )
        self._check_arrays()
        return self

    def _check_fields(self) -> None:
        """Types of the scalar fields, and an epoch rule that is known."""
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"method must be a non-empty string, got {self.method!r}")
        for name, value in (("n_samples", self.n_samples), ("batch_size", self.batch_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        seed = self.seed
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0
        ):
            raise ValueError(f"seed must be None or a non-negative integer, got {seed!r}")
        if not isinstance(self.drop_last, (bool, np.bool_)):
            raise ValueError(f"drop_last must be True or False, got {self.drop_last!r}")
        check_epoch_rule(self.epoch_rule)
        if self.epoch_rule == "regroup_clusters" and self.clusters is None:
            raise ValueError("epoch rule 'regroup_clusters' needs clusters, which are missing")

    def _check_arrays(self) -> None:
        """The optional arrays against what they promise (shapes, ranges, each sample once)."""
        n = self.n_samples
        every = np.arange(n)
        for name in _ARRAY_FIELDS:
            a = getattr(self, name)
            if a is not None and np.asarray(a).dtype.kind not in "iu":
                raise ValueError(f"{name} must hold integers, got dtype {np.asarray(a).dtype}")
        if self.order is not None:
            order = np.asarray(self.order)
            if order.shape != (n,) or not np.array_equal(np.sort(order), every):
                raise ValueError(f"order must hold every sample 0..{n - 1} exactly once")
        if self.clusters is not None:
            clusters = np.asarray(self.clusters)
            if clusters.ndim != 2 or clusters.shape[0] == 0:
                raise ValueError(f"clusters must be a non-empty 2-D array, got {clusters.shape}")
            pad = clusters == PAD
            if (pad[:, :-1] & ~pad[:, 1:]).any():
                raise ValueError("padding (-1) in a cluster must be at its end")
            members = clusters[~pad]
            if members.size != n or not np.array_equal(np.sort(members), every):
                raise ValueError(f"clusters must hold every sample 0..{n - 1} exactly once")
            if self.epoch_rule == "regroup_clusters" and self.batch_size % clusters.shape[1]:
                raise ValueError(
                    f"batch_size={self.batch_size} is not a multiple of the cluster size "
                    f"{clusters.shape[1]}"
                )
        if self.hard_negatives is not None:
            negatives = np.asarray(self.hard_negatives)
            if negatives.ndim != 2 or negatives.shape[0] != n:
                raise ValueError(f"hard_negatives must have shape ({n}, h), got {negatives.shape}")
            if negatives.size and (negatives.min() < 0 or negatives.max() >= n):
                raise ValueError(f"hard_negatives must be sample ids in [0, {n})")
            if (negatives == every[:, None]).any():
                raise ValueError("a sample is its own hard negative")
        if self.duplicate_ids is not None:
            codes = np.asarray(self.duplicate_ids)
            if codes.shape != (n,):
                raise ValueError(f"duplicate_ids must have shape ({n},), got {codes.shape}")
            if codes.size and codes.min() < 0:
                raise ValueError("duplicate_ids must be non-negative codes")
            valid = self.batches != PAD
            grid = np.sort(np.where(valid, codes[np.where(valid, self.batches, 0)], -1), axis=1)
            if ((grid[:, 1:] == grid[:, :-1]) & (grid[:, 1:] >= 0)).any():
                raise ValueError("a batch holds two samples with the same duplicate id")

    def _checked_groups(self) -> np.ndarray | None:
        """:attr:`sample_groups`, after checking that the clusters cover every sample once."""
        if self.cluster_groups is None:
            return None
        if self.clusters is None:
            raise ValueError("cluster_groups given without clusters")
        clusters = np.asarray(self.clusters)
        if clusters.ndim != 2 or np.shape(self.cluster_groups) != (clusters.shape[0],):
            raise ValueError(
                f"cluster_groups must have one entry per cluster ({clusters.shape[0]}), "
                f"got shape {np.shape(self.cluster_groups)}"
            )
        if np.asarray(self.cluster_groups).dtype.kind not in "iu" or (
            np.asarray(self.cluster_groups).min() < 0
        ):
            raise ValueError("cluster_groups must be non-negative integers")
        members = clusters[clusters != PAD]
        if members.size != self.n_samples or not np.array_equal(
            np.sort(members), np.arange(self.n_samples)
        ):
            raise ValueError("the clusters of a grouped plan must hold every sample exactly once")
        return self.sample_groups

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write the plan to ``path`` (``.npz``; the name is used exactly as given)."""
        path = Path(path)
        meta = {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "n_samples": self.n_samples,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "drop_last": self.drop_last,
            "epoch_rule": self.epoch_rule,
            "params": self.params,
            "info": self.info,
        }
        arrays = {
            name: getattr(self, name) for name in _ARRAY_FIELDS if getattr(self, name) is not None
        }
        with open(path, "wb") as fh:
            np.savez(
                fh,
                batches=self.batches,
                meta=np.array(json.dumps(meta, default=to_jsonable)),
                **arrays,
            )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, n_samples: int | None = None) -> BatchPlan:
        """Read a plan written by :meth:`save`, verifying everything it promises.

        The file is checked before it is trusted (:mod:`hardbatch.planfile`): only the known
        members, none inflating beyond its compressed size, metadata fields present and typed,
        array shapes that agree with ``n_samples`` and ``batch_size`` (read from the headers,
        before any array is), then every invariant of :meth:`validate`.

        Parameters
        ----------
        path : path of the ``.npz`` file.
        n_samples : int, optional
            The N of the dataset the plan will index; a plan made for another N is an error.

        Raises
        ------
        ValueError
            Not a plan file, an unknown format version, a plan for another N, or broken
            invariants (the message names the file and the problem).
        """
        path = Path(path)
        meta, arrays = read_plan_file(path)
        if n_samples is not None and n_samples != meta["n_samples"]:
            raise ValueError(
                f"{path} was planned for N={meta['n_samples']} samples, "
                f"but the dataset has N={n_samples}"
            )
        plan = cls(
            batches=arrays.pop("batches"),
            method=meta["method"],
            n_samples=meta["n_samples"],
            batch_size=meta["batch_size"],
            seed=meta["seed"],
            drop_last=meta["drop_last"],
            params=meta["params"],
            info=meta["info"],
            epoch_rule=meta["epoch_rule"],
            **{name: np.asarray(a, dtype=np.int64) for name, a in arrays.items()},
        )
        try:
            return plan.validate()
        except ValueError as exc:
            raise ValueError(f"{path} is not a hardbatch plan file: {exc}") from None

    def __repr__(self) -> str:
        return (
            f"BatchPlan(method={self.method!r}, n_samples={self.n_samples}, "
            f"batch_size={self.batch_size}, n_batches={self.n_batches}, seed={self.seed}, "
            f"drop_last={self.drop_last}, epoch_rule={self.epoch_rule!r})"
        )
