"""Peak memory of ``hardbatch.io.export_plan``: a 100k-row file exported for 3 epochs, streamed.

Input (synthetic, seeded, written once to a temporary folder): N rows of ``{"id": int,
"query": ~12 words, "target": ~60 words, "source": one of 8 names}`` as JSON Lines and as
Parquet (a ~10k-word vocabulary of random lowercase strings). The plan is a seeded random plan
(``batch_size=64``); the method does not matter here, only the row order.

Every measurement runs in a fresh subprocess (``_measure.run_json_worker``):

1. RSS after the imports (baseline);
2. ``read_pairs`` (the input held once, as Python lists): RSS after it, and its peak;
3. the peak RSS is reset (``/proc/self/clear_refs``, Linux) and ``export_plan`` writes
   ``epochs`` epochs: "export peak beyond input" is that peak minus the RSS before it: what the
   streaming writer adds on top of the pairs it must hold anyway.

For contrast, ``--naive`` also measures building the whole output in memory first
(``list(iter_export_rows(...))`` then one write), which is what streaming avoids.

Usage::

    python benchmarks/export_memory.py                   # N = 100k, 3 epochs, jsonl + parquet
    python benchmarks/export_memory.py --n 20000 --no-naive
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _measure import machine_description, rss_bytes

BATCH_SIZE = 64
RESULTS = Path(__file__).resolve().parent / "results" / "export_memory.md"


def vm_hwm_bytes() -> int:
    """Peak RSS since the last reset (``VmHWM``)."""
    with open("/proc/self/status") as fh:
        return int(re.search(r"VmHWM:\s+(\d+)", fh.read()).group(1)) * 1024


def reset_peak() -> None:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def make_input(n: int, folder: Path, seed: int = 0) -> dict[str, Path]:
    """Write the synthetic pairs as JSON Lines and Parquet; return the two paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, size=rng.integers(3, 10))) for _ in range(10_000)]
    sources = [f"source_{i}" for i in range(8)]
    paths = {"jsonl": folder / "pairs.jsonl", "parquet": folder / "pairs.parquet"}
    step = 10_000
    with open(paths["jsonl"], "w") as fh, pq.ParquetWriter(
        paths["parquet"],
        pa.schema([("id", pa.int64()), ("query", pa.string()), ("target", pa.string()),
                   ("source", pa.string())]),
    ) as writer:  # fmt: skip
        for start in range(0, n, step):
            rows = []
            for i in range(start, min(n, start + step)):
                q = " ".join(vocab[j] for j in rng.integers(0, len(vocab), rng.integers(6, 18)))
                t = " ".join(vocab[j] for j in rng.integers(0, len(vocab), rng.integers(30, 90)))
                rows.append({"id": i, "query": f"{q} {i}", "target": t, "source": sources[i % 8]})
            fh.write("".join(json.dumps(r) + "\n" for r in rows))
            writer.write_table(pa.Table.from_pylist(rows))
    return paths


def worker(path: Path, fmt: str, epochs: int, naive: bool) -> dict:
    import pyarrow.parquet  # noqa: F401  (loaded before the baseline: its libraries are not data)

    import hardbatch
    from hardbatch.io import export_plan, iter_export_rows, read_pairs

    base = rss_bytes()
    start = time.perf_counter()
    pairs = read_pairs(path, ("query", "target"))
    read_s = time.perf_counter() - start
    read_peak = vm_hwm_bytes()
    plan = hardbatch.plan(
        "random", n_samples=len(pairs), batch_size=BATCH_SIZE, seed=0, drop_last=True
    )
    held = rss_bytes()
    reset_peak()
    out = path.with_name(f"train_{'naive' if naive else 'stream'}.{fmt}")
    start = time.perf_counter()
    if naive:
        rows = list(iter_export_rows(plan, pairs, epochs=epochs))
        if fmt == "jsonl":
            with open(out, "w") as fh:
                fh.write("".join(json.dumps(r) + "\n" for r in rows))
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), out)
    else:
        export_plan(plan, pairs, out, epochs=epochs, format=fmt)
    export_s = time.perf_counter() - start
    export_peak = vm_hwm_bytes()
    return {
        "format": fmt,
        "mode": "naive" if naive else "stream",
        "n": len(pairs),
        "epochs": epochs,
        "input_bytes": path.stat().st_size,
        "output_bytes": out.stat().st_size,
        "baseline_rss": base,
        "read_peak_beyond_baseline": read_peak - base,
        "pairs_held": held - base,
        "export_peak_beyond_input": max(0, export_peak - held),
        "read_s": read_s,
        "export_s": export_s,
    }


def mib(b: float) -> str:
    return f"{b / 2**20:,.0f}"


def table(results: list[dict]) -> str:
    rows = [
        "| format | mode | rows out | input MiB | output MiB | pairs held MiB "
        "| read peak MiB | export peak beyond input MiB | export s |",
        "|" + "---|" * 9,
    ]
    for r in results:
        rows.append(
            f"| {r['format']} | {r['mode']} | {r['n'] * r['epochs']:,} | {mib(r['input_bytes'])} "
            f"| {mib(r['output_bytes'])} | {mib(r['pairs_held'])} "
            f"| {mib(r['read_peak_beyond_baseline'])} "
            f"| {mib(r['export_peak_beyond_input'])} | {r['export_s']:.1f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    from _measure import run_json_worker

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--no-naive", dest="naive", action="store_false")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--format", help=argparse.SUPPRESS)
    parser.add_argument("--naive-mode", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.path, args.format, args.epochs, args.naive_mode)))
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_input(args.n, Path(tmp))
        for fmt, path in paths.items():
            for naive in (False, True) if args.naive else (False,):
                cmd = [sys.executable, __file__, "--worker", "--path", str(path)]
                cmd += ["--format", fmt, "--epochs", str(args.epochs)]
                cmd += ["--naive-mode"] if naive else []
                r = run_json_worker(cmd, threads=1)
                print(json.dumps(r), flush=True)
                results.append(r)
    text = (
        f"# Export memory: {args.n:,} rows x {args.epochs} epochs\n\n"
        f"`python benchmarks/export_memory.py --n {args.n} --epochs {args.epochs}` on "
        f"{machine_description(1)}.\n\n"
        "*pairs held*: RSS added by `read_pairs` (the input, held once as Python lists); "
        "*read peak*: peak RSS of reading, above the baseline after imports; *export peak beyond "
        "input*: peak RSS while writing, above the RSS with the pairs and the plan held. "
        "*naive* builds every output row in memory first (`list(iter_export_rows(...))`), "
        "which `export_plan` does not.\n\n" + table(results) + "\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
