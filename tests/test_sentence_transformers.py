"""sentence-transformers: the trainer builds and drives the sampler; a tiny BERT built locally
(a WordPiece vocabulary written to a temporary folder, no download)."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

import hardbatch

st = pytest.importorskip("sentence_transformers")
datasets = pytest.importorskip("datasets")

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sentence_transformers import (  # noqa: E402
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from tiny_bert import save_tiny_bert  # noqa: E402

try:  # sentence-transformers >= 6 layout
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )
    from sentence_transformers.sentence_transformer.modules import Pooling
except ImportError:  # 3.x - 5.x
    from sentence_transformers.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )
    from sentence_transformers.models import Pooling, Transformer

from hardbatch.integrations.sentence_transformers import (  # noqa: E402
    HardBatchConfig,
    SentenceTransformersHardBatchSampler,
)
from hardbatch.integrations.sentence_transformers.sampler import DefaultBatchSampler  # noqa: E402
from hardbatch.sentence_transformers import (  # noqa: E402
    HardBatchSampler,
    HardBatchTrainer,
    RecordingLoss,
)

WORDS = (
    "alpha beta gamma delta red green blue cat dog fish bird tree leaf root river lake sea "
    "sun moon star stone sand wind rain snow"
).split()
HIDDEN = 16


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    """A 1-layer BERT (hidden 16, no dropout) and its WordPiece tokenizer, saved locally."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), WORDS, dropout=False)


class CallCounter:
    def __init__(self, model):
        self.calls = 0
        model.register_forward_hook(self)

    def __call__(self, *args):
        self.calls += 1


@pytest.fixture
def model(tiny_bert_dir):
    return SentenceTransformer(
        modules=[Transformer(tiny_bert_dir, max_seq_length=16), Pooling(HIDDEN, "mean")],
        device="cpu",
    )


def make_dataset(n, seed=0, duplicates=0):
    rng = np.random.default_rng(seed)
    anchors = [" ".join(rng.choice(WORDS, 4)) for _ in range(n)]
    positives = [a + " " + str(rng.choice(WORDS)) for a in anchors]
    for i in range(duplicates):  # sample i and n-1-i share their positive
        positives[n - 1 - i] = positives[i]
    return datasets.Dataset.from_dict({"anchor": anchors, "positive": positives})


def train(
    model,
    dataset,
    config,
    loss,
    *,
    epochs=2,
    batch_size=16,
    lr=5e-5,
    trainer_cls=SentenceTransformerTrainer,
    **kwargs,
):
    args = SentenceTransformerTrainingArguments(
        output_dir=kwargs.pop("output_dir", "unused"),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        learning_rate=lr,
        batch_sampler=config,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        **kwargs.pop("args", {}),
    )
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, loss=loss, **kwargs)
    if kwargs.get("eval_dataset") is not None and trainer_cls is HardBatchTrainer:
        trainer.evaluate()  # before training: the explicit split must still hold
    trainer.train()
    return trainer


def test_gcbs_epoch_refresh_with_mnrl(model, tmp_path):
    counter = CallCounter(model)
    dataset = make_dataset(80)
    config = HardBatchSampler.configure(method="gcbs", model=model, quantile=0.9)
    trainer = train(
        model, dataset, config, MultipleNegativesRankingLoss(model), output_dir=tmp_path
    )
    sampler = config.samplers_[0]
    assert isinstance(sampler, DefaultBatchSampler) and sampler.for_training
    assert [h["policy"] for h in sampler.history_] == ["epoch", "epoch"]
    assert trainer.state.global_step == 2 * len(sampler) == 2 * 5
    assert sampler.sampler_.plan_.method == "gcbs"
    # Training: 2 columns x 10 steps; refresh: one encode call per column and epoch.
    assert counter.calls == 2 * 10 + 2 * 2
    model.train()
    sampler._embed(np.arange(4))
    assert model.training, "the refresh pass left the model in eval mode"


@pytest.mark.parametrize(
    "loss_cls", [MultipleNegativesRankingLoss, CachedMultipleNegativesRankingLoss]
)
def test_recorded_refresh_no_extra_pass_and_aligned(model, loss_cls, tmp_path):
    counter = CallCounter(model)
    dataset = make_dataset(64, seed=1)
    config = HardBatchSampler.configure(method="gcbs", model=model, refresh="recorded")
    inner = (
        loss_cls(model)
        if loss_cls is MultipleNegativesRankingLoss
        else loss_cls(model, mini_batch_size=8)
    )
    loss = config.wrap_loss(inner)
    assert isinstance(loss, RecordingLoss) and loss.get_config_dict() == inner.get_config_dict()
    # lr=0 keeps the weights fixed, so every recording must equal the sample's own embedding.
    train(model, dataset, config, loss, lr=0.0, output_dir=tmp_path)
    calls = counter.calls
    sampler = config.samplers_[0]
    recorder = sampler.sampler_.recorder
    assert (recorder.stamps_ > 0).all(), "some sample was never recorded"
    expected_q = model.encode(dataset["anchor"], convert_to_numpy=True)
    expected_t = model.encode(dataset["positive"], convert_to_numpy=True)
    np.testing.assert_allclose(recorder.queries_, expected_q, atol=1e-5)
    np.testing.assert_allclose(recorder.targets_, expected_t, atol=1e-5)
    assert [h["policy"] for h in sampler.history_] == ["recorded", "recorded"]
    steps = 2 * len(sampler)
    # Calls per step: MNRL embeds each column once; the cached loss embeds each column's
    # 2 mini-batches twice (no-grad, then with grad). The only other calls: one initial
    # encode pass (one call per column) before the first epoch.
    per_step = 2 if loss_cls is MultipleNegativesRankingLoss else 2 * 2 * 2
    assert calls == per_step * steps + 2
    # Epoch 1 was planned from the recordings (the weights did not move, so they are final).
    reference = hardbatch.plan(
        "gcbs",
        recorder.queries_,
        recorder.targets_,
        batch_size=16,
        seed=sampler.sampler_.planning.epoch_seed(1),
        duplicate_ids=sampler.sampler_.duplicate_ids,
    )
    np.testing.assert_array_equal(sampler.sampler_.plan_.batches, reference.batches)


def test_datasetdict_gets_one_plan_per_dataset(model, tmp_path):
    data = datasets.DatasetDict({"a": make_dataset(48, seed=2), "b": make_dataset(32, seed=3)})
    config = HardBatchSampler.configure(method="gcbs", model=model, refresh="recorded")
    loss = config.wrap_loss(MultipleNegativesRankingLoss(model))
    train(model, data, config, loss, lr=0.0, output_dir=tmp_path)
    samplers = [s for s in config.samplers_ if s.for_training]
    assert [len(s.dataset) for s in samplers] == [48, 32]
    for sampler, name in zip(samplers, ["a", "b"], strict=True):
        recorder = sampler.sampler_.recorder
        assert (recorder.stamps_ > 0).all()
        # Interleaved batches of two datasets still land in the right recorder and rows.
        expected = model.encode(data[name]["anchor"], convert_to_numpy=True)
        np.testing.assert_allclose(recorder.queries_, expected, atol=1e-5)


def random_reference(n, batch_size, seed, epoch, drop_last=False):
    """The old adapter's evaluation batches: a seeded permutation cut in order."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    batches = [order[i : i + batch_size].tolist() for i in range(0, n, batch_size)]
    return batches[:-1] if drop_last and len(batches[-1]) < batch_size else batches


def check_eval_samplers(config, n_eval):
    evals = [s for s in config.samplers_ if not s.for_training]
    assert evals and all(not s.hard for s in evals)
    for s in evals:  # the core random method planned once, no embedding pass
        assert s.sampler_.refresh == "never" and s.sampler_.plan_.method == "random"
        assert all("embed" not in h["seconds"] for h in s.history_)
    sampler = evals[0]
    sampler.set_epoch(3)
    assert list(sampler) == random_reference(n_eval, 16, sampler.seed, 3)
    return evals


@pytest.mark.parametrize("trainer_cls", [SentenceTransformerTrainer, HardBatchTrainer])
def test_eval_sampler_serves_random_batches_without_embedding(model, tmp_path, trainer_cls):
    counter = CallCounter(model)
    config = HardBatchSampler.configure(method="gcbs", model=model, quantile=0.9)
    train(
        model,
        make_dataset(32),
        config,
        MultipleNegativesRankingLoss(model),
        epochs=1,
        eval_dataset=make_dataset(20, seed=5),
        args={"eval_strategy": "epoch"},
        output_dir=tmp_path,
        trainer_cls=trainer_cls,
    )
    calls = counter.calls
    evals = check_eval_samplers(config, 20)
    training = [s for s in config.samplers_ if s.for_training]
    assert len(training) == 1 and training[0].sampler_.plan_.method == "gcbs"
    # Training: 2 steps x 2 columns + 1 refresh pass (2 calls); each evaluation: 2 batches x
    # 2 columns (HardBatchTrainer also evaluates once before training).
    assert calls == 4 + 2 + 4 * len(evals)
    assert len(evals) == (2 if trainer_cls is HardBatchTrainer else 1)


def test_hard_batch_trainer_test_loader_and_other_samplers(model, tmp_path):
    config = HardBatchSampler.configure(method="gcbs", model=model, quantile=0.9)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path),
        per_device_eval_batch_size=16,
        batch_sampler=config,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = HardBatchTrainer(
        model=model,
        args=args,
        train_dataset=make_dataset(32),
        loss=MultipleNegativesRankingLoss(model),
    )
    loader = trainer.get_test_dataloader(make_dataset(20, seed=6))
    assert len(loader) == 2 and not config.samplers_[-1].for_training
    assert config.samplers_[-1].sampler_.plan_ is None  # len() counts, it does not plan
    list(config.samplers_[-1])
    assert config.samplers_[-1].sampler_.plan_.method == "random"
    trainer.get_train_dataloader()
    assert config.samplers_[-1].for_training
    # Any other batch_sampler is the trainer's own.
    plain = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, disable_tqdm=True
    )
    trainer = HardBatchTrainer(
        model=model,
        args=plain,
        train_dataset=make_dataset(32),
        loss=MultipleNegativesRankingLoss(model),
    )
    sampler = trainer.get_batch_sampler(make_dataset(32), batch_size=8, drop_last=False)
    assert type(sampler) is DefaultBatchSampler


def test_first_build_rule_without_the_trainer_mixin():
    config = HardBatchSampler.configure(method="random")
    a, b, dev = make_dataset(24), make_dataset(16, seed=1), make_dataset(20, seed=2)
    g_train, g_eval, g_again = torch.Generator(), torch.Generator(), torch.Generator()
    made = [
        config(a, batch_size=8, generator=g_train),  # first build: a DatasetDict of a and b
        config(b, batch_size=8, generator=g_train),
        config(dev, batch_size=8, generator=g_eval),  # a later build, another dataset
        config(a, batch_size=8, generator=g_again),  # the training loader rebuilt
        config(dev, batch_size=8, generator=g_again, training=True),  # said explicitly
    ]
    assert [s.for_training for s in made] == [True, True, False, True, True]


@pytest.mark.parametrize("n, drop_last", [(20, False), (20, True), (5, False), (5, True)])
def test_eval_batches_are_the_random_method(n, drop_last):
    config = HardBatchSampler.configure(method="gcbs")  # no model: fine, eval never embeds
    sampler = config(make_dataset(n), batch_size=8, drop_last=drop_last, seed=4, training=False)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        expected = random_reference(n, 8, 4, epoch, drop_last)
        assert list(sampler) == expected and len(sampler) == len(expected)
    if n >= 8:  # the core random method (it needs batch_size <= N)
        assert sampler.sampler_.plan_.method == "random"
    else:  # a set smaller than one batch: the same rule, served by the adapter
        assert sampler.history_ == [] and len(expected) == (0 if drop_last else 1)


def test_no_frame_inspection_in_src():
    """Eval loaders are told apart explicitly, never by walking the call stack."""
    import pathlib
    import re

    src = pathlib.Path(hardbatch.__file__).parent
    pattern = re.compile(r"inspect\.stack|currentframe|_getframe|f_back")
    hits = [str(p) for p in src.rglob("*.py") if pattern.search(p.read_text())]
    assert hits == []


def test_eval_batches_hard_on_request(model):
    config = HardBatchSampler.configure(
        method="gcbs", model=model, quantile=0.9, eval_batches="hard"
    )
    sampler = config(make_dataset(32), batch_size=8, drop_last=False, training=False)
    sampler.set_epoch(0)
    list(sampler)
    assert sampler.hard and sampler.sampler_.plan_.method == "gcbs"
    assert config.tracker_ is None  # evaluation samplers never feed the recorder queue


def test_public_names():
    assert HardBatchSampler is SentenceTransformersHardBatchSampler
    assert isinstance(HardBatchSampler.configure(), HardBatchConfig)
    import hardbatch.integrations.sentence_transformers as integration

    assert "HardBatchSampler" not in vars(integration)


def test_duplicate_guard_keeps_equal_positives_apart(model):
    dataset = make_dataset(64, duplicates=12)
    config = HardBatchSampler.configure(method="gcbs", model=model, quantile=0.9)
    sampler = config(dataset, batch_size=16, drop_last=False, seed=0)
    sampler.set_epoch(0)
    batches = list(sampler)
    assert sorted(np.concatenate(batches)) == list(range(64))
    for batch in batches:
        texts = [dataset[i]["positive"] for i in batch]
        assert len(set(texts)) == len(texts)
    assert sampler.sampler_.plan_.info["duplicate_guard"]["distinct_ids"] == 64 - 12


def test_teacher_embeddings_give_a_static_plan(model):
    dataset = make_dataset(40)
    teacher = (np.random.default_rng(0).standard_normal((40, 8)).astype("f4"),) * 2
    config = HardBatchSampler.configure(method="gcbs", embeddings=teacher, quantile=0.9)
    sampler = config(dataset, batch_size=8, drop_last=False, seed=0)
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) == first and sampler.sampler_.refresh == "never"
    assert len(sampler.history_) == 1


@pytest.mark.skipif("b3" not in hardbatch.available_methods(), reason="b3 not registered")
def test_b3_with_a_teacher_model(model, tmp_path):
    config = HardBatchSampler.configure(
        method="b3", teacher=model, cluster_size=4, p=2, m=6, duplicates=None
    )
    train(model, make_dataset(64), config, MultipleNegativesRankingLoss(model), output_dir=tmp_path)
    sampler = config.samplers_[0]
    assert sampler.sampler_.refresh == "never" and len(sampler.history_) == 1
    assert sampler.sampler_.plan_.clusters.shape[1] == 4


def test_config_pickles_without_runtime_state(model):
    config = HardBatchSampler.configure(method="gcbs", model=model, quantile=0.9)
    config(make_dataset(20), batch_size=8, drop_last=False)
    copy = pickle.loads(pickle.dumps(config))
    assert copy.model is None and copy.samplers_ == [] and copy.method_params == {"quantile": 0.9}


def test_bad_config(model):
    with pytest.raises(ValueError, match="unknown method"):
        HardBatchSampler.configure(method="nope")
    with pytest.raises(ValueError, match="refresh must be"):
        HardBatchSampler.configure(refresh="often")
    with pytest.raises(ValueError, match="duplicates must be"):
        HardBatchSampler.configure(duplicates="anchor")
    with pytest.raises(ValueError, match="encode"):
        HardBatchSampler.configure(teacher=object())
    sampler = HardBatchSampler.configure()(make_dataset(20), batch_size=8, drop_last=False)
    with pytest.raises(ValueError, match="pass model="):
        sampler.set_epoch(0)
    with pytest.raises(ValueError, match="query and a target column"):
        HardBatchSampler.configure(model=model, target_column="nope")(
            make_dataset(20), batch_size=8, drop_last=False
        )


DDP_WORKER = """
import os, pickle, sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_sentence_transformers import (HIDDEN, MultipleNegativesRankingLoss, Pooling,
    SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments,
    Transformer, make_dataset)
from hardbatch.sentence_transformers import HardBatchSampler

path, out = sys.argv[1], sys.argv[2]
model = SentenceTransformer(modules=[Transformer(path, max_seq_length=16), Pooling(HIDDEN)],
                            device="cpu")
dataset = make_dataset(64, seed=1)
config = HardBatchSampler.configure(method="gcbs", model=model, refresh="recorded")
args = SentenceTransformerTrainingArguments(
    output_dir=out, num_train_epochs=2, per_device_train_batch_size=8, learning_rate=0.0,
    batch_sampler=config, report_to=[], save_strategy="no", logging_strategy="no",
    disable_tqdm=True, use_cpu=True, seed=0)
trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                                     loss=config.wrap_loss(MultipleNegativesRankingLoss(model)))
trainer.train()
sampler = [s for s in config.samplers_ if s.for_training][0]
recorder = sampler.sampler_.recorder
recorder.synchronize()
result = dict(rank=int(os.environ["RANK"]), steps=trainer.state.global_step,
              stamps=recorder.stamps_, queries=recorder.queries_,
              plan=sampler.sampler_.plan_.batches, mismatches=config.tracker.mismatches_,
              expected=model.encode(dataset["anchor"], convert_to_numpy=True))
with open(os.path.join(out, f"rank{{result['rank']}}.pkl"), "wb") as fh:
    pickle.dump(result, fh)
"""


@pytest.mark.slow
def test_ddp_trainer_recordings_line_up_with_accelerate_sharding(tiny_bert_dir, tmp_path):
    """Two CPU processes (gloo) under the real trainer: accelerate gives batch j to rank
    j % 2, the loss-side recordings of both ranks must land on the right samples."""
    import socket
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER.format(tests=os.path.dirname(__file__)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), tiny_bert_dir, str(tmp_path)],
            env={
                **os.environ,
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": "2",
                "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "OMP_NUM_THREADS": "1",
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank in range(2)
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output.decode(errors="replace")[-3000:]
    results = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(2)]
    for r in results:
        assert r["steps"] == 2 * 64 // 8 // 2  # each rank trains on every other batch
        assert r["mismatches"] == 0 and (r["stamps"] > 0).all()
        np.testing.assert_allclose(r["queries"], r["expected"], atol=1e-5)
    np.testing.assert_array_equal(results[0]["plan"], results[1]["plan"])


@pytest.mark.skipif("b3" not in hardbatch.available_methods(), reason="b3 not registered")
def test_configure_forwards_the_hardness_dial(model):
    schedule = hardbatch.HardnessSchedule.linear(0.5, 1.0, epochs=2)
    config = HardBatchSampler.configure(
        method="b3", teacher=model, cluster_size=4, p=2, m=6, duplicates=None, hardness=schedule
    )
    sampler = config(make_dataset(64), batch_size=8, drop_last=False, seed=0)
    sampler.set_epoch(0)
    assert sorted(np.concatenate(list(sampler))) == list(range(64))
    plan = sampler.sampler_.plan_
    assert plan.params["hardness"] == schedule.to_json() and plan.info["hardness"]["dial"] == 0.5
    assert pickle.loads(pickle.dumps(config)).method_params["hardness"] == schedule


def test_hardness_decay_follows_the_trainers_epochs(model, tmp_path):
    """hardness="decay": HardBatchTrainer resolves HardnessSchedule.decay(num_train_epochs);
    without it, or with max_steps, the run stops with an error naming the fix."""
    config = HardBatchSampler.configure(
        method="gcbs", model=model, quantile=0.9, hardness="decay"
    )  # fmt: skip
    assert config.decays and pickle.loads(pickle.dumps(config)).method_params["hardness"] == "decay"
    train(model, make_dataset(80), config, MultipleNegativesRankingLoss(model), epochs=3,
          trainer_cls=HardBatchTrainer, output_dir=tmp_path)  # fmt: skip
    sampler = config.samplers_[0]
    decay = hardbatch.HardnessSchedule.decay(3)
    assert sampler.decay_schedule == decay
    # Evaluation samplers serving hard batches get the run's schedule too.
    hard_eval = HardBatchSampler.configure(
        method="gcbs", model=model, quantile=0.9, hardness="decay", eval_batches="hard"
    )
    train(model, make_dataset(80), hard_eval, MultipleNegativesRankingLoss(model), epochs=2,
          trainer_cls=HardBatchTrainer, output_dir=tmp_path,
          eval_dataset=make_dataset(40, seed=5))  # fmt: skip
    evals = [s for s in hard_eval.samplers_ if not s.for_training]
    assert evals and all(s.decay_schedule == hardbatch.HardnessSchedule.decay(2) for s in evals)
    # GCBS re-plans every epoch at the epoch's dial: random batches at the last one.
    assert [h["epoch"] for h in sampler.history_] == [0, 1, 2]
    assert sampler.sampler_.plan_.params["hardness"] == decay.at(2) == 0.0
    # The sentence-transformers trainer cannot tell the epochs: an error before any step.
    plain = HardBatchSampler.configure(method="gcbs", model=model, hardness="decay")
    with pytest.raises(ValueError, match="HardBatchTrainer"):
        train(model, make_dataset(80), plain, MultipleNegativesRankingLoss(model),
              output_dir=tmp_path)  # fmt: skip
    steps = HardBatchSampler.configure(method="gcbs", model=model, hardness="decay")
    with pytest.raises(ValueError, match="max_steps"):
        train(model, make_dataset(80), steps, MultipleNegativesRankingLoss(model),
              trainer_cls=HardBatchTrainer, output_dir=tmp_path, args={"max_steps": 7})  # fmt: skip
    one = HardBatchSampler.configure(method="gcbs", model=model, hardness="decay")
    with pytest.raises(ValueError, match="n_epochs >= 2"):
        train(model, make_dataset(80), one, MultipleNegativesRankingLoss(model), epochs=1,
              trainer_cls=HardBatchTrainer, output_dir=tmp_path)  # fmt: skip


def distinct_anchor_dataset(n=64):
    """Anchors made of distinct word pairs: their token ids name the sample."""
    anchors = [f"{WORDS[i % 25]} {WORDS[i // 25]} {WORDS[(3 * i) % 25]}" for i in range(n)]
    return datasets.Dataset.from_dict(
        {"anchor": anchors, "positive": [a + " sun" for a in anchors]}
    )


class LoggingLoss(torch.nn.Module):
    """MNRL that logs the sample ids of every batch it trains on."""

    def __init__(self, model, anchors, log):
        super().__init__()
        self.inner, self.log = MultipleNegativesRankingLoss(model), log
        tokens = model.tokenize(anchors)
        rows = zip(tokens["input_ids"], tokens["attention_mask"], strict=True)
        self.ids = {tuple(row[m.bool()].tolist()): i for i, (row, m) in enumerate(rows)}

    def forward(self, features, labels=None):
        f = features[0]
        rows = zip(f["input_ids"], f["attention_mask"], strict=True)
        self.log.append([self.ids[tuple(row[m.bool()].tolist())] for row, m in rows])
        return self.inner(features, labels)


def resume_run(bert_dir, out, method, checkpoint=None, save_steps=6):
    """Train 2 epochs of 64 samples in batches of 8 with HardBatchTrainer, saving every
    ``save_steps``; returns (ids trained per step, epochs planned, the sampler's last epoch)."""
    model = SentenceTransformer(
        modules=[Transformer(bert_dir, max_seq_length=16), Pooling(HIDDEN, "mean")], device="cpu"
    )
    dataset = distinct_anchor_dataset()
    kwargs = (
        {"quantile": 0.9}
        if method == "gcbs"
        else {"teacher": model, "cluster_size": 4, "p": 2, "m": 6}
    )
    config = HardBatchSampler.configure(method=method, model=model, duplicates=None, **kwargs)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out),
        num_train_epochs=2,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        batch_sampler=config,
        report_to=[],
        save_strategy="steps",
        save_steps=save_steps,
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    log = []
    loss = LoggingLoss(model, dataset["anchor"], log)
    trainer = HardBatchTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
    trainer.train(resume_from_checkpoint=checkpoint)
    sampler = trainer.hardbatch_callback.samplers[0]
    return log, [h["epoch"] for h in sampler.history_], sampler.epoch


@pytest.mark.parametrize("method", ["gcbs", "b3"])
def test_trainer_resumes_mid_epoch_with_the_uninterrupted_batches(tiny_bert_dir, tmp_path, method):
    """One process: resumed in the middle of epoch 1, the trainer trains exactly the batches of
    the uninterrupted run, planned before the checkpoint (not again from its weights)."""
    full, full_plans, _ = resume_run(tiny_bert_dir, tmp_path, method, save_steps=10)
    checkpoint = tmp_path / "checkpoint-10"  # epoch 1, 2 of its 8 steps done
    assert (checkpoint / "hardbatch_sampler_0.pt").is_file()
    resumed, plans, epoch = resume_run(tiny_bert_dir, tmp_path, method, str(checkpoint), 10)
    assert len(full) == 16 and resumed == full[10:] and epoch == 1
    assert full_plans == ([0, 1] if method == "gcbs" else [0]) and plans == []


RESUME_WORKER = """
import os, pickle, sys
sys.path.insert(0, {tests!r})
from test_sentence_transformers import resume_run

path, out, method = sys.argv[1], sys.argv[2], sys.argv[3]
result = {{"full": resume_run(path, out, method),
          "resumed": resume_run(path, out, method, os.path.join(out, "checkpoint-6"))}}
with open(os.path.join(out, f"rank{{os.environ['RANK']}}.pkl"), "wb") as fh:
    pickle.dump(result, fh)
"""


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gcbs", "b3"])
def test_ddp_trainer_resumes_mid_epoch_with_the_uninterrupted_batches(
    tiny_bert_dir, tmp_path, method
):
    """torchrun-like, 2 ranks on gloo: resumed from a checkpoint in the middle of epoch 1, each
    rank trains exactly the batches the uninterrupted run trained after that step (the epoch
    reaches the sampler below accelerate's SkipBatchSampler and BatchSamplerShard; the plan
    comes from the checkpoint)."""
    import socket
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(RESUME_WORKER.format(tests=os.path.dirname(__file__)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "OMP_NUM_THREADS": "1",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), tiny_bert_dir, str(tmp_path), method],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank in range(2)
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, output.decode(errors="replace")[-3000:]
    for rank in range(2):
        r = pickle.loads((tmp_path / f"rank{rank}.pkl").read_bytes())
        (full, full_plans, _), (resumed, plans, epoch) = r["full"], r["resumed"]
        assert len(full) == 8 and len(resumed) == 2  # 4 steps per epoch and rank; resumed at 6
        assert resumed == full[6:] and epoch == 1
        assert full_plans == ([0, 1] if method == "gcbs" else [0]) and plans == []
        assert (tmp_path / "checkpoint-6" / f"hardbatch_sampler_{rank}.pt").is_file()
