"""Where a run is, in memory (:class:`RunRecord`) and on disk (:class:`RunCheckpoint`).

:class:`RunRecord` is what :func:`eidetic_func.runner.loop.fold` folds over the visits.
:class:`RunCheckpoint` is what a run's checkpoint file holds: the record, the config, the
number of processes and the positions of the run's generators and loaders. It is written
and read through :mod:`eidetic_func.io.checkpoint` (``to_tree``/``from_tree`` give its
``state``, ``history``, ``meta`` and ``extra``); the optimizer's state and the global RNG
states travel beside it in the same file. The layout of ``meta`` and ``extra`` is the one
every run has written, so older run checkpoints stay readable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from eidetic_func.core.errors import CheckpointError, EideticError
from eidetic_func.core.state import EideticState
from eidetic_func.core.types import Record
from eidetic_func.io.checkpoint import Checkpoint, load, save
from eidetic_func.methods.registry import decode_state, encode_state
from eidetic_func.runner.config import RunConfig
from eidetic_func.training.loop import TaskProgress

CHECKPOINT_FILE = "checkpoint.safetensors"


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """Where a run is: what the run folds over the visits. Immutable."""

    state: EideticState
    mstate: Any = None
    visit: int = 0
    progress: TaskProgress | None = None  # mid-visit: where the visit's task is
    matrix: tuple[tuple[float, ...], ...] = ()
    after_finish: dict[int, tuple[float, ...]] = dataclasses.field(default_factory=dict)
    history: tuple[Record, ...] = ()
    router: dict[str, float] | None = None
    seconds: float = 0.0

    def replace(self, **changes: Any) -> RunRecord:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Where a run's sampling is: the states of its data generators (one per task, and
    the router's) and of its core generator (pruning, recycling), and the epoch of every
    task's training loader (a data-parallel shard's order depends on it)."""

    data: tuple[Tensor, ...]
    core: Tensor
    epochs: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class RunCheckpoint:
    """A run's checkpoint, typed: what :func:`write` saves and :func:`read` gives back."""

    config: RunConfig
    world_size: int  # the number of processes that trained (the data shards depend on it)
    record: RunRecord
    sampling: Sampling

    def to_tree(self) -> dict[str, Any]:
        """The ``state``, ``history``, ``meta`` and ``extra`` of :func:`eidetic_func.io.checkpoint.save`."""
        r = self.record
        return {
            "state": r.state,
            "history": list(r.history),
            "meta": {
                "config": self.config.to_dict(),
                "world_size": self.world_size,
                "visit": r.visit,
                "progress": None if r.progress is None else r.progress.to_dict(),
                "matrix": [list(row) for row in r.matrix],
                "after_finish": {str(k): list(v) for k, v in r.after_finish.items()},
                "router": r.router,
                "seconds": r.seconds,
            },
            "extra": {
                "data": list(self.sampling.data),
                "core": self.sampling.core,
                "epochs": list(self.sampling.epochs),
                "method": encode_state(r.mstate),
            },
        }

    @classmethod
    def from_tree(cls, tree: Mapping[str, Any], *, device: str | None = None) -> RunCheckpoint:
        """The inverse of :meth:`to_tree`; :class:`CheckpointError` naming the first part that
        is missing or of the wrong kind (a foreign or tampered record). ``device`` replaces
        the saved one (a CUDA run may be resumed on another machine)."""
        meta, extra = tree.get("meta"), tree.get("extra")
        if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
            raise CheckpointError(
                "it is not the checkpoint of a run (it has no run configuration; a state "
                "saved with ef.save is loaded with ef.load)"
            )
        if not isinstance(extra, dict):
            raise CheckpointError("the run record has no generator states ('extra')")
        try:
            return cls(
                config=_config(meta["config"], device),
                world_size=_int(meta.get("world_size", 1), "world_size"),
                record=_record(tree, meta, extra),
                sampling=_sampling(extra),
            )
        except KeyError as e:
            raise CheckpointError(f"the run record lacks {e.args[0]!r}") from None


def write(path: Path, checkpoint: RunCheckpoint, optimizer: torch.optim.Optimizer) -> None:
    """Save ``checkpoint`` and ``optimizer``'s state to ``path`` (atomically)."""
    save(path, optimizer=optimizer, **checkpoint.to_tree())


def read(path: Path, *, device: str | None = None) -> tuple[RunCheckpoint, Checkpoint]:
    """The run checkpointed at ``path`` and the file's contents (optimizer and RNG states),
    read and verified once; :class:`CheckpointError` if the file holds no run."""
    checkpoint = load(path)
    tree = {
        "state": checkpoint.state,
        "history": checkpoint.history,
        "meta": checkpoint.meta,
        "extra": checkpoint.extra,
    }
    try:
        return RunCheckpoint.from_tree(tree, device=device), checkpoint
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}: nothing to resume") from None


def _config(saved: dict[str, Any], device: str | None) -> RunConfig:
    values = dict(saved) if device is None else {**saved, "device": device}
    try:
        return RunConfig.from_dict(values)
    except (TypeError, ValueError, EideticError) as e:
        raise CheckpointError(f"the saved run configuration is not valid here: {e}") from e


def _record(tree: Mapping[str, Any], meta: dict[str, Any], extra: dict[str, Any]) -> RunRecord:
    progress, router, history = meta["progress"], meta["router"], tree["history"]
    if progress is not None and not isinstance(progress, dict):
        raise CheckpointError(f"the run record's progress is {progress!r}, not a dict")
    if router is not None and not _floats_by_name(router):
        raise CheckpointError(f"the run record's router is {router!r}, not accuracies by name")
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise CheckpointError("the run record's history is not a list of records")
    after = meta["after_finish"]
    if not isinstance(after, dict) or not all(k.isdigit() for k in after):
        raise CheckpointError(f"the run record's after_finish is {after!r}, not rows by task")
    try:
        mstate = decode_state(extra.get("method"))
        task = None if progress is None else TaskProgress.from_dict(progress)
    except (TypeError, ValueError, EideticError) as e:
        raise CheckpointError(f"the run record's method or task state is not valid: {e}") from e
    return RunRecord(
        state=tree["state"],
        mstate=mstate,
        visit=_int(meta["visit"], "visit"),
        progress=task,
        matrix=tuple(_row(r, "matrix") for r in _list(meta["matrix"], "matrix")),
        after_finish={int(k): _row(v, "after_finish") for k, v in after.items()},
        history=tuple(history),
        router=router,
        seconds=float(_number(meta["seconds"], "seconds")),
    )


def _sampling(extra: dict[str, Any]) -> Sampling:
    data, core, epochs = extra["data"], extra["core"], extra["epochs"]
    if not all(isinstance(s, Tensor) for s in (*_list(data, "data"), core)):
        raise CheckpointError("the run record's generator states are not tensors")
    return Sampling(
        data=tuple(data),
        core=core,
        epochs=tuple(_int(e, "epochs") for e in _list(epochs, "epochs")),
    )


def _int(value: Any, name: str) -> int:
    if type(value) is not int or value < 0:
        raise CheckpointError(f"the run record's {name} is {value!r}, not a count")
    return value


def _number(value: Any, name: str) -> float:
    if type(value) not in (int, float):
        raise CheckpointError(f"the run record's {name} is {value!r}, not a number")
    return float(value)


def _list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise CheckpointError(f"the run record's {name} is {value!r}, not a list")
    return value


def _row(value: Any, name: str) -> tuple[float, ...]:
    return tuple(_number(v, name) for v in _list(value, name))


def _floats_by_name(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and type(v) in (int, float) for k, v in value.items()
    )
