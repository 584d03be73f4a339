"""Text-pair files on the command line: the options that read them (``--data``, ``--columns``,
``--format``, ``--split``, ``--dedupe``), the options that encode them (``--model`` and the
encoder's settings), and per-sample columns for ``--groups`` / ``--duplicate-ids``.

Shared by ``hardbatch embed``, ``plan --data`` and ``export``: a plan and its export must read
the file the same way (same columns, same dedupe), so the three commands spell it the same.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..io import FORMATS, TextPairs, embed_pairs, read_pairs
from .common import PROG, CliError
from .files import load_ids


# --------------------------------------------------------------------------- reading
def add_data_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    required: bool,
    format_flags: tuple[str, ...] = ("--format", "--data-format"),
) -> None:
    """``--data`` and the options that say how to read it. ``export`` passes
    ``format_flags=("--data-format",)``: its ``--format`` is the output's."""
    parser.add_argument(
        "--data",
        type=Path,
        required=required,
        metavar="FILE",
        help="text pairs: .jsonl, .csv, .tsv, .parquet, or a folder saved by datasets' "
        "save_to_disk",
    )
    parser.add_argument(
        "--columns",
        type=_columns,
        metavar="QUERY,TARGET",
        help="the query and target columns (default: the first two text columns); other "
        "columns are carried along",
    )
    parser.add_argument(
        *format_flags,
        dest="data_format",
        choices=FORMATS,
        help="format of --data (default: from its suffix)",
    )
    parser.add_argument(
        "--split", metavar="NAME", help="split of a saved DatasetDict with several splits"
    )
    parser.add_argument(
        "--dedupe",
        action="store_true",
        help="keep the first row of each repeated (query, target) pair (a repeated pair is its "
        "own false negative); give it to plan and export alike",
    )


def _columns(text: str) -> tuple[str, str]:
    """argparse ``type=`` of ``--columns``: ``"q,t"`` -> ``("q", "t")``."""
    names = tuple(part.strip() for part in text.split(","))
    if len(names) != 2 or not all(names):
        raise argparse.ArgumentTypeError(f"expected two column names QUERY,TARGET, got {text!r}")
    return names  # type: ignore[return-value]


#: The package folder: warnings raised from inside it are hardbatch's own.
_PACKAGE = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Print hardbatch's own warnings (duplicate pairs, a re-encoded cache, a short batch
    inside the export) as one ``hardbatch: warning: ...`` line each, not Python's two-line
    form; other packages' warnings are shown as Python would show them."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            # Every time, not once per code location: each command run is news to its user.
            warnings.simplefilter("always", UserWarning)
            yield
    finally:
        # Shown after the recording ends (inside it, showwarning would record them again).
        for w in caught:
            if _PACKAGE in Path(w.filename).resolve().parents:
                text = " ".join(str(w.message).split())
                print(f"{PROG}: warning: {text}", file=sys.stderr)
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def read_data(args: argparse.Namespace) -> TextPairs:
    """The pairs named by ``--data`` and read as ``--columns/--format/--split/--dedupe`` say."""
    pairs = read_pairs(
        args.data, args.columns, format=args.data_format, dedupe=args.dedupe, split=args.split
    )
    dropped = f", {pairs.n_duplicates} duplicate pairs dropped" if args.dedupe else ""
    print(
        f"data      {args.data}: {len(pairs)} pairs ({pairs.query_column} -> "
        f"{pairs.target_column}){dropped}"
    )
    return pairs


def column_or_file(pairs: TextPairs, value: Path, flag: str) -> np.ndarray:
    """Per-sample values for ``flag``: a column of ``pairs`` (as integer codes), else a file of
    one id per row (``.npy`` or text)."""
    name = str(value)
    if name in pairs.columns:
        return pairs.codes(name)
    if value.is_file():
        return load_ids(value, flag, len(pairs))
    raise CliError(
        f"{flag} {name!r} is neither a column of {pairs.source} (columns: "
        f"{', '.join(pairs.columns)}) nor a file"
    )


# --------------------------------------------------------------------------- encoding
def add_model_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, batch_flag: str, required: bool
) -> None:
    """``--model`` and the encoder's settings; ``batch_flag`` names the texts-per-forward-pass
    option (``plan`` has its own ``--batch-size``)."""
    parser.add_argument(
        "--model",
        required=required,
        metavar="NAME_OR_PATH",
        help="sentence-transformers model: a saved model folder, or a model name already in "
        "the local Hugging Face cache (nothing is downloaded)",
    )
    parser.add_argument(
        batch_flag,
        dest="embed_batch_size",
        type=int,
        default=64,
        metavar="B",
        help="texts per forward pass (default: 64)",
    )
    parser.add_argument(
        "--no-normalize",
        dest="normalize",
        action="store_false",
        help="keep the model's raw embeddings (default: L2-normalised)",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        metavar="TOKENS",
        help="truncate texts to this many tokens (default: the model's own)",
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=4096,
        metavar="C",
        help="texts per cached chunk, what an interruption can lose (default: 4096)",
    )


def resolve_model(name_or_path: str) -> Path:
    """A local model folder: the path itself, or a model name found in the local Hugging Face
    cache (``all-MiniLM-L6-v2`` is looked up as ``sentence-transformers/all-MiniLM-L6-v2``
    too). Nothing is downloaded."""
    path = Path(name_or_path)
    if path.exists():
        return path
    names = [name_or_path]
    if "/" not in name_or_path:
        names.append(f"sentence-transformers/{name_or_path}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - installed with sentence-transformers
        snapshot_download = None
    if snapshot_download is not None:
        for name in names:
            try:
                return Path(snapshot_download(name, local_files_only=True))
            except Exception:  # not cached / not a valid repo id: try the next spelling
                continue
    raise CliError(
        f"model {name_or_path!r} is neither a folder nor a model in the local Hugging Face "
        "cache; save one with SentenceTransformer(NAME).save(PATH) and pass PATH"
    )


def embed_data(
    args: argparse.Namespace, pairs: TextPairs, out_dir: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Encode ``pairs`` into ``out_dir`` as ``--model`` and its settings say (cache resumed)."""
    for flag, value in (("batch size", args.embed_batch_size), ("--chunk-size", args.chunk_size)):
        if value < 1:
            raise CliError(f"{flag} must be >= 1, got {value}")
    if args.max_length is not None and args.max_length < 1:
        raise CliError(f"--max-length must be >= 1, got {args.max_length}")
    model = resolve_model(args.model)
    return embed_pairs(
        pairs,
        model,
        out_dir,
        batch_size=args.embed_batch_size,
        device=args.device,
        normalize=args.normalize,
        max_length=args.max_length,
        chunk_size=args.chunk_size,
        progress=args.progress,
    )
