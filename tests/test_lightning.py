"""The Lightning callback, against a stand-in ``lightning.pytorch`` module (Lightning itself is
not a dependency)."""

from __future__ import annotations

import sys
import types

import pytest

from hardbatch import HardBatchSampler
from hardbatch.integrations.lightning import make_callback


def test_make_callback_without_lightning_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "pytorch_lightning", None)
    with pytest.raises(ImportError, match="pip install lightning"):
        make_callback()


def test_callback_sets_the_epoch_and_logs_the_refresh(monkeypatch):
    class Callback:  # the stand-in base class
        pass

    fake = types.ModuleType("lightning.pytorch")
    fake.Callback = Callback
    monkeypatch.setitem(sys.modules, "lightning", types.ModuleType("lightning"))
    monkeypatch.setitem(sys.modules, "lightning.pytorch", fake)

    logged = {}
    module = types.SimpleNamespace(
        sampler=HardBatchSampler(n_samples=40, batch_size=8, method="random"),
        log=lambda name, value: logged.update({name: value}),
    )
    callback = make_callback()
    assert isinstance(callback, Callback)
    callback.on_train_epoch_start(types.SimpleNamespace(current_epoch=3), module)
    assert module.sampler.epoch == 3
    list(module.sampler)  # plans (once) for the random method
    callback.on_train_epoch_end(None, module)
    assert logged["hardbatch/refresh_seconds"] >= 0
