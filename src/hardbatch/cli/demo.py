"""``hardbatch demo``: plan synthetic data with planted hard-negative groups, random against
GCBS, and show the diagnostics, how whole each plan keeps the groups, and the plot."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from .. import metrics, plots
from ..api import plan
from ..synthetic import make_planted_pairs
from .common import (
    CliError,
    HelpFormatter,
    add_debug_option,
    add_device_option,
    add_progress_option,
    check_device,
)
from .files import write_json


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``demo`` to the ``hardbatch`` subcommands."""
    parser = commands.add_parser(
        "demo",
        formatter_class=HelpFormatter,
        allow_abbrev=False,
        help="plan synthetic data with planted hard negatives (no download, seconds)",
        description=(
            "Generate paired embeddings with planted groups of mutual hard negatives\n"
            "(hardbatch.synthetic.make_planted_pairs), plan one epoch with random and with GCBS,\n"
            "print the diagnostics table, how well each plan keeps the planted groups together,\n"
            "and draw the similarity matrix in both orders (DIR/similarity.png)."
        ),
    )
    parser.add_argument(
        "--n-samples", type=int, default=4096, metavar="N", help="pairs (default: 4096)"
    )
    parser.add_argument(
        "--dim", type=int, default=64, metavar="D", help="embedding dimension (default: 64)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, metavar="B", help="samples per batch (default: 64)"
    )
    parser.add_argument(
        "--group-size",
        type=int,
        default=32,
        metavar="G",
        help="samples per planted group (default: 32)",
    )
    parser.add_argument(
        "--quantile",
        type=float,
        default=None,
        metavar="Q",
        help="GCBS similarity quantile (default: GCBS's own, 1 - 16/(N-1): ~16 pairs per row)",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.05,
        metavar="TAU",
        help="NT-Xent temperature of the report (default: 0.05)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of data and plans (default: 0)")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path("hardbatch-demo"),
        metavar="DIR",
        help="folder for the plot and saved files (default: ./hardbatch-demo)",
    )
    parser.add_argument(
        "--plot",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write DIR/similarity.png (default: when matplotlib is installed)",
    )
    parser.add_argument(
        "--save",
        action="store_true",
        help="also save queries.npy, targets.npy, groups.npy, both plans and report.json in DIR",
    )
    add_device_option(parser, "the similarity matmuls")
    add_progress_option(parser)
    parser.set_defaults(func=run)
    add_debug_option(parser, default=argparse.SUPPRESS)
    return parser


def _wants_plot(plot: bool | None) -> bool:
    """``--plot``, ``--no-plot`` or, by default, whether matplotlib is installed."""
    if plot is None:  # default: plot when matplotlib is there, say so when it is not
        try:
            plots.require_matplotlib()
        except ImportError:
            print("(no plot: matplotlib is not installed; pip install 'hardbatch[plot]')")
            return False
        return True
    if plot:
        plots.require_matplotlib()
    return plot


def run(args: argparse.Namespace) -> int:
    """Run ``hardbatch demo`` on parsed arguments; returns the exit status."""
    args.device = check_device(args.device)
    plot = _wants_plot(args.plot)
    out_dir = args.out_dir
    if (plot or args.save) and out_dir.exists() and not out_dir.is_dir():
        raise CliError(f"--out-dir {out_dir} exists and is not a folder")

    data = make_planted_pairs(args.n_samples, args.dim, group_size=args.group_size, seed=args.seed)
    n = args.n_samples
    n_groups = int(data.groups.max()) + 1
    print(
        f"planted data: N={n} pairs, dim {args.dim}, {n_groups} groups of {args.group_size} "
        f"mutual hard negatives (seed {args.seed})"
    )
    start = time.perf_counter()
    random_plan = plan("random", n_samples=n, batch_size=args.batch_size, seed=args.seed)
    gcbs_plan = plan(
        "gcbs",
        data.queries,
        data.targets,
        batch_size=args.batch_size,
        seed=args.seed,
        quantile=args.quantile,
        device=args.device,
        progress=args.progress,
    )
    seconds = time.perf_counter() - start
    print(
        f"planned {gcbs_plan.n_batches} batches of {args.batch_size} with gcbs "
        f"(quantile {gcbs_plan.info['quantile']:.4g}) and random in {seconds:.2f} s"
    )
    print()
    rows = metrics.report(
        data.queries,
        data.targets,
        gcbs_plan,
        baseline=random_plan,
        temperature=args.temperature,
        quantile=args.quantile,
        device=args.device,
        seed=args.seed,
    )
    print(metrics.format_report(rows))
    both = (gcbs_plan, random_plan)
    purity = {p.method: metrics.batch_purity(p, data.groups) for p in both}
    cohesion = {p.method: metrics.group_cohesion(p, data.groups) for p in both}
    best = min(args.group_size, args.batch_size) / args.batch_size
    print()
    print(
        "batch purity (share of a batch from its largest planted group): "
        + ", ".join(f"{k} {v:.3f}" for k, v in purity.items())
        + f"  (at most {best:.3f})"
    )
    print(
        "group cohesion (share of a planted group inside its most common batch): "
        + ", ".join(f"{k} {v:.3f}" for k, v in cohesion.items())
    )
    if plot or args.save:
        out_dir.mkdir(parents=True, exist_ok=True)
    if plot:
        path = plots.plot_similarity(
            out_dir / "similarity.png", data.queries, data.targets, gcbs_plan, random_plan
        )
        print(f"wrote {path}")
    if args.save:
        np.save(out_dir / "queries.npy", data.queries)
        np.save(out_dir / "targets.npy", data.targets)
        np.save(out_dir / "groups.npy", data.groups)
        gcbs_plan.save(out_dir / "plan-gcbs.npz")
        random_plan.save(out_dir / "plan-random.npz")
        write_json(
            out_dir / "report.json",
            {**rows, "batch_purity": purity, "group_cohesion": cohesion},
        )
        print(
            f"wrote queries.npy, targets.npy, groups.npy, plan-gcbs.npz, plan-random.npz, "
            f"report.json to {out_dir}"
        )
        print(
            f"next: hardbatch report {out_dir / 'plan-gcbs.npz'} "
            f"--queries {out_dir / 'queries.npy'} --targets {out_dir / 'targets.npy'}"
        )
    return 0
