"""Shared pieces of the evidence benchmark: the paired-corpus container, splits, paths."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Repository root (``benchmarks/evidence/common.py`` → three levels up).
ROOT = Path(__file__).resolve().parents[2]
#: Where the benchmark writes its JSON and plots.
RESULTS = ROOT / "benchmarks" / "results" / "evidence"
#: Built corpora and frozen features (gitignored: rebuilt by the one command).
CACHE = ROOT / "benchmarks" / "results" / "cache"

SPLITS = ("train", "valid", "test")
#: Fractions of the split keys (modules, synsets) that go to train / valid / test.
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


def split_of(key: str, fractions: tuple[float, float, float] = SPLIT_FRACTIONS) -> str:
    """Deterministic split of a grouping key (module name, synset offset) by its SHA-1.

    Every pair with the same key lands in the same split, so nothing of a module (or synset)
    leaks from train into valid/test; the assignment does not depend on the order or the
    number of keys, so adding a package never moves the other modules.
    """
    u = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "valid"
    return "test"


def normalise_text(text: str) -> str:
    """Lower-case, whitespace-collapsed text: the key used to find duplicates."""
    return re.sub(r"\s+", " ", text).strip().lower()


@dataclass
class PairCorpus:
    """Paired texts (query → target) with a split, a grouping key and a duplicate key.

    Attributes
    ----------
    name : str
    queries, targets : list of str, length M
        ``queries[i]`` is the positive of ``targets[i]``.
    split : np.ndarray of shape (M,), str
        ``"train"``, ``"valid"`` or ``"test"``.
    group : list of str, length M
        What the split is made by (module, synset): never shared between splits.
    duplicate_key : list of str, length M
        Equal keys mark pairs whose query texts are (near-)duplicates: in-batch false
        negatives; the ``nodup`` method keeps them apart.
    meta : dict
        How the corpus was built (sources, versions, drop counts).
    """

    name: str
    queries: list[str]
    targets: list[str]
    split: np.ndarray
    group: list[str]
    duplicate_key: list[str]
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.queries)

    def indices(self, split: str) -> np.ndarray:
        """Row indices of one split, shape (n_split,)."""
        return np.flatnonzero(self.split == split)

    def counts(self) -> dict[str, int]:
        """Pairs per split, and the number of distinct groups per split."""
        out = {s: int(np.count_nonzero(self.split == s)) for s in SPLITS}
        group = np.asarray(self.group)
        for s in SPLITS:
            out[f"{s}_groups"] = int(len(set(group[self.split == s])))
        return out

    def subset(self, rows: np.ndarray) -> PairCorpus:
        """The corpus restricted to ``rows`` (in that order)."""
        rows = np.asarray(rows, dtype=np.int64)
        return PairCorpus(
            self.name,
            [self.queries[i] for i in rows],
            [self.targets[i] for i in rows],
            self.split[rows],
            [self.group[i] for i in rows],
            [self.duplicate_key[i] for i in rows],
            dict(self.meta),
        )

    def limit(self, max_per_split: dict[str, int | None], seed: int = 0) -> PairCorpus:
        """A seeded random subset with at most ``max_per_split[s]`` pairs of split ``s``.

        Sampling is by row within a split (splits stay leak-free: groups never cross
        splits). Rows keep their original relative order.
        """
        rng = np.random.default_rng([seed, 0xC0DE])
        keep = []
        for s in SPLITS:
            rows = self.indices(s)
            cap = max_per_split.get(s)
            if cap is not None and len(rows) > cap:
                rows = np.sort(rng.choice(rows, cap, replace=False))
            keep.append(rows)
        out = self.subset(np.concatenate(keep))
        out.meta["limited_to"] = {s: max_per_split.get(s) for s in SPLITS}
        return out

    # ------------------------------------------------------------------ files
    def save(self, path: Path) -> None:
        """Write the corpus as one JSON-lines file (first line: meta)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps({"name": self.name, "meta": self.meta}) + "\n")
            for row in zip(
                self.queries, self.targets, self.split, self.group, self.duplicate_key, strict=True
            ):
                q, t, s, g, d = row
                f.write(json.dumps({"q": q, "t": t, "s": str(s), "g": g, "d": d}) + "\n")

    @classmethod
    def load(cls, path: Path) -> PairCorpus:
        with open(path, encoding="utf-8") as f:
            head = json.loads(f.readline())
            rows = [json.loads(line) for line in f]
        return cls(
            head["name"],
            [r["q"] for r in rows],
            [r["t"] for r in rows],
            np.array([r["s"] for r in rows]),
            [r["g"] for r in rows],
            [r["d"] for r in rows],
            head["meta"],
        )

    @classmethod
    def cached(cls, name: str, build, *, rebuild: bool = False) -> PairCorpus:
        """``CACHE/<name>.jsonl`` if present (and not ``rebuild``), else ``build()`` saved there."""
        path = CACHE / f"{name}.jsonl"
        if path.exists() and not rebuild:
            return cls.load(path)
        corpus = build()
        corpus.save(path)
        return corpus


def drop_duplicates(queries: list[str], targets: list[str]) -> tuple[np.ndarray, dict[str, int]]:
    """Rows to keep: the first of every repeated (normalised) query and of every target.

    Returns
    -------
    keep : np.ndarray of shape (k,), int64
    dropped : dict
        ``duplicate_query`` and ``duplicate_target`` counts.
    """
    seen_q: set[str] = set()
    seen_t: set[str] = set()
    keep, dup_q, dup_t = [], 0, 0
    for i, (q, t) in enumerate(zip(queries, targets, strict=True)):
        kq, kt = normalise_text(q), normalise_text(t)
        if kq in seen_q:
            dup_q += 1
            continue
        if kt in seen_t:
            dup_t += 1
            continue
        seen_q.add(kq)
        seen_t.add(kt)
        keep.append(i)
    return np.asarray(keep, dtype=np.int64), {
        "duplicate_query": dup_q,
        "duplicate_target": dup_t,
    }
