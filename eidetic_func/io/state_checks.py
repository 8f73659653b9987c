"""Whether a state is one a checkpoint may hold: well formed, and meaning something a run
could have produced. Checked on save and again on load (a checksum proves only that
nobody changed the file since it was written)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from eidetic_func.core.state import FREE, OWNER_DTYPE, EideticState
from eidetic_func.io.listing import MAX_LISTED, listed

STATE_FIELDS = ("params", "buffers", "owner", "keep")  # the tensor fields a checkpoint stores


def state_problems(state: EideticState) -> list[str]:
    """What makes ``state`` internally inconsistent (empty if nothing)."""
    problems: list[str] = []
    for name in STATE_FIELDS:
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
        return problems[:MAX_LISTED]
    return meaning_problems(state)[:MAX_LISTED]


def meaning_problems(state: EideticState) -> list[str]:
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
    return f"missing {listed(missing)}, unexpected {listed(extra)}"
