"""The ``hardbatch`` command: ``plan``, ``report`` and ``demo``.

* ``hardbatch plan`` plans one epoch of batches from two ``.npy`` embedding files and writes a
  plan file (``.npz``). Every parameter of every registered method is an option, generated
  from the method registry: a method class lists its parameters in ``__init__`` (type hints
  give the option type), explains them in ``param_help`` and may add short flags in
  ``cli_aliases`` (e.g. ``{"p": ["-p"]}``). An option the chosen method does not take is an
  error.
* ``hardbatch report`` prints the diagnostics of a plan next to a random plan
  (:func:`hardbatch.metrics.report`) and draws the similarity matrix in both orders.
* ``hardbatch demo`` does all of it on synthetic data with planted hard-negative groups.

Errors caused by the input (bad arrays, missing files, a plan for another N, an option the
method does not take) print one line ``hardbatch: error: ...`` and exit with status 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .methods import available_methods, get_method
from .methods.base import COMMON_PARAMS, Planner
from .plans import BatchPlan

#: Method parameters that are general options of ``hardbatch plan`` (forwarded to the
#: methods that take them, ignored by the others) instead of per-method options.
GENERAL_PARAMS = ("device", "progress")

#: Prefix of the argparse destinations of method options (keeps them apart from the CLI's own).
_DEST = "method__"

_PROG = "hardbatch"


class CliError(ValueError):
    """Bad command-line input; printed as one line, exit status 2."""


# --------------------------------------------------------------------------- method options
@dataclass
class MethodOption:
    """One command-line option generated from the parameters of the registered methods.

    Attributes
    ----------
    name : str
        Parameter name (``cluster_size``); the option is ``--cluster-size``.
    flags : list of str
        Option strings: the long name first, then the methods' ``cli_aliases``.
    kind : type
        ``int``, ``float``, ``str`` or ``bool`` (a ``--x/--no-x`` switch).
    nullable : bool
        The parameter accepts ``None`` (given as ``none`` on the command line).
    choices : tuple, optional
        From a ``Literal[...]`` type hint.
    methods : list of str
        Methods that take the parameter.
    helps, defaults : dict
        Per method: its ``param_help`` line and its default value.
    fit_data : bool
        A per-sample array of the method's :meth:`~hardbatch.Planner.fit` (``fit_params``),
        read from a file, not a constructor parameter.
    """

    name: str
    flags: list[str]
    kind: type = str
    nullable: bool = False
    choices: tuple | None = None
    methods: list[str] = field(default_factory=list)
    helps: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    fit_data: bool = False

    @property
    def dest(self) -> str:
        return _DEST + self.name

    @property
    def flag(self) -> str:
        return self.flags[0]

    def help_text(self) -> str:
        """``[gcbs, b3] what it does (default: ...)``, one segment per distinct help/default."""
        segments: dict[tuple[str, str], list[str]] = {}
        for method in self.methods:
            text = self.helps.get(method) or (
                f"per-sample {self.name} passed to the method's fit: a .npy file or a text "
                "file with one entry per line (N entries)"
                if self.fit_data
                else f"the method's {self.name!r} parameter"
            )
            default = "" if self.fit_data else _show_default(self.defaults.get(method))
            if "default" in text.lower():  # the help line already says it
                default = ""
            segments.setdefault((text, default), []).append(method)
        parts = []
        for (text, default), methods in segments.items():
            part = f"[{', '.join(methods)}] {text}"
            if default:
                part += f" (default: {default})"
            parts.append(part)
        help_text = "; ".join(parts)
        switchable = any(value is not None for value in self.defaults.values())
        if self.nullable and switchable and self.kind is not bool and not self.fit_data:
            help_text += "; 'none' for None"
        return help_text.replace("%", "%%")  # argparse formats help strings


def _show_default(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _resolve_type(annotation: Any, default: Any) -> tuple[type, bool, tuple | None]:
    """``(kind, nullable, choices)`` of a parameter from its type hint and default."""
    nullable = default is None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        nullable = nullable or type(None) in args
        rest = [a for a in args if a is not type(None)]
        annotation = rest[0] if len(rest) == 1 else inspect.Parameter.empty
        origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        return type(choices[0]), nullable, tuple(choices)
    if annotation in (int, float, str, bool):
        return annotation, nullable, None
    if type(default) in (int, float, str, bool):
        return type(default), nullable, None
    return str, nullable, None


def method_options() -> dict[str, MethodOption]:
    """The method options of ``hardbatch plan``, from every registered method.

    Returns
    -------
    dict of name -> MethodOption
        Method parameters (minus :data:`~hardbatch.methods.base.COMMON_PARAMS` and
        :data:`GENERAL_PARAMS`) and fit-data arrays, in registry order. A parameter taken by
        several methods is one option; its type comes from the first method.
    """
    options: dict[str, MethodOption] = {}
    used_aliases: set[str] = set()
    for method in available_methods():
        cls = get_method(method)
        signature = inspect.signature(cls.__init__)
        try:
            hints = typing.get_type_hints(cls.__init__)
        except Exception:  # unresolvable hints: fall back to the defaults' types
            hints = {}
        aliases = cls.cli_aliases
        names = [p for p in cls.param_names() if p not in COMMON_PARAMS + GENERAL_PARAMS]
        for name in [*names, *cls.fit_params]:
            fit_data = name in cls.fit_params
            option = options.get(name)
            if option is None:
                option = MethodOption(name=name, flags=["--" + name.replace("_", "-")])
                if fit_data:
                    option.fit_data = True
                else:
                    param = signature.parameters[name]
                    default = None if param.default is inspect.Parameter.empty else param.default
                    option.kind, option.nullable, option.choices = _resolve_type(
                        hints.get(name, inspect.Parameter.empty), default
                    )
                options[name] = option
            option.methods.append(method)
            if name in cls.param_help:
                option.helps[method] = cls.param_help[name]
            if not fit_data:
                param = signature.parameters[name]
                option.defaults[method] = (
                    None if param.default is inspect.Parameter.empty else param.default
                )
            for alias in aliases.get(name, []):
                # First come, first served: two methods cannot claim the same short flag.
                if alias not in used_aliases and alias not in option.flags:
                    used_aliases.add(alias)
                    option.flags.append(alias)
    return options


def _value_parser(kind: type, nullable: bool) -> Callable[[str], Any]:
    """argparse ``type=`` for an option: text -> value (``none`` -> None if nullable)."""

    def parse(text: str) -> Any:
        if nullable and text.strip().lower() == "none":
            return None
        if kind is int:
            try:
                return int(text)
            except ValueError:
                value = float(text)  # accept 1e6; ValueError -> argparse's message
                if not value.is_integer():
                    raise
                return int(value)
        return kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return parse


def _add_method_options(parser: argparse.ArgumentParser) -> dict[str, MethodOption]:
    options = method_options()
    group = parser.add_argument_group(
        "method parameters",
        "Each option belongs to the methods named in [brackets]; an option the chosen\n"
        "method does not take is an error. Options left out keep the method's default.",
    )
    for option in options.values():
        kwargs: dict[str, Any] = {"dest": option.dest, "default": argparse.SUPPRESS}
        if option.fit_data:
            kwargs.update(metavar="FILE", type=Path)
        elif option.kind is bool:
            kwargs.update(action=argparse.BooleanOptionalAction)
        else:
            kwargs.update(
                type=_value_parser(option.kind, option.nullable),
                metavar="{" + ",".join(map(str, option.choices)) + "}"
                if option.choices
                else option.kind.__name__.upper().replace("STR", "TEXT"),
            )
            if option.choices:
                kwargs["choices"] = list(option.choices)
        # Short aliases first, as usual in --help; messages use the long name.
        flags = sorted(option.flags, key=lambda flag: flag.startswith("--"))
        group.add_argument(*flags, help=option.help_text(), **kwargs)
    return options


def _method_arguments(
    args: argparse.Namespace, cls: type[Planner], options: dict[str, MethodOption], n: int | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The method parameters and fit arrays given on the command line, checked against
    what ``cls`` takes."""
    passed = [option for option in options.values() if hasattr(args, option.dest)]
    takes = set(cls.param_names()) | set(cls.fit_params)
    for option in passed:
        if option.name not in takes:
            own = [o.flag for o in options.values() if cls.name in o.methods]
            raise CliError(
                f"option {option.flag} is not a parameter of method {cls.name!r} "
                f"(it belongs to: {', '.join(option.methods)}); options of {cls.name!r}: "
                f"{', '.join(own) or '(none)'}"
            )
    params, fit_data = {}, {}
    for option in passed:
        value = getattr(args, option.dest)
        if option.fit_data:
            fit_data[option.name] = _load_ids(value, option.flag, n)
        else:
            params[option.name] = value
    for name in GENERAL_PARAMS:
        if name in takes and getattr(args, name, None) is not None:
            params[name] = getattr(args, name)
    return params, fit_data


# --------------------------------------------------------------------------- input files
def _existing(path: Path, what: str) -> Path:
    if not path.exists():
        raise CliError(f"{what} file not found: {path}")
    if path.is_dir():
        raise CliError(f"{what} must be a file, got the folder {path}")
    return path


def _writable(path: Path | None, what: str) -> None:
    """Fail before the work, not after it, when an output folder is missing."""
    if path is not None and not path.resolve().parent.is_dir():
        raise CliError(f"cannot write {what} {path}: folder {path.parent} does not exist")


def load_array(path: Path, what: str) -> np.ndarray:
    """A ``.npy`` file, memory-mapped (read-only) so that big files are not loaded whole."""
    _existing(path, what)
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


def _load_ids(path: Path, flag: str, n: int | None) -> np.ndarray:
    """Per-sample ids from a ``.npy`` file or a text file with one id per line."""
    _existing(path, flag)
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


def _check_device(device: str | None) -> str | None:
    if device is None or device == "auto":
        return None
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise CliError(f"--device {device!r} is not a torch device: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {device}: CUDA is not available on this machine")
    return device


def _check_plot_support() -> None:
    from .plots import _figure

    _figure()  # raises MissingDependencyError naming the extra to install


# --------------------------------------------------------------------------- output
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _flat(info: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for key, value in info.items():
        if isinstance(value, dict):
            items += _flat(value, f"{prefix}{key}.")
        elif value is None or isinstance(value, (bool, int, float, str, np.generic)):
            items.append((prefix + key, value))
    return items


def plan_summary(plan: BatchPlan, seconds: float) -> str:
    """A few lines on a plan: method and parameters, batches, time, key figures of ``info``."""
    sizes = [len(ids) for ids in plan.iter_batches()]
    n_covered = sum(sizes)
    batches = f"{plan.n_batches} batches of {plan.batch_size}"
    if sizes and sizes[-1] != plan.batch_size:
        batches += f" (last batch: {sizes[-1]} samples, padded with -1)"
    if n_covered != plan.n_samples:
        batches += f", {plan.n_samples - n_covered} leftover samples dropped"
    params = ", ".join(f"{k}={_fmt(v)}" for k, v in plan.params.items() if v is not None)
    info = dict(plan.info)
    stage_seconds = info.pop("seconds", {}) or {}
    stages = ", ".join(f"{k} {v:.2f}" for k, v in stage_seconds.items() if k != "total")
    lines = [
        f"method    {plan.method}" + (f" ({params})" if params else ""),
        f"samples   N={plan.n_samples}, seed={plan.seed}",
        f"batches   {batches}",
        f"seconds   {seconds:.2f}" + (f" ({stages})" if stages else ""),
    ]
    figures = ", ".join(f"{k}={_fmt(v)}" for k, v in _flat(info))
    if figures:
        lines.append(f"info      {figures}")
    return "\n".join(lines)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


# --------------------------------------------------------------------------- plan
def _cmd_plan(args: argparse.Namespace) -> int:
    cls = get_method(args.method)
    args.device = _check_device(args.device)
    _writable(args.output, "the plan file")
    queries = targets = None
    if args.queries is not None or args.targets is not None or cls.uses_embeddings:
        if args.queries is None or args.targets is None:
            raise CliError(f"method {cls.name!r} needs both --queries and --targets")
        queries, targets = load_pair(args.queries, args.targets)
    n = int(queries.shape[0]) if queries is not None else args.n_samples
    params, fit_data = _method_arguments(args, cls, args.method_options, n)
    duplicate_ids = (
        _load_ids(args.duplicate_ids, "--duplicate-ids", n) if args.duplicate_ids else None
    )
    from .api import plan as make_plan

    start = time.perf_counter()
    if getattr(args, "ray_address", None):
        if duplicate_ids is not None or fit_data:
            raise CliError("--ray-address does not support --duplicate-ids or per-sample arrays")
        from .distributed import plan_on_ray

        plan = plan_on_ray(
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
        plan = make_plan(
            cls.name,
            queries,
            targets,
            batch_size=args.batch_size,
            seed=args.seed,
            drop_last=args.drop_last,
            n_samples=args.n_samples,
            duplicate_ids=duplicate_ids,
            **params,
            **fit_data,
        )
    seconds = time.perf_counter() - start
    plan.save(args.output)
    print(plan_summary(plan, seconds))
    print(f"wrote     {args.output}")
    return 0


# --------------------------------------------------------------------------- report
def _cmd_report(args: argparse.Namespace) -> int:
    from . import metrics
    from .api import plan as make_plan

    args.device = _check_device(args.device)
    for path, what in (
        (args.json, "the JSON report"),
        (args.plot, "the plot"),
        (args.loss_plot, "the loss plot"),
    ):
        _writable(path, what)
    if args.max_samples < 1:
        raise CliError(f"--max-samples must be >= 1, got {args.max_samples}")
    if args.plot or args.loss_plot:
        _check_plot_support()
    queries, targets = load_pair(args.queries, args.targets)
    n = int(queries.shape[0])
    plan = BatchPlan.load(_existing(args.plan, "plan"), n_samples=n)
    if args.baseline is not None:
        baseline = BatchPlan.load(_existing(args.baseline, "baseline plan"), n_samples=n)
    else:
        baseline = make_plan(
            "random",
            n_samples=n,
            batch_size=plan.batch_size,
            seed=plan.seed if plan.seed is not None else args.seed,
            drop_last=plan.drop_last,
        )
    metric = args.metric or plan.params.get("metric") or "cosine"
    rows = metrics.report(
        queries,
        targets,
        plan,
        baseline=baseline,
        temperature=args.temperature,
        quantile=args.quantile,
        metric=metric,
        device=args.device,
        seed=args.seed,
    )
    print(f"plan {args.plan}: {plan.method}, N={n}, {plan.n_batches} batches of {plan.batch_size}")
    print()
    print(metrics.format_report(rows))
    if args.json:
        _write_json(args.json, {"plan_file": str(args.plan), **rows})
        print(f"wrote {args.json}")
    if args.plot or args.loss_plot:
        from . import plots

        if args.plot:
            plots.plot_similarity(
                args.plot,
                queries,
                targets,
                plan,
                baseline,
                max_samples=args.max_samples,
                metric=metric,
            )
            print(f"wrote {args.plot}")
        if args.loss_plot:
            same = plan.method == baseline.method
            labels = (
                (f"plan ({plan.method})", f"baseline ({baseline.method})")
                if same
                else (plan.method, baseline.method)
            )
            plots.plot_losses(
                args.loss_plot,
                queries,
                targets,
                dict(zip(labels, (plan, baseline), strict=True)),
                temperature=args.temperature,
                metric=metric,
                device=args.device,
            )
            print(f"wrote {args.loss_plot}")
    return 0


# --------------------------------------------------------------------------- demo
def batch_purity(plan: BatchPlan, groups: np.ndarray) -> float:
    """Mean over batches of the share of a batch taken by its largest planted group."""
    shares = [np.bincount(groups[ids]).max() / len(ids) for ids in plan.iter_batches()]
    return float(np.mean(shares))


def group_cohesion(plan: BatchPlan, groups: np.ndarray) -> float:
    """Mean over planted groups of the share of a group found in its most common batch."""
    batch_of = np.full(len(groups), -1, dtype=np.int64)
    for b, ids in enumerate(plan.iter_batches()):
        batch_of[ids] = b
    kept = batch_of >= 0
    pairs = np.unique(np.stack([groups[kept], batch_of[kept]]), axis=1, return_counts=True)
    (group_ids, _), counts = pairs
    largest = np.zeros(groups.max() + 1)
    np.maximum.at(largest, group_ids, counts)
    return float(np.mean(largest / np.bincount(groups)))


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import metrics
    from .api import plan as make_plan
    from .synthetic import make_planted_pairs

    args.device = _check_device(args.device)
    plot = args.plot
    if plot is None:  # default: plot when matplotlib is there, say so when it is not
        try:
            _check_plot_support()
            plot = True
        except ImportError:
            plot = False
            print("(no plot: matplotlib is not installed; pip install 'hardbatch[plot]')")
    elif plot:
        _check_plot_support()
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
    random_plan = make_plan("random", n_samples=n, batch_size=args.batch_size, seed=args.seed)
    gcbs_plan = make_plan(
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
        f"(quantile {args.quantile}) and random in {seconds:.2f} s"
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
    purity = {p.method: batch_purity(p, data.groups) for p in (gcbs_plan, random_plan)}
    cohesion = {p.method: group_cohesion(p, data.groups) for p in (gcbs_plan, random_plan)}
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
        from . import plots

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
        _write_json(
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


# --------------------------------------------------------------------------- parser
class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' line breaks; wider option column."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34)


def _add_debug(parser: argparse.ArgumentParser, *, default: Any) -> None:
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="show the full traceback of errors instead of one line",
    )


def _add_device(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--device",
        metavar="DEVICE",
        help=f"torch device for {what}: cpu, cuda, cuda:1, ... (default: cuda if available)",
    )


def _method_lines(methods: list[str]) -> str:
    """One line per method: its name and the first line of its class docstring."""
    width = max(map(len, methods), default=0)
    lines = []
    for method in methods:
        doc = (get_method(method).__doc__ or "").strip().splitlines()
        lines.append(f"  {method:<{width}}  {doc[0] if doc else ''}".rstrip())
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The ``hardbatch`` argument parser (method options generated from the registry)."""
    parser = argparse.ArgumentParser(
        prog=_PROG,
        formatter_class=_Formatter,
        allow_abbrev=False,
        description=(
            "Mini-batches full of hard negatives for contrastive training.\n\n"
            "Plan the batches of an epoch from paired embeddings (row i of the queries is the\n"
            "positive of row i of the targets), see what a plan does to the loss, or run the\n"
            "bundled demo."
        ),
        epilog=(
            "examples:\n"
            "  hardbatch demo\n"
            "  hardbatch plan --method gcbs --queries X.npy --targets Y.npy --batch-size 64 \\\n"
            "      --seed 0 --quantile 0.999 -o plan.npz\n"
            "  hardbatch report plan.npz --queries X.npy --targets Y.npy --plot similarity.png\n\n"
            "'hardbatch COMMAND --help' explains the options of a command."
        ),
    )
    parser.add_argument("--version", action="version", version=f"{_PROG} {__version__}")
    _add_debug(parser, default=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # ---- plan
    methods = available_methods()
    plan = commands.add_parser(
        "plan",
        formatter_class=_Formatter,
        allow_abbrev=False,
        help="plan one epoch of batches and write a plan file (.npz)",
        description=(
            "Plan one epoch of batches from paired embeddings and write a plan file (.npz).\n\n"
            "The embeddings are .npy files of shape (N, d) (float16/32/64), memory-mapped, so\n"
            "files larger than memory work. Load the plan in Python with\n"
            "hardbatch.BatchPlan.load(path, n_samples=N); 'hardbatch report' shows what it does.\n"
            "\nmethods:\n" + _method_lines(methods)
        ),
        epilog=(
            "examples:\n"
            "  hardbatch plan --queries X.npy --targets Y.npy --quantile 0.999 -o plan.npz\n"
            "  hardbatch plan --method gcbs --top-k 20 --queries X.npy --targets Y.npy -o p.npz\n"
            "  hardbatch plan --method random --n-samples 100000 --batch-size 256 -o rand.npz"
        ),
    )
    inputs = plan.add_argument_group("inputs and output")
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
    inputs.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="PLAN.npz",
        help="where to write the plan file",
    )
    common = plan.add_argument_group("batching (every method)")
    common.add_argument(
        "--batch-size", type=int, default=64, metavar="B", help="samples per batch (default: 64)"
    )
    common.add_argument(
        "--seed",
        type=_value_parser(int, True),
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
        metavar="FILE",
        help="per-sample ids (.npy, or text with one per line): samples with equal ids never "
        "share a batch (false-negative guard)",
    )
    _add_device(common, "the similarity matmuls")
    common.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars on stderr (default: only for work that takes seconds)",
    )
    scale = plan.add_argument_group("beyond one machine (hardbatch[ray])")
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
    plan.set_defaults(func=_cmd_plan, method_options=_add_method_options(plan))
    _add_debug(plan, default=argparse.SUPPRESS)

    # ---- report
    report = commands.add_parser(
        "report",
        formatter_class=_Formatter,
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
    report.add_argument("plan", type=Path, metavar="PLAN.npz", help="plan file to evaluate")
    report.add_argument(
        "--queries",
        type=Path,
        required=True,
        metavar="X.npy",
        help="query embeddings the plan was made for, .npy of shape (N, d)",
    )
    report.add_argument(
        "--targets",
        type=Path,
        required=True,
        metavar="Y.npy",
        help="target embeddings, .npy of shape (N, d)",
    )
    report.add_argument(
        "--baseline",
        type=Path,
        metavar="PLAN.npz",
        help="compare against this plan file instead of a random plan",
    )
    report.add_argument(
        "--temperature",
        type=float,
        default=0.05,
        metavar="TAU",
        help="NT-Xent temperature (default: 0.05)",
    )
    report.add_argument(
        "--quantile",
        type=float,
        metavar="Q",
        help="similarity quantile of the graph used for bandwidth and in-batch edge fraction "
        "(default: the plan's own quantile, else 0.999)",
    )
    report.add_argument(
        "--metric",
        choices=["cosine", "dot"],
        help="similarity (default: the plan's metric, else cosine)",
    )
    report.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the threshold sample, and of the random baseline when the plan has no "
        "seed (default: 0)",
    )
    _add_device(report, "the loss computations")
    report.add_argument(
        "--plot",
        type=Path,
        metavar="OUT.png",
        help="draw the similarity matrix in plan order next to baseline order (needs "
        "matplotlib: pip install 'hardbatch[plot]')",
    )
    report.add_argument(
        "--max-samples",
        type=int,
        default=1024,
        metavar="M",
        help="the plot shows the first whole batches holding at most M samples (default: 1024)",
    )
    report.add_argument(
        "--loss-plot",
        type=Path,
        metavar="OUT.png",
        help="draw histograms of the per-sample losses and gaps of both plans",
    )
    report.add_argument("--json", type=Path, metavar="OUT.json", help="also write the numbers")
    report.set_defaults(func=_cmd_report)
    _add_debug(report, default=argparse.SUPPRESS)

    # ---- demo
    demo = commands.add_parser(
        "demo",
        formatter_class=_Formatter,
        allow_abbrev=False,
        help="plan synthetic data with planted hard negatives (no download, seconds)",
        description=(
            "Generate paired embeddings with planted groups of mutual hard negatives\n"
            "(hardbatch.synthetic.make_planted_pairs), plan one epoch with random and with GCBS,\n"
            "print the diagnostics table, how well each plan keeps the planted groups together,\n"
            "and draw the similarity matrix in both orders (DIR/similarity.png)."
        ),
    )
    demo.add_argument(
        "--n-samples", type=int, default=4096, metavar="N", help="pairs (default: 4096)"
    )
    demo.add_argument(
        "--dim", type=int, default=64, metavar="D", help="embedding dimension (default: 64)"
    )
    demo.add_argument(
        "--batch-size", type=int, default=64, metavar="B", help="samples per batch (default: 64)"
    )
    demo.add_argument(
        "--group-size",
        type=int,
        default=32,
        metavar="G",
        help="samples per planted group (default: 32)",
    )
    demo.add_argument(
        "--quantile",
        type=float,
        default=0.995,
        metavar="Q",
        help="GCBS similarity quantile (default: 0.995: ~20 edges per sample at N=4096)",
    )
    demo.add_argument(
        "--temperature",
        type=float,
        default=0.05,
        metavar="TAU",
        help="NT-Xent temperature of the report (default: 0.05)",
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of data and plans (default: 0)")
    demo.add_argument(
        "--out-dir",
        type=Path,
        default=Path("hardbatch-demo"),
        metavar="DIR",
        help="folder for the plot and saved files (default: ./hardbatch-demo)",
    )
    demo.add_argument(
        "--plot",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write DIR/similarity.png (default: when matplotlib is installed)",
    )
    demo.add_argument(
        "--save",
        action="store_true",
        help="also save queries.npy, targets.npy, groups.npy, both plans and report.json in DIR",
    )
    _add_device(demo, "the similarity matmuls")
    demo.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars on stderr (default: only for work that takes seconds)",
    )
    demo.set_defaults(func=_cmd_demo)
    _add_debug(demo, default=argparse.SUPPRESS)
    return parser


# --------------------------------------------------------------------------- entry point
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
    from .plots import MissingDependencyError

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
        print(f"{_PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{_PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
