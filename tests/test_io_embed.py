"""hardbatch.io.embed: float16 outputs, the resumable chunk cache and its invalidation, with a
tiny BERT sentence-transformers model built locally (no download)."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch

from hardbatch.io import TextPairs, embed_pairs, model_identity
from hardbatch.io import embed as embed_mod
from hardbatch.io.embed import CacheInvalidatedWarning

pytest.importorskip("sentence_transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sentence_transformers import SentenceTransformer  # noqa: E402
from tiny_bert import save_tiny_sentence_transformer  # noqa: E402

WORDS = "alpha beta gamma delta red green blue cat dog fish bird tree leaf root river".split()
HIDDEN = 16


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A saved sentence-transformers model: 1-layer BERT (hidden 16) + mean pooling."""
    return save_tiny_sentence_transformer(
        tmp_path_factory.mktemp("bert"), tmp_path_factory.mktemp("st_model"), WORDS
    )


@pytest.fixture(scope="module")
def model(model_dir):
    return SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)


def make_pairs(n, seed=0):
    rng = np.random.default_rng(seed)

    def sentence():
        return " ".join(rng.choice(WORDS, size=rng.integers(2, 12)))

    return TextPairs.from_lists(
        [f"{sentence()} {i}" for i in range(n)], [sentence() for _ in range(n)]
    )


class CountingEncode:
    """Wraps ``model.encode``: counts calls and raises on call number ``fail_at``."""

    def __init__(self, model, fail_at=None):
        self.model, self.fail_at, self.calls, self.texts = model, fail_at, 0, 0
        self.original = model.encode

    def __call__(self, texts, **kw):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt("interrupted")
        self.texts += len(texts)
        return self.original(texts, **kw)


@pytest.fixture
def counting(model, monkeypatch):
    def install(fail_at=None):
        counter = CountingEncode(model, fail_at)
        monkeypatch.setattr(model, "encode", counter)
        return counter

    return install


def test_writes_normalised_float16_that_match_the_model(model_dir, model, tmp_path):
    pairs = make_pairs(37)
    q, t = embed_pairs(pairs, model_dir, tmp_path / "emb", chunk_size=10, progress=False)
    assert q.dtype == t.dtype == np.float16 and q.shape == t.shape == (37, HIDDEN)
    assert isinstance(q, np.memmap)
    np.testing.assert_array_equal(np.load(tmp_path / "emb" / "queries.npy"), q)
    expect_q = model.encode(pairs.queries, normalize_embeddings=True)
    expect_t = model.encode(pairs.targets, normalize_embeddings=True)
    np.testing.assert_allclose(q.astype(np.float32), expect_q, atol=2e-3)
    np.testing.assert_allclose(t.astype(np.float32), expect_t, atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(q.astype(np.float32), axis=1), 1, atol=2e-3)
    # Finished: the chunks are gone, the manifest says complete.
    cache = tmp_path / "emb" / ".cache"
    assert sorted(p.name for p in cache.iterdir()) == ["manifest.json"]
    assert json.loads((cache / "manifest.json").read_text())["complete"] is True


def test_unnormalised(model, tmp_path):
    pairs = make_pairs(9)
    q, _ = embed_pairs(pairs, model, tmp_path, normalize=False, progress=False)
    np.testing.assert_allclose(
        q.astype(np.float32), model.encode(pairs.queries), rtol=2e-3, atol=2e-3
    )


def test_a_finished_cache_is_reused_without_loading_the_model(model_dir, tmp_path, monkeypatch):
    pairs = make_pairs(12)
    first = embed_pairs(pairs, model_dir, tmp_path, progress=False)

    def no_model(*args, **kwargs):
        raise AssertionError("the model should not be loaded")

    monkeypatch.setattr(embed_mod, "_load_model", no_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = embed_pairs(pairs, model_dir, tmp_path, progress=False)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fail_at", [1, 3, 6])
def test_an_interrupted_run_continues_where_it_stopped(model, counting, tmp_path, fail_at):
    pairs = make_pairs(25)  # chunk_size 10: 3 query chunks + 3 target chunks
    reference = embed_pairs(pairs, model, tmp_path / "ref", chunk_size=10, progress=False)
    counter = counting(fail_at)
    with pytest.raises(KeyboardInterrupt):
        embed_pairs(pairs, model, tmp_path / "run", chunk_size=10, progress=False)
    cache = tmp_path / "run" / ".cache"
    saved = sorted(p.name for p in cache.glob("*.npy"))
    assert len(saved) == fail_at - 1  # every chunk encoded before the failure is on disk
    assert not list(cache.glob("*.tmp"))
    counter = counting()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # resuming is not an invalidation
        resumed = embed_pairs(pairs, model, tmp_path / "run", chunk_size=10, progress=False)
    assert counter.calls == 6 - (fail_at - 1)  # only the missing chunks
    for a, b in zip(reference, resumed, strict=True):
        np.testing.assert_array_equal(a, b)


def test_changed_texts_reencode_and_say_so(model, counting, tmp_path):
    embed_pairs(make_pairs(20), model, tmp_path, chunk_size=8, progress=False)
    counter = counting(fail_at=2)
    other = make_pairs(20, seed=1)
    with pytest.warns(CacheInvalidatedWarning, match="data file"), pytest.raises(KeyboardInterrupt):
        embed_pairs(other, model, tmp_path, chunk_size=8, progress=False)
    # The old texts' outputs are gone: nothing stale to pick up by mistake.
    assert not (tmp_path / "queries.npy").exists() and not (tmp_path / "targets.npy").exists()
    with pytest.warns(CacheInvalidatedWarning, match="data file"):  # back to the first texts
        embed_pairs(make_pairs(20), model, tmp_path, chunk_size=8, progress=False)
    counter = counting()
    with pytest.warns(CacheInvalidatedWarning, match=r"another data file \(its texts changed\)"):
        q, _ = embed_pairs(other, model, tmp_path, chunk_size=8, progress=False)
    assert counter.texts == 40
    np.testing.assert_allclose(
        q.astype(np.float32), model.encode(other.queries, normalize_embeddings=True), atol=2e-3
    )


def test_interrupted_cache_of_other_texts_is_not_mixed_in(model, counting, tmp_path):
    counting(fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        embed_pairs(make_pairs(20), model, tmp_path, chunk_size=8, progress=False)
    counter = counting()
    other = make_pairs(20, seed=5)
    with pytest.warns(CacheInvalidatedWarning, match="data file"):
        q, t = embed_pairs(other, model, tmp_path, chunk_size=8, progress=False)
    assert counter.texts == 40  # nothing reused from the other texts' chunks
    np.testing.assert_allclose(
        t.astype(np.float32), model.encode(other.targets, normalize_embeddings=True), atol=2e-3
    )


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"normalize": False}, "normalize setting"),
        ({"max_length": 4}, "max_length"),
        ({"query_prompt": "red "}, "query prompt"),
        ({"chunk_size": 5}, "chunk_size"),
    ],
)
def test_changed_options_reencode(model, tmp_path, change, words):
    pairs = make_pairs(10)
    embed_pairs(pairs, model, tmp_path, progress=False)
    with pytest.warns(CacheInvalidatedWarning, match=words):
        embed_pairs(pairs, model, tmp_path, progress=False, **change)


def test_changed_model_object_reencodes(model_dir, tmp_path):
    pairs = make_pairs(10)
    a = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    b = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    assert model_identity(a) == model_identity(b)  # same weights: same model
    qa, _ = embed_pairs(pairs, a, tmp_path, progress=False)
    qa = np.array(qa)
    with torch.no_grad():
        # A "fine-tuned" copy (random, not constant: LayerNorm would cancel a constant shift).
        weight = next(b.parameters())
        weight.add_(0.5 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    assert model_identity(a) != model_identity(b)
    with pytest.warns(CacheInvalidatedWarning, match="another model"):
        qb, _ = embed_pairs(pairs, b, tmp_path, progress=False)
    assert not np.array_equal(qa, qb)


def test_changed_model_folder_reencodes(model_dir, tmp_path_factory, tmp_path):
    import shutil

    copy = tmp_path_factory.mktemp("copy") / "m"
    shutil.copytree(model_dir, copy)
    pairs = make_pairs(6)
    before = model_identity(copy)
    embed_pairs(pairs, copy, tmp_path, progress=False)
    config = copy / "config_sentence_transformers.json"
    config.write_text(config.read_text().replace("{", '{"note": "edited", ', 1))
    assert model_identity(copy) != before
    with pytest.warns(CacheInvalidatedWarning, match="another model"):
        embed_pairs(pairs, copy, tmp_path, progress=False)


def test_max_length_truncates_and_the_model_is_left_as_it_came(model, tmp_path):
    pairs = TextPairs.from_lists(
        [" ".join(WORDS * 2), "cat dog"], [" ".join(reversed(WORDS)), "fish tree"]
    )
    full, _ = embed_pairs(pairs, model, tmp_path / "a", progress=False)
    short, _ = embed_pairs(pairs, model, tmp_path / "b", max_length=4, progress=False)
    assert model.max_seq_length == 48
    assert not np.allclose(full[0], short[0])  # the long text was cut
    np.testing.assert_array_equal(full[1], short[1])  # the short one was not


def test_prompts_apply_to_their_side_only(model, tmp_path):
    pairs = make_pairs(5)
    plain_q, plain_t = embed_pairs(pairs, model, tmp_path / "a", progress=False)
    q, t = embed_pairs(pairs, model, tmp_path / "b", query_prompt="red blue ", progress=False)
    assert not np.allclose(plain_q, q)
    np.testing.assert_array_equal(plain_t, t)
    expect = model.encode(["red blue " + s for s in pairs.queries], normalize_embeddings=True)
    np.testing.assert_allclose(q.astype(np.float32), expect, atol=2e-3)


def test_unreadable_manifest_is_reencoded(model, tmp_path):
    pairs = make_pairs(5)
    embed_pairs(pairs, model, tmp_path, progress=False)
    (tmp_path / ".cache" / "manifest.json").write_text("{not json")
    with pytest.warns(CacheInvalidatedWarning):
        q, _ = embed_pairs(pairs, model, tmp_path, progress=False)
    assert q.shape == (5, HIDDEN)


class BadModel(torch.nn.Module):
    """Returns the wrong number of rows, or NaNs."""

    def __init__(self, mode):
        super().__init__()
        self.mode = mode
        self.max_seq_length = 8
        self.w = torch.nn.Parameter(torch.zeros(1))

    def encode(self, texts, **kw):
        if self.mode == "rows":
            return np.zeros((len(texts) + 1, 3), dtype=np.float32)
        return np.full((len(texts), 3), np.nan, dtype=np.float32)


@pytest.mark.parametrize(
    ("mode", "match"),
    [("rows", r"shape \(6, 3\) for 5 texts"), ("nan", "non-finite embeddings")],
)
def test_bad_model_output(tmp_path, mode, match):
    with pytest.raises(ValueError, match=match):
        embed_pairs(make_pairs(5), BadModel(mode), tmp_path, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"chunk_size": 0}, "chunk_size must be a positive integer"),
        ({"max_length": 0}, "max_length must be a positive integer or None"),
    ],
)
def test_bad_arguments(model, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        embed_pairs(make_pairs(3), model, tmp_path, progress=False, **kwargs)


def test_missing_model_path_and_no_pairs(model, tmp_path):
    with pytest.raises(ValueError, match="model not found"):
        embed_pairs(make_pairs(3), tmp_path / "no_model", tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="no pairs to encode"):
        embed_pairs(TextPairs.from_lists([], []), model, tmp_path, progress=False)
