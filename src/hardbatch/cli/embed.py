"""``hardbatch embed``: encode a file of text pairs into ``queries.npy`` / ``targets.npy``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import (
    CliError,
    HelpFormatter,
    add_debug_option,
    add_device_option,
    add_progress_option,
    check_device,
)
from .data import add_data_options, add_model_options, embed_data, read_data, warnings_as_lines
from .files import check_writable


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``embed`` to the ``hardbatch`` subcommands."""
    parser = commands.add_parser(
        "embed",
        formatter_class=HelpFormatter,
        allow_abbrev=False,
        help="encode a file of text pairs into queries.npy / targets.npy (float16)",
        description=(
            "Encode both columns of a file of text pairs with a sentence-transformers model\n"
            "and write DIR/queries.npy and DIR/targets.npy (float16, row i of one is the\n"
            "positive of row i of the other), ready for 'hardbatch plan --queries --targets'.\n\n"
            "Every chunk of texts is cached in DIR/.cache the moment it is encoded: an\n"
            "interrupted run continues where it stopped, and a changed file, model or option\n"
            "re-encodes (with a warning saying which). A finished DIR is reused as it is."
        ),
        epilog=(
            "example:\n"
            "  hardbatch embed --data pairs.jsonl --model ./my-model -o emb/\n"
            "  hardbatch plan --queries emb/queries.npy --targets emb/targets.npy -o plan.npz"
        ),
    )
    data = parser.add_argument_group("input")
    add_data_options(data, required=True)
    model = parser.add_argument_group("model")
    add_model_options(model, batch_flag="--batch-size", required=True)
    add_device_option(model, "the model")
    add_progress_option(model)
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder for queries.npy, targets.npy and the .cache subfolder (created)",
    )
    parser.set_defaults(func=run)
    add_debug_option(parser, default=argparse.SUPPRESS)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``hardbatch embed`` on parsed arguments; returns the exit status."""
    args.device = check_device(args.device)
    # The output is a folder (made if missing): only its parent must exist.
    if not args.output.is_dir():
        check_writable(args.output, "the embeddings folder")
    if args.output.exists() and not args.output.is_dir():
        raise CliError(f"-o {args.output} is a file; give a folder for the embeddings")
    start = time.perf_counter()
    with warnings_as_lines():
        pairs = read_data(args)
        queries, targets = embed_data(args, pairs, args.output)
    seconds = time.perf_counter() - start
    print(f"embedded  {len(pairs)} pairs, dimension {queries.shape[1]}, in {seconds:.2f} s")
    print(f"wrote     {args.output / 'queries.npy'}")
    print(f"wrote     {args.output / 'targets.npy'}")
    del queries, targets  # memory maps of the outputs
    return 0
