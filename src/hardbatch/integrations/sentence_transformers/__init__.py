"""sentence-transformers: hard batches in ``SentenceTransformerTrainer`` (extra
``hardbatch[sentence-transformers]``).

>>> from hardbatch.sentence_transformers import HardBatchSampler, HardBatchTrainer
>>> hard = HardBatchSampler.configure(method="gcbs", model=model, quantile=0.999)
>>> args = SentenceTransformerTrainingArguments(..., batch_sampler=hard)
>>> trainer = HardBatchTrainer(model=model, args=args, train_dataset=ds, eval_dataset=dev,
...                            loss=MultipleNegativesRankingLoss(model))

How it plugs in: the trainer calls ``args.batch_sampler(dataset, batch_size=, drop_last=,
valid_label_columns=, generator=, seed=)`` for every (sub-)dataset of the training, evaluation
and test dataloaders, and ``set_epoch(e)`` before each epoch. :meth:`HardBatchConfig` (made by
``configure``) is that callable; each call makes a :class:`SentenceTransformersHardBatchSampler`,
a ``DefaultBatchSampler`` subclass that serves a :class:`hardbatch.HardBatchSampler` plan for
that dataset. A ``DatasetDict`` therefore gets one plan per dataset (the trainer's
multi-dataset sampler interleaves them).

Modules: :mod:`.sampler` (the config and the sampler it makes), :mod:`.loss`
(:class:`RecordingLoss`, for ``refresh="recorded"``), :mod:`.masked_loss`
(:class:`FalseNegativeMaskedLoss`, false negatives left out of MNRL / CachedMNRL),
:mod:`.trainer` (:class:`HardBatchTrainer` and :class:`HardBatchTrainerMixin`, which say which
dataloader a sampler is for and log the masked share).

Where the embeddings come from
------------------------------
* ``method="gcbs"`` (re-planned from the model being trained): ``model=`` (the
  ``SentenceTransformer`` you train), with ``refresh="epoch"`` (default: ``model.encode`` over
  the query and target columns at every epoch start), ``"steps"`` or ``"recorded"``: wrap the
  loss with :meth:`HardBatchConfig.wrap_loss` and the training forward pass records the
  embeddings, no extra pass (works with ``MultipleNegativesRankingLoss`` and
  ``CachedMultipleNegativesRankingLoss``; the first epoch is planned from one
  ``model.encode`` pass, or random without ``model=``).
* ``method="b3"`` (static, planned once): ``teacher=`` a model with ``.encode`` (a
  ``SentenceTransformer``), or ``embeddings=(Tq, Tt)`` precomputed teacher embeddings (or a
  callable ``dataset -> (Tq, Tt)`` for several datasets); without either, the initial
  ``model=`` is the teacher.

``refresh="auto"`` is resolved by the core :func:`hardbatch.refresh.resolve_refresh`: a
teacher or given embeddings are fixed (plan once), ``model=`` follows training (re-plan each
epoch), static methods plan once.

Columns: the query is the first input column and the target the second (the order
``MultipleNegativesRankingLoss`` reads them), label columns and ``dataset_name`` excluded;
override with ``query_column=`` / ``target_column=``.

False negatives: ``duplicates="target"`` (default) hashes the target text so that two samples
with the same positive never share a batch (the guarantee ``BatchSamplers.NO_DUPLICATES``
gives); ``"query"`` hashes the query, ``"pair"`` both, ``None`` turns the guard off. Hard
batches need it more than random ones: exact duplicates are each other's nearest neighbours.

False negatives in the loss: ``loss = config.wrap_loss(MultipleNegativesRankingLoss(model),
false_negatives=dict(rule="relative", margin=0.95, mask_from="self"))`` leaves the in-batch
negatives scored above 0.95 × the positive out of the softmax (no extra forward pass;
``mask_from="teacher"`` with ``embeddings=(Tq, Tt)``, or ``"recorded"``, scores them with the
teacher's or the recorder's embeddings of the batch's samples). :class:`HardBatchTrainer` logs
``masked_share`` (share of negatives left out) with the training loss.

Evaluation
----------
Evaluation and test dataloaders are built with the same ``batch_sampler``. Their samplers
(``for_training`` false) serve the core ``random`` method's seeded batches
(``eval_batches="random"``, default), so evaluation costs no embedding pass and no recording;
``eval_batches="hard"`` evaluates on hard batches too. Which dataloader a sampler is for is
decided explicitly:

* :class:`HardBatchTrainer` (or :class:`HardBatchTrainerMixin` on your own trainer subclass)
  overrides the trainer's ``get_train_dataloader`` / ``get_eval_dataloader`` /
  ``get_test_dataloader`` and passes ``training=True`` / ``False`` to the config. Recommended.
* With a plain ``SentenceTransformerTrainer`` nothing tells the config which loader it builds,
  so the config takes **the first dataloader built as the training one**: the datasets of its
  first call (all the sub-datasets sharing that call's ``generator``, i.e. one ``DatasetDict``)
  are training datasets, a later call for one of those dataset objects is a training one (a
  rebuilt training loader), and any other dataset is an evaluation set. ``train()`` builds the
  training loader before it evaluates, so this holds unless you call ``trainer.evaluate()``
  before ``trainer.train()`` — use :class:`HardBatchTrainer` then.
* Calling the config yourself: ``config(dataset, batch_size=..., training=False)``.

DDP: every rank builds the same plan (embedding pass split across ranks and gathered, plan
made on rank 0 and broadcast) and the sampler yields every *per-device* batch in order;
accelerate hands batch ``j`` to rank ``j % world_size``, so ``per_device_train_batch_size`` is
the plan's batch size. ``MultipleNegativesRankingLoss(gather_across_devices=True)`` then sees
``world_size`` consecutive batches of the plan as its global batch.

Saving: ``training_args.bin`` pickles the configuration only (method, parameters, policy);
model, teacher, embeddings and recorded state are left out. The training samplers' state
(epoch, the epoch's planned batches, a plan made once, recordings) goes into every checkpoint
folder through :class:`HardBatchCallback`, which :class:`HardBatchTrainer` installs; it also
sets the samplers' epoch at every epoch start, so a run resumed with
``train(resume_from_checkpoint=...)`` trains exactly the batches the uninterrupted run would
have (``len()`` and ``set_epoch`` never communicate: any rank may call them alone).
"""

from .loss import RecordingLoss
from .masked_loss import FalseNegativeMaskedLoss
from .sampler import DUPLICATE_RULES, HardBatchConfig, SentenceTransformersHardBatchSampler
from .trainer import HardBatchCallback, HardBatchTrainer, HardBatchTrainerMixin

__all__ = [
    "DUPLICATE_RULES",
    "FalseNegativeMaskedLoss",
    "HardBatchCallback",
    "HardBatchConfig",
    "HardBatchTrainer",
    "HardBatchTrainerMixin",
    "RecordingLoss",
    "SentenceTransformersHardBatchSampler",
]
