"""The sealed container: atomic writes; truncated, corrupt and foreign files refused."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor
from trained_checkpoints import (
    HISTORY,
    extra_tree,
    trained,
)

import eidetic_func as ef
from eidetic_func.io import checkpoint as ck

# ---------------------------------------------------------------------------- atomicity


def _fail(*args: Any, **kwargs: Any) -> None:
    raise OSError("no space left on device (simulated)")


def _write_half_then_fail(tensors: dict[str, Tensor], filename: Any, metadata: Any = None) -> None:
    data = safetensors.torch.save(tensors, metadata=metadata)
    Path(filename).write_bytes(data[: len(data) // 2])
    _fail()


@pytest.mark.parametrize("failure", ["write", "fsync", "replace"])
def test_a_failed_save_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    _, state, opt = trained()
    path = ef.save(tmp_path / "c", state, meta={"version": "old"})
    before = path.read_bytes()
    if failure == "write":
        monkeypatch.setattr(safetensors.torch, "save_file", _write_half_then_fail)
    else:
        monkeypatch.setattr(os, failure, _fail)
    with pytest.raises(OSError, match="simulated"):
        ef.save(path, state.replace(task=5), optimizer=opt, meta={"version": "new"})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert ef.load(path).meta == {"version": "old"}
    assert os.listdir(tmp_path) == ["c"]  # the temporary file is gone


class _Crash(BaseException):
    """The process dying (power loss, ``kill -9``)."""


def _crash(*args: Any, **kwargs: Any) -> None:
    raise _Crash


def test_a_hard_crash_before_the_rename_leaves_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, state, _ = trained()
    path = ef.save(tmp_path / "c", state, meta={"version": "old"})
    before = path.read_bytes()
    # A real crash runs no cleanup: the process dies at the worst moment, right before
    # the rename, with the new file complete beside the old one.
    monkeypatch.setattr(os, "replace", _crash)
    monkeypatch.setattr(os, "unlink", lambda *a, **k: None)
    with pytest.raises(_Crash):
        ef.save(path, state.replace(task=5), meta={"version": "new"})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert ef.load(path).meta == {"version": "old"}
    (stray,) = (p for p in tmp_path.iterdir() if p != path)
    assert stray.name.startswith(".c.") and stray.name.endswith(".tmp")
    assert ef.load(stray).meta == {"version": "new"}  # complete and sealed before the rename


def test_saving_over_a_checkpoint_replaces_it_and_leaves_nothing_else(tmp_path: Path) -> None:
    _, state, _ = trained()
    path = tmp_path / "nested" / "dir" / "c.safetensors"
    ef.save(path, state, meta={"version": 1})
    ef.save(path, state, meta={"version": 2})
    assert ef.load(path).meta == {"version": 2}
    assert os.listdir(path.parent) == ["c.safetensors"]


# --------------------------------------------------------------------------- corruption


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    _, state, opt = trained()
    directory = tmp_path_factory.mktemp("valid")
    path = ef.save(directory / "c", state, optimizer=opt, extra=extra_tree(state), history=HISTORY)
    return path.read_bytes()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scratch") / "c"


def _load_bytes(scratch: Path, data: bytes) -> ef.Checkpoint:
    scratch.write_bytes(data)
    return ef.load(scratch)


def _flip(data: bytes, position: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[position] ^= mask
    return bytes(out)


def _header_end(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


def test_the_valid_bytes_load(valid: bytes, scratch: Path) -> None:
    assert _load_bytes(scratch, valid).state.task == 1


def test_truncated_files_are_refused(valid: bytes, scratch: Path) -> None:
    end = _header_end(valid)
    cases = {
        0: "only 0 bytes",
        5: "only 5 bytes",
        8: "header length field",
        end // 2: "header length field",
        end + 3: "truncated or has extra bytes",
        len(valid) - 1: "truncated or has extra bytes",
    }
    for length, message in cases.items():
        with pytest.raises(ef.CheckpointError, match=message):
            _load_bytes(scratch, valid[:length])


def test_extra_bytes_are_refused(valid: bytes, scratch: Path) -> None:
    with pytest.raises(ef.CheckpointError, match="truncated or has extra bytes"):
        _load_bytes(scratch, valid + b"\0")


def test_flipped_bytes_fail_the_checksum(valid: bytes, scratch: Path) -> None:
    in_data = len(valid) - 100
    in_manifest = valid.index(b"format_version")
    in_digest = valid.index(b'"sha256":"') + len('"sha256":"') + 3
    for position in (in_data, in_manifest, in_digest):
        with pytest.raises(ef.CheckpointError, match="checksum mismatch"):
            _load_bytes(scratch, _flip(valid, position))


def test_every_single_byte_flip_in_a_sweep_is_refused(valid: bytes, scratch: Path) -> None:
    positions = {*range(16), *range(0, len(valid), max(1, len(valid) // 250)), len(valid) - 1}
    for position in sorted(positions):
        with pytest.raises(ef.CheckpointError):
            _load_bytes(scratch, _flip(valid, position, 0x80))


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    cases: dict[str, tuple[bytes, str]] = {
        "random": (bytes(random.Random(0).randbytes(4096)), "not an eidetic_func checkpoint"),
        "json": (json.dumps({"format": ck.FORMAT, "a": [1, 2]}).encode(), "not an eidetic"),
        "safetensors": (safetensors.torch.save({"w": torch.ones(3)}), "format metadata is None"),
        "short-json-header": (
            (2).to_bytes(8, "little") + b"[]",
            "format metadata is None",
        ),
        "bad-utf8-header": ((2).to_bytes(8, "little") + b"\xff\xfe", "not valid JSON"),
    }
    torch.save({"w": torch.ones(3)}, tmp_path / "torch.pt")
    cases["torch.save"] = ((tmp_path / "torch.pt").read_bytes(), "not an eidetic_func checkpoint")
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ef.CheckpointError, match=message):
            ef.load(tmp_path / name)
    with pytest.raises(ef.CheckpointError, match="no checkpoint at"):
        ef.load(tmp_path / "missing")
    with pytest.raises(ef.CheckpointError, match="not a file"):
        ef.load(tmp_path)


@given(
    corruption=st.one_of(
        st.lists(
            st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
            min_size=1,
            max_size=4,
            unique_by=lambda f: f[0],
        ),
        st.floats(0, 1, exclude_max=True).map(lambda keep: ("truncate", keep)),
        st.binary(min_size=1, max_size=16).map(lambda tail: ("append", tail)),
    )
)
def test_random_corruption_always_raises_checkpoint_error(
    valid: bytes, scratch: Path, corruption: Any
) -> None:
    if isinstance(corruption, list):  # flips at relative positions, so any file size works
        data = bytearray(valid)
        positions = {int(where * len(valid)): mask for where, mask in corruption}
        for position, mask in positions.items():
            data[position] ^= mask
        corrupted = bytes(data)
    elif corruption[0] == "truncate":
        corrupted = valid[: int(corruption[1] * len(valid))]
    else:
        corrupted = valid + corruption[1]
    with pytest.raises(ef.CheckpointError):
        _load_bytes(scratch, corrupted)
