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
    """``--progress/--no-progress`` (default: the library decides)."""
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars on stderr (default: only for work that takes seconds)",
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
