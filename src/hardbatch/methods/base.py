"""The base of every batching method and the method registry.

A method is a small class: parameters stored in ``__init__``, the contract declared as class
attributes and hooks, the work in :meth:`Planner._plan`. :meth:`Planner.fit` is the fixed
template around it (check the inputs → ``_plan`` → duplicate guard → validate), like
pytorch-metric-learning's ``BaseMiner.forward`` around ``mine``.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np

from ..batching import (
    guard_rng,
    merge_shard_orders,
    mix_random_fill,
    mix_rng,
    sample_codes,
    separate_duplicates,
)
from ..guard import check_duplicate_layout
from ..hardness import (
    HardnessGraph,
    HardnessSchedule,
    as_schedule,
    check_hardness_param,
    hardness_from_text,
    hardness_param,
    is_auto,
    plan_hardness,
    resolve_auto,
    warn_near_random,
)
from ..plans import BatchPlan, check_epoch_rule
from ..validation import (
    ArrayLike,
    check_batch_size,
    check_bool,
    check_embeddings,
    check_pair,
    check_seed,
    n_rows,
)

#: A parameter check: ``check(value, name)`` raises ``ValueError`` naming ``name``.
ParamCheck = Callable[[Any, str], Any]

_REGISTRY: dict[str, type[Planner]] = {}

P = TypeVar("P", bound="type[Planner]")

#: Constructor parameters every method has; the rest are method parameters.
COMMON_PARAMS = ("batch_size", "seed", "drop_last")

#: Parameters that change only what is displayed, never the plan: not recorded in plan.params.
DISPLAY_PARAMS = ("progress",)


class Planner:
    """Base class of batching methods (scikit-learn style).

    The constructor only stores parameters; :meth:`fit` validates the embeddings, runs the
    method's stages and stores the result in ``plan_`` (plus method-specific ``*_``
    attributes). Subclasses implement :meth:`_plan` as a short composition of the shared
    stages (:mod:`hardbatch.similarity`, :mod:`hardbatch.structure`, :mod:`hardbatch.batching`)
    and register with :func:`register_method`.

    The template of :meth:`fit`: check the inputs → :meth:`_plan` → the hardness dial
    (:func:`hardbatch.batching.mix_random_fill`) → the duplicate guard → the hardness
    statistics of the plan (``plan.info["hardness"]``, from :attr:`hardness_graph_`; a plan
    close to random warns, see :mod:`hardbatch.hardness`) → validate.

    The contract a subclass declares (read by the sampler, the CLI and Ray planning; never
    inferred): :attr:`name`, :attr:`uses_embeddings`, :attr:`fit_params`,
    :attr:`replans_each_epoch`, :attr:`epoch_rule`, :attr:`cli_aliases`, :attr:`param_help`,
    and the hooks :meth:`shard_params` (parameters of one shard) and :meth:`merge_shards`
    (one plan from shard plans).

    Parameters
    ----------
    batch_size : int
        Samples per batch (>= 2, <= N).
    seed : int or None
        Seeds every random choice. ``None`` draws a seed, which is recorded in the plan.
    drop_last : bool
        Leftover rule, see :mod:`hardbatch.batching`.
    hardness : float, HardnessSchedule or "auto"
        The hardness dial, in [0, 1]: 1 (the base default) is the method's own plan, bit for
        bit; ``"auto"`` (GCBS's and B3's default) picks it from the data at each fit
        (:func:`hardbatch.hardness.resolve_auto`; recorded in ``plan.params`` and
        ``plan.info["hardness"]["auto"]``); 0 a
        plan with random statistics; between, every batch keeps its first ``round(h·b)``
        members and the rest are dealt at random (:func:`hardbatch.batching.mix_random_fill`,
        seeded from ``(seed, epoch)``). A :class:`~hardbatch.hardness.HardnessSchedule` sets it
        per epoch: the plan's epoch ``e`` (``BatchPlan.for_epoch``, or the sampler's re-plan of
        epoch ``e``) uses ``schedule.at(e)``. A method takes it by naming ``hardness`` in its
        constructor and passing it here (``gcbs``, ``b3``; not ``random``, which is the
        ``hardness=0`` end already).
    """

    #: Registry name (``hardbatch.plan(name, ...)``).
    name: ClassVar[str] = ""
    #: Whether the method reads the embeddings (the random baseline only needs N).
    uses_embeddings: ClassVar[bool] = True
    #: One line per method parameter, shown by ``hardbatch plan --help``.
    param_help: ClassVar[dict[str, str]] = {}
    #: Per-sample arrays the method accepts as keyword arguments of :meth:`fit` (e.g. B3's
    #: ``labels`` and ``groups``). They are data, not settings: passed at fit time like
    #: scikit-learn's ``fit(X, y, groups=...)``, never stored in ``plan.params``.
    fit_params: ClassVar[tuple[str, ...]] = ()
    #: Whether the method is meant to be re-planned from fresh embeddings every epoch (GCBS).
    #: False for methods whose one plan varies per epoch by its own rule (``random``
    #: reshuffles, ``b3`` regroups static clusters): refresh policies read this, never guess.
    replans_each_epoch: ClassVar[bool] = False
    #: How a plan of this method yields epoch ``e >= 1`` (stored in ``BatchPlan.epoch_rule``;
    #: see :mod:`hardbatch.plans`): ``"fixed"``, ``"reshuffle"``, ``"regroup_clusters"``, or a
    #: rule added with :func:`hardbatch.plans.register_epoch_rule`.
    epoch_rule: ClassVar[str] = "fixed"
    #: Extra option strings of ``hardbatch plan`` per parameter (e.g. ``{"p": ["-p"]}``).
    cli_aliases: ClassVar[dict[str, list[str]]] = {}
    #: The check of every method parameter, by name (``check(value, name)``, a ``ValueError``
    #: naming the parameter): run by :meth:`check_params`, i.e. by every entry point.
    param_checks: ClassVar[dict[str, ParamCheck]] = {}
    #: Command-line text → value of parameters whose type the CLI cannot infer from the type
    #: hint (``hardness``: ``auto`` or a number).
    param_parsers: ClassVar[dict[str, Callable[[str], Any]]] = {"hardness": hardness_from_text}
    #: The fit array (in :attr:`fit_params`) whose groups are planned apart (B3's ``groups``):
    #: the duplicate guard's feasibility is then checked per group.
    group_param: ClassVar[str | None] = None

    plan_: BatchPlan
    #: The dial of a method that does not take ``hardness``: always its own plan.
    hardness: float | HardnessSchedule | str = 1.0
    #: Set by :meth:`_plan` of a graph method: the graph edges the hardness statistics count
    #: (:meth:`hardbatch.hardness.HardnessGraph.from_csr`). ``None``: no statistics.
    hardness_graph_: HardnessGraph | None = None

    def __init__(
        self,
        batch_size: int = 64,
        *,
        seed: int | None = 0,
        drop_last: bool = False,
        hardness: float | HardnessSchedule | str = 1.0,
    ):
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.hardness = hardness

    # ---------------------------------------------------------------- parameters
    @classmethod
    def param_names(cls) -> list[str]:
        """Names of the constructor parameters, common ones first."""
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters as stored (like scikit-learn's ``get_params``)."""
        return {name: getattr(self, name) for name in self.param_names()}

    def method_params(self) -> dict[str, Any]:
        """The parameters that shape the plan besides batch_size, seed and drop_last (recorded
        in ``plan.params``; display-only ones such as ``progress`` are left out)."""
        skip = (*COMMON_PARAMS, *DISPLAY_PARAMS)
        params = {k: v for k, v in self.get_params().items() if k not in skip}
        if "hardness" in params:  # a schedule is recorded in its JSON form
            params["hardness"] = hardness_param(params["hardness"])
        return params

    @classmethod
    def count_batches(
        cls, n_samples: int, batch_size: int, *, drop_last: bool, **fit_data: Any
    ) -> int:
        """Batches in one epoch of a plan of this method, known without planning.

        What ``len()`` of a sampler returns before (or without) planning, on every rank with
        no communication. It must equal the rows of every epoch the method's plans yield
        (``for_epoch(e)``); the tests check it for every registered method.

        Default: N cut in order (the leftover rule of :mod:`hardbatch.batching`),
        ``N // batch_size`` batches with ``drop_last``, else ``ceil(N / batch_size)``. A method
        that cuts N otherwise (B3 per dataset group) overrides it; ``fit_data`` are the
        per-sample arrays of :attr:`fit_params` it was given.
        """
        n_full, rest = divmod(int(n_samples), int(batch_size))
        return n_full + (1 if rest and not drop_last else 0)

    # ---------------------------------------------------------------- checks
    def check_params(self, n_samples: int | None = None, **fit_data: Any) -> Planner:
        """Check every parameter; ``ValueError`` naming the first bad one. Returns ``self``.

        The one validation layer: :meth:`fit` (so :func:`hardbatch.plan` and the CLI), the
        sampler, the sentence-transformers adapter and :func:`hardbatch.distributed.plan_on_ray`
        call it before any work. The common parameters are checked here, each method
        parameter by its entry in :attr:`param_checks`, combinations by
        :meth:`_check_together`.

        Parameters
        ----------
        n_samples : int, optional
            N, when known: the checks that depend on it run too (``batch_size <= N``, GCBS's
            ``top_k < N``, B3's window ``p + m < N``).
        **fit_data
            The per-sample arrays about to be fitted (some checks depend on which are given).
        """
        if self.batch_size is not None:  # None: not known yet (the trainer sets it later)
            check_batch_size(self.batch_size, n_samples)
        check_seed(self.seed)
        check_bool(self.drop_last, "drop_last")
        params = self.get_params()
        if "hardness" in params:  # the dial of every hard method ("auto", float, schedule)
            check_hardness_param(params["hardness"])
        for name, check in self.param_checks.items():
            check(params[name], name)
        self._check_together(n_samples, fit_data)
        return self

    def _check_together(self, n_samples: int | None, fit_data: dict[str, Any]) -> None:
        """Checks of parameters together, or against N (method hook; default: none)."""

    # ---------------------------------------------------------------- fitting
    def fit(
        self,
        queries: ArrayLike | None = None,
        targets: ArrayLike | None = None,
        *,
        n_samples: int | None = None,
        duplicate_ids: Any = None,
        **fit_data: Any,
    ) -> Planner:
        """Plan batches for paired embeddings; the plan is stored in ``plan_``.

        Parameters
        ----------
        queries, targets : array-like of shape (N, d)
            Row i of ``queries`` is the positive of row i of ``targets``. Methods that do not
            read embeddings (``random``) accept ``n_samples`` instead.
        n_samples : int, optional
            N, for methods that need no embeddings.
        duplicate_ids : sequence of N hashable ids, optional
            False-negative guard of every method: samples with equal ids (e.g. a hash of the
            positive text) never share a batch, in any epoch. Applied after planning by
            swapping as few samples as possible between batches
            (:func:`hardbatch.batching.separate_duplicates`; the number of swaps is in
            ``plan.info["duplicate_guard"]``; where swaps find no way the layout is built,
            :mod:`hardbatch.guard`). ``ValueError`` before planning if no layout can keep
            the ids apart (e.g. an id occurs more often than there are batches).
        **fit_data
            The per-sample arrays named in :attr:`fit_params` (e.g. B3's ``labels``).

        Returns
        -------
        self
        """
        n, norms, batch_size, seed, codes, data = self._check_fit(
            queries, targets, n_samples, duplicate_ids, fit_data
        )
        start = time.perf_counter()
        dial, auto_record = self.resolve_hardness(queries, targets, norms, seed)
        self.hardness_graph_ = None
        plan = self._plan(
            queries, targets, n=n, batch_size=batch_size, seed=seed, norms=norms, **data
        )
        if auto_record is not None:  # the plan records the dial it was made with
            plan.params["hardness"] = dial
        undialled = None
        if dial < 1.0:  # before the guard, so that the guard holds for the mixed batches
            undialled = plan.batches
            plan.batches = mix_random_fill(
                plan.batches, dial, mix_rng(seed, 0), sample_groups=plan.sample_groups
            )
        if codes is not None:
            self._guard(plan, codes, seed)
        if self.hardness_graph_ is not None:
            tick = time.perf_counter()
            plan.info["hardness"] = plan_hardness(
                plan.batches,
                n=n,
                graph=self.hardness_graph_,
                dial=dial,
                undialled=undialled,
                embeddings=None if norms is None else (queries, targets, norms),
            )
            plan.info.setdefault("seconds", {})["hardness"] = time.perf_counter() - tick
            if auto_record is not None:
                plan.info["hardness"]["auto"] = auto_record
            rule, advice = self.near_random_hint(n)
            warn_near_random(self.name, plan.info["hardness"], n=n, rule=rule, advice=advice)
        plan.info.setdefault("seconds", {})["total"] = time.perf_counter() - start
        self.plan_ = plan.validate()
        return self

    def resolve_hardness(
        self, queries: Any, targets: Any, norms: Any, seed: int
    ) -> tuple[float, dict[str, Any] | None]:
        """The dial of epoch 0: ``(hardness, record)``. ``hardness="auto"`` is chosen from the
        embeddings (:func:`hardbatch.hardness.resolve_auto`; ``record`` says how), else
        ``record`` is None."""
        if not is_auto(self.hardness):
            return as_schedule(self.hardness).at(0), None
        if norms is None:  # no embeddings to judge: the method's own batches
            return 1.0, {"hardness": 1.0, "note": "no embeddings"}
        return resolve_auto(queries, targets, norms, seed=seed)

    def near_random_hint(self, n: int) -> tuple[str, str]:
        """``(rule, advice)`` of the near-random warning: the parameters that made the graph
        (``"quantile=0.999"``) and what to change. Graph methods override it."""
        return "its parameters", "its graph holds few hard pairs for this data"

    def _check_fit(self, queries, targets, n_samples, duplicate_ids, fit_data):
        """The checked inputs of :meth:`fit`: ``(n, norms, batch_size, seed, codes, data)``."""
        unknown = sorted(set(fit_data) - set(self.fit_params))
        if unknown:
            raise ValueError(
                f"method {self.name!r} got unknown fit argument(s) {unknown}; it accepts: "
                f"{', '.join(('duplicate_ids', *self.fit_params))}"
            )
        data = {k: v for k, v in fit_data.items() if v is not None}
        self.check_params(None, **data)  # cheap checks before the embeddings are read
        norms = None
        if self.uses_embeddings:
            if queries is None or targets is None:
                raise ValueError(f"method {self.name!r} needs queries and targets embeddings")
            norms = check_pair(queries, targets)
            n = n_rows(queries)
        else:
            n = self._count(queries, targets, n_samples)
        if n_samples is not None and (
            isinstance(n_samples, bool)
            or not isinstance(n_samples, (int, np.integer))
            or int(n_samples) != n
        ):
            raise ValueError(f"n_samples={n_samples!r} does not match the {n} embedding rows")
        self.check_params(n, **data)
        batch_size = check_batch_size(self.batch_size, n)
        seed = check_seed(self.seed)
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        codes = None if duplicate_ids is None else sample_codes(duplicate_ids, n)
        if codes is not None:
            # Refused now, before the planning work, if no layout can separate the ids.
            group = data.get(self.group_param) if self.group_param else None
            check_duplicate_layout(
                codes,
                batch_size,
                drop_last=bool(self.drop_last),
                groups=None if group is None else sample_codes(group, n, self.group_param),
            )
        return n, norms, batch_size, seed, codes, data

    @staticmethod
    def _guard(plan: BatchPlan, codes: np.ndarray, seed: int) -> None:
        """Apply the duplicate guard to the planned epoch, in place."""
        tick = time.perf_counter()
        plan.batches, n_swaps = separate_duplicates(
            plan.batches, codes, rng=guard_rng(seed, 0), sample_groups=plan.sample_groups
        )
        plan.duplicate_ids = codes
        plan.info["duplicate_guard"] = {
            "swaps": n_swaps,
            "distinct_ids": int(codes.max()) + 1 if codes.size else 0,
        }
        plan.info.setdefault("seconds", {})["duplicate_guard"] = time.perf_counter() - tick

    @staticmethod
    def _count(queries: Any, targets: Any, n_samples: int | None) -> int:
        rows = {}
        for a, name in ((queries, "queries"), (targets, "targets")):
            if a is not None:
                # Not read by the method, but a wrong array is a mistake worth naming.
                check_embeddings(a, name)
                rows[name] = n_rows(a)
        if len(set(rows.values())) > 1:
            raise ValueError(
                "queries and targets must have the same number of rows, got "
                f"{rows['queries']} and {rows['targets']}"
            )
        if rows:
            return next(iter(rows.values()))
        if n_samples is None:
            raise ValueError("give n_samples (or queries/targets) to plan")
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)):
            raise ValueError(f"n_samples must be an integer, got {n_samples!r}")
        if n_samples < 1:
            raise ValueError(f"n_samples must be at least 1, got {n_samples}")
        return int(n_samples)

    def _plan(
        self,
        queries: ArrayLike | None,
        targets: ArrayLike | None,
        *,
        n: int,
        batch_size: int,
        seed: int,
        norms: tuple[np.ndarray, np.ndarray] | None,
        **fit_data: Any,
    ) -> BatchPlan:
        """The method's stages; returns the plan of epoch 0 (before the duplicate guard).

        Called by :meth:`fit` with checked inputs: ``n`` rows, a checked ``batch_size``, an
        integer ``seed``, the row ``norms`` of queries and targets (``None`` when the method
        reads no embeddings), and the non-``None`` per-sample arrays of :attr:`fit_params`.
        """
        raise NotImplementedError

    def _make_plan(self, batches: np.ndarray, *, n: int, seed: int, **extra: Any) -> BatchPlan:
        """A :class:`BatchPlan` carrying this method's name, parameters and epoch rule."""
        return BatchPlan(
            batches=batches,
            method=self.name,
            n_samples=n,
            batch_size=int(self.batch_size),
            seed=seed,
            drop_last=bool(self.drop_last),
            params=self.method_params(),
            epoch_rule=self.epoch_rule,
            **extra,
        )

    # ---------------------------------------------------------------- subset planning
    @classmethod
    def subset_params(cls, params: dict[str, Any], *, subset_samples: int) -> dict[str, Any]:
        """Method parameters for re-planning the ``subset_samples`` not yet served in an epoch
        (the sampler's ``refresh="steps"``): the subset shrinks to a batch or two at the end of
        the epoch, where a parameter bounded by N must still plan. Default: unchanged."""
        return dict(params)

    # ---------------------------------------------------------------- sharded planning
    def shard_params(
        self, params: dict[str, Any], *, n_samples: int, shard_samples: int
    ) -> dict[str, Any]:
        """Method parameters for planning one shard of ``shard_samples`` of the
        ``n_samples`` rows (:func:`hardbatch.distributed.plan_on_ray`).

        ``params`` are the parameters as the caller gave them; the default passes them
        unchanged. A method whose parameters are relative to N rescales them here.
        """
        return dict(params)

    def merge_shards(
        self, shard_plans: Sequence[BatchPlan], members: Sequence[np.ndarray], *, n: int, seed: int
    ) -> BatchPlan:
        """One plan of all ``n`` samples from per-shard plans (local ids; ``members[s]`` maps
        shard ``s``'s local ids to global ids), with this planner's ``batch_size`` and
        ``drop_last``.

        Default (ordering methods): the full batches of every shard in shard order, then the
        pooled leftovers (:func:`hardbatch.batching.merge_shard_orders`).
        """
        order, batches = merge_shard_orders(
            [p.batches for p in shard_plans],
            list(members),
            int(self.batch_size),
            drop_last=bool(self.drop_last),
        )
        return self._make_plan(batches, n=n, seed=seed, order=order)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def check_planning(
    method: str,
    params: dict[str, Any],
    *,
    n_samples: int | None,
    batch_size: int | None,
    drop_last: bool = False,
    seed: int | None = 0,
    duplicate_ids: Any = None,
) -> Planner:
    """Check a planning request before anything is planned (the sampler and the
    sentence-transformers adapter, which plan later): the method's parameters
    (:meth:`Planner.check_params`; ``params`` may hold its fit arrays) and whether
    ``duplicate_ids`` can be kept apart. ``n_samples`` or ``batch_size`` may be ``None``
    when not known yet (their checks then wait). Returns the planner.
    """
    cls = get_method(method)
    allowed = [p for p in cls.param_names() if p not in COMMON_PARAMS] + list(cls.fit_params)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"method {method!r} got unknown parameter(s) {unknown}; "
            f"its parameters are: {', '.join(allowed) or '(none)'}"
        )
    fit_data = {k: v for k, v in params.items() if k in cls.fit_params and v is not None}
    ctor = {k: v for k, v in params.items() if k not in cls.fit_params}
    planner = cls(batch_size=batch_size, seed=seed, drop_last=drop_last, **ctor)
    planner.check_params(n_samples, **fit_data)
    if duplicate_ids is not None and batch_size is not None and n_samples is not None:
        group = fit_data.get(cls.group_param) if cls.group_param else None
        check_duplicate_layout(
            sample_codes(duplicate_ids, n_samples),
            int(batch_size),
            drop_last=bool(drop_last),
            groups=None if group is None else sample_codes(group, n_samples, cls.group_param),
        )
    return planner


def register_method(cls: P) -> P:
    """Class decorator: make a :class:`Planner` available as ``hardbatch.plan(cls.name)``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty `name` to be registered")
    check_epoch_rule(cls.epoch_rule)
    _REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> type[Planner]:
    """The planner class registered under ``name``."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown method {name!r}; available: {', '.join(available_methods())}"
        ) from None


def available_methods() -> list[str]:
    """Names of the registered methods."""
    return sorted(_REGISTRY)
