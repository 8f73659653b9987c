"""Derived masks as a value: what training derives from ``state.owner`` and ``state.keep``.

Ownership and pruning change once per task or pruning step, not per training step, so the
masks a step needs — every parameter's trainable bits, whether a parameter is wholly free
or wholly frozen, the owned BatchNorm statistics, the frozen BN channels and their blend
vectors — are prepared once by :func:`step_masks` and passed to every step
(``train_step(..., masks=...)``). Nothing is cached behind the caller's back.

A :class:`StepMasks` records the very owner and keep tensors (and their version counters)
it was derived from; :meth:`StepMasks.check` refuses any other state's masks with a
:class:`StateMismatchError`, so stale masks raise, never mislead. The check is by identity
(states share unchanged tensors), so it costs no pass over the data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from eidetic_func.core.errors import StateMismatchError
from eidetic_func.core.state import EideticState, bn_prefixes
from eidetic_func.nn.batchnorm import FrozenBlend, blend_masks

# Integer views of float dtypes: masks select bit patterns (``new & m | old & ~m``), exact
# for every value including NaN and -0.0, and faster than ``torch.where`` on CPU.
INT_VIEW = {
    torch.float32: torch.int32,
    torch.float64: torch.int64,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


# (frozen rows, frozen columns or None) of a parameter: see StepMasks.lines
Lines = tuple[Tensor, Tensor | None]


@dataclass(frozen=True, eq=False)
class StepMasks:
    """The masks of one state's ownership and pruning (build with :func:`step_masks`).

    - ``bits``: per parameter, its trainable entries (free and kept) as all-ones integers
      of the parameter's integer view (:data:`INT_VIEW`), zero elsewhere; a bool mask for
      other dtypes.
    - ``coverage``: per parameter, True if every entry is trainable, False if none is,
      None if mixed (whole frozen layers then cost no memory traffic).
    - ``lines``: per mixed parameter whose frozen entries are exactly whole rows (dim 0)
      and whole columns (dim 1) — ownership and pruning by neuron make them so — the
      indices ``(rows, columns)`` of those lines (``columns`` None for 1-D tensors); None
      for any other pattern. A step then restores only those lines (:func:`restore_`).
    - ``owned``: per BN running statistic, a bool mask of its owned channels.
    - ``frozen_channels``: per Task BatchNorm (key ``"<prefix>.frozen_channels"``), the
      indices of its owned channels, as the module's buffer of that name takes them.
    - ``blends``: per Task BatchNorm prefix, ``(indices, frozen, free, is_frozen)``: the
      same indices and the blend vectors the module derives from them.
    """

    bits: dict[str, Tensor]
    coverage: dict[str, bool | None]
    lines: dict[str, Lines | None]
    owned: dict[str, Tensor]
    frozen_channels: dict[str, Tensor]
    blends: dict[str, FrozenBlend]
    sources: tuple[Tensor, ...]
    versions: tuple[int, ...] | None

    def matches(self, state: EideticState) -> bool:
        """Whether these masks were derived from ``state``'s very owner and keep tensors,
        unwritten since."""
        tensors = tuple(_sources(state))
        if len(tensors) != len(self.sources) or any(
            a is not b for a, b in zip(tensors, self.sources)
        ):
            return False
        return self.versions is None or self.versions == _versions(tensors)

    def check(self, state: EideticState) -> None:
        """Raise :class:`StateMismatchError` unless :meth:`matches` ``state``."""
        if not self.matches(state):
            raise StateMismatchError(
                "these StepMasks were derived from another state's ownership or pruning mask "
                "(a pruning step or the end of a task changed them): prepare them again with "
                "step_masks(state)"
            )


def step_masks(state: EideticState) -> StepMasks:
    """The masks training derives from ``state.owner`` and ``state.keep``. Pure: ``state``
    is not modified; on a GPU it synchronizes once (for ``coverage`` and the indices)."""
    bits = {}
    for k, mask in trainable(state).items():
        int_dtype = INT_VIEW.get(state.params[k].dtype)
        bits[k] = mask if int_dtype is None else mask.to(int_dtype).neg_()
    owned = {k: own >= 0 for k, own in state.owner.items() if k in state.buffers}
    channels = frozen_channels(state)
    blends = {}
    for name, idx in channels.items():
        prefix = name.rpartition(".")[0]
        blends[prefix] = (idx, *blend_masks(idx, state.buffers[f"{prefix}.running_mean"]))
    sources = tuple(_sources(state))
    coverage = {k: _coverage(b) for k, b in bits.items()}
    return StepMasks(
        bits=bits,
        coverage=coverage,
        lines={k: _lines(b) for k, b in bits.items() if coverage[k] is None},
        owned=owned,
        frozen_channels=channels,
        blends=blends,
        sources=sources,
        versions=_versions(sources),
    )


def trainable(state: EideticState) -> dict[str, Tensor]:
    """Per parameter, a bool mask of the entries a training step may change: free and kept."""
    return {k: (state.owner[k] < 0) & state.keep[k] for k in state.params}


def frozen_channels(state: EideticState) -> dict[str, Tensor]:
    """Per Task BatchNorm, the indices of its channels owned by some task, keyed
    ``"<prefix>.frozen_channels"`` like the module's buffer (derived per call)."""
    flags = {}
    for prefix in bn_prefixes(state):
        owner = state.owner[f"{prefix}.running_mean"]
        flags[f"{prefix}.frozen_channels"] = (owner >= 0).nonzero().squeeze(1)
    return flags


def _lines(bits: Tensor) -> Lines | None:
    """The frozen rows and columns of ``bits`` if its frozen entries are exactly their
    union, else None."""
    frozen = ~bits.bool()
    if frozen.dim() == 0:
        return None
    rows = frozen.reshape(frozen.shape[0], -1).all(1)
    if frozen.dim() == 1:
        return rows.nonzero().squeeze(1), None
    columns = frozen.transpose(0, 1).reshape(frozen.shape[1], -1).all(1)
    shape = (-1, 1) + (1,) * (frozen.dim() - 2)
    union = rows.view(shape) | columns.view(1, -1, *(1,) * (frozen.dim() - 2))
    if not bool(torch.equal(union.expand_as(frozen), frozen)):
        return None
    return rows.nonzero().squeeze(1), columns.nonzero().squeeze(1)


def _coverage(bits: Tensor) -> bool | None:
    mask = bits.bool()
    return True if bool(mask.all()) else False if not bool(mask.any()) else None


def _sources(state: EideticState) -> Iterable[Tensor]:
    yield from state.owner.values()
    yield from state.keep.values()


def _versions(tensors: tuple[Tensor, ...]) -> tuple[int, ...] | None:
    try:
        return tuple(t._version for t in tensors)
    except Exception:  # tensors inside a torch.func transform carry no version counter
        return None
