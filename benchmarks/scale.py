"""Scaling of ``hardbatch.plan("gcbs" | "b3", backend="auto")`` up to a million pairs.

Data (clustered synthetic, d = 768, float16 ``.npy`` memmaps written in chunks of 50k rows,
so generating 1M pairs never holds more than a chunk): three levels of structure,

* ``N / 4096`` *topics*, centres uniform on the unit sphere;
* groups of 32 samples; group ``g`` lies in topic ``g mod n_topics`` at
  ``topic + 1.0·u_g`` (``u`` standard normal scaled by ``1/sqrt(d)``, so members of one topic
  have cosine ~0.5 across groups);
* sample ``i`` of group ``g``: latent ``z_i = centre_g + 0.6·u_i``; query and target are two
  noisy views ``z_i + 0.3·e_i`` (same model as :func:`hardbatch.synthetic.make_planted_pairs`).

Rows are shuffled. GCBS's nearest neighbours are group mates, B3's rank window ``[30, 130)``
falls in the topic, so both searches have real structure to find.

Every measurement runs in a fresh subprocess (clean peak RSS, ``VmHWM``): it memory-maps
the float16 files and times ``hardbatch.plan(method, backend="auto")`` end to end (validation,
search, graph, ordering / partition, batches); ``CPU s`` is the process's user + system CPU
time (on a shared machine, wall time > CPU / cores shows the contention). Stage seconds come
from ``plan.info``; recall is FAISS's recall@k against the exact search on 256 sampled rows
(``plan.info["search"]``).

``--compare-exact N`` also plans a sample of N pairs with ``backend="exact"`` and
``backend="faiss"`` and prints the loss gap of both plans (``hardbatch.metrics.loss_gap``).

Usage::

    python benchmarks/scale.py --sizes 10000 30000 100000          # table + scale.png
    python benchmarks/scale.py --sizes 1000000 --methods gcbs      # one 1M measurement
    python benchmarks/scale.py --compare-exact 20000 --sizes       # plan quality only
    python benchmarks/scale.py --compare-ray 20000 5000 --sizes    # sharded vs whole plan
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIM = 768
GROUP_SIZE = 32
TOPIC_SIZE = 4096
CHUNK = 50_000


def make_clustered(folder: Path, n: int, d: int = DIM, seed: int = 0) -> tuple[Path, Path]:
    """Write ``queries.npy`` / ``targets.npy`` (float16, shape (n, d)) chunk by chunk."""
    folder.mkdir(parents=True, exist_ok=True)
    q_path, t_path = folder / "queries.npy", folder / "targets.npy"
    if q_path.exists() and t_path.exists():
        return q_path, t_path
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(d)
    n_groups = -(-n // GROUP_SIZE)
    n_topics = max(1, n // TOPIC_SIZE)
    topics = rng.standard_normal((n_topics, d)).astype(np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    centres = topics[np.arange(n_groups) % n_topics] + (
        1.0 * scale * rng.standard_normal((n_groups, d), dtype=np.float32)
    )
    group_of = rng.permutation(n) // GROUP_SIZE  # shuffled rows
    queries = np.lib.format.open_memmap(q_path, mode="w+", dtype=np.float16, shape=(n, d))
    targets = np.lib.format.open_memmap(t_path, mode="w+", dtype=np.float16, shape=(n, d))
    for start in range(0, n, CHUNK):
        sl = slice(start, min(start + CHUNK, n))
        rows = sl.stop - sl.start
        latent = centres[group_of[sl]] + 0.6 * scale * rng.standard_normal((rows, d), np.float32)
        queries[sl] = latent + 0.3 * scale * rng.standard_normal((rows, d), np.float32)
        targets[sl] = latent + 0.3 * scale * rng.standard_normal((rows, d), np.float32)
    queries.flush()
    targets.flush()
    del queries, targets
    return q_path, t_path


def _peak_rss_gb() -> float:
    # VmHWM, not ru_maxrss: the latter keeps the forking parent's peak across exec. METIS runs
    # in a forked child that shares this process's pages: the larger peak is what was needed.
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return max(int(line.split()[1]) / 2**20, children)  # kB
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, children)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(method: str, folder: Path, backend: str) -> dict:
    """One measurement (runs in its own process)."""
    import hardbatch

    queries = np.load(folder / "queries.npy", mmap_mode="r")
    targets = np.load(folder / "targets.npy", mmap_mode="r")
    start = time.perf_counter()
    plan = hardbatch.plan(
        method, queries, targets, batch_size=64, seed=0, backend=backend, progress=False
    )
    total = time.perf_counter() - start
    info = plan.info
    seconds = info["seconds"]
    search = info.get("search", {})
    if method == "gcbs":
        stages = {"search": seconds["similarity"], "structure": seconds["ordering"]}
    else:
        stages = {
            "search": seconds["search"],
            "structure": seconds["graph"] + seconds["partition"] + seconds["clusters"],
        }
    return {
        "method": method,
        "n": int(queries.shape[0]),
        "backend": search.get("backend"),
        "recall": search.get("recall"),
        "partitioner": info.get("partitioner"),
        **stages,
        "total": total,
        "cpu": _cpu_seconds(),
        "peak_rss_gb": _peak_rss_gb(),
    }


def compare_exact(n: int, data: Path) -> list[dict]:
    """Loss gap of exact vs FAISS plans on the first n pairs (in this process)."""
    import hardbatch
    from hardbatch.metrics import loss_gap

    folder = data / f"n{n}"
    make_clustered(folder, n)
    queries = np.asarray(np.load(folder / "queries.npy"), dtype=np.float32)
    targets = np.asarray(np.load(folder / "targets.npy"), dtype=np.float32)
    rows = []
    for method in ("gcbs", "b3"):
        for backend in ("exact", "faiss"):
            plan = hardbatch.plan(
                method, queries, targets, batch_size=64, seed=0, backend=backend, progress=False
            )
            gap = loss_gap(queries, targets, plan)
            search = plan.info.get("search", {})
            rows.append(
                {
                    "method": method,
                    "backend": backend,
                    "recall": search.get("recall"),
                    "gap": gap["gap"],
                    "train": gap["train"],
                    "global": gap["global"],
                }
            )
    random_gap = loss_gap(queries, targets, hardbatch.plan("random", n_samples=n, batch_size=64))
    rows.append({"method": "random", "backend": "-", "recall": None, "gap": random_gap["gap"]})
    return rows


def compare_ray(n: int, shard_size: int, data: Path) -> list[dict]:
    """Border edge fraction and loss gap of sharded (Ray, local) vs whole plans on n pairs."""
    import ray

    import hardbatch
    from hardbatch.distributed import plan_on_ray
    from hardbatch.metrics import loss_gap

    folder = data / f"n{n}"
    make_clustered(folder, n)
    queries = np.asarray(np.load(folder / "queries.npy"), dtype=np.float32)
    targets = np.asarray(np.load(folder / "targets.npy"), dtype=np.float32)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    for method in ("gcbs", "b3"):
        whole = hardbatch.plan(method, queries, targets, batch_size=64, seed=0, progress=False)
        tick = time.perf_counter()
        sharded = plan_on_ray(
            method, queries=queries, targets=targets, batch_size=64, shard_size=shard_size,
            seed=0, progress=False,
        )  # fmt: skip
        seconds = time.perf_counter() - tick
        info = sharded.info["sharded"]
        rows.append(
            {
                "method": method,
                "n_shards": info["n_shards"],
                "border_edge_fraction": info["border_edge_fraction"],
                "gap_whole": loss_gap(queries, targets, whole)["gap"],
                "gap_sharded": loss_gap(queries, targets, sharded)["gap"],
                "seconds_sharded": seconds,
            }
        )
    ray.shutdown()
    return rows


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict]) -> None:
    print(
        f"{'method':<6} {'N':>9} {'backend':>7} {'search s':>9} {'struct s':>9} "
        f"{'total s':>9} {'CPU s':>7} {'RSS GB':>7} {'recall':>7}  partitioner"
    )
    for r in rows:
        print(
            f"{r['method']:<6} {r['n']:>9} {r['backend'] or '-':>7} {r['search']:>9.1f} "
            f"{r['structure']:>9.1f} {r['total']:>9.1f} {_fmt(r.get('cpu'), '.0f'):>7} "
            f"{r['peak_rss_gb']:>7.2f} "
            f"{_fmt(r['recall'], '.3f'):>7}  {r['partitioner'] or '-'}"
        )


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for method in sorted({r["method"] for r in rows}):
        sub = sorted((r for r in rows if r["method"] == method), key=lambda r: r["n"])
        ns = [r["n"] for r in sub]
        ax_t.loglog(ns, [r["total"] for r in sub], "o-", label=f"{method} total")
        ax_t.loglog(ns, [r["search"] for r in sub], "x--", label=f"{method} search")
        ax_m.loglog(ns, [r["peak_rss_gb"] for r in sub], "o-", label=method)
    ax_t.axhline(600, color="grey", lw=0.8, ls=":")
    ax_m.axhline(12, color="grey", lw=0.8, ls=":")
    ax_t.set(xlabel="N pairs (d = 768)", ylabel="seconds", title="plan time (backend=auto)")
    ax_m.set(xlabel="N pairs (d = 768)", ylabel="peak RSS (GB)", title="peak memory")
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", lw=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", type=int, nargs="*", default=[10_000, 30_000, 100_000, 300_000, 1_000_000]
    )
    parser.add_argument("--methods", nargs="+", default=["gcbs", "b3"])
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "hb_scale")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/scale"))
    parser.add_argument("--compare-exact", type=int, default=None, metavar="N")
    parser.add_argument("--compare-ray", type=int, nargs=2, default=None, metavar=("N", "SHARD"))
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker[0], Path(args.worker[1]), args.backend)))
        return

    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}; single run per cell (shared machine: ±20%)"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    if args.compare_exact:
        rows = compare_exact(args.compare_exact, args.data)
        print(f"\nplan quality at N = {args.compare_exact} (loss gap, lower is better)")
        for r in rows:
            print(
                f"{r['method']:<6} {r['backend']:>6} recall {_fmt(r['recall'], '.3f'):>6} "
                f"gap {r['gap']:.4f}"
            )
        (args.out / f"compare_{args.compare_exact}.json").write_text(json.dumps(rows, indent=1))

    if args.compare_ray:
        n, shard = args.compare_ray
        rows = compare_ray(n, shard, args.data)
        print(f"\nsharded (Ray, local) vs whole plan at N = {n}, shard_size = {shard}")
        for r in rows:
            print(
                f"{r['method']:<6} shards {r['n_shards']} border edges "
                f"{r['border_edge_fraction']:.3f} gap whole {r['gap_whole']:.4f} "
                f"sharded {r['gap_sharded']:.4f} ({r['seconds_sharded']:.0f} s)"
            )
        (args.out / f"compare_ray_{n}_{shard}.json").write_text(json.dumps(rows, indent=1))

    results_path = args.out / "scale.json"
    rows = json.loads(results_path.read_text()) if results_path.exists() else []
    for n in args.sizes:
        folder = args.data / f"n{n}"
        tick = time.perf_counter()
        make_clustered(folder, n)
        print(f"# data N={n}: {time.perf_counter() - tick:.1f} s (cached after the first run)")
        for method in args.methods:
            out = subprocess.run(
                [sys.executable, __file__, "--worker", method, str(folder), "--backend",
                 args.backend],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if out.returncode:
                print(f"# {method} N={n} failed:\n{out.stderr[-2000:]}")
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows = [r for r in rows if (r["method"], r["n"]) != (method, n)] + [row]
            results_path.write_text(json.dumps(rows, indent=1))
            print_table([row])
    if rows:
        rows.sort(key=lambda r: (r["method"], r["n"]))
        print("\nall measurements so far:")
        print_table(rows)
        plot(rows, args.out / "scale.png")
        print(f"\nplot: {args.out / 'scale.png'}")


if __name__ == "__main__":
    main()
