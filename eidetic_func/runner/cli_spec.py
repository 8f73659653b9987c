"""Write (or check) ``cli_spec.json``: the command line's parser and listings as data.

:mod:`eidetic_func.runner.cli_front` answers ``--help``, ``methods``, ``bench --list`` and
argument errors from that file without importing torch. It is derived here from the real
parser (:func:`eidetic_func.runner.cli.build_parser`), the method registry and the presets.
Run ``python -m eidetic_func.runner.cli_spec`` after changing a flag, a method or a preset
(``--check`` fails if the file is stale; the test suite checks it too).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Any

from eidetic_func.runner.cli_front import SPEC_FILE

PATH = Path(__file__).with_name(SPEC_FILE)

_KINDS = {
    argparse._StoreAction: "store",
    argparse._StoreTrueAction: "store_true",
    argparse._AppendAction: "append",
    argparse.BooleanOptionalAction: "boolean_optional",
}


def _default(value: Any) -> Any:
    if isinstance(value, tuple):
        return {"tuple": list(value)}
    return str(value) if isinstance(value, Path) else value


def _action(action: argparse.Action, group: str | None) -> dict[str, Any]:
    kind = _KINDS[type(action)]
    flags = list(action.option_strings[:1] if kind == "boolean_optional" else action.option_strings)
    described: dict[str, Any] = {"flags": flags or [action.dest], "kind": kind}
    if flags:
        described["dest"] = action.dest
    if action.type is not None:
        described["type"] = getattr(action.type, "__name__", str(action.type))
    for key in ("help", "metavar"):
        if getattr(action, key) is not None:
            described[key] = getattr(action, key)
    if kind in ("store", "append") and action.nargs is not None:
        described["nargs"] = action.nargs
    if action.choices is not None:
        described["choices"] = list(action.choices)
    described["default"] = _default(action.default)
    if group is not None:
        described["group"] = group
    return described


def _parser(parser: argparse.ArgumentParser) -> dict[str, Any]:
    custom = [
        g for g in parser._action_groups if g.title not in ("positional arguments", "options")
    ]
    group_of = {id(a): g.title for g in custom for a in g._group_actions}
    described: dict[str, Any] = {"groups": [g.title for g in custom], "actions": []}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            described["commands"] = {
                name: {"help": helps[name], "description": child.description, **_parser(child)}
                for name, child in action.choices.items()
            }
            continue
        described["actions"].append(_action(action, group_of.get(id(action))))
    return described


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    flags = [s for a in parser._actions for s in a.option_strings]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                flags += _flags(child)
    return sorted(set(flags))


def build_spec() -> dict[str, Any]:
    """The spec of the real parser and listings (imports torch)."""
    from eidetic_func.methods.registry import METHODS
    from eidetic_func.runner.cli import build_parser
    from eidetic_func.runner.method_listing import list_methods
    from eidetic_func.runner.presets import PRESETS

    parser = build_parser()
    methods = io.StringIO()
    with contextlib.redirect_stdout(methods):
        list_methods()
    return {
        "prog": parser.prog,
        "description": parser.description,
        **_parser(parser),
        "flags": _flags(parser),
        "method_names": sorted(METHODS),
        "methods": methods.getvalue(),
        "presets": sorted(PRESETS),
        "preset_listing": "".join(f"{name:24s} {e.about}\n" for name, e in PRESETS.items()),
    }


def render(spec: dict[str, Any]) -> str:
    return json.dumps(spec, indent=1, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    args = parser.parse_args()
    text = render(build_spec())
    if args.check:
        if PATH.read_text() != text:
            print(f"{PATH} is stale: run python -m eidetic_func.runner.cli_spec", file=sys.stderr)
            return 1
        return 0
    PATH.write_text(text)
    print(f"wrote {PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
