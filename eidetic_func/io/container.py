"""The sealed safetensors container: one standard safetensors file, written atomically,
its whole content covered by a SHA-256 stored in its own header.

The header metadata holds ``format`` (the format name, so a foreign file is told apart
before anything else) and ``sha256``: the SHA-256 of the whole file computed with these
64 hex digits set to ``"0"``, so any changed, missing or added byte is detected. Reading
checks the checksum and the safetensors layout rules (every byte of the data section
belongs to exactly one tensor), and each tensor against a table of dtypes and shapes
recorded by the writer (:func:`tensor_table`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from eidetic_func.core.errors import CheckpointError
from eidetic_func.io.listing import listed

CHECKSUM_KEY = "sha256"
_PLACEHOLDER = "0" * 64

# safetensors dtype names -> torch dtypes (optional ones depend on the torch version).
DTYPES: dict[str, torch.dtype] = {
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
STORABLE = frozenset(DTYPES.values())


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def tensor_table(tensors: dict[str, Tensor]) -> dict[str, dict[str, Any]]:
    """``{key: {"dtype", "shape"}}`` of ``tensors``: what :func:`read_tensors` checks against."""
    return {k: {"dtype": dtype_name(t.dtype), "shape": list(t.shape)} for k, t in tensors.items()}


# ------------------------------------------------------------------------------ writing


def write_sealed(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Write ``tensors`` and ``metadata`` (plus the checksum) to ``path`` atomically.

    Written to a temp file beside ``path``, sealed (checksum filled in), fsynced, then
    renamed over ``path`` and the directory fsynced. Filesystem errors raise ``OSError``.
    """
    metadata = {**metadata, CHECKSUM_KEY: _PLACEHOLDER}
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
    return json.dumps({CHECKSUM_KEY: digest}, separators=(",", ":"))[1:-1].encode()


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


def read_verified(path: Path, format_name: str) -> tuple[dict[str, Any], bytearray]:
    """The parsed safetensors header and the data section, after the checks that the file's
    ``format`` metadata is ``format_name`` and that its checksum matches.

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
            header = _parse_header(path, raw, format_name)
            data = bytearray(size - 8 - n)
            got = f.readinto(data)
            if got != len(data) or f.read(1):
                raise CheckpointError(f"{path} changed while it was read")
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e

    metadata = header["__metadata__"]
    digest = metadata.get(CHECKSUM_KEY)
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


def _parse_header(path: Path, raw: bytes, format_name: str) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CheckpointError(
            f"{path} is not an eidetic_func checkpoint or its header is corrupt (not valid JSON)"
        ) from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    found = metadata.get("format") if isinstance(metadata, dict) else None
    if found != format_name:
        raise CheckpointError(
            f"{path} is not an eidetic_func checkpoint (or its header is corrupt): format "
            f"metadata is {found!r}, expected {format_name!r}"
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


def read_tensors(
    path: Path,
    header: dict[str, Any],
    recorded: dict[str, Any],
    data: bytearray,
    device: torch.device,
) -> dict[str, Tensor]:
    """Every tensor of the file on ``device``, each owning its memory, checked against the
    safetensors layout rules and against ``recorded`` (a :func:`tensor_table`)."""
    present = {k for k in header if k != "__metadata__"}
    if present != recorded.keys():
        missing, unexpected = sorted(recorded.keys() - present), sorted(present - recorded.keys())
        raise CheckpointError(
            f"{path}: tensors missing from the file {listed(missing)}, unexpected "
            f"{listed(unexpected)}"
        )
    spans: list[tuple[int, int, str]] = []
    out: dict[str, Tensor] = {}
    for key in sorted(present):
        entry, want = header[key], recorded[key]
        try:
            dtype = DTYPES[entry["dtype"]]
            shape = [int(s) for s in entry["shape"]]
            begin, end = (int(o) for o in entry["data_offsets"])
            ok = isinstance(want, dict) and want.get("dtype") == dtype_name(dtype)
            ok = ok and want.get("shape") == shape and all(s >= 0 for s in shape)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise CheckpointError(f"{path}: malformed header entry for tensor {key!r}") from None
        if not ok:
            raise CheckpointError(
                f"{path}: tensor {key!r} is stored as {dtype_name(dtype)} {tuple(shape)}, the "
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
