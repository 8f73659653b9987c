"""The training step's workspace: the model's own parameters, and what they are known to hold.

A step copies the state into the model's parameters, lets the optimizer update them in
place, and projects them back onto the state's frozen entries. Copying in is skipped for a
parameter that still holds the state tensor the last step returned, unwritten since.

What the parameters hold is an explicit value, a :class:`Workspace`, that the caller keeps
beside the model and passes to every step on it (``train_step(..., workspace=...)``), as
it keeps the optimizer: per parameter, which state tensor it holds, as of which version
counters (bumped by every in-place write, and by ``train_step`` for fused optimizers).
There is no module-level record: a step given no workspace starts from an empty one and
copies every parameter in (correct, a little slower). A workspace is mutable on purpose —
it describes the model's parameters, the shell's scratch tensors, which steps update in
place — and it is only ever trusted for the very parameter and state tensors it names.

The record also keeps each parameter's *anchor* — the bit patterns of its frozen entries
(:func:`anchor`: whole frozen rows and columns where ownership is by neuron, else
``old & ~bits``) — which stays valid along a run of steps (every step restores those
entries exactly), so it is computed once per task or pruning step, not per step.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from eidetic_func.core.state import EideticState
from eidetic_func.ops.step_masks import INT_VIEW, StepMasks

# what restore_ writes back: per frozen line (rows, columns), or all of a tensor's frozen
# bit patterns, or None (dtypes without an integer view: torch.where from the old tensor)
Anchor = tuple[Tensor, Tensor | None] | Tensor | None


@dataclass
class _Held:
    """One parameter: it equals ``source`` while both versions are unchanged."""

    parameter: Tensor
    version: int
    source: weakref.ref[Tensor]
    source_version: int
    bits: Tensor | None = None  # the trainable bits the anchor was made for
    anchor: Anchor = None  # the frozen entries of ``source`` under ``bits`` (restore_)

    def holds(self, parameter: Tensor, source: Tensor) -> bool:
        return (
            self.parameter is parameter
            and self.version == parameter._version
            and self.source() is source
            and self.source_version == source._version
        )


class Workspace:
    """What one model's parameters hold between training steps (see the module docstring).

    Create one per model (``Workspace()``) and pass it to each of its steps; a fresh one
    knows nothing, so the next step copies the state in.
    """

    def __init__(self) -> None:
        self.records: dict[str, _Held] = {}  # per parameter name


def load_workspace(
    held: Workspace, workspace: dict[str, Tensor], params: dict[str, Tensor]
) -> None:
    """Copy ``params`` into ``workspace``, the model's parameters by name (in place), and
    record it in ``held``.

    A parameter that already holds exactly its value (the one :func:`project_workspace`
    left there, unwritten since, as ``held`` records) is not copied again.
    """
    records = held.records
    with torch.no_grad():
        for k, p in workspace.items():
            source = params[k]
            record = records.get(k)
            if record is None or not record.holds(p, source):
                p.copy_(source)
                records[k] = _Held(p, p._version, weakref.ref(source), source._version)


def hold_workspace(
    held: Workspace, workspace: dict[str, Tensor], params: dict[str, Tensor]
) -> None:
    """Record in ``held`` that ``workspace`` (the model's parameters, by name) holds exactly
    ``params`` now (each parameter its value's equal), so the next step copies nothing.
    Anchors made for the same masks stay."""
    for k, p in workspace.items():
        record = held.records.get(k)
        source = params[k]
        if record is None or record.parameter is not p:
            held.records[k] = _Held(p, p._version, weakref.ref(source), source._version)
            continue
        record.version, record.source = p._version, weakref.ref(source)
        record.source_version = source._version


def project_workspace(
    held: Workspace, workspace: dict[str, Tensor], old: EideticState, masks: StepMasks
) -> dict[str, Tensor]:
    """:func:`eidetic_func.ops.freeze` for a training step: the new parameters, with the
    workspace projected too.

    Every owned or pruned entry of ``workspace`` (loaded from ``old`` by
    :func:`load_workspace`) is restored from ``old`` in place, and the returned parameters
    are copies of the projected workspace (an unwritten parameter, and one no entry of
    which may change, is ``old``'s own tensor). The workspace then holds the returned
    values (as ``held`` records), so the next step's :func:`load_workspace` has nothing to
    copy. ``masks`` are ``old``'s (checked by the caller).
    """
    bits, coverage, records = masks.bits, masks.coverage, held.records
    params = {}
    with torch.no_grad():
        for k, p in workspace.items():
            before = old.params[k]
            record = records[k]
            if record.version == p._version:  # not written since it was loaded
                params[k] = before
                continue
            if coverage[k] is False:
                p.copy_(before)
                params[k] = before
            elif coverage[k] is True:
                params[k] = p.clone(memory_format=torch.contiguous_format)
            else:
                if record.bits is not bits[k]:
                    record.bits, record.anchor = bits[k], anchor(masks, k, before)
                restore_(masks, k, record.anchor, p, before)
                params[k] = p.clone(memory_format=torch.contiguous_format)
            record.version = p._version
            record.source = weakref.ref(params[k])
            record.source_version = params[k]._version
    return params


def anchor(masks: StepMasks, name: str, old: Tensor) -> Anchor:
    """What :func:`restore_` needs to put back parameter ``name``'s frozen entries of
    ``old`` (a mixed parameter: ``masks.coverage[name] is None``). It stays valid as long
    as ``masks`` do: every step restores those entries exactly."""
    bits = masks.bits[name]
    int_dtype = INT_VIEW.get(old.dtype)
    if int_dtype is None or bits.dtype != int_dtype:
        return None
    as_int = old.view(int_dtype)
    lines = masks.lines.get(name)
    if lines is None:
        return as_int & ~bits
    rows, columns = lines
    return _rows(as_int).index_select(0, rows), (
        None if columns is None else as_int.index_select(1, columns)
    )


# index_copy_ moves one element at a time: a row's bytes seen as the widest elements that
# tile it move up to 4x faster (copies of any dtype keep every bit, NaN payloads included)
_WIDE = (torch.complex128, torch.int64, torch.int32, torch.int16)


def _rows(t: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``t`` (an integer view) as ``[rows, elements]`` of ``dtype``, by default the widest
    of :data:`_WIDE` that tiles each row; ``t`` itself (2-D or more) if it cannot be."""
    if t.dim() < 1 or not t.is_contiguous():
        return t
    flat = t.view(t.shape[0], -1)
    widths = _WIDE if t.device.type in ("cpu", "cuda") else _WIDE[1:]  # no complex on MPS
    for wide in widths if dtype is None else (dtype,):
        if wide == t.dtype:
            return flat
        try:
            return flat.view(wide)
        except RuntimeError:  # the row's bytes or the offset do not tile
            continue
    return t


def restore_(masks: StepMasks, name: str, kept: Anchor, new: Tensor, old: Tensor) -> None:
    """In place: ``new`` keeps its trainable entries (``masks.bits[name]``) and takes
    ``old``'s elsewhere, their bit patterns given by ``kept`` (:func:`anchor`); exact for
    every value. Frozen rows and columns cost only their own entries."""
    restorer(masks, name, kept, new, old)()


def restorer(
    masks: StepMasks, name: str, kept: Anchor, new: Tensor, old: Tensor
) -> Callable[[], object]:
    """:func:`restore_` of ``new`` as a function of no arguments, its views and indices
    made once, for many steps on the same parameter storage (the caller checks
    ``new.data_ptr()`` stays the same)."""
    bits, target = masks.bits[name], new.detach()
    if kept is None:
        mask = bits.bool()
        return lambda: target.copy_(torch.where(mask, target, old))
    if isinstance(kept, Tensor):
        as_int, anchor_bits = target.view(kept.dtype), kept
        return lambda: as_int.bitwise_and_(bits).bitwise_or_(anchor_bits)
    rows, columns = masks.lines[name]  # type: ignore[misc]
    as_int = target.view(INT_VIEW[new.dtype])
    copies = []
    if rows.numel():
        copies.append((_rows(as_int, kept[0].dtype), 0, rows, kept[0]))
    if columns is not None and kept[1] is not None and columns.numel():
        copies.append((as_int, 1, columns, kept[1]))

    def run() -> None:
        for dst, dim, index, src in copies:
            dst.index_copy_(dim, index, src)

    return run
