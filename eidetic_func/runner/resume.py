"""Continuing a saved run: where a run starts, and everything about reading a saved one.

:func:`start` is the one path by which :func:`eidetic_func.run` and the ``eidetic-func``
command (``--resume``) begin a run, once its output directory is held: a fresh run takes
its config; a resumed one reads the checkpoint (once), takes the saved config with the
:data:`OPERATIONAL` settings the caller changes (refusing any other change), and
:func:`restore` puts the network, optimizer, generators and loaders where they were.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eidetic_func.core.errors import CheckpointError, ConfigError
from eidetic_func.core.state import with_topology
from eidetic_func.io.checkpoint import Checkpoint
from eidetic_func.ops.growth import regrow
from eidetic_func.runner import record as run_record
from eidetic_func.runner.config import NESTED, RunConfig
from eidetic_func.runner.record import CHECKPOINT_FILE, RunCheckpoint, RunRecord
from eidetic_func.runner.setup import RunSetup

# settings a resumed run may change: they do not change what it computes
OPERATIONAL = ("progress", "device", "checkpoint_every", "dist_timeout", "threads")

Given = RunConfig | Mapping[str, Any] | None
"""What a caller asks of a run: a whole config; or, resuming, nothing (the saved config)
or the settings it changes (``{"device": "cuda", "train": {"max_epochs": 3}}``; ``eidetic``
like ``train``)."""


@dataclasses.dataclass(frozen=True)
class SavedRun:
    """A run's checkpoint, read and verified once: the typed record and the file's
    contents (the optimizer's state, the RNG states)."""

    saved: RunCheckpoint
    checkpoint: Checkpoint

    @property
    def config(self) -> RunConfig:
        return self.saved.config

    @property
    def world_size(self) -> int:
        return self.saved.world_size


@dataclasses.dataclass(frozen=True)
class Start:
    """How a run begins: the config it runs, and the saved run it continues (or none)."""

    config: RunConfig
    saved: SavedRun | None
    path: Path | None  # the run's checkpoint file (None: no output directory)


def start(given: Given, output_dir: str | Path | None, *, resume: bool) -> Start:
    """The config and saved run of a run in ``output_dir`` (held by the caller)."""
    path = None if output_dir is None else Path(output_dir) / CHECKPOINT_FILE
    if not resume:
        if not isinstance(given, RunConfig):
            raise ConfigError("config is required unless resuming (resume=True)")
        return Start(given, None, path)
    if path is None:
        raise CheckpointError("nothing to resume: no output directory was given")
    saved = saved_run(path, device=_device(given))
    return Start(resumed_config(given, saved.config, path), saved, path)


def saved_run(path: Path, *, device: str | None = None) -> SavedRun:
    """The run checkpointed at ``path``, read and verified; CheckpointError if there is
    none, or the file holds something else (a state saved with ``ef.save``).

    ``device`` replaces the saved device (a CUDA run may be resumed on another machine)."""
    try:
        path.stat()
    except FileNotFoundError:
        raise CheckpointError(f"nothing to resume: {path} does not exist") from None
    except OSError as e:
        raise CheckpointError(f"nothing to resume: cannot read {path}: {e.strerror}") from e
    return SavedRun(*run_record.read(path, device=device))


def resumed_config(given: Given, saved: RunConfig, path: Path) -> RunConfig:
    """The saved config, with the operational settings ``given`` changes; CheckpointError
    listing every other setting it changes."""
    asked = _merged(given, saved)
    conflicts = config_conflicts(asked, saved)
    if conflicts:
        raise CheckpointError(
            f"the run in {path.parent} was started with other settings; resume it "
            "without them (or start a new run elsewhere):\n  " + "\n  ".join(conflicts)
        )
    return dataclasses.replace(saved, **{k: getattr(asked, k) for k in OPERATIONAL})


def config_conflicts(given: RunConfig, saved: RunConfig) -> list[str]:
    """``"field: given X, saved Y"`` for every setting (``train.*``, ``eidetic.*`` too) that differs,
    except the operational ones a resumed run may change."""
    a, b = _flat(given.to_dict()), _flat(saved.to_dict())
    return [
        f"{k}: given {a.get(k)!r}, saved {b.get(k)!r}"
        for k in sorted(a.keys() | b.keys())
        if k not in OPERATIONAL and a.get(k) != b.get(k)
    ]


def check_world_size(saved: SavedRun, world_size: int) -> None:
    """A run resumes with the number of processes that checkpointed it (the data shards
    depend on it)."""
    if world_size != saved.world_size:
        raise CheckpointError(
            f"the run in {saved.checkpoint.source} was checkpointed by {saved.world_size} "
            f"process(es); resume it with {saved.world_size}, not {world_size} (the data "
            "shards differ)"
        )


def restore(setup: RunSetup, saved: SavedRun) -> tuple[RunSetup, RunRecord]:
    """The record ``saved`` holds; the network regrown, the optimizer, RNGs, generators and
    loaders set as saved."""
    ckpt, record = saved.checkpoint, saved.saved.record
    if record.state.growth:
        model, topology = regrow(setup.model, record.state.growth, topology=setup.topology)
        setup = setup.with_network(model, topology)
    ckpt.fit(model=setup.model, optimizer=setup.optimizer)
    ckpt.restore_rng()
    setup.set_sampling(saved.saved.sampling)
    if setup.topology is not None:
        record = record.replace(state=with_topology(record.state, setup.topology))
    total = len(setup.schedule)
    if record.visit < total:
        setup.log(f"resuming at visit {record.visit + 1}/{total}")
    elif setup.router and record.router is None:
        setup.log(f"resuming: all {total} visits done, training the task router")
    else:
        setup.log(f"the run is complete ({total}/{total} visits): nothing to train")
    return setup, record


def _device(given: Given) -> str | None:
    if isinstance(given, RunConfig):
        return given.device
    return None if given is None else given.get("device")


def _merged(given: Given, saved: RunConfig) -> RunConfig:
    """What ``given`` asks: itself, the saved config, or the saved one with its changes."""
    if isinstance(given, RunConfig):
        return given
    if given is None:
        return saved
    changes = {k: v for k, v in given.items() if k not in NESTED}
    nested = {k: dataclasses.replace(getattr(saved, k), **given.get(k, {})) for k in NESTED}
    return dataclasses.replace(saved, **changes, **nested)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k in NESTED:
            out.update(_flat(v, f"{k}."))
        else:
            out[prefix + k] = list(v) if isinstance(v, tuple) else v
    return out
