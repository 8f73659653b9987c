"""Freezing by projection: owned (and pruned) entries are restored after every step.

Zeroing gradients alone does not freeze anything under decoupled weight decay (AdamW),
momentum carried across tasks, or any optimizer that moves a weight without a gradient.
:func:`freeze` therefore restores every owned entry — and every pruned entry, to zero —
from the state before the step, bit for bit. :func:`freeze_grads` is the complementary
projection of gradients, useful to keep optimizer statistics of frozen entries at rest.

Selection is done on the integer bit patterns (``new & m | old & ~m``): exact for every
value including NaN and -0.0, and several times faster than ``torch.where`` on CPU.
"""

from __future__ import annotations

import torch
from torch import Tensor

from eidetic_func.core._memo import TensorMemo
from eidetic_func.core.state import EideticState

_INT_VIEW = {
    torch.float32: torch.int32,
    torch.float64: torch.int64,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def trainable(state: EideticState) -> dict[str, Tensor]:
    """Per parameter, a bool mask of the entries a training step may change: free and kept."""
    return {k: (state.owner[k] < 0) & state.keep[k] for k in state.params}


def freeze_grads(grads: dict[str, Tensor], state: EideticState) -> dict[str, Tensor]:
    """``grads`` with every entry that may not change (owned or pruned) set to zero."""
    bits = _trainable_bits(state)
    return {k: _mask(bits[k], g.clone()) if k in bits else g for k, g in grads.items()}


def freeze(new: EideticState, old: EideticState) -> EideticState:
    """``new`` with every owned or pruned parameter entry and owned BN statistic taken from ``old``.

    ``old``'s ownership and pruning mask decide; ``new``'s masks are replaced by ``old``'s.
    The result never shares storage with ``new.params`` (so the tensors an optimizer keeps
    updating in place cannot reach it).
    """
    bits = _trainable_bits(old)
    coverage = _coverage(bits)
    params = {}
    for k, p in new.params.items():
        if coverage[k] is False:  # nothing may change: the old tensor itself (immutable)
            params[k] = old.params[k]
        elif coverage[k] is True:  # everything may change: a copy, half the memory traffic
            params[k] = p.detach().clone()
        else:
            params[k] = _select(bits[k], p.detach(), old.params[k])
    return old.replace(params=params, buffers=freeze_buffers(new.buffers, old))


def freeze_buffers(
    buffers: dict[str, Tensor], old: EideticState, *, copy: bool = False
) -> dict[str, Tensor]:
    """``buffers`` with every BN statistic owned in ``old`` taken from ``old``.

    With ``copy``, no returned tensor shares storage with ``buffers`` (for buffers that
    keep being updated in place, like a model's own).
    """
    out = {}
    for k, b in buffers.items():
        own = old.owner.get(k)
        if own is None:
            out[k] = b.detach().clone(memory_format=torch.contiguous_format) if copy else b
            continue
        owned = _OWNED.get((own,))
        if owned is None:
            owned = own >= 0
            _OWNED.put((own,), owned)
        out[k] = torch.where(owned, old.buffers[k], b)
    return out


def _select(bits: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """``new`` where ``bits`` is all ones, ``old`` where it is zero; exact bit patterns.

    Computed as ``(new & bits) | anchor`` with ``anchor = old & ~bits``: ``old``'s frozen
    entries. The anchor is cached and handed on to the result, whose frozen entries are
    the same, so a sequence of steps computes it once per task (or pruning step).
    """
    int_dtype = _INT_VIEW.get(new.dtype)
    if int_dtype is None or bits.dtype != int_dtype:
        return torch.where(bits.bool(), new, old)
    anchor = _ANCHORS.get((old, bits))
    if anchor is None:
        anchor = old.view(int_dtype) & ~bits
    out = torch.bitwise_and(new.view(int_dtype), bits).bitwise_or_(anchor).view(new.dtype)
    _ANCHORS.put((out, bits), anchor)
    return out


def _mask(bits: Tensor, t: Tensor) -> Tensor:
    """Zero ``t`` in place where ``bits`` is zero (exactly +0.0) and return it."""
    int_dtype = _INT_VIEW.get(t.dtype)
    if int_dtype is None or bits.dtype != int_dtype:
        return t.mul_(bits.bool())
    t.view(int_dtype).bitwise_and_(bits)
    return t


# Masks depend only on owner and keep, which change once per pruning step or task, not per
# training step: cache them for the exact (unmodified) owner and keep tensors.
_BITS = TensorMemo()
_ANCHORS = TensorMemo()
_COVERAGE = TensorMemo()
_OWNED = TensorMemo()


def _trainable_bits(state: EideticState) -> dict[str, Tensor]:
    sources = [t for k in state.params for t in (state.owner[k], state.keep[k])]
    bits = _BITS.get(sources)
    if bits is None:
        bits = {}
        for k, mask in trainable(state).items():
            int_dtype = _INT_VIEW.get(state.params[k].dtype)
            bits[k] = mask if int_dtype is None else mask.to(int_dtype).neg_()
        _BITS.put(sources, bits)
    return bits


def _coverage(bits: dict[str, Tensor]) -> dict[str, bool | None]:
    """Per parameter: True if every entry is trainable, False if none is, None if mixed.

    Whole frozen layers (common once a task owns a layer) then cost no memory traffic.
    Cached like the masks, so a GPU synchronizes once per pruning step, not per step.
    """
    sources = list(bits.values())
    coverage = _COVERAGE.get(sources)
    if coverage is None:
        coverage = {}
        for k, b in bits.items():
            mask = b.bool()
            coverage[k] = True if bool(mask.all()) else False if not bool(mask.any()) else None
        _COVERAGE.put(sources, coverage)
    return coverage
