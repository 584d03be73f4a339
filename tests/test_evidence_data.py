"""Data builders of the evidence benchmark (benchmarks/evidence): no leakage, no duplicates.

Small and fast: the code corpus is mined from two stdlib packages only (the full build reads
~3000 files); WordNet tests skip when ``wordnet-base`` is not installed.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from evidence import data_code, data_digits, data_wordnet  # noqa: E402
from evidence.common import PairCorpus, normalise_text, split_of  # noqa: E402


def assert_clean(corpus: PairCorpus) -> None:
    """Counts > 0, groups never shared between splits, no duplicate query or target."""
    counts = corpus.counts()
    assert counts["train"] > 0 and counts["valid"] > 0 and counts["test"] > 0
    group = np.asarray(corpus.group)
    split_groups = [set(group[corpus.split == s]) for s in ("train", "valid", "test")]
    assert not (split_groups[0] & split_groups[1])
    assert not (split_groups[0] & split_groups[2])
    assert not (split_groups[1] & split_groups[2])
    queries = [normalise_text(q) for q in corpus.queries]
    targets = [normalise_text(t) for t in corpus.targets]
    assert len(set(queries)) == len(queries)
    assert len(set(targets)) == len(targets)
    # Every group sits in the split its key hashes to.
    assert all(split_of(g) == s for g, s in zip(corpus.group, corpus.split, strict=True))


# --------------------------------------------------------------------------- code
SOURCE = '''
def add(a, b):
    """Return the sum of two numbers, a and b.

    More text that is not part of the query.
    """
    total = a + b
    return total


def stub():
    """This function does nothing useful at all."""
    pass


def short_doc(x):
    """Compute."""
    y = x * 2
    return y


def undocumented(x):
    y = x + 1
    return y
'''


def test_function_pairs_strip_docstring_and_drop_trivial():
    pairs, dropped = data_code.function_pairs(SOURCE)
    assert pairs == [
        (
            "Return the sum of two numbers, a and b.",
            "def add(a, b):\n    total = a + b\n    return total",
        )
    ]
    assert dropped["short_body"] == 1  # stub: only `pass` is left
    assert dropped["short_query"] == 1  # short_doc: "Compute."
    assert dropped["no_docstring"] == 1


@pytest.fixture(scope="module")
def small_code_corpus() -> PairCorpus:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted((root / "email").rglob("*.py")) + sorted((root / "json").rglob("*.py"))
    files += sorted(root.glob("[a-c]*.py"))
    dropped: dict[str, int] = {}
    q, t, g = data_code.mine("stdlib", root, dropped, files=files)
    return data_code.finish("code", q, t, g, dropped, {})


def test_code_corpus_clean(small_code_corpus):
    assert_clean(small_code_corpus)
    # No docstring text survives on the code side.
    for q, t in zip(small_code_corpus.queries, small_code_corpus.targets, strict=True):
        assert q not in " ".join(t.split())


def test_code_corpus_duplicates_dropped():
    dropped: dict[str, int] = {}
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [root / "json" / "decoder.py"]
    q, t, g = data_code.mine("stdlib", root, dropped, files=files)
    corpus = data_code.finish("code", q + q[:2], t + t[:2], g + ["x:y.py"] * 2, dropped, {})
    assert len(corpus) == len(q)
    assert dropped["duplicate_query"] == 2


def test_pinned_packages_parse():
    pins = dict(data_code.pinned_packages())
    assert "numpy" in pins and all(v for v in pins.values())
    assert "torch" not in pins  # never pull torch through the corpus requirements


def test_corpus_roundtrip_and_limit(small_code_corpus, tmp_path):
    path = tmp_path / "c.jsonl"
    small_code_corpus.save(path)
    back = PairCorpus.load(path)
    assert back.queries == small_code_corpus.queries
    assert np.array_equal(back.split, small_code_corpus.split)
    limited = back.limit({"train": 5, "valid": None, "test": 3}, seed=0)
    assert limited.counts()["train"] == 5 and limited.counts()["test"] <= 3
    assert limited.counts()["valid"] == back.counts()["valid"]
    assert_clean(limited)


# --------------------------------------------------------------------------- wordnet
def test_parse_gloss():
    d, ex = data_wordnet.parse_gloss('a tool; "he used a hammer"; "hit it hard"  ')
    assert d == "a tool" and ex == ["he used a hammer", "hit it hard"]
    assert data_wordnet.parse_gloss("no examples here") == ("no examples here", [])


@pytest.mark.skipif(not data_wordnet.available(), reason="wordnet-base not installed")
def test_wordnet_corpus_clean():
    corpus = data_wordnet.build()
    assert_clean(corpus)
    assert len(corpus) > 10_000
    # One pair per synset: the split unit.
    assert len(set(corpus.group)) == len(corpus)


# --------------------------------------------------------------------------- digits
def test_digits_split_and_views():
    d = data_digits.load()
    assert d.counts()["train"] + d.counts()["test"] == 1797
    # Stratified: every class in both splits, class shares close.
    for labels in (d.train_labels, d.test_labels):
        assert set(labels) == set(range(10))
    x1, y1 = data_digits.views(d.test_images[:20], seed=0, epoch=0)
    x2, _ = data_digits.views(d.test_images[:20], seed=0, epoch=0)
    x3, _ = data_digits.views(d.test_images[:20], seed=0, epoch=1)
    assert x1.shape == (20, 8, 8) and x1.min() >= 0 and x1.max() <= 1
    assert np.array_equal(x1, x2)  # deterministic per (seed, epoch)
    assert not np.array_equal(x1, x3) and not np.array_equal(x1, y1)
    # A view is more similar (cosine) to its own image than to the others: a learnable pair.
    a = x1.reshape(20, -1) / np.linalg.norm(x1.reshape(20, -1), axis=1, keepdims=True)
    b = d.test_images[:20].reshape(20, -1)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    sim = a @ b.T
    off_diagonal = sim[~np.eye(20, dtype=bool)]
    assert np.diag(sim).mean() > off_diagonal.mean() + 0.05
