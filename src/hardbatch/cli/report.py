"""``hardbatch report``: the diagnostics of a plan next to a random plan
(:func:`hardbatch.metrics.report`), and the similarity and loss plots."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import metrics, plots
from ..api import plan
from ..plans import BatchPlan
from .common import (
    CliError,
    HelpFormatter,
    add_debug_option,
    add_device_option,
    add_progress_option,
    check_device,
)
from .files import check_writable, existing, load_pair, write_json


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``report`` to the ``hardbatch`` subcommands."""
    parser = commands.add_parser(
        "report",
        formatter_class=HelpFormatter,
        allow_abbrev=False,
        help="diagnostics of a plan next to a random plan, and the similarity plot",
        description=(
            "Print what a plan does to the contrastive loss, next to a random plan with the\n"
            "same batch size and seed: L_global (NT-Xent over all N^2 pairs), the expected\n"
            "L_train under the plan (in-batch negatives only), their gap, in-batch negative\n"
            "similarity and how well the plan keeps the strongest pairs (a thresholded\n"
            "similarity graph) inside batches. Optionally draw the similarity matrix in plan\n"
            "order next to random order (the GCBS paper's Figure 1)."
        ),
        epilog=(
            "example:\n"
            "  hardbatch report plan.npz --queries X.npy --targets Y.npy --plot similarity.png"
        ),
    )
    parser.add_argument("plan", type=Path, metavar="PLAN.npz", help="plan file to evaluate")
    parser.add_argument(
        "--queries",
        type=Path,
        required=True,
        metavar="X.npy",
        help="query embeddings the plan was made for, .npy of shape (N, d)",
    )
    parser.add_argument(
        "--targets",
        type=Path,
        required=True,
        metavar="Y.npy",
        help="target embeddings, .npy of shape (N, d)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="PLAN.npz",
        help="compare against this plan file instead of a random plan",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.05,
        metavar="TAU",
        help="NT-Xent temperature (default: 0.05)",
    )
    parser.add_argument(
        "--quantile",
        type=float,
        metavar="Q",
        help="similarity quantile of the graph used for bandwidth and in-batch edge fraction "
        "(default: the plan's own quantile, else GCBS's default 1 - 16/(N-1))",
    )
    parser.add_argument(
        "--metric",
        choices=["cosine", "dot"],
        help="similarity (default: the plan's metric, else cosine)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the threshold sample, and of the random baseline when the plan has no "
        "seed (default: 0)",
    )
    add_device_option(parser, "the loss computations")
    add_progress_option(parser)
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="OUT.png",
        help="draw the similarity matrix in plan order next to baseline order (needs "
        "matplotlib: pip install 'hardbatch[plot]')",
    )
    parser.add_argument(
        "--max-samples",
        type=int,
        default=1024,
        metavar="M",
        help="the plot shows the first whole batches holding at most M samples (default: 1024)",
    )
    parser.add_argument(
        "--loss-plot",
        type=Path,
        metavar="OUT.png",
        help="draw histograms of the per-sample losses and gaps of both plans",
    )
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="also write the numbers")
    parser.set_defaults(func=run)
    add_debug_option(parser, default=argparse.SUPPRESS)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``hardbatch report`` on parsed arguments; returns the exit status."""
    args.device = check_device(args.device)
    for path, what in (
        (args.json, "the JSON report"),
        (args.plot, "the plot"),
        (args.loss_plot, "the loss plot"),
    ):
        check_writable(path, what)
    if args.max_samples < 1:
        raise CliError(f"--max-samples must be >= 1, got {args.max_samples}")
    if args.plot or args.loss_plot:
        plots.require_matplotlib()
    queries, targets = load_pair(args.queries, args.targets)
    n = int(queries.shape[0])
    batch_plan = BatchPlan.load(existing(args.plan, "plan"), n_samples=n)
    if args.baseline is not None:
        baseline = BatchPlan.load(existing(args.baseline, "baseline plan"), n_samples=n)
    else:
        baseline = plan(
            "random",
            n_samples=n,
            batch_size=batch_plan.batch_size,
            seed=batch_plan.seed if batch_plan.seed is not None else args.seed,
            drop_last=batch_plan.drop_last,
        )
    metric = args.metric or batch_plan.params.get("metric") or "cosine"
    rows = metrics.report(
        queries,
        targets,
        batch_plan,
        baseline=baseline,
        temperature=args.temperature,
        quantile=args.quantile,
        metric=metric,
        device=args.device,
        seed=args.seed,
        progress=args.progress,
    )
    print(
        f"plan {args.plan}: {batch_plan.method}, N={n}, {batch_plan.n_batches} batches of "
        f"{batch_plan.batch_size}"
    )
    print()
    print(metrics.format_report(rows))
    if args.json:
        write_json(args.json, {"plan_file": str(args.plan), **rows})
        print(f"wrote {args.json}")
    if args.plot:
        plots.plot_similarity(
            args.plot,
            queries,
            targets,
            batch_plan,
            baseline,
            max_samples=args.max_samples,
            metric=metric,
        )
        print(f"wrote {args.plot}")
    if args.loss_plot:
        same = batch_plan.method == baseline.method
        labels = (
            (f"plan ({batch_plan.method})", f"baseline ({baseline.method})")
            if same
            else (batch_plan.method, baseline.method)
        )
        plots.plot_losses(
            args.loss_plot,
            queries,
            targets,
            dict(zip(labels, (batch_plan, baseline), strict=True)),
            temperature=args.temperature,
            metric=metric,
            device=args.device,
        )
        print(f"wrote {args.loss_plot}")
    return 0
