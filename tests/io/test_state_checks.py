"""A checkpoint's state must mean something a run could produce: refused on save and load."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from trained_checkpoints import (
    trained,
)

import eidetic_func as ef
from eidetic_func.io import state_checks

# --------------------------------------------------------------------------- meaning


def _forged(path: Path, state: ef.EideticState, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``state`` written as a valid, sealed checkpoint despite what it means (anyone can
    recompute a checksum): the save-side meaning check is patched away for the write."""
    with monkeypatch.context() as patch:
        patch.setattr(state_checks, "meaning_problems", lambda _: [])
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
    _, state, _ = trained()
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
    _, state, _ = trained()
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
    _, state, _ = trained()
    state = ef.finish_task(state)  # tasks 0 and 1 finished
    revisited = ef.revisit(state, task=0)
    assert 0 not in revisited.finished and revisited.task == 0
    loaded = ef.load(ef.save(tmp_path / "revisit.safetensors", revisited)).state
    assert loaded.finished == revisited.finished and loaded.task == 0
