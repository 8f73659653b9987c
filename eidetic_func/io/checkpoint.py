"""Checkpoints: a whole run in one safetensors file, written atomically, verified on load.

A checkpoint holds the full :class:`EideticState`, optionally an optimizer's
``state_dict()``, a method's ``extra`` state (any tree of dicts, lists, tuples, tensors and
JSON scalars), a ``history``, the RNG states and free-form ``meta``.

File format (``format = "eidetic_func.io.checkpoint"``, ``format_version = 2``): one standard
safetensors file, readable by any safetensors tool. Its header metadata holds three strings:

- ``format``: the format name, so a foreign file is told apart before anything else;
- ``manifest``: JSON with ``format``, ``format_version``, ``writer`` (library versions),
  ``tensors`` (``{key: {"dtype", "shape"}}`` for every tensor in the file), ``state``
  (``task``, ``finished``, ``growth`` — ``[[unit, neurons], ...]``, added in version 2 —
  and the trees of ``params``/``buffers``/``owner``/``keep``),
  ``optimizer`` (class, per-group parameter shapes, the ``state_dict`` tree or ``null``),
  ``extra``, ``history``, ``meta`` and ``rng`` (trees or ``null``);
- ``sha256``: the SHA-256 of the whole file computed with these 64 hex digits set to
  ``"0"``, so any changed, missing or added byte is detected.

Trees are JSON in which a tensor is ``{"$tensor": key}`` (``key`` names it in the
safetensors file, e.g. ``state/params/blocks.0.linear.weight``), a tuple is
``{"$tuple": [...]}``, a dict with non-string keys (optimizer state is keyed by ``int``)
is ``{"$dict": [[key, value], ...]}`` and a non-finite float is ``{"$float": "nan"}``,
so every value comes back with its type (tuples stay tuples, ``int`` keys stay ``int``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import importlib.metadata
import json
import math
import os
import random
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from eidetic_func.core import validate
from eidetic_func.core.errors import CheckpointError
from eidetic_func.core.state import (
    FREE,
    OWNER_DTYPE,
    EideticState,
    Growth,
    declared_topology,
    with_topology,
)
from eidetic_func.nn.acceptance import check_network

FORMAT = "eidetic_func.io.checkpoint"
FORMAT_VERSION = 2
# Versions this module reads. A newer version must keep the header and checksum scheme,
# so that "corrupt" and "written by a newer eidetic_func" stay distinguishable.
SUPPORTED_VERSIONS = frozenset({1, 2})  # version 1: no growth

_CHECKSUM_KEY = "sha256"
_PLACEHOLDER = "0" * 64
_STATE_FIELDS = ("params", "buffers", "owner", "keep")
_TENSOR, _TUPLE, _DICT, _FLOAT = "$tensor", "$tuple", "$dict", "$float"
_MAX_LISTED = 10  # differences listed in one error message

# safetensors dtype names -> torch dtypes (optional ones depend on the torch version).
_DTYPES: dict[str, torch.dtype] = {
    name: dtype
    for name, dtype in {
        "F64": torch.float64,
        "F32": torch.float32,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "I64": torch.int64,
        "I32": torch.int32,
        "I16": torch.int16,
        "I8": torch.int8,
        "U8": torch.uint8,
        "BOOL": torch.bool,
        "C64": torch.complex64,
        "U64": getattr(torch, "uint64", None),
        "U32": getattr(torch, "uint32", None),
        "U16": getattr(torch, "uint16", None),
        "F8_E4M3": getattr(torch, "float8_e4m3fn", None),
        "F8_E5M2": getattr(torch, "float8_e5m2", None),
    }.items()
    if dtype is not None
}
_STORABLE = frozenset(_DTYPES.values())


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
            _check_model(where, model, self.state)
        if optimizer is not None:
            _load_optimizer(where, optimizer, self.optimizer_class, self.optimizer_state)

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
        *_STATE_FIELDS,
        "task",
        "finished",
        "topology",
        "growth",
    }
    if unknown:  # a field added to EideticState must be added to the format too
        raise CheckpointError(
            f"this checkpoint format does not store state fields {sorted(unknown)}"
        )
    problems = _state_problems(state)
    if problems:
        raise CheckpointError("refusing to save an inconsistent state: " + "; ".join(problems))
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; a checkpoint is a single file")

    encoder = _Encoder()
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "writer": _writer(),
        "tensors": {},
        "state": {
            "task": state.task,
            "finished": list(state.finished),
            "growth": [[g.unit, g.neurons] for g in state.growth],
            **{f: encoder.encode(getattr(state, f), ("state", f)) for f in _STATE_FIELDS},
        },
        "optimizer": None if optimizer is None else _encode_optimizer(optimizer, encoder),
        "extra": encoder.encode(extra, ("extra",)),
        "history": encoder.encode(history, ("history",)),
        "meta": encoder.encode(meta, ("meta",)),
        "rng": encoder.encode(_capture_rng(), ("rng",)) if rng else None,
    }
    manifest["tensors"] = {
        k: {"dtype": _dtype_name(t.dtype), "shape": list(t.shape)}
        for k, t in encoder.tensors.items()
    }
    try:
        text = json.dumps(manifest, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:  # unreachable for encoded trees; kept as a guard
        raise CheckpointError(f"cannot encode the manifest: {e}") from e
    metadata = {"format": FORMAT, "manifest": text, _CHECKSUM_KEY: _PLACEHOLDER}
    _write_atomic(path, encoder.tensors, metadata)
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
    header, data = _read_verified(path)
    manifest = _manifest(path, header)
    tensors = _tensors(path, header, manifest, data, location)
    del data
    try:
        checkpoint = _decode_checkpoint(manifest, tensors)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError) as e:
        raise CheckpointError(f"{path}: malformed manifest ({type(e).__name__}: {e})") from e
    problems = _state_problems(checkpoint.state)
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


# ----------------------------------------------------------------------------- encoding


class _Encoder:
    """Turns a tree into JSON, collecting its tensors (contiguous, CPU, unshared) by key."""

    def __init__(self) -> None:
        self.tensors: dict[str, Tensor] = {}
        self._storages: set[int] = set()

    def encode(self, obj: Any, path: tuple[str, ...]) -> Any:
        if isinstance(obj, Tensor):
            return {_TENSOR: self._add(obj, path)}
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int):
            return int(obj)
        if isinstance(obj, float):
            return float(obj) if math.isfinite(obj) else {_FLOAT: repr(float(obj))}
        if isinstance(obj, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in obj):
                return {k: self.encode(v, (*path, k)) for k, v in obj.items()}
            return {
                _DICT: [
                    [self._key(k, path), self.encode(v, (*path, str(k)))] for k, v in obj.items()
                ]
            }
        if isinstance(obj, tuple):
            return {_TUPLE: [self.encode(v, (*path, str(i))) for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [self.encode(v, (*path, str(i))) for i, v in enumerate(obj)]
        raise CheckpointError(
            f"cannot store a {type(obj).__name__} at {'/'.join(path)}: checkpoints hold dicts, "
            "lists, tuples, tensors, str, int, float, bool and None"
        )

    def _key(self, key: Any, path: tuple[str, ...]) -> Any:
        if key is None or isinstance(key, (bool, str, int, float)):
            return self.encode(key, path)
        raise CheckpointError(
            f"cannot store a dict key of type {type(key).__name__} at {'/'.join(path)}"
        )

    def _add(self, tensor: Tensor, path: tuple[str, ...]) -> str:
        where = "/".join(path)
        if tensor.layout != torch.strided or tensor.is_quantized or tensor.is_nested:
            raise CheckpointError(
                f"cannot store the {tensor.layout} tensor at {where}: make it dense"
            )
        if tensor.dtype not in _STORABLE:
            raise CheckpointError(f"cannot store the {tensor.dtype} tensor at {where}")
        if tensor.device.type == "meta":
            raise CheckpointError(f"cannot store the tensor at {where}: it is on the meta device")
        key = "/".join(quote(part, safe="") for part in path)
        base, n = key, 0
        while key in self.tensors:  # e.g. {1: a, "1": b} in one dict
            n += 1
            key = f"{base}~{n}"
        t = tensor.detach().resolve_conj().resolve_neg()
        storage = t.untyped_storage().data_ptr()
        # safetensors refuses shared or strided memory: copy only what needs it.
        if (
            t.device.type != "cpu"
            or not t.is_contiguous()
            or t.numel() == 0
            or storage in self._storages
        ):
            t = t.to("cpu", memory_format=torch.contiguous_format, copy=True)
        if t.numel():
            self._storages.add(t.untyped_storage().data_ptr())
        self.tensors[key] = t
        return key


def _decode(obj: Any, tensors: Mapping[str, Tensor], used: set[str]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, used) for v in obj]
    if not isinstance(obj, dict):
        return obj
    tags = [k for k in obj if k.startswith("$")]
    if not tags:
        return {k: _decode(v, tensors, used) for k, v in obj.items()}
    if len(obj) != 1:
        raise CheckpointError(f"malformed manifest: tagged object with keys {sorted(obj)}")
    ((tag, value),) = obj.items()
    if tag == _TENSOR:
        if not isinstance(value, str) or value not in tensors:
            raise CheckpointError(f"malformed manifest: unknown tensor {value!r}")
        used.add(value)
        return tensors[value]
    if tag == _TUPLE and isinstance(value, list):
        return tuple(_decode(v, tensors, used) for v in value)
    if tag == _DICT and isinstance(value, list):
        return {_decode(k, tensors, used): _decode(v, tensors, used) for k, v in value}
    if tag == _FLOAT and value in ("nan", "inf", "-inf"):
        return float(value)
    raise CheckpointError(f"malformed manifest: bad {tag!r} value {value!r}")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


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


def _encode_optimizer(optimizer: torch.optim.Optimizer, encoder: _Encoder) -> dict[str, Any]:
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


# ------------------------------------------------------------------------------ writing


def _write_atomic(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Write to a temp file beside ``path``, seal it, fsync, rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: never clobber another writer's temp file; mode 0o666 honours the umask.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        mode = os.stat(tmp).st_mode & 0o777
        try:
            safetensors.torch.save_file(tensors, tmp, metadata=metadata)
        except safetensors.SafetensorError as e:  # e.g. a full disk, reported by the writer
            raise OSError(f"cannot write the checkpoint {path}: {e}") from e
        os.chmod(tmp, mode)  # safetensors recreates the file as 0o600
        _seal(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)  # makes the rename itself durable


def _checksum_field(digest: str) -> bytes:
    # serde_json (safetensors' writer) emits compact JSON. Inside the escaped manifest a
    # quote is always preceded by a backslash, so this pattern occurs exactly once.
    return json.dumps({_CHECKSUM_KEY: digest}, separators=(",", ":"))[1:-1].encode()


def _seal(tmp: Path) -> None:
    """Write the file's checksum into its placeholder and fsync the file."""
    with open(tmp, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = f.read(n)
        field = _checksum_field(_PLACEHOLDER)
        if header.count(field) != 1:
            raise CheckpointError("safetensors wrote an unexpected header; cannot seal the file")
        digest = hashlib.sha256(n.to_bytes(8, "little") + header)
        while chunk := f.read(1 << 20):
            digest.update(chunk)
        f.seek(8 + header.index(field))
        f.write(_checksum_field(digest.hexdigest()))
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    if os.name == "nt":  # Windows cannot open a directory to fsync it
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------ reading


def _read_verified(path: Path) -> tuple[dict[str, Any], bytearray]:
    """The parsed safetensors header and the data section, after the format and checksum checks.

    The file is read once into memory, so the bytes checked are the bytes decoded (no
    mmap that a later write to the file could change under the returned tensors).
    """
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file; a checkpoint is a single file")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(
                    f"{path} is truncated or not a checkpoint: only {size} bytes (a checkpoint "
                    "starts with an 8-byte header length)"
                )
            n = int.from_bytes(prefix, "little")
            if n == 0 or n > size - 8:
                raise CheckpointError(
                    f"{path} is not an eidetic_func checkpoint or is truncated: its header "
                    f"length field says {n} bytes, the file has {size - 8} after it"
                )
            raw = f.read(n)
            header = _parse_header(path, raw)
            data = bytearray(size - 8 - n)
            got = f.readinto(data)
            if got != len(data) or f.read(1):
                raise CheckpointError(f"{path} changed while it was read")
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e

    metadata = header["__metadata__"]
    digest = metadata.get(_CHECKSUM_KEY)
    if not isinstance(digest, str) or len(digest) != 64 or raw.count(_checksum_field(digest)) != 1:
        raise CheckpointError(f"{path} is corrupt: its checksum field is damaged")
    actual = hashlib.sha256(
        prefix + raw.replace(_checksum_field(digest), _checksum_field(_PLACEHOLDER))
    )
    actual.update(data)
    if not hmac.compare_digest(actual.hexdigest(), digest):
        expected_size = _expected_data_size(header)
        if expected_size is not None and expected_size != len(data):
            raise CheckpointError(
                f"{path} is truncated or has extra bytes: its header describes {expected_size} "
                f"bytes of tensor data, the file holds {len(data)} (checksum mismatch)"
            )
        raise CheckpointError(
            f"{path} is corrupt: checksum mismatch (sha256 {actual.hexdigest()[:12]}…, "
            f"recorded {digest[:12]}…)"
        )
    return header, data


def _parse_header(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CheckpointError(
            f"{path} is not an eidetic_func checkpoint or its header is corrupt (not valid JSON)"
        ) from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    found = metadata.get("format") if isinstance(metadata, dict) else None
    if found != FORMAT:
        raise CheckpointError(
            f"{path} is not an eidetic_func checkpoint (or its header is corrupt): format "
            f"metadata is {found!r}, expected {FORMAT!r}"
        )
    return header


def _expected_data_size(header: dict[str, Any]) -> int | None:
    try:
        return max(
            (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
            default=0,
        )
    except (KeyError, TypeError, ValueError, IndexError):
        return None


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


def _tensors(
    path: Path,
    header: dict[str, Any],
    manifest: dict[str, Any],
    data: bytearray,
    device: torch.device,
) -> dict[str, Tensor]:
    """Every tensor of the file on ``device``, checked against the safetensors layout rules
    and against the manifest's dtypes and shapes."""
    recorded: dict[str, Any] = manifest["tensors"]
    present = {k for k in header if k != "__metadata__"}
    if present != recorded.keys():
        missing, unexpected = sorted(recorded.keys() - present), sorted(present - recorded.keys())
        raise CheckpointError(
            f"{path}: tensors missing from the file {_listed(missing)}, unexpected "
            f"{_listed(unexpected)}"
        )
    spans: list[tuple[int, int, str]] = []
    out: dict[str, Tensor] = {}
    for key in sorted(present):
        entry, want = header[key], recorded[key]
        try:
            dtype = _DTYPES[entry["dtype"]]
            shape = [int(s) for s in entry["shape"]]
            begin, end = (int(o) for o in entry["data_offsets"])
            ok = isinstance(want, dict) and want.get("dtype") == _dtype_name(dtype)
            ok = ok and want.get("shape") == shape and all(s >= 0 for s in shape)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise CheckpointError(f"{path}: malformed header entry for tensor {key!r}") from None
        if not ok:
            raise CheckpointError(
                f"{path}: tensor {key!r} is stored as {_dtype_name(dtype)} {tuple(shape)}, the "
                f"manifest records {want!r}"
            )
        numel = math.prod(shape)
        itemsize = torch.empty((), dtype=dtype).element_size()
        if not 0 <= begin <= end <= len(data) or end - begin != numel * itemsize:
            raise CheckpointError(f"{path}: tensor {key!r} has bad data offsets {begin}, {end}")
        spans.append((begin, end, key))
        if numel == 0:
            out[key] = torch.empty(shape, dtype=dtype, device=device)
            continue
        # A misaligned offset (never written by safetensors) is read through a copy.
        source = data if begin % itemsize == 0 else bytearray(data[begin:end])
        offset = begin if source is data else 0
        view = torch.frombuffer(source, dtype=dtype, count=numel, offset=offset).reshape(shape)
        # copy=True: the returned tensors own their memory, independent of the file buffer.
        out[key] = view.to(device, copy=True)
    spans.sort()
    position = 0
    for begin, end, key in spans:
        if begin != position:
            raise CheckpointError(f"{path}: tensor {key!r} overlaps another or leaves a gap")
        position = end
    if position != len(data):
        raise CheckpointError(f"{path}: {len(data) - position} bytes after the last tensor")
    return out


def _decode_checkpoint(manifest: dict[str, Any], tensors: Mapping[str, Tensor]) -> Checkpoint:
    used: set[str] = set()
    saved = manifest["state"]
    fields: dict[str, dict[str, Tensor]] = {}
    for name in _STATE_FIELDS:
        value = _decode(saved[name], tensors, used)
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
        optimizer_state = _decode(saved_optimizer["state_dict"], tensors, used)
        if not (
            isinstance(saved_optimizer["class"], str)
            and _valid_shapes(saved_optimizer["param_shapes"])
            and _valid_optimizer_state(optimizer_state)
        ):
            raise CheckpointError("the optimizer state is not an optimizer state_dict")
    rng = _decode(manifest["rng"], tensors, used)
    if rng is not None and not _valid_rng(rng):
        raise CheckpointError("the saved RNG states are malformed")
    checkpoint = Checkpoint(
        state=state,
        extra=_decode(manifest["extra"], tensors, used),
        history=_decode(manifest["history"], tensors, used),
        meta=_decode(manifest["meta"], tensors, used),
        rng=rng,
        optimizer_state=optimizer_state,
        format_version=manifest["format_version"],
        optimizer_class=None
        if manifest["optimizer"] is None
        else {k: v for k, v in manifest["optimizer"].items() if k != "state_dict"},
    )
    if used != tensors.keys():
        raise CheckpointError(f"unreferenced tensors {_listed(sorted(tensors.keys() - used))}")
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


# --------------------------------------------------------------------------- validation


def _state_problems(state: EideticState) -> list[str]:
    """What makes ``state`` internally inconsistent (empty if nothing)."""
    problems: list[str] = []
    for name in _STATE_FIELDS:
        value = getattr(state, name)
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items()
        ):
            return [f"state.{name} must be a dict of str to Tensor"]
    if type(state.task) is not int or not all(type(t) is int for t in state.finished):
        problems.append(f"task {state.task!r} and finished {state.finished!r} must be ints")
    params, keep, owner = state.params, state.keep, state.owner
    if keep.keys() != params.keys():
        problems.append(f"keep and params differ in keys: {_key_diff(params, keep)}")
    if not params.keys() <= owner.keys() <= params.keys() | state.buffers.keys():
        problems.append(
            "owner must cover every parameter and only parameters and buffers: "
            + _key_diff(params, owner)
        )
    for k, v in keep.items():
        if v.dtype != torch.bool or (k in params and v.shape != params[k].shape):
            problems.append(f"keep[{k!r}] is {v.dtype} {tuple(v.shape)}; expected bool")
    for k, v in owner.items():
        target = params.get(k, state.buffers.get(k))
        if v.dtype != OWNER_DTYPE or (target is not None and v.shape != target.shape):
            problems.append(f"owner[{k!r}] is {v.dtype} {tuple(v.shape)}; expected {OWNER_DTYPE}")
    if problems:
        return problems[:_MAX_LISTED]
    return _meaning_problems(state)[:_MAX_LISTED]


def _meaning_problems(state: EideticState) -> list[str]:
    """What makes a well-formed ``state`` mean nothing a run could have produced: an owner
    id of a task that is neither finished nor in training (a revisit), or below ``FREE``;
    ``finished`` out of order or beside the owners; and free entries pruned for the current task that hold a value (a
    checksum proves only that nobody changed the file since it was written)."""
    problems: list[str] = []
    finished = list(state.finished)
    if state.task < 0 or finished != sorted(set(finished)) or any(t < 0 for t in finished):
        return [f"task {state.task} and finished {finished} must be ids ≥ 0, finished sorted once"]
    if any(v.is_meta for v in (*state.owner.values(), *state.params.values())):
        return problems  # no values to read (map_location="meta")
    owners: set[int] = set()
    # a revisited task (ef.revisit) is unfinished again while it still owns its neurons
    known = {FREE, *finished, state.task}
    for k, v in state.owner.items():
        ids = {int(i) for i in v.unique().tolist()}
        if not ids <= known:
            problems.append(
                f"owner[{k!r}] names tasks {sorted(ids - known)} that are neither finished "
                f"(finished: {finished}) nor the one in training ({state.task})"
            )
        owners |= ids - {FREE}
    if set(finished) - owners:
        problems.append(f"tasks {sorted(set(finished) - owners)} are finished but own nothing")
    for k, value in state.params.items():
        pruned = (state.owner[k] == FREE) & ~state.keep[k]
        if bool((value[pruned] != 0).any()):
            problems.append(f"params[{k!r}] holds values at free entries pruned for this task")
    return problems


def _key_diff(expected: Mapping[str, Any], got: Mapping[str, Any]) -> str:
    missing, extra = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
    return f"missing {_listed(missing)}, unexpected {_listed(extra)}"


def _listed(keys: list[str]) -> str:
    more = f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return f"{keys[:_MAX_LISTED]}{more}"


def _check_model(path: Path, model: nn.Module, state: EideticState) -> None:
    expected: dict[str, dict[str, Tensor]] = {
        "params": dict(model.named_parameters()),
        "buffers": {
            k: v
            for k, v in model.named_buffers()
            if k.rsplit(".", 1)[-1] != "frozen_channels"  # derived from owner, not state
        },
    }
    lines: list[str] = []
    for what, want in expected.items():
        got: dict[str, Tensor] = getattr(state, what)
        missing, unexpected = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
        if missing:
            lines.append(f"{what}: the checkpoint lacks the model's {_listed(missing)}")
        if unexpected:
            lines.append(f"{what}: the checkpoint has {_listed(unexpected)}, the model does not")
        for k in sorted(want.keys() & got.keys()):
            a, b = got[k], want[k]
            if a.shape != b.shape or a.dtype != b.dtype:
                lines.append(
                    f"{what}[{k!r}]: checkpoint {_dtype_name(a.dtype)} {tuple(a.shape)}, model "
                    f"{_dtype_name(b.dtype)} {tuple(b.shape)}"
                )
    if lines:
        shown = lines[:_MAX_LISTED] + (
            [f"... and {len(lines) - _MAX_LISTED} more"] if len(lines) > _MAX_LISTED else []
        )
        if state.growth:
            shown.append(
                f"the checkpoint's network was grown ({_growth_text(state.growth)}): load it "
                "without a model, then model, topology = ef.regrow(model, checkpoint.state.growth)"
            )
        raise CheckpointError(f"{path} does not fit the model:\n  " + "\n  ".join(shown))


def _growth_text(growth: tuple[Growth, ...]) -> str:
    return ", ".join(f"{g.unit} +{g.neurons}" for g in growth)


def _load_optimizer(
    path: Path,
    optimizer: torch.optim.Optimizer,
    saved: dict[str, Any] | None,
    state_dict: dict[str, Any] | None,
) -> None:
    if saved is None or state_dict is None:
        raise CheckpointError(f"{path} holds no optimizer state (saved without optimizer=)")
    cls = type(optimizer)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if saved["class"] != name:
        raise CheckpointError(f"{path} holds {saved['class']} state, the optimizer is a {name}")
    want = saved["param_shapes"]
    have = [[list(p.shape) for p in g["params"]] for g in optimizer.param_groups]
    if len(want) != len(have):
        raise CheckpointError(
            f"{path}: the checkpoint's optimizer has {len(want)} parameter groups, this one "
            f"{len(have)}"
        )
    for i, (w, h) in enumerate(zip(want, have)):
        if len(w) != len(h):
            raise CheckpointError(
                f"{path}: optimizer parameter group {i} has {len(w)} parameters in the "
                f"checkpoint, {len(h)} here"
            )
        for j, (a, b) in enumerate(zip(w, h)):
            if a != b:
                raise CheckpointError(
                    f"{path}: optimizer parameter group {i}, parameter {j}: checkpoint shape "
                    f"{tuple(a)}, optimizer shape {tuple(b)}"
                )
    # Optimizers keep the tensors they are given; a copy keeps the checkpoint unchanged.
    own = {
        "state": {
            k: {n: v.clone() if isinstance(v, Tensor) else v for n, v in s.items()}
            for k, s in state_dict["state"].items()
        },
        "param_groups": state_dict["param_groups"],
    }
    try:
        optimizer.load_state_dict(own)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: the optimizer refused the saved state: {e}") from e
