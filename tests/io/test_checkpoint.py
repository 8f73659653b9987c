"""Checkpoints: exact round trips, resumable training, RNG states, versions, refusals."""

from __future__ import annotations

import copy
import json
import os
import random
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import Tensor
from trained_checkpoints import (
    HISTORY,
    META,
    assert_same,
    assert_same_state,
    batches,
    extra_tree,
    small_mlp,
    train,
    trained,
)

import eidetic_func as ef
from eidetic_func.io import checkpoint as ck


def test_round_trip_is_exact(tmp_path: Path) -> None:
    model, state, opt = trained()
    extra = extra_tree(state)
    saved_opt = copy.deepcopy(opt.state_dict())
    path = ef.save(
        tmp_path / "run.ckpt", state, optimizer=opt, extra=extra, history=HISTORY, meta=META
    )
    assert path == tmp_path / "run.ckpt"
    loaded = ef.load(path, model=model)
    assert any(not k.all() for k in state.keep.values())  # a real mask, not all True
    assert state.owner["heads.0.weight"].eq(0).all() and state.owner["heads.1.weight"].eq(-1).all()
    assert_same_state(state, loaded.state)
    assert loaded.state.owner["heads.0.weight"].dtype == torch.int16
    assert_same(extra, loaded.extra)
    assert_same(HISTORY, loaded.history)
    assert_same(META, loaded.meta)
    assert_same(saved_opt, loaded.optimizer_state)
    assert loaded.format_version == ck.FORMAT_VERSION


def test_loaded_tensors_own_their_memory(tmp_path: Path) -> None:
    _, state, _ = trained()
    path = ef.save(tmp_path / "c", state, extra={"a": state.params})
    loaded = ef.load(path)
    leaves = [*ef.tree_leaves(loaded.state), *loaded.extra["a"].values()]
    pointers = [t.data_ptr() for t in leaves if t.numel()]
    assert len(set(pointers)) == len(pointers)  # nothing aliases anything else
    before = {k: v.clone() for k, v in loaded.state.params.items()}
    path.write_bytes(b"\0" * path.stat().st_size)  # in place: an mmap would see this
    assert_same(before, loaded.state.params)


def test_the_file_is_standard_safetensors_with_a_readable_manifest(tmp_path: Path) -> None:
    _, state, opt = trained()
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
    model, state, opt = trained(opt_cls, **kwargs)
    path = ef.save(tmp_path / "c", state, optimizer=opt)
    saved_opt = copy.deepcopy(opt.state_dict())
    more = batches(5, seed=3)
    straight = train(model, state, opt, more)

    fresh = small_mlp(seed=123)  # other initial weights: everything must come from the file
    fresh_opt = opt_cls(fresh.parameters(), **kwargs)
    loaded = ef.load(path, model=fresh, optimizer=fresh_opt)
    resumed = train(fresh, loaded.state, fresh_opt, more)

    assert_same_state(straight, resumed)
    assert_same(opt.state_dict(), fresh_opt.state_dict())
    assert_same(saved_opt, loaded.optimizer_state)  # the optimizer trained on its own copy


def test_rng_states_round_trip(tmp_path: Path) -> None:
    _, state, _ = trained()
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
    _, state, _ = trained()
    loaded = ef.load(ef.save(tmp_path / "c", state, rng=False))
    assert loaded.rng is None
    with pytest.raises(ef.CheckpointError, match="rng=False"):
        loaded.restore_rng()


def test_everything_returned_lives_on_map_location(tmp_path: Path) -> None:
    model, state, opt = trained()
    path = ef.save(tmp_path / "c", state, optimizer=opt, extra=extra_tree(state))
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
    _, state, _ = trained()
    on_gpu = ef.tree_map(lambda t: t.cuda(), state)
    torch.cuda.manual_seed_all(3)
    torch.rand(2, device="cuda")  # initializes CUDA: its RNG state is saved too
    path = ef.save(tmp_path / "c", on_gpu, extra={"x": torch.randn(3, device="cuda")})
    loaded = ef.load(path, map_location="cuda")
    assert all(t.is_cuda for t in ef.tree_leaves(loaded.state))
    assert_same_state(state, loaded.state)
    assert loaded.rng is not None and len(loaded.rng["cuda"]) == torch.cuda.device_count()
    expected = torch.rand(3, device="cuda")
    loaded.restore_rng()
    assert torch.equal(torch.rand(3, device="cuda"), expected)


def test_unstorable_values_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    _, state, _ = trained()
    with pytest.raises(ef.CheckpointError, match=r"cannot store a set at extra/buffer/ids"):
        ef.save(tmp_path / "c", state, extra={"buffer": {"ids": {1, 2}}})
    with pytest.raises(ef.CheckpointError, match=r"int64 at history/0"):
        ef.save(tmp_path / "c", state, history=[np.int64(3)])
    with pytest.raises(ef.CheckpointError, match="keep and params differ"):
        ef.save(tmp_path / "c", state.replace(keep={}))
    with pytest.raises(ef.CheckpointError, match="is a directory"):
        ef.save(tmp_path, state)
    assert os.listdir(tmp_path) == []


def test_an_unknown_format_version_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, state, _ = trained()
    monkeypatch.setattr(ck, "FORMAT_VERSION", 99)
    path = ef.save(tmp_path / "c", state)
    monkeypatch.undo()
    with pytest.raises(ef.CheckpointError, match=r"format_version 99.*newer release"):
        ef.load(path)
