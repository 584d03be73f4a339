"""``hardbatch export``: write the training file, the rows of the pairs in plan order."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..io import FORMATS, export_plan
from ..plans import BatchPlan
from .common import CliError, HelpFormatter, add_debug_option, add_progress_option
from .data import add_data_options, read_data, warnings_as_lines
from .files import check_writable, existing


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``export`` to the ``hardbatch`` subcommands."""
    parser = commands.add_parser(
        "export",
        formatter_class=HelpFormatter,
        allow_abbrev=False,
        help="write the training file: the pairs in plan order, with epoch and batch columns",
        description=(
            "Write the rows of a file of text pairs in the order of a plan, epoch after epoch,\n"
            "for trainers that hardbatch has no adapter for. Every row keeps its columns and\n"
            "gets 'epoch' and 'batch' (the batch's index within the epoch). Epoch e is\n"
            "plan.for_epoch(e): a GCBS plan repeats its batches, B3 regroups its clusters,\n"
            "random reshuffles. Read the file in order with the plan's batch size (shuffling\n"
            "off) and the trainer sees the plan's batches.\n\n"
            "Read --data as the plan was made (same --columns, same --dedupe). The rows are\n"
            "streamed to the file: the output is never built in memory."
        ),
        epilog=(
            "example:\n"
            "  hardbatch plan --data pairs.jsonl --model ./my-model -o plan.npz\n"
            "  hardbatch export plan.npz --data pairs.jsonl --epochs 3 -o train.jsonl"
        ),
    )
    parser.add_argument("plan", type=Path, metavar="PLAN.npz", help="the plan file")
    data = parser.add_argument_group("input")
    add_data_options(data, required=True, format_flags=("--data-format",))
    out = parser.add_argument_group("output")
    out.add_argument(
        "--epochs",
        type=int,
        required=True,
        metavar="E",
        help="epochs to write, one block of every row per epoch",
    )
    out.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="OUT",
        help="the training file (a folder for --format hf)",
    )
    out.add_argument(
        "--format",
        dest="out_format",
        choices=FORMATS,
        help="format of the training file (default: from OUT's suffix, else the input's)",
    )
    out.add_argument(
        "--index-column",
        metavar="NAME",
        help="also write each row's index in the (deduplicated) input under this name",
    )
    add_progress_option(out)
    parser.set_defaults(func=run)
    add_debug_option(parser, default=argparse.SUPPRESS)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``hardbatch export`` on parsed arguments; returns the exit status."""
    if args.epochs < 1:
        raise CliError(f"--epochs must be >= 1, got {args.epochs}")
    check_writable(args.output, "the training file")
    batch_plan = BatchPlan.load(existing(args.plan, "plan"))
    start = time.perf_counter()
    with warnings_as_lines():
        pairs = read_data(args)
        out = export_plan(
            batch_plan,
            pairs,
            args.output,
            epochs=args.epochs,
            format=args.out_format,
            index_column=args.index_column,
            progress=args.progress,
        )
    seconds = time.perf_counter() - start
    per_epoch = sum(len(ids) for ids in batch_plan.iter_batches())
    print(
        f"exported  {args.epochs} epoch(s) x {per_epoch} rows, {batch_plan.method} batches of "
        f"{batch_plan.batch_size}, in {seconds:.2f} s"
    )
    print(f"wrote     {out}")
    return 0
