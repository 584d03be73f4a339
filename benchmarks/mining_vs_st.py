"""Hard-negative mining: hardbatch vs sentence-transformers' ``mine_hard_negatives``, one process.

Data: scale.py's clustered synthetic pairs at d = 384 (topics of 4096, groups of 32; not real
embeddings), float32 in memory, the same arrays for every row of the table. Rank range
``[30, 130)`` for everyone (B3's ``p = 30, m = 100``; sentence-transformers'
``range_min = 30, range_max = 130``), n = 1 and 5 negatives.

* **hardbatch B3** ``hard_negatives=n``, ``backend="faiss"`` (recall target 0.95): the whole
  plan (search, graph, METIS, clusters, pooled negatives). B3 pools each cluster's window
  ranks, so its negatives need not lie in the row's own window: the table says how many do.
* **hardbatch search**: ``search_neighbours(k=130, backend="faiss")`` alone, and
  ``backend="exact"`` (blocked torch matmul).
* **sentence-transformers** ``mine_hard_negatives(use_faiss=True, range_min=30,
  range_max=130, num_negatives=n, sampling_strategy="top")`` run on the *precomputed*
  embeddings: they are written to its ``cache_folder`` under the hash it computes, and the
  model is a stub (embedding dimension, cosine ``similarity_pairwise``, CPU device) that is never
  asked to encode. Its search is the exact ``faiss.IndexFlatIP``.

Reference: exact top-130 of 2000 seeded rows. "in window" is the share of the sampled rows'
negatives inside their exact rank window ``[30, 130)``; "search recall" is recall@130 of the
search on those rows.

Usage::

    python benchmarks/mining_vs_st.py --n 50000
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import machine_description  # noqa: E402
from scale import make_clustered  # noqa: E402

import hardbatch  # noqa: E402
from hardbatch.similarity import SearchSettings, search_neighbours  # noqa: E402
from hardbatch.similarity.approximate import sample_rows  # noqa: E402
from hardbatch.similarity.exact import exact_rows_top_k  # noqa: E402

P, M = 30, 100
DIM = 384


class StubModel:
    """The parts of a SentenceTransformer ``mine_hard_negatives`` uses once embeddings are
    cached: it is never asked to encode (that would raise)."""

    def __init__(self, dim: int) -> None:
        self.device = torch.device("cpu")
        self.model_card_data = SimpleNamespace(base_model="precomputed")
        self._dim = dim

    def get_embedding_dimension(self) -> int:
        return self._dim

    def similarity_pairwise(self, a, b) -> torch.Tensor:
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))

    def encode_query(self, *args, **kwargs):
        raise RuntimeError("embeddings should come from the cache")

    encode_document = encode_query


def st_mine(q: np.ndarray, t: np.ndarray, n_neg: int, cache: Path) -> tuple[np.ndarray, float]:
    """sentence-transformers' mining on precomputed embeddings: (N, n) target ids, seconds."""
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    n = len(q)
    queries, positives = [f"q{i}" for i in range(n)], [f"p{i}" for i in range(n)]
    for kind, texts, emb in (("query", queries, q), ("corpus", positives, t)):
        h = hashlib.sha256(repr(("precomputed", None, None, texts)).encode()).hexdigest()
        path = cache / f"{kind}_embeddings_{h}.npy"
        if not path.exists():
            np.save(path, emb / np.linalg.norm(emb, axis=1, keepdims=True))
    dataset = Dataset.from_dict({"anchor": queries, "positive": positives})
    tick = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mined = mine_hard_negatives(
            dataset, StubModel(q.shape[1]), range_min=P, range_max=P + M, num_negatives=n_neg,
            sampling_strategy="top", output_format="n-tuple", use_faiss=True, verbose=False,
            cache_folder=str(cache),
        )  # fmt: skip
    seconds = time.perf_counter() - tick
    out = np.full((n, n_neg), -1, dtype=np.int64)
    anchors = np.array([int(a[1:]) for a in mined["anchor"]])
    for j in range(n_neg):
        out[anchors, j] = [int(x[1:]) for x in mined[f"negative_{j + 1}"]]
    return out, seconds


def in_window(neg: np.ndarray, rows: np.ndarray, exact: np.ndarray) -> float:
    """Share of the sampled rows' negatives inside their exact window ``[P, P + M)``."""
    hits = [
        len(set(neg[r].tolist()) & set(exact[i, P : P + M].tolist())) for i, r in enumerate(rows)
    ]
    return float(np.sum(hits) / (len(rows) * neg.shape[1]))


def recall_at(ids: np.ndarray, rows: np.ndarray, exact: np.ndarray) -> float:
    hits = [len(set(ids[r].tolist()) & set(exact[i].tolist())) for i, r in enumerate(rows)]
    return float(np.sum(hits) / exact.size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "hb_mining")
    args = parser.parse_args()
    folder = args.data / f"n{args.n}_d{DIM}"
    make_clustered(folder, args.n, d=DIM)
    q = np.asarray(np.load(folder / "queries.npy"), dtype=np.float32)
    t = np.asarray(np.load(folder / "targets.npy"), dtype=np.float32)
    rows = sample_rows(args.n, 2000, 3)
    exact = exact_rows_top_k(q, t, rows, P + M)
    table = [
        "| what | n | seconds | search recall@130 | negatives in exact window [30, 130) |",
        "|---|---|---|---|---|",
    ]

    def add(what, n_neg, secs, recall, window):
        rec = "–" if recall is None else f"{recall:.3f}"
        win = "–" if window is None else f"{window:.3f}"
        table.append(f"| {what} | {n_neg} | {secs:.1f} | {rec} | {win} |")
        print(table[-1], flush=True)

    for backend in ("faiss", "exact"):
        tick = time.perf_counter()
        found = search_neighbours(q, t, P + M, SearchSettings(backend=backend, progress=False))
        add(f"hardbatch search alone ({backend})", "–", time.perf_counter() - tick,
            recall_at(found.ids, rows, exact), None)  # fmt: skip
        del found
    with tempfile.TemporaryDirectory() as cache:
        for n_neg in (1, 5):
            tick = time.perf_counter()
            plan = hardbatch.plan(
                "b3", q, t, batch_size=64, seed=0, backend="faiss", hard_negatives=n_neg,
                progress=False,
            )  # fmt: skip
            secs = time.perf_counter() - tick
            window = in_window(plan.hard_negatives, rows, exact)
            recall = plan.info["search"]["recall"]
            add("hardbatch B3 plan + negatives (faiss)", n_neg, secs, recall, window)
            neg, secs = st_mine(q, t, n_neg, Path(cache))
            add("sentence-transformers mine_hard_negatives (IndexFlatIP)", n_neg, secs, 1.0,
                in_window(neg, rows, exact))  # fmt: skip
    threads = torch.get_num_threads()
    print(f"\nN = {args.n:,}, d = {DIM}, synthetic clustered; {machine_description(threads)}")
    print("\n".join(table))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
