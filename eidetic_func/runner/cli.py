"""The ``eidetic-func`` command: ``run`` a task sequence, or ``bench`` a preset.

``eidetic-func run`` with no arguments trains the embedded default (Split-MNIST from a
small MNIST subset shipped with the package, an MLP, Taylor pruning) in a few minutes on
a laptop CPU, prints the accuracy matrix and writes results, history and plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from eidetic_func.core.errors import ConfigError, EideticError
from eidetic_func.methods.eidetic import EideticNet
from eidetic_func.methods.registry import parse_option
from eidetic_func.runner.cli_values import comma_list
from eidetic_func.runner.config import NESTED, RunConfig
from eidetic_func.runner.environment import output_held
from eidetic_func.runner.method_listing import list_methods
from eidetic_func.runner.report import write_outputs
from eidetic_func.runner.result import RunResult
from eidetic_func.runner.resume import Given
from eidetic_func.runner.sequence import run_held
from eidetic_func.training.allocator import keep_freed_memory
from eidetic_func.training.config import TrainConfig

DEFAULT = RunConfig()

GROUPS = ("data", "model", "method", "training", "run")
"""The groups of ``run --help``, in order (a field's ``group`` metadata names one)."""

NOT_FLAGS = {
    "method": "--method is written out below (the method's name; see `eidetic-func methods`)",
    "method_options": "a dict: --method-option KEY=VALUE, repeatable",
    "train": "a TrainConfig: its fields are flags of their own",
    "eidetic": "an EideticNet: its settings are flags of their own",
    "finish": "for train_task's callers that close a task themselves; a run finishes each",
    "name": "EideticNet's name: --method names the method",
}
"""The fields of RunConfig, TrainConfig and EideticNet that are not derived flags, with the
reason."""

BENCH_FLAGS = (
    "data_root",
    "device",
    "seed",
    "threads",
    "lr",
    "holdout",
    "num_tasks",
    "limit_per_class",
    "progress",
)
"""The RunConfig fields whose preset value ``bench`` lets a command line replace."""

ConfigClass = type[RunConfig] | type[TrainConfig] | type[EideticNet]
FLAG_CLASSES: tuple[ConfigClass, ...] = (RunConfig, *NESTED.values())
"""The classes whose fields are ``run``'s flags: the run's, and its nested configs'."""


def flag_fields(cls: ConfigClass) -> list[dataclasses.Field[Any]]:
    """The fields of ``cls`` that are flags of ``run``: all but :data:`NOT_FLAGS`."""
    return [f for f in dataclasses.fields(cls) if f.name not in NOT_FLAGS]


def flag_name(field: dataclasses.Field[Any]) -> str:
    """``field``'s flag: ``--`` and its ``flag`` metadata or name, dashes for underscores."""
    return "--" + field.metadata.get("flag", field.name).replace("_", "-")


def value_parser(cls: ConfigClass, name: str) -> tuple[Callable[[str], Any], bool]:
    """How one value of field ``name`` of ``cls`` is parsed (``bool``: a ``--x/--no-x``
    switch), and whether its flag takes a comma list of them (``float | Sequence[float]``)."""
    hint = typing.get_type_hints(cls)[name]
    if hint in (bool, int, float, str):
        return hint, False
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        kinds = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(kinds) == 1 and kinds[0] in (int, float, str):  # X | None
            return kinds[0], False
        item, rest = kinds[0], kinds[1:]
        if rest and typing.get_origin(rest[0]) is Sequence and typing.get_args(rest[0]) == (item,):
            return item, True  # X | Sequence[X]
    raise TypeError(f"{cls.__name__}.{name}: no flag parses {hint!r} (list it in NOT_FLAGS)")


def add_field_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: ConfigClass,
    field: dataclasses.Field[Any],
    *,
    bench: bool = False,
) -> argparse.Action:
    """Add ``field``'s flag to ``parser``, described by its metadata (see
    :func:`eidetic_func.training.config.option`). ``bench``: absent unless given (the preset's)."""
    meta = field.metadata
    if "help" not in meta:
        raise TypeError(f"{cls.__name__}.{field.name} has no help: declare it with option()")
    parse, is_list = value_parser(cls, field.name)
    text = meta["help"].replace("%", "%%")
    choices = meta.get("choices")
    if choices and is_list:  # checked item by item by the config
        text += f"; each one of {', '.join(choices)}"
    if bench:
        default = "the preset's"
    elif field.default is None:
        default = meta.get("none", "none")
    else:
        default = "%(default)s"
    options: dict[str, Any] = {
        "dest": field.name,
        "default": argparse.SUPPRESS if bench else field.default,
        "help": f"{text} (default: {default})",
    }
    if parse is bool:
        action = parser.add_argument(
            flag_name(field), action=argparse.BooleanOptionalAction, **options
        )
        action.help = options["help"]  # Python 3.10's appends a second default
        return action
    if choices and not is_list:
        options["choices"] = choices  # argparse lists them as the metavar
    else:
        options["metavar"] = meta.get("metavar", flag_name(field)[2:].upper().replace("-", "_"))
    return parser.add_argument(
        flag_name(field), type=comma_list(parse) if is_list else parse, **options
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    groups = {name: p.add_argument_group(name) for name in GROUPS}
    method = groups["method"]
    method.add_argument(
        "--method",
        default=DEFAULT.method,
        help="eidetic (default) or a baseline: see `eidetic-func methods`",
    )
    method.add_argument(
        "--method-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a baseline's hyperparameter, e.g. lambda_ewc=100 (repeatable)",
    )
    for cls in FLAG_CLASSES:
        for field in flag_fields(cls):
            add_field_flag(groups[field.metadata["group"]], cls, field)
    run_group = groups["run"]
    run_group.add_argument(
        "--output-dir",
        type=Path,
        default=Path("runs/latest"),
        help="where results, plots and the checkpoint go (default: %(default)s)",
    )
    run_group.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="a TOML file of settings (the flags' names with underscores; tables [train], "
        "[eidetic], [method_options]); flags given override it. Every run directory holds "
        "config.toml, which reruns that run exactly",
    )
    run_group.add_argument(
        "--resume",
        action="store_true",
        help="continue the run checkpointed in --output-dir (its saved settings are used; "
        "options that would change them are refused)",
    )
    run_group.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in an --output-dir that holds a run's checkpoint (it is deleted)",
    )


def _field_values(args: argparse.Namespace, cls: ConfigClass) -> dict[str, Any]:
    """The values of ``cls``'s flags in ``args`` (a comma list of one as its item)."""
    values = {f.name: getattr(args, f.name) for f in flag_fields(cls)}
    return {k: v[0] if isinstance(v, tuple) and len(v) == 1 else v for k, v in values.items()}


def config_from_args(args: argparse.Namespace, base: RunConfig = DEFAULT) -> RunConfig:
    """The RunConfig of a parsed ``run`` command line: ``base`` (a ``--config`` file's) with
    the flags' values; the flags' method options are added to ``base``'s."""
    return dataclasses.replace(
        base,
        **_field_values(args, RunConfig),
        method=args.method,
        method_options={**base.method_options, **dict(parse_option(o) for o in args.method_option)},
        **{
            name: dataclasses.replace(getattr(base, name), **_field_values(args, cls))
            for name, cls in NESTED.items()
        },
    )


def _file_config(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, path: Path
) -> tuple[argparse.Namespace, RunConfig]:
    """The command line parsed again over the settings of ``--config`` ``path``: its
    values are the flags' defaults, so a flag given overrides the file."""
    from eidetic_func.runner.config_file import config_from_file

    base = config_from_file(path)
    defaults = {
        "method": base.method,
        **{f.name: getattr(base, f.name) for f in flag_fields(RunConfig)},
    }
    for name, cls in NESTED.items():
        defaults.update({f.name: getattr(getattr(base, name), f.name) for f in flag_fields(cls)})
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands.choices["run"].set_defaults(**defaults)
    return parser.parse_args(argv), base


def say(text: str = "") -> None:
    """Print ``text`` to stdout; once its reader has gone (``eidetic-func run | head``), print
    nothing more and carry on: what a run computes and writes never depends on a reader."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        _silence_stdout()


def _silence_stdout() -> None:
    # Python flushes stdout again at exit: point the descriptor at /dev/null so that neither
    # this nor any later print raises.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _report(result: RunResult, output_dir: Path) -> int:
    """Write the results, then print the summary (results first: a reader that leaves early
    loses nothing). If ``output_dir`` fails, write them to a fresh temporary directory and
    say where (exit status 1): a finished run is never lost."""
    from eidetic_func.runner.report import summary_markdown

    if not result.is_main:  # data parallel: one process writes
        return 0
    status = 0
    try:
        paths = write_outputs(result, output_dir)
    except OSError as e:
        fallback = Path(tempfile.mkdtemp(prefix="eidetic-func-results-"))
        paths = write_outputs(result, fallback)
        print(
            f"eidetic-func: cannot write the results to {output_dir} ({e}); they were "
            f"written to {fallback} instead",
            file=sys.stderr,
        )
        status = 1
    say()
    say(summary_markdown(result))
    say("wrote " + ", ".join(str(p) for p in paths.values()))
    for warning in result.warnings:  # also in the summary; here where a log shows them
        print(f"eidetic-func: warning: {warning}", file=sys.stderr)
    return status


def _run_and_report(given: Given, output: Path, resume: bool, overwrite: bool) -> int:
    """Run and write the results while holding the output directory (rank 0 of a launch)."""
    with output_held(output, resume=resume, overwrite=overwrite, log=say):
        return _report(run_held(given, output, resume=resume, log=say), output)


def _resume_changes(args: argparse.Namespace, defaults: argparse.Namespace) -> dict[str, Any]:
    """The settings this command line gives (those that differ from the defaults) as
    changes to the saved run's config (``run`` refuses those that change what it computes);
    the device is always this command line's (the machine may be another)."""
    given, default = config_from_args(args), config_from_args(defaults)
    changes = _differences(given, default, skip=NESTED)
    changes["device"] = given.device
    for name in NESTED:
        changes[name] = _differences(getattr(given, name), getattr(default, name))
    return changes


def _differences(given: Any, default: Any, skip: Any = ()) -> dict[str, Any]:
    """The fields of dataclass ``given`` (all but ``skip``) that differ from ``default``'s."""
    return {
        f.name: getattr(given, f.name)
        for f in dataclasses.fields(given)
        if f.name not in skip and getattr(given, f.name) != getattr(default, f.name)
    }


def _flag_named(message: str) -> str:
    """``message`` with a leading config field named by its flag (``max_epochs must be ...``
    becomes ``--epochs must be ...``): the command line's user wrote flags."""
    field, space, rest = message.partition(" ")
    flags = {f.name: flag_name(f) for cls in FLAG_CLASSES for f in flag_fields(cls)}
    return flags[field] + space + rest if field in flags else message


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``eidetic-func`` command line and its ``run``, ``methods`` and
    ``bench`` subcommands."""
    parser = argparse.ArgumentParser(
        prog="eidetic-func",
        description="Continual learning without forgetting (EideticNet) on a torch.func core.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser(
        "run", help="train a task sequence and measure it", description=__doc__.splitlines()[0]
    )
    _add_run_options(run_parser)
    commands.add_parser("methods", help="list the methods and their options")
    bench = commands.add_parser("bench", help="run a benchmark preset (see --list)")
    bench.add_argument("preset", nargs="?", help="preset name")
    bench.add_argument("--list", action="store_true", help="list the presets")
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    for name in BENCH_FLAGS:
        add_field_flag(bench, RunConfig, fields[name], bench=True)
    bench.add_argument(
        "--output-dir", type=Path, default=None, help="default: benchmarks/results/<preset>"
    )
    bench.add_argument(
        "--resume",
        action="store_true",
        help="continue the preset's run checkpointed in its output directory",
    )
    bench.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an output directory that holds a run's checkpoint",
    )
    return parser


def bench_config(args: argparse.Namespace) -> RunConfig:
    """The preset of a parsed ``bench`` command line with the fields it gives replaced."""
    from eidetic_func.runner.presets import preset

    overrides = {name: getattr(args, name) for name in BENCH_FLAGS if hasattr(args, name)}
    return preset(args.preset, **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    keep_freed_memory()  # steadier, faster steps on Linux (see eidetic_func.training.allocator)
    try:
        if args.command == "run":
            if args.config is not None and args.resume:
                raise ConfigError(
                    "--config starts a run; --resume continues one with its saved settings"
                )
            if not args.resume:
                base = DEFAULT
                if args.config is not None:
                    args, base = _file_config(parser, argv, args.config)
                config = config_from_args(args, base)
                return _run_and_report(config, args.output_dir, False, args.overwrite)
            changes = _resume_changes(args, parser.parse_args(["run"]))
            return _run_and_report(changes, args.output_dir, True, args.overwrite)
        if args.command == "methods":
            list_methods()
            return 0
        from eidetic_func.runner.presets import PRESETS

        if args.list or not args.preset:
            for name, entry in PRESETS.items():
                print(f"{name:24s} {entry.about}")
            return 0
        output = args.output_dir or Path("benchmarks/results") / args.preset
        return _run_and_report(bench_config(args), output, args.resume, args.overwrite)
    except EideticError as err:
        print(f"eidetic-func: error: {_flag_named(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("eidetic-func: interrupted; resume with --resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of a listing left (``eidetic-func methods | head``)
        _silence_stdout()
        return 141


if __name__ == "__main__":
    raise SystemExit(main())
