"""PyTorch Lightning: a recipe, and a callback made on demand (Lightning is not imported
by hardbatch otherwise).

Recipe::

    class Module(L.LightningModule):
        def __init__(self, dataset, encoder):
            super().__init__()
            self.dataset, self.encoder = dataset, encoder
            self.sampler = HardBatchSampler(
                n_samples=len(dataset), batch_size=256,        # global batch under DDP
                method="gcbs", refresh="recorded")           # or embed_fn=..., refresh="epoch"
            # README's recipe: these defaults to fine-tune an encoder; a head over frozen
            # features or a static table: hardness=HardnessSchedule.decay(MAX_EPOCHS)

        def train_dataloader(self):
            return DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=4)

        def training_step(self, batch, batch_idx):
            q, t = self.encoder(batch["query"]), self.encoder(batch["target"])
            self.sampler.record(q, t)                        # refresh="recorded" only
            return info_nce(q, t)

    trainer = L.Trainer(max_epochs=MAX_EPOCHS,             # a decay's epoch count
                        use_distributed_sampler=False,      # the sampler shards itself
                        callbacks=[make_callback()])

* Lightning calls ``set_epoch`` on a DataLoader's ``batch_sampler`` at every epoch start, so
  refreshes happen without help; the callback only logs the planning overhead
  (``hardbatch/refresh_seconds``) and sets the epoch explicitly (harmless if repeated).
* ``use_distributed_sampler=False`` is required under DDP: Lightning would otherwise try to
  rebuild the batch sampler around a ``DistributedSampler``. ``HardBatchSampler`` reads the
  world size and rank from ``torch.distributed`` (Lightning initialises it before asking for
  the dataloader) and gives each rank its slice of every global batch.
* ``record(q, t)`` without indices pops the batches the sampler handed out in order
  (Lightning's one-batch prefetch keeps that order); or pass ``indices=`` from the batch.
* For ``refresh="epoch"`` build ``embed_fn`` around the unwrapped module and switch it to
  eval mode inside (and back).
"""

from __future__ import annotations

from typing import Any


def _lightning_callback_base() -> type:
    try:
        from lightning.pytorch import Callback
    except ImportError:
        try:
            from pytorch_lightning import Callback
        except ImportError as exc:
            raise ImportError(
                "make_callback() needs PyTorch Lightning (`pip install lightning`); the recipe "
                "in hardbatch.integrations.lightning works without it"
            ) from exc
    return Callback


def make_callback(attribute: str = "sampler") -> Any:
    """A Lightning ``Callback`` that drives ``pl_module.<attribute>`` (a HardBatchSampler).

    It calls ``set_epoch(trainer.current_epoch)`` at each training epoch start and logs the
    last refresh's seconds as ``hardbatch/refresh_seconds`` at the epoch end.

    Parameters
    ----------
    attribute : str
        Name of the sampler attribute on the LightningModule.
    """
    base = _lightning_callback_base()

    class HardBatchCallback(base):
        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            getattr(pl_module, attribute).set_epoch(trainer.current_epoch)

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            sampler = getattr(pl_module, attribute)
            if sampler.history_:
                pl_module.log("hardbatch/refresh_seconds", sampler.planning_seconds())

    return HardBatchCallback()
