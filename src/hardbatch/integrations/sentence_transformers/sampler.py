"""The trainer's ``batch_sampler`` callable (:class:`HardBatchConfig`) and the sampler it makes
for one dataset (:class:`SentenceTransformersHardBatchSampler`).

Both live here because each needs the other: the config makes samplers, and the sampler's
:meth:`~SentenceTransformersHardBatchSampler.configure` makes a config.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from ...batching import epoch_rng
from ...distributed import torch_ddp as ddp
from ...hardness import HardnessSchedule
from ...methods import get_method
from ...methods.base import check_planning
from ...recording import BatchTracker, to_numpy_rows
from ...refresh import POLICY_CLASSES, REFRESH_POLICIES, resolve_refresh
from ...sampler import HardBatchSampler as CoreHardBatchSampler
from ...validation import check_optional_bool
from ..huggingface import select_rows, text_columns, text_duplicate_ids
from .loss import RecordingLoss
from .masked_loss import FalseNegativeMaskedLoss

#: ``hardness="decay"``: :meth:`HardnessSchedule.decay` over the run's epochs, which
#: :class:`~hardbatch.sentence_transformers.HardBatchTrainer` reads from its arguments.
DECAY = "decay"


def _planning_params(params: dict[str, Any], schedule: HardnessSchedule | None) -> dict[str, Any]:
    """``params`` with ``hardness="decay"`` replaced by ``schedule`` (a two-epoch decay, only
    to check the other parameters, when the run's schedule is not known yet)."""
    if params.get("hardness") != DECAY:
        return params
    return {**params, "hardness": schedule or HardnessSchedule.decay(2)}


try:  # sentence-transformers >= 6 moved the samplers to `base`
    from sentence_transformers.base.sampler import DefaultBatchSampler
except ImportError:  # pragma: no cover - depends on the installed version
    try:
        from sentence_transformers.sampler import DefaultBatchSampler
    except ImportError as exc:
        raise ImportError(
            "hardbatch.sentence_transformers needs sentence-transformers >= 3: "
            "pip install 'hardbatch[sentence-transformers]'"
        ) from exc

#: Values of ``duplicates=``.
DUPLICATE_RULES = (None, "target", "query", "pair")

#: Values of ``eval_batches=``.
EVAL_BATCHES = ("random", "hard")

#: Attributes that hold models, data or training state: never pickled with the config.
_RUNTIME_FIELDS = ("model", "teacher", "embeddings", "tracker_", "samplers_", "_train_build")


class HardBatchConfig:
    """The ``batch_sampler`` callable for ``SentenceTransformerTrainingArguments``.

    Made by :meth:`SentenceTransformersHardBatchSampler.configure` (see it for the
    parameters). Calling it as the trainer does returns a
    :class:`SentenceTransformersHardBatchSampler` for one dataset.

    Attributes
    ----------
    samplers_ : list of SentenceTransformersHardBatchSampler
        Every sampler made so far (training and evaluation), e.g. to read ``history_``.
    tracker_ : BatchTracker or None
        The batches handed to this process (made with the first sampler that needs it).
    track_batches : bool
        Queue training batches for the loss even when no refresh policy records (set by a
        :class:`FalseNegativeMaskedLoss` that masks from teacher or recorded embeddings).
    """

    track_batches: bool = False

    def __init__(
        self,
        method: str = "gcbs",
        *,
        model: Any = None,
        teacher: Any = None,
        embeddings: Any = None,
        refresh: str = "auto",
        refresh_every: int | None = None,
        initial: str = "auto",
        query_column: str | None = None,
        target_column: str | None = None,
        seed: int | None = None,
        duplicates: str | None = "target",
        eval_batches: str = "random",
        shuffle_batches: bool = False,
        embed_batch_size: int = 256,
        encode_kwargs: dict[str, Any] | None = None,
        progress: bool | None = None,
        **method_params: Any,
    ) -> None:
        # Unknown methods and bad parameters -> ValueError now, not inside the trainer (the
        # batch size and the dataset come with the trainer's first sampler: checked there).
        check_planning(
            method, _planning_params(method_params, None), n_samples=None, batch_size=None,
            seed=seed,
        )  # fmt: skip
        if refresh not in REFRESH_POLICIES:
            raise ValueError(f"refresh must be one of {REFRESH_POLICIES}, got {refresh!r}")
        if duplicates not in DUPLICATE_RULES:
            raise ValueError(f"duplicates must be one of {DUPLICATE_RULES}, got {duplicates!r}")
        if eval_batches not in EVAL_BATCHES:
            raise ValueError(f"eval_batches must be 'random' or 'hard', got {eval_batches!r}")
        if teacher is not None and not hasattr(teacher, "encode"):
            raise ValueError("teacher must have an .encode(texts) method (a SentenceTransformer)")
        if model is not None and not hasattr(model, "encode"):
            raise ValueError("model must have an .encode(texts) method (a SentenceTransformer)")
        self.method = method
        self.model = model
        self.teacher = teacher
        self.embeddings = embeddings
        self.refresh = refresh
        self.refresh_every = refresh_every
        self.initial = initial
        self.query_column = query_column
        self.target_column = target_column
        self.seed = seed
        self.duplicates = duplicates
        self.eval_batches = eval_batches
        self.shuffle_batches = shuffle_batches
        self.embed_batch_size = embed_batch_size
        self.encode_kwargs = dict(encode_kwargs or {})
        self.progress = check_optional_bool(progress, "progress")
        self.method_params = method_params
        self.samplers_: list[SentenceTransformersHardBatchSampler] = []
        self.tracker_: BatchTracker | None = None
        # The first dataloader build without an explicit `training=`: its generator and
        # datasets (see `_is_training`). Objects, not ids: ids can be reused once freed.
        self._train_build: tuple[Any, list[Any]] | None = None

    # ------------------------------------------------------------------ trainer protocol
    def __call__(
        self,
        dataset: Any,
        batch_size: int,
        drop_last: bool = False,
        valid_label_columns: list[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
        *,
        training: bool | None = None,
    ) -> SentenceTransformersHardBatchSampler:
        """A sampler for ``dataset``, as ``SentenceTransformerTrainer.get_batch_sampler`` asks.

        Parameters
        ----------
        training : bool, optional
            Whether the sampler serves a training dataloader (hard batches) or an evaluation
            one (``eval_batches``). :class:`HardBatchTrainer` passes it; ``None`` (a plain
            trainer) applies the first-build rule of the package docstring.
        """
        if training is None:
            training = self._is_training(dataset, generator)
        sampler = SentenceTransformersHardBatchSampler(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
            config=self,
            training=training,
        )
        self.samplers_.append(sampler)
        return sampler

    def _is_training(self, dataset: Any, generator: Any) -> bool:
        """The first-build rule, for callers that do not say which loader they build.

        The trainer makes one generator per dataloader it builds and passes it for every
        sub-dataset, so the first call's generator marks the first build (one dataset, or all
        of a ``DatasetDict``); ``train()`` builds the training loader before evaluating.
        """
        if self._train_build is None:
            self._train_build = (generator, [dataset])
            return True
        first_generator, datasets = self._train_build
        if generator is first_generator:
            if not any(d is dataset for d in datasets):
                datasets.append(dataset)
            return True
        return any(d is dataset for d in datasets)  # a rebuilt training loader

    @property
    def decays(self) -> bool:
        """Whether ``hardness="decay"`` (resolved per sampler from the run's epochs)."""
        return self.method_params.get("hardness") == DECAY

    @property
    def tracker(self) -> BatchTracker:
        """Batches handed to this process, in order, for :class:`RecordingLoss` (shared by
        all samplers of this config; accelerate gives batch ``j`` to rank ``j % W``)."""
        if self.tracker_ is None:
            self.tracker_ = BatchTracker(ddp.world_size(), ddp.rank())
        return self.tracker_

    def wrap_loss(
        self, loss: nn.Module, false_negatives: dict[str, Any] | None = None
    ) -> RecordingLoss | FalseNegativeMaskedLoss:
        """Wrap a loss so that its forward pass records embeddings (``refresh="recorded"``)
        and, with ``false_negatives=dict(rule=, margin=, mask_from=, embeddings=)``, leaves
        suspected false negatives out (:class:`FalseNegativeMaskedLoss`, which records too)."""
        if false_negatives is None:
            return RecordingLoss(loss, self)
        if not isinstance(false_negatives, dict):
            raise ValueError(
                "false_negatives must be a dict of FalseNegativeMaskedLoss options, e.g. "
                f"dict(rule='relative', margin=0.95, mask_from='self'), got {false_negatives!r}"
            )
        return FalseNegativeMaskedLoss(loss, config=self, **false_negatives)

    @property
    def encoder(self) -> Any:
        """The model that embeds texts for planning: the teacher, else the trained model."""
        return self.teacher if self.teacher is not None else self.model

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in _RUNTIME_FIELDS:
            state[name] = [] if name == "samplers_" else None
        return state

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.method_params.items())
        return (
            f"HardBatchConfig(method={self.method!r}, refresh={self.refresh!r}"
            f"{', ' + params if params else ''})"
        )


class SentenceTransformersHardBatchSampler(DefaultBatchSampler):
    """A sentence-transformers batch sampler serving a hardbatch plan for one dataset.

    Built by the trainer through :meth:`configure`; the constructor has the trainer's
    signature plus the config and the split. The batches come from :attr:`sampler_`, a core
    :class:`hardbatch.HardBatchSampler` with ``shard=False`` (accelerate shards the stream),
    created at the first use: the configured method for training samplers, the ``random``
    method for evaluation samplers (unless ``eval_batches="hard"``).

    Parameters
    ----------
    dataset, batch_size, drop_last, valid_label_columns, generator, seed
        As ``SentenceTransformerTrainer.get_batch_sampler`` passes them.
    config : HardBatchConfig, optional
        Default: ``HardBatchConfig()``.
    training : bool
        Whether this sampler serves a training dataloader (attribute ``for_training``).
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        drop_last: bool,
        valid_label_columns: list[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
        config: HardBatchConfig | None = None,
        *,
        training: bool = True,
    ) -> None:
        super().__init__(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
        )
        self.dataset = dataset
        self.config = config if config is not None else HardBatchConfig()
        if self.config.seed is not None:
            self.seed = self.config.seed
        columns = text_columns(dataset, valid_label_columns)
        self.query_column = self.config.query_column or (columns[0] if columns else None)
        self.target_column = self.config.target_column or (columns[1] if len(columns) > 1 else None)
        for name in (self.query_column, self.target_column):
            if name is None or name not in dataset.column_names:
                raise ValueError(
                    f"hardbatch needs a query and a target column; dataset columns: "
                    f"{dataset.column_names} (set query_column= / target_column=)"
                )
        self.for_training = bool(training)
        #: The run's hardness schedule for ``hardness="decay"`` (set by HardBatchTrainer).
        self.decay_schedule: HardnessSchedule | None = None
        self._sampler: CoreHardBatchSampler | None = None
        if self.hard:
            # Before any embedding pass (the teacher's runs at the first use of the sampler).
            check_planning(
                self.config.method,
                _planning_params(self.config.method_params, None),
                n_samples=len(dataset),
                batch_size=batch_size,
                drop_last=bool(drop_last),
                seed=self.seed,
            )

    @classmethod
    def configure(cls, method: str = "gcbs", **kwargs: Any) -> HardBatchConfig:
        """The value for ``SentenceTransformerTrainingArguments(batch_sampler=...)``.

        Parameters
        ----------
        method : str
            ``"gcbs"``, ``"b3"``, ``"random"``, ...
        model : SentenceTransformer, optional
            The model being trained: embeds the query/target columns for GCBS refreshes (and
            is B3's teacher when no other is given).
        teacher : model with ``.encode``, optional
            Embeds once for static methods (B3).
        embeddings : (Tq, Tt) or callable ``dataset -> (Tq, Tt)``, optional
            Precomputed (teacher) embeddings instead of a model.
        refresh : {"auto", "never", "epoch", "recorded", "steps"}
            See :mod:`hardbatch.refresh`; ``"auto"`` re-plans GCBS every epoch from ``model``
            and plans static methods (or from a given teacher) once.
        refresh_every : int, optional
            Batches between re-plans with ``refresh="steps"``.
        initial : {"auto", "embed", "random"}
            First epoch of ``refresh="recorded"``.
        query_column, target_column : str, optional
            Default: the first two input columns.
        seed : int, optional
            Default: the trainer's ``args.seed``.
        duplicates : {"target", "query", "pair", None}
            False-negative guard (package docstring).
        eval_batches : {"random", "hard"}
            Batches of evaluation dataloaders (package docstring).
        shuffle_batches : bool
            Visit the batches of an epoch in random order.
        embed_batch_size : int
            Texts per ``encode`` call in the embedding pass.
        encode_kwargs : dict, optional
            Extra ``model.encode`` arguments (e.g. ``{"prompt_name": "query"}``).
        progress : bool, optional
            Progress bar of the embedding pass.
        **method_params
            Passed to ``hardbatch.plan`` (``quantile=``, ``top_k=``, ``cluster_size=``, ...).
            ``hardness="decay"``: ``HardnessSchedule.decay`` over the run's epochs, which
            :class:`~hardbatch.sentence_transformers.HardBatchTrainer` reads from
            ``num_train_epochs`` (README's recipe for a ``StaticEmbedding`` model; a
            fine-tuned transformer trained best with the default, constant hardness; any
            other trainer raises at the first use).
        """
        return HardBatchConfig(method, **kwargs)

    # ------------------------------------------------------------------ the plan
    @property
    def hard(self) -> bool:
        """Whether this sampler serves the configured method (else the ``random`` method)."""
        return self.for_training or self.config.eval_batches == "hard"

    @property
    def sampler_(self) -> CoreHardBatchSampler:
        """The core :class:`hardbatch.HardBatchSampler` serving this dataset (made on first
        use)."""
        if self._sampler is None:
            self._sampler = self._make_sampler() if self.hard else self._random_sampler()
        return self._sampler

    def _random_sampler(self) -> CoreHardBatchSampler:
        """The core ``random`` method with the trainer's seed (evaluation batches)."""
        return CoreHardBatchSampler(
            n_samples=len(self.dataset),
            batch_size=self.batch_size,
            method="random",
            seed=int(self.seed or 0),
            drop_last=self.drop_last,
            shard=False,
        )

    def _make_sampler(self) -> CoreHardBatchSampler:
        cfg = self.config
        method_cls = get_method(cfg.method)
        embeddings = cfg.embeddings(self.dataset) if callable(cfg.embeddings) else cfg.embeddings
        asked = POLICY_CLASSES.get(cfg.refresh)  # None for "auto"
        uses = method_cls.uses_embeddings
        if uses and cfg.encoder is None:
            # Without a model only given embeddings (a policy that plans once from them) or
            # recordings (first epoch random) can feed the plan.
            if (embeddings is None and not (asked is not None and asked.records)) or (
                asked is not None and asked.needs_embed_fn
            ):
                raise ValueError(
                    f"hardbatch method {cfg.method!r} needs embeddings: pass model= (the "
                    "SentenceTransformer being trained), teacher= or embeddings= to "
                    "HardBatchSampler.configure(...)"
                )
        refresh = resolve_refresh(
            cfg.refresh,
            method_cls=method_cls,
            embed_fn_given=uses and cfg.encoder is not None,
            embeddings_given=embeddings is not None,
            # A teacher or given embeddings are fixed: "auto" plans once from them.
            embed_fn_follows_model=cfg.teacher is None and embeddings is None,
        )
        return CoreHardBatchSampler(
            n_samples=len(self.dataset),
            batch_size=self.batch_size,
            method=cfg.method,
            seed=self.seed,
            drop_last=self.drop_last,
            embeddings=embeddings,
            embed_fn=self._embed if uses and cfg.encoder is not None else None,
            refresh=refresh,
            refresh_every=cfg.refresh_every,
            initial=cfg.initial,
            shuffle_batches=cfg.shuffle_batches,
            embed_batch_size=cfg.embed_batch_size,
            shard=False,  # accelerate shards the batch stream across ranks
            duplicate_ids=self._duplicate_ids(),
            progress=cfg.progress,
            **self._method_params(),
        )

    def _method_params(self) -> dict[str, Any]:
        """The config's method parameters, ``hardness="decay"`` resolved for this run."""
        if self.config.decays and self.decay_schedule is None:
            raise ValueError(
                "hardness='decay' needs the run's epoch count: train with hardbatch's "
                "HardBatchTrainer (it reads num_train_epochs), or pass "
                "hardness=HardnessSchedule.decay(n_epochs)"
            )
        return _planning_params(self.config.method_params, self.decay_schedule)

    def _duplicate_ids(self) -> np.ndarray | None:
        rule = self.config.duplicates
        if rule is None:
            return None
        columns = {
            "target": self.target_column,
            "query": self.query_column,
            "pair": [self.query_column, self.target_column],
        }[rule]
        return text_duplicate_ids(self.dataset, columns)

    def _embed(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Embed the query and target texts of ``indices`` with the encoder (eval mode, then
        the model's training mode is restored: ``encode`` leaves it in eval mode)."""
        encoder = self.config.encoder
        rows = select_rows(self.dataset, indices)
        was_training = getattr(encoder, "training", False)
        kwargs = {"show_progress_bar": False, **self.config.encode_kwargs}
        try:
            out = [
                to_numpy_rows(
                    encoder.encode(
                        list(rows[column]),
                        batch_size=len(indices),
                        convert_to_tensor=True,
                        **kwargs,
                    ),
                    f"encoded {column}",
                )
                for column in (self.query_column, self.target_column)
            ]
        finally:
            if hasattr(encoder, "train"):
                encoder.train(was_training)
        return out[0], out[1]

    # ------------------------------------------------------------------ sampler protocol
    @property
    def _whole_set(self) -> bool:
        # The random method needs 2 <= batch_size <= N; a smaller evaluation set (or batch
        # size 1) is served by the same rule, a seeded permutation cut in order, here.
        return not self.hard and not 2 <= self.batch_size <= len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer (and accelerate) before every epoch."""
        super().set_epoch(epoch)
        if not self._whole_set:
            self.sampler_.set_epoch(epoch)
        if self.for_training:
            self.config.tracker.reset()

    def __len__(self) -> int:
        if self._whole_set:
            n_full, rest = divmod(len(self.dataset), self.batch_size)
            return n_full + (1 if rest and not self.drop_last else 0)
        return len(self.sampler_)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The epoch, the core sampler's state (:meth:`hardbatch.HardBatchSampler.state_dict`)
        and how many batches this rank trained on this epoch (``trained``: what the loss-side
        recording skips when the epoch is replayed). No collective.

        :class:`HardBatchTrainer` saves it in every checkpoint folder and restores it when
        training resumes.
        """
        state: dict[str, Any] = {"epoch": int(self.epoch)}
        if not self._whole_set:
            state["core"] = self.sampler_.state_dict()
        if self.for_training and self.config.tracker_ is not None:
            state["trained"] = self.config.tracker_.popped_
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`: the epoch is served again from its first batch,
        the same batches (planned before the checkpoint, never re-planned from its later
        weights); the trainer skips those it already trained (accelerate's
        ``skip_first_batches``). The loss-side recording must skip them too:
        ``config.tracker.discard(state["trained"])`` (:class:`HardBatchTrainer` does it)."""
        super().set_epoch(int(state["epoch"]))
        if "core" in state:
            self.sampler_.load_state_dict(state["core"], replay=True)

    def __iter__(self) -> Iterator[list[int]]:
        if self._whole_set:
            order = epoch_rng(int(self.seed or 0), self.epoch).permutation(len(self.dataset))
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                if len(batch) < self.batch_size and self.drop_last:
                    return
                yield batch.tolist()
            return
        sampler = self.sampler_
        recording = self.for_training and (sampler.policy.records or self.config.track_batches)
        tracker = self.config.tracker if recording else None
        for batch in sampler:
            if tracker is not None:
                tracker.push(sampler.recorder, batch)
            yield batch

    @property
    def history_(self) -> list[dict[str, Any]]:
        """Planning runs with their seconds (see :class:`hardbatch.HardBatchSampler`)."""
        return [] if self._sampler is None else self._sampler.history_


__all__ = [
    "DUPLICATE_RULES",
    "EVAL_BATCHES",
    "DefaultBatchSampler",
    "HardBatchConfig",
    "SentenceTransformersHardBatchSampler",
]
