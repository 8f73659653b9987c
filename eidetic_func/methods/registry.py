"""Methods by name: EideticNet and the baselines, alone or chained (``"ewc+er"``), with
their hyperparameters (what ``--method`` / ``--method-option`` pick), and method states in
the form a checkpoint holds. The top of the package: the shell (``run``, the CLI) names
methods here; the core and the baselines never import it."""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
from collections.abc import Sequence
from typing import Any

from eidetic_func.core.errors import ConfigError
from eidetic_func.methods.chain import chain
from eidetic_func.methods.dgr import DGR
from eidetic_func.methods.eidetic import EideticNet
from eidetic_func.methods.ewc import EWC, OnlineEWC
from eidetic_func.methods.finetune import FineTune
from eidetic_func.methods.gem import AGEM, GEM
from eidetic_func.methods.joint import Joint
from eidetic_func.methods.lwf import LwF
from eidetic_func.methods.mas import MAS
from eidetic_func.methods.oml import OML
from eidetic_func.methods.packnet import PackNet
from eidetic_func.methods.progressive import Progressive
from eidetic_func.methods.protocol import Method
from eidetic_func.methods.replay import DER, DERPP, ER
from eidetic_func.methods.si import SI

METHODS: dict[str, type] = {
    cls.name: cls
    for cls in (
        EideticNet,
        FineTune,
        Joint,
        EWC,
        OnlineEWC,
        SI,
        MAS,
        LwF,
        ER,
        DER,
        DERPP,
        AGEM,
        GEM,
        DGR,
        OML,
        PackNet,
        Progressive,
    )
}


def create(name: str, *, seed: int = 0, bases: Sequence[Any] = (), **options: Any) -> Method:
    """The method ``name`` with ``options`` as hyperparameters; ``seed`` reaches its sampling.

    ``name`` may chain methods, ``"ewc+er"`` (:func:`eidetic_func.methods.chain.chain`); an option
    then goes to the member that has it, or to one named ``"member.option"``. ``bases``:
    instances to start from (a run's ``EideticNet`` settings); a member named as one of
    them is that instance with its options replaced.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"method must be a name, got {name!r}")
    by_name = {getattr(b, "name", None): b for b in bases}
    names = re.split(r"\+(?=[^+])", name)  # a + before a name joins; der++ keeps its own
    if len(names) == 1:
        return _create(name, seed=seed, options=options, base=by_name.get(name))
    per_member: dict[str, dict[str, Any]] = {n: {} for n in names}
    for key, value in options.items():
        member, dot, option = key.rpartition(".")
        if dot:
            if member not in per_member:
                raise ConfigError(f"option {key!r} names {member!r}, not a method of {name!r}")
            per_member[member][option] = value
            continue
        owners = [n for n in names if key in _options(n)]
        if not owners:
            raise ConfigError(f"option {key!r} fits no method of {name!r}")
        if len(owners) > 1:
            raise ConfigError(f"{owners} all have option {key!r}: write {owners[0]}.{key}")
        per_member[owners[0]][key] = value
    return chain(
        *(_create(n, seed=seed, options=per_member[n], base=by_name.get(n)) for n in names)
    )


def _options(name: str) -> set[str]:
    if name not in METHODS:
        raise ConfigError(
            f"method must be one of {sorted(METHODS)}, or a chain of them like ewc+er; got {name!r}"
        )
    return {f.name for f in dataclasses.fields(METHODS[name])} - {"name"}


def _create(name: str, *, seed: int, options: dict[str, Any], base: Any = None) -> Method:
    fields = _options(name)
    unknown = set(options) - fields
    if unknown:
        raise ConfigError(
            f"{name} has no option {sorted(unknown)}; its options are {sorted(fields) or 'none'}"
        )
    if "seed" in fields:
        options = {"seed": seed, **options}
    cls: Any = METHODS[name]
    if base is not None and type(base) is not cls:
        raise ConfigError(f"the base of {name} must be a {cls.__name__}, got {base!r}")
    try:
        if base is None:
            method: Method = cls(**options)
        else:
            method = dataclasses.replace(base, **options)
    except TypeError as err:
        raise ConfigError(f"bad options for {name}: {err}") from None
    return method


def parse_option(text: str) -> tuple[str, Any]:
    """``"key=value"`` → ``(key, value)``; the value is read as JSON when it can be."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"method options look like key=value, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def encode_state(value: Any) -> Any:
    """A method state as nested dicts, lists and tensors (what a checkpoint can hold)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        return {
            "$dataclass": f"{cls.__module__}:{cls.__qualname__}",
            **{f.name: encode_state(getattr(value, f.name)) for f in dataclasses.fields(value)},
        }
    if isinstance(value, dict):
        return {k: encode_state(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(encode_state(v) for v in value)
    return value


def decode_state(value: Any) -> Any:
    """The inverse of :func:`encode_state`; only eidetic_func's own classes are rebuilt."""
    if isinstance(value, dict) and "$dataclass" in value:
        module, _, qualname = value["$dataclass"].partition(":")
        if not module.startswith("eidetic_func."):
            raise ConfigError(f"refusing to rebuild {value['$dataclass']!r} from a checkpoint")
        cls: Any = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        return cls(**{k: decode_state(v) for k, v in value.items() if k != "$dataclass"})
    if isinstance(value, dict):
        return {k: decode_state(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(decode_state(v) for v in value)
    return value
