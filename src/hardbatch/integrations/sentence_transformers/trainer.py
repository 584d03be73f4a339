"""Trainer hooks: which dataloader a :class:`HardBatchConfig` builds a sampler for, the epoch
every training sampler serves, and the sampler state in every checkpoint.

``SentenceTransformerTrainer.get_batch_sampler`` is called the same way for the training,
evaluation and test dataloaders. The trainer's own dataloader builders
(``get_train_dataloader``, ``get_eval_dataloader``, ``get_test_dataloader``; documented override
points of ``transformers.Trainer``) know which one they build; the mixin records that while the
builder runs and passes it to the config as ``training=``.

Epochs and checkpoints go through a ``TrainerCallback`` (:class:`HardBatchCallback`, public
trainer API) rather than through the dataloader: ``set_epoch`` reaches a batch sampler only as
deep as the wrappers forward it, and when the trainer resumes mid-epoch under DDP the sampler
sits below accelerate's ``SkipBatchSampler`` and ``BatchSamplerShard``, where it never arrives.
The callback sets the epoch itself at every epoch start (``on_epoch_begin``, from
``state.epoch``), writes every training sampler's state into each checkpoint folder
(``on_save``: ``hardbatch_sampler_<rank>.pt``) and, when ``train(resume_from_checkpoint=...)``
resumes, restores it before the resumed epoch is served: the epoch's planned batches come back
(never re-planned from the checkpoint's later weights), the trainer skips the batches it
already trained, and the run serves exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from typing import Any

from ...checkpoint import load_state, save_state
from ...hardness import HardnessSchedule
from .masked_loss import masked_share_logs
from .sampler import HardBatchConfig, SentenceTransformersHardBatchSampler

try:
    from sentence_transformers import SentenceTransformerTrainer
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
except ImportError as exc:  # pragma: no cover - depends on the installed version
    raise ImportError(
        "hardbatch.sentence_transformers needs sentence-transformers >= 3: "
        "pip install 'hardbatch[sentence-transformers]'"
    ) from exc

#: Checkpoint file of the training samplers' states (``{rank}``: the process index).
STATE_FILE = "hardbatch_sampler_{rank}.pt"


class HardBatchCallback(TrainerCallback):
    """Epochs and checkpoints of the training samplers (installed by
    :class:`HardBatchTrainerMixin`).

    Attributes
    ----------
    samplers : list of SentenceTransformersHardBatchSampler
        The samplers of the latest training dataloader, in build order.
    resume_from : str or None
        Checkpoint folder whose sampler states are restored at the next epoch start.
    """

    def __init__(self) -> None:
        self.samplers: list[SentenceTransformersHardBatchSampler] = []
        self.resume_from: str | None = None

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.resume_from is not None:
            self.restore(self.resume_from, args.process_index)
            self.resume_from = None
        # state.epoch is a float (epoch + fraction done): its floor is the epoch starting.
        epoch = math.floor((state.epoch or 0.0) + 1e-9)
        for sampler in self.samplers:
            sampler.set_epoch(epoch)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.samplers:
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        os.makedirs(folder, exist_ok=True)
        states = [sampler.state_dict() for sampler in self.samplers]
        save_state(os.path.join(folder, STATE_FILE.format(rank=args.process_index)), states)

    def restore(self, folder: str, rank: int) -> None:
        """Load the samplers' states saved in ``folder`` (this rank's file, else rank 0's)."""
        path = os.path.join(folder, STATE_FILE.format(rank=rank))
        if not os.path.isfile(path):
            path = os.path.join(folder, STATE_FILE.format(rank=0))
        if not os.path.isfile(path):
            warnings.warn(
                f"hardbatch: {folder} holds no sampler state ({STATE_FILE.format(rank=rank)}); "
                "the resumed epoch is planned again and may differ from the interrupted one",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        states = load_state(path)
        if len(states) != len(self.samplers):
            raise ValueError(
                f"{path} holds {len(states)} sampler states, the training loader has "
                f"{len(self.samplers)} datasets"
            )
        for sampler, sampler_state in zip(self.samplers, states, strict=True):
            sampler.load_state_dict(sampler_state)
        trained = [s.get("trained") for s in states if s.get("trained") is not None]
        if trained:  # one queue per config: the batches the trainer skips are not recorded
            self.samplers[0].config.tracker.discard(max(trained))


class HardBatchTrainerMixin:
    """Mixin for a ``SentenceTransformerTrainer`` (sub)class: hard batches for training only.

    >>> class MyTrainer(HardBatchTrainerMixin, SentenceTransformerTrainer): ...

    With ``args.batch_sampler`` a :class:`HardBatchConfig`, samplers built for the training
    dataloader get ``training=True`` and those for evaluation/test dataloaders
    ``training=False`` (served by the ``random`` method unless ``eval_batches="hard"``). Any
    other ``batch_sampler`` is left to the trainer.
    """

    #: Whether the dataloader being built is the training one; ``None`` outside the builders.
    _hardbatch_training: bool | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Sets the training samplers' epoch, saves and restores their state.
        self.hardbatch_callback = HardBatchCallback()
        self.add_callback(self.hardbatch_callback)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kw: Any) -> Any:
        """``Trainer.train``; a resumed run also restores the samplers' state."""
        folder = resume_from_checkpoint
        if folder is True:
            folder = get_last_checkpoint(self.args.output_dir)  # None: the trainer raises
        self.hardbatch_callback.resume_from = folder or None
        return super().train(resume_from_checkpoint, *args, **kw)

    def get_train_dataloader(self, *args: Any, **kwargs: Any) -> Any:
        self.hardbatch_callback.samplers = []  # filled by get_batch_sampler
        return self._build_for(True, super().get_train_dataloader, *args, **kwargs)

    def get_eval_dataloader(self, *args: Any, **kwargs: Any) -> Any:
        return self._build_for(False, super().get_eval_dataloader, *args, **kwargs)

    def get_test_dataloader(self, *args: Any, **kwargs: Any) -> Any:
        return self._build_for(False, super().get_test_dataloader, *args, **kwargs)

    def _build_for(self, training: bool, build: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        previous = self._hardbatch_training
        self._hardbatch_training = training
        try:
            return build(*args, **kw)
        finally:
            self._hardbatch_training = previous

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        # Training logs get the share of negatives a FalseNegativeMaskedLoss left out
        # (mean over the steps since the last log), before any reporter sees them.
        if "loss" in logs:
            logs = {**logs, **masked_share_logs(self.loss)}
        return super().log(logs, *args, **kwargs)

    def _decay_schedule(self) -> HardnessSchedule:
        """``hardness="decay"``: ``HardnessSchedule.decay`` over ``num_train_epochs``
        (rounded up: a partial last epoch is the random one)."""
        if self.args.max_steps is not None and self.args.max_steps > 0:
            raise ValueError(
                "hardness='decay' counts epochs, but max_steps is set: pass "
                "hardness=HardnessSchedule.decay(n_epochs) for the epochs those steps cover"
            )
        return HardnessSchedule.decay(math.ceil(self.args.num_train_epochs))

    def get_batch_sampler(
        self,
        dataset: Any,
        batch_size: int,
        drop_last: bool,
        valid_label_columns: list[str] | None = None,
        generator: Any = None,
        seed: int = 0,
    ) -> Any:
        config = self.args.batch_sampler
        if isinstance(config, HardBatchConfig):
            sampler = config(
                dataset,
                batch_size=batch_size,
                drop_last=drop_last,
                valid_label_columns=valid_label_columns,
                generator=generator,
                seed=seed,
                training=self._hardbatch_training,
            )
            if sampler.for_training:
                self.hardbatch_callback.samplers.append(sampler)
            if config.decays and sampler.hard:  # eval_batches="hard" plans the method too
                sampler.decay_schedule = self._decay_schedule()
            return sampler
        return super().get_batch_sampler(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
        )


class HardBatchTrainer(HardBatchTrainerMixin, SentenceTransformerTrainer):
    """``SentenceTransformerTrainer`` that serves hard batches to training dataloaders only
    (:class:`HardBatchTrainerMixin`); use it exactly like the trainer it extends."""


__all__ = ["STATE_FILE", "HardBatchCallback", "HardBatchTrainer", "HardBatchTrainerMixin"]
