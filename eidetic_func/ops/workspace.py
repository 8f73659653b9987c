"""The training step's workspace: the model's own parameters, and what they are known to hold.

A step copies the state into the model's parameters, lets the optimizer update them in
place, and projects them back onto the state's frozen entries. Copying in is skipped for a
parameter that still holds the state tensor the last step returned, unwritten since: per
model, a small record says which state tensor each parameter holds, as of which version
counters (bumped by every in-place write, and by ``train_step`` for fused optimizers).

The record also keeps each parameter's *anchor* — the bit pattern of its frozen entries,
``old & ~bits`` — which stays valid along a run of steps (every step restores those
entries exactly), so it is computed once per task or pruning step, not per step.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from eidetic_func.core.state import EideticState
from eidetic_func.ops.freeze import _INT_VIEW, _coverage, _trainable_bits


@dataclass
class _Held:
    """One parameter: it equals ``source`` while both versions are unchanged."""

    parameter: Tensor
    version: int
    source: weakref.ref[Tensor]
    source_version: int
    bits: Tensor | None = None  # the trainable bits the anchor was made for
    anchor: Tensor | None = None  # the frozen entries' bits of ``source`` under ``bits``

    def holds(self, parameter: Tensor, source: Tensor) -> bool:
        return (
            self.parameter is parameter
            and self.version == parameter._version
            and self.source() is source
            and self.source_version == source._version
        )


# per model, per parameter name: what that parameter holds
_HELD: weakref.WeakKeyDictionary[nn.Module, dict[str, _Held]] = weakref.WeakKeyDictionary()


def load_workspace(
    model: nn.Module, workspace: dict[str, Tensor], params: dict[str, Tensor]
) -> None:
    """Copy ``params`` into ``workspace``, the model's parameters by name (in place).

    A parameter that already holds exactly its value (the one :func:`project_workspace`
    left there, unwritten since) is not copied again.
    """
    held = _HELD.setdefault(model, {})
    with torch.no_grad():
        for k, p in workspace.items():
            source = params[k]
            record = held.get(k)
            if record is None or not record.holds(p, source):
                p.copy_(source)
                held[k] = _Held(p, p._version, weakref.ref(source), source._version)


def project_workspace(
    model: nn.Module, workspace: dict[str, Tensor], old: EideticState
) -> dict[str, Tensor]:
    """:func:`eidetic_func.ops.freeze` for a training step: the new parameters, with the
    workspace projected too.

    Every owned or pruned entry of ``workspace`` (loaded from ``old`` by
    :func:`load_workspace`) is restored from ``old`` in place, and the returned parameters
    are copies of the projected workspace (an unwritten parameter, and one no entry of
    which may change, is ``old``'s own tensor). The workspace then holds the returned
    values, so the next step's :func:`load_workspace` has nothing to copy.
    """
    bits = _trainable_bits(old)
    coverage = _coverage(bits)
    held = _HELD[model]
    params = {}
    with torch.no_grad():
        for k, p in workspace.items():
            before = old.params[k]
            record = held[k]
            if record.version == p._version:  # not written since it was loaded
                params[k] = before
                continue
            if coverage[k] is False:
                p.copy_(before)
                params[k] = before
            elif coverage[k] is True:
                params[k] = p.clone(memory_format=torch.contiguous_format)
            else:
                if record.bits is not bits[k] or record.anchor is None:
                    record.bits, record.anchor = bits[k], _anchor(bits[k], before)
                _restore_(bits[k], record.anchor, p, before)
                params[k] = p.clone(memory_format=torch.contiguous_format)
            record.version = p._version
            record.source = weakref.ref(params[k])
            record.source_version = params[k]._version
    return params


def _anchor(bits: Tensor, old: Tensor) -> Tensor | None:
    int_dtype = _INT_VIEW.get(old.dtype)
    if int_dtype is None or bits.dtype != int_dtype:
        return None
    return old.view(int_dtype) & ~bits


def _restore_(bits: Tensor, anchor: Tensor | None, new: Tensor, old: Tensor) -> None:
    """In place: ``new`` keeps its entries where ``bits`` is set, and takes ``old``'s
    (whose frozen bit patterns are ``anchor``) elsewhere; exact for every value."""
    if anchor is None:
        new.copy_(torch.where(bits.bool(), new, old))
        return
    new.view(anchor.dtype).bitwise_and_(bits).bitwise_or_(anchor)
