"""What every ``hardbatch`` command shares: the program name, the input error, the help
layout and the options that several commands take."""

from __future__ import annotations

import argparse
from typing import Any

from .. import validation

PROG = "hardbatch"


class CliError(ValueError):
    """Bad command-line input; printed as one line, exit status 2."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' line breaks; wider option column."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34)


def add_debug_option(parser: argparse.ArgumentParser, *, default: Any) -> None:
    """``--debug``: on the main parser (``default=False``) and on every command
    (``default=argparse.SUPPRESS``, so that ``hardbatch --debug plan`` is not reset)."""
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="show the full traceback of errors instead of one line",
    )


def add_device_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup, what: str) -> None:
    """``--device``, for the torch work named by ``what``."""
    parser.add_argument(
        "--device",
        metavar="DEVICE",
        help=f"torch device for {what}: cpu, cuda, cuda:1, ... (default: cuda if available)",
    )


def add_progress_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--progress/--no-progress``, on by default.

    The library's own default (``progress=None``) shows bars only above N²·d = 2e11
    multiply-adds (:data:`hardbatch.similarity._common.PROGRESS_WORK`, about two seconds on a
    CPU); a person at a terminal waiting on a command wants to see every stage move, so the
    commands pass ``progress=True`` unless told ``--no-progress``.
    """
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="progress bars on stderr (default: on; --no-progress turns them off)",
    )


def check_device(device: str | None) -> str | None:
    """The ``--device`` value, checked before any work; ``None`` for the default device.

    Raises
    ------
    CliError
        Not a torch device, or a CUDA device on a machine without CUDA.
    """
    if device is None or device == "auto":
        return None
    try:
        return validation.check_device(device, "--device")
    except ValueError as exc:
        raise CliError(str(exc)) from None
