"""Which GCBS selection rule (and which B3 ``p``, ``m``) should be the default?

Issue 11, item 1: the GCBS default ``quantile=0.999`` keeps ~N/1000 pairs per row, so at small N
most samples are isolated and the batches are near random. This script measures candidate rules
on data with a known hard-negative structure (groups) and reports **batch purity**:

    purity = sum over batches of #pairs (i < j) in the batch from the same group
             / sum over batches of #pairs (i < j) in the batch           (padding excluded)

A random plan scores about ``(group - 1) / (N - 1)``; a plan that packs whole groups of 32 into
batches of 64 scores ``2·C(32, 2) / C(64, 2) = 0.492``. ``hardbatch.cli.batch_purity`` (the
demo's number) is a different statistic — the mean over batches of the share of a batch taken
by its largest group (at most 0.5 here) — and is reported next to it as ``largest``.

Also reported: ``oracle`` (rows sorted by true group, then cut: a reference packing), ``random``,
the isolated share (samples with no graph edge, from ``plan.info``), the share of graph edges
kept inside a batch, and the planning time.

Data
----
``planted``       the demo's generator, ``make_planted_pairs(N, 64, group_size=32)`` (spread 0.6,
                  noise 0.3: within-group cosine ~0.73, between groups ~0 ± 0.13).
``planted-hard``  the same with spread 1.0, noise 0.5 (top-8 neighbours 97.7% in-group at 5k).
``planted-harder`` spread 1.2, noise 0.5 (top-8 neighbours 87% in-group at 5k; N <= 10k).
``blobs``         data the library was not tuned on: lognormal group sizes (median 32, σ 0.6,
                  2..200), group centres around shared super-centres (neighbouring groups are
                  close: the hard part), a per-group spread in [0.5, 1.3] and anisotropic
                  per-dimension noise; two noisy views.
``mixed``         groups of unequal size: 4, 16, 32, 64 or 128 members (uniform choice).
``digits``        sklearn's bundled 8x8 digits (N <= 1797), groups = class labels, features =
                  centred pixels; query and target are two augmentations (1-pixel shift + noise).

Candidate rules (GCBS, batch ``B = 64``): quantiles 0.999 (today), 0.995, 0.99, 0.98, 0.95;
per-row ``top_k`` 4, 8, 16, 32; ``q = 1 - c·B/N`` (each row keeps about ``c·B`` neighbours),
c in {0.125, 0.25, 0.5, 1}; ``top_k = B // 8`` and ``B // 4`` are the f(B) rules (8 and 16 at
B = 64; checked at other B in the batch-size sweep, with ``clip(B // 8, 8, 16)``). A quantile
rule that would keep more than ``MAX_PER_ROW`` neighbours per row is skipped (``—``): memory
and time grow as N·(1-q)·N.

Part 2: B3's ``p`` in {0, 3, 10, 30} × ``m`` in {20, 50, 100}, K = 32, B = 64, N 1000 / 10000.

Usage::

    python benchmarks/gcbs_defaults.py                 # everything (~15 min on 2 cores)
    python benchmarks/gcbs_defaults.py --quick         # small N only, a smoke run
    python benchmarks/gcbs_defaults.py --out benchmarks/results/gcbs_defaults.md
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from _measure import machine_description

import hardbatch
from hardbatch.cli import batch_purity as largest_group_share
from hardbatch.synthetic import make_planted_pairs

BATCH = 64
GROUP = 32
DIM = 64
SIZES = (500, 1000, 2000, 5000, 10000, 30000)
BIG = 100_000
SEEDS = (0, 1)
#: Quantile rules keeping more neighbours per row than this are skipped (memory/time).
MAX_PER_ROW = 600
#: Largest N planned with two seeds (above: seed 0 only, to stay within the time budget).
TWO_SEEDS_UP_TO = 10_000
#: ``backend="exact"`` up to this N; above it the default ``"auto"`` (exact up to N·N·d = 1e12
#: on CPU, so N = 100k at d = 64 is still exact).
EXACT_UP_TO = 30_000


# --------------------------------------------------------------------------- statistics
def pair_purity(batches, groups: np.ndarray) -> float:
    """Share of in-batch pairs (i < j) whose samples share a group, over all batches."""
    same = total = 0
    for ids in batches:
        counts = np.bincount(groups[ids])
        same += int((counts * (counts - 1) // 2).sum())
        total += len(ids) * (len(ids) - 1) // 2
    return same / total


def cut(order: np.ndarray, batch_size: int):
    """Consecutive batches of an order (the last one short)."""
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def oracle_purity(groups: np.ndarray, batch_size: int) -> float:
    """Purity of rows sorted by group and cut: what packing whole groups in order reaches."""
    return pair_purity(cut(np.argsort(groups, kind="stable"), batch_size), groups)


def random_purity(groups: np.ndarray, batch_size: int, seed: int) -> float:
    """Purity of a random plan."""
    order = np.random.default_rng(seed).permutation(len(groups))
    return pair_purity(cut(order, batch_size), groups)


# --------------------------------------------------------------------------- data
def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def data_planted(n: int, seed: int):
    d = make_planted_pairs(n, DIM, group_size=GROUP, seed=seed)
    return d.queries, d.targets, d.groups


def data_planted_hard(n: int, seed: int):
    d = make_planted_pairs(n, DIM, group_size=GROUP, spread=1.0, noise=0.5, seed=seed)
    return d.queries, d.targets, d.groups


def data_planted_harder(n: int, seed: int):
    d = make_planted_pairs(n, DIM, group_size=GROUP, spread=1.2, noise=0.5, seed=seed)
    return d.queries, d.targets, d.groups


def _views(latent: np.ndarray, groups: np.ndarray, rng, noise: float):
    """Two noisy views with anisotropic noise (per-dimension scales, lognormal)."""
    n, d = latent.shape
    scales = np.exp(0.5 * rng.standard_normal(d)) / np.sqrt(d)
    x = latent + noise * scales * rng.standard_normal((n, d))
    y = latent + noise * scales * rng.standard_normal((n, d))
    perm = rng.permutation(n)
    return x[perm].astype(np.float32), y[perm].astype(np.float32), groups[perm].astype(np.int64)


def _sizes_to_groups(sizes, n: int) -> np.ndarray:
    return np.repeat(np.arange(len(sizes)), sizes)[:n]


def data_blobs(n: int, seed: int):
    """Lognormal group sizes, groups clustered around super-centres, per-group spread."""
    rng = np.random.default_rng(10_000 + seed)
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(np.clip(round(32 * np.exp(0.6 * rng.standard_normal())), 2, 200)))
    groups = _sizes_to_groups(sizes, n)
    n_groups = len(sizes)
    n_super = max(1, n_groups // 8)
    supers = unit(rng.standard_normal((n_super, DIM)))
    # Each centre sits near a super-centre: nearby groups are each other's hard negatives too.
    centres = unit(supers[rng.integers(n_super, size=n_groups)] + 0.9 * unit(
        rng.standard_normal((n_groups, DIM))))  # fmt: skip
    spread = rng.uniform(0.5, 1.3, size=n_groups)
    member = spread[groups, None] * rng.standard_normal((n, DIM)) / np.sqrt(DIM)
    return _views(centres[groups] + member, groups, rng, noise=0.4)


def data_mixed(n: int, seed: int):
    """Groups of 4, 16, 32, 64 or 128 members (uniform choice), planted-style geometry."""
    rng = np.random.default_rng(20_000 + seed)
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.choice([4, 16, 32, 64, 128])))
    groups = _sizes_to_groups(sizes, n)
    centres = unit(rng.standard_normal((len(sizes), DIM)))
    member = 0.8 * rng.standard_normal((n, DIM)) / np.sqrt(DIM)
    return _views(centres[groups] + member, groups, rng, noise=0.4)


_DIGITS = None


def data_digits(n: int, seed: int):
    """sklearn digits, groups = labels; two augmented views (1-pixel shift + pixel noise)."""
    global _DIGITS
    if _DIGITS is None:
        from sklearn.datasets import load_digits

        _DIGITS = load_digits(return_X_y=True)
    images, labels = _DIGITS
    rng = np.random.default_rng(30_000 + seed)
    take = np.sort(rng.permutation(len(labels))[: min(n, len(labels))])
    images = images[take].reshape(-1, 8, 8)
    mean = images.mean(axis=0)

    def view():
        out = np.empty_like(images)
        for i, im in enumerate(images):
            dy, dx = rng.integers(-1, 2, size=2)
            out[i] = np.roll(np.roll(im, dy, axis=0), dx, axis=1)
        out = out + rng.normal(0.0, 1.5, size=out.shape)
        return (out - mean).reshape(len(out), -1).astype(np.float32)

    return view(), view(), labels[take].astype(np.int64)


DATASETS = {
    "planted": data_planted,
    "planted-hard": data_planted_hard,
    "planted-harder": data_planted_harder,
    "blobs": data_blobs,
    "mixed": data_mixed,
    "digits": data_digits,
}


# --------------------------------------------------------------------------- candidate rules
def _q(c: float):
    return lambda n, b: {"quantile": 1.0 - c * b / n}


CANDIDATES = {
    "q=0.999 (today)": lambda n, b: {"quantile": 0.999},
    "q=0.995": lambda n, b: {"quantile": 0.995},
    "q=0.99": lambda n, b: {"quantile": 0.99},
    "q=0.98": lambda n, b: {"quantile": 0.98},
    "q=0.95": lambda n, b: {"quantile": 0.95},
    "top_k=4": lambda n, b: {"top_k": 4},
    "top_k=8 (=B//8)": lambda n, b: {"top_k": 8},
    "top_k=16 (=B//4)": lambda n, b: {"top_k": 16},
    "top_k=32 (=B//2)": lambda n, b: {"top_k": 32},
    "q=1-0.125B/N": _q(0.125),
    "q=1-0.25B/N": _q(0.25),
    "q=1-0.5B/N": _q(0.5),
    "q=1-B/N": _q(1.0),
}
#: Rules planned at N = 100k (chosen from the N <= 30k sweep; today's default for reference).
FINALISTS = {
    "planted": ("q=0.999 (today)", "top_k=8 (=B//8)", "q=1-0.25B/N"),
    "blobs": ("top_k=8 (=B//8)", "q=1-0.25B/N"),
}
#: Largest N per data set (digits has 1797 rows; planted-harder is a stress test).
MAX_N = {"digits": 1797, "planted-harder": 10_000}
#: Per-row top-k (for ``q=`` rules: mean neighbours per row) as a function of B, checked at
#: other batch sizes (planted, N = 10k).
B_RULES = {
    "top_k=4": lambda b: 4,
    "top_k=8": lambda b: 8,
    "top_k=16": lambda b: 16,
    "top_k=B//8": lambda b: max(4, b // 8),
    "top_k=B//4": lambda b: max(4, b // 4),
    "top_k=clip(B//8,8,16)": lambda b: min(16, max(8, b // 8)),
    "q=1-0.25B/N": lambda b: 0.25 * b,
    "q=1-16/N": lambda b: 16,
    "q=1-clip(B//4,8,16)/N": lambda b: min(16, max(8, b // 4)),
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_gcbs(x, y, groups, params: dict, n: int, batch_size: int, seed: int) -> dict | None:
    """Plan GCBS with ``params``; purity, isolation, edges kept, seconds (None if skipped)."""
    if "quantile" in params:
        q = params["quantile"]
        if not 0.0 < q < 1.0 or (1.0 - q) * (n - 1) > MAX_PER_ROW:
            return None
    backend = "exact" if n <= EXACT_UP_TO else "auto"
    tick = time.perf_counter()
    plan = hardbatch.plan(
        "gcbs", x, y, batch_size=batch_size, seed=seed, backend=backend, progress=False, **params
    )
    seconds = time.perf_counter() - tick
    batches = list(plan.iter_batches())
    return {
        "purity": pair_purity(batches, groups),
        "largest": largest_group_share(plan, groups),
        "isolated": plan.info["isolated"] / n,
        "in_batch": plan.info["in_batch_edge_fraction"],
        "degree": plan.info["mean_degree"],
        "seconds": seconds,
        "backend": plan.info["search"]["backend"],
    }


# --------------------------------------------------------------------------- part 1
def sweep(sizes, seeds, datasets, finalists_big: bool, table: dict, refs: dict) -> None:
    for name in datasets:
        make = DATASETS[name]
        cap = MAX_N.get(name, BIG)
        ns = [n for n in sizes if n <= cap]
        if name == "digits" and max(sizes) >= cap:
            ns.append(cap)
        if finalists_big and name in FINALISTS:
            ns.append(BIG)
        for n in ns:
            use_seeds = seeds if n <= TWO_SEEDS_UP_TO else seeds[:1]
            cands = FINALISTS[name] if n == BIG else tuple(CANDIDATES)
            for seed in use_seeds:
                x, y, g = make(n, seed)
                refs[(name, n)]["random"].append(random_purity(g, BATCH, seed))
                refs[(name, n)]["oracle"].append(oracle_purity(g, BATCH))
                for cand in cands:
                    res = run_gcbs(x, y, g, CANDIDATES[cand](n, BATCH), n, BATCH, seed)
                    if res is not None:
                        table[(name, n, cand)].append(res)
                        log(
                            f"{name:12s} N={n:6d} seed={seed} {cand:18s} purity {res['purity']:.3f}"
                            f" isolated {res['isolated']:.3f} {res['seconds']:.2f}s"
                        )


def batch_size_sweep(n: int, seeds) -> dict:
    """Purity / oracle at B in {32, 64, 128, 256} on planted groups of 32 (N = n)."""
    out = defaultdict(list)
    for seed in seeds:
        x, y, g = data_planted(n, seed)
        for b in (32, 64, 128, 256):
            oracle = oracle_purity(g, b)
            for label, rule in B_RULES.items():
                if label.startswith("q="):
                    params = {"quantile": 1.0 - rule(b) / n}
                else:
                    params = {"top_k": rule(b)}
                res = run_gcbs(x, y, g, params, n, b, seed)
                out[(label, b)].append(res["purity"] / oracle)
                log(f"B-sweep B={b:3d} {label:12s} purity/oracle {out[(label, b)][-1]:.3f}")
    return out


# --------------------------------------------------------------------------- part 2: B3
def b3_sweep(sizes, datasets, seed: int = 0) -> dict:
    out = {}
    for name in datasets:
        for n in sizes:
            n_eff = min(n, MAX_N.get(name, n))
            if (name, n_eff, 0, 20) in out:
                continue
            x, y, g = DATASETS[name](n_eff, seed)
            for p in (0, 3, 10, 30):
                for m in (20, 50, 100):
                    tick = time.perf_counter()
                    plan = hardbatch.plan(
                        "b3", x, y, batch_size=BATCH, cluster_size=GROUP, p=p, m=m, seed=seed,
                        progress=False,
                    )  # fmt: skip
                    seconds = time.perf_counter() - tick
                    clusters = [row[row >= 0] for row in plan.clusters]
                    out[(name, n_eff, p, m)] = {
                        "purity": pair_purity(list(plan.iter_batches()), g),
                        "cluster": pair_purity(clusters, g),
                        "seconds": seconds,
                    }
                    log(
                        f"b3 {name:12s} N={n_eff:6d} p={p:2d} m={m:3d} purity "
                        f"{out[(name, n_eff, p, m)]['purity']:.3f} cluster "
                        f"{out[(name, n_eff, p, m)]['cluster']:.3f} {seconds:.2f}s"
                    )
    return out


# --------------------------------------------------------------------------- report
def mean(rows, key):
    return float(np.mean([r[key] for r in rows]))


def render(table, refs, bsweep, b3, threads: int, elapsed: float) -> str:
    lines = [
        "# GCBS / B3 default selection rules (issue 11, item 1)",
        "",
        f"Machine: {machine_description(threads)}. Produced by `benchmarks/gcbs_defaults.py` "
        f"in {elapsed / 60:.1f} min. Batch {BATCH}; planted groups of {GROUP}, d = {DIM}. "
        f"Seeds {', '.join(map(str, SEEDS))} up to N = {TWO_SEEDS_UP_TO}, seed 0 above "
        f"(means shown). Backend exact up to N = {EXACT_UP_TO}, `auto` above (exact at "
        "N = 100k, d = 64 on CPU).",
        "",
        "**purity** = share of in-batch pairs (i < j) from the same group over all batches "
        "(max 0.492 for whole groups of 32 in batches of 64). `oracle` = rows sorted by group "
        "and cut; `random` = a random plan. `—` = skipped (a quantile keeping > "
        f"{MAX_PER_ROW} neighbours per row, or not run at that N).",
        "",
    ]
    datasets = sorted({k[0] for k in table}, key=list(DATASETS).index)
    for name in datasets:
        ns = sorted({k[1] for k in table if k[0] == name})
        head = "| rule | " + " | ".join(f"N={n}" for n in ns) + " |"
        sep = "|---|" + "---:|" * len(ns)
        for what, key, fmt in (
            ("purity", "purity", "{:.3f}"),
            ("isolated share", "isolated", "{:.3f}"),
            ("planning seconds", "seconds", "{:.2f}"),
        ):
            lines += [f"## {name}: {what}", "", head, sep]
            if key == "purity":
                for ref in ("random", "oracle"):
                    cells = [f"{np.mean(refs[(name, n)][ref]):.3f}" for n in ns]
                    lines.append(f"| *{ref}* | " + " | ".join(cells) + " |")
            for cand in CANDIDATES:
                cells = []
                for n in ns:
                    rows = table.get((name, n, cand))
                    cells.append(fmt.format(mean(rows, key)) if rows else "—")
                if any(c != "—" for c in cells):
                    lines.append(f"| {cand} | " + " | ".join(cells) + " |")
            lines.append("")
        if name == "planted":
            lines += [
                "### planted: the demo's statistic (`hardbatch.cli.batch_purity`: mean share "
                "of a batch taken by its largest group, max 0.5)",
                "",
                head,
                sep,
            ]
            for cand in CANDIDATES:
                cells = []
                for n in ns:
                    rows = table.get((name, n, cand))
                    cells.append(f"{mean(rows, 'largest'):.3f}" if rows else "—")
                if any(c != "—" for c in cells):
                    lines.append(f"| {cand} | " + " | ".join(cells) + " |")
            lines.append("")
    # Worst case over N and data sets: the number a default must win on.
    lines += [
        "## Summary: worst purity / oracle ratio over N (per data set)",
        "",
        "| rule | " + " | ".join(datasets) + " |",
        "|---|" + "---:|" * len(datasets),
    ]
    for cand in CANDIDATES:
        cells = []
        for name in datasets:
            ratios = [
                mean(rows, "purity") / np.mean(refs[(name, n)]["oracle"])
                for (d, n, c), rows in table.items()
                if d == name and c == cand
            ]
            cells.append(f"{min(ratios):.2f}" if ratios else "—")
        lines.append(f"| {cand} | " + " | ".join(cells) + " |")
    lines.append("")
    if bsweep:
        bs = sorted({k[1] for k in bsweep})
        lines += [
            "## Batch-size sweep: purity / oracle on planted groups of 32, N = 10000",
            "",
            "| rule | " + " | ".join(f"B={b}" for b in bs) + " |",
            "|---|" + "---:|" * len(bs),
        ]
        for label in B_RULES:
            cells = [f"{np.mean(bsweep[(label, b)]):.3f}" for b in bs]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    if b3:
        lines += [
            f"## B3: batch purity / cluster purity (K = {GROUP}, B = {BATCH}, seed 0)",
            "",
            "Cluster purity: in-cluster pairs from the same group (max 1.0 for groups of 32).",
            "",
        ]
        keys = sorted({(k[0], k[1]) for k in b3}, key=lambda t: (list(DATASETS).index(t[0]), t[1]))
        lines += [
            "| p | m | " + " | ".join(f"{d} N={n}" for d, n in keys) + " |",
            "|---:|---:|" + "---:|" * len(keys),
        ]
        for p in (0, 3, 10, 30):
            for m in (20, 50, 100):
                cells = [
                    f"{b3[(d, n, p, m)]['purity']:.3f} / {b3[(d, n, p, m)]['cluster']:.3f}"
                    for d, n in keys
                ]
                lines.append(f"| {p} | {m} | " + " | ".join(cells) + " |")
        lines.append("")
        secs = {n: [v["seconds"] for (d, nn, _, _), v in b3.items() if nn == n] for _, n in keys}
        lines.append(
            "B3 planning seconds (mean over p, m): "
            + ", ".join(f"N={n}: {np.mean(v):.2f}" for n, v in sorted(secs.items()))
        )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N <= 2000, no 100k, short B3")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    parser.add_argument("--no-b3", action="store_true")
    parser.add_argument(
        "--only-bsweep", action="store_true", help="print the batch-size sweep table only"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    table, refs = defaultdict(list), defaultdict(lambda: defaultdict(list))
    if args.only_bsweep:
        bsweep = batch_size_sweep(10000, SEEDS[:1])
        text = render(table, refs, bsweep, {}, args.threads, time.perf_counter() - start)
        print(text[text.index("## Batch-size sweep") :])
        return
    sizes = (500, 1000, 2000) if args.quick else SIZES
    sweep(sizes, SEEDS, list(DATASETS), finalists_big=not args.quick, table=table, refs=refs)
    bsweep = batch_size_sweep(2000 if args.quick else 10000, SEEDS[:1])
    b3 = {}
    if not args.no_b3:
        b3 = b3_sweep(
            (1000,) if args.quick else (1000, 10000),
            ("planted", "blobs") if args.quick else ("planted", "planted-hard", "blobs", "digits"),
        )
    text = render(table, refs, bsweep, b3, args.threads, time.perf_counter() - start)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
