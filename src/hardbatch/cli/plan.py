"""``hardbatch plan``: plan one epoch of batches from two ``.npy`` files, write a plan file."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..api import plan
from ..methods import available_methods, get_method
from ..plans import BatchPlan
from .common import (
    CliError,
    HelpFormatter,
    add_debug_option,
    add_device_option,
    add_progress_option,
    check_device,
)
from .data import (
    add_data_options,
    add_model_options,
    column_or_file,
    embed_data,
    read_data,
    warnings_as_lines,
)
from .files import check_writable, load_ids, load_pair
from .options import add_method_options, method_arguments, value_parser


def _method_lines(methods: list[str]) -> str:
    """One line per method: its name and the first line of its class docstring."""
    width = max(map(len, methods), default=0)
    lines = []
    for method in methods:
        doc = (get_method(method).__doc__ or "").strip().splitlines()
        lines.append(f"  {method:<{width}}  {doc[0] if doc else ''}".rstrip())
    return "\n".join(lines)


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``plan`` to the ``hardbatch`` subcommands, its method options generated from the
    registry (:func:`~hardbatch.cli.options.add_method_options`)."""
    methods = available_methods()
    parser = commands.add_parser(
        "plan",
        formatter_class=HelpFormatter,
        allow_abbrev=False,
        help="plan one epoch of batches and write a plan file (.npz)",
        description=(
            "Plan one epoch of batches from paired embeddings and write a plan file (.npz).\n\n"
            "The embeddings are .npy files of shape (N, d) (float16/32/64), memory-mapped, so\n"
            "files larger than memory work. Load the plan in Python with\n"
            "hardbatch.BatchPlan.load(path, n_samples=N); 'hardbatch report' shows what it does.\n"
            "\nOr start from text pairs: --data FILE --model MODEL embeds them (cached next to\n"
            "the plan, see --cache-dir; as 'hardbatch embed' does) and plans in one call; then\n"
            "--groups and --duplicate-ids name columns of the file, and 'hardbatch export'\n"
            "writes the training file in plan order.\n"
            "\nmethods:\n" + _method_lines(methods)
        ),
        epilog=(
            "examples:\n"
            "  hardbatch plan --queries X.npy --targets Y.npy --quantile 0.999 -o plan.npz\n"
            "  hardbatch plan --method gcbs --top-k 20 --queries X.npy --targets Y.npy -o p.npz\n"
            "  hardbatch plan --method random --n-samples 100000 --batch-size 256 -o rand.npz\n"
            "  hardbatch plan --data pairs.jsonl --model ./my-model -o plan.npz\n"
            "  hardbatch plan --method b3 --data pairs.jsonl --model ./my-model \\\n"
            "      --groups module -o plan.npz"
        ),
    )
    inputs = parser.add_argument_group("inputs and output")
    inputs.add_argument(
        "--method",
        default="gcbs",
        choices=methods,
        help="batching method (default: gcbs)",
    )
    inputs.add_argument(
        "--queries", type=Path, metavar="X.npy", help="query embeddings, .npy of shape (N, d)"
    )
    inputs.add_argument(
        "--targets",
        type=Path,
        metavar="Y.npy",
        help="target embeddings, .npy of shape (N, d); row i is the positive of query i",
    )
    inputs.add_argument(
        "--n-samples",
        type=int,
        metavar="N",
        help="N, for methods that need no embeddings (random) when no files are given",
    )
    text = parser.add_argument_group(
        "from text pairs (instead of --queries/--targets)",
        "Read with the same --columns/--dedupe, 'hardbatch export' writes the training file.",
    )
    add_data_options(text, required=False)
    add_model_options(text, batch_flag="--embed-batch-size", required=False)
    text.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="where the embeddings are written and cached (default: next to the plan file, "
        "PLAN.embeddings/ for -o PLAN.npz)",
    )
    inputs.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="PLAN.npz",
        help="where to write the plan file",
    )
    common = parser.add_argument_group("batching (every method)")
    common.add_argument(
        "--batch-size", type=int, default=64, metavar="B", help="samples per batch (default: 64)"
    )
    common.add_argument(
        "--seed",
        type=value_parser(int, True),
        default=0,
        metavar="SEED",
        help="seed of every random choice; 'none' draws one and records it (default: 0)",
    )
    common.add_argument(
        "--drop-last",
        action="store_true",
        help="drop the N %% batch-size leftover samples instead of a short, padded last batch",
    )
    common.add_argument(
        "--duplicate-ids",
        type=Path,
        metavar="FILE|COLUMN",
        help="per-sample ids (.npy, or text with one per line; with --data also a column of "
        "the file): samples with equal ids never share a batch (false-negative guard)",
    )
    add_device_option(common, "the similarity matmuls")
    add_progress_option(common)
    scale = parser.add_argument_group("beyond one machine (hardbatch[ray])")
    scale.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="plan coarse shards as Ray tasks: 'auto' (on a cluster node), 'ray://HOST:10001', "
        "or 'local' (start a local Ray); see hardbatch.distributed.plan_on_ray",
    )
    scale.add_argument(
        "--shard-size",
        type=int,
        default=1_000_000,
        metavar="S",
        help="with --ray-address: most samples per shard (default: 1000000)",
    )
    parser.set_defaults(func=run, method_options=add_method_options(parser))
    add_debug_option(parser, default=argparse.SUPPRESS)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``hardbatch plan`` on parsed arguments; returns the exit status."""
    cls = get_method(args.method)
    args.device = check_device(args.device)
    check_writable(args.output, "the plan file")
    with warnings_as_lines():
        if args.data is not None:
            queries, targets, n, params, fit_data, duplicate_ids = _from_data(args, cls)
        else:
            queries, targets, n, params, fit_data, duplicate_ids = _from_arrays(args, cls)

    start = time.perf_counter()
    if args.ray_address:
        if duplicate_ids is not None or fit_data:
            raise CliError("--ray-address does not support --duplicate-ids or per-sample arrays")
        # Imported here: it is the one command path that needs Ray's planner.
        from ..distributed import plan_on_ray

        batch_plan = plan_on_ray(
            cls.name,
            queries=queries,
            targets=targets,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            address=None if args.ray_address == "local" else args.ray_address,
            seed=args.seed,
            drop_last=args.drop_last,
            **params,
        )
    else:
        batch_plan = plan(
            cls.name,
            queries,
            targets,
            batch_size=args.batch_size,
            seed=args.seed,
            drop_last=args.drop_last,
            n_samples=args.n_samples if args.data is None else n,
            duplicate_ids=duplicate_ids,
            **params,
            **fit_data,
        )
    seconds = time.perf_counter() - start
    batch_plan.save(args.output)
    print(plan_summary(batch_plan, seconds))
    print(f"wrote     {args.output}")
    return 0


#: Options of the text-pair path, checked to be absent without ``--data``: (dest, default, flag).
_DATA_ONLY = (
    ("model", None, "--model"),
    ("cache_dir", None, "--cache-dir"),
    ("columns", None, "--columns"),
    ("data_format", None, "--format"),
    ("split", None, "--split"),
    ("dedupe", False, "--dedupe"),
    ("max_length", None, "--max-length"),
    ("normalize", True, "--no-normalize"),
)


def _from_arrays(args: argparse.Namespace, cls: type) -> tuple:
    """Embeddings from ``--queries/--targets`` (or none: ``--n-samples``), ids from files."""
    given = [flag for dest, default, flag in _DATA_ONLY if getattr(args, dest) != default]
    if given:
        raise CliError(f"{given[0]} goes with --data (text pairs); it has no meaning without it")
    queries = targets = None
    if args.queries is not None or args.targets is not None or cls.uses_embeddings:
        if args.queries is None or args.targets is None:
            raise CliError(
                f"method {cls.name!r} needs both --queries and --targets (or text pairs: "
                "--data FILE --model MODEL)"
            )
        queries, targets = load_pair(args.queries, args.targets)
    n = int(queries.shape[0]) if queries is not None else args.n_samples
    params, fit_data = method_arguments(args, cls, args.method_options, n)
    duplicate_ids = (
        load_ids(args.duplicate_ids, "--duplicate-ids", n) if args.duplicate_ids else None
    )
    return queries, targets, n, params, fit_data, duplicate_ids


def default_cache_dir(output: Path) -> Path:
    """Where ``plan --data`` keeps its embeddings by default: ``plan.npz`` -> ``plan.embeddings``
    (next to the plan, so a rerun with another method or batch size reuses them)."""
    return output.with_suffix(".embeddings")


def _from_data(args: argparse.Namespace, cls: type) -> tuple:
    """Text pairs from ``--data``, embedded with ``--model`` (cached); per-sample arrays from
    the file's columns. Every option is checked before the embedding starts."""
    if args.queries is not None or args.targets is not None:
        raise CliError(
            "--data and --queries/--targets are mutually exclusive: give text pairs (--data, "
            "embedded with --model) or their embeddings (--queries/--targets), not both"
        )
    if cls.uses_embeddings and args.model is None:
        raise CliError(
            f"method {cls.name!r} plans from embeddings: --data needs --model to encode the pairs"
        )
    pairs = read_data(args)
    n = len(pairs)
    if args.n_samples is not None and args.n_samples != n:
        raise CliError(f"--n-samples {args.n_samples} but {args.data} holds {n} pairs")
    params, fit_data = method_arguments(
        args,
        cls,
        args.method_options,
        n,
        load_fit=lambda option, value: column_or_file(pairs, value, option.flag),
    )
    duplicate_ids = (
        column_or_file(pairs, args.duplicate_ids, "--duplicate-ids") if args.duplicate_ids else None
    )
    queries = targets = None
    if cls.uses_embeddings:
        cache = args.cache_dir or default_cache_dir(args.output)
        print(f"embeddings {cache} (reused while the file, model and options stay the same)")
        queries, targets = embed_data(args, pairs, cache)
    return queries, targets, n, params, fit_data, duplicate_ids


# --------------------------------------------------------------------------- summary
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _flat(info: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """The scalar entries of a nested dict, keys joined with dots."""
    items = []
    for key, value in info.items():
        if isinstance(value, dict):
            items += _flat(value, f"{prefix}{key}.")
        elif value is None or isinstance(value, (bool, int, float, str, np.generic)):
            items.append((prefix + key, value))
    return items


def plan_summary(batch_plan: BatchPlan, seconds: float) -> str:
    """A few lines on a plan: method and parameters, batches, time, key figures of ``info``."""
    sizes = [len(ids) for ids in batch_plan.iter_batches()]
    n_covered = sum(sizes)
    batches = f"{batch_plan.n_batches} batches of {batch_plan.batch_size}"
    if sizes and sizes[-1] != batch_plan.batch_size:
        batches += f" (last batch: {sizes[-1]} samples, padded with -1)"
    if n_covered != batch_plan.n_samples:
        batches += f", {batch_plan.n_samples - n_covered} leftover samples dropped"
    params = ", ".join(f"{k}={_fmt(v)}" for k, v in batch_plan.params.items() if v is not None)
    info = dict(batch_plan.info)
    stage_seconds = info.pop("seconds", {}) or {}
    stages = ", ".join(f"{k} {v:.2f}" for k, v in stage_seconds.items() if k != "total")
    lines = [
        f"method    {batch_plan.method}" + (f" ({params})" if params else ""),
        f"samples   N={batch_plan.n_samples}, seed={batch_plan.seed}",
        f"batches   {batches}",
        f"seconds   {seconds:.2f}" + (f" ({stages})" if stages else ""),
    ]
    figures = ", ".join(f"{k}={_fmt(v)}" for k, v in _flat(info))
    if figures:
        lines.append(f"info      {figures}")
    return "\n".join(lines)
