"""The ``eidetic-func`` command's front: help, listings and argument errors without torch.

The command line's parser is derived from the configuration dataclasses
(:mod:`eidetic_func.runner.cli`), whose modules import torch, which takes seconds. Its
description, with the ``methods`` and ``bench --list`` listings, is kept in
``cli_spec.json`` beside this module (written by ``python -m eidetic_func.runner.cli_spec``;
a test holds it equal to the parser). :func:`main` rebuilds the parser from it with the
standard library only: ``--help``, the listings and every argument error (with the closest
valid value) answer at once, and only a valid command line imports torch and runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

from eidetic_func.core.errors import closest
from eidetic_func.runner.cli_values import comma_list

SPEC_FILE = "cli_spec.json"


_TYPES: dict[str, Callable[[str], Any]] = {
    "int": int,
    "float": float,
    "str": str,
    "Path": Path,
    **{f"{t.__name__} list": comma_list(t) for t in (int, float, str)},
}


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors suggest the closest flag, command or choice."""

    every_flag: tuple[str, ...] = ()  # of the whole command line, set on the root

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments: "):
            unknown = message.removeprefix("unrecognized arguments: ").split()[0]
            flags = self.every_flag or [s for a in self._actions for s in a.option_strings]
            message += closest(unknown.split("=")[0], flags)
        elif "invalid choice: " in message and "(choose from " in message:
            given = message.split("invalid choice: ", 1)[1].split(" (choose from ")[0]
            listed = message.split("(choose from ", 1)[1].rstrip(")")
            valid = [c.strip().strip("'\"") for c in listed.split(",")]
            message += closest(given.strip("'\""), valid)
        super().error(message)


def _add(parser: argparse.ArgumentParser | argparse._ArgumentGroup, action: dict[str, Any]) -> None:
    options = {k: v for k, v in action.items() if k not in ("flags", "kind", "type", "default")}
    default = action.get("default")
    if isinstance(default, dict) and "tuple" in default:
        default = tuple(default["tuple"])
    elif default == argparse.SUPPRESS:
        default = argparse.SUPPRESS  # argparse tests it by identity
    kind = action["kind"]
    if kind == "boolean_optional":
        added = parser.add_argument(
            *action["flags"], action=argparse.BooleanOptionalAction, default=default, **options
        )
        added.help = options.get("help")  # as the parser's: Python 3.10 appends a default
        return
    if kind in ("store_true", "append"):
        parser.add_argument(*action["flags"], action=kind, default=default, **options)
        return
    if "type" in action:
        options["type"] = _TYPES[action["type"]]
    parser.add_argument(*action["flags"], default=default, **options)


def _build(spec: dict[str, Any], parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    groups = {title: parser.add_argument_group(title) for title in spec.get("groups", [])}
    for action in spec["actions"]:
        _add(groups.get(action.pop("group", None), parser), dict(action))
    commands = spec.get("commands")
    if commands:
        sub = parser.add_subparsers(dest="command", required=True)
        for name, command in commands.items():
            child = sub.add_parser(
                name, help=command["help"], description=command.get("description")
            )
            _build(command, child)
    return parser


@cache
def spec() -> dict[str, Any]:
    """The command line's description (``cli_spec.json``)."""
    text = resources.files(__package__ or "eidetic_func.runner").joinpath(SPEC_FILE).read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def light_parser() -> argparse.ArgumentParser:
    """The ``eidetic-func`` parser rebuilt from :func:`spec`, importing no torch."""
    root = json.loads(json.dumps(spec()))  # _build consumes its copy
    parser = _Parser(prog=root["prog"], description=root["description"])
    parser.every_flag = tuple(root["flags"])
    return _build(root, parser)


def _methods_error(parser: argparse.ArgumentParser, method: str) -> None:
    """Refuse ``--method`` members that name no method (``run``'s error), suggesting the
    closest."""
    names = spec()["method_names"]
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    run = commands.choices["run"]
    for member in method.split("+"):
        if member not in names:
            run.error(
                f"argument --method: unknown method {member!r}{closest(member, names)}; "
                "see `eidetic-func methods`"
            )


def main(argv: Sequence[str] | None = None) -> int:
    """The ``eidetic-func`` command: answered here when torch is not needed, else run."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "" not in sys.path and os.getcwd() not in sys.path:
        # ``--model import:mynet:make`` finds ./mynet.py; last, unlike ``python -m``'s first,
        # so that a file of the working directory never shadows an installed package
        sys.path.append(os.getcwd())
    parser = light_parser()
    args = parser.parse_args(argv)
    listing = {"methods": "methods"}.get(args.command)
    if args.command == "bench" and (args.list or not args.preset):
        listing = "preset_listing"
    if listing:
        try:
            print(spec()[listing], end="", flush=True)
        except BrokenPipeError:  # the reader left (``eidetic-func methods | head``)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        return 0
    if args.command == "bench":
        presets = spec()["presets"]
        if args.preset not in presets:
            print(
                f"eidetic-func: error: unknown preset {args.preset!r}"
                f"{closest(args.preset, presets)}; see `eidetic-func bench --list`",
                file=sys.stderr,
            )
            return 2
    if args.command == "run":
        _methods_error(parser, args.method)
    from eidetic_func.runner.cli import main as run_main  # imports torch

    return run_main(argv)


__all__ = ["SPEC_FILE", "light_parser", "main", "spec"]
