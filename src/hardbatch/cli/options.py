"""The method options of ``hardbatch plan``, generated from the method registry.

A method class declares everything the CLI needs as class attributes: its parameters are the
arguments of ``__init__`` (:meth:`~hardbatch.Planner.param_names`; type hints give the option
type, ``Literal[...]`` the choices), ``param_help`` explains them, ``fit_params`` names its
per-sample fit arrays (read from files) and ``cli_aliases`` adds short flags
(e.g. ``{"p": ["-p"]}``). An option the chosen method does not take is an error.
"""

from __future__ import annotations

import argparse
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..methods import available_methods, get_method
from ..methods.base import COMMON_PARAMS, Planner
from .common import CliError
from .files import load_ids

#: Method parameters that are general options of ``hardbatch plan`` (forwarded to the
#: methods that take them, ignored by the others) instead of per-method options.
GENERAL_PARAMS = ("device", "progress")

#: Prefix of the argparse destinations of method options (keeps them apart from the CLI's own).
_DEST = "method__"


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
    parser: Callable[[str], Any] | None = None

    @property
    def metavar(self) -> str:
        if self.choices:
            return "{" + ",".join(map(str, self.choices)) + "}"
        if self.parser is not None:
            return "VALUE"
        return self.kind.__name__.upper().replace("STR", "TEXT")

    @property
    def dest(self) -> str:
        """The argparse destination of the option."""
        return _DEST + self.name

    @property
    def flag(self) -> str:
        """The long option string, used in messages."""
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
        names = [p for p in cls.param_names() if p not in COMMON_PARAMS + GENERAL_PARAMS]
        for name in [*names, *cls.fit_params]:
            fit_data = name in cls.fit_params
            default = None
            if not fit_data:
                param = signature.parameters[name]
                default = None if param.default is inspect.Parameter.empty else param.default
            option = options.get(name)
            if option is None:
                option = MethodOption(name=name, flags=["--" + name.replace("_", "-")])
                if fit_data:
                    option.fit_data = True
                else:
                    option.kind, option.nullable, option.choices = _resolve_type(
                        hints.get(name, inspect.Parameter.empty), default
                    )
                    option.parser = cls.param_parsers.get(name)
                options[name] = option
            option.methods.append(method)
            if name in cls.param_help:
                option.helps[method] = cls.param_help[name]
            if not fit_data:
                option.defaults[method] = default
            for alias in cls.cli_aliases.get(name, []):
                # First come, first served: two methods cannot claim the same short flag.
                if alias not in used_aliases and alias not in option.flags:
                    used_aliases.add(alias)
                    option.flags.append(alias)
    return options


def value_parser(kind: type, nullable: bool) -> Callable[[str], Any]:
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


def _with_message(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A method's own text parser, its ``ValueError`` shown by argparse as it is (argparse
    would print only "invalid <function name> value")."""

    def parse_or_explain(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse_or_explain


def add_method_options(parser: argparse.ArgumentParser) -> dict[str, MethodOption]:
    """Add every :func:`method_options` option to ``parser``; returns them by name."""
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
                type=_with_message(option.parser)
                if option.parser
                else value_parser(option.kind, option.nullable),
                metavar=option.metavar,
            )
            if option.choices:
                kwargs["choices"] = list(option.choices)
        # Short aliases first, as usual in --help; messages use the long name.
        flags = sorted(option.flags, key=lambda flag: flag.startswith("--"))
        group.add_argument(*flags, help=option.help_text(), **kwargs)
    return options


def method_arguments(
    args: argparse.Namespace,
    cls: type[Planner],
    options: dict[str, MethodOption],
    n: int | None,
    load_fit: Callable[[MethodOption, Path], np.ndarray] | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The method parameters and fit arrays given on the command line, checked against
    what ``cls`` takes.

    ``load_fit(option, value)`` reads a fit array (default: a file, :func:`load_ids`);
    ``plan --data`` passes one that also takes a column of the data file.

    Returns
    -------
    params, fit_data : dict
        Constructor parameters (with the :data:`GENERAL_PARAMS` the method takes) and the
        per-sample arrays read from their files.
    """
    given = vars(args)  # method options left out are absent (default=argparse.SUPPRESS)
    passed = [option for option in options.values() if option.dest in given]
    takes = set(cls.param_names()) | set(cls.fit_params)
    for option in passed:
        if option.name not in takes:
            own = [o.flag for o in options.values() if cls.name in o.methods]
            raise CliError(
                f"option {option.flag} is not a parameter of method {cls.name!r} "
                f"(it belongs to: {', '.join(option.methods)}); options of {cls.name!r}: "
                f"{', '.join(own) or '(none)'}"
            )
    params: dict[str, Any] = {}
    fit_data: dict[str, np.ndarray] = {}
    for option in passed:
        value = given[option.dest]
        if option.fit_data:
            fit_data[option.name] = (
                load_ids(value, option.flag, n) if load_fit is None else load_fit(option, value)
            )
        else:
            params[option.name] = value
    for name in GENERAL_PARAMS:
        if name in takes and given.get(name) is not None:
            params[name] = given[name]
    return params, fit_data
