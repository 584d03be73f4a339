"""FalseNegativeMaskedLoss: equal to sentence-transformers' losses with nothing masked, the
right logits left out (slow loop reference), mask rows picked by the batch's dataset indices,
no extra forward pass, and the masked share in the trainer's logs."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("sentence_transformers")
pytest.importorskip("datasets")

from test_sentence_transformers import (  # noqa: E402
    HIDDEN,
    WORDS,
    CachedMultipleNegativesRankingLoss,
    CallCounter,
    MultipleNegativesRankingLoss,
    Pooling,
    SentenceTransformer,
    SentenceTransformerTrainingArguments,
    Transformer,
    make_dataset,
)
from tiny_bert import save_tiny_bert  # noqa: E402

import hardbatch  # noqa: E402
from hardbatch import EmbeddingRecorder  # noqa: E402
from hardbatch.losses import false_negative_mask, info_nce  # noqa: E402
from hardbatch.recording import BatchTracker  # noqa: E402
from hardbatch.sentence_transformers import (  # noqa: E402
    FalseNegativeMaskedLoss,
    HardBatchSampler,
    HardBatchTrainer,
)


@pytest.fixture(scope="module")
def words_bert_dir(tmp_path_factory):
    """A 1-layer BERT (no dropout) whose tokenizer knows the words (given as a dict: newer
    transformers ignore ``vocab_file=``, and a tokenizer that maps every word to [UNK] embeds
    all texts of a length alike, leaving nothing to mask)."""
    return save_tiny_bert(
        tmp_path_factory.mktemp("words_bert"),
        WORDS,
        dropout=False,
        initializer_range=0.5,  # spread the word embeddings: texts embed apart
    )


@pytest.fixture
def model(words_bert_dir):
    return SentenceTransformer(
        modules=[Transformer(words_bert_dir, max_seq_length=16), Pooling(HIDDEN, "mean")],
        device="cpu",
    )


class StubConfig:
    """The parts of a HardBatchConfig the loss reads (MaskTarget)."""

    def __init__(self, model=None, embeddings=None):
        self.model = model
        self.embeddings = embeddings
        self.tracker_ = BatchTracker()
        self.track_batches = False


def features(model, texts_by_column):
    return [model.preprocess(list(texts)) for texts in texts_by_column]


def batch_texts(b=8, seed=0, duplicates=2, negatives=False):
    """Columns (anchor, positive[, negative]); the first `duplicates` positives are repeated
    at the end, so those pairs are near-certain false negatives."""
    ds = make_dataset(b, seed=seed, duplicates=duplicates)
    columns = [ds["anchor"], ds["positive"]]
    if negatives:
        columns.append(make_dataset(b, seed=seed + 100)["positive"])
    return columns


def loss_and_grads(loss, model, feats):
    model.zero_grad()
    value = loss(feats, None)
    value.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    return value.detach(), grads


MNRL_VARIANTS = {
    "mnrl": lambda m: MultipleNegativesRankingLoss(m),
    "mnrl_scale_dot": lambda m: MultipleNegativesRankingLoss(
        m, scale=7.0, similarity_fct=lambda a, b: a @ b.T
    ),
    "symmetric": lambda m: MultipleNegativesRankingLoss(
        m, directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"
    ),
    "symmetric_joint": lambda m: MultipleNegativesRankingLoss(
        m, directions=("query_to_doc", "doc_to_query"), partition_mode="joint"
    ),
    "cached": lambda m: CachedMultipleNegativesRankingLoss(m, mini_batch_size=3),
    "cached_symmetric": lambda m: CachedMultipleNegativesRankingLoss(
        m,
        mini_batch_size=4,
        directions=("query_to_doc", "doc_to_query"),
        partition_mode="per_direction",
    ),
}


# Hard-negative columns with the two base losses; every variant without.
EQUALITY_CASES = [(v, False) for v in sorted(MNRL_VARIANTS)] + [("mnrl", True), ("cached", True)]


@pytest.mark.parametrize("variant,negatives", EQUALITY_CASES)
def test_rule_none_equals_the_sentence_transformers_loss(model, variant, negatives):
    """Nothing to mask (rule none, no duplicate texts): same value and gradients."""
    model.train()
    feats = features(model, batch_texts(b=8, duplicates=0, negatives=negatives))
    inner = MNRL_VARIANTS[variant](model)
    expected, expected_grads = loss_and_grads(inner, model, feats)
    wrapped = FalseNegativeMaskedLoss(inner, rule="none")
    value, grads = loss_and_grads(wrapped, model, feats)
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    assert len(grads) == len(expected_grads) > 0
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
    assert wrapped.last_masked_share_ == 0.0 and wrapped.history_ == [0.0]


def loop_reference(q, docs, mask, scale, symmetric):
    """Cross-entropy per row over the candidates the mask keeps, written as loops."""
    q = torch.nn.functional.normalize(q.double(), dim=1)
    docs = torch.nn.functional.normalize(docs.double(), dim=1)
    b = len(q)
    total = 0.0
    for i in range(b):
        kept = [j for j in range(len(docs)) if not mask[i, j]]
        logits = [scale * float(q[i] @ docs[j]) for j in kept]
        qd = math.log(sum(math.exp(x) for x in logits)) - scale * float(q[i] @ docs[i])
        if symmetric:  # doc i against every query, the same pairs left out
            kept_q = [j for j in range(b) if not mask[j, i]]
            logits = [scale * float(q[j] @ docs[i]) for j in kept_q]
            dq = math.log(sum(math.exp(x) for x in logits)) - scale * float(q[i] @ docs[i])
            qd = (qd + dq) / 2
        total += qd
    return total / b


def median_margin(q, docs, rule):
    """The margin that leaves out about half of the negatives (the tiny model's embeddings
    are all alike, so a fixed margin would mask all or nothing)."""
    s = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(docs, dim=1).T
    positive = s.diagonal()[:, None]
    off = ~torch.eye(*s.shape, dtype=torch.bool)
    values = (s / positive) if rule == "relative" else (positive - s)
    return float(values[off].median())


@pytest.mark.parametrize(
    "variant,negatives",
    [("mnrl", False), ("symmetric", False), ("cached_symmetric", False)]
    + [("mnrl", True), ("cached", True), ("symmetric", True)],
)
@pytest.mark.parametrize("rule", ["relative", "absolute"])
def test_mask_leaves_out_the_right_logits(model, variant, rule, negatives):
    model.train()
    columns = batch_texts(b=8, duplicates=3, negatives=negatives)
    feats = features(model, columns)
    with torch.no_grad():
        emb = [model(f)["sentence_embedding"] for f in features(model, columns)]
    q, docs = emb[0], torch.cat(emb[1:])
    margin = median_margin(q, docs, rule)
    mask = false_negative_mask(q, docs, rule=rule, margin=margin)
    b, c = mask.shape
    assert 0.2 < float(mask.sum()) / (b * c - b) < 0.8
    wrapped = FalseNegativeMaskedLoss(MNRL_VARIANTS[variant](model), rule=rule, margin=margin)
    value = wrapped(feats, None).detach()
    symmetric = "symmetric" in variant
    expected = loop_reference(q, docs, mask, 20.0, symmetric)
    assert float(value) == pytest.approx(expected, rel=1e-4)
    torch.testing.assert_close(wrapped.last_mask_, mask)
    assert wrapped.last_masked_share_ == pytest.approx(float(mask.sum()) / (b * c - b))
    if not negatives:  # the core info_nce agrees (it has no extra-column t→q terms)
        ref = info_nce(q, docs, temperature=0.05, mask=mask, symmetric=symmetric)
        assert float(value) == pytest.approx(float(ref), rel=1e-4)


def test_cached_masked_equals_plain_masked(model):
    """The GradCache run gives the plain masked loss's value and gradients."""
    model.train()
    feats = features(model, batch_texts(b=8, duplicates=3, negatives=True))
    plain = FalseNegativeMaskedLoss(MultipleNegativesRankingLoss(model), margin=0.9)
    cached = FalseNegativeMaskedLoss(
        CachedMultipleNegativesRankingLoss(model, mini_batch_size=3), margin=0.9
    )
    value, grads = loss_and_grads(plain, model, feats)
    value_c, grads_c = loss_and_grads(cached, model, feats)
    torch.testing.assert_close(value_c, value, rtol=1e-5, atol=1e-6)
    for g, e in zip(grads_c, grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
    assert plain.last_masked_share_ == cached.last_masked_share_ > 0


@pytest.mark.parametrize("variant", ["mnrl", "cached"])
def test_no_extra_forward_pass(model, variant):
    model.train()
    feats = features(model, batch_texts(b=8))
    counter = CallCounter(model)
    MNRL_VARIANTS[variant](model)(feats, None).backward()
    plain_calls, counter.calls = counter.calls, 0
    FalseNegativeMaskedLoss(MNRL_VARIANTS[variant](model))(feats, None).backward()
    assert counter.calls == plain_calls > 0


def test_teacher_rows_follow_the_batch_indices(model):
    """The teacher mask is scored from the rows of the batch's dataset indices."""
    model.train()
    n, d = 30, 5
    rng = np.random.default_rng(0)
    tq = rng.standard_normal((n, d)).astype(np.float32)
    tt = tq + 0.1 * rng.standard_normal((n, d)).astype(np.float32)
    ids = np.array([3, 17, 8, 25, 11, 0])
    tt[25] = tt[17]  # the teacher says: samples 17 and 25 share their positive
    config = StubConfig(model=model)
    loss = FalseNegativeMaskedLoss(
        MultipleNegativesRankingLoss(model),
        mask_from="teacher",
        embeddings=(tq, tt),
        config=config,
    )
    assert config.track_batches, "teacher masks need the samplers to queue their batches"
    config.tracker_.push(None, ids)
    feats = features(model, batch_texts(b=6, duplicates=0))
    loss(feats, None)
    expected = false_negative_mask(tq[ids], tt[ids])
    torch.testing.assert_close(loss.last_mask_, expected)
    assert loss.last_mask_[1, 3]  # query 17 against 25's target (its own positive's copy)
    assert len(config.tracker_) == 0  # one batch popped per training call
    # Evaluation calls (no indices) are not masked and pop nothing.
    config.tracker_.push(None, ids)
    with torch.no_grad():
        loss(feats, None)
    assert not loss.last_mask_.any() and len(config.tracker_) == 1
    # Training without queued indices: unmasked, with one warning.
    config.tracker_.reset()
    with pytest.warns(RuntimeWarning, match="no batch indices"):
        loss(feats, None)
    assert not loss.last_mask_.any()


def test_a_teacher_that_is_the_trained_model_warns_once(model):
    """Teacher embeddings made by the model being fine-tuned: loud at the first batch (the
    recipe's evidence: such a mask costs a fine-tuned encoder), silent for another teacher."""
    columns = batch_texts(b=6, duplicates=0)
    own = tuple(model.encode(list(c), convert_to_numpy=True) for c in columns)
    model.train()  # encode() left it in eval mode
    ids = np.arange(6)
    for teacher, loud in ((own, True), ((own[0][:, ::-1].copy(), own[1]), False)):
        config = StubConfig(model=model)
        loss = FalseNegativeMaskedLoss(
            MultipleNegativesRankingLoss(model),
            mask_from="teacher",
            embeddings=teacher,
            config=config,
        )
        feats = features(model, columns)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(2):
                config.tracker_.push(None, ids)
                loss(feats, None)
        said = [w for w in caught if "trained model's own" in str(w.message)]
        assert len(said) == (1 if loud else 0), [str(w.message) for w in caught]


def test_teacher_embeddings_default_to_the_config_and_are_checked(model):
    tq = np.ones((4, 3), np.float32)
    config = StubConfig(model=model, embeddings=(tq, tq))
    loss = FalseNegativeMaskedLoss(
        MultipleNegativesRankingLoss(model), mask_from="teacher", config=config
    )
    assert loss._teacher[0].shape == (4, 3)
    config.tracker_.push(None, np.array([0, 1, 2, 9, 3, 1]))
    model.train()
    with pytest.raises(ValueError, match="out of the teacher"):
        loss(features(model, batch_texts(b=6, duplicates=0)), None)


def test_recorded_rows_follow_the_batch_indices_and_are_recorded_after(model):
    model.train()
    n, d = 20, HIDDEN  # the recorder then takes the student's own rows
    rng = np.random.default_rng(1)
    recorder = EmbeddingRecorder(n)
    known = np.array([2, 5, 9, 12])
    rows = rng.standard_normal((len(known), d)).astype(np.float32)
    rows_t = rows.copy()
    rows_t[1] = rows_t[0]  # 5's recorded target equals 2's
    recorder.record(known, rows, rows_t)
    ids = np.array([2, 5, 9, 12, 7, 14])  # 7 and 14 never recorded
    config = StubConfig(model=model)
    loss = FalseNegativeMaskedLoss(
        CachedMultipleNegativesRankingLoss(model, mini_batch_size=4),
        mask_from="recorded",
        rule="absolute",
        margin=2.5,  # masks nearly everything the recorder knows
        config=config,
    )
    config.tracker_.push(recorder, ids)
    feats = features(model, batch_texts(b=6, duplicates=0))
    loss(feats, None).backward()
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[:4, :4] = false_negative_mask(rows, rows_t, rule="absolute", margin=2.5)
    torch.testing.assert_close(loss.last_mask_, expected)
    assert expected[0, 1] and expected[1, 0]
    # The batch's own embeddings were recorded after the mask was taken.
    assert (recorder.stamps_[ids] == 2).all()
    with torch.no_grad():
        own = model(feats[0])["sentence_embedding"].numpy()
    np.testing.assert_allclose(recorder.queries_[ids], own, atol=1e-5)


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="wraps MultipleNegativesRankingLoss"):
        FalseNegativeMaskedLoss(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="directions"):
        FalseNegativeMaskedLoss(
            MultipleNegativesRankingLoss(model, directions=("query_to_doc", "query_to_query"))
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hard = MultipleNegativesRankingLoss(
            model, hardness_mode="in_batch_negatives", hardness_strength=1.0
        )
    with pytest.raises(ValueError, match="hardness_mode"):
        FalseNegativeMaskedLoss(hard)
    with pytest.raises(ValueError, match="mask_from"):
        FalseNegativeMaskedLoss(MultipleNegativesRankingLoss(model), mask_from="guide")
    with pytest.raises(ValueError, match="needs config"):
        FalseNegativeMaskedLoss(MultipleNegativesRankingLoss(model), mask_from="recorded")
    with pytest.raises(ValueError, match="embeddings=\\(Tq, Tt\\)"):
        FalseNegativeMaskedLoss(
            MultipleNegativesRankingLoss(model), mask_from="teacher", config=StubConfig()
        )
    with pytest.raises(ValueError, match="margin"):
        FalseNegativeMaskedLoss(MultipleNegativesRankingLoss(model), margin=0)
    config = HardBatchSampler.configure(method="gcbs", model=model)
    with pytest.raises(ValueError, match="false_negatives must be a dict"):
        config.wrap_loss(MultipleNegativesRankingLoss(model), false_negatives="self")
    inner = MultipleNegativesRankingLoss(model)
    loss = config.wrap_loss(inner, false_negatives=dict(margin=0.9))
    assert loss.get_config_dict() == {
        **inner.get_config_dict(),
        "false_negatives": {"rule": "relative", "margin": 0.9, "mask_from": "self"},
    }


@pytest.mark.parametrize(
    "setup",
    [
        dict(method="gcbs", refresh="recorded", mask_from="recorded"),
        pytest.param(
            dict(method="b3", mask_from="teacher"),
            marks=pytest.mark.skipif(
                "b3" not in hardbatch.available_methods(), reason="b3 not registered"
            ),
        ),
        dict(method="gcbs", refresh="epoch", mask_from="self"),
    ],
)
def test_trainer_logs_the_masked_share(model, tmp_path, setup):
    dataset = make_dataset(48, seed=2, duplicates=4)
    params = dict(method=setup["method"], duplicates=None)
    if setup["method"] == "b3":
        # Fixed teacher embeddings: the initial model's.
        tq = model.encode(dataset["anchor"], convert_to_numpy=True)
        tt = model.encode(dataset["positive"], convert_to_numpy=True)
        params.update(embeddings=(tq, tt), cluster_size=8, p=2, m=6)
    else:
        params.update(model=model, refresh=setup["refresh"], quantile=0.9)
    config = HardBatchSampler.configure(**params)
    loss = config.wrap_loss(
        MultipleNegativesRankingLoss(model),
        false_negatives=dict(margin=0.9, mask_from=setup["mask_from"]),
    )
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=2,
        per_device_train_batch_size=16,
        learning_rate=5e-5,
        batch_sampler=config,
        report_to=[],
        save_strategy="no",
        logging_strategy="steps",
        logging_steps=1,
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    trainer = HardBatchTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
    trainer.train()
    steps = trainer.state.global_step
    assert steps == 6 and len(loss.history_) == steps
    logged = [h["masked_share"] for h in trainer.state.log_history if "masked_share" in h]
    assert logged == pytest.approx([round(s, 4) for s in loss.history_], abs=1e-4)
    assert config.tracker_.mismatches_ == 0
    if setup["mask_from"] != "self":
        # Epoch 0's first batches have indices, and the planted duplicates get masked.
        assert sum(loss.history_) > 0
    if setup.get("refresh") == "recorded":
        recorder = config.samplers_[0].sampler_.recorder
        assert (recorder.stamps_ > 0).all(), "the masked loss must record every sample"
