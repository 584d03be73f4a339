"""Input and output files of the ``hardbatch`` commands: ``.npy`` embeddings (memory-mapped),
per-sample id files, output paths checked before the work, JSON reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .._json import to_jsonable
from .common import CliError


def existing(path: Path, what: str) -> Path:
    """``path``, if it is an existing file; else :class:`CliError` naming ``what``."""
    if not path.exists():
        raise CliError(f"{what} file not found: {path}")
    if path.is_dir():
        raise CliError(f"{what} must be a file, got the folder {path}")
    return path


def check_writable(path: Path | None, what: str) -> None:
    """Fail before the work, not after it, when an output folder is missing or the output
    path is a folder."""
    if path is None:
        return
    if path.is_dir():
        raise CliError(f"cannot write {what} {path}: it is a folder; give a file name")
    if not path.resolve().parent.is_dir():
        raise CliError(f"cannot write {what} {path}: folder {path.parent} does not exist")


def load_array(path: Path, what: str) -> np.ndarray:
    """A ``.npy`` file, memory-mapped (read-only) so that big files are not loaded whole."""
    existing(path, what)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # format, pickle and OS errors all mean "not a .npy array"
        raise CliError(f"cannot read {what} file {path} as a .npy array: {exc}") from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        array.close()
        raise CliError(f"{what} file {path} is an .npz archive; give a .npy array file")
    return array


def load_pair(queries: Path, targets: Path) -> tuple[np.ndarray, np.ndarray]:
    """Query and target embeddings (memory-mapped), with the cheap shape checks done.

    The values (NaN, zero rows) are checked by the library when it reads them.
    """
    x = load_array(queries, "queries")
    y = load_array(targets, "targets")
    for array, what in ((x, "queries"), (y, "targets")):
        if array.ndim != 2:
            raise CliError(f"{what} must be 2-D with shape (N, d), got shape {array.shape}")
    if x.shape[0] != y.shape[0]:
        raise CliError(
            f"queries and targets must have the same number of rows N (row i of queries is the "
            f"positive of row i of targets), got {x.shape[0]} ({queries}) and {y.shape[0]} "
            f"({targets})"
        )
    return x, y


def load_ids(path: Path, flag: str, n: int | None) -> np.ndarray:
    """Per-sample ids from a ``.npy`` file or a text file with one id per line.

    Parameters
    ----------
    path : Path
        The file.
    flag : str
        The option that named it (``--duplicate-ids``), for messages.
    n : int, optional
        N, when known: the file must hold one id per sample.
    """
    existing(path, flag)
    if path.suffix == ".npy":
        ids = load_array(path, flag)
    else:
        ids = np.array(path.read_text().splitlines())
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise CliError(f"{flag} file {path} must hold a 1-D array, got shape {ids.shape}")
    if n is not None and len(ids) != n:
        raise CliError(f"{flag} file {path} has {len(ids)} entries, expected one per sample ({n})")
    return ids


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON (numpy values as plain numbers and lists)."""
    path.write_text(json.dumps(data, indent=2, default=to_jsonable) + "\n")
