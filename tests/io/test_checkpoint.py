"""Checkpoints: exact round trips, resumable training, atomic writes, corruption refused."""

from __future__ import annotations

import copy
import json
import os
import random
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from eidetic_func.models import MLP
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open
from strategies import prune_rows
from torch import Tensor

import eidetic_func as ef
from eidetic_func.io import checkpoint as ck


def _model(width: int = 6, num_layers: int = 2, bn: bool = True, seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(8, [3, 3], num_layers=num_layers, width=width, bn=bn)


def _batches(n: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(n)
    ]


def _train(
    model: MLP, state: ef.EideticState, opt: torch.optim.Optimizer, batches: list[Any]
) -> ef.EideticState:
    for batch in batches:
        state, _ = ef.train_step(model, state, batch, optimizer=opt, task=state.task)
    return state


_TRAINED: dict[str, tuple[MLP, ef.EideticState, torch.optim.Optimizer]] = {}


def _trained(
    opt_cls: type[torch.optim.Optimizer] = torch.optim.AdamW, **opt_kwargs: Any
) -> tuple[MLP, ef.EideticState, torch.optim.Optimizer]:
    """Task 0 trained, two neurons pruned, finished without forward transfer; task 1 trained.

    Built once per optimizer; each call returns a deep copy (model and optimizer copied
    together, so the optimizer still holds the copied model's parameters).
    """
    key = f"{opt_cls.__name__}{sorted(opt_kwargs.items())}"
    if key not in _TRAINED:
        _TRAINED[key] = _train_from_scratch(opt_cls, opt_kwargs)
    return copy.deepcopy(_TRAINED[key])


def _train_from_scratch(
    opt_cls: type[torch.optim.Optimizer], opt_kwargs: dict[str, Any]
) -> tuple[MLP, ef.EideticState, torch.optim.Optimizer]:
    model = _model()
    topology = model.topology()
    opt = opt_cls(model.parameters(), **(opt_kwargs or {"lr": 1e-2, "weight_decay": 0.1}))
    state = _train(model, ef.init(model), opt, _batches(4, seed=1))
    state = prune_rows(state, topology, "blocks.0.linear.weight", [1, 4])
    state = ef.finish_task(state, task=0, forward_transfer=False)
    state = _train(model, state, opt, _batches(3, seed=2))
    return model, state, opt


def _bits(t: Tensor) -> Tensor:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def _assert_same(a: Any, b: Any, where: str = "root") -> None:
    """Same types, same dict key order, bit-identical tensors and floats (NaN, -0.0)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, Tensor):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), where
        assert torch.equal(_bits(a), _bits(b)), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}/{i}")
    elif isinstance(a, float):
        assert repr(a) == repr(b), where
    else:
        assert a == b, where


def _assert_same_state(a: ef.EideticState, b: ef.EideticState) -> None:
    for field in ("params", "buffers", "owner", "keep"):
        _assert_same(getattr(a, field), getattr(b, field), field)
    assert (a.task, a.finished) == (b.task, b.finished)
    assert isinstance(b.finished, tuple)


def _extra(state: ef.EideticState) -> dict[str, Any]:
    big = torch.arange(12.0).reshape(3, 4)
    return {
        "fisher": {k: torch.rand_like(v) for k, v in state.params.items()},
        "anchors": state.params,  # the very tensors of the state: shared memory
        "buffer": {
            "x": torch.randn(5, 8),
            "y": torch.randint(0, 3, (5,)),
            "empty": torch.empty(0, 8),
        },
        "views": (big.t(), big[1:], big, big[:, 1]),  # strided and overlapping views
        "dtypes": [
            torch.ones(2, dtype=d)
            for d in (
                torch.bfloat16,
                torch.float16,
                torch.float64,
                torch.int8,
                torch.uint8,
                torch.int16,
                torch.int32,
                torch.int64,
                torch.bool,
                torch.complex64,
            )
        ],
        "grad": torch.ones(3, requires_grad=True) * 2,
        "keys": {1: torch.ones(1), "1": torch.zeros(1), "$odd": None, 2.5: "float key"},
        "scalars": [0, -1, 2**62, 1.5, -0.0, float("inf"), float("nan"), True, None, "s", ""],
        "special": torch.tensor([float("nan"), -0.0, float("-inf")]),
        "scalar": torch.tensor(3.5),
    }


HISTORY = [
    {"epoch": 0, "loss": 0.5, "acc": (0.9, 0.8)},
    {"epoch": 1, "loss": float("nan"), "pruned": [0.1, 0.2]},
]
META = {"config": {"lr": 1e-2, "width": 6, "tasks": [0, 1]}, "run": "abc"}


def test_round_trip_is_exact(tmp_path: Path) -> None:
    model, state, opt = _trained()
    extra = _extra(state)
    saved_opt = copy.deepcopy(opt.state_dict())
    path = ef.save(
        tmp_path / "run.ckpt", state, optimizer=opt, extra=extra, history=HISTORY, meta=META
    )
    assert path == tmp_path / "run.ckpt"
    loaded = ef.load(path, model=model)
    assert any(not k.all() for k in state.keep.values())  # a real mask, not all True
    assert state.owner["heads.0.weight"].eq(0).all() and state.owner["heads.1.weight"].eq(-1).all()
    _assert_same_state(state, loaded.state)
    assert loaded.state.owner["heads.0.weight"].dtype == torch.int16
    _assert_same(extra, loaded.extra)
    _assert_same(HISTORY, loaded.history)
    _assert_same(META, loaded.meta)
    _assert_same(saved_opt, loaded.optimizer_state)
    assert loaded.format_version == ck.FORMAT_VERSION


def test_loaded_tensors_own_their_memory(tmp_path: Path) -> None:
    _, state, _ = _trained()
    path = ef.save(tmp_path / "c", state, extra={"a": state.params})
    loaded = ef.load(path)
    leaves = [*ef.tree_leaves(loaded.state), *loaded.extra["a"].values()]
    pointers = [t.data_ptr() for t in leaves if t.numel()]
    assert len(set(pointers)) == len(pointers)  # nothing aliases anything else
    before = {k: v.clone() for k, v in loaded.state.params.items()}
    path.write_bytes(b"\0" * path.stat().st_size)  # in place: an mmap would see this
    _assert_same(before, loaded.state.params)


def test_the_file_is_standard_safetensors_with_a_readable_manifest(tmp_path: Path) -> None:
    _, state, opt = _trained()
    path = ef.save(tmp_path / "c.safetensors", state, optimizer=opt, meta=META)
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
        assert torch.equal(
            f.get_tensor("state/owner/blocks.0.linear.weight"),
            state.owner["blocks.0.linear.weight"],
        )
    assert set(metadata) == {"format", "manifest", "sha256"}
    manifest = json.loads(metadata["manifest"])
    assert (manifest["format"], manifest["format_version"]) == (ck.FORMAT, ck.FORMAT_VERSION)
    assert manifest["state"]["task"] == 1 and manifest["state"]["finished"] == [0]
    assert manifest["tensors"]["state/keep/heads.1.weight"] == {"dtype": "bool", "shape": [3, 6]}
    assert manifest["optimizer"]["class"] == "torch.optim.adamw.AdamW"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize(
    ("opt_cls", "kwargs"),
    [
        (torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.1}),
        (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    ],
)
def test_training_resumes_bit_identically(
    tmp_path: Path, opt_cls: type[torch.optim.Optimizer], kwargs: dict[str, Any]
) -> None:
    model, state, opt = _trained(opt_cls, **kwargs)
    path = ef.save(tmp_path / "c", state, optimizer=opt)
    saved_opt = copy.deepcopy(opt.state_dict())
    more = _batches(5, seed=3)
    straight = _train(model, state, opt, more)

    fresh = _model(seed=123)  # other initial weights: everything must come from the file
    fresh_opt = opt_cls(fresh.parameters(), **kwargs)
    loaded = ef.load(path, model=fresh, optimizer=fresh_opt)
    resumed = _train(fresh, loaded.state, fresh_opt, more)

    _assert_same_state(straight, resumed)
    _assert_same(opt.state_dict(), fresh_opt.state_dict())
    _assert_same(saved_opt, loaded.optimizer_state)  # the optimizer trained on its own copy


def test_rng_states_round_trip(tmp_path: Path) -> None:
    _, state, _ = _trained()
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    random.gauss(0, 1)  # leaves a cached Gaussian in both generators' states
    np.random.standard_normal()
    path = ef.save(tmp_path / "c", state)
    expected = (torch.rand(4), random.gauss(0, 1), np.random.standard_normal(3))
    torch.rand(9), random.random(), np.random.rand(5)  # move every generator on
    ef.load(path).restore_rng()
    assert torch.equal(torch.rand(4), expected[0])
    assert random.gauss(0, 1) == expected[1]
    assert np.array_equal(np.random.standard_normal(3), expected[2])


def test_without_rng_there_is_nothing_to_restore(tmp_path: Path) -> None:
    _, state, _ = _trained()
    loaded = ef.load(ef.save(tmp_path / "c", state, rng=False))
    assert loaded.rng is None
    with pytest.raises(ef.CheckpointError, match="rng=False"):
        loaded.restore_rng()


def test_everything_returned_lives_on_map_location(tmp_path: Path) -> None:
    model, state, opt = _trained()
    path = ef.save(tmp_path / "c", state, optimizer=opt, extra=_extra(state))
    loaded = ef.load(path, model=model, map_location="meta")
    leaves = [
        *ef.tree_leaves(loaded.state),
        *ef.tree_leaves(loaded.extra),
        *ef.tree_leaves(loaded.optimizer_state),
        *ef.tree_leaves(loaded.rng),
    ]
    tensors = [t for t in leaves if isinstance(t, Tensor)]
    assert len(tensors) > 50
    assert all(t.device.type == "meta" for t in tensors)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_round_trip_and_load_onto_cuda(tmp_path: Path) -> None:
    _, state, _ = _trained()
    on_gpu = ef.tree_map(lambda t: t.cuda(), state)
    torch.cuda.manual_seed_all(3)
    torch.rand(2, device="cuda")  # initializes CUDA: its RNG state is saved too
    path = ef.save(tmp_path / "c", on_gpu, extra={"x": torch.randn(3, device="cuda")})
    loaded = ef.load(path, map_location="cuda")
    assert all(t.is_cuda for t in ef.tree_leaves(loaded.state))
    _assert_same_state(state, loaded.state)
    assert loaded.rng is not None and len(loaded.rng["cuda"]) == torch.cuda.device_count()
    expected = torch.rand(3, device="cuda")
    loaded.restore_rng()
    assert torch.equal(torch.rand(3, device="cuda"), expected)


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
    _, state, opt = _trained()
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
    _, state, _ = _trained()
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
    _, state, _ = _trained()
    path = tmp_path / "nested" / "dir" / "c.safetensors"
    ef.save(path, state, meta={"version": 1})
    ef.save(path, state, meta={"version": 2})
    assert ef.load(path).meta == {"version": 2}
    assert os.listdir(path.parent) == ["c.safetensors"]


def test_unstorable_values_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    _, state, _ = _trained()
    with pytest.raises(ef.CheckpointError, match=r"cannot store a set at extra/buffer/ids"):
        ef.save(tmp_path / "c", state, extra={"buffer": {"ids": {1, 2}}})
    with pytest.raises(ef.CheckpointError, match=r"int64 at history/0"):
        ef.save(tmp_path / "c", state, history=[np.int64(3)])
    with pytest.raises(ef.CheckpointError, match="keep and params differ"):
        ef.save(tmp_path / "c", state.replace(keep={}))
    with pytest.raises(ef.CheckpointError, match="is a directory"):
        ef.save(tmp_path, state)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- corruption


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    _, state, opt = _trained()
    directory = tmp_path_factory.mktemp("valid")
    path = ef.save(directory / "c", state, optimizer=opt, extra=_extra(state), history=HISTORY)
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


def test_an_unknown_format_version_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, state, _ = _trained()
    monkeypatch.setattr(ck, "FORMAT_VERSION", 99)
    path = ef.save(tmp_path / "c", state)
    monkeypatch.undo()
    with pytest.raises(ef.CheckpointError, match=r"format_version 99.*newer release"):
        ef.load(path)


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


# ----------------------------------------------------------------------------- fitting


def test_a_model_of_another_width_is_refused_naming_key_and_shapes(tmp_path: Path) -> None:
    _, state, _ = _trained()
    path = ef.save(tmp_path / "c", state)
    with pytest.raises(ef.CheckpointError) as info:
        ef.load(path, model=_model(width=7))
    message = str(info.value)
    assert (
        "params['blocks.0.linear.weight']: checkpoint float32 (6, 8), model float32 (7, 8)"
        in message
    )
    assert (
        "buffers['blocks.0.norm.running_mean']: checkpoint float32 (6,), model float32 (7,)"
        in message
    )


def test_a_model_with_other_layers_is_refused_listing_missing_and_unexpected_keys(
    tmp_path: Path,
) -> None:
    _, state, _ = _trained()
    path = ef.save(tmp_path / "c", state)
    with pytest.raises(ef.CheckpointError, match=r"lacks the model's \['blocks\.2\.linear\.weight"):
        ef.load(path, model=_model(num_layers=3))
    with pytest.raises(ef.CheckpointError, match=r"has \['blocks\.0\.norm\.bias"):
        ef.load(path, model=_model(bn=False))


def test_an_optimizer_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    model, state, opt = _trained()
    path = ef.save(tmp_path / "c", state, optimizer=opt)
    with pytest.raises(ef.CheckpointError, match=r"holds torch\.optim\.adamw\.AdamW state"):
        ef.load(path, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    params = list(model.parameters())
    split = torch.optim.AdamW([{"params": params[:2]}, {"params": params[2:]}])
    with pytest.raises(ef.CheckpointError, match="1 parameter groups, this one 2"):
        ef.load(path, optimizer=split)
    wider = _model(width=7)
    with pytest.raises(
        ef.CheckpointError,
        match=r"parameter 0: checkpoint shape \(6, 8\), optimizer shape \(7, 8\)",
    ):
        ef.load(path, optimizer=torch.optim.AdamW(wider.parameters()))
    without = ef.save(tmp_path / "d", state)
    with pytest.raises(ef.CheckpointError, match="no optimizer state"):
        ef.load(without, optimizer=opt)


# --------------------------------------------------------------------------- meaning


def _forged(path: Path, state: ef.EideticState, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``state`` written as a valid, sealed checkpoint despite what it means (anyone can
    recompute a checksum): the save-side meaning check is patched away for the write."""
    with monkeypatch.context() as patch:
        patch.setattr(ck, "_meaning_problems", lambda _: [])
        return ef.save(path, state)


def _owner_edit(state: ef.EideticState, key: str, value: int) -> ef.EideticState:
    owner = dict(state.owner)
    owner[key] = owner[key].clone()
    owner[key][0] = value
    return state.replace(owner=owner)


@pytest.mark.parametrize(
    ("forge", "message"),
    [
        (
            lambda s: _owner_edit(s, "blocks.0.linear.weight", 7),
            r"names tasks \[7\] that are neither",
        ),
        (lambda s: _owner_edit(s, "blocks.0.linear.weight", -5), r"names tasks \[-5\]"),
        (lambda s: s.replace(finished=(0, 1)), r"tasks \[1\] are finished but own nothing"),
        (lambda s: s.replace(finished=(1, 0)), "finished sorted once"),
        (lambda s: s.replace(finished=()), r"names tasks \[0\] that are neither"),
    ],
    ids=["unknown-owner", "negative-owner", "finished-owns-nothing", "unsorted", "not-finished"],
)
def test_a_checkpoint_whose_state_means_nothing_is_refused_on_load_and_on_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forge: Any, message: str
) -> None:
    _, state, _ = _trained()
    forged = forge(state)
    with pytest.raises(ef.CheckpointError, match=message):
        ef.save(tmp_path / "refused.safetensors", forged)
    path = _forged(tmp_path / "forged.safetensors", forged, monkeypatch)
    with pytest.raises(ef.CheckpointError, match=message):
        ef.load(path)
    ef.load(ef.save(tmp_path / "honest.safetensors", state))  # the honest state loads


def test_a_free_pruned_entry_holding_a_value_is_refused_on_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, state, _ = _trained()
    key = next(k for k in state.params if bool(((state.owner[k] == -1) & state.keep[k]).any()))
    keep, params = dict(state.keep), dict(state.params)
    entry = ((state.owner[key] == -1) & state.keep[key]).nonzero()[0].tolist()
    keep[key] = keep[key].clone()
    keep[key][tuple(entry)] = False  # pruned for this task, yet its value stays
    params[key] = params[key].clone()
    params[key][tuple(entry)] = 0.5
    path = _forged(
        tmp_path / "forged.safetensors", state.replace(keep=keep, params=params), monkeypatch
    )
    with pytest.raises(ef.CheckpointError, match=rf"params\['{re.escape(key)}'\] holds values"):
        ef.load(path)


def test_a_state_in_the_middle_of_a_revisit_saves_and_loads(tmp_path: Path) -> None:
    """``ef.revisit`` makes a finished task unfinished again while it owns its neurons: a
    checkpoint written then (a ``--cycles`` run) has a meaning, and loads."""
    _, state, _ = _trained()
    state = ef.finish_task(state)  # tasks 0 and 1 finished
    revisited = ef.revisit(state, task=0)
    assert 0 not in revisited.finished and revisited.task == 0
    loaded = ef.load(ef.save(tmp_path / "revisit.safetensors", revisited)).state
    assert loaded.finished == revisited.finished and loaded.task == 0
