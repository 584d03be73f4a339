"""B3 planning speed and memory: stage times from N = 10k to 200k teacher-like embeddings.

Input (documented, synthetic, seeded): "teacher-like" d = 384 embeddings (MiniLM's width) of a
clustered corpus. ``N / 50`` topic centres on the unit sphere; topic sizes are lognormal
(sigma 1, so a few big topics and many small ones, never aligned with the cluster size K);
every sample is its topic centre plus isotropic noise of norm ``spread`` (0.8), and its query
and target are two views of it with view noise of norm 0.5. So a positive pair has cosine
about 0.8, two samples of one topic about 0.6, unrelated samples about 0: the rank windows
fall inside topics, as with a real teacher on a real corpus. Generated in float32, in chunks.

What is timed: ``hardbatch.plan("b3", ...)`` end to end (validation included) with the
defaults ``batch_size=64, cluster_size=32, p=30, m=100`` and exact search, per stage from
``plan.info["seconds"]``: search (blocked matmul + top-(p+m)), graph (mutual window edges),
partition (METIS), clusters (exactly K), batches (epoch 0). Every N runs in a fresh
subprocess, so the peak RSS (``ru_maxrss``) is its own; "beyond inputs" subtracts the RSS
right after generating the embeddings.

Usage::

    python benchmarks/b3_speed.py                         # N = 10k, 30k, 100k, 200k
    python benchmarks/b3_speed.py --sizes 10000 30000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from _measure import gib, machine_description, peak_rss_bytes, rss_bytes, run_json_worker

DIM = 384
SAMPLES_PER_TOPIC = 50
SPREAD = 0.8
VIEW_NOISE = 0.5
STAGES = ("search", "graph", "partition", "clusters", "batches")


def teacher_like(n: int, dim: int = DIM, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered paired embeddings (module docstring), float32, shape (n, dim) each."""
    rng = np.random.default_rng(seed)
    n_topics = max(1, n // SAMPLES_PER_TOPIC)
    centres = rng.standard_normal((n_topics, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.lognormal(0.0, 1.0, n_topics)
    topic = rng.choice(n_topics, size=n, p=weights / weights.sum())
    queries = np.empty((n, dim), dtype=np.float32)
    targets = np.empty((n, dim), dtype=np.float32)
    scale = np.float32(1.0 / np.sqrt(dim))
    step = 16384
    for start in range(0, n, step):
        sl = slice(start, min(start + step, n))
        rows = sl.stop - sl.start
        latent = centres[topic[sl]] + SPREAD * scale * rng.standard_normal(
            (rows, dim), dtype=np.float32
        )
        queries[sl] = latent + VIEW_NOISE * scale * rng.standard_normal(
            (rows, dim), dtype=np.float32
        )
        targets[sl] = latent + VIEW_NOISE * scale * rng.standard_normal(
            (rows, dim), dtype=np.float32
        )
    return queries, targets


def worker(n: int, threads: int, params: dict) -> dict:
    """Plan once in this process and return the measurements."""
    import torch

    import hardbatch

    torch.set_num_threads(threads)
    queries, targets = teacher_like(n)
    rss_inputs = rss_bytes()
    start = time.perf_counter()
    plan = hardbatch.plan("b3", queries, targets, seed=0, progress=False, **params)
    seconds = time.perf_counter() - start
    info = plan.info
    return {
        "n": n,
        "threads": threads,
        "params": params,
        "seconds": seconds,
        "stage_seconds": info["seconds"],
        "n_edges": info["n_edges"],
        "mean_degree": info["mean_degree"],
        "isolated": info["isolated"],
        "edge_cut_fraction": info["edge_cut_fraction"],
        "part_size_min": info["part_size_min"],
        "part_size_max": info["part_size_max"],
        "in_cluster_edge_fraction": info["in_cluster_edge_fraction"],
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_beyond_inputs_bytes": max(0, peak_rss_bytes() - rss_inputs),
        "input_bytes": 2 * n * DIM * 4,
    }


def run_worker(n: int, threads: int, params: dict) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--n",
        str(n),
        "--threads",
        str(threads),
        "--params",
        json.dumps(params),
    ]
    return run_json_worker(cmd, threads)


def table(results: list[dict]) -> str:
    header = (
        "| N | search s | graph s | partition s | clusters s | batches s | total s "
        "| peak RSS GiB | beyond inputs GiB | mean degree | edge cut | in-cluster edges |"
    )
    rows = [header, "|" + "---|" * 12]
    for r in results:
        st = r["stage_seconds"]
        rows.append(
            f"| {r['n']:,} | "
            + " | ".join(f"{st.get(s, 0.0):.1f}" for s in STAGES)
            + f" | {r['seconds']:.1f} | {gib(r['peak_rss_bytes'])} | "
            f"{gib(r['peak_beyond_inputs_bytes'])} | {r['mean_degree']:.1f} | "
            f"{r['edge_cut_fraction']:.2f} | {r['in_cluster_edge_fraction']:.2f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 30000, 100000, 200000])
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads (default: all cores)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cluster-size", type=int, default=32)
    parser.add_argument("-p", type=int, default=30)
    parser.add_argument("-m", type=int, default=100)
    parser.add_argument("--partitioner", choices=["metis", "leiden", "auto"], default="metis")
    parser.add_argument(
        "--backend",
        choices=["exact", "faiss", "auto"],
        default="exact",
        help="teacher rank search (default: exact, the issue's target setting)",
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.n, args.threads, json.loads(args.params))))
        return

    params = {
        "batch_size": args.batch_size,
        "cluster_size": args.cluster_size,
        "p": args.p,
        "m": args.m,
        "partitioner": args.partitioner,
        "backend": args.backend,
    }
    print(f"machine: {machine_description(args.threads)}", flush=True)
    print(f"parameters: {params}", flush=True)
    results = []
    for n in sorted(args.sizes):
        r = run_worker(n, args.threads, params)
        results.append(r)
        stages = ", ".join(f"{k} {v:.2f}s" for k, v in r["stage_seconds"].items())
        print(
            f"N={n:,}: {r['seconds']:.1f}s ({stages}); edges {r['n_edges']:,}, "
            f"isolated {r['isolated']}, parts {r['part_size_min']}..{r['part_size_max']}",
            flush=True,
        )
    print()
    print(table(results))
    if args.json:
        args.json.write_text(
            json.dumps({"machine": machine_description(args.threads), "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
