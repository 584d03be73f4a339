"""Recall–time curves of the approximate neighbour search, and what recall buys a plan.

Parts (each prints Markdown; ``--out`` appends them to ``benchmarks/results/recall.md``):

* ``curve N``: scale.py's clustered data (d = 768, topics of 4096, groups of 32) at N pairs,
  k = 130 (B3's ``p + m``): hardbatch's IVF (PCA-128 lists, exact per-list scoring) at
  widening candidate counts, the recall target loop's choice, and FAISS ``IndexHNSWFlat``
  (M = 32) at an ``efSearch`` sweep; with ``--pq`` also FAISS IVF-PQ and OPQ + IVF-PQ, each
  re-ranked exactly (``IndexRefineFlat``), at an ``nprobe`` sweep. Recall@k on 256 seeded rows
  against their exact top-k.
* ``blobs N``: Gaussian blobs (64 points around N/64 centres ~ N(0, I) in 768-d, noise
  0.8·N(0, I) per point, query and target two views 0.3 apart), same measures (IVF only).
* ``defaults N --family F``: ``hardbatch.plan("gcbs" | "b3")`` with every default
  (``recall=0.95``, the k the method needs: GCBS's ~16 pairs per row, B3's window ``p + m``)
  with the FAISS search, on data the target was not tuned on: F = ``blobs`` (above),
  ``scale`` (scale.py's), or real all-MiniLM-L6-v2 embeddings of the evidence corpora
  (``code``: 20 798 docstring / function pairs, ``wordnet``: 27 106 gloss / example pairs; N
  is then the corpus, whatever N says). Reports the recall the plan records, its probe and time.
* ``quality N``: GCBS and B3 plans at the fixed probe (today's default), recall targets 0.9 /
  0.95 and exact: loss gap, share of every sampled row's exact top-10 that shares its batch
  (GCBS) / cluster (B3), and the share of B3's 3 hard negatives inside the row's exact rank
  window ``[p, p + m)`` (B3's default window at N; B3 samples them from the cluster's pooled
  windows, so even the exact plan is below 1; two plans' sampled negatives are not comparable
  one by one).

Usage::

    python benchmarks/recall.py curve 100000 --out
    python benchmarks/recall.py curve 100000 --no-hnsw --pq --out
    python benchmarks/recall.py blobs 100000 --out
    python benchmarks/recall.py quality 50000 --out
    python benchmarks/recall.py defaults 1000000 --family blobs --out
    python benchmarks/recall.py defaults 0 --family code --out
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import machine_description  # noqa: E402
from scale import make_clustered  # noqa: E402

from hardbatch.similarity import approximate as ivf  # noqa: E402
from hardbatch.validation import check_pair  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "recall.md"
DATA = Path("/tmp/hardbatch_recall_data")
K = 130
ROWS = 256
#: PQ sub-quantisers of the IVF-PQ / OPQ indexes (768 / 64 = 12 dimensions each).
PQ_M = 64
#: PQ candidates re-ranked exactly per query, as a multiple of k.
REFINE = 4


def make_blobs(folder: Path, n: int, d: int = 768, seed: int = 0) -> tuple[Path, Path]:
    """Weakly clustered pairs: blobs of 64 around N/64 centres, noise 0.8 (float16 .npy)."""
    folder.mkdir(parents=True, exist_ok=True)
    q_path, t_path = folder / "queries.npy", folder / "targets.npy"
    if not q_path.exists():
        rng = np.random.default_rng(seed)
        centres = rng.standard_normal((max(1, n // 64), d), dtype=np.float32)
        latent = centres[rng.permutation(n) % len(centres)]
        latent += 0.8 * rng.standard_normal((n, d), dtype=np.float32)
        for path in (q_path, t_path):
            view = latent + 0.3 * rng.standard_normal((n, d), dtype=np.float32)
            np.save(path, view.astype(np.float16))
    return q_path, t_path


def load(kind: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    folder = DATA / f"{kind}{n}"
    (make_clustered if kind == "scale" else make_blobs)(folder, n)
    return np.load(folder / "queries.npy", mmap_mode="r"), np.load(
        folder / "targets.npy", mmap_mode="r"
    )


def ivf_curve(q, t, levels: int, full: set[int]) -> list[str]:
    """Rows of the IVF table: sample recall at every widening step, full-scan time at some."""
    n, d = q.shape
    norms = check_pair(q, t)
    dev = torch.device("cpu")
    n_lists, n_probe, pca_dim, base = ivf._check_ivf(n, d, K, None, 4, 128)
    tick = time.perf_counter()
    cap = int(np.ceil(base * ivf.WIDEN_FACTOR ** (levels - 1)))
    index = ivf._build_index(
        q, t, metric="cosine", seed=0, dev=dev, norms=norms, n_lists=n_lists, pca_dim=pca_dim,
        max_candidates=cap, n_probe=n_probe,
    )  # fmt: skip
    build = time.perf_counter() - tick
    rows = ivf.sample_rows(n, ROWS, 0)
    cands = [int(np.ceil(base * ivf.WIDEN_FACTOR**j)) if j else base for j in range(levels)]
    tick = time.perf_counter()
    scores = ivf._SampleScores(index, q, rows, K, n_probe, max(cands))
    calib = time.perf_counter() - tick
    out = [
        f"IVF: {n_lists} lists, index built in {build:.1f} s; the 256 sample rows scored in "
        f"{calib:.1f} s (also their exact top-k).\n",
        "| candidates / list | share of N | recall@130 (sample) | full scan s | recall (full) |",
        "|---|---|---|---|---|",
    ]
    for j, c in enumerate(cands):
        sample = ivf._hits(scores.found(c), scores.exact)
        scan, full_recall = "–", "–"
        if j in full:
            tick = time.perf_counter()
            ids, _, _ = ivf._scan_all(index, q, K, n, n_probe, c, False, d)
            scan = f"{time.perf_counter() - tick:.1f}"
            full_recall = f"{ivf._hits(ids[rows], scores.exact):.3f}"
        out.append(f"| {c} | {c / n:.3f} | {sample:.3f} | {scan} | {full_recall} |")
        print(out[-1], flush=True)
    return out


def _unit(a) -> np.ndarray:
    """Rows scaled to unit length, float32 (FAISS's inner product is then the cosine)."""
    a = np.asarray(a, dtype=np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def hnsw_curve(q, t, exact, rows, queries_timed: int = 10_000) -> list[str]:
    """FAISS IndexHNSWFlat (M = 32, efConstruction 40) on the normalised float32 targets."""
    import faiss

    n, d = q.shape
    index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    tick = time.perf_counter()
    for start in range(0, n, 50_000):
        index.add(_unit(t[start : start + 50_000]))
    build = time.perf_counter() - tick
    timed = np.sort(np.random.default_rng(1).choice(n, size=min(n, queries_timed), replace=False))
    out = [
        f"\nHNSW (IndexHNSWFlat, M = 32, efConstruction = 40): built in {build:.1f} s; search "
        f"time for all N queries extrapolated from {timed.size} ({n / timed.size:.0f}×).\n",
        "| efSearch | recall@130 (sample) | search s (N queries) | build + search s |",
        "|---|---|---|---|",
    ]
    qs = _unit(q[rows])
    qt = _unit(q[timed])
    for ef in (128, 256, 512):
        index.hnsw.efSearch = ef
        _, found = index.search(qs, K + 1)
        found = np.array([[j for j in r if j != i][:K] for r, i in zip(found, rows, strict=True)])
        tick = time.perf_counter()
        index.search(qt, K + 1)
        search = (time.perf_counter() - tick) * n / timed.size
        out.append(
            f"| {ef} | {ivf._hits(found, exact):.3f} | {search:.1f} | {build + search:.1f} |"
        )
        print(out[-1], flush=True)
    return out


def pq_curve(q, t, exact, rows, queries_timed: int = 10_000) -> list[str]:
    """FAISS IVF-PQ, with and without an OPQ rotation, each followed by an exact re-ranking
    of ``REFINE × k`` PQ candidates (``IndexRefineFlat``), on the normalised float32 vectors:
    the compressed-index family next to the IVF with exact per-list scoring."""
    import faiss

    n, d = q.shape
    n_lists = int(4 * np.sqrt(n))
    train = _unit(
        t[np.sort(np.random.default_rng(2).choice(n, size=min(n, 64 * n_lists), replace=False))]
    )
    timed = np.sort(np.random.default_rng(1).choice(n, size=min(n, queries_timed), replace=False))
    qs, qt = _unit(q[rows]), _unit(q[timed])
    out = [
        f"\nIVF-PQ ({n_lists} lists, PQ{PQ_M} × 8 bits) and OPQ{PQ_M} + IVF-PQ, each re-ranked "
        f"exactly over {REFINE}·k PQ candidates (`IndexRefineFlat`); trained on "
        f"{len(train):,} targets; search time for all N queries extrapolated from {timed.size}.\n",
        "| index | nprobe | recall@130 (sample) | build s | search s (N queries) "
        "| build + search s |",
        "|---|---|---|---|---|---|",
    ]
    for name, spec in (
        ("IVF-PQ", f"IVF{n_lists},PQ{PQ_M}"),
        ("OPQ + IVF-PQ", f"OPQ{PQ_M},IVF{n_lists},PQ{PQ_M}"),
    ):
        tick = time.perf_counter()
        base = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
        base.train(train)
        index = faiss.IndexRefineFlat(base)
        for start in range(0, n, 50_000):
            index.add(_unit(t[start : start + 50_000]))
        build = time.perf_counter() - tick
        index.k_factor = REFINE
        ivf_part = faiss.extract_index_ivf(base)
        for n_probe in (16, 64, 256):
            ivf_part.nprobe = n_probe
            _, found = index.search(qs, K + 1)
            found = np.array(
                [[j for j in r if j != i][:K] for r, i in zip(found, rows, strict=True)]
            )
            tick = time.perf_counter()
            index.search(qt, K + 1)
            search = (time.perf_counter() - tick) * n / timed.size
            out.append(
                f"| {name} | {n_probe} | {ivf._hits(found, exact):.3f} | {build:.1f} | "
                f"{search:.1f} | {build + search:.1f} |"
            )
            print(out[-1], flush=True)
    return out


def target_row(q, t) -> list[str]:
    """The recall loop as the library runs it (search_neighbours, recall=0.95)."""
    import warnings

    from hardbatch.similarity import SearchSettings, search_neighbours

    tick = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = search_neighbours(q, t, K, SearchSettings(backend="faiss", progress=False))
    total = time.perf_counter() - tick
    note = " (warned: target not met within max_widen)" if caught else ""
    info = found.info
    return [
        f"\n`search_neighbours(backend='faiss', recall=0.95)`: {total:.1f} s end to end, "
        f"recall {info['recall']:.3f}, {info['candidates']} candidates / list after "
        f"{info['widen_steps']} widening steps{note}.\n"
    ]


def curve(kind: str, n: int, hnsw: bool, scan: bool, pq: bool = False) -> list[str]:
    q, t = load(kind, n)
    head = [f"\n### {kind} data, N = {n:,}, d = 768, k = {K}\n"]
    out = ivf_curve(q, t, levels=6 if kind == "scale" else 5, full={0} if scan else set())
    if scan:
        out += target_row(q, t)
    if hnsw or pq:
        rows = ivf.sample_rows(n, ROWS, 0)
        from hardbatch.similarity.exact import exact_rows_top_k

        exact = exact_rows_top_k(q, t, rows, K)
        out += hnsw_curve(q, t, exact, rows) if hnsw else []
        out += pq_curve(q, t, exact, rows) if pq else []
    return head + out


def quality(n: int) -> list[str]:
    """Plans at several recalls vs the exact plan (GCBS and B3)."""
    import warnings

    import hardbatch
    from hardbatch.metrics import _gap, global_losses, train_losses
    from hardbatch.similarity.exact import exact_rows_top_k

    q, t = load("scale", n)
    q, t = np.asarray(q, dtype=np.float32), np.asarray(t, dtype=np.float32)
    rows = ivf.sample_rows(n, 2000, 5)
    exact = exact_rows_top_k(q, t, rows, 130)
    glob = global_losses(q, t)  # the same for every plan: computed once
    top10 = exact[:, :10]
    window = None  # B3's exact rank window [p, p + m) of the exact plan (its defaults at N)
    settings = [("fixed probe", "faiss", None), ("target 0.9", "faiss", 0.9),
                ("target 0.95", "faiss", 0.95), ("exact", "exact", None)]  # fmt: skip
    out = [
        f"\n### What recall buys the plan: N = {n:,}, scale data, batch 64\n",
        "| method | search | recall | loss gap | exact top-10 in batch / cluster | "
        "negatives in the exact rank window | plan s |",
        "|---|---|---|---|---|---|---|",
    ]
    measured = []
    for method in ("gcbs", "b3"):
        extra = {"hard_negatives": 3} if method == "b3" else {}
        for label, backend, target in settings[::-1]:  # exact first: B3's reference negatives
            tick = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                plan = hardbatch.plan(
                    method, q, t, batch_size=64, seed=0, backend=backend, recall=target,
                    progress=False, **extra,
                )  # fmt: skip
            secs = time.perf_counter() - tick
            group = np.empty(n, dtype=np.int64)
            units = plan.batches if method == "gcbs" else plan.clusters
            for u, members in enumerate(units):
                members = np.asarray(members)
                group[members[members >= 0]] = u  # B3's clusters are padded with -1
            together = float((group[top10] == group[rows][:, None]).mean())
            hn = "–"
            if method == "b3":
                if window is None:
                    p, m = plan.info["window"][:2]
                    window = exact[:, p : p + m]
                pairs = zip(plan.hard_negatives[rows], window, strict=True)
                hn = f"{np.mean([len(set(a) & set(b)) / len(a) for a, b in pairs]):.3f}"
            recall = plan.info["search"].get("recall")
            rec = "1 (exact)" if backend == "exact" else f"{recall:.3f}"
            gap = _gap(*glob, train_losses(q, t, plan))["gap"]
            measured.append(
                f"| {method} | {label} | {rec} | {gap:.4f} | {together:.3f} | {hn} | {secs:.1f} |"
            )
            print(measured[-1], flush=True)
    return out + measured


def real_embeddings(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Teacher embeddings of an evidence corpus (every split), from its feature cache."""
    from evidence import data_code, data_wordnet, features

    corpus = (data_code if name == "code" else data_wordnet).load()
    return features.encode(corpus.queries, verbose=False)[0], features.encode(
        corpus.targets, verbose=False
    )[0]


def defaults(family: str, n: int, methods=("gcbs", "b3")) -> list[str]:
    """The library's defaults with the FAISS search: the recall each plan records."""
    import warnings

    import hardbatch

    if family in ("code", "wordnet"):
        q, t = real_embeddings(family)
        n = len(q)
        what = f"{family} (all-MiniLM-L6-v2 embeddings, d = 384)"
    else:
        q, t = load(family, n)
        what = f"{family} (synthetic, d = 768)"
    out = [
        f"\n### Defaults with the FAISS search: {what}, N = {n:,}\n",
        "| method | k searched | recall (plan.info) | target | widening steps | "
        "candidates / list | lists probed | plan s | warning |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        tick = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            plan = hardbatch.plan(method, q, t, batch_size=64, seed=0, backend="faiss",
                                  progress=False)  # fmt: skip
        secs = time.perf_counter() - tick
        s = plan.info["search"]
        k = s.get("k") or sum(plan.info.get("window", [0, 0]))
        # The target-missed warning only (a repartition warns too, and may then meet it).
        warned = "; ".join(
            sorted(
                {
                    type(w.message).__name__
                    for w in caught
                    if "widest probe allowed" in str(w.message)
                }
            )
        )
        steps = f"{s['widen_steps']}"
        if s.get("repartitions"):
            steps += f" after {s['repartitions']} repartitions ({s['n_lists']} lists)"
        out.append(
            f"| {method} | {k} | {s['recall']:.3f} | {s['recall_target']} | {steps} "
            f"| {s['candidates']} | {s['lists_probed']:.1f} | {secs:.1f} | {warned or '–'} |"
        )
        print(out[-1], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=("curve", "blobs", "quality", "defaults"))
    parser.add_argument("n", type=int)
    parser.add_argument("--no-hnsw", action="store_true")
    parser.add_argument(
        "--pq", action="store_true", help="curve: also IVF-PQ and OPQ + IVF-PQ with re-ranking"
    )
    parser.add_argument(
        "--no-scan", action="store_true", help="sample recall only: no full scans (no times)"
    )
    parser.add_argument(
        "--family",
        choices=("blobs", "scale", "code", "wordnet"),
        default="blobs",
        help="defaults: the data (code / wordnet: the evidence corpora's MiniLM embeddings)",
    )
    parser.add_argument(
        "--methods", nargs="+", choices=("gcbs", "b3"), default=["gcbs", "b3"], help="defaults"
    )
    parser.add_argument("--out", action="store_true", help=f"append to {RESULTS}")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    if args.part == "quality":
        lines = quality(args.n)
    elif args.part == "defaults":
        lines = defaults(args.family, args.n, args.methods)
    else:
        kind = "scale" if args.part == "curve" else "blobs"
        lines = curve(
            kind,
            args.n,
            hnsw=not args.no_hnsw and args.part == "curve",
            scan=not args.no_scan,
            pq=args.pq,
        )
    lines.append(f"\nMachine: {machine_description(threads)}; shared, loaded (wall times ±30%).\n")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with RESULTS.open("a") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
