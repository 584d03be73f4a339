"""The ``hardbatch`` command: ``embed``, ``plan``, ``export``, ``report`` and ``demo``.

* ``hardbatch embed`` (:mod:`.embed`) encodes a file of text pairs into ``queries.npy`` /
  ``targets.npy`` with a sentence-transformers model (resumable cache, :mod:`hardbatch.io`).
* ``hardbatch plan`` (:mod:`.plan`) plans one epoch of batches from two ``.npy`` embedding
  files and writes a plan file (``.npz``). Every parameter of every registered method is an
  option, generated from the method registry (:mod:`.options`): a method class lists its
  parameters in ``__init__`` (type hints give the option type), explains them in
  ``param_help`` and may add short flags in ``cli_aliases`` (e.g. ``{"p": ["-p"]}``). An
  option the chosen method does not take is an error.
  ``plan --data FILE --model MODEL`` embeds text pairs (or reuses their cache) and plans in
  one call; the options that read text pairs live in :mod:`.data`.
* ``hardbatch export`` (:mod:`.export`) writes the training file: the pairs in plan order,
  epoch after epoch, with ``epoch`` and ``batch`` columns.
* ``hardbatch report`` (:mod:`.report`) prints the diagnostics of a plan next to a random plan
  (:func:`hardbatch.metrics.report`) and draws the similarity matrix in both orders.
* ``hardbatch demo`` (:mod:`.demo`) does all of it on synthetic data with planted
  hard-negative groups.

Input files are read by :mod:`.files`. Errors caused by the input (bad arrays, missing files,
a plan for another N, an option the method does not take) print one line
``hardbatch: error: ...`` and exit with status 2; ``--debug`` shows the traceback instead.
No module of the library imports this package.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from ..plots import MissingDependencyError
from . import demo, embed, export, plan, report
from .common import PROG, CliError, HelpFormatter, add_debug_option
from .files import load_array, load_pair
from .options import GENERAL_PARAMS, MethodOption, method_options
from .plan import plan_summary

__all__ = [
    "GENERAL_PARAMS",
    "CliError",
    "MethodOption",
    "build_parser",
    "load_array",
    "load_pair",
    "main",
    "method_options",
    "plan_summary",
]


def build_parser() -> argparse.ArgumentParser:
    """The ``hardbatch`` argument parser (method options generated from the registry)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=HelpFormatter,
        allow_abbrev=False,
        description=(
            "Mini-batches full of hard negatives for contrastive training.\n\n"
            "Plan the batches of an epoch from paired embeddings (row i of the queries is the\n"
            "positive of row i of the targets) or from a file of text pairs, write the training\n"
            "file in plan order for any trainer, see what a plan does to the loss, or run the\n"
            "bundled demo."
        ),
        epilog=(
            "examples:\n"
            "  hardbatch demo\n"
            "  hardbatch plan --data pairs.jsonl --model ./my-model -o plan.npz\n"
            "  hardbatch export plan.npz --data pairs.jsonl --epochs 3 -o train.jsonl\n"
            "  hardbatch plan --method gcbs --queries X.npy --targets Y.npy --batch-size 64 \\\n"
            "      --seed 0 --quantile 0.999 -o plan.npz\n"
            "  hardbatch report plan.npz --queries X.npy --targets Y.npy --plot similarity.png\n\n"
            "'hardbatch COMMAND --help' explains the options of a command."
        ),
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    add_debug_option(parser, default=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in (embed, plan, export, report, demo):
        command.add_parser(commands)
    return parser


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hardbatch`` command; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 2 for bad input (argparse errors, invalid arrays or files), 130 when
        interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse has printed it
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, MissingDependencyError) as exc:
        if args.debug:
            raise
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
