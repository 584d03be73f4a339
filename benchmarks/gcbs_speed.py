"""GCBS planning speed: the paper's procedure vs the matmul floor vs hardbatch.

Setting of the GCBS paper's Appendix J: uniform random 768-d embeddings
(``torch.rand(N, 768)``), quantile ``q = 1 - 512/N`` (about 512 kept entries per row).
Three contenders, same torch thread count:

(a) ``paper``: a faithful CPU port of the Appendix J code — chunks of 3 rows, a
    ``torch.quantile`` per chunk, the median of those as threshold, a second pass collecting
    row/col/data into Python lists, ``csr_matrix`` + ``reverse_cuthill_mckee``. Slow on purpose;
    it lives here, not in the package.
(b) ``matmul``: the bare blocked product ``X·Yᵀ`` (same blocks as hardbatch, results
    discarded): the floor for any exact method.
(c) ``hardbatch``: ``hardbatch.plan("gcbs", quantile=1 - 512/N)`` end to end (validation,
    threshold estimate, thresholded graph, symmetrise, RCM, batches, diagnostics).

Every measurement runs in a fresh subprocess, so peak RSS (``ru_maxrss``) is its own; memory is
reported beyond the RSS right after the inputs were generated. (a) is skipped where its time,
extrapolated as N² from the last size it ran at, would exceed ``--paper-limit`` seconds (default
420 s: enough to include N = 20k, where the speed-up target is set, ~6 min on 2 cores).

Usage::

    python benchmarks/gcbs_speed.py                      # N = 5k, 10k, 20k, 50k, 100k
    python benchmarks/gcbs_speed.py --sizes 2000 5000 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

from _measure import gib, machine_description, peak_rss_bytes, rss_bytes, run_json_worker

DIM = 768
KEEP_PER_ROW = 512


# --------------------------------------------------------------------------- contenders
def paper_appendix_j(z1, z2, quantile: float):
    """The GCBS paper's Appendix J code, as published, on the CPU (``.cuda()`` dropped)."""
    import torch
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    # (1) Stack and normalize outputs
    src_train_full = torch.nn.functional.normalize(z1)
    tgt_train_full = torch.nn.functional.normalize(z2)

    # (2) Estimate quantile
    chunk_size, num_samples, quantiles = 3, len(tgt_train_full), []
    for chunk_idx in range(math.ceil(len(tgt_train_full) / chunk_size)):
        mat_val = (
            src_train_full[chunk_idx * chunk_size : (chunk_idx + 1) * chunk_size] @ tgt_train_full.T
        )
        quantiles.append(float(torch.quantile(mat_val, quantile)))

    # (3) Get similarity graph thresholded on quantile
    row, col, data, quantile = [], [], [], statistics.median(quantiles)
    for chunk_idx in range(math.ceil(len(src_train_full) / chunk_size)):
        mat_val = (
            src_train_full[chunk_idx * chunk_size : (chunk_idx + 1) * chunk_size] @ tgt_train_full.T
        )
        ret = (mat_val.flatten() > quantile).nonzero(as_tuple=True)[0].cpu()
        row += ((ret - (ret % num_samples)) / num_samples + chunk_idx * chunk_size).int().tolist()
        col += (ret % num_samples).tolist()
        data += [1.0 for _ in range(len(ret))]

    # (4) Get permutation using graph bandwidth minimization on sparsified graph
    permutation = list(
        reverse_cuthill_mckee(csr_matrix((data, (row, col)), shape=(num_samples, num_samples)))
    )
    return permutation


def bare_matmul(x, y) -> None:
    """Blocked ``X·Yᵀ`` with hardbatch's default block size, into one reused buffer (the
    fastest way to run it; results discarded)."""
    import torch

    from hardbatch.similarity.exact import default_block_rows

    n = x.shape[0]
    rows = default_block_rows(n)
    yt = y.T.contiguous()
    out = torch.empty((min(rows, n), n))
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        torch.matmul(x[start:stop], yt, out=out[: stop - start])


def hardbatch_gcbs(x, y, quantile: float):
    import hardbatch

    return hardbatch.plan(
        "gcbs",
        queries=x,
        targets=y,
        batch_size=64,
        seed=0,
        quantile=quantile,
        backend="exact",  # the exact path is what this benchmark measures
        progress=False,
    )


def worker(which: str, n: int, threads: int) -> dict:
    """Run one contender once in this process and return its measurements."""
    import torch

    import hardbatch  # noqa: F401  (imported before timing: import cost is not planning cost)

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x, y = torch.rand(n, DIM), torch.rand(n, DIM)
    quantile = 1 - KEEP_PER_ROW / n
    rss_inputs = rss_bytes()
    start = time.perf_counter()
    extra = {}
    if which == "paper":
        perm = paper_appendix_j(x, y, quantile)
        assert len(perm) == n
    elif which == "matmul":
        bare_matmul(x, y)
    elif which == "hardbatch":
        plan = hardbatch_gcbs(x, y, quantile)
        extra = {
            "stage_seconds": plan.info["seconds"],
            "n_edges": plan.info["n_edges"],
            "in_batch_edge_fraction": plan.info["in_batch_edge_fraction"],
        }
    else:
        raise ValueError(which)
    seconds = time.perf_counter() - start
    return {
        "which": which,
        "n": n,
        "threads": threads,
        "seconds": seconds,
        "peak_beyond_inputs_bytes": max(0, peak_rss_bytes() - rss_inputs),
        "input_bytes": 2 * n * DIM * 4,
        **extra,
    }


def run_worker(which: str, n: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", which, "--n", str(n), "--threads", str(threads)]
    return run_json_worker(cmd, threads)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000, 50000, 100000])
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads for all contenders (default: all cores)",
    )
    parser.add_argument(
        "--paper-limit",
        type=float,
        default=420.0,
        help="skip (a) where its extrapolated time exceeds this (seconds); 0: never run (a)",
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument(
        "--worker", choices=["paper", "matmul", "hardbatch"], help=argparse.SUPPRESS
    )
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.threads)))
        return

    print(f"machine: {machine_description(args.threads)}", flush=True)
    results = []
    paper_last: tuple[int, float] | None = None
    header = (
        "| N | (a) paper s | (b) matmul s | (c) hardbatch s | (a)/(c) | (c)/(b) "
        "| (a)/(b) | (c) peak GiB beyond inputs | inputs GiB |"
    )
    rows = [header, "|" + "---|" * 9]
    for n in sorted(args.sizes):
        paper = None
        predicted = None if paper_last is None else paper_last[1] * (n / paper_last[0]) ** 2
        if args.paper_limit > 0 and (predicted is None or predicted <= args.paper_limit):
            paper = run_worker("paper", n, args.threads)
            paper_last = (n, paper["seconds"])
        matmul = run_worker("matmul", n, args.threads)
        ours = run_worker("hardbatch", n, args.threads)
        results += [r for r in (paper, matmul, ours) if r]
        a = paper["seconds"] if paper else None
        b, c = matmul["seconds"], ours["seconds"]
        fmt = lambda v, spec: format(v, spec) if v is not None else "skipped"  # noqa: E731
        a_c, a_b = (a / c, a / b) if a else (None, None)
        rows.append(
            f"| {n:,} | {fmt(a, '.1f')} | {b:.1f} | {c:.1f} | "
            f"{fmt(a_c, '.1f')} | {c / b:.2f} | {fmt(a_b, '.1f')} | "
            f"{gib(ours['peak_beyond_inputs_bytes'])} | {gib(ours['input_bytes'])} |"
        )
        stages = ", ".join(f"{k} {v:.2f}s" for k, v in ours["stage_seconds"].items())
        print(f"N={n:,}: (c) stages: {stages}; edges {ours['n_edges']:,}", flush=True)
    print()
    print("\n".join(rows))
    if args.json:
        args.json.write_text(
            json.dumps({"machine": machine_description(args.threads), "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
