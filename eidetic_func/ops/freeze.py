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

from eidetic_func.core.state import EideticState
from eidetic_func.ops.step_masks import INT_VIEW, StepMasks, step_masks, trainable


def freeze_grads(
    grads: dict[str, Tensor], state: EideticState, masks: StepMasks | None = None
) -> dict[str, Tensor]:
    """``grads`` with every entry that may not change (owned or pruned) set to zero.

    ``masks``: ``state``'s :func:`eidetic_func.ops.step_masks.step_masks` (derived here if
    None; checked against ``state`` if given).
    """
    bits = _masks_of(state, masks).bits
    return {k: mask_(bits[k], g.clone()) if k in bits else g for k, g in grads.items()}


def freeze(new: EideticState, old: EideticState, masks: StepMasks | None = None) -> EideticState:
    """``new`` with every owned or pruned parameter entry and owned BN statistic taken from ``old``.

    ``old``'s ownership and pruning mask decide (``masks``: ``old``'s step masks, derived
    here if None); ``new``'s masks are replaced by ``old``'s. The result never shares
    storage with ``new.params`` (so the tensors an optimizer keeps updating in place
    cannot reach it).
    """
    masks = _masks_of(old, masks)
    params = {}
    for k, p in new.params.items():
        coverage = masks.coverage[k]
        if coverage is False:  # nothing may change: the old tensor itself (immutable)
            params[k] = old.params[k]
        elif coverage is True:  # everything may change: a copy, half the memory traffic
            params[k] = p.detach().clone()
        else:
            params[k] = _select(masks.bits[k], p.detach(), old.params[k])
    return old.replace(params=params, buffers=freeze_buffers(new.buffers, old, masks=masks))


def freeze_buffers(
    buffers: dict[str, Tensor],
    old: EideticState,
    *,
    copy: bool = False,
    masks: StepMasks | None = None,
) -> dict[str, Tensor]:
    """``buffers`` with every BN statistic owned in ``old`` taken from ``old``.

    With ``copy``, no returned tensor shares storage with ``buffers`` (for buffers that
    keep being updated in place, like a model's own). ``masks``: ``old``'s step masks
    (if None, the owned channels are derived here).
    """
    out = {}
    for k, b in buffers.items():
        own = old.owner.get(k)
        if own is None:
            out[k] = b.detach().clone(memory_format=torch.contiguous_format) if copy else b
            continue
        owned = own >= 0 if masks is None else masks.owned[k]
        out[k] = torch.where(owned, old.buffers[k], b)
    return out


def mask_(bits: Tensor, t: Tensor) -> Tensor:
    """Zero ``t`` in place where ``bits`` (:attr:`StepMasks.bits`) is zero (exactly +0.0)
    and return it."""
    int_dtype = INT_VIEW.get(t.dtype)
    if int_dtype is None or bits.dtype != int_dtype:
        return t.mul_(bits.bool())
    t.view(int_dtype).bitwise_and_(bits)
    return t


def _select(bits: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """``new`` where ``bits`` is all ones, ``old`` where it is zero; exact bit patterns."""
    int_dtype = INT_VIEW.get(new.dtype)
    if int_dtype is None or bits.dtype != int_dtype:
        return torch.where(bits.bool(), new, old)
    anchor = old.view(int_dtype) & ~bits  # old's frozen entries
    return torch.bitwise_and(new.view(int_dtype), bits).bitwise_or_(anchor).view(new.dtype)


def _masks_of(state: EideticState, masks: StepMasks | None) -> StepMasks:
    if masks is None:
        return step_masks(state)
    masks.check(state)
    return masks


__all__ = ["freeze", "freeze_buffers", "freeze_grads", "mask_", "trainable"]
