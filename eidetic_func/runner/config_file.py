"""Run configurations as TOML files: ``eidetic-func run --config FILE``, and the
``config.toml`` every run directory holds (``--config`` on it reruns the run exactly).

The file has :class:`RunConfig`'s fields as keys, its nested settings as the tables
``[train]`` and ``[eidetic]``, and a method's options as ``[method_options]`` (the keys of
:meth:`RunConfig.to_dict`). TOML has no null: a field that may be ``None`` takes the string
``"none"`` (a method option too); a field left out keeps its default.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any

from eidetic_func.core.errors import ConfigError, closest
from eidetic_func.runner.config import NESTED, RunConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CONFIG_FILE = "config.toml"
NONE = "none"


def read_settings(path: str | Path) -> dict[str, Any]:
    """The settings of the TOML file ``path``, laid out as :meth:`RunConfig.to_dict` (every
    key checked to name a field; ``"none"`` read as ``None`` where a field may be ``None``).
    Raises :class:`ConfigError` naming the file for what it cannot read."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the configuration file {path}: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from e
    return _checked(data, RunConfig, str(path))


def _checked(data: dict[str, Any], cls: type, where: str) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    settings: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields or (key == "name" and cls is not RunConfig):
            raise ConfigError(f"{where}: unknown setting {key!r}{closest(key, list(fields))}")
        table = (key in NESTED and cls is RunConfig) or key == "method_options"
        if table != isinstance(value, dict):
            kind = "a table" if table else "a value, not a table"
            raise ConfigError(f"{where}: {key!r} must be {kind}")
        if key in NESTED and cls is RunConfig:
            settings[key] = _checked(value, NESTED[key], f"{where} [{key}]")
        elif key == "method_options":  # a method's option may be None (chunk_size=null)
            settings[key] = {k: _option(v) for k, v in value.items()}
        else:
            optional = type(None) in typing.get_args(hints[key])
            settings[key] = None if optional and value == NONE else _read(value)
    return settings


def _read(value: Any) -> Any:
    return tuple(_read(v) for v in value) if isinstance(value, list) else value


def _option(value: Any) -> Any:
    """A method option's value: ``"none"`` is None at any depth (the writer's null)."""
    if isinstance(value, dict):
        return {k: _option(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_option(v) for v in value)
    return None if value == NONE else value


def config_from_file(path: str | Path) -> RunConfig:
    """The :class:`RunConfig` of the TOML file ``path`` (defaults for what it leaves out)."""
    settings = read_settings(path)
    try:
        return RunConfig.from_dict(settings)
    except (ConfigError, TypeError) as e:  # the file names the setting, not a flag
        raise ConfigError(f"{path}: {e}") from e


def to_toml(config: RunConfig) -> str:
    """``config`` as a TOML file that :func:`config_from_file` reads back equal."""
    head = "# eidetic-func run --config <this file> reruns this run exactly\n"
    lines = [head]
    lines += _table(config, exclude=(*NESTED, "method_options"))
    options = config.method_options
    if options:
        lines += ["", "[method_options]"]
        lines += [f"{_string(str(k))} = {_toml(v)}" for k, v in options.items()]
    for name in NESTED:
        lines += ["", f"[{name}]", *_table(getattr(config, name), exclude=("name",))]
    return "\n".join(lines) + "\n"


def _table(obj: Any, *, exclude: tuple[str, ...]) -> list[str]:
    lines = []
    for field in dataclasses.fields(obj):
        if field.name in exclude:
            continue
        value = getattr(obj, field.name)
        if value is None and field.default is None:
            continue  # left out: its default
        lines.append(f"{field.name} = {_toml(value)}")
    return lines


def _toml(value: Any) -> str:
    if value is None:  # only where a reader turns it back (Optional fields, method options)
        return _string(NONE)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # the shortest text that reads back to the same float
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, types.MappingProxyType | dict):
        return "{" + ", ".join(f"{_string(str(k))} = {_toml(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"a configuration file cannot hold {value!r} ({type(value).__name__})")


def _string(text: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, for the control characters too
    (U+007F, which JSON leaves alone, included); everything else as itself, in UTF-8."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def write_config(config: RunConfig, directory: Path) -> Path:
    """Write ``config`` as ``directory/config.toml``; return its path."""
    path = directory / CONFIG_FILE
    path.write_text(to_toml(config), encoding="utf-8")
    return path


__all__ = ["CONFIG_FILE", "config_from_file", "read_settings", "to_toml", "write_config"]
