"""Checkpoints: a whole run in one safetensors file, written atomically, verified on load.

A checkpoint holds the full :class:`EideticState`, optionally an optimizer's
``state_dict()``, a method's ``extra`` state (any tree of dicts, lists, tuples, tensors and
JSON scalars), a ``history``, the RNG states and free-form ``meta``.

File format (``format = "eidetic_func.io.checkpoint"``, ``format_version = 2``): a sealed
safetensors container (:mod:`eidetic_func.io.container`: ``format`` and ``sha256`` in its
header metadata), readable by any safetensors tool, whose metadata also holds
``manifest``: JSON with ``format``, ``format_version``, ``writer`` (library versions),
``tensors`` (``{key: {"dtype", "shape"}}`` for every tensor in the file), ``state``
(``task``, ``finished``, ``growth`` — ``[[unit, neurons], ...]``, added in version 2 —
and the trees of ``params``/``buffers``/``owner``/``keep``),
``optimizer`` (class, per-group parameter shapes, the ``state_dict`` tree or ``null``),
``extra``, ``history``, ``meta`` and ``rng`` (trees or ``null``). Trees are encoded by
:mod:`eidetic_func.io.tree_codec`; a tensor in a tree names its safetensors entry.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import random
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from eidetic_func.core import validate
from eidetic_func.core.errors import CheckpointError
from eidetic_func.core.state import EideticState, Growth, declared_topology, with_topology
from eidetic_func.io.container import read_tensors, read_verified, tensor_table, write_sealed
from eidetic_func.io.fit import check_model, load_optimizer
from eidetic_func.io.listing import listed
from eidetic_func.io.state_checks import STATE_FIELDS, state_problems
from eidetic_func.io.tree_codec import TreeEncoder, decode_tree
from eidetic_func.nn.acceptance import check_network

FORMAT = "eidetic_func.io.checkpoint"
FORMAT_VERSION = 2
# Versions this module reads. A newer version must keep the header and checksum scheme,
# so that "corrupt" and "written by a newer eidetic_func" stay distinguishable.
SUPPORTED_VERSIONS = frozenset({1, 2})  # version 1: no growth


@dataclasses.dataclass(frozen=True, eq=False)
class Checkpoint:
    """What :func:`load` read. Every tensor lives on ``map_location`` and owns its memory.

    ``extra``, ``history`` and ``meta`` are what was saved (``None`` if nothing was);
    ``optimizer_state`` is the optimizer's ``state_dict()`` or ``None``; ``rng`` holds the
    RNG states (``"torch"``, ``"python"``, and ``"cuda"`` / ``"numpy"`` when they were
    captured) or ``None`` when saved with ``rng=False``.
    """

    state: EideticState
    extra: Any
    history: Any
    meta: Any
    rng: dict[str, Any] | None
    optimizer_state: dict[str, Any] | None
    format_version: int = FORMAT_VERSION
    source: Path | None = None  # the file it was read from
    optimizer_class: dict[str, Any] | None = None  # the optimizer's class and parameter shapes

    def fit(
        self, *, model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None
    ) -> None:
        """Check the saved state against ``model`` and load ``optimizer`` (see :func:`load`)."""
        where = self.source or Path("<checkpoint>")
        if model is not None:
            check_model(where, model, self.state)
        if optimizer is not None:
            load_optimizer(where, optimizer, self.optimizer_class, self.optimizer_state)

    def restore_rng(self) -> None:
        """Set the torch CPU, CUDA (devices present), Python and NumPy RNGs as saved."""
        if self.rng is None:
            raise CheckpointError("this checkpoint was saved without RNG states (rng=False)")
        try:
            torch.set_rng_state(self.rng["torch"].cpu())
            if "cuda" in self.rng and torch.cuda.is_available():
                for device, cuda_state in enumerate(self.rng["cuda"][: torch.cuda.device_count()]):
                    torch.cuda.set_rng_state(cuda_state.cpu(), device)
            random.setstate(self.rng["python"])
            if "numpy" in self.rng:
                import numpy as np

                name, keys, pos, has_gauss, cached = self.rng["numpy"]
                np.random.set_state(
                    (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
                )
        except (ImportError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"the saved RNG states cannot be restored: {e}") from e


def save(
    path: str | os.PathLike[str],
    state: EideticState,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    extra: Any = None,
    history: Any = None,
    rng: bool = True,
    meta: Any = None,
) -> Path:
    """Write a checkpoint to ``path`` atomically; return ``path``.

    The file is written to a hidden temporary file in the same directory, flushed and
    fsynced, then renamed over ``path`` (and the directory fsynced): readers and crashes
    see either the previous checkpoint or the complete new one, never a mix. Only a hard
    crash (power loss, ``kill -9``) can leave a stray ``.<name>.<random>.tmp`` behind.
    ``extra``, ``history`` and ``meta`` may hold dicts, lists, tuples, tensors, ``str``,
    ``int``, ``float``, ``bool`` and ``None``; anything else raises :class:`CheckpointError`
    before a byte is written. Tensors are stored exactly (every dtype incl. ``bool`` and
    ``int16``), detached, from any device. Filesystem errors propagate as ``OSError``.
    """
    path = Path(path)
    if not isinstance(state, EideticState):
        raise CheckpointError(f"state must be an EideticState, got {type(state).__name__}")
    # the topology is not stored: it belongs to the model (re-attach it with with_topology)
    unknown = {f.name for f in dataclasses.fields(state)} - {
        *STATE_FIELDS,
        "task",
        "finished",
        "topology",
        "growth",
    }
    if unknown:  # a field added to EideticState must be added to the format too
        raise CheckpointError(
            f"this checkpoint format does not store state fields {sorted(unknown)}"
        )
    problems = state_problems(state)
    if problems:
        raise CheckpointError("refusing to save an inconsistent state: " + "; ".join(problems))
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; a checkpoint is a single file")

    encoder = TreeEncoder()
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "writer": _writer(),
        "tensors": {},
        "state": {
            "task": state.task,
            "finished": list(state.finished),
            "growth": [[g.unit, g.neurons] for g in state.growth],
            **{f: encoder.encode(getattr(state, f), ("state", f)) for f in STATE_FIELDS},
        },
        "optimizer": None if optimizer is None else _encode_optimizer(optimizer, encoder),
        "extra": encoder.encode(extra, ("extra",)),
        "history": encoder.encode(history, ("history",)),
        "meta": encoder.encode(meta, ("meta",)),
        "rng": encoder.encode(_capture_rng(), ("rng",)) if rng else None,
    }
    manifest["tensors"] = tensor_table(encoder.tensors)
    try:
        text = json.dumps(manifest, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:  # unreachable for encoded trees; kept as a guard
        raise CheckpointError(f"cannot encode the manifest: {e}") from e
    write_sealed(path, encoder.tensors, {"format": FORMAT, "manifest": text})
    return path


def load(
    path: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    map_location: str | torch.device = "cpu",
    example_input: Tensor | None = None,
) -> Checkpoint:
    """Read and verify a checkpoint; optionally check it against ``model`` and load ``optimizer``.

    With ``model`` and ``example_input`` (one batch), the network must also pass
    :func:`eidetic_func.check_network`, as in :func:`eidetic_func.init`.

    Raises :class:`CheckpointError` (never a raw ``KeyError``, JSON or safetensors error)
    when the file is missing, foreign, truncated or corrupt (checksum), written by an
    unsupported format version, lacks a recorded tensor or has it with another dtype or
    shape; when ``model``'s ``named_parameters()`` / ``named_buffers()`` (ignoring
    ``*.frozen_channels``) differ from the state's in names, shapes or dtypes (the message
    lists each difference); or when ``optimizer`` is of another class or its parameter
    groups differ in count or shapes. The optimizer gets its own copy of the saved state,
    so training never changes ``Checkpoint.optimizer_state``.
    """
    path = Path(path)
    if sys.byteorder != "little":
        raise CheckpointError("reading checkpoints needs a little-endian host")
    location = validate.device(map_location, "map_location", allow_meta=True)
    header, data = read_verified(path, FORMAT)
    manifest = _manifest(path, header)
    tensors = read_tensors(path, header, manifest["tensors"], data, location)
    del data
    try:
        checkpoint = _decode_checkpoint(manifest, tensors)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError) as e:
        raise CheckpointError(f"{path}: malformed manifest ({type(e).__name__}: {e})") from e
    problems = state_problems(checkpoint.state)
    if problems:
        raise CheckpointError(f"{path}: the saved state is inconsistent: " + "; ".join(problems))
    checkpoint = dataclasses.replace(checkpoint, source=path)
    checkpoint.fit(model=model, optimizer=optimizer)
    topology = None if model is None else declared_topology(model)
    if model is not None and example_input is not None:
        check_network(model, example_input)
    if topology is not None:  # the topology belongs to the model; it is not stored
        checkpoint = dataclasses.replace(
            checkpoint, state=with_topology(checkpoint.state, topology)
        )
    return checkpoint


# ----------------------------------------------------------------------------- writing


def _writer() -> dict[str, str]:
    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    return {
        "eidetic_func": version("eidetic-func"),
        "torch": torch.__version__,
        "safetensors": version("safetensors"),
    }


def _encode_optimizer(optimizer: torch.optim.Optimizer, encoder: TreeEncoder) -> dict[str, Any]:
    cls = type(optimizer)
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "param_shapes": [[list(p.shape) for p in g["params"]] for g in optimizer.param_groups],
        "state_dict": encoder.encode(optimizer.state_dict(), ("optimizer",)),
    }


def _capture_rng() -> dict[str, Any]:
    """The default generators' states: torch CPU, CUDA (if initialized), Python, NumPy."""
    rng: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    # An uninitialized CUDA has drawn nothing yet; querying it would initialize it.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = list(torch.cuda.get_rng_state_all())
    try:
        import numpy as np
    except ImportError:  # numpy is optional here: no numpy, no numpy RNG to save
        return rng
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    rng["numpy"] = (str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(cached))
    return rng


# ----------------------------------------------------------------------------- reading


def _manifest(path: Path, header: dict[str, Any]) -> dict[str, Any]:
    try:
        manifest = json.loads(header["__metadata__"]["manifest"])
        version = manifest["format_version"]
    except (KeyError, TypeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: malformed manifest ({type(e).__name__}: {e})") from e
    if type(version) is not int or version not in SUPPORTED_VERSIONS:
        newer = type(version) is int and version > max(SUPPORTED_VERSIONS)
        raise CheckpointError(
            f"{path} has format_version {version!r}; this eidetic_func reads versions "
            f"{sorted(SUPPORTED_VERSIONS)}"
            + (" (it was written by a newer release)" if newer else "")
        )
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("tensors"), dict):
        raise CheckpointError(f"{path}: malformed manifest (format or tensors table)")
    return manifest


def _decode_checkpoint(manifest: dict[str, Any], tensors: Mapping[str, Tensor]) -> Checkpoint:
    used: set[str] = set()
    saved = manifest["state"]
    fields: dict[str, dict[str, Tensor]] = {}
    for name in STATE_FIELDS:
        value = decode_tree(saved[name], tensors, used)
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items()
        ):
            raise CheckpointError(f"state.{name} is not a dict of tensors")
        fields[name] = value
    task, finished, growth = saved["task"], saved["finished"], saved.get("growth", [])
    if type(task) is not int or not all(type(t) is int for t in finished):
        raise CheckpointError(f"bad task {task!r} or finished tasks {finished!r}")
    if not isinstance(growth, list) or not all(
        isinstance(g, list) and len(g) == 2 and type(g[0]) is str and type(g[1]) is int
        for g in growth
    ):
        raise CheckpointError(f"bad growth record {growth!r}")
    state = EideticState(
        params=fields["params"],
        buffers=fields["buffers"],
        owner=fields["owner"],
        keep=fields["keep"],
        task=task,
        finished=tuple(finished),
        growth=tuple(Growth(unit, neurons) for unit, neurons in growth),
    )

    optimizer_state = None
    if manifest["optimizer"] is not None:
        saved_optimizer = manifest["optimizer"]
        optimizer_state = decode_tree(saved_optimizer["state_dict"], tensors, used)
        if not (
            isinstance(saved_optimizer["class"], str)
            and _valid_shapes(saved_optimizer["param_shapes"])
            and _valid_optimizer_state(optimizer_state)
        ):
            raise CheckpointError("the optimizer state is not an optimizer state_dict")
    rng = decode_tree(manifest["rng"], tensors, used)
    if rng is not None and not _valid_rng(rng):
        raise CheckpointError("the saved RNG states are malformed")
    checkpoint = Checkpoint(
        state=state,
        extra=decode_tree(manifest["extra"], tensors, used),
        history=decode_tree(manifest["history"], tensors, used),
        meta=decode_tree(manifest["meta"], tensors, used),
        rng=rng,
        optimizer_state=optimizer_state,
        format_version=manifest["format_version"],
        optimizer_class=None
        if manifest["optimizer"] is None
        else {k: v for k, v in manifest["optimizer"].items() if k != "state_dict"},
    )
    if used != tensors.keys():
        raise CheckpointError(f"unreferenced tensors {listed(sorted(tensors.keys() - used))}")
    return checkpoint


def _valid_shapes(groups: Any) -> bool:
    return isinstance(groups, list) and all(
        isinstance(g, list)
        and all(isinstance(s, list) and all(type(d) is int for d in s) for s in g)
        for g in groups
    )


def _valid_optimizer_state(state_dict: Any) -> bool:
    return (
        isinstance(state_dict, dict)
        and set(state_dict) == {"state", "param_groups"}
        and isinstance(state_dict["state"], dict)
        and all(isinstance(s, dict) for s in state_dict["state"].values())
        and isinstance(state_dict["param_groups"], list)
        and all(isinstance(g, dict) for g in state_dict["param_groups"])
    )


def _valid_rng(rng: Any) -> bool:
    if not isinstance(rng, dict):
        return False
    cpu, python = rng.get("torch"), rng.get("python")
    ok = isinstance(cpu, Tensor) and cpu.dtype == torch.uint8 and cpu.dim() == 1
    ok = ok and isinstance(python, tuple) and len(python) == 3 and isinstance(python[1], tuple)
    cuda = rng.get("cuda", [])
    ok = ok and isinstance(cuda, list) and all(isinstance(s, Tensor) for s in cuda)
    numpy_state = rng.get("numpy", ("MT19937", [], 0, 0, 0.0))
    return ok and isinstance(numpy_state, tuple) and len(numpy_state) == 5
